//! Real VMs on the daemonless QEMU backend (TCG where KVM cannot run stock guests).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use kiln::progress::NoProgress;
use kiln::{Error, ExecRequest, ExitStatus, VmSpec, VmState};
use kiln_testkit::{TestEnv, wait_until};

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_exec_concurrency_stop_and_start() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let spec = VmSpec::builder("life").memory_mib(256).build().unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();
    assert_eq!(vm.state().await, VmState::Running);

    // QEMU runs under its seccomp filter (`-sandbox`): mode 2 is "filter".
    let pid = std::fs::read_to_string(vm.paths().pidfile()).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
        "QEMU is not sandboxed:\n{status}"
    );

    // The guest runs the image's kernel.
    let image = kiln.images().get("default").unwrap();
    let out = vm
        .exec_output(ExecRequest::new(["uname", "-r"]))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        image.manifest.kernel_release
    );

    // Exit codes and separate streams.
    let out = vm
        .exec_output(sh("echo out; echo err >&2; exit 7"))
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(7));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    // Ten commands at once over one connection, each with its own output.
    let agent = vm.agent().await.unwrap();
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let agent = agent.clone();
            tokio::spawn(async move {
                let out = agent
                    .exec(sh(&format!("echo vm-job-{i}")))
                    .await?
                    .output()
                    .await?;
                Ok::<_, kiln::agent::AgentError>((i, out))
            })
        })
        .collect();
    for handle in handles {
        let (i, out) = handle.await.unwrap().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("vm-job-{i}\n")
        );
    }
    drop(agent);

    // Stop powers it off; exec then says why it cannot run.
    kiln.stop("life", &NoProgress).await.unwrap();
    assert_eq!(kiln.info("life").await.unwrap().state, VmState::Stopped);
    assert_eq!(kiln.info("life").await.unwrap().detail, None);
    let err = vm.exec_output(sh("true")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongState {
                state: VmState::Stopped,
                ..
            }
        ),
        "{err:?}"
    );

    // Start brings the agent back.
    let vm = kiln.start("life", &NoProgress).await.unwrap();
    let out = vm.exec_output(sh("echo back")).await.unwrap();
    assert_eq!(out.stdout, b"back\n");
    kiln.remove("life", true, &NoProgress).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_killed_from_outside_shows_stopped_and_rm_cleans_it() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let spec = VmSpec::builder("victim").memory_mib(256).build().unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();
    let pid = kiln.info("victim").await.unwrap().pid.unwrap();

    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopped = wait_until(Duration::from_secs(10), || async {
        kiln.info("victim").await.unwrap().state == VmState::Stopped
    })
    .await;
    assert!(stopped, "a killed qemu must show as stopped");
    let info = kiln.info("victim").await.unwrap();
    assert_eq!(info.detail.as_deref(), Some("qemu exited unexpectedly"));

    kiln.remove("victim", false, &NoProgress).await.unwrap();
    assert!(!vm.paths().dir().exists());
    assert!(!vm.paths().run_dir().exists());
    assert!(matches!(
        kiln.get("victim").await,
        Err(Error::VmNotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_refuses_a_name_that_exists_and_kvm_where_it_cannot_run() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let spec = VmSpec::builder("dup").memory_mib(256).build().unwrap();
    kiln.up(spec.clone(), &NoProgress).await.unwrap();
    let err = kiln.up(spec, &NoProgress).await.unwrap_err();
    assert!(matches!(err, Error::VmAlreadyExists { .. }), "{err:?}");

    if !kiln.accel_probe().kvm_usable {
        let kvm = VmSpec::builder("kvm")
            .accel(kiln::AccelChoice::Kvm)
            .build()
            .unwrap();
        let err = kiln.up(kvm, &NoProgress).await.unwrap_err();
        assert!(matches!(err, Error::KvmUnavailable { .. }), "{err:?}");
        assert!(
            kiln.get("kvm").await.is_err(),
            "a refused VM must not exist"
        );
    }
}

#[tokio::test]
async fn an_unknown_named_network_is_refused_before_anything_is_created() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let spec = VmSpec::builder("netted")
        .network(kiln::NetworkRef::named("lab"))
        .build()
        .unwrap();
    let err = kiln.up(spec, &NoProgress).await.unwrap_err();
    assert!(
        matches!(err, Error::Net(kiln::net::NetError::NotFound { .. })),
        "{err:?}"
    );
    assert!(!env.home().join("data/vms/netted").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_pidfile_does_not_orphan_qemu() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let spec = VmSpec::builder("nopid").memory_mib(256).build().unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();
    let pid = std::fs::read_to_string(vm.paths().pidfile()).unwrap();
    // A wiped runtime directory, or a starter killed before QEMU wrote it.
    std::fs::remove_file(vm.paths().pidfile()).unwrap();
    kiln.remove("nopid", true, &NoProgress).await.unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    assert!(
        matches!(state, None | Some("Z" | "X")),
        "QEMU {} still runs: {stat}",
        pid.trim()
    );
}
