use std::time::Duration;

use kiln_proto::{ExitStatus, MAX_CHUNK_LEN, Message, StreamId};
use tokio::sync::mpsc;

use super::{AgentClient, AgentError};

/// Output of a running command, in the order the agent sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// A chunk the command wrote to stdout.
    Stdout(Vec<u8>),
    /// A chunk the command wrote to stderr.
    Stderr(Vec<u8>),
    /// The last event of a session.
    Exited(ExitStatus),
}

/// Everything a finished command printed, and how it ended. As JSON the output streams are
/// text (bytes that are not UTF-8 become U+FFFD).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExecOutput {
    /// How the command ended.
    pub status: ExitStatus,
    /// What it wrote to stdout.
    #[serde(serialize_with = "lossy_text")]
    pub stdout: Vec<u8>,
    /// What it wrote to stderr.
    #[serde(serialize_with = "lossy_text")]
    pub stderr: Vec<u8>,
}

fn lossy_text<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(bytes))
}

/// The most output [`ExecSession::output`] collects per stream; stream a larger output with
/// [`ExecSession::next_event`], or raise the bound with [`ExecSession::output_limited`].
pub const MAX_COLLECTED_OUTPUT: usize = 16 << 20;

/// A command running in the guest.
#[derive(Debug)]
pub struct ExecSession {
    client: AgentClient,
    stream: StreamId,
    events: mpsc::Receiver<Message>,
    stdin: Option<StdinWriter>,
    finished: bool,
}

impl ExecSession {
    pub(super) fn new(
        client: AgentClient,
        stream: StreamId,
        events: mpsc::Receiver<Message>,
        stdin: Option<StdinWriter>,
    ) -> Self {
        Self {
            client,
            stream,
            events,
            stdin,
            finished: false,
        }
    }

    /// The command's stdin, when the request asked for one. Take it to write from another task.
    pub fn take_stdin(&mut self) -> Option<StdinWriter> {
        self.stdin.take()
    }

    /// The next event; `Ok(None)` after `Exited`.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, AgentError> {
        if self.finished {
            return Ok(None);
        }
        loop {
            let event = match self.events.recv().await {
                None => return Err(AgentError::Disconnected),
                Some(Message::Stdout(data)) => ExecEvent::Stdout(data),
                Some(Message::Stderr(data)) => ExecEvent::Stderr(data),
                Some(Message::Exited(status)) => {
                    self.finished = true;
                    self.client.close_stream(self.stream);
                    ExecEvent::Exited(status)
                }
                Some(Message::Error(e)) => {
                    return Err(AgentError::Remote {
                        kind: e.kind,
                        message: e.message,
                    });
                }
                // Anything else on an exec stream is ignored rather than trusted.
                Some(_) => continue,
            };
            return Ok(Some(event));
        }
    }

    /// The next event, or [`AgentError::Timeout`] when the guest sends nothing for `idle`.
    pub async fn next_event_within(
        &mut self,
        idle: Duration,
        what: &'static str,
    ) -> Result<Option<ExecEvent>, AgentError> {
        tokio::time::timeout(idle, self.next_event())
            .await
            .map_err(|_| AgentError::Timeout { what, after: idle })?
    }

    /// [`output_limited`](Self::output_limited) within `timeout` for the whole command; past
    /// it the command is killed and [`AgentError::Timeout`] returned. For the short commands
    /// kiln runs itself, where a guest that never answers must not hang the host.
    pub async fn output_within(
        self,
        limit: usize,
        timeout: Duration,
        what: &'static str,
    ) -> Result<ExecOutput, AgentError> {
        let (client, stream) = (self.client.clone(), self.stream);
        match tokio::time::timeout(timeout, self.output_limited(limit)).await {
            Ok(output) => output,
            Err(_) => {
                let _ = client.send(stream, Message::Signal { signal: 9 }).await;
                Err(AgentError::Timeout {
                    what,
                    after: timeout,
                })
            }
        }
    }

    /// Sends a signal to the command's process group.
    pub async fn signal(&self, signal: i32) -> Result<(), AgentError> {
        self.client
            .send(self.stream, Message::Signal { signal })
            .await
    }

    /// Tells a command started with a tty that its terminal changed size.
    pub async fn resize(&self, size: kiln_proto::TtySize) -> Result<(), AgentError> {
        self.client.send(self.stream, Message::Resize(size)).await
    }

    /// Waits for the command and collects its output (bounded by [`MAX_COLLECTED_OUTPUT`]).
    pub async fn output(self) -> Result<ExecOutput, AgentError> {
        self.output_limited(MAX_COLLECTED_OUTPUT).await
    }

    /// Waits for the command and collects its output, at most `limit` bytes per stream. Past
    /// that the command is killed and [`AgentError::OutputTooLarge`] returned, so a guest
    /// that floods its output cannot grow the host's memory beyond the limit.
    pub async fn output_limited(mut self, limit: usize) -> Result<ExecOutput, AgentError> {
        drop(self.stdin.take());
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            let appended = match self.next_event().await? {
                Some(ExecEvent::Stdout(data)) => append(&mut stdout, &data, "stdout", limit),
                Some(ExecEvent::Stderr(data)) => append(&mut stderr, &data, "stderr", limit),
                Some(ExecEvent::Exited(status)) => {
                    return Ok(ExecOutput {
                        status,
                        stdout,
                        stderr,
                    });
                }
                None => return Err(AgentError::Disconnected),
            };
            if let Err(err) = appended {
                let _ = self.signal(9).await;
                return Err(err);
            }
        }
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        self.client.close_stream(self.stream);
    }
}

fn append(
    buf: &mut Vec<u8>,
    data: &[u8],
    stream: &'static str,
    limit: usize,
) -> Result<(), AgentError> {
    if buf.len() + data.len() > limit {
        return Err(AgentError::OutputTooLarge { stream, limit });
    }
    buf.extend_from_slice(data);
    Ok(())
}

/// Writes to a command's stdin. Dropping it (or [`close`](Self::close)) sends end-of-file.
#[derive(Debug)]
pub struct StdinWriter {
    client: AgentClient,
    stream: StreamId,
    closed: bool,
}

impl StdinWriter {
    pub(super) fn new(client: AgentClient, stream: StreamId) -> Self {
        Self {
            client,
            stream,
            closed: false,
        }
    }

    /// Sends `data` to the command's stdin, in chunks the protocol allows.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), AgentError> {
        for chunk in data.chunks(MAX_CHUNK_LEN) {
            self.client
                .send(self.stream, Message::Stdin(chunk.to_vec()))
                .await?;
        }
        Ok(())
    }

    /// Sends end-of-file now and reports whether it reached the agent.
    pub async fn close(mut self) -> Result<(), AgentError> {
        self.closed = true;
        self.client.send(self.stream, Message::StdinClose).await
    }
}

impl Drop for StdinWriter {
    fn drop(&mut self) {
        if !self.closed {
            let client = self.client.clone();
            let stream = self.stream;
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = client.send(stream, Message::StdinClose).await;
                });
            }
        }
    }
}
