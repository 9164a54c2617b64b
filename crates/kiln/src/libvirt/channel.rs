//! A domain's agent channel, tunnelled through the libvirt connection
//! (`virDomainOpenChannel`). This is how kiln reaches the agent of a VM on a remote host,
//! where the channel's Unix socket is out of reach.
//!
//! The stream is non-blocking, fed by libvirt's event loop (as `virsh console` does), and
//! one thread moves bytes both ways between it and an in-memory duplex pipe whose other end
//! the async agent client uses. Blocking `virStreamRecv` and `virStreamSend` from two threads
//! on one remote connection deadlocked the client's I/O loop (seen with libvirt 9.0).

use std::sync::Once;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc::{self, error::TryRecvError};
use virt::stream::Stream;
use virt::sys;

use super::{LibvirtConn, LibvirtError};
use crate::agent::{AgentError, AgentPorts, PortOpen, PortStream};

/// Bytes buffered in each direction of the pipe.
const PIPE_BUFFER: usize = 256 * 1024;
const CHUNK: usize = 64 * 1024;
/// How long the pump sleeps when neither side had anything.
const IDLE: Duration = Duration::from_millis(1);
/// How long the guest may take none of what the client sends before the channel is closed
/// (a little past the client's own limit, `WRITE_STALL` in the agent client).
const SEND_STALL: Duration = Duration::from_secs(130);
/// `virStreamRecv`/`virStreamSend` on a non-blocking stream: try again later.
const AGAIN: isize = -2;

/// Registers libvirt's default event loop and runs it on a thread of its own. Connections
/// opened afterwards get their socket watched by it, which non-blocking streams need.
pub(super) fn ensure_event_loop() {
    static EVENTS: Once = Once::new();
    EVENTS.call_once(|| {
        if let Err(err) = virt::event::event_register_default_impl() {
            log::warn!("libvirt event loop unavailable: {err}");
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".to_owned())
            .spawn(|| {
                loop {
                    if let Err(err) = virt::event::event_run_default_impl() {
                        log::debug!("libvirt event loop: {err}");
                    }
                }
            });
        if let Err(err) = spawned {
            log::warn!("cannot start the libvirt event loop: {err}");
        }
    });
}

impl LibvirtConn {
    /// Opens the channel `channel` of the running domain `name`: `None` when another client
    /// (of this or any other connection to the daemon) has it open. libvirt closes the
    /// stream of a client that dies, so that lease cannot be left behind.
    pub async fn open_channel(
        &self,
        name: &str,
        channel: &str,
    ) -> Result<Option<DuplexStream>, LibvirtError> {
        let (name, channel) = (name.to_owned(), channel.to_owned());
        let stream = self
            .call(move |inner| {
                let dom = inner.require_domain(&name)?;
                let stream = Stream::new(&inner.conn, sys::VIR_STREAM_NONBLOCK)
                    .map_err(inner.err("open a stream for", &name))?;
                match dom.open_channel(Some(&channel), &stream, 0) {
                    Ok(_) => Ok(Some(Unclaimed(Some(stream)))),
                    // "Active channel stream exists for this domain".
                    Err(err)
                        if err.code()
                            == virt::error::ErrorNumberEnum::Known(
                                virt::error::ErrorNumber::OperationFailed,
                            ) =>
                    {
                        let _ = stream.abort();
                        Ok(None)
                    }
                    Err(err) => Err(inner.err("open the channel of", &name)(err)),
                }
            })
            .await?;
        // Still `Unclaimed` until the pump owns it: a thread that cannot start aborts it.
        let Some(stream) = stream else {
            return Ok(None);
        };
        let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
        let (mut from_client, to_client) = tokio::io::split(theirs);

        // Client -> pump: an async task hands chunks over; it ends when the client closes.
        let (outgoing, incoming) = mpsc::channel::<Vec<u8>>(8);
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match from_client.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if outgoing.send(buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("kiln-channel".to_owned())
            .spawn(move || {
                let mut stream = stream;
                if let Some(stream) = stream.0.take() {
                    pump(stream, incoming, to_client, &runtime);
                }
            })
            .map_err(|err| LibvirtError::Xml(format!("cannot start the channel thread: {err}")))?;
        Ok(Some(ours))
    }
}

/// The agent ports of a running domain: its channels, leased by libvirt itself.
#[derive(Debug, Clone)]
pub struct ChannelPorts {
    conn: LibvirtConn,
    domain: String,
    count: u8,
}

impl ChannelPorts {
    /// The first `count` agent channels of domain `domain`.
    pub fn new(conn: LibvirtConn, domain: &str, count: u8) -> Self {
        Self {
            conn,
            domain: domain.to_owned(),
            count,
        }
    }
}

#[async_trait::async_trait]
impl AgentPorts for ChannelPorts {
    fn count(&self) -> u8 {
        self.count
    }

    fn describe(&self) -> String {
        format!("{} on {}", self.domain, self.conn.uri())
    }

    async fn open(&self, index: u8) -> Result<PortOpen, AgentError> {
        let channel = kiln_proto::port_name(index);
        match self.conn.open_channel(&self.domain, &channel).await {
            Ok(Some(stream)) => {
                let (read, write) = tokio::io::split(stream);
                Ok(PortOpen::Open(PortStream::new(read, write, None)))
            }
            Ok(None) => Ok(PortOpen::Busy),
            Err(err) => Err(AgentError::Channel {
                vm: self.describe(),
                reason: err.to_string(),
            }),
        }
    }
}

/// An open channel's stream on its way to the caller, aborted if it never gets there: a
/// caller that stopped waiting (its open timed out) must not leave the channel busy until
/// the connection closes (dropping a `Stream` only frees the handle).
struct Unclaimed(Option<Stream>);

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Some(stream) = self.0.take() {
            let _ = stream.abort();
        }
    }
}

