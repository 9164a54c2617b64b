use std::io::Write;
use std::path::PathBuf;

use kiln::session::{Session, SyncReport};
use kiln::{ByteSize, ExecEvent, ExecRequest, VmSpec};
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::Outcome;
use super::up::kiln_with_timeout;
use crate::ui::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A host directory to push to /workspace (the command's working directory); files the
    /// command creates or changes there come back
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// The image: default (busybox in RAM) or a Debian userland (debian, rust, python, ...;
    /// `kiln image ls` lists them), built on first use
    #[arg(long, default_value = kiln::spec::DEFAULT_IMAGE, value_parser = crate::ui::parse_name)]
    pub image: String,
    /// Number of vCPUs
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory, e.g. 1G (the workspace lives in it)
    #[arg(long, default_value = "1G")]
    pub memory: ByteSize,
    /// Seconds a boot may take before it is retried or fails
    #[arg(long, default_value_t = 60)]
    pub boot_timeout: u64,
    /// Boot from the kernel even when a warm-start template could be used
    #[arg(long)]
    pub cold: bool,
    /// Print how long each stage took (boot or warm start, push, the command, pull, removal)
    #[arg(long)]
    pub timings: bool,
    /// Print the session as JSON on stdout once it ends (exit code, files pushed and pulled,
    /// each stage's time); the command's own output then goes to stderr
    #[arg(long)]
    pub json: bool,
    /// What the command's network reaches: nat (out, but not the host's loopback), none
    /// (nothing) or host (also every service on the host's 127.0.0.1)
    #[arg(long = "net", value_name = "POLICY", default_value_t = kiln::NetPolicy::Nat, value_parser = crate::ui::parse_net_policy)]
    pub net: kiln::NetPolicy,
    /// Set an environment variable for the command (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = super::exec::parse_env)]
    pub env: Vec<(String, String)>,
    /// The command and its arguments
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// The exit code of a run cut short by Ctrl-C or SIGTERM, like a shell's.
const INTERRUPTED: i32 = 130;

pub async fn run(args: Args) -> Outcome {
    let workspace = match &args.workspace {
        Some(dir) => {
            Some(std::fs::canonicalize(dir).map_err(kiln::IoError::at("find the workspace", dir))?)
        }
        None => None,
    };
    let spec = VmSpec::builder(Session::unique_name())
        .cpus(args.cpus)
        .memory(args.memory)
        .image(&args.image)
        .net_policy(args.net)
        .build()?;
    let kiln = kiln_with_timeout(args.boot_timeout)?.with_warm_starts(!args.cold);
    let mut session = Session::new(kiln, spec, workspace);
    let progress = Progress::new();
    let timings = kiln::progress::Timings::new(&progress);
    let request = ExecRequest::new(args.command).envs(args.env);

    let mut interrupts = Interrupts::new()?;
    let started = std::time::Instant::now();
    let mut ran = Ran {
        json: args.json,
        ..Ran::default()
    };
    let result = drive(&mut session, request, &timings, &mut interrupts, &mut ran).await;
    let (name, pushed) = (session.name().to_owned(), session.first_push().cloned());
    // The VM goes whatever happened: a failed command, a failed boot, an interruption.
    let removed = session.shutdown(&timings).await;
    let mut entries = timings.entries();
    if let Some(took) = ran.took {
        // The command ran between the push and the pull.
        let at = entries
            .iter()
            .position(|(what, _)| *what == kiln::progress::Stage::PullChanges.label())
            .unwrap_or(entries.len());
        entries.insert(at, ("run the command", took));
    }
    entries.push(("total", started.elapsed()));
    if args.timings {
        crate::ui::print_timings(&entries);
    }
    let code = result?;
    removed?;
    if args.json {
        crate::ui::print_json(&Report {
            name: &name,
            exit_code: code,
            pushed: pushed.as_ref(),
            pulled: ran.pulled.as_ref(),
            timings: entries
                .iter()
                .map(|(stage, took)| StageTime {
                    stage,
                    ms: took.as_secs_f64() * 1e3,
                })
                .collect(),
        })?;
    }
    Ok(code)
}

/// What `kiln run --json` prints once the session ended.
#[derive(serde::Serialize)]
struct Report<'a> {
    /// The session VM's name (it is removed by now).
    name: &'a str,
    /// The command's exit code, as `kiln run` exits with it (130: interrupted).
    exit_code: i32,
    /// What went over the agent when the session started: the files that changed since its
    /// workspace image was written. Absent without a workspace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pushed: Option<&'a SyncReport>,
    /// What came back from the workspace. Absent without a workspace, or when the command
    /// was interrupted before the pull.
    #[serde(skip_serializing_if = "Option::is_none")]
    pulled: Option<&'a SyncReport>,
    /// Each stage and its time, as `--timings` prints them, ending with the total.
    timings: Vec<StageTime<'a>>,
}

