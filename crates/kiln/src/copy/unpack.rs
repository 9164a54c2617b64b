//! Unpacking what a guest sent. The guest is untrusted: every entry must stay below the
//! destination (no absolute paths, no `..`, no writing through a symlink), carry the one top
//! name that was asked for, and be a regular file, a directory or a symlink.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use tar::{Archive, EntryType};

use super::{CopyError, CopyStats};
use crate::{IoError, Result};

/// Where the entries go: below `dir`, the archive's top name renamed when asked.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub dir: PathBuf,
    pub rename: Option<Rename>,
}

/// Every entry must start with `expected`, which becomes `top`.
#[derive(Debug, Clone)]
pub(crate) struct Rename {
    pub expected: String,
    pub top: String,
}

impl Target {
    /// The destination of one entry, or why it is refused.
    pub fn place(&self, entry: &Path) -> std::result::Result<PathBuf, CopyError> {
        let unsafe_path = || CopyError::UnsafePath {
            path: entry.display().to_string(),
        };
        let mut components = entry.components().filter(|c| *c != Component::CurDir);
        let mut out = self.dir.clone();
        match (components.next(), &self.rename) {
            (Some(Component::Normal(first)), Some(rename)) if first == rename.expected.as_str() => {
                out.push(&rename.top);
            }
            (Some(Component::Normal(first)), None) => out.push(first),
            _ => return Err(unsafe_path()),
        }
        for component in components {
            match component {
                Component::Normal(part) => out.push(part),
                _ => return Err(unsafe_path()),
            }
        }
        Ok(out)
    }
}

/// Refuses a path whose ancestors below `base` include a symlink: writing there would land
/// wherever the link points.
fn check_no_symlink_between(base: &Path, path: &Path) -> std::result::Result<(), CopyError> {
    let Ok(rel) = path.strip_prefix(base) else {
        return Err(CopyError::UnsafePath {
            path: path.display().to_string(),
        });
    };
    let mut current = base.to_path_buf();
    let mut parts: Vec<_> = rel.components().collect();
    parts.pop();
    for part in parts {
        current.push(part);
        if std::fs::symlink_metadata(&current).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(CopyError::UnsafePath {
                path: path.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Unpacks a tar stream into `target`. Blocking.
pub(crate) fn unpack(reader: impl Read, target: &Target) -> Result<CopyStats> {
    unpack_archive(Archive::new(reader), target)
}

/// Unpacks archives that follow each other in one stream (`xargs tar` writes one per batch).
pub(crate) fn unpack_concatenated(reader: impl Read, target: &Target) -> Result<CopyStats> {
    let mut archive = Archive::new(reader);
    archive.set_ignore_zeros(true);
    unpack_archive(archive, target)
}

fn unpack_archive<R: Read>(mut archive: Archive<R>, target: &Target) -> Result<CopyStats> {
    // Never setuid/setgid bits or ownership from the guest.
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_overwrite(true);
    let mut stats = CopyStats::default();
    let io = |op| IoError::at(op, &target.dir);
    for entry in archive.entries().map_err(io("read the archive for"))? {
        let mut entry = entry.map_err(io("read the archive for"))?;
        let name = entry.path().map_err(io("read an entry for"))?.into_owned();
        let kind = entry.header().entry_type();
        if !matches!(
            kind,
            EntryType::Regular | EntryType::Directory | EntryType::Symlink
        ) {
            return Err(CopyError::UnsupportedEntry {
                path: name.display().to_string(),
                kind: format!("{kind:?}"),
            }
            .into());
        }
        let dest = target.place(&name)?;
        check_no_symlink_between(&target.dir, &dest)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(IoError::at("create directory", parent))?;
        }
        // Replace a symlink at the destination instead of writing through it.
        if std::fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&dest).map_err(IoError::at("replace", &dest))?;
        }
        entry.unpack(&dest).map_err(IoError::at("write", &dest))?;
        if kind == EntryType::Regular {
            stats.files += 1;
            stats.bytes += entry.header().size().unwrap_or(0);
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn target() -> Target {
        Target {
            dir: PathBuf::from("/dest"),
            rename: Some(Rename {
                expected: "logs".to_owned(),
                top: "copy".to_owned(),
            }),
        }
    }

    #[test]
    fn without_a_rename_any_relative_path_below_is_taken() {
        let t = Target {
            dir: PathBuf::from("/dest"),
            rename: None,
        };
        assert_eq!(
            t.place(Path::new("src/main.rs")).unwrap(),
            Path::new("/dest/src/main.rs")
        );
        for bad in ["../x", "/x", "a/../../x"] {
            assert!(t.place(Path::new(bad)).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn entries_are_renamed_below_the_destination() {
        let t = target();
        assert_eq!(t.place(Path::new("logs")).unwrap(), Path::new("/dest/copy"));
        assert_eq!(
            t.place(Path::new("./logs/a/b.txt")).unwrap(),
            Path::new("/dest/copy/a/b.txt")
        );
    }

    #[test]
    fn escaping_or_foreign_entries_are_refused() {
        let t = target();
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "logs/../../x",
            "logs/a/../../../x",
            "other/file",
            "",
        ] {
            assert!(
                matches!(t.place(Path::new(bad)), Err(CopyError::UnsafePath { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().unwrap()
    }

    fn file(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o640);
        header.set_entry_type(EntryType::Regular);
        header.set_cksum();
        builder.append_data(&mut header, path, data).unwrap();
    }

    #[test]
    fn a_symlink_cannot_carry_later_entries_out() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let data = archive(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            b.append_link(&mut header, "logs/evil", outside.path())
                .unwrap();
            file(b, "logs/evil/owned", b"x");
        });
        let t = Target {
            dir: dir.path().to_owned(),
            rename: None,
        };
        let err = unpack(&data[..], &t).unwrap_err();
        assert!(
            matches!(err, crate::Error::Copy(CopyError::UnsafePath { .. })),
            "{err}"
        );
        assert!(!outside.path().join("owned").exists());
    }

    #[test]
    fn devices_and_hard_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = archive(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(EntryType::Link);
            header.set_size(0);
            b.append_link(&mut header, "logs/l", "/etc/shadow").unwrap();
        });
        let t = Target {
            dir: dir.path().to_owned(),
            rename: None,
        };
        assert!(matches!(
            unpack(&data[..], &t),
            Err(crate::Error::Copy(CopyError::UnsupportedEntry { .. }))
        ));
    }

    #[test]
    fn files_keep_their_mode_without_setuid() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = archive(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_size(2);
            header.set_mode(0o4755);
            header.set_entry_type(EntryType::Regular);
            header.set_cksum();
            b.append_data(&mut header, "logs/run.sh", &b"hi"[..])
                .unwrap();
        });
        let t = Target {
            dir: dir.path().to_owned(),
            rename: None,
        };
        let stats = unpack(&data[..], &t).unwrap();
        assert_eq!((stats.files, stats.bytes), (1, 2));
        let mode = std::fs::metadata(dir.path().join("logs/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }
}
