use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::IoError;

/// Bumped whenever the image layout or init changes, so old caches are rebuilt.
pub const IMAGE_FORMAT: u32 = 5;

/// A file kiln read or wrote, with what identifies its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    pub path: PathBuf,
    pub size: u64,
    /// Modification time in nanoseconds; a changed size or mtime means hash again.
    pub mtime_ns: i128,
    pub sha256: String,
}

impl FileStamp {
    pub fn of(path: &Path) -> Result<Self, IoError> {
        let meta = std::fs::metadata(path).map_err(IoError::at("stat", path))?;
        Ok(Self {
            path: path.to_owned(),
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
            sha256: sha256_file(path)?,
        })
    }

    /// Whether `path` still has this content, hashing only when size or mtime moved.
    pub fn matches(&self, path: &Path) -> bool {
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        if path == self.path && meta.len() == self.size && mtime_ns(&meta) == self.mtime_ns {
            return true;
        }
        meta.len() == self.size && sha256_file(path).is_ok_and(|sum| sum == self.sha256)
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

pub fn sha256_file(path: &Path) -> Result<String, IoError> {
    let mut file = std::fs::File::open(path).map_err(IoError::at("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(IoError::at("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What an image was built from and what it consists of: `manifest.json` in its directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub kernel_package: String,
    pub kernel_release: String,
    pub inputs: Inputs,
    pub vmlinux: FileStamp,
    pub initramfs: FileStamp,
    pub modules: Vec<String>,
    /// Seconds since the Unix epoch.
    pub built_at: u64,
    /// The init scripts' digest ([`super::initramfs::scripts_digest`]).
    #[serde(default)]
    pub scripts: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inputs {
    pub kernel_deb: FileStamp,
    pub busybox: FileStamp,
    pub agent: FileStamp,
}

impl Manifest {
    /// A short digest naming this exact build (of the outputs' checksums).
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.vmlinux.sha256.as_bytes());
        hasher.update(self.initramfs.sha256.as_bytes());
        hex::encode(&hasher.finalize()[..8])
    }
}
