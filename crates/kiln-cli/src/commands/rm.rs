use kiln::Kiln;

use super::Outcome;
use crate::ui::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    /// Remove a running VM too (its machine is killed)
    #[arg(long, short)]
    pub force: bool,
}

pub async fn run(args: Args) -> Outcome {
    Kiln::from_env()?
        .remove(&args.name, args.force, &Progress::new())
        .await?;
    println!("{} is removed", args.name);
    Ok(0)
}
