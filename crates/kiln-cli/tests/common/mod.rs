//! What the CLI test files share: running the binary in a test's own environment.
#![allow(dead_code)] // each test file uses what it needs

use std::process::Output;

use kiln_testkit::TestEnv;

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// `kiln ARGS` in `env`, waited for.
pub fn run(env: &TestEnv, args: &[&str]) -> Output {
    env.cli(KILN).args(args).output().expect("run kiln")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
