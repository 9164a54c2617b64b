use std::time::Duration;

use kiln::spec::{PortForward, ShareSpec};
use kiln::topology::Fleet;
use kiln::{AccelChoice, ByteSize, DiskSpec, Kiln, NetPolicy, NetworkRef, VmSpec};

use super::Outcome;
use crate::ui::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// VM name: 1-63 characters of a-z, 0-9 and '-'
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    /// Number of vCPUs [default: 1, or the config's `cpus`]
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory, e.g. 512M or 2G [default: 512M, or the config's `memory`]
    #[arg(long, allow_hyphen_values = true, value_parser = crate::ui::parse_size)]
    pub memory: Option<ByteSize>,
    /// The image: default (busybox in RAM) or a Debian userland (debian, rust, python, ...;
    /// `kiln image ls` lists them), built on first use [default: the config's `image`, else
    /// default]
    #[arg(long, value_parser = crate::ui::parse_name)]
    pub image: Option<String>,
    /// Grow a Debian image's root disk and filesystem to this size, e.g. 20G
    #[arg(long, allow_hyphen_values = true, value_parser = crate::ui::parse_size)]
    pub root_size: Option<ByteSize>,
    /// A cloud-init `#cloud-config` file for the VM's first boot (needs an image with
    /// cloud-init: --image cloud)
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<std::path::PathBuf>,
    /// Boot through firmware, in this order: network (iPXE loads kiln's image over the
    /// user-mode NIC's TFTP, or the libvirt network's), disk, or both: --boot network,disk
    #[arg(long, value_delimiter = ',', value_name = "DEVICE[,DEVICE]", value_parser = parse_boot_device)]
    pub boot: Vec<kiln::spec::BootDevice>,
    /// Metadata for the guest, KEY=VALUE (repeatable): it reads them in
    /// /run/kiln/config/metadata.json
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_metadata)]
    pub metadata: Vec<(String, String)>,
    /// A secret by reference, NAME=PATH (repeatable): the host file is read at each start
    /// and the guest finds it in /run/kiln/config/secrets/NAME, root's only
    #[arg(long = "secret", value_name = "NAME=PATH", value_parser = parse_secret)]
    pub secrets: Vec<(String, std::path::PathBuf)>,
    /// Add a blank qcow2 disk of this size (repeatable), e.g. --disk 4G
    #[arg(long = "disk", allow_hyphen_values = true, value_parser = crate::ui::parse_size)]
    pub disks: Vec<ByteSize>,
    /// Accelerator: auto picks KVM where it runs stock guests, TCG otherwise
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Seconds a boot may take before it is retried or fails
    #[arg(long, default_value_t = 60)]
    pub boot_timeout: u64,
    /// Boot from the kernel even when a warm-start template could be used
    #[arg(long)]
    pub cold: bool,
    /// Share a host directory: HOST:GUEST[:ro] (repeatable; virtio-9p)
    #[arg(long = "volume", short = 'v', value_name = "HOST:GUEST[:ro]")]
    pub volumes: Vec<ShareSpec>,
    /// Forward a host port to the guest: [ADDR:]HOST:GUEST[/udp] (repeatable; ADDR defaults
    /// to 127.0.0.1)
    #[arg(long = "publish", short = 'p', value_name = "[ADDR:]HOST:GUEST[/udp]", value_parser = crate::ui::parse_port)]
    pub ports: Vec<PortForward>,
    /// Put a NIC on this named network (repeatable): one from `kiln net create` for the
    /// daemonless backend (the VM keeps its NAT NIC for outbound access), a libvirt network
    /// for libvirt
    #[arg(long = "network", value_name = "NAME", value_parser = crate::ui::parse_name)]
    pub networks: Vec<String>,
    /// What the NAT NIC reaches: nat (out, but not the host's loopback), none (nothing; port
    /// forwards still come in) or host (also every service on the host's 127.0.0.1)
    /// [default: nat, or the config's `net`]
    #[arg(long = "net", value_name = "POLICY", value_parser = crate::ui::parse_net_policy)]
    pub net: Option<NetPolicy>,
    /// Where the VM runs: qemu (daemonless, this machine) or libvirt [default: the config's
    /// `backend`, else qemu]
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// The libvirt URI (implies --backend libvirt; default: $KILN_LIBVIRT_URI, the config's
    /// `libvirt_uri`, or qemu:///system), e.g. qemu+ssh://root@host/system
    #[arg(long, value_name = "URI")]
    pub connect: Option<String>,
    /// Print the new VM as JSON (the fields of `kiln ls --json`) instead of a sentence
    #[arg(long)]
    pub json: bool,
    /// Print how long each stage took (host preparation, QEMU start, first console output,
    /// kernel, init, agent; or the load and re-key of a warm start)
    #[arg(long)]
    pub timings: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    Qemu,
    Libvirt,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

impl From<Accel> for AccelChoice {
    fn from(accel: Accel) -> Self {
        match accel {
            Accel::Auto => Self::Auto,
            Accel::Kvm => Self::Kvm,
            Accel::Tcg => Self::Tcg,
        }
    }
}

/// clap value parser for `KEY=VALUE` metadata: a bad one is a usage error with a hint.
pub fn parse_metadata(text: &str) -> Result<(String, String), String> {
    kiln::spec::parse_assignment(text).map_err(|err| {
        let hint = kiln::spec::SpecError::from(err.clone())
            .hint()
            .unwrap_or_default();
        format!("{err}\n  hint: {hint}")
    })
}

