//! The host's agent client against the real `kiln-agent` binary, served over a Unix socket
//! (the same code that runs in the guest, minus the virtio port), and against hostile fakes.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use kiln::agent::{AgentClient, AgentError, ExecEvent};
use kiln::{ExecRequest, ExitStatus};
use kiln_proto::{DecodeError, MAX_FRAME_LEN, SYNC_MAGIC};
use tokio::io::AsyncWriteExt;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const TIMEOUT: Duration = Duration::from_secs(10);

struct Agent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_agent() -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let socket = dir.path().join("agent.sock");
    let child = Command::new(kiln_testkit::agent_binary())
        .arg("--unix")
        .arg(&socket)
        .arg("--secret-file")
        .arg(&secret)
        .spawn()
        .unwrap();
    Agent {
        child,
        socket,
        _dir: dir,
    }
}

async fn connect(agent: &Agent) -> AgentClient {
    AgentClient::connect(&agent.socket, SECRET, TIMEOUT)
        .await
        .unwrap()
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

#[tokio::test]
async fn exec_returns_exit_code_and_keeps_stderr_apart() {
    let agent = spawn_agent();
    let client = connect(&agent).await;
    let out = client
        .exec(sh("echo to-out; echo to-err >&2; exit 7"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(7));
    assert_eq!(out.stdout, b"to-out\n");
    assert_eq!(out.stderr, b"to-err\n");
}

#[tokio::test]
async fn a_signal_ends_the_command_and_is_reported() {
    let agent = spawn_agent();
    let client = connect(&agent).await;
    let session = client.exec(sh("kill -TERM $$")).await.unwrap();
    assert_eq!(
        session.output().await.unwrap().status,
        ExitStatus::Signal(15)
    );
}

#[tokio::test]
async fn stdin_reaches_the_command_and_eof_ends_it() {
    let agent = spawn_agent();
    let client = connect(&agent).await;
    let request = ExecRequest::new(["wc", "-c"]).stdin(true);
    let mut session = client.exec(request).await.unwrap();
    let mut stdin = session.take_stdin().unwrap();
    stdin.write(&vec![b'x'; 200_000]).await.unwrap();
    stdin.close().await.unwrap();
    let out = session.output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200000");
}

#[tokio::test]
async fn concurrent_execs_on_one_connection_get_their_own_output() {
    let agent = spawn_agent();
    let client = connect(&agent).await;
    let runs = (0..10).map(|i| {
        let client = client.clone();
        async move {
            let script = format!("sleep 0.$((RANDOM % 3)); echo job-{i}; exit {i}");
            let out = client.exec(sh(&script)).await?.output().await?;
            Ok::<_, AgentError>((i, out))
        }
    });
    for result in futures_join_all(runs).await {
        let (i, out) = result.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("job-{i}\n"));
        assert_eq!(out.status, ExitStatus::Code(i));
    }
}

#[tokio::test]
async fn output_larger_than_a_frame_arrives_whole_and_in_order() {
    let agent = spawn_agent();
    let client = connect(&agent).await;
    let mut session = client.exec(sh("seq 1 400000")).await.unwrap();
    let mut stdout = Vec::new();
    while let Some(event) = session.next_event().await.unwrap() {
        match event {
            ExecEvent::Stdout(data) => stdout.extend(data),
            ExecEvent::Stderr(_) => {}
            ExecEvent::Exited(status) => assert!(status.success()),
        }
    }
    let expected: String = (1..=400_000).map(|n| format!("{n}\n")).collect();
    assert!(stdout.len() > MAX_FRAME_LEN);
    assert!(stdout == expected.as_bytes(), "output differs");
}

#[tokio::test]
async fn missing_command_is_a_typed_error() {
    let agent = spawn_agent();
    let client = connect(&agent).await;
    let err = client
        .exec(ExecRequest::new(["/no/such/program"]))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::CommandNotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn wrong_secret_is_refused_both_ways() {
    let agent = spawn_agent();
    let err = AgentClient::connect(&agent.socket, b"not the secret", TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::AgentNotAuthentic), "{err:?}");
    // The agent serves the next, honest host afterwards.
    let client = connect(&agent).await;
    client.ping().await.unwrap();
}

#[tokio::test]
async fn a_new_connection_replaces_an_old_one_cleanly() {
    let agent = spawn_agent();
    let first = connect(&agent).await;
    let _running = first.exec(sh("sleep 30")).await.unwrap();
    drop(_running);
    drop(first);
    let second = connect(&agent).await;
    let out = second
        .exec(sh("echo again"))
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"again\n");
}

