//! The host's security posture as data (`kiln security status`): what protects the host from
//! its guests and the VMs from other users, each item with its evidence and, where it is
//! weaker than it could be, how to fix it. Read-only: nothing here changes the host.

use std::os::unix::fs::MetadataExt;

use super::{Check, Status};
use crate::state::KnownHosts;
use crate::{AccelProbe, Paths};

/// Every item `kiln security status` reports.
pub async fn posture(paths: &Paths, libvirt_uri: &str) -> Vec<Check> {
    let mut checks = Vec::new();
    let probe = AccelProbe::probe();
    checks.push(Check::new(
        "acceleration",
        if probe.kvm_usable {
            Status::Ok
        } else {
            Status::Warn
        },
        format!(
            "{}: {}",
            if probe.kvm_usable { "kvm" } else { "tcg" },
            probe.reason
        ),
    ));
    checks.push(agent_secrets(paths));
    checks.push(state_modes(paths));
    checks.push(guest_network());
    checks.extend(libvirt_transports(paths, libvirt_uri));
    checks.push(Check::new(
        "qemu sandbox",
        Status::Ok,
        "every QEMU kiln starts runs with -sandbox on,obsolete=deny,resourcecontrol=deny \
         (seccomp), and shares use security_model=mapped-xattr (no guest-made setuid files)",
    ));
    checks.push(Check::new(
        "console",
        Status::Ok,
        "a console is a pseudo-terminal served by the authenticated agent, one per VM at a \
         time, detached after 15 minutes without input or output (KILN_CONSOLE_IDLE); the \
         serial log keeps 8 MiB per boot",
    ));
    checks
}

/// Each VM's agent secret: the guest's proof, so it must be the owner's alone.
fn agent_secrets(paths: &Paths) -> Check {
    let mut loose = Vec::new();
    let mut count = 0;
    if let Ok(vms) = std::fs::read_dir(paths.vms_dir()) {
        for vm in vms.flatten() {
            let secret = vm.path().join("secret");
            if let Ok(meta) = std::fs::metadata(&secret) {
                count += 1;
                if meta.mode() & 0o077 != 0 {
                    loose.push(secret.display().to_string());
                }
            }
        }
    }
    if loose.is_empty() {
        Check::new(
            "agent authentication",
            Status::Ok,
            format!(
                "each VM has its own secret, given to the guest through fw_cfg and proved both \
                 ways before any command; {count} local secret file(s), all 0600"
            ),
        )
    } else {
        Check::new(
            "agent authentication",
            Status::Fail,
            format!("secret files others can read: {}", loose.join(", ")),
        )
        .fix_owned(
            ["chmod".to_owned(), "600".to_owned()]
                .into_iter()
                .chain(loose)
                .collect(),
        )
    }
}

/// kiln's directories (sockets included) must be the user's alone.
fn state_modes(paths: &Paths) -> Check {
    let mut dirs = vec![
        paths.data_dir().to_owned(),
        paths.runtime_dir().to_owned(),
        paths.vms_dir(),
    ];
    for parent in [paths.vms_dir(), paths.runtime_dir().join("vms")] {
        if let Ok(entries) = std::fs::read_dir(parent) {
            dirs.extend(entries.flatten().map(|e| e.path()));
        }
    }
    let uid = rustix::process::geteuid().as_raw();
    let loose: Vec<String> = dirs
        .iter()
        .filter_map(|dir| {
            let meta = std::fs::metadata(dir).ok()?;
            (meta.is_dir() && (meta.mode() & 0o077 != 0 || meta.uid() != uid))
                .then(|| format!("{} ({:o})", dir.display(), meta.mode() & 0o777))
        })
        .collect();
    if loose.is_empty() {
        Check::new(
            "state and sockets",
            Status::Ok,
            format!(
                "data {} and sockets {}: 0700 and yours, each VM's too",
                paths.data_dir().display(),
                paths.runtime_dir().display()
            ),
        )
    } else {
        Check::new(
            "state and sockets",
            Status::Fail,
            format!("directories others can enter: {}", loose.join(", ")),
        )
    }
}

/// What a guest's default NIC reaches.
fn guest_network() -> Check {
    let passt = crate::qemu::passt_binary();
    if !crate::qemu::passt_installed(&passt) {
        return Check::new(
            "guest network",
            Status::Fail,
            "passt is missing: the default policy (nat) cannot run",
        )
        .fix(&["apt-get", "install", "passt"]);
    }
    let root = rustix::process::geteuid().is_root();
    match (root, crate::qemu::passt_user_uid()) {
        (true, Some(uid)) => Check::new(
            "guest network",
            Status::Ok,
            format!(
                "default policy nat: outbound through passt, run as {} (uid {uid}), whose \
                 connections to the host's loopback the firewall refuses; guests on kiln-nat \
                 (libvirt) cannot reach each other",
                crate::qemu::PASST_USER
            ),
        ),
        (true, None) => Check::new(
            "guest network",
            Status::Warn,
            format!(
                "no user {}: passt runs as root, and a root guest that routes 127.0.0.0/8 to \
                 its NIC reaches the host's loopback",
                crate::qemu::PASST_USER
            ),
        )
        .fix(&["scripts/setup.sh"]),
        (false, _) => Check::new(
            "guest network",
            Status::Warn,
            "kiln is not root: passt runs as you, unconfined by the firewall, so a root guest \
             that routes 127.0.0.0/8 to its NIC reaches this host's loopback",
        ),
    }
}

