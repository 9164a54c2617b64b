use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_proto::handshake::{self, Role};
use kiln_proto::{
    AgentInfo, CONTROL_STREAM, Envelope, ExecRequest, FrameDecoder, Message, PROTOCOL_VERSION,
    RemoteErrorKind, SYNC_MAGIC, StreamId, SyncScanner, encode_frame,
};
use log::{debug, trace};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::AgentError;
use super::exec::{ExecSession, StdinWriter};
use super::ports::PortStream;

/// Answers to earlier clients' handshakes skipped before this one's (see `Welcome::echo`).
const MAX_STALE_ANSWERS: usize = 16;
/// Bytes of junk tolerated before the handshake's magic (an interrupted earlier session).
const MAX_SKIP_BEFORE_MAGIC: u64 = 16 << 20;
/// Messages buffered per stream before the reader waits for the consumer (backpressure).
const STREAM_BUFFER: usize = 64;
const READ_CHUNK: usize = 64 * 1024;
/// How long one write to the agent may stay blocked (the guest not reading) before the
/// connection is given up.
const WRITE_STALL: Duration = Duration::from_secs(120);

/// How long the agent may take to answer a request (`Started`, `Pong`, `IdentitySet`) once
/// the connection is up. A guest that authenticates and then goes silent gets a typed
/// timeout, not a hung host. Generous: a busy TCG guest spawns a process in ~10 ms.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

type Routes = Arc<Mutex<HashMap<StreamId, mpsc::Sender<Message>>>>;
/// The agent's half of a byte stream to it: a Unix socket, or a channel tunnelled by libvirt.
type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;

/// An authenticated connection to a guest agent. Cheap to clone; many commands may run at
/// once. The connection closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct AgentClient {
    inner: Arc<Inner>,
    reply_timeout: Duration,
}

