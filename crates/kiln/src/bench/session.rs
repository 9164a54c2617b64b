//! Sessions, measured: `kiln run -- true` end to end against a plain boot to agent-ready;
//! warm sessions on a workspace of many files, end to end; and an incremental push.

use std::time::{Duration, Instant};

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
    /// The first warm session on that workspace, end to end (`kiln run -w DIR -- true`): its
    /// workspace image written, a warm start, the mount, `true`, the pull, the removal.
    pub workspace_first_run_ms: f64,
    /// Of that, writing the workspace image on the host.
    pub image_first_ms: f64,
    /// Later warm sessions on it, each after 10 files changed on the host: the image kept
    /// from the first, and only those files over the agent.
    pub workspace_run_true: Stats,
    /// Of those, preparing the image (an overlay on the kept one).
    pub image_later: Stats,
    /// Pushing again, within a session, after 10 files changed (only those go).
    pub push_incremental_ms: f64,
}

/// One whole session running `true`: boot (or clone), run, pull, remove. Its duration.
pub(super) async fn run_true(kiln: &Kiln, spec: crate::VmSpec) -> Result<Duration> {
    run_true_in(kiln, spec, None, &NoProgress).await
}

/// [`run_true`] with `workspace`, reporting the session's progress to `reporter`.
async fn run_true_in(
    kiln: &Kiln,
    spec: crate::VmSpec,
    workspace: Option<&std::path::Path>,
    reporter: &dyn Reporter,
) -> Result<Duration> {
    let started = Instant::now();
    let mut session = Session::new(kiln.clone(), spec, workspace.map(std::path::Path::to_owned));
    let result = async {
        session.ensure_ready(reporter).await?;
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
    let workspace = kiln
        .paths()
        .data_dir()
        .join(format!("bench-workspace-{}", std::process::id()));
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
    kiln.forget_workspace_image(&workspace);
    let _ = std::fs::remove_dir_all(&workspace);
    let measured = measured?;
    let (run_true, up) = (Stats::of(&sessions), Stats::of(&ups));
    Ok(SessionReport {
        ratio: run_true.p50_ms / up.p50_ms.max(f64::EPSILON),
        run_true,
        up,
        files,
        workspace_bytes: (files * body.len()) as u64,
        workspace_first_run_ms: measured.first.as_secs_f64() * 1e3,
        image_first_ms: measured.first_image.as_secs_f64() * 1e3,
        workspace_run_true: Stats::of(&measured.later),
        image_later: Stats::of(&measured.later_images),
        push_incremental_ms: measured.push_incremental.as_secs_f64() * 1e3,
    })
}

/// Bytes in each file of the bench's workspace.
const FILE_BYTES: usize = 10_000;

/// What [`workspace_sessions`] measured.
struct Measured {
    first: Duration,
    first_image: Duration,
    later: Vec<Duration>,
    later_images: Vec<Duration>,
    push_incremental: Duration,
}

/// Changes 10 files of the bench's workspace (`round` makes each change new).
fn change_ten(workspace: &std::path::Path, files: usize, round: u32) -> Result<()> {
    for i in 0..10.min(files) {
        let file = workspace
            .join(format!("dir{:02}", i % 50))
            .join(format!("file{i:05}.txt"));
        state::write_atomic(&file, format!("changed in round {round}\n").as_bytes())?;
    }
    Ok(())
}

/// One warm session on `workspace`, end to end (`kiln run -w DIR -- true`: the workspace
/// image, a warm start, the mount, what changed since the image, `true`, the pull, the
/// removal). Its time, and its image's.
async fn workspace_session(
    warm: &Kiln,
    name: &str,
    workspace: &std::path::Path,
) -> Result<(Duration, Duration)> {
    let spec = crate::VmSpec::builder(name).memory_mib(512).build()?;
    let timer = StageTimer::new(crate::progress::Stage::WorkspaceImage);
    let whole = run_true_in(warm, spec, Some(workspace), &timer).await?;
    Ok((whole, timer.elapsed()))
}

/// The first warm session on `workspace` (its image written), `runs` later ones (each after
/// 10 files changed), and, within one more, an incremental push of 10 changed files.
async fn workspace_sessions(
    kiln: &Kiln,
    workspace: &std::path::Path,
    runs: u32,
    files: usize,
    reporter: &dyn Reporter,
) -> Result<Measured> {
    let warm = kiln.clone().with_warm_starts(true);
    // The template for this shape, made once and not timed.
    run_true(
        &warm,
        crate::VmSpec::builder("bench-ws-0")
            .memory_mib(512)
            .build()?,
    )
    .await?;
    let (first, first_image) = workspace_session(&warm, "bench-ws-first", workspace).await?;
    reporter.report(Event::Note {
        message: format!(
            "first session on {files} files {:.2}s (image written {:.2}s)",
            first.as_secs_f64(),
            first_image.as_secs_f64()
        ),
    });
    let (mut later, mut later_images) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        change_ten(workspace, files, run)?;
        let (whole, image) =
            workspace_session(&warm, &format!("bench-ws-{run}"), workspace).await?;
        later.push(whole);
        later_images.push(image);
        reporter.report(Event::Note {
            message: format!(
                "run {run}/{runs}: later session, 10 files changed, {:.2}s (image {:.2}s)",
                whole.as_secs_f64(),
                image.as_secs_f64()
            ),
        });
    }
    let spec = crate::VmSpec::builder("bench-ws-push")
        .memory_mib(512)
        .build()?;
    let mut session = Session::new(warm.clone(), spec, Some(workspace.to_owned()));
    let result = async {
        session.ensure_ready(&NoProgress).await?;
        change_ten(workspace, files, runs + 1)?;
        let timer = StageTimer::new(crate::progress::Stage::PushWorkspace);
        session.push_changes(&timer).await?;
        Ok::<_, crate::Error>(timer.elapsed())
    }
    .await;
    session.shutdown(&NoProgress).await?;
    Ok(Measured {
        first,
        first_image,
        later,
        later_images,
        push_incremental: result?,
    })
}

/// Keeps how long one stage took (its last run).
#[derive(Debug)]
struct StageTimer {
    stage: crate::progress::Stage,
    took: std::sync::Mutex<Option<Duration>>,
}

impl StageTimer {
    fn new(stage: crate::progress::Stage) -> Self {
        Self {
            stage,
            took: std::sync::Mutex::new(None),
        }
    }

    fn elapsed(&self) -> Duration {
        self.took.lock().ok().and_then(|d| *d).unwrap_or_default()
    }
}

impl Reporter for StageTimer {
    fn report(&self, event: Event) {
        if let Event::StageDone { stage, elapsed } = event
            && stage == self.stage
            && let Ok(mut slot) = self.took.lock()
        {
            *slot = Some(elapsed);
        }
    }
}
