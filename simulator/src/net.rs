//! The simulated network: symmetric links between peers, latency, loss, FIFO and partitions.
//!
//! A link is keyed by the unordered pair of peer indices and has an `epoch` that identifies this
//! instance of the connection: every event scheduled for a link carries its epoch, so an event
//! for a link that has since been closed or replaced is recognised as stale and dropped. Each end
//! of an established link is *open* until that end learns it is gone; a link with one end closed is
//! half-open (a crashed peer, a close whose notice is still in flight). Deliveries on a directed
//! link are FIFO: a message never overtakes an earlier one on the same link and direction.
//!
//! This module decides *what* happens and *when*; the engine ([`crate::Simulation`]) turns the
//! answers into scheduled events and feeds them to the peers.

use ocd_core::proto::DetRng;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

/// A peer's index in the scenario (group order).
pub type PeerIx = u32;

/// Hasher for keys that are already uniformly distributed (link keys mixed below, peer ids which
/// are public keys). Lookups only: nothing iterates a map built with it in an order that matters.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8).take(2) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

/// A `HashMap` with [`FastHasher`], for lookups by key only.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// The state of one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// A dial is under way; both ends learn the outcome after one round trip.
    Connecting,
    /// The dial will fail; the dialler learns it after `connect_timeout`.
    Failing,
    /// Established; see [`Link::open`] for which ends still believe it.
    Up,
}

/// One link instance.
#[derive(Clone, Debug)]
pub struct Link {
    /// Identifies this instance; events for other epochs are stale.
    pub epoch: u64,
    /// Dialling, failing or up.
    pub state: LinkState,
    /// Who dialled.
    pub dialer: PeerIx,
    /// When the dial started (ms).
    pub since: u64,
    /// Whether each end (lower index first) still considers the link up.
    pub open: [bool; 2],
    /// Last scheduled delivery time per direction (lower → higher, higher → lower), for FIFO.
    last_delivery: [u64; 2],
    /// Where each end (lower index first) lists the other in `Network::adj`.
    pos: [u32; 2],
}

impl Link {
    fn end(&self, lo: PeerIx, p: PeerIx) -> usize {
        usize::from(p != lo)
    }
}

/// What became of a `send`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Deliver at `at` on link `epoch`.
    Deliver {
        /// Delivery time (ms).
        at: u64,
        /// The link instance.
        epoch: u64,
    },
    /// Dropped: no established link, or the other end is gone.
    NoLink,
    /// Dropped: the two peers are on different sides of a partition.
    Partitioned,
    /// Dropped by random loss.
    Lost,
}

/// What became of a `connect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// A link exists or is being set up: nothing to do.
    AlreadyLinked,
    /// The link comes up at `at` (check again then with [`Network::establish`]).
    Establish {
        /// When (ms).
        at: u64,
        /// The link instance.
        epoch: u64,
    },
    /// The dial fails at `at`.
    Fail {
        /// When (ms).
        at: u64,
        /// The link instance.
        epoch: u64,
    },
}

/// All links, the latency/loss model and the partition map.
#[derive(Debug)]
pub struct Network {
    links: FastMap<u64, Link>,
    /// Each peer's link partners, unordered; [`Link::pos`] says where, for O(1) removal.
    adj: Vec<Vec<PeerIx>>,
    side: Vec<u16>,
    partition_gen: u64,
    latency_ms: (u64, u64),
    loss: f64,
    /// After this long a half-open link is reported down to its live end.
    pub idle_timeout_ms: u64,
    /// A dial to an unreachable peer fails after this long.
    pub connect_timeout_ms: u64,
    next_epoch: u64,
    rng: NetRng,
}

/// The network's own random stream: SplitMix64 seeded from a [`DetRng`]. Latency and loss draws
/// happen for every message, and this is far cheaper than the XOF behind `DetRng`.
#[derive(Debug, Clone)]
struct NetRng(u64);

