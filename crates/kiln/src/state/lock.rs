use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::{FlockOperation, flock};

use crate::{IoError, Result};

/// An advisory lock on a file, exclusive or shared, released when dropped or when the process
/// dies (so a killed kiln never leaves a lock behind).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Waits until the lock is free. Blocking: call from `spawn_blocking`.
    pub fn acquire(path: &Path) -> Result<Self> {
        // A blocking flock never reports "busy"; the error only keeps the types honest.
        Self::take(path, FlockOperation::LockExclusive)?
            .ok_or_else(|| IoError::new("lock", path, std::io::ErrorKind::WouldBlock.into()).into())
    }

    /// Waits until no one holds the lock exclusively, and shares it: readers (a clone starting
    /// from a VM's files) together, writers (removing those files) kept out. Blocking.
    pub fn acquire_shared(path: &Path) -> Result<Self> {
        Self::take(path, FlockOperation::LockShared)?
            .ok_or_else(|| IoError::new("lock", path, std::io::ErrorKind::WouldBlock.into()).into())
    }

    /// Takes the lock if it is free; `None` when another process holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<Self>> {
        Self::take(path, FlockOperation::NonBlockingLockExclusive)
    }

    fn take(path: &Path, operation: FlockOperation) -> Result<Option<Self>> {
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
        match flock(&file, operation) {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(IoError::new("lock", path, e.into()).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shared_holders_coexist_and_keep_an_exclusive_one_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.lock");
        let a = Lock::acquire_shared(&path).unwrap();
        let b = Lock::acquire_shared(&path).unwrap();
        assert!(Lock::try_acquire(&path).unwrap().is_none());
        drop(a);
        assert!(Lock::try_acquire(&path).unwrap().is_none());
        drop(b);
        assert!(Lock::try_acquire(&path).unwrap().is_some());
    }
}
