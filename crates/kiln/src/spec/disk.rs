use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ByteSize;

/// A virtual disk: a qcow2 file (a volume in kiln's pool on libvirt), seen as `/dev/vdX` by the
/// guest. With a base it is a copy-on-write overlay: reads fall through to the base image,
/// writes stay in the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    size: ByteSize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

/// The label (virtio serial) of a Debian image's root disk.
pub const ROOT_DISK_LABEL: &str = "kiln-root";
/// virtio-blk serials hold at most 20 bytes.
pub const MAX_LABEL_LEN: usize = 20;

/// Whether `label` can name a disk: 1 to 20 of `a-z 0-9 - _`, and not the root disk's.
/// Serials kiln gives disks of its own: the root disk, the config drive, the cloud-init seed.
const RESERVED_LABELS: [&str; 3] = [ROOT_DISK_LABEL, "kiln-config", "cidata"];

pub fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && !RESERVED_LABELS.contains(&label)
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl DiskSpec {
    /// A blank disk of this size, with no base and no label.
    pub fn new(size: ByteSize) -> Self {
        Self {
            size,
            base: None,
            label: None,
        }
    }
    /// A blank disk of `gib` GiB, with no base and no label.
    pub fn new_gib(gib: u64) -> Self {
        Self::new(ByteSize::from_gib(gib))
    }
    /// A copy-on-write overlay on a qcow2 base image at this absolute path on the VM's host.
    #[must_use]
    pub fn backed_by(mut self, base: impl Into<PathBuf>) -> Self {
        self.base = Some(base.into());
        self
    }
    /// A label the guest sees as `/dev/disk/by-id/virtio-LABEL` (the disk's virtio serial):
    /// up to 20 of `a-z 0-9 - _`.
    #[must_use]
    pub fn labeled(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
    /// The root disk of a Debian image: an overlay on its base, labelled [`ROOT_DISK_LABEL`].
    pub(crate) fn root(size: ByteSize, base: &Path) -> Self {
        Self {
            size,
            base: Some(base.to_owned()),
            label: Some(ROOT_DISK_LABEL.to_owned()),
        }
    }
    /// The disk's label, if it has one.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
    /// The disk's size as the guest sees it.
    pub fn size(&self) -> ByteSize {
        self.size
    }
    /// The base image this disk is an overlay on, if it has one.
    pub fn base(&self) -> Option<&Path> {
        self.base.as_deref()
    }
}
