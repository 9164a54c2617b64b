//! Running one command for the host: spawn, stream stdout and stderr separately, feed stdin,
//! report how it ended.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kiln_proto::{
    ExecRequest, ExitStatus, MAX_CHUNK_LEN, Message, RemoteError, RemoteErrorKind, StreamId,
    TtySize,
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
    /// The pseudo-terminal's controller side, for a command started with a tty.
    pty: Option<Arc<std::fs::File>>,
}

impl ExecControl {
    pub fn resize(&self, size: TtySize) {
        if let Some(pty) = &self.pty {
            let _ = rustix::termios::tcsetwinsize(pty.as_ref(), winsize(size));
        }
    }

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
    let Some((program, args)) = request.get_argv().split_first() else {
        sender
            .send_error(stream, RemoteErrorKind::BadRequest, "empty command")
            .await;
        return None;
    };
    if let Some(size) = request.get_tty() {
        return start_tty(stream, &request, size, sender, done).await;
    }
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(request.get_envs().iter().map(|(k, v)| (k, v)))
        .stdin(if request.get_stdin() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = request.get_cwd() {
        command.current_dir(cwd);
    }
    let (mut child, pid, epoch) = announce(command.spawn(), &sender, stream, program).await?;

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
        let status = exit_status(child.wait().await);
        for pump in [stdout, stderr].into_iter().flatten() {
            let abort = pump.abort_handle();
            if tokio::time::timeout(DRAIN_AFTER_EXIT, pump).await.is_err() {
                abort.abort();
            }
        }
        sender.send_in(epoch, stream, Message::Exited(status)).await;
        let _ = done.send((epoch, stream));
    });
    Some(ExecControl {
        pid,
        stdin,
        pty: None,
    })
}

/// Tells the host the process started (or why it did not); returns it with its pid and the
/// session epoch its output belongs to.
async fn announce(
    spawned: std::io::Result<tokio::process::Child>,
    sender: &Sender,
    stream: StreamId,
    program: &str,
) -> Option<(tokio::process::Child, Pid, u64)> {
    let child = match spawned {
        Ok(child) => child,
        Err(err) => {
            report_spawn_error(sender, stream, program, &err).await;
            return None;
        }
    };
    let raw_pid = child.id().unwrap_or(0);
    let pid = Pid::from_raw(raw_pid as i32)?;
    let epoch = sender.epoch();
    sender
        .send_in(epoch, stream, Message::Started { pid: raw_pid })
        .await;
    Some((child, pid, epoch))
}

fn exit_status(waited: std::io::Result<std::process::ExitStatus>) -> ExitStatus {
    match waited {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(signal)) => ExitStatus::Signal(signal),
            (None, None) => ExitStatus::Code(-1),
        },
        Err(_) => ExitStatus::Code(-1),
    }
}

async fn report_spawn_error(
    sender: &Sender,
    stream: StreamId,
    program: &str,
    err: &std::io::Error,
) {
    let kind = match err.kind() {
        std::io::ErrorKind::NotFound => RemoteErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => RemoteErrorKind::PermissionDenied,
        _ => RemoteErrorKind::Other,
    };
    sender
        .send_error(stream, kind, &format!("cannot run {program}: {err}"))
        .await;
}

fn winsize(size: TtySize) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Opens a pseudo-terminal: the controller side, and the path of the terminal side.
fn open_pty(size: TtySize) -> std::io::Result<(std::fs::File, std::path::PathBuf)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let controller = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&controller)?;
    unlockpt(&controller)?;
    let name = ptsname(&controller, Vec::new())?;
    let controller = std::fs::File::from(controller);
    rustix::termios::tcsetwinsize(&controller, winsize(size))?;
    Ok((
        controller,
        std::path::PathBuf::from(name.to_string_lossy().into_owned()),
    ))
}

/// Starts a command on a new pseudo-terminal. busybox `setsid -c` makes it a session leader
/// with the terminal as its controlling tty (no unsafe `pre_exec` needed here).
async fn start_tty(
    stream: StreamId,
    request: &ExecRequest,
    size: TtySize,
    sender: Sender,
    done: mpsc::UnboundedSender<(u64, StreamId)>,
) -> Option<ExecControl> {
    let program = request.get_argv().first().map_or("", String::as_str);
    let opened = open_pty(size).and_then(|(controller, path)| {
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
        };
        Ok((controller, open()?, open()?, open()?))
    });
    let (controller, tty_in, tty_out, tty_err) = match opened {
        Ok(files) => files,
        Err(err) => {
            report_spawn_error(&sender, stream, "a pseudo-terminal for", &err).await;
            return None;
        }
    };
    let mut command = tokio::process::Command::new("setsid");
    command
        .arg("-c")
        .args(request.get_argv())
        .envs(request.get_envs().iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(tty_in))
        .stdout(Stdio::from(tty_out))
        .stderr(Stdio::from(tty_err));
    if let Some(cwd) = request.get_cwd() {
        command.current_dir(cwd);
    }
    let spawned = command.spawn();
    // The terminal side stays open only in the child: its exit ends the controller's reads.
    drop(command);
    let (mut child, pid, epoch) = announce(spawned, &sender, stream, program).await?;
    let controller = Arc::new(controller);

    // Keyboard -> terminal, and terminal -> host: blocking reads of a pty, on threads.
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = controller.clone();
    std::thread::spawn(move || {
        use std::io::Write;
        while let Some(data) = rx.blocking_recv() {
            if (&*writer).write_all(&data).is_err() {
                return;
            }
        }
    });
    let reader = controller.clone();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; MAX_CHUNK_LEN.min(64 * 1024)];
        // EIO once the last process holding the terminal side exits.
        while let Ok(n) = (&*reader).read(&mut buf) {
            if n == 0 || out_tx.blocking_send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let output_sender = sender.clone();
    let output = tokio::spawn(async move {
        while let Some(data) = out_rx.recv().await {
            output_sender
                .send_in(epoch, stream, Message::Stdout(data))
                .await;
        }
    });
    tokio::spawn(async move {
        let status = exit_status(child.wait().await);
        let abort = output.abort_handle();
        if tokio::time::timeout(DRAIN_AFTER_EXIT, output)
            .await
            .is_err()
        {
            abort.abort();
        }
        sender.send_in(epoch, stream, Message::Exited(status)).await;
        let _ = done.send((epoch, stream));
    });
    Some(ExecControl {
        pid,
        stdin: Some(tx),
        pty: Some(controller),
    })
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
