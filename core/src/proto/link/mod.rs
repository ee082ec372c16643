//! Connections as the core sees them: the `Hello` exchange, send queues and the address book.
//!
//! The transport authenticates *who* a peer is (its key); this layer checks that the peer is a
//! member of the private network, the way the seed's libp2p PSK did (DESIGN §3). Each side proves
//! the key with a BLAKE3 keyed MAC under the network key over both peer ids and both nonces, in
//! three messages: the dialler sends [`Hello`] with a fresh nonce; the accepting side answers
//! [`HelloReply`], its own nonce and its proof over the dialler's; the dialler, now sure of the
//! other side, sends its proof with its first queued message in one frame ([`HelloProofWith`];
//! a bare [`HelloProof`] when it has none, or that one is too large to carry) and its other
//! queued messages right behind it. Both sides
//! dialling at once (each sent a `Hello`) fall back to answering each `Hello` with a `HelloProof`.
//! Until a peer's proof verifies, nothing else it sends is processed (at most a few messages are
//! held in case they overtook the proof); a wrong proof, or no proof within `handshake_timeout`,
//! closes the connection.
//!
//! Messages for a peer without a ready connection are queued (bounded by `max_queued_per_peer`)
//! and a dial is requested using the address book, which sub-machines fill with
//! a `Learn` output. Connections nobody needs are closed after
//! `idle_timeout`.

use crate::proto::config::Config;
use crate::proto::identity::{Addr, PeerAddr, PeerId};
use crate::proto::rng::DetRng;
use crate::proto::seeded::{SeededMap, seeded_map};
use crate::proto::time::Timestamp;
use crate::proto::wire::{Carried, Envelope, Hello, HelloProof, HelloProofWith, HelloReply, LinkMessage};
use crate::proto::{CloseReason, Event, Output};

pub(crate) mod messages;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Messages from a not-yet-verified peer held while its proof may still arrive.
const MAX_EARLY_INBOUND: usize = 16;
/// Most peers remembered in the address book.
const ADDRESS_BOOK_MAX: usize = 4096;
/// Slack added to a sweep deadline so that links expiring close together are handled in one sweep.
const SWEEP_SLACK: Duration = Duration::from_millis(500);
/// How long past its time an idle scan may wait for the peer to wake for something else (a
/// quarter of `idle_timeout`; a node's heartbeat tick comes sooner), so that it costs no wake-up
/// of its own: an unused link closes between one and one and three quarter idle periods.
fn idle_sweep_slack(idle_timeout: Duration) -> Duration {
    idle_timeout / 4
}

/// Computes the `Hello` proof that `prover` knows `network_key`.
pub fn hello_mac(
    network_key: &[u8; 32],
    prover: &PeerId,
    verifier: &PeerId,
    verifier_nonce: &[u8; 32],
    prover_nonce: &[u8; 32],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(network_key);
    h.update(b"ocd hello v1");
    h.update(prover.as_bytes());
    h.update(verifier.as_bytes());
    h.update(verifier_nonce);
    h.update(prover_nonce);
    *h.finalize().as_bytes()
}

#[derive(Debug)]
enum State {
    /// A dial was requested; waiting for the transport.
    Dialing,
    /// Connected; the `Hello` exchange is running.
    Handshaking,
    /// The peer proved the network key.
    Ready,
}

#[derive(Debug)]
struct Link {
    state: State,
    since: Timestamp,
    last_activity: Timestamp,
    our_nonce: [u8; 32],
    /// We sent our `Hello` on this connection (we dialled it).
    sent_hello: bool,
    their_nonce: Option<[u8; 32]>,
    addr: Option<Addr>,
    outbound_queue: VecDeque<Envelope>,
    early_inbound: VecDeque<Envelope>,
}

/// What the router must do after the connection layer looked at an incoming message.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    /// Process this message from the (verified) peer.
    Deliver(Envelope),
    /// The handshake just completed: process these messages that arrived ahead of the proof.
    DeliverHeld(Vec<Envelope>),
    /// Nothing to process (handshake traffic, or held until the proof arrives).
    Nothing,
    /// The connection was closed; requests to this peer have failed.
    Closed,
}

/// The per-peer connection table of one [`Peer`](super::Peer).
#[derive(Debug)]
pub struct Connections {
    me: PeerId,
    network_key: [u8; 32],
    handshake_timeout: Duration,
    idle_timeout: Duration,
    max_queued: usize,
    /// Links by peer: a hash table (every message looks its link up; a B-tree walk was the
    /// first cache misses of every event at 10,000 peers). Its order is never an output: the
    /// idle sweep and [`Connections::peers`] sort.
    links: SeededMap<PeerId, Link>,
    /// Known addresses by peer, with the clock of their last use (the least recently used is
    /// forgotten past [`ADDRESS_BOOK_MAX`]; clocks are distinct, so the choice is order-free).
    book: SeededMap<PeerId, (Vec<Addr>, u64)>,
    book_clock: u64,
    rng: DetRng,
    /// Links still dialling or handshaking, with their handshake deadline (usually few).
    pending: BTreeMap<PeerId, Timestamp>,
    /// When ready links are next scanned for idleness (every half idle period while any exist):
    /// at the first timeout from then on, at the latest [`idle_sweep_slack`] later.
    next_idle_sweep: Option<Timestamp>,
    /// The latest time a sweep is due: the first handshake deadline (plus [`SWEEP_SLACK`]) or the
    /// idle scan's latest time, whichever is earlier.
    next_sweep: Option<Timestamp>,
}

