//! Any file list a guest can send a session: it parses, or is refused with a typed error, and
//! never yields more names than the limit.
#![no_main]

use kiln::copy::CopyLimits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &[u8]| {
    let limits = CopyLimits::default().max_entries(100).max_name_bytes(300);
    if let Ok(count) = kiln::fuzzing::parse_file_list(text, &limits) {
        assert!(count <= 100);
    }
});