#[derive(Debug)]
struct Inner {
    outgoing: mpsc::Sender<Vec<u8>>,
    routes: Routes,
    next_stream: AtomicU32,
    info: AgentInfo,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl AgentClient {
    /// Connects to the agent serving `socket` (no other client may use it meanwhile) and
    /// authenticates with `secret`, waiting up to `timeout` for it (it may still be
    /// booting). A VM's agent is reached through [`super::ports::connect`], which leases one
    /// of its ports.
    pub async fn connect(
        socket: &Path,
        secret: &[u8],
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        super::ports::connect(
            &super::ports::LocalPorts::single(socket),
            secret,
            super::Patience::new(timeout),
        )
        .await
    }

    /// Authenticates over an open port; the port's lease lives as long as the connection.
    pub(super) async fn handshake(
        port: PortStream,
        secret: &[u8],
        deadline: Instant,
        peer: &str,
    ) -> Result<Self, AgentError> {
        let PortStream {
            mut read,
            mut write,
            lease,
        } = port;
        let mut host_nonce = [0u8; 32];
        getrandom::fill(&mut host_nonce).map_err(|e| AgentError::Handshake {
            reason: format!("no randomness: {e}"),
        })?;
        let mut hello = SYNC_MAGIC.to_vec();
        hello.extend(frame(
            CONTROL_STREAM,
            Message::Hello {
                version: PROTOCOL_VERSION,
                nonce: host_nonce,
            },
        )?);
        write
            .write_all(&hello)
            .await
            .map_err(|_| AgentError::Disconnected)?;

        let mut decoder = FrameDecoder::new();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let welcome = within(remaining, "handshake", async {
            let mut leftover = Vec::new();
            for _ in 0..MAX_STALE_ANSWERS {
                read_past_magic(&mut read, &mut decoder, &leftover).await?;
                let envelope = next_message(&mut read, &mut decoder).await?;
                match &envelope.message {
                    Message::Welcome { echo, .. } if *echo != host_nonce => {
                        debug!("skipped the answer to an earlier client's handshake on {peer}");
                        leftover = decoder.take_buffered();
                        decoder.clear();
                    }
                    _ => return Ok(envelope),
                }
            }
            Err(AgentError::Handshake {
                reason: format!("more than {MAX_STALE_ANSWERS} stale answers"),
            })
        })
        .await?;
        let (agent_nonce, info) = match welcome.message {
            Message::Welcome {
                version,
                nonce,
                proof,
                agent,
                echo: _,
            } => {
                if version != PROTOCOL_VERSION {
                    return Err(AgentError::VersionMismatch {
                        host: PROTOCOL_VERSION,
                        agent: version,
                    });
                }
                if !handshake::verify(secret, Role::Agent, &host_nonce, &proof) {
                    return Err(AgentError::AgentNotAuthentic);
                }
                (nonce, agent)
            }
            Message::Error(e) if e.kind == RemoteErrorKind::VersionMismatch => {
                return Err(AgentError::Handshake { reason: e.message });
            }
            other => {
                return Err(AgentError::Handshake {
                    reason: format!("expected Welcome, got {other:?}"),
                });
            }
        };
        let auth = frame(
            CONTROL_STREAM,
            Message::Auth {
                proof: handshake::proof(secret, Role::Host, &agent_nonce),
            },
        )?;
        write
            .write_all(&auth)
            .await
            .map_err(|_| AgentError::Disconnected)?;
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        match within(
            remaining,
            "authentication",
            next_message(&mut read, &mut decoder),
        )
        .await?
        .message
        {
            Message::Ready => {}
            Message::Error(e) if e.kind == RemoteErrorKind::AuthFailed => {
                return Err(AgentError::HostRejected);
            }
            other => {
                return Err(AgentError::Handshake {
                    reason: format!("expected Ready, got {other:?}"),
                });
            }
        }
        debug!("agent {} on {peer} ready", info.agent_version);

        let (outgoing, mut outgoing_rx) = mpsc::channel::<Vec<u8>>(STREAM_BUFFER);
        tokio::spawn(async move {
            while let Some(bytes) = outgoing_rx.recv().await {
                // A guest that stops reading fills the channel: after WRITE_STALL the
                // connection is given up, and every sender gets an error instead of waiting.
                match tokio::time::timeout(WRITE_STALL, write.write_all(&bytes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        log::warn!("the agent read nothing for {WRITE_STALL:?}: disconnecting");
                        break;
                    }
                }
            }
            // The port is given back only once this side of it is closed.
            drop(write);
            drop(lease);
        });
        let routes: Routes = Arc::default();
        let reader = tokio::spawn(read_loop(read, decoder, routes.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                outgoing,
                routes,
                next_stream: AtomicU32::new(1),
                info,
                reader,
            }),
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        })
    }

    /// The same connection, with another deadline for the agent's answers to requests
    /// (default [`DEFAULT_REPLY_TIMEOUT`]).
    pub fn with_reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// Waits for the first answer on a stream, within the reply deadline.
    async fn reply(
        &self,
        what: &'static str,
        rx: &mut mpsc::Receiver<Message>,
    ) -> Result<Option<Message>, AgentError> {
        within(self.reply_timeout, what, async { Ok(rx.recv().await) }).await
    }

    /// What the agent said about itself.
    pub fn info(&self) -> &AgentInfo {
        &self.inner.info
    }

    /// A protocol round trip (no process runs in the guest).
    pub async fn ping(&self) -> Result<Duration, AgentError> {
        let (stream, mut rx) = self.open_stream();
        let started = Instant::now();
        self.send(
            stream,
            Message::Ping {
                seq: u64::from(stream),
            },
        )
        .await?;
        let reply = self.reply("a ping", &mut rx).await;
        self.close_stream(stream);
        match reply? {
            Some(Message::Pong { .. }) => Ok(started.elapsed()),
            Some(other) => Err(unexpected(other)),
            None => Err(AgentError::Disconnected),
        }
    }

    /// Gives a cloned guest its own identity: hostname, random seed, and the secret that
    /// later connections must use (this one stays authenticated).
    pub async fn set_identity(
        &self,
        hostname: &str,
        secret: &[u8],
        seed: &[u8],
    ) -> Result<(), AgentError> {
        let (stream, mut rx) = self.open_stream();
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|since| u64::try_from(since.as_nanos()).ok());
        let message = Message::SetIdentity {
            hostname: hostname.to_owned(),
            secret: secret.to_vec(),
            seed: seed.to_vec(),
            clock_unix_nanos: clock,
        };
        self.send(stream, message).await?;
        let reply = self.reply("setting the identity", &mut rx).await;
        self.close_stream(stream);
        match reply? {
            Some(Message::IdentitySet) => Ok(()),
            Some(other) => Err(unexpected(other)),
            None => Err(AgentError::Disconnected),
        }
    }

    /// Starts a command; its output arrives as events on the returned session.
    pub async fn exec(&self, request: ExecRequest) -> Result<ExecSession, AgentError> {
        let wants_stdin = request.get_stdin();
        let (stream, mut rx) = self.open_stream();
        self.send(stream, Message::Exec(request)).await?;
        let reply = self.reply("starting a command", &mut rx).await;
        if reply.is_err() {
            self.close_stream(stream);
        }
        match reply? {
            Some(Message::Started { .. }) => {}
            Some(Message::Error(e)) => {
                self.close_stream(stream);
                return Err(match e.kind {
                    RemoteErrorKind::NotFound => AgentError::CommandNotFound { message: e.message },
                    kind => AgentError::Remote {
                        kind,
                        message: e.message,
                    },
                });
            }
            Some(other) => {
                self.close_stream(stream);
                return Err(unexpected(other));
            }
            None => return Err(AgentError::Disconnected),
        }
        let stdin = wants_stdin.then(|| StdinWriter::new(self.clone(), stream));
        Ok(ExecSession::new(self.clone(), stream, rx, stdin))
    }

    /// Asks the guest to power off. The connection drops as it does.
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        self.send(CONTROL_STREAM, Message::Shutdown).await
    }

    fn open_stream(&self) -> (StreamId, mpsc::Receiver<Message>) {
        let stream = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        if let Ok(mut routes) = self.inner.routes.lock() {
            routes.insert(stream, tx);
        }
        (stream, rx)
    }

    pub(super) fn close_stream(&self, stream: StreamId) {
        if let Ok(mut routes) = self.inner.routes.lock() {
            routes.remove(&stream);
        }
    }

    pub(super) async fn send(&self, stream: StreamId, message: Message) -> Result<(), AgentError> {
        let bytes = frame(stream, message)?;
        self.inner
            .outgoing
            .send(bytes)
            .await
            .map_err(|_| AgentError::Disconnected)
    }
}

