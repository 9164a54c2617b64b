use kiln::topology::Fleet;

use super::Outcome;
use super::up::kiln_with_timeout;
use crate::ui::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub vms: super::Many,
    /// Seconds a boot may take before it is retried or fails
    #[arg(long, default_value_t = 60)]
    pub boot_timeout: u64,
}

pub async fn run(args: Args) -> Outcome {
    let fleet = Fleet::new(kiln_with_timeout(args.boot_timeout)?);
    let progress = Progress::new();
    args.vms
        .each(&fleet, |name| {
            let (fleet, progress, target) = (&fleet, &progress, &args.vms.target);
            async move {
                let host = target.locate(fleet, &name).await?;
                host.start(&name, progress).await?;
                println!("{name} is running");
                Ok(())
            }
        })
        .await
}

#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub stop: super::stop::Args,
    /// Seconds a boot may take before it is retried or fails
    #[arg(long, default_value_t = 60)]
    pub boot_timeout: u64,
}

/// Stops each VM (as `kiln stop` does) and starts it again.
pub async fn restart(args: RestartArgs) -> Outcome {
    let fleet = Fleet::new(kiln_with_timeout(args.boot_timeout)?);
    let progress = Progress::new();
    let grace = args.stop.grace();
    args.stop
        .vms
        .each(&fleet, |name| {
            let (fleet, progress, target) = (&fleet, &progress, &args.stop.vms.target);
            async move {
                let host = target.locate(fleet, &name).await?;
                host.stop_within(&name, grace, progress).await?;
                host.start(&name, progress).await?;
                println!("{name} is running");
                Ok(())
            }
        })
        .await
}
