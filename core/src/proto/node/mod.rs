//! Node role: the scored pool of indexers a node trusts (spec A §6, B §3, E F6/F8/F11/F12).
//!
//! A node keeps at most `max_pool` *active* indexers — **Pending** (added, not answering yet) or
//! **Live** (answered its last heartbeat) — and proves its liveness to each with a heartbeat: at
//! once when it is added, then every `heartbeat_interval` on the node's one heartbeat tick (the
//! seed's single ticker, A §6.4), so a node with four indexers wakes once per interval, not four
//! times. A heartbeat sent off the tick (a new indexer, a deferred or refused one) rejoins it
//! after half to one interval: no gap exceeds `heartbeat_interval`. Every reply is matched to its
//! request by [`RequestId`] (B8), which also gives the round-trip time.
//!
//! Each heartbeat carries the node's *need* (free slots), marks exactly one indexer — the
//! best-scored live one — as the *referent* for distributed search, and now and then (every 1–10
//! heartbeats) a **challenge batch**: the node's own id first (ground truth: the indexer must know
//! our session) plus a few other pool members, a request for witnesses, and every fifth batch the
//! node's DID. Replies feed the per-indexer [`IndexerScore`] (seven factors, [`score`]),
//! kept in the entry for its whole life (the seed lost every counter to a copy, B1).
//!
//! ## Leaving the pool
//!
//! * **Score** below `dynamic_min_score(age)` after `eviction_grace` online, for a non-seed when
//!   other indexers remain → [`EvictReason::LowScore`]. An unexplained `born_at` change costs 30 %
//!   of the score each, so a flapping indexer drops to 0. A change is *explained* — an honest
//!   restart — only when we saw a failure or lost the connection since its previous answer **and**
//!   the new `born_at` is later than the old one.
//! * **Evidence** (ocd addition, seeds included: proof of lying is not a score): wrong answers to
//!   own-id challenges (over *answered* challenges only: a refused or lost heartbeat is a failure,
//!   not a lie), fill rates that contradict the indexer's own peer count, or witnesses that
//!   disagree (a silent witness is inconclusive), each below its `min_*` ratio after
//!   `eviction_grace` online.
//! * Misbehaviour evictions put the peer in a `misbehaviour_cooldown` during which nothing
//!   (suggestion, consensus, seed list) re-admits it; a cooled-down seed is retried afterwards.
//! * **Heartbeat failure** (timeout, refusal, unreachable): a non-seed is evicted at once when
//!   other active indexers remain, or after `last_indexer_max_failures` when it is the last one. A
//!   seed is never evicted for failing: it leaves the active set as **Down** (so the pool fills
//!   with others) and is probed on a back-off of `seed_backoff_initial` ×2, capped exactly at
//!   `seed_backoff_max` (the seed overshot to 320 s, B6). When it answers it comes back, evicting
//!   the worst non-seed if the pool is full.
//! * **Busy** (the indexer's burst guard refused a new session) is not a failure: the indexer is
//!   alive and says "not now". The entry keeps its slot and is retried after half to one
//!   heartbeat interval, jittered; only `last_indexer_max_failures` refusals in a row count as a
//!   heartbeat failure. (Treating it as a failure made nodes evict, re-probe and re-admit busy
//!   indexers in a loop during join waves.)
//! * **Migration**: an indexer above its offload threshold asks us to move; a non-seed is evicted
//!   only if enough other live indexers remain, a seed only loses its seed flag (B15). A full
//!   indexer that gave our slot to a node below its minimum refuses us `Moved`: a non-seed is
//!   evicted as migrated (issue 13).
//!
//! Every heartbeat and probe tells the indexer our [`Standing`] without it (live indexers
//! elsewhere, those being joined, our minimum), so a full indexer can serve nodes below their
//! minimum first and move only nodes that keep theirs (see `indexer/capacity.rs`).
//!
//! Evicting one indexer never touches another (B4), and an evicted entry is not processed further
//! (B5).
//!
//! ## Refilling
//!
//! Suggestions from pool members fill free slots directly (never self, duplicates, cooled-down
//! peers, or beyond `max_pool`: B14). After an eviction a **candidate consensus** round (B §3.2)
//! asks every live indexer for candidates, probes each once (a refused or silent probe scores 0, so
//! a full or banning indexer is never admitted), and admits the best above `min_score_start`. When
//! that fails the configured seeds are re-added; with no active indexer at all, **seed recovery**
//! retries the seeds on the same capped back-off (A §6.10), and the indexers suggested to us lately
//! (so a node whose seeds are out of reach is not left at zero). Below the minimum, a Down seed
//! that last refused us for capacity is retried every `heartbeat_interval` (issue 13).
//!
//! ## Rate-limit safety
//!
//! DESIGN §4: a pool change never makes an honest node trip the indexer's heartbeat rate limit
//! (the seed's nudges heartbeated every indexer at once, B16). The pool remembers, per peer (also
//! after eviction), when it sent heartbeats and probes, and never sends one that would make more
//! than `max_hb_per_minute − 1` within `behaviour_window` + 1 s: it waits instead.
//!
//! Everything is driven by `now` arguments and a [`DetRng`]; timers are deadlines returned by
//! [`IndexerPool::poll_timeout`].
//!
//! ## Files, one per flow
//!
//! `mod.rs` the pool, its inputs and views · `heartbeat.rs` sending heartbeats and probes, answers
//! and failures · `rate.rs` rate-limit safety · `score.rs` the seven-factor score ·
//! `challenges.rs` challenge batches · `witnesses.rs` witness queries and answers ·
//! `eviction.rs` answer bookkeeping, rescoring and eviction · `consensus.rs` candidate consensus ·
//! `recovery.rs` refilling and seed recovery · `discovery.rs` DHT provider discovery ·
//! `lookup.rs` record lookups through the pool · `messages.rs` the node-to-node messages.

