//! Commands on a guest pseudo-terminal: its size and resizes, Ctrl-C through the guest's line
//! discipline, and the exit code of the shell.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use kiln::agent::ExecSession;
use kiln::progress::NoProgress;
use kiln::{ExecEvent, ExecRequest, ExitStatus, TtySize, VmSpec};
use kiln_testkit::TestEnv;

/// Reads output until `marker` appears; returns everything read.
async fn read_until(session: &mut ExecSession, marker: &str) -> String {
    let mut seen = String::new();
    let wait = async {
        while !seen.contains(marker) {
            match session.next_event().await.unwrap() {
                Some(ExecEvent::Stdout(data)) => seen.push_str(&String::from_utf8_lossy(&data)),
                Some(ExecEvent::Stderr(_)) => panic!("a tty session has no separate stderr"),
                other => panic!("ended before {marker:?}: {other:?}; output: {seen}"),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .is_err()
    {
        panic!("no {marker:?} within 20 s; output so far: {seen:?}");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_on_a_tty_sees_its_size_resizes_and_ctrl_c() {
    let env = TestEnv::new();
    let kiln = env.kiln();
    let spec = VmSpec::builder("tty").memory_mib(256).build().unwrap();
    let vm = kiln.up(spec, &NoProgress).await.unwrap();
    let agent = vm.agent().await.unwrap();

    let request = ExecRequest::new(["sh"])
        .tty(TtySize { rows: 31, cols: 97 })
        .stdin(true);
    let mut session = agent.exec(request).await.unwrap();
    let mut keys = session.take_stdin().unwrap();

    // Markers are computed by the shell, so the echo of the typed line never matches.
    keys.write(b"stty size; tty; echo m-$((40+2))\n")
        .await
        .unwrap();
    let out = read_until(&mut session, "m-42").await;
    assert!(out.contains("31 97"), "{out:?}");
    assert!(out.contains("/dev/pts/"), "{out:?}");

    session
        .resize(TtySize {
            rows: 50,
            cols: 132,
        })
        .await
        .unwrap();
    keys.write(b"stty size; echo m-$((50+2))\n").await.unwrap();
    let out = read_until(&mut session, "m-52").await;
    assert!(out.contains("50 132"), "{out:?}");

    // Ctrl-C is a byte on a tty: the guest's line discipline interrupts the foreground job.
    keys.write(b"sleep 60; echo m-$((60+2))\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    keys.write(&[3]).await.unwrap();
    keys.write(b"echo m-$((70+2))\n").await.unwrap();
    let out = read_until(&mut session, "m-72").await;
    assert!(!out.contains("m-62"), "sleep was not interrupted: {out:?}");

    keys.write(b"exit 7\n").await.unwrap();
    let status = loop {
        match session.next_event().await.unwrap() {
            Some(ExecEvent::Exited(status)) => break status,
            Some(_) => {}
            None => panic!("no exit status"),
        }
    };
    assert_eq!(status, ExitStatus::Code(7));
    drop(agent);
    kiln.remove("tty", true, &NoProgress).await.unwrap();
}
