//! What a VM should be: [`VmSpec`] and its parts, built and loaded through one check (`validate.rs`).

mod cloud_init;
mod disk;
mod mac;
mod metadata;
mod network;
mod port;
mod share;
mod size;
mod validate;

pub use cloud_init::{CloudInit, CloudInitError, CloudNic, MAX_USER_DATA};
pub use disk::{DiskSpec, MAX_LABEL_LEN, ROOT_DISK_LABEL};
pub use mac::MacAddr;
pub use metadata::{
    MAX_ENTRIES as MAX_METADATA_ENTRIES, MAX_KEY_LEN as MAX_METADATA_KEY_LEN, MAX_SECRET_LEN,
    MAX_SECRETS_TOTAL, MAX_VALUE_LEN as MAX_METADATA_VALUE_LEN, Metadata, MetadataChange,
    MetadataError, parse_assignment, valid_key as valid_metadata_key,
};
pub use network::{
    DhcpRange, NetPolicy, NetworkMode, NetworkRef, NetworkSpec, NetworkSpecBuilder, Reservation,
    check_no_overlap, subnets_overlap,
};
pub use port::{PortForward, Protocol};
pub use share::{MAX_SHARES, ShareSpec};
pub use size::{ByteSize, SizeError};

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::accel::AccelChoice;
use validate::{host_memory_mib, validate};

/// The smallest memory a kiln guest boots with.
pub const MIN_MEMORY_MIB: u64 = 64;
/// The most vCPUs a kiln VM may have.
pub const MAX_CPUS: u32 = 64;
/// The image used when a spec names none.
pub const DEFAULT_IMAGE: &str = "default";

/// A spec that failed validation. Each variant names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A VM or network name, or a reservation's hostname, breaks the rules of
    /// [`validate_name`].
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
    /// The spec asks for more vCPUs than [`MAX_CPUS`].
    #[error("{cpus} vCPUs is more than the {max} kiln allows")]
    TooManyCpus {
        /// The vCPUs asked for.
        cpus: u32,
        /// The most kiln allows, [`MAX_CPUS`].
        max: u32,
    },
    /// The spec asks for less memory than [`MIN_MEMORY_MIB`].
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
    /// The image name breaks the rules of [`validate_name`].
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
    /// A NIC's or network's network name breaks the rules of [`validate_name`].
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
    /// The spec has more shares than [`MAX_SHARES`].
    #[error("{count} shares is more than the {max} kiln allows")]
    TooManyShares {
        /// How many shares the spec has.
        count: usize,
        /// The most kiln allows, [`MAX_SHARES`].
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

/// Checks a VM or network name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let invalid = |reason| SpecError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    let Some(first) = name.chars().next() else {
        return Err(invalid("it is empty"));
    };
    if name.len() > 63 {
        return Err(invalid("it is longer than 63 characters"));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(invalid("it must start with a lowercase letter or a digit"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(invalid("only a-z, 0-9 and '-' are allowed"));
    }
    Ok(())
}

/// What a VM should be. Build one with [`VmSpec::builder`]; fields are read through getters.
///
/// ```
/// use kiln::{DiskSpec, SpecError, VmSpec};
///
/// let spec = VmSpec::builder("web-1")
///     .cpus(2)
///     .memory_gib(1)
///     .disk(DiskSpec::new_gib(4).labeled("data"))
///     .metadata("role", "web")
///     .build()?;
/// assert_eq!((spec.name(), spec.cpus(), spec.memory_mib()), ("web-1", 2, 1024));
///
/// // Every builder checks what it is given, before anything is created.
/// let err = VmSpec::builder("Web_1").build().unwrap_err();
/// assert!(matches!(err, SpecError::InvalidName { .. }));
/// # Ok::<(), SpecError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "VmSpecFields", into = "VmSpecFields")]
pub struct VmSpec {
    fields: VmSpecFields,
}

/// The plain data of a spec, as stored on disk. Anything loaded goes through [`validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmSpecFields {
    name: String,
    cpus: u32,
    memory_mib: u64,
    #[serde(default)]
    disks: Vec<DiskSpec>,
    #[serde(default)]
    networks: Vec<NetworkRef>,
    image: String,
    #[serde(default)]
    accel: AccelChoice,
    /// Empty: boot the kiln image's kernel directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    boot_order: Vec<BootDevice>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    shares: Vec<ShareSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<PortForward>,
    /// What the user-mode NIC reaches.
    #[serde(default, skip_serializing_if = "NetPolicy::is_default")]
    net_policy: NetPolicy,
    /// A Debian image's root disk size, when larger than the image's filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root_size: Option<ByteSize>,
    /// What cloud-init does at first boot (an image with cloud-init, such as `cloud`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cloud_init: Option<CloudInit>,
    /// Key/values and secrets by reference, on the guest's config drive.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    metadata: Metadata,
}