impl NetRng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (`lo` when `hi <= lo`), without modulo bias.
    fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let n = (hi - lo).wrapping_add(1);
        if n == 0 {
            return self.next_u64();
        }
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return lo + v % n;
            }
        }
    }

    /// `true` with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

fn key(a: PeerIx, b: PeerIx) -> (u64, PeerIx) {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    ((u64::from(lo) << 32) | u64::from(hi), lo)
}

impl Network {
    /// A network of `peers` peers with no links.
    pub fn new(
        peers: usize,
        latency_ms: (u64, u64),
        loss: f64,
        idle_timeout: Duration,
        connect_timeout: Duration,
        mut rng: DetRng,
    ) -> Self {
        Network {
            links: FastMap::default(),
            adj: vec![Vec::new(); peers],
            side: vec![0; peers],
            partition_gen: 0,
            latency_ms,
            loss,
            idle_timeout_ms: ms(idle_timeout),
            connect_timeout_ms: ms(connect_timeout),
            next_epoch: 1,
            rng: NetRng(rng.next_u64()),
        }
    }

    /// Changes the latency bounds (ms).
    pub fn set_latency(&mut self, latency_ms: (u64, u64)) {
        self.latency_ms = latency_ms;
    }

    /// Changes the loss probability.
    pub fn set_loss(&mut self, loss: f64) {
        self.loss = loss;
    }

    /// The smallest one-way latency (ms).
    pub fn min_latency(&self) -> u64 {
        self.latency_ms.0
    }

    /// One one-way latency draw.
    pub fn latency(&mut self) -> u64 {
        self.rng.range_inclusive(self.latency_ms.0, self.latency_ms.1)
    }

    /// Whether `a` and `b` can talk (not on different sides of a partition).
    pub fn reachable(&self, a: PeerIx, b: PeerIx) -> bool {
        let (sa, sb) = (self.side[a as usize], self.side[b as usize]);
        sa == 0 || sb == 0 || sa == sb
    }

    /// The link between `a` and `b`, if any.
    pub fn link(&self, a: PeerIx, b: PeerIx) -> Option<&Link> {
        self.links.get(&key(a, b).0)
    }

    /// Whether `p`'s end of its link with `q` is open on the link instance `epoch`.
    pub fn is_open(&self, p: PeerIx, q: PeerIx, epoch: u64) -> bool {
        let (k, lo) = key(p, q);
        self.links.get(&k).is_some_and(|l| l.epoch == epoch && l.state == LinkState::Up && l.open[l.end(lo, p)])
    }

    /// Whether `p` has an established link to `q` with its own end open.
    pub fn is_up_at(&self, p: PeerIx, q: PeerIx) -> bool {
        let (k, lo) = key(p, q);
        self.links.get(&k).is_some_and(|l| l.state == LinkState::Up && l.open[l.end(lo, p)])
    }

    /// Peers `p` has a link with (any state), in index order.
    pub fn partners(&self, p: PeerIx) -> Vec<PeerIx> {
        let mut v = self.adj[p as usize].clone();
        v.sort_unstable();
        v
    }

    /// Number of links in the table (any state).
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Inserts or replaces the link between `a` and `b`.
    fn insert(&mut self, a: PeerIx, b: PeerIx, mut link: Link) {
        let (k, lo) = key(a, b);
        let hi = if lo == a { b } else { a };
        match self.links.get(&k) {
            Some(old) => link.pos = old.pos,
            None => {
                let slot = |v: &Vec<PeerIx>| u32::try_from(v.len()).unwrap_or(u32::MAX);
                link.pos = [slot(&self.adj[lo as usize]), slot(&self.adj[hi as usize])];
                self.adj[lo as usize].push(hi);
                self.adj[hi as usize].push(lo);
            }
        }
        self.links.insert(k, link);
    }

