//! The user-mode NIC's policies on real VMs. A service on the host answers on every address
//! (so on its loopback too). A guest probes it through the gateway (10.0.2.2, the host's
//! loopback under slirp), through the forwards NIC's host address (10.0.3.2), and at the
//! host's own address (plain outbound NAT). Each policy must reach exactly what it promises.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::time::Duration;

use kiln::progress::NoProgress;
use kiln::{ExecRequest, NetPolicy, VmSpec};
use kiln_testkit::TestEnv;

const BANNER: &str = "kiln-host-service";

/// Answers every connection with [`BANNER`], on all of the host's addresses.
fn host_service() -> u16 {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(format!("{BANNER}\n").as_bytes());
        }
    });
    port
}

/// The host's address on its default route (no packet is sent).
fn host_address() -> Ipv4Addr {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket
        .connect("192.0.2.1:9")
        .or_else(|_| socket.connect("10.255.255.1:9"))
        .unwrap_or_else(|e| panic!("this test needs a non-loopback IPv4 route on the host: {e}"));
    match socket.local_addr().unwrap().ip() {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => ip,
        other => panic!("this test needs a non-loopback IPv4 address on the host, found {other}"),
    }
}

/// What the guest gets back from each address: the banner, or nothing.
async fn probe(vm: &kiln::Vm, port: u16, targets: &[String]) -> Vec<(String, bool)> {
    let script = targets
        .iter()
        // stdin stays open a moment: the passt in Debian 12 does not pass on a server's FIN
        // once the guest has half-closed first (a known limit, docs/security.md).
        .map(|t| format!("echo \"{t}=$(sleep 1 | timeout 8 nc -w 3 {t} {port} 2>/dev/null)\""))
        .collect::<Vec<_>>()
        .join("; ");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        vm.exec_output(ExecRequest::new(["sh", "-c", &script])),
    )
    .await
    .expect("the probes finish within their own timeouts")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    targets
        .iter()
        .map(|t| {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{t}=")))
                .unwrap_or_else(|| panic!("no answer for {t} in {text:?}"));
            (t.clone(), line.contains(BANNER))
        })
        .collect()
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
    let port = host_service();
    let host = host_address().to_string();
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
