//! The node side of the record service: looking a peer up through the node's indexers.
//!
//! A node is a DHT client: rather than walking the DHT itself (which would mean connections to
//! indexers that do not know it, and that the "is this peer known" gate refuses, C §14.1), it asks
//! one of its live indexers with `GetRecord`; the indexer answers from its store or from an
//! iterative DHT lookup. The reply carries the record itself, which the node verifies — signature,
//! expiry, and that it is the record asked for (seed: the indexer did not re-verify and the node
//! trusted `Found`, C §14.3). An empty, invalid or missing answer moves on to the next indexer, up
//! to `lookup_attempts` indexers, each request bounded by `lookup_timeout`.
//!
//! ## Hedging: the tail is a dead or stalled indexer, not the DHT
//!
//! A node learns that an indexer died only when a heartbeat to it fails (up to
//! `heartbeat_interval` + `response_timeout` later); until then the indexer is "live", and a lookup
//! that asked it first used to wait the whole `lookup_timeout` (10 s) before asking the next one.
//! An indexer whose own DHT walk stalls on a dead peer (`kad_rpc_timeout`, 3 s) looks the same
//! from here. So a lookup **hedges** (Dean & Barroso, "The Tail at Scale"): when the indexer
//! asked has not answered within the time an answer usually takes, the next indexer is asked
//! *as well*, without cancelling the first; whichever valid record comes first ends the lookup,
//! and every later answer is ignored (its request is forgotten), so the asker gets exactly one
//! answer. A refusal, an empty or invalid answer, or the loss of the connection still moves on at
//! once; `lookup_timeout` still bounds each request.
//!
//! **The hedge delay** to indexer `i` is `rtt_i + q90(excess) + rtt_i / 2`, at most
//! `lookup_timeout`: `rtt_i` is the round trip the pool last measured to `i` by heartbeat
//! (`base_round_trip` if none), `excess` is how much longer than that heartbeat round trip the
//! node's last [`EXCESS_WINDOW`] answered requests took (the indexer's DHT walk plus jitter; its
//! 90th percentile is robust to the odd stalled walk, which a mean-and-deviation estimator would
//! let inflate every following delay), and `rtt_i / 2` is slack for this round trip's own jitter.
//! Until [`MIN_SAMPLES`] answers were seen the excess is at least two more round trips (the usual
//! one or two hops of the indexer's DHT lookup). Answers are measured while their
//! lookup runs; once a lookup has its record its other requests are forgotten, so an indexer that
//! died does not drag the estimate up.
//!
//! **Suspects.** An indexer overtaken by a hedge, silent past `lookup_timeout` or unreachable is
//! *suspect*: later lookups ask it only after the others, until the pool hears a heartbeat answer
//! from it ([`RecordLookups::note_alive`]) or `heartbeat_interval + response_timeout` has passed
//! (by then the pool's own heartbeat has decided whether it is live). So after one lookup paid a
//! hedge delay for a dead indexer, the next ones go straight to a live one.
//!
//! Everything is bounded: at most `lookup_attempts` requests per lookup, [`EXCESS_WINDOW`]
//! samples, and [`MAX_SUSPECTS`] suspects.

use super::NodeOut;
use crate::proto::action::Sink;
use crate::proto::config::Config;
use crate::proto::identity::{PeerAddr, PeerId, SigCheck};
use crate::proto::time::{Timestamp, duration_ms};
use crate::proto::wire::{GetRecord, RecordKey, RecordReply, RequestId};
use crate::proto::{Action, Event};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Answered requests whose excess over the heartbeat round trip is remembered for the hedge delay.
pub const EXCESS_WINDOW: usize = 32;
/// Percentile of the remembered excesses the hedge delay allows for (the slowest tenth of the
/// answers are hedged, plus the slack below).
const EXCESS_PERCENTILE: usize = 90;
/// Answers seen before the observed excess alone sets the hedge delay (before, it is at least the
/// prior of two more round trips).
const MIN_SAMPLES: usize = 4;
/// Most suspect indexers remembered (the earliest suspected go first).
pub const MAX_SUSPECTS: usize = 64;

/// Who asked for a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The application ([`Command::Lookup`](crate::proto::Command::Lookup)): answered by
    /// [`Event::LookupDone`].
    Command(u64),
    /// Another machine (a message destination): answered by [`NodeOut::Resolved`].
    Resolve(u64),
}

