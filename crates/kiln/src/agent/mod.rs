//! The host side of the agent protocol: connect to a VM's agent socket, authenticate, and run
//! commands over one multiplexed connection. Every byte from the guest is untrusted: frames are
//! size-checked by [`kiln_proto::FrameDecoder`], buffers are bounded, waits have deadlines.

mod client;
mod exec;
mod ports;

pub use client::{AgentClient, DEFAULT_REPLY_TIMEOUT};
pub use exec::{ExecEvent, ExecOutput, ExecSession, MAX_COLLECTED_OUTPUT, StdinWriter};
pub use kiln_proto::AGENT_PORTS;
pub use ports::{AgentPorts, LocalPorts, Patience, PortOpen, PortStream, connect};

use std::path::PathBuf;
use std::time::Duration;

use kiln_proto::{DecodeError, RemoteErrorKind};

/// What can go wrong reaching a VM's agent or running something through it. `hint()` says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A port's socket, or the lease file beside it, could not be opened.
    #[error("cannot connect to the agent socket {}", path.display())]
    Connect {
        /// The socket or lease file that could not be opened.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// libvirt failed to open an agent channel of the domain.
    #[error("cannot open an agent channel of {vm}: {reason}")]
    Channel {
        /// The domain and the libvirt connection it is on.
        vm: String,
        /// libvirt's error, in words.
        reason: String,
    },
    /// Every agent port was leased by other clients for as long as the caller was willing to
    /// wait.
    #[error("every agent port of {vm} stayed in use by other clients for {}s ({ports} ports)", waited.as_secs())]
    Busy {
        /// The VM, as its ports describe it.
        vm: String,
        /// How many ports were found busy on the last round.
        ports: u8,
        /// How long the caller waited for a free port.
        waited: Duration,
    },
    /// The agent (or the host, opening a port) did not answer before a deadline.
    #[error("the agent did not answer within {}s ({what})", after.as_secs())]
    Timeout {
        /// What was being waited for, in words.
        what: &'static str,
        /// How long was waited.
        after: Duration,
    },
    /// The handshake failed, a message could not be encoded, or the agent sent a message
    /// that does not fit where it came.
    #[error("handshake with the agent failed: {reason}")]
    Handshake {
        /// What went wrong, in words.
        reason: String,
    },
    /// The agent speaks another protocol version than this host: the image is older or newer
    /// than kiln.
    #[error("protocol version mismatch: host speaks {host}, agent speaks {agent}")]
    VersionMismatch {
        /// The protocol version this host speaks.
        host: u32,
        /// The protocol version the agent speaks.
        agent: u32,
    },
    /// The agent's proof of the VM's secret did not verify: whatever answered is not this
    /// VM's agent.
    #[error("the agent failed to prove it holds this VM's secret")]
    AgentNotAuthentic,
    /// The agent did not accept this host's proof of the VM's secret.
    #[error("the agent refused this host's credentials")]
    HostRejected,
    /// The agent sent bytes that do not decode as a valid frame.
    #[error("the agent sent an invalid frame")]
    Protocol(#[from] DecodeError),
    /// The connection ended, or a stream ended before its answer came.
    #[error("the connection to the agent was lost")]
    Disconnected,
    /// The agent could not find the program a request asked it to run.
    #[error("command not found in the guest: {message}")]
    CommandNotFound {
        /// The agent's message.
        message: String,
    },
    /// The agent answered a request with an error.
    #[error("the agent refused the request ({kind:?}): {message}")]
    Remote {
        /// What kind of error the agent reported.
        kind: RemoteErrorKind,
        /// The agent's message.
        message: String,
    },
    /// A command printed more than the host collects; the command is killed.
    #[error("the command's {stream} exceeded {limit} bytes")]
    OutputTooLarge {
        /// Which output went over, in words (starting `stdout` or `stderr`).
        stream: &'static str,
        /// The most the host collects, in bytes.
        limit: usize,
    },
}

impl AgentError {
    /// What the user can do about this error, where there is something to say.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Self::Connect { .. } | Self::Disconnected => {
                "is the VM running? `kiln ls` shows its state"
            }
            Self::Timeout { .. } => "the guest may still be booting, or hung: see `kiln logs NAME`",
            Self::Busy { .. } => {
                "other kiln clients (exec, cp, console, run) hold every port of this VM: \
                 wait for one to end, or give this one a longer timeout"
            }
            Self::VersionMismatch { .. } => "rebuild the image with `kiln image build --force`",
            Self::AgentNotAuthentic | Self::HostRejected => {
                "the VM's secret does not match its agent: recreate the VM"
            }
            _ => return None,
        };
        Some(hint.to_owned())
    }
}