    /// Removes the link between `a` and `b`; returns it.
    pub fn remove(&mut self, a: PeerIx, b: PeerIx) -> Option<Link> {
        let (k, lo) = key(a, b);
        let l = self.links.remove(&k)?;
        let hi = if lo == a { b } else { a };
        for (x, i) in [(lo, l.pos[0]), (hi, l.pos[1])] {
            let list = &mut self.adj[x as usize];
            let i = i as usize;
            if i >= list.len() {
                continue;
            }
            list.swap_remove(i);
            // The last partner moved into slot `i`: update its link.
            if let Some(&moved) = list.get(i) {
                let (mk, mlo) = key(x, moved);
                if let Some(m) = self.links.get_mut(&mk) {
                    m.pos[usize::from(x != mlo)] = i as u32;
                }
            }
        }
        Some(l)
    }

    fn new_epoch(&mut self) -> u64 {
        let e = self.next_epoch;
        self.next_epoch += 1;
        e
    }

    /// `from` dials `to`; `to_alive` says whether anything is there to answer.
    pub fn connect(&mut self, now: u64, from: PeerIx, to: PeerIx, to_alive: bool) -> ConnectOutcome {
        let (k, lo) = key(from, to);
        if let Some(l) = self.links.get(&k) {
            // A half-open link whose dialling end is already closed is replaced by a new
            // connection (the other end will see it replace the old one); anything else stands.
            let replace = l.state == LinkState::Up && !l.open[l.end(lo, from)];
            if !replace {
                return ConnectOutcome::AlreadyLinked;
            }
        }
        let epoch = self.new_epoch();
        let ok = from != to && to_alive && self.reachable(from, to);
        let (state, at) = if ok {
            let rtt = self.latency() + self.latency();
            (LinkState::Connecting, now + rtt)
        } else {
            (LinkState::Failing, now + self.connect_timeout_ms)
        };
        let link =
            Link { epoch, state, dialer: from, since: now, open: [false; 2], last_delivery: [0; 2], pos: [0; 2] };
        self.insert(from, to, link);
        if ok { ConnectOutcome::Establish { at, epoch } } else { ConnectOutcome::Fail { at, epoch } }
    }

    /// The round trip of dial `epoch` is over. Returns `Ok(dialer)` if the link is now up (both ends
    /// open), `Err(Some(fail_at))` if the dial fails at `fail_at`, `Err(None)` if the event is stale.
    pub fn establish(
        &mut self,
        now: u64,
        a: PeerIx,
        b: PeerIx,
        epoch: u64,
        both_alive: bool,
    ) -> Result<PeerIx, Option<u64>> {
        let reachable = self.reachable(a, b);
        let timeout = self.connect_timeout_ms;
        let Some(l) = self.links.get_mut(&key(a, b).0) else { return Err(None) };
        if l.epoch != epoch || l.state != LinkState::Connecting {
            return Err(None);
        }
        if both_alive && reachable {
            l.state = LinkState::Up;
            l.open = [true, true];
            l.last_delivery = [now, now];
            Ok(l.dialer)
        } else {
            l.state = LinkState::Failing;
            Err(Some((l.since + timeout).max(now)))
        }
    }

    /// The failure notice of dial `epoch` is due: removes the link. Returns the dialler, or `None`
    /// if stale.
    pub fn fail(&mut self, a: PeerIx, b: PeerIx, epoch: u64) -> Option<PeerIx> {
        let l = self.link(a, b)?;
        if l.epoch != epoch || l.state != LinkState::Failing {
            return None;
        }
        let dialer = l.dialer;
        self.remove(a, b);
        Some(dialer)
    }

