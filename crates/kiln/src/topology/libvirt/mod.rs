mod agent;
mod boot;
mod host;
mod mapping;
mod resources;
mod snapshots;
mod vms;

pub use vms::CLI_OWNER;

use std::time::Duration;

use async_trait::async_trait;

use crate::agent::AgentClient;
use crate::image::{Image, ImageInputs, ImageStore};
use crate::libvirt::{
    DomainDef, DomainState, KilnTag, LibvirtConn, LibvirtError, LibvirtOptions, VolumeFormat,
};
use crate::progress::{self, Event, Reporter, Stage};
use crate::score::{NetworkHost, ObservedNetwork, ObservedVm, Topology, VmHost};
use crate::spec::NetworkSpec;
use crate::{Error, Paths, Result, VmSpec};

/// A libvirt host, local or remote, reached through one URI.
#[derive(Debug, Clone)]
pub struct LibvirtHost {
    conn: LibvirtConn,
    /// The secret references this machine declared, per domain UUID (see
    /// [`resources::LibvirtHost::upload_config`]).
    declared_secrets: std::path::PathBuf,
    /// The hosts `kiln ls` and the verbs look on: this one is remembered once kiln has made
    /// a VM on it, however it was made (`kiln up --connect`, a score).
    known_hosts: crate::state::KnownHosts,
    images: ImageStore,
    image_inputs: Option<ImageInputs>,
    boot_timeout: Duration,
}

use mapping::disk_volume;

/// The libvirt network a `nat` user-mode NIC goes out through. libvirt's own user-mode NIC
/// (slirp, or passt as libvirt 9 starts it) maps its gateway to the libvirt host's loopback;
/// a guest on this bridge reaches the host's networks through NAT, and of the host only the
/// bridge's address, never its loopback.
pub const NAT_NETWORK: &str = "kiln-nat";
const NAT_SUBNET: &str = "10.213.37.0/24";
/// Who owns [`NAT_NETWORK`]: kiln itself, not a score (no score's destroy removes it).
const NAT_OWNER: &str = "kiln";

/// The `0600` volume QEMU reads the guest's secret from.
/// A Debian image's root base on a host, and the marker of its complete upload.
fn root_volumes(image: &Image, root: &crate::image::RootfsManifest) -> [String; 2] {
    let id = format!(
        "kiln-image-{}-{}",
        image.name(),
        &root.base.sha256[..root.base.sha256.len().min(12)]
    );
    [format!("{id}-root.qcow2"), format!("{id}-root-complete")]
}

fn secret_volume(vm: &str) -> String {
    format!("{vm}-secret")
}

fn serial_log_volume(vm: &str) -> String {
    format!("{vm}-serial.log")
}

/// The boot kit's volumes (kernel, initramfs, and the marker of a complete upload): one set
/// per host for every image, since all boot the same kernel.
fn image_volumes(image: &Image) -> [String; 3] {
    let digest = image.manifest.digest();
    let id = format!(
        "kiln-image-{}-{}",
        image.manifest.name,
        &digest[..digest.len().min(12)]
    );
    [
        format!("{id}-vmlinux"),
        format!("{id}-initramfs"),
        format!("{id}-complete"),
    ]
}

impl LibvirtHost {
    /// Connects to `uri`; images are built into (and taken from) the cache under `paths`.
    pub async fn connect(uri: &str, paths: &Paths) -> Result<Self> {
        Self::connect_with(uri, LibvirtOptions::for_uri(uri), paths).await
    }

    /// [`connect`](Self::connect) with `options` instead of the defaults for the URI.
    pub async fn connect_with(uri: &str, options: LibvirtOptions, paths: &Paths) -> Result<Self> {
        Ok(Self {
            conn: LibvirtConn::open_with(uri, options).await?,
            declared_secrets: paths.data_dir().join("libvirt-secrets"),
            known_hosts: crate::state::KnownHosts::new(paths),
            images: ImageStore::new(paths.clone()),
            image_inputs: None,
            boot_timeout: Duration::from_secs(120),
        })
    }

    /// Builds images from these inputs instead of discovering them.
    #[must_use]
    pub fn with_image_inputs(mut self, inputs: ImageInputs) -> Self {
        self.image_inputs = Some(inputs);
        self
    }

