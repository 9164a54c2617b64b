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
pub const PROTOCOL_VERSION: u32 = 3;

/// Hard upper bound on the length of one frame's payload, in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Largest chunk of stdin/stdout/stderr/file data put in one frame.
pub const MAX_CHUNK_LEN: usize = 64 * 1024;

/// Written raw before `Hello` and before `Welcome`, so a reader can resynchronise.
pub const SYNC_MAGIC: [u8; 8] = *b"\x7fKILN\x00\x01\x5a";

/// Name of the virtio-serial port the agent listens on.
pub const PORT_NAME: &str = "org.kiln.agent.0";

/// The stream that carries the handshake and connection-wide requests.
pub const CONTROL_STREAM: StreamId = 0;
