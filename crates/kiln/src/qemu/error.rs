//! [`QemuError`]: what can fail running VMs with QEMU directly, and what to do about it.

use std::path::PathBuf;

/// What can go wrong running VMs with QEMU directly. `hint()` says what to do.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A program kiln runs (QEMU, `qemu-img`, the console logger) could not be started.
    #[error("cannot run {}", program.display())]
    NotInstalled {
        /// The program that could not be run.
        program: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not set the machine up: its `-daemonize` parent exited with a failure.
    #[error("qemu exited with status {status} while starting: {stderr}")]
    StartFailed {
        /// Its exit code (-1 when a signal ended it).
        status: i32,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// QEMU started, then ended before kiln could connect its network to it.
    #[error(
        "qemu (pid {pid}) ended right after it started, before its network was connected: {reason}"
    )]
    EndedAtStart {
        /// The QEMU that ended.
        pid: u32,
        /// What kiln saw when connecting (its network socket gone, say).
        reason: String,
    },
    /// QEMU started but its pidfile is missing or holds no pid.
    #[error("qemu wrote no usable pid to {}", path.display())]
    NoPid {
        /// The pidfile.
        path: PathBuf,
    },
    /// A QMP connection or command failed.
    #[error("QMP on {}: {reason}", path.display())]
    Qmp {
        /// The VM's QMP socket.
        path: PathBuf,
        /// What failed, with QEMU's answer where there was one.
        reason: String,
    },
    /// `qemu-img` exited with a failure, or printed output kiln cannot read.
    #[error("qemu-img failed: {stderr}")]
    ImgFailed {
        /// What it wrote to stderr, trimmed, or why its output was unreadable.
        stderr: String,
    },
    /// The spec boots from the network but has no user-mode NIC to serve the boot.
    #[error("a network boot needs the user-mode NIC: it serves BOOTP and TFTP")]
    NetworkBootNeedsUserNic,
    /// A shared directory's host path is not a directory.
    #[error("cannot share {}: it is not a directory on this host", path.display())]
    ShareNotADirectory {
        /// The host path given for the share.
        path: PathBuf,
    },
    /// The user-mode network's helper (passt, or the firewall tool that confines it) is
    /// missing or failed.
    #[error("cannot run {}, which gives the guest its way out (network policy nat)", program.display())]
    NetworkHelper {
        /// The helper that could not be run or failed.
        program: PathBuf,
        /// The underlying IO error, or the helper's stderr.
        #[source]
        source: std::io::Error,
    },
    /// QEMU refused a saved state: it does not fit the machine, or its file is damaged.
    #[error("QEMU refused the saved state {}: {reason}", state.display())]
    StateRefused {
        /// The saved state's file.
        state: PathBuf,
        /// QEMU's reason.
        reason: String,
    },
    /// QEMU did not finish loading a saved state: it exited, or took too long.
    #[error("QEMU did not load the saved state {}: {reason}", state.display())]
    StateNotLoaded {
        /// The saved state's file.
        state: PathBuf,
        /// QEMU's reason, where it gave one.
        reason: String,
    },
    /// A port forward's host port cannot be bound: something else holds it.
    #[error("cannot forward {forward}: the host port is in use")]
    PortInUse {
        /// The forward whose host port is taken.
        forward: crate::spec::PortForward,
        /// The error binding the port.
        #[source]
        source: std::io::Error,
    },
}

impl QemuError {
    /// What the user can do about this error, where there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::NotInstalled { program, .. } => Some(
                match program.file_name().and_then(|name| name.to_str()) {
                    Some("stdbuf") => "install coreutils (the console log's size cap uses stdbuf)",
                    Some("qemu-img") => "install qemu-utils with scripts/setup.sh",
                    _ => {
                        "install QEMU 10 with scripts/setup.sh (qemu-system-x86 from \
                         bookworm-backports)"
                    }
                }
                .to_owned(),
            ),
            Self::StartFailed { .. } => Some("run `kiln doctor` to check this host".to_owned()),
            Self::EndedAtStart { .. } => Some(
                "`kiln logs NAME` shows the console; try again, and run `kiln doctor`".to_owned(),
            ),
            Self::NetworkHelper { .. } => Some(
                "install passt (scripts/setup.sh does), or pick another policy: --net none, \
                 or --net host to also reach the host's loopback"
                    .to_owned(),
            ),
            Self::ShareNotADirectory { .. } => {
                Some("create the directory first, or fix the path given to -v".to_owned())
            }
            Self::PortInUse { forward, .. } => Some(format!(
                "pick another host port (`ss -lntup | grep :{}` shows who has it)",
                forward.host_port
            )),
            Self::StateRefused { .. } | Self::StateNotLoaded { .. } => Some(
                "the VM was stopped; `kiln snapshot restore` another snapshot, or `kiln start` \
                 it to boot from its disks"
                    .to_owned(),
            ),
            Self::NetworkBootNeedsUserNic => Some(
                "keep the default user-mode NIC (it serves the network boot), or boot from the \
                 disk"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}