    /// Takes images (and the recipes a program declared) from this store.
    #[must_use]
    pub fn with_images(mut self, images: ImageStore) -> Self {
        self.images = images;
        self
    }

    /// How long a VM may take to boot until its agent answers.
    #[must_use]
    pub fn with_boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }

    /// The libvirt connection underneath.
    pub fn conn(&self) -> &LibvirtConn {
        &self.conn
    }

    /// The URI of the connection.
    pub fn uri(&self) -> &str {
        self.conn.uri()
    }

    /// Whether guests really run here (the test driver only pretends).
    fn runs_guests(&self) -> bool {
        !self.conn.is_test_driver()
    }

    /// Resolves what the domain needs from the host (acceleration, the uploaded image),
    /// then maps the spec purely ([`mapping::domain_def`]).
    async fn domain_def(
        &self,
        spec: &VmSpec,
        owner: &str,
        secret_file: String,
        reporter: &dyn Reporter,
    ) -> Result<(DomainDef, Vec<crate::DiskSpec>)> {
        let (accel, reason) = self.choose_accel(spec)?;
        reporter.report(Event::AccelChosen {
            accel,
            reason: reason.clone(),
        });
        let (kernel, root, disks) = if spec.boot_order().is_empty() {
            let placed = self.ensure_image(spec, reporter).await?;
            (Some(placed.kernel), placed.root, placed.disks)
        } else {
            (None, crate::image::BootRoot::Ram, spec.disks().to_vec())
        };
        let inputs = mapping::DomainInputs {
            owner,
            accel,
            secret_file,
            kernel,
            root,
            pool: &self.conn.options().pool_name,
            serial_log: self.serial_log(spec.name()),
        };
        Ok((mapping::domain_def(spec, inputs)?, disks))
    }
}

fn observed_vm(state: DomainState) -> ObservedVm {
    let (owner, spec) = KilnTag::decode(state.observed.tag.as_ref());
    ObservedVm {
        name: state.name,
        host: None,
        owner,
        spec,
        running: state.active,
    }
}

#[async_trait]
impl Topology for LibvirtHost {
    fn describe(&self) -> String {
        format!("libvirt {}", self.uri())
    }

    async fn ensure_ready(&self, _reporter: &dyn Reporter) -> Result<()> {
        self.conn.ensure_pool_active().await?;
        Ok(())
    }
}

#[async_trait]
impl VmHost for LibvirtHost {
    async fn observe_vms(&self) -> Result<Vec<ObservedVm>> {
        Ok(self
            .conn
            .domains()
            .await?
            .into_iter()
            .map(observed_vm)
            .collect())
    }

    async fn check_vms(&self, creating: &[&VmSpec]) -> Result<()> {
        if let Some(spec) = creating.iter().find(|s| !s.ports().is_empty()) {
            return Err(LibvirtError::PortForwardUnsupported {
                name: spec.name().to_owned(),
            }
            .into());
        }
        let needed: u64 = creating
            .iter()
            .flat_map(|vm| vm.disks())
            .map(|d| d.size().bytes())
            .sum();
        if needed == 0 {
            return Ok(());
        }
        self.conn.ensure_pool_active().await?;
        let available = self.conn.pool_available().await?;
        if needed > available {
            return Err(LibvirtError::PoolTooSmall {
                uri: self.uri().to_owned(),
                pool: self.conn.options().pool_name.clone(),
                needed,
                available,
            }
            .into());
        }
        Ok(())
    }

    async fn create_vm(&self, spec: &VmSpec, owner: &str, reporter: &dyn Reporter) -> Result<()> {
        crate::image::config_drive::check_secrets(spec)?;
        if spec.cloud_init().is_some() && self.runs_guests() {
            // Refused before anything is made on the host.
            let image = self
                .images
                .ensure(spec.image(), self.image_inputs.as_ref(), false, reporter)
                .await?;
            image.check_spec(spec)?;
        }
        self.conn.ensure_pool_active().await?;
        self.ensure_nat_network(spec).await?;
        self.ensure_network_boot(spec, reporter).await?;
        let secret_file = self.new_secret(spec.name()).await?;
        let (mut def, disks) = self.domain_def(spec, owner, secret_file, reporter).await?;
        // kiln picks the UUID, so the config drive can carry it before the domain exists.
        let id = crate::state::new_vm_id();
        def.uuid = Some(id.clone());
        self.declare_secrets(spec, &id)?;
        progress::stage(reporter, Stage::CreateVm, async {
            self.upload_seed(spec).await?;
            self.upload_config(spec, &id).await?;
            for (index, disk) in disks.iter().enumerate() {
                self.conn
                    .ensure_volume(
                        &disk_volume(spec.name(), index),
                        disk.size().bytes(),
                        VolumeFormat::Qcow2,
                        disk.base(),
                    )
                    .await?;
            }
            self.conn.define_domain(&def).await?;
            if self.runs_guests() {
                self.known_hosts.remember(self.uri()).await?;
            }
            self.conn.start_domain(spec.name()).await?;
            Ok::<_, Error>(())
        })
        .await?;
        self.wait_for_agent(spec, reporter).await
    }