/// A device firmware boots from, in [`VmSpecBuilder::boot_order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootDevice {
    /// The first disk.
    Disk,
    /// PXE on the first NIC.
    Network,
}

impl std::fmt::Display for BootDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disk => "disk",
            Self::Network => "network",
        })
    }
}

impl TryFrom<VmSpecFields> for VmSpec {
    type Error = SpecError;
    fn try_from(fields: VmSpecFields) -> Result<Self, SpecError> {
        validate(&fields, host_memory_mib())?;
        Ok(Self { fields })
    }
}

impl From<VmSpec> for VmSpecFields {
    fn from(spec: VmSpec) -> Self {
        spec.fields
    }
}

impl VmSpec {
    /// Starts a spec named `name`: 1 vCPU, 512 MiB, the default image, no disks, and one
    /// user-mode (NAT) NIC unless NICs are given.
    pub fn builder(name: impl Into<String>) -> VmSpecBuilder {
        VmSpecBuilder {
            fields: VmSpecFields {
                name: name.into(),
                cpus: 1,
                memory_mib: 512,
                disks: Vec::new(),
                networks: Vec::new(),
                image: DEFAULT_IMAGE.to_owned(),
                accel: AccelChoice::Auto,
                boot_order: Vec::new(),
                shares: Vec::new(),
                ports: Vec::new(),
                net_policy: NetPolicy::default(),
                root_size: None,
                cloud_init: None,
                metadata: Metadata::default(),
            },
            networks_set: false,
        }
    }

    /// The VM's name: 1 to 63 of a-z, 0-9 and '-', starting with a letter or digit.
    pub fn name(&self) -> &str {
        &self.fields.name
    }
    /// The number of vCPUs, 1 to [`MAX_CPUS`].
    pub fn cpus(&self) -> u32 {
        self.fields.cpus
    }
    /// The guest's memory, in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.fields.memory_mib
    }
    /// The spec's own disks, in order; a Debian image's root disk is not among them.
    pub fn disks(&self) -> &[DiskSpec] {
        &self.fields.disks
    }
    /// The VM's NICs, in order; empty for a VM with no NIC.
    pub fn networks(&self) -> &[NetworkRef] {
        &self.fields.networks
    }
    /// The image the VM boots: [`DEFAULT_IMAGE`], or the name of a Debian image.
    pub fn image(&self) -> &str {
        &self.fields.image
    }
    /// Whether the VM boots a root disk: every image but `default` is a Debian userland.
    pub fn has_root_disk(&self) -> bool {
        self.fields.image != DEFAULT_IMAGE
    }
    /// The root disk's size asked for, if larger than the image's filesystem.
    pub fn root_size(&self) -> Option<ByteSize> {
        self.fields.root_size
    }
    /// What cloud-init does at first boot, if anything.
    pub fn cloud_init(&self) -> Option<&CloudInit> {
        self.fields.cloud_init.as_ref()
    }
    /// The user's metadata: key/values and secrets by reference.
    pub fn metadata(&self) -> &Metadata {
        &self.fields.metadata
    }
    /// This spec with its metadata's key/values replaced (`kiln metadata set`); secrets stay.
    pub fn with_metadata_values(
        &self,
        values: std::collections::BTreeMap<String, String>,
    ) -> Result<VmSpec, SpecError> {
        let mut fields = self.fields.clone();
        fields.metadata.values = values;
        VmSpec::try_from(fields)
    }
    /// How many disks the machine has: the root disk, if any, then the spec's own.
    pub fn machine_disk_count(&self) -> usize {
        self.fields.disks.len() + usize::from(self.has_root_disk())
    }
    /// The machine's disks' labels, in order (the root disk's first).
    pub fn machine_disk_labels(&self) -> Vec<Option<String>> {
        let root = self
            .has_root_disk()
            .then(|| Some(ROOT_DISK_LABEL.to_owned()));
        root.into_iter()
            .chain(
                self.fields
                    .disks
                    .iter()
                    .map(|d| d.label().map(str::to_owned)),
            )
            .collect()
    }
    /// The accelerator asked for: KVM, TCG, or whichever fits the host.
    pub fn accel(&self) -> AccelChoice {
        self.fields.accel
    }
    /// Firmware boot order; empty means direct kernel boot of the kiln image.
    pub fn boot_order(&self) -> &[BootDevice] {
        &self.fields.boot_order
    }
    /// The host directories shared into the guest.
    pub fn shares(&self) -> &[ShareSpec] {
        &self.fields.shares
    }
    /// The host ports forwarded to the guest's user-mode NIC.
    pub fn ports(&self) -> &[PortForward] {
        &self.fields.ports
    }
    /// What the user-mode NIC lets the guest reach.
    pub fn net_policy(&self) -> NetPolicy {
        self.fields.net_policy
    }
    /// The user-mode NIC's policy, `None` when the VM has no user-mode NIC.
    pub fn user_net(&self) -> Option<NetPolicy> {
        self.fields
            .networks
            .contains(&NetworkRef::User)
            .then_some(self.fields.net_policy)
    }

    /// The same spec under another name (a clone), validated again.
    pub fn renamed(&self, name: &str) -> Result<Self, SpecError> {
        let mut fields = self.fields.clone();
        fields.name = name.to_owned();
        Self::try_from(fields)
    }

    /// The same spec with one more port forward, validated again.
    pub fn with_port(&self, forward: PortForward) -> Result<Self, SpecError> {
        let mut fields = self.fields.clone();
        fields.ports.push(forward);
        Self::try_from(fields)
    }

    /// The same spec without a port forward (matched by protocol, address and host port).
    pub fn without_port(&self, forward: &PortForward) -> Self {
        let mut fields = self.fields.clone();
        fields.ports.retain(|p| {
            (p.protocol, p.host_addr, p.host_port)
                != (forward.protocol, forward.host_addr, forward.host_port)
        });
        Self { fields }
    }
}

