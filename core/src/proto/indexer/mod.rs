//! The indexer role: admitting node heartbeats, keeping their sessions, answering with raw metrics.
//!
//! A node proves it is alive by heartbeating each indexer of its pool every 20 s (spec A §7, C §10,
//! E F7). The indexer admits it, keeps a **session** for it, and answers each heartbeat with raw,
//! checkable facts — its fill rate, peer count, capacity and `born_at`, answers to the node's
//! challenges ("do you have a session for peer X, and when did you last hear from it?"), witnesses
//! (other nodes the node may ask about us), suggestions of other indexers and, above 80 % fill, a
//! request to migrate (C §12). The node scores us from these; we never send a pre-cooked score.
//!
//! ## Admission, in order ([`IndexerService::on_heartbeat`])
//!
//! 1. A banned peer is refused (`Banned`) and disconnected.
//! 2. Every heartbeat *and probe* counts in the sender's rate window ([`BehaviourTable`]); the
//!    (max+1)-th in a minute is refused (`RateLimited`) and costs a strike; at the threshold the
//!    peer is banned, its session dropped and its connection closed.
//! 3. A probe (one-shot measurement during the node's candidate consensus) creates no session and
//!    does not use the burst guard (fix of C §18.11): it is answered with metrics, or refused
//!    `Full` with suggestions when the prober has no session and we are at capacity (unless it is
//!    below its minimum and a session could move for it, see below).
//! 4. A regular heartbeat without a session must pass the [`BurstGuard`] (`Busy`), capacity
//!    (`Full`, with up to three least-loaded indexers to try instead) and the admission score.
//!    **Fair capacity** (issue 13, `capacity.rs`): every heartbeat carries the node's
//!    [`Standing`](crate::proto::wire::Standing) without us; a node below its minimum goes first
//!    through the burst guard, and when we are full it takes the slot of a node that keeps at
//!    least its minimum elsewhere (that node is refused `Moved` at its next heartbeat).
//! 5. A regular heartbeat with a session refreshes it; if the session's admission score falls
//!    below `dynamic_min_score(session age)` it is refused (`LowScore`) and dropped.
//!
//! ## The admission score, and why an honest node always meets it (O1)
//!
//! The seed scored nodes with bandwidth, its *own* diversity and fill rate, so a long-lived node's
//! best score (~55–80) fell below the threshold that ramps from 20 to 80 over 24 h: every node was
//! pushed out after ~14–24 h and re-admitted as new (oddity O1). Here the score only uses what
//! the node controls:
//!
//! `score = 100 × (0.6 × uptime_ratio + 0.4 × standing)`
//!
//! * `uptime_ratio` — gap-aware online time over the session's age (gaps of at most
//!   2 × `liveness_interval` count as online, A §5.1); 1.0 for a brand-new session;
//! * `standing = 1 − strikes / strike_threshold`, clamped to [0, 1].
//!
//! An honest node (a heartbeat every 20 s, no strikes) scores 100 ≥ 80 at any age. A node that keeps
//! collecting strikes sits at 73 with two of three strikes and is refused once the threshold
//! passes that (after ~21 h); one that reaches three strikes is banned anyway.
//!
//! ## Other fixes over the seed
//!
//! * Bans are durable (issue 15: the seed, and ocd before, forgot them on restart): a ban is
//!   emitted as a `Persist::Ban` when it is set, and [`IndexerService::restore_bans`] takes the
//!   bans not yet ended back after a restart.
//! * Sessions are keyed by the transport-authenticated peer id, never a self-declared one (B11).
//! * Capacity and fill rate count sessions only, i.e. heartbeating peers (B12).
//! * A stored DID is never clobbered by a heartbeat without one (B10); a *different* DID than the
//!   first bound to the peer costs two strikes.
//! * Referents (nodes that chose us for distributed search) live in the session and go with it
//!   (C §18.3).
//! * Sessions expire exactly `session_expiry` after their last heartbeat (the seed's GC formula
//!   evicted after 80–110 s, A §7.2); the timer is the earliest expiry, so no scan is needed.
//! * Candidate requests need a session, are rate-limited with the "get" window (C §18.19), never
//!   return the requester, and a count above `max_candidates` is capped, not reset to 3 (C §18.25).
//! * Suggestions prefer indexers with a lower known fill rate, with some randomness (the seed's
//!   "least-loaded top-5" was a random offset into a random list, C §18.13).
//!
//! Per-heartbeat work is `O(k)` expected in the number of sessions `n`, and touches few cache
//! lines however large `n` (issue 13): a peer's session and its behaviour record (rate windows,
//! strikes, ban, DID binding) are one entry of one seeded hash table
//! ([`SeededMap`](crate::proto::seeded::SeededMap), in [`BehaviourTable`]), so a heartbeat finds
//! both with one probe; witnesses are drawn from a vector of non-indexer sessions by index, and
//! a heartbeat updates no ordered index unless what it indexes changed — the expiry and eviction
//! indices are renewed lazily, about once per `session_expiry`, by the timer (see
//! [`IndexerService::handle_timeout`]). GC visits only the behaviour entries it has work on
//! (strikes, a ban, no session; listed as they change, see `admission.rs`), not every steady
//! session. The two tables a heartbeat reads (the peer's entry, the record store) are looked up
//! together first, so that at scale their cache misses overlap
//! ([`IndexerService::on_heartbeat`]). A session costs under 1 KiB in all (the session, its
//! indices and the node's behaviour record; measured by
//! `cargo bench -p ocd-core --features internals --bench sessions`).
//!
//! ## Files, one per flow
//!
//! `mod.rs` the service, timers and views · `gate.rs` the admission gate every request passes ·
//! `admission.rs` burst guard, rate windows, strikes and bans · `responses.rs` heartbeats, probes
//! and their responses · `sessions.rs` sessions and DID binding · `capacity.rs` fair capacity
//! under scarcity · `offload.rs` offload ·
//! `candidates.rs` candidates and the cache of other indexers · `record_gate.rs` publishes, record
//! gets and DHT requests, and the routing of this role's requests · `messages.rs` its messages.

