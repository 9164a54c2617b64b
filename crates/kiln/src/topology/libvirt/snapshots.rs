//! Snapshots of VMs on a libvirt host: `kiln snapshot save/ls/restore/rm` there.
//!
//! They are libvirt's internal snapshots (see [`crate::libvirt::LibvirtConn::create_snapshot`]):
//! libvirt keeps the domain definition with each one and the disks keep the state, so a
//! snapshot goes with its VM and a restore is one revert. kiln adds the versions it was taken
//! with, and refuses a restore on another QEMU before anything changes.

use std::time::Duration;

use log::debug;
use serde::{Deserialize, Serialize};

use super::LibvirtHost;
use crate::libvirt::{KilnTag, LibvirtError, SnapshotObserved};
use crate::progress::{self, Reporter, Stage};
use crate::score::VmHost;
use crate::{Error, Result, SnapshotInfo, VmSpec, VmState};

const SNAPSHOT_FORMAT: u32 = 1;

/// What kiln writes in a snapshot's description.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotNote {
    format: u32,
    kiln_version: String,
    qemu_version: String,
    disk_only: bool,
}

impl LibvirtHost {
    /// Saves a running (or paused) VM's memory and disks, or with `disk_only` a stopped
    /// VM's disks, as `snapshot`. The VM is paused while its state is written.
    pub async fn snapshot(
        &self,
        name: &str,
        snapshot: &str,
        disk_only: bool,
        reporter: &dyn Reporter,
    ) -> Result<SnapshotInfo> {
        crate::spec::validate_name(snapshot)?;
        let domain = self.kiln_domain(name).await?;
        let state = super::vms::state_of(&domain);
        let spec = spec_of(name, domain.observed.tag.as_ref())?;
        crate::vm::check_snapshot_state(name, state, disk_only)?;
        self.check_snapshottable(&spec, disk_only)?;
        if self.find_snapshot(name, snapshot).await?.is_some() {
            return Err(Error::SnapshotExists {
                vm: name.to_owned(),
                snapshot: snapshot.to_owned(),
            });
        }
        let note = SnapshotNote {
            format: SNAPSHOT_FORMAT,
            kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
            qemu_version: self.conn.hypervisor_version().await?,
            disk_only,
        };
        let description = serde_json::to_string(&note)
            .map_err(|e| LibvirtError::Xml(format!("snapshot note: {e}")))?;
        // A guest saved while a host session is open answers at once after a restore (one
        // saved idle may take seconds): hold one open while saving, as the daemonless
        // backend does. A VM whose agent does not answer is saved all the same.
        let session = if state == VmState::Running {
            self.vm_agent(name, Duration::from_secs(5)).await.ok()
        } else {
            None
        };
        progress::stage(
            reporter,
            Stage::SaveSnapshot,
            self.conn.create_snapshot(name, snapshot, &description),
        )
        .await?;
        drop(session);
        let saved = self.require_snapshot(name, snapshot).await?;
        Ok(info_of(&spec, &saved))
    }

    /// A VM's snapshots, oldest first.
    pub async fn snapshots(&self, name: &str) -> Result<Vec<SnapshotInfo>> {
        let domain = self.kiln_domain(name).await?;
        let spec = spec_of(name, domain.observed.tag.as_ref())?;
        Ok(self
            .conn
            .snapshots(name)
            .await?
            .iter()
            .map(|s| info_of(&spec, s))
            .collect())
    }

