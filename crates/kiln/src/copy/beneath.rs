//! Placing files whose names come from the guest, confined below one host directory.
//!
//! Every name is a [`GuestPath`]: plain relative components, nothing else. Every directory on
//! the way is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a descriptor
//! of the destination, so a symlink anywhere on the path (planted by the guest in an earlier
//! entry, or swapped in on the host between two steps) makes the open fail instead of leading
//! outside. Files and symlinks are written under a temporary name in their final directory and
//! renamed over the destination: a rename replaces a symlink that sits there instead of
//! writing through it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

use super::CopyError;
use crate::{IoError, Result};

/// The mode bits a file from the guest may carry: no setuid, setgid or sticky bit, and never
/// writable by every user.
pub(crate) const MODE_MASK: u32 = 0o775;

/// How directories are resolved: below the root, through no symlink of any kind.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// A relative path from the guest, checked: one or more plain components (no `/` at the start,
/// no `..`, no NUL), each at most 255 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuestPath {
    parts: Vec<OsString>,
}

impl GuestPath {
    /// Checks a name as the guest sent it. `./` components are dropped; anything that could
    /// leave the directory it is placed in is refused.
    pub fn parse(name: &[u8]) -> std::result::Result<Self, CopyError> {
        let unsafe_path = || CopyError::UnsafePath {
            path: String::from_utf8_lossy(name).into_owned(),
        };
        if name.contains(&0) {
            return Err(unsafe_path());
        }
        let mut parts = Vec::new();
        for component in Path::new(OsStr::from_bytes(name)).components() {
            match component {
                Component::CurDir => {}
                Component::Normal(part) if part.len() <= 255 => parts.push(part.to_owned()),
                _ => return Err(unsafe_path()),
            }
        }
        if parts.is_empty() {
            return Err(unsafe_path());
        }
        Ok(Self { parts })
    }

    /// The path with its first component replaced by `top`.
    pub(crate) fn with_top(&self, top: &OsStr) -> Self {
        let mut parts = self.parts.clone();
        parts[0] = top.to_owned();
        Self { parts }
    }

    pub(crate) fn first(&self) -> &OsStr {
        &self.parts[0]
    }

    /// The path with `suffix` appended to its last component (`a/b` → `a/b.kiln-guest`).
    pub(crate) fn with_suffix(&self, suffix: &str) -> Self {
        let mut parts = self.parts.clone();
        if let Some(last) = parts.last_mut() {
            last.push(suffix);
        }
        Self { parts }
    }

    fn file_name(&self) -> &OsStr {
        // Never empty: `parse` refuses an empty path.
        self.parts
            .last()
            .map_or(OsStr::new("."), OsString::as_os_str)
    }

    fn parents(&self) -> &[OsString] {
        &self.parts[..self.parts.len() - 1]
    }

    /// The path as a relative host path.
    pub fn to_path_buf(&self) -> PathBuf {
        self.parts.iter().collect()
    }

    /// Whether a symlink at this path with this target would point outside the directory it
    /// is placed in. Only a target that climbs first and then descends is judged safe: `..`
    /// after a normal component is refused, since the kernel follows a symlink before it
    /// applies the `..` (`l/l/../..` with `l -> .` climbs two levels, not zero).
    pub(crate) fn link_escapes(&self, target: &Path) -> bool {
        let mut depth = self.parents().len();
        let mut descending = false;
        for component in target.components() {
            match component {
                Component::Normal(_) => descending = true,
                Component::CurDir => {}
                Component::ParentDir if !descending && depth > 0 => depth -= 1,
                _ => return true,
            }
        }
        false
    }
}

impl std::fmt::Display for GuestPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_path_buf().display().fmt(f)
    }
}

/// A host directory that guest-named files are placed in, and nowhere else.
#[derive(Debug)]
pub(crate) struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

