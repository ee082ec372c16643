//! The checks behind the fuzz targets, shared by the cargo-fuzz crate (`fuzz/fuzz_targets/*.rs`
//! include this module with `#[path]`) and by `core/tests/fuzz_regressions.rs`, which replays the
//! committed corpora and every crash input through them on stable, in `cargo test`.
//!
//! Every check takes the fuzzer's raw bytes and panics when a property fails; structured inputs
//! are built from the bytes with `arbitrary`. One function per target:
//!
//! | target          | check                          | what must hold |
//! |-----------------|--------------------------------|----------------|
//! | `frame_decoder` | [`wire::frame_decoder`]        | no panic; a decoded envelope re-encodes to bytes that decode to the same envelope; any split of a stream decodes the same; an error poisons the decoder |
//! | `record_verify` | [`records::record_verify`]     | no panic; a record that verifies keeps the documented bounds and survives a round trip; a signed record altered in any way fails verification |
//! | `store_decode`  | [`store::store_decode`]        | no panic decoding stored values or opening an arbitrary or damaged store file; arbitrary bytes are never a store |
//! | `peer_node`     | [`peer::peer_node`]            | a whole node fed arbitrary inputs: no panic, no spin, never to itself, deadlines not in the past, bounded tables |
//! | `peer_indexer`  | [`peer::peer_indexer`]         | the same for an indexer |

#![allow(dead_code)]

pub mod peer;
pub mod records;
pub mod store;
pub mod wire;

/// Whether to print every step (`OCD_FUZZ_TRACE=1`, to read a crash input).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("OCD_FUZZ_TRACE").is_some())
}

/// `key`'s signature of `bytes`, remembered: ed25519 signatures are deterministic, and signing
/// under coverage instrumentation is most of a run's time otherwise.
pub fn sign(key: &ocd_core::proto::Keypair, bytes: &[u8]) -> ocd_core::proto::Signature {
    use std::collections::HashMap;
    type Cache = HashMap<(ocd_core::proto::PeerId, Vec<u8>), ocd_core::proto::Signature>;
    thread_local! {
        static CACHE: std::cell::RefCell<Cache> = std::cell::RefCell::new(HashMap::new());
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(s) = c.get(&(key.peer_id(), bytes.to_vec())) {
            return *s;
        }
        if c.len() >= 1 << 14 {
            c.clear();
        }
        let s = key.sign(bytes);
        c.insert((key.peer_id(), bytes.to_vec()), s);
        s
    })
}

/// A target's check: panics when a property fails.
pub type Check = fn(&[u8]);

/// Every target and its check, by the name of its corpus folder (`fuzz/corpus/<name>/`).
pub const TARGETS: [(&str, Check); 5] = [
    ("frame_decoder", wire::frame_decoder),
    ("record_verify", records::record_verify),
    ("store_decode", store::store_decode),
    ("peer_node", peer::peer_node),
    ("peer_indexer", peer::peer_indexer),
];
