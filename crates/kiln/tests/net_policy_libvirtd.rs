//! The user-mode NIC's policies on a real libvirtd, probed as on the daemonless backend
//! (`net_policy.rs`, the same probes from `kiln_testkit::net`). A service bound only to the
//! host's loopback must stay out of reach under `nat` and `none`, through slirp's gateway
//! (10.0.2.2) and through kiln's NAT bridge (10.213.37.1); a service on the host's own
//! address is reached through NAT under `nat` and `host`.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::Ipv4Addr;
use std::time::Duration;

use kiln::progress::NoProgress;
use kiln::score::VmHost;
use kiln::topology::LibvirtHost;
use kiln::{ExecRequest, NetPolicy, VmSpec};
use kiln_testkit::{TestEnv, net, require_libvirtd, unique_name};

async fn run(host: &LibvirtHost, vm: &str, script: &str) -> Vec<u8> {
    let agent = host.vm_agent(vm, Duration::from_secs(30)).await.unwrap();
    let run = async {
        agent
            .exec(ExecRequest::new(["sh", "-c", script]))
            .await
            .unwrap()
            .output()
            .await
            .unwrap()
    };
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the probes finish within their own timeouts")
        .stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_policy_reaches_exactly_what_it_promises_on_libvirt() {
    require_libvirtd();
    let env = TestEnv::new();
    let id = unique_name("kt");
    let host = env.libvirt_host("qemu:///system", &id).await;
    let loopback_port = net::host_service(Ipv4Addr::LOCALHOST);
    let address = net::host_address();
    let outbound_port = net::host_service(address);
    let via_gateways = ["10.0.2.2".to_owned(), "10.213.37.1".to_owned()];
    let outbound = [address.to_string()];

    // (policy, the host's loopback is reached through a gateway, the host's address is)
    for (policy, loopback, out) in [
        (NetPolicy::Nat, false, true),
        (NetPolicy::None, false, false),
        (NetPolicy::Host, true, true),
    ] {
        let name = format!("{id}-{policy}");
        let spec = VmSpec::builder(&name)
            .memory_mib(256)
            .net_policy(policy)
            .build()
            .unwrap();
        let result = async {
            host.up(&spec, &NoProgress).await?;
            // The address comes from DHCP, in the background of the guest's boot.
            let patience = if policy == NetPolicy::None {
                Duration::from_secs(3)
            } else {
                Duration::from_secs(30)
            };
            let leased = kiln_testkit::wait_until(patience, || async {
                let out = run(
                    &host,
                    &name,
                    "ip -4 addr show eth0 2>/dev/null | grep -c inet",
                )
                .await;
                String::from_utf8_lossy(&out).trim() != "0" && !out.is_empty()
            })
            .await;
            assert_eq!(leased, policy != NetPolicy::None, "{policy}: a lease");
            let seen = net::probe_results(
                &run(
                    &host,
                    &name,
                    &net::probe_script(loopback_port, &via_gateways),
                )
                .await,
                &via_gateways,
            );
            // slirp's gateway is the loopback under `host`; the NAT bridge never is.
            let expected = vec![
                (via_gateways[0].clone(), loopback),
                (via_gateways[1].clone(), false),
            ];
            assert_eq!(seen, expected, "{policy}: the host's loopback");
            let seen = net::probe_results(
                &run(&host, &name, &net::probe_script(outbound_port, &outbound)).await,
                &outbound,
            );
            assert_eq!(seen, vec![(outbound[0].clone(), out)], "{policy}: outbound");
            Ok::<_, kiln::Error>(())
        }
        .await;
        let removed = host.remove(&name, true, &NoProgress).await;
        result.unwrap();
        removed.unwrap();
    }
}

/// The address DHCP gave a VM's first NIC.
async fn address_of(host: &LibvirtHost, vm: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(
            host,
            vm,
            "ip -4 -o addr show eth0 | sed -n 's/.* inet \\([0-9.]*\\)\\/.*/\\1/p'",
        )
        .await;
        let address = String::from_utf8_lossy(&out).trim().to_owned();
        if !address.is_empty() {
            return address;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{vm} got no address on kiln-nat"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Two VMs under `nat` share kiln's NAT bridge, whose ports are isolated: each reaches the
/// gateway (and the host through it) but never the other's services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_on_the_nat_bridge_cannot_reach_each_other() {
    require_libvirtd();
    let env = TestEnv::new();
    let id = unique_name("kt-iso");
    let host = env.libvirt_host("qemu:///system", &id).await;
    let (a, b) = (format!("{id}-a"), format!("{id}-b"));
    let result = tokio::spawn({
        let (host, a, b) = (host.clone(), a.clone(), b.clone());
        async move { isolation_body(&host, &a, &b).await }
    })
    .await;
    for name in [&a, &b] {
        host.remove(name, true, &NoProgress).await.unwrap();
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn isolation_body(host: &LibvirtHost, a: &str, b: &str) {
    for name in [a, b] {
        let spec = VmSpec::builder(name).memory_mib(256).build().unwrap();
        host.up(&spec, &NoProgress).await.unwrap();
    }
    let address = address_of(host, a).await;
    run(
        host,
        a,
        "mkdir -p /srv/www && echo served > /srv/www/x && httpd -p 80 -h /srv/www",
    )
    .await;
    // The server is up: the host reaches it over the bridge.
    let from_host = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((address.as_str(), 80)),
    )
    .await;
    assert!(
        matches!(from_host, Ok(Ok(_))),
        "the host cannot reach {a}'s server at {address}: {from_host:?}"
    );
    // The other VM cannot.
    address_of(host, b).await;
    let out = run(
        host,
        b,
        &format!(
            "printf 'GET /x HTTP/1.0\\r\\n\\r\\n' | timeout 8 nc -w 3 {address} 80; echo \"rc=$?\""
        ),
    )
    .await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        !out.contains("served") && !out.contains("rc=0"),
        "{b} reached {a} at {address}: {out}"
    );
}
