use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use serde::Serialize;

use super::plan::spec_diffs;
use super::{
    Change, FieldDiff, Interpret, ObservedVm, Outcome, Plan, ResourceKind, ResourcePlan, Score,
    VmHost, check_unique_names, incomplete, not_owned, replace_refused, validate_score_name,
};
use crate::progress::{Event, Reporter};
use crate::spec::SpecError;
use crate::{Result, VmSpec};

/// Fields a running VM can take without being recreated (a restart applies them).
const IN_PLACE_FIELDS: &[&str] = &["cpus", "memory_mib"];

/// Some VMs that should exist, as specified.
#[derive(Debug, Clone, Serialize)]
pub struct VmScore {
    name: String,
    vms: Vec<VmSpec>,
}

impl VmScore {
    /// Checks the score as a whole: a valid name, unique VM names, no MAC on two NICs.
    pub fn new(
        name: impl Into<String>,
        vms: impl IntoIterator<Item = VmSpec>,
    ) -> std::result::Result<Self, SpecError> {
        let name = name.into();
        validate_score_name(&name)?;
        let vms: Vec<VmSpec> = vms.into_iter().collect();
        check_unique_names("VM", vms.iter().map(VmSpec::name))?;
        let mut macs = BTreeSet::new();
        for mac in vms
            .iter()
            .flat_map(|vm| vm.networks())
            .filter_map(|n| n.mac())
        {
            if !macs.insert(mac) {
                return Err(SpecError::DuplicateMac {
                    mac,
                    context: format!("score {name}"),
                });
            }
        }
        Ok(Self { name, vms })
    }

    /// The VMs the score wants.
    pub fn vms(&self) -> &[VmSpec] {
        &self.vms
    }
}

impl<T: VmHost> Score<T> for VmScore {
    fn name(&self) -> &str {
        &self.name
    }

    fn desired_state(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    fn create_interpret(&self) -> Box<dyn Interpret<T>> {
        Box::new(VmInterpret {
            score: self.clone(),
        })
    }
}

/// Applies a [`VmScore`].
#[derive(Debug)]
pub struct VmInterpret {
    score: VmScore,
}

impl VmInterpret {
    fn plan_against(&self, observed: &[ObservedVm]) -> Result<Plan> {
        let by_name: BTreeMap<&str, &ObservedVm> =
            observed.iter().map(|vm| (vm.name.as_str(), vm)).collect();
        let owner = self.score.name.as_str();
        let mut plan = Plan::new(owner);
        for spec in &self.score.vms {
            let name = spec.name();
            let Some(current) = by_name.get(name) else {
                plan.resources
                    .push(ResourcePlan::new(ResourceKind::Vm, name, Change::Create));
                continue;
            };
            if current.owner.as_deref() != Some(owner) {
                return Err(not_owned(ResourceKind::Vm, name, current.owner.as_deref()));
            }
            let mut diffs = spec_diffs(current.spec.as_ref(), spec);
            let change = if diffs.is_empty() && current.running {
                Change::Unchanged
            } else if diffs
                .iter()
                .all(|d| IN_PLACE_FIELDS.contains(&d.field.as_str()))
            {
                if !current.running {
                    diffs.push(FieldDiff {
                        field: "state".to_owned(),
                        from: "stopped".to_owned(),
                        to: "running".to_owned(),
                    });
                }
                Change::Update
            } else {
                Change::Replace
            };
            plan.resources.push(
                ResourcePlan::new(ResourceKind::Vm, name, change)
                    .on(current.host.clone())
                    .with_diffs(diffs),
            );
        }
        let wanted: BTreeSet<&str> = self.score.vms.iter().map(VmSpec::name).collect();
        for vm in observed {
            if vm.owner.as_deref() == Some(owner) && !wanted.contains(vm.name.as_str()) {
                plan.resources.push(
                    ResourcePlan::new(ResourceKind::Vm, &vm.name, Change::Delete)
                        .on(vm.host.clone()),
                );
            }
        }
        Ok(plan)
    }

    fn spec(&self, name: &str) -> Option<&VmSpec> {
        self.score.vms.iter().find(|vm| vm.name() == name)
    }
}

#[async_trait]
impl<T: VmHost> Interpret<T> for VmInterpret {
    async fn plan(&self, topology: &T) -> Result<Plan> {
        let plan = self.plan_against(&topology.observe_vms().await?)?;
        let creating: Vec<&VmSpec> = plan
            .resources
            .iter()
            .filter(|r| matches!(r.change, Change::Create | Change::Replace))
            .filter_map(|r| self.spec(&r.name))
            .collect();
        topology.check_vms(&creating).await?;
        Ok(plan)
    }

