use kiln::Kiln;
use kiln::spec::PortForward;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_parser = crate::ui::parse_name)]
    pub name: String,
    /// The forward: [ADDR:]HOST:GUEST[/udp]; without it, list the VM's forwards
    pub forward: Option<PortForward>,
    /// Remove the forward instead of adding it
    #[arg(long)]
    pub rm: bool,
}

pub async fn run(args: Args) -> Outcome {
    let kiln = Kiln::from_env()?;
    match args.forward {
        None => {
            let vm = kiln.get(&args.name).await?;
            for forward in vm.record().spec.ports() {
                println!("{forward}");
            }
        }
        Some(forward) if args.rm => {
            kiln.unforward(&args.name, forward).await?;
            println!("{forward} removed from {}", args.name);
        }
        Some(forward) => {
            kiln.forward(&args.name, forward).await?;
            println!("{forward} forwarded to {}", args.name);
        }
    }
    Ok(0)
}
