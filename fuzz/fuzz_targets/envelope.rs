//! Any frame payload the guest can send: it decodes to a message or is refused, and what
//! decodes encodes back to a frame that decodes to the same message.
#![no_main]

use kiln_proto::{FrameDecoder, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    let Ok(len) = u32::try_from(payload.len()) else {
        return;
    };
    let mut decoder = FrameDecoder::new();
    decoder.push(&len.to_be_bytes());
    decoder.push(payload);
    if let Ok(Some(envelope)) = decoder.next_envelope()
        && let Ok(frame) = encode_frame(&envelope)
    {
        let mut again = FrameDecoder::new();
        again.push(&frame);
        let decoded = again.next_envelope();
        assert!(
            matches!(&decoded, Ok(Some(e)) if *e == envelope),
            "{envelope:?} did not survive a round trip: {decoded:?}"
        );
    }
});
