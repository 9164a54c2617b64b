//! Test kit for kiln (dev only): an isolated state directory per test, a shared image cache,
//! the real `kiln` binary and agent, and prerequisite checks that fail naming what is missing.

pub mod clients;
pub mod events;
pub mod faults;
pub mod hostile;
pub mod net;
pub mod session_host;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln::image::ImageInputs;
use kiln::libvirt::LibvirtOptions;
use kiln::qemu::QemuBackend;
use kiln::topology::LibvirtHost;
use kiln::{Kiln, Paths};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The static guest agent built by `scripts/build-agent.sh`.
pub fn agent_binary() -> PathBuf {
    let path = std::env::var_os("KILN_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/x86_64-unknown-linux-gnu/agent/kiln-agent")
        });
    assert!(
        path.is_file(),
        "prerequisite missing: the static guest agent at {} (build it with scripts/build-agent.sh)",
        path.display()
    );
    path
}

/// Fails the test unless QEMU and busybox-static are installed.
pub fn require_vm_prerequisites() {
    for (what, path) in [
        (
            "qemu-system-x86_64 (apt: qemu-system-x86)",
            "/usr/bin/qemu-system-x86_64",
        ),
        ("busybox-static", "/bin/busybox"),
    ] {
        assert!(
            Path::new(path).exists(),
            "prerequisite missing: {what} at {path} (run scripts/setup.sh)"
        );
    }
}

/// What the default image is built from, in tests.
pub fn image_inputs() -> ImageInputs {
    ImageInputs::new("/bin/busybox", agent_binary())
}

/// The socket of a system libvirtd on this machine.
pub const LIBVIRTD_SOCKET: &str = "/run/libvirt/libvirt-sock";

/// Fails the test unless a system libvirtd answers on this machine.
pub fn require_libvirtd() {
    require_vm_prerequisites();
    assert!(
        Path::new(LIBVIRTD_SOCKET).exists(),
        "prerequisite missing: a running libvirtd (socket {LIBVIRTD_SOCKET}); start it with `scripts/libvirtd.sh start`"
    );
}

/// Where `scripts/libvirtd.sh` keeps its loopback sshd's keys (root's, `0700`).
pub const TEST_SSH_DIR: &str = "/run/kiln-test-ssh";
/// The port that sshd listens on, on 127.0.0.1 only.
pub const TEST_SSH_PORT: u16 = 16522;

/// The same system libvirtd reached as a remote host: over SSH to the loopback sshd of
/// `scripts/libvirtd.sh`, whose `ssh` wrapper holds the key made for this run and pins the
/// host key. (OpenSSH, as users' `qemu+ssh://` URIs do: libvirt's libssh2 transport crashed
/// about one command in three here, and its libssh one was six times slower.)
pub fn remote_libvirt_uri() -> String {
    format!("qemu+ssh://root@127.0.0.1:{TEST_SSH_PORT}/system?command={TEST_SSH_DIR}/ssh&no_tty=1")
}

/// Fails the test unless the system libvirtd can be reached as a remote host over SSH.
pub fn require_libvirtd_remote() {
    require_libvirtd();
    let key = Path::new(TEST_SSH_DIR).join("ssh");
    assert!(
        key.is_file() && std::net::TcpStream::connect(("127.0.0.1", TEST_SSH_PORT)).is_ok(),
        "prerequisite missing: the test sshd on 127.0.0.1:{TEST_SSH_PORT} with its client {}; \
         `scripts/libvirtd.sh start` starts it",
        key.display()
    );
}

/// A TCP port on 127.0.0.1 nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("cannot bind a port on 127.0.0.1: {e}"))
}

/// A name no other test run uses at the same time (libvirt objects are host-wide).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The image cache shared by all tests: `KILN_TEST_CACHE`, else `kiln-test` in the user's
/// cache directory. Outside the clone, so a fresh clone reuses the Debian images an earlier
/// run built (each takes a minute or two).
pub fn shared_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_TEST_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| workspace_root().join("target"));
    base.join("kiln-test")
}

