//! The declarative layer. A [`Score`] says what should exist; its [`Interpret`] makes it so on
//! a [`Topology`] (where it runs), which offers capabilities as traits ([`VmHost`],
//! [`NetworkHost`]). A score asks for the capabilities it needs in its `impl`, so the compiler
//! refuses a score on a topology that lacks them:
//!
//! ```compile_fail
//! # use kiln::score::{NetworkScore, Score};
//! # use kiln::topology::LocalHost;
//! // The daemonless QEMU host has no named networks: this does not compile.
//! fn wants(score: NetworkScore) -> Box<dyn Score<LocalHost>> { Box::new(score) }
//! ```
//!
//! Every resource a score creates is tagged with the score's name; `plan` compares the tag's
//! spec with the score's, `execute` changes only what differs (a second run reports every
//! resource unchanged) and `destroy` removes exactly what carries the score's tag.

mod network;
mod plan;
mod vm;

pub use network::{NetworkInterpret, NetworkScore};
pub use plan::{Change, FieldDiff, Outcome, Plan, ResourceKind, ResourcePlan};
pub use vm::{VmInterpret, VmScore};

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;

use crate::progress::Reporter;
use crate::spec::{NetworkSpec, SpecError, validate_name};
use crate::{AgentClient, Result, VmSpec};

/// Where scores run: one libvirt host, the local daemonless QEMU, several hosts.
#[async_trait]
pub trait Topology: Send + Sync + fmt::Debug + 'static {
    /// A short description for people (`libvirt qemu:///system`).
    fn describe(&self) -> String;

    /// Makes the topology usable (connections, storage pools); cheap when already ready.
    async fn ensure_ready(&self, reporter: &dyn Reporter) -> Result<()>;
}

/// A VM as a topology sees it.
#[derive(Debug, Clone)]
pub struct ObservedVm {
    pub name: String,
    /// The host it is on, for topologies with several.
    pub host: Option<String>,
    /// The score that owns it; `None` for a VM kiln did not create.
    pub owner: Option<String>,
    /// The spec it was created from, when kiln created it.
    pub spec: Option<VmSpec>,
    pub running: bool,
}

/// A network as a topology sees it.
#[derive(Debug, Clone)]
pub struct ObservedNetwork {
    pub name: String,
    pub owner: Option<String>,
    pub spec: Option<NetworkSpec>,
    pub subnets: Vec<Ipv4Net>,
    pub active: bool,
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
    /// Every network, kiln's or not (their subnets are checked for overlaps).
    async fn observe_networks(&self) -> Result<Vec<ObservedNetwork>>;

    /// Creates a network tagged as `owner`'s and makes it active.
    async fn create_network(&self, spec: &NetworkSpec, owner: &str) -> Result<()>;

    /// Makes an existing network active.
    async fn start_network(&self, name: &str) -> Result<()>;

    async fn delete_network(&self, name: &str) -> Result<()>;
}

/// Desired state with a name. `create_interpret` gives what applies it to a topology `T`.
pub trait Score<T: Topology>: Send + Sync + fmt::Debug {
    /// The score's name: the owner tag on everything it creates.
    fn name(&self) -> &str;

    /// The desired state, serialized (what `--json` shows and what plans compare).
    fn desired_state(&self) -> serde_json::Value;

    fn create_interpret(&self) -> Box<dyn Interpret<T>>;
}

/// Makes a score's desired state true on a topology.
#[async_trait]
pub trait Interpret<T: Topology>: Send + Sync + fmt::Debug {
    /// What `execute` would change, without changing anything.
    async fn plan(&self, topology: &T) -> Result<Plan>;

    /// Changes what differs; a second run reports every resource unchanged.
    async fn execute(&self, topology: &T, reporter: &dyn Reporter) -> Result<Outcome>;

    /// Removes what the score owns, and nothing else.
    async fn destroy(&self, topology: &T, reporter: &dyn Reporter) -> Result<Outcome>;
}

/// A resource of this name exists but belongs to someone else.
fn not_owned(kind: ResourceKind, name: &str, owner: Option<&str>) -> crate::Error {
    crate::Error::NotOwned {
        kind,
        name: name.to_owned(),
        owner: owner.map(str::to_owned),
    }
}

/// Score names follow the resource-name rules (they end up in tags and logs).
fn validate_score_name(name: &str) -> std::result::Result<(), SpecError> {
    validate_name(name)
}

/// Refuses two resources of one kind with the same name in a score.
fn check_unique_names<'a>(
    kind: &'static str,
    names: impl IntoIterator<Item = &'a str>,
) -> std::result::Result<(), SpecError> {
    let mut seen = std::collections::BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(SpecError::DuplicateName {
                kind,
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}