impl Connections {
    /// A connection table for `me` in the network identified by `network_key`. `table_key` keys
    /// its hash tables (secret and seeded: deterministic for a seed, and peers grinding ids
    /// cannot aim at one bucket).
    pub fn new(me: PeerId, network_key: [u8; 32], config: &Config, rng: DetRng, table_key: u64) -> Self {
        Connections {
            me,
            network_key,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            max_queued: config.max_queued_per_peer,
            links: seeded_map(table_key),
            book: seeded_map(table_key.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15),
            book_clock: 0,
            rng,
            pending: BTreeMap::new(),
            next_idle_sweep: None,
            next_sweep: None,
        }
    }

    /// Whether `peer` has proved the network key on the current connection.
    pub fn is_ready(&self, peer: &PeerId) -> bool {
        matches!(self.links.get(peer), Some(Link { state: State::Ready, .. }))
    }

    /// Number of connections (any state).
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether there are no connections.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// The transport address `peer` connected from, if known.
    pub fn remote_addr(&self, peer: &PeerId) -> Option<&Addr> {
        self.links.get(peer).and_then(|l| l.addr.as_ref())
    }

    /// How to reach `peer`: its connection address and address-book entries.
    pub fn peer_addr(&self, peer: &PeerId) -> PeerAddr {
        let mut addrs: Vec<Addr> = Vec::new();
        if let Some(a) = self.remote_addr(peer) {
            addrs.push(a.clone());
        }
        if let Some((book, _)) = self.book.get(peer) {
            for a in book {
                if !addrs.contains(a) && addrs.len() < PeerAddr::MAX_ADDRS {
                    addrs.push(a.clone());
                }
            }
        }
        PeerAddr { id: *peer, addrs }
    }

    /// Remembers addresses for a peer (bounded; the least recently learned entry goes first).
    pub fn learn(&mut self, pa: PeerAddr) {
        if pa.id == self.me {
            return;
        }
        self.book_clock += 1;
        let clock = self.book_clock;
        let mut addrs = pa.addrs;
        addrs.truncate(PeerAddr::MAX_ADDRS);
        match self.book.get_mut(&pa.id) {
            Some(entry) => {
                if !addrs.is_empty() {
                    entry.0 = addrs;
                }
                entry.1 = clock;
            }
            None => {
                if self.book.len() >= ADDRESS_BOOK_MAX
                    && let Some(oldest) = self.book.iter().min_by_key(|(_, (_, c))| *c).map(|(k, _)| *k)
                {
                    self.book.remove(&oldest);
                }
                self.book.insert(pa.id, (addrs, clock));
            }
        }
    }

    /// Sends `message` to `to`, dialling and queueing as needed. Returns `false` if the message
    /// was dropped (queue full, or sending to ourselves); the caller should fail its request.
    pub fn send(&mut self, to: PeerId, message: Envelope, now: Timestamp, out: &mut VecDeque<Output>) -> bool {
        if to == self.me {
            return false;
        }
        match self.links.get_mut(&to) {
            Some(link) => match link.state {
                State::Ready => {
                    link.last_activity = now;
                    out.push_back(Output::Send { to, message });
                    true
                }
                State::Dialing | State::Handshaking => {
                    if link.outbound_queue.len() >= self.max_queued {
                        return false;
                    }
                    link.outbound_queue.push_back(message);
                    true
                }
            },
            None => {
                let mut q = VecDeque::new();
                q.push_back(message);
                let link = Link {
                    state: State::Dialing,
                    since: now,
                    last_activity: now,
                    our_nonce: [0; 32],
                    sent_hello: false,
                    their_nonce: None,
                    addr: None,
                    outbound_queue: q,
                    early_inbound: VecDeque::new(),
                };
                self.links.insert(to, link);
                out.push_back(Output::Connect { peer: self.peer_addr(&to) });
                let deadline = now + self.handshake_timeout;
                self.pending.insert(to, deadline);
                self.arm_sweep(deadline + SWEEP_SLACK);
                true
            }
        }
    }