use crate::proto::action::Sink;
use crate::proto::config::Config;
use crate::proto::dht::select_by_fill;
use crate::proto::identity::{Did, PeerAddr, PeerId, SigCheck};
use crate::proto::record::{PeerRecord, ProviderRecord};
use crate::proto::rng::DetRng;
use crate::proto::time::Timestamp;
use crate::proto::wire::{
    CandidatesRequest, CandidatesResponse, Envelope, Heartbeat, HeartbeatKind, HeartbeatResponse, IndexerMessage,
    RecordKey, RefuseReason, Refused, RequestId, Standing, WitnessQuery, WitnessReport,
};
use crate::proto::{Action, AddedVia, CloseReason, Event, EvictReason, FailReason};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

mod challenges;
mod consensus;
mod discovery;
mod eviction;
mod heartbeat;
pub(crate) mod lookup;
pub(crate) mod messages;
mod rate;
mod recovery;
mod score;
#[cfg(test)]
mod tests;
mod witnesses;

use discovery::DISCOVERY_WARMUP;

/// How much better another indexer must score to take the referent role from the one told.
const REFERENT_MARGIN: f64 = 0.2;
use lookup::{Origin, RecordLookups};
use messages::NodeMessage;
use rate::SEND_LOG_MAX;
use score::IndexerScore;
pub use score::ScoreFactors;

/// What the node role does: its outputs, lifted into the router's [`Action`].
#[derive(Clone, Debug, PartialEq)]
pub enum NodeOut {
    /// Send to a peer (dialled from the address book when there is no connection).
    Send {
        /// The recipient.
        to: PeerId,
        /// The message.
        message: Envelope,
    },
    /// Remember how to reach a peer.
    Learn(PeerAddr),
    /// Close the connection to a peer.
    Close {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: CloseReason,
    },
    /// Report an event.
    Event(Event),
    /// The pool wants more indexers: discover providers of the rendezvous key in the DHT (the
    /// answer comes back to [`IndexerPool::on_providers`]).
    DiscoverIndexers {
        /// How many providers to find.
        want: usize,
    },
    /// A live indexer of this peer's own pool answered (for an indexer's cache of others).
    IndexerSeen {
        /// The indexer.
        peer: PeerId,
        /// The fill rate it reported, if the answer carried one.
        fill_rate: Option<f64>,
    },
    /// A resolution for another machine finished ([`IndexerPool::resolve`]).
    Resolved {
        /// Its token.
        token: u64,
        /// The verified record, if found.
        record: Option<PeerRecord>,
        /// Whether any indexer was asked (`false`: none is live yet).
        asked: bool,
    },
}

