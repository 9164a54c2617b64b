//! Pausing, resuming and snapshotting daemonless VMs.
//!
//! A snapshot is the machine's memory and device state (QEMU's migration stream, written to a
//! file while the vCPUs are stopped) plus the disks as they were: each disk's file is frozen
//! and the VM goes on writing to a new qcow2 overlay on top of it. Restoring starts QEMU from
//! the saved state with fresh overlays on the frozen files, so a snapshot can be restored any
//! number of times. A frozen file stays as long as a snapshot or a disk chain needs it.
//!
//! Each snapshot records the kiln and QEMU versions and the VM's spec; a restore on another
//! QEMU, or into a VM whose machine changed, is refused before anything is touched.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod recovery;

use super::lifecycle::lock;
use super::{Kiln, Vm, VmState, now_secs, read_record};
use crate::backend::{Launch, Memory};
use crate::progress::{self, Meter, NoProgress, Reporter, Stage};
use crate::state::{self, VmPaths};
use crate::{Error, IoError, Result, VmSpec};

/// 2: a VM has [`kiln_proto::AGENT_PORTS`] agent ports, and saved state holds them all.
/// 3: saved and loaded with `x-ignore-shared` (templates leave their RAM file out).
/// 4: RAM is the memory backend `ram` on every machine (its block's name in the state).
/// 5: every machine has a workspace drive.
pub(super) const SNAPSHOT_FORMAT: u32 = 5;
/// The oldest format whose disk-only snapshots this kiln restores: they hold no machine
/// state, only frozen disks in the same layout.
const DISK_ONLY_SINCE: u32 = 2;

/// What a snapshot's `meta.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SnapshotMeta {
    format: u32,
    name: String,
    created_at: u64,
    kiln_version: String,
    qemu_version: String,
    pub(super) spec: VmSpec,
    pub(super) image_digest: String,
    /// The frozen file of each disk.
    pub(super) disks: Vec<PathBuf>,
    /// Disks only (taken of a stopped VM): a restore boots from them.
    #[serde(default)]
    disk_only: bool,
    /// The RAM file the saved state leaves out (a warm-start template's): a machine loading
    /// it maps this file copy-on-write.
    #[serde(default)]
    pub(super) shared_memory: Option<PathBuf>,
    /// The guest CPU model the state was saved from, which a restore starts QEMU with. Not
    /// written by older kilns, whose machines had `max` under TCG and `host` under KVM.
    #[serde(default)]
    pub(super) cpu: Option<String>,
    /// The accelerator the state was saved on. Not written by older kilns: the VM's machine
    /// at restore time is asked instead.
    #[serde(default)]
    pub(super) accel: Option<crate::Accel>,
}

/// Why a machine loading saved state runs on the accelerator it does.
pub(super) const SAVED_ACCEL_REASON: &str = "as when the snapshot was taken";

impl SnapshotMeta {
    /// Where the RAM of a machine loading this state lives: a template's RAM file, mapped
    /// copy-on-write, or memory of its own that the state fills.
    pub(super) fn memory(&self) -> Memory<'_> {
        self.shared_memory
            .as_deref()
            .map_or(Memory::Private, Memory::CopyOf)
    }

    /// The accelerator to load this state on: the one it was saved on, else that of
    /// `machine` (the VM's), else TCG.
    pub(super) fn accel(&self, machine: Option<&state::MachineRecord>) -> crate::Accel {
        self.accel
            .or(machine.map(|m| m.accel))
            .unwrap_or(crate::Accel::Tcg)
    }

    /// The CPU model to load this snapshot's state into, for a machine on `accel`.
    pub(super) fn cpu_model(&self, accel: crate::Accel) -> String {
        crate::qemu::cpu_or_legacy(self.cpu.as_deref(), accel)
    }

    /// Whether `other` describes the same save (not a snapshot of the same name made since).
    pub(super) fn same_save(&self, other: &SnapshotMeta) -> bool {
        self.name == other.name
            && self.created_at == other.created_at
            && self.image_digest == other.image_digest
            && self.shared_memory == other.shared_memory
    }
}

