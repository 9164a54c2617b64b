//! Bytes from the guest, cut into reads of arbitrary sizes, through the host's frame decoder
//! and resynchronising scanner: never a panic, never more buffered than one frame and one
//! read, and a frame over the limit is refused from its header alone.
#![no_main]

use kiln_proto::{FrameDecoder, SyncScanner};
use kiln_proto::MAX_FRAME_LEN;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the read size, so one input covers many chunkings.
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = FrameDecoder::new();
    let mut scanner = SyncScanner::new();
    for read in rest.chunks(chunk) {
        decoder.push(read);
        loop {
            match decoder.next_envelope() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    // What the host does on garbage: drop the session's bytes, look for the
                    // sync magic.
                    let junk = decoder.take_buffered();
                    let _ = scanner.feed(&junk);
                    break;
                }
            }
        }
        assert!(decoder.buffered() <= 4 + MAX_FRAME_LEN + chunk);
    }
    let _ = decoder.finish();
});