    /// A transport connection is up: start the `Hello` exchange (the side that dialled, `outbound`,
    /// speaks first; the other usually waits for its `Hello`).
    pub fn on_up(
        &mut self,
        peer: PeerId,
        addr: Option<Addr>,
        outbound: bool,
        now: Timestamp,
        out: &mut VecDeque<Output>,
    ) {
        let mut nonce = [0u8; 32];
        self.rng.fill(&mut nonce);
        // We speak first when we dialled, and also when we were dialling or talking to the peer
        // already (both may have dialled at once, or this connection replaces another): both
        // sides then send a `Hello` and each answers the other's with a `HelloProof`. Only a side
        // that accepts a connection it did not want waits for the `Hello`.
        let speak_first = outbound || self.links.contains_key(&peer);
        let link = self.links.entry(peer).or_insert_with(|| Link {
            state: State::Dialing,
            since: now,
            last_activity: now,
            our_nonce: [0; 32],
            sent_hello: false,
            their_nonce: None,
            addr: None,
            outbound_queue: VecDeque::new(),
            early_inbound: VecDeque::new(),
        });
        // A new transport connection replaces whatever we had: handshake again on it.
        link.state = State::Handshaking;
        link.since = now;
        link.last_activity = now;
        link.our_nonce = nonce;
        link.sent_hello = speak_first;
        link.their_nonce = None;
        link.early_inbound.clear();
        if addr.is_some() {
            link.addr = addr;
        }
        if speak_first {
            out.push_back(Output::Send { to: peer, message: Hello { nonce }.into() });
        }
        let deadline = now + self.handshake_timeout;
        self.pending.insert(peer, deadline);
        self.arm_sweep(deadline + SWEEP_SLACK);
    }

    /// The connection is gone (or could not be made). Returns how many queued messages were lost.
    pub fn on_down(&mut self, peer: &PeerId) -> usize {
        self.end_pending(peer);
        self.links.remove(peer).map(|l| l.outbound_queue.len()).unwrap_or(0)
    }

    /// Looks at a message from `from` before the router processes it.
    pub fn on_message(
        &mut self,
        from: PeerId,
        message: Envelope,
        now: Timestamp,
        out: &mut VecDeque<Output>,
    ) -> Inbound {
        let Some(link) = self.links.get_mut(&from) else {
            // A message without a connection the transport told us about: refuse to process it.
            out.push_back(Output::Close { peer: from, reason: CloseReason::ProtocolViolation });
            return Inbound::Closed;
        };
        link.last_activity = now;
        match message {
            Envelope::Link(LinkMessage::Hello(Hello { nonce })) => {
                if matches!(link.state, State::Dialing) || link.their_nonce.is_some() {
                    // A second Hello on one connection, or one before the transport said "up".
                    return self.fail(from, CloseReason::ProtocolViolation, out);
                }
                link.their_nonce = Some(nonce);
                let mac = hello_mac(&self.network_key, &self.me, &from, &nonce, &link.our_nonce);
                // The proof must go out even though the peer is not verified yet: with our nonce
                // when we are the accepting side, alone when we sent our own `Hello` too.
                let answer: Envelope = if link.sent_hello {
                    HelloProof { mac }.into()
                } else {
                    link.sent_hello = true;
                    HelloReply { nonce: link.our_nonce, mac }.into()
                };
                out.push_back(Output::Send { to: from, message: answer });
                Inbound::Nothing
            }
            Envelope::Link(LinkMessage::HelloReply(HelloReply { nonce, mac })) => {
                // Only the dialler, whose `Hello` has not been answered yet, gets a reply.
                if !matches!(link.state, State::Handshaking) || !link.sent_hello || link.their_nonce.is_some() {
                    return self.fail(from, CloseReason::ProtocolViolation, out);
                }
                link.their_nonce = Some(nonce);
                let expected = hello_mac(&self.network_key, &from, &self.me, &link.our_nonce, &nonce);
                if !constant_time_eq(&expected, &mac) {
                    return self.fail(from, CloseReason::HandshakeFailed, out);
                }
                let ours = hello_mac(&self.network_key, &self.me, &from, &nonce, &link.our_nonce);
                // The first queued message rides with the proof (the peer is verified: it may
                // have it now), unless it is too large for one frame with the proof.
                let first = match link.outbound_queue.front() {
                    Some(m) if Carried::fits(m) => link.outbound_queue.pop_front(),
                    _ => None,
                };
                let proof: Envelope = match first {
                    Some(first) => HelloProofWith { mac: ours, first: Carried::fitting(first) }.into(),
                    None => HelloProof { mac: ours }.into(),
                };
                out.push_back(Output::Send { to: from, message: proof });
                self.ready(from, now, out)
            }
            Envelope::Link(LinkMessage::HelloProof(HelloProof { mac })) => self.on_proof(from, mac, None, now, out),
            Envelope::Link(LinkMessage::HelloProofWith(HelloProofWith { mac, first })) => {
                self.on_proof(from, mac, Some(first.into_inner()), now, out)
            }
            other => match link.state {
                State::Ready => Inbound::Deliver(other),
                State::Handshaking if link.early_inbound.len() < MAX_EARLY_INBOUND => {
                    link.early_inbound.push_back(other);
                    Inbound::Nothing
                }
                _ => self.fail(from, CloseReason::ProtocolViolation, out),
            },
        }
    }

