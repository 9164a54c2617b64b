//! What a libvirt VM needs on its host before it is defined: acceleration, the image's
//! volumes, the NAT network, a secret; and the image volumes collected once unused.

use log::info;

use super::{
    LibvirtHost, NAT_NETWORK, NAT_OWNER, NAT_SUBNET, image_volumes, root_volumes, secret_volume,
    serial_log_volume,
};
use crate::libvirt::{KilnTag, VolumeFormat};
use crate::progress::{self, Reporter, Stage};
use crate::spec::NetworkSpec;
use crate::{Accel, AccelChoice, AccelProbe, Error, Result, VmSpec};

/// An image as it is on a libvirt host.
#[derive(Debug)]
pub(super) struct PlacedImage {
    /// The kernel's and the initramfs's paths there.
    pub kernel: (String, String),
    /// Where the guest's userland is.
    pub root: crate::image::BootRoot,
    /// The machine's disks; a root disk's base is the uploaded volume's path.
    pub disks: Vec<crate::DiskSpec>,
}

impl LibvirtHost {
    /// KVM or TCG for a spec. On this machine the local probe decides; on a remote host kiln
    /// cannot look at `/dev/kvm`, so only an explicit `--accel kvm` asks for it.
    pub(super) fn choose_accel(&self, spec: &VmSpec) -> Result<(Accel, String)> {
        if self.conn.is_local() {
            let probe = AccelProbe::probe();
            let accel = probe.choose(spec.accel())?;
            return Ok((accel, probe.reason));
        }
        Ok(match spec.accel() {
            AccelChoice::Kvm => (Accel::Kvm, "asked for".to_owned()),
            _ => (
                Accel::Tcg,
                "a remote host's KVM cannot be probed from here; pass --accel kvm to use it"
                    .to_owned(),
            ),
        })
    }

    /// Uploads the kiln image's kernel and initramfs into the pool (once per boot kit), and a
    /// Debian image's root base (once per build), streamed so remote hosts work. Returns
    /// their paths on the host and the machine's disks (the root disk first, an overlay on the
    /// uploaded base).
    pub(super) async fn ensure_image(
        &self,
        spec: &VmSpec,
        reporter: &dyn Reporter,
    ) -> Result<PlacedImage> {
        if !self.runs_guests() {
            let dir = &self.conn.options().pool_path;
            return Ok(PlacedImage {
                kernel: (
                    format!("{dir}/kiln-test-vmlinux"),
                    format!("{dir}/kiln-test-initramfs"),
                ),
                root: crate::image::BootRoot::Ram,
                disks: spec.disks().to_vec(),
            });
        }
        let image = self
            .images
            .ensure(spec.image(), self.image_inputs.as_ref(), false, reporter)
            .await?;
        image.check_spec(spec)?;
        let [kernel, initrd, complete] = image_volumes(&image);
        let existing = self.conn.list_volumes().await?;
        let (kernel_file, initrd_file) = (image.kernel(), image.initramfs());
        self.upload_once(
            &existing,
            &[(&kernel, &kernel_file), (&initrd, &initrd_file)],
            &complete,
            reporter,
        )
        .await?;
        let kernel_path = self.volume_path(&kernel).await?;
        let initrd_path = self.volume_path(&initrd).await?;
        let mut disks = crate::image::machine_disks(spec, &image);
        if let Some(root) = image.root() {
            let [base, complete] = root_volumes(&image, root);
            self.upload_once(&existing, &[(&base, root.base_path())], &complete, reporter)
                .await?;
            let base_path = self.volume_path(&base).await?;
            // The root disk reads through the base as it is on the libvirt host.
            disks[0] = crate::DiskSpec::root(disks[0].size(), std::path::Path::new(&base_path));
        }
        Ok(PlacedImage {
            kernel: (kernel_path, initrd_path),
            root: crate::image::boot_root(spec, &image),
            disks,
        })
    }

    /// Uploads `files` into volumes of these names once. A marker volume, made after them,
    /// says the upload completed: without it an earlier one may have been cut short, and all
    /// go up again.
    async fn upload_once(
        &self,
        existing: &[String],
        files: &[(&String, &std::path::Path)],
        marker: &str,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let present = |name: &str| existing.iter().any(|v| v == name);
        if !(present(marker) && files.iter().all(|(name, _)| present(name))) {
            progress::stage(reporter, Stage::UploadImage, async {
                for (name, file) in files {
                    self.conn.upload_volume(name, file).await?;
                }
                self.conn
                    .ensure_volume(marker, 1, VolumeFormat::Raw, None)
                    .await?;
                Ok::<_, Error>(())
            })
            .await?;
        }
        Ok(())
    }

    /// The path on the host of a volume kiln uploaded.
    async fn volume_path(&self, name: &str) -> Result<String> {
        Ok(self
            .conn
            .ensure_volume(name, 1, VolumeFormat::Raw, None)
            .await?)
    }

