//! Workspace images kept between sessions. The first session on a directory writes its ext4
//! image (`mkfs.ext4 -d`) into the cache, with the stamps of the files it holds; a later
//! session on the same directory starts from that image, through a qcow2 overlay of its own
//! (the guest never writes the cached image), and then receives only the files that changed
//! since, over the agent. An image that is too far behind is written anew.
//!
//! `<cache>/workspaces/<key>/image.raw` and `stamps.json`, `<key>` naming the directory's
//! canonical path. One kiln at a time reads, replaces or prunes them (`<key>.lock`), and a
//! session holds that lock until its VM has the image open. A session links the image it
//! starts from (`ws-<pid>-<random>.img`); the link goes when its VM has opened it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::stamps::{Entry, Stamp, walk};
use super::{WorkspaceImage, sweep_workspace_images};
use crate::copy::GuestPath;
use crate::image::workspace_drive;
use crate::state::{self, Lock, Paths};
use crate::{IoError, Result};

/// A cached image is reused while at most this many files changed since it was written...
const MAX_CHANGED_FILES: usize = 2_000;
/// ...holding at most this many bytes (they go over the agent at ~50 MB/s under TCG).
const MAX_CHANGED_BYTES: u64 = 64 << 20;
/// Times an image is written again when the directory changed while `mkfs` read it.
const WRITE_ATTEMPTS: usize = 3;

/// What a session starts from: the drive to give its VM, the files the drive holds, and
/// what to change in the guest so that it holds the host's files.
pub(super) struct Prepared {
    /// The workspace drive: a qcow2 overlay on the cached image (removed when dropped, by
    /// which time the VM's directory links it).
    pub drive: WorkspaceImage,
    /// The link the overlay reads through (removed when dropped).
    pub _base: WorkspaceImage,
    /// The cache entry's lock, held until the VM has its drive open: no other kiln replaces
    /// or prunes the image meanwhile.
    pub _lock: Lock,
    /// The host's files now, as a session compares them.
    pub stamps: BTreeMap<GuestPath, Stamp>,
    /// Files the host has and the image not: to send.
    pub created: Vec<GuestPath>,
    /// Files that differ between the image and the host: to send.
    pub changed: Vec<GuestPath>,
    /// Files in the image that the host no longer has: to delete.
    pub deleted: Vec<GuestPath>,
    /// Whether the image was written for this session (else reused).
    pub written: bool,
}

/// A file as the cache tells versions apart: finer than a session's [`Stamp`] (which must
/// match what a guest's `stat` says), so that a same-size rewrite within a second, a
/// `chmod` or a file restored with its old time is still seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprint {
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
    ino: u64,
}

/// The directory as `mkfs` may have read it: every file's fingerprint, and every
/// directory's modification time (a file made and deleted meanwhile changes its directory's).
#[derive(Debug, PartialEq, Eq)]
struct Tree {
    files: BTreeMap<GuestPath, Fingerprint>,
    dirs: BTreeMap<PathBuf, (i64, i64)>,
}

fn read_tree(root: &Path) -> Result<Tree> {
    use std::os::unix::fs::MetadataExt;
    let mut tree = Tree {
        files: BTreeMap::new(),
        dirs: BTreeMap::new(),
    };
    walk(root, |entry| match entry {
        Entry::File(path, meta) => {
            tree.files.insert(
                path,
                Fingerprint {
                    size: meta.len(),
                    mtime: meta.mtime(),
                    mtime_nsec: meta.mtime_nsec(),
                    ctime: meta.ctime(),
                    ctime_nsec: meta.ctime_nsec(),
                    ino: meta.ino(),
                },
            );
        }
        Entry::Dir(path, meta) => {
            tree.dirs
                .insert(path.to_owned(), (meta.mtime(), meta.mtime_nsec()));
        }
    })?;
    Ok(tree)
}

/// `stamps.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StampFile {
    format: u32,
    /// Each file in the image, by path.
    files: Vec<(String, Fingerprint)>,
}

const STAMP_FORMAT: u32 = 2;

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
    let lock = Lock::acquire(&lock)?;
    state::create_private_dir(&dir)?;
    sweep_workspace_images(&dir);
    let (image, stamp_file) = (dir.join("image.raw"), dir.join("stamps.json"));
    let now = read_tree(workspace)?;
    let cached = if image.exists() {
        read_stamps(&stamp_file)
    } else {
        None
    };
    let reusable = cached.filter(|cached| {
        let changed: Vec<&GuestPath> = now
            .files
            .iter()
            .filter(|(path, print)| cached.get(*path) != Some(*print))
            .map(|(path, _)| path)
            .collect();
        let bytes: u64 = changed
            .iter()
            .filter_map(|path| now.files.get(*path))
            .map(|print| print.size)
            .sum();
        changed.len() <= MAX_CHANGED_FILES && bytes <= MAX_CHANGED_BYTES
    });
    let (in_image, now, written) = match reusable {
        Some(cached) => (cached, now, false),
        None => write_image(workspace, &dir, &image, &stamp_file, now)?,
    };
    let (mut created, mut changed) = (Vec::new(), Vec::new());
    for (path, print) in &now.files {
        match in_image.get(path) {
            None => created.push(path.clone()),
            Some(held) if held != print => changed.push(path.clone()),
            Some(_) => {}
        }
    }
    let deleted = in_image
        .keys()
        .filter(|path| !now.files.contains_key(*path))
        .cloned()
        .collect();
    let base = WorkspaceImage::new(&dir)?;
    std::fs::hard_link(&image, &base.0).map_err(IoError::at("link", &base.0))?;
    let drive = WorkspaceImage::new(&paths.workspaces_dir())?;
    let stamps = now
        .files
        .iter()
        .map(|(path, print)| {
            let stamp = Stamp {
                size: print.size,
                mtime: print.mtime,
            };
            (path.clone(), stamp)
        })
        .collect();
    Ok(Prepared {
        drive,
        _base: base,
        _lock: lock,
        stamps,
        created,
        changed,
        deleted,
        written,
    })
}

