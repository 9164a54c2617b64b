//! A second real libvirt host on this machine: the `qemu:///session` daemon of an
//! unprivileged user, reached over SSH through an sshd of its own on loopback, with a key
//! made for the run. Together with the system daemon (over `scripts/libvirtd.sh`'s sshd) it
//! gives two independent hosts, each with its own daemon, pool and VMs. Everything is made
//! when the host starts and removed when it is dropped, whatever happened: the sshd, the
//! user's session daemon and QEMUs, the user and its home.
#![allow(clippy::unwrap_used)] // test support: a failure here is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The unprivileged user whose session daemon is the second host.
pub const SESSION_USER: &str = "kiln-remote";

/// The second host. [`SessionHost::uri`] reaches it; [`SessionHost::lose`] makes it
/// unreachable (its sshd and daemon stopped) and [`SessionHost::restore`] brings it back.
#[derive(Debug)]
pub struct SessionHost {
    dir: tempfile::TempDir,
    port: u16,
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("prerequisite missing: {program} ({e})"))
}

impl SessionHost {
    /// Makes the user (if missing), the keys and the sshd, and starts the sshd.
    pub fn start() -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "prerequisite missing: root (the test makes the user {SESSION_USER})"
        );
        assert!(
            Path::new("/usr/sbin/sshd").exists() && Path::new("/usr/bin/virt-ssh-helper").exists(),
            "prerequisite missing: /usr/sbin/sshd and /usr/bin/virt-ssh-helper \
             (openssh-server, libvirt-clients; scripts/setup.sh installs them)"
        );
        if !run("id", &["-u", SESSION_USER]).status.success() {
            let made = run(
                "useradd",
                &["--create-home", "--shell", "/bin/sh", SESSION_USER],
            );
            assert!(made.status.success(), "useradd {SESSION_USER}: {made:?}");
        }
        // A locked password (`!`) would make sshd refuse the user; `*` allows keys only.
        let unlocked = run("usermod", &["--password", "*", SESSION_USER]);
        assert!(unlocked.status.success(), "usermod: {unlocked:?}");
        // sshd reads the user's authorized keys as the user: the directory must be
        // traversable; the private keys in it stay root's (0600).
        let dir = tempfile::Builder::new()
            .prefix("kiln-sshhost")
            .tempdir_in("/tmp")
            .unwrap();
        set_mode(dir.path(), 0o755);
        let path = |name: &str| dir.path().join(name);
        for (key, comment) in [
            ("host_key", "kiln-test-host"),
            ("client_key", "kiln-test-client"),
        ] {
            let made = run(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    comment,
                    "-f",
                    path(key).to_str().unwrap(),
                ],
            );
            assert!(made.status.success(), "ssh-keygen: {made:?}");
        }
        std::fs::copy(path("client_key.pub"), path("authorized_keys")).unwrap();
        set_mode(&path("authorized_keys"), 0o644);
        let host = Self {
            port: crate::free_port(),
            dir,
        };
        let public = std::fs::read_to_string(host.path("host_key.pub")).unwrap();
        let mut fields = public.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        std::fs::write(
            host.path("known_hosts"),
            format!("[127.0.0.1]:{} {kind} {key}\n", host.port),
        )
        .unwrap();
        let ssh = format!(
            "#!/bin/sh\nexec ssh -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes \
             -o ConnectTimeout=5 -i {} \"$@\"\n",
            host.path("known_hosts").display(),
            host.path("client_key").display()
        );
        std::fs::write(host.path("ssh"), ssh).unwrap();
        set_mode(&host.path("ssh"), 0o700);
        std::fs::write(
            host.path("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1\nPort {}\nHostKey {}\nPidFile {}\n\
                 AuthorizedKeysFile {}\nAllowUsers {SESSION_USER}\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nX11Forwarding no\nAllowTcpForwarding no\n",
                host.port,
                host.path("host_key").display(),
                host.path("sshd.pid").display(),
                host.path("authorized_keys").display(),
            ),
        )
        .unwrap();
        host.restore();
        host
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The URI of the user's session daemon, over this host's sshd.
    pub fn uri(&self) -> String {
        format!(
            "qemu+ssh://{SESSION_USER}@127.0.0.1:{}/session?command={}&no_tty=1",
            self.port,
            self.path("ssh").display()
        )
    }

    /// Where kiln's pool `pool` lives on this host (the user's home).
    pub fn pool_path(&self, pool: &str) -> String {
        format!("/home/{SESSION_USER}/.local/share/libvirt/images/{pool}")
    }

    /// (Re)starts the sshd, and waits until it answers; nothing when it already does.
    pub fn restore(&self) {
        if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            return;
        }
        std::fs::create_dir_all("/run/sshd").unwrap();
        let started = run(
            "/usr/sbin/sshd",
            &["-f", self.path("sshd_config").to_str().unwrap()],
        );
        assert!(started.status.success(), "sshd: {started:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the second host's sshd did not listen on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The host goes away: its sshd and its daemon stop (its QEMUs run on, as a host that
    /// lost its network would keep its guests).
    pub fn lose(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.path("sshd.pid"))
            && let Some(pid) = pid
                .trim()
                .parse()
                .ok()
                .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = run("pkill", &["-TERM", "-u", SESSION_USER, "-x", "libvirtd"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SessionHost {
    fn drop(&mut self) {
        self.lose();
        // Whatever the user still runs: its QEMUs, virtlogd, a daemon restarted on demand.
        let _ = run("pkill", &["-KILL", "-u", SESSION_USER]);
        std::thread::sleep(Duration::from_millis(200));
        let _ = run("userdel", &["--remove", SESSION_USER]);
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
