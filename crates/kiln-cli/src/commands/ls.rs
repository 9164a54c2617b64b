use kiln::ByteSize;

use super::Outcome;
use crate::ui;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON for scripts
    #[arg(long)]
    pub json: bool,
    /// List only the VMs on this libvirt host (default: this machine's and those on every
    /// libvirt host kiln has created VMs on)
    #[arg(long, value_name = "URI")]
    pub connect: Option<String>,
}

pub async fn run(args: Args) -> Outcome {
    let fleet = super::fleet()?;
    let listing = match &args.connect {
        Some(uri) => kiln::topology::Listing {
            vms: fleet.connect(uri).await?.list().await?,
            unreachable: Vec::new(),
        },
        None => fleet.list().await?,
    };
    for (uri, err) in &listing.unreachable {
        eprintln!("warning: cannot list the VMs on {uri}: {err}");
    }
    let vms = listing.vms;
    if args.json {
        ui::print_json(&vms)?;
        return Ok(0);
    }
    if vms.is_empty() {
        eprintln!("No VMs. Create one with `kiln up NAME`.");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
            vec![
                vm.name.clone(),
                vm.host.clone().unwrap_or_else(|| "local".into()),
                vm.state.to_string(),
                vm.cpus.to_string(),
                ByteSize::from_mib(vm.memory_mib).to_string(),
                vm.accel
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                vm.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                vm.detail.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        ui::table(
            &[
                "NAME", "HOST", "STATE", "CPUS", "MEMORY", "ACCEL", "PID", "DETAIL"
            ],
            &rows
        )
    );
    Ok(0)
}
