//! Unpacking what a guest sent. The guest is untrusted: every name must be a plain relative
//! path ([`GuestPath`]) that stays below the destination, carry the one top name that was asked
//! for (or be one of the names asked for), and be a regular file, a directory or a symlink
//! whose target stays inside. Files are placed through [`Beneath`], so no symlink on the host
//! is ever followed. The archive is read in raw mode: kiln reads GNU long names and PAX
//! headers itself, bounded by [`CopyLimits`], so no header makes the host buffer more than
//! the limit.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tar::{Archive, EntryType};

use super::beneath::{Beneath, GuestPath};
use super::{CopyError, CopyLimit, CopyLimits, CopyStats};
use crate::{IoError, Result};

/// Where the entries go: below `dir`, the archive's top name renamed when asked.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub dir: PathBuf,
    pub rename: Option<Rename>,
    /// When set, the only names the archive may hold (a session's list of changed files).
    pub only: Option<BTreeSet<GuestPath>>,
}

/// Every entry must start with `expected`, which becomes `top`.
#[derive(Debug, Clone)]
pub(crate) struct Rename {
    pub expected: String,
    pub top: String,
}

impl Target {
    /// Below `dir`, any name.
    pub fn below(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            rename: None,
            only: None,
        }
    }

    /// Where one entry goes (relative to `dir`), or why it is refused.
    pub fn place(&self, name: &[u8]) -> std::result::Result<GuestPath, CopyError> {
        let path = GuestPath::parse(name)?;
        if let Some(only) = &self.only
            && !only.contains(&path)
        {
            return Err(CopyError::UnlistedEntry {
                path: path.to_string(),
            });
        }
        match &self.rename {
            None => Ok(path),
            Some(rename) if path.first() == OsStr::new(&rename.expected) => {
                Ok(path.with_top(OsStr::new(&rename.top)))
            }
            Some(_) => Err(CopyError::UnsafePath {
                path: path.to_string(),
            }),
        }
    }
}

/// What an unpack wrote.
#[derive(Debug, Default)]
pub(crate) struct Unpacked {
    pub stats: CopyStats,
    /// The files and symlinks placed, by their names below the destination.
    pub placed: BTreeSet<GuestPath>,
}

/// Unpacks a tar stream into `target`. Blocking.
pub(crate) fn unpack(reader: impl Read, target: &Target, limits: &CopyLimits) -> Result<Unpacked> {
    unpack_archive(Archive::new(reader), target, limits)
}

/// Unpacks archives that follow each other in one stream (`xargs tar` writes one per batch).
pub(crate) fn unpack_concatenated(
    reader: impl Read,
    target: &Target,
    limits: &CopyLimits,
) -> Result<Unpacked> {
    let mut archive = Archive::new(reader);
    archive.set_ignore_zeros(true);
    unpack_archive(archive, target, limits)
}

/// Names carried by extension headers for the entry that follows them.
#[derive(Debug, Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

fn unpack_archive<R: Read>(
    mut archive: Archive<R>,
    target: &Target,
    limits: &CopyLimits,
) -> Result<Unpacked> {
    let beneath = Beneath::open(&target.dir)?;
    let io = |op| IoError::at(op, &target.dir);
    let mut out = Unpacked::default();
    let mut pending = Pending::default();
    let mut entries_seen = 0u64;
    for entry in archive
        .entries()
        .map_err(io("read the archive for"))?
        .raw(true)
    {
        let mut entry = entry.map_err(io("read the archive for"))?;
        entries_seen += 1;
        limits.check(CopyLimit::Entries, entries_seen)?;
        let kind = entry.header().entry_type();
        let size = entry.header().size().map_err(io("read an entry for"))?;
        match kind {
            EntryType::GNULongName => {
                pending.path = Some(read_extension(&mut entry, size, limits)?)
            }
            EntryType::GNULongLink => {
                pending.link = Some(read_extension(&mut entry, size, limits)?)
            }
            EntryType::XHeader => {
                let data = read_extension(&mut entry, size, limits)?;
                apply_pax(&data, &mut pending)?;
            }
            // Global PAX headers carry nothing kiln uses; read past them, bounded.
            EntryType::XGlobalHeader => {
                read_extension(&mut entry, size, limits)?;
            }
            EntryType::Regular | EntryType::Directory | EntryType::Symlink => {
                let raw_name = match pending.path.take() {
                    Some(name) => name,
                    None => entry.header().path_bytes().into_owned(),
                };
                limits.check(CopyLimit::NameLength, raw_name.len() as u64)?;
                let dest = target.place(&raw_name)?;
                let mode = entry.header().mode().unwrap_or(0o644);
                match kind {
                    EntryType::Directory => beneath.create_dir(&dest, mode)?,
                    EntryType::Symlink => {
                        let link = match pending.link.take() {
                            Some(link) => link,
                            None => entry
                                .header()
                                .link_name_bytes()
                                .map(|l| l.into_owned())
                                .unwrap_or_default(),
                        };
                        limits.check(CopyLimit::NameLength, link.len() as u64)?;
                        beneath.symlink(&dest, Path::new(OsStr::from_bytes(&link)))?;
                        out.placed.insert(dest);
                    }
                    _ => {
                        limits.check(CopyLimit::Bytes, out.stats.bytes.saturating_add(size))?;
                        let mtime = entry.header().mtime().unwrap_or(0);
                        let mtime = i64::try_from(mtime).unwrap_or(0);
                        let written = beneath.write_file(&dest, mode, mtime, size, &mut entry)?;
                        out.stats.files += 1;
                        out.stats.bytes += written;
                        out.placed.insert(dest);
                    }
                }
                pending = Pending::default();
            }
            other => {
                let name = entry.header().path_bytes();
                return Err(CopyError::UnsupportedEntry {
                    path: String::from_utf8_lossy(&name).into_owned(),
                    kind: format!("{other:?}"),
                }
                .into());
            }
        }
    }
    Ok(out)
}

