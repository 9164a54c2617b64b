use super::Outcome;
use crate::ui::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    #[command(flatten)]
    pub target: super::Target,
}

pub async fn run(args: Args) -> Outcome {
    let fleet = super::fleet()?;
    let progress = Progress::new();
    let host = args.target.locate(&fleet, &args.name).await?;
    host.stop(&args.name, &progress).await?;
    println!("{} is stopped", args.name);
    Ok(0)
}
