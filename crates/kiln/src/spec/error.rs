//! [`SpecError`]: why a spec, a name or a value was refused, and what to do about it.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{BootDevice, CloudInitError, MacAddr, MetadataError, PortForward, SizeError};

/// A spec that failed validation. Each variant names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A VM or network name, or a reservation's hostname, breaks the rules of
    /// [`validate_name`](super::validate_name).
    #[error("invalid VM name {name:?}: {reason}")]
    InvalidName {
        /// The name that was refused.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The spec asks for 0 vCPUs.
    #[error("a VM needs at least 1 vCPU")]
    ZeroCpus,
    /// The spec asks for more vCPUs than [`MAX_CPUS`](super::MAX_CPUS).
    #[error("{cpus} vCPUs is more than the {max} kiln allows")]
    TooManyCpus {
        /// The vCPUs asked for.
        cpus: u32,
        /// The most kiln allows, [`MAX_CPUS`](super::MAX_CPUS).
        max: u32,
    },
    /// The spec asks for less memory than [`MIN_MEMORY_MIB`](super::MIN_MEMORY_MIB).
    #[error("{memory_mib} MiB of memory is below the {min} MiB a guest needs")]
    MemoryTooSmall {
        /// The memory asked for, in MiB.
        memory_mib: u64,
        /// The least a guest boots with, in MiB.
        min: u64,
    },
    /// The spec asks for more memory than the host has in all (checked only where
    /// `/proc/meminfo` can be read).
    #[error("{memory_mib} MiB of memory is more than this host has ({host_mib} MiB)")]
    MemoryTooLarge {
        /// The memory asked for, in MiB.
        memory_mib: u64,
        /// The host's total memory, in MiB.
        host_mib: u64,
    },
    /// The image name breaks the rules of [`validate_name`](super::validate_name).
    #[error("invalid image name {name:?}")]
    InvalidImage {
        /// The image name that was refused.
        name: String,
    },
    /// A disk is smaller than 1 MiB.
    #[error("disk {index} is empty: a disk needs a size of at least 1 MiB")]
    EmptyDisk {
        /// The disk's position among the spec's disks, from 0.
        index: usize,
    },
    /// A disk's label is not 1 to 20 of `a-z 0-9 - _`, or is one kiln keeps for its own
    /// disks (`kiln-root`, `kiln-config`, `cidata`).
    #[error("disk {index}: invalid label {label:?}")]
    InvalidDiskLabel {
        /// The disk's position among the spec's disks, from 0.
        index: usize,
        /// The label that was refused.
        label: String,
    },
    /// Two of the spec's disks have the same label.
    #[error("two disks are labelled {label:?}")]
    DuplicateDiskLabel {
        /// The label given twice.
        label: String,
    },
    /// A root size is given with the default image, which has no root disk.
    #[error("a root size needs a Debian image: the default image has no root disk")]
    RootSizeWithoutRoot,
    /// A boot order (a firmware boot) is given with a Debian image, which boots through
    /// kiln's kernel.
    #[error("image {image} boots through kiln's kernel, but a boot order boots firmware")]
    FirmwareBootWithImage {
        /// The image the spec names.
        image: String,
    },
    /// Cloud-init data is given with the default image, which has no cloud-init.
    #[error("cloud-init needs an image that has it; the default image has not")]
    CloudInitWithoutImage,
    /// The cloud-init data is refused, or configures a NIC the VM does not have.
    #[error(transparent)]
    CloudInit(#[from] CloudInitError),
    /// A metadata key/value or secret is refused.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// A NIC's or network's network name breaks the rules of [`validate_name`](super::validate_name).
    #[error("network name {name:?} is invalid")]
    InvalidNetwork {
        /// The network name that was refused.
        name: String,
    },
    /// A MAC address is malformed, multicast or all zeros.
    #[error("invalid MAC address {mac:?}: {reason}")]
    InvalidMac {
        /// The address as given.
        mac: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A MAC address is used twice: by two NICs of a VM or of a score, or by two
    /// reservations of a network.
    #[error("MAC address {mac} appears twice in {context}")]
    DuplicateMac {
        /// The address used twice.
        mac: MacAddr,
        /// Where it is used twice, e.g. `the NICs of VM web-1`.
        context: String,
    },
    /// A network's subnet is not IPv4 CIDR text such as `10.10.0.0/24`.
    #[error("network {network}: {text:?} is not a subnet like 10.10.0.0/24")]
    InvalidSubnetText {
        /// The network's name.
        network: String,
        /// The text given as the subnet.
        text: String,
    },
    /// A network's subnet has a prefix outside /8 to /30, or host bits set.
    #[error("network {network}: subnet {subnet} is invalid: {reason}")]
    InvalidSubnet {
        /// The network's name.
        network: String,
        /// The subnet that was refused.
        subnet: Ipv4Net,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A network's DHCP range is empty, reaches past the subnet's host addresses, or holds
    /// the host's address.
    #[error("network {network}: DHCP range {start}-{end} is invalid: {reason}")]
    InvalidDhcpRange {
        /// The network's name.
        network: String,
        /// The range's first address.
        start: Ipv4Addr,
        /// The range's last address.
        end: Ipv4Addr,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A reserved address is not one of the subnet's host addresses, or is the host's own
    /// (the first).
    #[error("network {network}: reserved address {ip} is outside the guests' part of {subnet}")]
    ReservationOutsideSubnet {
        /// The network's name.
        network: String,
        /// The reserved address.
        ip: Ipv4Addr,
        /// The network's subnet.
        subnet: Ipv4Net,
    },
    /// Two reservations of a network hand out the same address.
    #[error("network {network}: address {ip} is reserved twice")]
    DuplicateReservedIp {
        /// The network's name.
        network: String,
        /// The address reserved twice.
        ip: Ipv4Addr,
    },
    /// Two networks' subnets share addresses.
    #[error("networks {first} ({first_subnet}) and {second} ({second_subnet}) overlap")]
    OverlappingSubnets {
        /// The name of the network found first.
        first: String,
        /// Its subnet.
        first_subnet: Ipv4Net,
        /// The name of the network that overlaps it.
        second: String,
        /// Its subnet.
        second_subnet: Ipv4Net,
    },
    /// Two resources of one kind in a score have the same name.
    #[error("{kind} {name:?} appears twice")]
    DuplicateName {
        /// The kind of resource, e.g. `VM`.
        kind: &'static str,
        /// The name given twice.
        name: String,
    },
    /// A device appears twice in the boot order.
    #[error("boot device {device} is listed twice")]
    DuplicateBootDevice {
        /// The device listed twice.
        device: BootDevice,
    },
    /// The boot order names a device the VM does not have: a disk without disks, or the
    /// network without a NIC.
    #[error("boot device {device} is listed but the VM has no {needs}")]
    BootDeviceMissing {
        /// The device in the boot order.
        device: BootDevice,
        /// What the VM lacks: `disk` or `NIC`.
        needs: &'static str,
    },
    /// A disk's base image is not given by an absolute path.
    #[error("disk {index}: base image {} must be an absolute path", path.display())]
    RelativeDiskBase {
        /// The disk's position among the spec's disks, from 0.
        index: usize,
        /// The base image's path as given.
        path: std::path::PathBuf,
    },
    /// A share's host path is not absolute, or its guest path is not a plain absolute path
    /// other than `/`.
    #[error("share {index} ({share}): {reason}")]
    InvalidShare {
        /// The share's position among the spec's shares, from 0.
        index: usize,
        /// The share, written `HOST:GUEST`.
        share: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The spec has more shares than [`MAX_SHARES`](super::MAX_SHARES).
    #[error("{count} shares is more than the {max} kiln allows")]
    TooManyShares {
        /// How many shares the spec has.
        count: usize,
        /// The most kiln allows, [`MAX_SHARES`](super::MAX_SHARES).
        max: usize,
    },
    /// Two shares are mounted at the same guest path.
    #[error("two shares are mounted at {guest}")]
    DuplicateShareTarget {
        /// The guest path used twice.
        guest: String,
    },
    /// Two port forwards take the same protocol and host port on the same host address
    /// (`0.0.0.0` clashes with every address).
    #[error("port forward {forward} conflicts with another on the same host port")]
    DuplicatePort {
        /// The later of the two forwards.
        forward: PortForward,
    },
    /// A port forward names port 0 on the host or in the guest.
    #[error("port forward {forward} uses port 0: ports are 1 to 65535")]
    PortZero {
        /// The forward that was refused.
        forward: PortForward,
    },
    /// The spec forwards ports but has no user-mode NIC to forward them through.
    #[error("port forwards need the VM's user-mode (NAT) NIC, and this VM has none")]
    PortsNeedUserNetwork,
    /// A network policy's text is not `none`, `nat` or `host`.
    #[error("unknown network policy {text:?}")]
    InvalidNetPolicy {
        /// The text as given.
        text: String,
    },
    /// A size is not a number with a unit, or is too large.
    #[error(transparent)]
    Size(#[from] SizeError),
}

impl SpecError {
    /// A suggestion for fixing the error, shown by the CLI under the message; `None` when
    /// there is none to give.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Self::InvalidName { .. } => {
                "a name is 1 to 63 characters of a-z, 0-9 and '-', starting with a letter or digit"
            }
            Self::ZeroCpus | Self::TooManyCpus { .. } => "pass --cpus between 1 and 64",
            Self::MemoryTooSmall { .. } | Self::MemoryTooLarge { .. } => {
                "pass --memory with a unit, e.g. 512M or 2G"
            }
            Self::Size(_) => "sizes are a number with an optional unit: 512M, 2G, 1T",
            Self::EmptyDisk { .. } => "give the disk a size with a unit, e.g. --disk 4G",
            Self::InvalidDiskLabel { .. } | Self::DuplicateDiskLabel { .. } => {
                "labels are up to 20 of a-z, 0-9, '-' and '_', one per disk (kiln-root is taken)"
            }
            Self::RootSizeWithoutRoot => "pick a Debian image too, e.g. --image debian",
            Self::FirmwareBootWithImage { .. } => {
                "drop the boot order, or the image (firmware boots what is on the disks)"
            }
            Self::CloudInitWithoutImage => "use --image cloud (Debian with cloud-init)",
            Self::CloudInit(CloudInitError::NotCloudConfig) => {
                "start the file with the line #cloud-config"
            }
            Self::CloudInit(_) => "fix the cloud-init data",
            Self::Metadata(MetadataError::RelativeSecretPath { .. }) => {
                "a secret is NAME=/absolute/path/on/the/host"
            }
            Self::Metadata(_) => {
                "metadata is KEY=VALUE: a key starts with a letter, then letters, digits, '_', '-' \
                 or '.' (64 at most); a value is text of up to 4 KiB"
            }
            Self::InvalidMac { .. } | Self::DuplicateMac { .. } => {
                "a MAC is six hex octets like 52:54:00:12:34:56, unique per NIC"
            }
            Self::OverlappingSubnets { .. } => "give each network its own subnet",
            Self::InvalidShare { .. } | Self::DuplicateShareTarget { .. } => {
                "a share is -v /abs/host/dir:/guest/dir[:ro], one per guest directory"
            }
            Self::DuplicatePort { .. } => "forward each host port once per protocol",
            Self::PortZero { .. } => "name a port from 1 to 65535 on both sides",
            Self::PortsNeedUserNetwork => {
                "keep the default NIC, or publish the service on your named network instead"
            }
            Self::InvalidNetPolicy { .. } => {
                "--net is none (no route out), nat (the default: out, but not to the host's \
                 loopback) or host (also the host's loopback)"
            }
            Self::ReservationOutsideSubnet { .. } => {
                "reserve an address inside the subnet, other than its first (the host's)"
            }
            _ => return None,
        };
        Some(hint.to_owned())
    }
}
