//! Real work in Debian images through the `kiln` binary: `kiln run --image rust -w CRATE --
//! cargo test` runs a crate's unit and integration tests in the guest, `--image python` runs
//! `python3 -m unittest`, and `kiln image ls/inspect` show what is built.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Output;

use kiln_testkit::TestEnv;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn run(env: &TestEnv, args: &[&str]) -> Output {
    env.cli(KILN).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn cargo_test_of_a_crate_runs_in_the_rust_image() {
    let env = TestEnv::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln/tests/fixtures/tiny-crate");
    let work = tempfile::tempdir().unwrap();
    let krate = work.path().join("tiny");
    copy_dir(&fixture, &krate);

    let out = run(
        &env,
        &[
            "run",
            "--image",
            "rust",
            "--cpus",
            "2",
            "-w",
            krate.to_str().unwrap(),
            "--",
            "cargo",
            "test",
            "--offline",
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    // The crate's own results: two unit tests and one integration test.
    assert!(stdout.contains("test tests::adds ... ok"), "{stdout}");
    assert!(stdout.contains("test result: ok. 2 passed"), "{stdout}");
    assert!(stdout.contains("test adds_from_outside ... ok"), "{stdout}");
    // What the build made came back to the host.
    assert!(krate.join("Cargo.lock").is_file());

    // A failing test fails the run with cargo's exit code.
    std::fs::write(
        krate.join("tests/broken.rs"),
        "#[test]\nfn broken() { assert_eq!(tiny::add(1, 1), 3); }\n",
    )
    .unwrap();
    let out = run(
        &env,
        &[
            "run",
            "--image",
            "rust",
            "--cpus",
            "2",
            "-w",
            krate.to_str().unwrap(),
            "--",
            "cargo",
            "test",
            "--offline",
            "--test",
            "broken",
        ],
    );
    assert_eq!(out.status.code(), Some(101), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("test broken ... FAILED"));
}

#[test]
fn python_unittest_runs_in_the_python_image() {
    let env = TestEnv::new();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("test_numbers.py"),
        "import unittest\n\nclass Numbers(unittest.TestCase):\n    def test_sum(self):\n        \
         self.assertEqual(sum(range(5)), 10)\n\n    def test_venv(self):\n        \
         import venv, ensurepip  # shipped by python3-venv\n",
    )
    .unwrap();
    let out = run(
        &env,
        &[
            "run",
            "--image",
            "python",
            "-w",
            work.path().to_str().unwrap(),
            "--",
            "python3",
            "-m",
            "unittest",
            "-v",
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Ran 2 tests"), "{stderr}");
    assert!(stderr.contains("OK"), "{stderr}");

    // The catalog shows what is built and what is not; inspect lists the packages.
    let ls = text(&run(&env, &["image", "ls"]).stdout);
    for name in ["default", "debian", "rust", "python", "debian-full"] {
        assert!(ls.lines().any(|l| l.starts_with(name)), "{ls}");
    }
    let json = run(&env, &["image", "inspect", "python", "--json"]);
    let manifest: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let packages = manifest["packages"].as_array().unwrap();
    assert!(
        packages.iter().any(|p| p["name"] == "python3"),
        "{manifest}"
    );
    assert_eq!(manifest["recipe"]["name"], "python");

    // An unknown image names the known ones, with a hint.
    let out = run(&env, &["run", "--image", "nonesuch", "--", "true"]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("unknown image nonesuch"), "{stderr}");
    assert!(stderr.contains("rust"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
}