/// Moves bytes both ways until either side ends, then aborts the stream.
fn pump(
    stream: Stream,
    mut incoming: mpsc::Receiver<Vec<u8>>,
    mut to_client: tokio::io::WriteHalf<DuplexStream>,
    runtime: &tokio::runtime::Handle,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut pending: Vec<u8> = Vec::new();
    let mut sent = 0;
    // Since when the guest has taken none of what is pending.
    let mut stalled_since: Option<std::time::Instant> = None;
    loop {
        let mut progress = false;
        match stream.recv(&mut buf) {
            Ok(n) if n > 0 => {
                progress = true;
                if runtime
                    .block_on(to_client.write_all(&buf[..n.unsigned_abs()]))
                    .is_err()
                {
                    break;
                }
            }
            Ok(AGAIN) => {}
            Ok(_) => break, // end of stream: the guest side closed
            Err(err) => {
                log::debug!("agent channel closed: {err}");
                break;
            }
        }
        // The guest stopped reading: once the client has left, or has given up on it too,
        // the channel is given back rather than held until the guest reads again.
        if sent < pending.len()
            && (incoming.is_closed()
                || stalled_since.is_some_and(|since| since.elapsed() > SEND_STALL))
        {
            log::debug!("the guest stopped reading its agent channel: closing it");
            break;
        }
        if sent == pending.len() {
            match incoming.try_recv() {
                Ok(chunk) => {
                    pending = chunk;
                    sent = 0;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => break,
            }
        }
        if sent < pending.len() {
            match stream.send(&pending[sent..]) {
                Ok(n) if n > 0 => {
                    sent += n.unsigned_abs();
                    progress = true;
                    stalled_since = None;
                }
                Ok(AGAIN) | Ok(0) => {
                    stalled_since.get_or_insert_with(std::time::Instant::now);
                }
                Ok(_) => break,
                Err(err) => {
                    log::debug!("agent channel send failed: {err}");
                    break;
                }
            }
        }
        if !progress {
            std::thread::sleep(IDLE);
        }
    }
    let _ = runtime.block_on(to_client.shutdown());
    if let Err(err) = stream.abort() {
        log::debug!("closing the agent channel: {err}");
    }
}
