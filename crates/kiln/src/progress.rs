//! Progress of long operations, as typed events. The library never prints: a front end
//! implements [`Reporter`] and decides how to show them.

use std::time::Duration;

use crate::Accel;

/// One thing that happened during a long operation. As JSON: an object whose `event` names
/// the variant in snake case (`stage_done`), with durations in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The accelerator was chosen, with the probe's reason.
    AccelChosen {
        /// The accelerator the VM runs with.
        accel: Accel,
        /// Why the probe chose it.
        reason: String,
    },
    /// A stage began: show a spinner.
    StageStarted {
        /// The stage that began.
        stage: Stage,
    },
    /// A stage finished.
    StageDone {
        /// The stage that finished.
        stage: Stage,
        /// How long it took.
        #[serde(rename = "elapsed_ms", serialize_with = "millis")]
        elapsed: Duration,
    },
    /// How a VM starts: as a clone of its warm-start template, or with a boot.
    Start {
        /// Whether it starts from a template.
        warm: bool,
        /// The template's key when warm; why it boots when cold.
        detail: String,
    },
    /// How far a stage's work has come, in bytes: reported while it goes (a few times a
    /// second at most) and once at its end, for a progress bar.
    Bytes {
        /// The stage the bytes belong to.
        stage: Stage,
        /// Bytes done so far.
        done: u64,
        /// Bytes the stage expects in all, when known beforehand (an estimate: `done` may end
        /// a little above or below it).
        total: Option<u64>,
    },
    /// A part of a stage ended (what a boot's wait for the agent was spent on): for
    /// timings, not for a progress display.
    Phase {
        /// The part that ended.
        phase: Phase,
        /// How long it took.
        #[serde(rename = "elapsed_ms", serialize_with = "millis")]
        elapsed: Duration,
    },
    /// Something worth telling, that is not an error (a retry, a cache miss).
    Note {
        /// The note, one sentence.
        message: String,
    },
}

fn millis<S: serde::Serializer>(elapsed: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(elapsed.as_secs_f64() * 1000.0)
}

/// The stages of long operations, each reported as it starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Stage {
    /// Downloading Debian's kernel package, for an image build.
    DownloadKernel,
    /// Building an image.
    BuildImage,
    /// Making a VM's files (or libvirt volumes), before it first boots.
    CreateVm,
    /// Copying an image's boot files into kiln's libvirt storage pool.
    UploadImage,
    /// Starting a VM's QEMU process, for a boot, a restore or a clone.
    StartQemu,
    /// Waiting for a started VM's guest agent to answer.
    WaitAgent,
    /// Stopping a VM: asking the guest to power off, then pulling the plug.
    Stop,
    /// Removing a VM and everything it owns.
    Remove,
    /// Sending a session's workspace (or what changed in it) to the guest.
    PushWorkspace,
    /// A session's workspace image: written, or reused from an earlier session.
    WorkspaceImage,
    /// Bringing back the files a session's commands created or changed.
    PullChanges,
    /// Saving a VM's snapshot.
    SaveSnapshot,
    /// Bringing a VM back to a snapshot.
    RestoreSnapshot,
    /// Booting and saving a warm-start template (once per image and shape).
    MakeTemplate,
    /// Copying files between the host and a VM (`kiln cp`).
    Copy,
    /// An image build: unpacking the kernel package for its modules.
    UnpackKernel,
    /// An image build: mmdebstrap downloading, unpacking and configuring the packages.
    InstallPackages,
    /// An image build: writing the root filesystem (`mkfs.ext4 -d`).
    MakeFilesystem,
    /// An image build: converting the filesystem to the qcow2 image VMs start from.
    ConvertImage,
}

impl Stage {
    /// What a front end shows for the stage, in lower case (`wait for guest agent`).
    pub fn label(self) -> &'static str {
        match self {
            Self::DownloadKernel => "download kernel package",
            Self::BuildImage => "build image",
            Self::CreateVm => "create VM",
            Self::UploadImage => "upload image to the libvirt pool",
            Self::StartQemu => "start qemu",
            Self::WaitAgent => "wait for guest agent",
            Self::Stop => "stop",
            Self::Remove => "remove",
            Self::PushWorkspace => "push workspace",
            Self::WorkspaceImage => "workspace image (written or reused)",
            Self::PullChanges => "pull changed files",
            Self::SaveSnapshot => "save snapshot",
            Self::RestoreSnapshot => "restore snapshot",
            Self::MakeTemplate => "make the warm-start template (once per image and shape)",
            Self::Copy => "copy files",
            Self::UnpackKernel => "unpack the kernel package",
            Self::InstallPackages => "install packages (mmdebstrap)",
            Self::MakeFilesystem => "make the root filesystem",
            Self::ConvertImage => "convert to qcow2",
        }
    }
}

