use std::time::Duration;

use async_trait::async_trait;

use crate::progress::Reporter;
use crate::score::{ObservedVm, Topology, VmHost};
use crate::{AgentClient, Error, Kiln, Result, VmSpec, VmState};

/// This machine, running VMs on the daemonless QEMU backend. It has no named networks, so
/// scores that need them do not compile against it.
#[derive(Debug, Clone)]
pub struct LocalHost {
    kiln: Kiln,
}

impl LocalHost {
    pub fn new(kiln: Kiln) -> Self {
        Self { kiln }
    }

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
