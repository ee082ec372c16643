//! The durable store: the plaintext decoding of stored values, and arbitrary or damaged store
//! files opened.
//! The check lives in `core/tests/fuzz_checks/`, shared with the stable regression test.
#![no_main]

#[path = "../../core/tests/fuzz_checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::store::store_decode(data));