#[derive(serde::Serialize)]
struct StageTime<'a> {
    stage: &'a str,
    ms: f64,
}

/// What the run of the command left for the report.
#[derive(Default)]
struct Ran {
    /// Whether the command's stdout goes to stderr (stdout is the JSON report's).
    json: bool,
    /// How long the command ran.
    took: Option<std::time::Duration>,
    /// What the pull brought back.
    pulled: Option<SyncReport>,
}

/// Boots, pushes, runs and pulls; returns the command's exit code.
async fn drive(
    session: &mut Session,
    request: ExecRequest,
    progress: &dyn kiln::progress::Reporter,
    interrupts: &mut Interrupts,
    ran: &mut Ran,
) -> Outcome {
    tokio::select! {
        ready = session.ensure_ready(progress) => ready?,
        () = interrupts.next() => return Ok(INTERRUPTED),
    }
    let running = std::time::Instant::now();
    let mut exec = session.run(request).await?;
    let mut forwarded = false;
    let code = loop {
        let event = tokio::select! {
            event = exec.next_event() => event?,
            () = interrupts.next() => {
                if forwarded {
                    eprintln!("kiln: interrupted again; removing the VM");
                    return Ok(INTERRUPTED);
                }
                // The first Ctrl-C goes to the command, like a local one.
                forwarded = true;
                exec.signal(2).await?;
                continue;
            }
        };
        match event {
            Some(ExecEvent::Stdout(data)) if ran.json => write_all(&mut std::io::stderr(), &data),
            Some(ExecEvent::Stdout(data)) => write_all(&mut std::io::stdout(), &data),
            Some(ExecEvent::Stderr(data)) => write_all(&mut std::io::stderr(), &data),
            Some(ExecEvent::Exited(status)) => break status.shell_code(),
            None => break 0,
        }
    };
    ran.took = Some(running.elapsed());
    let report = tokio::select! {
        report = session.pull_changes(progress) => report?,
        () = interrupts.next() => return Ok(INTERRUPTED),
    };
    if !report.is_empty() {
        eprintln!(
            "kiln: {} created, {} changed ({} bytes) in the workspace",
            report.created.len(),
            report.changed.len(),
            report.bytes
        );
        for path in &report.conflicts {
            eprintln!(
                "kiln: {path} changed on both sides; the host's is kept, the guest's is {path}.kiln-guest"
            );
        }
        if !report.deleted.is_empty() {
            eprintln!(
                "kiln: {} files deleted in the guest are kept on the host: {}",
                report.deleted.len(),
                report.deleted.join(", ")
            );
        }
    }
    if session.first_push().is_some() {
        ran.pulled = Some(report);
    }
    Ok(code)
}

/// Ctrl-C and SIGTERM, listened to for the whole run: one that arrives between two waits is
/// kept until the next.
struct Interrupts {
    int: Signal,
    term: Signal,
}

impl Interrupts {
    fn new() -> kiln::Result<Self> {
        let listen =
            |kind| signal(kind).map_err(|e| kiln::IoError::new("listen for signals on", "", e));
        Ok(Self {
            int: listen(SignalKind::interrupt())?,
            term: listen(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

fn write_all(out: &mut impl Write, data: &[u8]) {
    let _ = out.write_all(data);
    let _ = out.flush();
}