use crate::proto::action::Sink;
use crate::proto::config::Config;
use crate::proto::dht::{Dht, Offer, Purpose, QueryId, select_by_fill};
use crate::proto::durable::Persist;
use crate::proto::identity::{Did, PeerAddr, PeerId};
use crate::proto::record::{MAX_NAME_LEN, PeerRecord, ProviderRecord, StoreError};
use crate::proto::rng::DetRng;
use crate::proto::time::Timestamp;
use crate::proto::wire::{
    CandidatesRequest, CandidatesResponse, ChallengeEntry, Heartbeat, HeartbeatKind, HeartbeatResponse, Publish,
    Published, RefuseReason, Refused, RequestId, StoreRefusal,
};
use crate::proto::wire::{DhtMessage, Envelope, IndexerMessage, SearchMessage};
use crate::proto::{Action, CloseReason, Event, RequestKind, SessionEnd};
use admission::{AdmissionError, BehaviourTable, BurstGuard, RateKind, Strike};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub(crate) mod admission;
mod candidates;
mod capacity;
mod gate;
pub(crate) mod messages;
mod offload;
mod record_gate;
mod responses;
mod sessions;
#[cfg(test)]
mod tests;

use capacity::Capacity;
use gate::Req;
use offload::Offload;
use record_gate::RecordTaken;
pub use record_gate::{DidCheck, RecordDesk, admit_search, on_dht_request, on_request};

/// Most challenges answered per heartbeat; a node sends its own id plus at most two others
/// (A §6.5). A defensive bound that keeps the reply far below the frame limit.
const MAX_CHALLENGES_ANSWERED: usize = 32;
/// Candidates returned when a request asks for 0 (C §13.3).
const DEFAULT_CANDIDATES: usize = 3;
/// Suggestions carried by a `Full` refusal.
const FULL_REFUSAL_SUGGESTIONS: usize = 3;
/// Fill rate assumed for an indexer whose fill is unknown, when ranking suggestions.
const UNKNOWN_FILL: f64 = 0.5;
/// Random spread added to known fill rates when choosing suggestions, so that every node is not
/// sent to the same least-loaded indexer at once.
const SUGGESTION_JITTER: f64 = 0.25;
/// A timer run also renews the expiry index entries that would fall due within this long, so that
/// stale entries (see [`IndexerService::handle_timeout`]) wake the indexer at most about once per
/// this period, however many sessions it holds.
const EXPIRY_BATCH: Duration = Duration::from_secs(1);

/// What the indexer role does: its outputs, lifted into the router's [`Action`].
#[derive(Clone, Debug, PartialEq)]
pub enum IndexerOut {
    /// Send to a peer (dialled from the address book when there is no connection).
    Send {
        /// The recipient.
        to: PeerId,
        /// The message.
        message: Envelope,
    },
    /// Close the connection to a peer.
    Close {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: CloseReason,
    },
    /// Report an event.
    Event(Event),
    /// Store durably before what follows: a ban, so a restarted indexer keeps it.
    Persist(Persist),
}