/// An indexer a lookup may ask, with the round trip its last heartbeat took.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Who, and where.
    pub addr: PeerAddr,
    /// The round trip of its last answered heartbeat, if any.
    pub rtt: Option<Duration>,
}

/// One `GetRecord` in flight.
#[derive(Clone, Copy, Debug)]
struct Ask {
    to: PeerId,
    sent: Timestamp,
    /// The heartbeat round trip the hedge delay was computed from.
    base: Duration,
    deadline: Timestamp,
}

/// One lookup in flight.
#[derive(Clone, Debug)]
struct Pending {
    id: Origin,
    key: RecordKey,
    /// Indexers not asked yet, the next one last.
    rest: Vec<Target>,
    /// Indexers asked so far.
    attempts: u32,
    /// Its requests in flight (at most `lookup_attempts`).
    asks: BTreeMap<RequestId, Ask>,
    /// When the next indexer is asked as well if no answer came (`None`: nobody left to ask).
    hedge_at: Option<Timestamp>,
}

impl Pending {
    /// The earliest moment something is due: the hedge or a request's deadline.
    fn due(&self) -> Option<Timestamp> {
        self.asks.values().map(|a| a.deadline).chain(self.hedge_at).min()
    }
}

/// Record lookups in flight from this node.
#[derive(Debug)]
pub struct RecordLookups {
    config: Arc<Config>,
    /// Lookups by internal id.
    pending: BTreeMap<u64, Pending>,
    /// Which lookup each request in flight belongs to.
    requests: BTreeMap<RequestId, u64>,
    next_lookup: u64,
    /// Answer time beyond the heartbeat round trip of the last answered requests, oldest first (ms,
    /// negative when the answer beat the heartbeat's round trip).
    excess: VecDeque<i64>,
    /// Indexers that were overtaken by a hedge, timed out or went unreachable, since when.
    suspects: BTreeMap<PeerId, Timestamp>,
    /// How answered records are checked (and the node's own record a DID challenge returns).
    pub(super) sigs: SigCheck,
    /// When each indexer was sent our `GetRecord`s within the last `behaviour_window`: an indexer
    /// refuses the `max_get_per_minute`-th and strikes the sender, so we stay below it (see
    /// [`get_budget_left`]).
    gets: BTreeMap<PeerId, VecDeque<Timestamp>>,
    #[cfg(test)]
    /// Hedges sent so far (an indexer asked before the previous one answered).
    hedges: u64,
}

impl RecordLookups {
    /// No lookup in flight.
    pub fn new(config: impl Into<Arc<Config>>) -> Self {
        RecordLookups {
            config: config.into(),
            pending: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_lookup: 0,
            excess: VecDeque::with_capacity(EXCESS_WINDOW),
            suspects: BTreeMap::new(),
            sigs: SigCheck::direct(),
            gets: BTreeMap::new(),
            #[cfg(test)]
            hedges: 0,
        }
    }

    /// Checks the signatures of answered records through `sigs` (the same results: see
    /// [`SigCheck`]).
    pub fn set_sig_check(&mut self, sigs: SigCheck) {
        self.sigs = sigs;
    }

    /// Lookups in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    #[cfg(test)]
    /// Hedged requests sent so far.
    pub fn hedges(&self) -> u64 {
        self.hedges
    }

    /// Whether `peer` is suspect at `now` (asked after the others).
    pub fn is_suspect(&self, peer: &PeerId, now: Timestamp) -> bool {
        self.suspects.get(peer).is_some_and(|since| now < *since + self.suspicion())
    }

    /// How long a suspicion lasts without news: until the pool's heartbeat has decided.
    fn suspicion(&self) -> Duration {
        self.config.heartbeat_interval + self.config.response_timeout
    }

    /// The pool heard from `peer` (a heartbeat answer): it is alive, no longer suspect.
    pub fn note_alive(&mut self, peer: &PeerId) {
        self.suspects.remove(peer);
    }

    fn suspect(&mut self, peer: PeerId, now: Timestamp) {
        let window = self.suspicion();
        self.suspects.retain(|_, since| now < *since + window);
        if !self.suspects.contains_key(&peer) && self.suspects.len() >= MAX_SUSPECTS {
            let oldest = self.suspects.iter().min_by_key(|(p, s)| (**s, **p)).map(|(p, _)| *p);
            if let Some(p) = oldest {
                self.suspects.remove(&p);
            }
        }
        self.suspects.entry(peer).or_insert(now);
    }

