use kiln::Kiln;

use super::Outcome;
use crate::ui::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
}

pub async fn run(args: Args) -> Outcome {
    Kiln::from_env()?.stop(&args.name, &Progress::new()).await?;
    println!("{} is stopped", args.name);
    Ok(0)
}