/// Where an indexer stands in a node's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// Active, but not answering yet: just added, or failed its last heartbeat while it is being
    /// retried as the last indexer.
    Pending,
    /// Active and answered its last heartbeat.
    Live,
    /// A seed that stopped answering: outside the active set, probed on a back-off.
    Down,
}

/// What a node knows of an indexer, as told to witnesses.
#[derive(Clone, Debug, PartialEq)]
pub struct WitnessView {
    /// The indexer's last reported `born_at`.
    pub born_at: Timestamp,
    /// Its last reported fill rate.
    pub fill_rate: f64,
    /// Our score of it.
    pub score: f64,
}

/// One pool entry, for status tables and the simulator.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolEntryView {
    /// The indexer.
    pub peer: PeerId,
    /// Whether it is a sticky seed.
    pub is_seed: bool,
    /// Pending, Live or Down.
    pub state: EntryState,
    /// How it entered the pool.
    pub via: AddedVia,
    /// Its current score (0 until it first answers).
    pub score: f64,
    /// The factors of that score.
    pub factors: ScoreFactors,
    /// Whether it is the node's referent (the best-scored live entry).
    pub referent: bool,
    /// The round-trip time of its last answered heartbeat.
    pub last_rtt: Option<Duration>,
    /// Heartbeat failures since its last answer.
    pub consecutive_fails: u32,
}

#[derive(Debug)]
struct Entry {
    addr: PeerAddr,
    is_seed: bool,
    via: AddedVia,
    state: EntryState,
    added_at: Timestamp,
    score: IndexerScore,
    /// Score at the last computation (0 until the first answer).
    current: f64,
    factors: ScoreFactors,
    /// Latency score of the last matched round trip.
    latency: f64,
    last_rtt: Option<Duration>,
    /// Active: when the next regular heartbeat is due. Down: when the next retry probe is due.
    next_due: Timestamp,
    /// Down: retry probes sent since it went down (its back-off step).
    retries: u32,
    /// The heartbeat or retry probe awaiting a reply.
    in_flight: Option<RequestId>,
    /// Answered since the last failure or connection loss (until then, DID and name are sent).
    acknowledged: bool,
    /// A failure or connection loss since its last answer (explains a later `born_at`).
    failure_since_answer: bool,
    /// Has answered at least once.
    answered: bool,
    /// The expiry of our record this indexer last said it holds.
    record_held: Option<Timestamp>,
    /// Its last failure was a refusal for capacity (`Full`, `Busy`, `Moved`): it is alive.
    refused_for_capacity: bool,
    /// Backing off after `Busy` refusals while the node had its minimum: when the retry would
    /// have come at the pace of a node below it (it is brought forward to then if the node falls
    /// below its minimum before the retry).
    busy_cap: Option<Timestamp>,
}

impl Entry {
    fn new(addr: PeerAddr, via: AddedVia, is_seed: bool, now: Timestamp, next_challenge: u32) -> Self {
        Entry {
            addr,
            is_seed,
            via,
            state: EntryState::Pending,
            added_at: now,
            score: IndexerScore::new(now, next_challenge),
            current: 0.0,
            factors: ScoreFactors::UNPROVEN,
            latency: 0.0,
            last_rtt: None,
            next_due: now,
            retries: 0,
            in_flight: None,
            acknowledged: false,
            failure_since_answer: false,
            answered: false,
            record_held: None,
            refused_for_capacity: false,
            busy_cap: None,
        }
    }

    fn is_active(&self) -> bool {
        self.state != EntryState::Down
    }
}

/// What a heartbeat asked, to judge its reply.
#[derive(Clone, Copy, Debug)]
struct HeartbeatSent {
    /// A retry probe to a Down seed.
    retry: bool,
    challenge: bool,
    did_challenge: bool,
    want_witnesses: bool,
}

#[derive(Clone, Debug)]
enum RequestKind {
    /// Regular heartbeat to an active entry, or retry probe to a Down seed.
    Heartbeat(HeartbeatSent),
    /// Consensus probe of a candidate.
    CandidateProbe,
    /// Consensus candidates request to a live voter.
    Candidates,
    /// Witness query about `indexer`, to compare with what it told us.
    Witness { indexer: PeerId, born_at: Timestamp, fill_rate: f64 },
}