    /// How long to wait for an indexer whose heartbeat round trip is `base` before asking the next
    /// one as well (see the module doc).
    pub fn hedge_delay(&self, base: Duration) -> Duration {
        let base_ms = i64::try_from(duration_ms(base)).unwrap_or(i64::MAX / 4);
        // Until a few answers were seen, the indexer's walk is assumed to take up to two more
        // round trips (a DHT lookup's usual one or two hops).
        let prior = base_ms.saturating_mul(2);
        let mut sorted: Vec<i64> = self.excess.iter().copied().collect();
        sorted.sort_unstable();
        let observed = match sorted.len() {
            0 => prior,
            n => sorted[(n * EXCESS_PERCENTILE).div_ceil(100).clamp(1, n) - 1].max(0),
        };
        let excess = if sorted.len() < MIN_SAMPLES { observed.max(prior) } else { observed };
        let ms = base_ms.saturating_add(excess).saturating_add(base_ms / 2).max(1);
        Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)).min(self.config.lookup_timeout)
    }

    fn note_answer_time(&mut self, ask: &Ask, now: Timestamp) {
        let took = i64::try_from(now.0.saturating_sub(ask.sent.0)).unwrap_or(i64::MAX / 4);
        let base = i64::try_from(duration_ms(ask.base)).unwrap_or(i64::MAX / 4);
        if self.excess.len() >= EXCESS_WINDOW {
            self.excess.pop_front();
        }
        self.excess.push_back(took.saturating_sub(base));
    }

    /// Starts lookup `id` of `key`, asking `indexers` (best first; suspects are moved after the
    /// others) one at a time, hedged, at most `lookup_attempts` of them. With no indexer, it fails
    /// at once.
    pub fn start(
        &mut self,
        id: Origin,
        key: RecordKey,
        indexers: Vec<Target>,
        ids: &mut u64,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let max = usize::try_from(self.config.lookup_attempts.max(1)).unwrap_or(usize::MAX);
        let (mut rest, suspects): (Vec<Target>, Vec<Target>) =
            indexers.into_iter().partition(|t| !self.is_suspect(&t.addr.id, now));
        rest.extend(suspects);
        rest.truncate(max);
        rest.reverse();
        if rest.is_empty() {
            out.emit(done(id, key, None, 0, 0));
            return;
        }
        let lookup = self.next_lookup;
        self.next_lookup = self.next_lookup.wrapping_add(1);
        self.pending.insert(lookup, Pending { id, key, rest, attempts: 0, asks: BTreeMap::new(), hedge_at: None });
        self.ask_next(lookup, ids, now, out);
    }

    /// Asks the next indexer of lookup `lookup` (keeping the requests in flight), or ends the
    /// lookup when nobody is left to ask and nothing is in flight.
    fn ask_next(&mut self, lookup: u64, ids: &mut u64, now: Timestamp, out: &mut Vec<Action>) {
        let Some(p) = self.pending.get_mut(&lookup) else {
            return;
        };
        // An indexer our gets would push past its window is passed over: a node whose
        // applications look up faster than its indexers serve fails those lookups itself rather
        // than be refused, struck and banned by every indexer it has.
        let (limit, window) = (get_limit(&self.config), self.config.behaviour_window);
        let next = loop {
            match p.rest.pop() {
                Some(t) if !get_budget_left(&mut self.gets, &t.addr.id, limit, window, now) => continue,
                other => break other,
            }
        };
        let Some(next) = next else {
            p.hedge_at = None;
            if p.asks.is_empty()
                && let Some(p) = self.pending.remove(&lookup)
            {
                out.emit(done(p.id, p.key, None, 0, p.attempts));
            }
            return;
        };
        let req = super::next_request(ids);
        let base = next.rtt.unwrap_or(self.config.base_round_trip);
        let hedge_delay = self.hedge_delay(base);
        let Some(p) = self.pending.get_mut(&lookup) else {
            return;
        };
        out.emit(NodeOut::Learn(next.addr.clone()));
        out.emit(NodeOut::Send { to: next.addr.id, message: GetRecord { req, key: p.key.clone() }.into() });
        self.gets.entry(next.addr.id).or_default().push_back(now);
        if self.gets.len() > MAX_SUSPECTS {
            // Indexers we no longer ask: their windows are over.
            self.gets.retain(|_, sent| sent.back().is_some_and(|t| now.since(*t) < window));
        }
        p.attempts += 1;
        p.asks.insert(req, Ask { to: next.addr.id, sent: now, base, deadline: now + self.config.lookup_timeout });
        p.hedge_at = if p.rest.is_empty() { None } else { Some(now + hedge_delay) };
        self.requests.insert(req, lookup);
    }

    /// Ends lookup `lookup` with `record`: its other requests are forgotten, so their answers are
    /// ignored.
    fn finish(&mut self, lookup: u64, record: Option<crate::proto::PeerRecord>, hops: u32, out: &mut Vec<Action>) {
        if let Some(p) = self.pending.remove(&lookup) {
            for req in p.asks.keys() {
                self.requests.remove(req);
            }
            out.emit(done(p.id, p.key, record, hops, p.attempts));
        }
    }

    /// An indexer's answer. A verified record for the key ends the lookup; anything else moves on.
    pub fn on_reply(&mut self, from: PeerId, reply: RecordReply, ids: &mut u64, now: Timestamp, out: &mut Vec<Action>) {
        let Some(&lookup) = self.requests.get(&reply.req) else {
            return;
        };
        let Some(ask) = self.pending.get(&lookup).and_then(|p| p.asks.get(&reply.req)).copied() else {
            self.requests.remove(&reply.req);
            return;
        };
        if ask.to != from {
            return;
        }
        self.requests.remove(&reply.req);
        self.suspects.remove(&from);
        self.note_answer_time(&ask, now);
        let Some(p) = self.pending.get_mut(&lookup) else {
            return;
        };
        p.asks.remove(&reply.req);
        let sigs = &self.sigs;
        let valid = reply.record.filter(|r| p.key.matches(r) && r.verify_with(now, sigs).is_ok());
        match valid {
            Some(record) => self.finish(lookup, Some(record), u32::from(reply.hops), out),
            None => self.ask_next(lookup, ids, now, out),
        }
    }

    /// The request `req` to `from` was refused: try the next indexer.
    pub fn on_refused(&mut self, from: PeerId, req: RequestId, ids: &mut u64, now: Timestamp, out: &mut Vec<Action>) {
        let to = self.requests.get(&req).and_then(|l| self.pending.get(l)).and_then(|p| p.asks.get(&req)).map(|a| a.to);
        if to == Some(from) {
            self.fail(req, now, ids, out);
        }
    }

    /// Request `req` failed (refused, unreachable, timed out): the next indexer is asked at once.
    fn fail(&mut self, req: RequestId, now: Timestamp, ids: &mut u64, out: &mut Vec<Action>) {
        let Some(lookup) = self.requests.remove(&req) else {
            return;
        };
        if let Some(p) = self.pending.get_mut(&lookup) {
            p.asks.remove(&req);
        }
        self.ask_next(lookup, ids, now, out);
    }

    /// `peer` cannot be reached: its requests fail, and it is suspect.
    pub fn on_unreachable(&mut self, peer: PeerId, ids: &mut u64, now: Timestamp, out: &mut Vec<Action>) {
        let reqs: Vec<RequestId> =
            self.pending.values().flat_map(|p| p.asks.iter().filter(|(_, a)| a.to == peer).map(|(r, _)| *r)).collect();
        if !reqs.is_empty() {
            self.suspect(peer, now);
        }
        for r in reqs {
            self.fail(r, now, ids, out);
        }
    }

    /// Fails requests past their deadline and hedges lookups whose indexer is slower than usual.
    pub fn handle_timeout(&mut self, ids: &mut u64, now: Timestamp, out: &mut Vec<Action>) {
        let due: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.due().is_some_and(|t| t <= now)).map(|(l, _)| *l).collect();
        for lookup in due {
            let Some(p) = self.pending.get(&lookup) else {
                continue;
            };
            let expired: Vec<(RequestId, PeerId)> =
                p.asks.iter().filter(|(_, a)| a.deadline <= now).map(|(r, a)| (*r, a.to)).collect();
            let hedge = p.hedge_at.is_some_and(|t| t <= now);
            let slow: Vec<PeerId> = p.asks.values().map(|a| a.to).collect();
            for (req, to) in expired {
                self.suspect(to, now);
                self.fail(req, now, ids, out);
            }
            // A failure above may already have asked the next indexer (and reset the hedge).
            let still_due = self.pending.get(&lookup).is_some_and(|p| p.hedge_at.is_some_and(|t| t <= now));
            if hedge && still_due {
                for to in slow {
                    self.suspect(to, now);
                }
                #[cfg(test)]
                {
                    self.hedges += 1;
                }
                self.ask_next(lookup, ids, now, out);
            }
        }
    }

    /// The earliest hedge or request deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.pending.values().filter_map(Pending::due).min()
    }
}

