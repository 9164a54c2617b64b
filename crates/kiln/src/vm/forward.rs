//! Port forwards added to and removed from a running VM (`kiln forward`). The VM's record
//! keeps them, so the next start opens them again.

use super::lifecycle::lock;
use super::{Kiln, VmState, read_record};
use crate::spec::PortForward;
use crate::state;
use crate::{Error, Result};

impl Kiln {
    /// Opens `forward` on a running VM now, and on every later start.
    pub async fn forward(&self, name: &str, forward: PortForward) -> Result<()> {
        let vm = self.get(name).await?;
        let _lock = lock(vm.paths()).await?;
        let mut record = read_record(vm.paths())?.ok_or_else(|| Error::VmNotFound {
            name: name.to_owned(),
        })?;
        let spec = record.spec.with_port(forward)?;
        if vm.state().await != VmState::Running {
            return Err(Error::WrongState {
                name: name.to_owned(),
                state: VmState::Stopped,
                action: "forward",
                needed: VmState::Running,
            });
        }
        // Only the new rule: the others are open already.
        self.backend
            .check(&crate::VmSpec::builder(name).port(forward).build()?)?;
        self.backend.set_forward(vm.paths(), &forward, true).await?;
        record.spec = spec;
        state::write_json_atomic(&vm.paths().record(), &record)
    }

    /// Closes a forward (matched by protocol, address and host port).
    pub async fn unforward(&self, name: &str, forward: PortForward) -> Result<()> {
        let vm = self.get(name).await?;
        let _lock = lock(vm.paths()).await?;
        let mut record = read_record(vm.paths())?.ok_or_else(|| Error::VmNotFound {
            name: name.to_owned(),
        })?;
        if vm.state().await == VmState::Running {
            self.backend
                .set_forward(vm.paths(), &forward, false)
                .await?;
        }
        record.spec = record.spec.without_port(&forward);
        state::write_json_atomic(&vm.paths().record(), &record)
    }
}