/// The admission score of a node: `100 × (0.6 × uptime_ratio + 0.4 × standing)` with
/// `standing = 1 − strikes/strike_threshold`; both terms are clamped to [0, 1] (NaN counts as 0).
pub fn admission_score(uptime_ratio: f64, strikes: u32, strike_threshold: u32) -> f64 {
    let uptime = if uptime_ratio.is_nan() { 0.0 } else { uptime_ratio.clamp(0.0, 1.0) };
    let standing = (1.0 - f64::from(strikes) / f64::from(strike_threshold.max(1))).clamp(0.0, 1.0);
    100.0 * (0.6 * uptime + 0.4 * standing)
}

/// One admitted node.
#[derive(Clone, Debug)]
struct Session {
    addr: PeerAddr,
    did: Option<Did>,
    name: Option<String>,
    first_seen: Timestamp,
    last_seen: Timestamp,
    /// The `last_seen` under which the session sits in `IndexerService::expiry`: at most
    /// `last_seen` (the index is renewed lazily).
    indexed: Timestamp,
    /// Gap-aware time online (A §5.1), in ms (timestamps are whole ms).
    online_ms: u64,
    referent: bool,
    is_indexer: bool,
    /// Position in `IndexerService::witness_pool` (non-indexer sessions only).
    witness_slot: Option<u32>,
    /// Its pool without us, as its last heartbeat said (fair capacity, `capacity.rs`).
    standing: crate::proto::wire::Standing,
}

impl Session {
    /// A session opened at `now` by the node reached at `addr`.
    fn new(addr: PeerAddr, now: Timestamp) -> Self {
        Session {
            addr,
            did: None,
            name: None,
            first_seen: now,
            last_seen: now,
            indexed: now,
            online_ms: 0,
            referent: false,
            is_indexer: false,
            witness_slot: None,
            standing: crate::proto::wire::Standing::default(),
        }
    }

    /// Online time over age, as of the last heartbeat; 1.0 for a brand-new session.
    fn uptime_ratio(&self) -> f64 {
        let age = self.last_seen.since(self.first_seen);
        if age.is_zero() {
            return 1.0;
        }
        (Duration::from_millis(self.online_ms).as_secs_f64() / age.as_secs_f64()).clamp(0.0, 1.0)
    }
}

/// A read-only view of one session.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionView<'a> {
    /// The node (transport-authenticated).
    pub peer: PeerId,
    /// Where it was reached from.
    pub addr: &'a PeerAddr,
    /// Its DID, once it sent one.
    pub did: Option<&'a Did>,
    /// Its name, once it sent one.
    pub name: Option<&'a str>,
    /// When the session opened.
    pub first_seen: Timestamp,
    /// Its last accepted heartbeat.
    pub last_seen: Timestamp,
    /// It chose this indexer as its search referent.
    pub referent: bool,
    /// It is itself an indexer.
    pub is_indexer: bool,
    /// Gap-aware online ratio as of its last heartbeat.
    pub uptime_ratio: f64,
    /// Its admission score (`100 × (0.6 × uptime + 0.4 × standing)`, see the module doc) as of its last
    /// heartbeat and current strikes.
    pub admission_score: f64,
}

/// Another indexer this one knows, for suggestions and candidates.
#[derive(Clone, Debug, PartialEq)]
pub struct KnownIndexer {
    /// Who and where.
    pub addr: PeerAddr,
    /// Its last known fill rate (sanitised to [0, 1]), if any.
    pub fill_rate: Option<f64>,
    /// When it was last seen alive.
    pub last_seen: Timestamp,
}

