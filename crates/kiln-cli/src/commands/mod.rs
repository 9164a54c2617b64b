pub mod bench;
pub mod cache;
pub mod console;
pub mod cp;
pub mod doctor;
pub mod exec;
pub mod forward;
pub mod image;
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
}

/// The local VMs and the remembered libvirt hosts, with state from the environment.
pub fn fleet() -> kiln::Result<kiln::topology::Fleet> {
    Ok(kiln::topology::Fleet::new(kiln::Kiln::from_env()?))
}
