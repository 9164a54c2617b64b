//! Every `kiln …` command the README and the guides show in a code block, as written, is one
//! the command line accepts: a renamed flag or verb fails here rather than in a reader's
//! terminal. (Synopses in prose, with `NAME` and `[--json]`, are not commands.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use clap::Parser;

use crate::Cli;

/// The Markdown files whose shell examples are checked.
fn documents() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("docs entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        // The reference is generated from the parser itself.
        .filter(|path| !path.ends_with("cli.md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The lines of fenced `sh`/`bash`/`console`/`text` blocks, with continuations joined, each
/// with its line number.
fn shell_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut in_shell = false;
    let mut pending: Option<(usize, String)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(fence) = trimmed.strip_prefix("```") {
            in_shell =
                !in_shell && matches!(fence.trim(), "sh" | "bash" | "console" | "shell" | "text");
            continue;
        }
        if !in_shell {
            continue;
        }
        let body = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
        let (start, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
        if let Some(head) = body.strip_suffix('\\') {
            joined.push_str(head);
            joined.push(' ');
            pending = Some((start, joined));
        } else {
            joined.push_str(body);
            lines.push((start, joined));
        }
    }
    lines
}

/// The `kiln` invocations of one shell line: comments dropped, split at `&&`, `||`, `;`
/// and `|`, leading `VAR=value` assignments skipped.
fn invocations(line: &str) -> Vec<Vec<String>> {
    let Some(words) = shlex::split(line) else {
        return Vec::new();
    };
    let words: Vec<String> = words
        .into_iter()
        .take_while(|w| !w.starts_with('#'))
        .collect();
    words
        .split(|w| matches!(w.as_str(), "&&" | "||" | ";" | "|"))
        .map(|part| {
            part.iter()
                .skip_while(|w| w.contains('=') && !w.starts_with('-'))
                .cloned()
                .collect::<Vec<_>>()
        })
        .filter(|part| part.first().is_some_and(|w| w == "kiln"))
        .collect()
}

#[test]
fn every_documented_kiln_command_parses() {
    let mut checked = 0;
    let mut refused = Vec::new();
    for file in documents() {
        let text = std::fs::read_to_string(&file).expect("read a document");
        for (line, shell) in shell_lines(&text) {
            for argv in invocations(&shell) {
                checked += 1;
                match Cli::try_parse_from(&argv) {
                    Ok(_) => {}
                    Err(err)
                        if matches!(
                            err.kind(),
                            clap::error::ErrorKind::DisplayHelp
                                | clap::error::ErrorKind::DisplayVersion
                        ) => {}
                    Err(err) => refused.push(format!(
                        "{}:{line}: `{}`: {}",
                        file.display(),
                        argv.join(" "),
                        err.render().to_string().lines().next().unwrap_or("")
                    )),
                }
            }
        }
    }
    assert!(
        checked >= 15,
        "only {checked} commands found: is the extraction broken?"
    );
    assert!(
        refused.is_empty(),
        "documented commands the CLI refuses:\n{}",
        refused.join("\n")
    );
}

#[test]
fn shell_lines_are_split_into_kiln_invocations() {
    let text = "```sh\n$ kiln up a --cpus 2   # boot\nKILN_HOME=/x kiln ls && kiln rm \\\n  --force a\necho kiln\n```\nkiln not-code, `kiln stop a`\n";
    let found: Vec<Vec<String>> = shell_lines(text)
        .into_iter()
        .flat_map(|(_, line)| invocations(&line))
        .collect();
    assert_eq!(
        found,
        [
            vec!["kiln", "up", "a", "--cpus", "2"],
            vec!["kiln", "ls"],
            vec!["kiln", "rm", "--force", "a"],
        ]
    );
}
