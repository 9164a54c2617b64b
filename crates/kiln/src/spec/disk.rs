use serde::{Deserialize, Serialize};

use super::ByteSize;

/// A virtual disk: a qcow2 file in the VM's directory, seen as `/dev/vdX` by the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    size: ByteSize,
}

impl DiskSpec {
    pub fn new(size: ByteSize) -> Self {
        Self { size }
    }
    pub fn new_gib(gib: u64) -> Self {
        Self::new(ByteSize::from_gib(gib))
    }
    pub fn size(&self) -> ByteSize {
        self.size
    }
}