impl Beneath {
    /// Opens `dir` (the user's choice of destination; it is trusted, symlinks included).
    pub fn open(dir: &Path) -> Result<Self> {
        let root = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| IoError::new("open directory", dir, e.into()))?;
        Ok(Self {
            root,
            path: dir.to_owned(),
        })
    }

    fn host_path(&self, rel: &GuestPath) -> PathBuf {
        self.path.join(rel.to_path_buf())
    }

    /// Opens the directory `parts` below the root, creating what is missing when asked.
    fn dir(&self, rel: &GuestPath, parts: &[OsString], create: bool) -> Result<OwnedFd> {
        let mut current: Option<OwnedFd> = None;
        for part in parts {
            let at = current.as_ref().map_or(self.root.as_fd(), AsFd::as_fd);
            let next = if create {
                self.open_or_make_dir(at, part, rel)?.0
            } else {
                open_dir(at, part).map_err(|e| self.refusal(rel, e))?
            };
            current = Some(next);
        }
        match current {
            Some(fd) => Ok(fd),
            None => rustix::io::dup(&self.root).map_err(|e| self.io("open directory", rel, e)),
        }
    }

    /// Opens the directory `name` in `at`, making it first when it is missing; says whether
    /// it made it.
    fn open_or_make_dir(
        &self,
        at: BorrowedFd<'_>,
        name: &OsStr,
        rel: &GuestPath,
    ) -> Result<(OwnedFd, bool)> {
        let made = match rustix::fs::mkdirat(at, name, Mode::from_raw_mode(0o755)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(self.io("create directory", rel, e)),
        };
        let fd = open_dir(at, name).map_err(|e| self.refusal(rel, e))?;
        Ok((fd, made))
    }

    /// The directory that holds `rel` (created when missing) and its last component.
    fn parent<'a>(&self, rel: &'a GuestPath, create: bool) -> Result<(OwnedFd, &'a OsStr)> {
        Ok((self.dir(rel, rel.parents(), create)?, rel.file_name()))
    }

    /// A symlink on the way is the guest trying to leave; anything else is an IO error.
    fn refusal(&self, rel: &GuestPath, errno: Errno) -> crate::Error {
        match errno {
            Errno::LOOP | Errno::XDEV => CopyError::UnsafePath {
                path: rel.to_string(),
            }
            .into(),
            Errno::NOTDIR => CopyError::TypeConflict {
                path: rel.to_string(),
            }
            .into(),
            other => self.io("open directory", rel, other),
        }
    }

    fn io(&self, op: &'static str, rel: &GuestPath, errno: Errno) -> crate::Error {
        IoError::new(op, self.host_path(rel), errno.into()).into()
    }

    /// Makes the directory `rel` (and its parents) with `mode`.
    /// A directory that already exists keeps its mode.
    pub fn create_dir(&self, rel: &GuestPath, mode: u32) -> Result<()> {
        let (parent, name) = self.parent(rel, true)?;
        let (fd, made) = self.open_or_make_dir(parent.as_fd(), name, rel)?;
        if !made {
            return Ok(());
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode((mode & MODE_MASK) | 0o700))
            .map_err(|e| self.io("set the mode of", rel, e))
    }

    /// Writes `len` bytes of `data` as the file `rel` with `mode` (masked by [`MODE_MASK`])
    /// and modification time `mtime`, replacing what is there unless it is a directory. Data
    /// that ends early replaces nothing (`Truncated`).
    pub fn write_file(
        &self,
        rel: &GuestPath,
        mode: u32,
        mtime: i64,
        len: u64,
        data: impl Read,
    ) -> Result<u64> {
        let (dir, name) = self.parent(rel, true)?;
        let (tmp, fd) = create_temp(|tmp| {
            rustix::fs::openat(
                &dir,
                tmp,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        })
        .map_err(|e| self.io("create a file beside", rel, e))?;
        let written = (|| {
            let mut file = File::from(fd);
            let n = std::io::copy(&mut data.take(len), &mut file)
                .map_err(IoError::at("write", self.host_path(rel)))?;
            file.flush()
                .map_err(IoError::at("write", self.host_path(rel)))?;
            if n != len {
                return Err(CopyError::Truncated {
                    path: rel.to_string(),
                }
                .into());
            }
            rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & MODE_MASK))
                .map_err(|e| self.io("set the mode of", rel, e))?;
            let time = rustix::fs::Timespec {
                tv_sec: mtime,
                tv_nsec: 0,
            };
            let times = rustix::fs::Timestamps {
                last_access: time,
                last_modification: time,
            };
            rustix::fs::futimens(&file, &times).map_err(|e| self.io("set the time of", rel, e))?;
            self.replace(&dir, &tmp, name, rel)?;
            Ok::<_, crate::Error>(n)
        })();
        if written.is_err() {
            let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
        }
        written
    }

    /// Makes `rel` a symlink to `target`. A target that would lead outside this directory is
    /// refused.
    pub fn symlink(&self, rel: &GuestPath, target: &Path) -> Result<()> {
        if rel.link_escapes(target) {
            return Err(CopyError::SymlinkEscapes {
                path: rel.to_string(),
                target: target.display().to_string(),
            }
            .into());
        }
        let (dir, name) = self.parent(rel, true)?;
        let (tmp, ()) = create_temp(|tmp| rustix::fs::symlinkat(target, &dir, tmp))
            .map_err(|e| self.io("create a symlink beside", rel, e))?;
        let placed = self.replace(&dir, &tmp, name, rel);
        if placed.is_err() {
            let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
        }
        placed
    }

    /// Renames `tmp` over `name` in `dir`; a directory there is not replaced.
    fn replace(&self, dir: &OwnedFd, tmp: &OsStr, name: &OsStr, rel: &GuestPath) -> Result<()> {
        if is_dir_at(dir, name) {
            return Err(CopyError::TypeConflict {
                path: rel.to_string(),
            }
            .into());
        }
        rustix::fs::renameat(dir, tmp, dir, name).map_err(|e| self.io("move into place", rel, e))
    }

    /// What is at `rel`, without following a symlink (`None`: nothing).
    pub fn stat(&self, rel: &GuestPath) -> Result<Option<rustix::fs::Stat>> {
        let dir = match self.dir(rel, rel.parents(), false) {
            Ok(dir) => dir,
            Err(crate::Error::Io(e)) if e.source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, rel.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io("read", rel, e)),
        }
    }

    /// Moves the file or symlink `from` below `source` to `to` below this directory (creating
    /// its parents). Directories are neither moved nor replaced. With `replace`, anything
    /// else at `to` is replaced, atomically; without it, nothing is, and `Ok(false)` says
    /// `to` was taken.
    pub fn move_from(
        &self,
        source: &Beneath,
        from: &GuestPath,
        to: &GuestPath,
        replace: bool,
    ) -> Result<bool> {
        let (from_dir, from_name) = source.parent(from, false)?;
        let (to_dir, to_name) = self.parent(to, true)?;
        if is_dir_at(&from_dir, from_name) || is_dir_at(&to_dir, to_name) {
            return Err(CopyError::TypeConflict {
                path: to.to_string(),
            }
            .into());
        }
        let flags = if replace {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        match rustix::fs::renameat_with(&from_dir, from_name, &to_dir, to_name, flags) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) if !replace => Ok(false),
            Err(e) => Err(self.io("move into place", to, e)),
        }
    }
}

