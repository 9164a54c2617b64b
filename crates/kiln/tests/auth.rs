//! Only the VM's owner reaches its agent. On a real VM: its state directory and socket
//! directory are `0700` and its secret and record `0600`; another local user cannot even
//! connect to the agent socket; and the owner without the VM's secret is refused by the
//! guest (the handshake proves the secret both ways, see `agent_protocol.rs`).
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use kiln::agent::AgentError;
use kiln::progress::NoProgress;
use kiln::{AgentClient, VmSpec};
use kiln_testkit::TestEnv;

/// The user the "other local user" probe runs as.
const NOBODY: u32 = 65534;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Run as another user (see below): try to connect to the socket in `KILN_AUTH_PROBE`.
#[test]
fn probe_as_another_user() {
    let Some(socket) = std::env::var_os("KILN_AUTH_PROBE") else {
        return; // only meaningful when re-executed by the test below
    };
    match std::os::unix::net::UnixStream::connect(&socket) {
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {}
        other => panic!(
            "another user reached {}: {other:?}",
            Path::new(&socket).display()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_with_the_vm_secret_reaches_the_agent() {
    let env = TestEnv::new();
    let kiln = env.kiln().with_warm_starts(true);
    let spec = VmSpec::builder("auth").memory_mib(256).build().unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();
    let paths = vm.paths();

    assert_eq!(mode(paths.dir()), 0o700, "{}", paths.dir().display());
    assert_eq!(
        mode(paths.run_dir()),
        0o700,
        "{}",
        paths.run_dir().display()
    );
    assert_eq!(mode(&paths.secret()), 0o600);
    assert_eq!(mode(&paths.record()), 0o600);

    // Another local user: this test binary, copied where that user can run it, re-executed
    // under its uid to connect to the agent socket.
    let probe_dir = tempfile::Builder::new()
        .prefix("kiln-auth")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(probe_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let probe = probe_dir.path().join("probe");
    std::fs::copy(std::env::current_exe().unwrap(), &probe).unwrap();
    let out = std::process::Command::new(&probe)
        .args(["--exact", "probe_as_another_user", "--nocapture"])
        .env("KILN_AUTH_PROBE", paths.agent_socket(0))
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The owner, with a wrong secret: the guest refuses it.
    let wrong = [7u8; kiln_proto::handshake::SECRET_LEN];
    let refused =
        AgentClient::connect(&paths.agent_socket(0), &wrong, Duration::from_secs(10)).await;
    assert!(
        matches!(
            refused,
            Err(AgentError::AgentNotAuthentic
                | AgentError::HostRejected
                | AgentError::Handshake { .. })
        ),
        "{refused:?}"
    );
    // And with the right one, it answers.
    vm.agent_within(Duration::from_secs(10))
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    kiln.remove("auth", true, &NoProgress).await.unwrap();
}