    /// Makes (and starts) [`NAT_NETWORK`] when `spec` needs it and it is missing. Two kilns
    /// may race here: the loser finds it made. One made before its guests were isolated
    /// from each other is remade when no kiln VM runs (a running one would lose its NIC).
    pub(super) async fn ensure_nat_network(&self, spec: &VmSpec) -> Result<()> {
        if spec.user_net() != Some(crate::NetPolicy::Nat) {
            return Ok(());
        }
        for attempt in 0..2 {
            let made = async {
                match self.conn.network(NAT_NETWORK).await? {
                    None => {
                        self.conn
                            .define_network(NAT_NETWORK, nat_network_xml()?)
                            .await?;
                    }
                    Some(net) if !net.observed.guests_isolated => {
                        let ours = net.observed.tag.as_ref().is_some_and(|t| t.owner == NAT_OWNER);
                        // Any running guest may be on it, kiln's or not: it would lose its NIC.
                        if !ours || self.conn.domains().await?.iter().any(|d| d.active) {
                            log::warn!(
                                "{NAT_NETWORK} lets its guests reach each other; kiln remakes it (if it made it) once no VM runs on this host"
                            );
                        } else {
                            info!("{NAT_NETWORK}: remaking it so its guests are isolated");
                            self.conn.remove_network(NAT_NETWORK).await?;
                            self.conn
                                .define_network(NAT_NETWORK, nat_network_xml()?)
                                .await?;
                        }
                    }
                    Some(_) => {}
                }
                self.conn.ensure_network_active(NAT_NETWORK).await?;
                Ok::<_, Error>(())
            }
            .await;
            match made {
                Ok(()) => return Ok(()),
                Err(err) if attempt == 0 => {
                    log::debug!("{NAT_NETWORK}: {err}; once more");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Puts `spec`'s cloud-init seed in the pool, replacing an older one; nothing without
    /// cloud-init data.
    pub(super) async fn upload_seed(&self, spec: &VmSpec) -> Result<()> {
        let Some(cloud_init) = spec.cloud_init() else {
            return Ok(());
        };
        let volume = super::mapping::seed_volume(spec.name());
        let bytes = crate::image::seed::image(cloud_init, spec.name())
            .map_err(crate::IoError::at("make the cloud-init seed for", &volume))?;
        self.conn.upload_bytes(&volume, bytes, false).await?;
        Ok(())
    }

    /// Records on this machine that it declared `spec`'s secret references for domain `id`.
    pub(super) fn declare_secrets(&self, spec: &VmSpec, id: &str) -> Result<()> {
        let file = self.declared_secrets.join(format!("{id}.json"));
        if spec.metadata().secrets().is_empty() {
            return crate::state::remove_file_if_present(&file);
        }
        crate::state::create_private_dir(&self.declared_secrets)?;
        crate::state::write_json_atomic(&file, spec.metadata().secrets())
    }

    /// Forgets the secret references of domain `id`.
    pub(super) fn forget_secrets(&self, id: &str) {
        let _ = std::fs::remove_file(self.declared_secrets.join(format!("{id}.json")));
    }

    /// Puts `spec`'s config drive in the pool (a `0600` volume: it may hold secrets),
    /// replacing the one of its last start. `id` is the domain's UUID. Nothing on the test
    /// driver, which runs no guest to read it.
    ///
    /// The secrets are host files of the machine running kiln, named in the domain's tag.
    /// Anyone who may edit the domain could name other files there, and have this machine
    /// upload them: so only the references this machine declared itself (when it created
    /// or updated the VM) are read.
    pub(super) async fn upload_config(&self, spec: &VmSpec, id: &str) -> Result<()> {
        if !self.runs_guests() {
            return Ok(());
        }
        if !spec.metadata().secrets().is_empty() {
            let file = self.declared_secrets.join(format!("{id}.json"));
            let declared: Option<std::collections::BTreeMap<String, std::path::PathBuf>> =
                crate::state::read_json(&file).ok().flatten();
            if declared.as_ref() != Some(spec.metadata().secrets()) {
                return Err(crate::Error::SecretsNotDeclaredHere {
                    vm: spec.name().to_owned(),
                });
            }
        }
        let volume = super::mapping::config_volume(spec.name());
        // Made in this machine's own private directory (what a killed kiln leaves there is
        // swept at the next build), read into memory (8 MiB at most), and removed.
        let work = self
            .declared_secrets
            .with_file_name("libvirt-drives")
            .join(id);
        crate::state::create_private_dir(&work)?;
        let drive = work.join("config.img");
        crate::image::config_drive::write(&drive, spec, id, "libvirt")?;
        let bytes = std::fs::read(&drive).map_err(crate::IoError::at("read", &drive));
        let _ = std::fs::remove_dir_all(&work);
        self.conn.upload_bytes(&volume, bytes?, true).await?;
        Ok(())
    }

    /// A new random secret for VM `name`, in a `0600` volume of kiln's pool; returns the
    /// volume's path on the libvirt host.
    pub(super) async fn new_secret(&self, name: &str) -> Result<String> {
        let volume = secret_volume(name);
        let mut secret = [0u8; kiln_proto::handshake::SECRET_LEN];
        crate::state::random_bytes(&mut secret, std::path::Path::new(&volume))?;
        let (path, _) = self
            .conn
            .upload_bytes(&volume, hex::encode(secret).into_bytes(), true)
            .await?;
        Ok(path)
    }

    /// Removes image volumes and the pool once no domain on the host uses the pool (boots
    /// from its files or has disks in it).
    pub(super) async fn collect_garbage(&self) -> Result<()> {
        let options = self.conn.options();
        let in_pool = format!("{}/", options.pool_path);
        let in_use = self.conn.domains().await?.into_iter().any(|d| {
            d.observed.disk_pools.contains(&options.pool_name)
                || d.observed
                    .boot_files
                    .iter()
                    .any(|f| f.starts_with(&in_pool))
        });
        if in_use {
            return Ok(());
        }
        for volume in self.conn.list_volumes().await? {
            if volume.starts_with("kiln-image-") {
                self.conn.delete_volume(&volume).await?;
            }
        }
        if self.conn.remove_pool_if_empty().await? {
            info!("removed the empty kiln pool on {}", self.uri());
        }
        Ok(())
    }

    /// Removes the volumes kiln makes for VM `name` (disks, secret, console log) and returns
    /// how many there were. With its domain gone, they are what a killed `up` or `rm` left.
    pub(super) async fn remove_leftovers(&self, name: &str) -> Result<usize> {
        self.remove_boot_script(name)?;
        if !self.conn.pool_exists().await? {
            return Ok(0);
        }
        let (log, secret) = (serial_log_volume(name), secret_volume(name));
        let seed = super::mapping::seed_volume(name);
        let config = super::mapping::config_volume(name);
        let mut removed = 0;
        for volume in self.conn.list_volumes().await? {
            if is_disk_of(&volume, name)
                || is_log(&volume, &log)
                || volume == secret
                || volume == seed
                || volume == config
            {
                self.conn.delete_volume(&volume).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// [`NAT_NETWORK`]: NAT to the host's networks, DHCP, and guests that reach the gateway but
/// not each other (a VM must not reach another VM's services through it).
fn nat_network_xml() -> Result<String> {
    let nat = NetworkSpec::nat(NAT_NETWORK, NAT_SUBNET)
        .dhcp([10, 213, 37, 100], [10, 213, 37, 254])
        .build()?;
    let tag = KilnTag::new(NAT_OWNER, &nat)?;
    Ok(crate::libvirt::xml::network_xml(&nat, &tag, true, None)?)
}

/// Whether `text` is a number (one or more ASCII digits).
fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `volume` is the console log `log`, or one virtlogd rotated out of it (`log.N`).
fn is_log(volume: &str, log: &str) -> bool {
    volume
        .strip_prefix(log)
        .is_some_and(|rest| rest.is_empty() || rest.strip_prefix('.').is_some_and(is_number))
}

/// Whether `volume` is one of VM `name`'s disks (`NAME-diskN.qcow2`), and not a disk of a VM
/// whose name merely starts the same (`NAME-disk1-disk0.qcow2`).
fn is_disk_of(volume: &str, name: &str) -> bool {
    volume
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix("-disk"))
        .and_then(|rest| rest.strip_suffix(".qcow2"))
        .is_some_and(is_number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kilns_nat_network_isolates_its_guests() {
        let xml = nat_network_xml().unwrap();
        crate::libvirt::xml::golden::assert_golden("network-kiln-nat", &xml);
        let observed = crate::libvirt::xml::parse_network(&xml).unwrap();
        assert!(observed.guests_isolated);
    }

    #[test]
    fn rotated_console_logs_go_with_the_vm() {
        assert!(is_log("web-serial.log", "web-serial.log"));
        assert!(is_log("web-serial.log.0", "web-serial.log"));
        assert!(is_log("web-serial.log.12", "web-serial.log"));
        assert!(!is_log("web-serial.log.x", "web-serial.log"));
        assert!(!is_log("web-serial.log.", "web-serial.log"));
        assert!(!is_log("web-2-serial.log", "web-serial.log"));
    }

    #[test]
    fn a_vms_disks_are_told_from_another_vms() {
        assert!(is_disk_of("web-disk0.qcow2", "web"));
        assert!(is_disk_of("web-disk12.qcow2", "web"));
        assert!(!is_disk_of("web-disk1-disk0.qcow2", "web"));
        assert!(!is_disk_of("web-2-disk0.qcow2", "web"));
        assert!(!is_disk_of("web-disk.qcow2", "web"));
        assert!(!is_disk_of("web-disk0.raw", "web"));
        assert!(is_disk_of("web-disk1-disk0.qcow2", "web-disk1"));
    }
}
