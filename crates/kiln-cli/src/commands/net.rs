use kiln::Kiln;

use super::Outcome;
use crate::ui;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a named network for the daemonless backend: a bridge with addresses kiln
    /// hands out (needs root)
    Create {
        #[arg(value_parser = crate::ui::parse_name)]
        name: String,
        /// The subnet, e.g. 10.77.0.0/24 (default: the first free 10.77.N.0/24)
        #[arg(long)]
        subnet: Option<String>,
    },
    /// List named networks and the addresses of their VMs
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a named network and its bridge
    Rm {
        #[arg(value_parser = crate::ui::parse_name)]
        name: String,
        /// Remove it even while VMs are on it (they lose that NIC's link)
        #[arg(long, short)]
        force: bool,
    },
}

pub async fn run(command: Command) -> Outcome {
    let networks = Kiln::from_env()?.networks();
    match command {
        Command::Create { name, subnet } => {
            let subnet = match subnet {
                Some(subnet) => subnet,
                None => {
                    let taken: Vec<_> = networks.list()?.iter().map(|n| n.subnet()).collect();
                    (0..=255u8)
                        .map(|n| format!("10.77.{n}.0/24"))
                        .find(|s| {
                            s.parse::<ipnet::Ipv4Net>().is_ok_and(|s| {
                                !taken.iter().any(|t| kiln::spec::subnets_overlap(*t, s))
                            })
                        })
                        .unwrap_or_else(|| "10.77.0.0/24".to_owned())
                }
            };
            let network = networks.create(&name, &subnet).await?;
            println!(
                "network {} is {} on bridge {} (the host is {}). Try: kiln up NAME --network {}",
                network.name(),
                network.subnet(),
                network.bridge,
                network.gateway(),
                network.name()
            );
        }
        Command::Ls { json } => {
            let list = networks.list()?;
            if json {
                ui::print_json(&list)?;
                return Ok(0);
            }
            if list.is_empty() {
                eprintln!("No networks. Create one with `kiln net create NAME` (as root).");
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|n| {
                    let vms: Vec<String> = n
                        .leases
                        .iter()
                        .map(|(vm, ip)| format!("{vm}={ip}"))
                        .collect();
                    vec![
                        n.name().to_owned(),
                        n.subnet().to_string(),
                        n.bridge.clone(),
                        vms.join(" "),
                    ]
                })
                .collect();
            print!("{}", ui::table(&["NAME", "SUBNET", "BRIDGE", "VMS"], &rows));
        }
        Command::Rm { name, force } => {
            networks.remove(&name, force).await?;
            println!("network {name} is removed");
        }
    }
    Ok(0)
}
