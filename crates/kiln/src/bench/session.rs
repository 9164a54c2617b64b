//! Sessions, measured: `kiln run -- true` end to end against a plain boot to agent-ready,
//! and pushing a workspace of many small files, all of it and then only what changed.

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
    /// Small files in the pushed workspace.
    pub files: usize,
    /// Pushing the whole workspace into a fresh session.
    pub push_first_ms: f64,
    /// Pushing it again after 10 files changed (only those go).
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

    // A tree like a source checkout: 50 directories of small files.
    let workspace = kiln.paths().data_dir().join("bench-workspace");
    let _ = std::fs::remove_dir_all(&workspace);
    for i in 0..files {
        let dir = workspace.join(format!("dir{:02}", i % 50));
        state::create_private_dir(&dir)?;
        state::write_atomic(
            &dir.join(format!("file{i:05}.txt")),
            format!("file {i}\n").repeat(20).as_bytes(),
        )?;
    }
    let spec = crate::VmSpec::builder("bench-push")
        .memory_mib(512)
        .build()?;
    let mut session = Session::new(kiln.clone(), spec, Some(workspace.clone()));
    let result = async {
        // The push alone, as the session's own progress reports it.
        let timer = PushTimer::default();
        session.ensure_ready(&timer).await?;
        let push_first_ms = timer.elapsed_ms();
        for i in 0..10.min(files) {
            let file = workspace
                .join(format!("dir{:02}", i % 50))
                .join(format!("file{i:05}.txt"));
            state::write_atomic(&file, b"changed, and longer than before\n")?;
        }
        let timer = PushTimer::default();
        session.push_changes(&timer).await?;
        let push_incremental_ms = timer.elapsed_ms();
        Ok::<_, crate::Error>((push_first_ms, push_incremental_ms))
    }
    .await;
    session.shutdown(&NoProgress).await?;
    let _ = std::fs::remove_dir_all(&workspace);
    let (push_first_ms, push_incremental_ms) = result?;
    let (run_true, up) = (Stats::of(&sessions), Stats::of(&ups));
    Ok(SessionReport {
        ratio: run_true.p50_ms / up.p50_ms.max(f64::EPSILON),
        run_true,
        up,
        files,
        push_first_ms,
        push_incremental_ms,
    })
}

/// Keeps how long the workspace push took.
#[derive(Debug, Default)]
struct PushTimer(std::sync::Mutex<Option<std::time::Duration>>);

impl PushTimer {
    fn elapsed_ms(&self) -> f64 {
        self.0
            .lock()
            .ok()
            .and_then(|d| *d)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
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
