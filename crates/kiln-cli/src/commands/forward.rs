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
    /// List the forwards as JSON: [{"protocol", "host_addr", "host_port", "guest_port"}]
    #[arg(long, conflicts_with = "forward")]
    pub json: bool,
    #[command(flatten)]
    pub target: super::Target,
}

pub async fn run(args: Args) -> Outcome {
    let host = args.target.locate(&super::fleet()?, &args.name).await?;
    match args.forward {
        None if args.json => crate::ui::print_json(&host.forwards(&args.name).await?)?,
        None => {
            for forward in host.forwards(&args.name).await? {
                println!("{forward}");
            }
        }
        Some(forward) if args.rm => {
            host.remove_forward(&args.name, forward).await?;
            println!("{forward} removed from {}", args.name);
        }
        Some(forward) => {
            host.add_forward(&args.name, forward).await?;
            println!("{forward} forwarded to {}", args.name);
        }
    }
    Ok(0)
}
