//! The README's example commands, run as written: each `cargo run --example NAME -- ARGS`
//! line of its shell blocks runs the example program (built with the tests) with those
//! arguments and the line's environment assignments, in order, and must succeed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use kiln_testkit::TestEnv;

/// One README line: `VAR=value… cargo run --example NAME -- ARGS…`.
#[derive(Debug)]
struct ExampleLine {
    number: usize,
    env: Vec<(String, String)>,
    example: String,
    args: Vec<String>,
}

fn example_lines(readme: &str) -> Vec<ExampleLine> {
    let mut lines = Vec::new();
    let mut in_shell = false;
    for (index, line) in readme.lines().enumerate() {
        if let Some(fence) = line.trim_start().strip_prefix("```") {
            in_shell = !in_shell && fence.trim() == "sh";
            continue;
        }
        if !in_shell {
            continue;
        }
        let code = line.split(" #").next().unwrap_or_default();
        let words: Vec<&str> = code.split_whitespace().collect();
        let Some(cargo) = words.iter().position(|w| *w == "cargo") else {
            continue;
        };
        let [run, flag, example, dashes, args @ ..] = &words[cargo + 1..] else {
            continue;
        };
        if (*run, *flag, *dashes) != ("run", "--example", "--") {
            continue;
        }
        let env = words[..cargo]
            .iter()
            .map(|w| {
                let (key, value) = w.split_once('=').expect("VAR=value before cargo");
                (key.to_owned(), value.to_owned())
            })
            .collect();
        lines.push(ExampleLine {
            number: index + 1,
            env,
            example: (*example).to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        });
    }
    lines
}

/// Where cargo put the example programs: beside the test binaries' directory.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("examples").join(name))
        .unwrap();
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --example {name}`",
        path.display()
    );
    path
}

#[test]
fn the_readme_examples_run_as_written() {
    kiln_testkit::require_vm_prerequisites();
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let lines = example_lines(&std::fs::read_to_string(&readme).unwrap());
    let examples: Vec<&str> = lines.iter().map(|l| l.example.as_str()).collect();
    for expected in ["local", "lab", "two_hosts"] {
        assert!(
            examples.contains(&expected),
            "the README shows no `cargo run --example {expected}` line (found {examples:?})"
        );
    }
    let env = TestEnv::new();
    for line in &lines {
        let binary = example_binary(&line.example);
        let out = env
            .cli(binary.to_str().unwrap())
            .env_remove("KILN_LIBVIRT_URI")
            .envs(line.env.iter().map(|(k, v)| (k, v)))
            .args(&line.args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README.md:{}: `{} {}` failed:\nstdout: {}\nstderr: {}",
            line.number,
            line.example,
            line.args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The local example's VM is gone after its destroy.
    let left = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(env.kiln().list())
        .unwrap();
    assert!(
        left.is_empty(),
        "the local example left VMs behind: {left:?}"
    );
}
