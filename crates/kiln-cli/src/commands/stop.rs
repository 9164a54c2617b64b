use std::time::Duration;

use super::Outcome;
use crate::ui::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub vms: super::Many,
    /// Seconds the guest has to power itself off before its machine is killed
    #[arg(long, value_name = "SECONDS", default_value_t = kiln::topology::DEFAULT_STOP_GRACE.as_secs())]
    pub timeout: u64,
    /// Kill the machine at once, without asking the guest (its unwritten data is lost)
    #[arg(long, short, conflicts_with = "timeout")]
    pub force: bool,
}

impl Args {
    /// How long the guest may take: none with `--force`.
    pub fn grace(&self) -> Duration {
        if self.force {
            Duration::ZERO
        } else {
            Duration::from_secs(self.timeout)
        }
    }
}

pub async fn run(args: Args) -> Outcome {
    let fleet = super::fleet()?;
    let progress = Progress::new();
    let grace = args.grace();
    args.vms
        .each(&fleet, |name| {
            let (fleet, progress, target) = (&fleet, &progress, &args.vms.target);
            async move {
                let host = target.locate(fleet, &name).await?;
                host.stop_within(&name, grace, progress).await?;
                println!("{name} is stopped");
                Ok(())
            }
        })
        .await
}
