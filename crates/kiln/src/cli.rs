//! An operator program's entry point: `kiln::cli::run(topology, scores)` gives it `plan`,
//! `apply` and `destroy`, with `--yes`, `--json` and progress on stderr.
//!
//! ```no_run
//! # async fn demo() -> std::process::ExitCode {
//! use kiln::score::{Score, VmScore};
//! use kiln::topology::LocalHost;
//! let kiln = kiln::Kiln::from_env().unwrap();
//! let vms = VmScore::new("demo", [kiln::VmSpec::builder("web-1").build().unwrap()]).unwrap();
//! let scores: Vec<Box<dyn Score<LocalHost>>> = vec![Box::new(vms)];
//! kiln::cli::run(LocalHost::new(kiln), scores).await
//! # }
//! ```
//!
//! This is a program's front end, so it writes to stdout and stderr itself.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::progress::{Event, Reporter};
use crate::score::{Outcome, Plan, Score, Topology};
use crate::state::audit::{self, AuditEntry};

#[derive(Debug, Parser)]
#[command(about = "Plan, apply or destroy this program's scores")]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Print plans and outcomes as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what apply would change.
    Plan,
    /// Make the scores true (asks first unless --yes).
    Apply {
        #[arg(long, short)]
        yes: bool,
    },
    /// Remove what the scores own (asks first unless --yes).
    Destroy {
        #[arg(long, short)]
        yes: bool,
    },
}

/// Progress as plain lines on stderr.
#[derive(Debug)]
struct Lines;

impl Reporter for Lines {
    fn report(&self, event: Event) {
        match event {
            Event::AccelChosen { .. } | Event::Phase { .. } | Event::Bytes { .. } => {}
            Event::StageStarted { stage } => eprintln!("  … {}", stage.label()),
            Event::StageDone { stage, elapsed } => {
                eprintln!("  ✓ {} ({:.1}s)", stage.label(), elapsed.as_secs_f64());
            }
            Event::Note { message } => eprintln!("  {message}"),
            Event::Start { warm, detail } => {
                eprintln!("  {}", crate::progress::start_line(warm, &detail))
            }
        }
    }
}

fn confirm(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        eprintln!("{question} refused: stdin is not a terminal; pass --yes");
        return false;
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).is_ok()
        && matches!(answer.trim(), "y" | "Y" | "yes")
}

fn show(plans: &[Plan], json: bool) {
    if json {
        match serde_json::to_string_pretty(plans) {
            Ok(text) => println!("{text}"),
            Err(err) => eprintln!("error: {err}"),
        }
    } else {
        for plan in plans {
            println!("{plan}");
        }
    }
}

/// Applies `scores` in order (or destroys them in reverse), stopping at the first that
/// fails: the scores after it may depend on it (VMs on a network it makes) or it on them (a
/// network under VMs not removed). Shows what was done, audits it, and names the scores left.
async fn in_turn<T: Topology>(
    destroy: bool,
    args: &Args,
    topology: &T,
    scores: &[Box<dyn Score<T>>],
    paths: Option<&crate::Paths>,
) -> crate::Result<()> {
    let order: Vec<&Box<dyn Score<T>>> = if destroy {
        scores.iter().rev().collect()
    } else {
        scores.iter().collect()
    };
    let (mut outcomes, mut failed, mut left) = (Vec::<Outcome>::new(), None, Vec::new());
    for score in order {
        if failed.is_some() {
            left.push(score.name().to_owned());
            continue;
        }
        let interpret = score.create_interpret();
        let done = if destroy {
            interpret.destroy(topology, &Lines).await
        } else {
            interpret.execute(topology, &Lines).await
        };
        match done {
            Ok(outcome) => outcomes.push(outcome),
            Err(err) => failed = Some(err),
        }
    }
    show(&outcomes, args.json);
    let verb = if destroy {
        "score destroy"
    } else {
        "score apply"
    };
    audit(paths, verb, topology, scores, failed.as_ref());
    match failed {
        None => Ok(()),
        Some(err) => {
            if !left.is_empty() {
                let done = if destroy { "destroyed" } else { "applied" };
                eprintln!(
                    "not {done} (after the one that failed): {}",
                    left.join(", ")
                );
            }
            Err(err)
        }
    }
}

/// Writes an apply or destroy to the audit log under `paths`, as the `kiln` commands that
/// change state are: the scores' names, the topology, and what failed.
fn audit<T: Topology>(
    paths: Option<&crate::Paths>,
    verb: &str,
    topology: &T,
    scores: &[Box<dyn Score<T>>],
    failed: Option<&crate::Error>,
) {
    let names = scores.iter().map(|s| s.name().to_owned()).collect();
    let outcome = failed.map_or(Ok(()), |err| Err(err.to_string()));
    let entry = AuditEntry::new(verb, names, Some(topology.describe())).ended(outcome);
    match paths.map(|paths| audit::append(paths, &entry)) {
        Some(Ok(())) => {}
        Some(Err(err)) => eprintln!("warning: the audit log was not written: {err}"),
        None => eprintln!("warning: the audit log was not written: no state directory"),
    }
}

fn fail(err: &crate::Error) -> ExitCode {
    eprintln!("error: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        eprintln!("caused by: {cause}");
        source = cause.source();
    }
    if let Some(hint) = err.hint() {
        eprintln!("hint: {hint}");
    }
    ExitCode::FAILURE
}

/// Parses the program's arguments and plans, applies or destroys `scores` on `topology`.
/// Scores are applied in order and destroyed in reverse (networks before the VMs on them).
/// Either stops at a score that fails, after showing what the others did and naming the
/// scores left (they may depend on the one that failed, or it on them).
pub async fn run<T: Topology>(topology: T, scores: Vec<Box<dyn Score<T>>>) -> ExitCode {
    run_with(|| async { Ok((topology, scores)) }).await
}

