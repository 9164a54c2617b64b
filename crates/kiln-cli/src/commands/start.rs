use kiln::topology::Fleet;

use super::Outcome;
use super::up::kiln_with_timeout;
use crate::ui::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    #[command(flatten)]
    pub target: super::Target,
    /// Seconds a boot may take before it is retried or fails
    #[arg(long, default_value_t = 60)]
    pub boot_timeout: u64,
}

pub async fn run(args: Args) -> Outcome {
    let fleet = Fleet::new(kiln_with_timeout(args.boot_timeout)?);
    let progress = Progress::new();
    let host = args.target.locate(&fleet, &args.name).await?;
    host.start(&args.name, &progress).await?;
    println!("{} is running", args.name);
    Ok(0)
}
