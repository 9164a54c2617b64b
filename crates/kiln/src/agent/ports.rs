//! A VM's agent ports, and the one routine that reaches its agent through them.
//!
//! A port carries one host connection at a time: QEMU's socket chardev accepts a single
//! client, and libvirt opens a channel for a single stream. So a VM has
//! [`kiln_proto::AGENT_PORTS`] ports, and each client **leases** a free one for as long as
//! its connection lives. Concurrent `kiln exec`, `cp`, `console` and sessions on one VM each
//! get a port, and a session of their own in the agent that no other client can stall. A
//! client that finds every port taken waits for one, then says the VM is busy.
//!
//! The lease is whatever makes the port ours: a `flock` on a file beside the socket (released
//! by the kernel when the client dies), or libvirt's own refusal to open a busy channel.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::debug;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{AgentClient, AgentError};

/// An open port: the byte stream to the agent, and what keeps the port leased until the
/// connection ends.
pub struct PortStream {
    pub(super) read: Box<dyn AsyncRead + Unpin + Send>,
    pub(super) write: Box<dyn AsyncWrite + Unpin + Send>,
    pub(super) lease: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for PortStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortStream").finish_non_exhaustive()
    }
}

impl PortStream {
    /// A stream to the agent, leased by `lease` (dropped when the connection ends).
    pub fn new<R, W>(read: R, write: W, lease: Option<Box<dyn std::any::Any + Send + Sync>>) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        Self {
            read: Box::new(read),
            write: Box::new(write),
            lease,
        }
    }
}

/// What trying one port found.
#[derive(Debug)]
pub enum PortOpen {
    /// Leased and connected: ready for the handshake.
    Open(PortStream),
    /// Another client holds it.
    Busy,
    /// The VM has no such port (one made before ports were leased has only the first).
    Absent,
    /// Not there yet (the machine is still starting): worth another try.
    NotReady(AgentError),
}

/// The agent ports of one VM on some host.
#[async_trait]
pub trait AgentPorts: Send + Sync {
    /// How many ports to try.
    fn count(&self) -> u8;
    /// Names the VM in logs and errors.
    fn describe(&self) -> String;
    /// Tries to lease port `index` and open a stream on it.
    async fn open(&self, index: u8) -> Result<PortOpen, AgentError>;
}

/// How long to keep trying to reach an agent, and how long one handshake may take before it
/// is tried again on a fresh connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    total: Duration,
    per_try: Duration,
}

impl Patience {
    /// Up to `total` in all; each handshake gets a third of it (at least 2 s).
    pub fn new(total: Duration) -> Self {
        Self {
            total,
            per_try: (total / 3).max(Duration::from_secs(2)),
        }
    }

    /// Each handshake gets `per_try` (a live agent answers in milliseconds; a restored guest
    /// can lose the first connection's bytes).
    pub fn per_try(mut self, per_try: Duration) -> Self {
        self.per_try = per_try;
        self
    }

    /// How long to keep trying in all.
    pub fn total(&self) -> Duration {
        self.total
    }
}

/// How long a client with every port taken waits before it looks again.
const BUSY_POLL: Duration = Duration::from_millis(20);
/// The least time one port's opening gets, even when the overall deadline is closer.
const MIN_OPEN: Duration = Duration::from_secs(2);

