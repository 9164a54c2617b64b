//! The host side of the agent protocol: connect to a VM's agent socket, authenticate, and run
//! commands over one multiplexed connection. Every byte from the guest is untrusted: frames are
//! size-checked by [`kiln_proto::FrameDecoder`], buffers are bounded, waits have deadlines.

mod client;
mod exec;
mod ports;

pub use client::AgentClient;
pub use exec::{ExecEvent, ExecOutput, ExecSession, StdinWriter};
pub use kiln_proto::AGENT_PORTS;
pub use ports::{AgentPorts, LocalPorts, Patience, PortOpen, PortStream, connect};

use std::path::PathBuf;
use std::time::Duration;

use kiln_proto::{DecodeError, RemoteErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to the agent socket {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open an agent channel of {vm}: {reason}")]
    Channel { vm: String, reason: String },
    #[error("every agent port of {vm} stayed in use by other clients for {}s ({ports} ports)", waited.as_secs())]
    Busy {
        vm: String,
        ports: u8,
        waited: Duration,
    },
    #[error("the agent did not answer within {}s ({what})", after.as_secs())]
    Timeout { what: &'static str, after: Duration },
    #[error("handshake with the agent failed: {reason}")]
    Handshake { reason: String },
    #[error("protocol version mismatch: host speaks {host}, agent speaks {agent}")]
    VersionMismatch { host: u32, agent: u32 },
    #[error("the agent failed to prove it holds this VM's secret")]
    AgentNotAuthentic,
    #[error("the agent refused this host's credentials")]
    HostRejected,
    #[error("the agent sent an invalid frame")]
    Protocol(#[from] DecodeError),
    #[error("the connection to the agent was lost")]
    Disconnected,
    #[error("command not found in the guest: {message}")]
    CommandNotFound { message: String },
    #[error("the agent refused the request ({kind:?}): {message}")]
    Remote {
        kind: RemoteErrorKind,
        message: String,
    },
    #[error("the command's {stream} exceeded {limit} bytes")]
    OutputTooLarge { stream: &'static str, limit: usize },
}

impl AgentError {
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
