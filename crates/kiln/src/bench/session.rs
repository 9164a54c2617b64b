//! Sessions, measured: `kiln run -- true` end to end against a plain boot to agent-ready;
//! warm sessions on a workspace of many files, end to end; and an incremental push.

use std::time::Instant;

use serde::Serialize;

use super::{Stats, spec};
use crate::progress::{Event, NoProgress, Reporter};
use crate::session::Session;
use crate::{ExecRequest, Kiln, Result, state};

/// What [`session`] measured: whole sessions against plain boots, and workspace pushes.
#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    /// A whole session: boot, run `true`, pull (nothing), remove.
    pub run_true: Stats,
    /// `Kiln::up` until the agent answered, then removed: the floor a session stands on.
    pub up: Stats,
    /// run_true.p50 / up.p50.
    pub ratio: f64,
    /// Files in the bench's workspace (10,000 bytes each, in 50 directories).
    pub files: usize,
    /// Their bytes, all told.
    pub workspace_bytes: u64,
    /// A warm session on that workspace, end to end (`kiln run -w DIR -- true`): the
    /// workspace image, a warm start, the mount, `true`, the pull, the removal.
    pub workspace_run_true: Stats,
    /// Of that, making the workspace image on the host (the session's push stage).
    pub push_first: Stats,
    /// Pushing again, within a session, after 10 files changed (only those go).
    pub push_incremental_ms: f64,
}

/// One whole session running `true`: boot (or clone), run, pull, remove. Its duration.
pub(super) async fn run_true(kiln: &Kiln, spec: crate::VmSpec) -> Result<std::time::Duration> {
    let started = Instant::now();
    let mut session = Session::new(kiln.clone(), spec, None);
    let result = async {
        session.ensure_ready(&NoProgress).await?;
        session
            .run(ExecRequest::new(["true"]))
            .await?
            .output()
            .await?;
        session.pull_changes(&NoProgress).await
    }
    .await;
    session.shutdown(&NoProgress).await?;
    result?;
    Ok(started.elapsed())
}

/// `runs` sessions and boots alternating, then a workspace of `files` small files.
pub async fn session(
    kiln: &Kiln,
    runs: u32,
    files: usize,
    reporter: &dyn Reporter,
) -> Result<SessionReport> {
    let (mut sessions, mut ups) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        sessions.push(run_true(kiln, spec(&format!("bench-run-{run}"))?).await?);

        let name = format!("bench-up-{run}");
        let started = Instant::now();
        let booted = kiln.up(spec(&name)?, &NoProgress).await;
        ups.push(started.elapsed());
        kiln.remove(&name, true, &NoProgress).await?;
        booted?;
        reporter.report(Event::Note {
            message: format!(
                "run {run}/{runs}: session {:.2}s, up {:.2}s",
                sessions[sessions.len() - 1].as_secs_f64(),
                ups[ups.len() - 1].as_secs_f64()
            ),
        });
    }

    // A tree like a source checkout: 50 directories of files, FILE_BYTES each (5,000 files
    // make 50 MB).
    let workspace = kiln.paths().data_dir().join("bench-workspace");
    let _ = std::fs::remove_dir_all(&workspace);
    let line = "a line of a source file, more or less as long as one\n";
    let mut body = line.repeat(FILE_BYTES / line.len() + 1);
    body.truncate(FILE_BYTES);
    for i in 0..files {
        let dir = workspace.join(format!("dir{:02}", i % 50));
        state::create_private_dir(&dir)?;
        state::write_atomic(&dir.join(format!("file{i:05}.txt")), body.as_bytes())?;
    }
    let measured = workspace_sessions(kiln, &workspace, runs, files, reporter).await;
    let _ = std::fs::remove_dir_all(&workspace);
    let (workspace_run_true, push_first, push_incremental_ms) = measured?;
    let (run_true, up) = (Stats::of(&sessions), Stats::of(&ups));
    Ok(SessionReport {
        ratio: run_true.p50_ms / up.p50_ms.max(f64::EPSILON),
        run_true,
        up,
        files,
        workspace_bytes: (files * body.len()) as u64,
        workspace_run_true,
        push_first,
        push_incremental_ms,
    })
}

/// Bytes in each file of the bench's workspace.
const FILE_BYTES: usize = 10_000;

/// Warm sessions on `workspace`, end to end (`kiln run -w DIR -- true`: the workspace image,
/// a warm start, the mount, `true`, the pull, the removal); then, in one more, an
/// incremental push of 10 changed files.
async fn workspace_sessions(
    kiln: &Kiln,
    workspace: &std::path::Path,
    runs: u32,
    files: usize,
    reporter: &dyn Reporter,
) -> Result<(Stats, Stats, f64)> {
    let warm = kiln.clone().with_warm_starts(true);
    let spec = |name: &str| crate::VmSpec::builder(name).memory_mib(512).build();
    // The template for this shape, made once and not timed.
    run_true(&warm, spec("bench-ws-0")?).await?;
    let (mut whole, mut pushes) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let started = Instant::now();
        let mut session = Session::new(
            warm.clone(),
            spec(&format!("bench-ws-{run}"))?,
            Some(workspace.to_owned()),
        );
        let timer = PushTimer::default();
        let result = async {
            session.ensure_ready(&timer).await?;
            session
                .run(ExecRequest::new(["true"]))
                .await?
                .output()
                .await?;
            session.pull_changes(&NoProgress).await
        }
        .await;
        session.shutdown(&NoProgress).await?;
        result?;
        whole.push(started.elapsed());
        pushes.push(timer.elapsed());
        reporter.report(Event::Note {
            message: format!(
                "run {run}/{runs}: session on {files} files {:.2}s (workspace image {:.2}s)",
                whole[whole.len() - 1].as_secs_f64(),
                pushes[pushes.len() - 1].as_secs_f64()
            ),
        });
    }
    let mut session = Session::new(
        warm.clone(),
        spec("bench-ws-push")?,
        Some(workspace.to_owned()),
    );
    let result = async {
        session.ensure_ready(&NoProgress).await?;
        for i in 0..10.min(files) {
            let file = workspace
                .join(format!("dir{:02}", i % 50))
                .join(format!("file{i:05}.txt"));
            state::write_atomic(&file, b"changed, and longer than before\n")?;
        }
        let timer = PushTimer::default();
        session.push_changes(&timer).await?;
        Ok::<_, crate::Error>(timer.elapsed().as_secs_f64() * 1e3)
    }
    .await;
    session.shutdown(&NoProgress).await?;
    Ok((Stats::of(&whole), Stats::of(&pushes), result?))
}

/// Keeps how long the workspace push took.
#[derive(Debug, Default)]
struct PushTimer(std::sync::Mutex<Option<std::time::Duration>>);

impl PushTimer {
    fn elapsed(&self) -> std::time::Duration {
        self.0.lock().ok().and_then(|d| *d).unwrap_or_default()
    }
}

impl Reporter for PushTimer {
    fn report(&self, event: Event) {
        if let Event::StageDone {
            stage: crate::progress::Stage::PushWorkspace,
            elapsed,
        } = event
            && let Ok(mut slot) = self.0.lock()
        {
            *slot = Some(elapsed);
        }
    }
}
