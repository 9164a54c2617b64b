use super::Outcome;
use crate::ui;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON: [{"host", "reachable", "vms", "free_memory_bytes", "cpus", "transport",
    /// "authenticated", "error"}]
    #[arg(long)]
    pub json: bool,
}

/// This machine and every libvirt host kiln has made VMs on: whether each answers, its VMs,
/// its free memory and how its transport authenticates. Exits 1 when a host does not answer.
pub async fn run(args: Args) -> Outcome {
    let hosts = super::fleet()?.hosts().await?;
    if args.json {
        ui::print_json(&hosts)?;
    } else {
        let rows: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| {
                vec![
                    h.host.clone(),
                    if h.reachable { "yes" } else { "NO" }.to_owned(),
                    h.vms.to_string(),
                    h.free_memory_bytes
                        .map_or_else(|| "-".to_owned(), ui::human_bytes),
                    h.cpus.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                    if h.authenticated {
                        h.transport.clone()
                    } else {
                        format!("UNAUTHENTICATED: {}", h.transport)
                    },
                    h.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print!(
            "{}",
            ui::table(
                &[
                    "HOST",
                    "UP",
                    "VMS",
                    "FREE MEMORY",
                    "CPUS",
                    "TRANSPORT",
                    "ERROR"
                ],
                &rows
            )
        );
    }
    Ok(i32::from(hosts.iter().any(|h| !h.reachable)))
}
