//! docs/cli.md is the CLI reference, made from the same definitions as `--help`: this test
//! renders it from the binary and fails when the file differs (`KILN_BLESS=1` rewrites it).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn help(args: &[&str]) -> String {
    let out = Command::new(KILN)
        .args(args)
        .arg("--help")
        .env("NO_COLOR", "1")
        // clap shows a variable's value in the help: the reference shows none.
        .env_remove("KILN_CONSOLE_IDLE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands a help text lists under "Commands:", `help` left out.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter(|line| !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

fn render() -> String {
    let mut doc = String::from(
        "# The kiln command line\n\nGenerated from `kiln --help` by \
         `crates/kiln-cli/tests/cli_reference.rs`; run it with `KILN_BLESS=1` after changing a \
         command. `kiln man` prints the same as a man page.\n",
    );
    let mut stack = vec![Vec::<String>::new()];
    while let Some(path) = stack.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        let title = if path.is_empty() {
            "kiln".to_owned()
        } else {
            format!("kiln {}", path.join(" "))
        };
        doc.push_str(&format!("\n## `{title}`\n\n```text\n{}```\n", text));
        let mut children: Vec<Vec<String>> = subcommands(&text)
            .into_iter()
            .map(|name| {
                let mut child = path.clone();
                child.push(name);
                child
            })
            .collect();
        children.reverse();
        stack.extend(children);
    }
    doc
}

#[test]
fn the_cli_reference_is_the_help_of_every_command() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
    let rendered = render();
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == rendered,
        "docs/cli.md is out of date: rerun this test with KILN_BLESS=1"
    );
    for command in ["up", "metadata", "security status", "config show", "hosts"] {
        assert!(
            rendered.contains(&format!("## `kiln {command}`")),
            "{command}"
        );
    }
}
