//! Clones: a new VM started from another VM's snapshot while that one runs on (`kiln
//! clone`), and what warm starts build on. The clone gets its own sockets, disks (overlays
//! on the snapshot's frozen files) and identity: its agent is re-keyed (hostname, secret,
//! random seed) over the connection the saved secret still opens.

use super::lifecycle::{lock, shared_lock};
use super::snapshot::{
    SAVED_ACCEL_REASON, SnapshotMeta, read_meta, snapshot_dir, wait_restored_agent,
};
use super::{Kiln, Vm, now_secs, read_record};
use crate::backend::Launch;
use crate::progress::{self, Reporter, Stage};
use crate::state::{self, VmPaths};
use crate::{Error, IoError, Result, VmSpec};

impl Kiln {
    /// Starts a new VM `name` from `source`'s snapshot, while `source` runs on. The clone
    /// gets its own sockets, disks (overlays on the snapshot's frozen files), hostname,
    /// agent secret and random seed: its agent is re-keyed through the connection the saved
    /// secret still opens.
    pub async fn clone_from(
        &self,
        source: &str,
        snapshot: &str,
        name: &str,
        reporter: &dyn Reporter,
    ) -> Result<Vm> {
        let src = self.get(source).await?;
        let meta = read_meta(src.paths(), source, snapshot)?;
        let image = self.check_compatible(source, snapshot, &meta).await?;
        if meta
            .spec
            .networks()
            .iter()
            .any(|n| n.network_name().is_some())
        {
            return Err(Error::IncompatibleSnapshot {
                vm: source.to_owned(),
                snapshot: snapshot.to_owned(),
                reason: "clones of VMs on named networks are not supported yet (the guest \
                         would keep the original's address)"
                    .to_owned(),
            });
        }
        let spec = meta.spec.renamed(name)?;
        self.clone_into(&src, &meta, snapshot, spec, None, &image, reporter)
            .await
    }

    /// Creates VM `spec` (its name free) from `src`'s loaded snapshot.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn clone_into(
        &self,
        src: &Vm,
        meta: &SnapshotMeta,
        snapshot: &str,
        spec: VmSpec,
        owner: Option<&str>,
        image: &crate::image::Image,
        reporter: &dyn Reporter,
    ) -> Result<Vm> {
        let name = spec.name().to_owned();
        let paths = self.paths.vm(&name);
        paths.check_socket_paths()?;
        // A clone of a VM onto its own name would wait on its own lock.
        if src.paths() == &paths {
            return Err(Error::VmAlreadyExists { name });
        }
        let _lock = lock(&paths).await?;
        // A taken name is refused before waiting on the source: two clones onto each
        // other's names find their targets taken instead of waiting on each other.
        if read_record(&paths)?.is_some() {
            return Err(Error::VmAlreadyExists { name });
        }
        // The source's snapshot files (memory, frozen disks) stay until the clone is made
        // and its record says what it reads through: `snapshot rm`, `cache prune` and `rm`
        // of the source wait for this shared lock.
        let _source = shared_lock(src.paths()).await?;
        // Read before the lock was held, the snapshot may have been replaced since (a warm-start
        // template made anew): its device state would not match the files now there.
        let now = super::snapshot::read_meta(src.paths(), src.name(), snapshot)?;
        if !now.same_save(meta) {
            return Err(Error::IncompatibleSnapshot {
                vm: src.name().to_owned(),
                snapshot: snapshot.to_owned(),
                reason: "it was replaced while the clone started".to_owned(),
            });
        }
        self.backend.kill(&paths).await?;
        paths.remove_all()?;
        let cloned = self
            .start_clone(src, meta, snapshot, spec, owner, &paths, image, reporter)
            .await;
        if cloned.is_err() {
            let _ = self.backend.kill(&paths).await;
            let _ = paths.remove_all();
        }
        cloned
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_clone(
        &self,
        src: &Vm,
        meta: &SnapshotMeta,
        snapshot: &str,
        spec: VmSpec,
        owner: Option<&str>,
        paths: &VmPaths,
        image: &crate::image::Image,
        reporter: &dyn Reporter,
    ) -> Result<Vm> {
        state::create_private_dir(paths.dir())?;
        state::create_private_dir(paths.run_dir())?;
        // The agent in the saved memory knows the source's secret: kiln opens it with that
        // one and re-keys it. QEMU starts with the clone's own secret in fw_cfg, so an agent
        // that restarts, or a guest that reboots, reads the new one, never the source's.
        let src_secret = src.paths().secret();
        let old_secret = std::fs::read(&src_secret).map_err(IoError::at("read", &src_secret))?;
        let secret = state::write_new_secret(&paths.secret())?;
        let mut seed = [0u8; 64];
        state::random_bytes(&mut seed, &paths.secret())?;
        let stamp = format!("{}-{}", now_secs(), std::process::id());
        let mut disks = Vec::new();
        for (index, frozen) in meta.disks.iter().enumerate() {
            let overlay = paths.dir().join(format!("disk{index}-{stamp}.qcow2"));
            self.backend.create_overlay(frozen, &overlay).await?;
            disks.push(overlay);
        }
        let accel = meta.accel(src.record().machine.as_ref());
        let mut record = state::VmRecord {
            version: state::RECORD_VERSION,
            id: state::new_vm_id(),
            spec,
            backend: state::BackendKind::Qemu,
            created_at: now_secs(),
            image_digest: meta.image_digest.clone(),
            should_run: true,
            machine: None,
            last_error: None,
            owner: owner.map(str::to_owned),
            disk_files: disks.clone(),
            creating: true,
        };
        state::write_json_atomic(&paths.record(), &record)?;
        let memory = snapshot_dir(src.paths(), snapshot).join("memory");
        // The console log of the boot that made this memory state, so `kiln logs` has it.
        if let Err(err) = std::fs::copy(src.paths().serial_log(), paths.serial_log()) {
            log::debug!("no console log to carry over: {err}");
        }
        let cpu = meta.cpu_model(accel);
        let launch = Launch {
            spec: &record.spec,
            id: &record.id,
            image,
            paths,
            accel,
            accel_reason: SAVED_ACCEL_REASON,
            attachments: &[],
            disks: &disks,
            incoming: Some(&memory),
            memory: meta.memory(),
            workspace: self.workspace_image.as_deref(),
            cpu: Some(&cpu),
        };
        let machine =
            progress::stage(reporter, Stage::StartQemu, self.backend.start(&launch)).await?;
        record.machine = Some(machine);
        state::write_json_atomic(&paths.record(), &record)?;
        progress::phase(
            reporter,
            progress::Phase::LoadState,
            self.run_loaded(paths, &memory),
        )
        .await?;
        let vm = Vm {
            name: record.spec.name().to_owned(),
            paths: paths.clone(),
            record,
            backend: self.backend.clone(),
        };
        let agent = progress::stage(
            reporter,
            Stage::WaitAgent,
            wait_restored_agent(&vm, &old_secret),
        )
        .await?;
        progress::phase(
            reporter,
            progress::Phase::Rekey,
            agent.set_identity(vm.name(), &secret, &seed),
        )
        .await?;
        // Only now is the clone itself; killed before this, it is rolled back.
        let mut vm = vm;
        vm.record.creating = false;
        state::write_json_atomic(&paths.record(), &vm.record)?;
        Ok(vm)
    }
}
