//! Shared folders (virtio-9p) and port forwards on real VMs: a read-only share refuses
//! writes even after the guest remounts it, a writable one reaches the host, a forwarded
//! port serves HTTP from the guest, and forwards can be added and removed while it runs.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use kiln::progress::NoProgress;
use kiln::qemu::QemuError;
use kiln::spec::{PortForward, ShareSpec};
use kiln::{Error, ExecRequest, ExitStatus, VmSpec};
use kiln_testkit::TestEnv;

use kiln_testkit::free_port;

/// `GET path` on 127.0.0.1:port; `None` when nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    (!answer.is_empty()).then_some(answer)
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_and_forwards_on_a_running_vm() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let ro = tempfile::tempdir().unwrap();
    let rw = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("index.html"), "<p>from the host</p>\n").unwrap();
    let (port, later) = (free_port(), free_port());

    let spec = VmSpec::builder("shares")
        .memory_mib(256)
        .share(ShareSpec::new(ro.path(), "/srv/www").read_only())
        .share(ShareSpec::new(rw.path(), "/srv/out"))
        .port(PortForward::tcp(port, 80))
        .build()
        .unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();

    // Read-only really is: the guest's mount refuses, and so does QEMU after a remount.
    let out = vm
        .exec_output(sh("cat /srv/www/index.html; echo x > /srv/www/new; \
             mount -o remount,rw /srv/www; echo y > /srv/www/new2"))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "<p>from the host</p>\n"
    );
    assert_ne!(out.status, ExitStatus::Code(0));
    assert!(!ro.path().join("new").exists() && !ro.path().join("new2").exists());
    let out = vm
        .exec_output(sh("echo from-guest > /srv/out/g.txt"))
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(0), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(rw.path().join("g.txt")).unwrap(),
        "from-guest\n"
    );
    // A guest root cannot plant a setuid-root program in the host's directory: the guest
    // sees its own mode, the host file carries none of it.
    let out = vm
        .exec_output(sh(
            "cp /bin/busybox /srv/out/suid && chown 0:0 /srv/out/suid \
             && chmod 6755 /srv/out/suid && stat -c %a /srv/out/suid",
        ))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "6755",
        "{out:?}"
    );
    let mode = std::fs::metadata(rw.path().join("suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o7000,
        0,
        "the host file is setuid or setgid: {mode:o}"
    );

    // A server in the guest, reached through the forwarded port.
    let out = vm.exec_output(sh("httpd -p 80 -h /srv/www")).await.unwrap();
    assert_eq!(out.status, ExitStatus::Code(0), "{out:?}");
    let answer = http_get(port, "/index.html").expect("no answer on the forwarded port");
    assert!(
        answer.contains("200 OK") && answer.contains("from the host"),
        "{answer}"
    );

    // A forward added while it runs; a host port in use is refused first.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().port();
    let err = kiln
        .forward("shares", PortForward::tcp(taken, 80))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Qemu(QemuError::PortInUse { .. })),
        "{err}"
    );
    drop(busy);
    kiln.forward("shares", PortForward::tcp(later, 80))
        .await
        .unwrap();
    assert!(
        http_get(later, "/index.html")
            .unwrap()
            .contains("from the host")
    );
    let err = kiln
        .forward("shares", PortForward::tcp(later, 81))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Spec(_)), "{err}");
    kiln.unforward("shares", PortForward::tcp(later, 80))
        .await
        .unwrap();
    assert!(
        http_get(later, "/").is_none(),
        "the removed forward still answers"
    );

    // Forwards and shares come back after a restart (the record keeps them).
    kiln.forward("shares", PortForward::tcp(later, 80))
        .await
        .unwrap();
    kiln.stop("shares", &NoProgress).await.unwrap();
    let vm = kiln.start("shares", &NoProgress).await.unwrap();
    let out = vm
        .exec_output(sh("httpd -p 80 -h /srv/www && cat /srv/out/g.txt"))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-guest\n");
    assert!(
        http_get(port, "/index.html")
            .unwrap()
            .contains("from the host")
    );
    assert!(
        http_get(later, "/index.html")
            .unwrap()
            .contains("from the host")
    );

    kiln.remove("shares", true, &NoProgress).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_share_or_a_busy_port_is_refused_before_anything_starts() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let spec = VmSpec::builder("bad-share")
        .share(ShareSpec::new("/no/such/dir", "/data"))
        .build()
        .unwrap();
    let err = kiln.up(spec, &NoProgress).await.unwrap_err();
    assert!(
        matches!(err, Error::Qemu(QemuError::ShareNotADirectory { .. })),
        "{err}"
    );
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = VmSpec::builder("bad-port")
        .port(PortForward::tcp(busy.local_addr().unwrap().port(), 80))
        .build()
        .unwrap();
    let err = kiln.up(spec, &NoProgress).await.unwrap_err();
    assert!(
        matches!(err, Error::Qemu(QemuError::PortInUse { .. })),
        "{err}"
    );
    assert!(kiln.list().await.unwrap().is_empty());
}
