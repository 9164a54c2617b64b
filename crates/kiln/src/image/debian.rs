//! Debian packages: finding the kernel package, downloading it with `apt-get download`, and
//! unpacking it with `dpkg-deb -x` (never installing it). These programs are the interface to
//! the package system, so they run as subprocesses with argv built as a list.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use std::process::Stdio;

use log::debug;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use super::ImageError;
use crate::IoError;
use crate::progress::Meter;

/// The metapackage that names the current kernel.
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";

async fn run(program: &str, args: Vec<OsString>, cwd: Option<&Path>) -> Result<String, ImageError> {
    debug!("running {program} {args:?}");
    let mut command = Command::new(program);
    command.args(&args).stdin(std::process::Stdio::null());
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    checked(program, command.output().await)
}

/// Runs a build tool (`mkfs.ext4`, `debugfs`) with no stdin, in the C locale; why it could
/// not run or failed.
pub(super) fn run_tool(command: &mut std::process::Command) -> Result<(), ImageError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .stdin(std::process::Stdio::null())
        .env("LC_ALL", "C")
        .output();
    checked(&program, output).map(drop)
}

/// A tool's stdout, or why it could not run or failed (with its stderr).
pub(super) fn checked(
    program: &str,
    output: std::io::Result<std::process::Output>,
) -> Result<String, ImageError> {
    let output = output.map_err(|source| ImageError::ToolMissing {
        program: program.to_owned(),
        source,
    })?;
    if !output.status.success() {
        return Err(ImageError::ToolFailed {
            program: program.to_owned(),
            status: output.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The versioned kernel package the metapackage depends on, e.g. `linux-image-6.1.0-56-amd64`.
pub async fn resolve_kernel_package() -> Result<String, ImageError> {
    let out = run(
        "apt-cache",
        vec!["depends".into(), KERNEL_METAPACKAGE.into()],
        None,
    )
    .await?;
    parse_kernel_dependency(&out).ok_or(ImageError::KernelPackageUnknown)
}

fn parse_kernel_dependency(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| {
            p.starts_with("linux-image-") && p.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
        })
        .map(str::to_owned)
}

/// Downloads `package`'s .deb into `dir` and returns its path. Its bytes go to `meter` as
/// they come: apt's status lines say how far, in percent of the size the package index gives.
pub async fn download(
    package: &str,
    dir: &Path,
    meter: &mut Meter<'_>,
) -> Result<PathBuf, ImageError> {
    let size = package_size(package).await;
    let program = "apt-get";
    debug!("running {program} download {package} in {}", dir.display());
    let mut child = Command::new(program)
        .args(["download", "-q=2", "-o", "APT::Status-Fd=1", package])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ImageError::ToolMissing {
            program: program.to_owned(),
            source,
        })?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let statuses = async {
        let Some(stdout) = stdout else { return };
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            // apt's own lines are short; the cap keeps a strange one from growing memory.
            match (&mut stdout).take(4096).read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            if let (Some(percent), Some(size)) = (download_percent(text.trim_end()), size) {
                meter.set((percent / 100.0 * size as f64) as u64, Some(size));
            }
        }
    };
    let errors = async {
        let mut kept = Vec::new();
        if let Some(mut stderr) = stderr {
            let _ = (&mut stderr).take(STDERR_KEPT).read_to_end(&mut kept).await;
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        }
        kept
    };
    let ((), stderr) = tokio::join!(statuses, errors);
    let output = child.wait().await.map(|status| std::process::Output {
        status,
        stdout: Vec::new(),
        stderr,
    });
    checked(program, output)?;
    // The last status line may say less than all of it.
    if let Some(size) = size {
        meter.set(size, Some(size));
    }
    find_deb(dir, package)?.ok_or_else(|| ImageError::ToolFailed {
        program: program.to_owned(),
        status: 0,
        stderr: format!("no {package}_*.deb appeared in {}", dir.display()),
    })
}

/// The stderr of `apt-get download` kept for an error message.
const STDERR_KEPT: u64 = 64 * 1024;

/// The size of `package`'s candidate .deb, from the package index (`apt-cache show`).
async fn package_size(package: &str) -> Option<u64> {
    let args = vec!["show".into(), "--no-all-versions".into(), package.into()];
    let out = run("apt-cache", args, None).await.ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("Size:"))
        .and_then(|size| size.trim().parse().ok())
}

/// How far a download is, in percent, from one of apt's status lines
/// (`dlstatus:1:18.2427:Retrieving file 1 of 1`).
fn download_percent(line: &str) -> Option<f64> {
    let mut fields = line.splitn(4, ':');
    if fields.next() != Some("dlstatus") {
        return None;
    }
    let percent: f64 = fields.nth(1)?.parse().ok()?;
    percent.is_finite().then(|| percent.clamp(0.0, 100.0))
}

/// The newest `.deb` of `package` (or of any kernel package when `package` is a prefix) in `dir`.
pub fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>, ImageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(IoError::new("list", dir, err).into()),
    };
    let mut debs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(package) && n.ends_with(".deb"))
        })
        .collect();
    debs.sort();
    Ok(debs.pop())
}

/// Unpacks a .deb's files under `dest`.
pub async fn unpack(deb: &Path, dest: &Path) -> Result<(), ImageError> {
    run("dpkg-deb", vec!["-x".into(), deb.into(), dest.into()], None)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_status_lines_give_a_percentage_and_others_none() {
        assert_eq!(
            download_percent("dlstatus:1:18.2427:Retrieving file 1 of 1"),
            Some(18.2427)
        );
        assert_eq!(
            download_percent("dlstatus:1:100.0000:Retrieving"),
            Some(100.0)
        );
        assert_eq!(download_percent("dlstatus:1:250:x"), Some(100.0));
        assert_eq!(download_percent("dlstatus:1:NaN:x"), None);
        assert_eq!(download_percent("pmstatus:1:50:x"), None);
        assert_eq!(download_percent("dlstatus:1"), None);
    }

    #[test]
    fn kernel_dependency_is_read_from_apt_cache_output() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_kernel_dependency(out).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_kernel_dependency("linux-image-amd64\n"), None);
    }
}
