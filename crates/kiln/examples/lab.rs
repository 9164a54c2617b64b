//! A NAT network with a DHCP reservation and two VMs on a libvirt host.
//!
//! ```text
//! cargo run --example lab -- plan
//! cargo run --example lab -- apply --yes
//! KILN_LIBVIRT_URI=qemu+ssh://root@host/system cargo run --example lab -- destroy --yes
//! ```
use std::process::ExitCode;

use kiln::score::{NetworkScore, Score, VmScore};
use kiln::spec::NetworkSpec;
use kiln::topology::LibvirtHost;
use kiln::{DiskSpec, NetworkRef, Paths, VmSpec};

#[tokio::main]
async fn main() -> ExitCode {
    kiln::cli::run_with(lab).await
}

async fn lab() -> kiln::Result<(LibvirtHost, Vec<Box<dyn Score<LibvirtHost>>>)> {
    let uri = std::env::var("KILN_LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".to_owned());
    let web1_mac = "52:54:00:10:00:01".parse()?;
    let lab = NetworkSpec::nat("lab", "10.77.0.0/24")
        .dhcp([10, 77, 0, 100], [10, 77, 0, 200])
        .reserve_host(web1_mac, [10, 77, 0, 10], "web-1")
        .build()?;
    let web1 = VmSpec::builder("web-1")
        .memory_mib(256)
        .network(NetworkRef::named_with_mac("lab", web1_mac))
        .disk(DiskSpec::new_gib(1))
        .build()?;
    let web2 = VmSpec::builder("web-2")
        .memory_mib(256)
        .network(NetworkRef::named("lab"))
        .build()?;

    let host = LibvirtHost::connect(&uri, &Paths::from_env()?).await?;
    let scores: Vec<Box<dyn Score<LibvirtHost>>> = vec![
        Box::new(NetworkScore::new("lab-net", [lab])?),
        Box::new(VmScore::new("lab", [web1, web2])?),
    ];
    Ok((host, scores))
}
