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

use crate::proto::identity::{PeerAddr, PeerId};
use crate::proto::time::Timestamp;

/// A point in the 256-bit Kademlia space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
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

/// The rendezvous key indexers provide: BLAKE3 of `/opencloud/indexers` (the seed's
/// `IndexerCID`, B §4.4, hashed into ocd's key space).
pub fn indexer_rendezvous() -> Key {
    Key::of(b"/opencloud/indexers")
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
    /// Bucket `i` holds peers at distance `[2^i, 2^(i+1))`, least recently seen first; it is
    /// `buckets[255 - i]` (see [`RoutingTable::slot`]). Only the far end is allocated: random ids
    /// fill the top few buckets (a table of n peers reaches down to about bucket 255 − log2 n),
    /// so a walk over the table visits a handful of buckets, not 256 mostly empty ones (a
    /// node's empty table is no allocation at all).
    buckets: Vec<Vec<Contact>>,
    len: usize,
}

impl RoutingTable {
    /// An empty table around `me` with buckets of at most `k` (at least 1) peers.
    pub fn new(me: PeerId, k: usize) -> Self {
        RoutingTable { me: me.into(), k: k.max(1), buckets: Vec::new(), len: 0 }
    }

    /// Peers in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bucket_of(&self, peer: &PeerId) -> Option<usize> {
        self.me.distance(&Key::from(*peer)).bucket()
    }

    /// Where bucket `b` (0..=255) is kept in `buckets`: the farthest first.
    fn slot(b: usize) -> usize {
        255 - b
    }

    /// Bucket `b`, if allocated.
    fn bucket(&self, b: usize) -> Option<&Vec<Contact>> {
        self.buckets.get(Self::slot(b))
    }

    /// Offers a peer we just heard from.
    pub fn insert(&mut self, addr: PeerAddr, now: Timestamp) -> Insert {
        let Some(b) = self.bucket_of(&addr.id) else { return Insert::Ourselves };
        let slot = Self::slot(b);
        if self.buckets.len() <= slot {
            self.buckets.resize_with(slot + 1, Vec::new);
        }
        let bucket = &mut self.buckets[slot];
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

    #[cfg(test)]
    /// Replaces `stale` (which did not answer a ping) by `fresh`, if `stale` is still in the bucket
    /// `fresh` belongs to. Returns whether it did.
    pub fn replace(&mut self, stale: &PeerId, fresh: PeerAddr, now: Timestamp) -> bool {
        let (Some(b), Some(bs)) = (self.bucket_of(&fresh.id), self.bucket_of(stale)) else { return false };
        if b != bs || self.contains(&fresh.id) {
            return false;
        }
        let Some(bucket) = self.buckets.get_mut(Self::slot(b)) else { return false };
        let Some(i) = bucket.iter().position(|c| c.addr.id == *stale) else { return false };
        bucket.remove(i);
        bucket.push(Contact { addr: fresh, last_seen: now });
        true
    }

    /// Forgets a peer. Returns whether it was known.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        let Some(bucket) = self.bucket_of(peer).and_then(|b| self.buckets.get_mut(Self::slot(b))) else {
            return false;
        };
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
        self.bucket_of(peer)
            .and_then(|b| self.bucket(b))
            .is_some_and(|bucket| bucket.iter().any(|c| c.addr.id == *peer))
    }

    /// The `n` known peers closest to `target`, closest first.
    pub fn closest(&self, target: &Key, n: usize) -> Vec<PeerAddr> {
        if n == 0 {
            return Vec::new();
        }
        let mut all: Vec<(Distance, &Contact)> = Vec::with_capacity(self.len);
        all.extend(self.buckets.iter().flatten().map(|c| (target.distance(&Key::from(c.addr.id)), c)));
        // Distances to distinct ids are distinct: selecting the n nearest, then sorting only
        // them, gives the same list as sorting everything.
        if all.len() > n {
            all.select_nth_unstable_by_key(n - 1, |(d, _)| *d);
            all.truncate(n);
        }
        all.sort_unstable_by_key(|(d, _)| *d);
        all.into_iter().map(|(_, c)| c.addr.clone()).collect()
    }

    #[cfg(test)]
    /// Every contact, bucket by bucket (nearest buckets last), least recently seen first.
    pub fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.buckets.iter().flatten()
    }
}