    /// Schedules a message from `from` to `to`.
    pub fn send(&mut self, now: u64, from: PeerIx, to: PeerIx) -> SendOutcome {
        let (k, lo) = key(from, to);
        let Some(l) = self.links.get(&k) else { return SendOutcome::NoLink };
        if l.state != LinkState::Up || !l.open[0] || !l.open[1] {
            return SendOutcome::NoLink;
        }
        if !self.reachable(from, to) {
            return SendOutcome::Partitioned;
        }
        if self.rng.chance(self.loss) {
            return SendOutcome::Lost;
        }
        let lat = self.latency();
        let Some(l) = self.links.get_mut(&k) else { return SendOutcome::NoLink };
        let dir = l.end(lo, from);
        let at = (now + lat).max(l.last_delivery[dir]);
        l.last_delivery[dir] = at;
        SendOutcome::Deliver { at, epoch: l.epoch }
    }

    /// `from` closes its link with `to`. Returns when `to` learns it (`Some((at, epoch))`), or
    /// `None` if `to` has nothing to learn (no link, not established, or its end already closed).
    pub fn close(&mut self, now: u64, from: PeerIx, to: PeerIx) -> Option<(u64, u64)> {
        let (k, lo) = key(from, to);
        let l = self.links.get(&k)?;
        if l.state != LinkState::Up {
            // Cancels a dial in progress.
            self.remove(from, to);
            return None;
        }
        let lat = self.latency();
        let l = self.links.get_mut(&k)?;
        let (me, other) = (l.end(lo, from), l.end(lo, to));
        l.open[me] = false;
        if !l.open[other] {
            self.remove(from, to);
            return None;
        }
        // The close notice follows the data already in flight in that direction.
        let at = (now + lat).max(l.last_delivery[me]);
        Some((at, l.epoch))
    }

    /// `p`'s end of link `epoch` with `q` learns the link is gone. Returns whether it was open
    /// (i.e. whether `p` must be told).
    pub fn end_down(&mut self, p: PeerIx, q: PeerIx, epoch: u64) -> bool {
        let (k, lo) = key(p, q);
        let Some(l) = self.links.get_mut(&k) else { return false };
        if l.epoch != epoch || l.state != LinkState::Up {
            return false;
        }
        let (me, other) = (l.end(lo, p), l.end(lo, q));
        if !l.open[me] {
            return false;
        }
        l.open[me] = false;
        if !l.open[other] {
            self.remove(p, q);
        }
        true
    }

    /// `p` crashed: its ends close silently. Returns, for each partner whose end is still open,
    /// `(partner, epoch)` so the engine can tell it after `idle_timeout`.
    pub fn crash(&mut self, p: PeerIx) -> Vec<(PeerIx, u64)> {
        let mut notify = Vec::new();
        for q in self.partners(p) {
            let (k, lo) = key(p, q);
            let Some(l) = self.links.get_mut(&k) else { continue };
            if l.state != LinkState::Up {
                continue; // a dial in progress fails when its round trip ends
            }
            let (me, other) = (l.end(lo, p), l.end(lo, q));
            l.open[me] = false;
            if l.open[other] {
                notify.push((q, l.epoch));
            } else {
                self.remove(p, q);
            }
        }
        notify
    }

    /// `p` restarted: every link of `p` is removed. Returns the partners that must learn it at once:
    /// `(partner, true)` if the partner's end was open (`ConnectionDown`), `(partner, false)` if the
    /// partner was dialling `p` (`ConnectFailed`).
    pub fn reset(&mut self, p: PeerIx) -> Vec<(PeerIx, bool)> {
        let mut notify = Vec::new();
        for q in self.partners(p) {
            let (k, lo) = key(p, q);
            let Some(l) = self.links.get(&k) else { continue };
            match l.state {
                LinkState::Up if l.open[l.end(lo, q)] => notify.push((q, true)),
                LinkState::Connecting | LinkState::Failing if l.dialer == q => notify.push((q, false)),
                _ => {}
            }
            self.remove(p, q);
        }
        notify
    }

