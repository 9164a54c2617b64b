//! What a topology offers scores, as traits: [`Topology`] itself (where scores run),
//! [`VmHost`] (it runs VMs) and [`NetworkHost`] (it has named networks). A score asks for the
//! capabilities it needs, so the compiler refuses a score on a topology that lacks them.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;

use crate::progress::Reporter;
use crate::spec::NetworkSpec;
use crate::{AgentClient, Result, VmSpec};

/// Where scores run: one libvirt host, the local daemonless QEMU, several hosts.
#[async_trait]
pub trait Topology: Send + Sync + fmt::Debug + 'static {
    /// A short description for people (`libvirt qemu:///system`).
    fn describe(&self) -> String;

    /// Makes the topology usable (connections, storage pools); cheap when already ready.
    async fn ensure_ready(&self, reporter: &dyn Reporter) -> Result<()>;

    /// The hosts of this topology that did not answer when its VMs or networks were last
    /// observed, with why: what they hold was left out of the observation. A single host has
    /// none (it fails instead).
    async fn unreachable_hosts(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// A VM as a topology sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ObservedVm {
    /// The VM's name.
    pub name: String,
    /// The host it is on, for topologies with several.
    pub host: Option<String>,
    /// The score that owns it; `None` for a VM kiln did not create.
    pub owner: Option<String>,
    /// The spec it was created from, when kiln created it.
    pub spec: Option<VmSpec>,
    /// Whether its machine runs.
    pub running: bool,
}

/// A network as a topology sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ObservedNetwork {
    /// The network's name.
    pub name: String,
    /// The score that owns it; `None` for a network kiln did not create.
    pub owner: Option<String>,
    /// The spec it was created from, when kiln created it.
    pub spec: Option<NetworkSpec>,
    /// The subnets it routes, as the host reports them.
    pub subnets: Vec<Ipv4Net>,
    /// Whether it is up.
    pub active: bool,
    /// On a topology of several hosts: whether some host that answered lacks it (a plan
    /// makes it there). Always false on one host.
    pub partial: bool,
}

/// A topology that runs VMs.
#[async_trait]
pub trait VmHost: Topology {
    /// Every VM on the topology, kiln's or not.
    async fn observe_vms(&self) -> Result<Vec<ObservedVm>>;

    /// Refuses, before anything changes, VMs the topology cannot take (disk space, features).
    async fn check_vms(&self, creating: &[&VmSpec]) -> Result<()>;

    /// Creates and boots a VM tagged as `owner`'s.
    async fn create_vm(&self, spec: &VmSpec, owner: &str, reporter: &dyn Reporter) -> Result<()>;

    /// Makes an existing VM match `spec` where that can be done in place (vCPUs, memory,
    /// running), restarting it if needed.
    async fn update_vm(&self, spec: &VmSpec, owner: &str, reporter: &dyn Reporter) -> Result<()>;

    /// Removes a VM and its disks.
    async fn delete_vm(&self, name: &str, reporter: &dyn Reporter) -> Result<()>;

    /// Connects to a running VM's guest agent.
    async fn vm_agent(&self, name: &str, timeout: Duration) -> Result<AgentClient>;
}

/// A topology with named networks.
#[async_trait]
pub trait NetworkHost: Topology {
    /// Every network, kiln's or not (their subnets are checked for overlaps). A topology of
    /// several hosts leaves out a host that does not answer
    /// ([`Topology::unreachable_hosts`]).
    async fn observe_networks(&self) -> Result<Vec<ObservedNetwork>>;

    /// Creates a network tagged as `owner`'s and makes it active.
    async fn create_network(&self, spec: &NetworkSpec, owner: &str) -> Result<()>;

    /// Makes an existing network active.
    async fn start_network(&self, name: &str) -> Result<()>;

    /// Stops and removes a network; a missing one is fine.
    async fn delete_network(&self, name: &str) -> Result<()>;
}
