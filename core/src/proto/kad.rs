//! Kademlia's routing table: who an indexer knows in the DHT it shares with other indexers.
//!
//! Kademlia (Maymounkov & Mazières, 2002) places peers and keys in one 256-bit space and measures
//! closeness by XOR. A peer keeps, for every distance range `[2^i, 2^(i+1))` from itself, a
//! *k-bucket* of at most `k` peers ordered from least to most recently seen. When a bucket is full
//! a newcomer does not push anyone out: the caller is told which peer was seen least recently, pings
//! it, and only replaces it if it is gone ([`RoutingTable::replace`]) — long-lived peers are the most
//! likely to stay, and flooding a table with fresh ids gains nothing.
//!
//! This module is only the table; lookups, stores and provider records are separate machines
//! built on it. Record keys (`/node/<DID>`, `/pid/<PeerId>`) map into the space with [`Key::of`].

use super::identity::{PeerAddr, PeerId};
use super::time::Timestamp;

/// A point in the 256-bit Kademlia space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// The key of arbitrary bytes (a record key): BLAKE3, so keys spread uniformly.
    pub fn of(bytes: &[u8]) -> Key {
        Key(*blake3::hash(bytes).as_bytes())
    }

    /// XOR distance to `other`, compared as a big-endian 256-bit number.
    pub fn distance(&self, other: &Key) -> Distance {
        let mut d = [0u8; 32];
        for (i, x) in d.iter_mut().enumerate() {
            *x = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }
}

impl From<PeerId> for Key {
    /// A peer's position is its public key (uniformly distributed already).
    fn from(p: PeerId) -> Key {
        Key(p.0)
    }
}

/// An XOR distance; orders like the 256-bit number it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Distance(pub [u8; 32]);

impl Distance {
    /// The bucket a peer at this distance belongs to: 255 − leading zero bits (`None` for 0,
    /// i.e. ourselves).
    pub fn bucket(&self) -> Option<usize> {
        let mut zeros = 0usize;
        for b in self.0 {
            if b == 0 {
                zeros += 8;
            } else {
                zeros += b.leading_zeros() as usize;
                return Some(255 - zeros);
            }
        }
        None
    }
}

/// One known peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// Who, and where.
    pub addr: PeerAddr,
    /// When we last heard from it.
    pub last_seen: Timestamp,
}

/// What happened to a peer offered to the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Insert {
    /// It was new and fit.
    Added,
    /// It was known; its address and `last_seen` were refreshed and it moved to the bucket's tail.
    Updated,
    /// Its bucket is full: ping `oldest` and call [`RoutingTable::replace`] if it does not answer.
    Full {
        /// The least recently seen peer of that bucket.
        oldest: PeerId,
    },
    /// It is ourselves; never stored.
    Ourselves,
}

/// A Kademlia routing table of k-buckets around `me`.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    me: Key,
    k: usize,
    /// `buckets[i]` holds peers at distance `[2^i, 2^(i+1))`, least recently seen first.
    buckets: Vec<Vec<Contact>>,
    len: usize,
}

impl RoutingTable {
    /// An empty table around `me` with buckets of at most `k` (at least 1) peers.
    pub fn new(me: PeerId, k: usize) -> Self {
        RoutingTable { me: me.into(), k: k.max(1), buckets: vec![Vec::new(); 256], len: 0 }
    }

    /// Peers in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bucket size.
    pub fn k(&self) -> usize {
        self.k
    }

    fn bucket_of(&self, peer: &PeerId) -> Option<usize> {
        self.me.distance(&Key::from(*peer)).bucket()
    }

    /// Offers a peer we just heard from.
    pub fn insert(&mut self, addr: PeerAddr, now: Timestamp) -> Insert {
        let Some(b) = self.bucket_of(&addr.id) else { return Insert::Ourselves };
        let bucket = &mut self.buckets[b];
        if let Some(i) = bucket.iter().position(|c| c.addr.id == addr.id) {
            let mut c = bucket.remove(i);
            if !addr.addrs.is_empty() {
                c.addr = addr;
            }
            c.last_seen = c.last_seen.max(now);
            bucket.push(c);
            return Insert::Updated;
        }
        if bucket.len() < self.k {
            bucket.push(Contact { addr, last_seen: now });
            self.len += 1;
            return Insert::Added;
        }
        // The bucket holds k ≥ 1 peers here, so it has a least recently seen one.
        match bucket.first() {
            Some(oldest) => Insert::Full { oldest: oldest.addr.id },
            None => Insert::Added,
        }
    }

    /// Replaces `stale` (which did not answer a ping) by `fresh`, if `stale` is still in the bucket
    /// `fresh` belongs to. Returns whether it did.
    pub fn replace(&mut self, stale: &PeerId, fresh: PeerAddr, now: Timestamp) -> bool {
        let (Some(b), Some(bs)) = (self.bucket_of(&fresh.id), self.bucket_of(stale)) else { return false };
        if b != bs || self.contains(&fresh.id) {
            return false;
        }
        let bucket = &mut self.buckets[b];
        let Some(i) = bucket.iter().position(|c| c.addr.id == *stale) else { return false };
        bucket.remove(i);
        bucket.push(Contact { addr: fresh, last_seen: now });
        true
    }