    /// `from`'s proof, and the message it carried: checked, then the link is ready and the
    /// message is processed before anything held.
    fn on_proof(
        &mut self,
        from: PeerId,
        mac: [u8; 32],
        first: Option<Envelope>,
        now: Timestamp,
        out: &mut VecDeque<Output>,
    ) -> Inbound {
        let Some(link) = self.links.get(&from) else {
            return Inbound::Nothing;
        };
        let Some(their_nonce) = link.their_nonce else {
            return self.fail(from, CloseReason::ProtocolViolation, out);
        };
        if !matches!(link.state, State::Handshaking) {
            return self.fail(from, CloseReason::ProtocolViolation, out);
        }
        let expected = hello_mac(&self.network_key, &from, &self.me, &link.our_nonce, &their_nonce);
        if !constant_time_eq(&expected, &mac) {
            return self.fail(from, CloseReason::HandshakeFailed, out);
        }
        match (self.ready(from, now, out), first) {
            (Inbound::Nothing, Some(first)) => Inbound::Deliver(first),
            (Inbound::DeliverHeld(mut held), Some(first)) => {
                held.insert(0, first);
                Inbound::DeliverHeld(held)
            }
            (inbound, _) => inbound,
        }
    }

    /// `from` proved the network key: flush what waited for it.
    fn ready(&mut self, from: PeerId, now: Timestamp, out: &mut VecDeque<Output>) -> Inbound {
        let Some(link) = self.links.get_mut(&from) else {
            return Inbound::Nothing;
        };
        link.state = State::Ready;
        // Taken, not drained: a ready link keeps no queue buffer for the rest of its life (one per
        // link was a tenth of a 3,000-node run's heap).
        for m in std::mem::take(&mut link.outbound_queue) {
            out.push_back(Output::Send { to: from, message: m });
        }
        let early: Vec<Envelope> = Vec::from(std::mem::take(&mut link.early_inbound));
        out.push_back(Output::Event(Event::PeerAuthenticated { peer: from }));
        if self.next_idle_sweep.is_none() {
            self.next_idle_sweep = Some(now + self.idle_timeout / 2);
        }
        self.pending.remove(&from);
        self.rearm_sweep();
        if early.is_empty() { Inbound::Nothing } else { Inbound::DeliverHeld(early) }
    }

    fn fail(&mut self, peer: PeerId, reason: CloseReason, out: &mut VecDeque<Output>) -> Inbound {
        self.links.remove(&peer);
        self.end_pending(&peer);
        out.push_back(Output::Close { peer, reason });
        if matches!(reason, CloseReason::HandshakeFailed | CloseReason::HandshakeTimeout) {
            out.push_back(Output::Event(Event::HandshakeFailed { peer, reason }));
        }
        Inbound::Closed
    }

    /// Closes the connection to `peer` (if any). Returns whether there was one.
    pub fn close(&mut self, peer: PeerId, reason: CloseReason, out: &mut VecDeque<Output>) -> bool {
        self.end_pending(&peer);
        if self.links.remove(&peer).is_some() {
            out.push_back(Output::Close { peer, reason });
            true
        } else {
            false
        }
    }

