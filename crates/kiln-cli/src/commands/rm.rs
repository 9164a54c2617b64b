use super::Outcome;
use crate::ui::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub vms: super::Many,
    /// Remove a running VM too (its machine is killed)
    #[arg(long, short)]
    pub force: bool,
}

pub async fn run(args: Args) -> Outcome {
    let fleet = super::fleet()?;
    let progress = Progress::new();
    args.vms
        .each(&fleet, |name| {
            let (fleet, progress) = (&fleet, &progress);
            let connect = args.vms.target.connect.as_deref();
            async move {
                fleet.remove(&name, connect, args.force, progress).await?;
                println!("{name} is removed");
                Ok(())
            }
        })
        .await
}
