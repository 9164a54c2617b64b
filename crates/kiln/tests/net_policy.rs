//! The user-mode NIC's policies on real VMs. A service on the host answers on every address
//! (so on its loopback too). A guest probes it through the gateway (10.0.2.2, the host's
//! loopback under slirp), through the forwards NIC's host address (10.0.3.2), and at the
//! host's own address (plain outbound NAT). Each policy must reach exactly what it promises.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use kiln::progress::NoProgress;
use kiln::{ExecRequest, NetPolicy, VmSpec};
use kiln_testkit::{TestEnv, net};

/// What the guest gets back from each address: the banner, or nothing.
async fn probe(vm: &kiln::Vm, port: u16, targets: &[String]) -> Vec<(String, bool)> {
    let script = net::probe_script(port, targets);
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        vm.exec_output(ExecRequest::new(["sh", "-c", &script])),
    )
    .await
    .expect("the probes finish within their own timeouts")
    .unwrap();
    net::probe_results(&out.stdout, targets)
}

fn passt_pid(env: &TestEnv, vm: &str) -> Option<u32> {
    let file = env.paths().vm(vm).net_pidfile();
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Gone, or a zombie waiting for its parent to reap it.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_policy_reaches_exactly_what_it_promises() {
    let env = TestEnv::new();
    let kiln = env.kiln().with_warm_starts(false);
    let port = net::host_service(std::net::Ipv4Addr::UNSPECIFIED);
    let host = net::host_address().to_string();
    let targets = ["10.0.2.2".to_owned(), "10.0.3.2".to_owned(), host.clone()];

    // (policy, the gateway reaches the host's loopback, the host's address is reachable)
    for (policy, loopback, outbound) in [
        (NetPolicy::Nat, false, true),
        (NetPolicy::None, false, false),
        (NetPolicy::Host, true, true),
    ] {
        let name = format!("net-{policy}");
        let spec = VmSpec::builder(&name)
            .memory_mib(256)
            .net_policy(policy)
            .build()
            .unwrap();
        let vm = kiln.up(spec, &NoProgress).await.unwrap();
        let seen = probe(&vm, port, &targets).await;
        let expected = vec![
            ("10.0.2.2".to_owned(), loopback),
            // The forwards NIC never reaches out, whatever the policy.
            ("10.0.3.2".to_owned(), false),
            (host.clone(), outbound),
        ];
        assert_eq!(seen, expected, "policy {policy}");

        let passt = passt_pid(&env, &name);
        assert_eq!(passt.is_some(), policy == NetPolicy::Nat, "policy {policy}");
        kiln.remove(&name, true, &NoProgress).await.unwrap();
        if let Some(pid) = passt {
            // passt ends with its QEMU: it never outlives the VM.
            let gone =
                kiln_testkit::wait_until(Duration::from_secs(10), || async move { exited(pid) })
                    .await;
            assert!(gone, "passt {pid} outlived its VM");
        }
    }
}

#[test]
fn a_bad_policy_is_a_typed_error_with_a_hint() {
    let err = "open".parse::<NetPolicy>().unwrap_err();
    assert!(
        matches!(err, kiln::SpecError::InvalidNetPolicy { .. }),
        "{err}"
    );
    assert!(err.hint().unwrap().contains("--net"));
    for policy in [NetPolicy::None, NetPolicy::Nat, NetPolicy::Host] {
        assert_eq!(policy.to_string().parse::<NetPolicy>().unwrap(), policy);
    }
}

/// A root guest under `nat` that routes 127.0.0.0/8 out of its NIC: the passt of Debian 12
/// forwards loopback destinations, so only the firewall rule on passt's user keeps the
/// host's loopback out of reach (found by review, reproduced before the rule existed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_guest_routing_loopback_out_does_not_reach_the_host() {
    let env = TestEnv::new();
    let kiln = env.kiln().with_warm_starts(false);
    let port = net::host_service(std::net::Ipv4Addr::LOCALHOST);
    let spec = VmSpec::builder("net-lo").memory_mib(256).build().unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();
    let reroute = "sysctl -w net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.eth0.route_localnet=1 \
        && ip addr del 127.0.0.1/8 dev lo && ip route flush table local 127.0.0.0/8; \
        ip route replace 127.0.0.0/8 via 10.0.2.2 dev eth0";
    let out = vm
        .exec_output(ExecRequest::new(["sh", "-c", reroute]))
        .await
        .unwrap();
    assert_eq!(out.status, kiln::ExitStatus::Code(0), "{out:?}");
    let targets = ["127.0.0.1".to_owned()];
    let seen = probe(&vm, port, &targets).await;
    kiln.remove("net-lo", true, &NoProgress).await.unwrap();
    assert_eq!(
        seen,
        vec![(targets[0].clone(), false)],
        "the host's loopback was reached"
    );
}
