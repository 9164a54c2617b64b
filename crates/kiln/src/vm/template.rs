//! Warm starts. For each image, QEMU version and machine shape (vCPUs, memory, disks,
//! accelerator) kiln keeps a template: a VM booted once to agent-ready and snapshotted, in
//! `<cache>/templates/<key>`. A warm `up` clones the template's snapshot and re-keys the
//! clone (hostname, secret, random seed) instead of booting: a fraction of a second, even
//! under TCG. Specs a template cannot stand for (shared folders, named networks, firmware
//! boot) boot cold, and kiln says why. A new image or QEMU gives a new key, so stale
//! templates are never used; `kiln cache prune` removes them.

use sha2::{Digest, Sha256};

use super::Kiln;
use super::lifecycle::lock;
use super::snapshot::read_meta;
use crate::progress::{Event, NoProgress, Reporter};
use crate::state::{self, Paths};
use crate::{Error, IoError, Result, Vm, VmSpec};

/// The template VM's name, and its snapshot's, inside a template's own state directory.
const TEMPLATE: &str = "template";
const READY: &str = "ready";

impl Kiln {
    /// The machines this kiln starts get `image` (made by
    /// [`workspace_drive::make`](crate::image::workspace_drive::make)) as their workspace
    /// drive: what a session does.
    pub(crate) fn with_workspace_image(mut self, image: std::path::PathBuf) -> Self {
        self.workspace_image = Some(image);
        self
    }

    /// Warm starts on (`kiln up` and `kiln run` use them unless `--cold`).
    #[must_use]
    pub fn with_warm_starts(mut self, warm: bool) -> Self {
        self.warm = warm;
        self
    }

    /// Why `spec` cannot start from a template, if it cannot.
    pub fn cold_reason(spec: &VmSpec) -> Option<&'static str> {
        if !spec.shares().is_empty() {
            return Some("it has shared folders");
        }
        if spec.networks().iter().any(|n| n.network_name().is_some()) {
            return Some("it is on a named network");
        }
        if spec.networks() != [crate::NetworkRef::User] {
            return Some("its NICs differ from the default one");
        }
        if !spec.boot_order().is_empty() {
            return Some("it boots through firmware");
        }
        if spec.cloud_init().is_some() {
            return Some("cloud-init runs at its first boot");
        }
        if spec.disks().iter().any(|d| d.base().is_some()) {
            return Some("a disk has a base image");
        }
        None
    }

    /// Starts `spec` from its template (made on first use); falls back to a cold boot, saying
    /// why, when the spec has no template or the template fails.
    pub(super) async fn up_warm(
        &self,
        spec: VmSpec,
        owner: Option<&str>,
        reporter: &dyn Reporter,
    ) -> Result<Vm> {
        let tried = async {
            let (template, key) = self.ensure_template(&spec, reporter).await?;
            let src = template.get(TEMPLATE).await?;
            let meta = read_meta(src.paths(), TEMPLATE, READY)?;
            let image = self.check_compatible(TEMPLATE, READY, &meta).await?;
            reporter.report(Event::Start {
                warm: true,
                detail: key,
            });
            self.clone_into(&src, &meta, READY, spec.clone(), owner, &image, reporter)
                .await
        }
        .await;
        match tried {
            Ok(vm) => Ok(vm),
            // QEMU refused the template's state: made by something that changed since. The
            // next warm start makes a new one. (A load that was only slow, or a QEMU that
            // died, says nothing against the template.)
            Err(err @ Error::Qemu(crate::qemu::QemuError::StateRefused { .. })) => {
                reporter.report(Event::Start {
                    warm: false,
                    detail: format!("{err}; the next warm start makes a new template"),
                });
                if let Err(err) = self.discard_template(&spec).await {
                    log::warn!("cannot discard the warm-start template: {err}");
                }
                self.up_cold(spec, owner, reporter).await
            }
            // The name is taken: not something a cold boot would fix.
            Err(err @ Error::VmAlreadyExists { .. }) => Err(err),
            Err(err) => {
                reporter.report(Event::Start {
                    warm: false,
                    detail: format!("the warm start failed ({err})"),
                });
                self.up_cold(spec, owner, reporter).await
            }
        }
    }

    /// The template Kiln for `spec`'s shape, with its snapshot made if missing.
    async fn ensure_template(
        &self,
        spec: &VmSpec,
        reporter: &dyn Reporter,
    ) -> Result<(Kiln, String)> {
        let image = self
            .images
            .ensure(spec.image(), self.image_inputs.as_ref(), false, reporter)
            .await?;
        let probe = self.accel_probe();
        let accel = probe.choose(spec.accel())?;
        reporter.report(Event::AccelChosen {
            accel,
            reason: probe.reason.clone(),
        });
        let key = self.template_key(spec, &image, accel).await?;
        let root = self.paths.templates_dir().join(&key);
        let template = self.template_at(&root);
        // One kiln makes a template at a time; the others wait and use it.
        let _lock = {
            let path = self.paths.templates_dir().join(format!("{key}.lock"));
            state::create_private_dir(&self.paths.templates_dir())?;
            tokio::task::spawn_blocking(move || state::Lock::acquire(&path))
                .await
                .map_err(crate::image::join_error)??
        };
        // A template machine still running (its save was cut short) may have changed the RAM
        // file since: that template is made again.
        let ready = match template.snapshots(TEMPLATE).await {
            Ok(list) => list.iter().any(|s| s.name == READY),
            Err(_) => false,
        } && template
            .backend
            .running_pid(&template.paths.vm(TEMPLATE))
            .await
            .is_none();
        if !ready {
            reporter.report(Event::Note {
                message: format!("making the warm-start template {key} (once per image and shape)"),
            });
            let made = async {
                let _ = template.remove(TEMPLATE, true, &NoProgress).await;
                let shape = spec_shape(spec)?;
                template.up_cold(shape, None, &NoProgress).await?;
                // The snapshot and the RAM file are what clones start from: the save ends the
                // template's QEMU before its guest or devices can change the file.
                template.snapshot(TEMPLATE, READY).await?;
                template
                    .stop_within(TEMPLATE, std::time::Duration::ZERO, &NoProgress)
                    .await
            };
            crate::progress::stage(reporter, crate::progress::Stage::MakeTemplate, made).await?;
        }
        Ok((template, key))
    }

    /// Drops the snapshot of `spec`'s template, so the next warm start makes it anew.
    async fn discard_template(&self, spec: &VmSpec) -> Result<()> {
        let image = self.images.get(spec.image())?;
        let accel = self.accel_probe().choose(spec.accel())?;
        let key = self.template_key(spec, &image, accel).await?;
        self.template_at(&self.paths.templates_dir().join(key))
            .remove_snapshot(TEMPLATE, READY)
            .await
    }

    /// The key of `spec`'s template: what its saved state depends on.
    async fn template_key(
        &self,
        spec: &VmSpec,
        image: &crate::image::Image,
        accel: crate::Accel,
    ) -> Result<String> {
        let qemu = self.backend.version().await?;
        let mut hasher = Sha256::new();
        for part in [
            image.digest(),
            qemu,
            accel.to_string(),
            // The guest CPU model the state is saved from.
            self.backend.cpu_model(accel),
            spec.cpus().to_string(),
            spec.memory_mib().to_string(),
            // The NICs' backends differ by policy, and QEMU loads saved state only into the
            // same set of user-mode netdevs.
            spec.net_policy().to_string(),
            // So is the set of agent ports.
            format!("agent-ports={}", kiln_proto::AGENT_PORTS),
            // And the config drive's size, which the guest's driver reads once.
            format!("config-drive={}", crate::image::config_drive::SIZE),
            // Labels too: the guest reads a disk's serial once, at boot.
            format!(
                "{:?}",
                spec.disks()
                    .iter()
                    .map(|d| (d.size().bytes(), d.label()))
                    .collect::<Vec<_>>()
            ),
            format!("root-size={:?}", spec.root_size().map(|s| s.bytes())),
            // Templates whose RAM is a file the clones map, saved without it.
            "memory=shared-file".to_owned(),
            // Every VM has a workspace drive, of one size.
            format!("workspace-drive={}", crate::image::workspace_drive::SIZE),
            // And states in this kiln's format, which an older template's is not.
            format!("snapshot-format={}", super::snapshot::SNAPSHOT_FORMAT),
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0]);
        }
        Ok(hex::encode(hasher.finalize())[..12].to_owned())
    }

    /// Removes every warm-start template (`kiln cache prune`); returns how many.
    pub async fn prune_templates(&self) -> Result<usize> {
        let dir = self.paths.templates_dir();
        let mut removed = 0;
        for key in state::list_names(&dir)? {
            if key.ends_with(".lock") {
                continue;
            }
            let root = dir.join(&key);
            if self.reads_through(&root).await? {
                log::info!("keeping template {key}: a VM's disk reads through it");
                continue;
            }
            let template = self.template_at(&root);
            let paths = template.paths.vm(TEMPLATE);
            let _lock = lock(&paths).await?;
            // A clone that held the template's shared lock has its record now: look again.
            if self.reads_through(&root).await? {
                log::info!("keeping template {key}: a VM's disk reads through it");
                continue;
            }
            let _ = template.backend.kill(&paths).await;
            std::fs::remove_dir_all(&root).map_err(IoError::at("remove", &root))?;
            removed += 1;
        }
        Ok(removed)
    }
}

