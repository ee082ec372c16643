//! The search mesh among indexers: iroh-gossip's sans-IO topic state (HyParView membership and
//! PlumTree broadcast), driven in virtual time.
//!
//! One topic, one [`topic::State`] (the multi-topic `proto::State` fans peer events out over a std
//! `HashMap`, whose order changes from process to process; a single topic state has no such loop,
//! and its randomness is our forked [`DetRng`]). Its `Instant`s are an anchor the host passes in
//! plus our [`Timestamp`]: the state only adds durations to `now` and compares them, so outputs do
//! not depend on the anchor. Timers become deadlines in a `BTreeMap` (ties keep their order).
//!
//! Membership is bootstrapped from the DHT routing table (which holds indexers only), and joined
//! again whenever the active view empties. The opaque per-peer data gossip carries is this
//! indexer's [`PeerAddr`], so a neighbour met through the passive view can be dialled.
//!
//! Gossip payloads are pre-read before the state sees them ([`gossip_content`]): a payload the
//! search machine rejects (a bad signature, an expired query, an emitter over its rate) is
//! dropped here and never forwarded, so a flooder's queries die at the first honest hop.

use super::SearchOut;
use crate::proto::action::Sink;
use crate::proto::identity::{PeerAddr, PeerId};
use crate::proto::rng::DetRng;
use crate::proto::time::Timestamp;
use crate::proto::{Action, Event};
use bytes::Bytes;
use iroh_gossip::proto::topic::{self, Command, Config, Event as GossipEvent, InEvent, OutEvent, Timer};

use iroh_gossip::proto::{PeerData, Scope};
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use super::messages::{MeshMessage, SearchMessage};

/// Our seeded generator, as the `rand_core` 0.10 RNG iroh-gossip takes.
#[derive(Debug)]
pub(super) struct GossipRng(pub(super) DetRng);

impl rand_core::TryRng for GossipRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((self.0.next_u64() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill(dst);
        Ok(())
    }
}

/// Counters of the mesh, for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Gossip messages sent (data and control).
    pub sent: u64,
    /// Gossip messages received.
    pub received: u64,
    /// Payloads dropped before forwarding (invalid, expired, over rate).
    pub dropped: u64,
    /// Payloads delivered to the search machine.
    pub delivered: u64,
}

/// How often a mesh with no neighbour tries to join again.
pub(super) const REJOIN_INTERVAL: Duration = Duration::from_secs(10);
/// Routing-table contacts a join asks.
pub(super) const JOIN_PEERS: usize = 3;

/// The mesh state of one indexer.
#[derive(Debug)]
pub(super) struct Mesh {
    state: topic::State<PeerId, GossipRng>,
    anchor: n0_future::time::Instant,
    timers: BTreeMap<(Timestamp, u64), Timer<PeerId>>,
    timer_seq: u64,
    neighbours: BTreeSet<PeerId>,
    /// When to try joining again while no neighbour is up.
    next_join: Timestamp,
    pub(super) stats: MeshStats,
}

/// A payload the mesh delivered: `(content, neighbour it came from)`.
pub(super) type Delivered = Vec<(Bytes, PeerId)>;

impl Mesh {
    pub(super) fn new(
        config: &crate::proto::config::Config,
        me: PeerAddr,
        anchor: std::time::Instant,
        rng: DetRng,
        now: Timestamp,
    ) -> Mesh {
        let data = PeerData::new(postcard::to_stdvec(&me).unwrap_or_default());
        let mut gossip = Config::default();
        // PlumTree asks for a missing message after about a round trip (the paper, p. 8–9); the
        // library's 80 ms default is below the round trips of a wide-area federation and would
        // graft (and duplicate) messages still on their way.
        gossip.broadcast.graft_timeout_1 = config.base_round_trip;
        gossip.broadcast.graft_timeout_2 = config.base_round_trip / 2;
        let state = topic::State::with_rng(me.id, Some(data), gossip, GossipRng(rng));
        Mesh {
            state,
            anchor: n0_future::time::Instant::from_std(anchor),
            timers: BTreeMap::new(),
            timer_seq: 0,
            neighbours: BTreeSet::new(),
            next_join: now,
            stats: MeshStats::default(),
        }
    }

    fn instant(&self, now: Timestamp) -> n0_future::time::Instant {
        self.anchor + Duration::from_millis(now.as_millis())
    }

    /// The current neighbours (HyParView's active view).
    pub(super) fn neighbours(&self) -> &BTreeSet<PeerId> {
        &self.neighbours
    }

    /// Whether it is time to (re)join through `contacts` of the routing table.
    pub(super) fn wants_join(&self, now: Timestamp) -> bool {
        self.neighbours.is_empty() && now >= self.next_join
    }