/// The libvirt hosts in use, and whether their transport authenticates.
fn libvirt_transports(paths: &Paths, default_uri: &str) -> Vec<Check> {
    let mut uris = KnownHosts::new(paths).libvirt_uris().unwrap_or_default();
    if !uris.iter().any(|u| u == default_uri) {
        uris.push(default_uri.to_owned());
    }
    uris.iter()
        .map(|uri| {
            let (status, how) = transport(uri);
            let mut check = Check::new("libvirt transport", status, format!("{uri}: {how}"));
            if status == Status::Fail {
                check = check.fix(&[
                    "kiln",
                    "up",
                    "NAME",
                    "--connect",
                    "qemu+ssh://root@HOST/system",
                ]);
            }
            check
        })
        .collect()
}

/// How a libvirt URI's transport authenticates its client.
pub fn transport(uri: &str) -> (Status, &'static str) {
    let (scheme, rest) = uri.split_once("://").unwrap_or((uri, ""));
    if scheme == "test" {
        return (Status::Ok, "libvirt's test driver (no daemon)");
    }
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    if query.split('&').any(|p| p == "no_verify=1") {
        return (
            Status::Warn,
            "no_verify=1: the server's identity is not checked, so a machine in the middle \
             could pose as the host",
        );
    }
    let remote = !rest.starts_with('/');
    match scheme.split_once('+').map_or("", |(_, t)| t) {
        // `qemu://host/system` (a host named, no transport) is TLS.
        "" if remote => (Status::Ok, "TLS with client certificates"),
        "" | "unix" => (
            Status::Ok,
            "a local Unix socket: libvirt checks the client's uid",
        ),
        "ssh" | "libssh" | "libssh2" => (
            Status::Ok,
            "SSH: your key authenticates you, and the connection is encrypted",
        ),
        "tls" => (Status::Ok, "TLS with client certificates"),
        "tcp" => (
            Status::Fail,
            "plain TCP: no encryption, and no authentication unless the daemon asks for SASL",
        ),
        _ => (Status::Warn, "a transport kiln does not know"),
    }
}

impl Check {
    fn fix_owned(mut self, argv: Vec<String>) -> Self {
        self.fix = Some(argv);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_host_without_a_transport_is_tls() {
        assert_eq!(
            transport("qemu://host/system").1,
            "TLS with client certificates"
        );
        assert!(transport("qemu:///system").1.contains("Unix socket"));
    }

    #[test]
    fn transports_are_judged_by_how_they_authenticate() {
        for (uri, status) in [
            ("qemu:///system", Status::Ok),
            ("qemu+unix:///session", Status::Ok),
            ("qemu+ssh://root@host/system", Status::Ok),
            ("qemu+tls://host/system", Status::Ok),
            ("qemu+tcp://127.0.0.1/system", Status::Fail),
            ("test:///default", Status::Ok),
            ("qemu+weird://x/", Status::Warn),
            ("qemu://host/system", Status::Ok),
            ("qemu+ssh://root@h/system?no_verify=1", Status::Warn),
            (
                "qemu+ssh://root@h/system?keyfile=/k&no_verify=1",
                Status::Warn,
            ),
        ] {
            assert_eq!(transport(uri).0, status, "{uri}");
        }
    }

    #[test]
    fn loose_state_and_secrets_are_reported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let vm = paths.vms_dir().join("web-1");
        crate::state::create_private_dir(&vm).unwrap();
        crate::state::create_private_dir(paths.runtime_dir()).unwrap();
        std::fs::set_permissions(paths.data_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(vm.join("secret"), "x").unwrap();
        std::fs::set_permissions(vm.join("secret"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        assert_eq!(agent_secrets(&paths).status, Status::Ok);
        assert_eq!(
            state_modes(&paths).status,
            Status::Ok,
            "{:?}",
            state_modes(&paths)
        );
        std::fs::set_permissions(vm.join("secret"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::set_permissions(&vm, std::fs::Permissions::from_mode(0o755)).unwrap();
        let secrets = agent_secrets(&paths);
        assert_eq!(secrets.status, Status::Fail);
        assert!(secrets.fix.is_some());
        let modes = state_modes(&paths);
        assert_eq!(modes.status, Status::Fail);
        assert!(modes.detail.contains("web-1 (755)"), "{}", modes.detail);
    }
}
