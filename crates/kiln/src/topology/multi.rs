use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use super::LibvirtHost;
use crate::progress::Reporter;
use crate::score::{NetworkHost, ObservedNetwork, ObservedVm, ResourceKind, Topology, VmHost};
use crate::spec::NetworkSpec;
use crate::{AgentClient, Error, Result, VmSpec};

/// Where a VM goes on a [`MultiHost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// On this host.
    Host(String),
    /// On the host with the fewest kiln VMs (the first such host on a tie).
    Spread,
}

/// Several hosts under one topology. Networks are made on every host (a VM's network must
/// exist where it runs); each VM goes where its [`Placement`] says.
#[derive(Debug, Clone)]
pub struct MultiHost<H = LibvirtHost> {
    hosts: Vec<(String, H)>,
    placements: BTreeMap<String, String>,
    /// The hosts the last observation left out, with why ([`VmHost::unreachable_hosts`]):
    /// kept, so reporting them costs no second round of listings.
    lost: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl<H> Default for MultiHost<H> {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            placements: BTreeMap::new(),
            lost: std::sync::Arc::default(),
        }
    }
}

impl<H: VmHost> MultiHost<H> {
    /// A topology with no hosts yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a host under a name (the name placements use).
    #[must_use]
    pub fn with_host(mut self, name: impl Into<String>, host: H) -> Self {
        self.hosts.push((name.into(), host));
        self
    }

    /// Puts VM `vm` on host `host`; unplaced VMs are spread.
    #[must_use]
    pub fn place(mut self, vm: impl Into<String>, host: impl Into<String>) -> Self {
        self.placements.insert(vm.into(), host.into());
        self
    }

    /// Where VM `vm` goes: the host it was placed on, else spread.
    pub fn placement(&self, vm: &str) -> Placement {
        self.placements
            .get(vm)
            .map_or(Placement::Spread, |h| Placement::Host(h.clone()))
    }

    /// The hosts and their names, in the order they were added.
    pub fn hosts(&self) -> impl Iterator<Item = (&str, &H)> {
        self.hosts.iter().map(|(name, host)| (name.as_str(), host))
    }

