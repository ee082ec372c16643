//! Peer and provider records: decoded from arbitrary bytes and verified; signed records altered
//! in any way must fail verification.
//! The check lives in `core/tests/fuzz_checks/`, shared with the stable regression test.
#![no_main]

#[path = "../../core/tests/fuzz_checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::records::record_verify(data));
