//! The QMP commands kiln sends, and their answers, as types: each command is a struct whose
//! fields are its arguments ([`Command::NAME`] is its name), and its answer is parsed into
//! [`Command::Answer`]. Names and fields follow QEMU's QAPI schema (`qapi/*.json`).

use std::path::PathBuf;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

/// A command QEMU's monitor runs.
pub trait Command: Serialize {
    /// Its name in the QAPI schema.
    const NAME: &'static str;
    /// What its `return` holds (`IgnoredAny` where kiln reads nothing of it).
    type Answer: DeserializeOwned;
}

macro_rules! command {
    ($ty:ident, $name:literal, $answer:ty) => {
        impl Command for $ty {
            const NAME: &'static str = $name;
            type Answer = $answer;
        }
    };
}

/// Leaves capability negotiation: the monitor takes commands after it.
#[derive(Debug, Serialize)]
pub struct QmpCapabilities {}
command!(QmpCapabilities, "qmp_capabilities", IgnoredAny);

/// The machine's run state.
#[derive(Debug, Serialize)]
pub struct QueryStatus {}
command!(QueryStatus, "query-status", StatusInfo);

/// The answer to [`QueryStatus`].
#[derive(Debug, Deserialize)]
pub struct StatusInfo {
    /// Where the machine is.
    pub status: RunState,
}

/// QAPI's `RunState`, as far as kiln tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// The vCPUs run.
    Running,
    /// Stopped by `stop`.
    Paused,
    /// Waiting for, or loading, an incoming state (`-incoming`).
    Inmigrate,
    /// Stopped after its state was saved.
    Postmigrate,
    /// Any other state.
    #[serde(other)]
    Other,
}

/// Stops the vCPUs.
#[derive(Debug, Serialize)]
pub struct Stop {}
command!(Stop, "stop", IgnoredAny);

/// Lets the vCPUs run.
#[derive(Debug, Serialize)]
pub struct Cont {}
command!(Cont, "cont", IgnoredAny);

/// Ends QEMU.
#[derive(Debug, Serialize)]
pub struct Quit {}
command!(Quit, "quit", IgnoredAny);

/// The state of the current (or last) migration, outgoing or incoming.
#[derive(Debug, Serialize)]
pub struct QueryMigrate {}
command!(QueryMigrate, "query-migrate", MigrationInfo);

/// The answer to [`QueryMigrate`].
#[derive(Debug, Deserialize)]
pub struct MigrationInfo {
    /// Absent when no migration ever ran.
    #[serde(default)]
    pub status: Option<MigrationStatus>,
    /// Why it failed, when it did.
    #[serde(default, rename = "error-desc")]
    pub error_desc: Option<String>,
    /// How far the guest's RAM has gone, once the migration started.
    #[serde(default)]
    pub ram: Option<MigrationRam>,
}

/// QAPI's `MigrationStats`, the part kiln reads: how much of the guest's RAM went.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct MigrationRam {
    /// The guest's RAM, in bytes.
    pub total: u64,
    /// The bytes of it not yet gone over.
    pub remaining: u64,
}

impl MigrationRam {
    /// The bytes of RAM gone over (zero pages count as gone, though they take no room).
    pub fn done(&self) -> u64 {
        self.total.saturating_sub(self.remaining)
    }
}

/// QAPI's `MigrationStatus`, as far as kiln tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    /// No migration ran.
    None,
    /// Starting.
    Setup,
    /// Being cancelled.
    Cancelling,
    /// Cancelled.
    Cancelled,
    /// Under way.
    Active,
    /// Paused before its last phase.
    PreSwitchover,
    /// Moving device state.
    Device,
    /// Done.
    Completed,
    /// Failed (`error-desc` says why).
    Failed,
    /// Any other status.
    #[serde(other)]
    Other,
}

impl MigrationStatus {
    /// Whether a migration is still running.
    pub fn is_busy(self) -> bool {
        matches!(
            self,
            Self::Setup | Self::Active | Self::Cancelling | Self::PreSwitchover | Self::Device
        )
    }
}

/// Cancels the running migration.
#[derive(Debug, Serialize)]
pub struct MigrateCancel {}
command!(MigrateCancel, "migrate_cancel", IgnoredAny);

/// Sets migration capabilities.
#[derive(Debug, Serialize)]
pub struct MigrateSetCapabilities {
    /// Each capability and its state.
    pub capabilities: Vec<Capability>,
}
command!(
    MigrateSetCapabilities,
    "migrate-set-capabilities",
    IgnoredAny
);

/// One migration capability.
#[derive(Debug, Serialize)]
pub struct Capability {
    /// Its name in QAPI's `MigrationCapability`.
    pub capability: &'static str,
    /// On or off.
    pub state: bool,
}

/// Saves the machine's state to `uri` (kiln: `file:PATH`).
#[derive(Debug, Serialize)]
pub struct Migrate {
    /// Where to.
    pub uri: String,
}
command!(Migrate, "migrate", IgnoredAny);

/// Loads a saved state into a QEMU started with `-incoming defer`.
#[derive(Debug, Serialize)]
pub struct MigrateIncoming {
    /// Where from (kiln: `file:PATH`).
    pub uri: String,
    /// Whether QEMU exits when the load fails (else it stays up to say why).
    #[serde(rename = "exit-on-error")]
    pub exit_on_error: bool,
}
command!(MigrateIncoming, "migrate-incoming", IgnoredAny);

/// Moves a disk onto a new overlay, freezing the file it wrote to.
#[derive(Debug, Serialize)]
pub struct BlockdevSnapshotSync {
    /// The drive's id.
    pub device: String,
    /// The overlay.
    #[serde(rename = "snapshot-file")]
    pub snapshot_file: PathBuf,
    /// The overlay's format.
    pub format: &'static str,
    /// `existing`: kiln made the overlay already.
    pub mode: &'static str,
}
command!(BlockdevSnapshotSync, "blockdev-snapshot-sync", IgnoredAny);

/// Runs a human monitor command (kiln: `hostfwd_add` and `hostfwd_remove`, which have no QMP
/// form); answers what it printed.
#[derive(Debug, Serialize)]
pub struct HumanMonitorCommand {
    /// The command line.
    #[serde(rename = "command-line")]
    pub command_line: String,
}
command!(HumanMonitorCommand, "human-monitor-command", String);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn arguments_and_answers_use_the_schema_names() {
        let args = serde_json::to_value(MigrateIncoming {
            uri: "file:/s".into(),
            exit_on_error: false,
        })
        .unwrap();
        assert_eq!(
            args,
            serde_json::json!({"uri": "file:/s", "exit-on-error": false})
        );
        let info: MigrationInfo = serde_json::from_value(
            serde_json::json!({"status": "failed", "error-desc": "Unknown ramblock"}),
        )
        .unwrap();
        assert_eq!(info.status, Some(MigrationStatus::Failed));
        assert_eq!(info.error_desc.as_deref(), Some("Unknown ramblock"));
        let none: MigrationInfo = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(none.status, None);
        let odd: StatusInfo = serde_json::from_value(
            serde_json::json!({"status": "guest-panicked", "running": false}),
        )
        .unwrap();
        assert_eq!(odd.status, RunState::Other);
        let busy: MigrationInfo =
            serde_json::from_value(serde_json::json!({"status": "postcopy-active"})).unwrap();
        assert_eq!(busy.status, Some(MigrationStatus::Other));
    }
}
