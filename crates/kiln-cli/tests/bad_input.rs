//! The bad-input table of docs/reliability.md: each input is refused with an error and a
//! hint, and nothing under the state directory changes. The messages asserted here are the
//! ones the table shows.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use kiln_testkit::TestEnv;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn run(env: &TestEnv, args: &[&str]) -> Output {
    env.cli(KILN).args(args).output().unwrap()
}

/// Every file under `dir` with its contents: what "nothing changed" is checked against.
/// The audit log is left out: a refused command is one more line there, as it should be.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.ends_with("data/state") {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                files.insert(path.clone(), Vec::new());
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    // The data directory made only to hold the audit log is not a change either.
    let data = dir.join("data");
    if !files.keys().any(|p| p != &data && p.starts_with(&data)) {
        files.remove(&data);
    }
    files
}

fn refused(env: &TestEnv, args: &[&str], message: &str, code: i32) {
    let before = tree(env.home());
    let out = run(env, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.contains(message), "{args:?}: {stderr}");
    assert!(stderr.contains("hint:"), "{args:?} has no hint: {stderr}");
    assert_eq!(
        tree(env.home()),
        before,
        "{args:?} changed the state directory"
    );
}

#[test]
fn bad_names_sizes_ports_and_paths_are_refused_and_change_nothing() {
    let env = TestEnv::new();
    // Some state to keep: a network's directory and the hosts file are made by these.
    let long = "x".repeat(64);
    let cases: &[(&[&str], &str, i32)] = &[
        (&["up", "a/b"], "only a-z, 0-9 and '-' are allowed", 2),
        (
            &["up", ".."],
            "it must start with a lowercase letter or a digit",
            2,
        ),
        (&["up", "has space"], "only a-z, 0-9 and '-' are allowed", 2),
        (&["up", "wéb"], "only a-z, 0-9 and '-' are allowed", 2),
        (&["up", &long], "it is longer than 63 characters", 2),
        (&["exec", "../etc", "--", "true"], "invalid VM name", 2),
        (
            &["up", "ok", "--memory", "0"],
            "0 MiB of memory is below the 64 MiB",
            1,
        ),
        (
            &["up", "ok", "--memory", "-1G"],
            "a size cannot be negative",
            2,
        ),
        (
            &["up", "ok", "--memory", "1PB"],
            "the unit must be one of B, K, M, G, T",
            2,
        ),
        (
            &["up", "ok", "--memory", "100T"],
            "larger than the 64T kiln accepts",
            2,
        ),
        (&["up", "ok", "--disk", "0"], "disk 0 is empty", 1),
        (
            &["up", "ok", "--cpus", "0"],
            "a VM needs at least 1 vCPU",
            1,
        ),
        (&["up", "ok", "-p", "0:80"], "ports are 1 to 65535", 2),
        (&["up", "ok", "-p", "70000:80"], "ports are 1 to 65535", 2),
        (&["up", "ok", "-p", "8080:0"], "ports are 1 to 65535", 2),
        (
            &["up", "ok", "-v", "/nonexistent:/srv"],
            "it is not a directory on this host",
            1,
        ),
        (
            &["up", "ok", "--network", "nope"],
            "network nope does not exist",
            1,
        ),
        (
            &["image", "build", "--kernel-deb", "/nonexistent.deb"],
            "kernel package not found at /nonexistent.deb",
            1,
        ),
        (
            &["up", "ok", "--metadata", "bad key=x"],
            "metadata key \"bad key\" is not a plain identifier",
            2,
        ),
        (&["up", "ok", "--metadata", "role"], "is not KEY=VALUE", 2),
        (
            &[
                "up",
                "ok",
                "--metadata",
                &format!("big={}", "x".repeat(5000)),
            ],
            "at most 4096 are allowed",
            2,
        ),
        (
            &["up", "ok", "--secret", "token=/nonexistent/token"],
            "cannot read secret token of VM ok from /nonexistent/token",
            1,
        ),
        (
            &[
                "up",
                "ok",
                "--image",
                "cloud",
                "--user-data",
                "/nonexistent/cloud.yaml",
            ],
            "cannot read /nonexistent/cloud.yaml",
            1,
        ),
        (&["metadata", "nope", "role=db"], "VM nope not found", 1),
        (&["exec", "nope", "--", "true"], "VM nope not found", 125),
        (
            &["snapshot", "restore", "nope", "s1"],
            "VM nope not found",
            1,
        ),
    ];
    for (args, message, code) in cases {
        refused(&env, args, message, *code);
    }

    // A host port something else listens on.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    refused(
        &env,
        &["up", "ok", "-p", &format!("{port}:80")],
        "the host port is in use",
        1,
    );

    // A missing guest agent binary (an image input).
    let before = tree(env.home());
    let out = env
        .cli(KILN)
        .env("KILN_AGENT", "/nonexistent/kiln-agent")
        .env("KILN_CACHE_DIR", env.home().join("empty-cache"))
        .args(["up", "ok"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no guest agent binary found"), "{stderr}");
    assert!(
        stderr.contains("hint: build it with scripts/build-agent.sh"),
        "{stderr}"
    );
    let after = tree(env.home());
    let vms = |t: &BTreeMap<PathBuf, Vec<u8>>| {
        t.keys()
            .filter(|p| p.starts_with(env.home().join("data/vms")))
            .count()
    };
    assert_eq!(vms(&after), vms(&before), "a VM was left: {after:?}");
}

#[test]
fn a_record_from_a_newer_kiln_is_refused_and_left_as_it_is() {
    let env = TestEnv::new();
    let spec = kiln::VmSpec::builder("future").build().unwrap();
    let record = serde_json::json!({
        "version": 1,
        "spec": spec,
        "backend": "qemu",
        "created_at": 0,
        "image_digest": "0",
        "added_by_a_newer_kiln": {"x": 1},
    });
    let dir = env.home().join("data/vms/future");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vm.json"), record.to_string()).unwrap();

    for (args, code) in [
        (&["rm", "--force", "future"][..], 1),
        (&["start", "future"], 1),
        // kiln's own failure in `exec`: 125, never a code the guest's command could give.
        (&["exec", "future", "--", "true"], 125),
    ] {
        refused(&env, args, "was written by a newer kiln", code);
    }
    // `ls` still lists the other VMs and says what it skipped.
    let out = run(&env, &["ls", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("skipping future"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("vm.json").exists());
}

/// A reader that went away before the JSON came (`kiln ls --json | true`) is no panic and no
/// error: the output had nowhere to go.
#[test]
fn json_into_a_closed_pipe_ends_quietly() {
    let env = TestEnv::new();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = env
        .cli(KILN)
        .args(["ls", "--json"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
