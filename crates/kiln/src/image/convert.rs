//! `qemu-img convert` of a built root filesystem to the qcow2 image VMs start from, with its
//! progress (`-p`) counted as bytes.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use log::debug;

use super::ImageError;
use crate::progress::Meter;

/// `qemu-img convert` from the raw filesystem to qcow2, its percentage (of the image's
/// virtual size) turned into bytes on `meter`.
pub(super) fn to_qcow2(
    raw: &Path,
    qcow2: &Path,
    size: u64,
    meter: &mut Meter<'_>,
) -> crate::Result<()> {
    let program = "qemu-img";
    let mut command = Command::new(program);
    command
        .args(["convert", "-p", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(qcow2)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    debug!("running {command:?}");
    let mut child = command.spawn().map_err(|source| ImageError::ToolMissing {
        program: program.to_owned(),
        source,
    })?;
    // Its stderr is kept (the first 64 KiB) on a thread of its own while stdout is read.
    let stderr = child.stderr.take().map(|stderr| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut stderr = stderr;
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut kept);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            kept
        })
    });
    // qemu-img writes `(12.34/100%)\r` as it goes.
    if let Some(mut stdout) = child.stdout.take() {
        let mut buf = [0u8; 256];
        let mut line = Vec::new();
        loop {
            let n = match stdout.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            for &byte in &buf[..n] {
                if byte != b'\r' && byte != b'\n' {
                    // A line is a few bytes: one that is not is not a progress line.
                    if line.len() < 64 {
                        line.push(byte);
                    }
                    continue;
                }
                if let Some(percent) = convert_percent(&line) {
                    meter.set((percent / 100.0 * size as f64) as u64, Some(size));
                }
                line.clear();
            }
        }
    }
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let output = child.wait().map(|status| std::process::Output {
        status,
        stdout: Vec::new(),
        stderr,
    });
    super::debian::checked(program, output)?;
    Ok(())
}

/// The percentage in one of `qemu-img convert -p`'s progress lines (`    (12.34/100%)`).
fn convert_percent(line: &[u8]) -> Option<f64> {
    let line = std::str::from_utf8(line).ok()?.trim();
    let (done, rest) = line.strip_prefix('(')?.split_once('/')?;
    if rest != "100%)" {
        return None;
    }
    let percent: f64 = done.parse().ok()?;
    percent.is_finite().then(|| percent.clamp(0.0, 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_img_progress_lines_give_a_percentage_and_others_none() {
        assert_eq!(convert_percent(b"    (12.34/100%)"), Some(12.34));
        assert_eq!(convert_percent(b"(100.00/100%)"), Some(100.0));
        assert_eq!(convert_percent(b"(inf/100%)"), None);
        assert_eq!(convert_percent(b"(5/50%)"), None);
        assert_eq!(convert_percent(b"qemu-img: warning"), None);
        assert_eq!(convert_percent(b"\xff("), None);
    }
}
