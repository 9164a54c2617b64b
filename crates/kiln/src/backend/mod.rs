//! Backends run a VM's machine. The trait is deliberately narrow: start the machine, tell
//! whether it runs, kill it. Everything a guest does goes through the agent, which is the same
//! on every backend.

pub mod libvirt;
pub mod qemu;

use async_trait::async_trait;

use crate::image::Image;
use crate::spec::PortForward;
use crate::state::{BackendKind, MachineRecord, VmPaths};
use crate::{Accel, Result, VmSpec};

/// Everything a backend needs to start a VM's machine.
#[derive(Debug)]
pub struct Launch<'a> {
    pub spec: &'a VmSpec,
    pub image: &'a Image,
    pub paths: &'a VmPaths,
    pub accel: Accel,
    pub accel_reason: &'a str,
}

#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> BackendKind;

    /// Refuses a spec this backend cannot run, before anything is created.
    fn check(&self, spec: &VmSpec) -> Result<()>;

    /// Prepares what the VM needs on disk the first time (disk files).
    async fn create(&self, spec: &VmSpec, paths: &VmPaths) -> Result<()>;

    /// Starts the machine and returns once its process runs (not once the guest booted).
    async fn start(&self, launch: &Launch<'_>) -> Result<MachineRecord>;

    /// The pid of the VM's live machine process, found from what the backend left on disk
    /// (so a machine started by a kiln that died before recording it is still found).
    async fn running_pid(&self, paths: &VmPaths) -> Option<u32>;

    /// Ends the machine now: a clean quit if it answers, else a kill. No machine is fine.
    async fn kill(&self, paths: &VmPaths) -> Result<()>;

    /// Adds (or removes) a port forward on the running machine's user-mode NIC.
    async fn set_forward(&self, paths: &VmPaths, forward: &PortForward, add: bool) -> Result<()>;
}
