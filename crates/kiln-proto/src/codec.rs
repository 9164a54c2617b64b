use crate::{Envelope, MAX_FRAME_LEN, SYNC_MAGIC};

const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("cannot encode message")]
    Serialize(#[from] postcard::Error),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("peer announced a frame of {len} bytes; the limit is {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("stream ended inside a frame ({buffered} of {expected} bytes received)")]
    Truncated { buffered: usize, expected: usize },
    #[error("malformed frame: {reason}")]
    Malformed { reason: String },
}

/// Encodes one envelope as a length-prefixed frame.
pub fn encode_frame(envelope: &Envelope) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; HEADER_LEN];
    out = postcard::to_extend(envelope, out)?;
    let len = out.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(EncodeError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let len = u32::try_from(len).map_err(|_| EncodeError::FrameTooLarge {
        len,
        max: MAX_FRAME_LEN,
    })?;
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Incremental frame decoder: feed it bytes as they arrive, take envelopes out.
///
/// It never holds more than one frame (plus one read's worth of bytes), refuses a frame whose
/// announced length is over [`MAX_FRAME_LEN`] before buffering it, and never panics on input.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete envelope, `None` if more bytes are needed.
    pub fn next_envelope(&mut self) -> Result<Option<Envelope>, DecodeError> {
        let Some(len) = self.announced_len()? else {
            return Ok(None);
        };
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = &self.buf[HEADER_LEN..HEADER_LEN + len];
        let envelope = match postcard::from_bytes::<Envelope>(payload) {
            Ok(envelope) => envelope,
            Err(err) => {
                return Err(DecodeError::Malformed {
                    reason: err.to_string(),
                });
            }
        };
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(envelope))
    }

    /// Call at end of stream: an error if a frame was cut off.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let expected = match self.announced_len() {
            Ok(Some(len)) => HEADER_LEN + len,
            _ => HEADER_LEN,
        };
        Err(DecodeError::Truncated {
            buffered: self.buf.len(),
            expected,
        })
    }

    /// How many bytes are buffered (at most one frame and one read).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Forgets everything buffered (the session was reset).
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Takes the buffered bytes out (used to hand them to a [`SyncScanner`]).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    fn announced_len(&self) -> Result<Option<usize>, DecodeError> {
        let Some(header) = self.buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut be = [0u8; HEADER_LEN];
        be.copy_from_slice(header);
        let len = u32::from_be_bytes(be) as usize;
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        Ok(Some(len))
    }
}

/// Finds [`SYNC_MAGIC`] in a byte stream, keeping at most the magic's length of history.
#[derive(Debug, Default)]
pub struct SyncScanner {
    window: Vec<u8>,
    skipped: u64,
}

impl SyncScanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes. Once the magic is found, returns the bytes that followed it in `bytes`.
    pub fn feed<'a>(&mut self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        for (i, &b) in bytes.iter().enumerate() {
            self.window.push(b);
            if self.window.len() > SYNC_MAGIC.len() {
                self.window.remove(0);
                self.skipped += 1;
            }
            if self.window == SYNC_MAGIC {
                self.window.clear();
                return Some(&bytes[i + 1..]);
            }
        }
        None
    }

    /// How many bytes were thrown away before the magic (or so far).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExecRequest, Message};

    fn sample() -> Envelope {
        Envelope::new(7, Message::Exec(ExecRequest::new(["sh", "-c", "echo hi"])))
    }

    #[test]
    fn frame_round_trips_in_single_byte_pieces() {
        let frame = encode_frame(&sample()).unwrap();
        let mut decoder = FrameDecoder::new();
        for (i, b) in frame.iter().enumerate() {
            assert_eq!(decoder.next_envelope().unwrap(), None, "early at byte {i}");
            decoder.push(&[*b]);
        }
        assert_eq!(decoder.next_envelope().unwrap(), Some(sample()));
        decoder.finish().unwrap();
    }

    #[test]
    fn two_frames_in_one_push_come_out_in_order() {
        let mut bytes = encode_frame(&sample()).unwrap();
        bytes.extend(encode_frame(&Envelope::new(0, Message::Ping { seq: 3 })).unwrap());
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        assert_eq!(decoder.next_envelope().unwrap(), Some(sample()));
        assert_eq!(
            decoder.next_envelope().unwrap(),
            Some(Envelope::new(0, Message::Ping { seq: 3 }))
        );
        assert_eq!(decoder.next_envelope().unwrap(), None);
    }

    #[test]
    fn oversized_announced_length_is_refused_before_buffering() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&u32::MAX.to_be_bytes());
        assert_eq!(
            decoder.next_envelope(),
            Err(DecodeError::FrameTooLarge {
                len: u32::MAX as usize,
                max: MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn encoding_an_oversized_message_fails() {
        let big = Envelope::new(1, Message::Stdout(vec![0; MAX_FRAME_LEN + 1]));
        assert!(matches!(
            encode_frame(&big),
            Err(EncodeError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn truncated_frame_is_reported_at_end_of_stream() {
        let frame = encode_frame(&sample()).unwrap();
        let mut decoder = FrameDecoder::new();
        decoder.push(&frame[..frame.len() - 2]);
        assert_eq!(decoder.next_envelope().unwrap(), None);
        assert_eq!(
            decoder.finish(),
            Err(DecodeError::Truncated {
                buffered: frame.len() - 2,
                expected: frame.len()
            })
        );
    }

    #[test]
    fn garbage_payload_is_malformed_not_a_panic() {
        let mut decoder = FrameDecoder::new();
        let mut frame = 5u32.to_be_bytes().to_vec();
        frame.extend([0xff, 0xff, 0xff, 0xff, 0xff]);
        decoder.push(&frame);
        assert!(matches!(
            decoder.next_envelope(),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn scanner_finds_magic_split_across_reads_after_junk() {
        let mut scanner = SyncScanner::new();
        assert_eq!(scanner.feed(b"junk junk \x7fKI"), None);
        let rest = scanner.feed(b"LN\x00\x01\x5aFRAME").unwrap();
        assert_eq!(rest, b"FRAME");
        assert_eq!(scanner.skipped(), 10);
    }
}