/// A finished lookup, told to whoever asked.
/// The most `GetRecord`s we send one indexer per `behaviour_window`: four fifths of what it
/// serves (`max_get_per_minute`, which also counts the pool's candidate requests).
fn get_limit(config: &Config) -> usize {
    (config.max_get_per_minute.saturating_mul(4) / 5).max(1)
}

/// Whether one more `GetRecord` to `to` keeps the gets it was sent within `window` below `limit`
/// (forgetting the older ones).
fn get_budget_left(
    gets: &mut BTreeMap<PeerId, VecDeque<Timestamp>>,
    to: &PeerId,
    limit: usize,
    window: Duration,
    now: Timestamp,
) -> bool {
    let Some(sent) = gets.get_mut(to) else {
        return true;
    };
    while sent.front().is_some_and(|t| now.since(*t) >= window) {
        sent.pop_front();
    }
    sent.len() < limit
}

fn done(id: Origin, key: RecordKey, record: Option<crate::proto::PeerRecord>, hops: u32, attempts: u32) -> NodeOut {
    match id {
        Origin::Command(id) => NodeOut::Event(Event::LookupDone { id, key, record, hops, attempts }),
        Origin::Resolve(token) => NodeOut::Resolved { token, record, asked: attempts > 0 },
    }
}

