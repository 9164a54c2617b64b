//! Pause, resume and snapshots on a real VM: a restore brings back memory and disk as they
//! were, a paused VM refuses exec at once, and a snapshot still needed is not removed.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use kiln::progress::NoProgress;
use kiln::{DiskSpec, Error, ExecRequest, ExitStatus, VmSpec, VmState};
use kiln_testkit::TestEnv;

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_write_restore_brings_memory_and_disk_back() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let spec = VmSpec::builder("snap")
        .memory_mib(256)
        .disk(DiskSpec::new(kiln::ByteSize::from_mib(64)))
        .build()
        .unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();

    let out = vm
        .exec_output(sh("echo before > /root/before.txt && echo disk-before | dd of=/dev/vda conv=fsync 2>/dev/null"))
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(0), "{out:?}");
    let saving = kiln_testkit::events::Recorder::default();
    let info = kiln
        .save_snapshot("snap", "s1", false, &saving)
        .await
        .unwrap();
    assert_eq!(info.disks, 1);
    assert!(info.memory_bytes > 1 << 20, "{info:?}");
    // The save's bar counts the guest's RAM and ends full.
    let stage = kiln::progress::Stage::SaveSnapshot;
    assert!(saving.finished(stage));
    let (done, total) = saving.last_bytes(stage, 1);
    assert!(
        total == Some(done) && done >= 256 << 20,
        "{done} of {total:?}"
    );
    let err = kiln.snapshot("snap", "s1").await.unwrap_err();
    assert!(matches!(err, Error::SnapshotExists { .. }), "{err}");

    // The VM runs on after the save; changes made now are undone by the restore.
    let out = vm
        .exec_output(sh("echo after > /root/after.txt && echo disk-after! | dd of=/dev/vda conv=fsync 2>/dev/null"))
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(0), "{out:?}");
    let vm = kiln.restore("snap", "s1", &NoProgress).await.unwrap();
    let out = vm
        .exec_output(sh("ls /root; dd if=/dev/vda bs=12 count=1 2>/dev/null"))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "before.txt\ndisk-before\n"
    );

    // A second restore of the same snapshot works as well, and later: its guest's clock is
    // the host's, not the one it had when it was saved.
    vm.exec_output(sh("echo again > /root/again.txt"))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let vm = kiln.restore("snap", "s1", &NoProgress).await.unwrap();
    let out = vm.exec_output(sh("ls /root; date +%s")).await.unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let (listing, clock) = text.rsplit_once("before.txt\n").unwrap();
    assert_eq!(listing, "");
    let guest_now: f64 = clock.trim().parse().unwrap();
    assert!(
        (host_now - guest_now).abs() < 2.5,
        "the restored guest's clock is {:.1} s off",
        host_now - guest_now
    );

    // The VM's disk reads through the snapshot's frozen file: it cannot go.
    let err = kiln.remove_snapshot("snap", "s1").await.unwrap_err();
    assert!(matches!(err, Error::SnapshotInUse { .. }), "{err}");
    assert_eq!(kiln.snapshots("snap").await.unwrap().len(), 1);
    let err = kiln.restore("snap", "nope", &NoProgress).await.unwrap_err();
    assert!(matches!(err, Error::SnapshotNotFound { .. }), "{err}");

    kiln.remove("snap", true, &NoProgress).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_makes_exec_fail_fast_and_resume_continues() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let spec = VmSpec::builder("pz").memory_mib(256).build().unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();
    // Memory-only snapshots of a disk-less VM can be removed at once.
    kiln.snapshot("pz", "m1").await.unwrap();
    kiln.remove_snapshot("pz", "m1").await.unwrap();
    assert!(kiln.snapshots("pz").await.unwrap().is_empty());

    kiln.pause("pz").await.unwrap();
    assert_eq!(vm.state().await, VmState::Paused);
    assert_eq!(kiln.info("pz").await.unwrap().state, VmState::Paused);
    let started = std::time::Instant::now();
    let err = vm.agent().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongState {
                state: VmState::Paused,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "exec must fail fast"
    );
    assert!(err.hint().unwrap().contains("kiln resume pz"));
    kiln.pause("pz").await.unwrap(); // pausing twice is fine

    kiln.resume("pz").await.unwrap();
    let out = vm.exec_output(sh("echo alive")).await.unwrap();
    assert_eq!(out.stdout, b"alive\n");

    kiln.stop("pz", &NoProgress).await.unwrap();
    let err = kiln.snapshot("pz", "s").await.unwrap_err();
    assert!(matches!(err, Error::WrongState { .. }), "{err}");
    let err = kiln.pause("pz").await.unwrap_err();
    assert!(matches!(err, Error::WrongState { .. }), "{err}");
    kiln.remove("pz", true, &NoProgress).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_runs_beside_the_original_with_its_own_identity() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let spec = VmSpec::builder("orig")
        .memory_mib(256)
        .disk(DiskSpec::new(kiln::ByteSize::from_mib(16)))
        .build()
        .unwrap();
    let orig = kiln.up(spec, &NoProgress).await.unwrap();
    orig.exec_output(sh("echo shared > /root/marker"))
        .await
        .unwrap();
    kiln.snapshot("orig", "base").await.unwrap();

    let clone = kiln
        .clone_from("orig", "base", "twin", &NoProgress)
        .await
        .unwrap();
    let probe = "hostname; cat /root/marker; head -c 16 /dev/urandom | od -An -tx1";
    let a = orig.exec_output(sh(probe)).await.unwrap();
    let b = clone.exec_output(sh(probe)).await.unwrap();
    let (a, b) = (
        String::from_utf8_lossy(&a.stdout).into_owned(),
        String::from_utf8_lossy(&b.stdout).into_owned(),
    );
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    assert_eq!(a[0], "orig");
    assert_eq!(b[0], "twin", "the clone has its own hostname");
    assert_eq!(a[1], "shared");
    assert_eq!(b[1], "shared", "the clone has the original's files");
    assert_ne!(a[2], b[2], "clones must not share random numbers");

    // The clone was re-keyed: its secret is its own, and new connections use it.
    let secret =
        |vm: &str| std::fs::read(env.home().join(format!("data/vms/{vm}/secret"))).unwrap();
    assert_ne!(secret("orig"), secret("twin"));
    let again = kiln.get("twin").await.unwrap();
    assert_eq!(
        again.exec_output(sh("echo ok")).await.unwrap().stdout,
        b"ok\n"
    );

    // The new identity outlives the agent and the guest's boot: after each, the clone's own
    // secret opens it and the original's (the snapshot's) is refused.
    let twin_socket = again.paths().agent_socket(0);
    for (what, script) in [
        (
            "an agent restart",
            "(sleep 0.3; killall kiln-agent) >/dev/null 2>&1 &",
        ),
        ("a guest reboot", "(sleep 0.3; reboot -f) >/dev/null 2>&1 &"),
    ] {
        again.exec_output(sh(script)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let back = kiln_testkit::wait_until(std::time::Duration::from_secs(90), || {
            let again = &again;
            async move {
                again
                    .exec_output(sh("echo back"))
                    .await
                    .is_ok_and(|out| out.stdout == b"back\n")
            }
        })
        .await;
        assert!(
            back,
            "the clone's own secret no longer opens it after {what}"
        );
        let err = kiln::AgentClient::connect(
            &twin_socket,
            &secret("orig"),
            std::time::Duration::from_secs(10),
        )
        .await
        .map(drop)
        .unwrap_err();
        assert!(
            matches!(err, kiln::agent::AgentError::AgentNotAuthentic),
            "after {what}, the original's secret: {err:?}"
        );
    }

    // The clone's disk reads through the snapshot: it stays.
    let err = kiln.remove_snapshot("orig", "base").await.unwrap_err();
    assert!(matches!(err, Error::SnapshotInUse { .. }), "{err}");
    let err = kiln
        .clone_from("orig", "base", "twin", &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::VmAlreadyExists { .. }), "{err}");

    // Nor can the original go while the clone reads through its files.
    let err = kiln.remove("orig", true, &NoProgress).await.unwrap_err();
    assert!(matches!(err, Error::VmInUse { .. }), "{err}");
    assert!(
        kiln.get("orig").await.is_ok(),
        "a refused rm must not remove anything"
    );

    kiln.remove("twin", true, &NoProgress).await.unwrap();
    kiln.remove("orig", true, &NoProgress).await.unwrap();
}