/// The indexer role of a peer: admission, sessions, heartbeat responses, offload, candidates.
#[derive(Debug)]
pub struct IndexerService {
    config: Config,
    me: PeerId,
    rng: DetRng,
    /// Draws for the cache of other indexers picked from DHT providers.
    cache_rng: DetRng,
    born_at: Timestamp,
    /// `(indexed, peer)` of every session (see `Session::indexed`): one entry per session, whose
    /// key may be earlier than the session's `last_seen`. A heartbeat does not touch it; a timer
    /// run renews the entries that fall due (see [`IndexerService::handle_timeout`]).
    expiry: BTreeSet<(Timestamp, PeerId)>,
    /// The entries a timer run takes from `expiry`, then renews: kept between runs (cleared), so
    /// that a run does not allocate and free a buffer of thousands of entries at 100 k sessions
    /// (the allocator's cost of that grew with the heap).
    expiry_batch: Vec<(Timestamp, PeerId)>,
    /// Non-indexer sessions, for O(1) random witness picks.
    witness_pool: Vec<PeerId>,
    /// Sessions of other indexers (their pools hold us): the witnesses an indexer asking about us
    /// is given, since indexers are linked to each other already (the DHT).
    indexer_sessions: BTreeSet<PeerId>,
    /// Sessions whose node chose us as referent.
    referents: BTreeSet<PeerId>,
    known: BTreeMap<PeerId, KnownIndexer>,
    offload: Offload,
    capacity: Capacity,
    burst: BurstGuard,
    /// Per peer, one entry: its behaviour record (rate windows, strikes, ban, DID binding) and its
    /// session, so that a heartbeat finds both with one probe (see `admission.rs`). A hash table
    /// (its order is never an output: `sessions()` sorts).
    behaviour: BehaviourTable,
    next_gc: Timestamp,
    /// Heartbeat responses held until the DHT spot check of their DID challenge ends.
    did_checks: BTreeMap<QueryId, (PeerId, HeartbeatResponse)>,
}

impl IndexerService {
    /// An indexer born at `now` (its `born_at` never changes while it runs).
    pub fn new(config: Config, me: PeerId, mut rng: DetRng, cache_rng: DetRng, now: Timestamp) -> Self {
        let burst = BurstGuard::new(&config);
        // The keys of the per-peer hash tables: secret, so that peers cannot grind ids that share
        // buckets; drawn from the seeded RNG, so that the same seed gives the same tables.
        let mut keys = rng.fork("indexer tables");
        let behaviour = BehaviourTable::new(&config, keys.next_u64());
        let next_gc = now + config.gc_interval.max(Duration::from_millis(1));
        IndexerService {
            config,
            me,
            rng,
            cache_rng,
            born_at: now,
            expiry: BTreeSet::new(),
            expiry_batch: Vec::new(),
            witness_pool: Vec::new(),
            indexer_sessions: BTreeSet::new(),
            referents: BTreeSet::new(),
            known: BTreeMap::new(),
            offload: Offload::default(),
            capacity: Capacity::default(),
            burst,
            behaviour,
            next_gc,
            did_checks: BTreeMap::new(),
        }
    }

    /// Runs due timers: session expiry (exactly `session_expiry` after the last heartbeat) and GC.
    ///
    /// The expiry index is renewed lazily: a heartbeat leaves the session's entry where it is, so
    /// an entry may be earlier than the session's real deadline, never later. Each run takes the
    /// entries due by `now` plus [`EXPIRY_BATCH`]: the sessions whose real deadline has passed
    /// expire (in deadline order, as if the index were exact), the others go back under their
    /// real deadline. A session is thus re-indexed about once per `session_expiry`, not once per
    /// heartbeat, and a run always leaves the earliest entry after `now` (no spinning).
    pub fn handle_timeout(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let horizon = now + EXPIRY_BATCH;
        let mut due: Vec<(Timestamp, PeerId)> = Vec::new();
        let mut batch = std::mem::take(&mut self.expiry_batch);
        while let Some(&(indexed, peer)) = self.expiry.first() {
            if self.expiry_deadline(indexed) > horizon {
                break;
            }
            self.expiry.pop_first();
            batch.push((indexed, peer));
        }
        // The sessions are looked up in a loop of their own: each lookup is independent of the
        // others, so that at scale their cache misses overlap.
        let session_expiry = self.config.session_expiry;
        let table = &mut self.behaviour;
        batch.retain_mut(|(key, peer)| match table.session_mut(peer) {
            Some(s) if now.since(s.last_seen) > session_expiry => {
                due.push((s.last_seen, *peer));
                false
            }
            Some(s) => {
                s.indexed = s.last_seen;
                *key = s.last_seen;
                true
            }
            // An entry without a session cannot happen; it is dropped.
            None => false,
        });
        // Entries still due within the batch go back only now: the loop above takes each once.
        self.expiry.extend(batch.drain(..));
        self.expiry_batch = batch;
        due.sort_unstable();
        for (_, peer) in due {
            self.close_session(peer, SessionEnd::Expired, out);
        }
        if now >= self.next_gc {
            self.gc(now);
            self.next_gc = now + self.config.gc_interval.max(Duration::from_millis(1));
        }
    }

