use serde::{Deserialize, Serialize};

use crate::{Accel, VmSpec};

/// Bumped when the record's meaning changes; new fields use `#[serde(default)]` instead.
pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Qemu,
}

/// What kiln knows about one VM, stored as `vm.json` in its directory. Unknown fields are
/// refused, not dropped: a record a newer kiln wrote is left as it is
/// ([`crate::Error::NewerState`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    pub version: u32,
    /// The VM's id (a UUID), made when the VM is; a clone gets its own. Records written
    /// before ids existed have none here: [`VmRecord::settle_id`] gives them a fixed one.
    #[serde(default)]
    pub id: String,
    pub spec: VmSpec,
    pub backend: BackendKind,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// The image's manifest digest the VM was created from.
    pub image_digest: String,
    /// Whether the user wants it running: a dead QEMU with `true` here crashed or was killed.
    #[serde(default)]
    pub should_run: bool,
    /// The machine process last started.
    #[serde(default)]
    pub machine: Option<MachineRecord>,
    /// Why the last boot or stop went wrong, shown by `kiln ls`.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The score that created it; `None` for a VM made by `kiln up`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The file each disk writes to now, when a snapshot moved it to an overlay; empty
    /// means the VM's own `diskN.qcow2`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk_files: Vec<std::path::PathBuf>,
    /// Set while `up` (or `clone`) makes the VM, cleared when it is ready or its boot failed.
    /// Found set with the VM's lock free, it is what a killed `up` left: rolled back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creating: bool,
}

/// A new VM id: a random (version 4) UUID.
pub fn new_vm_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A UUID fixed by `text`: the same text, the same UUID (the first bytes of its SHA-256).
pub fn uuid_of(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

impl VmRecord {
    /// Gives a record from before ids existed one that stays the same at every read: made
    /// from its name and creation time.
    pub fn settle_id(&mut self) {
        if self.id.is_empty() {
            self.id = uuid_of(&format!("{}:{}", self.spec.name(), self.created_at));
        }
    }

    /// The file each disk of the VM writes to.
    pub fn disk_files(&self, paths: &super::VmPaths) -> Vec<std::path::PathBuf> {
        (0..self.spec.machine_disk_count())
            .map(|i| {
                self.disk_files
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| paths.disk(i))
            })
            .collect()
    }
}

/// A started QEMU process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineRecord {
    pub pid: u32,
    pub accel: Accel,
    pub accel_reason: String,
    pub started_at: u64,
    /// The guest CPU model QEMU was started with; `None` in the records of a kiln that did
    /// not write it down (see [`cpu_model`](Self::cpu_model)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

impl MachineRecord {
    /// The guest CPU model the machine runs: the one recorded, else what kiln used before
    /// it recorded one (`max` under TCG, `host` under KVM).
    pub fn cpu_model(&self) -> String {
        crate::qemu::cpu_or_legacy(self.cpu.as_deref(), self.accel)
    }
}
