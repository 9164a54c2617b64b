use std::collections::BTreeSet;

use async_trait::async_trait;
use serde::Serialize;

use super::plan::spec_diffs;
use super::{
    Change, Interpret, NetworkHost, ObservedNetwork, Outcome, Plan, ResourceKind, ResourcePlan,
    Score, check_unique_names, incomplete, not_owned, replace_refused, validate_score_name,
};
use crate::Result;
use crate::progress::{Event, Reporter};
use crate::spec::{NetworkSpec, SpecError, check_no_overlap, subnets_overlap};

/// Some networks that should exist.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkScore {
    name: String,
    networks: Vec<NetworkSpec>,
}

impl NetworkScore {
    /// Checks the score as a whole: a valid name, unique network names, no overlapping subnets.
    pub fn new(
        name: impl Into<String>,
        networks: impl IntoIterator<Item = NetworkSpec>,
    ) -> std::result::Result<Self, SpecError> {
        let name = name.into();
        validate_score_name(&name)?;
        let networks: Vec<NetworkSpec> = networks.into_iter().collect();
        check_unique_names("network", networks.iter().map(NetworkSpec::name))?;
        check_no_overlap(&networks)?;
        Ok(Self { name, networks })
    }

    /// The networks the score wants.
    pub fn networks(&self) -> &[NetworkSpec] {
        &self.networks
    }
}

impl<T: NetworkHost> Score<T> for NetworkScore {
    fn name(&self) -> &str {
        &self.name
    }

    fn desired_state(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn create_interpret(&self) -> Box<dyn Interpret<T>> {
        Box::new(NetworkInterpret {
            score: self.clone(),
        })
    }
}

/// Applies a [`NetworkScore`].
#[derive(Debug)]
pub struct NetworkInterpret {
    score: NetworkScore,
}

impl NetworkInterpret {
    fn plan_against(&self, observed: &[ObservedNetwork]) -> Result<Plan> {
        let owner = self.score.name.as_str();
        let mut plan = Plan::new(owner);
        for spec in &self.score.networks {
            let current = observed.iter().find(|n| n.name == spec.name());
            let change = match current {
                None => Change::Create,
                Some(net) if net.owner.as_deref() != Some(owner) => {
                    return Err(not_owned(
                        ResourceKind::Network,
                        spec.name(),
                        net.owner.as_deref(),
                    ));
                }
                // Missing on some hosts, the same where it is: made there, left alone
                // where it is (a copy that differs is replaced, below).
                Some(net) if net.partial && spec_diffs(net.spec.as_ref(), spec).is_empty() => {
                    Change::Create
                }
                Some(net) => {
                    let diffs = spec_diffs(net.spec.as_ref(), spec);
                    if !diffs.is_empty() {
                        plan.resources.push(
                            ResourcePlan::new(ResourceKind::Network, spec.name(), Change::Replace)
                                .with_diffs(diffs),
                        );
                        self.check_subnet_free(spec, observed)?;
                        continue;
                    }
                    if net.active {
                        Change::Unchanged
                    } else {
                        Change::Update
                    }
                }
            };
            if change == Change::Create {
                self.check_subnet_free(spec, observed)?;
            }
            plan.resources.push(ResourcePlan::new(
                ResourceKind::Network,
                spec.name(),
                change,
            ));
        }
        let wanted: BTreeSet<&str> = self.score.networks.iter().map(NetworkSpec::name).collect();
        for net in observed {
            if net.owner.as_deref() == Some(owner) && !wanted.contains(net.name.as_str()) {
                plan.resources.push(ResourcePlan::new(
                    ResourceKind::Network,
                    &net.name,
                    Change::Delete,
                ));
            }
        }
        Ok(plan)
    }

    /// A new network's subnet must not overlap any other network on the host.
    fn check_subnet_free(&self, spec: &NetworkSpec, observed: &[ObservedNetwork]) -> Result<()> {
        for other in observed.iter().filter(|n| n.name != spec.name()) {
            if let Some(subnet) = other
                .subnets
                .iter()
                .find(|s| subnets_overlap(**s, spec.subnet()))
            {
                return Err(SpecError::OverlappingSubnets {
                    first: other.name.clone(),
                    first_subnet: *subnet,
                    second: spec.name().to_owned(),
                    second_subnet: spec.subnet(),
                }
                .into());
            }
        }
        Ok(())
    }

    fn spec(&self, name: &str) -> Option<&NetworkSpec> {
        self.score.networks.iter().find(|n| n.name() == name)
    }
}

#[async_trait]
impl<T: NetworkHost> Interpret<T> for NetworkInterpret {
    async fn plan(&self, topology: &T) -> Result<Plan> {
        self.plan_against(&topology.observe_networks().await?)
    }