    /// When a session last seen at `last_seen` expires: the first instant more than
    /// `session_expiry` later.
    fn expiry_deadline(&self, last_seen: Timestamp) -> Timestamp {
        last_seen + self.config.session_expiry + Duration::from_millis(1)
    }

    /// The next deadline: the earliest entry of the expiry index (which may come before the
    /// session's real expiry: the run then only renews it) or the next GC.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let expiry = self.expiry.first().map(|(indexed, _)| self.expiry_deadline(*indexed));
        Some(expiry.map_or(self.next_gc, |e| e.min(self.next_gc)))
    }

    /// Whether `peer` has a session.
    pub fn has_session(&self, peer: &PeerId) -> bool {
        self.behaviour.has_session(peer)
    }

    /// Sessions (heartbeating peers).
    pub fn session_count(&self) -> usize {
        self.behaviour.session_count()
    }

    /// Every session, in peer-id order (sorted at each call).
    pub fn sessions(&self) -> impl Iterator<Item = SessionView<'_>> + '_ {
        let mut all: Vec<(&PeerId, &Session)> = self.behaviour.sessions().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.into_iter().map(|(p, s)| self.view(p, s, self.behaviour.strikes(p)))
    }

    /// One session.
    pub fn session(&self, peer: &PeerId) -> Option<SessionView<'_>> {
        self.behaviour.session_and_strikes(peer).map(|(p, s, strikes)| self.view(p, s, strikes))
    }

    /// The nodes that chose this indexer as their search referent.
    pub(crate) fn referent_ids(&self) -> impl Iterator<Item = &PeerId> + '_ {
        self.referents.iter()
    }

    /// Sessions whose node chose this indexer as its search referent.
    pub fn referents(&self) -> impl Iterator<Item = SessionView<'_>> + '_ {
        self.referents
            .iter()
            .filter_map(|p| self.behaviour.session_and_strikes(p))
            .map(|(p, s, strikes)| self.view(p, s, strikes))
    }

    /// When this indexer started.
    pub fn born_at(&self) -> Timestamp {
        self.born_at
    }

    /// Takes back the bans persisted before a restart ([`Input::Restored`](crate::proto::Input::Restored)):
    /// ended ones are ignored, none lasts longer than `ban_duration` from `now` (see
    /// [`BehaviourTable::restore_ban`]).
    pub fn restore_bans(&mut self, bans: &[(PeerId, Timestamp)], now: Timestamp) {
        for (peer, until) in bans {
            if *peer != self.me {
                self.behaviour.restore_ban(*peer, *until, now);
            }
        }
    }

    /// Whether `peer` is banned at `now`.
    pub fn is_banned(&self, peer: &PeerId, now: Timestamp) -> bool {
        self.behaviour.is_banned(peer, now)
    }

    /// `peer`'s strikes as of its last request (decay is applied lazily and at GC).
    pub fn strikes(&self, peer: &PeerId) -> u32 {
        self.behaviour.strikes(peer)
    }

    /// Other indexers known for suggestions and candidates.
    pub fn known_indexers(&self) -> impl Iterator<Item = &KnownIndexer> + '_ {
        self.known.values()
    }

    /// Sessions over capacity, at most 1.
    pub fn fill_rate(&self) -> f64 {
        (self.behaviour.session_count() as f64 / self.config.max_nodes.max(1) as f64).min(1.0)
    }

    /// The behaviour table (strikes, bans, DID bindings; it holds the sessions too).
    pub fn behaviour(&self) -> &BehaviourTable {
        &self.behaviour
    }

    /// The view of `peer`'s session `s`, the peer having `strikes`.
    fn view<'a>(&self, peer: &PeerId, s: &'a Session, strikes: u32) -> SessionView<'a> {
        let uptime_ratio = s.uptime_ratio();
        SessionView {
            peer: *peer,
            addr: &s.addr,
            did: s.did.as_ref(),
            name: s.name.as_deref(),
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            referent: s.referent,
            is_indexer: s.is_indexer,
            uptime_ratio,
            admission_score: admission_score(uptime_ratio, strikes, self.config.strike_threshold),
        }
    }

    /// Prunes the behaviour table, forgets indexers not seen within `session_expiry`, and resets
    /// the offload state when the fill rate is back at or below the threshold.
    fn gc(&mut self, now: Timestamp) {
        self.behaviour.prune(now);
        let stale = self.config.session_expiry;
        self.known.retain(|_, k| now.since(k.last_seen) <= stale);
        if self.fill_rate() <= self.config.offload_threshold {
            self.offload.reset();
        }
        self.prune_moved(now);
    }
}
