//! A whole node fed structured input sequences: messages of every kind from authenticated peers,
//! connection events, time jumps, commands.
//! The check lives in `core/tests/fuzz_checks/`, shared with the stable regression test.
#![no_main]

#[path = "../../core/tests/fuzz_checks/mod.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::peer::peer_node(data));
