//! Any line QEMU's monitor can send: it is an answer, an error, an event or something else,
//! or refused as invalid JSON. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    if let Ok(line) = std::str::from_utf8(line) {
        let _ = kiln::fuzzing::qmp_line(line);
    }
});
