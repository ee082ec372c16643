//! Node role: the scored pool of indexers a node trusts (spec A §6, B §3, E F6/F8/F11/F12).
//!
//! A node keeps at most `max_pool` *active* indexers — **Pending** (added, not answering yet) or
//! **Live** (answered its last heartbeat) — and proves its liveness to each with a heartbeat on the
//! indexer's own schedule: at once when it is added, then every `heartbeat_interval`. Every reply
//! is matched to its request by [`RequestId`] (B8), which also gives the round-trip time.
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
//!   only if enough other live indexers remain, a seed only loses its seed flag (B15).
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
//! retries the seeds on the same capped back-off (A §6.10).
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

use super::config::Config;
use super::dht::select_by_fill;
use super::identity::{Did, PeerAddr, PeerId};
use super::record::{PeerRecord, ProviderRecord};
use super::rng::DetRng;
use super::score::{self, IndexerScore, ScoreFactors};
use super::time::Timestamp;
use super::wire::{
    CandidatesRequest, CandidatesResponse, Heartbeat, HeartbeatKind, HeartbeatResponse, Message, RefuseReason, Refused,
    RequestId, WitnessQuery, WitnessReport,
};
use super::{Action, AddedVia, CloseReason, Event, EvictReason, FailReason};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Margin added to the indexer's `behaviour_window` when counting our own heartbeats and probes
/// to it, absorbing latency jitter between our send times and its receive times.
const RATE_SLACK: Duration = Duration::from_secs(1);
/// Most peers whose recent send times are kept; beyond it no *new* peer is probed.
const SEND_LOG_MAX: usize = 1024;
/// Most peers kept in the misbehaviour cooldown; beyond it the one expiring first is forgotten.
const COOLDOWN_MAX: usize = 256;

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
    config: Config,
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
    next_req: u64,
    /// Recent heartbeat and probe send times per peer, oldest first.
    send_log: BTreeMap<PeerId, Vec<Timestamp>>,
    /// Peers evicted for misbehaviour, until when.
    cooldown: BTreeMap<PeerId, Timestamp>,
    /// Configured seeds whose seed flag a migration cleared.
    discharged: BTreeSet<PeerId>,
    consensus: Option<Consensus>,
    consensus_wanted: bool,
    recovery: Option<Recovery>,
    started: bool,
    shut: bool,
    /// Our signed record, sent to each indexer until it holds this version.
    record: Option<PeerRecord>,
    /// Earliest next DHT provider discovery.
    next_discovery: Timestamp,
    /// Discoveries in a row that added nothing (the interval doubles, up to 8×).
    discovery_misses: u32,
    /// A discovery is running.
    discovering: bool,
}

/// The first DHT provider discovery waits this long after start (B §4.3: a 5 s warm-up).
const DISCOVERY_WARMUP: Duration = Duration::from_secs(5);

