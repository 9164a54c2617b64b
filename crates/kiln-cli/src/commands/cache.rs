use kiln::Kiln;

use super::Outcome;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Remove the warm-start templates (they are made again on the next warm `up`)
    Prune,
}

pub async fn run(command: Command) -> Outcome {
    let Command::Prune = command;
    let removed = Kiln::from_env()?.prune_templates().await?;
    println!("removed {removed} warm-start template(s)");
    Ok(0)
}
