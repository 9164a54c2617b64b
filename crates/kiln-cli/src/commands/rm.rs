use super::Outcome;
use crate::ui::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    #[command(flatten)]
    pub target: super::Target,
    /// Remove a running VM too (its machine is killed)
    #[arg(long, short)]
    pub force: bool,
}

pub async fn run(args: Args) -> Outcome {
    let fleet = super::fleet()?;
    let progress = Progress::new();
    fleet
        .remove(
            &args.name,
            args.target.connect.as_deref(),
            args.force,
            &progress,
        )
        .await?;
    println!("{} is removed", args.name);
    Ok(0)
}
