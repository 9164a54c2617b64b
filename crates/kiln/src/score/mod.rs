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

// The capabilities live with the topologies; a score names them from here too.
pub use crate::topology::{NetworkHost, ObservedNetwork, ObservedVm, Topology, VmHost};

use std::fmt;

use async_trait::async_trait;

use crate::Result;
use crate::progress::Reporter;
use crate::spec::{SpecError, validate_name};

/// Desired state with a name. `create_interpret` gives what applies it to a topology `T`.
pub trait Score<T: Topology>: Send + Sync + fmt::Debug {
    /// The score's name: the owner tag on everything it creates.
    fn name(&self) -> &str;

    /// The desired state, serialized (what `--json` shows and what plans compare).
    fn desired_state(&self) -> serde_json::Value;

    /// The interpret that applies this score to a topology `T`.
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

/// Ends an apply or destroy of score `score`: its failures, and each host of the topology
/// that did not answer (where what the score holds was `left`), as one
/// [`crate::Error::ApplyIncomplete`].
async fn incomplete<T: Topology>(
    score: &str,
    mut failures: Vec<String>,
    topology: &T,
    left: &str,
) -> Result<()> {
    for (host, why) in topology.unreachable_hosts().await {
        failures.push(format!("host {host} does not answer ({why}): {left}"));
    }
    if failures.is_empty() {
        return Ok(());
    }
    Err(crate::Error::ApplyIncomplete {
        score: score.to_owned(),
        failures,
    })
}

/// Refuses to replace `resource` while a host of the topology does not answer (the old one
/// could stay there, or the new one be made twice); `None` when every host answers.
async fn replace_refused<T: Topology>(topology: &T, resource: String) -> Option<crate::Error> {
    let (host, _) = topology.unreachable_hosts().await.into_iter().next()?;
    Some(crate::Error::HostUnreachable {
        host,
        resource,
        reason: "a replace waits until every host of the topology answers".to_owned(),
    })
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