    /// Joins through `peers` (routing-table contacts).
    pub(super) fn join(&mut self, peers: Vec<PeerAddr>, now: Timestamp, out: &mut Vec<Action>, got: &mut Delivered) {
        self.next_join = now + REJOIN_INTERVAL;
        if peers.is_empty() {
            return;
        }
        let ids = peers.iter().map(|p| p.id).collect();
        for p in peers {
            out.emit(SearchOut::Learn(p));
        }
        self.feed(InEvent::Command(Command::Join(ids)), now, out, got);
    }

    /// Broadcasts `content` to every indexer of the mesh.
    pub(super) fn broadcast(&mut self, content: Bytes, now: Timestamp, out: &mut Vec<Action>, got: &mut Delivered) {
        self.feed(InEvent::Command(Command::Broadcast(content, Scope::Swarm)), now, out, got);
    }

    /// A mesh message from `from`. `accept` judges a gossip payload before the state forwards it.
    pub(super) fn on_message(
        &mut self,
        from: PeerId,
        message: MeshMessage,
        accept: impl FnOnce(&[u8]) -> bool,
        now: Timestamp,
        out: &mut Vec<Action>,
        got: &mut Delivered,
    ) {
        self.stats.received += 1;
        if let Some(content) = gossip_content(&message)
            && !accept(&content)
        {
            self.stats.dropped += 1;
            return;
        }
        self.feed(InEvent::RecvMessage(from, message), now, out, got);
    }

    /// `peer`'s connection is gone.
    pub(super) fn on_unreachable(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>, got: &mut Delivered) {
        self.feed(InEvent::PeerDisconnected(peer), now, out, got);
    }

    pub(super) fn poll_timeout(&self) -> Option<Timestamp> {
        let timer = self.timers.keys().next().map(|(t, _)| *t);
        let join = self.neighbours.is_empty().then_some(self.next_join);
        timer.into_iter().chain(join).min()
    }

    pub(super) fn handle_timeout(&mut self, now: Timestamp, out: &mut Vec<Action>, got: &mut Delivered) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.feed(InEvent::TimerExpired(timer), now, out, got);
        }
    }

    fn feed(&mut self, event: InEvent<PeerId>, now: Timestamp, out: &mut Vec<Action>, got: &mut Delivered) {
        let at = self.instant(now);
        let events: Vec<OutEvent<PeerId>> = self.state.handle(event, at).collect();
        for e in events {
            match e {
                OutEvent::SendMessage(to, m) => {
                    self.stats.sent += 1;
                    out.emit(SearchOut::Send { to, message: SearchMessage::Mesh(m).into() });
                }
                OutEvent::EmitEvent(GossipEvent::NeighborUp(p)) => {
                    if self.neighbours.insert(p) {
                        out.emit(SearchOut::Event(Event::MeshNeighbour { peer: p, up: true }));
                    }
                }
                OutEvent::EmitEvent(GossipEvent::NeighborDown(p)) => {
                    if self.neighbours.remove(&p) {
                        out.emit(SearchOut::Event(Event::MeshNeighbour { peer: p, up: false }));
                    }
                    if self.neighbours.is_empty() {
                        self.next_join = self.next_join.max(now);
                    }
                }
                OutEvent::EmitEvent(GossipEvent::Received(ev)) => {
                    self.stats.delivered += 1;
                    got.push((ev.content, ev.delivered_from));
                }
                OutEvent::ScheduleTimer(d, timer) => {
                    // Round up, so a timer never fires before its time.
                    let ms = d.as_millis().saturating_add(u128::from(d.subsec_nanos() % 1_000_000 != 0));
                    let at = now + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX / 2));
                    self.timer_seq += 1;
                    self.timers.insert((at, self.timer_seq), timer);
                }
                // The connection may serve other mechanisms; the link closes it when idle.
                OutEvent::DisconnectPeer(_) => {}
                OutEvent::PeerData(p, data) => {
                    if let Ok(addr) = postcard::from_bytes::<PeerAddr>(data.inner())
                        && addr.id == p
                    {
                        out.emit(SearchOut::Learn(addr));
                    }
                }
            }
        }
    }
}

/// The payload of a PlumTree data message, read in iroh-gossip 0.101's postcard layout
/// (`topic::Message::Gossip` = 1, `plumtree::Message::Gossip` = 0, a 32-byte id, then the content
/// as length-prefixed bytes). `None` for every other message. The layout is checked against the
/// real encoding by a unit test, and the dependency is pinned exactly.
pub(super) fn gossip_content(message: &MeshMessage) -> Option<Vec<u8>> {
    if !matches!(message, topic::Message::Gossip(_)) {
        return None;
    }
    let bytes = postcard::to_stdvec(message).ok()?;
    let rest = bytes.strip_prefix(&[1u8, 0u8])?;
    let rest = rest.get(32..)?;
    let (content, _) = postcard::take_from_bytes::<Vec<u8>>(rest).ok()?;
    Some(content)
}
