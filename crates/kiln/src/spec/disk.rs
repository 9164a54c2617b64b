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
}

impl DiskSpec {
    pub fn new(size: ByteSize) -> Self {
        Self { size, base: None }
    }
    pub fn new_gib(gib: u64) -> Self {
        Self::new(ByteSize::from_gib(gib))
    }
    /// A copy-on-write overlay on a qcow2 base image at this absolute path on the VM's host.
    #[must_use]
    pub fn backed_by(mut self, base: impl Into<PathBuf>) -> Self {
        self.base = Some(base.into());
        self
    }
    pub fn size(&self) -> ByteSize {
        self.size
    }
    pub fn base(&self) -> Option<&Path> {
        self.base.as_deref()
    }
}