/// A snapshot as `kiln snapshot ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    /// The snapshot's name.
    pub name: String,
    /// When it was taken, in seconds since the Unix epoch.
    pub created_at: u64,
    /// The saved memory and device state, in bytes (on libvirt, the guest's memory size); 0
    /// for a disk-only snapshot.
    pub memory_bytes: u64,
    /// How many disks it froze.
    pub disks: usize,
    /// The QEMU version that saved it (empty when unknown); a restore on another is refused.
    pub qemu_version: String,
    /// Whether it holds the disks only (taken of a stopped VM): a restore boots from them.
    pub disk_only: bool,
}

pub(super) fn snapshot_dir(paths: &VmPaths, snapshot: &str) -> PathBuf {
    paths.dir().join("snapshots").join(snapshot)
}

pub(super) fn read_meta(paths: &VmPaths, vm: &str, snapshot: &str) -> Result<SnapshotMeta> {
    crate::spec::validate_name(snapshot)?;
    state::read_json(&snapshot_dir(paths, snapshot).join("meta.json"))?.ok_or_else(|| {
        Error::SnapshotNotFound {
            vm: vm.to_owned(),
            snapshot: snapshot.to_owned(),
        }
    })
}

/// Whether a restore into a VM with `current` spec can use a snapshot taken with `saved`:
/// the machine (vCPUs, memory, devices) must be the same; port forwards may differ.
fn same_machine(saved: &VmSpec, current: &VmSpec) -> bool {
    saved.cpus() == current.cpus()
        && saved.memory_mib() == current.memory_mib()
        && saved.disks().len() == current.disks().len()
        && saved.networks() == current.networks()
        && saved.shares() == current.shares()
        && saved.image() == current.image()
}

impl Kiln {
    /// Stops a running VM's vCPUs; its memory stays, and it answers nothing until resumed.
    pub async fn pause(&self, name: &str) -> Result<()> {
        self.set_paused(name, true).await
    }

    /// Lets a paused VM run on.
    pub async fn resume(&self, name: &str) -> Result<()> {
        self.set_paused(name, false).await
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<()> {
        let vm = self.get(name).await?;
        let _lock = lock(vm.paths()).await?;
        if !super::pause_needed(name, vm.state().await, paused)? {
            return Ok(());
        }
        self.backend.set_paused(vm.paths(), paused).await
    }

    /// Saves a running (or paused) VM's memory and disks as `snapshot`. The VM is paused
    /// while its state is written, then left as it was.
    pub async fn snapshot(&self, name: &str, snapshot: &str) -> Result<SnapshotInfo> {
        self.save_snapshot(name, snapshot, false, &NoProgress).await
    }

    /// Saves a stopped VM's disks as `snapshot` (`--disk-only`); a restore boots from them.
    pub async fn snapshot_disks(&self, name: &str, snapshot: &str) -> Result<SnapshotInfo> {
        self.save_snapshot(name, snapshot, true, &NoProgress).await
    }

    /// [`Kiln::snapshot`], or [`Kiln::snapshot_disks`] when `disk_only`, reported as
    /// [`Stage::SaveSnapshot`] with the memory's bytes as they are written.
    pub async fn save_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        disk_only: bool,
        reporter: &dyn Reporter,
    ) -> Result<SnapshotInfo> {
        let save = self.snapshot_as(name, snapshot, disk_only, reporter);
        progress::stage(reporter, Stage::SaveSnapshot, save).await
    }

