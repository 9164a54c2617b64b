//! Workspace images kept between sessions. The first session on a directory writes its ext4
//! image (`mkfs.ext4 -d`) into the cache, with the stamps of the files it holds; a later
//! session on the same directory starts from that image, through a qcow2 overlay of its own
//! (the guest never writes the cached image), and then receives only the files that changed
//! since, over the agent. An image that is too far behind is written anew.
//!
//! `<cache>/workspaces/<key>/image.raw` and `stamps.json`, `<key>` naming the directory's
//! canonical path; one kiln at a time reads or replaces them (`<key>.lock`). A session links
//! the image it starts from (`ws-<pid>-<random>.base`), so that an image replaced meanwhile
//! is not the one its overlay reads through; the link goes when its VM has opened it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::stamps::{Stamp, scan};
use super::{Diff, WorkspaceImage, sweep_workspace_images};
use crate::copy::GuestPath;
use crate::image::workspace_drive;
use crate::state::{self, Lock, Paths};
use crate::{IoError, Result};

/// A cached image is reused while at most this many files changed since it was written...
const MAX_CHANGED_FILES: usize = 2_000;
/// ...holding at most this many bytes (they go over the agent at ~50 MB/s under TCG).
const MAX_CHANGED_BYTES: u64 = 64 << 20;

/// What a session starts from: the drive to give its VM and the files the drive holds.
pub(super) struct Prepared {
    /// The workspace drive: a qcow2 overlay on the cached image (removed when dropped, by
    /// which time the VM's directory links it).
    pub drive: WorkspaceImage,
    /// The link the overlay reads through (removed when dropped).
    pub _base: WorkspaceImage,
    /// The files in the image as it was written, with their stamps.
    pub stamps: BTreeMap<GuestPath, Stamp>,
    /// Whether the image was written for this session (else reused).
    pub written: bool,
}

/// `stamps.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StampFile {
    format: u32,
    /// Path, size, modification time.
    files: Vec<(String, u64, i64)>,
}

const STAMP_FORMAT: u32 = 1;

/// The cache's directory for `workspace`, and its lock file.
fn entry(paths: &Paths, workspace: &Path) -> Result<(PathBuf, PathBuf)> {
    let canonical = workspace
        .canonicalize()
        .map_err(IoError::at("resolve", workspace))?;
    let mut hasher = Sha256::new();
    hasher.update(canonical.as_os_str().as_encoded_bytes());
    let key = hex::encode(hasher.finalize())[..16].to_owned();
    let root = paths.workspace_images_dir();
    Ok((root.join(&key), root.join(format!("{key}.lock"))))
}

/// Makes (or reuses) the image of `workspace`, and the overlay and link a session's VM
/// starts from. Blocking.
pub(super) fn prepare(paths: &Paths, workspace: &Path) -> Result<Prepared> {
    let (dir, lock) = entry(paths, workspace)?;
    state::create_private_dir(&paths.workspace_images_dir())?;
    let _lock = Lock::acquire(&lock)?;
    state::create_private_dir(&dir)?;
    sweep_workspace_images(&dir);
    let (image, stamp_file) = (dir.join("image.raw"), dir.join("stamps.json"));
    let now = scan(workspace)?;
    let cached = if image.exists() {
        read_stamps(&stamp_file)
    } else {
        None
    };
    let reusable = cached.filter(|cached| {
        let diff = Diff::between(cached, &now);
        let changed: Vec<&GuestPath> = diff.wanted().collect();
        let bytes: u64 = changed
            .iter()
            .filter_map(|path| now.get(*path))
            .map(|stamp| stamp.size)
            .sum();
        changed.len() <= MAX_CHANGED_FILES && bytes <= MAX_CHANGED_BYTES
    });
    let (stamps, written) = match reusable {
        Some(cached) => (cached, false),
        None => {
            // Written beside, then renamed over the old one: a session that links the old
            // one keeps it.
            let fresh = WorkspaceImage::new(&dir)?;
            workspace_drive::make(workspace, &fresh.0)?;
            std::fs::rename(&fresh.0, &image).map_err(IoError::at("move into place", &image))?;
            write_stamps(&stamp_file, &now)?;
            (now, true)
        }
    };
    let base = WorkspaceImage::new(&dir)?;
    std::fs::hard_link(&image, &base.0).map_err(IoError::at("link", &base.0))?;
    let drive = WorkspaceImage::new(&paths.workspaces_dir())?;
    Ok(Prepared {
        drive,
        _base: base,
        stamps,
        written,
    })
}

