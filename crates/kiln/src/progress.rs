//! Progress of long operations, as typed events. The library never prints: a front end
//! implements [`Reporter`] and decides how to show them.

use std::time::Duration;

use crate::Accel;

#[derive(Debug, Clone)]
pub enum Event {
    /// The accelerator was chosen, with the probe's reason.
    AccelChosen { accel: Accel, reason: String },
    /// A stage began: show a spinner.
    StageStarted { stage: Stage },
    /// A stage finished.
    StageDone { stage: Stage, elapsed: Duration },
    /// Something worth telling, that is not an error (a retry, a cache miss).
    Note { message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    DownloadKernel,
    BuildImage,
    CreateVm,
    UploadImage,
    StartQemu,
    WaitAgent,
    Stop,
    Remove,
    PushWorkspace,
    PullChanges,
    SaveSnapshot,
    RestoreSnapshot,
}

impl Stage {
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
            Self::PullChanges => "pull changed files",
            Self::SaveSnapshot => "save snapshot",
            Self::RestoreSnapshot => "restore snapshot",
        }
    }
}

/// Receives progress events. Must be cheap: it is called on the caller's task.
pub trait Reporter: Send + Sync {
    fn report(&self, event: Event);
}

/// Discards every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Reporter for NoProgress {
    fn report(&self, _event: Event) {}
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
