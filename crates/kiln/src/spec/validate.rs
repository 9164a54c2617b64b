//! The one check every spec passes, built in code or loaded from disk.

use super::{
    BootDevice, CloudInitError, DEFAULT_IMAGE, MAX_CPUS, MAX_SHARES, MIN_MEMORY_MIB, NetworkRef,
    SpecError, VmSpecFields, disk, validate_name,
};

/// The one check every spec passes, whether built in code or loaded from disk.
pub(super) fn validate(spec: &VmSpecFields, host_memory_mib: Option<u64>) -> Result<(), SpecError> {
    validate_name(&spec.name)?;
    if spec.cpus == 0 {
        return Err(SpecError::ZeroCpus);
    }
    if spec.cpus > MAX_CPUS {
        return Err(SpecError::TooManyCpus {
            cpus: spec.cpus,
            max: MAX_CPUS,
        });
    }
    if spec.memory_mib < MIN_MEMORY_MIB {
        return Err(SpecError::MemoryTooSmall {
            memory_mib: spec.memory_mib,
            min: MIN_MEMORY_MIB,
        });
    }
    if let Some(host_mib) = host_memory_mib
        && spec.memory_mib > host_mib
    {
        return Err(SpecError::MemoryTooLarge {
            memory_mib: spec.memory_mib,
            host_mib,
        });
    }
    if validate_name(&spec.image).is_err() {
        return Err(SpecError::InvalidImage {
            name: spec.image.clone(),
        });
    }
    if spec.root_size.is_some() && spec.image == DEFAULT_IMAGE {
        return Err(SpecError::RootSizeWithoutRoot);
    }
    if let Some(cloud_init) = &spec.cloud_init {
        if spec.image == DEFAULT_IMAGE {
            return Err(SpecError::CloudInitWithoutImage);
        }
        cloud_init.validate()?;
        for nic in cloud_init.nics() {
            if !spec.networks.iter().any(|n| n.mac() == Some(nic.mac())) {
                return Err(CloudInitError::UnknownNic {
                    nic: nic.name().to_owned(),
                    mac: nic.mac(),
                }
                .into());
            }
        }
    }
    spec.metadata.validate()?;
    if !spec.boot_order.is_empty() && spec.image != DEFAULT_IMAGE {
        return Err(SpecError::FirmwareBootWithImage {
            image: spec.image.clone(),
        });
    }
    for (index, disk) in spec.disks.iter().enumerate() {
        if disk.size().mib() == 0 {
            return Err(SpecError::EmptyDisk { index });
        }
        if let Some(label) = disk.label() {
            if !disk::valid_label(label) {
                return Err(SpecError::InvalidDiskLabel {
                    index,
                    label: label.to_owned(),
                });
            }
            if spec.disks[..index].iter().any(|d| d.label() == Some(label)) {
                return Err(SpecError::DuplicateDiskLabel {
                    label: label.to_owned(),
                });
            }
        }
        if let Some(base) = disk.base()
            && !base.is_absolute()
        {
            return Err(SpecError::RelativeDiskBase {
                index,
                path: base.to_owned(),
            });
        }
    }
    for (index, network) in spec.networks.iter().enumerate() {
        network.validate()?;
        if let Some(mac) = network.mac()
            && spec.networks[..index].iter().any(|n| n.mac() == Some(mac))
        {
            return Err(SpecError::DuplicateMac {
                mac,
                context: format!("the NICs of VM {}", spec.name),
            });
        }
    }
    if spec.shares.len() > MAX_SHARES {
        return Err(SpecError::TooManyShares {
            count: spec.shares.len(),
            max: MAX_SHARES,
        });
    }
    for (index, share) in spec.shares.iter().enumerate() {
        share.validate(index)?;
        if spec.shares[..index]
            .iter()
            .any(|s| s.guest() == share.guest())
        {
            return Err(SpecError::DuplicateShareTarget {
                guest: share.guest().to_owned(),
            });
        }
    }
    if !spec.ports.is_empty() && !spec.networks.contains(&NetworkRef::User) {
        return Err(SpecError::PortsNeedUserNetwork);
    }
    for (index, forward) in spec.ports.iter().enumerate() {
        if forward.host_port == 0 || forward.guest_port == 0 {
            return Err(SpecError::PortZero { forward: *forward });
        }
        if spec.ports[..index].iter().any(|p| {
            p.protocol == forward.protocol
                && p.host_port == forward.host_port
                && (p.host_addr == forward.host_addr
                    || p.host_addr.is_unspecified()
                    || forward.host_addr.is_unspecified())
        }) {
            return Err(SpecError::DuplicatePort { forward: *forward });
        }
    }
    for (index, device) in spec.boot_order.iter().enumerate() {
        if spec.boot_order[..index].contains(device) {
            return Err(SpecError::DuplicateBootDevice { device: *device });
        }
        let (present, needs) = match device {
            BootDevice::Disk => (!spec.disks.is_empty(), "disk"),
            BootDevice::Network => (!spec.networks.is_empty(), "NIC"),
        };
        if !present {
            return Err(SpecError::BootDeviceMissing {
                device: *device,
                needs,
            });
        }
    }
    Ok(())
}

/// Total memory of this host, from /proc/meminfo; `None` where it cannot be read.
pub(super) fn host_memory_mib() -> Option<u64> {
    crate::accel::meminfo_kib("MemTotal").map(|kib| kib / 1024)
}