    /// All peers with a connection in any state, in id order.
    pub fn peers(&self) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = self.links.keys().copied().collect();
        peers.sort_unstable();
        peers
    }

    /// Makes sure a sweep happens no later than `at`.
    fn arm_sweep(&mut self, at: Timestamp) {
        self.next_sweep = Some(self.next_sweep.map_or(at, |t| t.min(at)));
    }

    /// `peer`'s handshake is over (done, failed or gone): its deadline no longer calls a sweep
    /// (the peer would wake for nothing).
    fn end_pending(&mut self, peer: &PeerId) {
        if self.pending.remove(peer).is_some() {
            self.rearm_sweep();
        }
    }

    /// The next sweep from scratch: the first handshake deadline, the idle scan's latest time.
    fn rearm_sweep(&mut self) {
        let handshake = self.pending.values().min().map(|d| *d + SWEEP_SLACK);
        let idle = self.next_idle_sweep.map(|t| t + idle_sweep_slack(self.idle_timeout));
        self.next_sweep = match (handshake, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// The next time [`Connections::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.next_sweep
    }

    /// Enforces handshake and idle timeouts. `keep(peer)` says whether an idle connection is still
    /// needed (pool member, open session). Returns the peers whose connection was dropped with
    /// messages still queued, so their requests can fail.
    pub fn handle_timeout(
        &mut self,
        now: Timestamp,
        keep: impl Fn(&PeerId) -> bool,
        out: &mut VecDeque<Output>,
    ) -> Vec<PeerId> {
        let idle_due = self.next_idle_sweep.is_some_and(|t| t <= now);
        if !idle_due && self.next_sweep.is_none_or(|t| now < t) {
            return Vec::new();
        }
        let mut dropped = Vec::new();
        let mut to_close: Vec<(PeerId, CloseReason)> = self
            .pending
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(peer, _)| (*peer, CloseReason::HandshakeTimeout))
            .collect();
        // Idle links are found by a scan every half idle period (run at most a quarter idle
        // period late, see `idle_sweep_slack`), so a link is closed between one and one and three
        // quarter idle periods after its last use.
        if idle_due {
            self.next_idle_sweep = None;
            let mut idle: Vec<PeerId> = self
                .links
                .iter()
                .filter(|(peer, link)| {
                    matches!(link.state, State::Ready)
                        && now.since(link.last_activity) >= self.idle_timeout
                        && !keep(peer)
                })
                .map(|(peer, _)| *peer)
                .collect();
            // Closed in id order, whatever the table's.
            idle.sort_unstable();
            to_close.extend(idle.into_iter().map(|p| (p, CloseReason::Idle)));
        }
        for (peer, reason) in to_close {
            self.pending.remove(&peer);
            if let Some(link) = self.links.remove(&peer) {
                if !link.outbound_queue.is_empty() || !matches!(link.state, State::Ready) {
                    dropped.push(peer);
                }
                out.push_back(Output::Close { peer, reason });
                if reason == CloseReason::HandshakeTimeout && !matches!(link.state, State::Dialing) {
                    out.push_back(Output::Event(Event::HandshakeFailed { peer, reason }));
                }
            }
        }
        if self.next_idle_sweep.is_none() && self.links.len() > self.pending.len() {
            self.next_idle_sweep = Some(now + self.idle_timeout / 2);
        }
        self.rearm_sweep();
        dropped
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::identity::Keypair;
    use crate::proto::wire::RequestId;

    fn pair(key_a: [u8; 32], key_b: [u8; 32]) -> (PeerId, Connections, PeerId, Connections) {
        let a = Keypair::derive(1, "a").peer_id();
        let b = Keypair::derive(1, "b").peer_id();
        let c = Config::default();
        (
            a,
            Connections::new(a, key_a, &c, DetRng::new(1, "a"), 1),
            b,
            Connections::new(b, key_b, &c, DetRng::new(1, "b"), 2),
        )
    }

    /// Moves every `Send` in `out` addressed to `to` into `to`'s table; returns deliveries.
    fn pump(
        from: PeerId,
        out: &mut VecDeque<Output>,
        to: PeerId,
        conns: &mut Connections,
        back: &mut VecDeque<Output>,
    ) -> Vec<Inbound> {
        let mut res = Vec::new();
        while let Some(o) = out.pop_front() {
            if let Output::Send { to: t, message } = o {
                assert_eq!(t, to);
                res.push(conns.on_message(from, message, Timestamp(10), back));
            }
        }
        res
    }

    /// Deliveries to b, deliveries to a, then both tables and both ids, after a full exchange.
    type Handshake =
        (Vec<Inbound>, Vec<Inbound>, VecDeque<Output>, VecDeque<Output>, Connections, Connections, PeerId, PeerId);

    fn handshake(key_b: [u8; 32]) -> Handshake {
        handshake_counted(key_b, false).0
    }

    /// The handshake of a dialling `a` with `b` (which dialled too when `both_dial`), and how many
    /// handshake messages crossed.
    fn handshake_counted(key_b: [u8; 32], both_dial: bool) -> (Handshake, usize) {
        let (a, mut ca, b, mut cb) = pair([1; 32], key_b);
        let (mut oa, mut ob) = (VecDeque::new(), VecDeque::new());
        assert!(ca.send(b, Envelope::Indexer(crate::proto::wire::IndexerMessage::Leave), Timestamp(0), &mut oa));
        assert!(matches!(oa.pop_front(), Some(Output::Connect { .. })));
        ca.on_up(b, None, true, Timestamp(1), &mut oa);
        cb.on_up(a, None, both_dial, Timestamp(1), &mut ob);
        // Every link message is counted as it is pumped across.
        let link_messages = |o: &VecDeque<Output>| {
            o.iter().filter(|x| matches!(x, Output::Send { message: Envelope::Link(_), .. })).count()
        };
        let mut count = 0;
        // Hello, reply, proof (or, both dialling, Hellos cross, then proofs cross).
        count += link_messages(&oa);
        let mut ra = pump(a, &mut oa, b, &mut cb, &mut ob);
        count += link_messages(&ob);
        let mut rb = pump(b, &mut ob, a, &mut ca, &mut oa);
        count += link_messages(&oa);
        ra.extend(pump(a, &mut oa, b, &mut cb, &mut ob));
        count += link_messages(&ob);
        rb.extend(pump(b, &mut ob, a, &mut ca, &mut oa));
        ((ra, rb, oa, ob, ca, cb, a, b), count)
    }

    #[test]
    fn a_handshake_takes_three_messages_and_both_dialling_still_authenticates() {
        let ((ra, _, _, _, ca, cb, a, b), count) = handshake_counted([1; 32], false);
        assert!(ca.is_ready(&b) && cb.is_ready(&a));
        assert_eq!(count, 3, "Hello, HelloReply, HelloProof carrying the Leave");
        assert!(ra.contains(&Inbound::Deliver(Envelope::Indexer(crate::proto::wire::IndexerMessage::Leave))));
        let ((ra, _, _, _, ca, cb, a, b), count) = handshake_counted([1; 32], true);
        assert!(ca.is_ready(&b) && cb.is_ready(&a));
        assert_eq!(count, 4, "both Hellos, both proofs");
        assert!(ra.contains(&Inbound::Deliver(Envelope::Indexer(crate::proto::wire::IndexerMessage::Leave))));
        // The wrong key fails either way, and a reply nobody asked for is a violation.
        for both in [false, true] {
            let ((ra, rb, _, _, ca, cb, a, b), _) = handshake_counted([2; 32], both);
            assert!(!ca.is_ready(&b) && !cb.is_ready(&a));
            assert!(ra.contains(&Inbound::Closed) || rb.contains(&Inbound::Closed));
        }
        let (a, _ca, b, mut cb) = pair([1; 32], [1; 32]);
        let mut o = VecDeque::new();
        cb.on_up(a, None, false, Timestamp(0), &mut o);
        assert!(o.is_empty(), "the accepting side waits for the Hello");
        let reply = Envelope::from(HelloReply { nonce: [3; 32], mac: [4; 32] });
        assert_eq!(cb.on_message(a, reply, Timestamp(1), &mut o), Inbound::Closed);
        assert!(!cb.is_ready(&a) && b != a);
    }

    /// `a` dials `b` with `queued` waiting, and the handshake runs: the frames `a` sent `b` in
    /// order, and what `b` processed of them.
    fn dial_with(queued: Vec<Envelope>) -> (Vec<Envelope>, Vec<Inbound>) {
        let (a, mut ca, b, mut cb) = pair([1; 32], [1; 32]);
        let (mut oa, mut ob) = (VecDeque::new(), VecDeque::new());
        for m in queued {
            assert!(ca.send(b, m, Timestamp(0), &mut oa));
        }
        oa.retain(|o| !matches!(o, Output::Connect { .. }));
        ca.on_up(b, None, true, Timestamp(1), &mut oa);
        cb.on_up(a, None, false, Timestamp(1), &mut ob);
        let (mut frames, mut processed) = (Vec::new(), Vec::new());
        while !oa.is_empty() || !ob.is_empty() {
            while let Some(Output::Send { message, .. }) = oa.pop_front() {
                frames.push(message.clone());
                processed.push(cb.on_message(a, message, Timestamp(2), &mut ob));
            }
            while let Some(Output::Send { message, .. }) = ob.pop_front() {
                ca.on_message(b, message, Timestamp(2), &mut oa);
            }
        }
        assert!(ca.is_ready(&b) && cb.is_ready(&a));
        (frames, processed)
    }

    #[test]
    fn the_dialler_s_first_message_rides_with_its_proof_and_is_processed_first() {
        use crate::proto::wire::{IndexerMessage, WitnessQuery};
        let leave = Envelope::Indexer(IndexerMessage::Leave);
        let query = Envelope::from(WitnessQuery { req: RequestId(1), indexer: PeerId([5; 32]) });
        let (frames, processed) = dial_with(vec![leave.clone(), query.clone()]);
        // Hello, then the proof carrying the Leave, then the query: three frames for two messages.
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert!(matches!(frames[0], Envelope::Link(LinkMessage::Hello(_))));
        assert!(
            matches!(&frames[1], Envelope::Link(LinkMessage::HelloProofWith(p)) if p.first.get() == &leave),
            "{:?}",
            frames[1]
        );
        assert_eq!(processed, vec![Inbound::Nothing, Inbound::Deliver(leave), Inbound::Deliver(query)]);
        // Nothing queued: a bare proof.
        let (frames, _) = dial_with(Vec::new());
        assert!(matches!(
            frames[..],
            [Envelope::Link(LinkMessage::Hello(_)), Envelope::Link(LinkMessage::HelloProof(_))]
        ));
    }

    #[test]
    fn a_first_message_too_large_to_carry_follows_a_bare_proof() {
        use crate::proto::wire::{IndexerMessage, MAX_FRAME_LEN, Refused};
        let addr = PeerAddr { id: PeerId([9; 32]), addrs: vec!["a".repeat(MAX_FRAME_LEN - 80)] };
        let big = Envelope::Indexer(IndexerMessage::Refused(Refused {
            req: RequestId(1),
            reason: crate::proto::wire::RefuseReason::Full,
            suggestions: vec![addr],
        }));
        assert!(crate::proto::wire::encode(&big).len() <= MAX_FRAME_LEN, "a frame alone");
        let (frames, processed) = dial_with(vec![big.clone()]);
        assert!(matches!(frames[1], Envelope::Link(LinkMessage::HelloProof(_))), "{:?}", frames[1].kind());
        assert_eq!(frames.len(), 3);
        assert_eq!(processed[2], Inbound::Deliver(big));
    }

    #[test]
    fn a_proof_with_a_message_and_the_wrong_key_closes_and_processes_nothing() {
        use crate::proto::wire::IndexerMessage;
        let (a, mut ca, _b, mut cb) = pair([1; 32], [1; 32]);
        let b = cb.me;
        let mut o = VecDeque::new();
        cb.on_up(a, None, false, Timestamp(0), &mut o);
        assert_eq!(cb.on_message(a, Hello { nonce: [1; 32] }.into(), Timestamp(1), &mut o), Inbound::Nothing);
        let first = Carried::new(Envelope::Indexer(IndexerMessage::Leave)).expect("carried");
        let forged = Envelope::from(HelloProofWith { mac: [0; 32], first });
        assert_eq!(cb.on_message(a, forged, Timestamp(2), &mut o), Inbound::Closed);
        assert!(!cb.is_ready(&a));
        assert!(o.iter().any(|x| matches!(x, Output::Close { reason: CloseReason::HandshakeFailed, .. })));
        // A proof with a message before any Hello is a violation too.
        let mut o = VecDeque::new();
        ca.on_up(b, None, false, Timestamp(0), &mut o);
        let first = Carried::new(Envelope::Indexer(IndexerMessage::Leave)).expect("carried");
        let early = Envelope::from(HelloProofWith { mac: [0; 32], first });
        assert_eq!(ca.on_message(b, early, Timestamp(1), &mut o), Inbound::Closed);
    }

    #[test]
    fn hello_exchange_with_the_same_key_authenticates_and_flushes_queue() {
        let (ra, _rb, _oa, _ob, ca, cb, a, b) = handshake([1; 32]);
        assert!(ca.is_ready(&b) && cb.is_ready(&a));
        // The queued Leave reached b after the handshake.
        assert!(ra.contains(&Inbound::Deliver(Envelope::Indexer(crate::proto::wire::IndexerMessage::Leave))), "{ra:?}");
        // Once ready, neither end keeps a queue buffer for the link's lifetime.
        for (c, peer) in [(&ca, b), (&cb, a)] {
            let link = &c.links[&peer];
            assert_eq!((link.outbound_queue.capacity(), link.early_inbound.capacity()), (0, 0));
        }
    }

    #[test]
    fn peer_with_the_wrong_network_key_is_closed_and_gets_nothing_processed() {
        let (ra, rb, _oa, _ob, ca, cb, a, b) = handshake([2; 32]);
        assert!(!ca.is_ready(&b));
        assert!(!cb.is_ready(&a));
        assert!(ra.iter().chain(rb.iter()).all(|i| !matches!(i, Inbound::Deliver(_) | Inbound::DeliverHeld(_))));
        assert!(ra.contains(&Inbound::Closed) || rb.contains(&Inbound::Closed));
    }

    #[test]
    fn application_message_before_handshake_is_not_delivered() {
        let (a, mut ca, b, _cb) = pair([1; 32], [1; 32]);
        let mut o = VecDeque::new();
        ca.on_up(b, None, true, Timestamp(0), &mut o);
        let r = ca.on_message(
            b,
            Envelope::from(crate::proto::wire::WitnessQuery { req: RequestId(1), indexer: a }),
            Timestamp(1),
            &mut o,
        );
        assert_eq!(r, Inbound::Nothing);
        assert!(!ca.is_ready(&b));
        // A message from a peer with no connection at all closes it.
        let stranger = Keypair::derive(9, "s").peer_id();
        assert_eq!(
            ca.on_message(stranger, Envelope::Indexer(crate::proto::wire::IndexerMessage::Leave), Timestamp(1), &mut o),
            Inbound::Closed
        );
    }

    #[test]
    fn unused_connection_is_closed_after_the_idle_timeout_unless_still_needed() {
        let (_ra, _rb, _oa, _ob, mut ca, mut cb, a, b) = handshake([1; 32]);
        let idle = Config::default().idle_timeout;
        let mut o = VecDeque::new();
        // b still needs a (e.g. a session): kept; a does not need b: closed within 1.75 idle periods.
        let end = Timestamp(10) + idle + idle / 2 + idle_sweep_slack(idle);
        for (conns, keep) in [(&mut ca, false), (&mut cb, true)] {
            while let Some(t) = conns.poll_timeout() {
                if t > end {
                    break;
                }
                conns.handle_timeout(t, |_| keep, &mut o);
            }
        }
        assert!(!ca.is_ready(&b), "idle, unneeded link closed");
        assert!(cb.is_ready(&a), "needed link kept");
        assert!(o.iter().any(|x| matches!(x, Output::Close { peer, reason: CloseReason::Idle } if *peer == b)));
    }

    #[test]
    fn a_finished_handshake_wakes_nobody_and_the_idle_scan_rides_on_other_wake_ups() {
        let (_ra, _rb, _oa, _ob, mut ca, _cb, _a, b) = handshake([1; 32]);
        let (idle, t0) = (Config::default().idle_timeout, Timestamp(0));
        // The handshake deadline is forgotten with the handshake: the next wake-up the link asks
        // for is its idle scan's latest time.
        let latest = ca.poll_timeout().expect("an idle scan is armed");
        assert!(latest >= t0 + idle / 2 + idle_sweep_slack(idle), "{latest:?}");
        assert!(latest <= Timestamp(100) + idle / 2 + idle_sweep_slack(idle), "{latest:?}");
        // The peer wakes for something else after the scan's time: the scan runs then (the link
        // is not idle yet) and the next one is armed from there.
        let mut o = VecDeque::new();
        let s1 = Timestamp(200) + idle / 2;
        assert!(s1 < latest);
        ca.handle_timeout(s1, |_| false, &mut o);
        assert!(ca.is_ready(&b));
        assert_eq!(ca.poll_timeout(), Some(s1 + idle / 2 + idle_sweep_slack(idle)));
        // Woken again past the next scan's time, the link has been idle long enough: closed.
        ca.handle_timeout(s1 + idle / 2 + Duration::from_millis(1), |_| false, &mut o);
        assert!(!ca.is_ready(&b));
        assert!(o.iter().any(|x| matches!(x, Output::Close { peer, reason: CloseReason::Idle } if *peer == b)));
    }

    /// A spoke `i` dials `hub` and completes the handshake with it.
    fn spoke(hub_id: PeerId, hub: &mut Connections, i: u64) -> PeerId {
        let x = Keypair::derive(i, "spoke").peer_id();
        let mut cx = Connections::new(x, [1; 32], &Config::default(), DetRng::new(i, "x"), i);
        let (mut ox, mut oh) = (VecDeque::new(), VecDeque::new());
        assert!(cx.send(hub_id, Envelope::Indexer(crate::proto::wire::IndexerMessage::Leave), Timestamp(0), &mut ox));
        ox.clear();
        cx.on_up(hub_id, None, true, Timestamp(1), &mut ox);
        hub.on_up(x, None, false, Timestamp(1), &mut oh);
        for _ in 0..3 {
            pump(x, &mut ox, hub_id, hub, &mut oh);
            pump(hub_id, &mut oh, x, &mut cx, &mut ox);
        }
        assert!(hub.is_ready(&x) && cx.is_ready(&hub_id));
        x
    }

    #[test]
    fn idle_links_close_in_id_order_whatever_the_table_order() {
        let hub_id = Keypair::derive(1, "hub").peer_id();
        let mut hub = Connections::new(hub_id, [1; 32], &Config::default(), DetRng::new(1, "hub"), 7);
        let mut ids: Vec<PeerId> = (1..=40).map(|i| spoke(hub_id, &mut hub, i)).collect();
        ids.sort_unstable();
        assert_eq!(hub.peers(), ids, "peers() in id order");
        let idle = Config::default().idle_timeout;
        let end = Timestamp(10) + idle + idle / 2 + idle_sweep_slack(idle);
        let mut o = VecDeque::new();
        while let Some(t) = hub.poll_timeout() {
            if t > end {
                break;
            }
            hub.handle_timeout(t, |_| false, &mut o);
        }
        let closed: Vec<PeerId> = o
            .iter()
            .filter_map(|x| match x {
                Output::Close { peer, reason: CloseReason::Idle } => Some(*peer),
                _ => None,
            })
            .collect();
        assert_eq!(closed, ids, "every idle link closed once, in id order");
        assert!(hub.is_empty());
    }

    #[test]
    fn handshake_that_never_completes_times_out() {
        let (_a, mut ca, b, _cb) = pair([1; 32], [1; 32]);
        let mut o = VecDeque::new();
        ca.on_up(b, None, true, Timestamp(0), &mut o);
        let limit = Timestamp(0) + Config::default().handshake_timeout + SWEEP_SLACK;
        while let Some(now) = ca.poll_timeout() {
            assert!(now <= limit, "handshake still pending after its timeout");
            ca.handle_timeout(now, |_| true, &mut o);
        }
        assert!(!ca.is_ready(&b));
        assert_eq!(ca.len(), 0);
        assert!(o.iter().any(|x| matches!(x, Output::Close { reason: CloseReason::HandshakeTimeout, .. })));
    }
}
