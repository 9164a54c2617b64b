use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use super::{Host, LogChunk};
use crate::progress::Reporter;
use crate::score::{ObservedVm, Topology, VmHost};
use crate::spec::{MetadataChange, PortForward};
use crate::vm::SnapshotInfo;
use crate::{AgentClient, Error, IoError, Kiln, Result, VmInfo, VmSpec, VmState};

/// This machine, running VMs on the daemonless QEMU backend. It has no named networks, so
/// scores that need them do not compile against it.
#[derive(Debug, Clone)]
pub struct LocalHost {
    kiln: Kiln,
}

impl LocalHost {
    /// This machine, running VMs with `kiln`.
    pub fn new(kiln: Kiln) -> Self {
        Self { kiln }
    }

    /// The kiln that runs the VMs.
    pub fn kiln(&self) -> &Kiln {
        &self.kiln
    }
}

#[async_trait]
impl Topology for LocalHost {
    fn describe(&self) -> String {
        "local qemu (daemonless)".to_owned()
    }

    async fn ensure_ready(&self, _reporter: &dyn Reporter) -> Result<()> {
        crate::state::create_private_dir(&self.kiln.paths().vms_dir())
    }
}

#[async_trait]
impl VmHost for LocalHost {
    async fn observe_vms(&self) -> Result<Vec<ObservedVm>> {
        let mut vms = Vec::new();
        for info in self.kiln.list().await? {
            let vm = match self.kiln.get(&info.name).await {
                Ok(vm) => vm,
                Err(Error::VmNotFound { .. }) => continue,
                Err(err) => return Err(err),
            };
            vms.push(ObservedVm {
                name: info.name,
                host: None,
                owner: vm.record().owner.clone(),
                spec: Some(vm.record().spec.clone()),
                running: info.state == VmState::Running,
            });
        }
        Ok(vms)
    }

    async fn check_vms(&self, creating: &[&VmSpec]) -> Result<()> {
        creating
            .iter()
            .try_for_each(|spec| self.kiln.backend().check(spec))
    }

    async fn create_vm(&self, spec: &VmSpec, owner: &str, reporter: &dyn Reporter) -> Result<()> {
        self.kiln
            .up_as(spec.clone(), Some(owner), reporter)
            .await
            .map(drop)
    }

    async fn update_vm(&self, spec: &VmSpec, _owner: &str, reporter: &dyn Reporter) -> Result<()> {
        self.kiln.stop(spec.name(), reporter).await?;
        self.kiln.reconfigure(spec).await?;
        self.kiln.start(spec.name(), reporter).await.map(drop)
    }

    async fn delete_vm(&self, name: &str, reporter: &dyn Reporter) -> Result<()> {
        self.kiln.remove(name, true, reporter).await
    }

    async fn vm_agent(&self, name: &str, timeout: Duration) -> Result<AgentClient> {
        self.kiln.get(name).await?.agent_within(timeout).await
    }
}

/// The most of a console log one read returns.
const LOG_CHUNK: u64 = 4 << 20;

#[async_trait]
impl Host for LocalHost {
    fn location(&self) -> String {
        "this machine".to_owned()
    }

    async fn up(&self, spec: &VmSpec, reporter: &dyn Reporter) -> Result<()> {
        self.kiln.up(spec.clone(), reporter).await.map(drop)
    }

    async fn start(&self, name: &str, reporter: &dyn Reporter) -> Result<()> {
        self.kiln.start(name, reporter).await.map(drop)
    }

    async fn stop_within(
        &self,
        name: &str,
        grace: Duration,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        self.kiln.stop_within(name, grace, reporter).await
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<()> {
        if paused {
            self.kiln.pause(name).await
        } else {
            self.kiln.resume(name).await
        }
    }

    async fn remove(&self, name: &str, force: bool, reporter: &dyn Reporter) -> Result<()> {
        self.kiln.remove(name, force, reporter).await
    }

    async fn list(&self) -> Result<Vec<VmInfo>> {
        self.kiln.list().await
    }

    async fn find(&self, name: &str) -> Result<Option<VmInfo>> {
        match self.kiln.info(name).await {
            Ok(info) => Ok(Some(info)),
            Err(Error::VmNotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn agent(&self, name: &str, timeout: Duration) -> Result<AgentClient> {
        self.kiln.get(name).await?.agent_within(timeout).await
    }

    async fn read_log(&self, name: &str, offset: u64) -> Result<LogChunk> {
        use std::io::{Read, Seek, SeekFrom};
        let vm = self.kiln.get(name).await?;
        let running = vm.state().await == VmState::Running;
        let path = vm.paths().serial_log();
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LogChunk {
                    data: Vec::new(),
                    next_offset: 0,
                    running,
                });
            }
            Err(err) => return Err(IoError::new("open", &path, err).into()),
        };
        let len = file.metadata().map_err(IoError::at("read", &path))?.len();
        // A new boot started the log over.
        let from = if len < offset { 0 } else { offset };
        file.seek(SeekFrom::Start(from))
            .map_err(IoError::at("read", &path))?;
        let mut data = Vec::new();
        file.take(LOG_CHUNK)
            .read_to_end(&mut data)
            .map_err(IoError::at("read", &path))?;
        Ok(LogChunk {
            next_offset: from + data.len() as u64,
            data,
            running,
        })
    }

    async fn save_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        disk_only: bool,
        reporter: &dyn Reporter,
    ) -> Result<SnapshotInfo> {
        self.kiln
            .save_snapshot(name, snapshot, disk_only, reporter)
            .await
    }

    async fn snapshots(&self, name: &str) -> Result<Vec<SnapshotInfo>> {
        self.kiln.snapshots(name).await
    }

    async fn restore_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        self.kiln.restore(name, snapshot, reporter).await.map(drop)
    }

    async fn remove_snapshot(&self, name: &str, snapshot: &str) -> Result<()> {
        self.kiln.remove_snapshot(name, snapshot).await
    }

    async fn clone_vm(
        &self,
        name: &str,
        snapshot: &str,
        new: &str,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        self.kiln
            .clone_from(name, snapshot, new, reporter)
            .await
            .map(drop)
    }

    async fn forwards(&self, name: &str) -> Result<Vec<PortForward>> {
        Ok(self.kiln.get(name).await?.record().spec.ports().to_vec())
    }

    async fn add_forward(&self, name: &str, forward: PortForward) -> Result<()> {
        self.kiln.forward(name, forward).await
    }

    async fn remove_forward(&self, name: &str, forward: PortForward) -> Result<()> {
        self.kiln.unforward(name, forward).await
    }

    async fn set_metadata(
        &self,
        name: &str,
        change: &MetadataChange,
    ) -> Result<BTreeMap<String, String>> {
        self.kiln.set_metadata(name, change).await
    }
}