/// The answer to a lookup on a peer with no pool to ask: not found, nobody asked.
pub fn unanswerable(id: u64, key: RecordKey) -> Event {
    Event::LookupDone { id, key, record: None, hops: 0, attempts: 0 }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::proto::identity::{Did, Keypair};
    use crate::proto::record::{PeerRecord, RecordBody};
    use crate::proto::wire::{Envelope, IndexerMessage};

    const NOW: Timestamp = Timestamp(1_700_000_000_000);
    const RTT: Duration = Duration::from_millis(100);

    fn indexer(i: u64) -> PeerAddr {
        PeerAddr::id_only(Keypair::derive(i, "lookup-indexer").peer_id())
    }

    fn targets(n: u64) -> Vec<Target> {
        (1..=n).map(|i| Target { addr: indexer(i), rtt: Some(RTT) }).collect()
    }

    fn record() -> PeerRecord {
        let key = Keypair::derive(99, "lookup-target");
        let body = RecordBody {
            peer_id: key.peer_id(),
            did: Did::new("did:ocd:target").unwrap(),
            name: "target".into(),
            addrs: Vec::new(),
            api_url: None,
            nats_address: None,
            wallet: None,
            issued_at: NOW,
            expires_at: NOW + Duration::from_secs(300),
        };
        PeerRecord::sign(body, &key).unwrap()
    }

    fn key() -> RecordKey {
        RecordKey::Peer(record().body.peer_id)
    }

    /// The `GetRecord`s in `out`, as (indexer, request id).
    fn asked(out: &[Action]) -> Vec<(PeerId, RequestId)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Send { to, message: Envelope::Indexer(IndexerMessage::GetRecord(g)) } => Some((*to, g.req)),
                _ => None,
            })
            .collect()
    }

    /// The `LookupDone`s in `out`, as (command id, found, attempts).
    fn dones(out: &[Action]) -> Vec<(u64, bool, u32)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Event(Event::LookupDone { id, record, attempts, .. }) => {
                    Some((*id, record.is_some(), *attempts))
                }
                _ => None,
            })
            .collect()
    }

    fn found(req: RequestId) -> RecordReply {
        RecordReply { req, record: Some(record()), hops: 1 }
    }

    /// Runs timers until `until` (inclusive), like a host would, collecting the outputs.
    fn run_until(l: &mut RecordLookups, ids: &mut u64, until: Timestamp, out: &mut Vec<Action>) {
        while let Some(t) = l.poll_timeout().filter(|t| *t <= until) {
            l.handle_timeout(ids, t, out);
            assert!(l.poll_timeout().is_none_or(|n| n > t), "a deadline left at {t:?}");
        }
    }

    #[test]
    fn lookups_faster_than_the_indexers_serve_fail_here_rather_than_get_the_node_banned() {
        let config = Config::default();
        let limit = get_limit(&config);
        assert!(limit < config.max_get_per_minute, "below the indexer's window");
        let mut l = RecordLookups::new(config.clone());
        let (mut ids, mut out) = (1, Vec::new());
        // A burst of lookups at one instant, two indexers: each is sent `limit` gets, no more;
        // the rest fail at once, nobody asked.
        let burst = 3 * limit as u64;
        for id in 0..burst {
            l.start(Origin::Command(id), key(), targets(2), &mut ids, NOW, &mut out);
        }
        let sent = asked(&out);
        for i in [1, 2] {
            let to = indexer(i).id;
            assert!(sent.iter().filter(|(p, _)| *p == to).count() <= limit, "indexer {i}");
        }
        assert_eq!(sent.len(), 2 * limit, "each indexer's budget used, first indexer first");
        let refused = dones(&out).into_iter().filter(|(_, found, attempts)| !found && *attempts == 0).count();
        assert_eq!(refused as u64, burst - 2 * limit as u64, "the lookups nobody could be asked for");
        // Answers end the others; a window later the indexers are asked again.
        let mut out2 = Vec::new();
        for (to, req) in &sent {
            l.on_reply(*to, found(*req), &mut ids, NOW + RTT, &mut out2);
        }
        assert_eq!(l.len(), 0);
        let later = NOW + config.behaviour_window;
        let mut out3 = Vec::new();
        l.start(Origin::Command(burst), key(), targets(2), &mut ids, later, &mut out3);
        assert_eq!(asked(&out3).len(), 1, "the window is over");
    }

    #[test]
    fn a_dead_first_indexer_is_hedged_after_the_usual_round_trip_not_the_timeout() {
        let config = Config::default();
        let mut l = RecordLookups::new(config.clone());
        let (mut ids, mut out) = (1, Vec::new());
        l.start(Origin::Command(7), key(), targets(3), &mut ids, NOW, &mut out);
        let first = asked(&out);
        assert_eq!(first.len(), 1, "one indexer at a time");
        assert_eq!(first[0].0, indexer(1).id);
        // Before any answer: rtt + two more (the indexer's walk) + half an rtt of slack.
        let delay = l.hedge_delay(RTT);
        assert_eq!(delay, Duration::from_millis(350));
        assert_eq!(l.poll_timeout(), Some(NOW + delay));
        out.clear();
        // Nothing until just before the hedge.
        run_until(&mut l, &mut ids, NOW + (delay - Duration::from_millis(1)), &mut out);
        assert!(out.is_empty());
        run_until(&mut l, &mut ids, NOW + delay, &mut out);
        let second = asked(&out);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].0, indexer(2).id, "the second indexer is asked after the hedge delay");
        assert_eq!(l.hedges(), 1);
        assert!(delay < config.lookup_timeout / 10);
        out.clear();
        // The second answers: one LookupDone, found, two indexers asked.
        let at = NOW + delay + Duration::from_millis(120);
        l.on_reply(indexer(2).id, found(second[0].1), &mut ids, at, &mut out);
        assert_eq!(dones(&out), vec![(7, true, 2)]);
        assert!(asked(&out).is_empty());
        assert_eq!(l.len(), 0);
        assert_eq!(l.poll_timeout(), None, "the slow request is forgotten: no deadline left");
        out.clear();
        // The dead one's answer, had it come late, is ignored: the asker got its answer once.
        l.on_reply(indexer(1).id, found(first[0].1), &mut ids, at + Duration::from_secs(1), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_single_answer_is_delivered_once_when_both_indexers_answer() {
        let mut l = RecordLookups::new(Config::default());
        let (mut ids, mut out) = (1, Vec::new());
        l.start(Origin::Command(1), key(), targets(2), &mut ids, NOW, &mut out);
        let a = asked(&out)[0];
        run_until(&mut l, &mut ids, NOW + Duration::from_millis(350), &mut out);
        let b = asked(&out)[1];
        out.clear();
        let t = NOW + Duration::from_millis(360);
        l.on_reply(a.0, found(a.1), &mut ids, t, &mut out);
        l.on_reply(b.0, found(b.1), &mut ids, t, &mut out);
        l.on_reply(a.0, found(a.1), &mut ids, t, &mut out);
        run_until(&mut l, &mut ids, t + Duration::from_secs(60), &mut out);
        assert_eq!(dones(&out), vec![(1, true, 2)]);
    }

    #[test]
    fn a_fast_answer_sends_no_hedge() {
        let mut l = RecordLookups::new(Config::default());
        let (mut ids, mut out) = (1, Vec::new());
        l.start(Origin::Resolve(3), key(), targets(3), &mut ids, NOW, &mut out);
        let a = asked(&out)[0];
        out.clear();
        l.on_reply(a.0, found(a.1), &mut ids, NOW + Duration::from_millis(150), &mut out);
        assert!(matches!(out.as_slice(), [Action::Resolved { token: 3, record: Some(_), asked: true }]));
        run_until(&mut l, &mut ids, NOW + Duration::from_secs(60), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(l.hedges(), 0);
    }

    #[test]
    fn the_hedge_delay_follows_the_observed_answer_times() {
        let mut l = RecordLookups::new(Config::default());
        let (mut ids, mut out) = (1, Vec::new());
        // Answers take 40 ms more than the heartbeat round trip.
        for i in 0..EXCESS_WINDOW as u64 {
            let t = NOW + Duration::from_secs(i);
            l.start(Origin::Command(i), key(), targets(2), &mut ids, t, &mut out);
            let (to, req) = *asked(&out).last().unwrap();
            l.on_reply(to, found(req), &mut ids, t + RTT + Duration::from_millis(40), &mut out);
        }
        assert_eq!(l.hedges(), 0);
        assert_eq!(l.hedge_delay(RTT), Duration::from_millis(100 + 40 + 50));
        // A farther indexer gets more time; the delay never exceeds the lookup timeout.
        assert_eq!(l.hedge_delay(Duration::from_millis(300)), Duration::from_millis(300 + 40 + 150));
        assert_eq!(l.hedge_delay(Duration::from_secs(60)), Config::default().lookup_timeout);
        // One stalled walk among them does not move the 90th percentile.
        let t = NOW + Duration::from_secs(100);
        l.start(Origin::Command(100), key(), vec![targets(1)[0].clone()], &mut ids, t, &mut out);
        let (to, req) = *asked(&out).last().unwrap();
        l.on_reply(to, found(req), &mut ids, t + Duration::from_secs(3), &mut out);
        assert_eq!(l.hedge_delay(RTT), Duration::from_millis(190));
        // When answers get slower for good, the delay follows.
        for i in 0..EXCESS_WINDOW as u64 {
            let t = NOW + Duration::from_secs(200 + i);
            l.start(Origin::Command(200 + i), key(), vec![targets(1)[0].clone()], &mut ids, t, &mut out);
            let (to, req) = *asked(&out).last().unwrap();
            l.on_reply(to, found(req), &mut ids, t + RTT + Duration::from_millis(400), &mut out);
        }
        assert_eq!(l.hedge_delay(RTT), Duration::from_millis(100 + 400 + 50));
    }

    #[test]
    fn an_indexer_overtaken_by_a_hedge_is_asked_last_until_it_answers_a_heartbeat() {
        let config = Config::default();
        let mut l = RecordLookups::new(config.clone());
        let (mut ids, mut out) = (1, Vec::new());
        l.start(Origin::Command(1), key(), targets(3), &mut ids, NOW, &mut out);
        run_until(&mut l, &mut ids, NOW + Duration::from_millis(350), &mut out);
        let (b, req) = asked(&out)[1];
        let t = NOW + Duration::from_millis(400);
        l.on_reply(b, found(req), &mut ids, t, &mut out);
        assert!(l.is_suspect(&indexer(1).id, t));
        // The next lookup goes straight to the second indexer: no hedge delay to pay.
        out.clear();
        l.start(Origin::Command(2), key(), targets(3), &mut ids, t, &mut out);
        assert_eq!(asked(&out)[0].0, indexer(2).id);
        // It stays a candidate (last), and is forgiven once the pool hears from it.
        l.note_alive(&indexer(1).id);
        assert!(!l.is_suspect(&indexer(1).id, t));
        // Or once the pool's heartbeat has had time to decide.
        l.suspect(indexer(3).id, t);
        assert!(!l.is_suspect(&indexer(3).id, t + config.heartbeat_interval + config.response_timeout));
    }

    #[test]
    fn an_empty_answer_moves_on_but_waits_for_the_indexer_still_asked() {
        let mut l = RecordLookups::new(Config::default());
        let (mut ids, mut out) = (1, Vec::new());
        l.start(Origin::Command(1), key(), targets(2), &mut ids, NOW, &mut out);
        run_until(&mut l, &mut ids, NOW + Duration::from_millis(350), &mut out);
        let [(a, ra), (b, rb)] = asked(&out)[..] else { panic!("two asked: {out:?}") };
        out.clear();
        // The hedge answers "not found" (a withholding or empty indexer): nobody left to ask, but
        // the first one is still in flight.
        l.on_reply(
            b,
            RecordReply { req: rb, record: None, hops: 2 },
            &mut ids,
            NOW + Duration::from_millis(500),
            &mut out,
        );
        assert!(out.is_empty());
        // A record for another key is no answer either.
        let mut wrong = found(ra);
        std::sync::Arc::make_mut(&mut wrong.record.as_mut().unwrap().body).name = "tampered".into();
        l.on_reply(a, wrong, &mut ids, NOW + Duration::from_secs(2), &mut out);
        assert_eq!(dones(&out), vec![(1, false, 2)]);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn silent_indexers_still_end_the_lookup_at_their_timeout() {
        let config = Config::default();
        let mut l = RecordLookups::new(config.clone());
        let (mut ids, mut out) = (1, Vec::new());
        l.start(Origin::Command(1), key(), targets(3), &mut ids, NOW, &mut out);
        run_until(&mut l, &mut ids, NOW + Duration::from_secs(60), &mut out);
        assert_eq!(asked(&out).len(), 3, "at most lookup_attempts indexers");
        assert_eq!(dones(&out), vec![(1, false, 3)]);
        assert_eq!(l.hedges(), 2);
        assert_eq!(l.poll_timeout(), None);
    }

    #[test]
    fn refusals_and_lost_connections_move_on_at_once_and_are_checked_against_the_sender() {
        let mut l = RecordLookups::new(Config::default());
        let (mut ids, mut out) = (1, Vec::new());
        l.start(Origin::Command(1), key(), targets(3), &mut ids, NOW, &mut out);
        let (a, ra) = asked(&out)[0];
        out.clear();
        // A refusal from someone else than the indexer asked is ignored.
        l.on_refused(indexer(3).id, ra, &mut ids, NOW, &mut out);
        assert!(out.is_empty());
        l.on_refused(a, ra, &mut ids, NOW, &mut out);
        let (b, _) = asked(&out)[0];
        assert_eq!(b, indexer(2).id);
        out.clear();
        l.on_unreachable(b, &mut ids, NOW, &mut out);
        assert_eq!(asked(&out)[0].0, indexer(3).id);
        assert!(l.is_suspect(&b, NOW));
        assert!(!l.is_suspect(&a, NOW), "a refusal is an answer: the indexer is alive");
    }

    #[test]
    fn no_indexer_fails_at_once_and_suspects_are_bounded() {
        let mut l = RecordLookups::new(Config::default());
        let (mut ids, mut out) = (1, Vec::new());
        l.start(Origin::Command(5), key(), Vec::new(), &mut ids, NOW, &mut out);
        assert_eq!(dones(&out), vec![(5, false, 0)]);
        for i in 0..(MAX_SUSPECTS as u64 * 2) {
            l.suspect(indexer(100 + i).id, NOW + Duration::from_millis(i));
        }
        assert_eq!(l.suspects.len(), MAX_SUSPECTS);
        assert!(l.is_suspect(&indexer(100 + MAX_SUSPECTS as u64 * 2 - 1).id, NOW + Duration::from_secs(1)));
    }
}
