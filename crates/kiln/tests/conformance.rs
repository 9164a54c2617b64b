//! The conformance suite: one set of verb tests, the same bodies, run against the daemonless
//! backend (`LocalHost`) and a real libvirtd (`LibvirtHost`) through the one `Host` trait.
//! What passes here behaves the same on both; the few honest differences are asserted as
//! such (a typed `Unsupported`), never skipped.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use kiln::progress::NoProgress;
use kiln::spec::{DiskSpec, PortForward};
use kiln::topology::{Host, LocalHost};
use kiln::{Error, VmSpec, VmState};
use kiln_testkit::{TestEnv, require_libvirtd, sh, unique_name};

/// Where the hosts differ, by design (see docs/hosts.md).
struct Differences {
    /// Port forwards (otherwise `Error::Unsupported`).
    forwards: bool,
    /// Clones of a snapshot (otherwise `Error::Unsupported`).
    clone: bool,
    /// A snapshot the VM's disks still read through after a restore can be removed
    /// (otherwise `Error::SnapshotInUse` until the VM is removed).
    remove_snapshot_in_use: bool,
}

async fn state(host: &dyn Host, name: &str) -> Option<VmState> {
    host.find(name).await.unwrap().map(|info| info.state)
}

fn not_found(result: kiln::Result<impl std::fmt::Debug>, verb: &str) {
    match result {
        Err(Error::VmNotFound { .. }) => {}
        other => panic!("{verb} of a VM that does not exist: {other:?}"),
    }
}