/// The parts of a boot, read from outside the guest: each is reported as it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// From QEMU's start until the guest's first byte on its console (firmware, the
    /// kernel's decompression and early setup).
    FirstOutput,
    /// From the first console byte until kiln's init says it starts the agent (the kernel's
    /// boot, init's mounts).
    KernelToInit,
    /// From init starting the agent until the agent answered kiln's handshake.
    InitToAgent,
    /// A warm start: QEMU loading the template's saved state, until the guest runs.
    LoadState,
    /// A warm start: giving the clone its own name, secret and random seed.
    Rekey,
    /// A session: the guest mounting its workspace drive.
    MountWorkspace,
}

impl Phase {
    /// The phase in a few words, for tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::FirstOutput => "qemu start to first console output",
            Self::KernelToInit => "kernel to init",
            Self::InitToAgent => "init to agent ready",
            Self::LoadState => "load the saved state",
            Self::Rekey => "re-key the clone",
            Self::MountWorkspace => "mount the workspace",
        }
    }
}

/// A reporter that keeps every stage's and phase's time while passing each event on: what
/// `--timings` prints and the benches summarise.
pub struct Timings<'a> {
    inner: &'a dyn Reporter,
    entries: std::sync::Mutex<Vec<(&'static str, Duration)>>,
}

impl<'a> Timings<'a> {
    /// Records what passes through to `inner`.
    pub fn new(inner: &'a dyn Reporter) -> Self {
        Self {
            inner,
            entries: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Each stage and phase that ended, in order, with its label and time.
    pub fn entries(&self) -> Vec<(&'static str, Duration)> {
        self.entries.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl std::fmt::Debug for Timings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timings")
            .field("entries", &self.entries())
            .finish_non_exhaustive()
    }
}

impl Reporter for Timings<'_> {
    fn report(&self, event: Event) {
        let entry = match &event {
            Event::StageDone { stage, elapsed } => Some((stage.label(), *elapsed)),
            Event::Phase { phase, elapsed } => Some((phase.label(), *elapsed)),
            _ => None,
        };
        if let Some(entry) = entry
            && let Ok(mut entries) = self.entries.lock()
        {
            entries.push(entry);
        }
        self.inner.report(event);
    }
}

/// How a front end says [`Event::Start`] in one line.
pub fn start_line(warm: bool, detail: &str) -> String {
    if warm {
        format!("warm start from template {detail}")
    } else {
        format!("cold boot: {detail}")
    }
}

/// Receives progress events. Must be cheap: it is called on the caller's task.
pub trait Reporter: Send + Sync {
    /// Takes one event.
    fn report(&self, event: Event);
}

/// Discards every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Reporter for NoProgress {
    fn report(&self, _event: Event) {}
}

/// How often a [`Meter`] reports at most.
const METER_INTERVAL: Duration = Duration::from_millis(100);

/// Counts a stage's bytes and reports them as [`Event::Bytes`]: at most every 100 ms while
/// they come, and once more at the end ([`Meter::finish`]).
pub(crate) struct Meter<'a> {
    reporter: &'a dyn Reporter,
    stage: Stage,
    total: Option<u64>,
    done: u64,
    last: Option<std::time::Instant>,
}

impl<'a> Meter<'a> {
    /// A meter for `stage`, expecting `total` bytes when that is known.
    pub(crate) fn new(reporter: &'a dyn Reporter, stage: Stage, total: Option<u64>) -> Self {
        Self {
            reporter,
            stage,
            total,
            done: 0,
            last: None,
        }
    }

    /// `bytes` more are done.
    pub(crate) fn add(&mut self, bytes: u64) {
        self.set(self.done.saturating_add(bytes), self.total);
    }

    /// `done` bytes of `total` are done (for work whose count comes from elsewhere).
    pub(crate) fn set(&mut self, done: u64, total: Option<u64>) {
        self.done = done;
        self.total = total;
        let due = self
            .last
            .is_none_or(|last| last.elapsed() >= METER_INTERVAL);
        if due {
            self.report();
        }
    }

    /// Reports the count as it ends; a meter that counted nothing reports nothing.
    pub(crate) fn finish(mut self) {
        if self.last.is_some() || self.done > 0 {
            self.report();
        }
    }

    fn report(&mut self) {
        self.last = Some(std::time::Instant::now());
        self.reporter.report(Event::Bytes {
            stage: self.stage,
            done: self.done,
            total: self.total,
        });
    }
}

