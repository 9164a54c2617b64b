//! `VmSpec` to `DomainDef`, purely: everything the host decides (acceleration, where the
//! image and the secret were put) comes in as [`DomainInputs`]. Golden-tested end to end
//! (spec → XML), like the daemonless backend's `plan()` (spec → argv).

use super::NAT_NETWORK;
use super::boot::{BOOT_NETWORK, boot_mac, boots_from_network};
use crate::libvirt::{DomainDef, DomainDisk, DomainNic, DomainShare, KernelBoot, KilnTag};
use crate::spec::BootDevice;
use crate::{Accel, NetPolicy, NetworkRef, Result, VmSpec};

/// The volume of a VM's disk `index` in kiln's pool.
pub(super) fn disk_volume(vm: &str, index: usize) -> String {
    format!("{vm}-disk{index}.qcow2")
}

/// The volume of a VM's cloud-init seed.
pub(super) fn seed_volume(vm: &str) -> String {
    format!("{vm}-cidata.img")
}

/// The volume of a VM's config drive (`kiln-config`).
pub(super) fn config_volume(vm: &str) -> String {
    format!("{vm}-config.img")
}

/// Whether `nic` goes out through [`NAT_NETWORK`].
fn on_nat_network(spec: &VmSpec, nic: &NetworkRef) -> bool {
    *nic == NetworkRef::User && spec.net_policy() == NetPolicy::Nat
}

/// What the host resolved for one domain.
#[derive(Debug, Clone)]
pub(super) struct DomainInputs<'a> {
    /// Who owns the VM (a score, or `kiln up`).
    pub owner: &'a str,
    pub accel: Accel,
    /// Where QEMU reads the guest's secret, on the libvirt host.
    pub secret_file: String,
    /// The kernel and initramfs paths on the libvirt host, for direct kernel boot; `None`
    /// when the spec has a boot order (firmware boot).
    pub kernel: Option<(String, String)>,
    /// Where the guest's userland is (a Debian image's root disk is the first disk).
    pub root: crate::image::BootRoot,
    /// kiln's storage pool.
    pub pool: &'a str,
    /// Where the console is logged, when it is.
    pub serial_log: Option<String>,
}