/// Tunables of an iterative lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupConfig {
    /// How many closest peers the lookup converges on (Kademlia's k).
    pub k: usize,
    /// Queries in flight at once (Kademlia's α).
    pub alpha: usize,
    /// How long a queried peer has to answer before it counts as failed.
    pub timeout: std::time::Duration,
    /// Most candidates remembered (the farthest are dropped beyond it), bounding memory.
    pub max_candidates: usize,
    /// How many of the closest live candidates must have answered for the lookup to end
    /// (clamped to `1..=k`). `k` is Kademlia's rule: every one of the k closest is asked. Fewer
    /// (a *converged* lookup) asks only around the target: once the β closest have answered —
    /// and each returned its own k closest to the target, which the peers nearest a key know
    /// best — the k closest candidates are the key's replica set, for a third of the RPCs.
    pub converge: usize,
}

impl LookupConfig {
    /// This configuration ending once the α closest have answered (see [`LookupConfig::converge`]).
    pub fn converged(self) -> Self {
        LookupConfig { converge: self.alpha, ..self }
    }
}

impl Default for LookupConfig {
    fn default() -> Self {
        LookupConfig { k: 20, alpha: 3, timeout: std::time::Duration::from_secs(5), max_candidates: 80, converge: 20 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Waiting,
    InFlight { deadline: Timestamp },
    Answered,
    Failed,
}

/// One iterative Kademlia lookup (FIND_NODE; FIND_VALUE callers stop it early when a value
/// arrives): ask the α closest peers not yet asked, merge the closer peers they return, and stop
/// once the k closest peers known have all answered — or nobody is left to ask.
///
/// Pure and timer-driven: [`Lookup::next_queries`] says whom to ask, the caller reports answers
/// and failures, and [`Lookup::handle_timeout`] fails queries past their deadline. A peer is
/// asked at most once; at most α queries are in flight; candidates are bounded.
///
/// **Hedged** ([`Lookup::hedged`], for reads): the lookup starts with one query in flight
/// instead of α. The window widens to α at the first answer (a peer that answered without
/// the value the caller wants: from then on it is Kademlia's lookup), and by one at each
/// [`Lookup::hedge`] (the caller's hedge timer: the queries in flight are slower than usual). A
/// failed query frees its place, so the next candidate is asked at once.
#[derive(Clone, Debug)]
pub struct Lookup {
    target: Key,
    me: PeerId,
    config: LookupConfig,
    candidates: std::collections::BTreeMap<Distance, (PeerAddr, Probe, u32)>,
    in_flight: usize,
    queried: usize,
    /// Queries allowed in flight now: α, or fewer while a hedged lookup has had no answer.
    window: usize,
}

impl Lookup {
    /// A lookup of `target` by `me`, starting from `seeds` (usually our table's closest peers).
    pub fn new(me: PeerId, target: Key, seeds: Vec<PeerAddr>, config: LookupConfig) -> Self {
        let k = config.k.max(1);
        let config = LookupConfig { k, alpha: config.alpha.max(1), converge: config.converge.clamp(1, k), ..config };
        let mut l = Lookup {
            target,
            me,
            config,
            candidates: std::collections::BTreeMap::new(),
            in_flight: 0,
            queried: 0,
            window: config.alpha,
        };
        for s in seeds {
            l.offer(s, 1);
        }
        l
    }

    /// A hedged lookup (see [`Lookup`]): one query in flight until the first answer or
    /// [`Lookup::hedge`].
    pub fn hedged(me: PeerId, target: Key, seeds: Vec<PeerAddr>, config: LookupConfig) -> Self {
        Lookup::hedged_by(me, target, seeds, config, 1)
    }

    /// A hedged lookup starting with `window` (at least 1, at most α) queries in flight: a
    /// caller that needs answers from `window` peers holding the value asks that many at first.
    pub fn hedged_by(me: PeerId, target: Key, seeds: Vec<PeerAddr>, config: LookupConfig, window: usize) -> Self {
        let mut l = Lookup::new(me, target, seeds, config);
        l.window = window.clamp(1, l.config.alpha);
        l
    }

    /// Whether the window is still narrower than α (a hedged lookup that had no answer yet):
    /// only then does a hedge change anything.
    pub fn is_hedging(&self) -> bool {
        self.window < self.config.alpha
    }

    /// Allows one more query in flight (up to α): the queries in flight are late. Returns whether
    /// the window widened.
    pub fn hedge(&mut self) -> bool {
        if self.window >= self.config.alpha {
            return false;
        }
        self.window += 1;
        true
    }

    /// Queries in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The key looked up.
    pub fn target(&self) -> Key {
        self.target
    }

    fn offer(&mut self, addr: PeerAddr, hop: u32) {
        if addr.id == self.me {
            return;
        }
        let d = self.target.distance(&Key::from(addr.id));
        if self.candidates.contains_key(&d) {
            return;
        }
        if self.candidates.len() >= self.config.max_candidates.max(self.config.k) {
            // Full: only a closer peer than the farthest *waiting* one gets in, replacing it.
            let Some(far) = self.candidates.iter().rev().find(|(_, (_, p, _))| *p == Probe::Waiting).map(|(d, _)| *d)
            else {
                return;
            };
            if d >= far {
                return;
            }
            self.candidates.remove(&far);
        }
        self.candidates.insert(d, (addr, Probe::Waiting, hop));
    }

    /// Peers to ask now (each at most once, at most α in flight — fewer while a hedged lookup is
    /// narrow), marking them in flight until
    /// `now + timeout`. Empty when the lookup is finished or waiting for answers.
    pub fn next_queries(&mut self, now: Timestamp) -> Vec<PeerAddr> {
        if self.is_finished() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let deadline = now + self.config.timeout;
        // Only the β closest peers that have not failed are worth asking.
        let mut alive_seen = 0;
        for (addr, probe, _) in self.candidates.values_mut() {
            if self.in_flight >= self.window || alive_seen >= self.config.converge {
                break;
            }
            match probe {
                Probe::Failed => continue,
                Probe::Waiting => {
                    *probe = Probe::InFlight { deadline };
                    self.in_flight += 1;
                    self.queried += 1;
                    out.push(addr.clone());
                }
                Probe::InFlight { .. } | Probe::Answered => {}
            }
            alive_seen += 1;
        }
        out
    }

    fn probe_of(&mut self, peer: &PeerId) -> Option<&mut (PeerAddr, Probe, u32)> {
        let d = self.target.distance(&Key::from(*peer));
        self.candidates.get_mut(&d)
    }

    /// `from` answered with the peers it knows closest to the target. Answers from peers we did
    /// not ask (or already heard from) are ignored.
    pub fn on_response(&mut self, from: &PeerId, closer: Vec<PeerAddr>) {
        self.on_answer(from, closer, false);
    }

    /// `from` answered with what the caller wanted, and a hedged lookup that needs several such
    /// answers (see [`Lookup::hedged_by`]) goes on: one fewer is needed, so its window narrows by
    /// one (to at least one) instead of widening — the query it freed is not replaced while the
    /// others in flight may still bring what is missing.
    pub fn on_hit(&mut self, from: &PeerId, closer: Vec<PeerAddr>) {
        let window = self.window;
        self.on_answer(from, closer, true);
        if self.is_hedging() {
            self.window = window.saturating_sub(1).max(1);
        }
    }

    fn on_answer(&mut self, from: &PeerId, closer: Vec<PeerAddr>, hit: bool) {
        let hop = match self.probe_of(from) {
            Some((_, probe @ Probe::InFlight { .. }, hop)) => {
                *probe = Probe::Answered;
                *hop
            }
            _ => return,
        };
        self.in_flight -= 1;
        // A miss (an answer without what the caller wanted): from here on, Kademlia's α in
        // flight.
        if !hit {
            self.window = self.config.alpha;
        }
        for c in closer.into_iter().take(self.config.k) {
            self.offer(c, hop + 1);
        }
    }

    /// `peer` could not be asked or did not answer.
    pub fn on_failure(&mut self, peer: &PeerId) {
        if let Some((_, probe @ Probe::InFlight { .. }, _)) = self.probe_of(peer) {
            *probe = Probe::Failed;
            self.in_flight -= 1;
        }
    }

    /// Fails every query past its deadline.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        for (_, probe, _) in self.candidates.values_mut() {
            if let Probe::InFlight { deadline } = probe
                && *deadline <= now
            {
                *probe = Probe::Failed;
                self.in_flight -= 1;
            }
        }
    }

