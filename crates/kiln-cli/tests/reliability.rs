//! `kiln` killed at random points, and run many times at once. After each SIGKILL the next
//! command must converge: `ls` tells the truth (a VM it shows running has its QEMU, and
//! every QEMU belongs to a VM it shows), every state file is whole, and `rm` leaves no QEMU
//! and no files. Iterations: `KILN_FAULT_ITERATIONS` (default 50); replay a run with the
//! `KILN_FAULT_SEED` it printed. Figures go to stderr as `figure: …` lines
//! (`scripts/reliability.sh` collects them).
#![allow(clippy::unwrap_used, clippy::print_stderr)] // a failed unwrap is a failed test

use std::process::Output;
use std::time::{Duration, Instant};

use kiln_testkit::TestEnv;
use kiln_testkit::faults::{self, Rng};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn run(env: &TestEnv, args: &[&str]) -> Output {
    env.cli(KILN).args(args).output().unwrap()
}

/// Runs `kiln ARGS` and kills it after `delay` (unless it ended first); whether it was killed.
fn killed_after(env: &TestEnv, args: &[&str], delay: Duration) -> bool {
    let mut child = env
        .cli(KILN)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    faults::kill_after(&mut child, delay)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn up(env: &TestEnv, name: &str) -> Duration {
    let started = Instant::now();
    let out = run(env, &["up", name, "--memory", "256M"]);
    assert!(out.status.success(), "up {name}: {}", text(&out.stderr));
    started.elapsed()
}

/// `ls` against reality: the pid of each running VM is a live QEMU of this test, and no
/// QEMU of this test is missing from the list. Returns the VMs listed.
///
/// A QEMU that a killed `rm` told to quit may be exiting while `ls` looks (alive for `ls`,
/// gone a moment later for the scan): the check is made again, for up to 3 s, until `ls`
/// and the scan see the same moment.
fn check_ls_tells_the_truth(env: &TestEnv, context: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let attempt = std::panic::catch_unwind(|| ls_matches_processes(env, context));
        match attempt {
            Ok(vms) => return vms,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn ls_matches_processes(env: &TestEnv, context: &str) -> Vec<serde_json::Value> {
    let out = run(env, &["ls", "--json"]);
    assert!(out.status.success(), "{context}: ls: {}", text(&out.stderr));
    let vms: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let qemus = faults::qemu_processes(env.home());
    let mut listed_pids = Vec::new();
    for vm in &vms {
        if vm["state"] == "running" || vm["state"] == "paused" {
            let pid = u32::try_from(vm["pid"].as_u64().unwrap()).unwrap();
            assert!(qemus.contains(&pid), "{context}: {vm} has no QEMU");
            listed_pids.push(pid);
        }
    }
    for pid in &qemus {
        assert!(
            listed_pids.contains(pid),
            "{context}: QEMU {pid} belongs to no VM `ls` shows: {vms:?}"
        );
    }
    let files = faults::json_files_parse(env.home()).unwrap_or_else(|e| panic!("{context}: {e}"));
    assert!(files > 0 || vms.is_empty(), "{context}: no state files");
    vms
}

/// `rm --force` succeeds (or finds nothing to remove) and nothing of the VM is left.
fn check_rm_converges(env: &TestEnv, name: &str, context: &str) {
    let out = run(env, &["rm", "--force", name]);
    assert!(
        out.status.success() || text(&out.stderr).contains("not found"),
        "{context}: rm: {}",
        text(&out.stderr)
    );
    let qemus = faults::qemu_processes(env.home());
    assert!(qemus.is_empty(), "{context}: QEMU left after rm: {qemus:?}");
    for dir in ["data/vms", "run/vms"] {
        let dir = env.home().join(dir).join(name);
        assert!(!dir.exists(), "{context}: {} left", dir.display());
    }
    let out = run(env, &["ls", "--json"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "[]",
        "{context}: {}",
        text(&out.stderr)
    );
}

#[test]
fn up_killed_at_random_points_converges() {
    let env = TestEnv::new();
    let mut rng = Rng::from_env("up_killed_at_random_points_converges");
    // A first, whole `up` makes the warm-start template and tells how long an `up` takes.
    let full = up(&env, "warmup");
    check_rm_converges(&env, "warmup", "warm-up");
    let full = up(&env, "warmup").max(full / 4);
    check_rm_converges(&env, "warmup", "warm-up");

    let iterations = faults::iterations(50);
    let (mut killed, mut left_running) = (0, 0);
    for i in 0..iterations {
        let name = format!("crash-{i}");
        let delay = rng.duration_up_to(full.mul_f32(1.2));
        killed += usize::from(killed_after(
            &env,
            &["up", &name, "--memory", "256M"],
            delay,
        ));
        let context = format!("iteration {i} (killed after {delay:?})");
        let vms = check_ls_tells_the_truth(&env, &context);
        // A VM that survived the kill is whole: its agent answers with its own secret.
        for vm in vms.iter().filter(|v| v["state"] == "running") {
            let out = run(&env, &["exec", vm["name"].as_str().unwrap(), "--", "true"]);
            assert!(out.status.success(), "{context}: {}", text(&out.stderr));
            left_running += 1;
        }
        check_rm_converges(&env, &name, &context);
    }
    eprintln!(
        "figure: up: {iterations} iterations, {killed} killed mid-way (up to {:?} in), {left_running} left a running VM, 0 orphan QEMU, 0 damaged state files",
        full.mul_f32(1.2)
    );
}

#[test]
fn rm_killed_at_random_points_converges() {
    let env = TestEnv::new();
    let mut rng = Rng::from_env("rm_killed_at_random_points_converges");
    up(&env, "warmup");
    let started = Instant::now();
    check_rm_converges(&env, "warmup", "warm-up");
    let full = started.elapsed().max(Duration::from_millis(100));

    let iterations = faults::iterations(50);
    let mut killed = 0;
    for i in 0..iterations {
        let name = format!("rm-{i}");
        up(&env, &name);
        let delay = rng.duration_up_to(full);
        killed += usize::from(killed_after(&env, &["rm", "--force", &name], delay));
        let context = format!("iteration {i} (killed after {delay:?})");
        check_ls_tells_the_truth(&env, &context);
        check_rm_converges(&env, &name, &context);
    }
    eprintln!(
        "figure: rm: {iterations} iterations, {killed} killed mid-way (up to {full:?} in), 0 orphan QEMU, 0 damaged state files"
    );
}

#[test]
fn two_ups_of_one_name_one_wins() {
    let env = TestEnv::new();
    up(&env, "warmup");
    check_rm_converges(&env, "warmup", "warm-up");
    let rounds = 5;
    for round in 0..rounds {
        let spawn = || {
            env.cli(KILN)
                .args(["up", "twin", "--memory", "256M"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "round {round}: {outs:?}");
        let lost = outs.iter().find(|o| !o.status.success()).unwrap();
        assert!(
            text(&lost.stderr).contains("VM twin already exists"),
            "round {round}: {}",
            text(&lost.stderr)
        );
        check_ls_tells_the_truth(&env, "twins");
        check_rm_converges(&env, "twin", "twins");
    }
    eprintln!("figure: concurrent up of one name: {rounds} rounds, exactly one winner each");
}

#[test]
fn parallel_ups_and_fifty_concurrent_execs_all_succeed() {
    let env = TestEnv::new();
    up(&env, "warmup");
    check_rm_converges(&env, "warmup", "warm-up");
    let names: Vec<String> = (0..4).map(|i| format!("par-{i}")).collect();
    let children: Vec<_> = names
        .iter()
        .map(|name| {
            env.cli(KILN)
                .args(["up", name, "--memory", "256M"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let vms = check_ls_tells_the_truth(&env, "parallel up");
    assert_eq!(vms.len(), names.len(), "{vms:?}");

    let started = Instant::now();
    let execs: Vec<_> = (0..50)
        .map(|i| {
            env.cli(KILN)
                .args(["exec", "par-0", "--", "sh", "-c", &format!("echo {i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in execs.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "exec {i}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{i}\n"));
    }
    eprintln!(
        "figure: {} parallel up, then 50 concurrent exec on one VM: all succeeded in {:?}",
        names.len(),
        started.elapsed()
    );
    for name in &names {
        check_rm_converges_one(&env, name);
    }
    assert!(faults::qemu_processes(env.home()).is_empty());
}

fn check_rm_converges_one(env: &TestEnv, name: &str) {
    let out = run(env, &["rm", "--force", name]);
    assert!(out.status.success(), "rm {name}: {}", text(&out.stderr));
}

/// The disk file QEMU writes to (open read-write), for VM `pid`.
fn files_qemu_writes(pid: u64) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if target.extension().is_none_or(|e| e != "qcow2") {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        if flags & 0o3 != 0 {
            out.push(target);
        }
    }
    out
}

/// The disk the VM's record names, and every file it reads through.
fn recorded_chain(env: &TestEnv, vm: &str) -> Vec<std::path::PathBuf> {
    let dir = env.home().join("data/vms").join(vm);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("vm.json")).unwrap()).unwrap();
    let top = record["disk_files"]
        .as_array()
        .and_then(|files| files.first())
        .and_then(|f| f.as_str())
        .map_or_else(|| dir.join("disk0.qcow2"), std::path::PathBuf::from);
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--backing-chain", "--output=json"])
        .arg(&top)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img info {}: {}",
        top.display(),
        text(&out.stderr)
    );
    let images: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    images
        .iter()
        .filter_map(|i| i["filename"].as_str())
        .map(std::path::PathBuf::from)
        .collect()
}

#[test]
fn snapshot_save_killed_at_random_points_converges() {
    let env = TestEnv::new();
    let mut rng = Rng::from_env("snapshot_save_killed_at_random_points_converges");
    let vm = "snap";
    let out = run(&env, &["up", vm, "--memory", "256M", "--disk", "16M"]);
    assert!(out.status.success(), "up: {}", text(&out.stderr));
    let started = Instant::now();
    let out = run(&env, &["snapshot", "save", vm, "first"]);
    assert!(out.status.success(), "save: {}", text(&out.stderr));
    let full = started.elapsed();

    let iterations = faults::iterations(20);
    let mut killed = 0;
    for i in 0..iterations {
        // A mark on the disk before each save: it must survive whatever the kill leaves.
        let mark = format!(
            "printf 'mark-{i:04}' | dd of=/dev/vda bs=1 seek={} conv=notrunc 2>/dev/null && sync",
            i * 16
        );
        let out = run(&env, &["exec", vm, "--", "sh", "-c", &mark]);
        assert!(
            out.status.success(),
            "iteration {i}: exec: {}",
            text(&out.stderr)
        );
        let delay = rng.duration_up_to(full.mul_f32(1.2));
        killed += usize::from(killed_after(
            &env,
            &["snapshot", "save", vm, &format!("s{i}")],
            delay,
        ));
        let context = format!("iteration {i} (killed after {delay:?})");
        // The next command finds the VM running again, whole snapshots only, and a record
        // whose disk chain holds the file QEMU writes.
        let vms = check_ls_tells_the_truth(&env, &context);
        assert_eq!(vms.len(), 1, "{context}: {vms:?}");
        assert_eq!(
            vms[0]["state"], "running",
            "{context}: left {}",
            vms[0]["state"]
        );
        let pid = vms[0]["pid"].as_u64().unwrap();
        let chain = recorded_chain(&env, vm);
        for file in files_qemu_writes(pid) {
            assert!(
                chain.contains(&file),
                "{context}: QEMU writes {} outside the record's chain {chain:?}",
                file.display()
            );
        }
        let out = run(&env, &["snapshot", "ls", vm, "--json"]);
        assert!(out.status.success(), "{context}: {}", text(&out.stderr));
        let partial = env
            .home()
            .join(format!("data/vms/{vm}/snapshots/.s{i}.partial"));
        assert!(!partial.exists(), "{context}: {} left", partial.display());
    }
    // A cold boot from the record's files has every mark.
    for verb in ["stop", "start"] {
        let out = run(&env, &[verb, vm]);
        assert!(out.status.success(), "{verb}: {}", text(&out.stderr));
    }
    let out = run(
        &env,
        &[
            "exec",
            vm,
            "--",
            "sh",
            "-c",
            &format!("head -c {} /dev/vda", iterations * 16),
        ],
    );
    let disk = text(&out.stdout);
    for i in 0..iterations {
        assert!(
            disk.contains(&format!("mark-{i:04}")),
            "mark {i} lost after the kills: {disk:?}"
        );
    }
    eprintln!(
        "figure: snapshot save: {iterations} iterations, {killed} killed mid-way (up to {:?} in); the VM ran on each time, no half snapshot, every disk write kept",
        full.mul_f32(1.2)
    );
    check_rm_converges_one(&env, vm);
}

/// `kiln snapshot restore`, killed at random points (while QEMU loads the state, most
/// often): the next command finds the VM either restored and answering, or stopped on the
/// disks its record names, never a machine that waits forever for a state; QEMU writes
/// only files in the record's chain, and a stopped VM starts.
#[test]
fn snapshot_restore_killed_at_random_points_converges() {
    let env = TestEnv::new();
    let mut rng = Rng::from_env("snapshot_restore_killed_at_random_points_converges");
    let vm = "back";
    let out = run(&env, &["up", vm, "--memory", "256M", "--disk", "16M"]);
    assert!(out.status.success(), "up: {}", text(&out.stderr));
    let out = run(&env, &["exec", vm, "--", "sh", "-c", "echo saved > /mark"]);
    assert!(out.status.success(), "exec: {}", text(&out.stderr));
    let out = run(&env, &["snapshot", "save", vm, "base"]);
    assert!(out.status.success(), "save: {}", text(&out.stderr));
    let started = Instant::now();
    let out = run(&env, &["snapshot", "restore", vm, "base"]);
    assert!(out.status.success(), "restore: {}", text(&out.stderr));
    let full = started.elapsed();

    let iterations = faults::iterations(20);
    let (mut killed, mut stopped) = (0, 0);
    for i in 0..iterations {
        let delay = rng.duration_up_to(full.mul_f32(1.2));
        killed += usize::from(killed_after(
            &env,
            &["snapshot", "restore", vm, "base"],
            delay,
        ));
        let context = format!("iteration {i} (killed after {delay:?})");
        let vms = check_ls_tells_the_truth(&env, &context);
        assert_eq!(vms.len(), 1, "{context}: {vms:?}");
        match vms[0]["state"].as_str() {
            Some("running") => {
                let pid = vms[0]["pid"].as_u64().unwrap();
                let chain = recorded_chain(&env, vm);
                for file in files_qemu_writes(pid) {
                    assert!(
                        chain.contains(&file),
                        "{context}: QEMU writes {} outside the record's chain {chain:?}",
                        file.display()
                    );
                }
            }
            Some("stopped") => {
                stopped += 1;
                let out = run(&env, &["start", vm]);
                assert!(
                    out.status.success(),
                    "{context}: start: {}",
                    text(&out.stderr)
                );
            }
            other => panic!("{context}: left {other:?}"),
        }
        let out = run(&env, &["exec", vm, "-n", "--", "true"]);
        assert!(
            out.status.success(),
            "{context}: the VM does not answer: {}",
            text(&out.stderr)
        );
        let marker = env.home().join(format!("data/vms/{vm}/restoring"));
        assert!(!marker.exists(), "{context}: {} left", marker.display());
    }
    let out = run(&env, &["snapshot", "restore", vm, "base"]);
    assert!(out.status.success(), "restore: {}", text(&out.stderr));
    let out = run(&env, &["exec", vm, "--", "cat", "/mark"]);
    assert_eq!(text(&out.stdout), "saved\n", "{}", text(&out.stderr));
    eprintln!(
        "figure: snapshot restore: {iterations} iterations, {killed} killed mid-way (up to {:?} in), {stopped} left stopped and started again; never a machine waiting for its state",
        full.mul_f32(1.2)
    );
    check_rm_converges_one(&env, vm);
}

/// `kiln up --connect` on a real libvirtd, killed at random points: each kill leaves a whole
/// VM, a defined domain, or volumes without a domain; `rm --force --connect` removes every
/// one of them, and the host keeps no domain and no volume of the VM.
#[test]
fn up_on_libvirt_killed_at_random_points_converges() {
    kiln_testkit::require_libvirtd();
    let env = TestEnv::new();
    let mut rng = Rng::from_env("up_on_libvirt_killed_at_random_points_converges");
    let uri = "qemu:///system";
    let pool = kiln_testkit::unique_name("kt-kill");
    let kiln = |args: &[&str]| {
        let mut command = env.cli(KILN);
        command.env("KILN_LIBVIRT_POOL", &pool).args(args);
        command
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let options =
        kiln::libvirt::LibvirtOptions::new(&pool, format!("/var/lib/libvirt/images/{pool}"));
    let conn = runtime
        .block_on(kiln::libvirt::LibvirtConn::open_with(uri, options))
        .unwrap();
    let check_gone = |name: &str, context: &str| {
        let domain = runtime.block_on(conn.domain(name)).unwrap();
        assert!(domain.is_none(), "{context}: domain {name} left");
        let volumes = if runtime.block_on(conn.pool_exists()).unwrap() {
            runtime.block_on(conn.list_volumes()).unwrap()
        } else {
            Vec::new()
        };
        let left: Vec<_> = volumes
            .iter()
            .filter(|v| v.starts_with(&format!("{name}-")))
            .collect();
        assert!(left.is_empty(), "{context}: volumes left: {left:?}");
    };
    let rm = |name: &str, context: &str| {
        let out = kiln(&["rm", "--force", name, "--connect", uri])
            .output()
            .unwrap();
        assert!(
            out.status.success() || text(&out.stderr).contains("not found"),
            "{context}: rm: {}",
            text(&out.stderr)
        );
    };

    let started = Instant::now();
    let out = kiln(&["up", "whole", "--memory", "256M", "--connect", uri])
        .output()
        .unwrap();
    assert!(out.status.success(), "up: {}", text(&out.stderr));
    let full = started.elapsed();
    rm("whole", "the whole up");
    check_gone("whole", "the whole up");

    let iterations = faults::iterations(8);
    let mut killed = 0;
    for i in 0..iterations {
        let name = format!("lvkill-{i}");
        let delay = rng.duration_up_to(full.mul_f32(1.2));
        let mut child = kiln(&["up", &name, "--memory", "256M", "--connect", uri])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        killed += usize::from(faults::kill_after(&mut child, delay));
        let context = format!("iteration {i} (killed after {delay:?})");
        rm(&name, &context);
        check_gone(&name, &context);
    }
    eprintln!(
        "figure: libvirt up: {iterations} iterations, {killed} killed mid-way (up to {:?} in), nothing left on the host",
        full.mul_f32(1.2)
    );
}
