//! What a copy moves, measured before it starts: its stats, and the size of its tar stream
//! for a progress bar.

use std::path::Path;

use super::CopyStats;
use crate::{IoError, Result};

/// tar's block: every header and every file's contents take whole blocks.
const BLOCK: u64 = 512;

/// The two zero blocks that end a tar stream.
pub(crate) const TAR_END: u64 = 2 * BLOCK;

/// The bytes one entry takes in a tar stream: its header, a GNU long-name entry before it
/// when its name is past tar's 100 bytes, and its contents in whole blocks. An estimate:
/// a long symlink target adds a block or two more. Saturates: a size a guest claims may be
/// anything.
pub(crate) fn tar_entry(name_len: usize, contents: u64) -> u64 {
    let blocks = |bytes: u64| bytes.checked_next_multiple_of(BLOCK).unwrap_or(u64::MAX);
    let long_name = if name_len > 100 {
        BLOCK.saturating_add(blocks(name_len as u64 + 1))
    } else {
        0
    };
    long_name
        .saturating_add(BLOCK)
        .saturating_add(blocks(contents))
}

/// What is below `path` (itself included) when sent under a name of `name_len` bytes.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Measure {
    /// Its regular files and their bytes.
    pub stats: CopyStats,
    /// The tar stream's size, roughly ([`tar_entry`] for each entry, and the end).
    pub tar_bytes: u64,
}

/// Measures `path` and everything below it, without following symlinks.
pub(super) fn measure(path: &Path, name_len: usize) -> Result<Measure> {
    let mut out = Measure {
        tar_bytes: TAR_END,
        ..Measure::default()
    };
    add(path, name_len, &mut out)?;
    Ok(out)
}

fn add(path: &Path, name_len: usize, out: &mut Measure) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(IoError::at("read", path))?;
    let contents = if meta.is_file() { meta.len() } else { 0 };
    out.tar_bytes += tar_entry(name_len, contents);
    if meta.is_file() {
        out.stats.files += 1;
        out.stats.bytes += contents;
    } else if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(IoError::at("read directory", path))? {
            let entry = entry.map_err(IoError::at("read directory", path))?;
            let child = name_len + 1 + entry.file_name().len();
            add(&entry.path(), child, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measure_matches_the_tar_stream_the_builder_writes() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        std::fs::create_dir_all(top.join("sub")).unwrap();
        std::fs::write(top.join("a"), vec![1u8; 1000]).unwrap();
        std::fs::write(top.join("sub/empty"), b"").unwrap();
        let long = "n".repeat(150);
        std::fs::write(top.join(&long), vec![2u8; 512]).unwrap();
        std::os::unix::fs::symlink("a", top.join("link")).unwrap();

        let measured = measure(&top, "top".len()).unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        builder.append_dir_all("top", &top).unwrap();
        let stream = builder.into_inner().unwrap();

        assert_eq!((measured.stats.files, measured.stats.bytes), (3, 1512));
        assert_eq!(measured.tar_bytes, stream.len() as u64);
    }

    #[test]
    fn an_entry_takes_whole_blocks_and_a_long_name_two_more_at_least() {
        assert_eq!(tar_entry(5, 0), 512);
        assert_eq!(tar_entry(5, 1), 1024);
        assert_eq!(tar_entry(5, 512), 1024);
        assert_eq!(tar_entry(101, 0), 512 + 512 + 512);
        assert_eq!(tar_entry(600, 0), 512 + 1024 + 512);
        assert_eq!(tar_entry(5, u64::MAX), u64::MAX);
    }
}