/// Reads a long-name or PAX header's data, refusing one larger than the limit before
/// anything is buffered.
fn read_extension(entry: &mut impl Read, size: u64, limits: &CopyLimits) -> Result<Vec<u8>> {
    limits.check(CopyLimit::HeaderSize, size)?;
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry
        .take(size)
        .read_to_end(&mut data)
        .map_err(|e| IoError::new("read an extension header", "(guest archive)", e))?;
    // GNU long names end with a NUL.
    while data.last() == Some(&0) {
        data.pop();
    }
    Ok(data)
}

/// Takes `path` and `linkpath` from a PAX header. A `size` record is refused: kiln reads
/// archives in raw mode, where it would put the stream out of step.
fn apply_pax(data: &[u8], pending: &mut Pending) -> Result<()> {
    for record in tar::PaxExtensions::new(data) {
        let record = record.map_err(|_| CopyError::BadHeader {
            reason: "a PAX record that does not parse".to_owned(),
        })?;
        match record.key_bytes() {
            b"path" => pending.path = Some(record.value_bytes().to_vec()),
            b"linkpath" => pending.link = Some(record.value_bytes().to_vec()),
            b"size" => {
                return Err(CopyError::BadHeader {
                    reason: "a PAX size record (busybox tar never writes one)".to_owned(),
                }
                .into());
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn target() -> Target {
        Target {
            rename: Some(Rename {
                expected: "logs".to_owned(),
                top: "copy".to_owned(),
            }),
            ..Target::below(Path::new("/dest"))
        }
    }

    fn placed(t: &Target, name: &str) -> PathBuf {
        t.place(name.as_bytes()).unwrap().to_path_buf()
    }

    #[test]
    fn without_a_rename_any_relative_path_below_is_taken() {
        let t = Target::below(Path::new("/dest"));
        assert_eq!(placed(&t, "src/main.rs"), Path::new("src/main.rs"));
        for bad in ["../x", "/x", "a/../../x"] {
            assert!(t.place(bad.as_bytes()).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn entries_are_renamed_below_the_destination() {
        let t = target();
        assert_eq!(placed(&t, "logs"), Path::new("copy"));
        assert_eq!(placed(&t, "./logs/a/b.txt"), Path::new("copy/a/b.txt"));
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
                matches!(t.place(bad.as_bytes()), Err(CopyError::UnsafePath { .. })),
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

    /// A raw header block: the tar crate's builder refuses the names a hostile guest sends.
    fn raw_entry(out: &mut Vec<u8>, kind: EntryType, name: &[u8], data: &[u8]) {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(kind);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn unpack_into(dir: &Path, data: &[u8]) -> Result<Unpacked> {
        unpack(data, &Target::below(dir), &CopyLimits::default())
    }

    #[test]
    fn a_symlink_cannot_carry_later_entries_out() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let data = archive(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            b.append_link(&mut header, "logs/evil", "..").unwrap();
            file(b, "logs/evil/owned", b"x");
        });
        let err = unpack_into(dir.path(), &data).unwrap_err();
        assert!(
            matches!(err, crate::Error::Copy(CopyError::UnsafePath { .. })),
            "{err}"
        );
        assert!(!dir.path().join("owned").exists());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn names_that_leave_are_refused_in_every_header_form() {
        let dir = tempfile::tempdir().unwrap();
        let mut plain = Vec::new();
        raw_entry(&mut plain, EntryType::Regular, b"../escaped", b"x");
        let mut long = Vec::new();
        // A GNU long name is the data of its own header, ending with a NUL.
        let mut name_data = format!("{}/../../../escaped", "a".repeat(120)).into_bytes();
        name_data.push(0);
        raw_entry(
            &mut long,
            EntryType::GNULongName,
            b"././@LongLink",
            &name_data,
        );
        raw_entry(&mut long, EntryType::Regular, b"short", b"x");
        let mut pax = Vec::new();
        raw_entry(&mut pax, EntryType::XHeader, b"pax", b"18 path=/etc/evil\n");
        raw_entry(&mut pax, EntryType::Regular, b"short", b"x");
        for data in [plain, long, pax] {
            let err = unpack_into(dir.path(), &data).unwrap_err();
            assert!(
                matches!(err, crate::Error::Copy(CopyError::UnsafePath { .. })),
                "{err}"
            );
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(!dir.path().parent().unwrap().join("escaped").exists());
    }

    #[test]
    fn a_symlink_pointing_outside_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = archive(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            b.append_link(&mut header, "logs/passwd", "/etc/passwd")
                .unwrap();
        });
        let err = unpack_into(dir.path(), &data).unwrap_err();
        assert!(
            matches!(err, crate::Error::Copy(CopyError::SymlinkEscapes { .. })),
            "{err}"
        );
    }

    #[test]
    fn oversized_headers_names_counts_and_bytes_hit_their_limits() {
        let dir = tempfile::tempdir().unwrap();
        let limits = CopyLimits::default()
            .max_header_bytes(1024)
            .max_entries(3)
            .max_bytes(10)
            .max_name_bytes(64);
        let cases: Vec<(CopyLimit, Vec<u8>)> = vec![
            (CopyLimit::HeaderSize, {
                let mut a = Vec::new();
                raw_entry(&mut a, EntryType::XHeader, b"pax", &vec![b'9'; 2048]);
                a
            }),
            (CopyLimit::Entries, {
                let mut a = Vec::new();
                for i in 0..5 {
                    raw_entry(&mut a, EntryType::Regular, format!("f{i}").as_bytes(), b"");
                }
                a
            }),
            (CopyLimit::Bytes, {
                let mut a = Vec::new();
                raw_entry(&mut a, EntryType::Regular, b"big", &[7; 11]);
                a
            }),
            (CopyLimit::NameLength, {
                let mut a = Vec::new();
                let mut name = vec![b'n'; 65];
                name.push(0);
                raw_entry(&mut a, EntryType::GNULongName, b"././@LongLink", &name);
                raw_entry(&mut a, EntryType::Regular, b"x", b"");
                a
            }),
        ];
        for (want, data) in cases {
            let err = unpack(&data[..], &Target::below(dir.path()), &limits).unwrap_err();
            assert!(
                matches!(err, crate::Error::Copy(CopyError::LimitExceeded { limit, .. }) if limit == want),
                "{want:?}: {err}"
            );
        }
    }

    #[test]
    fn only_listed_names_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let data = archive(|b| {
            file(b, "listed", b"x");
            file(b, "extra", b"y");
        });
        let t = Target {
            only: Some([GuestPath::parse(b"listed").unwrap()].into()),
            ..Target::below(dir.path())
        };
        let err = unpack(&data[..], &t, &CopyLimits::default()).unwrap_err();
        assert!(
            matches!(err, crate::Error::Copy(CopyError::UnlistedEntry { .. })),
            "{err}"
        );
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
        assert!(matches!(
            unpack_into(dir.path(), &data),
            Err(crate::Error::Copy(CopyError::UnsupportedEntry { .. }))
        ));
    }

    #[test]
    fn files_keep_their_mode_without_setuid_or_world_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = archive(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_size(2);
            header.set_mode(0o4757);
            header.set_entry_type(EntryType::Regular);
            header.set_cksum();
            b.append_data(&mut header, "logs/run.sh", &b"hi"[..])
                .unwrap();
        });
        let unpacked = unpack_into(dir.path(), &data).unwrap();
        assert_eq!((unpacked.stats.files, unpacked.stats.bytes), (1, 2));
        let mode = std::fs::metadata(dir.path().join("logs/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }
}
