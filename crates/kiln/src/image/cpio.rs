//! A writer for the `newc` cpio format the Linux kernel unpacks as an initramfs.

use std::io::{self, Write};

const TRAILER: &str = "TRAILER!!!";

/// Appends entries to a cpio archive. Paths are relative (`bin/busybox`), without a leading `/`.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            written: 0,
        }
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.entry(path, 0o040000 | mode, &[], 0)
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, 0o100000 | mode, data, 0)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, 0o120777, target.as_bytes(), 0)
    }

    /// A character device node (the kernel needs `dev/console` before init runs).
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, 0o020000 | mode, &[], (major << 8) | minor)
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, &[], 0)?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8], rdev: u32) -> io::Result<()> {
        let name_len = path.len() + 1;
        let file_size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry over 4 GiB"))?;
        let ino = if path == TRAILER { 0 } else { self.ino };
        self.ino += 1;
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{file_size:08x}{devmajor:08x}{devminor:08x}{rdevmajor:08x}{rdevminor:08x}{name_len:08x}{check:08x}",
            uid = 0,
            gid = 0,
            nlink = 1,
            mtime = 0,
            devmajor = 0,
            devminor = 0,
            rdevmajor = rdev >> 8,
            rdevminor = rdev & 0xff,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(path.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0u8; 3][..pad])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_has_aligned_headers_and_a_trailer() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("bin", 0o755).unwrap();
        w.file("bin/hello", 0o755, b"hi\n").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("bin/hello\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // "bin" entry: 110-byte header + "bin\0" = 114, padded to 116; the next header starts there.
        assert_eq!(&bytes[116..122], b"070701");
    }
}