    async fn snapshot_as(
        &self,
        name: &str,
        snapshot: &str,
        disk_only: bool,
        reporter: &dyn Reporter,
    ) -> Result<SnapshotInfo> {
        crate::spec::validate_name(snapshot)?;
        let vm = self.get(name).await?;
        let _lock = lock(vm.paths()).await?;
        let mut record = read_record(vm.paths())?.ok_or_else(|| Error::VmNotFound {
            name: name.to_owned(),
        })?;
        let state = vm.state().await;
        super::check_snapshot_state(name, state, disk_only)?;
        let dir = snapshot_dir(vm.paths(), snapshot);
        if dir.exists() {
            return Err(Error::SnapshotExists {
                vm: name.to_owned(),
                snapshot: snapshot.to_owned(),
            });
        }
        // Written beside, renamed into place when complete: a killed save leaves no
        // snapshot that looks whole.
        let tmp = dir.with_file_name(format!(".{snapshot}.partial"));
        let _ = std::fs::remove_dir_all(&tmp);
        state::create_private_dir(&tmp)?;
        let frozen = record.disk_files(vm.paths());
        let stamp = format!("{}-{}", now_secs(), std::process::id());
        let overlays: Vec<PathBuf> = (0..frozen.len())
            .map(|i| vm.paths().dir().join(format!("disk{i}-{stamp}.qcow2")))
            .collect();
        // The overlays exist before anything else changes, and the record names them before
        // QEMU moves onto them: an overlay nothing wrote to reads through to the file QEMU
        // still writes, so whenever this is killed, the record's chain holds every write.
        for (frozen, overlay) in frozen.iter().zip(&overlays) {
            self.backend.create_overlay(frozen, overlay).await?;
        }
        if disk_only {
            return self
                .record_snapshot(&vm, record, &tmp, &dir, snapshot, frozen, overlays, true)
                .await;
        }
        let was_paused = state == VmState::Paused;
        // Saved while its agent polls an idle port, a guest's agent answered only ~5 s after
        // a restore (measured, cause not found); saved with a host session open, at once:
        // the restored agent reads the new host's magic and starts over. Keep one open.
        let _session = if was_paused {
            None
        } else {
            Some(vm.agent_within(std::time::Duration::from_secs(10)).await?)
        };
        if !was_paused {
            // Says "resume it" to whoever finds this save interrupted.
            state::write_atomic(&tmp.join(RESUME_MARKER), b"")?;
            self.backend.set_paused(vm.paths(), true).await?;
        }
        record.disk_files = overlays.clone();
        state::write_json_atomic(&vm.paths().record(), &record)?;
        let mut meter = Meter::new(reporter, Stage::SaveSnapshot, None);
        let saved = self
            .backend
            .save_state(vm.paths(), &tmp.join("memory"), &overlays, &mut meter)
            .await;
        meter.finish();
        // A template's guest never runs again once saved: its RAM file is the clones'. Nor
        // does its QEMU, which writes to guest RAM even while paused (closing the agent
        // session below puts a virtio-serial control message there): it ends now.
        let resumed = if was_paused {
            Ok(())
        } else if self.template {
            match self.backend.kill_at_once(vm.paths()).await {
                Ok(()) => sync_file(&vm.paths().ram_file()),
                Err(err) => Err(err),
            }
        } else {
            self.backend.set_paused(vm.paths(), false).await
        };
        if let Err(err) = saved {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(err);
        }
        resumed?;
        let _ = std::fs::remove_file(tmp.join(RESUME_MARKER));
        self.record_snapshot(&vm, record, &tmp, &dir, snapshot, frozen, overlays, false)
            .await
    }

    /// Points the VM at its new overlays and moves the finished snapshot into place.
    #[allow(clippy::too_many_arguments)]
    async fn record_snapshot(
        &self,
        vm: &Vm,
        mut record: state::VmRecord,
        tmp: &Path,
        dir: &Path,
        snapshot: &str,
        frozen: Vec<PathBuf>,
        overlays: Vec<PathBuf>,
        disk_only: bool,
    ) -> Result<SnapshotInfo> {
        record.disk_files = overlays;
        state::write_json_atomic(&vm.paths().record(), &record)?;
        let meta = SnapshotMeta {
            format: SNAPSHOT_FORMAT,
            name: snapshot.to_owned(),
            created_at: now_secs(),
            kiln_version: env!("CARGO_PKG_VERSION").to_owned(),
            qemu_version: self.backend.version().await.unwrap_or_default(),
            spec: record.spec.clone(),
            image_digest: record.image_digest.clone(),
            disks: frozen,
            disk_only,
            shared_memory: (self.template && !disk_only).then(|| vm.paths().ram_file()),
            cpu: record.machine.as_ref().map(state::MachineRecord::cpu_model),
            accel: record.machine.as_ref().map(|m| m.accel),
        };
        state::write_json_atomic(&tmp.join("meta.json"), &meta)?;
        std::fs::rename(tmp, dir).map_err(IoError::at("move into place", dir))?;
        Ok(info_of(dir, &meta))
    }