    async fn execute(&self, topology: &T, reporter: &dyn Reporter) -> Result<Outcome> {
        let plan = Interpret::<T>::plan(self, topology).await?;
        let owner = self.score.name.as_str();
        // As for VMs: a network that cannot be changed (a host lost) does not stop the
        // others; each failure is reported at the end.
        let mut failures = Vec::new();
        for resource in &plan.resources {
            if resource.change != Change::Unchanged {
                reporter.report(Event::Note {
                    message: format!("{resource}"),
                });
            }
            // Replaced only while every host answers: a lost one would keep the old.
            let refused = match resource.change {
                Change::Replace => {
                    replace_refused(topology, format!("network {}", resource.name)).await
                }
                _ => None,
            };
            let done = match refused {
                Some(err) => Err(err),
                None => match (resource.change, self.spec(&resource.name)) {
                    (Change::Create, Some(spec)) => topology.create_network(spec, owner).await,
                    (Change::Update, _) => topology.start_network(&resource.name).await,
                    (Change::Replace, Some(spec)) => {
                        // Made again wherever it was removed, even if some host kept the old.
                        let deleted = topology.delete_network(spec.name()).await;
                        let created = topology.create_network(spec, owner).await;
                        deleted.and(created)
                    }
                    (Change::Delete, _) => topology.delete_network(&resource.name).await,
                    _ => Ok(()),
                },
            };
            if let Err(err) = done {
                failures.push(format!("{resource}: {err}"));
            }
        }
        incomplete(
            owner,
            failures,
            topology,
            "its networks were left as they are",
        )
        .await?;
        Ok(plan)
    }

    async fn destroy(&self, topology: &T, reporter: &dyn Reporter) -> Result<Outcome> {
        let owner = self.score.name.as_str();
        let mut outcome = Plan::new(owner);
        let mut failures = Vec::new();
        for net in topology.observe_networks().await? {
            if net.owner.as_deref() != Some(owner) {
                continue;
            }
            let resource = ResourcePlan::new(ResourceKind::Network, &net.name, Change::Delete);
            reporter.report(Event::Note {
                message: format!("{resource}"),
            });
            match topology.delete_network(&net.name).await {
                Ok(()) => outcome.resources.push(resource),
                Err(err) => failures.push(format!("{resource}: {err}")),
            }
        }
        incomplete(owner, failures, topology, "its networks were not removed").await?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, subnet: &str) -> NetworkSpec {
        NetworkSpec::nat(name, subnet).build().unwrap()
    }

    fn observed(spec: &NetworkSpec, owner: Option<&str>) -> ObservedNetwork {
        ObservedNetwork {
            name: spec.name().to_owned(),
            owner: owner.map(str::to_owned),
            spec: Some(spec.clone()),
            subnets: vec![spec.subnet()],
            active: true,
            partial: false,
        }
    }

    #[test]
    fn a_subnet_another_network_uses_is_refused() {
        let interpret = NetworkInterpret {
            score: NetworkScore::new("lab", [net("lab", "192.168.122.0/25")]).unwrap(),
        };
        let default = net("default", "192.168.122.0/24");
        let err = interpret
            .plan_against(&[observed(&default, None)])
            .unwrap_err();
        assert!(
            matches!(
                err,
                crate::Error::Spec(SpecError::OverlappingSubnets { .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn changed_networks_are_replaced_and_orphans_deleted() {
        let interpret = NetworkInterpret {
            score: NetworkScore::new("lab", [net("a", "10.1.0.0/24"), net("b", "10.2.0.0/24")])
                .unwrap(),
        };
        let plan = interpret
            .plan_against(&[
                observed(&net("a", "10.1.0.0/24"), Some("lab")),
                observed(&net("b", "10.3.0.0/24"), Some("lab")),
                observed(&net("c", "10.4.0.0/24"), Some("lab")),
            ])
            .unwrap();
        let changes: Vec<Change> = plan.resources.iter().map(|r| r.change).collect();
        assert_eq!(
            changes,
            [Change::Unchanged, Change::Replace, Change::Delete]
        );
        assert_eq!(plan.resources[1].diffs[0].field, "subnet");
    }

    #[test]
    fn overlapping_networks_in_one_score_are_refused() {
        assert!(matches!(
            NetworkScore::new("lab", [net("a", "10.1.0.0/16"), net("b", "10.1.2.0/24")]),
            Err(SpecError::OverlappingSubnets { .. })
        ));
    }
}
