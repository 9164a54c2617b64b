pub mod bench;
pub mod cache;
pub mod config;
pub mod console;
pub mod cp;
pub mod doctor;
pub mod exec;
pub mod forward;
pub mod hosts;
pub mod image;
pub mod init;
pub mod inspect;
pub mod logs;
pub mod ls;
pub mod metadata;
pub mod net;
pub mod rm;
pub mod run;
pub mod snapshot;
pub mod start;
pub mod stop;
pub mod up;

/// What a command returns: the process exit code.
pub type Outcome = kiln::Result<i32>;

/// Which host a VM is on, for the verbs that take a VM name.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The libvirt URI the VM is on (default: this machine, then the libvirt hosts kiln
    /// has created VMs on)
    #[arg(long, value_name = "URI")]
    pub connect: Option<String>,
}

impl Target {
    pub async fn locate(
        &self,
        fleet: &kiln::topology::Fleet,
        name: &str,
    ) -> kiln::Result<kiln::topology::Located> {
        fleet.locate(name, self.connect.as_deref()).await
    }

    /// The host VM `name` is on, and the VM as `kiln ls` shows it.
    pub async fn find(&self, name: &str) -> kiln::Result<(kiln::topology::Located, kiln::VmInfo)> {
        let host = self.locate(&fleet()?, name).await?;
        let info = host
            .find(name)
            .await?
            .ok_or_else(|| kiln::Error::VmNotFound {
                name: name.to_owned(),
            })?;
        Ok((host, info))
    }
}

/// The VMs a verb on several VMs acts on: the names given, or every VM with `--all`.
#[derive(Debug, Clone, clap::Args)]
pub struct Many {
    /// The VMs, by name
    #[arg(value_parser = crate::ui::parse_name, required_unless_present = "all")]
    pub names: Vec<String>,
    /// Every VM `kiln ls` lists (with --connect, every VM on that host)
    #[arg(long, conflicts_with = "names")]
    pub all: bool,
    #[command(flatten)]
    pub target: Target,
}

impl Many {
    /// The names to act on.
    pub async fn names(&self, fleet: &kiln::topology::Fleet) -> kiln::Result<Vec<String>> {
        if !self.all {
            return Ok(self.names.clone());
        }
        let vms = match &self.target.connect {
            Some(uri) => fleet.connect(uri).await?.list().await?,
            None => fleet.list().await?.vms,
        };
        Ok(vms.into_iter().map(|vm| vm.name).collect())
    }

    /// Runs `verb` on each VM in turn. One VM: its error is the command's. Several: each
    /// failure is printed as it comes, the others go on, and the exit code is 1 if any
    /// failed.
    pub async fn each<F, Fut>(&self, fleet: &kiln::topology::Fleet, mut verb: F) -> Outcome
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = kiln::Result<()>>,
    {
        let names = self.names(fleet).await?;
        if let [name] = names.as_slice() {
            verb(name.clone()).await?;
            return Ok(0);
        }
        let mut failed = 0;
        for name in names {
            if let Err(err) = verb(name.clone()).await {
                crate::ui::print_error(&err);
                failed += 1;
            }
        }
        Ok(i32::from(failed > 0))
    }
}

/// The local VMs and the remembered libvirt hosts, with state from the environment.
pub fn fleet() -> kiln::Result<kiln::topology::Fleet> {
    Ok(kiln::topology::Fleet::new(kiln::Kiln::from_env()?))
}
