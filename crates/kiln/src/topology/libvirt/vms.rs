//! One VM at a time on a libvirt host: what `kiln up --connect URI`, `ls`, `start`, `stop`
//! and `rm` do there. Scores go through [`VmHost`]; these verbs use the same calls and tag
//! what they create as [`CLI_OWNER`]'s.

use std::time::Duration;

use log::warn;

use super::LibvirtHost;
use crate::libvirt::{DomainState, KilnTag};
use crate::progress::{self, Reporter, Stage};
use crate::score::{ResourceKind, VmHost};
use crate::vm::GRACEFUL_STOP;
use crate::{Accel, Error, Result, VmInfo, VmSpec, VmState};

/// The owner tag of VMs created one by one (`kiln up`), as opposed to by a score.
pub const CLI_OWNER: &str = "kiln-up";

impl LibvirtHost {
    /// Creates and boots one VM, refusing a name in use. A VM that fails to boot is removed
    /// again, so a retry starts clean.
    pub async fn up(&self, spec: &VmSpec, reporter: &dyn Reporter) -> Result<()> {
        if self.conn.domain(spec.name()).await?.is_some() {
            return Err(Error::VmAlreadyExists {
                name: spec.name().to_owned(),
            });
        }
        self.check_vms(&[spec]).await?;
        let created = self.create_vm(spec, CLI_OWNER, reporter).await;
        if created.is_err()
            && let Err(err) = self.delete_vm(spec.name(), reporter).await
        {
            warn!("{}: cleaning up after a failed up: {err}", spec.name());
        }
        created
    }

