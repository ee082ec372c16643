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
//!    `Full` with suggestions when the prober has no session and we are at capacity.
//! 4. A regular heartbeat without a session must pass the [`BurstGuard`] (`Busy`), capacity
//!    (`Full`, with up to three least-loaded indexers to try instead) and the admission score.
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
//! Per-heartbeat work is `O(log n + k)` in the number of sessions `n`: witnesses are drawn from a
//! vector of non-indexer sessions by index, DIDs and expiry deadlines are indexed. GC may scan.

use super::admission::{AdmissionError, BehaviourTable, BurstGuard, RateKind, Strike};
use super::config::Config;
use super::dht::{Offer, QueryId};
use super::identity::{Did, PeerAddr, PeerId};
use super::record::{PeerRecord, StoreError};
use super::rng::DetRng;
use super::time::Timestamp;
use super::wire::{
    CandidatesRequest, CandidatesResponse, ChallengeEntry, Heartbeat, HeartbeatKind, HeartbeatResponse, Message,
    Publish, Published, RefuseReason, Refused, RequestId, StoreRefusal,
};
use super::{Action, CloseReason, Event, SessionEnd};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

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
/// Longest node name kept, in bytes (names come from peers).
const MAX_NAME_LEN: usize = 128;

/// What the indexer role needs from the record store and the DHT (implemented by
/// [`Dht`](super::dht::Dht); unit tests use a plain store).
pub trait RecordDesk {
    /// A record handed over by its owner `from` (publish, or embedded in a heartbeat).
    fn offer(&mut self, from: PeerId, record: PeerRecord, now: Timestamp) -> Offer;
    /// The expiry of `peer`'s record held and served.
    fn held_expiry(&self, peer: &PeerId, now: Timestamp) -> Option<Timestamp>;
    /// Starts the DHT spot check of `did` (a heartbeat's DID challenge).
    fn check_did(&mut self, did: &Did, now: Timestamp) -> DidCheck;
}

/// How a DID spot check goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DidCheck {
    /// A DHT query runs; its result is handed to [`IndexerService::finish_did_check`].
    Pending(QueryId),
    /// Answered at once (no other indexer to ask): the record found, if any.
    Answered(Option<PeerRecord>),
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
    /// Gap-aware time online (A §5.1).
    online: Duration,
    referent: bool,
    is_indexer: bool,
    /// Position in `IndexerService::witness_pool` (non-indexer sessions only).
    witness_slot: Option<usize>,
}