/// Writes the image anew from `workspace`, read as `before`. The directory is read again
/// after `mkfs`: when it changed meanwhile (a file made, changed or deleted while `mkfs`
/// read it), the image is written again, up to [`WRITE_ATTEMPTS`] times; an image that
/// still may not match is used for this session (what differs is sent) but not kept.
/// Returns what the image holds, the directory as last read, and `true`.
fn write_image(
    workspace: &Path,
    dir: &Path,
    image: &Path,
    stamp_file: &Path,
    mut before: Tree,
) -> Result<(BTreeMap<GuestPath, Fingerprint>, Tree, bool)> {
    // The stamps go first: killed after the rename, the image has none, and is written anew.
    state::remove_file_if_present(stamp_file)?;
    for attempt in 1..=WRITE_ATTEMPTS {
        // Written beside, then renamed over the old one: a session that links the old one
        // keeps it.
        let fresh = WorkspaceImage::new(dir)?;
        workspace_drive::make(workspace, &fresh.0)?;
        std::fs::rename(&fresh.0, image).map_err(IoError::at("move into place", image))?;
        let after = read_tree(workspace)?;
        if after == before {
            write_stamps(stamp_file, &after.files)?;
            return Ok((after.files.clone(), after, true));
        }
        log::info!(
            "{} changed while its image was written (attempt {attempt})",
            workspace.display()
        );
        if attempt == WRITE_ATTEMPTS {
            // What the image holds is not known for the files that changed: those are sent
            // (an impossible fingerprint). This session uses the image; without stamps, the
            // next one writes it anew.
            let mut in_image = after.files.clone();
            for (path, print) in &before.files {
                if after.files.get(path) != Some(print) {
                    in_image.insert(path.clone(), UNKNOWN);
                }
            }
            return Ok((in_image, after, true));
        }
        before = after;
    }
    unreachable!("the loop returns on its last attempt")
}

/// A fingerprint no file has: what the image holds of a file that changed while it was read.
const UNKNOWN: Fingerprint = Fingerprint {
    size: u64::MAX,
    mtime: i64::MIN,
    mtime_nsec: -1,
    ctime: i64::MIN,
    ctime_nsec: -1,
    ino: 0,
};

fn read_stamps(file: &Path) -> Option<BTreeMap<GuestPath, Fingerprint>> {
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
    for (path, print) in stamps.files {
        out.insert(GuestPath::parse(path.as_bytes()).ok()?, print);
    }
    Some(out)
}

/// Writes the stamps; a workspace with a name that is not UTF-8 gets none (its image is
/// written anew each time).
fn write_stamps(file: &Path, files: &BTreeMap<GuestPath, Fingerprint>) -> Result<()> {
    let mut out = Vec::with_capacity(files.len());
    for (path, print) in files {
        let Some(name) = path.to_path_buf().to_str().map(str::to_owned) else {
            return Ok(());
        };
        out.push((name, *print));
    }
    state::write_json_atomic(
        file,
        &StampFile {
            format: STAMP_FORMAT,
            files: out,
        },
    )
}

/// Removes the image kept for `workspace`, if any.
pub(super) fn forget(paths: &Paths, workspace: &Path) {
    if let Ok((dir, lock)) = entry(paths, workspace)
        && let Ok(_lock) = Lock::acquire(&lock)
    {
        // The lock file stays: one unlinked while held would let two kilns lock at once.
        let _ = std::fs::remove_dir_all(&dir);
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
        std::fs::write(ws.path().join("gone.txt"), "g\n").unwrap();
        let first = prepare(&paths, ws.path()).unwrap();
        assert!(first.written);
        assert!(first.created.is_empty() && first.changed.is_empty() && first.deleted.is_empty());
        drop(first);

        // A new file, a deletion, and a rewrite of the same size within the same second:
        // all seen, and the kept image is used.
        std::fs::write(ws.path().join("b.txt"), "b\n").unwrap();
        std::fs::remove_file(ws.path().join("gone.txt")).unwrap();
        std::fs::write(ws.path().join("a.txt"), "A\n").unwrap();
        let p = |name: &str| GuestPath::parse(name.as_bytes()).unwrap();
        let second = prepare(&paths, ws.path()).unwrap();
        assert!(!second.written, "three changes do not rewrite the image");
        assert_eq!(second.created, [p("b.txt")]);
        assert_eq!(second.changed, [p("a.txt")]);
        assert_eq!(second.deleted, [p("gone.txt")]);
        assert_eq!(second.stamps.len(), 2, "the stamps are the host's now");
        let base = second._base.0.clone();
        assert!(base.exists());
        drop(second);
        assert!(!base.exists(), "the link goes with the session");

        for i in 0..MAX_CHANGED_FILES + 1 {
            std::fs::write(ws.path().join(format!("n{i}")), "").unwrap();
        }
        let third = prepare(&paths, ws.path()).unwrap();
        assert!(third.written, "too far behind: written anew");
        assert!(third.created.is_empty());
        drop(third);
        assert_eq!(prune(&paths).unwrap(), 1);
        assert!(prepare(&paths, ws.path()).unwrap().written);
        // The lock file stays through `forget` and `prune`.
        forget(&paths, ws.path());
        let (dir, lock) = entry(&paths, ws.path()).unwrap();
        assert!(!dir.exists() && lock.exists());
    }
}
