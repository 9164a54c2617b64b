use kiln::topology::Located;

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
    match args.target.locate(&fleet, &args.name).await {
        Ok(Located::Libvirt(host)) => {
            host.remove(&args.name, args.force, &progress).await?;
            fleet.forget_if_empty(&host).await?;
        }
        Ok(Located::Local(_)) => {
            fleet
                .kiln()
                .remove(&args.name, args.force, &progress)
                .await?
        }
        // What an interrupted local `up` left behind has no record; the library cleans it.
        Err(kiln::Error::VmNotFound { .. }) if args.target.connect.is_none() => {
            fleet
                .kiln()
                .remove(&args.name, args.force, &progress)
                .await?;
        }
        Err(err) => return Err(err),
    }
    println!("{} is removed", args.name);
    Ok(0)
}