impl std::fmt::Debug for Meter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("stage", &self.stage)
            .field("done", &self.done)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// Times a phase of a stage and reports it once it ended.
pub(crate) async fn phase<T, F>(reporter: &dyn Reporter, phase: Phase, work: F) -> T
where
    F: std::future::Future<Output = T>,
{
    let started = std::time::Instant::now();
    let out = work.await;
    reporter.report(Event::Phase {
        phase,
        elapsed: started.elapsed(),
    });
    out
}

/// Runs blocking `work` on a blocking thread, passing on to `reporter` the events it reports
/// while it runs.
pub(crate) async fn blocking<T, F>(reporter: &dyn Reporter, work: F) -> crate::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn Reporter) -> T + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::task::spawn_blocking(move || work(&Forward(tx)));
    // The channel ends when `work` returns (its sender is dropped with it).
    while let Some(event) = rx.recv().await {
        reporter.report(event);
    }
    task.await.map_err(crate::image::join_error)
}

/// A reporter on a blocking thread: its events go to the async side that runs it.
struct Forward(tokio::sync::mpsc::UnboundedSender<Event>);

impl Reporter for Forward {
    fn report(&self, event: Event) {
        // The receiver lives until the work ends.
        let _ = self.0.send(event);
    }
}

/// Times blocking work as a stage and reports its start and end.
pub(crate) fn stage_blocking<T>(
    reporter: &dyn Reporter,
    stage: Stage,
    work: impl FnOnce() -> T,
) -> T {
    reporter.report(Event::StageStarted { stage });
    let started = std::time::Instant::now();
    let out = work();
    reporter.report(Event::StageDone {
        stage,
        elapsed: started.elapsed(),
    });
    out
}

/// Times a stage and reports its start and end.
pub(crate) async fn stage<T, F>(reporter: &dyn Reporter, stage: Stage, work: F) -> T
where
    F: std::future::Future<Output = T>,
{
    reporter.report(Event::StageStarted { stage });
    let started = std::time::Instant::now();
    let out = work.await;
    reporter.report(Event::StageDone {
        stage,
        elapsed: started.elapsed(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_a_tag_and_milliseconds() {
        let done = Event::StageDone {
            stage: Stage::WaitAgent,
            elapsed: Duration::from_micros(1500),
        };
        assert_eq!(
            serde_json::to_value(&done).unwrap(),
            serde_json::json!({"event": "stage_done", "stage": "wait_agent", "elapsed_ms": 1.5})
        );
        let output = crate::ExecOutput {
            status: crate::ExitStatus::Code(0),
            stdout: b"hi\xff".to_vec(),
            stderr: Vec::new(),
        };
        let json = serde_json::to_value(&output).unwrap();
        assert_eq!(json["stdout"], "hi\u{fffd}");
        assert_eq!(json["stderr"], "");
    }

    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<Event>>);

    impl Reporter for Recorder {
        fn report(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    fn bytes_seen(recorder: &Recorder) -> Vec<(u64, Option<u64>)> {
        let events = recorder.0.lock().unwrap();
        events
            .iter()
            .map(|e| match e {
                Event::Bytes { done, total, .. } => (*done, *total),
                other => panic!("not a byte count: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_meter_reports_at_once_then_at_most_every_interval_and_always_at_the_end() {
        let recorder = Recorder::default();
        let mut meter = Meter::new(&recorder, Stage::Copy, Some(10_000));
        for _ in 0..1000 {
            meter.add(10);
        }
        meter.finish();
        // A thousand adds in well under 100 ms: the first, then the end.
        assert_eq!(
            bytes_seen(&recorder),
            vec![(10, Some(10_000)), (10_000, Some(10_000))]
        );
        let json = serde_json::to_value(&recorder.0.lock().unwrap()[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event": "bytes", "stage": "copy", "done": 10, "total": 10_000})
        );
    }

    #[test]
    fn a_meter_reports_again_once_the_interval_passed() {
        let recorder = Recorder::default();
        let mut meter = Meter::new(&recorder, Stage::SaveSnapshot, None);
        meter.set(1, Some(100));
        meter.set(2, Some(100));
        std::thread::sleep(METER_INTERVAL + Duration::from_millis(10));
        meter.set(50, Some(100));
        meter.finish();
        assert_eq!(
            bytes_seen(&recorder),
            vec![(1, Some(100)), (50, Some(100)), (50, Some(100))]
        );
    }

    #[test]
    fn a_meter_that_counted_nothing_reports_nothing() {
        let recorder = Recorder::default();
        Meter::new(&recorder, Stage::PushWorkspace, Some(1024)).finish();
        assert_eq!(bytes_seen(&recorder), vec![]);
    }
}