#[derive(Clone, Debug)]
struct Request {
    to: PeerId,
    sent_at: Timestamp,
    deadline: Timestamp,
    kind: RequestKind,
}

/// One candidate-consensus round (B §3.2).
#[derive(Debug)]
struct Consensus {
    /// Collecting candidates (false) or probing them (true).
    probing: bool,
    /// Requests of the current phase still unanswered.
    waiting: BTreeSet<RequestId>,
    /// Candidates received from the voters, in arrival order.
    received: Vec<PeerAddr>,
    /// Probed candidates and their quick scores.
    scores: BTreeMap<PeerId, (PeerAddr, f64)>,
    /// Candidates left after filtering.
    candidates: usize,
}

#[derive(Debug)]
struct Recovery {
    /// Attempts made so far.
    attempt: u32,
    next_at: Timestamp,
}

/// The node role's pool of indexers.
#[derive(Debug)]
pub struct IndexerPool {
    config: Arc<Config>,
    me: PeerId,
    did: Did,
    max_pool: usize,
    min_pool: usize,
    is_indexer: bool,
    rng: DetRng,
    /// Configured seeds: self removed, deduplicated, shuffled, truncated to `max_pool`.
    seeds: Vec<PeerAddr>,
    entries: BTreeMap<PeerId, Entry>,
    requests: BTreeMap<RequestId, Request>,
    /// Request ids for every request of the node role (heartbeats, probes, candidates, witness
    /// queries, record lookups): one space, so a refusal finds its request.
    next_req: u64,
    /// Record lookups through this node's indexers.
    lookups: RecordLookups,
    /// Recent heartbeat and probe send times per peer, oldest first.
    send_log: BTreeMap<PeerId, Vec<Timestamp>>,
    /// `send_log` is pruned of stale peers when it grows past this.
    send_log_prune_at: usize,
    /// Peers evicted for misbehaviour, until when.
    cooldown: BTreeMap<PeerId, Timestamp>,
    /// Configured seeds whose seed flag a migration cleared.
    discharged: BTreeSet<PeerId>,
    /// Indexers suggested to us lately, most recent last: seed recovery
    /// tries them too, so a node whose seeds are out of reach is not left at zero.
    heard_of: Vec<PeerAddr>,
    consensus: Option<Consensus>,
    consensus_wanted: bool,
    recovery: Option<Recovery>,
    started: bool,
    shut: bool,
    /// Some entry may hold a `busy_cap` (see [`IndexerPool::hurry_backed_off`]).
    backed_off: bool,
    /// Our signed record, sent to each indexer until it holds this version.
    record: Option<PeerRecord>,
    /// Earliest next DHT provider discovery.
    next_discovery: Timestamp,
    /// Discoveries in a row that added nothing (the interval doubles, up to 8×).
    discovery_misses: u32,
    /// A discovery is running.
    discovering: bool,
    /// The indexer our last `referent = true` heartbeat went to.
    told_referent: Option<PeerId>,
    /// `told_referent` was named before anything was live: it does not hold the role against a
    /// better live indexer.
    told_provisional: bool,
    /// The referent chosen at the last heartbeat round, sticky until it is told.
    referent_choice: Option<PeerId>,
    /// The phase of the node's heartbeat tick: ticks fall at this time plus whole intervals.
    tick_origin: Timestamp,
}