    /// Brings a VM back to a snapshot, running, and waits for its agent. A snapshot taken
    /// under another QEMU is refused before anything changes.
    pub async fn restore(&self, name: &str, snapshot: &str, reporter: &dyn Reporter) -> Result<()> {
        crate::spec::validate_name(snapshot)?;
        let domain = self.kiln_domain(name).await?;
        let saved = self.require_snapshot(name, snapshot).await?;
        let incompatible = |reason: String| Error::IncompatibleSnapshot {
            vm: name.to_owned(),
            snapshot: snapshot.to_owned(),
            reason,
        };
        let note = note_of(&saved)
            .ok_or_else(|| incompatible("kiln did not take it (no kiln note)".to_owned()))?;
        if note.format > SNAPSHOT_FORMAT {
            return Err(incompatible(format!(
                "it was taken by a newer kiln ({})",
                note.kiln_version
            )));
        }
        let qemu = self.conn.hypervisor_version().await?;
        if !note.disk_only && note.qemu_version != qemu {
            return Err(incompatible(format!(
                "it holds QEMU {} machine state and the host runs QEMU {qemu}",
                note.qemu_version
            )));
        }
        progress::stage(
            reporter,
            Stage::RestoreSnapshot,
            self.conn.revert_snapshot(name, snapshot),
        )
        .await?;
        let spec: Option<VmSpec> = KilnTag::decode(domain.observed.tag.as_ref()).1;
        if !self.runs_guests() || spec.is_some_and(|s| !s.boot_order().is_empty()) {
            return Ok(());
        }
        // A restored agent answers in milliseconds, but the first handshake after a revert
        // can go unanswered: try often, each try short. A disk-only one boots.
        let attempt = if note.disk_only {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(300)
        };
        self.agent_ready(name, attempt, reporter).await?;
        if note.disk_only {
            // It booted: nothing restored to re-key.
            return Ok(());
        }
        self.rekey_restored(name).await
    }

    /// Removes a snapshot; the VM goes on as it is.
    pub async fn remove_snapshot(&self, name: &str, snapshot: &str) -> Result<()> {
        crate::spec::validate_name(snapshot)?;
        self.kiln_domain(name).await?;
        self.require_snapshot(name, snapshot).await?;
        Ok(self.conn.delete_snapshot(name, snapshot).await?)
    }

    async fn find_snapshot(&self, name: &str, snapshot: &str) -> Result<Option<SnapshotObserved>> {
        Ok(self
            .conn
            .snapshots(name)
            .await?
            .into_iter()
            .find(|s| s.name == snapshot))
    }

    async fn require_snapshot(&self, name: &str, snapshot: &str) -> Result<SnapshotObserved> {
        self.find_snapshot(name, snapshot)
            .await?
            .ok_or_else(|| Error::SnapshotNotFound {
                vm: name.to_owned(),
                snapshot: snapshot.to_owned(),
            })
    }

    /// What libvirt's internal snapshots cannot hold, refused before anything is written.
    fn check_snapshottable(&self, spec: &VmSpec, disk_only: bool) -> Result<()> {
        let unsupported = |reason, hint| LibvirtError::Unsupported {
            uri: self.uri().to_owned(),
            name: spec.name().to_owned(),
            what: "a snapshot",
            reason,
            hint,
        };
        if spec.machine_disk_count() == 0 {
            return Err(unsupported(
                "libvirt keeps a snapshot inside the VM's qcow2 disks, and it has none",
                "create the VM with a disk (`--disk 1G`), or use the daemonless backend",
            )
            .into());
        }
        if !disk_only && !spec.shares().is_empty() {
            return Err(unsupported(
                "QEMU cannot save the state of shared directories (virtio-9p)",
                "stop the VM and take a `--disk-only` snapshot, or use a VM without shares",
            )
            .into());
        }
        Ok(())
    }
}

fn spec_of(name: &str, tag: Option<&KilnTag>) -> Result<VmSpec> {
    KilnTag::decode(tag).1.ok_or_else(|| {
        Error::from(LibvirtError::Xml(format!(
            "domain {name}: kiln's metadata has no readable spec"
        )))
    })
}

fn note_of(snapshot: &SnapshotObserved) -> Option<SnapshotNote> {
    let note = serde_json::from_str(snapshot.description.as_deref()?);
    if let Err(err) = &note {
        debug!("snapshot {}: not kiln's note: {err}", snapshot.name);
    }
    note.ok()
}

fn info_of(spec: &VmSpec, snapshot: &SnapshotObserved) -> SnapshotInfo {
    let note = note_of(snapshot);
    let disk_only = note
        .as_ref()
        .map_or(snapshot.state == "shutoff", |n| n.disk_only);
    SnapshotInfo {
        name: snapshot.name.clone(),
        created_at: snapshot.created_at,
        // Held inside the disks: what was saved is the guest's memory.
        memory_bytes: if disk_only {
            0
        } else {
            spec.memory_mib() << 20
        },
        disks: spec.machine_disk_count(),
        qemu_version: note.map(|n| n.qemu_version).unwrap_or_default(),
        disk_only,
    }
}