    async fn execute(&self, topology: &T, reporter: &dyn Reporter) -> Result<Outcome> {
        let plan = Interpret::<T>::plan(self, topology).await?;
        let owner = self.score.name.as_str();
        // One VM that cannot be changed (its host lost) does not stop the others: each
        // failure is collected and reported at the end.
        let mut failures = Vec::new();
        for resource in &plan.resources {
            if resource.change != Change::Unchanged {
                reporter.report(Event::Note {
                    message: format!("{resource}"),
                });
            }
            let spec = self.spec(&resource.name);
            // Replaced only while every host answers: it may go to another host, and must not
            // be removed and then refused.
            let refused = match resource.change {
                Change::Replace => replace_refused(topology, format!("VM {}", resource.name)).await,
                _ => None,
            };
            let done = match refused {
                Some(err) => Err(err),
                None => match (resource.change, spec) {
                    (Change::Create, Some(spec)) => topology.create_vm(spec, owner, reporter).await,
                    (Change::Update, Some(spec)) => topology.update_vm(spec, owner, reporter).await,
                    (Change::Replace, Some(spec)) => {
                        match topology.delete_vm(spec.name(), reporter).await {
                            Ok(()) => topology.create_vm(spec, owner, reporter).await,
                            Err(err) => Err(err),
                        }
                    }
                    (Change::Delete, _) => topology.delete_vm(&resource.name, reporter).await,
                    _ => Ok(()),
                },
            };
            if let Err(err) = done {
                failures.push(format!("{resource}: {err}"));
            }
        }
        // A host left out of the plan: what the score wants there is not known to be done.
        incomplete(owner, failures, topology, "its VMs were left as they are").await?;
        Ok(plan)
    }

    async fn destroy(&self, topology: &T, reporter: &dyn Reporter) -> Result<Outcome> {
        let owner = self.score.name.as_str();
        let mut outcome = Plan::new(owner);
        let mut failures = Vec::new();
        for vm in topology.observe_vms().await? {
            if vm.owner.as_deref() != Some(owner) {
                continue;
            }
            let resource =
                ResourcePlan::new(ResourceKind::Vm, &vm.name, Change::Delete).on(vm.host.clone());
            reporter.report(Event::Note {
                message: format!("{resource}"),
            });
            match topology.delete_vm(&vm.name, reporter).await {
                Ok(()) => outcome.resources.push(resource),
                Err(err) => failures.push(format!("{resource}: {err}")),
            }
        }
        incomplete(owner, failures, topology, "its VMs were not removed").await?;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskSpec, MacAddr, NetworkRef};

    fn vm(name: &str, cpus: u32) -> VmSpec {
        VmSpec::builder(name)
            .cpus(cpus)
            .no_network()
            .build()
            .unwrap()
    }

    fn observed(spec: &VmSpec, owner: Option<&str>, running: bool) -> ObservedVm {
        ObservedVm {
            name: spec.name().to_owned(),
            host: None,
            owner: owner.map(str::to_owned),
            spec: Some(spec.clone()),
            running,
        }
    }

    fn changes(plan: &Plan) -> Vec<(String, Change)> {
        plan.resources
            .iter()
            .map(|r| (r.name.clone(), r.change))
            .collect()
    }

    #[test]
    fn plans_create_update_replace_delete_and_unchanged() {
        let score = VmScore::new(
            "lab",
            [
                vm("new", 1),
                vm("same", 1),
                vm("bigger", 2),
                VmSpec::builder("disk")
                    .no_network()
                    .disk(DiskSpec::new_gib(1))
                    .build()
                    .unwrap(),
                vm("stopped", 1),
            ],
        )
        .unwrap();
        let interpret = VmInterpret { score };
        let current = [
            observed(&vm("same", 1), Some("lab"), true),
            observed(&vm("bigger", 1), Some("lab"), true),
            observed(&vm("disk", 1), Some("lab"), true),
            observed(&vm("stopped", 1), Some("lab"), false),
            observed(&vm("orphan", 1), Some("lab"), true),
            observed(&vm("foreign", 1), Some("other"), true),
        ];
        let plan = interpret.plan_against(&current).unwrap();
        assert_eq!(
            changes(&plan),
            [
                ("new".to_owned(), Change::Create),
                ("same".to_owned(), Change::Unchanged),
                ("bigger".to_owned(), Change::Update),
                ("disk".to_owned(), Change::Replace),
                ("stopped".to_owned(), Change::Update),
                ("orphan".to_owned(), Change::Delete),
            ]
        );
        assert_eq!(plan.resources[2].diffs[0].field, "cpus");
        assert_eq!(plan.resources[3].diffs[0].field, "disks");
        assert_eq!(plan.resources[4].diffs[0].field, "state");
    }

    #[test]
    fn a_vm_someone_else_owns_is_refused() {
        let interpret = VmInterpret {
            score: VmScore::new("lab", [vm("web", 1)]).unwrap(),
        };
        let err = interpret
            .plan_against(&[observed(&vm("web", 1), None, true)])
            .unwrap_err();
        assert!(matches!(err, crate::Error::NotOwned { .. }), "{err}");
    }

    #[test]
    fn scores_refuse_duplicate_names_and_macs() {
        assert!(matches!(
            VmScore::new("lab", [vm("a", 1), vm("a", 2)]),
            Err(SpecError::DuplicateName { .. })
        ));
        let mac: MacAddr = "52:54:00:00:00:07".parse().unwrap();
        let with_mac = |name: &str| {
            VmSpec::builder(name)
                .network(NetworkRef::named_with_mac("lab", mac))
                .build()
                .unwrap()
        };
        assert!(matches!(
            VmScore::new("lab", [with_mac("a"), with_mac("b")]),
            Err(SpecError::DuplicateMac { .. })
        ));
    }
}