/// Leases a free port of `ports` and authenticates with `secret`: the one place kiln connects
/// to an agent, on every host.
pub async fn connect(
    ports: &dyn AgentPorts,
    secret: &[u8],
    patience: Patience,
) -> Result<AgentClient, AgentError> {
    let deadline = Instant::now() + patience.total;
    let peer = ports.describe();
    // A port whose handshake went unanswered is tried last next time.
    let mut unanswered: Option<u8> = None;
    loop {
        let mut busy = 0u8;
        let mut not_ready = None;
        let order = (0..ports.count())
            .filter(|i| Some(*i) != unanswered)
            .chain(unanswered);
        for index in order {
            // Opening a port is a call into the host (on libvirt an RPC the daemon may sit
            // on, as it did once right after a snapshot revert): it gets the same deadline.
            let opening = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_OPEN);
            let opened = match tokio::time::timeout(opening, ports.open(index)).await {
                Ok(opened) => opened?,
                Err(_) => {
                    debug!("agent of {peer}: opening port {index} took over {opening:?}");
                    PortOpen::NotReady(AgentError::Timeout {
                        what: "opening an agent port",
                        after: patience.total,
                    })
                }
            };
            match opened {
                PortOpen::Open(stream) => {
                    let try_deadline = deadline.min(Instant::now() + patience.per_try);
                    match AgentClient::handshake(stream, secret, try_deadline, &peer).await {
                        Err(AgentError::Timeout { .. }) if Instant::now() < deadline => {
                            debug!("agent of {peer}: handshake on port {index} unanswered");
                            unanswered = Some(index);
                            not_ready = Some(AgentError::Timeout {
                                what: "handshake",
                                after: patience.total,
                            });
                        }
                        Err(AgentError::Timeout { .. }) => {
                            return Err(AgentError::Timeout {
                                what: "handshake",
                                after: patience.total,
                            });
                        }
                        other => return other,
                    }
                    // A fresh connection comes next, on whichever port is free then.
                    break;
                }
                PortOpen::Busy => busy += 1,
                PortOpen::Absent => {}
                // The first port is there as soon as the machine is: no use trying others.
                PortOpen::NotReady(err) => {
                    not_ready = Some(err);
                    break;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(match not_ready {
                Some(err) if busy == 0 => err,
                _ if busy > 0 => AgentError::Busy {
                    vm: peer,
                    ports: busy,
                    waited: patience.total,
                },
                _ => AgentError::Timeout {
                    what: "a free agent port",
                    after: patience.total,
                },
            });
        }
        if not_ready.is_none() || busy > 0 {
            tokio::time::sleep(BUSY_POLL).await;
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The Unix sockets QEMU listens on for a VM's ports, each leased through a lock file.
#[derive(Debug, Clone)]
pub struct LocalPorts {
    vm: String,
    /// Socket and lease file of each port, by index.
    ports: Vec<(PathBuf, PathBuf)>,
}

impl LocalPorts {
    /// Ports whose socket and lease file paths come from `port`, for indices
    /// `0..kiln_proto::AGENT_PORTS`.
    pub fn new(vm: &str, port: impl Fn(u8) -> (PathBuf, PathBuf)) -> Self {
        Self {
            vm: vm.to_owned(),
            ports: (0..kiln_proto::AGENT_PORTS).map(port).collect(),
        }
    }

    /// One socket with no lease: an agent serving a socket of its own (`kiln-agent --unix`).
    pub fn single(socket: &Path) -> Self {
        Self {
            vm: socket.display().to_string(),
            ports: vec![(socket.to_owned(), PathBuf::new())],
        }
    }
}

#[async_trait]
impl AgentPorts for LocalPorts {
    fn count(&self) -> u8 {
        u8::try_from(self.ports.len()).unwrap_or(u8::MAX)
    }

    fn describe(&self) -> String {
        self.vm.clone()
    }

    async fn open(&self, index: u8) -> Result<PortOpen, AgentError> {
        let Some((socket, lease_path)) = self.ports.get(usize::from(index)) else {
            return Ok(PortOpen::Absent);
        };
        let lease = if lease_path.as_os_str().is_empty() {
            None
        } else {
            match take_lease(lease_path) {
                Ok(Some(lease)) => Some(lease),
                Ok(None) => return Ok(PortOpen::Busy),
                // No runtime directory yet: the machine is not up.
                Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(PortOpen::NotReady(AgentError::Connect {
                        path: lease_path.clone(),
                        source,
                    }));
                }
                Err(source) => {
                    return Err(AgentError::Connect {
                        path: lease_path.clone(),
                        source,
                    });
                }
            }
        };
        match tokio::net::UnixStream::connect(socket).await {
            Ok(stream) => {
                let (read, write) = stream.into_split();
                let lease = lease.map(|l| Box::new(l) as Box<dyn std::any::Any + Send + Sync>);
                Ok(PortOpen::Open(PortStream::new(read, write, lease)))
            }
            // QEMU creates every socket before the guest runs: a later port that is missing
            // belongs to a VM with fewer ports.
            Err(err) if index > 0 && err.kind() == std::io::ErrorKind::NotFound => {
                Ok(PortOpen::Absent)
            }
            Err(source)
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::WouldBlock
                ) =>
            {
                Ok(PortOpen::NotReady(AgentError::Connect {
                    path: socket.clone(),
                    source,
                }))
            }
            Err(source) => Err(AgentError::Connect {
                path: socket.clone(),
                source,
            }),
        }
    }
}

/// Takes the lease file's lock without waiting: `None` when another client holds it.
fn take_lease(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.1.lease");
        let first = take_lease(&path).expect("lease").expect("free");
        assert!(take_lease(&path).expect("lease").is_none(), "taken twice");
        drop(first);
        assert!(take_lease(&path).expect("lease").is_some(), "not released");
    }

    /// Ports whose opening never finishes, as a daemon that sits on the call.
    struct Stuck;

    #[async_trait]
    impl AgentPorts for Stuck {
        fn count(&self) -> u8 {
            2
        }
        fn describe(&self) -> String {
            "stuck".to_owned()
        }
        async fn open(&self, _index: u8) -> Result<PortOpen, AgentError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_port_that_never_opens_ends_in_a_timeout() {
        let started = Instant::now();
        let err = connect(&Stuck, b"secret", Patience::new(Duration::from_millis(100)))
            .await
            .expect_err("connected to nothing");
        assert!(
            matches!(
                err,
                AgentError::Timeout {
                    what: "opening an agent port",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            started.elapsed() < MIN_OPEN * 3,
            "took {:?}",
            started.elapsed()
        );
    }
}