/// The `Start` events a VM's start reported: warm or not, and the detail.
#[derive(Default)]
struct Starts(std::sync::Mutex<Vec<(bool, String)>>);

impl kiln::progress::Reporter for Starts {
    fn report(&self, event: kiln::progress::Event) {
        if let kiln::progress::Event::Start { warm, detail } = event {
            self.0.lock().unwrap().push((warm, detail));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_and_cold_ups_of_one_spec_behave_the_same() {
    let env = TestEnv::new();
    let warm = env.kiln().with_warm_starts(true);
    let cold = env.kiln();
    let spec = |name: &str| {
        VmSpec::builder(name)
            .memory_mib(200)
            .disk(DiskSpec::new(kiln::ByteSize::from_mib(24)))
            .build()
            .unwrap()
    };
    // The first warm up makes the template; the second only clones it.
    let a = warm.up(spec("warm-a"), &NoProgress).await.unwrap();
    let starts = Starts::default();
    let b = warm.up(spec("warm-b"), &starts).await.unwrap();
    let c = cold.up(spec("cold-c"), &NoProgress).await.unwrap();
    // The clone says it is one (and a bench can tell a warm start that fell back).
    assert!(
        matches!(starts.0.lock().unwrap().as_slice(), [(true, key)] if !key.is_empty()),
        "{:?}",
        starts.0.lock().unwrap()
    );
    let probe = "hostname; uname -r; cat /sys/block/vda/size; grep MemTotal /proc/meminfo; \
                 echo written > /root/f && cat /root/f; head -c 8 /dev/urandom | od -An -tx1";
    let mut outputs = Vec::new();
    for vm in [&a, &b, &c] {
        let out = vm.exec_output(sh(probe)).await.unwrap();
        assert_eq!(out.status, ExitStatus::Code(0), "{out:?}");
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let lines: Vec<Vec<&str>> = outputs.iter().map(|o| o.lines().collect()).collect();
    assert_eq!(lines[0][0], "warm-a");
    assert_eq!(lines[1][0], "warm-b");
    assert_eq!(lines[2][0], "cold-c");
    // Kernel, disk size, memory and a file write: the same whichever way it started.
    assert_eq!(
        lines[0][1..5],
        lines[2][1..5],
        "warm and cold differ: {outputs:?}"
    );
    assert_eq!(
        lines[1][1..5],
        lines[2][1..5],
        "warm and cold differ: {outputs:?}"
    );
    assert_ne!(
        lines[0][5], lines[1][5],
        "two warm VMs share random numbers"
    );
    // Port forwards and names are the VM's own; shared folders boot cold.
    assert!(kiln::Kiln::cold_reason(&spec("x")).is_none());
    let shared = VmSpec::builder("s")
        .share(kiln::spec::ShareSpec::new("/tmp", "/mnt"))
        .build()
        .unwrap();
    assert_eq!(
        kiln::Kiln::cold_reason(&shared),
        Some("it has shared folders")
    );

    for vm in ["warm-a", "warm-b", "cold-c"] {
        warm.remove(vm, true, &NoProgress).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_only_snapshot_of_a_stopped_vm_restores_by_booting() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let spec = VmSpec::builder("dsk")
        .memory_mib(256)
        .disk(DiskSpec::new(kiln::ByteSize::from_mib(16)))
        .build()
        .unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();
    vm.exec_output(sh(
        "echo disk-before | dd of=/dev/vda conv=fsync 2>/dev/null",
    ))
    .await
    .unwrap();
    // Disk-only needs a stopped VM, and a full snapshot a running one.
    let err = kiln.snapshot_disks("dsk", "d1").await.unwrap_err();
    assert!(matches!(err, Error::WrongState { .. }), "{err}");
    kiln.stop("dsk", &NoProgress).await.unwrap();
    let err = kiln.snapshot("dsk", "d1").await.unwrap_err();
    assert!(matches!(err, Error::WrongState { .. }), "{err}");
    let info = kiln.snapshot_disks("dsk", "d1").await.unwrap();
    assert!(info.disk_only && info.memory_bytes == 0, "{info:?}");

    let vm = kiln.start("dsk", &NoProgress).await.unwrap();
    vm.exec_output(sh(
        "echo disk-after! | dd of=/dev/vda conv=fsync 2>/dev/null",
    ))
    .await
    .unwrap();
    let vm = kiln.restore("dsk", "d1", &NoProgress).await.unwrap();
    let out = vm
        .exec_output(sh("dd if=/dev/vda bs=12 count=1 2>/dev/null"))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"disk-before\n");
    kiln.remove("dsk", true, &NoProgress).await.unwrap();
}

/// The RAM file a warm clone's QEMU maps, from its memory map.
fn mapped_ram_file(pid: u32) -> std::path::PathBuf {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps
        .lines()
        .find(|line| line.ends_with("/memory.ram"))
        .unwrap_or_else(|| panic!("QEMU {pid} maps no template RAM file:\n{maps}"));
    std::path::PathBuf::from(line.split_whitespace().last().unwrap())
}

fn digest(path: &std::path::Path) -> String {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_clones_share_the_template_ram_and_never_change_it() {
    let env = TestEnv::new();
    let warm = env.kiln().with_warm_starts(true);
    // A shape of its own, so that this test's template is its own.
    let spec = |name: &str| VmSpec::builder(name).memory_mib(224).build().unwrap();
    let a = warm.up(spec("share-a"), &NoProgress).await.unwrap();
    let b = warm.up(spec("share-b"), &NoProgress).await.unwrap();
    let pid = |vm: &kiln::Vm| {
        let vm = vm.clone();
        async move { vm.info().await.pid.expect("a running VM has a pid") }
    };
    let ram = mapped_ram_file(pid(&a).await);
    assert_eq!(
        ram,
        mapped_ram_file(pid(&b).await),
        "two templates for one shape"
    );
    // The template's saved state holds its devices, not its RAM.
    let state = ram.parent().unwrap().join("snapshots/ready/memory");
    let state_size = std::fs::metadata(&state).unwrap().len();
    assert!(
        state_size < 4 << 20,
        "{} is {state_size} bytes",
        state.display()
    );

    let before = digest(&ram);
    // Each clone fills memory of its own; neither the file nor the other clone sees it.
    for (vm, word) in [(&a, "from-a"), (&b, "from-b")] {
        let out = vm
            .exec_output(sh(&format!(
                "dd if=/dev/zero bs=1M count=24 2>/dev/null | tr '\\0' x > /fill && echo {word} > /mark"
            )))
            .await
            .unwrap();
        assert_eq!(out.status, ExitStatus::Code(0), "{out:?}");
    }
    for (vm, word) in [(&a, "from-a"), (&b, "from-b")] {
        let out = vm
            .exec_output(sh("cat /mark; wc -c < /fill"))
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{word}\n25165824\n")
        );
    }
    assert_eq!(
        digest(&ram),
        before,
        "a clone wrote to the template's RAM file"
    );
    // Nothing wrote to it after its state was saved either (the template's QEMU ends first).
    let modified = |path: &std::path::Path| std::fs::metadata(path).unwrap().modified().unwrap();
    assert!(
        modified(&ram) <= modified(&state.with_file_name("meta.json")),
        "the template's RAM file changed after its state was saved"
    );

    // A warm clone is a VM like any other: its own snapshot (RAM and all, not the
    // template's file) restores, and clones.
    warm.snapshot("share-a", "filled").await.unwrap();
    a.exec_output(sh("echo later > /mark")).await.unwrap();
    let a = warm
        .restore("share-a", "filled", &NoProgress)
        .await
        .unwrap();
    let c = warm
        .clone_from("share-a", "filled", "share-c", &NoProgress)
        .await
        .unwrap();
    for vm in [&a, &c] {
        let out = vm
            .exec_output(sh("cat /mark; wc -c < /fill"))
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "from-a\n25165824\n",
            "{}",
            vm.name()
        );
    }
    // A damaged state: QEMU says why it does not load it, and the VM is left stopped.
    warm.snapshot("share-a", "damaged").await.unwrap();
    let damaged = a.paths().dir().join("snapshots/damaged/memory");
    let size = std::fs::metadata(&damaged).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&damaged)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    match warm.restore("share-a", "damaged", &NoProgress).await {
        Err(Error::Qemu(kiln::qemu::QemuError::StateRefused { reason, .. })) => {
            assert!(!reason.is_empty());
        }
        other => panic!(
            "a damaged state loaded: {:?}",
            other.map(|vm| vm.name().to_owned())
        ),
    }
    assert_eq!(
        warm.get("share-a").await.unwrap().state().await,
        VmState::Stopped
    );
    let a = warm
        .restore("share-a", "filled", &NoProgress)
        .await
        .unwrap();
    let out = a.exec_output(sh("cat /mark")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-a\n");
    for name in ["share-c", "share-a", "share-b"] {
        warm.remove(name, true, &NoProgress).await.unwrap();
    }
}

/// A snapshot comes back on the CPU model it was saved from, even when kiln now gives new
/// machines another one: its saved state would not load (or the guest would meet missing
/// instructions) on a different model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_on_the_cpu_model_it_was_saved_from() {
    let env = TestEnv::new();
    let flags = "grep -m1 '^flags' /proc/cpuinfo";
    let max = kiln::Kiln::new(
        env.paths(),
        kiln::qemu::QemuBackend::new().with_tcg_cpu("max"),
    )
    .with_image_inputs(kiln_testkit::image_inputs())
    .with_warm_starts(false);
    let spec = VmSpec::builder("cpu").memory_mib(256).build().unwrap();
    let vm = max.up(spec, &NoProgress).await.unwrap();
    let saved = vm.exec_output(sh(flags)).await.unwrap().stdout;
    max.save_snapshot("cpu", "s1", false, &NoProgress)
        .await
        .unwrap();

    let kiln = env.kiln().with_warm_starts(false);
    let vm = kiln.restore("cpu", "s1", &NoProgress).await.unwrap();
    let restored = vm.exec_output(sh(flags)).await.unwrap().stdout;
    assert_eq!(
        String::from_utf8_lossy(&restored),
        String::from_utf8_lossy(&saved)
    );
    let fresh = kiln
        .up(
            VmSpec::builder("fresh").memory_mib(256).build().unwrap(),
            &NoProgress,
        )
        .await
        .unwrap();
    let fresh_flags = fresh.exec_output(sh(flags)).await.unwrap().stdout;
    if fresh.record().machine.as_ref().map(|m| m.accel) == Some(kiln::Accel::Tcg) {
        // Under TCG the default model is a plainer one than `max`.
        assert_ne!(fresh_flags, saved, "{}", String::from_utf8_lossy(&saved));
    }
    for name in ["cpu", "fresh"] {
        kiln.remove(name, true, &NoProgress).await.unwrap();
    }
}