impl Session {
    /// Online time over age, as of the last heartbeat; 1.0 for a brand-new session.
    fn uptime_ratio(&self) -> f64 {
        let age = self.last_seen.since(self.first_seen);
        if age.is_zero() {
            return 1.0;
        }
        (self.online.as_secs_f64() / age.as_secs_f64()).clamp(0.0, 1.0)
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
    /// Its [`admission_score`] as of its last heartbeat and current strikes.
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

/// Offload state (C §6, §12.10): nodes asked to migrate, and those that did not within the grace.
#[derive(Clone, Debug, Default)]
struct Offload {
    in_batch: BTreeMap<PeerId, Timestamp>,
    already_tried: BTreeSet<PeerId>,
}

impl Offload {
    fn reset(&mut self) {
        self.in_batch.clear();
        self.already_tried.clear();
    }
}

/// The indexer role of a peer: admission, sessions, heartbeat responses, offload, candidates.
#[derive(Debug)]
pub struct IndexerService {
    config: Config,
    me: PeerId,
    rng: DetRng,
    born_at: Timestamp,
    sessions: BTreeMap<PeerId, Session>,
    /// `(last_seen, peer)` of every session: expiry order.
    expiry: BTreeSet<(Timestamp, PeerId)>,
    /// Non-indexer sessions, for O(1) random witness picks.
    witness_pool: Vec<PeerId>,
    /// `(did, peer)` of every session with a DID.
    dids: BTreeSet<(Did, PeerId)>,
    /// Sessions whose node chose us as referent.
    referents: BTreeSet<PeerId>,
    known: BTreeMap<PeerId, KnownIndexer>,
    offload: Offload,
    burst: BurstGuard,
    behaviour: BehaviourTable,
    next_gc: Timestamp,
    /// Heartbeat responses held until the DHT spot check of their DID challenge ends.
    did_checks: BTreeMap<QueryId, (PeerId, HeartbeatResponse)>,
}

impl IndexerService {
    /// An indexer born at `now` (its `born_at` never changes while it runs).
    pub fn new(config: Config, me: PeerId, rng: DetRng, now: Timestamp) -> Self {
        let burst = BurstGuard::new(&config);
        let behaviour = BehaviourTable::new(&config);
        let next_gc = now + config.gc_interval.max(Duration::from_millis(1));
        IndexerService {
            config,
            me,
            rng,
            born_at: now,
            sessions: BTreeMap::new(),
            expiry: BTreeSet::new(),
            witness_pool: Vec::new(),
            dids: BTreeSet::new(),
            referents: BTreeSet::new(),
            known: BTreeMap::new(),
            offload: Offload::default(),
            burst,
            behaviour,
            next_gc,
            did_checks: BTreeMap::new(),
        }
    }

    // ---- inputs --------------------------------------------------------------------------------

    /// A heartbeat (regular or probe) from the transport-authenticated `from`. A record it
    /// carries is handed to `desk` once the heartbeat is admitted.
    pub fn on_heartbeat(
        &mut self,
        from: PeerAddr,
        hb: Heartbeat,
        desk: &mut dyn RecordDesk,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let peer = from.id;
        if !self.admit_request(peer, hb.req, RateKind::Heartbeat, now, out) {
            return;
        }
        match hb.kind {
            HeartbeatKind::Probe => self.on_probe(peer, hb, desk, now, out),
            HeartbeatKind::Regular => self.on_regular(from, hb, desk, now, out),
        }
    }

    /// A node publishes its record (C §14.2): rate-limited with the publish window, the record must
    /// be the sender's own and bound to the DID it uses; a bad one costs two strikes.
    pub fn on_publish(
        &mut self,
        from: PeerId,
        publish: Publish,
        desk: &mut dyn RecordDesk,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        if self.config.blocked_peers.contains(&from) {
            self.refuse(from, publish.req, RefuseReason::Unknown, Vec::new(), out);
            return;
        }
        if !self.admit_request(from, publish.req, RateKind::Publish, now, out) {
            return;
        }
        let req = publish.req;
        match self.take_record(from, publish.record, req, desk, now, out) {
            RecordTaken::Held(expires) => {
                out.push(Action::Send { to: from, message: Message::Published(Published { req, expires }) })
            }
            RecordTaken::Refused => self.refuse(from, req, RefuseReason::BadRecord, Vec::new(), out),
            RecordTaken::Banned => {}
        }
    }

    /// The "is this peer known" gate (C §14.1) plus the get window, in front of record gets:
    /// a session, a trusted peer, or a valid record held (`known_record`) passes; a blocked peer
    /// never does. Refuses and returns `false` otherwise.
    pub fn admit_get(
        &mut self,
        from: PeerId,
        req: RequestId,
        known_record: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> bool {
        if self.behaviour.is_banned(&from, now) {
            self.refuse_banned(from, req, out);
            return false;
        }
        if !self.is_known(&from, known_record) {
            self.refuse(from, req, RefuseReason::Unknown, Vec::new(), out);
            return false;
        }
        self.admit_request(from, req, RateKind::Get, now, out)
    }

    /// The gate in front of DHT requests: never a blocked or banned peer; requests of DHT clients
    /// (`server == false`, i.e. nodes) count in the get window, those of other indexers do not.
    pub fn admit_dht(
        &mut self,
        from: PeerId,
        req: RequestId,
        server: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> bool {
        if from == self.me {
            return false;
        }
        if self.config.blocked_peers.contains(&from) {
            self.refuse(from, req, RefuseReason::Unknown, Vec::new(), out);
            return false;
        }
        if server {
            if self.behaviour.is_banned(&from, now) {
                self.refuse_banned(from, req, out);
                return false;
            }
            return true;
        }
        self.admit_request(from, req, RateKind::Get, now, out)
    }

    /// Strikes `peer` for a bad record (invalid signature or shape, a foreign DID, or an invalid
    /// `STORE`): two strikes; closes it when that bans it.
    pub fn punish_bad_record(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        let strike = self.behaviour.record_bad_signature(peer, now);
        if self.punish(peer, strike, out) {
            out.push(Action::Close { peer, reason: CloseReason::Banned });
        }
    }

    /// The DHT spot check started for a held heartbeat response ended: send it.
    pub fn finish_did_check(&mut self, query: QueryId, record: Option<PeerRecord>, out: &mut Vec<Action>) {
        if let Some((peer, mut response)) = self.did_checks.remove(&query) {
            response.did_found = Some(record.is_some());
            response.did_record = record;
            out.push(Action::Send { to: peer, message: Message::HeartbeatResponse(response) });
        }
    }

    fn is_known(&self, peer: &PeerId, known_record: bool) -> bool {
        !self.config.blocked_peers.contains(peer)
            && (self.sessions.contains_key(peer) || self.config.trusted_peers.contains(peer) || known_record)
    }

    /// Hands a record from its owner to the desk after the identity and publish-window checks.
    fn take_record(
        &mut self,
        peer: PeerId,
        record: PeerRecord,
        req: RequestId,
        desk: &mut dyn RecordDesk,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> RecordTaken {
        // The record's DID must be the one this peer is bound to (or becomes its binding).
        match self.check_did(peer, Some(&record.body.did), req, now, out) {
            Err(()) => return RecordTaken::Banned,
            Ok(None) => return RecordTaken::Refused,
            Ok(Some(_)) => {}
        }
        let owner = record.body.peer_id;
        match desk.offer(peer, record, now) {
            Offer::Held(t) => RecordTaken::Held(Some(t)),
            Offer::Checking => RecordTaken::Held(None),
            Offer::Refused(StoreError::Stale) => RecordTaken::Held(desk.held_expiry(&peer, now)),
            Offer::Refused(e) => {
                let reason = match e {
                    StoreError::ForeignDid { .. } => StoreRefusal::ForeignDid,
                    _ => StoreRefusal::Invalid,
                };
                out.push(Action::Event(Event::RecordRejected { from: peer, owner, reason }));
                let strike = self.behaviour.record_bad_signature(peer, now);
                if self.punish(peer, strike, out) {
                    self.refuse(peer, req, RefuseReason::Banned, Vec::new(), out);
                    out.push(Action::Close { peer, reason: CloseReason::Banned });
                    return RecordTaken::Banned;
                }
                RecordTaken::Refused
            }
        }
    }

    /// The gate in front of every request: never from ourselves, a banned peer is refused, and the
    /// request counts in the peer's `kind` window (over the limit: refused, and a strike). Returns
    /// whether to go on.
    fn admit_request(
        &mut self,
        peer: PeerId,
        req: RequestId,
        kind: RateKind,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> bool {
        if peer == self.me {
            return false;
        }
        if self.behaviour.is_banned(&peer, now) {
            self.refuse_banned(peer, req, out);
            return false;
        }
        if let Err(e) = self.behaviour.record(peer, kind, now) {
            self.refuse_admission(peer, req, RefuseReason::RateLimited, e, out);
            return false;
        }
        true
    }

    /// The node left (it dropped us from its pool): its session ends at once.
    pub fn on_leave(&mut self, from: PeerId, _now: Timestamp, out: &mut Vec<Action>) {
        self.close_session(from, SessionEnd::Left, out);
    }

    /// A request for replacement indexers (C §13.3), behind the "is this peer known" gate.
    pub fn on_candidates_request(
        &mut self,
        from: PeerId,
        request: CandidatesRequest,
        known_record: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        if !self.admit_get(from, request.req, known_record, now, out) {
            return;
        }
        let count = match usize::from(request.count) {
            0 => DEFAULT_CANDIDATES,
            c => c.min(self.config.max_candidates),
        };
        let me = self.me;
        let mut pool: Vec<&KnownIndexer> =
            self.known.values().filter(|k| k.addr.id != from && k.addr.id != me).collect();
        self.rng.shuffle(&mut pool);
        let candidates = pool.into_iter().take(count).map(|k| k.addr.clone()).collect();
        out.push(Action::Send {
            to: from,
            message: Message::CandidatesResponse(CandidatesResponse { req: request.req, candidates }),
        });
    }

    /// Remembers another indexer seen alive at `now` (from this peer's own pool, or a heartbeating
    /// indexer), with its fill rate if known. Keeps the `indexer_cache_max` most recently seen.
    pub fn note_indexer(&mut self, indexer: PeerAddr, fill_rate: Option<f64>, now: Timestamp) {
        if indexer.id == self.me {
            return;
        }
        let fill_rate = fill_rate.filter(|f| f.is_finite()).map(|f| f.clamp(0.0, 1.0));
        if let Some(k) = self.known.get_mut(&indexer.id) {
            if !indexer.addrs.is_empty() {
                k.addr = indexer;
            }
            if fill_rate.is_some() {
                k.fill_rate = fill_rate;
            }
            k.last_seen = k.last_seen.max(now);
            return;
        }
        let max = self.config.indexer_cache_max.max(1);
        while self.known.len() >= max {
            let oldest = self.known.iter().min_by_key(|(id, k)| (k.last_seen, **id)).map(|(id, _)| *id);
            match oldest {
                Some(id) => self.known.remove(&id),
                None => break,
            };
        }
        self.known.insert(indexer.id, KnownIndexer { addr: indexer, fill_rate, last_seen: now });
    }

    /// Runs due timers: session expiry (exactly `session_expiry` after the last heartbeat) and GC.
    pub fn handle_timeout(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        while let Some(&(last_seen, peer)) = self.expiry.first() {
            if now.since(last_seen) <= self.config.session_expiry {
                break;
            }
            if !self.close_session(peer, SessionEnd::Expired, out) {
                // Index entry without a session: cannot happen, but never loop on it.
                self.expiry.remove(&(last_seen, peer));
            }
        }
        if now >= self.next_gc {
            self.gc(now);
            self.next_gc = now + self.config.gc_interval.max(Duration::from_millis(1));
        }
    }

    /// The next deadline: the earliest session expiry or the next GC.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let expiry = self
            .expiry
            .first()
            .map(|(last_seen, _)| *last_seen + self.config.session_expiry + Duration::from_millis(1));
        Some(expiry.map_or(self.next_gc, |e| e.min(self.next_gc)))
    }

    // ---- read-only views -----------------------------------------------------------------------

    /// Whether `peer` has a session.
    pub fn has_session(&self, peer: &PeerId) -> bool {
        self.sessions.contains_key(peer)
    }

    /// Sessions (heartbeating peers).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Every session, in peer-id order.
    pub fn sessions(&self) -> impl Iterator<Item = SessionView<'_>> + '_ {
        self.sessions.iter().map(|(p, s)| self.view(p, s))
    }

    /// One session.
    pub fn session(&self, peer: &PeerId) -> Option<SessionView<'_>> {
        self.sessions.get_key_value(peer).map(|(p, s)| self.view(p, s))
    }

    /// Sessions whose node chose this indexer as its search referent.
    pub fn referents(&self) -> impl Iterator<Item = SessionView<'_>> + '_ {
        self.referents.iter().filter_map(|p| self.sessions.get_key_value(p)).map(|(p, s)| self.view(p, s))
    }

    /// When this indexer started.
    pub fn born_at(&self) -> Timestamp {
        self.born_at
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
        (self.sessions.len() as f64 / self.config.max_nodes.max(1) as f64).min(1.0)
    }

    /// The behaviour table (strikes, bans, DID bindings).
    pub fn behaviour(&self) -> &BehaviourTable {
        &self.behaviour
    }

    /// The behaviour table, for the record service (publish/get windows, identity, signatures).
    pub fn behaviour_mut(&mut self) -> &mut BehaviourTable {
        &mut self.behaviour
    }

    fn view<'a>(&'a self, peer: &PeerId, s: &'a Session) -> SessionView<'a> {
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
            admission_score: admission_score(uptime_ratio, self.behaviour.strikes(peer), self.config.strike_threshold),
        }
    }

    // ---- heartbeat flows -----------------------------------------------------------------------

    fn on_probe(
        &mut self,
        peer: PeerId,
        hb: Heartbeat,
        desk: &mut dyn RecordDesk,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        if !self.sessions.contains_key(&peer) {
            // A probe asks "could I join you now?": answer as the prober's first regular heartbeat
            // would be answered, without using the burst guard. Otherwise a node admits us after
            // the probe, is refused `Busy` on its next heartbeat, and loops.
            if self.sessions.len() >= self.config.max_nodes {
                let suggestions = self.least_loaded(peer, FULL_REFUSAL_SUGGESTIONS);
                self.refuse(peer, hb.req, RefuseReason::Full, suggestions, out);
                return;
            }
            if self.burst.check(now).is_err() {
                let suggestions = self.least_loaded(peer, FULL_REFUSAL_SUGGESTIONS);
                self.refuse(peer, hb.req, RefuseReason::Busy, suggestions, out);
                return;
            }
        }
        self.respond(peer, &hb, true, desk, now, out);
    }

    fn on_regular(
        &mut self,
        from: PeerAddr,
        mut hb: Heartbeat,
        desk: &mut dyn RecordDesk,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let peer = from.id;
        if self.sessions.contains_key(&peer) {
            let Ok(did) = self.check_did(peer, hb.did.as_ref(), hb.req, now, out) else {
                return;
            };
            self.refresh_session(peer, now);
            let score = self.session(&peer).map_or(0.0, |v| v.admission_score);
            let age = self.sessions.get(&peer).map_or(Duration::ZERO, |s| now.since(s.first_seen));
            if score < self.config.dynamic_min_score(age) {
                self.close_session(peer, SessionEnd::Rejected, out);
                self.refuse(peer, hb.req, RefuseReason::LowScore, Vec::new(), out);
                return;
            }
            self.update_session(from, did, &hb, now);
        } else {
            if self.burst.check(now).is_err() {
                let suggestions = self.least_loaded(peer, FULL_REFUSAL_SUGGESTIONS);
                self.refuse(peer, hb.req, RefuseReason::Busy, suggestions, out);
                return;
            }
            if self.sessions.len() >= self.config.max_nodes {
                let suggestions = self.least_loaded(peer, FULL_REFUSAL_SUGGESTIONS);
                self.refuse(peer, hb.req, RefuseReason::Full, suggestions, out);
                return;
            }
            let Ok(did) = self.check_did(peer, hb.did.as_ref(), hb.req, now, out) else {
                return;
            };
            let score = admission_score(1.0, self.behaviour.strikes(&peer), self.config.strike_threshold);
            if score < self.config.dynamic_min_score(Duration::ZERO) {
                self.refuse(peer, hb.req, RefuseReason::LowScore, Vec::new(), out);
                return;
            }
            self.burst.record(now);
            self.open_session(from.clone(), now);
            out.push(Action::Event(Event::SessionOpened { node: peer }));
            self.update_session(from, did, &hb, now);
        }
        if let Some(record) = hb.record.take() {
            let counted = match self.behaviour.record(peer, RateKind::Publish, now) {
                Ok(()) => true,
                Err(e) => {
                    if let Some(strike) = e.strike()
                        && self.punish(peer, strike, out)
                    {
                        self.refuse(peer, hb.req, RefuseReason::Banned, Vec::new(), out);
                        out.push(Action::Close { peer, reason: CloseReason::Banned });
                        return;
                    }
                    false
                }
            };
            if counted && self.take_record(peer, record, hb.req, desk, now, out) == RecordTaken::Banned {
                return;
            }
        }
        self.respond(peer, &hb, false, desk, now, out);
    }

    /// Binds a DID to the peer. `Ok(Some)` to store, `Ok(None)` when none was sent or it differs
    /// (two strikes, not stored), `Err` when the strikes banned the peer (refusal emitted).
    fn check_did(
        &mut self,
        peer: PeerId,
        did: Option<&Did>,
        req: RequestId,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> Result<Option<Did>, ()> {
        let Some(did) = did else {
            return Ok(None);
        };
        match self.behaviour.check_identity(peer, did, now) {
            Ok(()) => Ok(Some(did.clone())),
            Err(AdmissionError::DidMismatch { strike, .. }) if strike.banned_until.is_none() => {
                self.punish(peer, strike, out);
                Ok(None)
            }
            Err(e) => {
                if let Some(strike) = e.strike() {
                    self.punish(peer, strike, out);
                }
                self.refuse_banned(peer, req, out);
                Err(())
            }
        }
    }

    fn open_session(&mut self, addr: PeerAddr, now: Timestamp) {
        let peer = addr.id;
        let session = Session {
            addr,
            did: None,
            name: None,
            first_seen: now,
            last_seen: now,
            online: Duration::ZERO,
            referent: false,
            is_indexer: false,
            witness_slot: None,
        };
        self.sessions.insert(peer, session);
        self.expiry.insert((now, peer));
    }

    /// Records a heartbeat on an existing session: gap-aware online time and the expiry index.
    fn refresh_session(&mut self, peer: PeerId, now: Timestamp) {
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        let gap = now.since(s.last_seen);
        if gap <= self.config.liveness_interval * 2 {
            s.online += gap;
        }
        if now > s.last_seen {
            self.expiry.remove(&(s.last_seen, peer));
            s.last_seen = now;
            self.expiry.insert((now, peer));
        }
    }

    /// Applies what an admitted heartbeat tells: DID and name (never clobbered by `None`),
    /// referent flag, indexer role.
    fn update_session(&mut self, from: PeerAddr, did: Option<Did>, hb: &Heartbeat, now: Timestamp) {
        let peer = from.id;
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        if !from.addrs.is_empty() {
            s.addr = from.clone();
        }
        if let Some(did) = did
            && s.did.as_ref() != Some(&did)
        {
            if let Some(old) = s.did.take() {
                self.dids.remove(&(old, peer));
            }
            self.dids.insert((did.clone(), peer));
            s.did = Some(did);
        }
        if let Some(name) = &hb.name {
            s.name = Some(truncate(name, MAX_NAME_LEN).to_string());
        }
        s.referent = hb.referent;
        if hb.referent {
            self.referents.insert(peer);
        } else {
            self.referents.remove(&peer);
        }
        s.is_indexer = hb.is_indexer;
        // Only non-indexer sessions serve as witnesses.
        match (hb.is_indexer, s.witness_slot) {
            (false, None) => {
                s.witness_slot = Some(self.witness_pool.len());
                self.witness_pool.push(peer);
            }
            (true, Some(slot)) => {
                s.witness_slot = None;
                self.witness_pool_remove(slot);
            }
            _ => {}
        }
        if hb.is_indexer {
            self.note_indexer(from, None, now);
        }
    }

    fn witness_pool_remove(&mut self, slot: usize) {
        if slot >= self.witness_pool.len() {
            return;
        }
        self.witness_pool.swap_remove(slot);
        if let Some(moved) = self.witness_pool.get(slot).copied()
            && let Some(s) = self.sessions.get_mut(&moved)
        {
            s.witness_slot = Some(slot);
        }
    }

    /// Ends a session and everything attached to it. Returns whether there was one.
    fn close_session(&mut self, peer: PeerId, reason: SessionEnd, out: &mut Vec<Action>) -> bool {
        let Some(s) = self.sessions.remove(&peer) else {
            return false;
        };
        self.expiry.remove(&(s.last_seen, peer));
        if let Some(slot) = s.witness_slot {
            self.witness_pool_remove(slot);
        }
        if let Some(did) = s.did {
            self.dids.remove(&(did, peer));
        }
        self.referents.remove(&peer);
        // A node that left is no longer an offload candidate; its batch slot frees at once.
        self.offload.in_batch.remove(&peer);
        self.offload.already_tried.remove(&peer);
        out.push(Action::Event(Event::SessionClosed { node: peer, reason }));
        true
    }

    // ---- responses -----------------------------------------------------------------------------

    /// Sends the heartbeat response (C §12). A probe gets no witnesses and no offload.
    fn respond(
        &mut self,
        peer: PeerId,
        hb: &Heartbeat,
        probe: bool,
        desk: &mut dyn RecordDesk,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let fill_rate = self.fill_rate();
        let challenges = hb
            .challenges
            .iter()
            .take(MAX_CHALLENGES_ANSWERED)
            .map(|p| match self.sessions.get(p) {
                Some(s) => ChallengeEntry { peer: *p, found: true, last_seen: Some(s.last_seen) },
                None => ChallengeEntry { peer: *p, found: false, last_seen: None },
            })
            .collect();
        let witnesses = if hb.want_witnesses && !probe { self.sample_witnesses(peer) } else { Vec::new() };
        let offloading = !probe && fill_rate > self.config.offload_threshold;
        let mut wanted = usize::from(hb.need).min(self.config.max_candidates);
        if offloading {
            wanted = wanted.max(1);
        }
        let suggestions = self.pick_suggestions(peer, wanted);
        let suggest_migrate = !probe && self.offload_decision(peer, fill_rate, !suggestions.is_empty(), now);
        let response = HeartbeatResponse {
            req: hb.req,
            fill_rate,
            peer_count: u32::try_from(self.sessions.len()).unwrap_or(u32::MAX),
            max_nodes: u32::try_from(self.config.max_nodes).unwrap_or(u32::MAX),
            born_at: self.born_at,
            challenges,
            did_found: None,
            did_record: None,
            record_expires: desk.held_expiry(&peer, now),
            witnesses,
            suggestions,
            suggest_migrate,
        };
        // The DID challenge is answered for real: a DHT lookup of `/node/<DID>` (C §12.7), the
        // response held until it ends (bounded by `dht_check_timeout`).
        let mut response = response;
        if let Some(did) = hb.challenge_did.as_ref().filter(|_| !probe) {
            match desk.check_did(did, now) {
                DidCheck::Pending(q) => {
                    self.did_checks.insert(q, (peer, response));
                    return;
                }
                DidCheck::Answered(r) => {
                    response.did_found = Some(r.is_some());
                    response.did_record = r;
                }
            }
        }
        out.push(Action::Send { to: peer, message: Message::HeartbeatResponse(response) });
    }

    /// Up to `max_witnesses` random non-indexer sessions other than the requester, drawn by index.
    fn sample_witnesses(&mut self, requester: PeerId) -> Vec<PeerAddr> {
        let n = self.witness_pool.len();
        let k = self.config.max_witnesses.saturating_add(2).min(n);
        // Floyd's algorithm: k distinct indices in O(k), then a shuffle so any prefix is uniform.
        let mut picked: Vec<usize> = Vec::with_capacity(k);
        for j in (n - k)..n {
            let t = self.rng.below(j as u64 + 1) as usize;
            picked.push(if picked.contains(&t) { j } else { t });
        }
        self.rng.shuffle(&mut picked);
        let me = self.me;
        picked
            .into_iter()
            .filter_map(|i| self.witness_pool.get(i))
            .filter(|p| **p != requester && **p != me)
            .filter_map(|p| self.sessions.get(p).map(|s| s.addr.clone()))
            .take(self.config.max_witnesses)
            .collect()
    }

    /// Up to `count` known indexers (not `exclude`, not us, not known full), preferring a lower
    /// known fill rate with some randomness.
    fn pick_suggestions(&mut self, exclude: PeerId, count: usize) -> Vec<PeerAddr> {
        if count == 0 {
            return Vec::new();
        }
        let me = self.me;
        let rng = &mut self.rng;
        let mut ranked: Vec<(f64, &KnownIndexer)> = self
            .known
            .values()
            .filter(|k| k.addr.id != exclude && k.addr.id != me && k.fill_rate.is_none_or(|f| f < 1.0))
            .map(|k| (k.fill_rate.unwrap_or(UNKNOWN_FILL) + rng.unit_f64() * SUGGESTION_JITTER, k))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        ranked.into_iter().take(count).map(|(_, k)| k.addr.clone()).collect()
    }

    /// Up to `count` known indexers (not `exclude`, not us, not known full), least loaded first.
    fn least_loaded(&self, exclude: PeerId, count: usize) -> Vec<PeerAddr> {
        let mut ranked: Vec<&KnownIndexer> = self
            .known
            .values()
            .filter(|k| k.addr.id != exclude && k.addr.id != self.me && k.fill_rate.is_none_or(|f| f < 1.0))
            .collect();
        ranked.sort_by(|a, b| a.fill_rate.unwrap_or(UNKNOWN_FILL).total_cmp(&b.fill_rate.unwrap_or(UNKNOWN_FILL)));
        ranked.into_iter().take(count).map(|k| k.addr.clone()).collect()
    }

    /// C §12.10: above the threshold, ask at most `offload_batch` nodes at a time to migrate; one
    /// that has not moved within `offload_grace` joins "already tried" and is not asked again until
    /// every session has been tried. At or below the threshold the state is reset.
    fn offload_decision(&mut self, peer: PeerId, fill_rate: f64, has_suggestions: bool, now: Timestamp) -> bool {
        if fill_rate <= self.config.offload_threshold {
            self.offload.reset();
            return false;
        }
        if !has_suggestions {
            return false;
        }
        let grace = self.config.offload_grace;
        let overdue: Vec<PeerId> =
            self.offload.in_batch.iter().filter(|(_, asked)| now.since(**asked) > grace).map(|(p, _)| *p).collect();
        for p in overdue {
            self.offload.in_batch.remove(&p);
            self.offload.already_tried.insert(p);
        }
        if self.offload.already_tried.len() >= self.sessions.len() {
            self.offload.already_tried.clear();
        }
        if self.offload.already_tried.contains(&peer) {
            return false;
        }
        if self.offload.in_batch.contains_key(&peer) {
            return true;
        }
        if self.offload.in_batch.len() < self.config.offload_batch {
            self.offload.in_batch.insert(peer, now);
            return true;
        }
        false
    }

    // ---- refusals and strikes ------------------------------------------------------------------

    fn refuse(
        &mut self,
        peer: PeerId,
        req: RequestId,
        reason: RefuseReason,
        suggestions: Vec<PeerAddr>,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Send { to: peer, message: Message::Refused(Refused { req, reason, suggestions }) });
        out.push(Action::Event(Event::RequestRefused { peer, reason }));
    }

    /// Refuses a banned peer, drops its session and closes its connection.
    fn refuse_banned(&mut self, peer: PeerId, req: RequestId, out: &mut Vec<Action>) {
        self.close_session(peer, SessionEnd::Rejected, out);
        self.refuse(peer, req, RefuseReason::Banned, Vec::new(), out);
        out.push(Action::Close { peer, reason: CloseReason::Banned });
    }

    /// Refuses with `reason` after an admission error, reporting its strike; if the strike banned
    /// the peer, its session is dropped and its connection closed after the refusal.
    fn refuse_admission(
        &mut self,
        peer: PeerId,
        req: RequestId,
        reason: RefuseReason,
        error: AdmissionError,
        out: &mut Vec<Action>,
    ) {
        let banned = match (&error, error.strike()) {
            (_, Some(strike)) => self.punish(peer, strike, out),
            (AdmissionError::Banned { .. }, None) => {
                self.close_session(peer, SessionEnd::Rejected, out);
                true
            }
            _ => false,
        };
        let reason = if matches!(error, AdmissionError::Banned { .. }) { RefuseReason::Banned } else { reason };
        self.refuse(peer, req, reason, Vec::new(), out);
        if banned {
            out.push(Action::Close { peer, reason: CloseReason::Banned });
        }
    }

    /// Reports a strike; when it banned the peer, reports the ban and drops the session.
    fn punish(&mut self, peer: PeerId, strike: Strike, out: &mut Vec<Action>) -> bool {
        out.push(Action::Event(Event::PeerStruck { peer, strikes: strike.strikes }));
        match strike.banned_until {
            Some(until) => {
                out.push(Action::Event(Event::PeerBanned { peer, until }));
                self.close_session(peer, SessionEnd::Rejected, out);
                true
            }
            None => false,
        }
    }

    // ---- GC --------------------------------------------------------------------------------------

    /// Prunes the behaviour table, forgets indexers not seen within `session_expiry`, and resets
    /// the offload state when the fill rate is back at or below the threshold.
    fn gc(&mut self, now: Timestamp) {
        let sessions = &self.sessions;
        self.behaviour.prune(now, |p| sessions.contains_key(p));
        let stale = self.config.session_expiry;
        self.known.retain(|_, k| now.since(k.last_seen) <= stale);
        if self.fill_rate() <= self.config.offload_threshold {
            self.offload.reset();
        }
    }
}

/// What became of a record handed over by its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecordTaken {
    /// Held (with its expiry), or being checked (`None`).
    Held(Option<Timestamp>),
    /// Refused (struck, not banned).
    Refused,
    /// The peer is banned now (refusal and close already emitted).
    Banned,
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proto::identity::Keypair;

    fn at_ms(ms: u64) -> Timestamp {
        Timestamp(1_000_000_000 + ms)
    }

    fn at(secs: u64) -> Timestamp {
        at_ms(secs * 1000)
    }

    fn peer_addr(label: &str, i: u64) -> PeerAddr {
        PeerAddr { id: Keypair::derive(i, label).peer_id(), addrs: vec![format!("10.{}.{}.1:4001", i / 256, i % 256)] }
    }

    fn node(i: u64) -> PeerAddr {
        peer_addr("node", i)
    }

    fn indexer(i: u64) -> PeerAddr {
        peer_addr("indexer", i)
    }

    fn did(s: &str) -> Did {
        Did::new(s).unwrap()
    }

    /// The signed record of `node(i)` claiming `d`, issued at `now`.
    fn record(i: u64, d: &str, now: Timestamp) -> PeerRecord {
        let key = Keypair::derive(i, "node");
        let body = crate::proto::record::RecordBody {
            peer_id: key.peer_id(),
            did: did(d),
            name: format!("node-{i}"),
            addrs: Vec::new(),
            api_url: None,
            nats_address: None,
            wallet: None,
            issued_at: now,
            expires_at: now + Duration::from_secs(300),
        };
        PeerRecord::sign(body, &key).unwrap()
    }

    fn hb() -> Heartbeat {
        Heartbeat::bare(RequestId(1), HeartbeatKind::Regular)
    }

    fn probe() -> Heartbeat {
        Heartbeat { kind: HeartbeatKind::Probe, ..hb() }
    }

    /// A record desk without a DHT: a plain store (DID checks answered from it).
    struct StoreDesk {
        store: crate::proto::record::RecordStore,
        offers: usize,
    }

    impl RecordDesk for StoreDesk {
        fn offer(&mut self, from: PeerId, record: PeerRecord, now: Timestamp) -> Offer {
            self.offers += 1;
            if record.body.peer_id != from {
                return Offer::Refused(StoreError::Invalid(crate::proto::record::RecordError::WrongKey));
            }
            let expires = record.body.expires_at;
            if self.store.holds(&record) {
                return Offer::Held(expires);
            }
            match self.store.put(record, now) {
                Ok(_) => Offer::Held(expires),
                Err(e) => Offer::Refused(e),
            }
        }

        fn held_expiry(&self, peer: &PeerId, now: Timestamp) -> Option<Timestamp> {
            self.store.by_peer(peer, now).map(|r| r.body.expires_at)
        }

        fn check_did(&mut self, did: &Did, now: Timestamp) -> DidCheck {
            DidCheck::Answered(self.store.by_did(did, now).cloned())
        }
    }

    /// One indexer under test, driven by hand.
    struct Harness {
        ix: IndexerService,
        me: PeerId,
        desk: StoreDesk,
    }

    impl Harness {
        fn new(config: Config) -> Self {
            let me = Keypair::derive(0, "me").peer_id();
            let desk =
                StoreDesk { store: crate::proto::record::RecordStore::new(1000, Duration::from_secs(3600)), offers: 0 };
            Harness { ix: IndexerService::new(config, me, DetRng::new(7, "indexer-test"), at(0)), me, desk }
        }

        fn send(&mut self, from: &PeerAddr, hb: Heartbeat, now: Timestamp) -> Vec<Action> {
            let mut out = Vec::new();
            self.ix.on_heartbeat(from.clone(), hb, &mut self.desk, now, &mut out);
            out
        }

        fn beat(&mut self, from: &PeerAddr, now: Timestamp) -> Vec<Action> {
            self.send(from, hb(), now)
        }

        fn candidates(&mut self, from: &PeerAddr, count: u16, now: Timestamp) -> Vec<Action> {
            let mut out = Vec::new();
            self.ix.on_candidates_request(
                from.id,
                CandidatesRequest { req: RequestId(5), count },
                false,
                now,
                &mut out,
            );
            out
        }

        fn leave(&mut self, from: &PeerAddr, now: Timestamp) -> Vec<Action> {
            let mut out = Vec::new();
            self.ix.on_leave(from.id, now, &mut out);
            out
        }

        /// Runs every timer due up to `until`, as the router would.
        fn run_timers(&mut self, until: Timestamp) -> Vec<Action> {
            let mut out = Vec::new();
            while let Some(t) = self.ix.poll_timeout() {
                if t > until {
                    break;
                }
                self.ix.handle_timeout(t, &mut out);
            }
            out
        }
    }

    fn sent_to(out: &[Action], to: PeerId) -> Vec<&Message> {
        out.iter()
            .filter_map(|a| match a {
                Action::Send { to: t, message } if *t == to => Some(message),
                _ => None,
            })
            .collect()
    }

    fn response(out: &[Action]) -> &HeartbeatResponse {
        let found = out.iter().find_map(|a| match a {
            Action::Send { message: Message::HeartbeatResponse(r), .. } => Some(r),
            _ => None,
        });
        found.unwrap_or_else(|| panic!("expected a heartbeat response, got {out:?}"))
    }

    fn refusal(out: &[Action]) -> &Refused {
        let found = out.iter().find_map(|a| match a {
            Action::Send { message: Message::Refused(r), .. } => Some(r),
            _ => None,
        });
        found.unwrap_or_else(|| panic!("expected a refusal, got {out:?}"))
    }

    fn events(out: &[Action]) -> Vec<&Event> {
        out.iter()
            .filter_map(|a| match a {
                Action::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn closes(out: &[Action]) -> Vec<(PeerId, CloseReason)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Close { peer, reason } => Some((*peer, *reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn admission_score_is_100_for_an_honest_node_and_sanitises_input() {
        assert_eq!(admission_score(1.0, 0, 3), 100.0);
        assert!((admission_score(1.0, 2, 3) - 73.333).abs() < 0.01);
        assert_eq!(admission_score(f64::NAN, 9, 3), 0.0);
        assert_eq!(admission_score(7.0, 0, 0), 100.0);
    }

    #[test]
    fn heartbeat_opens_session_keyed_by_authenticated_peer() {
        let mut h = Harness::new(Config::default());
        let (a, b) = (node(1), node(2));
        let out = h.send(&a, Heartbeat { req: RequestId(42), name: Some("alice".into()), ..hb() }, at(1));
        assert_eq!(events(&out), vec![&Event::SessionOpened { node: a.id }]);
        let r = response(&out);
        assert_eq!(r.req, RequestId(42));
        assert_eq!(sent_to(&out, a.id).len(), 1, "the reply goes to the authenticated sender");
        assert!(h.ix.has_session(&a.id));
        assert!(!h.ix.has_session(&b.id));
        let v = h.ix.session(&a.id).unwrap();
        assert_eq!((v.first_seen, v.last_seen, v.name, v.addr), (at(1), at(1), Some("alice"), &a));
        // Another peer's heartbeat — whatever it says — never refreshes a's session.
        let out = h.send(&b, Heartbeat { challenges: vec![a.id], ..hb() }, at(10));
        assert_eq!(events(&out), vec![&Event::SessionOpened { node: b.id }]);
        assert_eq!(h.ix.session(&a.id).unwrap().last_seen, at(1));
        // a's next heartbeat refreshes its own session and opens nothing new.
        let out = h.beat(&a, at(21));
        assert!(events(&out).is_empty());
        assert_eq!(h.ix.session_count(), 2);
        assert_eq!(h.ix.session(&a.id).unwrap().last_seen, at(21));
        assert_eq!(h.ix.session(&a.id).unwrap().name, Some("alice"), "a missing name does not clobber it");
    }

    #[test]
    fn response_reports_fill_and_challenge_answers() {
        let mut h = Harness::new(Config { max_nodes: 4, ..Config::default() });
        let (a, b, stranger) = (node(1), node(2), node(3));
        h.beat(&a, at(0));
        let out =
            h.send(&b, Heartbeat { did: Some(did("did:b")), record: Some(record(2, "did:b", at(1))), ..hb() }, at(1));
        assert_eq!(response(&out).record_expires, Some(at(301)), "the record is held and acknowledged");
        let out = h.send(
            &a,
            Heartbeat {
                req: RequestId(7),
                challenges: vec![a.id, b.id, stranger.id],
                challenge_did: Some(did("did:b")),
                ..hb()
            },
            at(20),
        );
        let r = response(&out);
        assert_eq!(r.req, RequestId(7));
        assert_eq!((r.fill_rate, r.peer_count, r.max_nodes, r.born_at), (0.5, 2, 4, at(0)));
        assert_eq!(
            r.challenges,
            vec![
                ChallengeEntry { peer: a.id, found: true, last_seen: Some(at(20)) },
                ChallengeEntry { peer: b.id, found: true, last_seen: Some(at(1)) },
                ChallengeEntry { peer: stranger.id, found: false, last_seen: None },
            ]
        );
        assert_eq!(r.did_found, Some(true));
        assert_eq!(r.did_record.as_ref().map(|x| x.body.peer_id), Some(b.id), "the record itself comes back");
        assert!(!r.suggest_migrate);
        let out = h.send(&a, Heartbeat { challenge_did: Some(did("did:nobody")), ..hb() }, at(40));
        assert_eq!(response(&out).did_found, Some(false));
        let out = h.beat(&a, at(60));
        assert_eq!(response(&out).did_found, None);
        assert!(response(&out).challenges.is_empty());
        assert_eq!(h.ix.fill_rate(), 0.5);
    }

    #[test]
    fn full_indexer_refuses_new_node_with_suggestions() {
        let mut h = Harness::new(Config { max_nodes: 2, ..Config::default() });
        for (i, fill) in
            [(1, Some(0.9)), (2, Some(0.2)), (3, None), (4, Some(1.0)), (5, Some(0.4)), (6, Some(f64::NAN))]
        {
            h.ix.note_indexer(indexer(i), fill, at(0));
        }
        h.beat(&node(1), at(1));
        h.beat(&node(2), at(2));
        let newcomer = node(3);
        let out = h.send(&newcomer, Heartbeat { req: RequestId(9), ..hb() }, at(3));
        let r = refusal(&out);
        assert_eq!((r.req, r.reason), (RequestId(9), RefuseReason::Full));
        // Least loaded first; a known-full indexer is not suggested; unknown (and NaN) fill = 0.5.
        assert_eq!(r.suggestions.len(), 3);
        assert_eq!(r.suggestions[0], indexer(2));
        assert_eq!(r.suggestions[1], indexer(5));
        assert!([indexer(3), indexer(6)].contains(&r.suggestions[2]));
        assert!(events(&out).contains(&&Event::RequestRefused { peer: newcomer.id, reason: RefuseReason::Full }));
        assert!(!h.ix.has_session(&newcomer.id));
        // A probe from a stranger is refused the same way; members still get answers.
        let out = h.send(&newcomer, probe(), at(4));
        assert_eq!(refusal(&out).reason, RefuseReason::Full);
        let out = h.send(&node(1), probe(), at(5));
        assert_eq!(response(&out).peer_count, 2);
    }

    #[test]
    fn probe_creates_no_session_and_uses_no_burst_slot() {
        let mut h = Harness::new(Config { max_conn_per_window: 2, ..Config::default() });
        h.ix.note_indexer(indexer(1), Some(0.1), at(0));
        let (a, prober, late) = (node(1), node(2), node(3));
        h.beat(&a, at(1));
        // One burst slot is left: a probe is answered with metrics, opens nothing, uses no slot.
        let out = h.send(&prober, Heartbeat { want_witnesses: true, need: 2, ..probe() }, at(2));
        let r = response(&out);
        assert_eq!(r.peer_count, 1);
        assert!(r.witnesses.is_empty(), "no witnesses for a probe");
        assert!(!r.suggest_migrate);
        assert_eq!(r.suggestions, vec![indexer(1)]);
        assert!(events(&out).is_empty());
        assert!(!h.ix.has_session(&prober.id));
        // The slot the probe did not use admits a regular newcomer.
        let out = h.beat(&late, at(3));
        assert_eq!(events(&out), vec![&Event::SessionOpened { node: late.id }]);
        // Now the guard is full: a stranger's probe is refused `Busy` (with places to go), as its
        // first heartbeat would be, so consensus never admits an indexer that cannot take it now.
        let out = h.send(&prober, probe(), at(4));
        assert_eq!(refusal(&out).reason, RefuseReason::Busy);
        assert_eq!(refusal(&out).suggestions, vec![indexer(1)]);
        // Members' probes are still answered.
        let out = h.send(&a, probe(), at(5));
        assert_eq!(response(&out).peer_count, 2);
        // Probes still count in the prober's rate window (4 so far, counting the refused one).
        for s in 6..9 {
            assert_eq!(sent_to(&h.send(&prober, probe(), at(s)), prober.id).len(), 1);
        }
        let out = h.send(&prober, probe(), at(9));
        assert_eq!(refusal(&out).reason, RefuseReason::RateLimited);
        assert_eq!(h.ix.strikes(&prober.id), 1);
        // Once the burst window has passed, the stranger's probe is answered again.
        let out = h.send(&prober, probe(), at(75));
        assert_eq!(response(&out).peer_count, 2);
    }

    #[test]
    fn flooding_node_is_struck_then_banned() {
        let c = Config::default();
        let ban = c.ban_duration;
        let mut h = Harness::new(c);
        let a = node(1);
        for s in 0..5 {
            response(&h.beat(&a, at(s)));
        }
        let out = h.beat(&a, at(5));
        assert_eq!(refusal(&out).reason, RefuseReason::RateLimited);
        assert!(events(&out).contains(&&Event::PeerStruck { peer: a.id, strikes: 1 }));
        assert!(h.ix.has_session(&a.id), "one strike does not end the session");
        let out = h.beat(&a, at(6));
        assert!(events(&out).contains(&&Event::PeerStruck { peer: a.id, strikes: 2 }));
        let out = h.beat(&a, at(7));
        assert_eq!(refusal(&out).reason, RefuseReason::RateLimited);
        let ev = events(&out);
        assert!(ev.contains(&&Event::PeerStruck { peer: a.id, strikes: 3 }));
        assert!(ev.contains(&&Event::PeerBanned { peer: a.id, until: at(7) + ban }));
        assert!(ev.contains(&&Event::SessionClosed { node: a.id, reason: SessionEnd::Rejected }));
        assert_eq!(closes(&out), vec![(a.id, CloseReason::Banned)]);
        assert!(!h.ix.has_session(&a.id));
        assert!(h.ix.is_banned(&a.id, at(8)));
        // While banned: refused and disconnected, with no more strikes.
        for s in 8..30 {
            let out = h.beat(&a, at(s));
            assert_eq!(refusal(&out).reason, RefuseReason::Banned);
            assert_eq!(closes(&out), vec![(a.id, CloseReason::Banned)]);
            assert!(!events(&out).iter().any(|e| matches!(e, Event::PeerStruck { .. })));
        }
        assert_eq!(h.ix.strikes(&a.id), 3);
        // Candidate requests are refused too.
        let out = h.candidates(&a, 3, at(31));
        assert_eq!(refusal(&out).reason, RefuseReason::Banned);
        // After the ban the node is admitted again as a new session.
        let out = h.beat(&a, at(7) + ban);
        assert_eq!(events(&out), vec![&Event::SessionOpened { node: a.id }]);
        assert_eq!(h.ix.strikes(&a.id), 0);
    }

    #[test]
    fn honest_node_is_admitted_for_48_hours() {
        let mut h = Harness::new(Config::default());
        let honest = node(1);
        let others: Vec<PeerAddr> = (2..6).map(node).collect();
        let mut t = 0;
        let end = 48 * 3600 * 1000;
        while t <= end {
            let now = at_ms(t);
            h.run_timers(now);
            for (i, o) in others.iter().enumerate() {
                response(&h.beat(o, at_ms(t + 1 + i as u64)));
            }
            let out = h.send(&honest, Heartbeat { referent: true, need: 1, ..hb() }, now);
            response(&out);
            assert!(!events(&out).iter().any(|e| matches!(e, Event::RequestRefused { .. })));
            // Once an hour the node's pool changes: a probe and an immediate extra heartbeat.
            if t % 3_600_000 == 0 {
                response(&h.send(&honest, probe(), at_ms(t + 100)));
                response(&h.send(&honest, Heartbeat { referent: true, ..hb() }, at_ms(t + 200)));
            }
            t += 20_000;
        }
        let v = h.ix.session(&honest.id).unwrap();
        assert_eq!(v.first_seen, at(0), "never re-admitted as new (O1 is gone)");
        assert_eq!(v.admission_score, 100.0);
        assert_eq!(h.ix.strikes(&honest.id), 0);
        assert_eq!(h.ix.referents().map(|v| v.peer).collect::<Vec<_>>(), vec![honest.id]);
    }

    #[test]
    fn node_that_keeps_collecting_strikes_is_eventually_refused() {
        let c = Config::default();
        let min_end = c.min_score_end;
        let mut h = Harness::new(c);
        let offender = node(1);
        let mut t = 0;
        let refused_at = loop {
            assert!(t < 48 * 3600 * 1000, "the offender was never refused");
            let out = h.beat(&offender, at_ms(t));
            if let Some(Message::Refused(r)) = sent_to(&out, offender.id).first() {
                assert_eq!(r.reason, RefuseReason::LowScore);
                assert!(
                    events(&out).contains(&&Event::SessionClosed { node: offender.id, reason: SessionEnd::Rejected })
                );
                break t;
            }
            // Every 21 minutes (once its window holds three heartbeats), a burst of four extra
            // heartbeats: two over the limit, two strikes.
            if t % 1_260_000 == 60_000 {
                for k in 1..=4 {
                    h.beat(&offender, at_ms(t + k * 100));
                }
            }
            t += 20_000;
        };
        assert!(!h.ix.is_banned(&offender.id, at_ms(refused_at)), "refused by score, not banned");
        assert!(!h.ix.has_session(&offender.id));
        // Two strikes of three: score 73.3, below the ramp once it passes that value (~21.3 h).
        assert!(refused_at > 21 * 3600 * 1000, "refused at {} h", refused_at / 3_600_000);
        assert!(min_end > admission_score(1.0, 2, 3));
    }

    #[test]
    fn silent_session_expires_and_drops_referent() {
        let c = Config::default();
        let expiry = c.session_expiry;
        let mut h = Harness::new(c);
        let (silent, chatty) = (node(1), node(2));
        h.send(&silent, Heartbeat { referent: true, ..hb() }, at(0));
        assert_eq!(h.ix.referents().count(), 1);
        let mut t = 0;
        while t <= 300 {
            h.run_timers(at(t));
            h.beat(&chatty, at(t));
            t += 20;
        }
        // `run_timers` above went past the expiry; check the exact instant on a fresh indexer.
        assert!(!h.ix.has_session(&silent.id));
        assert!(h.ix.has_session(&chatty.id));
        assert_eq!(h.ix.referents().count(), 0);

        let mut h = Harness::new(Config::default());
        h.send(&silent, Heartbeat { referent: true, ..hb() }, at(0));
        let out = h.run_timers(at(0) + expiry);
        assert!(out.is_empty());
        assert!(h.ix.has_session(&silent.id), "silent for exactly session_expiry: still there");
        let out = h.run_timers(at(0) + expiry + Duration::from_millis(1));
        assert_eq!(events(&out), vec![&Event::SessionClosed { node: silent.id, reason: SessionEnd::Expired }]);
        assert!(!h.ix.has_session(&silent.id));
        assert_eq!(h.ix.referents().count(), 0);
        // The slot is free and the node comes back as a new session.
        let out = h.beat(&silent, at(200));
        assert_eq!(events(&out), vec![&Event::SessionOpened { node: silent.id }]);
        assert_eq!(h.ix.referents().count(), 0, "the new session is not a referent until it says so");
    }

    #[test]
    fn leave_frees_the_slot_at_once() {
        let mut h = Harness::new(Config { max_nodes: 1, ..Config::default() });
        let (a, b) = (node(1), node(2));
        h.send(&a, Heartbeat { referent: true, ..hb() }, at(0));
        assert_eq!(refusal(&h.beat(&b, at(1))).reason, RefuseReason::Full);
        let out = h.leave(&a, at(2));
        assert_eq!(events(&out), vec![&Event::SessionClosed { node: a.id, reason: SessionEnd::Left }]);
        assert_eq!(h.ix.referents().count(), 0);
        let out = h.beat(&b, at(3));
        assert_eq!(events(&out), vec![&Event::SessionOpened { node: b.id }]);
        // A leave without a session is ignored.
        assert!(h.leave(&a, at(4)).is_empty());
    }

    #[test]
    fn offload_above_80_percent_asks_batches_of_five_with_grace() {
        let mut h = Harness::new(Config { max_nodes: 10, ..Config::default() });
        let nodes: Vec<PeerAddr> = (0..9).map(node).collect();
        // Round 0: admission up to 90 % fill, but no other indexer is known: no suggestion, so no
        // migration request.
        for (i, n) in nodes.iter().enumerate() {
            let out = h.beat(n, at_ms(i as u64 * 10));
            assert!(!response(&out).suggest_migrate);
        }
        h.ix.note_indexer(indexer(1), Some(0.3), at(1));
        h.ix.note_indexer(indexer(2), None, at(1));
        let mut asked_in_round = Vec::new();
        for round in 1..=21u64 {
            let mut asked = BTreeSet::new();
            for (i, n) in nodes.iter().enumerate() {
                let out = h.beat(n, at_ms(round * 20_000 + i as u64 * 10));
                let r = response(&out);
                assert_eq!(r.suggestions.len(), 1, "above the threshold at least one suggestion");
                if r.suggest_migrate {
                    asked.insert(i);
                }
                assert!(h.ix.offload.in_batch.len() <= 5, "never more than a batch asked at once");
            }
            asked_in_round.push(asked);
        }
        let set = |v: &[usize]| v.iter().copied().collect::<BTreeSet<usize>>();
        // Rounds 1–9 (t = 20 s … 180 s): the first batch of five keeps being asked for its grace.
        for r in 1..=9 {
            assert_eq!(asked_in_round[r - 1], set(&[0, 1, 2, 3, 4]), "round {r}");
        }
        // Round 10 is the hand-over: each of the first five is asked one last time at exactly
        // 180 s, and as their grace ends one by one, the rest take the freed slots.
        assert_eq!(asked_in_round[9], set(&[0, 1, 2, 3, 4, 5, 6, 7, 8]));
        // Rounds 11–18: the first batch is "already tried" and left alone.
        for r in 11..=18 {
            assert_eq!(asked_in_round[r - 1], set(&[5, 6, 7, 8]), "round {r}");
        }
        // Round 20: everyone has been tried, so "already tried" resets and the cycle starts again.
        assert_eq!(asked_in_round[19], set(&[0, 1, 2, 3, 4]));
        assert_eq!(asked_in_round[20], set(&[0, 1, 2, 3, 4]));
        // Two nodes leave: 70 % fill, no migration, and the state is reset.
        h.leave(&nodes[7], at(430));
        h.leave(&nodes[8], at(430));
        for (i, n) in nodes.iter().take(7).enumerate() {
            let r = h.beat(n, at_ms(440_000 + i as u64 * 10));
            assert!(!response(&r).suggest_migrate);
            assert!(response(&r).suggestions.is_empty(), "need 0 and not offloading: no suggestions");
        }
    }

    #[test]
    fn candidates_capped_and_exclude_requester() {
        let c = Config { indexer_cache_max: 20, max_candidates: 10, ..Config::default() };
        let mut h = Harness::new(c);
        let requester = indexer(100);
        h.send(&requester, Heartbeat { is_indexer: true, ..hb() }, at(0));
        assert!(h.ix.known_indexers().any(|k| k.addr == requester), "an indexer session becomes known");
        for i in 0..14 {
            h.ix.note_indexer(indexer(i), Some(0.5), at(1));
        }
        let me = PeerAddr::id_only(h.me);
        h.ix.note_indexer(me, None, at(1));
        assert_eq!(h.ix.known_indexers().count(), 15, "self is never remembered");
        let cands = |out: &[Action]| match sent_to(out, requester.id).first() {
            Some(Message::CandidatesResponse(r)) => r.candidates.clone(),
            other => panic!("expected candidates, got {other:?}"),
        };
        for (asked, expected) in [(50u16, 10usize), (11, 10), (0, 3), (5, 5)] {
            let got = cands(&h.candidates(&requester, asked, at(2)));
            assert_eq!(got.len(), expected, "asked {asked}");
            assert!(!got.iter().any(|a| a.id == requester.id || a.id == h.me));
            assert_eq!(got.iter().map(|a| a.id).collect::<BTreeSet<_>>().len(), got.len(), "no duplicates");
        }
        // A peer without a session is not served.
        let stranger = node(1);
        let out = h.candidates(&stranger, 3, at(3));
        assert_eq!(refusal(&out).reason, RefuseReason::Unknown);
        // The "get" window limits requests: the 51st in a minute is refused and struck.
        for _ in 0..46 {
            cands(&h.candidates(&requester, 3, at(4)));
        }
        let out = h.candidates(&requester, 3, at(4));
        assert_eq!(refusal(&out).reason, RefuseReason::RateLimited);
        assert_eq!(h.ix.strikes(&requester.id), 1);
    }

    #[test]
    fn did_is_never_clobbered_and_a_changed_did_costs_strikes() {
        let mut h = Harness::new(Config::default());
        let a = node(1);
        h.send(&a, Heartbeat { did: Some(did("did:a")), record: Some(record(1, "did:a", at(0))), ..hb() }, at(0));
        h.beat(&a, at(20));
        assert_eq!(h.ix.session(&a.id).unwrap().did, Some(&did("did:a")), "a missing DID does not clobber");
        // A different DID: two strikes, still answered, the first DID kept.
        let out =
            h.send(&a, Heartbeat { did: Some(did("did:evil")), challenge_did: Some(did("did:a")), ..hb() }, at(40));
        assert!(events(&out).contains(&&Event::PeerStruck { peer: a.id, strikes: 2 }));
        assert_eq!(response(&out).did_found, Some(true));
        assert_eq!(h.ix.session(&a.id).unwrap().did, Some(&did("did:a")));
        // Changing it again bans.
        let out = h.send(&a, Heartbeat { did: Some(did("did:evil2")), ..hb() }, at(60));
        assert_eq!(refusal(&out).reason, RefuseReason::Banned);
        assert!(events(&out).iter().any(|e| matches!(e, Event::PeerBanned { .. })));
        assert_eq!(closes(&out), vec![(a.id, CloseReason::Banned)]);
        assert!(!h.ix.has_session(&a.id));
        // The DID check asks the record store (the DHT), not the sessions: a's signed record stays
        // findable until it expires, then it is gone.
        let b = node(2);
        let out = h.send(&b, Heartbeat { challenge_did: Some(did("did:a")), ..hb() }, at(61));
        assert_eq!(response(&out).did_found, Some(true));
        let out = h.send(&b, Heartbeat { challenge_did: Some(did("did:a")), ..hb() }, at(301));
        assert_eq!(response(&out).did_found, Some(false));
    }

    #[test]
    fn witnesses_are_other_sessions_never_requester() {
        let mut h = Harness::new(Config::default());
        let nodes: Vec<PeerAddr> = (0..8).map(node).collect();
        let ix_session = indexer(1);
        h.send(&ix_session, Heartbeat { is_indexer: true, ..hb() }, at(0));
        for n in &nodes {
            h.beat(n, at(0));
        }
        // A node leaves: it must never be offered as a witness again.
        h.leave(&nodes[3], at(1));
        let mut seen = BTreeSet::new();
        for round in 0..40u64 {
            for (i, n) in nodes.iter().enumerate().filter(|(i, _)| *i != 3) {
                let out = h.send(n, Heartbeat { want_witnesses: true, ..hb() }, at_ms(20_000 * (round + 1) + i as u64));
                let w = &response(&out).witnesses;
                assert_eq!(w.len(), 3);
                let ids: BTreeSet<PeerId> = w.iter().map(|a| a.id).collect();
                assert_eq!(ids.len(), 3, "distinct");
                assert!(!ids.contains(&n.id), "never the requester");
                assert!(!ids.contains(&ix_session.id), "never an indexer");
                assert!(!ids.contains(&nodes[3].id), "never a node that left");
                assert!(w.iter().all(|a| h.ix.session(&a.id).is_some_and(|v| v.addr == a)));
                seen.extend(ids);
            }
        }
        assert_eq!(seen.len(), 7, "every node still there gets picked sometimes");
        // Without want_witnesses there are none; with few sessions, fewer.
        assert!(response(&h.beat(&nodes[0], at(1000))).witnesses.is_empty());
        let mut h = Harness::new(Config::default());
        h.beat(&nodes[0], at(0));
        h.beat(&nodes[1], at(0));
        let out = h.send(&nodes[0], Heartbeat { want_witnesses: true, ..hb() }, at(20));
        assert_eq!(response(&out).witnesses, vec![nodes[1].clone()]);
    }

    #[test]
    fn gc_forgets_stale_indexers_and_prunes_clean_peers() {
        let mut h = Harness::new(Config::default());
        h.ix.note_indexer(indexer(1), Some(0.2), at(0));
        h.ix.note_indexer(indexer(2), Some(0.2), at(0));
        let (member, prober) = (node(1), node(2));
        h.send(&prober, probe(), at(0));
        assert!(h.ix.behaviour().contains(&prober.id));
        let mut t = 0;
        while t <= 200 {
            h.ix.note_indexer(indexer(2), None, at(t));
            h.beat(&member, at(t));
            h.run_timers(at(t));
            t += 20;
        }
        let known: Vec<PeerAddr> = h.ix.known_indexers().map(|k| k.addr.clone()).collect();
        assert_eq!(known, vec![indexer(2)]);
        assert_eq!(h.ix.known_indexers().next().unwrap().fill_rate, Some(0.2), "an unknown fill keeps the last one");
        assert!(!h.ix.behaviour().contains(&prober.id), "a clean peer without a session is pruned");
        assert!(h.ix.behaviour().contains(&member.id), "a session's entry is kept");
    }

    #[test]
    fn known_indexers_are_bounded_to_the_most_recently_seen() {
        let mut h = Harness::new(Config { indexer_cache_max: 3, ..Config::default() });
        for i in 0..6 {
            h.ix.note_indexer(indexer(i), Some(f64::INFINITY), at(i));
        }
        let ids: BTreeSet<PeerId> = h.ix.known_indexers().map(|k| k.addr.id).collect();
        assert_eq!(ids, (3..6).map(|i| indexer(i).id).collect());
        assert!(h.ix.known_indexers().all(|k| k.fill_rate.is_none()), "non-finite fill rates are dropped");
    }
}
