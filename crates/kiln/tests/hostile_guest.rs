//! A hostile guest on a real VM. The session's command becomes root's worst: it replaces the
//! guest's `/bin/sh`, so the file list and the tar stream kiln asks for are lies chosen by the
//! test. Every lie must end in a typed error, with nothing written outside the workspace,
//! nothing half-moved into it, and the host's memory bounded.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;

use kiln::agent::{AgentClient, AgentError};
use kiln::copy::{self, CopyError, CopyLimit, CopyLimits};
use kiln::progress::NoProgress;
use kiln::session::Session;
use kiln::{Error, ExecRequest, ExitStatus, VmSpec};
use kiln_testkit::TestEnv;
use kiln_testkit::hostile::{
    PAYLOAD_DIR, REAL_BUSYBOX, install_fake_shell, pad, peak_rss_kib, reset_peak_rss, rss_kib,
    tar_entry, tar_header, tar_symlink,
};
use tar::EntryType;

/// Every file below `dir` with its contents (symlinks as `-> target`).
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("-> {}", target.display()));
            } else if meta.is_dir() {
                out.insert(rel, "/".to_owned());
                dirs.push(path);
            } else {
                out.insert(rel, std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    out
}

async fn run(agent: &AgentClient, script: &str) {
    let out = agent
        .exec(ExecRequest::new(["/bin/busybox", "sh", "-c", script]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Code(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the fake shell answers next: `list` for the listing, `stream` for the tar sender.
async fn lie(agent: &AgentClient, list: &str, stream: &[u8], endless: bool) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("list"), list).unwrap();
    std::fs::write(dir.path().join("stream"), stream).unwrap();
    copy::push(
        agent,
        &dir.path().join("list"),
        &format!("{PAYLOAD_DIR}/list"),
        &kiln::progress::NoProgress,
    )
    .await
    .unwrap();
    copy::push(
        agent,
        &dir.path().join("stream"),
        &format!("{PAYLOAD_DIR}/stream"),
        &kiln::progress::NoProgress,
    )
    .await
    .unwrap();
    let endless = if endless { "touch" } else { "rm -f" };
    run(agent, &format!("{endless} {PAYLOAD_DIR}/endless")).await;
}

/// Cases 8 to 10: lies that reach the host through the agent alone, with no session: `kiln cp`
/// pulling a tar stream that climbs out, a command flooding its output, and a pull that gets
/// no data but a trickle of stderr. The guest runs the fake shell already; `dest` is where
/// the host unpacks.
async fn lies_through_the_agent(agent: &AgentClient, dest: &Path) {
    // 8. `kiln cp` from the guest: the same lies through the other reader.
    let mut stream = Vec::new();
    tar_entry(
        &mut stream,
        EntryType::Regular,
        b"x/../../bashrc",
        b"owned\n",
    );
    lie(agent, "", &stream, false).await;
    let err = copy_error(
        copy::pull(
            agent,
            "/workspace/x",
            &dest.join("pulled"),
            &CopyLimits::default(),
            &kiln::progress::NoProgress,
        )
        .await,
    );
    assert!(matches!(err, CopyError::UnsafePath { .. }), "{err}");

    // 9. A command that floods its output: collected only up to the limit, then killed.
    let flood = agent
        .exec(ExecRequest::new([REAL_BUSYBOX, "yes", "flood"]))
        .await
        .unwrap()
        .output_limited(1 << 20)
        .await;
    assert!(
        matches!(flood, Err(AgentError::OutputTooLarge { .. })),
        "{flood:?}"
    );

    // 10. A guest that sends no data but keeps writing to stderr: the pull still times out.
    lie(agent, "5 100 ./new.txt\n", b"", false).await;
    run(agent, &format!("touch {PAYLOAD_DIR}/trickle")).await;
    let started = std::time::Instant::now();
    let err = copy::pull(
        agent,
        "/workspace/x",
        &dest.join("pulled"),
        &CopyLimits::default().max_idle(std::time::Duration::from_secs(3)),
        &kiln::progress::NoProgress,
    )
    .await;
    assert!(
        matches!(err, Err(Error::Agent(AgentError::Timeout { .. }))),
        "{err:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    run(agent, &format!("rm -f {PAYLOAD_DIR}/trickle")).await;
}

fn copy_error(result: kiln::Result<impl std::fmt::Debug>) -> CopyError {
    match result {
        Err(Error::Copy(err)) => err,
        other => panic!("expected a copy error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_guest_writes_nothing_outside_and_the_host_stays_bounded() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    // The workspace, with siblings a `..` would reach.
    let top = tempfile::tempdir().unwrap();
    let ws = top.path().join("ws");
    std::fs::create_dir_all(ws.join("src")).unwrap();
    std::fs::write(ws.join("src/lib.txt"), "v1\n").unwrap();
    std::fs::create_dir(top.path().join("outside")).unwrap();
    std::fs::write(top.path().join("bashrc"), "original\n").unwrap();

    let spec = VmSpec::builder("hostile").memory_mib(384).build().unwrap();
    let limits = CopyLimits::default()
        .max_entries(2000)
        .max_list_bytes(256 << 10);
    let mut session = Session::new(kiln.clone(), spec, Some(ws.clone())).with_limits(limits);
    session.ensure_ready(&NoProgress).await.unwrap();
    let agent = session.agent().unwrap().clone();
    run(&agent, &install_fake_shell()).await;
    let before = snapshot(top.path());
    let baseline_kib = rss_kib();
    reset_peak_rss();

    // 1. The file list names a path outside the workspace.
    lie(&agent, "9 100 ./../bashrc\n3 100 ./ok.txt\n", b"", false).await;
    let err = copy_error(session.pull_changes(&NoProgress).await);
    assert!(matches!(err, CopyError::UnsafePath { .. }), "{err}");

    // 2. An honest list, but the stream carries `..`, an absolute name, an unlisted file.
    for (name, want) in [
        (&b"../bashrc"[..], "unsafe"),
        (b"/etc/passwd", "unsafe"),
        (b"unlisted.txt", "unlisted"),
    ] {
        let mut stream = Vec::new();
        tar_entry(&mut stream, EntryType::Regular, b"new.txt", b"fine\n");
        tar_entry(&mut stream, EntryType::Regular, name, b"owned\n");
        lie(&agent, "5 100 ./new.txt\n", &stream, false).await;
        let err = copy_error(session.pull_changes(&NoProgress).await);
        let ok = match want {
            "unsafe" => matches!(err, CopyError::UnsafePath { .. }),
            _ => matches!(err, CopyError::UnlistedEntry { .. }),
        };
        assert!(ok, "{name:?}: {err}");
    }

    // 3. A directory replaced by a symlink: listed as a file, sent as a link, then used.
    for target in [&b".."[..], b"src"] {
        let mut stream = Vec::new();
        tar_symlink(&mut stream, b"out", target);
        tar_entry(&mut stream, EntryType::Regular, b"out/bashrc", b"owned\n");
        lie(&agent, "0 100 ./out\n6 100 ./out/bashrc\n", &stream, false).await;
        let err = copy_error(session.pull_changes(&NoProgress).await);
        assert!(
            matches!(
                err,
                CopyError::SymlinkEscapes { .. } | CopyError::UnsafePath { .. }
            ),
            "{err}"
        );
    }

    // 4. A symlink swapped in on the host between two pulls: the guest's honest file under
    //    `sub/` must not follow it.
    std::os::unix::fs::symlink("../outside", ws.join("sub")).unwrap();
    let mut stream = Vec::new();
    tar_entry(&mut stream, EntryType::Regular, b"sub/f", b"owned\n");
    lie(&agent, "6 100 ./sub/f\n", &stream, false).await;
    let err = copy_error(session.pull_changes(&NoProgress).await);
    assert!(matches!(err, CopyError::UnsafePath { .. }), "{err}");
    std::fs::remove_file(ws.join("sub")).unwrap();

    // 5. A PAX header announcing 1 GiB, followed by zeros for as long as the host reads.
    let mut stream = Vec::new();
    tar_header(&mut stream, EntryType::XHeader, b"pax", 1 << 30);
    lie(&agent, "5 100 ./new.txt\n", &stream, true).await;
    let err = copy_error(session.pull_changes(&NoProgress).await);
    assert!(
        matches!(
            err,
            CopyError::LimitExceeded {
                limit: CopyLimit::HeaderSize,
                ..
            }
        ),
        "{err}"
    );

    // 6. A flood of entries, all with the one listed name.
    let mut stream = Vec::new();
    for _ in 0..3000 {
        tar_entry(&mut stream, EntryType::Regular, b"new.txt", b"");
    }
    pad(&mut stream);
    lie(&agent, "0 100 ./new.txt\n", &stream, true).await;
    let err = copy_error(session.pull_changes(&NoProgress).await);
    assert!(
        matches!(
            err,
            CopyError::LimitExceeded {
                limit: CopyLimit::Entries,
                ..
            }
        ),
        "{err}"
    );

    // 7. A file list far past its limit.
    let list: String = (0..20_000)
        .map(|i| format!("1 1 ./flood-{i:08}\n"))
        .collect();
    lie(&agent, &list, b"", false).await;
    let err = copy_error(session.pull_changes(&NoProgress).await);
    assert!(
        matches!(
            err,
            CopyError::LimitExceeded {
                limit: CopyLimit::FileList,
                ..
            }
        ),
        "{err}"
    );

    // 8-10: what reaches the host through the agent alone (the same on libvirt).
    lies_through_the_agent(&agent, &ws).await;

    let peak_kib = peak_rss_kib();
    assert_eq!(
        snapshot(top.path()),
        before,
        "the lies changed the host's files"
    );
    assert!(
        peak_kib.saturating_sub(baseline_kib) < 64 << 10,
        "the host's memory grew by {} KiB (from {baseline_kib} KiB to a peak of {peak_kib} KiB)",
        peak_kib.saturating_sub(baseline_kib)
    );

    // The session still works after all that: an honest pull comes through.
    run(
        &agent,
        "ln -sf busybox /bin/sh && echo v2 >> /workspace/src/lib.txt",
    )
    .await;
    let report = session.pull_changes(&NoProgress).await.unwrap();
    assert_eq!(report.changed, ["src/lib.txt"]);
    assert_eq!(
        std::fs::read_to_string(ws.join("src/lib.txt")).unwrap(),
        "v1\nv2\n"
    );
    session.shutdown(&NoProgress).await.unwrap();
    kiln.forget_workspace_image(&ws);
}

/// A guest that floods its serial console cannot fill the host's disk: `serial.log` keeps at
/// most the cap of each boot, and the guest runs on (what it prints past the cap is dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_flooding_its_console_is_capped() {
    const CAP: u64 = 64 << 10;
    let env = TestEnv::new();
    kiln_testkit::require_vm_prerequisites();
    let backend = kiln::qemu::QemuBackend::new().with_console_log_max(CAP);
    let kiln =
        kiln::Kiln::new(env.paths(), backend).with_image_inputs(kiln_testkit::image_inputs());
    let spec = VmSpec::builder("flood").memory_mib(256).build().unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();
    let agent = vm.agent().await.unwrap();
    // About 1 MiB, sixteen times the cap, straight to the serial port as root.
    run(
        &agent,
        "head -c 1048576 /dev/zero | tr '\\0' x > /dev/ttyS0; echo done",
    )
    .await;
    let log = vm.paths().serial_log();
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(
        len <= CAP,
        "serial.log grew to {len} bytes, past the cap of {CAP}"
    );
    assert!(len > 0, "the boot was not logged");
    // The guest runs on, and answers.
    let out = agent
        .exec(ExecRequest::new(["echo", "still here"]))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"still here\n");
    drop(agent);
    kiln.remove("flood", true, &NoProgress).await.unwrap();
}

/// The lies that need no session (cases 8 to 10), from a guest on a real libvirtd: its agent
/// is reached through a libvirt channel, and the host must hold just the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_guest_on_libvirt_is_held_the_same() {
    use kiln::topology::Host;
    kiln_testkit::require_libvirtd();
    let env = TestEnv::new();
    let name = kiln_testkit::unique_name("kt-hostile");
    let host = env.libvirt_host("qemu:///system", &name).await;
    let spec = VmSpec::builder(&name).memory_mib(384).build().unwrap();
    host.up(&spec, &NoProgress).await.unwrap();
    let body = tokio::spawn({
        let host = host.clone();
        let name = name.clone();
        async move {
            let agent = Host::agent(&host, &name, std::time::Duration::from_secs(30))
                .await
                .unwrap();
            run(&agent, "mkdir -p /workspace").await;
            run(&agent, &install_fake_shell()).await;
            let top = tempfile::tempdir().unwrap();
            std::fs::create_dir(top.path().join("ws")).unwrap();
            std::fs::write(top.path().join("bashrc"), "original\n").unwrap();
            let before = snapshot(top.path());
            let baseline_kib = rss_kib();
            reset_peak_rss();
            lies_through_the_agent(&agent, &top.path().join("ws")).await;
            assert_eq!(
                snapshot(top.path()),
                before,
                "the lies changed the host's files"
            );
            let grew = peak_rss_kib().saturating_sub(baseline_kib);
            assert!(grew < 64 << 10, "the host's memory grew by {grew} KiB");

            // A console flood: libvirt's virtlogd rotates the log at 2 MiB (its default).
            run(
                &agent,
                "head -c 3145728 /dev/zero | tr '\\0' x > /dev/ttyS0",
            )
            .await;
            let mut logged = 0u64;
            let mut offset = 0;
            loop {
                let chunk = host.read_log(&name, offset).await.unwrap();
                if chunk.data.is_empty() {
                    break;
                }
                logged += chunk.data.len() as u64;
                offset = chunk.next_offset;
            }
            // What is left is the flood's part after the last rotation: it did get through.
            assert!(
                logged > 512 << 10 && logged <= 2 << 20,
                "the console log holds {logged} bytes: not what a 3 MiB flood rotated at \
                 2 MiB leaves"
            );
        }
    })
    .await;
    let _ = host.remove(&name, true, &NoProgress).await;
    if let Err(panic) = body {
        std::panic::resume_unwind(panic.into_panic());
    }
}