    /// A VM's snapshots, oldest first.
    pub async fn snapshots(&self, name: &str) -> Result<Vec<SnapshotInfo>> {
        let vm = self.get(name).await?;
        let root = vm.paths().dir().join("snapshots");
        let mut out = Vec::new();
        for snapshot in state::list_names(&root)? {
            if snapshot.starts_with('.') {
                continue; // a save that did not finish
            }
            let meta = read_meta(vm.paths(), name, &snapshot)?;
            out.push(info_of(&snapshot_dir(vm.paths(), &snapshot), &meta));
        }
        out.sort_by_key(|s| (s.created_at, s.name.clone()));
        Ok(out)
    }

    /// Brings a VM back to `snapshot`: whatever runs is stopped, and the machine starts from
    /// the saved memory with the disks as they were. Files written since are gone.
    pub async fn restore(&self, name: &str, snapshot: &str, reporter: &dyn Reporter) -> Result<Vm> {
        let vm = self.get(name).await?;
        let _lock = lock(vm.paths()).await?;
        let meta = read_meta(vm.paths(), name, snapshot)?;
        let mut record = read_record(vm.paths())?.ok_or_else(|| Error::VmNotFound {
            name: name.to_owned(),
        })?;
        if !same_machine(&meta.spec, &record.spec) {
            return Err(Error::IncompatibleSnapshot {
                vm: name.to_owned(),
                snapshot: snapshot.to_owned(),
                reason: "the VM's machine changed since".to_owned(),
            });
        }
        let image = self.check_compatible(name, snapshot, &meta).await?;

        self.backend.kill(vm.paths()).await?;
        let stamp = format!("{}-{}", now_secs(), std::process::id());
        let mut disks = Vec::new();
        for (index, frozen) in meta.disks.iter().enumerate() {
            let overlay = vm.paths().dir().join(format!("disk{index}-{stamp}.qcow2"));
            self.backend.create_overlay(frozen, &overlay).await?;
            disks.push(overlay);
        }
        let old_disks = std::mem::replace(&mut record.disk_files, disks.clone());
        if meta.disk_only {
            state::write_json_atomic(&vm.paths().record(), &record)?;
            self.forget_overlays(vm.paths(), &old_disks, &record.disk_files)
                .await;
            let probe = self.accel_probe();
            let accel = probe.choose(record.spec.accel())?;
            let paths = vm.paths().clone();
            return self
                .boot(record, paths, accel, &probe.reason, reporter)
                .await;
        }
        let memory = snapshot_dir(vm.paths(), snapshot).join("memory");
        // Says "stop the machine, unless the record names these disks" to whoever finds this
        // restore interrupted (see `finish_interrupted_restore`).
        let marker = vm.paths().dir().join(RESTORING_MARKER);
        state::write_json_atomic(&marker, &disks)?;
        let accel = meta.accel(record.machine.as_ref());
        let attachments = self.networks().attachments(&record.spec).await?;
        let cpu = meta.cpu_model(accel);
        let launch = Launch {
            spec: &record.spec,
            id: &record.id,
            image: &image,
            paths: vm.paths(),
            accel,
            accel_reason: SAVED_ACCEL_REASON,
            attachments: &attachments,
            disks: &disks,
            incoming: Some(&memory),
            memory: meta.memory(),
            // The drive as it was: the saved guest may have it mounted.
            workspace: None,
            cpu: Some(&cpu),
        };
        let machine =
            progress::stage(reporter, Stage::StartQemu, self.backend.start(&launch)).await?;
        if let Err(err) = progress::phase(
            reporter,
            progress::Phase::LoadState,
            self.run_loaded(vm.paths(), &memory),
        )
        .await
        {
            // Stopped, on the disks it had: the record was not changed.
            self.forget_overlays(vm.paths(), &disks, &old_disks).await;
            let _ = std::fs::remove_file(&marker);
            return Err(err);
        }
        record.machine = Some(machine);
        record.should_run = true;
        record.last_error = None;
        state::write_json_atomic(&vm.paths().record(), &record)?;
        std::fs::remove_file(&marker).map_err(IoError::at("remove", &marker))?;
        self.forget_overlays(vm.paths(), &old_disks, &record.disk_files)
            .await;
        let vm = Vm { record, ..vm };
        let secret_path = vm.paths().secret();
        let secret = std::fs::read(&secret_path).map_err(IoError::at("read", &secret_path))?;
        let agent = progress::stage(
            reporter,
            Stage::WaitAgent,
            wait_restored_agent(&vm, &secret),
        )
        .await?;
        // The guest is where it was when the snapshot was taken: its random state too, which
        // every restore of this snapshot would share, and its view of the config drive, made
        // anew at this start. Re-key it with the same name and secret and a fresh seed: the
        // agent reseeds its CRNG and remounts the drive.
        let mut seed = [0u8; 64];
        state::random_bytes(&mut seed, &secret_path)?;
        progress::phase(
            reporter,
            progress::Phase::Rekey,
            agent.set_identity(vm.name(), &secret, &seed),
        )
        .await?;
        Ok(vm)
    }