impl IndexerPool {
    /// A pool seeded with `seeds`, holding at most `max_pool` active indexers. Seeds are
    /// heartbeated at the first call at or after `now` (see [`IndexerPool::poll_timeout`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: impl Into<Arc<Config>>,
        me: PeerId,
        did: Did,
        seeds: Vec<PeerAddr>,
        max_pool: usize,
        is_indexer: bool,
        rng: DetRng,
        now: Timestamp,
    ) -> Self {
        let config = config.into();
        let mut rng = rng;
        let mut unique: Vec<PeerAddr> = Vec::new();
        for s in seeds {
            if s.id != me && !unique.iter().any(|u| u.id == s.id) {
                unique.push(s);
            }
        }
        rng.shuffle(&mut unique);
        unique.truncate(max_pool);
        let mut pool = IndexerPool {
            lookups: RecordLookups::new(Arc::clone(&config)),
            min_pool: config.min_indexers.min(max_pool),
            config,
            me,
            did,
            max_pool,
            is_indexer,
            rng,
            seeds: unique,
            entries: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_req: 1,
            send_log: BTreeMap::new(),
            send_log_prune_at: rate::SEND_LOG_PRUNE_MIN,
            cooldown: BTreeMap::new(),
            discharged: BTreeSet::new(),
            heard_of: Vec::new(),
            consensus: None,
            consensus_wanted: false,
            recovery: None,
            started: false,
            shut: false,
            backed_off: false,
            record: None,
            next_discovery: now + DISCOVERY_WARMUP,
            discovery_misses: 0,
            discovering: false,
            told_referent: None,
            told_provisional: false,
            referent_choice: None,
            tick_origin: now,
        };
        for s in pool.seeds.clone() {
            let nc = pool.draw_challenge_spacing();
            pool.entries.insert(s.id, Entry::new(s, AddedVia::Seed, true, now, nc));
        }
        pool
    }

    /// Checks the signatures of looked-up records through `sigs` (the same results: see
    /// [`SigCheck`]).
    pub fn set_sig_check(&mut self, sigs: SigCheck) {
        self.lookups.set_sig_check(sigs);
    }

    /// Handles an indexer's reply (heartbeat response, refusal, candidates, record) from the
    /// authenticated peer `from`. Replies with an unknown or stale request id, or from a peer
    /// other than the request's addressee, are ignored.
    pub fn on_indexer_reply(&mut self, from: PeerId, m: IndexerMessage, now: Timestamp, out: &mut Vec<Action>) {
        if let IndexerMessage::RecordReply(r) = m {
            self.lookups.on_reply(from, r, &mut self.next_req, now, out);
            return;
        }
        if let IndexerMessage::Refused(r) = &m
            && !self.requests.contains_key(&r.req)
        {
            self.lookups.on_refused(from, r.req, &mut self.next_req, now, out);
            return;
        }
        if let IndexerMessage::HeartbeatResponse(_) = &m {
            self.lookups.note_alive(&from);
        }
        if self.shut {
            return;
        }
        self.start(out);
        let fill_rate = match &m {
            IndexerMessage::HeartbeatResponse(r) => Some(r.fill_rate),
            _ => None,
        };
        match m {
            IndexerMessage::HeartbeatResponse(r) => self.on_heartbeat_response(from, *r, now, out),
            IndexerMessage::Refused(r) => self.on_refused(from, r, now, out),
            IndexerMessage::CandidatesResponse(r) => self.on_candidates(from, r, now, out),
            _ => {}
        }
        self.note_seen(from, fill_rate, out);
        self.pump(now, out);
    }

    /// Handles a witness report from `from` (see [`on_message`] for queries).
    fn on_node_reply(&mut self, from: PeerId, r: WitnessReport, now: Timestamp, out: &mut Vec<Action>) {
        if self.shut {
            return;
        }
        self.start(out);
        self.on_witness_report(from, r, now, out);
        self.note_seen(from, None, out);
        self.pump(now, out);
    }

    /// On an indexer, a live member of its own pool is one it may suggest to others.
    fn note_seen(&self, from: PeerId, fill_rate: Option<f64>, out: &mut Vec<Action>) {
        if self.is_indexer && self.is_live(&from) {
            out.emit(NodeOut::IndexerSeen { peer: from, fill_rate });
        }
    }

    /// Starts record lookup `id` of `key` through the live indexers, best first; answered by
    /// [`Event::LookupDone`].
    pub fn lookup(&mut self, id: u64, key: RecordKey, now: Timestamp, out: &mut Vec<Action>) {
        let indexers = self.lookup_targets();
        self.lookups.start(Origin::Command(id), key, indexers, &mut self.next_req, now, out);
    }

    /// Finds `key`'s record for another machine (the application messages' destinations);
    /// answered by [`NodeOut::Resolved`] with `token`.
    pub fn resolve(&mut self, token: u64, key: RecordKey, now: Timestamp, out: &mut Vec<Action>) {
        let indexers = self.lookup_targets();
        self.lookups.start(Origin::Resolve(token), key, indexers, &mut self.next_req, now, out);
    }

    /// Record lookups in flight.
    pub fn pending_lookups(&self) -> usize {
        self.lookups.len()
    }

    /// Live indexers, best score first, with their last heartbeat round trip (whom lookups ask).
    fn lookup_targets(&self) -> Vec<lookup::Target> {
        self.live_by_score()
            .into_iter()
            .map(|addr| {
                let rtt = self.entries.get(&addr.id).and_then(|e| e.last_rtt);
                lookup::Target { addr, rtt }
            })
            .collect()
    }

    /// The peer cannot be reached (connection lost or could not be made): its in-flight requests
    /// fail at once, and a later `born_at` from it counts as an honest restart.
    pub fn on_unreachable(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        self.lookups.on_unreachable(peer, &mut self.next_req, now, out);
        if self.shut {
            return;
        }
        self.start(out);
        if let Some(e) = self.entries.get_mut(&peer) {
            e.failure_since_answer = true;
            e.acknowledged = false;
        }
        let reqs: Vec<RequestId> = self.requests.iter().filter(|(_, r)| r.to == peer).map(|(k, _)| *k).collect();
        for req in reqs {
            if let Some(r) = self.requests.remove(&req) {
                self.fail_request(req, r, FailReason::Unreachable, now, out);
            }
        }
        self.pump(now, out);
    }

    /// Runs everything due at `now`; calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        if self.lookups.poll_timeout().is_some_and(|t| t <= now) {
            self.lookups.handle_timeout(&mut self.next_req, now, out);
        }
        if self.shut || self.pool_timeout().is_none_or(|t| t > now) {
            return;
        }
        self.pump(now, out);
    }

    /// The exact earliest time at which [`IndexerPool::handle_timeout`] has work (`None`: nothing
    /// scheduled).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        [self.pool_timeout(), self.lookups.poll_timeout()].into_iter().flatten().min()
    }

    fn pool_timeout(&self) -> Option<Timestamp> {
        if self.shut {
            return None;
        }
        let mut next: Option<Timestamp> = None;
        let mut consider = |t: Timestamp| {
            if next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        };
        for r in self.requests.values() {
            consider(r.deadline);
        }
        // One walk over the entries (hosts ask after every input): due times, and what
        // `active_count` and "any live" would each walk them again for.
        let (mut active, mut any_live) = (0, false);
        for e in self.entries.values() {
            if e.in_flight.is_none() {
                consider(e.next_due);
            }
            active += usize::from(e.is_active());
            any_live |= e.state == EntryState::Live;
        }
        if let Some(r) = &self.recovery
            && active == 0
        {
            consider(r.next_at);
        }
        let need = self.max_pool.saturating_sub(active);
        if !self.discovering && need > 0 && any_live {
            consider(self.next_discovery);
        }
        debug_assert_eq!((active, need), (self.active_count(), self.need()));
        next
    }

    /// Leaves every active indexer (graceful shutdown); the pool does nothing afterwards.
    pub fn shutdown(&mut self, _now: Timestamp, out: &mut Vec<Action>) {
        if self.shut {
            return;
        }
        for (id, e) in &self.entries {
            if e.is_active() {
                out.emit(NodeOut::Send { to: *id, message: IndexerMessage::Leave.into() });
            }
        }
        self.requests.clear();
        self.consensus = None;
        self.recovery = None;
        self.shut = true;
    }

    /// Whether `peer` is in the pool (active or Down).
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.entries.contains_key(peer)
    }

    /// Whether `peer` is in the pool and live.
    pub fn is_live(&self, peer: &PeerId) -> bool {
        self.entries.get(peer).is_some_and(|e| e.state == EntryState::Live)
    }

    /// Live indexers (what "pool size" means in reports).
    pub fn live_count(&self) -> usize {
        self.entries.values().filter(|e| e.state == EntryState::Live).count()
    }

    /// Active entries (Pending + Live), at most [`IndexerPool::max_pool`].
    pub fn len(&self) -> usize {
        self.active_count()
    }

    /// Whether there is no active entry.
    pub fn is_empty(&self) -> bool {
        self.active_count() == 0
    }

    /// Every entry (active and Down), in peer-id order.
    pub fn entries(&self) -> impl Iterator<Item = PoolEntryView> + '_ {
        let referent = self.referent();
        self.entries.iter().map(move |(id, e)| PoolEntryView {
            peer: *id,
            is_seed: e.is_seed,
            state: e.state,
            via: e.via,
            score: e.current,
            factors: e.factors,
            referent: referent == Some(*id),
            last_rtt: e.last_rtt,
            consecutive_fails: e.score.uptime.consecutive_fails,
        })
    }

    /// The configured seeds (self removed, deduplicated, at most `max_pool`).
    pub fn seeds(&self) -> &[PeerAddr] {
        &self.seeds
    }

    /// Most active entries.
    pub fn max_pool(&self) -> usize {
        self.max_pool
    }

    /// Fewest live entries the node wants (`min_indexers`, at most `max_pool`).
    pub fn min_pool(&self) -> usize {
        self.min_pool
    }

    /// Whether `peer` is barred from the pool at `now` after a misbehaviour eviction.
    pub fn in_cooldown(&self, peer: &PeerId, now: Timestamp) -> bool {
        self.cooldown.get(peer).is_some_and(|until| now < *until)
    }

    /// Sets our signed record; indexers that do not hold this version get it with their next
    /// heartbeat.
    pub fn set_record(&mut self, record: PeerRecord) {
        self.record = Some(record);
    }

    /// Live indexers, best score first (where a node sends its record lookups).
    pub fn live_by_score(&self) -> Vec<PeerAddr> {
        let mut v: Vec<(&PeerId, &Entry)> = self.entries.iter().filter(|(_, e)| e.state == EntryState::Live).collect();
        v.sort_by(|a, b| b.1.current.total_cmp(&a.1.current).then(a.0.cmp(b.0)));
        v.into_iter().map(|(_, e)| e.addr.clone()).collect()
    }

    /// Emits what construction could not (the seeds' addresses and `IndexerAdded`).
    fn start(&mut self, out: &mut Vec<Action>) {
        if self.started {
            return;
        }
        self.started = true;
        for (id, e) in &self.entries {
            out.emit(NodeOut::Learn(e.addr.clone()));
            out.emit(NodeOut::Event(Event::IndexerAdded { indexer: *id, via: AddedVia::Seed }));
        }
    }

    /// Runs everything due: request deadlines, consensus phases, refills, seed recovery, and the
    /// heartbeats and probes whose time has come.
    fn pump(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        self.start(out);
        let expired: Vec<RequestId> =
            self.requests.iter().filter(|(_, r)| r.deadline <= now).map(|(k, _)| *k).collect();
        for req in expired {
            if let Some(r) = self.requests.remove(&req) {
                self.fail_request(req, r, FailReason::Timeout, now, out);
            }
        }
        self.consensus_progress(now, out);
        self.follow_up(now, out);
        self.recovery_step(now, out);
        self.hurry_down_seeds(now);
        self.hurry_backed_off(now);
        self.discover_if_due(now, out);
        self.hurry_referent(now);
        self.send_due(now, out);
    }

    /// The referent is what makes this node searchable (DESIGN §7): when the one told is gone
    /// (down or out of the pool), the new referent's heartbeat is brought forward (within the rate
    /// budget) rather than a whole interval later. A referent that only changes by score waits for
    /// its regular heartbeat, so close scores cannot make heartbeats flap.
    fn hurry_referent(&mut self, now: Timestamp) {
        let Some(r) = self.referent() else { return };
        let told_is_fine =
            self.told_referent.is_some_and(|t| self.entries.get(&t).is_some_and(|e| e.state != EntryState::Down));
        if self.told_referent == Some(r) || told_is_fine {
            return;
        }
        let allowed = self.rate_allowed_at(&r, now).max(now);
        if let Some(e) = self.entries.get_mut(&r)
            && e.in_flight.is_none()
        {
            e.next_due = e.next_due.min(allowed);
        }
    }

    /// A live indexer that holds our session (answered a regular heartbeat, not only a probe):
    /// one that will answer a candidates request.
    fn is_voter(e: &Entry) -> bool {
        e.state == EntryState::Live && e.acknowledged
    }

    fn active_count(&self) -> usize {
        self.entries.values().filter(|e| e.is_active()).count()
    }

    fn need(&self) -> usize {
        self.max_pool.saturating_sub(self.active_count())
    }

    fn next_request(&mut self) -> RequestId {
        next_request(&mut self.next_req)
    }

    /// Remembers an outgoing request until its reply or `response_timeout` (every wait is
    /// bounded, B7).
    fn track(&mut self, req: RequestId, to: PeerId, kind: RequestKind, now: Timestamp) {
        let deadline = now + self.config.response_timeout;
        self.requests.insert(req, Request { to, sent_at: now, deadline, kind });
    }

    /// The best-scored live entry; ties go to the lowest peer id.
    /// The search referent: the best-scored live indexer, sticky — the one last told stays while
    /// it is live, unless another scores `REFERENT_MARGIN` better. Scores move with every answer,
    /// so the plain best would change between heartbeats and no indexer would ever be told.
    fn referent(&self) -> Option<PeerId> {
        let mut best: Option<(PeerId, f64)> = None;
        for (id, e) in &self.entries {
            if e.state == EntryState::Live && best.is_none_or(|(_, s)| e.current > s) {
                best = Some((*id, e.current));
            }
        }
        // The one told holds the role; before one is told (or after a provisional naming), the
        // one chosen last holds it until its heartbeat tells it. Without that the plain best could
        // change between every two heartbeats, and no indexer would ever be told after a node's
        // provisional referent refused it.
        let live = |t: PeerId| self.entries.get(&t).filter(|e| e.state == EntryState::Live).map(|e| (t, e.current));
        let told = self
            .told_referent
            .filter(|_| !self.told_provisional)
            .and_then(live)
            .or_else(|| self.referent_choice.and_then(live));
        match (told, best) {
            (Some((t, ts)), Some((b, bs))) if b != t && bs > ts * (1.0 + REFERENT_MARGIN) => Some(b),
            (Some((t, _)), _) => Some(t),
            (None, b) => b.map(|(id, _)| id),
        }
    }

    fn take_request(&mut self, req: RequestId, from: PeerId) -> Option<Request> {
        if self.requests.get(&req)?.to != from {
            return None;
        }
        self.requests.remove(&req)
    }

    /// A request failed (timeout, refusal, unreachable, or a reply of the wrong kind).
    fn fail_request(&mut self, req: RequestId, r: Request, reason: FailReason, now: Timestamp, out: &mut Vec<Action>) {
        match r.kind {
            RequestKind::Heartbeat(sent) => self.on_heartbeat_failed(r.to, req, sent, reason, now, out),
            RequestKind::CandidateProbe | RequestKind::Candidates => {
                if let Some(c) = &mut self.consensus {
                    c.waiting.remove(&req);
                }
            }
            // A silent or unreachable witness is inconclusive: not counted.
            RequestKind::Witness { .. } => {}
        }
    }
}