    /// The VMs kiln created on this host, sorted by name.
    pub async fn list(&self) -> Result<Vec<VmInfo>> {
        let mut vms: Vec<VmInfo> = self
            .conn
            .kiln_domains()
            .await?
            .into_iter()
            .map(|d| self.vm_info(d))
            .collect();
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vms)
    }

    /// One VM kiln created here; `None` when there is no domain of that name.
    pub async fn find(&self, name: &str) -> Result<Option<VmInfo>> {
        match self.conn.domain(name).await? {
            Some(d) if d.observed.tag.is_some() => Ok(Some(self.vm_info(d))),
            Some(_) => Err(foreign(name)),
            None => Ok(None),
        }
    }

    /// Boots a stopped VM and waits for its agent; a running one is left alone.
    pub async fn start(&self, name: &str, reporter: &dyn Reporter) -> Result<()> {
        let domain = self.kiln_domain(name).await?;
        if domain.active {
            return Ok(());
        }
        let spec: Option<crate::VmSpec> = KilnTag::decode(domain.observed.tag.as_ref()).1;
        // The drive is made anew, so metadata changed while it was stopped is what it sees.
        if let (Some(spec), Some(id)) = (&spec, &domain.observed.uuid) {
            self.upload_config(spec, id).await?;
        }
        self.conn.start_domain(name).await?;
        match spec {
            Some(spec) => self.wait_for_agent(&spec, reporter).await,
            None => Ok(()),
        }
    }

    /// Asks the guest to power off, and pulls the plug if it has not after a grace period.
    pub async fn stop(&self, name: &str, reporter: &dyn Reporter) -> Result<()> {
        self.stop_within(name, GRACEFUL_STOP, reporter).await
    }

    /// [`stop`](Self::stop) with a grace period of `grace`; zero pulls the plug at once.
    pub async fn stop_within(
        &self,
        name: &str,
        grace: Duration,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let domain = self.kiln_domain(name).await?;
        if !domain.active {
            return Ok(());
        }
        progress::stage(reporter, Stage::Stop, async {
            if grace.is_zero() {
                return Ok(self.conn.destroy_domain(name).await?);
            }
            crate::vm::ask_to_power_off(
                name,
                grace,
                Duration::from_millis(200),
                self.vm_agent(name, Duration::from_secs(5)),
                || async { Ok(self.kiln_domain(name).await?.active) },
            )
            .await?;
            Ok(self.conn.destroy_domain(name).await?)
        })
        .await
    }

    /// Suspends (or resumes) a running VM's vCPUs (libvirt's suspend/resume).
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<()> {
        let domain = self.kiln_domain(name).await?;
        if !crate::vm::pause_needed(name, state_of(&domain), paused)? {
            return Ok(());
        }
        Ok(self.conn.set_suspended(name, paused).await?)
    }

    /// Removes a VM, its disks and its log. A running VM needs `force`. With no domain of
    /// that name, what a killed `up` left of one (its volumes) is removed, and only a name
    /// with nothing at all is not found. (Not done before an `up`: a second `up` of the name
    /// racing the first must not take its volumes.)
    pub async fn remove(&self, name: &str, force: bool, reporter: &dyn Reporter) -> Result<()> {
        let domain = match self.kiln_domain(name).await {
            Err(Error::VmNotFound { .. }) if self.remove_leftovers(name).await? > 0 => {
                return self.collect_garbage().await;
            }
            other => other?,
        };
        if domain.active && !force {
            return Err(Error::WrongState {
                name: name.to_owned(),
                state: VmState::Running,
                action: "rm",
                needed: VmState::Stopped,
            });
        }
        self.delete_vm(name, reporter).await
    }

    /// A domain kiln created; any other is not kiln's to change.
    pub(super) async fn kiln_domain(&self, name: &str) -> Result<DomainState> {
        match self.conn.domain(name).await? {
            Some(d) if d.observed.tag.is_some() => Ok(d),
            Some(_) => Err(foreign(name)),
            None => Err(Error::VmNotFound {
                name: name.to_owned(),
            }),
        }
    }

    /// Changes the VM's metadata key/values; the guest sees them from its next start.
    /// libvirt has no lock a client can hold: two clients changing one VM's metadata at the
    /// same moment can lose one change.
    pub async fn set_metadata(
        &self,
        name: &str,
        change: &crate::spec::MetadataChange,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let domain = self.kiln_domain(name).await?;
        let (owner, spec) = KilnTag::decode::<VmSpec>(domain.observed.tag.as_ref());
        let (Some(owner), Some(spec)) = (owner, spec) else {
            return Err(foreign(name));
        };
        let spec = spec.with_metadata_values(change.apply(spec.metadata().values()))?;
        self.conn
            .set_domain_tag(name, &KilnTag::new(&owner, &spec)?)
            .await?;
        Ok(spec.metadata().values().clone())
    }

    fn vm_info(&self, domain: DomainState) -> VmInfo {
        let (owner, spec) = KilnTag::decode(domain.observed.tag.as_ref());
        let state = state_of(&domain);
        let accel = match domain.observed.kind.as_deref() {
            Some("kvm") => Accel::Kvm,
            _ => Accel::Tcg,
        };
        let accel = domain.active.then_some(accel);
        VmInfo {
            id: domain.observed.uuid.clone(),
            metadata: spec
                .as_ref()
                .map(|s: &VmSpec| s.metadata().values().clone())
                .unwrap_or_default(),
            name: domain.name,
            host: Some(self.uri().to_owned()),
            state,
            detail: owner
                .filter(|o| o != CLI_OWNER)
                .map(|o| format!("managed by score {o}")),
            cpus: spec.as_ref().map_or(0, VmSpec::cpus),
            memory_mib: spec.as_ref().map_or(0, VmSpec::memory_mib),
            image: spec
                .as_ref()
                .map(|s| s.image().to_owned())
                .unwrap_or_default(),
            accel,
            pid: None,
            created_at: 0,
            spec,
        }
    }
}

pub(super) fn state_of(domain: &DomainState) -> VmState {
    match (domain.active, domain.paused) {
        (true, true) => VmState::Paused,
        (true, false) => VmState::Running,
        (false, _) => VmState::Stopped,
    }
}

fn foreign(name: &str) -> Error {
    Error::NotOwned {
        kind: ResourceKind::Vm,
        name: name.to_owned(),
        owner: None,
    }
}
