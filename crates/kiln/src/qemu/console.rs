//! The guest's serial console, logged with a cap.
//!
//! QEMU writes the serial port into a FIFO in the VM's `0700` runtime directory, and
//! `head -c` (unbuffered, through coreutils' `stdbuf -o0`) copies at most
//! [`DEFAULT_CONSOLE_LOG_MAX`] bytes (per boot) of it to `serial.log`, each read as it comes,
//! then exits. (`dd` cannot do it: with `iflag=count_bytes` it counts a short read from a pipe
//! as a whole block, and stops early.) What the guest prints past the cap is dropped (QEMU's writes
//! to the FIFO fail once nobody reads it), so a guest that floods its console cannot fill the
//! host's disk. The first bytes of a boot are the ones that explain a failed one.
//!
//! The logger runs on after kiln exits and ends with QEMU (end of file on the FIFO), or at the
//! cap.

use std::os::fd::OwnedFd;
use std::path::Path;

use super::QemuError;
use crate::{IoError, Result};

/// The most of one boot's console kept on disk.
pub const DEFAULT_CONSOLE_LOG_MAX: u64 = 8 << 20;

/// Both ends of the FIFO, held while QEMU starts: the write end keeps the logger from seeing
/// end of file before QEMU has opened the FIFO, and the read end keeps QEMU's open from
/// blocking should the logger have died. Drop it once QEMU runs (or failed to start).
#[derive(Debug)]
#[must_use = "dropping it at once lets the logger end before QEMU opens the FIFO"]
pub struct ConsolePipe {
    _write: OwnedFd,
    _read: OwnedFd,
}

/// Makes the FIFO at `fifo` and starts the logger copying at most `max` bytes of it to `log`
/// (appended: a clone's log starts with its template's boot).
pub fn attach(fifo: &Path, log: &Path, max: u64) -> Result<ConsolePipe> {
    use rustix::fs::{Mode, OFlags};
    crate::state::remove_file_if_present(fifo)?;
    rustix::fs::mkfifoat(rustix::fs::CWD, fifo, Mode::RUSR | Mode::WUSR)
        .map_err(|e| IoError::new("create", fifo, e.into()))?;
    // Opening the read end does not wait for a writer when non-blocking; the logger wants it
    // blocking again.
    let read = rustix::fs::open(
        fifo,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| IoError::new("open", fifo, e.into()))?;
    let hold = rustix::fs::open(
        fifo,
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| IoError::new("open", fifo, e.into()))?;
    rustix::fs::fcntl_setfl(&read, OFlags::RDONLY)
        .map_err(|e| IoError::new("open", fifo, e.into()))?;
    let out = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log)
            .map_err(IoError::at("open", log))?
    };
    let program = Path::new("stdbuf");
    let mut child = tokio::process::Command::new(program)
        .args(logger_args(max))
        .stdin(read)
        .stdout(out)
        .stderr(std::process::Stdio::null())
        // Its own process group: a Ctrl-C at the terminal that ran kiln does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|source| QemuError::NotInstalled {
            program: program.to_owned(),
            source,
        })?;
    let pid = child.id().unwrap_or_default();
    // Reaped here while this process lives, by init after it exits.
    tokio::spawn(async move {
        match child.wait().await {
            Ok(status) => log::debug!("console logger {pid} exited ({status})"),
            Err(err) => log::warn!("waiting for the console logger {pid}: {err}"),
        }
    });
    let spare = rustix::fs::open(
        fifo,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| IoError::new("open", fifo, e.into()))?;
    Ok(ConsolePipe {
        _write: hold,
        _read: spare,
    })
}

/// `head -c MAX` with its output unbuffered: each read is written as it arrives.
fn logger_args(max: u64) -> Vec<String> {
    ["-o0", "head", "-c", &max.to_string()]
        .map(str::to_owned)
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_logger_is_unbuffered_head() {
        assert_eq!(logger_args(4096).join(" "), "-o0 head -c 4096");
    }

    /// Everything up to the cap arrives (and nothing past it), as it is written.
    #[tokio::test]
    async fn the_log_stops_at_the_cap() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (fifo, log) = (dir.path().join("console"), dir.path().join("serial.log"));
        let pipe = attach(&fifo, &log, 1000).unwrap();
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        drop(pipe);
        writer.write_all(b"first line\n").unwrap();
        let arrived = async {
            while std::fs::read(&log).unwrap_or_default() != b"first line\n" {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), arrived)
            .await
            .expect("a line is logged as it is written");
        // A flood: once the cap is reached, writes fail (nobody reads) or are dropped.
        let flood = vec![b'x'; 64 << 10];
        for _ in 0..16 {
            if writer.write_all(&flood).is_err() {
                break;
            }
        }
        drop(writer);
        let settled = async {
            loop {
                let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                if len >= 1000 {
                    return len;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        };
        let len = tokio::time::timeout(std::time::Duration::from_secs(10), settled)
            .await
            .unwrap();
        assert_eq!(len, 1000);
    }
}