    /// Cuts the network into `sides` (peer index lists; a peer listed twice ends on the later
    /// side). Returns the established links now across the cut, `(a, b, epoch)` with `a < b`, and
    /// the partition generation to check when their idle timeout fires.
    pub fn partition(&mut self, sides: &[Vec<PeerIx>]) -> (Vec<(PeerIx, PeerIx, u64)>, u64) {
        self.side.iter_mut().for_each(|s| *s = 0);
        for (i, side) in sides.iter().enumerate() {
            for &p in side {
                self.side[p as usize] = u16::try_from(i + 1).unwrap_or(u16::MAX);
            }
        }
        self.partition_gen += 1;
        let mut cut = Vec::new();
        for a in 0..self.adj.len() as PeerIx {
            if self.side[a as usize] == 0 {
                continue;
            }
            for b in self.partners(a).into_iter().filter(|b| *b > a) {
                if !self.reachable(a, b)
                    && let Some(l) = self.link(a, b)
                    && l.state == LinkState::Up
                {
                    cut.push((a, b, l.epoch));
                }
            }
        }
        (cut, self.partition_gen)
    }

    /// Ends every partition.
    pub fn heal(&mut self) {
        self.side.iter_mut().for_each(|s| *s = 0);
        self.partition_gen += 1;
    }

    /// The partition generation (changes at every partition and heal).
    pub fn partition_gen(&self) -> u64 {
        self.partition_gen
    }

    /// The side `p` is on (0: not listed in the current partition).
    pub fn side_of(&self, p: PeerIx) -> u16 {
        self.side[p as usize]
    }

    /// A cut link's idle timeout fired: if the same partition still separates them, removes the link
    /// and returns the ends that were open.
    pub fn cut_expired(&mut self, a: PeerIx, b: PeerIx, epoch: u64, generation: u64) -> Vec<PeerIx> {
        if generation != self.partition_gen || self.reachable(a, b) {
            return Vec::new();
        }
        let Some(l) = self.link(a, b) else { return Vec::new() };
        if l.epoch != epoch || l.state != LinkState::Up {
            return Vec::new();
        }
        let (_, lo) = key(a, b);
        let mut ends = Vec::new();
        for p in [a, b] {
            if l.open[l.end(lo, p)] {
                ends.push(p);
            }
        }
        self.remove(a, b);
        ends
    }
}