    pub(super) fn host(&self, name: &str, vm: &str) -> Result<&H> {
        self.hosts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, h)| h)
            .ok_or_else(|| Error::UnknownHost {
                host: name.to_owned(),
                vm: vm.to_owned(),
            })
    }

    /// Each host's VMs, and the hosts that did not answer (with why).
    async fn observe_each(&self) -> (Vec<(&str, Vec<ObservedVm>)>, Vec<(String, String)>) {
        let mut seen = Vec::new();
        let mut lost = Vec::new();
        for (name, host) in &self.hosts {
            match host.observe_vms().await {
                Ok(vms) => seen.push((name.as_str(), vms)),
                Err(err) => {
                    log::warn!("host {name} does not answer: {err}");
                    lost.push((name.clone(), err.to_string()));
                }
            }
        }
        if let Ok(mut last) = self.lost.lock() {
            last.clone_from(&lost);
        }
        (seen, lost)
    }

    /// The host each new VM goes to, given the kiln VMs each host already has. A VM pinned
    /// to a host that does not answer has none; nor has a spread one while any host does
    /// not answer: it may be there already, and a second would be made.
    pub(super) async fn assign<'a>(
        &self,
        specs: &[&'a VmSpec],
    ) -> Result<Vec<(&'a VmSpec, Result<String>)>> {
        let (seen, lost) = self.observe_each().await;
        let exists = |vm: &str| seen.iter().any(|(_, vms)| vms.iter().any(|o| o.name == vm));
        let mut load: Vec<(String, usize)> = seen
            .iter()
            .map(|(name, vms)| {
                let count = vms.iter().filter(|vm| vm.owner.is_some()).count();
                ((*name).to_owned(), count)
            })
            .collect();
        let unreachable = |host: &str, vm: &str, reason: String| Error::HostUnreachable {
            host: host.to_owned(),
            vm: vm.to_owned(),
            reason,
        };
        let mut out = Vec::new();
        for spec in specs {
            // A host that was lost while the plan was made may be back: never a second one.
            if exists(spec.name()) {
                out.push((
                    *spec,
                    Err(Error::VmAlreadyExists {
                        name: spec.name().to_owned(),
                    }),
                ));
                continue;
            }
            let target = match self.placement(spec.name()) {
                Placement::Host(host) => match lost.iter().find(|(h, _)| *h == host) {
                    Some((_, why)) => Err(unreachable(&host, spec.name(), why.clone())),
                    None => self.host(&host, spec.name()).map(|_| host),
                },
                Placement::Spread => match lost.first() {
                    Some((host, why)) => Err(unreachable(
                        host,
                        spec.name(),
                        format!("{why}; the VM may be there already, so it is not made elsewhere"),
                    )),
                    None => load
                        .iter()
                        .min_by_key(|(_, count)| *count)
                        .map(|(name, _)| name.clone())
                        .ok_or_else(|| Error::UnknownHost {
                            host: "(none: the topology has no hosts)".to_owned(),
                            vm: spec.name().to_owned(),
                        }),
                },
            };
            if let Ok(target) = &target
                && let Some(entry) = load.iter_mut().find(|(name, _)| name == target)
            {
                entry.1 += 1;
            }
            out.push((*spec, target));
        }
        Ok(out)
    }

    /// The host a VM is on. While a host does not answer, a VM found on none of the others
    /// may be on it: that is [`Error::HostUnreachable`], not "not found".
    pub(super) async fn find(&self, vm: &str) -> Result<&H> {
        let mut lost = None;
        for (name, host) in &self.hosts {
            match host.observe_vms().await {
                Ok(vms) if vms.iter().any(|o| o.name == vm) => return Ok(host),
                Ok(_) => {}
                Err(err) => lost = lost.or(Some((name.clone(), err.to_string()))),
            }
        }
        Err(match lost {
            Some((host, reason)) => Error::HostUnreachable {
                host,
                vm: vm.to_owned(),
                reason,
            },
            None => Error::VmNotFound {
                name: vm.to_owned(),
            },
        })
    }
}

#[async_trait]
impl<H: VmHost> Topology for MultiHost<H> {
    fn describe(&self) -> String {
        let names: Vec<&str> = self.hosts.iter().map(|(n, _)| n.as_str()).collect();
        format!("{} hosts ({})", names.len(), names.join(", "))
    }

