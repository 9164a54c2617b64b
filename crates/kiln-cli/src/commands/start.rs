use super::Outcome;
use super::up::kiln_with_timeout;
use crate::ui::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    /// Seconds a boot may take before it is retried or fails
    #[arg(long, default_value_t = 60)]
    pub boot_timeout: u64,
}

pub async fn run(args: Args) -> Outcome {
    let kiln = kiln_with_timeout(args.boot_timeout)?;
    let vm = kiln.start(&args.name, &Progress::new()).await?;
    println!("{} is running", vm.name());
    Ok(0)
}