/// One test's kiln state. Every QEMU it started is killed when it is dropped.
#[derive(Debug)]
pub struct TestEnv {
    home: tempfile::TempDir,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    pub fn new() -> Self {
        // Under /tmp: socket paths must stay short.
        let home = tempfile::Builder::new()
            .prefix("kiln-t")
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("cannot create a temp dir in /tmp: {e}"));
        Self { home }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn paths(&self) -> Paths {
        let home = self.home.path();
        Paths::new(home.join("data"), shared_cache_dir(), home.join("run"))
    }

    /// The library, on the QEMU backend, with this test's state and the built agent.
    pub fn kiln(&self) -> Kiln {
        require_vm_prerequisites();
        Kiln::new(self.paths(), QemuBackend::new()).with_image_inputs(image_inputs())
    }

    /// A `test:///…` URI of libvirt's test driver with its own, empty state: each URI is an
    /// independent "host" (no daemon, nothing runs).
    pub fn test_driver_uri(&self, host: &str) -> String {
        let node = self.home.path().join(format!("{host}.xml"));
        std::fs::write(&node, "<node/>\n")
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", node.display()));
        format!("test://{}", node.display())
    }

    /// A libvirt host at `uri` with a storage pool of its own (named `id`, under
    /// /var/lib/libvirt/images), so parallel tests and real kiln pools are never touched;
    /// images come from this test's inputs.
    pub async fn libvirt_host(&self, uri: &str, id: &str) -> LibvirtHost {
        self.libvirt_host_at(uri, id, &format!("/var/lib/libvirt/images/{id}"))
            .await
    }

    /// [`libvirt_host`](Self::libvirt_host) with the pool in `pool_path` (a session daemon's
    /// user's home).
    pub async fn libvirt_host_at(&self, uri: &str, id: &str, pool_path: &str) -> LibvirtHost {
        let options = LibvirtOptions::new(id, pool_path);
        LibvirtHost::connect_with(uri, options, &self.paths())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {uri}: {e}"))
            .with_image_inputs(image_inputs())
    }

    /// Runs `body` with a VM name of its own on `host`, then removes that VM whatever
    /// happened (the daemon is shared), and fails the test if the body failed.
    pub async fn on_libvirt<F, Fut>(&self, host: LibvirtHost, name: String, body: F)
    where
        F: FnOnce(LibvirtHost, String) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let outcome = tokio::spawn(body(host.clone(), name.clone())).await;
        let _ = host.remove(&name, true, &kiln::progress::NoProgress).await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic.into_panic());
        }
    }

    /// The real `kiln` binary (pass `env!("CARGO_BIN_EXE_kiln")`) with this test's state.
    pub fn cli(&self, kiln_binary: &str) -> Command {
        let mut command = Command::new(kiln_binary);
        command
            .env("KILN_HOME", self.home.path())
            .env("KILN_CACHE_DIR", shared_cache_dir())
            .env("KILN_AGENT", agent_binary())
            .env_remove("KILN_LOG")
            .stdin(std::process::Stdio::null());
        command
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let vms = self.home.path().join("run/vms");
        let Ok(entries) = std::fs::read_dir(&vms) else {
            return;
        };
        for entry in entries.flatten() {
            let pidfile = entry.path().join("qemu.pid");
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Runs `sh -c script` in VM `vm` on `host` through a connection of its own, asserts that it
/// exited 0, and returns its stdout.
pub async fn sh(host: &dyn kiln::topology::Host, vm: &str, script: &str) -> String {
    let agent = host
        .agent(vm, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("the agent of {vm}: {e}"));
    let out = async {
        agent
            .exec(kiln::ExecRequest::new(["sh", "-c", script]))
            .await?
            .output()
            .await
    }
    .await
    .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(out.status.success(), "{script}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