impl Kiln {
    /// The kiln of the template in `root`: its own state, this kiln's image cache.
    fn template_at(&self, root: &std::path::Path) -> Kiln {
        Kiln {
            paths: Paths::new(
                root.join("data"),
                self.paths.cache_dir().to_owned(),
                root.join("run"),
            ),
            warm: false,
            template: true,
            workspace_image: None,
            ..self.clone()
        }
    }

    /// Whether a disk of one of this kiln's VMs reads through a file under `root`.
    async fn reads_through(&self, root: &std::path::Path) -> Result<bool> {
        for name in state::list_names(&self.paths.vms_dir())? {
            let paths = self.paths.vm(&name);
            let Some(record) = super::read_record(&paths)? else {
                continue;
            };
            for file in record.disk_files(&paths) {
                let chain = self.backend.backing_chain(&file).await?;
                if chain.iter().any(|f| f.starts_with(root)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// The template's own spec: the shape of `spec`, under the template's name, without port
/// forwards (those are the host's side, given to each clone).
fn spec_shape(spec: &VmSpec) -> Result<VmSpec> {
    let mut builder = VmSpec::builder(TEMPLATE)
        .cpus(spec.cpus())
        .memory_mib(spec.memory_mib())
        .image(spec.image())
        .accel(spec.accel())
        .net_policy(spec.net_policy());
    if let Some(size) = spec.root_size() {
        builder = builder.root_size(size);
    }
    for disk in spec.disks() {
        let blank = crate::DiskSpec::new(disk.size());
        builder = builder.disk(match disk.label() {
            Some(label) => blank.labeled(label),
            None => blank,
        });
    }
    Ok(builder.build()?)
}