    /// The earliest query deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.candidates
            .values()
            .filter_map(|(_, p, _)| match p {
                Probe::InFlight { deadline } => Some(*deadline),
                _ => None,
            })
            .min()
    }

    /// Finished: nothing in flight and the β closest non-failed candidates (k unless
    /// [`LookupConfig::converge`] says fewer) have all answered (or no candidate is left to ask).
    pub fn is_finished(&self) -> bool {
        self.in_flight == 0
            && self
                .candidates
                .values()
                .filter(|(_, p, _)| *p != Probe::Failed)
                .take(self.config.converge)
                .all(|(_, p, _)| *p == Probe::Answered)
    }

    /// The `n` closest candidates not known to have failed, closest first: those that answered
    /// and those named by them but not asked (a converged lookup's replica set; a dead one among
    /// them fails its `STORE`).
    pub fn closest_live(&self, n: usize) -> Vec<PeerAddr> {
        self.candidates.values().filter(|(_, p, _)| *p != Probe::Failed).take(n).map(|(a, _, _)| a.clone()).collect()
    }

    /// Whether the closest candidate not known to have failed has answered: its own closest
    /// peers to the target are merged, so [`Lookup::closest_live`] is the key's neighbourhood
    /// even if the lookup stopped early (a value found).
    pub fn nearest_answered(&self) -> bool {
        self.candidates.values().find(|(_, p, _)| *p != Probe::Failed).is_some_and(|(_, p, _)| *p == Probe::Answered)
    }

    /// The closest peers that answered, closest first.
    #[cfg(test)]
    pub fn closest_answered(&self, n: usize) -> Vec<PeerAddr> {
        self.candidates.values().filter(|(_, p, _)| *p == Probe::Answered).take(n).map(|(a, _, _)| a.clone()).collect()
    }

    /// How many hops from the seeds the closest answering peer was (seeds are hop 1).
    pub fn hops(&self) -> Option<u32> {
        self.candidates.values().find(|(_, p, _)| *p == Probe::Answered).map(|(_, _, h)| *h)
    }

    /// The hop at which `peer` was found (seeds are hop 1), if it is a candidate.
    pub fn hop_of(&self, peer: &PeerId) -> Option<u32> {
        let d = self.target.distance(&Key::from(*peer));
        self.candidates.get(&d).map(|(_, _, h)| *h)
    }

    /// Whether a query to `peer` is in flight.
    pub fn is_in_flight(&self, peer: &PeerId) -> bool {
        let d = self.target.distance(&Key::from(*peer));
        matches!(self.candidates.get(&d), Some((_, Probe::InFlight { .. }, _)))
    }

    #[cfg(test)]
    /// Peers asked so far.
    pub fn queried(&self) -> usize {
        self.queried
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
    fn a_table_allocates_only_the_far_buckets_its_peers_fill() {
        let me = pid(0);
        let mut t = RoutingTable::new(me, 20);
        assert_eq!(t.buckets.capacity(), 0, "an empty table (every node's) allocates nothing");
        for i in 1..=200 {
            t.insert(PeerAddr::id_only(pid(i)), Timestamp(i));
        }
        // 200 random ids fall within about log2(200) ≈ 8 buckets of the farthest.
        assert!(t.buckets.len() <= 16, "{} buckets", t.buckets.len());
        let nearest = (1..=200).map(|i| Key::from(me).distance(&Key::from(pid(i)))).min().and_then(|d| d.bucket());
        assert_eq!(nearest.map(|b| RoutingTable::slot(b) + 1), Some(t.buckets.len()));
        for i in 1..=200 {
            assert!(
                t.contains(&pid(i)) || t.bucket_of(&pid(i)).is_some_and(|b| t.bucket(b).is_some_and(|x| x.len() == 20))
            );
        }
        assert!(!t.contains(&pid(1000)));
        assert!(!t.remove(&pid(1000)));
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

    /// A network of `n` peers with proper Kademlia tables: every peer was offered to every table
    /// in a random order (far buckets keep k of many, near buckets keep all of few).
    fn network(n: u64, k: usize) -> (Vec<PeerId>, Vec<RoutingTable>) {
        let ids: Vec<PeerId> = (0..n).map(|i| pid(1000 + i)).collect();
        let mut rng = crate::proto::rng::DetRng::new(n, "kad-net");
        let tables = ids
            .iter()
            .map(|me| {
                let mut t = RoutingTable::new(*me, k);
                let mut order = ids.clone();
                rng.shuffle(&mut order);
                for other in order {
                    t.insert(PeerAddr::id_only(other), Timestamp(0));
                }
                t
            })
            .collect();
        (ids, tables)
    }

    fn run_lookup(
        ids: &[PeerId],
        tables: &[RoutingTable],
        from: usize,
        target: Key,
        down: &[usize],
        cfg: LookupConfig,
    ) -> (Lookup, usize) {
        let me = ids[from];
        let seeds = tables[from].closest(&target, cfg.k);
        let mut l = Lookup::new(me, target, seeds, cfg);
        let mut now = Timestamp(0);
        let mut rounds = 0;
        while !l.is_finished() {
            rounds += 1;
            assert!(rounds < 1000, "lookup must terminate");
            let qs = l.next_queries(now);
            assert!(qs.len() <= cfg.alpha);
            if qs.is_empty() {
                now = l.poll_timeout().expect("waiting on a deadline");
                l.handle_timeout(now);
                continue;
            }
            for q in qs {
                let i = ids.iter().position(|x| *x == q.id).unwrap();
                if down.contains(&i) {
                    continue; // silent: times out
                }
                l.on_response(&q.id, tables[i].closest(&target, cfg.k));
            }
        }
        (l, rounds)
    }

    #[test]
    fn lookup_converges_on_the_true_closest_peers() {
        let cfg = LookupConfig { k: 8, alpha: 3, ..LookupConfig::default() };
        let (ids, tables) = network(300, cfg.k);
        for t in 0..20u64 {
            let target = Key::of(&t.to_le_bytes());
            let (l, _) = run_lookup(&ids, &tables, (t * 7 % 300) as usize, target, &[], cfg);
            let mut truth: Vec<(Distance, PeerId)> = ids
                .iter()
                .filter(|p| **p != ids[(t * 7 % 300) as usize])
                .map(|p| (target.distance(&Key::from(*p)), *p))
                .collect();
            truth.sort();
            let got: Vec<PeerId> = l.closest_answered(cfg.k).iter().map(|a| a.id).collect();
            let best: Vec<PeerId> = truth.iter().take(cfg.k).map(|(_, p)| *p).collect();
            let hits = got.iter().filter(|p| best.contains(p)).count();
            assert_eq!(hits, cfg.k, "target {t}: found {hits} of the {} closest", cfg.k);
            assert!(l.queried() < 60, "a lookup asks a bounded number of peers: {}", l.queried());
            assert!(l.hops().is_some());
        }
    }

    #[test]
    fn a_converged_lookup_finds_the_closest_set_for_a_fraction_of_the_rpcs() {
        let full = LookupConfig { k: 20, alpha: 3, ..LookupConfig::default() };
        let converged = full.converged();
        let (ids, tables) = network(300, full.k);
        let (mut asked_full, mut asked_converged, mut hits, mut wanted) = (0, 0, 0, 0);
        for t in 0..20u64 {
            let target = Key::of(&t.to_le_bytes());
            let from = (t * 7 % 300) as usize;
            let mut truth: Vec<(Distance, PeerId)> =
                ids.iter().filter(|p| **p != ids[from]).map(|p| (target.distance(&Key::from(*p)), *p)).collect();
            truth.sort();
            let best: Vec<PeerId> = truth.iter().take(full.k).map(|(_, p)| *p).collect();
            let (l, _) = run_lookup(&ids, &tables, from, target, &[], full);
            asked_full += l.queried();
            let (l, _) = run_lookup(&ids, &tables, from, target, &[], converged);
            asked_converged += l.queried();
            let got = l.closest_live(full.k);
            assert_eq!(got.len(), full.k);
            // The closest of all is always found: it answered.
            assert_eq!(got[0].id, best[0], "target {t}");
            hits += got.iter().filter(|p| best.contains(&p.id)).count();
            wanted += full.k;
        }
        assert!(hits * 100 >= wanted * 95, "the converged sets hold {hits} of the {wanted} closest");
        assert!(asked_converged * 2 < asked_full, "{asked_converged} RPCs against {asked_full}");
    }

    #[test]
    fn lookup_routes_around_silent_peers() {
        let cfg = LookupConfig { k: 8, alpha: 3, ..LookupConfig::default() };
        let (ids, tables) = network(300, cfg.k);
        let down: Vec<usize> = (0..300).filter(|i| i % 5 == 0).collect();
        let target = Key::of(b"/node/some-did");
        let (l, _) = run_lookup(&ids, &tables, 1, target, &down, cfg);
        let got = l.closest_answered(cfg.k);
        assert_eq!(got.len(), cfg.k);
        assert!(got.iter().all(|a| !down.contains(&ids.iter().position(|x| *x == a.id).unwrap())));
        assert!(l.poll_timeout().is_none(), "no query left in flight");
    }

    #[test]
    fn lookup_ignores_unsolicited_and_duplicate_answers_and_never_asks_itself() {
        let me = pid(1);
        let (a, b) = (pid(2), pid(3));
        let mut l =
            Lookup::new(me, Key::of(b"x"), vec![PeerAddr::id_only(a), PeerAddr::id_only(me)], LookupConfig::default());
        let q = l.next_queries(Timestamp(0));
        assert_eq!(q.iter().map(|x| x.id).collect::<Vec<_>>(), vec![a]);
        l.on_response(&b, vec![PeerAddr::id_only(pid(9))]); // never asked: ignored
        l.on_response(&a, vec![PeerAddr::id_only(me), PeerAddr::id_only(b)]);
        l.on_response(&a, vec![PeerAddr::id_only(pid(10))]); // duplicate: ignored
        let q = l.next_queries(Timestamp(1));
        assert_eq!(q.iter().map(|x| x.id).collect::<Vec<_>>(), vec![b]);
        l.on_failure(&b);
        assert!(l.is_finished());
        assert_eq!(l.closest_answered(5).iter().map(|x| x.id).collect::<Vec<_>>(), vec![a]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn lookup_asks_each_peer_once_keeps_alpha_and_terminates(
            script in prop::collection::vec((0u8..4, prop::collection::vec(0u64..60, 0..6)), 1..200),
            alpha in 1usize..4,
            hedged in any::<bool>(),
        ) {
            let me = pid(0);
            let cfg = LookupConfig { k: 5, alpha, timeout: std::time::Duration::from_secs(1), max_candidates: 20, converge: 5 };
            let seeds: Vec<PeerAddr> = (1..6).map(|i| PeerAddr::id_only(pid(i))).collect();
            let mut l = if hedged {
                Lookup::hedged(me, Key::of(b"t"), seeds, cfg)
            } else {
                Lookup::new(me, Key::of(b"t"), seeds, cfg)
            };
            let mut now = Timestamp(0);
            let mut pending: Vec<PeerId> = l.next_queries(now).into_iter().map(|a| a.id).collect();
            prop_assert_eq!(pending.len(), if hedged { 1 } else { alpha }, "a hedged lookup starts with one query");
            let mut asked: std::collections::BTreeSet<PeerId> = pending.iter().copied().collect();
            let mut steps = script.into_iter().cycle();
            for _ in 0..2000 {
                if l.is_finished() {
                    break;
                }
                for q in l.next_queries(now) {
                    prop_assert!(q.id != me);
                    prop_assert!(asked.insert(q.id), "asked twice: {:?}", q.id);
                    pending.push(q.id);
                }
                prop_assert!(pending.len() <= alpha);
                let Some((action, closer)) = steps.next() else { break };
                match (action, pending.pop()) {
                    (0, Some(p)) => l.on_response(&p, closer.iter().map(|i| PeerAddr::id_only(pid(*i))).collect()),
                    (1, Some(p)) => l.on_failure(&p),
                    (3, _) if l.hedge() => {
                        // A hedge: one more in flight, never more than α. (A hedge that
                        // widens nothing falls through to a timeout, so a script of hedges
                        // alone still makes progress.)
                    }
                    _ => {
                        now = now + std::time::Duration::from_secs(2);
                        l.handle_timeout(now);
                        pending.clear();
                    }
                }
            }
            prop_assert!(l.is_finished(), "lookup did not terminate");
            prop_assert!(l.closest_answered(5).len() <= 5);
        }

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
                prop_assert!(t.buckets.len() <= 256);
                for (slot, bucket) in t.buckets.iter().enumerate() {
                    let b = RoutingTable::slot(slot);
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
