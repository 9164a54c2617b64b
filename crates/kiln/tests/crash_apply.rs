//! An `apply` killed at random points (the `warm_pair` example: a score of two VMs on the
//! daemonless backend), then applied again: the second apply converges to both VMs running
//! and answering, a plan afterwards changes nothing, and destroy leaves no QEMU and no files.
//! Iterations: `KILN_FAULT_ITERATIONS` (default 50); replay with `KILN_FAULT_SEED`.
#![allow(clippy::unwrap_used, clippy::print_stderr)] // a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln::VmState;
use kiln_testkit::TestEnv;
use kiln_testkit::faults::{self, Rng};

/// The example program, built by `cargo test` next to the test binaries.
fn warm_pair() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples/warm_pair"))
        .unwrap();
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --example warm_pair`",
        path.display()
    );
    path
}

fn program(env: &TestEnv, args: &[&str]) -> Command {
    let mut command = env.cli(warm_pair().to_str().unwrap());
    command.args(args);
    command
}

fn finish(env: &TestEnv, args: &[&str]) -> Output {
    let out = program(env, args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn check_converged(env: &TestEnv, context: &str) {
    let kiln = env.kiln();
    let vms = kiln.list().await.unwrap();
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["pair-a", "pair-b"], "{context}");
    for vm in &vms {
        assert_eq!(vm.state, VmState::Running, "{context}: {vm:?}");
        let agent = kiln
            .get(&vm.name)
            .await
            .unwrap()
            .agent_within(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{context}: {} does not answer: {e}", vm.name));
        agent.ping().await.unwrap();
    }
    let mut pids: Vec<u32> = vms.iter().filter_map(|v| v.pid).collect();
    let mut qemus = faults::qemu_processes(env.home());
    pids.sort_unstable();
    qemus.sort_unstable();
    assert_eq!(pids, qemus, "{context}: QEMU processes and VMs differ");
    faults::json_files_parse(env.home()).unwrap_or_else(|e| panic!("{context}: {e}"));
    let plan = finish(env, &["plan"]);
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains("unchanged") && !plan.contains("create"),
        "{context}: {plan}"
    );
}

fn check_destroyed(env: &TestEnv, context: &str) {
    finish(env, &["destroy", "--yes"]);
    let qemus = faults::qemu_processes(env.home());
    assert!(qemus.is_empty(), "{context}: QEMU left: {qemus:?}");
    let vms = env.home().join("data/vms");
    let left: Vec<_> = std::fs::read_dir(&vms)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "{context}: left in {}: {left:?}",
        vms.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_killed_at_random_points_converges() {
    let env = TestEnv::new();
    let mut rng = Rng::from_env("apply_killed_at_random_points_converges");
    // Whole runs first: the template gets made, and the second tells how long one takes.
    finish(&env, &["apply", "--yes"]);
    check_destroyed(&env, "warm-up");
    let started = Instant::now();
    finish(&env, &["apply", "--yes"]);
    let full = started.elapsed();
    check_converged(&env, "warm-up").await;
    check_destroyed(&env, "warm-up");

    let iterations = faults::iterations(50);
    let mut killed = 0;
    for i in 0..iterations {
        let delay = rng.duration_up_to(full.mul_f32(1.2));
        let mut child = program(&env, &["apply", "--yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        killed += usize::from(faults::kill_after(&mut child, delay));
        let context = format!("iteration {i} (killed after {delay:?})");
        finish(&env, &["apply", "--yes"]);
        check_converged(&env, &context).await;
        check_destroyed(&env, &context);
    }
    eprintln!(
        "figure: apply: {iterations} iterations, {killed} killed mid-way (up to {:?} in); every re-apply converged, 0 orphan QEMU, 0 damaged state files",
        full.mul_f32(1.2)
    );
}
