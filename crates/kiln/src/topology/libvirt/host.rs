//! [`Host`] on a libvirt connection: each verb is the inherent one of the same name.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use super::LibvirtHost;
use crate::progress::Reporter;
use crate::score::VmHost;
use crate::spec::{MetadataChange, PortForward};
use crate::topology::{Host, LogChunk};
use crate::vm::SnapshotInfo;
use crate::{AgentClient, Error, Result, VmInfo, VmSpec};

impl LibvirtHost {
    fn unsupported(&self, verb: &'static str, reason: &'static str, hint: &'static str) -> Error {
        Error::Unsupported {
            verb,
            host: format!("libvirt {}", self.uri()),
            reason,
            hint,
        }
    }
}

#[async_trait]
impl Host for LibvirtHost {
    fn location(&self) -> String {
        self.uri().to_owned()
    }

    async fn up(&self, spec: &VmSpec, reporter: &dyn Reporter) -> Result<()> {
        LibvirtHost::up(self, spec, reporter).await
    }

    async fn start(&self, name: &str, reporter: &dyn Reporter) -> Result<()> {
        LibvirtHost::start(self, name, reporter).await
    }

    async fn stop_within(
        &self,
        name: &str,
        grace: Duration,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        LibvirtHost::stop_within(self, name, grace, reporter).await
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<()> {
        LibvirtHost::set_paused(self, name, paused).await
    }

    async fn remove(&self, name: &str, force: bool, reporter: &dyn Reporter) -> Result<()> {
        LibvirtHost::remove(self, name, force, reporter).await
    }

    async fn list(&self) -> Result<Vec<VmInfo>> {
        LibvirtHost::list(self).await
    }

    async fn find(&self, name: &str) -> Result<Option<VmInfo>> {
        LibvirtHost::find(self, name).await
    }

    async fn agent(&self, name: &str, timeout: Duration) -> Result<AgentClient> {
        self.vm_agent(name, timeout).await
    }

    /// At most 4 MiB at a time, read through the storage API, so remote hosts too.
    async fn read_log(&self, name: &str, offset: u64) -> Result<LogChunk> {
        let domain = self.kiln_domain(name).await?;
        let data = self
            .conn()
            .read_volume(&super::serial_log_volume(name), offset, 4 << 20)
            .await?
            .unwrap_or_default();
        Ok(LogChunk {
            next_offset: offset + data.len() as u64,
            data,
            running: domain.active,
        })
    }

    async fn save_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        disk_only: bool,
        reporter: &dyn Reporter,
    ) -> Result<SnapshotInfo> {
        self.snapshot(name, snapshot, disk_only, reporter).await
    }

    async fn snapshots(&self, name: &str) -> Result<Vec<SnapshotInfo>> {
        LibvirtHost::snapshots(self, name).await
    }

    async fn restore_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        self.restore(name, snapshot, reporter).await
    }

    async fn remove_snapshot(&self, name: &str, snapshot: &str) -> Result<()> {
        LibvirtHost::remove_snapshot(self, name, snapshot).await
    }

    async fn clone_vm(
        &self,
        name: &str,
        _snapshot: &str,
        _new: &str,
        _reporter: &dyn Reporter,
    ) -> Result<()> {
        self.kiln_domain(name).await?;
        Err(self.unsupported(
            "clone",
            "libvirt's snapshots live inside the VM's own disks, which a second VM cannot share",
            "clone VMs of the daemonless backend, or create another VM from the same spec",
        ))
    }

    async fn forwards(&self, name: &str) -> Result<Vec<PortForward>> {
        // A libvirt VM is created only without forwards (its NIC is on a network instead).
        self.kiln_domain(name).await?;
        Ok(Vec::new())
    }

    async fn add_forward(&self, name: &str, _forward: PortForward) -> Result<()> {
        self.kiln_domain(name).await?;
        Err(self.forwards_unsupported())
    }

    async fn remove_forward(&self, name: &str, _forward: PortForward) -> Result<()> {
        self.kiln_domain(name).await?;
        Err(self.forwards_unsupported())
    }

    async fn set_metadata(
        &self,
        name: &str,
        change: &MetadataChange,
    ) -> Result<BTreeMap<String, String>> {
        LibvirtHost::set_metadata(self, name, change).await
    }
}

impl LibvirtHost {
    fn forwards_unsupported(&self) -> Error {
        self.unsupported(
            "a port forward",
            "port forwards belong to the daemonless backend's user-mode NIC; a libvirt VM's NIC is on a network",
            "reach the VM at its address on the network (`kiln exec NAME -- ip addr`), or use the daemonless backend",
        )
    }
}