/// [`run`] for a program whose topology or scores can fail to come up (a host to connect
/// to, a spec to check): the arguments are read first, so `--help` needs no host, and a
/// failure of `setup` prints as `error:` / `caused by:` / `hint:` like any other.
pub async fn run_with<T, F, Fut>(setup: F) -> ExitCode
where
    T: Topology,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = crate::Result<(T, Vec<Box<dyn Score<T>>>)>>,
{
    let args = Args::parse();
    let (topology, scores) = match setup().await {
        Ok(setup) => setup,
        Err(err) => return fail(&err),
    };
    let paths = crate::Paths::from_env();
    match run_args(&args, &topology, &scores, paths.as_ref().ok()).await {
        Ok(code) => code,
        Err(err) => fail(&err),
    }
}

async fn plan_all<T: Topology>(
    topology: &T,
    scores: &[Box<dyn Score<T>>],
) -> crate::Result<Vec<Plan>> {
    let mut plans = Vec::new();
    for score in scores {
        plans.push(score.create_interpret().plan(topology).await?);
    }
    Ok(plans)
}

/// Runs the command `args` name; an apply or destroy goes to the audit log under `paths`.
async fn run_args<T: Topology>(
    args: &Args,
    topology: &T,
    scores: &[Box<dyn Score<T>>],
    paths: Option<&crate::Paths>,
) -> crate::Result<ExitCode> {
    eprintln!("topology: {}", topology.describe());
    topology.ensure_ready(&Lines).await?;
    match args.command {
        Command::Plan => show(&plan_all(topology, scores).await?, args.json),
        Command::Apply { yes } => {
            let plans = plan_all(topology, scores).await?;
            if plans.iter().all(Plan::is_unchanged) {
                show(&plans, args.json);
                // Unchanged where it was looked at: a host left out may still differ.
                let lost = topology.unreachable_hosts().await;
                for (host, why) in &lost {
                    eprintln!("warning: host {host} does not answer ({why}): not checked");
                }
                return Ok(if lost.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            if !yes {
                show(&plans, false);
                if !confirm("apply these changes?") {
                    return Ok(ExitCode::FAILURE);
                }
            }
            in_turn(false, args, topology, scores, paths).await?;
        }
        Command::Destroy { yes } => {
            if !yes && !confirm("destroy everything these scores own?") {
                return Ok(ExitCode::FAILURE);
            }
            in_turn(true, args, topology, scores, paths).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;

    use super::*;
    use crate::score::Interpret;

    #[derive(Debug)]
    struct Nowhere;

    #[async_trait]
    impl Topology for Nowhere {
        fn describe(&self) -> String {
            "nowhere".to_owned()
        }

        async fn ensure_ready(&self, _reporter: &dyn Reporter) -> crate::Result<()> {
            Ok(())
        }
    }

    /// A score whose destroy records its name, and fails when `fails`.
    #[derive(Debug, Clone)]
    struct Named {
        name: &'static str,
        fails: bool,
        destroyed: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Score<Nowhere> for Named {
        fn name(&self) -> &str {
            self.name
        }

        fn desired_state(&self) -> serde_json::Value {
            serde_json::Value::Null
        }

        fn create_interpret(&self) -> Box<dyn Interpret<Nowhere>> {
            Box::new(self.clone())
        }
    }

    #[async_trait]
    impl Interpret<Nowhere> for Named {
        async fn plan(&self, _topology: &Nowhere) -> crate::Result<Plan> {
            Ok(Plan::new(self.name))
        }

        async fn execute(&self, _: &Nowhere, _: &dyn Reporter) -> crate::Result<Outcome> {
            Ok(Plan::new(self.name))
        }

        async fn destroy(&self, _: &Nowhere, _: &dyn Reporter) -> crate::Result<Outcome> {
            self.destroyed.lock().unwrap().push(self.name);
            if self.fails {
                return Err(crate::Error::VmNotFound {
                    name: self.name.to_owned(),
                });
            }
            Ok(Plan::new(self.name))
        }
    }

    #[tokio::test]
    async fn a_destroy_stops_at_a_score_that_fails_and_audits_it() {
        let destroyed = Arc::new(Mutex::new(Vec::new()));
        let score = |name, fails| -> Box<dyn Score<Nowhere>> {
            Box::new(Named {
                name,
                fails,
                destroyed: destroyed.clone(),
            })
        };
        let scores = vec![score("net", false), score("vms", true), score("db", false)];
        let args = Args {
            command: Command::Destroy { yes: true },
            json: true,
        };
        let home = tempfile::tempdir().unwrap();
        let paths = crate::Paths::under(home.path());
        let err = run_args(&args, &Nowhere, &scores, Some(&paths))
            .await
            .unwrap_err();
        assert!(matches!(err, crate::Error::VmNotFound { .. }), "{err}");
        // The network under the VMs that failed to go is left.
        assert_eq!(*destroyed.lock().unwrap(), ["db", "vms"]);
        // The audit log has the destroy: every score, the topology, what failed.
        let logged = audit::read(&paths).unwrap();
        assert_eq!(logged.len(), 1, "{logged:?}");
        let entry = &logged[0];
        assert_eq!(entry.verb, "score destroy");
        assert_eq!(entry.targets, ["net", "vms", "db"]);
        assert_eq!(entry.host.as_deref(), Some("nowhere"));
        assert_eq!(entry.result, "error");
        assert!(entry.error.as_deref().unwrap().contains("vms"), "{entry:?}");
    }
}
