//! Progress of long operations, as typed events. The library never prints: a front end
//! implements [`Reporter`] and decides how to show them.

use std::time::Duration;

use crate::Accel;

/// One thing that happened during a long operation. As JSON: an object whose `event` names
/// the variant in snake case (`stage_done`), with durations in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
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
    /// Bringing back the files a session's commands created or changed.
    PullChanges,
    /// Saving a VM's snapshot.
    SaveSnapshot,
    /// Bringing a VM back to a snapshot.
    RestoreSnapshot,
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
            Self::PullChanges => "pull changed files",
            Self::SaveSnapshot => "save snapshot",
            Self::RestoreSnapshot => "restore snapshot",
        }
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
}