/// Every verb, in the order an operator meets them.
async fn conformance(host: &dyn Host, name: &str, differences: Differences) {
    let p = &NoProgress;

    // A name nobody has: every verb says so, the same way.
    let ghost = format!("{name}-ghost");
    assert_eq!(host.find(&ghost).await.unwrap().map(|i| i.name), None);
    not_found(host.start(&ghost, p).await, "start");
    not_found(host.stop(&ghost, p).await, "stop");
    not_found(host.set_paused(&ghost, true).await, "pause");
    not_found(host.agent(&ghost, Duration::from_secs(2)).await, "agent");
    not_found(host.read_log(&ghost, 0).await, "logs");
    not_found(host.snapshots(&ghost).await, "snapshot ls");
    not_found(host.remove(&ghost, true, p).await, "rm");

    // up: running, listed, its name taken.
    let spec = VmSpec::builder(name)
        .memory_mib(256)
        .disk(DiskSpec::new_gib(1))
        .build()
        .unwrap();
    host.up(&spec, p).await.unwrap();
    assert_eq!(state(host, name).await, Some(VmState::Running));
    assert!(host.list().await.unwrap().iter().any(|vm| vm.name == name));
    match host.up(&spec, p).await {
        Err(Error::VmAlreadyExists { .. }) => {}
        other => panic!("a second up of {name}: {other:?}"),
    }

    // exec and cp.
    assert_eq!(sh(host, name, "echo hello").await, "hello\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("note.txt");
    std::fs::write(&file, b"from the host\n").unwrap();
    let agent = host.agent(name, Duration::from_secs(30)).await.unwrap();
    kiln::copy::push(&agent, &file, "/tmp/note.txt", &kiln::progress::NoProgress)
        .await
        .unwrap();
    assert_eq!(sh(host, name, "cat /tmp/note.txt").await, "from the host\n");
    let back = dir.path().join("back.txt");
    kiln::copy::pull(
        &agent,
        "/tmp/note.txt",
        &back,
        &Default::default(),
        &kiln::progress::NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), b"from the host\n");
    drop(agent);

    // logs: the console shows the agent starting.
    let mut log = Vec::new();
    let mut offset = 0;
    loop {
        let chunk = host.read_log(name, offset).await.unwrap();
        if chunk.data.is_empty() {
            break;
        }
        offset = chunk.next_offset;
        log.extend(chunk.data);
    }
    assert!(
        String::from_utf8_lossy(&log).contains("kiln-agent"),
        "the console log of {name} does not show the agent"
    );

    // pause: the agent is refused at once, as paused; resume brings it back.
    host.set_paused(name, true).await.unwrap();
    assert_eq!(state(host, name).await, Some(VmState::Paused));
    match host.agent(name, Duration::from_secs(2)).await {
        Err(Error::WrongState {
            state: VmState::Paused,
            ..
        }) => {}
        other => panic!("the agent of a paused VM: {other:?}"),
    }
    host.set_paused(name, false).await.unwrap();
    assert_eq!(state(host, name).await, Some(VmState::Running));
    assert_eq!(sh(host, name, "echo back").await, "back\n");

    // snapshot round trip.
    sh(host, name, "echo one > /tmp/mark").await;
    let info = host.save_snapshot(name, "s1", false, p).await.unwrap();
    assert_eq!(info.name, "s1");
    match host.save_snapshot(name, "s1", false, p).await {
        Err(Error::SnapshotExists { .. }) => {}
        other => panic!("a second snapshot s1: {other:?}"),
    }
    sh(host, name, "echo two > /tmp/mark").await;
    host.restore_snapshot(name, "s1", p).await.unwrap();
    assert_eq!(sh(host, name, "cat /tmp/mark").await, "one\n");
    let names: Vec<String> = host
        .snapshots(name)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["s1"]);
    match host.restore_snapshot(name, "nope", p).await {
        Err(Error::SnapshotNotFound { .. }) => {}
        other => panic!("restoring a snapshot that does not exist: {other:?}"),
    }

    // clone, where the host can.
    let twin = format!("{name}-twin");
    match host.clone_vm(name, "s1", &twin, p).await {
        Ok(()) if differences.clone => {
            assert_eq!(sh(host, &twin, "cat /tmp/mark").await, "one\n");
            host.remove(&twin, true, p).await.unwrap();
        }
        Err(Error::Unsupported { .. }) if !differences.clone => {}
        other => panic!("clone: {other:?}"),
    }
    match host.remove_snapshot(name, "s1").await {
        Ok(()) if differences.remove_snapshot_in_use => {
            assert!(host.snapshots(name).await.unwrap().is_empty());
        }
        Err(Error::SnapshotInUse { .. }) if !differences.remove_snapshot_in_use => {
            assert_eq!(host.snapshots(name).await.unwrap().len(), 1);
        }
        other => panic!("removing the snapshot restored from: {other:?}"),
    }

    // forwards, where the host can.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let forward: PortForward = format!("127.0.0.1:{port}:80").parse().unwrap();
    match host.add_forward(name, forward).await {
        Ok(()) if differences.forwards => {
            assert_eq!(host.forwards(name).await.unwrap(), [forward]);
            host.remove_forward(name, forward).await.unwrap();
            assert!(host.forwards(name).await.unwrap().is_empty());
        }
        Err(Error::Unsupported { .. }) if !differences.forwards => {
            assert!(host.forwards(name).await.unwrap().is_empty());
        }
        other => panic!("a forward: {other:?}"),
    }

    // stop and start: stopped means the agent is refused as stopped.
    host.stop(name, p).await.unwrap();
    assert_eq!(state(host, name).await, Some(VmState::Stopped));
    match host.agent(name, Duration::from_secs(2)).await {
        Err(Error::WrongState {
            state: VmState::Stopped,
            ..
        }) => {}
        other => panic!("the agent of a stopped VM: {other:?}"),
    }
    host.start(name, p).await.unwrap();
    assert_eq!(state(host, name).await, Some(VmState::Running));
    assert_eq!(sh(host, name, "echo again").await, "again\n");

    // rm: a running VM needs force; then it is gone everywhere.
    match host.remove(name, false, p).await {
        Err(Error::WrongState {
            state: VmState::Running,
            ..
        }) => {}
        other => panic!("rm of a running VM without force: {other:?}"),
    }
    host.remove(name, true, p).await.unwrap();
    assert_eq!(state(host, name).await, None);
    not_found(host.remove(name, true, p).await, "a second rm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_on_the_daemonless_backend() {
    let env = TestEnv::new();
    let host = LocalHost::new(env.kiln());
    let differences = Differences {
        forwards: true,
        clone: true,
        remove_snapshot_in_use: false,
    };
    conformance(&host, "conform", differences).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_on_libvirt() {
    require_libvirtd();
    let env = TestEnv::new();
    let name = unique_name("kt-conform");
    let host = env.libvirt_host("qemu:///system", &name).await;
    let differences = Differences {
        forwards: false,
        clone: false,
        remove_snapshot_in_use: true,
    };
    // Whatever fails, nothing is left behind on the shared daemon.
    env.on_libvirt(host, name, |host, name| async move {
        conformance(&host, &name, differences).await;
    })
    .await;
}