    /// Forgets a peer. Returns whether it was known.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        let Some(b) = self.bucket_of(peer) else { return false };
        let bucket = &mut self.buckets[b];
        match bucket.iter().position(|c| c.addr.id == *peer) {
            Some(i) => {
                bucket.remove(i);
                self.len -= 1;
                true
            }
            None => false,
        }
    }

    /// Whether `peer` is in the table.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.bucket_of(peer).is_some_and(|b| self.buckets[b].iter().any(|c| c.addr.id == *peer))
    }

    /// The `n` known peers closest to `target`, closest first.
    pub fn closest(&self, target: &Key, n: usize) -> Vec<PeerAddr> {
        let mut all: Vec<(Distance, &Contact)> =
            self.buckets.iter().flatten().map(|c| (target.distance(&Key::from(c.addr.id)), c)).collect();
        all.sort_by_key(|(d, _)| *d);
        all.into_iter().take(n).map(|(_, c)| c.addr.clone()).collect()
    }

    /// Every contact, bucket by bucket (nearest buckets last), least recently seen first.
    pub fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.buckets.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::identity::Keypair;
    use proptest::prelude::*;

    fn pid(i: u64) -> PeerId {
        Keypair::derive(i, "kad").peer_id()
    }

    #[test]
    fn distance_is_xor_and_buckets_follow_the_leading_bit() {
        let a = Key([0; 32]);
        let mut b = [0u8; 32];
        b[0] = 0x80;
        assert_eq!(a.distance(&Key(b)).bucket(), Some(255));
        b[0] = 0;
        b[31] = 1;
        assert_eq!(a.distance(&Key(b)).bucket(), Some(0));
        assert_eq!(a.distance(&a).bucket(), None);
        assert_eq!(Key(b).distance(&a), a.distance(&Key(b)), "symmetric");
    }

    #[test]
    fn full_bucket_keeps_old_peers_until_a_ping_fails() {
        let me = PeerId([0; 32]);
        let mut t = RoutingTable::new(me, 2);
        // Three peers in the top bucket (first bit set).
        let ids: Vec<PeerId> = (1..=3u8)
            .map(|i| {
                let mut b = [0u8; 32];
                b[0] = 0x80;
                b[31] = i;
                PeerId(b)
            })
            .collect();
        assert_eq!(t.insert(PeerAddr::id_only(ids[0]), Timestamp(1)), Insert::Added);
        assert_eq!(t.insert(PeerAddr::id_only(ids[1]), Timestamp(2)), Insert::Added);
        assert_eq!(t.insert(PeerAddr::id_only(ids[2]), Timestamp(3)), Insert::Full { oldest: ids[0] });
        // Hearing from ids[0] again makes ids[1] the oldest.
        assert_eq!(t.insert(PeerAddr::id_only(ids[0]), Timestamp(4)), Insert::Updated);
        assert_eq!(t.insert(PeerAddr::id_only(ids[2]), Timestamp(5)), Insert::Full { oldest: ids[1] });
        assert!(t.replace(&ids[1], PeerAddr::id_only(ids[2]), Timestamp(6)));
        assert!(t.contains(&ids[2]) && !t.contains(&ids[1]) && t.len() == 2);
        assert_eq!(t.insert(PeerAddr::id_only(me), Timestamp(7)), Insert::Ourselves);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn routing_table_invariants_hold(ops in prop::collection::vec((0u64..300, any::<bool>()), 1..400), k in 1usize..8, target in any::<[u8; 32]>()) {
            let me = pid(0);
            let mut t = RoutingTable::new(me, k);
            for (i, (who, remove)) in ops.into_iter().enumerate() {
                let p = pid(who);
                if remove {
                    t.remove(&p);
                } else if let Insert::Full { oldest } = t.insert(PeerAddr::id_only(p), Timestamp(i as u64)) {
                    // Every other failed ping replaces the oldest.
                    if i % 2 == 0 {
                        prop_assert!(t.replace(&oldest, PeerAddr::id_only(p), Timestamp(i as u64)));
                    }
                }
                // Bucket sizes, no self, every peer in its right bucket, no duplicates, len agrees.
                let mut seen = std::collections::BTreeSet::new();
                for (b, bucket) in t.buckets.iter().enumerate() {
                    prop_assert!(bucket.len() <= k);
                    for c in bucket {
                        prop_assert!(c.addr.id != me);
                        prop_assert_eq!(t.bucket_of(&c.addr.id), Some(b));
                        prop_assert!(seen.insert(c.addr.id));
                    }
                    prop_assert!(bucket.windows(2).all(|w| w[0].last_seen <= w[1].last_seen), "LRU order");
                }
                prop_assert_eq!(seen.len(), t.len());
            }
            // closest() is sorted by distance and is the true nearest set.
            let target = Key(target);
            let got = t.closest(&target, 5);
            let dists: Vec<Distance> = got.iter().map(|a| target.distance(&Key::from(a.id))).collect();
            prop_assert!(dists.windows(2).all(|w| w[0] <= w[1]));
            let mut brute: Vec<Distance> = t.contacts().map(|c| target.distance(&Key::from(c.addr.id))).collect();
            brute.sort();
            brute.truncate(5);
            prop_assert_eq!(dists, brute);
        }
    }
}
