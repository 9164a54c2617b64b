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

/// The system user passt runs as when kiln runs as root (`scripts/setup.sh` makes it).
/// passt forwards any destination a guest routes to it, loopback included; the host's
/// firewall refuses this user's connections to 127.0.0.0/8 and ::1 (DNS excepted, for a
/// resolver on loopback), so a guest cannot reach the host's loopback services through it.
pub const USER: &str = "kiln-net";

/// The uid of [`USER`], from `/etc/passwd`.
pub(crate) fn user_uid() -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == USER).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Makes the host's firewall refuse `uid`'s connections to loopback addresses (DNS excepted),
/// unless it already does. Rules are inserted at the top of `OUTPUT`, once.
fn refuse_loopback(uid: u32) -> Result<()> {
    // Two kilns starting VMs at once would both find the rules missing: one at a time.
    let _lock = crate::state::Lock::acquire(Path::new("/run/kiln/firewall.lock"))?;
    let uid = uid.to_string();
    for (tool, loopback) in [("iptables", "127.0.0.0/8"), ("ip6tables", "::1/128")] {
        let owner = ["-m", "owner", "--uid-owner", &uid];
        let reject: Vec<&str> = ["OUTPUT", "-d", loopback]
            .into_iter()
            .chain(owner)
            .chain(["-j", "REJECT"])
            .collect();
        // Inserted after the reject, so they land above it.
        let dns = ["udp", "tcp"].map(|proto| {
            ["OUTPUT", "-d", loopback, "-p", proto, "--dport", "53"]
                .into_iter()
                .chain(owner)
                .chain(["-j", "ACCEPT"])
                .collect::<Vec<&str>>()
        });
        for rule in std::iter::once(&reject).chain(dns.iter()) {
            let present = std::process::Command::new(tool)
                .args(["-w", "-C"])
                .args(rule)
                .output()
                .is_ok_and(|out| out.status.success());
            if present {
                continue;
            }
            let out = std::process::Command::new(tool)
                .args(["-w", "-I"])
                .args(rule)
                .output()
                .map_err(|source| QemuError::NetworkHelper {
                    program: tool.into(),
                    source,
                })?;
            if !out.status.success() {
                return Err(QemuError::NetworkHelper {
                    program: tool.into(),
                    source: std::io::Error::other(
                        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// The user passt should run as, with the firewall refusing its loopback traffic; `None`
/// (with a warning) where that cannot be had: kiln not root, or no [`USER`].
fn confined_user() -> Result<Option<&'static str>> {
    if !rustix::process::geteuid().is_root() {
        log::warn!(
            "not root: passt runs as this user, and a root guest that routes 127.0.0.0/8 out \
             of its NIC reaches the host's loopback (docs/security.md)"
        );
        return Ok(None);
    }
    let Some(uid) = user_uid() else {
        log::warn!(
            "no user {USER} (scripts/setup.sh makes it): a root guest that routes 127.0.0.0/8 \
             out of its NIC reaches the host's loopback (docs/security.md)"
        );
        return Ok(None);
    };
    refuse_loopback(uid)?;
    Ok(Some(USER))
}

/// Waits (at most 3 s) for the VM's passt, named by `pidfile`, to end once its QEMU has:
/// then kills it. `rm` returns with nothing of the VM left running.
pub async fn wait_gone(pidfile: &Path) {
    if let Some(pid) = super::process::read_pidfile(pidfile) {
        // Only a process whose command line says passt: a recycled pid is left alone.
        super::process::wait_or_kill_with(pid, b"passt", std::time::Duration::from_secs(3)).await;
    }
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

/// How long QEMU may take to listen on its netdev socket once it has daemonized.
const LISTEN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to the netdev socket QEMU listens on. QEMU binds it from a thread of its own
/// (`-netdev stream,server=on` listens asynchronously), so right after QEMU has daemonized
/// the socket may not exist yet, or not listen yet: tried again, every few milliseconds,
/// while `alive` says QEMU runs and until [`LISTEN_DEADLINE`].
async fn connect(
    socket: &Path,
    alive: impl Fn() -> bool,
) -> Result<std::os::unix::net::UnixStream> {
    let deadline = tokio::time::Instant::now() + LISTEN_DEADLINE;
    loop {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && tokio::time::Instant::now() < deadline
                    && alive() =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            Err(err) => return Err(IoError::new("connect to", socket, err).into()),
        }
    }
}

/// Connects passt to the netdev QEMU (alive while `alive` says so) listens on at `socket`.
/// passt runs on after kiln exits and ends with QEMU; what it says goes to `log`, its pid to
/// `pidfile`.
pub async fn attach(
    program: &Path,
    socket: &Path,
    log: &Path,
    pidfile: &Path,
    alive: impl Fn() -> bool,
) -> Result<()> {
    let stream = connect(socket, alive).await?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(IoError::at("open", log))?;
    let err = out.try_clone().map_err(IoError::at("open", log))?;
    let user = confined_user()?;
    let mut child = tokio::process::Command::new(program)
        .args(args())
        .args(user.map(|u| ["--runas", u]).into_iter().flatten())
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

    /// QEMU binds its netdev socket from a thread: a socket that comes a little after QEMU
    /// daemonized is waited for; one whose QEMU is gone is not.
    #[tokio::test]
    async fn the_netdev_socket_is_waited_for_while_qemu_lives() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("net.sock");
        let binding = socket.clone();
        let listener = tokio::task::spawn_blocking(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            std::os::unix::net::UnixListener::bind(&binding).unwrap()
        });
        connect(&socket, || true).await.unwrap();
        drop(listener.await.unwrap());

        let gone = dir.path().join("gone.sock");
        let started = std::time::Instant::now();
        let err = connect(&gone, || false).await.unwrap_err();
        assert!(err.to_string().contains("gone.sock"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

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
