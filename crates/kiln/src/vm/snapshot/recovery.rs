//! What a `snapshot save` or `snapshot restore` killed part-way leaves of a VM, finished by
//! the next command that finds it (under the VM's lock): a paused machine resumed, an
//! unfinished snapshot removed, a machine loading a state no one will give it stopped, and
//! the overlays nothing reads through deleted.

use std::path::{Path, PathBuf};

use super::{RESTORING_MARKER, RESUME_MARKER, SnapshotMeta};
use crate::state::{self, VmPaths};
use crate::vm::{Kiln, read_record};
use crate::{IoError, Result};

impl Kiln {
    /// Finishes what a `snapshot save` killed part-way left of VM `name`, when no kiln works
    /// on it: the VM runs again if the save paused it, the unfinished snapshot goes, and so
    /// do overlays nothing reads through. Returns whether it found one.
    pub(in crate::vm) async fn finish_interrupted_save(&self, name: &str) -> Result<bool> {
        let paths = self.paths.vm(name);
        let root = paths.dir().join("snapshots");
        let partial: Vec<String> = state::list_names(&root)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with('.') && n.ends_with(".partial"))
            .collect();
        if partial.is_empty() {
            return Ok(false);
        }
        let Some(_lock) = state::Lock::try_acquire(paths.lock())? else {
            return Ok(false);
        };
        let Some(record) = read_record(&paths)? else {
            return Ok(false);
        };
        for dir in &partial {
            let dir = root.join(dir);
            if dir.join(RESUME_MARKER).exists() && self.backend.running_pid(&paths).await.is_some()
            {
                log::info!("{name}: resuming it after an interrupted snapshot save");
                self.backend.set_paused(&paths, false).await?;
            }
            std::fs::remove_dir_all(&dir).map_err(IoError::at("remove", &dir))?;
        }
        self.forget_unused_overlays(&paths, &record).await?;
        Ok(true)
    }

    /// Finishes what a `snapshot restore` killed while QEMU loaded the state left of VM
    /// `name`, when no kiln works on it: a machine waiting for a state no one will give it,
    /// or running on disks its record does not name. It is stopped, on the record's disks,
    /// and the overlays the restore made go. Returns whether it found one.
    pub(in crate::vm) async fn finish_interrupted_restore(&self, name: &str) -> Result<bool> {
        let paths = self.paths.vm(name);
        let marker = paths.dir().join(RESTORING_MARKER);
        if !marker.exists() {
            return Ok(false);
        }
        let Some(_lock) = state::Lock::try_acquire(paths.lock())? else {
            return Ok(false);
        };
        let Some(record) = read_record(&paths)? else {
            return Ok(false);
        };
        // The disks the restore gave the machine. Read under the lock: a restore that
        // finished meanwhile took its marker away, and its machine is not touched.
        let restored: Vec<PathBuf> = match state::read_json(&marker) {
            Ok(Some(disks)) => disks,
            Ok(None) => return Ok(false),
            Err(err) => {
                log::warn!("{name}: an unreadable restore marker ({err}); removing it");
                let _ = std::fs::remove_file(&marker);
                return Ok(false);
            }
        };
        // When the record names them, the restore finished but for the marker.
        if restored != record.disk_files {
            log::info!("{name}: stopping the machine an interrupted restore left");
            self.backend.kill(&paths).await?;
        }
        self.forget_unused_overlays(&paths, &record).await?;
        state::remove_file_if_present(&marker)?;
        Ok(true)
    }

    /// Removes the overlays in the VM's directory that no disk of `record` reads through
    /// (made for a save or a restore that did not finish). The record's disks may read
    /// through overlays of earlier interrupted saves: their whole chains stay.
    async fn forget_unused_overlays(
        &self,
        paths: &VmPaths,
        record: &state::VmRecord,
    ) -> Result<()> {
        let made: Vec<PathBuf> = state::list_names(paths.dir())
            .unwrap_or_default()
            .into_iter()
            .map(|n| paths.dir().join(n))
            .filter(|f| is_overlay(f, paths))
            .collect();
        let mut keep = Vec::new();
        for file in record.disk_files(paths) {
            keep.extend(self.backend.backing_chain(&file).await?);
        }
        self.forget_overlays(paths, &made, &keep).await;
        Ok(())
    }

    /// Deletes overlays a restore replaced, unless a snapshot reads through them.
    pub(super) async fn forget_overlays(
        &self,
        paths: &VmPaths,
        old: &[PathBuf],
        current: &[PathBuf],
    ) {
        let root = paths.dir().join("snapshots");
        let mut frozen: Vec<PathBuf> = Vec::new();
        for snapshot in state::list_names(&root).unwrap_or_default() {
            if let Ok(Some(meta)) =
                state::read_json::<SnapshotMeta>(&root.join(&snapshot).join("meta.json"))
            {
                for disk in meta.disks {
                    match self.backend.backing_chain(&disk).await {
                        Ok(chain) => frozen.extend(chain),
                        Err(_) => frozen.push(disk),
                    }
                }
            }
        }
        for file in old {
            if !frozen.contains(file) && !current.contains(file) && is_overlay(file, paths) {
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

/// An overlay kiln made (`diskN-STAMP.qcow2` in the VM's directory), not the VM's first file.
fn is_overlay(file: &Path, paths: &VmPaths) -> bool {
    file.parent() == Some(paths.dir())
        && file
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("disk") && n.contains('-'))
}
