//! Hash maps with a seeded, fixed hasher, for the large per-peer tables on hot paths.
//!
//! The core's maps are ordered (`BTreeMap`) by default: their iteration order is part of what a
//! machine outputs, and std's `HashMap` draws a per-process random key (`RandomState`), which would
//! break determinism. But an indexer touches several per-peer tables on every heartbeat, and with
//! 100 k sessions each B-tree search over 32-byte keys costs a handful of cache misses (issue 13).
//! A [`SeededMap`] finds an entry in about one.
//!
//! * **Deterministic.** Its hasher ([`SeededState`]) takes its key from the owning machine's
//!   seeded RNG: the same seed gives the same table, in any process. Nothing else varies.
//! * **Iteration order is never an output.** A hash table's order depends on the seed and on its
//!   history: code that iterates one either does something order-independent (counting, `retain`
//!   by a per-entry rule, min by a total key) or sorts first, e.g. `sessions()` is in peer-id
//!   order.
//! * **Keyed.** Peer ids are public keys, and a peer can grind keys. The hash mixes every 8-byte
//!   word of the key with a multiply-fold keyed by the seed, so without the seed a peer cannot
//!   tell which keys share a bucket and pile its sessions into one probe sequence.

use std::collections::{hash_map, hash_set};
use std::hash::{BuildHasher, Hasher};

/// A hash map whose hasher is seeded by its owner (see the module doc).
pub type SeededMap<K, V> = hash_map::HashMap<K, V, SeededState>;

/// A hash set whose hasher is seeded by its owner (see the module doc).
pub type SeededSet<K> = hash_set::HashSet<K, SeededState>;

/// Builds [`SeededHasher`]s from a fixed 64-bit key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeededState {
    key: u64,
}

impl SeededState {
    /// A hasher builder keyed by `key` (draw it from the owning machine's RNG).
    pub fn new(key: u64) -> Self {
        SeededState { key }
    }
}

/// An empty [`SeededMap`] keyed by `key`.
pub fn seeded_map<K, V>(key: u64) -> SeededMap<K, V> {
    SeededMap::with_hasher(SeededState::new(key))
}

impl BuildHasher for SeededState {
    type Hasher = SeededHasher;

    fn build_hasher(&self) -> SeededHasher {
        SeededHasher { h: self.key ^ SEED_MIX }
    }
}

/// Odd constants from the fractional part of π (as in foldhash), mixed with the key.
const SEED_MIX: u64 = 0x243f_6a88_85a3_08d3;
const MULTIPLIER: u64 = 0x1319_8a2e_0370_7344 | 1;

/// The full 128-bit product of `a` and `b`, folded to 64 bits.
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

/// The hasher of a [`SeededState`]: each 8-byte word is xored in and folded through a 128-bit
/// multiply. Cheap (four multiplies for a peer id) and good for keys that are already
/// uniformly random bytes, such as public keys.
#[derive(Clone, Debug)]
pub struct SeededHasher {
    h: u64,
}

impl SeededHasher {
    fn mix(&mut self, word: u64) {
        self.h = folded_multiply(self.h ^ word, MULTIPLIER);
    }
}

impl Hasher for SeededHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length tells `[1]` from `[1, 0]`.
            self.mix(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        // One more round, so that the last word reaches every bit (the table uses the low bits
        // for the bucket and the high ones as a tag).
        folded_multiply(self.h, MULTIPLIER ^ SEED_MIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::identity::{Keypair, PeerId};

    #[test]
    fn same_key_same_hash_and_keys_separate() {
        let p = Keypair::derive(1, "seeded").peer_id();
        let q = Keypair::derive(2, "seeded").peer_id();
        let a = SeededState::new(7);
        assert_eq!(a.hash_one(p), SeededState::new(7).hash_one(p));
        assert_ne!(a.hash_one(p), a.hash_one(q));
        assert_ne!(a.hash_one(p), SeededState::new(8).hash_one(p));
        assert_ne!(a.hash_one([1u8].as_slice()), a.hash_one([1u8, 0].as_slice()));
    }

    #[test]
    fn buckets_are_spread() {
        // 4,096 peer ids in 256 buckets (low bits): no bucket far above the mean of 16.
        let s = SeededState::new(42);
        let mut buckets = [0u32; 256];
        for i in 0..4096 {
            let p: PeerId = Keypair::derive(i, "spread").peer_id();
            buckets[(s.hash_one(p) & 255) as usize] += 1;
        }
        assert!(buckets.iter().all(|b| (1..=40).contains(b)), "{buckets:?}");
    }

    #[test]
    fn a_map_is_the_same_in_any_run() {
        let mut m: SeededMap<PeerId, u64> = seeded_map(3);
        for i in 0..100 {
            m.insert(Keypair::derive(i, "order").peer_id(), i);
        }
        let order: Vec<u64> = m.values().copied().collect();
        let mut again: SeededMap<PeerId, u64> = seeded_map(3);
        for i in 0..100 {
            again.insert(Keypair::derive(i, "order").peer_id(), i);
        }
        assert_eq!(order, again.values().copied().collect::<Vec<_>>());
    }
}
