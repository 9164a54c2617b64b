//! Two small VMs on the daemonless backend, started warm (from the template snapshot) when
//! their shape allows. The crash tests kill this program mid-`apply` and apply again.
//!
//! ```text
//! cargo run --example warm_pair -- apply --yes
//! ```
use std::process::ExitCode;

use kiln::score::{Score, VmScore};
use kiln::topology::LocalHost;
use kiln::{Kiln, VmSpec};

#[tokio::main]
async fn main() -> ExitCode {
    kiln::cli::run_with(setup).await
}

async fn setup() -> kiln::Result<(LocalHost, Vec<Box<dyn Score<LocalHost>>>)> {
    let vms = ["pair-a", "pair-b"]
        .into_iter()
        .map(|name| VmSpec::builder(name).memory_mib(256).build())
        .collect::<Result<Vec<_>, _>>()?;
    let scores: Vec<Box<dyn Score<LocalHost>>> = vec![Box::new(VmScore::new("pair", vms)?)];
    let kiln = Kiln::from_env()?.with_warm_starts(true);
    Ok((LocalHost::new(kiln), scores))
}