    async fn ensure_ready(&self, reporter: &dyn Reporter) -> Result<()> {
        for (_, host) in &self.hosts {
            host.ensure_ready(reporter).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<H: VmHost> VmHost for MultiHost<H> {
    /// The VMs of the hosts that answer; a host that does not is left out (and logged), so
    /// the others' VMs still converge: its VMs are then refused by `create_vm` rather than
    /// made twice. When no host answers, that is the error.
    async fn observe_vms(&self) -> Result<Vec<ObservedVm>> {
        let (seen, lost) = self.observe_each().await;
        if seen.is_empty()
            && let Some((host, reason)) = lost.into_iter().next()
        {
            return Err(Error::HostUnreachable {
                host,
                vm: "(every VM)".to_owned(),
                reason,
            });
        }
        let mut all = Vec::new();
        for (name, vms) in seen {
            for mut vm in vms {
                vm.host = Some(name.to_owned());
                all.push(vm);
            }
        }
        Ok(all)
    }

    /// Checks each answering host for the VMs it would get; VMs with no host now are left
    /// for `create_vm` to refuse one by one.
    async fn check_vms(&self, creating: &[&VmSpec]) -> Result<()> {
        let mut placed = Vec::new();
        for (spec, target) in self.assign(creating).await? {
            match target {
                Ok(host) => placed.push((spec, host)),
                Err(Error::HostUnreachable { .. }) => {}
                Err(err) => return Err(err),
            }
        }
        for (name, host) in &self.hosts {
            let mine: Vec<&VmSpec> = placed
                .iter()
                .filter(|(_, h)| h == name)
                .map(|(spec, _)| *spec)
                .collect();
            if !mine.is_empty() {
                host.check_vms(&mine).await?;
            }
        }
        Ok(())
    }

    async fn create_vm(&self, spec: &VmSpec, owner: &str, reporter: &dyn Reporter) -> Result<()> {
        let mut assigned = self.assign(&[spec]).await?;
        let target = match assigned.pop() {
            Some((_, target)) => target?,
            None => String::new(),
        };
        self.host(&target, spec.name())?
            .create_vm(spec, owner, reporter)
            .await
    }

    async fn update_vm(&self, spec: &VmSpec, owner: &str, reporter: &dyn Reporter) -> Result<()> {
        self.find(spec.name())
            .await?
            .update_vm(spec, owner, reporter)
            .await
    }

    async fn delete_vm(&self, name: &str, reporter: &dyn Reporter) -> Result<()> {
        self.find(name).await?.delete_vm(name, reporter).await
    }

    async fn vm_agent(&self, name: &str, timeout: Duration) -> Result<AgentClient> {
        self.find(name).await?.vm_agent(name, timeout).await
    }

    /// The hosts the last observation (the plan's, or a later placement's) left out.
    async fn unreachable_hosts(&self) -> Vec<(String, String)> {
        self.lost
            .lock()
            .map(|lost| lost.clone())
            .unwrap_or_default()
    }
}

#[async_trait]
impl<H: VmHost + NetworkHost> NetworkHost for MultiHost<H> {
    /// Networks of every host, merged by name. One that some host lacks is reported without a
    /// spec, so a plan replaces it everywhere; the subnets of all networks on every host are
    /// reported, so a new subnet is checked against each host.
    async fn observe_networks(&self) -> Result<Vec<ObservedNetwork>> {
        let mut per_host = Vec::new();
        for (_, host) in &self.hosts {
            per_host.push(host.observe_networks().await?);
        }
        let mut merged: BTreeMap<String, ObservedNetwork> = BTreeMap::new();
        let mut seen_on: BTreeMap<String, usize> = BTreeMap::new();
        for nets in &per_host {
            for net in nets {
                *seen_on.entry(net.name.clone()).or_default() += 1;
                merged
                    .entry(net.name.clone())
                    .and_modify(|m| {
                        m.active &= net.active;
                        m.subnets.extend(net.subnets.iter().copied());
                        if m.owner != net.owner {
                            m.owner = None;
                        }
                    })
                    .or_insert_with(|| net.clone());
            }
        }
        Ok(merged
            .into_values()
            .map(|mut net| {
                if seen_on.get(&net.name) != Some(&self.hosts.len()) {
                    net.spec = None;
                }
                net
            })
            .collect())
    }

    async fn create_network(&self, spec: &NetworkSpec, owner: &str) -> Result<()> {
        for (_, host) in &self.hosts {
            let existing = host
                .observe_networks()
                .await?
                .into_iter()
                .find(|n| n.name == spec.name());
            match existing {
                None => host.create_network(spec, owner).await?,
                Some(net) if net.owner.as_deref() == Some(owner) => {
                    host.start_network(spec.name()).await?;
                }
                Some(net) => {
                    return Err(Error::NotOwned {
                        kind: ResourceKind::Network,
                        name: net.name,
                        owner: net.owner,
                    });
                }
            }
        }
        Ok(())
    }

    async fn start_network(&self, name: &str) -> Result<()> {
        for (_, host) in &self.hosts {
            host.start_network(name).await?;
        }
        Ok(())
    }

    async fn delete_network(&self, name: &str) -> Result<()> {
        for (_, host) in &self.hosts {
            host.delete_network(name).await?;
        }
        Ok(())
    }
}