fn frame(stream: StreamId, message: Message) -> Result<Vec<u8>, AgentError> {
    encode_frame(&Envelope::new(stream, message)).map_err(|e| AgentError::Handshake {
        reason: e.to_string(),
    })
}

fn unexpected(message: Message) -> AgentError {
    match message {
        Message::Error(e) => AgentError::Remote {
            kind: e.kind,
            message: e.message,
        },
        other => AgentError::Handshake {
            reason: format!("unexpected message {other:?}"),
        },
    }
}

async fn within<T>(
    timeout: Duration,
    what: &'static str,
    work: impl Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| AgentError::Timeout {
            what,
            after: timeout,
        })?
}

/// Finds the next sync magic in `leftover` and then the stream, and hands what follows it
/// to `decoder`.
async fn read_past_magic(
    read: &mut ReadHalf,
    decoder: &mut FrameDecoder,
    leftover: &[u8],
) -> Result<(), AgentError> {
    let mut scanner = SyncScanner::new();
    if let Some(rest) = scanner.feed(leftover) {
        decoder.push(rest);
        return Ok(());
    }
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = read
            .read(&mut buf)
            .await
            .map_err(|_| AgentError::Disconnected)?;
        if n == 0 {
            return Err(AgentError::Disconnected);
        }
        if let Some(rest) = scanner.feed(&buf[..n]) {
            if scanner.skipped() > 0 {
                debug!(
                    "skipped {} stale bytes before the agent's answer",
                    scanner.skipped()
                );
            }
            decoder.push(rest);
            return Ok(());
        }
        if scanner.skipped() > MAX_SKIP_BEFORE_MAGIC {
            return Err(AgentError::Handshake {
                reason: format!("no handshake within {MAX_SKIP_BEFORE_MAGIC} bytes"),
            });
        }
    }
}

async fn next_message(
    read: &mut ReadHalf,
    decoder: &mut FrameDecoder,
) -> Result<Envelope, AgentError> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if let Some(envelope) = decoder.next_envelope()? {
            return Ok(envelope);
        }
        // End of stream, clean or reset: a frame cut off in the middle is reported as such.
        let n = read.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            decoder.finish()?;
            return Err(AgentError::Disconnected);
        }
        decoder.push(&buf[..n]);
    }
}

/// Routes each message to its stream. Unknown streams are ignored (a stream the host already
/// closed); a bad frame ends the connection, and every stream sees it end.
async fn read_loop(mut read: ReadHalf, mut decoder: FrameDecoder, routes: Routes) {
    loop {
        let envelope = match next_message(&mut read, &mut decoder).await {
            Ok(envelope) => envelope,
            Err(err) => {
                debug!("agent connection ended: {err}");
                break;
            }
        };
        trace!("agent -> host: stream {}", envelope.stream);
        let route = routes
            .lock()
            .ok()
            .and_then(|r| r.get(&envelope.stream).cloned());
        if let Some(tx) = route {
            let _ = tx.send(envelope.message).await;
        }
    }
    if let Ok(mut routes) = routes.lock() {
        routes.clear();
    }
}
