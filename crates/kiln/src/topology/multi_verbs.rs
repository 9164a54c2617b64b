//! [`Host`] on a [`MultiHost`]: each verb goes to the host that has the VM (`up` to the one
//! its placement picks), so the CLI and programs drive VMs spread over several hosts as they
//! drive one.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use super::{Host, LogChunk, MultiHost};
use crate::progress::Reporter;
use crate::score::{Topology, VmHost};
use crate::spec::{MetadataChange, PortForward};
use crate::vm::SnapshotInfo;
use crate::{AgentClient, Result, VmInfo, VmSpec};

#[async_trait]
impl<H: VmHost + Host> Host for MultiHost<H> {
    fn location(&self) -> String {
        self.describe()
    }

    async fn up(&self, spec: &VmSpec, reporter: &dyn Reporter) -> Result<()> {
        let mut assigned = self.assign(&[spec]).await?;
        let target = match assigned.pop() {
            Some((_, target)) => target?,
            None => String::new(),
        };
        self.host(&target, spec.name())?.up(spec, reporter).await
    }

    async fn start(&self, name: &str, reporter: &dyn Reporter) -> Result<()> {
        MultiHost::find(self, name)
            .await?
            .start(name, reporter)
            .await
    }

    async fn stop_within(
        &self,
        name: &str,
        grace: Duration,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        MultiHost::find(self, name)
            .await?
            .stop_within(name, grace, reporter)
            .await
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<()> {
        MultiHost::find(self, name)
            .await?
            .set_paused(name, paused)
            .await
    }

    async fn remove(&self, name: &str, force: bool, reporter: &dyn Reporter) -> Result<()> {
        MultiHost::find(self, name)
            .await?
            .remove(name, force, reporter)
            .await
    }

    /// Every answering host's VMs (a host that does not answer is left out and logged).
    async fn list(&self) -> Result<Vec<VmInfo>> {
        let mut all = Vec::new();
        for (name, host) in self.hosts() {
            match host.list().await {
                Ok(vms) => all.extend(vms),
                Err(err) => log::warn!("host {name} does not answer: {err}"),
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    async fn find(&self, name: &str) -> Result<Option<VmInfo>> {
        match MultiHost::find(self, name).await {
            Ok(host) => host.find(name).await,
            Err(crate::Error::VmNotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn agent(&self, name: &str, timeout: Duration) -> Result<AgentClient> {
        MultiHost::find(self, name)
            .await?
            .agent(name, timeout)
            .await
    }

    async fn read_log(&self, name: &str, offset: u64) -> Result<LogChunk> {
        MultiHost::find(self, name)
            .await?
            .read_log(name, offset)
            .await
    }

    async fn save_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        disk_only: bool,
        reporter: &dyn Reporter,
    ) -> Result<SnapshotInfo> {
        MultiHost::find(self, name)
            .await?
            .save_snapshot(name, snapshot, disk_only, reporter)
            .await
    }

    async fn snapshots(&self, name: &str) -> Result<Vec<SnapshotInfo>> {
        MultiHost::find(self, name).await?.snapshots(name).await
    }

    async fn restore_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        MultiHost::find(self, name)
            .await?
            .restore_snapshot(name, snapshot, reporter)
            .await
    }

    async fn remove_snapshot(&self, name: &str, snapshot: &str) -> Result<()> {
        MultiHost::find(self, name)
            .await?
            .remove_snapshot(name, snapshot)
            .await
    }

    /// The clone goes where its source is (it reads through the source's files).
    async fn clone_vm(
        &self,
        name: &str,
        snapshot: &str,
        new: &str,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        MultiHost::find(self, name)
            .await?
            .clone_vm(name, snapshot, new, reporter)
            .await
    }

    async fn forwards(&self, name: &str) -> Result<Vec<PortForward>> {
        MultiHost::find(self, name).await?.forwards(name).await
    }

    async fn add_forward(&self, name: &str, forward: PortForward) -> Result<()> {
        MultiHost::find(self, name)
            .await?
            .add_forward(name, forward)
            .await
    }

    async fn remove_forward(&self, name: &str, forward: PortForward) -> Result<()> {
        MultiHost::find(self, name)
            .await?
            .remove_forward(name, forward)
            .await
    }

    async fn set_metadata(
        &self,
        name: &str,
        change: &MetadataChange,
    ) -> Result<BTreeMap<String, String>> {
        MultiHost::find(self, name)
            .await?
            .set_metadata(name, change)
            .await
    }
}
