//! Frames and envelopes: bytes through the frame decoder, in chunk splits drawn from the input,
//! and through the envelope decoder.
//! The check lives in `core/tests/fuzz_checks/`, shared with the stable regression test.
#![no_main]

#[path = "../../core/tests/fuzz_checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::wire::frame_decoder(data));