fn open_dir(at: impl AsFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        at,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
}

fn is_dir_at(dir: &OwnedFd, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|s| rustix::fs::FileType::from_raw_mode(s.st_mode).is_dir())
}

/// Runs `make` with fresh temporary names until one is free.
fn create_temp<T>(
    mut make: impl FnMut(&OsStr) -> rustix::io::Result<T>,
) -> rustix::io::Result<(OsString, T)> {
    for _ in 0..64 {
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes).map_err(|_| Errno::AGAIN)?;
        let tmp = OsString::from(format!(".kiln-tmp-{}", hex::encode(bytes)));
        match make(&tmp) {
            Ok(made) => return Ok((tmp, made)),
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EXIST)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(name: &str) -> GuestPath {
        GuestPath::parse(name.as_bytes()).unwrap()
    }

    #[test]
    fn only_plain_relative_names_parse() {
        assert_eq!(p("./a/./b").to_path_buf(), Path::new("a/b"));
        for bad in ["", ".", "/etc/passwd", "../x", "a/../../x", "a/..", "a\0b"] {
            assert!(
                matches!(
                    GuestPath::parse(bad.as_bytes()),
                    Err(CopyError::UnsafePath { .. })
                ),
                "{bad:?} was accepted"
            );
        }
        let long = "x".repeat(256);
        assert!(GuestPath::parse(long.as_bytes()).is_err());
    }

    #[test]
    fn link_targets_that_leave_are_seen() {
        assert!(!p("a/b/link").link_escapes(Path::new("../c")));
        assert!(p("a/link").link_escapes(Path::new("./x/../y")));
        assert!(p("a/b/link").link_escapes(Path::new("l/l/l/../../../../x")));
        assert!(p("link").link_escapes(Path::new("../x")));
        assert!(p("a/link").link_escapes(Path::new("../../x")));
        assert!(p("a/link").link_escapes(Path::new("/etc")));
        assert!(p("a/link").link_escapes(Path::new("x/../../../y")));
    }

    #[test]
    fn a_symlinked_directory_on_the_way_is_refused_and_nothing_lands_outside() {
        let dest = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dest.path().join("evil")).unwrap();
        let beneath = Beneath::open(dest.path()).unwrap();
        for name in ["evil/owned", "evil/deeper/owned"] {
            let err = beneath
                .write_file(&p(name), 0o644, 0, 1, &b"x"[..])
                .unwrap_err();
            assert!(
                matches!(err, crate::Error::Copy(CopyError::UnsafePath { .. })),
                "{name}: {err}"
            );
        }
        let err = beneath.create_dir(&p("evil/d"), 0o755).unwrap_err();
        assert!(matches!(
            err,
            crate::Error::Copy(CopyError::UnsafePath { .. })
        ));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_symlink_at_the_destination_is_replaced_not_written_through() {
        let dest = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dest.path().join("f")).unwrap();
        let beneath = Beneath::open(dest.path()).unwrap();
        beneath
            .write_file(&p("f"), 0o4777, 0, 3, &b"new"[..])
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        let meta = std::fs::symlink_metadata(dest.path().join("f")).unwrap();
        assert!(meta.is_file());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o7777, 0o775);
        assert_eq!(
            std::fs::read_to_string(dest.path().join("f")).unwrap(),
            "new"
        );
    }

    #[test]
    fn files_never_replace_directories_and_temporaries_are_cleaned_up() {
        let dest = tempfile::tempdir().unwrap();
        std::fs::create_dir(dest.path().join("d")).unwrap();
        let beneath = Beneath::open(dest.path()).unwrap();
        let err = beneath
            .write_file(&p("d"), 0o644, 0, 1, &b"x"[..])
            .unwrap_err();
        assert!(matches!(
            err,
            crate::Error::Copy(CopyError::TypeConflict { .. })
        ));
        let names: Vec<_> = std::fs::read_dir(dest.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["d"]);
    }

    #[test]
    fn data_that_ends_early_replaces_nothing() {
        let dest = tempfile::tempdir().unwrap();
        std::fs::write(dest.path().join("f"), "the user's").unwrap();
        let beneath = Beneath::open(dest.path()).unwrap();
        let err = beneath
            .write_file(&p("f"), 0o644, 0, 100, &b"short"[..])
            .unwrap_err();
        assert!(matches!(
            err,
            crate::Error::Copy(CopyError::Truncated { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(dest.path().join("f")).unwrap(),
            "the user's"
        );
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 1);
    }

    #[test]
    fn escaping_symlinks_are_refused_and_inner_ones_kept() {
        let dest = tempfile::tempdir().unwrap();
        let beneath = Beneath::open(dest.path()).unwrap();
        beneath.symlink(&p("a/in"), Path::new("../b")).unwrap();
        assert_eq!(
            std::fs::read_link(dest.path().join("a/in")).unwrap(),
            Path::new("../b")
        );
        for target in ["/etc/passwd", "../../x"] {
            let err = beneath.symlink(&p("a/out"), Path::new(target)).unwrap_err();
            assert!(matches!(
                err,
                crate::Error::Copy(CopyError::SymlinkEscapes { .. })
            ));
        }
        assert!(!dest.path().join("a/out").exists());
    }

    #[test]
    fn move_from_refuses_to_leave_through_a_symlink() {
        let stage = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(stage.path().join("f"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dest.path().join("sub")).unwrap();
        let (source, target) = (
            Beneath::open(stage.path()).unwrap(),
            Beneath::open(dest.path()).unwrap(),
        );
        assert!(
            target
                .move_from(&source, &p("f"), &p("sub/f"), true)
                .is_err()
        );
        assert!(stage.path().join("f").exists(), "nothing was lost");
        std::fs::write(dest.path().join("taken"), "mine").unwrap();
        assert!(
            !target
                .move_from(&source, &p("f"), &p("taken"), false)
                .unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(dest.path().join("taken")).unwrap(),
            "mine"
        );
        assert!(
            target
                .move_from(&source, &p("f"), &p("new/f"), false)
                .unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(dest.path().join("new/f")).unwrap(),
            "x"
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