    async fn update_vm(&self, spec: &VmSpec, owner: &str, reporter: &dyn Reporter) -> Result<()> {
        let current = self.conn.domain(spec.name()).await?;
        let observed = current.map(|s| s.observed).unwrap_or_default();
        self.ensure_nat_network(spec).await?;
        let secret_file = match observed.secret_file {
            Some(file) => file,
            // It restarts below: a fresh secret is fine.
            None => self.new_secret(spec.name()).await?,
        };
        self.ensure_network_boot(spec, reporter).await?;
        let (mut def, _) = self.domain_def(spec, owner, secret_file, reporter).await?;
        self.upload_seed(spec).await?;
        if let Some(id) = &observed.uuid {
            // The spec comes from this machine's program: its secrets are declared here.
            self.declare_secrets(spec, id)?;
            self.upload_config(spec, id).await?;
        }
        def.uuid = observed.uuid;
        self.conn.define_domain(&def).await?;
        // A running domain takes new vCPUs and memory on its next start.
        self.conn.destroy_domain(spec.name()).await?;
        self.conn.start_domain(spec.name()).await?;
        self.wait_for_agent(spec, reporter).await
    }

    async fn delete_vm(&self, name: &str, reporter: &dyn Reporter) -> Result<()> {
        progress::stage(reporter, Stage::Remove, async {
            if let Ok(Some(domain)) = self.conn.domain(name).await
                && let Some(id) = &domain.observed.uuid
            {
                self.forget_secrets(id);
            }
            self.conn.undefine_domain(name).await?;
            self.remove_leftovers(name).await?;
            self.collect_garbage().await?;
            // The VM is gone: forgetting the host is housekeeping, never a failed removal.
            if self.runs_guests() {
                match self.conn.kiln_domains().await {
                    Ok(left) if left.is_empty() => {
                        if let Err(err) = self.known_hosts.forget(self.uri()).await {
                            log::warn!("cannot forget host {}: {err}", self.uri());
                        }
                    }
                    Ok(_) => {}
                    Err(err) => log::warn!("cannot list {}'s VMs: {err}", self.uri()),
                }
            }
            Ok(())
        })
        .await
    }

    async fn vm_agent(&self, name: &str, timeout: Duration) -> Result<AgentClient> {
        // `agent::connect` retries an unanswered handshake and waits for a free port itself.
        self.agent_within(name, timeout).await
    }
}

#[async_trait]
impl NetworkHost for LibvirtHost {
    async fn observe_networks(&self) -> Result<Vec<ObservedNetwork>> {
        Ok(self
            .conn
            .networks()
            .await?
            .into_iter()
            .map(|state| {
                let (owner, spec) = KilnTag::decode(state.observed.tag.as_ref());
                ObservedNetwork {
                    name: state.name,
                    owner,
                    spec,
                    subnets: state.observed.subnets,
                    active: state.active,
                    partial: false,
                }
            })
            .collect())
    }

    async fn create_network(&self, spec: &NetworkSpec, owner: &str) -> Result<()> {
        let tag = KilnTag::new(owner, spec)?;
        let doc = crate::libvirt::xml::network_xml(spec, &tag, false, None)?;
        self.conn.define_network(spec.name(), doc).await?;
        self.conn.ensure_network_active(spec.name()).await?;
        Ok(())
    }

    async fn start_network(&self, name: &str) -> Result<()> {
        Ok(self.conn.ensure_network_active(name).await?)
    }

    async fn delete_network(&self, name: &str) -> Result<()> {
        Ok(self.conn.remove_network(name).await?)
    }
}