fn parse_secret(text: &str) -> Result<(String, std::path::PathBuf), String> {
    let (name, path) = text.split_once('=').ok_or_else(|| {
        format!("{text:?} is not NAME=PATH\n  hint: e.g. --secret token=./token.txt")
    })?;
    if !kiln::spec::valid_metadata_key(name) {
        return Err(format!(
            "secret name {name:?} is not a plain identifier\n  hint: a name starts with a \
             letter, then letters, digits, '_', '-' or '.'"
        ));
    }
    // A relative path means the current directory's.
    std::path::absolute(path)
        .map(|path| (name.to_owned(), path))
        .map_err(|err| format!("cannot resolve {path:?}: {err}"))
}

fn parse_boot_device(text: &str) -> Result<kiln::spec::BootDevice, String> {
    match text {
        "network" | "net" | "pxe" => Ok(kiln::spec::BootDevice::Network),
        "disk" => Ok(kiln::spec::BootDevice::Disk),
        other => Err(format!(
            "unknown boot device {other:?}: use network or disk"
        )),
    }
}

pub fn kiln_with_timeout(boot_timeout: u64) -> kiln::Result<Kiln> {
    let policy = kiln::BootPolicy::default().timeout(Duration::from_secs(boot_timeout));
    Ok(Kiln::from_env()?.with_boot_policy(policy))
}

pub async fn run(args: Args) -> Outcome {
    // Flags, then the environment, then the config file, then kiln's defaults.
    let config = kiln::config::Config::load()?;
    let memory = args.memory.unwrap_or(config.memory.value);
    let backend = args.backend.unwrap_or(match config.backend.value {
        kiln::config::Backend::Qemu => BackendArg::Qemu,
        kiln::config::Backend::Libvirt => BackendArg::Libvirt,
    });
    let mut builder = VmSpec::builder(&args.name)
        .cpus(args.cpus.unwrap_or(config.cpus.value))
        .memory(memory)
        .accel(args.accel.into())
        .image(args.image.as_deref().unwrap_or(&config.image.value))
        .net_policy(args.net.unwrap_or(config.net.value));
    if let Some(size) = args.root_size {
        builder = builder.root_size(size);
    }
    if !args.boot.is_empty() {
        builder = builder.boot_order(args.boot.iter().copied());
    }
    if let Some(file) = &args.user_data {
        let text = std::fs::read_to_string(file).map_err(kiln::IoError::at("read", file))?;
        let cloud_init = kiln::spec::CloudInit::raw(text).map_err(kiln::spec::SpecError::from)?;
        builder = builder.cloud_init(cloud_init);
    }
    for (key, value) in args.metadata {
        builder = builder.metadata(key, value);
    }
    for (name, path) in args.secrets {
        builder = builder.secret(name, path);
    }
    for size in args.disks {
        builder = builder.disk(DiskSpec::new(size));
    }
    for share in args.volumes {
        // A relative host path means the current directory's, like `docker -v ./x:/x`.
        let host = std::path::absolute(share.host())
            .map_err(kiln::IoError::at("resolve", share.host()))?;
        let absolute = ShareSpec::new(host, share.guest());
        builder = builder.share(if share.is_read_only() {
            absolute.read_only()
        } else {
            absolute
        });
    }
    for forward in args.ports {
        builder = builder.port(forward);
    }
    let on_libvirt = args.connect.is_some() || backend == BackendArg::Libvirt;
    if !args.networks.is_empty() && !on_libvirt {
        builder = builder.network(NetworkRef::User);
    }
    for network in &args.networks {
        builder = builder.network(NetworkRef::named(network));
    }
    let spec = builder.build()?;
    let kiln = kiln_with_timeout(args.boot_timeout)?.with_warm_starts(!args.cold);
    let uri = match (backend, args.connect) {
        (_, Some(uri)) => Some(uri),
        (BackendArg::Libvirt, None) => Some(config.libvirt_uri.value.clone()),
        (BackendArg::Qemu, None) => None,
    };
    let on = uri
        .as_deref()
        .map(|u| format!(" on {u}"))
        .unwrap_or_default();
    eprintln!(
        "Creating {} ({} vCPU, {}, image {}){on}",
        spec.name(),
        spec.cpus(),
        memory,
        spec.image()
    );
    let fleet = Fleet::new(kiln);
    let progress = Progress::new();
    let timings = kiln::progress::Timings::new(&progress);
    let started = std::time::Instant::now();
    match &uri {
        Some(uri) => fleet.up_on(uri, &spec, &timings).await?,
        None => drop(fleet.kiln().up(spec.clone(), &timings).await?),
    }
    if args.timings {
        let mut entries = timings.entries();
        entries.push(("total", started.elapsed()));
        crate::ui::print_timings(&entries);
    }
    if args.json {
        let host = fleet.locate(spec.name(), uri.as_deref()).await?;
        if let Some(info) = host.find(spec.name()).await? {
            crate::ui::print_json(&info)?;
        }
        return Ok(0);
    }
    println!(
        "{} is running{on}. Try: kiln exec {} -- uname -a",
        spec.name(),
        spec.name()
    );
    Ok(0)
}
