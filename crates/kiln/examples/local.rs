//! The same kind of VM spec on the daemonless QEMU backend: no daemon, user-mode NAT. A
//! `NetworkScore` does not compile here: this topology has no named networks.
//!
//! ```text
//! cargo run --example local -- apply --yes
//! ```
use std::process::ExitCode;

use kiln::score::{Score, VmScore};
use kiln::topology::LocalHost;
use kiln::{DiskSpec, Kiln, VmSpec};

#[tokio::main]
async fn main() -> ExitCode {
    kiln::cli::run_with(setup).await
}

async fn setup() -> kiln::Result<(LocalHost, Vec<Box<dyn Score<LocalHost>>>)> {
    let web1 = VmSpec::builder("web-1")
        .memory_mib(256)
        .disk(DiskSpec::new_gib(1))
        .build()?;
    let scores: Vec<Box<dyn Score<LocalHost>>> = vec![Box::new(VmScore::new("local", [web1])?)];
    Ok((LocalHost::new(Kiln::from_env()?), scores))
}
