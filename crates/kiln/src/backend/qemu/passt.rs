//! passt: the user-mode network process behind the `nat` policy. One per VM. kiln connects to
//! the stream netdev QEMU listens on and hands the connected socket to passt as its stdin, so
//! no socket file has to be reachable by the user passt drops to. passt exits when QEMU closes
//! the connection, so it never outlives its VM.
//!
//! Why passt and not slirp: QEMU's slirp always maps its gateway (`10.0.2.2`) to the host's
//! loopback (QEMU does not expose libslirp's switch for it), and `restrict=on` also cuts the
//! way out. passt with `--no-map-gw` gives outbound NAT where the gateway is just an address.

use std::path::{Path, PathBuf};

use crate::image::user_net;
use crate::{IoError, Result};

use super::QemuError;

/// passt's arguments: the socket on stdin, the guest's fixed addresses, DNS queries to the
/// guest's resolver address forwarded to the host's, no ports forwarded by passt itself.
pub fn args() -> Vec<String> {
    [
        "--fd",
        "0",
        "--foreground",
        "--quiet",
        "--no-map-gw",
        "--address",
        user_net::GUEST,
        "--netmask",
        &user_net::PREFIX.to_string(),
        "--gateway",
        user_net::GATEWAY,
        "--dns-forward",
        user_net::DNS,
        "--tcp-ports",
        "none",
        "--udp-ports",
        "none",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// passt from `KILN_PASST` or `PATH`.
pub fn binary() -> PathBuf {
    std::env::var_os("KILN_PASST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("passt"))
}

/// Whether `program` can be run: a path that exists, or a name found on `PATH`.
pub fn installed(program: &Path) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Connects passt to the netdev QEMU listens on at `socket`. passt runs on after kiln exits
/// and ends with QEMU; what it says goes to `log`, its pid to `pidfile`.
pub fn attach(program: &Path, socket: &Path, log: &Path, pidfile: &Path) -> Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(IoError::at("connect to", socket))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(IoError::at("open", log))?;
    let err = out.try_clone().map_err(IoError::at("open", log))?;
    let mut child = tokio::process::Command::new(program)
        .args(args())
        .stdin(std::os::fd::OwnedFd::from(stream))
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C at the terminal that ran kiln does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|source| QemuError::NetworkHelper {
            program: program.to_owned(),
            source,
        })?;
    let pid = child.id().unwrap_or_default();
    log::debug!("passt {pid} serves {}", socket.display());
    crate::state::write_atomic(pidfile, format!("{pid}\n").as_bytes())?;
    // It ends with QEMU. Reaped here while this process lives, by init after it exits.
    tokio::spawn(async move {
        match child.wait().await {
            Ok(status) if status.success() => log::debug!("passt {pid} exited"),
            Ok(status) => log::warn!("passt {pid} exited with {status}"),
            Err(err) => log::warn!("waiting for passt {pid}: {err}"),
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passt_never_maps_the_gateway_and_forwards_nothing_itself() {
        let args = args().join(" ");
        assert!(args.contains("--no-map-gw"), "{args}");
        assert!(args.contains("--fd 0"), "{args}");
        assert!(
            args.contains("--address 10.0.2.15 --netmask 24 --gateway 10.0.2.2"),
            "{args}"
        );
        assert!(args.contains("--tcp-ports none --udp-ports none"), "{args}");
    }

    #[test]
    fn installed_finds_programs_on_path_and_by_path() {
        assert!(installed(Path::new("sh")));
        assert!(installed(Path::new("/bin/sh")));
        assert!(!installed(Path::new("kiln-no-such-program")));
        assert!(!installed(Path::new("/nonexistent/passt")));
    }
}
