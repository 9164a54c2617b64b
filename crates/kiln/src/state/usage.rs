//! How much disk kiln's state and caches take (`kiln cache info`): blocks allocated, so sparse
//! disks count for what they hold, and files linked twice count once.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;

use super::Paths;

/// Bytes on disk per kind of thing kiln keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Built images: boot kits and Debian root filesystems (cache).
    pub images: u64,
    /// Downloaded Debian packages (the kernel) (cache).
    pub debs: u64,
    /// Warm-start templates (cache; `kiln cache prune` removes them).
    pub templates: u64,
    /// Sessions' workspace images kept between sessions (cache; `kiln cache prune` removes
    /// them).
    pub workspaces: u64,
    /// Snapshots of VMs (data).
    pub snapshots: u64,
    /// VMs' own disks and files, snapshots left out (data).
    pub vms: u64,
    /// All of it.
    pub total: u64,
}

/// What each part of `paths` takes on disk. What cannot be read counts as nothing.
pub fn usage(paths: &Paths) -> Usage {
    let mut seen = HashSet::new();
    let mut usage = Usage {
        images: allocated(&paths.images_dir(), &mut seen),
        debs: allocated(&paths.debs_dir(), &mut seen),
        templates: allocated(&paths.templates_dir(), &mut seen),
        workspaces: allocated(&paths.workspace_images_dir(), &mut seen),
        ..Usage::default()
    };
    if let Ok(vms) = std::fs::read_dir(paths.vms_dir()) {
        for vm in vms.flatten() {
            usage.snapshots += allocated(&vm.path().join("snapshots"), &mut seen);
            usage.vms += allocated(&vm.path(), &mut seen);
        }
    }
    usage.total = usage.images
        + usage.debs
        + usage.templates
        + usage.workspaces
        + usage.snapshots
        + usage.vms;
    usage
}

/// Blocks allocated under `path`, each inode once (`seen` carries over between calls, so a
/// directory counted already counts as nothing again).
fn allocated(path: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !seen.insert((meta.dev(), meta.ino())) {
        return 0;
    }
    let mut bytes = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            bytes += allocated(&entry.path(), seen);
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_part_is_counted_once_and_sparse_files_for_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        std::fs::create_dir_all(paths.images_dir()).unwrap();
        std::fs::write(paths.images_dir().join("a"), vec![1u8; 64 * 1024]).unwrap();
        let vm = paths.vms_dir().join("web-1");
        std::fs::create_dir_all(vm.join("snapshots/s1")).unwrap();
        std::fs::write(vm.join("snapshots/s1/memory"), vec![1u8; 128 * 1024]).unwrap();
        let sparse = std::fs::File::create(vm.join("disk0.qcow2")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        let usage = usage(&paths);
        assert!(usage.images >= 64 * 1024, "{usage:?}");
        assert!(usage.snapshots >= 128 * 1024, "{usage:?}");
        // The snapshot is not counted again with its VM, nor the sparse gigabyte.
        assert!(usage.vms < 64 * 1024, "{usage:?}");
        assert_eq!(usage.templates, 0);
        assert_eq!(
            usage.total,
            usage.images + usage.debs + usage.templates + usage.snapshots + usage.vms
        );
    }
}