#[tokio::test]
async fn a_guest_that_goes_silent_after_the_handshake_times_out_on_every_request() {
    let agent = spawn_agent();
    let client = connect(&agent)
        .await
        .with_reply_timeout(Duration::from_millis(500));
    client.ping().await.unwrap();
    let running = client.exec(sh("sleep 30")).await.unwrap();
    // The agent stops answering, as a hung or hostile guest would.
    let pid = rustix::process::Pid::from_raw(agent.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let started = std::time::Instant::now();
    let ping = client.ping().await;
    let exec = client.exec(sh("true")).await;
    let identity = client.set_identity("x", SECRET, b"seed").await;
    let mut running = running;
    let event = running
        .next_event_within(Duration::from_millis(500), "output")
        .await;
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    for (what, result) in [
        ("ping", ping.map(|_| ())),
        ("exec", exec.map(|_| ())),
        ("set_identity", identity),
        ("output", event.map(|_| ())),
    ] {
        assert!(
            matches!(result, Err(AgentError::Timeout { .. })),
            "{what}: {result:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A fake agent that answers the handshake with `reply` and then stays silent.
async fn fake_agent(socket: &Path, reply: Vec<u8>) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(&reply).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
}

#[tokio::test]
async fn an_oversized_frame_from_the_guest_is_refused_before_buffering() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("evil.sock");
    let mut reply = b"junk before the magic".to_vec();
    reply.extend(SYNC_MAGIC);
    reply.extend(u32::MAX.to_be_bytes());
    let _fake = fake_agent(&socket, reply).await;
    let err = AgentClient::connect(&socket, SECRET, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Protocol(DecodeError::FrameTooLarge { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_silent_guest_times_out_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("silent.sock");
    let _fake = fake_agent(&socket, Vec::new()).await;
    let err = AgentClient::connect(&socket, SECRET, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn a_truncated_frame_then_eof_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("trunc.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut reply = SYNC_MAGIC.to_vec();
        reply.extend(100u32.to_be_bytes());
        reply.extend([0u8; 10]);
        stream.write_all(&reply).await.unwrap();
        // Dropping the stream ends it inside the frame.
    });
    let err = AgentClient::connect(&socket, SECRET, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Protocol(DecodeError::Truncated { .. })),
        "{err:?}"
    );
}

async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// A fake agent that reads the host's `Hello` and answers with what `answers` makes of its
/// nonce, then sends `Ready` to whatever comes next.
async fn answering_agent(
    socket: &Path,
    answers: impl FnOnce([u8; 32]) -> Vec<u8> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use kiln_proto::{Envelope, FrameDecoder, Message, SyncScanner};
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut scanner = SyncScanner::new();
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 4096];
        let nonce = loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the host hung up before its Hello");
            if let Some(rest) = scanner.feed(&buf[..n]) {
                decoder.push(rest);
            }
            if let Some(Envelope {
                message: Message::Hello { nonce, .. },
                ..
            }) = decoder.next_envelope().unwrap()
            {
                break nonce;
            }
        };
        stream.write_all(&answers(nonce)).await.unwrap();
        // The host's Auth: answered without checking (the host is not under test here).
        let _ = stream.read(&mut buf).await;
        let ready = kiln_proto::encode_frame(&Envelope::new(0, Message::Ready)).unwrap();
        let _ = stream.write_all(&ready).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
}

fn welcome(echo: [u8; 32], proof: [u8; 32]) -> Vec<u8> {
    use kiln_proto::{AgentInfo, Envelope, Message, PROTOCOL_VERSION};
    let mut out = SYNC_MAGIC.to_vec();
    out.extend(
        kiln_proto::encode_frame(&Envelope::new(
            0,
            Message::Welcome {
                version: PROTOCOL_VERSION,
                echo,
                nonce: [7; 32],
                proof,
                agent: AgentInfo {
                    agent_version: "fake".into(),
                    kernel_release: "fake".into(),
                    hostname: "fake".into(),
                },
            },
        ))
        .unwrap(),
    );
    out
}

/// A port can hold the answer to an earlier client's handshake (written while nobody was
/// connected). It answers another nonce, so it is skipped, not taken for a forgery.
#[tokio::test]
async fn a_stale_answer_to_an_earlier_handshake_is_skipped() {
    use kiln_proto::handshake::{Role, proof};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stale.sock");
    let _fake = answering_agent(&socket, |nonce| {
        let earlier = [9; 32];
        let mut out = b"output of an earlier session".to_vec();
        out.extend(welcome(earlier, proof(SECRET, Role::Agent, &earlier)));
        out.extend(welcome(nonce, proof(SECRET, Role::Agent, &nonce)));
        out
    })
    .await;
    let agent = AgentClient::connect(&socket, SECRET, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(agent.info().agent_version, "fake");
}

/// An answer to this very handshake with a bad proof is a forgery: refused at once.
#[tokio::test]
async fn a_forged_answer_to_this_handshake_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("forged.sock");
    let _fake = answering_agent(&socket, |nonce| welcome(nonce, [0; 32])).await;
    let err = AgentClient::connect(&socket, SECRET, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::AgentNotAuthentic), "{err:?}");
}
