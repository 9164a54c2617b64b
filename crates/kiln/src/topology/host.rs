//! One trait for every verb on one VM, whatever runs it.
//!
//! Modelled on libvirt's driver table: every host implements every entry point, and one it
//! cannot serve answers [`Error::Unsupported`] naming the verb, the host and what to do
//! instead. The CLI and programs hold a `dyn Host` and never ask which kind it is.
//!
//! [`LocalHost`](super::LocalHost) runs VMs on this machine with the daemonless QEMU backend;
//! [`LibvirtHost`](super::LibvirtHost) runs them through a libvirt connection, local or
//! remote. The same conformance tests run against both (`tests/conformance.rs`).

use std::time::Duration;

use async_trait::async_trait;

use crate::progress::Reporter;
use crate::spec::PortForward;
use crate::vm::SnapshotInfo;
use crate::{AgentClient, Result, VmInfo, VmSpec};

/// How long `stop` lets a guest power itself off before the machine is killed.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(15);

/// A piece of a VM's console log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogChunk {
    /// The log's bytes from the offset on (possibly only the first part of them).
    pub data: Vec<u8>,
    /// Where the next read starts. Smaller than the offset asked for when the log started
    /// over (a new boot).
    pub next_offset: u64,
    /// Whether the VM runs, so more may come.
    pub running: bool,
}

/// Every verb kiln has for a VM, on one host.
#[async_trait]
pub trait Host: Send + Sync + std::fmt::Debug {
    /// Where its VMs run, for messages: `this machine` or the libvirt URI.
    fn location(&self) -> String;

    /// Creates and boots a VM, and waits for its agent.
    async fn up(&self, spec: &VmSpec, reporter: &dyn Reporter) -> Result<()>;
    /// Boots a stopped VM and waits for its agent; a running one is left alone.
    async fn start(&self, name: &str, reporter: &dyn Reporter) -> Result<()>;
    /// Asks the guest to power off; pulls the plug after the default grace period
    /// ([`DEFAULT_STOP_GRACE`], 15 s).
    async fn stop(&self, name: &str, reporter: &dyn Reporter) -> Result<()> {
        self.stop_within(name, DEFAULT_STOP_GRACE, reporter).await
    }
    /// Asks the guest to power off and pulls the plug if it has not after `grace`; a zero
    /// `grace` pulls it at once, without asking (`kiln stop --force`). A stopped VM is left
    /// alone.
    async fn stop_within(&self, name: &str, grace: Duration, reporter: &dyn Reporter)
    -> Result<()>;
    /// Suspends or resumes the VM's vCPUs.
    async fn set_paused(&self, name: &str, paused: bool) -> Result<()>;
    /// Removes a VM and everything it owns; a running one needs `force`.
    async fn remove(&self, name: &str, force: bool, reporter: &dyn Reporter) -> Result<()>;

    /// kiln's VMs on this host, sorted by name.
    async fn list(&self) -> Result<Vec<VmInfo>>;
    /// One VM, or `None` when the host has none of that name.
    async fn find(&self, name: &str) -> Result<Option<VmInfo>>;

    /// Leases one of the running VM's agent ports and authenticates.
    async fn agent(&self, name: &str, timeout: Duration) -> Result<AgentClient>;
    /// The console log from `offset` on.
    async fn read_log(&self, name: &str, offset: u64) -> Result<LogChunk>;

    /// Saves the VM's memory and disks (or its disks only) under a name.
    async fn save_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        disk_only: bool,
        reporter: &dyn Reporter,
    ) -> Result<SnapshotInfo>;
    /// The VM's snapshots.
    async fn snapshots(&self, name: &str) -> Result<Vec<SnapshotInfo>>;
    /// Puts the VM back where the snapshot was taken.
    async fn restore_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        reporter: &dyn Reporter,
    ) -> Result<()>;
    /// Removes a snapshot of the VM.
    async fn remove_snapshot(&self, name: &str, snapshot: &str) -> Result<()>;
    /// Starts a new VM `new` from a snapshot of `name`, with an identity of its own.
    async fn clone_vm(
        &self,
        name: &str,
        snapshot: &str,
        new: &str,
        reporter: &dyn Reporter,
    ) -> Result<()>;

    /// The VM's port forwards.
    async fn forwards(&self, name: &str) -> Result<Vec<PortForward>>;
    /// Opens a port forward on the VM, now if it runs and on every later start.
    async fn add_forward(&self, name: &str, forward: PortForward) -> Result<()>;
    /// Closes a port forward (matched by protocol, address and host port).
    async fn remove_forward(&self, name: &str, forward: PortForward) -> Result<()>;

    /// Changes the VM's metadata key/values (its secrets stay) and returns them as they are
    /// now. The guest reads them on its config drive from its next start on; a running VM
    /// keeps what it booted with.
    async fn set_metadata(
        &self,
        name: &str,
        change: &crate::spec::MetadataChange,
    ) -> Result<std::collections::BTreeMap<String, String>>;
}