/// Builds a [`VmSpec`]; [`build`](Self::build) validates.
#[derive(Debug, Clone)]
#[must_use]
pub struct VmSpecBuilder {
    fields: VmSpecFields,
    networks_set: bool,
}

impl VmSpecBuilder {
    /// Sets the number of vCPUs, 1 to [`MAX_CPUS`] (default 1).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.fields.cpus = cpus;
        self
    }
    /// Sets the guest's memory in MiB, at least [`MIN_MEMORY_MIB`] (default 512).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.fields.memory_mib = mib;
        self
    }
    /// Sets the guest's memory in GiB (default 512 MiB).
    pub fn memory_gib(mut self, gib: u64) -> Self {
        self.fields.memory_mib = gib.saturating_mul(1024);
        self
    }
    /// Sets the guest's memory from a size, rounded down to whole MiB (default 512 MiB).
    pub fn memory(mut self, size: ByteSize) -> Self {
        self.fields.memory_mib = size.mib();
        self
    }
    /// Adds a disk after those already added.
    pub fn disk(mut self, disk: DiskSpec) -> Self {
        self.fields.disks.push(disk);
        self
    }
    /// Shares a host directory into the guest.
    pub fn share(mut self, share: ShareSpec) -> Self {
        self.fields.shares.push(share);
        self
    }
    /// Forwards a host port to the guest (user-mode networking).
    pub fn port(mut self, forward: PortForward) -> Self {
        self.fields.ports.push(forward);
        self
    }
    /// Adds a NIC. Without any, a VM gets one user-mode (NAT) NIC.
    pub fn network(mut self, network: NetworkRef) -> Self {
        self.fields.networks.push(network);
        self.networks_set = true;
        self
    }
    /// What the user-mode NIC lets the guest reach (default [`NetPolicy::Nat`]: outbound
    /// NAT, not the host's loopback).
    pub fn net_policy(mut self, policy: NetPolicy) -> Self {
        self.fields.net_policy = policy;
        self
    }
    /// What cloud-init does at first boot; the image must have cloud-init (`cloud` does). Its
    /// data goes on a read-only `cidata` seed disk.
    pub fn cloud_init(mut self, cloud_init: CloudInit) -> Self {
        self.fields.cloud_init = Some(cloud_init);
        self
    }
    /// A metadata key/value: the guest reads it in `/run/kiln/config/metadata.json`. Keys
    /// are plain identifiers; values are text of up to 4 KiB. Not for secrets: see
    /// [`secret`](Self::secret).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.fields.metadata.set(key, value);
        self
    }
    /// A secret by reference: the host file `path` is read at each start (at most 64 KiB)
    /// and the guest finds its contents in `/run/kiln/config/secrets/NAME`, readable by root
    /// only. The spec keeps the path, never the secret.
    pub fn secret(mut self, name: impl Into<String>, path: impl AsRef<std::path::Path>) -> Self {
        self.fields.metadata.set_secret(name, path);
        self
    }
    /// Grows a Debian image's root disk (and its filesystem, on first boot) to this size.
    pub fn root_size(mut self, size: ByteSize) -> Self {
        self.fields.root_size = Some(size);
        self
    }
    /// No NIC at all.
    pub fn no_network(mut self) -> Self {
        self.fields.networks.clear();
        self.networks_set = true;
        self
    }
    /// Sets the image the VM boots (default [`DEFAULT_IMAGE`]; any other is a Debian image).
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.fields.image = image.into();
        self
    }
    /// Sets the accelerator (default [`AccelChoice::Auto`]).
    pub fn accel(mut self, accel: AccelChoice) -> Self {
        self.fields.accel = accel;
        self
    }
    /// Boots through firmware from these devices in order (e.g. PXE, then disk) instead of
    /// booting the kiln image's kernel directly.
    pub fn boot_order(mut self, devices: impl IntoIterator<Item = BootDevice>) -> Self {
        self.fields.boot_order = devices.into_iter().collect();
        self
    }

    /// Gives the VM one user-mode NIC if no NIC was set (nor [`no_network`](Self::no_network)),
    /// then validates the spec.
    pub fn build(mut self) -> Result<VmSpec, SpecError> {
        if !self.networks_set {
            self.fields.networks.push(NetworkRef::User);
        }
        VmSpec::try_from(self.fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_of_port_zero_is_refused() {
        for forward in [PortForward::tcp(0, 80), PortForward::udp(8080, 0)] {
            let err = VmSpec::builder("web").port(forward).build().unwrap_err();
            assert!(
                matches!(err, SpecError::PortZero { .. }),
                "{forward}: {err}"
            );
        }
        assert!(
            VmSpec::builder("web")
                .port(PortForward::tcp(8080, 80))
                .build()
                .is_ok()
        );
    }

    #[test]
    fn names_follow_the_documented_pattern() {
        for good in ["a", "web-1", "0vm", &"a".repeat(63)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "Web",
            "a_b",
            "a/b",
            "..",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(validate_name(bad), Err(SpecError::InvalidName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn builder_rejects_bad_cpu_and_memory() {
        assert_eq!(
            VmSpec::builder("a").cpus(0).build(),
            Err(SpecError::ZeroCpus)
        );
        assert!(matches!(
            VmSpec::builder("a").cpus(65).build(),
            Err(SpecError::TooManyCpus { cpus: 65, .. })
        ));
        assert!(matches!(
            VmSpec::builder("a").memory_mib(63).build(),
            Err(SpecError::MemoryTooSmall { memory_mib: 63, .. })
        ));
        assert!(matches!(
            validate(&VmSpec::builder("a").build().unwrap().fields, Some(256)),
            Err(SpecError::MemoryTooLarge { .. })
        ));
    }

    #[test]
    fn default_spec_has_one_user_nic_and_the_default_image() {
        let spec = VmSpec::builder("web-1").build().unwrap();
        assert_eq!(spec.networks(), &[NetworkRef::User]);
        assert_eq!(spec.image(), DEFAULT_IMAGE);
        assert_eq!(spec.cpus(), 1);
    }

    #[test]
    fn loaded_specs_go_through_the_same_validation() {
        let json = r#"{"name":"Bad Name","cpus":1,"memory_mib":512,"image":"default"}"#;
        let err = serde_json::from_str::<VmSpec>(json).unwrap_err();
        assert!(err.to_string().contains("invalid VM name"), "{err}");
        let unknown = r#"{"name":"a","cpus":1,"memory_mib":512,"image":"default","gpu":true}"#;
        assert!(serde_json::from_str::<VmSpec>(unknown).is_err());
    }

    #[test]
    fn nics_boot_order_and_disk_bases_are_checked() {
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        assert!(matches!(
            VmSpec::builder("a")
                .network(NetworkRef::named_with_mac("lab", mac))
                .network(NetworkRef::named_with_mac("lab2", mac))
                .build(),
            Err(SpecError::DuplicateMac { .. })
        ));
        assert!(matches!(
            VmSpec::builder("a").boot_order([BootDevice::Disk]).build(),
            Err(SpecError::BootDeviceMissing { .. })
        ));
        assert!(matches!(
            VmSpec::builder("a")
                .disk(DiskSpec::new_gib(1))
                .boot_order([BootDevice::Disk, BootDevice::Disk])
                .build(),
            Err(SpecError::DuplicateBootDevice { .. })
        ));
        assert!(matches!(
            VmSpec::builder("a")
                .disk(DiskSpec::new_gib(1).backed_by("base.qcow2"))
                .build(),
            Err(SpecError::RelativeDiskBase { .. })
        ));
        let spec = VmSpec::builder("web-1")
            .cpus(2)
            .memory_gib(1)
            .disk(DiskSpec::new_gib(4))
            .network(NetworkRef::named("lab"))
            .boot_order([BootDevice::Network, BootDevice::Disk])
            .build()
            .unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<VmSpec>(&json).unwrap(), spec);
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = VmSpec::builder("web-1")
            .cpus(2)
            .memory_gib(1)
            .disk(DiskSpec::new_gib(4))
            .build()
            .unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<VmSpec>(&json).unwrap(), spec);
    }
}