/// A duration in whole ms.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(lat: (u64, u64)) -> Network {
        Network::new(4, lat, 0.0, Duration::from_secs(30), Duration::from_secs(5), DetRng::new(1, "t"))
    }

    fn up(n: &mut Network, a: PeerIx, b: PeerIx) -> u64 {
        let ConnectOutcome::Establish { at, epoch } = n.connect(0, a, b, true) else { panic!("no dial") };
        assert_eq!(n.establish(at, a, b, epoch, true), Ok(a));
        epoch
    }

    #[test]
    fn deliveries_on_a_directed_link_are_fifo_despite_random_latency() {
        let mut n = net((1, 500));
        up(&mut n, 0, 1);
        let mut last = 0;
        for t in 0..1000 {
            match n.send(1000 + t, 0, 1) {
                SendOutcome::Deliver { at, .. } => {
                    assert!(at >= last, "message overtook an earlier one");
                    assert!(at > 1000 + t);
                    last = at;
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn partition_drops_messages_and_fails_dials_across_the_cut_only() {
        let mut n = net((10, 20));
        let e01 = up(&mut n, 0, 1);
        up(&mut n, 0, 2);
        let (cut, generation) = n.partition(&[vec![0], vec![1]]);
        assert_eq!(cut, vec![(0, 1, e01)]);
        assert_eq!(n.send(5000, 0, 1), SendOutcome::Partitioned);
        // Peer 2 is on no side: it still reaches everyone.
        assert!(matches!(n.send(5000, 0, 2), SendOutcome::Deliver { .. }));
        assert!(matches!(n.connect(5000, 3, 1, true), ConnectOutcome::Establish { .. }));
        assert!(matches!(n.connect(5000, 1, 0, true), ConnectOutcome::AlreadyLinked));
        // When the idle timeout fires the cut link goes down on both ends.
        assert_eq!(n.cut_expired(0, 1, e01, generation), vec![0, 1]);
        assert!(n.link(0, 1).is_none());
        assert!(matches!(n.connect(6000, 1, 0, true), ConnectOutcome::Fail { at: 11000, .. }));
        n.heal();
        assert!(n.reachable(0, 1));
    }

    #[test]
    fn heal_before_the_idle_timeout_keeps_the_link() {
        let mut n = net((10, 20));
        let e = up(&mut n, 0, 1);
        let (_, generation) = n.partition(&[vec![0], vec![1]]);
        n.heal();
        assert!(n.cut_expired(0, 1, e, generation).is_empty());
        assert!(matches!(n.send(9000, 0, 1), SendOutcome::Deliver { .. }));
    }

    #[test]
    fn close_follows_data_in_flight_and_half_open_link_drops_sends() {
        let mut n = net((10, 400));
        let e = up(&mut n, 0, 1);
        let SendOutcome::Deliver { at: data_at, .. } = n.send(1000, 0, 1) else { panic!() };
        let (down_at, de) = n.close(1000, 0, 1).unwrap();
        assert_eq!(de, e);
        assert!(down_at >= data_at, "close notice overtook data");
        assert_eq!(n.send(1001, 1, 0), SendOutcome::NoLink);
        assert!(n.end_down(1, 0, e));
        assert!(n.link(0, 1).is_none());
    }

    #[test]
    fn crash_leaves_the_link_half_open_and_restart_removes_it() {
        let mut n = net((10, 20));
        let e = up(&mut n, 0, 1);
        up(&mut n, 1, 2);
        assert_eq!(n.crash(1), vec![(0, e), (2, n.link(1, 2).unwrap().epoch)]);
        assert_eq!(n.send(100, 0, 1), SendOutcome::NoLink);
        assert!(n.is_up_at(0, 1), "the live end still believes the link");
        assert_eq!(n.reset(1), vec![(0, true), (2, true)]);
        assert!(n.link(0, 1).is_none() && n.partners(1).is_empty());
        assert!(!n.end_down(0, 1, e), "stale notice after restart");
    }

    #[test]
    fn partner_lists_follow_random_dials_and_removals() {
        let mut n = Network::new(12, (1, 5), 0.0, Duration::from_secs(30), Duration::from_secs(5), DetRng::new(2, "t"));
        let mut rng = DetRng::new(9, "partners");
        let mut reference = std::collections::BTreeSet::new();
        for t in 0..5000 {
            let (a, b) = (rng.below(12) as PeerIx, rng.below(12) as PeerIx);
            if a == b {
                continue;
            }
            let k = (a.min(b), a.max(b));
            if rng.below(2) == 0 {
                n.connect(t, a, b, true);
                reference.insert(k);
            } else {
                assert_eq!(n.remove(a, b).is_some(), reference.remove(&k));
            }
            for p in 0..12 {
                let want: Vec<PeerIx> = reference
                    .iter()
                    .filter_map(|&(x, y)| {
                        if x == p {
                            Some(y)
                        } else if y == p {
                            Some(x)
                        } else {
                            None
                        }
                    })
                    .collect();
                let mut want = want;
                want.sort_unstable();
                assert_eq!(n.partners(p), want);
            }
        }
        assert_eq!(n.link_count(), reference.len());
    }

    #[test]
    fn dial_to_dead_peer_fails_after_connect_timeout() {
        let mut n = net((10, 20));
        let ConnectOutcome::Fail { at, epoch } = n.connect(100, 0, 1, false) else { panic!() };
        assert_eq!(at, 5100);
        assert!(matches!(n.connect(200, 0, 1, true), ConnectOutcome::AlreadyLinked));
        assert_eq!(n.fail(0, 1, epoch), Some(0));
        assert!(n.link(0, 1).is_none());
    }
}
