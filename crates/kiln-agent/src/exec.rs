//! Running one command for the host: spawn, stream stdout and stderr separately, feed stdin,
//! report how it ended.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kiln_proto::{
    ExecRequest, ExitStatus, MAX_CHUNK_LEN, Message, RemoteError, RemoteErrorKind, StreamId,
};
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::link::Outgoing;
use crate::session::frame;

/// How long output may still arrive after the process exited (a background child may hold
/// its stdout open forever; the host is told the exit status regardless).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Sends frames tagged with the session epoch current when the sender was cloned.
#[derive(Debug, Clone)]
pub struct Sender {
    outgoing: mpsc::Sender<Outgoing>,
    pub epoch: Arc<AtomicU64>,
}

impl Sender {
    pub fn new(outgoing: mpsc::Sender<Outgoing>, epoch: Arc<AtomicU64>) -> Self {
        Self { outgoing, epoch }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        let out = Outgoing {
            epoch: self.epoch(),
            bytes: bytes.to_vec(),
        };
        let _ = self.outgoing.send(out).await;
    }

    pub async fn send(&self, stream: StreamId, message: Message) {
        self.send_in(self.epoch(), stream, message).await;
    }

    async fn send_in(&self, epoch: u64, stream: StreamId, message: Message) {
        if let Some(bytes) = frame(stream, message) {
            let _ = self.outgoing.send(Outgoing { epoch, bytes }).await;
        }
    }

    pub async fn send_error(&self, stream: StreamId, kind: RemoteErrorKind, message: &str) {
        let error = RemoteError {
            kind,
            message: message.to_owned(),
        };
        self.send(stream, Message::Error(error)).await;
    }
}

/// The session's handle on a running command.
#[derive(Debug)]
pub struct ExecControl {
    pid: Pid,
    stdin: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

impl ExecControl {
    pub fn stdin(&self, data: Vec<u8>) {
        if let Some(tx) = &self.stdin {
            let _ = tx.send(data);
        }
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn signal(&self, signal: i32) {
        // The command runs in its own process group: signal the whole group.
        if let Some(signal) = Signal::from_named_raw(signal) {
            let _ = rustix::process::kill_process_group(self.pid, signal);
        }
    }

    pub fn kill(self) {
        let _ = rustix::process::kill_process_group(self.pid, Signal::KILL);
    }
}

/// Starts `request` on `stream`. Reports a spawn failure to the host and returns `None`.
pub async fn start(
    stream: StreamId,
    request: ExecRequest,
    sender: Sender,
    done: mpsc::UnboundedSender<(u64, StreamId)>,
) -> Option<ExecControl> {
    let Some((program, args)) = request.argv.split_first() else {
        sender
            .send_error(stream, RemoteErrorKind::BadRequest, "empty command")
            .await;
        return None;
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(request.env.iter().map(|(k, v)| (k, v)))
        .stdin(if request.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &request.cwd {
        command.current_dir(cwd);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let kind = match err.kind() {
                std::io::ErrorKind::NotFound => RemoteErrorKind::NotFound,
                std::io::ErrorKind::PermissionDenied => RemoteErrorKind::PermissionDenied,
                _ => RemoteErrorKind::Other,
            };
            sender
                .send_error(stream, kind, &format!("cannot run {program}: {err}"))
                .await;
            return None;
        }
    };
    let raw_pid = child.id().unwrap_or(0);
    let pid = Pid::from_raw(raw_pid as i32)?;
    let epoch = sender.epoch();
    sender
        .send_in(epoch, stream, Message::Started { pid: raw_pid })
        .await;

    let stdin = child.stdin.take().map(|mut pipe| {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if pipe.write_all(&data).await.is_err() {
                    break;
                }
            }
            // Dropping the pipe closes the child's stdin.
        });
        tx
    });
    let stdout = child
        .stdout
        .take()
        .map(|pipe| tokio::spawn(pump(pipe, sender.clone(), epoch, stream, Message::Stdout)));
    let stderr = child
        .stderr
        .take()
        .map(|pipe| tokio::spawn(pump(pipe, sender.clone(), epoch, stream, Message::Stderr)));

    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => ExitStatus::Code(code),
                (None, Some(signal)) => ExitStatus::Signal(signal),
                (None, None) => ExitStatus::Code(-1),
            },
            Err(_) => ExitStatus::Code(-1),
        };
        for pump in [stdout, stderr].into_iter().flatten() {
            let abort = pump.abort_handle();
            if tokio::time::timeout(DRAIN_AFTER_EXIT, pump).await.is_err() {
                abort.abort();
            }
        }
        sender.send_in(epoch, stream, Message::Exited(status)).await;
        let _ = done.send((epoch, stream));
    });
    Some(ExecControl { pid, stdin })
}

async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    sender: Sender,
    epoch: u64,
    stream: StreamId,
    wrap: fn(Vec<u8>) -> Message,
) {
    let mut buf = vec![0u8; MAX_CHUNK_LEN];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => sender.send_in(epoch, stream, wrap(buf[..n].to_vec())).await,
        }
    }
}