fn read_stamps(file: &Path) -> Option<BTreeMap<GuestPath, Stamp>> {
    let stamps: StampFile = match state::read_json(file) {
        Ok(Some(stamps)) => stamps,
        Ok(None) => return None,
        Err(err) => {
            log::warn!("the workspace image's stamps are unreadable ({err}); writing it anew");
            return None;
        }
    };
    if stamps.format != STAMP_FORMAT {
        return None;
    }
    let mut out = BTreeMap::new();
    for (path, size, mtime) in stamps.files {
        out.insert(
            GuestPath::parse(path.as_bytes()).ok()?,
            Stamp { size, mtime },
        );
    }
    Some(out)
}

/// Writes the stamps; a workspace with a name that is not UTF-8 gets none (its image is
/// written anew each time).
fn write_stamps(file: &Path, stamps: &BTreeMap<GuestPath, Stamp>) -> Result<()> {
    let mut files = Vec::with_capacity(stamps.len());
    for (path, stamp) in stamps {
        let Some(name) = path.to_path_buf().to_str().map(str::to_owned) else {
            let _ = std::fs::remove_file(file);
            return Ok(());
        };
        files.push((name, stamp.size, stamp.mtime));
    }
    state::write_json_atomic(
        file,
        &StampFile {
            format: STAMP_FORMAT,
            files,
        },
    )
}

/// Removes the image kept for `workspace`, if any.
pub(super) fn forget(paths: &Paths, workspace: &Path) {
    if let Ok((dir, lock)) = entry(paths, workspace)
        && let Ok(_lock) = Lock::acquire(&lock)
    {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&lock);
    }
}

/// Removes every cached workspace image (`kiln cache prune`): sessions running from one keep
/// it open. Returns how many.
pub(super) fn prune(paths: &Paths) -> Result<usize> {
    let root = paths.workspace_images_dir();
    let mut removed = 0;
    for name in state::list_names(&root).unwrap_or_default() {
        let dir = root.join(&name);
        if name.ends_with(".lock") || !dir.is_dir() {
            continue;
        }
        let _lock = Lock::acquire(&root.join(format!("{name}.lock")))?;
        std::fs::remove_dir_all(&dir).map_err(IoError::at("remove", &dir))?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_image_is_reused_while_little_changed_and_written_anew_after() {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths::under(home.path());
        let ws = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join("a.txt"), "a\n").unwrap();
        let first = prepare(&paths, ws.path()).unwrap();
        assert!(first.written);
        assert_eq!(first.stamps.len(), 1);
        drop(first);

        std::fs::write(ws.path().join("b.txt"), "b\n").unwrap();
        let second = prepare(&paths, ws.path()).unwrap();
        assert!(!second.written, "one new file does not rewrite the image");
        assert_eq!(
            second.stamps.len(),
            1,
            "the stamps are the image's, not the host's"
        );
        let base = second._base.0.clone();
        assert!(base.exists());
        drop(second);
        assert!(!base.exists(), "the link goes with the session");

        for i in 0..MAX_CHANGED_FILES + 1 {
            std::fs::write(ws.path().join(format!("n{i}")), "").unwrap();
        }
        let third = prepare(&paths, ws.path()).unwrap();
        assert!(third.written, "too far behind: written anew");
        assert_eq!(third.stamps.len(), MAX_CHANGED_FILES + 3);
        drop(third);
        assert_eq!(prune(&paths).unwrap(), 1);
        assert!(prepare(&paths, ws.path()).unwrap().written);
    }
}
