//! The QEMU process: start it daemonized, find it again by pid, end it.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use super::QemuError;
use crate::Result;

/// Runs QEMU with `-daemonize`: the parent exits once the machine is set up (sockets bound),
/// and its exit status says whether that worked. Returns the daemon's pid.
pub async fn spawn_daemonized(binary: &Path, argv: &[OsString], pidfile: &Path) -> Result<u32> {
    let output = tokio::process::Command::new(binary)
        .args(argv)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| QemuError::NotInstalled {
            program: binary.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(QemuError::StartFailed {
            status: output.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }
        .into());
    }
    let pid = read_pidfile(pidfile).ok_or_else(|| QemuError::NoPid {
        path: pidfile.to_owned(),
    })?;
    Ok(pid)
}

pub fn read_pidfile(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
}

/// Whether `pid` is a live (not zombie) QEMU of this VM: its command line must name the VM's
/// QMP socket, so a recycled pid is never mistaken for the VM.
pub fn is_alive(pid: u32, qmp_socket: &Path) -> bool {
    is_alive_with(
        pid,
        std::os::unix::ffi::OsStrExt::as_bytes(qmp_socket.as_os_str()),
    )
}

/// Whether `pid` is a live (not zombie) process whose command line holds `needle`: a
/// recycled pid is never mistaken for the process kiln started.
pub fn is_alive_with(pid: u32, needle: &[u8]) -> bool {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // The state follows the parenthesised command name: "pid (comm) S ...".
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next());
    if matches!(state, Some("Z" | "X")) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Every live QEMU of this VM, found by its QMP socket on its command line: how a QEMU is
/// found when its pidfile is gone or was never written (a `kiln` killed while QEMU started,
/// a wiped runtime directory). The socket path is unique to the VM.
pub fn find_by_socket(qmp_socket: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| is_alive(*pid, qmp_socket))
        .collect()
}

/// Waits up to `grace` for the process to end, then kills it.
pub async fn wait_or_kill(pid: u32, qmp_socket: &Path, grace: Duration) {
    let needle = std::os::unix::ffi::OsStrExt::as_bytes(qmp_socket.as_os_str());
    wait_or_kill_with(pid, needle, grace).await;
}

/// Waits up to `grace` for the process (while its command line holds `needle`) to end, then
/// kills it and waits for it to go.
pub async fn wait_or_kill_with(pid: u32, needle: &[u8], grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_alive_with(pid, needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !is_alive_with(pid, needle) {
        return;
    }
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, Signal::KILL);
    }
    for _ in 0..100 {
        if !is_alive_with(pid, needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