    /// Refuses a snapshot this kiln, QEMU or image cannot load; returns the image.
    pub(super) async fn check_compatible(
        &self,
        vm: &str,
        snapshot: &str,
        meta: &SnapshotMeta,
    ) -> Result<crate::image::Image> {
        let incompatible = |reason: String| Error::IncompatibleSnapshot {
            vm: vm.to_owned(),
            snapshot: snapshot.to_owned(),
            reason,
        };
        let readable = meta.format == SNAPSHOT_FORMAT
            || (meta.disk_only && (DISK_ONLY_SINCE..SNAPSHOT_FORMAT).contains(&meta.format));
        if !readable {
            return Err(incompatible(format!(
                "it is in snapshot format {}, and this kiln loads format {SNAPSHOT_FORMAT} \
                 (and disk-only snapshots since format {DISK_ONLY_SINCE})",
                meta.format
            )));
        }
        let qemu = self.backend.version().await?;
        if meta.qemu_version != qemu {
            return Err(incompatible(format!(
                "it was taken with {}, this host runs {qemu}",
                meta.qemu_version
            )));
        }
        let image = self.images.get(meta.spec.image())?;
        if image.digest() != meta.image_digest {
            return Err(incompatible(
                "the image was rebuilt since (its kernel and initramfs differ)".to_owned(),
            ));
        }
        Ok(image)
    }

    /// Waits until QEMU has loaded the saved state `memory` (it stays paused then, as it was
    /// saved), and lets it run. A state QEMU does not load stops the machine.
    pub(super) async fn run_loaded(&self, paths: &VmPaths, memory: &Path) -> Result<()> {
        let loaded = self
            .backend
            .wait_loaded(paths, memory, std::time::Duration::from_secs(120))
            .await;
        match loaded {
            Ok(()) => self.backend.set_paused(paths, false).await,
            Err(err) => {
                let _ = self.backend.kill(paths).await;
                Err(err)
            }
        }
    }

    /// Removes a snapshot; refused while a disk still reads through its frozen files.
    pub async fn remove_snapshot(&self, name: &str, snapshot: &str) -> Result<()> {
        let vm = self.get(name).await?;
        let _lock = lock(vm.paths()).await?;
        let meta = read_meta(vm.paths(), name, snapshot)?;
        let mut users = Vec::new();
        if !meta.disks.is_empty() {
            // This VM's disks and any clone's may read through the frozen files.
            for other in state::list_names(&self.paths.vms_dir())? {
                let other_paths = self.paths.vm(&other);
                let Some(record) = read_record(&other_paths)? else {
                    continue;
                };
                for file in record.disk_files(&other_paths) {
                    let chain = self.backend.backing_chain(&file).await?;
                    if meta.disks.iter().any(|d| chain.contains(d)) {
                        users.push(format!("VM {other}"));
                    }
                }
            }
            for other in self.snapshots(name).await? {
                if other.name == snapshot {
                    continue;
                }
                let other_meta = read_meta(vm.paths(), name, &other.name)?;
                for file in &other_meta.disks {
                    let chain = self.backend.backing_chain(file).await?;
                    if meta.disks.iter().any(|d| d != file && chain.contains(d)) {
                        users.push(format!("snapshot {}", other.name));
                    }
                }
            }
        }
        if !users.is_empty() {
            users.dedup();
            return Err(Error::SnapshotInUse {
                vm: name.to_owned(),
                snapshot: snapshot.to_owned(),
                users,
            });
        }
        let dir = snapshot_dir(vm.paths(), snapshot);
        std::fs::remove_dir_all(&dir).map_err(IoError::at("remove", &dir))?;
        for file in &meta.disks {
            if file.starts_with(vm.paths().dir()) && file != &vm.paths().disk(0) {
                let _ = std::fs::remove_file(file);
            }
        }
        Ok(())
    }
}

