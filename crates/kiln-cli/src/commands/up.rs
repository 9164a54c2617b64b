use std::time::Duration;

use kiln::{AccelChoice, ByteSize, DiskSpec, Kiln, VmSpec};

use super::Outcome;
use crate::ui::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// VM name: 1-63 characters of a-z, 0-9 and '-'
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    /// Number of vCPUs
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory, e.g. 512M or 2G
    #[arg(long, default_value = "512M")]
    pub memory: ByteSize,
    /// Add a blank qcow2 disk of this size (repeatable), e.g. --disk 4G
    #[arg(long = "disk")]
    pub disks: Vec<ByteSize>,
    /// Accelerator: auto picks KVM where it runs stock guests, TCG otherwise
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    pub accel: Accel,
    /// Seconds a boot may take before it is retried or fails
    #[arg(long, default_value_t = 60)]
    pub boot_timeout: u64,
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

pub fn kiln_with_timeout(boot_timeout: u64) -> kiln::Result<Kiln> {
    let policy = kiln::vm_boot_policy(Duration::from_secs(boot_timeout));
    Ok(Kiln::from_env()?.with_boot_policy(policy))
}

pub async fn run(args: Args) -> Outcome {
    let mut builder = VmSpec::builder(&args.name)
        .cpus(args.cpus)
        .memory(args.memory)
        .accel(args.accel.into());
    for size in args.disks {
        builder = builder.disk(DiskSpec::new(size));
    }
    let spec = builder.build()?;
    let kiln = kiln_with_timeout(args.boot_timeout)?;
    eprintln!(
        "Creating {} ({} vCPU, {})",
        spec.name(),
        spec.cpus(),
        args.memory
    );
    let vm = kiln.up(spec, &Progress::new()).await?;
    println!(
        "{} is running. Try: kiln exec {} -- uname -a",
        vm.name(),
        vm.name()
    );
    Ok(0)
}