/// The domain for `spec`.
pub(super) fn domain_def(spec: &VmSpec, inputs: DomainInputs<'_>) -> Result<DomainDef> {
    let boot_position = |device: BootDevice| {
        spec.boot_order()
            .iter()
            .position(|d| *d == device)
            .and_then(|p| u32::try_from(p + 1).ok())
    };
    Ok(DomainDef {
        name: spec.name().to_owned(),
        uuid: None,
        kvm: inputs.accel == Accel::Kvm,
        tag: KilnTag::new(inputs.owner, spec)?,
        memory_mib: spec.memory_mib(),
        cpus: spec.cpus(),
        secret_file: inputs.secret_file,
        kernel: inputs.kernel.map(|(kernel, initrd)| KernelBoot {
            kernel,
            initrd,
            cmdline: crate::image::guest_cmdline(spec, inputs.root, crate::image::Addressing::Dhcp),
        }),
        disks: spec
            .machine_disk_labels()
            .into_iter()
            .enumerate()
            .map(|(index, serial)| DomainDisk {
                pool: inputs.pool.to_owned(),
                volume: disk_volume(spec.name(), index),
                serial,
                read_only: false,
                boot_order: if index == 0 {
                    boot_position(BootDevice::Disk)
                } else {
                    None
                },
            })
            .chain(spec.cloud_init().map(|_| DomainDisk {
                pool: inputs.pool.to_owned(),
                volume: seed_volume(spec.name()),
                boot_order: None,
                serial: Some("cidata".to_owned()),
                read_only: true,
            }))
            .chain(std::iter::once(DomainDisk {
                pool: inputs.pool.to_owned(),
                volume: config_volume(spec.name()),
                boot_order: None,
                serial: Some(crate::image::config_drive::LABEL.to_owned()),
                read_only: true,
            }))
            .collect(),
        nics: spec
            .networks()
            .iter()
            // No way out: the NIC is left out (libvirt's slirp has no `restrict`).
            .filter(|nic| !(**nic == NetworkRef::User && spec.net_policy() == NetPolicy::None))
            .enumerate()
            .map(|(index, nic)| DomainNic {
                network: if index == 0 && boots_from_network(spec) && on_nat_network(spec, nic) {
                    Some(BOOT_NETWORK.to_owned())
                } else if on_nat_network(spec, nic) {
                    Some(NAT_NETWORK.to_owned())
                } else {
                    nic.network_name().map(str::to_owned)
                },
                mac: if index == 0 && boots_from_network(spec) && on_nat_network(spec, nic) {
                    Some(boot_mac(spec.name()).to_string())
                } else {
                    nic.mac().map(|m| m.to_string())
                },
                boot_order: if index == 0 {
                    boot_position(BootDevice::Network)
                } else {
                    None
                },
            })
            .collect(),
        serial_log: inputs.serial_log,
        // Paths on the libvirt host (the same machine for local URIs).
        shares: spec
            .shares()
            .iter()
            .enumerate()
            .map(|(index, share)| DomainShare {
                host_dir: share.host().to_string_lossy().into_owned(),
                tag: crate::spec::ShareSpec::tag(index),
                read_only: share.is_read_only(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::xml::golden::assert_golden;
    use crate::spec::{DiskSpec, ShareSpec};

    fn inputs(kernel: bool) -> DomainInputs<'static> {
        DomainInputs {
            owner: "lab",
            accel: Accel::Tcg,
            secret_file: "/pool/web-1-secret".to_owned(),
            kernel: kernel.then(|| {
                (
                    "/pool/kiln-image-default-abc-vmlinux".to_owned(),
                    "/pool/kiln-image-default-abc-initramfs".to_owned(),
                )
            }),
            root: crate::image::BootRoot::Ram,
            pool: "kiln",
            serial_log: Some("/pool/web-1-serial.log".to_owned()),
        }
    }

    /// A Debian image: its root disk comes first, with the serial kiln's initramfs looks
    /// for; the spec's labelled disk follows; the kernel is told to switch root.
    #[test]
    fn a_debian_image_boots_its_root_disk() {
        let spec = VmSpec::builder("db-1")
            .image("debian")
            .root_size(crate::ByteSize::from_gib(8))
            .disk(DiskSpec::new_gib(4).labeled("data"))
            .build()
            .unwrap();
        let mut inputs = inputs(true);
        inputs.root = crate::image::BootRoot::Disk {
            init: crate::image::InitMode::Fast,
            grow: true,
        };
        let xml = domain_def(&spec, inputs).unwrap().to_xml().unwrap();
        assert_golden("domain-debian-image", &xml);
    }

    /// The guide's VM: two vCPUs, 1 GiB, a disk, a named network, the user-mode NIC (under
    /// the default `nat` policy, on kiln's NAT bridge) and a read-only share.
    #[test]
    fn a_spec_becomes_the_domain_kiln_defines() {
        let spec = VmSpec::builder("web-1")
            .cpus(2)
            .memory_gib(1)
            .disk(DiskSpec::new_gib(4))
            .network(NetworkRef::named_with_mac(
                "lab",
                "52:54:00:00:00:01".parse().unwrap(),
            ))
            .network(NetworkRef::User)
            .share(ShareSpec::new("/srv/data", "/data").read_only())
            .build()
            .unwrap();
        let xml = domain_def(&spec, inputs(true)).unwrap().to_xml().unwrap();
        assert_golden("domain-from-spec", &xml);
    }

    /// Under `--net none` the user-mode NIC is left out; a boot order boots firmware.
    #[test]
    fn no_way_out_and_network_boot() {
        let spec = VmSpec::builder("pxe-1")
            .disk(DiskSpec::new_gib(4))
            .network(NetworkRef::named("lab"))
            .net_policy(NetPolicy::None)
            .boot_order([BootDevice::Network, BootDevice::Disk])
            .build()
            .unwrap();
        let def = domain_def(&spec, inputs(false)).unwrap();
        assert_eq!(def.nics.len(), 1);
        assert_eq!(def.nics[0].network.as_deref(), Some("lab"));
        assert_eq!(def.nics[0].boot_order, Some(1));
        assert_eq!(def.disks[0].boot_order, Some(2));
        assert!(def.kernel.is_none());
    }
}
