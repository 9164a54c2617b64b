//! What a VM should be: [`VmSpec`] and its parts, built and loaded through one check (`validate.rs`).

mod cloud_init;
mod disk;
mod error;
mod mac;
mod metadata;
mod network;
mod port;
mod share;
mod size;
mod validate;

pub use cloud_init::{CloudInit, CloudInitError, CloudNic, MAX_USER_DATA};
pub use disk::{DiskSpec, MAX_LABEL_LEN, ROOT_DISK_LABEL};
pub use error::SpecError;
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

use serde::{Deserialize, Serialize};

use crate::accel::AccelChoice;
use validate::{host_memory_mib, validate};

/// The smallest memory a kiln guest boots with.
pub const MIN_MEMORY_MIB: u64 = 64;
/// The most vCPUs a kiln VM may have.
pub const MAX_CPUS: u32 = 64;
/// The image used when a spec names none.
pub const DEFAULT_IMAGE: &str = "default";

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