/// Flushes `path` to disk (a template's RAM file, before the snapshot that needs it exists).
fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(IoError::at("flush", path))?;
    Ok(())
}

/// In a VM's directory while a restore loads saved state: the disks it gives the machine.
const RESTORING_MARKER: &str = "restoring";

/// In an unfinished snapshot's directory: the save paused a running VM.
const RESUME_MARKER: &str = "resume";

/// Waits for the agent of a restored guest. Its virtio-serial port was saved with no host
/// connected, and the first connection after the load can go unanswered: retry on fresh
/// connections, briefly each.
pub(super) async fn wait_restored_agent(vm: &Vm, secret: &[u8]) -> Result<crate::AgentClient> {
    use std::time::Duration;
    // A live agent answers in milliseconds; a lost first attempt costs little.
    let patience =
        crate::agent::Patience::new(Duration::from_secs(60)).per_try(Duration::from_millis(200));
    crate::agent::connect(&vm.paths().agent_ports(), secret, patience)
        .await
        .map_err(|err| Error::BootFailed {
            name: vm.name().to_owned(),
            reason: format!("the restored agent did not answer: {err}"),
            serial_tail: super::serial_tail(vm.paths(), 20),
        })
}

fn info_of(dir: &Path, meta: &SnapshotMeta) -> SnapshotInfo {
    SnapshotInfo {
        name: meta.name.clone(),
        created_at: meta.created_at,
        memory_bytes: std::fs::metadata(dir.join("memory")).map_or(0, |m| m.len()),
        disks: meta.disks.len(),
        qemu_version: meta.qemu_version.clone(),
        disk_only: meta.disk_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Accel;

    /// A `meta.json` as a kiln before CPU models were recorded wrote it.
    fn older_meta(spec: &VmSpec) -> SnapshotMeta {
        let json = serde_json::json!({
            "format": SNAPSHOT_FORMAT,
            "name": "s1",
            "created_at": 1,
            "kiln_version": "0.1.0",
            "qemu_version": "10.0.2",
            "spec": spec,
            "image_digest": "abc",
            "disks": [],
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_snapshot_loads_on_the_accelerator_and_cpu_it_was_saved_on() {
        let spec = VmSpec::builder("a").build().unwrap();
        let machine = |accel| state::MachineRecord {
            pid: 1,
            accel,
            accel_reason: String::new(),
            started_at: 0,
            cpu: None,
        };
        let mut meta = older_meta(&spec);
        // Older snapshots: the VM's machine says, and its model is what kiln used then.
        assert_eq!(meta.accel(Some(&machine(Accel::Kvm))), Accel::Kvm);
        assert_eq!(meta.accel(None), Accel::Tcg);
        assert_eq!(meta.cpu_model(Accel::Tcg), "max");
        assert_eq!(meta.cpu_model(Accel::Kvm), "host");
        assert_eq!(meta.memory(), Memory::Private);
        // Newer ones say themselves, whatever the VM runs now.
        meta.accel = Some(Accel::Kvm);
        meta.cpu = Some("host".to_owned());
        assert_eq!(meta.accel(Some(&machine(Accel::Tcg))), Accel::Kvm);
        assert_eq!(meta.cpu_model(Accel::Tcg), "host");
    }
}
