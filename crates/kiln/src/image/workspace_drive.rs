//! The workspace drive: a disk every VM of the daemonless backend has, serial
//! `kiln-workspace`, blank unless a session gives it a workspace. A session copies its host
//! directory into an ext4 image with `mkfs.ext4 -d` (on the host, nothing mounted: 0.2 s for
//! 5,000 files and 50 MB, where unpacking them in a TCG guest took 3.4 s), the machine starts
//! with that image as this drive, and the session mounts it at `/workspace`.
//!
//! The drive has one size for every VM: a warm clone's drive replaces its template's under a
//! running guest, whose driver read the capacity at boot (as with the config drive). A
//! session's drive is a qcow2 overlay on its workspace image (see `session::image_cache`):
//! it takes what the guest writes, up to the drive's size. Any other VM's drive is no file at
//! all: QEMU's `null-co` device, which reads zeros and keeps nothing.
//!
//! The guest may write anything to its drive; the host never reads it back as a filesystem.
//! What comes back, comes back through the agent, confined like any pull.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use crate::{IoError, Result};

/// The drive's virtio serial and filesystem label.
pub const LABEL: &str = "kiln-workspace";
/// The drive's size: what a session's command may write into its workspace, all told.
pub const SIZE: u64 = 32 << 30;

/// Writes the host directory `dir` into a new ext4 image at `image` (which must not exist),
/// the size of the drive. Owners, modes, times and symlinks are kept as they are on the host.
pub fn make(dir: &Path, image: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(image)
        .map_err(IoError::at("create", image))?;
    file.set_len(SIZE).map_err(IoError::at("size", image))?;
    drop(file);
    let made = super::debian::run_tool(
        Command::new("mkfs.ext4")
            // No journal (a session's disk does not outlive a crash), no blocks kept for root,
            // and inode tables left for the kernel (the guest mounts with `noinit_itable`).
            .args(["-q", "-F", "-L", LABEL, "-m", "0", "-O", "^has_journal"])
            .args(["-E", "root_owner=0:0,lazy_itable_init=1"])
            .arg("-d")
            .arg(dir)
            .arg(image),
    );
    if made.is_err() {
        let _ = std::fs::remove_file(image);
    }
    Ok(made?)
}

/// The format of every workspace drive file: a qcow2 overlay kiln made on a workspace image.
/// Fixed, never probed: the guest writes the drive's data, and a probe of a file whose first
/// bytes a guest chose could take them for a qcow2 header naming any host file as backing.
pub const FORMAT: &str = "qcow2";

/// Gives a machine its drive at `drive`: the session's overlay `workspace` (linked, not
/// copied: it is in the same data directory). Returns the file to attach; `None` when the
/// start is not a session's: the machine gets a drive that reads zeros and keeps nothing, so
/// a VM that is not a session's can write no byte to the host's disk through it. A drive
/// left by an earlier start goes (a session VM does not restart with its workspace).
pub fn attach(workspace: Option<&Path>, drive: &Path) -> Result<Option<std::path::PathBuf>> {
    crate::state::remove_file_if_present(drive)?;
    let Some(image) = workspace else {
        return Ok(None);
    };
    std::fs::hard_link(image, drive).map_err(IoError::at("link the workspace to", drive))?;
    Ok(Some(drive.to_owned()))
}

/// The guest's side, run as a helper command: finds the drive by its serial, drops what the
/// kernel cached of it (a warm clone's guest read its template's blank drive at boot), and
/// mounts it at `$1`.
///
/// Shell builtins where they do: each program started costs ~10 ms in a TCG guest.
pub const MOUNT_SCRIPT: &str = r#"set -e
dev=
for b in /sys/block/vd*; do
  s=
  read -r s < "$b/serial" || true
  if [ "$s" = kiln-workspace ]; then dev="/dev/${b##*/}"; fi
done
if [ -z "$dev" ]; then echo "this VM has no workspace drive" >&2; exit 1; fi
blockdev --flushbufs "$dev"
[ -d "$1" ] || mkdir -p "$1"
mount -t ext4 -o noinit_itable "$dev" "$1"
"#;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_workspace_image_is_sparse_and_holds_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("src")).unwrap();
        std::fs::write(tree.join("src/main.rs"), "fn main() {}\n").unwrap();
        std::os::unix::fs::symlink("../outside", tree.join("link")).unwrap();
        let image = dir.path().join("ws.img");
        make(&tree, &image).unwrap();
        let meta = std::fs::metadata(&image).unwrap();
        assert_eq!(meta.len(), SIZE);
        assert!(
            std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 64 << 20,
            "the image is not sparse"
        );
        let listing = Command::new("debugfs")
            .args(["-R", "ls -p /src"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&listing.stdout).contains("main.rs"));
        // An image is made once: an existing file is not written over.
        assert!(make(&tree, &image).is_err());
        assert!(image.exists());
    }

    #[test]
    fn a_drive_is_the_sessions_overlay_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let drive = dir.path().join("workspace.img");
        assert_eq!(attach(None, &drive).unwrap(), None);
        assert!(!drive.exists(), "a blank drive takes no file");
        let overlay = dir.path().join("overlay.qcow2");
        std::fs::write(&overlay, b"an overlay").unwrap();
        assert_eq!(attach(Some(&overlay), &drive).unwrap(), Some(drive.clone()));
        assert_eq!(std::fs::read(&drive).unwrap(), b"an overlay");
        // What a guest wrote is not attached again: the next start is not a session's.
        assert_eq!(attach(None, &drive).unwrap(), None);
        assert!(!drive.exists());
    }
}
