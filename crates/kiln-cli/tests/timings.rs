//! `--timings` on `kiln up` and `kiln run`: where a boot, a warm start and a session spend
//! their time, stage by stage, read from real VMs.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Output;

use kiln_testkit::TestEnv;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn run(env: &TestEnv, args: &[&str]) -> Output {
    let out = env.cli(KILN).args(args).output().unwrap();
    assert!(out.status.success(), "kiln {args:?}: {out:?}");
    out
}

/// The `(stage, milliseconds)` rows of a `--timings` table on stderr.
fn rows(out: &Output) -> Vec<(String, f64)> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|line| {
            let line = line.strip_suffix(" ms")?;
            let (stage, ms) = line.rsplit_once(char::is_whitespace)?;
            Some((stage.trim().to_owned(), ms.parse().ok()?))
        })
        .collect()
}

fn has(rows: &[(String, f64)], stage: &str) -> f64 {
    rows.iter()
        .find(|(s, _)| s == stage)
        .map(|(_, ms)| *ms)
        .unwrap_or_else(|| panic!("no {stage:?} in {rows:?}"))
}

#[test]
fn up_and_run_print_where_the_time_went() {
    kiln_testkit::require_vm_prerequisites();
    let env = TestEnv::new();
    // A shape of its own: the warm start below makes its template here.
    let cold = rows(&run(
        &env,
        &["up", "--cold", "--timings", "--memory", "288M", "t-cold"],
    ));
    let total = has(&cold, "total");
    let phases = [
        "qemu start to first console output",
        "kernel to init",
        "init to agent ready",
    ];
    let mut sum = 0.0;
    for phase in phases {
        let ms = has(&cold, phase);
        assert!(ms > 0.0, "{phase}: {ms} ms");
        sum += ms;
    }
    // The phases are parts of the wait for the agent, which is part of the whole.
    let wait = has(&cold, "wait for guest agent");
    assert!(sum <= wait + 1.0 && wait <= total, "{cold:?}");

    let warm = rows(&run(
        &env,
        &["up", "--timings", "--memory", "288M", "t-warm"],
    ));
    for stage in [
        "start qemu",
        "load the saved state",
        "re-key the clone",
        "total",
    ] {
        has(&warm, stage);
    }

    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("in.txt"), "x").unwrap();
    let dir = workspace.path().to_str().unwrap();
    let session = rows(&run(
        &env,
        &[
            "run",
            "--timings",
            "--memory",
            "288M",
            "-w",
            dir,
            "--",
            "true",
        ],
    ));
    for stage in [
        "push workspace",
        "run the command",
        "pull changed files",
        "remove",
        "total",
    ] {
        has(&session, stage);
    }
    run(&env, &["rm", "--force", "t-cold", "t-warm"]);
}
