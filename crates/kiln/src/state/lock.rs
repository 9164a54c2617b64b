use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::{FlockOperation, flock};

use crate::{IoError, Result};

/// An exclusive advisory lock on a file, released when dropped or when the process dies
/// (so a killed kiln never leaves a lock behind).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Waits until the lock is free. Blocking: call from `spawn_blocking`.
    pub fn acquire(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            super::create_private_dir(parent)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(IoError::at("open lock file", path))?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| IoError::new("lock", path, e.into()))?;
        Ok(Self { _file: file })
    }
}