impl IndexerPool {
    /// A pool seeded with `seeds`, holding at most `max_pool` active indexers. Seeds are
    /// heartbeated at the first call at or after `now` (see [`IndexerPool::poll_timeout`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        me: PeerId,
        did: Did,
        seeds: Vec<PeerAddr>,
        max_pool: usize,
        is_indexer: bool,
        rng: DetRng,
        now: Timestamp,
    ) -> Self {
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
            cooldown: BTreeMap::new(),
            discharged: BTreeSet::new(),
            consensus: None,
            consensus_wanted: false,
            recovery: None,
            started: false,
            shut: false,
            record: None,
            next_discovery: now + DISCOVERY_WARMUP,
            discovery_misses: 0,
            discovering: false,
        };
        for s in pool.seeds.clone() {
            let nc = pool.draw_challenge_spacing();
            pool.entries.insert(s.id, Entry::new(s, AddedVia::Seed, true, now, nc));
        }
        pool
    }

    // ---- inputs ---------------------------------------------------------------------------

    /// Handles a reply (heartbeat response, refusal, witness report, candidates) from the
    /// authenticated peer `from`. Replies with an unknown or stale request id, or from a peer
    /// other than the request's addressee, are ignored.
    pub fn on_message(&mut self, from: PeerId, m: Message, now: Timestamp, out: &mut Vec<Action>) {
        if self.shut {
            return;
        }
        self.start(out);
        match m {
            Message::HeartbeatResponse(r) => self.on_heartbeat_response(from, r, now, out),
            Message::Refused(r) => self.on_refused(from, r, now, out),
            Message::WitnessReport(r) => self.on_witness_report(from, r, now, out),
            Message::CandidatesResponse(r) => self.on_candidates(from, r, now, out),
            _ => {}
        }
        self.pump(now, out);
    }

    /// The peer cannot be reached (connection lost or could not be made): its in-flight requests
    /// fail at once, and a later `born_at` from it counts as an honest restart.
    pub fn on_unreachable(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
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
        if self.shut {
            return;
        }
        self.pump(now, out);
    }

    /// The exact earliest time at which [`IndexerPool::handle_timeout`] has work (`None`: nothing
    /// scheduled).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
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
        for e in self.entries.values() {
            if e.in_flight.is_none() {
                consider(e.next_due);
            }
        }
        if let Some(r) = &self.recovery
            && self.active_count() == 0
        {
            consider(r.next_at);
        }
        if !self.discovering && self.need() > 0 && self.entries.values().any(|e| e.state == EntryState::Live) {
            consider(self.next_discovery);
        }
        next
    }

    /// Leaves every active indexer (graceful shutdown); the pool does nothing afterwards.
    pub fn shutdown(&mut self, _now: Timestamp, out: &mut Vec<Action>) {
        if self.shut {
            return;
        }
        for (id, e) in &self.entries {
            if e.is_active() {
                out.push(Action::Send { to: *id, message: Message::Leave });
            }
        }
        self.requests.clear();
        self.consensus = None;
        self.recovery = None;
        self.shut = true;
    }

    // ---- read-only views ------------------------------------------------------------------

    /// Whether `peer` is in the pool (active or Down).
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.entries.contains_key(peer)
    }

    /// Whether `peer` is in the pool and live.
    pub fn is_live(&self, peer: &PeerId) -> bool {
        self.entries.get(peer).is_some_and(|e| e.state == EntryState::Live)
    }

    /// What we tell a witness query about `indexer`: only for an active entry that has answered.
    pub fn witness_view(&self, indexer: &PeerId) -> Option<WitnessView> {
        let e = self.entries.get(indexer)?;
        if !e.is_active() || !e.answered {
            return None;
        }
        Some(WitnessView { born_at: e.score.last_born_at?, fill_rate: e.score.last_fill_rate, score: e.current })
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

    // ---- the engine -----------------------------------------------------------------------

    /// Emits what construction could not (the seeds' addresses and `IndexerAdded`).
    fn start(&mut self, out: &mut Vec<Action>) {
        if self.started {
            return;
        }
        self.started = true;
        for (id, e) in &self.entries {
            out.push(Action::Learn(e.addr.clone()));
            out.push(Action::Event(Event::IndexerAdded { indexer: *id, via: AddedVia::Seed }));
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
        self.discover_if_due(now, out);
        self.send_due(now, out);
    }

    /// Asks the DHT for providers when the pool has room, at most every `discovery_interval`
    /// (doubling while discoveries add nothing). Needs a live indexer to start from.
    fn discover_if_due(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        if self.discovering || now < self.next_discovery || self.need() == 0 {
            return;
        }
        if !self.entries.values().any(|e| e.state == EntryState::Live) {
            return;
        }
        self.discovering = true;
        let step = self.config.discovery_interval.saturating_mul(1 << self.discovery_misses.min(3));
        self.next_discovery = now + step;
        // B §4.7: ask for three times the need, keep the best `need`.
        out.push(Action::DiscoverIndexers { want: self.need().saturating_mul(3) });
    }

    /// Providers found by a discovery: the pool takes up to its need, preferring less loaded
    /// indexers (randomised) and at most one per /24, skipping members and cooling-down peers.
    pub fn on_providers(&mut self, providers: &[ProviderRecord], now: Timestamp, out: &mut Vec<Action>) {
        self.discovering = false;
        if self.shut {
            return;
        }
        let need = self.need();
        let me = self.me;
        let entries = &self.entries;
        let cooldown = &self.cooldown;
        let picked = select_by_fill(
            providers,
            need,
            |p| *p == me || entries.contains_key(p) || cooldown.get(p).is_some_and(|t| *t > now),
            &mut self.rng,
        );
        let mut added = 0;
        for p in picked {
            if self.add_entry(p, AddedVia::Discovery, false, now, out) {
                added += 1;
            }
        }
        if added == 0 {
            self.discovery_misses = self.discovery_misses.saturating_add(1);
        } else {
            self.discovery_misses = 0;
        }
        self.pump(now, out);
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
        let r = RequestId(self.next_req);
        self.next_req = self.next_req.wrapping_add(1).max(1);
        r
    }

    /// Remembers an outgoing request until its reply or `response_timeout` (every wait is
    /// bounded, B7).
    fn track(&mut self, req: RequestId, to: PeerId, kind: RequestKind, now: Timestamp) {
        let deadline = now + self.config.response_timeout;
        self.requests.insert(req, Request { to, sent_at: now, deadline, kind });
    }

    fn draw_challenge_spacing(&mut self) -> u32 {
        let lo = u64::from(self.config.challenge_spacing_min.max(1));
        let hi = u64::from(self.config.challenge_spacing_max);
        u32::try_from(self.rng.range_inclusive(lo, hi)).unwrap_or(u32::MAX)
    }

    /// `seed_backoff_initial · 2^(n−1)`, capped exactly at `seed_backoff_max` (n ≥ 1).
    fn backoff(config: &Config, n: u32) -> Duration {
        let max = config.seed_backoff_max;
        let mut d = config.seed_backoff_initial;
        for _ in 1..n.min(64) {
            if d >= max {
                break;
            }
            d = d.saturating_mul(2);
        }
        d.min(max)
    }

    /// The best-scored live entry; ties go to the lowest peer id.
    fn referent(&self) -> Option<PeerId> {
        let mut best: Option<(PeerId, f64)> = None;
        for (id, e) in &self.entries {
            if e.state == EntryState::Live && best.is_none_or(|(_, s)| e.current > s) {
                best = Some((*id, e.current));
            }
        }
        best.map(|(id, _)| id)
    }

    fn take_request(&mut self, req: RequestId, from: PeerId) -> Option<Request> {
        if self.requests.get(&req)?.to != from {
            return None;
        }
        self.requests.remove(&req)
    }

    // ---- rate-limit safety ----------------------------------------------------------------

    fn rate_horizon(&self) -> Duration {
        self.config.behaviour_window.saturating_add(RATE_SLACK)
    }

    fn rate_budget(&self) -> usize {
        self.config.max_hb_per_minute.saturating_sub(1).max(1)
    }

    /// The earliest time at or after `now` a heartbeat or probe to `peer` keeps it within budget.
    fn rate_allowed_at(&self, peer: &PeerId, now: Timestamp) -> Timestamp {
        let Some(log) = self.send_log.get(peer) else {
            return now;
        };
        let horizon = self.rate_horizon();
        let recent: Vec<Timestamp> = log.iter().copied().filter(|t| now.since(*t) < horizon).collect();
        let budget = self.rate_budget();
        if recent.len() < budget {
            return now;
        }
        match recent.get(recent.len() - budget) {
            Some(t) => (*t + horizon).max(now),
            None => now,
        }
    }

    fn log_send(&mut self, peer: PeerId, now: Timestamp) {
        let horizon = self.rate_horizon();
        let log = self.send_log.entry(peer).or_default();
        log.retain(|t| now.since(*t) < horizon);
        log.push(now);
        if self.send_log.len() > SEND_LOG_MAX {
            self.prune_send_log(now);
        }
    }

    fn prune_send_log(&mut self, now: Timestamp) {
        let horizon = self.rate_horizon();
        self.send_log.retain(|_, log| {
            log.retain(|t| now.since(*t) < horizon);
            !log.is_empty()
        });
    }

    /// The earliest time `peer` is free of other heartbeat/probe requests (one in flight per
    /// indexer), if it is not free now.
    fn busy_until(&self, peer: &PeerId) -> Option<Timestamp> {
        self.requests
            .values()
            .filter(|r| r.to == *peer && matches!(r.kind, RequestKind::Heartbeat(_) | RequestKind::CandidateProbe))
            .map(|r| r.deadline)
            .max()
    }

    fn add_cooldown(&mut self, peer: PeerId, now: Timestamp) {
        self.cooldown.retain(|_, until| now < *until);
        self.cooldown.insert(peer, now + self.config.misbehaviour_cooldown);
        while self.cooldown.len() > COOLDOWN_MAX {
            let first = self.cooldown.iter().min_by_key(|(id, until)| (**until, **id)).map(|(id, _)| *id);
            match first {
                Some(id) => self.cooldown.remove(&id),
                None => break,
            };
        }
    }

    // ---- sending --------------------------------------------------------------------------

    /// Sends every heartbeat and retry probe that is due, or pushes it back until the peer is free
    /// and within its rate budget.
    fn send_due(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let due: Vec<PeerId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.in_flight.is_none() && e.next_due <= now)
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            return;
        }
        let referent = self.referent();
        for peer in due {
            let wait = match self.busy_until(&peer) {
                Some(busy) => Some(busy),
                None => Some(self.rate_allowed_at(&peer, now)).filter(|t| *t > now),
            };
            if let Some(t) = wait {
                if let Some(e) = self.entries.get_mut(&peer) {
                    e.next_due = e.next_due.max(t);
                }
                continue;
            }
            match self.entries.get(&peer).map(|e| e.state) {
                Some(EntryState::Down) => self.send_retry_probe(peer, now, out),
                Some(_) => self.send_heartbeat(peer, referent == Some(peer), now, out),
                None => {}
            }
        }
    }

    fn send_heartbeat(&mut self, peer: PeerId, referent: bool, now: Timestamp, out: &mut Vec<Action>) {
        let need = u16::try_from(self.need()).unwrap_or(u16::MAX);
        let mut others: Vec<PeerId> =
            self.entries.iter().filter(|(id, e)| **id != peer && e.is_active()).map(|(id, _)| *id).collect();
        let spacing = self.draw_challenge_spacing_if_due(&peer);
        let req = self.next_request();
        let Some(e) = self.entries.get_mut(&peer) else {
            return;
        };
        e.score.hb_count = e.score.hb_count.saturating_add(1);
        let mut challenges = Vec::new();
        let mut challenge_did = None;
        let challenge = spacing.is_some();
        if let Some(next) = spacing {
            e.score.hb_count = 0;
            e.score.next_challenge = next;
            e.score.challenge_total = e.score.challenge_total.saturating_add(1);
            e.score.did_batch_counter = e.score.did_batch_counter.saturating_add(1);
            if e.score.did_batch_counter % self.config.did_challenge_every.max(1) == 0 {
                challenge_did = Some(self.did.clone());
            }
            self.rng.shuffle(&mut others);
            challenges.push(self.me);
            challenges.extend(others.into_iter().take(self.config.challenge_extra_peers));
        }
        let (did, name) = if e.acknowledged {
            (None, None)
        } else {
            (Some(self.did.clone()), Some(self.config.name.clone()).filter(|n| !n.is_empty()))
        };
        // The record travels only while this indexer does not hold its current version.
        let record = self.record.as_ref().filter(|r| e.record_held != Some(r.body.expires_at)).cloned();
        let sent = HeartbeatSent {
            retry: false,
            challenge,
            did_challenge: challenge_did.is_some(),
            want_witnesses: challenge,
        };
        e.in_flight = Some(req);
        e.next_due = now + self.config.heartbeat_interval;
        self.track(req, peer, RequestKind::Heartbeat(sent), now);
        self.log_send(peer, now);
        out.push(Action::Send {
            to: peer,
            message: Message::Heartbeat(Heartbeat {
                req,
                kind: HeartbeatKind::Regular,
                need,
                referent,
                is_indexer: self.is_indexer,
                challenges,
                challenge_did,
                want_witnesses: challenge,
                did,
                name,
                record,
            }),
        });
    }

    /// If the next heartbeat to `peer` is a challenge batch, draws the spacing to the one after.
    fn draw_challenge_spacing_if_due(&mut self, peer: &PeerId) -> Option<u32> {
        let e = self.entries.get(peer)?;
        if e.score.hb_count.saturating_add(1) >= e.score.next_challenge {
            Some(self.draw_challenge_spacing())
        } else {
            None
        }
    }

    fn probe_message(&self, req: RequestId) -> Message {
        Message::Heartbeat(Heartbeat {
            need: u16::try_from(self.need()).unwrap_or(u16::MAX),
            is_indexer: self.is_indexer,
            ..Heartbeat::bare(req, HeartbeatKind::Probe)
        })
    }

    fn send_retry_probe(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        let req = self.next_request();
        let message = self.probe_message(req);
        let Some(e) = self.entries.get_mut(&peer) else {
            return;
        };
        e.retries = e.retries.saturating_add(1);
        e.next_due = now + Self::backoff(&self.config, e.retries.saturating_add(1));
        e.in_flight = Some(req);
        let sent = HeartbeatSent { retry: true, challenge: false, did_challenge: false, want_witnesses: false };
        self.track(req, peer, RequestKind::Heartbeat(sent), now);
        self.log_send(peer, now);
        out.push(Action::Send { to: peer, message });
    }

    // ---- replies --------------------------------------------------------------------------

    fn on_heartbeat_response(&mut self, from: PeerId, r: HeartbeatResponse, now: Timestamp, out: &mut Vec<Action>) {
        let Some(req) = self.take_request(r.req, from) else {
            return;
        };
        match req.kind {
            RequestKind::Heartbeat(sent) => self.on_indexer_answer(from, r.req, req.sent_at, sent, r, now, out),
            RequestKind::CandidateProbe => {
                let s = score::quick_score(Some(&r), now.since(req.sent_at), &self.config);
                if let Some(c) = &mut self.consensus
                    && c.waiting.remove(&r.req)
                    && let Some(slot) = c.scores.get_mut(&from)
                {
                    slot.1 = s;
                }
            }
            // The wrong kind of reply fails the request.
            _ => self.fail_request(r.req, req, FailReason::Timeout, now, out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_indexer_answer(
        &mut self,
        from: PeerId,
        req: RequestId,
        sent_at: Timestamp,
        sent: HeartbeatSent,
        r: HeartbeatResponse,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let me = self.me;
        let cfg = &self.config;
        let Some(e) = self.entries.get_mut(&from) else {
            return;
        };
        if e.in_flight != Some(req) {
            return;
        }
        e.in_flight = None;
        // A DID challenge's answer waits for a DHT lookup: its round trip is not the indexer's
        // latency.
        if !sent.did_challenge {
            let rtt = now.since(sent_at);
            e.last_rtt = Some(rtt);
            e.latency = score::latency_score(rtt, cfg);
        }
        if !sent.retry {
            e.record_held = r.record_expires;
        }
        e.score.uptime.record_heartbeat(now, cfg.liveness_interval.saturating_mul(2));
        match e.score.last_born_at {
            Some(old) if old != r.born_at => {
                let explained = e.failure_since_answer && r.born_at > old;
                if !explained {
                    e.score.born_at_changes = e.score.born_at_changes.saturating_add(1);
                }
                e.score.last_born_at = Some(r.born_at);
            }
            Some(_) => {}
            None => e.score.last_born_at = Some(r.born_at),
        }
        e.failure_since_answer = false;
        e.answered = true;
        if !sent.retry {
            e.acknowledged = true;
            e.retries = 0;
        }
        e.score.last_fill_rate = score::sanitize_unit(r.fill_rate, 1.0);
        if r.max_nodes > 0 {
            e.score.fill_checked = e.score.fill_checked.saturating_add(1);
            let expected = f64::from(r.peer_count) / f64::from(r.max_nodes);
            if (expected - r.fill_rate).abs() < cfg.fill_tolerance {
                e.score.fill_consistent = e.score.fill_consistent.saturating_add(1);
            }
        }
        if sent.challenge {
            let recent = cfg.liveness_interval.saturating_mul(2);
            let correct = r.challenges.iter().find(|c| c.peer == me).is_some_and(|c| {
                c.found && c.last_seen.is_some_and(|t| now.since(t) < recent && t.since(now) < recent)
            });
            e.score.challenge_answered = e.score.challenge_answered.saturating_add(1);
            if correct {
                e.score.challenge_correct = e.score.challenge_correct.saturating_add(1);
            }
        }
        if sent.did_challenge {
            e.score.did_checked = e.score.did_checked.saturating_add(1);
            // Found only if the DHT returned our own record, intact.
            let ours = r
                .did_record
                .as_ref()
                .is_some_and(|rec| rec.body.peer_id == me && rec.body.did == self.did && rec.verify(now).is_ok());
            if r.did_found == Some(true) && ours {
                e.score.did_success = e.score.did_success.saturating_add(1);
            }
        }
        match e.state {
            EntryState::Live => {}
            EntryState::Pending => {
                e.state = EntryState::Live;
                out.push(Action::Event(Event::IndexerLive { indexer: from }));
            }
            EntryState::Down => {
                if !self.readmit_seed(from, now, out) {
                    self.rescore(&from, now);
                    return;
                }
            }
        }
        if !sent.retry {
            // A session is acknowledged: seed recovery is over.
            self.recovery = None;
        }
        if sent.want_witnesses {
            self.query_witnesses(from, &r, now, out);
        }
        self.rescore(&from, now);
        if let Some(reason) = self.eviction_reason(&from, now) {
            self.evict(from, reason, now, out);
            return;
        }
        self.add_suggestions(&r.suggestions, now, out);
        if r.suggest_migrate && !sent.retry {
            self.on_suggest_migrate(from, now, out);
        }
    }

    /// A Down seed answered its retry probe: bring it back, making room if the pool is full.
    fn readmit_seed(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) -> bool {
        if self.active_count() >= self.max_pool {
            let worst = self
                .entries
                .iter()
                .filter(|(_, e)| e.is_active() && !e.is_seed)
                .min_by(|a, b| a.1.current.total_cmp(&b.1.current).then(b.0.cmp(a.0)))
                .map(|(id, _)| *id);
            match worst {
                Some(w) => self.evict(w, EvictReason::MadeRoomForSeed, now, out),
                None => return false,
            }
        }
        let Some(e) = self.entries.get_mut(&peer) else {
            return false;
        };
        e.state = EntryState::Live;
        e.retries = 0;
        e.next_due = now;
        out.push(Action::Event(Event::IndexerLive { indexer: peer }));
        true
    }

    fn query_witnesses(&mut self, indexer: PeerId, r: &HeartbeatResponse, now: Timestamp, out: &mut Vec<Action>) {
        // Each query opens a connection to another node: ask `witness_queries` of the returned
        // witnesses, drawn at random by us (not in the order the indexer chose).
        let mut seen: BTreeSet<PeerId> = BTreeSet::new();
        let mut candidates: Vec<&PeerAddr> = r
            .witnesses
            .iter()
            .filter(|w| w.id != self.me && w.id != indexer && seen.insert(w.id))
            .take(self.config.max_witnesses)
            .collect();
        self.rng.shuffle(&mut candidates);
        candidates.truncate(self.config.witness_queries);
        for w in candidates {
            let req = self.next_request();
            self.track(req, w.id, RequestKind::Witness { indexer, born_at: r.born_at, fill_rate: r.fill_rate }, now);
            out.push(Action::Learn(w.clone()));
            out.push(Action::Send { to: w.id, message: Message::WitnessQuery(WitnessQuery { req, indexer }) });
        }
    }

    fn on_refused(&mut self, from: PeerId, r: Refused, now: Timestamp, out: &mut Vec<Action>) {
        let Some(req) = self.take_request(r.req, from) else {
            return;
        };
        // A pool member that refuses may still point elsewhere; add those first, so the refusing
        // indexer is not mistaken for the last one.
        if matches!(req.kind, RequestKind::Heartbeat(_)) && self.entries.contains_key(&from) {
            self.add_suggestions(&r.suggestions, now, out);
        }
        self.fail_request(r.req, req, FailReason::Refused(r.reason), now, out);
    }

    fn on_witness_report(&mut self, from: PeerId, r: WitnessReport, now: Timestamp, out: &mut Vec<Action>) {
        let Some(req) = self.take_request(r.req, from) else {
            return;
        };
        let RequestKind::Witness { indexer, born_at, fill_rate } = req.kind else {
            self.fail_request(r.req, req, FailReason::Timeout, now, out);
            return;
        };
        let tolerance = self.config.witness_fill_tolerance;
        let Some(e) = self.entries.get_mut(&indexer) else {
            return;
        };
        let consistent = r.seen && r.born_at == Some(born_at) && (r.fill_rate - fill_rate).abs() < tolerance;
        e.score.witness_checked = e.score.witness_checked.saturating_add(1);
        if consistent {
            e.score.witness_consistent = e.score.witness_consistent.saturating_add(1);
        }
        self.rescore(&indexer, now);
        if let Some(reason) = self.eviction_reason(&indexer, now) {
            self.evict(indexer, reason, now, out);
        }
    }

    fn on_candidates(&mut self, from: PeerId, r: CandidatesResponse, now: Timestamp, out: &mut Vec<Action>) {
        let Some(req) = self.take_request(r.req, from) else {
            return;
        };
        if !matches!(req.kind, RequestKind::Candidates) {
            self.fail_request(r.req, req, FailReason::Timeout, now, out);
            return;
        }
        let per_voter = self.config.max_candidates;
        let cap = per_voter.saturating_mul(self.max_pool.max(1)).saturating_mul(2);
        if let Some(c) = &mut self.consensus
            && c.waiting.remove(&r.req)
        {
            let room = cap.saturating_sub(c.received.len()).min(per_voter);
            c.received.extend(r.candidates.into_iter().take(room));
        }
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

    fn on_heartbeat_failed(
        &mut self,
        peer: PeerId,
        req: RequestId,
        _sent: HeartbeatSent,
        reason: FailReason,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let others_active = self.active_count() > 1;
        let max_failures = self.config.last_indexer_max_failures;
        let Some(e) = self.entries.get_mut(&peer) else {
            return;
        };
        if e.in_flight != Some(req) {
            return;
        }
        e.in_flight = None;
        e.failure_since_answer = true;
        e.acknowledged = false;
        e.score.uptime.consecutive_fails = e.score.uptime.consecutive_fails.saturating_add(1);
        if e.state == EntryState::Down {
            // A retry probe failed; the next one is already scheduled.
            return;
        }
        e.state = EntryState::Pending;
        if reason == FailReason::Refused(RefuseReason::Busy) && e.score.uptime.consecutive_fails < max_failures {
            // The indexer's burst guard said "not now" (B §9.2): it is alive and answering, so this
            // is no failure of the indexer. Keep the slot and retry after half to one heartbeat
            // interval, jittered so that refused nodes do not all come back in step; after
            // `last_indexer_max_failures` refusals in a row it counts as a failure below.
            let half = self.config.heartbeat_interval / 2;
            let jitter = Duration::from_millis(self.rng.below(crate::proto::time::duration_ms(half) + 1));
            e.next_due = now + half + jitter;
            return;
        }
        if e.is_seed {
            e.state = EntryState::Down;
            e.next_due = now + Self::backoff(&self.config, e.retries.saturating_add(1));
            out.push(Action::Event(Event::IndexerDown { indexer: peer, reason }));
            // Its slot is free: fill it with others.
            self.consensus_wanted = true;
            return;
        }
        if others_active || e.score.uptime.consecutive_fails >= max_failures {
            self.evict(peer, EvictReason::HeartbeatFailed(reason), now, out);
        }
    }

    // ---- scoring and eviction -------------------------------------------------------------

    fn rescore(&mut self, peer: &PeerId, now: Timestamp) {
        let cfg = &self.config;
        if let Some(e) = self.entries.get_mut(peer)
            && e.answered
        {
            e.factors = e.score.factors(e.latency, now, cfg);
            e.current = e.factors.score();
        }
    }

    fn eviction_reason(&self, peer: &PeerId, now: Timestamp) -> Option<EvictReason> {
        let cfg = &self.config;
        let e = self.entries.get(peer)?;
        if e.state != EntryState::Live || e.score.uptime.total_online < cfg.eviction_grace {
            return None;
        }
        let s = &e.score;
        // Proof of lying needs answers: a refused or lost heartbeat is a failure, not a lie.
        let answered = s.challenge_answered;
        if answered >= 2 && f64::from(s.challenge_correct) / f64::from(answered) < cfg.min_challenge_accuracy {
            return Some(EvictReason::FailedChallenges);
        }
        if s.fill_checked >= 3 && s.fill_consistency() < cfg.min_fill_consistency {
            return Some(EvictReason::InconsistentFill);
        }
        if s.witness_checked >= 3 && s.witness_consistency() < cfg.min_witness_consistency {
            return Some(EvictReason::WitnessesDisagree);
        }
        if !e.is_seed && self.active_count() > 1 && e.current < cfg.dynamic_min_score(now.since(e.added_at)) {
            return Some(EvictReason::LowScore);
        }
        None
    }

    /// Removes `peer` from the pool. Only this entry is touched (B4).
    fn evict(&mut self, peer: PeerId, reason: EvictReason, now: Timestamp, out: &mut Vec<Action>) {
        let Some(e) = self.entries.remove(&peer) else {
            return;
        };
        if let Some(req) = e.in_flight {
            self.requests.remove(&req);
        }
        out.push(Action::Event(Event::IndexerEvicted { indexer: peer, reason }));
        if !matches!(reason, EvictReason::HeartbeatFailed(_)) {
            // It is alive: tell it, so it frees our session at once.
            out.push(Action::Send { to: peer, message: Message::Leave });
            out.push(Action::Close { peer, reason: CloseReason::Evicted });
        }
        let misbehaved = matches!(
            reason,
            EvictReason::LowScore
                | EvictReason::FailedChallenges
                | EvictReason::InconsistentFill
                | EvictReason::WitnessesDisagree
        );
        if misbehaved {
            self.add_cooldown(peer, now);
            if e.is_seed {
                // A sticky seed is retried, from scratch, once its cooldown is over.
                let nc = self.draw_challenge_spacing();
                let mut down = Entry::new(e.addr, AddedVia::Seed, true, now, nc);
                down.state = EntryState::Down;
                down.next_due = now + self.config.misbehaviour_cooldown;
                self.entries.insert(peer, down);
                out.push(Action::Event(Event::IndexerAdded { indexer: peer, via: AddedVia::Seed }));
            }
        }
        self.consensus_wanted = true;
    }

    fn on_suggest_migrate(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        let Some(is_seed) = self.entries.get(&peer).map(|e| e.is_seed) else {
            return;
        };
        let other_live: Vec<bool> = self
            .entries
            .iter()
            .filter(|(id, e)| **id != peer && e.state == EntryState::Live)
            .map(|(_, e)| e.is_seed)
            .collect();
        if is_seed {
            let non_seed_live = other_live.iter().filter(|s| !**s).count();
            if non_seed_live >= self.min_pool
                && let Some(e) = self.entries.get_mut(&peer)
            {
                e.is_seed = false;
                self.discharged.insert(peer);
            }
        } else if other_live.len() >= self.min_pool {
            self.evict(peer, EvictReason::Migrated, now, out);
        }
    }

    // ---- refilling ------------------------------------------------------------------------

    /// Adds a new Pending entry (heartbeated at once), if allowed.
    fn add_entry(
        &mut self,
        addr: PeerAddr,
        via: AddedVia,
        is_seed: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> bool {
        let id = addr.id;
        if id == self.me
            || self.entries.contains_key(&id)
            || self.in_cooldown(&id, now)
            || self.active_count() >= self.max_pool
        {
            return false;
        }
        let nc = self.draw_challenge_spacing();
        out.push(Action::Learn(addr.clone()));
        out.push(Action::Event(Event::IndexerAdded { indexer: id, via }));
        self.entries.insert(id, Entry::new(addr, via, is_seed, now, nc));
        if is_seed {
            self.discharged.remove(&id);
        }
        true
    }

    fn add_suggestions(&mut self, suggestions: &[PeerAddr], now: Timestamp, out: &mut Vec<Action>) {
        for s in suggestions {
            if self.active_count() >= self.max_pool {
                break;
            }
            self.add_entry(s.clone(), AddedVia::Suggestion, false, now, out);
        }
    }

    /// Re-adds configured seeds that are not in the pool (nor cooling down) while there is room.
    fn seed_refill(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        for s in self.seeds.clone() {
            if self.active_count() >= self.max_pool {
                break;
            }
            self.add_entry(s, AddedVia::Seed, true, now, out);
        }
    }

    /// After membership changes: start a wanted consensus round, or refill from the seeds, and
    /// arm seed recovery when no indexer is active.
    fn follow_up(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        if self.consensus.is_none() && self.consensus_wanted {
            self.consensus_wanted = false;
            if self.need() > 0 {
                if self.entries.values().any(Self::is_voter) {
                    self.start_consensus(now, out);
                } else {
                    self.seed_refill(now, out);
                }
            }
        }
        if self.active_count() == 0 && self.recovery.is_none() && !self.seeds.is_empty() {
            self.recovery = Some(Recovery { attempt: 0, next_at: now + Self::backoff(&self.config, 1) });
        }
    }

    fn recovery_step(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        if self.active_count() > 0 {
            return;
        }
        let Some(r) = &self.recovery else {
            return;
        };
        if r.next_at > now {
            return;
        }
        let attempt = r.attempt.saturating_add(1);
        self.seed_refill(now, out);
        let cooldown = &self.cooldown;
        for (id, e) in self.entries.iter_mut() {
            let cooling = cooldown.get(id).is_some_and(|until| now < *until);
            if e.state == EntryState::Down && e.in_flight.is_none() && !cooling && e.next_due > now {
                e.next_due = now;
            }
        }
        let next_in = Self::backoff(&self.config, attempt.saturating_add(1));
        self.recovery = Some(Recovery { attempt, next_at: now + next_in });
        out.push(Action::Event(Event::SeedRecovery { attempt, next_in }));
    }

    fn start_consensus(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let need = self.need();
        let count = need.saturating_add(self.config.consensus_extra_candidates).min(self.config.max_candidates);
        let count = u16::try_from(count).unwrap_or(u16::MAX);
        let voters: Vec<PeerId> = self.entries.iter().filter(|(_, e)| Self::is_voter(e)).map(|(id, _)| *id).collect();
        let mut waiting = BTreeSet::new();
        for v in voters {
            let req = self.next_request();
            self.track(req, v, RequestKind::Candidates, now);
            waiting.insert(req);
            out.push(Action::Send { to: v, message: Message::CandidatesRequest(CandidatesRequest { req, count }) });
        }
        self.consensus =
            Some(Consensus { probing: false, waiting, received: Vec::new(), scores: BTreeMap::new(), candidates: 0 });
    }

    fn consensus_progress(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        loop {
            let Some(c) = &self.consensus else {
                return;
            };
            if !c.waiting.is_empty() {
                return;
            }
            if c.probing {
                self.finish_consensus(now, out);
                return;
            }
            self.probe_candidates(now, out);
        }
    }

    fn probe_candidates(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let Some(mut c) = self.consensus.take() else {
            return;
        };
        let mut seen = BTreeSet::new();
        let mut candidates: Vec<PeerAddr> = Vec::new();
        for a in std::mem::take(&mut c.received) {
            if a.id == self.me || self.entries.contains_key(&a.id) || self.in_cooldown(&a.id, now) || !seen.insert(a.id)
            {
                continue;
            }
            candidates.push(a);
        }
        self.rng.shuffle(&mut candidates);
        candidates.truncate(self.config.max_candidates);
        c.candidates = candidates.len();
        c.probing = true;
        if self.send_log.len() >= SEND_LOG_MAX {
            self.prune_send_log(now);
        }
        for a in candidates {
            let id = a.id;
            c.scores.insert(id, (a.clone(), 0.0));
            let log_room = self.send_log.contains_key(&id) || self.send_log.len() < SEND_LOG_MAX;
            if !log_room || self.busy_until(&id).is_some() || self.rate_allowed_at(&id, now) > now {
                // Over budget: not probed, scores 0.
                continue;
            }
            let req = self.next_request();
            let message = self.probe_message(req);
            self.track(req, id, RequestKind::CandidateProbe, now);
            c.waiting.insert(req);
            self.log_send(id, now);
            out.push(Action::Learn(a));
            out.push(Action::Send { to: id, message });
        }
        self.consensus = Some(c);
    }

    fn finish_consensus(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let Some(c) = self.consensus.take() else {
            return;
        };
        let mut ranked: Vec<(PeerAddr, f64)> = c.scores.into_values().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.id.cmp(&b.0.id)));
        let floor = self.config.min_score_start;
        let mut admitted = 0;
        for (addr, s) in ranked {
            if self.need() == 0 || s < floor {
                break;
            }
            if self.add_entry(addr, AddedVia::Consensus, false, now, out) {
                admitted += 1;
            }
        }
        out.push(Action::Event(Event::ConsensusFinished { candidates: c.candidates, admitted }));
        if admitted == 0 {
            self.seed_refill(now, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::identity::Keypair;
    use crate::proto::wire::ChallengeEntry;
    use proptest::prelude::*;

    const T0: Timestamp = Timestamp(1_000_000);

    fn pid(label: &str) -> PeerId {
        Keypair::derive(42, label).peer_id()
    }

    fn addrs(ids: &[PeerId]) -> Vec<PeerAddr> {
        ids.iter().map(|p| PeerAddr::id_only(*p)).collect()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[derive(Clone, Debug, PartialEq)]
    enum Mode {
        Up,
        Silent,
        Unreachable,
        Refuse(RefuseReason),
    }

    /// An indexer played by the test.
    #[derive(Clone, Debug)]
    struct Ix {
        mode: Mode,
        /// How it answers probes, when different from `mode`.
        probe_mode: Option<Mode>,
        born_at: Timestamp,
        flap_born_at: bool,
        answers: u64,
        fill: f64,
        peer_count: u32,
        max_nodes: u32,
        lie_challenges: bool,
        latency_ms: u64,
        candidates: Vec<PeerId>,
        suggestions: Vec<PeerId>,
        witnesses: Vec<PeerId>,
        migrate: bool,
    }

    impl Ix {
        fn honest() -> Self {
            Ix {
                mode: Mode::Up,
                probe_mode: None,
                born_at: Timestamp(500),
                flap_born_at: false,
                answers: 0,
                fill: 0.1,
                peer_count: 50,
                max_nodes: 500,
                lie_challenges: false,
                latency_ms: 40,
                candidates: Vec::new(),
                suggestions: Vec::new(),
                witnesses: Vec::new(),
                migrate: false,
            }
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum WitnessMode {
        Agree,
        NotSeen,
        WrongBornAt,
        Silent,
    }

    enum Delivery {
        Msg(PeerId, Message),
        Unreachable(PeerId),
    }

    /// A node's pool in a tiny world of hand-played indexers and witnesses.
    struct Net {
        pool: IndexerPool,
        me: PeerId,
        now: Timestamp,
        ix: BTreeMap<PeerId, Ix>,
        witnesses: BTreeMap<PeerId, WitnessMode>,
        queue: BTreeMap<(Timestamp, u64), Delivery>,
        seq: u64,
        sent: Vec<(Timestamp, PeerId, Message)>,
        events: Vec<(Timestamp, Event)>,
        closed: Vec<PeerId>,
        learned: BTreeSet<PeerId>,
        /// The node's own record, which honest indexers hand back to DID challenges.
        record: Option<PeerRecord>,
    }

    impl Net {
        fn new(config: Config, seeds: &[PeerId], max_pool: usize) -> Self {
            let me = pid("me");
            let did = Did::new("did:me").expect("valid did");
            let body = crate::proto::record::RecordBody {
                peer_id: me,
                did: did.clone(),
                name: String::new(),
                addrs: Vec::new(),
                api_url: None,
                nats_address: None,
                wallet: None,
                issued_at: T0,
                expires_at: T0 + Duration::from_secs(3600),
            };
            let record = PeerRecord::sign(body, &Keypair::derive(42, "me")).ok();
            let mut pool = IndexerPool::new(config, me, did, addrs(seeds), max_pool, false, DetRng::new(7, "pool"), T0);
            if let Some(r) = &record {
                pool.set_record(r.clone());
            }
            Net {
                record,
                pool,
                me,
                now: T0,
                ix: BTreeMap::new(),
                witnesses: BTreeMap::new(),
                queue: BTreeMap::new(),
                seq: 0,
                sent: Vec::new(),
                events: Vec::new(),
                closed: Vec::new(),
                learned: BTreeSet::new(),
            }
        }

        fn with(mut self, p: PeerId, ix: Ix) -> Self {
            self.ix.insert(p, ix);
            self
        }

        fn ixm(&mut self, p: PeerId) -> &mut Ix {
            self.ix.get_mut(&p).expect("known indexer")
        }

        fn schedule(&mut self, delay_ms: u64, d: Delivery) {
            self.seq += 1;
            self.queue.insert((self.now + Duration::from_millis(delay_ms), self.seq), d);
        }

        fn drain(&mut self, out: Vec<Action>) {
            for a in out {
                match a {
                    Action::Send { to, message } => {
                        self.sent.push((self.now, to, message.clone()));
                        self.respond(to, message);
                    }
                    Action::Event(e) => self.events.push((self.now, e)),
                    Action::Close { peer, .. } => {
                        // The router reports a closed connection back as unreachable.
                        self.closed.push(peer);
                        self.schedule(0, Delivery::Unreachable(peer));
                    }
                    Action::Learn(pa) => {
                        self.learned.insert(pa.id);
                    }
                    Action::DiscoverIndexers { .. } => {}
                }
            }
        }

        fn respond(&mut self, to: PeerId, message: Message) {
            let now = self.now;
            match message {
                Message::Heartbeat(hb) => {
                    let Some(ix) = self.ix.get_mut(&to) else {
                        return;
                    };
                    let mode = match (&ix.probe_mode, hb.kind) {
                        (Some(m), HeartbeatKind::Probe) => m.clone(),
                        _ => ix.mode.clone(),
                    };
                    let lat = ix.latency_ms;
                    let reply = match mode {
                        Mode::Silent => None,
                        Mode::Unreachable => {
                            self.schedule(0, Delivery::Unreachable(to));
                            None
                        }
                        Mode::Refuse(reason) => {
                            Some(Message::Refused(Refused { req: hb.req, reason, suggestions: addrs(&ix.suggestions) }))
                        }
                        Mode::Up => {
                            ix.answers += 1;
                            let born_at = if ix.flap_born_at {
                                Timestamp(ix.born_at.0 + (ix.answers % 2) * 1000)
                            } else {
                                ix.born_at
                            };
                            Some(Message::HeartbeatResponse(HeartbeatResponse {
                                req: hb.req,
                                fill_rate: ix.fill,
                                peer_count: ix.peer_count,
                                max_nodes: ix.max_nodes,
                                born_at,
                                challenges: hb
                                    .challenges
                                    .iter()
                                    .map(|c| ChallengeEntry {
                                        peer: *c,
                                        found: !ix.lie_challenges,
                                        last_seen: Some(now),
                                    })
                                    .collect(),
                                did_found: hb.challenge_did.as_ref().map(|_| !ix.lie_challenges),
                                did_record: hb
                                    .challenge_did
                                    .as_ref()
                                    .and(self.record.clone())
                                    .filter(|_| !ix.lie_challenges),
                                record_expires: self.record.as_ref().map(|r| r.body.expires_at),
                                witnesses: if hb.want_witnesses { addrs(&ix.witnesses) } else { Vec::new() },
                                suggestions: addrs(&ix.suggestions),
                                suggest_migrate: ix.migrate,
                            }))
                        }
                    };
                    if let Some(m) = reply {
                        self.schedule(lat, Delivery::Msg(to, m));
                    }
                }
                Message::CandidatesRequest(q) => {
                    let Some(ix) = self.ix.get(&to) else {
                        return;
                    };
                    if ix.mode == Mode::Up {
                        let m = Message::CandidatesResponse(CandidatesResponse {
                            req: q.req,
                            candidates: addrs(&ix.candidates),
                        });
                        let lat = ix.latency_ms;
                        self.schedule(lat, Delivery::Msg(to, m));
                    }
                }
                Message::WitnessQuery(q) => {
                    let Some(mode) = self.witnesses.get(&to).copied() else {
                        return;
                    };
                    let (born_at, fill) = self.ix.get(&q.indexer).map(|i| (i.born_at, i.fill)).unwrap_or_default();
                    let report = match mode {
                        WitnessMode::Silent => return,
                        WitnessMode::Agree => WitnessReport {
                            req: q.req,
                            seen: true,
                            born_at: Some(born_at),
                            fill_rate: fill,
                            score: 70.0,
                        },
                        WitnessMode::NotSeen => {
                            WitnessReport { req: q.req, seen: false, born_at: None, fill_rate: 0.0, score: 0.0 }
                        }
                        WitnessMode::WrongBornAt => WitnessReport {
                            req: q.req,
                            seen: true,
                            born_at: Some(Timestamp(born_at.0 + 77)),
                            fill_rate: fill,
                            score: 70.0,
                        },
                    };
                    self.schedule(30, Delivery::Msg(to, Message::WitnessReport(report)));
                }
                _ => {}
            }
        }

        /// Plays the world until `t`: deliveries and pool timers in time order.
        fn run_until(&mut self, t: Timestamp) {
            loop {
                let timer = self.pool.poll_timeout();
                let msg = self.queue.keys().next().map(|k| k.0);
                let Some(next) = [timer, msg].into_iter().flatten().min() else {
                    break;
                };
                if next > t {
                    break;
                }
                assert!(next >= self.now, "deadline in the past: {next:?} < {:?}", self.now);
                self.now = next;
                let mut out = Vec::new();
                if msg == Some(next) {
                    let Some((_, d)) = self.queue.pop_first() else {
                        break;
                    };
                    match d {
                        Delivery::Msg(from, m) => self.pool.on_message(from, m, next, &mut out),
                        Delivery::Unreachable(p) => self.pool.on_unreachable(p, next, &mut out),
                    }
                } else {
                    self.pool.handle_timeout(next, &mut out);
                    assert!(self.pool.poll_timeout().is_none_or(|x| x > next), "handle_timeout left work due");
                }
                self.drain(out);
            }
            if t > self.now {
                self.now = t;
            }
        }

        fn run_for(&mut self, d: Duration) {
            self.run_until(self.now + d);
        }

        /// Delivers a message now, by hand.
        fn deliver(&mut self, from: PeerId, m: Message) {
            let mut out = Vec::new();
            self.pool.on_message(from, m, self.now, &mut out);
            self.drain(out);
        }

        fn heartbeats_to(&self, p: PeerId) -> Vec<(Timestamp, Heartbeat)> {
            self.sent
                .iter()
                .filter_map(|(t, to, m)| match m {
                    Message::Heartbeat(hb) if *to == p => Some((*t, hb.clone())),
                    _ => None,
                })
                .collect()
        }

        fn regular_heartbeats_to(&self, p: PeerId) -> Vec<(Timestamp, Heartbeat)> {
            self.heartbeats_to(p).into_iter().filter(|(_, hb)| hb.kind == HeartbeatKind::Regular).collect()
        }

        fn probes_to(&self, p: PeerId) -> Vec<Timestamp> {
            self.heartbeats_to(p).into_iter().filter(|(_, hb)| hb.kind == HeartbeatKind::Probe).map(|x| x.0).collect()
        }

        fn evictions(&self) -> Vec<(Timestamp, PeerId, EvictReason)> {
            self.events
                .iter()
                .filter_map(|(t, e)| match e {
                    Event::IndexerEvicted { indexer, reason } => Some((*t, *indexer, *reason)),
                    _ => None,
                })
                .collect()
        }

        fn added(&self, p: PeerId) -> Vec<(Timestamp, AddedVia)> {
            self.events
                .iter()
                .filter_map(|(t, e)| match e {
                    Event::IndexerAdded { indexer, via } if *indexer == p => Some((*t, *via)),
                    _ => None,
                })
                .collect()
        }

        fn live_events(&self, p: PeerId) -> usize {
            self.events.iter().filter(|(_, e)| matches!(e, Event::IndexerLive { indexer } if *indexer == p)).count()
        }

        fn sent_to(&self, p: PeerId, kind: &str) -> usize {
            self.sent.iter().filter(|(_, to, m)| *to == p && m.kind() == kind).count()
        }

        fn view(&self, p: PeerId) -> Option<PoolEntryView> {
            self.pool.entries().find(|v| v.peer == p)
        }

        fn score_of(&self, p: PeerId) -> &IndexerScore {
            &self.pool.entries.get(&p).expect("in pool").score
        }
    }

    #[test]
    fn seeds_are_heartbeated_at_start_and_become_live() {
        let (a, b) = (pid("s1"), pid("s2"));
        let mut net = Net::new(Config::default(), &[a, b], 5).with(a, Ix::honest()).with(b, Ix::honest());
        assert_eq!(net.pool.poll_timeout(), Some(T0));
        net.run_for(secs(1));
        for p in [a, b] {
            let hbs = net.heartbeats_to(p);
            assert_eq!(hbs.len(), 1);
            let (t, hb) = &hbs[0];
            assert_eq!(*t, T0);
            assert_eq!(hb.kind, HeartbeatKind::Regular);
            assert_eq!(hb.need, 3);
            assert!(!hb.referent, "no referent while nothing is live");
            assert!(hb.did.is_some(), "DID sent until the indexer answered");
            assert!(net.learned.contains(&p));
            assert_eq!(net.added(p), vec![(T0, AddedVia::Seed)]);
            assert_eq!(net.live_events(p), 1);
            assert!(net.pool.is_live(&p));
        }
        assert_eq!(net.pool.live_count(), 2);
        assert_eq!(net.pool.len(), 2);
        net.run_for(secs(20));
        for p in [a, b] {
            let hbs = net.heartbeats_to(p);
            assert_eq!(hbs.len(), 2);
            assert_eq!(hbs[1].0, T0 + secs(20));
            assert!(hbs[1].1.did.is_none(), "acknowledged: no DID");
        }
        assert_eq!(net.live_events(a), 1, "IndexerLive once per transition");
    }

    #[test]
    fn pool_without_seeds_just_waits() {
        let mut net = Net::new(Config::default(), &[], 5);
        assert_eq!(net.pool.poll_timeout(), None);
        net.run_for(secs(3600));
        let mut out = Vec::new();
        net.pool.handle_timeout(net.now, &mut out);
        assert!(out.is_empty());
        assert_eq!(net.pool.poll_timeout(), None);
    }

    #[test]
    fn seeds_are_deduplicated_self_filtered_and_truncated() {
        let me = pid("me");
        let s: Vec<PeerId> = (0..5).map(|i| pid(&format!("s{i}"))).collect();
        let list = [me, s[0], s[1], s[0], s[2], s[3], s[4]];
        let net = Net::new(Config::default(), &list, 3);
        assert_eq!(net.pool.seeds().len(), 3);
        assert!(net.pool.seeds().iter().all(|x| x.id != me));
        let ids: BTreeSet<PeerId> = net.pool.seeds().iter().map(|x| x.id).collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(net.pool.len(), 3);
    }

    #[test]
    fn referent_is_the_best_scored_live_indexer() {
        let (a, b, c) = (pid("a"), pid("b"), pid("c"));
        let slow = |ms| Ix { latency_ms: ms, ..Ix::honest() };
        let mut net =
            Net::new(Config::default(), &[a, b, c], 5).with(a, slow(1500)).with(b, slow(40)).with(c, slow(3000));
        net.run_for(secs(61));
        let mut rounds: BTreeMap<Timestamp, Vec<(PeerId, bool)>> = BTreeMap::new();
        for p in [a, b, c] {
            for (t, hb) in net.heartbeats_to(p) {
                rounds.entry(t).or_default().push((p, hb.referent));
            }
        }
        assert_eq!(rounds.len(), 4);
        for (t, hbs) in &rounds {
            let refs: Vec<PeerId> = hbs.iter().filter(|x| x.1).map(|x| x.0).collect();
            if *t == T0 {
                assert!(refs.is_empty());
            } else {
                assert_eq!(refs, vec![b], "exactly one referent, the fastest");
            }
        }
        let views: Vec<PoolEntryView> = net.pool.entries().collect();
        let best = views.iter().max_by(|x, y| x.score.total_cmp(&y.score)).map(|v| v.peer);
        assert_eq!(best, Some(b));
        assert_eq!(views.iter().filter(|v| v.referent).map(|v| v.peer).collect::<Vec<_>>(), vec![b]);
    }

    #[test]
    fn challenge_batches_carry_own_id_first_and_did_every_fifth() {
        let s: Vec<PeerId> = (0..3).map(|i| pid(&format!("s{i}"))).collect();
        let mut net = Net::new(Config::default(), &s, 5);
        for p in &s {
            net.ix.insert(*p, Ix::honest());
        }
        net.run_for(secs(3601));
        let me = net.me;
        for p in &s {
            let hbs = net.regular_heartbeats_to(*p);
            assert!(hbs.len() >= 180);
            let mut last_batch: i64 = -1;
            let mut batches = 0u32;
            for (i, (_, hb)) in hbs.iter().enumerate() {
                if hb.challenges.is_empty() {
                    assert!(!hb.want_witnesses && hb.challenge_did.is_none());
                    continue;
                }
                batches += 1;
                let gap = i as i64 - last_batch;
                assert!((1..=10).contains(&gap), "batch spacing {gap}");
                last_batch = i as i64;
                assert_eq!(hb.challenges[0], me, "own id first");
                assert!(hb.challenges.len() <= 3);
                assert!(hb.challenges[1..].iter().all(|c| s.contains(c) && c != p));
                assert!(hb.want_witnesses);
                assert_eq!(hb.challenge_did.is_some(), batches.is_multiple_of(5), "DID on every fifth batch");
            }
            assert!(batches >= 10);
            let sc = net.score_of(*p);
            assert_eq!(sc.challenge_total, batches);
            assert_eq!(sc.challenge_correct, batches);
            assert_eq!(sc.did_checked, batches / 5);
        }
    }

    #[test]
    fn failed_heartbeat_evicts_non_seed_and_triggers_consensus() {
        let (s, x, c) = (pid("s"), pid("x"), pid("c"));
        let mut net = Net::new(Config::default(), &[s], 5)
            .with(s, Ix { suggestions: vec![x], candidates: vec![c], ..Ix::honest() })
            .with(x, Ix::honest())
            .with(c, Ix::honest());
        net.run_for(secs(1));
        assert_eq!(net.added(x).len(), 1);
        assert!(net.pool.is_live(&x));
        net.ixm(s).suggestions.clear();
        net.ixm(x).mode = Mode::Silent;
        net.run_for(secs(29));
        let ev = net.evictions();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].1, x);
        assert_eq!(ev[0].2, EvictReason::HeartbeatFailed(FailReason::Timeout));
        assert!(!net.closed.contains(&x) && net.sent_to(x, "leave") == 0, "no Leave/Close to a dead indexer");
        let reqs: Vec<u16> = net
            .sent
            .iter()
            .filter_map(|(_, to, m)| match m {
                Message::CandidatesRequest(q) if *to == s => Some(q.count),
                _ => None,
            })
            .collect();
        assert_eq!(reqs, vec![6], "need 4 + 2 extra");
        assert_eq!(net.probes_to(c).len(), 1);
        assert_eq!(net.added(c).iter().map(|x| x.1).collect::<Vec<_>>(), vec![AddedVia::Consensus]);
        assert!(
            net.events.iter().any(|(_, e)| *e == Event::ConsensusFinished { candidates: 1, admitted: 1 }),
            "{:?}",
            net.events
        );
        assert!(net.pool.is_live(&s), "the other indexer is untouched");
        assert!(net.pool.is_live(&c));
    }

    #[test]
    fn consensus_admits_best_candidate_above_floor_and_rejects_refused_probes() {
        let (s, x) = (pid("s"), pid("x"));
        let (a, b, c, d) = (pid("a"), pid("b"), pid("c"), pid("d"));
        let mut net = Net::new(Config::default(), &[s], 2)
            .with(s, Ix { suggestions: vec![x], candidates: vec![a, b, c, d, s], ..Ix::honest() })
            .with(x, Ix::honest())
            .with(
                a,
                Ix { probe_mode: Some(Mode::Refuse(RefuseReason::Full)), latency_ms: 1, fill: 0.0, ..Ix::honest() },
            )
            .with(b, Ix { fill: 1.0, latency_ms: 3900, ..Ix::honest() })
            .with(c, Ix { fill: 0.5, latency_ms: 400, ..Ix::honest() })
            .with(d, Ix { fill: 0.1, latency_ms: 40, ..Ix::honest() });
        net.run_for(secs(1));
        assert_eq!(net.pool.len(), 2);
        net.ixm(s).suggestions.clear();
        net.ixm(x).mode = Mode::Silent;
        net.run_for(secs(35));
        for p in [a, b, c, d] {
            assert_eq!(net.probes_to(p).len(), 1, "every candidate probed once");
        }
        assert_eq!(net.probes_to(s).len(), 0, "pool members are not candidates");
        assert!(net.added(d).iter().any(|x| x.1 == AddedVia::Consensus));
        for p in [a, b, c] {
            assert!(net.added(p).is_empty(), "need was 1: only the best is admitted");
        }
        assert!(net.events.iter().any(|(_, e)| *e == Event::ConsensusFinished { candidates: 4, admitted: 1 }));
        assert_eq!(net.pool.len(), 2);

        // A round whose only candidate refuses its probe admits nothing.
        let (s2, y, r) = (pid("s2"), pid("y"), pid("r"));
        let mut net = Net::new(Config::default(), &[s2], 2)
            .with(s2, Ix { suggestions: vec![y], candidates: vec![r], ..Ix::honest() })
            .with(y, Ix::honest())
            .with(r, Ix { probe_mode: Some(Mode::Refuse(RefuseReason::Full)), latency_ms: 1, ..Ix::honest() });
        net.run_for(secs(1));
        net.ixm(s2).suggestions.clear();
        net.ixm(y).mode = Mode::Silent;
        net.run_for(secs(35));
        assert_eq!(net.probes_to(r).len(), 1);
        assert!(net.added(r).is_empty(), "a refused probe scores 0");
        assert!(net.events.iter().any(|(_, e)| *e == Event::ConsensusFinished { candidates: 1, admitted: 0 }));
    }

    #[test]
    fn seed_failure_marks_down_and_retries_with_capped_backoff() {
        let s = pid("s");
        let mut net = Net::new(Config::default(), &[s], 5).with(s, Ix { mode: Mode::Silent, ..Ix::honest() });
        net.run_for(secs(20 * 60));
        let down: Vec<Timestamp> = net
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::IndexerDown { indexer, reason: FailReason::Timeout } if *indexer == s))
            .map(|x| x.0)
            .collect();
        assert_eq!(down, vec![T0 + secs(5)]);
        assert!(net.pool.contains(&s), "a seed is never evicted for failing");
        assert_eq!(net.view(s).map(|v| v.state), Some(EntryState::Down));
        assert_eq!(net.pool.len(), 0, "Down does not count as active");
        let probes = net.probes_to(s);
        assert_eq!(probes[0], T0 + secs(15));
        let gaps: Vec<u64> = probes.windows(2).map(|w| w[1].since(w[0]).as_secs()).collect();
        assert_eq!(gaps[..6], [20, 40, 80, 160, 300, 300], "doubling, capped exactly at 5 min (B6)");
        let recoveries: Vec<(u32, u64)> = net
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::SeedRecovery { attempt, next_in } => Some((*attempt, next_in.as_secs())),
                _ => None,
            })
            .collect();
        assert_eq!(recoveries[..6], [(1, 20), (2, 40), (3, 80), (4, 160), (5, 300), (6, 300)]);
        assert!(net.evictions().is_empty());

        net.ixm(s).mode = Mode::Up;
        let last = *probes.last().expect("probed");
        net.run_until(last + secs(301));
        assert!(net.pool.is_live(&s));
        assert_eq!(net.live_events(s), 1);
        let regular = net.regular_heartbeats_to(s);
        let after: Vec<&(Timestamp, Heartbeat)> = regular.iter().filter(|(t, _)| *t > last).collect();
        assert!(after.first().is_some_and(|(_, hb)| hb.did.is_some()), "session re-opened with the DID");
    }

    #[test]
    fn last_indexer_survives_two_failures_then_is_evicted() {
        let (s, x) = (pid("s"), pid("x"));
        let mut net = Net::new(Config::default(), &[s], 5)
            .with(s, Ix { suggestions: vec![x], ..Ix::honest() })
            .with(x, Ix::honest());
        net.run_for(secs(1));
        net.ixm(s).suggestions.clear();
        net.ixm(s).mode = Mode::Silent;
        net.run_for(secs(29));
        assert_eq!(net.view(s).map(|v| v.state), Some(EntryState::Down));
        assert_eq!(net.pool.len(), 1);
        net.ixm(x).mode = Mode::Silent;
        let silent_from = net.now;
        net.run_for(secs(120));
        let ev = net.evictions();
        assert_eq!(ev.len(), 1);
        let (t_evict, who, reason) = ev[0];
        assert_eq!((who, reason), (x, EvictReason::HeartbeatFailed(FailReason::Timeout)));
        let failed_hbs = net.regular_heartbeats_to(x).iter().filter(|(t, _)| *t >= silent_from).count();
        assert_eq!(failed_hbs, 3, "kept through two failures, evicted at the third");
        assert!(
            net.events.iter().all(|(t, e)| !matches!(e, Event::SeedRecovery { .. }) || *t >= t_evict),
            "no seed recovery while the last indexer is retried"
        );
        assert!(net.events.iter().any(|(_, e)| matches!(e, Event::SeedRecovery { .. })));
    }

    #[test]
    fn lying_indexer_is_evicted_after_grace() {
        let (s, x) = (pid("s"), pid("x"));
        let mut net = Net::new(Config::default(), &[s], 5)
            .with(s, Ix { suggestions: vec![x], ..Ix::honest() })
            .with(x, Ix { lie_challenges: true, ..Ix::honest() });
        net.run_for(secs(1));
        net.ixm(s).suggestions.clear();
        let live_at = net.events.iter().find(|(_, e)| *e == Event::IndexerLive { indexer: x }).map(|x| x.0);
        let live_at = live_at.expect("x went live");
        net.run_for(secs(1800));
        let ev = net.evictions();
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].1, ev[0].2), (x, EvictReason::FailedChallenges));
        assert!(ev[0].0.since(live_at) >= secs(120), "not before the grace period");
        assert_eq!(net.sent_to(x, "leave"), 1);
        assert!(net.closed.contains(&x));
        assert!(net.pool.in_cooldown(&x, net.now));
        // Suggested again during its cooldown: not re-admitted.
        net.ixm(s).suggestions = vec![x];
        net.run_for(secs(60));
        assert_eq!(net.added(x).len(), 1);
        assert!(!net.pool.contains(&x));
    }

    #[test]
    fn lying_seed_is_evicted_then_retried_after_cooldown() {
        let (s, t) = (pid("s"), pid("t"));
        let mut net = Net::new(Config::default(), &[s, t], 5)
            .with(s, Ix { lie_challenges: true, ..Ix::honest() })
            .with(t, Ix::honest());
        net.run_for(secs(1200));
        let ev = net.evictions();
        assert_eq!(ev.iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(), vec![(s, EvictReason::FailedChallenges)]);
        let evicted_at = ev[0].0;
        assert_eq!(net.view(s).map(|v| v.state), Some(EntryState::Down), "a seed stays known");
        net.ixm(s).lie_challenges = false;
        net.run_until(evicted_at + net.pool.config.misbehaviour_cooldown + secs(30));
        let probes = net.probes_to(s);
        assert_eq!(probes.len(), 1);
        assert_eq!(probes[0], evicted_at + net.pool.config.misbehaviour_cooldown, "not before the cooldown ends");
        assert!(net.pool.is_live(&s));
    }

    #[test]
    fn flapping_born_at_is_evicted() {
        let (s, x) = (pid("s"), pid("x"));
        let mut net = Net::new(Config::default(), &[s], 5)
            .with(s, Ix { suggestions: vec![x], ..Ix::honest() })
            .with(x, Ix { flap_born_at: true, ..Ix::honest() });
        net.run_for(secs(1));
        net.ixm(s).suggestions.clear();
        net.run_for(secs(600));
        let ev = net.evictions();
        assert_eq!(ev.iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(), vec![(x, EvictReason::LowScore)]);
        assert!(net.pool.is_live(&s));
    }

    #[test]
    fn restart_born_at_change_is_not_penalised() {
        let s = pid("s");
        let mut net = Net::new(Config::default(), &[s], 5).with(s, Ix::honest());
        net.run_for(secs(1));
        assert_eq!(net.score_of(s).last_born_at, Some(Timestamp(500)));
        // The indexer crashes and restarts: a later born_at after a failure is a restart.
        net.ixm(s).mode = Mode::Silent;
        net.run_for(secs(26));
        assert_eq!(net.view(s).map(|v| v.state), Some(EntryState::Down));
        net.ixm(s).mode = Mode::Up;
        net.ixm(s).born_at = Timestamp(9_000);
        net.run_for(secs(20));
        assert!(net.pool.is_live(&s));
        assert_eq!(net.score_of(s).last_born_at, Some(Timestamp(9_000)));
        assert_eq!(net.score_of(s).born_at_changes, 0);
        // Connection lost, then a later born_at: also a restart.
        let mut out = Vec::new();
        net.pool.on_unreachable(s, net.now, &mut out);
        net.drain(out);
        net.ixm(s).born_at = Timestamp(12_000);
        net.run_for(secs(21));
        assert_eq!(net.score_of(s).born_at_changes, 0);
        // A change with no failure in between is not explained.
        net.ixm(s).born_at = Timestamp(13_000);
        net.run_for(secs(20));
        assert_eq!(net.score_of(s).born_at_changes, 1);
        // Nor is an earlier born_at after a failure.
        let mut out = Vec::new();
        net.pool.on_unreachable(s, net.now, &mut out);
        net.drain(out);
        net.ixm(s).born_at = Timestamp(11_000);
        net.run_for(secs(20));
        assert_eq!(net.score_of(s).born_at_changes, 2);
    }

    #[test]
    fn suggestions_never_exceed_max_and_skip_self() {
        let s = pid("s");
        let others: Vec<PeerId> = (0..4).map(|i| pid(&format!("o{i}"))).collect();
        let me = pid("me");
        let list = vec![me, s, others[0], others[0], others[1], others[2], others[3]];
        let mut net = Net::new(Config::default(), &[s], 3).with(s, Ix { suggestions: list, ..Ix::honest() });
        for o in &others {
            net.ix.insert(*o, Ix { suggestions: others.clone(), ..Ix::honest() });
        }
        net.run_for(secs(300));
        assert_eq!(net.pool.len(), 3);
        assert!(!net.pool.contains(&me));
        let ids: Vec<PeerId> = net.pool.entries().map(|v| v.peer).collect();
        let expected: BTreeSet<PeerId> = [s, others[0], others[1]].into_iter().collect();
        assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
        assert_eq!(net.added(others[0]), vec![(T0 + Duration::from_millis(40), AddedVia::Suggestion)]);
        assert!(net.added(others[2]).is_empty() && net.added(others[3]).is_empty());
        assert!(net.learned.contains(&others[1]));
        assert!(net.regular_heartbeats_to(s).iter().skip(1).all(|(_, hb)| hb.need == 0));
    }

    #[test]
    fn migrate_respects_min_pool() {
        let cfg = Config { min_indexers: 2, ..Config::default() };
        let (s1, s2, x) = (pid("s1"), pid("s2"), pid("x"));
        let mut net = Net::new(cfg.clone(), &[s1, s2], 5)
            .with(s1, Ix { suggestions: vec![x], ..Ix::honest() })
            .with(s2, Ix::honest())
            .with(x, Ix::honest());
        net.run_for(secs(1));
        net.ixm(s1).suggestions.clear();
        assert_eq!(net.pool.live_count(), 3);
        // A non-seed with two other live indexers (≥ min 2) may go.
        net.ixm(x).migrate = true;
        net.run_for(secs(21));
        assert_eq!(net.evictions().iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(), vec![(x, EvictReason::Migrated)]);
        assert_eq!(net.sent_to(x, "leave"), 1);
        assert!(net.closed.contains(&x));
        assert!(!net.pool.in_cooldown(&x, net.now), "migration is not misbehaviour");
        // A seed with no non-seed alternative keeps its seed flag.
        net.ixm(s1).migrate = true;
        net.run_for(secs(21));
        assert_eq!(net.view(s1).map(|v| v.is_seed), Some(true));
        assert!(net.pool.is_live(&s1));

        // A non-seed whose departure would leave fewer than min live indexers stays.
        let (s, y) = (pid("s"), pid("y"));
        let mut net = Net::new(cfg, &[s], 5)
            .with(s, Ix { suggestions: vec![y], ..Ix::honest() })
            .with(y, Ix { migrate: true, ..Ix::honest() });
        net.run_for(secs(60));
        assert!(net.evictions().is_empty());
        assert!(net.pool.is_live(&y));

        // A seed with enough non-seed alternatives is discharged, not evicted.
        let (s, y) = (pid("s"), pid("y"));
        let mut net = Net::new(Config::default(), &[s], 5)
            .with(s, Ix { suggestions: vec![y], ..Ix::honest() })
            .with(y, Ix::honest());
        net.run_for(secs(1));
        net.ixm(s).migrate = true;
        net.run_for(secs(21));
        assert_eq!(net.view(s).map(|v| v.is_seed), Some(false));
        assert!(net.pool.is_live(&s));
        assert!(net.evictions().is_empty());
    }

    #[test]
    fn stale_or_foreign_reply_is_ignored() {
        let (s, y) = (pid("s"), pid("y"));
        let mut net = Net::new(Config::default(), &[s], 5).with(s, Ix { mode: Mode::Silent, ..Ix::honest() });
        net.run_for(Duration::from_millis(10));
        let hbs = net.heartbeats_to(s);
        assert_eq!(hbs.len(), 1);
        let req = hbs[0].1.req;
        let resp = |req| HeartbeatResponse {
            req,
            fill_rate: 0.1,
            peer_count: 50,
            max_nodes: 500,
            born_at: Timestamp(500),
            challenges: vec![],
            did_found: None,
            did_record: None,
            record_expires: None,
            witnesses: vec![],
            suggestions: vec![],
            suggest_migrate: false,
        };
        net.deliver(y, Message::HeartbeatResponse(resp(req)));
        assert!(!net.pool.is_live(&s), "a reply from a peer that is not the addressee");
        net.deliver(s, Message::HeartbeatResponse(resp(RequestId(req.0 + 1000))));
        assert!(!net.pool.is_live(&s), "unknown request id");
        net.deliver(s, Message::HeartbeatResponse(resp(req)));
        assert!(net.pool.is_live(&s));
        net.deliver(s, Message::HeartbeatResponse(resp(req)));
        assert_eq!(net.live_events(s), 1);
        assert_eq!(net.score_of(s).fill_checked, 1, "a duplicate reply is not counted twice");
        // A reply after its timeout is stale.
        net.run_for(secs(20));
        let late = net.heartbeats_to(s)[1].1.req;
        net.run_for(secs(6));
        assert_eq!(net.view(s).map(|v| v.state), Some(EntryState::Down));
        net.deliver(s, Message::HeartbeatResponse(resp(late)));
        assert_eq!(net.view(s).map(|v| v.state), Some(EntryState::Down));
        assert_eq!(net.score_of(s).fill_checked, 1);
    }

    #[test]
    fn witness_disagreement_lowers_score() {
        let cfg = Config {
            challenge_spacing_min: 1,
            challenge_spacing_max: 1,
            max_witnesses: 4,
            witness_queries: 4,
            ..Config::default()
        };
        let (s, t) = (pid("s"), pid("t"));
        let w: Vec<PeerId> = (0..4).map(|i| pid(&format!("w{i}"))).collect();
        let me = pid("me");
        let mut net = Net::new(cfg, &[s, t], 5)
            .with(s, Ix { witnesses: vec![me, w[0], w[1], w[2], w[3]], ..Ix::honest() })
            .with(t, Ix { witnesses: vec![w[0]], ..Ix::honest() });
        for (i, m) in [WitnessMode::Agree, WitnessMode::NotSeen, WitnessMode::Silent, WitnessMode::WrongBornAt]
            .into_iter()
            .enumerate()
        {
            net.witnesses.insert(w[i], m);
        }
        net.run_for(secs(10));
        assert_eq!(net.sent_to(me, "witness_query"), 0, "never query self");
        for (i, x) in w.iter().enumerate() {
            // w0 witnesses for both indexers.
            assert_eq!(net.sent_to(*x, "witness_query"), if i == 0 { 2 } else { 1 });
            assert!(net.learned.contains(x));
        }
        let (ss, st) = (net.score_of(s).clone(), net.score_of(t).clone());
        assert_eq!((ss.witness_checked, ss.witness_consistent), (3, 1), "a silent witness is inconclusive");
        assert_eq!((st.witness_checked, st.witness_consistent), (1, 1));
        let (vs, vt) = (net.view(s).expect("s"), net.view(t).expect("t"));
        assert!((vs.factors.witness_consistency - 1.0 / 3.0).abs() < 1e-9);
        assert!(vs.score < vt.score);
        // Past the grace period the disagreement is evidence: seeds are not exempt.
        net.run_for(secs(300));
        let ev = net.evictions();
        assert_eq!(ev.iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(), vec![(s, EvictReason::WitnessesDisagree)]);
    }

    #[test]
    fn one_random_witness_is_queried_per_challenge_batch_by_default() {
        let cfg = Config { challenge_spacing_min: 1, challenge_spacing_max: 1, ..Config::default() };
        let s = pid("s");
        let me = pid("me");
        let w: Vec<PeerId> = (0..3).map(|i| pid(&format!("w{i}"))).collect();
        let mut net = Net::new(cfg, &[s], 5).with(s, Ix { witnesses: vec![me, w[0], w[1], w[2]], ..Ix::honest() });
        for x in &w {
            net.witnesses.insert(*x, WitnessMode::Agree);
        }
        net.run_for(secs(200));
        let batches = net.regular_heartbeats_to(s).iter().filter(|(_, hb)| !hb.challenges.is_empty()).count();
        let queried: Vec<usize> = w.iter().map(|x| net.sent_to(*x, "witness_query")).collect();
        assert!(batches >= 5, "every heartbeat is a challenge batch here");
        // One query per answered batch (the last batch may still be in flight).
        let total = queried.iter().sum::<usize>();
        assert!(total == batches || total + 1 == batches, "one query per batch: {queried:?} for {batches}");
        assert!(queried.iter().all(|q| *q > 0), "drawn at random, not the indexer's first pick: {queried:?}");
        assert_eq!(net.sent_to(me, "witness_query"), 0);
    }

    #[test]
    fn refused_challenge_heartbeats_are_not_proof_of_lying() {
        // A busy seed refuses sessions (burst guard) but answers probes: the challenges its refused
        // heartbeats carried are failures, not lies, so it is never evicted as a liar.
        let cfg = Config { challenge_spacing_min: 1, challenge_spacing_max: 1, ..Config::default() };
        let s = pid("s");
        let mut net = Net::new(cfg, &[s], 5)
            .with(s, Ix { mode: Mode::Refuse(RefuseReason::Busy), probe_mode: Some(Mode::Up), ..Ix::honest() });
        net.run_for(secs(600));
        assert!(net.score_of(s).challenge_total >= 2, "challenges were sent and refused");
        net.ixm(s).mode = Mode::Up;
        net.run_for(secs(600));
        assert!(net.evictions().is_empty(), "{:?}", net.evictions());
        assert!(net.pool.is_live(&s));
        assert_rate_safe(&net.sent, &net.pool.config);
    }

    #[test]
    fn shutdown_leaves_every_active_indexer() {
        let (a, b) = (pid("a"), pid("b"));
        let mut net = Net::new(Config::default(), &[a, b], 5).with(a, Ix::honest()).with(b, Ix::honest());
        net.run_for(secs(1));
        let mut out = Vec::new();
        net.pool.shutdown(net.now, &mut out);
        net.drain(out);
        assert_eq!((net.sent_to(a, "leave"), net.sent_to(b, "leave")), (1, 1));
        assert_eq!(net.pool.poll_timeout(), None);
    }

    /// Every heartbeat or probe to one peer, in any window of `behaviour_window`, stays below the
    /// indexer's limit.
    fn assert_rate_safe(sent: &[(Timestamp, PeerId, Message)], cfg: &Config) {
        let mut per_peer: BTreeMap<PeerId, Vec<Timestamp>> = BTreeMap::new();
        for (t, to, m) in sent {
            if matches!(m, Message::Heartbeat(_)) {
                per_peer.entry(*to).or_default().push(*t);
            }
        }
        for (p, times) in per_peer {
            for (i, t) in times.iter().enumerate() {
                let n = times[i..].iter().take_while(|u| u.since(*t) < cfg.behaviour_window).count();
                assert!(n < cfg.max_hb_per_minute, "{p:?} got {n} heartbeats within a window from {t:?}");
            }
        }
    }

    #[test]
    fn pool_change_never_exceeds_indexer_rate_limit() {
        let cfg = Config::default();
        let ids: Vec<PeerId> = (0..12).map(|i| pid(&format!("i{i}"))).collect();
        let mut net = Net::new(cfg.clone(), &ids[..4], 5);
        for p in &ids {
            net.ix.insert(*p, Ix { candidates: ids.clone(), ..Ix::honest() });
        }
        let mut rng = DetRng::new(99, "churn");
        let end = T0 + secs(2 * 3600);
        while net.now < end {
            let step = Duration::from_millis(rng.range_inclusive(500, 7_000));
            net.run_for(step);
            let p = ids[rng.below(ids.len() as u64) as usize];
            let roll = rng.below(100);
            let ix = net.ixm(p);
            match roll {
                0..=39 => ix.mode = Mode::Up,
                40..=54 => ix.mode = Mode::Silent,
                55..=62 => ix.mode = Mode::Refuse(RefuseReason::Full),
                63..=67 => ix.mode = Mode::Unreachable,
                68..=77 => ix.migrate = !ix.migrate,
                78..=89 => {
                    let n = rng.below(5) as usize;
                    let mut sug = Vec::new();
                    for _ in 0..n {
                        sug.push(ids[rng.below(ids.len() as u64) as usize]);
                    }
                    net.ixm(p).suggestions = sug;
                }
                90..=94 => net.ixm(p).probe_mode = Some(Mode::Refuse(RefuseReason::Busy)),
                _ => {
                    let mut out = Vec::new();
                    net.pool.on_unreachable(p, net.now, &mut out);
                    net.drain(out);
                }
            }
        }
        let count = |f: &dyn Fn(&Event) -> bool| net.events.iter().filter(|(_, e)| f(e)).count();
        assert!(count(&|e| matches!(e, Event::IndexerEvicted { .. })) > 20, "churn happened");
        assert!(count(&|e| matches!(e, Event::ConsensusFinished { .. })) > 10);
        assert!(count(&|e| matches!(e, Event::IndexerDown { .. })) > 5);
        assert!(count(&|e| matches!(e, Event::IndexerAdded { via: AddedVia::Suggestion, .. })) > 5);
        assert_rate_safe(&net.sent, &cfg);
    }

    // ---- property test --------------------------------------------------------------------

    #[derive(Clone, Debug)]
    enum Op {
        Answer {
            pick: usize,
            fill: f64,
            peer_count: u32,
            max_nodes: u32,
            born: u8,
            found: bool,
            did_found: Option<bool>,
            others: Vec<u8>,
            migrate: bool,
        },
        Refuse {
            pick: usize,
            others: Vec<u8>,
        },
        Unreachable {
            who: u8,
        },
        Advance {
            ms: u32,
        },
        Foreign {
            who: u8,
            req: u64,
        },
    }

    fn arb_f64() -> impl Strategy<Value = f64> {
        prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.5), -1.0..2.0f64, 0.0..1.0f64]
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (
                any::<usize>(),
                arb_f64(),
                0..1000u32,
                0..1000u32,
                0..4u8,
                any::<bool>(),
                any::<Option<bool>>(),
                prop::collection::vec(0..12u8, 0..6),
                any::<bool>(),
            )
                .prop_map(|(pick, fill, peer_count, max_nodes, born, found, did_found, others, migrate)| Op::Answer {
                    pick,
                    fill,
                    peer_count,
                    max_nodes,
                    born,
                    found,
                    did_found,
                    others,
                    migrate,
                }),
            1 => (any::<usize>(), prop::collection::vec(0..12u8, 0..4)).prop_map(|(pick, others)| Op::Refuse { pick, others }),
            1 => (0..12u8).prop_map(|who| Op::Unreachable { who }),
            3 => (0..90_000u32).prop_map(|ms| Op::Advance { ms }),
            1 => (0..12u8, 0..64u64).prop_map(|(who, req)| Op::Foreign { who, req }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn pool_invariants_hold_under_arbitrary_inputs(ops in prop::collection::vec(arb_op(), 1..80)) {
            let cfg = Config::default();
            // Universe: 0 is ourselves, 1..=3 configured seeds, the rest other indexers/nodes.
            let u: Vec<PeerId> = (0..12).map(|i| if i == 0 { pid("me") } else { pid(&format!("u{i}")) }).collect();
            let me = u[0];
            let seeds = [u[1], u[2], u[3], me];
            let mut net = Net::new(cfg.clone(), &seeds, 4);
            // Requests the world has not answered yet.
            let mut open: Vec<(PeerId, Message)> = Vec::new();
            let mut seen_sent = 0usize;
            let step = |net: &mut Net, op: &Op, open: &mut Vec<(PeerId, Message)>| {
                let pick_open = |open: &mut Vec<(PeerId, Message)>, pick: usize| {
                    if open.is_empty() { None } else { let i = pick % open.len(); Some(open.swap_remove(i)) }
                };
                match op {
                    Op::Answer { pick, fill, peer_count, max_nodes, born, found, did_found, others, migrate } => {
                        let Some((to, m)) = pick_open(open, *pick) else { return };
                        let list: Vec<PeerAddr> = others.iter().map(|i| PeerAddr::id_only(u[*i as usize])).collect();
                        let reply = match m {
                            Message::Heartbeat(hb) => Message::HeartbeatResponse(HeartbeatResponse {
                                req: hb.req,
                                fill_rate: *fill,
                                peer_count: *peer_count,
                                max_nodes: *max_nodes,
                                born_at: Timestamp(u64::from(*born) * 1000),
                                challenges: hb.challenges.iter().map(|c| ChallengeEntry { peer: *c, found: *found, last_seen: Some(net.now) }).collect(),
                                did_found: *did_found,
                                did_record: None,
                                record_expires: None,
                                witnesses: list.clone(),
                                suggestions: list,
                                suggest_migrate: *migrate,
                            }),
                            Message::CandidatesRequest(q) => Message::CandidatesResponse(CandidatesResponse { req: q.req, candidates: list }),
                            Message::WitnessQuery(q) => Message::WitnessReport(WitnessReport {
                                req: q.req,
                                seen: *found,
                                born_at: Some(Timestamp(u64::from(*born) * 1000)),
                                fill_rate: *fill,
                                score: *fill,
                            }),
                            _ => return,
                        };
                        net.deliver(to, reply);
                    }
                    Op::Refuse { pick, others } => {
                        let Some((to, m)) = pick_open(open, *pick) else { return };
                        let req = match m {
                            Message::Heartbeat(hb) => hb.req,
                            Message::CandidatesRequest(q) => q.req,
                            Message::WitnessQuery(q) => q.req,
                            _ => return,
                        };
                        let suggestions = others.iter().map(|i| PeerAddr::id_only(u[*i as usize])).collect();
                        net.deliver(to, Message::Refused(Refused { req, reason: RefuseReason::Full, suggestions }));
                    }
                    Op::Unreachable { who } => {
                        let mut out = Vec::new();
                        net.pool.on_unreachable(u[*who as usize], net.now, &mut out);
                        net.drain(out);
                    }
                    Op::Advance { ms } => {
                        net.queue.clear();
                        net.run_for(Duration::from_millis(u64::from(*ms)));
                    }
                    Op::Foreign { who, req } => {
                        let r = HeartbeatResponse {
                            req: RequestId(*req),
                            fill_rate: 0.5,
                            peer_count: 1,
                            max_nodes: 2,
                            born_at: Timestamp(1),
                            challenges: vec![],
                            did_found: None,
                            did_record: None,
                            record_expires: None,
                            witnesses: vec![],
                            suggestions: vec![PeerAddr::id_only(u[(*who as usize + 1) % 12])],
                            suggest_migrate: true,
                        };
                        net.deliver(u[*who as usize], Message::HeartbeatResponse(r));
                    }
                }
            };
            // Start: the seeds' first heartbeats.
            net.run_for(Duration::ZERO);
            for op in &ops {
                for (_, to, m) in net.sent[seen_sent..].iter() {
                    if matches!(m, Message::Heartbeat(_) | Message::CandidatesRequest(_) | Message::WitnessQuery(_)) {
                        open.push((*to, m.clone()));
                    }
                }
                seen_sent = net.sent.len();
                step(&mut net, op, &mut open);
                let now = net.now;
                let pool = &net.pool;
                prop_assert!(pool.len() <= pool.max_pool());
                let views: Vec<PoolEntryView> = pool.entries().collect();
                let ids: BTreeSet<PeerId> = views.iter().map(|v| v.peer).collect();
                prop_assert_eq!(ids.len(), views.len());
                prop_assert!(!ids.contains(&me));
                prop_assert!(views.iter().filter(|v| v.referent).count() <= 1);
                for s in pool.seeds() {
                    prop_assert!(
                        pool.contains(&s.id) || pool.in_cooldown(&s.id, now) || pool.discharged.contains(&s.id),
                        "seed {:?} lost", s.id
                    );
                }
                prop_assert!(pool.poll_timeout().is_none_or(|t| t > now), "work left due at {:?}", now);
            }
            assert_rate_safe(&net.sent, &cfg);
        }
    }
}