/// How many indexers a peer's pool holds, if it keeps one: a node keeps `max_indexers`; an indexer
/// with seeds keeps a pool of other indexers twice that size (the seed's "strict indexer", C §3);
/// an indexer without seeds keeps none.
pub fn pool_size(config: &Config, node: bool, has_seeds: bool) -> Option<usize> {
    if node {
        Some(config.max_indexers)
    } else if has_seeds {
        Some(config.max_indexers * 2)
    } else {
        None
    }
}

/// Allocates the next request id of the node role (never 0).
fn next_request(next: &mut u64) -> RequestId {
    let r = RequestId(*next);
    *next = next.wrapping_add(1).max(1);
    r
}

/// A message in the node-to-node mechanism: a witness query is answered from this peer's pool
/// (every daemon with a pool is a witness, A §6.11; without one it has seen nothing), a report
/// goes to the pool that asked.
pub fn on_message(pool: Option<&mut IndexerPool>, from: PeerId, m: NodeMessage, now: Timestamp, out: &mut Vec<Action>) {
    match (m, pool) {
        (NodeMessage::WitnessQuery(q), pool) => {
            let report = witnesses::answer(pool.as_deref(), &q);
            out.emit(NodeOut::Send { to: from, message: report.into() });
        }
        (NodeMessage::WitnessReport(r), Some(pool)) => pool.on_node_reply(from, r, now, out),
        (NodeMessage::WitnessReport(_), None) => {}
    }
}
