//! Any domain document a libvirt daemon (perhaps a remote, compromised one) can send: kiln
//! reads what it needs or refuses it. Never a panic, never a stack overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|xml: &[u8]| {
    if let Ok(xml) = std::str::from_utf8(xml) {
        let _ = kiln::fuzzing::parse_domain(xml);
    }
});
