//! Network boot on a libvirt host. kiln's boot network (`kiln-boot`: NAT, guests isolated
//! from each other, like `kiln-nat`) has its dnsmasq serve BOOTP and TFTP from a directory on
//! the host. DHCP names `boot.ipxe`, which chains to the script of the booting NIC's MAC; that
//! script loads kiln's image with the VM's command line. The directory holds only kiln's
//! public image files and those scripts (command lines carry no secrets): any guest on the
//! network may read them.

use std::path::Path;

use log::info;
use sha2::{Digest, Sha256};

use super::LibvirtHost;
use crate::libvirt::KilnTag;
use crate::libvirt::xml::NetworkBoot;
use crate::progress::Reporter;
use crate::spec::{BootDevice, MacAddr, NetworkSpec};
use crate::{Error, IoError, NetPolicy, NetworkRef, Result, VmSpec};

/// kiln's network for VMs that boot from the network.
pub const BOOT_NETWORK: &str = "kiln-boot";
const BOOT_SUBNET: &str = "10.213.38.0/24";
/// The TFTP root on the libvirt host (world-readable: dnsmasq drops its privileges).
pub const TFTP_ROOT: &str = "/var/lib/kiln/tftp";
const BOOTFILE: &str = "boot.ipxe";
/// Chains to the booting NIC's own script.
const CHAIN_SCRIPT: &str = "#!ipxe\nchain kiln-${mac:hexhyp}.ipxe\n";

/// Whether `spec` boots from the network.
pub(super) fn boots_from_network(spec: &VmSpec) -> bool {
    spec.boot_order().contains(&BootDevice::Network)
}

/// The boot NIC's MAC: fixed by the VM's name, so its script can be written before the domain
/// exists.
pub(super) fn boot_mac(vm: &str) -> MacAddr {
    let digest = Sha256::digest(vm.as_bytes());
    MacAddr::qemu([digest[0], digest[1], digest[2]])
}

fn script_name(mac: &MacAddr) -> String {
    format!("kiln-{}.ipxe", mac.to_string().replace(':', "-"))
}

impl LibvirtHost {
    /// Makes what a network boot of `spec` reads: the TFTP root with kiln's image and the VM's
    /// script, and the boot network. Refused where kiln cannot write the host's filesystem
    /// (a remote host) and for NICs the boot network does not serve.
    pub(super) async fn ensure_network_boot(
        &self,
        spec: &VmSpec,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        if !boots_from_network(spec) || !self.runs_guests() {
            return Ok(());
        }
        let unsupported = |reason, hint| Error::Unsupported {
            verb: "network boot",
            host: self.uri().to_owned(),
            reason,
            hint,
        };
        if !self.conn.is_local() {
            return Err(unsupported(
                "kiln writes the boot files into the TFTP root on the host's filesystem, and reaches a remote host only through libvirt",
                "boot from the disk there, or run kiln on that host",
            ));
        }
        if spec.networks().first() != Some(&NetworkRef::User) || spec.net_policy() != NetPolicy::Nat
        {
            return Err(unsupported(
                "kiln's boot network serves the VM's NAT NIC, which must be its first NIC",
                "keep the default NIC and --net nat",
            ));
        }
        let image = self
            .images
            .ensure(
                crate::spec::DEFAULT_IMAGE,
                self.image_inputs.as_ref(),
                false,
                reporter,
            )
            .await?;
        let digest = image.manifest.digest();
        let kernel = format!("vmlinuz-{digest}");
        let initrd = format!("initramfs-{digest}.cpio");
        let cmdline = crate::image::guest_cmdline(
            spec,
            crate::image::BootRoot::Ram,
            crate::image::Addressing::Dhcp,
        );
        let disk_next = spec
            .boot_order()
            .iter()
            .skip_while(|d| **d != BootDevice::Network)
            .any(|d| *d == BootDevice::Disk);
        let script = crate::image::ipxe_script(spec.name(), &cmdline, disk_next, &kernel, &initrd);
        let mac = boot_mac(spec.name());
        let files = [
            (kernel, Source::File(image.bzimage())),
            (initrd, Source::File(image.initramfs())),
            (BOOTFILE.to_owned(), Source::Text(CHAIN_SCRIPT.to_owned())),
            (script_name(&mac), Source::Text(script)),
        ];
        tokio::task::spawn_blocking(move || write_tftp_root(Path::new(TFTP_ROOT), &files))
            .await
            .map_err(crate::image::join_error)??;
        self.ensure_boot_network().await
    }

    async fn ensure_boot_network(&self) -> Result<()> {
        if self.conn.network(BOOT_NETWORK).await?.is_none() {
            let spec = NetworkSpec::nat(BOOT_NETWORK, BOOT_SUBNET)
                .dhcp([10, 213, 38, 100], [10, 213, 38, 254])
                .build()?;
            let tag = KilnTag::new(super::NAT_OWNER, &spec)?;
            let boot = NetworkBoot {
                tftp_root: TFTP_ROOT,
                bootfile: BOOTFILE,
            };
            let doc = crate::libvirt::xml::network_xml(&spec, &tag, true, Some(boot))?;
            info!("{}: defining {BOOT_NETWORK}", self.uri());
            // Two kilns may race here: the loser finds it made.
            if let Err(err) = self.conn.define_network(BOOT_NETWORK, doc).await
                && self.conn.network(BOOT_NETWORK).await?.is_none()
            {
                return Err(err.into());
            }
        }
        self.conn.ensure_network_active(BOOT_NETWORK).await?;
        Ok(())
    }

    /// Removes VM `name`'s boot script, if this host has one (a local host).
    pub(super) fn remove_boot_script(&self, name: &str) -> Result<()> {
        if !self.conn.is_local() {
            return Ok(());
        }
        let path = Path::new(TFTP_ROOT).join(script_name(&boot_mac(name)));
        crate::state::remove_file_if_present(&path)
    }
}

enum Source {
    File(std::path::PathBuf),
    Text(String),
}

/// Writes the files (each atomically, `0644`) into the TFTP root (`0755`); an image file
/// already there is kept (its name carries its digest).
fn write_tftp_root(root: &Path, files: &[(String, Source)]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root).map_err(IoError::at("create", root))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
        .map_err(IoError::at("set the mode of", root))?;
    for (name, source) in files {
        let path = root.join(name);
        let bytes = match source {
            Source::File(_) if path.is_file() => continue,
            Source::File(from) => std::fs::read(from).map_err(IoError::at("read", from))?,
            Source::Text(text) => text.clone().into_bytes(),
        };
        crate::state::write_atomic(&path, &bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(IoError::at("set the mode of", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vms_boot_mac_is_fixed_by_its_name_and_names_its_script() {
        let mac = boot_mac("pxe-1");
        assert_eq!(mac, boot_mac("pxe-1"));
        assert_ne!(mac, boot_mac("pxe-2"));
        assert!(mac.to_string().starts_with("52:54:00:"));
        assert!(script_name(&mac).starts_with("kiln-52-54-00-"));
    }
}
