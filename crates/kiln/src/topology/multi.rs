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
    /// The hosts the last observation left out, with why ([`Topology::unreachable_hosts`]):
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
        self.observe_each_with(|host| host.observe_vms()).await
    }

    /// What `observe` sees on each host, and the hosts that did not answer (with why, kept
    /// for [`Topology::unreachable_hosts`]).
    async fn observe_each_with<'a, T, F, Fut>(
        &'a self,
        observe: F,
    ) -> (Vec<(&'a str, T)>, Vec<(String, String)>)
    where
        F: Fn(&'a H) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut seen = Vec::new();
        let mut lost = Vec::new();
        for (name, host) in &self.hosts {
            match observe(host).await {
                Ok(found) => seen.push((name.as_str(), found)),
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
            resource: format!("VM {vm}"),
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
                resource: format!("VM {vm}"),
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

    /// The hosts the last observation (the plan's, or a later placement's) left out.
    async fn unreachable_hosts(&self) -> Vec<(String, String)> {
        self.lost
            .lock()
            .map(|lost| lost.clone())
            .unwrap_or_default()
    }
}

#[async_trait]
impl<H: VmHost> VmHost for MultiHost<H> {
    /// The VMs of the hosts that answer; a host that does not is left out (and logged), so
    /// the others' VMs still converge: its VMs are then refused by `create_vm` rather than
    /// made twice. When no host answers, that is the error.
    async fn observe_vms(&self) -> Result<Vec<ObservedVm>> {
        let (seen, lost) = self.observe_each().await;
        none_answered(&seen, lost, "any VM")?;
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
}

#[async_trait]
impl<H: VmHost + NetworkHost> NetworkHost for MultiHost<H> {
    /// Networks of the hosts that answer, merged by name (a host that does not is left out,
    /// and is an unreachable host). One that some answering host lacks is `partial`, so a plan
    /// creates it, which makes it where it is missing and leaves it where it is (never a
    /// replace, which would take it from the VMs that use it). One whose owner or spec
    /// differs between hosts has none. The subnets of every network on every host are
    /// reported, so a new subnet is checked against each host.
    async fn observe_networks(&self) -> Result<Vec<ObservedNetwork>> {
        let (per_host, lost) = self.observe_each_with(|host| host.observe_networks()).await;
        none_answered(&per_host, lost, "any network")?;
        let answered = per_host.len();
        let mut merged: BTreeMap<String, ObservedNetwork> = BTreeMap::new();
        let mut seen_on: BTreeMap<String, usize> = BTreeMap::new();
        for (_, nets) in &per_host {
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
                        if m.spec != net.spec {
                            m.spec = None;
                        }
                    })
                    .or_insert_with(|| net.clone());
            }
        }
        Ok(merged
            .into_values()
            .map(|mut net| {
                net.partial = seen_on.get(&net.name) != Some(&answered);
                net
            })
            .collect())
    }

    /// Makes the network on each answering host that lacks it and starts it where it is.
    /// One held by another owner on any host is refused before anything changes; a host that
    /// fails holds up none of the others, and its error is returned once they have it.
    async fn create_network(&self, spec: &NetworkSpec, owner: &str) -> Result<()> {
        let (mut failure, mut left_out) = (None, None);
        let mut seen = Vec::new();
        let lost = self.unreachable_hosts().await;
        for (name, host) in &self.hosts {
            // Left out of the plan: its subnets were never checked. Reported once all others
            // have it.
            if let Some(skipped) = skipped(&lost, name, spec.name()) {
                left_out.get_or_insert(skipped);
                continue;
            }
            match host.observe_networks().await {
                Ok(nets) => seen.push((host, nets.into_iter().find(|n| n.name == spec.name()))),
                Err(err) => {
                    failure.get_or_insert(err);
                }
            }
        }
        if let Some(net) = seen
            .iter()
            .filter_map(|(_, net)| net.as_ref())
            .find(|net| net.owner.as_deref() != Some(owner))
        {
            return Err(Error::NotOwned {
                kind: ResourceKind::Network,
                name: net.name.clone(),
                owner: net.owner.clone(),
            });
        }
        for (host, existing) in seen {
            let done = match existing {
                None => host.create_network(spec, owner).await,
                Some(_) => host.start_network(spec.name()).await,
            };
            if let Err(err) = done {
                failure.get_or_insert(err);
            }
        }
        failure.or(left_out).map_or(Ok(()), Err)
    }

    async fn start_network(&self, name: &str) -> Result<()> {
        self.on_every_host(name, |host| host.start_network(name))
            .await
    }

    async fn delete_network(&self, name: &str) -> Result<()> {
        self.on_every_host(name, |host| host.delete_network(name))
            .await
    }
}

impl<H: VmHost> MultiHost<H> {
    /// Runs `change` on network `network` of every host the last observation saw answer (one
    /// it left out is not touched: what it holds was never checked): one that fails holds up
    /// none of the others, and the first failure (or host left out) is returned once all
    /// were tried.
    async fn on_every_host<'a, F, Fut>(&'a self, network: &str, change: F) -> Result<()>
    where
        F: Fn(&'a H) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let lost = self.unreachable_hosts().await;
        let (mut failure, mut left_out) = (None, None);
        for (name, host) in &self.hosts {
            if let Some(skipped) = skipped(&lost, name, network) {
                left_out.get_or_insert(skipped);
                continue;
            }
            if let Err(err) = change(host).await {
                failure.get_or_insert(err);
            }
        }
        failure.or(left_out).map_or(Ok(()), Err)
    }
}

/// An observation that no host answered is the first lost host's error (`resource`: what
/// could not be seen); one host answering is enough.
fn none_answered<T>(seen: &[T], lost: Vec<(String, String)>, resource: &str) -> Result<()> {
    match lost.into_iter().next() {
        Some((host, reason)) if seen.is_empty() => Err(Error::HostUnreachable {
            host,
            resource: resource.to_owned(),
            reason,
        }),
        _ => Ok(()),
    }
}

/// The error for host `name` when the last observation left it out (`lost`), for network
/// `network`.
fn skipped(lost: &[(String, String)], name: &str, network: &str) -> Option<Error> {
    let (host, reason) = lost.iter().find(|(gone, _)| gone == name)?;
    Some(Error::HostUnreachable {
        host: host.clone(),
        resource: format!("network {network}"),
        reason: reason.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::progress::NoProgress;
    use crate::score::{Change, NetworkScore, Score};

    /// A host with networks only, which can be lost (every call then fails).
    #[derive(Debug, Default)]
    struct Fake {
        networks: Mutex<Vec<ObservedNetwork>>,
        lost: AtomicBool,
        /// Every change made, in order: `create lab`, `start lab`, `delete lab`.
        changes: Mutex<Vec<String>>,
    }

    impl Fake {
        fn answer(&self) -> Result<()> {
            if self.lost.load(Ordering::SeqCst) {
                return Err(Error::HostUnreachable {
                    host: "fake".to_owned(),
                    resource: "anything".to_owned(),
                    reason: "lost".to_owned(),
                });
            }
            Ok(())
        }

        fn with(network: &NetworkSpec, owner: &str) -> Self {
            let fake = Self::default();
            fake.networks.lock().unwrap().push(observed(network, owner));
            fake
        }

        fn changes(&self) -> Vec<String> {
            self.changes.lock().unwrap().clone()
        }
    }

    fn observed(spec: &NetworkSpec, owner: &str) -> ObservedNetwork {
        ObservedNetwork {
            name: spec.name().to_owned(),
            owner: Some(owner.to_owned()),
            spec: Some(spec.clone()),
            subnets: vec![spec.subnet()],
            active: true,
            partial: false,
        }
    }

    #[async_trait]
    impl Topology for Fake {
        fn describe(&self) -> String {
            "fake".to_owned()
        }

        async fn ensure_ready(&self, _: &dyn Reporter) -> Result<()> {
            self.answer()
        }
    }

    #[async_trait]
    impl VmHost for Fake {
        async fn observe_vms(&self) -> Result<Vec<ObservedVm>> {
            self.answer().map(|()| Vec::new())
        }

        async fn check_vms(&self, _: &[&VmSpec]) -> Result<()> {
            unimplemented!("networks only")
        }

        async fn create_vm(&self, _: &VmSpec, _: &str, _: &dyn Reporter) -> Result<()> {
            unimplemented!("networks only")
        }

        async fn update_vm(&self, _: &VmSpec, _: &str, _: &dyn Reporter) -> Result<()> {
            unimplemented!("networks only")
        }

        async fn delete_vm(&self, _: &str, _: &dyn Reporter) -> Result<()> {
            unimplemented!("networks only")
        }

        async fn vm_agent(&self, _: &str, _: Duration) -> Result<AgentClient> {
            unimplemented!("networks only")
        }
    }

    #[async_trait]
    impl NetworkHost for Fake {
        async fn observe_networks(&self) -> Result<Vec<ObservedNetwork>> {
            self.answer()?;
            Ok(self.networks.lock().unwrap().clone())
        }

        async fn create_network(&self, spec: &NetworkSpec, owner: &str) -> Result<()> {
            self.answer()?;
            self.changes
                .lock()
                .unwrap()
                .push(format!("create {}", spec.name()));
            self.networks.lock().unwrap().push(observed(spec, owner));
            Ok(())
        }

        async fn start_network(&self, name: &str) -> Result<()> {
            self.answer()?;
            self.changes.lock().unwrap().push(format!("start {name}"));
            Ok(())
        }

        async fn delete_network(&self, name: &str) -> Result<()> {
            self.answer()?;
            self.changes.lock().unwrap().push(format!("delete {name}"));
            self.networks.lock().unwrap().retain(|n| n.name != name);
            Ok(())
        }
    }

    fn lab() -> NetworkSpec {
        NetworkSpec::nat("lab", "10.20.0.0/24").build().unwrap()
    }

    type Topo = MultiHost<Fake>;

    fn host<'a>(topology: &'a Topo, name: &str) -> &'a Fake {
        topology.hosts().find(|(n, _)| *n == name).unwrap().1
    }

    async fn apply(topology: &Topo, score: &NetworkScore) -> Result<Vec<Change>> {
        let interpret = Score::<Topo>::create_interpret(score);
        let plan = interpret.plan(topology).await?;
        interpret.execute(topology, &NoProgress).await?;
        Ok(plan.resources.iter().map(|r| r.change).collect())
    }

    #[tokio::test]
    async fn a_network_one_host_lacks_is_made_there_and_left_alone_where_it_is() {
        let topology = MultiHost::new()
            .with_host("a", Fake::with(&lab(), "net"))
            .with_host("b", Fake::default());
        let (a, b) = (host(&topology, "a"), host(&topology, "b"));
        let score = NetworkScore::new("net", [lab()]).unwrap();
        assert_eq!(apply(&topology, &score).await.unwrap(), [Change::Create]);
        // Never replaced: host a's VMs keep the network they use.
        assert_eq!(a.changes(), ["start lab"]);
        assert_eq!(b.changes(), ["create lab"]);
        assert_eq!(apply(&topology, &score).await.unwrap(), [Change::Unchanged]);
    }

    #[tokio::test]
    async fn a_lost_host_leaves_the_others_converged_and_the_apply_incomplete() {
        let topology = MultiHost::new()
            .with_host("a", Fake::default())
            .with_host("b", Fake::default())
            .with_host("c", Fake::default());
        let (a, b, c) = (
            host(&topology, "a"),
            host(&topology, "b"),
            host(&topology, "c"),
        );
        c.lost.store(true, Ordering::SeqCst);
        let score = NetworkScore::new("net", [lab()]).unwrap();
        match apply(&topology, &score).await {
            Err(Error::ApplyIncomplete { failures, .. }) => {
                assert!(
                    failures.iter().any(|f| f.contains("host c")),
                    "{failures:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            (a.changes(), b.changes()),
            (vec!["create lab".to_owned()], vec!["create lab".to_owned()])
        );
        // Back again: made there, and nothing else changes.
        c.lost.store(false, Ordering::SeqCst);
        assert_eq!(apply(&topology, &score).await.unwrap(), [Change::Create]);
        assert_eq!(c.changes(), ["create lab"]);
        assert_eq!(a.changes().len(), 2, "{:?}", a.changes()); // started again, not made
        assert_eq!(apply(&topology, &score).await.unwrap(), [Change::Unchanged]);
        // A destroy with a host lost removes what it can and says what it could not.
        b.lost.store(true, Ordering::SeqCst);
        let interpret = Score::<Topo>::create_interpret(&score);
        let err = interpret.destroy(&topology, &NoProgress).await.unwrap_err();
        assert!(err.to_string().contains("host b does not answer"), "{err}");
        assert!(a.networks.lock().unwrap().is_empty() && c.networks.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_network_another_owner_holds_on_one_host_is_refused_before_any_change() {
        let topology = MultiHost::new()
            .with_host("a", Fake::default())
            .with_host("b", Fake::with(&lab(), "someone-else"));
        let (a, b) = (host(&topology, "a"), host(&topology, "b"));
        let score = NetworkScore::new("net", [lab()]).unwrap();
        let interpret = Score::<Topo>::create_interpret(&score);
        let err = interpret.execute(&topology, &NoProgress).await.unwrap_err();
        assert!(matches!(err, Error::NotOwned { .. }), "{err}");
        assert!(a.changes().is_empty() && b.changes().is_empty());
    }

    #[tokio::test]
    async fn a_destroy_after_an_apply_that_lost_a_host_removes_the_network_where_it_is() {
        let topology = MultiHost::new()
            .with_host("a", Fake::default())
            .with_host("b", Fake::default());
        let (a, b) = (host(&topology, "a"), host(&topology, "b"));
        b.lost.store(true, Ordering::SeqCst);
        let score = NetworkScore::new("net", [lab()]).unwrap();
        assert!(apply(&topology, &score).await.is_err());
        b.lost.store(false, Ordering::SeqCst);
        // On a only: a destroy still finds it, and a score without it deletes it.
        let interpret = Score::<Topo>::create_interpret(&score);
        let outcome = interpret.destroy(&topology, &NoProgress).await.unwrap();
        assert_eq!(outcome.resources.len(), 1, "{outcome:?}");
        assert!(a.networks.lock().unwrap().is_empty());
        assert!(
            b.changes().iter().all(|c| c != "create lab"),
            "{:?}",
            b.changes()
        );
    }

    /// Host a holds an old copy of the score's network and host b starts as `b`: the network
    /// is replaced on both, once, and the next apply changes nothing.
    async fn an_old_copy_on_host_a_is_replaced_everywhere(b: Fake) {
        let old = NetworkSpec::nat("lab", "10.30.0.0/24").build().unwrap();
        let topology = MultiHost::new()
            .with_host("a", Fake::with(&old, "net"))
            .with_host("b", b);
        let (a, b) = (host(&topology, "a"), host(&topology, "b"));
        let score = NetworkScore::new("net", [lab()]).unwrap();
        assert_eq!(apply(&topology, &score).await.unwrap(), [Change::Replace]);
        assert_eq!(a.changes(), ["delete lab", "create lab"]);
        assert_eq!(b.changes(), ["delete lab", "create lab"]);
        assert_eq!(apply(&topology, &score).await.unwrap(), [Change::Unchanged]);
    }

    #[tokio::test]
    async fn a_network_one_host_lacks_and_another_holds_an_old_copy_of_is_replaced() {
        an_old_copy_on_host_a_is_replaced_everywhere(Fake::default()).await;
    }

    #[tokio::test]
    async fn hosts_that_disagree_on_a_network_get_it_replaced_once_all_answer() {
        an_old_copy_on_host_a_is_replaced_everywhere(Fake::with(&lab(), "net")).await;
    }
}
