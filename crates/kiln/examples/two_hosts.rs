//! Two libvirt hosts under one topology: `db` is pinned to the first, the web VMs are spread.
//!
//! ```text
//! KILN_HOST_A=qemu:///system KILN_HOST_B=qemu+ssh://root@host-b/system \
//!   cargo run --example two_hosts -- apply --yes
//! ```
use std::process::ExitCode;

use kiln::score::{NetworkScore, Score, VmScore};
use kiln::spec::NetworkSpec;
use kiln::topology::{LibvirtHost, MultiHost};
use kiln::{NetworkRef, Paths, VmSpec};

#[tokio::main]
async fn main() -> ExitCode {
    kiln::cli::run_with(setup).await
}

async fn setup() -> kiln::Result<(MultiHost, Vec<Box<dyn Score<MultiHost>>>)> {
    let env = |key: &str, default: &str| std::env::var(key).unwrap_or_else(|_| default.to_owned());
    let paths = Paths::from_env()?;
    let topology = MultiHost::new()
        .with_host(
            "a",
            LibvirtHost::connect(&env("KILN_HOST_A", "test:///default"), &paths).await?,
        )
        .with_host(
            "b",
            LibvirtHost::connect(&env("KILN_HOST_B", "test:///default"), &paths).await?,
        )
        .place("db", "a");
    let net = NetworkSpec::isolated("backend", "10.78.0.0/24")
        .dhcp([10, 78, 0, 100], [10, 78, 0, 200])
        .build()?;
    let vm = |name: &str| {
        VmSpec::builder(name)
            .memory_mib(256)
            .network(NetworkRef::named("backend"))
            .build()
    };
    let scores: Vec<Box<dyn Score<MultiHost>>> = vec![
        Box::new(NetworkScore::new("backend-net", [net])?),
        Box::new(VmScore::new(
            "fleet",
            [vm("db")?, vm("web-1")?, vm("web-2")?],
        )?),
    ];
    Ok((topology, scores))
}
