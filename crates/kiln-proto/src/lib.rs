//! The wire protocol between the kiln host and the guest agent.
//!
//! A byte stream (a virtio-serial port on the guest side, a Unix socket on the host side)
//! carries **frames**: a 4-byte big-endian length followed by that many bytes of a
//! postcard-encoded [`Envelope`]. A frame is never larger than [`MAX_FRAME_LEN`]; a decoder
//! refuses a larger length before buffering anything.
//!
//! Each connection starts with a handshake (see [`handshake`]): the host writes [`SYNC_MAGIC`]
//! and a [`Message::Hello`]; the agent answers with the magic and a [`Message::Welcome`]. Both
//! prove that they hold the per-VM secret, so neither a guest process nor another local user can
//! impersonate the other end. The magic lets either side find the start of a fresh session in a
//! stream that may still hold bytes from an earlier, interrupted one.
//!
//! Several commands run at once over one connection: every envelope names its stream.
//! Stream 0 is the control stream (handshake, ping, shutdown); the host picks the ids of the
//! others.

mod codec;
pub mod handshake;
mod message;

pub use codec::{DecodeError, EncodeError, FrameDecoder, SyncScanner, encode_frame};
pub use message::{
    AgentInfo, Envelope, ExecRequest, ExitStatus, Message, RemoteError, RemoteErrorKind, StreamId,
    TtySize,
};

/// The protocol version. Bumped on any incompatible change of [`Message`].
pub const PROTOCOL_VERSION: u32 = 5;

/// Hard upper bound on the length of one frame's payload, in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Largest chunk of stdin/stdout/stderr/file data put in one frame.
pub const MAX_CHUNK_LEN: usize = 64 * 1024;

/// Written raw before `Hello` and before `Welcome`, so a reader can resynchronise.
pub const SYNC_MAGIC: [u8; 8] = *b"\x7fKILN\x00\x01\x5a";

/// The agent listens on every virtio-serial port named `PORT_PREFIX` + an index.
///
/// A port carries one host connection at a time (QEMU's socket chardev accepts one client,
/// libvirt opens a channel for one stream), so a VM has [`AGENT_PORTS`] of them, and each
/// host client leases a free one: that many clients reach the agent at once, each with a
/// session of its own that no other client can stall.
pub const PORT_PREFIX: &str = "org.kiln.agent.";

/// Name of the first agent port (the only one of VMs made before ports were leased).
pub const PORT_NAME: &str = "org.kiln.agent.0";

/// How many agent ports a VM gets.
pub const AGENT_PORTS: u8 = 16;

/// The name of agent port `index`.
pub fn port_name(index: u8) -> String {
    format!("{PORT_PREFIX}{index}")
}

/// The index of an agent port from its name: `None` for any other name.
pub fn port_index(name: &str) -> Option<u8> {
    let digits = name.strip_prefix(PORT_PREFIX)?;
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The stream that carries the handshake and connection-wide requests.
pub const CONTROL_STREAM: StreamId = 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_round_trip_and_others_are_refused() {
        assert_eq!(port_name(0), PORT_NAME);
        for index in 0..AGENT_PORTS {
            assert_eq!(port_index(&port_name(index)), Some(index));
        }
        for other in [
            "org.kiln.agent.",
            "org.kiln.agent.x",
            "org.kiln.agent.-1",
            "org.kiln.agent.+1",
            "org.kiln.agent.256",
            "org.kiln.agent.0001",
            "org.qemu.guest_agent.0",
        ] {
            assert_eq!(port_index(other), None, "{other}");
        }
    }
}
