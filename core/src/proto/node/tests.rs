//! Flow tests of the node role's pool, against scripted indexers.

use super::*;
use crate::proto::wire::flat::Message;

/// Hands a scripted reply to the pool the way the router does.
fn deliver_to(pool: &mut IndexerPool, from: PeerId, m: Message, now: Timestamp, out: &mut Vec<Action>) {
    match Envelope::from(m) {
        Envelope::Indexer(m) => pool.on_indexer_reply(from, m, now, out),
        Envelope::Node(m) => on_message(Some(pool), from, m, now, out),
        other => panic!("not for the pool: {other:?}"),
    }
}
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
                    let message = Message::from(message);
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
                Action::DiscoverIndexers { .. }
                | Action::IndexerSeen { .. }
                | Action::QueryDone(_)
                | Action::Strike { .. }
                | Action::Distrust { .. }
                | Action::Persist(_)
                | Action::Forget(_)
                | Action::Resolve { .. }
                | Action::Resolved { .. } => {}
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
                                .map(|c| ChallengeEntry { peer: *c, found: !ix.lie_challenges, last_seen: Some(now) })
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
                    WitnessMode::Agree => {
                        WitnessReport { req: q.req, seen: true, born_at: Some(born_at), fill_rate: fill, score: 70.0 }
                    }
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
                    Delivery::Msg(from, m) => deliver_to(&mut self.pool, from, m, next, &mut out),
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
        deliver_to(&mut self.pool, from, m, self.now, &mut out);
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
    let provisional: Vec<PeerId> =
        [a, b].into_iter().filter(|p| net.heartbeats_to(*p).first().is_some_and(|(_, hb)| hb.referent)).collect();
    assert_eq!(provisional.len(), 1, "before anything is live, the first seed is named referent");
    for p in [a, b] {
        let hbs = net.heartbeats_to(p);
        assert_eq!(hbs.len(), 1);
        let (t, hb) = &hbs[0];
        assert_eq!(*t, T0);
        assert_eq!(hb.kind, HeartbeatKind::Regular);
        assert_eq!(hb.need, 3);
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
    let mut net = Net::new(Config::default(), &[a, b, c], 5).with(a, slow(1500)).with(b, slow(40)).with(c, slow(3000));
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
            assert_eq!(refs.len(), 1, "one provisional referent before anything is live");
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

/// Times of the regular heartbeats to `p`.
fn heartbeat_times(net: &Net, p: PeerId) -> Vec<Timestamp> {
    net.regular_heartbeats_to(p).into_iter().map(|(t, _)| t).collect()
}

fn on_tick(t: Timestamp) -> bool {
    t.since(T0).as_millis().is_multiple_of(Config::default().heartbeat_interval.as_millis())
}

#[test]
fn an_indexer_added_off_the_tick_joins_it_and_no_gap_exceeds_the_interval() {
    let (s, x) = (pid("s"), pid("x"));
    // The seed answers 3.7 s late, so the indexer it suggests is heartbeated off the node's tick.
    let seed = Ix { latency_ms: 3_700, suggestions: vec![x], ..Ix::honest() };
    let mut net = Net::new(Config::default(), &[s], 5).with(s, seed).with(x, Ix::honest());
    net.run_for(secs(200));
    let interval = Config::default().heartbeat_interval;
    let xs = heartbeat_times(&net, x);
    assert!(xs.first().is_some_and(|t| !on_tick(*t)), "x was first heartbeated off the tick: {xs:?}");
    for p in [s, x] {
        let ts = heartbeat_times(&net, p);
        assert!(ts.len() >= 10, "{ts:?}");
        for w in ts.windows(2) {
            let gap = w[1].since(w[0]);
            assert!(gap <= interval && gap >= interval / 2, "gap {gap:?} in {ts:?}");
        }
        assert!(ts[2..].iter().all(|t| on_tick(*t)), "on the node's one tick from the third: {ts:?}");
    }
    assert!(net.pool.is_live(&s) && net.pool.is_live(&x));
}

#[test]
fn a_refused_indexer_rejoins_the_tick_within_its_rate_budget() {
    let (a, b) = (pid("s1"), pid("s2"));
    let busy = Ix { mode: Mode::Refuse(RefuseReason::Busy), ..Ix::honest() };
    let mut net = Net::new(Config::default(), &[a, b], 5).with(a, Ix::honest()).with(b, busy);
    net.run_for(secs(1));
    // b said "not now": its retry comes half to one interval later, jittered, off the tick.
    net.ixm(b).mode = Mode::Up;
    net.run_for(secs(240));
    let config = Config::default();
    let bs = heartbeat_times(&net, b);
    assert!(bs.iter().any(|t| !on_tick(*t)), "b's retry went off the tick: {bs:?}");
    let horizon = config.behaviour_window + secs(1);
    for (i, t) in bs.iter().enumerate() {
        let in_window = bs[i..].iter().filter(|u| u.since(*t) < horizon).count();
        assert!(in_window < config.max_hb_per_minute, "rate budget exceeded from {t:?}: {bs:?}");
    }
    let late: Vec<Timestamp> = bs.iter().copied().filter(|t| *t >= T0 + secs(120)).collect();
    assert!(late.len() >= 5 && late.iter().all(|t| on_tick(*t)), "back on the node's one tick: {late:?}");
    assert!(net.pool.is_live(&a) && net.pool.is_live(&b));
}

/// What a node does with an indexer whose burst guard keeps saying `Busy`, given its minimum:
/// the times of its heartbeats to it, and when it evicted it.
fn busy_indexer_heartbeats(min_indexers: usize) -> (Vec<Timestamp>, Vec<Timestamp>) {
    let (a, b, c) = (pid("a"), pid("b"), pid("c"));
    let cfg = Config { min_indexers, ..Config::default() };
    let mut net = Net::new(cfg, &[a, b], 3)
        .with(a, Ix { suggestions: vec![c], ..Ix::honest() })
        .with(b, Ix::honest())
        .with(c, Ix { mode: Mode::Refuse(RefuseReason::Busy), ..Ix::honest() });
    net.run_for(secs(1));
    assert_eq!(net.added(c).len(), 1, "c joins the pool");
    net.ixm(a).suggestions.clear();
    net.run_for(secs(900));
    assert!(net.pool.is_live(&a) && net.pool.is_live(&b));
    let evicted = net.evictions().into_iter().filter(|e| e.1 == c).map(|e| e.0).collect();
    (net.heartbeats_to(c).into_iter().map(|(t, _)| t).collect(), evicted)
}

#[test]
fn a_node_at_its_minimum_backs_off_from_a_busy_indexer_and_one_below_it_does_not() {
    let interval = Config::default().heartbeat_interval;
    let tries = Config::default().last_indexer_max_failures as usize;
    // Below its minimum (3, with two live): retries half to one interval apart, and after
    // `last_indexer_max_failures` refusals the indexer is evicted for another.
    let (hb, evicted) = busy_indexer_heartbeats(3);
    assert_eq!((hb.len(), evicted.len()), (tries, 1), "{hb:?} {evicted:?}");
    for w in hb.windows(2) {
        let gap = w[1].since(w[0]);
        assert!(gap >= interval / 2 && gap <= interval + secs(1), "gap {gap:?} in {hb:?}");
    }
    // At its minimum (2, with two live): each refusal in a row doubles the wait, up to four
    // intervals, and the indexer gets twice the tries.
    let (hb, evicted) = busy_indexer_heartbeats(2);
    assert_eq!((hb.len(), evicted.len()), (2 * tries, 1), "{hb:?} {evicted:?}");
    for (i, w) in hb.windows(2).enumerate() {
        let gap = w[1].since(w[0]);
        let least = (interval / 2) * (1 << i.min(2));
        assert!(gap >= least && gap <= 2 * least + secs(1), "gap {i} {gap:?} in {hb:?}");
    }
    assert!(hb[hb.len() - 1].since(hb[0]) >= interval * 7, "{hb:?}");
}

#[test]
fn a_node_that_falls_below_its_minimum_stops_backing_off() {
    let (a, b, c) = (pid("a"), pid("b"), pid("c"));
    let interval = Config::default().heartbeat_interval;
    let cfg = Config { min_indexers: 2, ..Config::default() };
    let mut net = Net::new(cfg, &[a, b], 3)
        .with(a, Ix { suggestions: vec![c], ..Ix::honest() })
        .with(b, Ix::honest())
        .with(c, Ix { mode: Mode::Refuse(RefuseReason::Busy), ..Ix::honest() });
    net.run_for(secs(1));
    net.ixm(a).suggestions.clear();
    // Three refusals in a row at its minimum: the next retry is two to four intervals away.
    while net.heartbeats_to(c).len() < 3 {
        net.run_for(Duration::from_millis(100));
    }
    net.run_for(secs(1));
    let refused_at = net.now;
    // Then b stops answering: the node falls below its minimum when it notices.
    net.ixm(b).mode = Mode::Silent;
    net.run_for(interval * 4);
    let down = net
        .events
        .iter()
        .find(|(_, e)| matches!(e, Event::IndexerDown { indexer, .. } if *indexer == b))
        .map(|(t, _)| *t)
        .expect("b goes down");
    let next = net.heartbeats_to(c).into_iter().map(|(t, _)| t).find(|t| *t > refused_at).expect("c asked again");
    assert!(down < refused_at + interval * 2, "b went down at {down:?}, within the back-off");
    assert!(
        next >= down && next <= (refused_at + interval).max(down) + secs(1),
        "c asked again at {next:?}: b went down at {down:?}, c refused at {refused_at:?}"
    );
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
    let (a, b, d) = (pid("a"), pid("b"), pid("d"));
    // Need 1: `need + 2` = 3 candidates probed, here all of them.
    let mut net = Net::new(Config::default(), &[s], 2)
        .with(s, Ix { suggestions: vec![x], candidates: vec![a, b, d, s], ..Ix::honest() })
        .with(x, Ix::honest())
        .with(a, Ix { probe_mode: Some(Mode::Refuse(RefuseReason::Full)), latency_ms: 1, fill: 0.0, ..Ix::honest() })
        .with(b, Ix { fill: 1.0, latency_ms: 3900, ..Ix::honest() })
        .with(d, Ix { fill: 0.1, latency_ms: 40, ..Ix::honest() });
    net.run_for(secs(1));
    assert_eq!(net.pool.len(), 2);
    net.ixm(s).suggestions.clear();
    net.ixm(x).mode = Mode::Silent;
    net.run_for(secs(35));
    for p in [a, b, d] {
        assert_eq!(net.probes_to(p).len(), 1, "every candidate probed once");
    }
    assert_eq!(net.probes_to(s).len(), 0, "pool members are not candidates");
    assert!(net.added(d).iter().any(|x| x.1 == AddedVia::Consensus));
    for p in [a, b] {
        assert!(net.added(p).is_empty(), "need was 1: only the best is admitted");
    }
    assert!(net.events.iter().any(|(_, e)| *e == Event::ConsensusFinished { candidates: 3, admitted: 1 }));
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
fn consensus_probes_need_plus_two_candidates_those_most_voters_named_first() {
    let (s, t, x) = (pid("s"), pid("t"), pid("x"));
    let others: Vec<PeerId> = ["a", "b", "c", "d"].iter().map(|n| pid(n)).collect();
    let shared = pid("shared");
    // Two voters name three candidates each, one of them both.
    let mut net = Net::new(Config::default(), &[s, t], 3)
        .with(s, Ix { suggestions: vec![x], candidates: vec![others[0], shared, others[1]], ..Ix::honest() })
        .with(t, Ix { candidates: vec![others[2], others[3], shared], ..Ix::honest() })
        .with(x, Ix::honest())
        .with(shared, Ix { fill: 0.9, ..Ix::honest() });
    for p in &others {
        net = net.with(*p, Ix::honest());
    }
    net.run_for(secs(1));
    assert_eq!(net.pool.len(), 3);
    net.ixm(s).suggestions.clear();
    net.ixm(x).mode = Mode::Silent;
    net.run_for(secs(35));
    assert_eq!(net.probes_to(shared).len(), 1, "named by both voters: probed");
    let probed = others.iter().filter(|p| !net.probes_to(**p).is_empty()).count();
    assert_eq!(probed, 2, "need 1 + 2 probes in all, of five candidates");
    assert!(net.events.iter().any(|(_, e)| matches!(e, Event::ConsensusFinished { candidates: 3, admitted: 1 })));
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
    let mut net =
        Net::new(Config::default(), &[s], 5).with(s, Ix { suggestions: vec![x], ..Ix::honest() }).with(x, Ix::honest());
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
fn heartbeats_tell_each_indexer_where_the_pool_stands_without_it() {
    let cfg = Config { min_indexers: 2, ..Config::default() };
    let (a, b, c) = (pid("s1"), pid("s2"), pid("s3"));
    let mut net = Net::new(cfg, &[a, b, c], 4).with(a, Ix::honest()).with(b, Ix::honest()).with(c, Ix::honest());
    net.run_for(secs(1));
    // At start nothing is live: the three seeds are heartbeated at once, and the node claims to
    // be short only to as many as it lacks (each heartbeat in flight counts as joining).
    let mut first: Vec<Standing> = [a, b, c].iter().map(|p| net.heartbeats_to(*p)[0].1.standing).collect();
    first.sort_by_key(|s| s.joining_elsewhere);
    assert_eq!(first, (0..3).map(|j| Standing { live_elsewhere: 0, joining_elsewhere: j, min: 2 }).collect::<Vec<_>>());
    assert_eq!(first.iter().filter(|s| s.is_short()).count(), 2, "short to two indexers: its minimum");
    // Once all are live, each hears of the two others: not short, and free to move.
    net.run_for(secs(20));
    for p in [a, b, c] {
        let s = net.heartbeats_to(p)[1].1.standing;
        assert_eq!(s, Standing { live_elsewhere: 2, joining_elsewhere: 0, min: 2 });
        assert!(!s.is_short() && s.can_move());
    }
    // One fails: the two others hear that the node would be short without them.
    net.ixm(c).mode = Mode::Silent;
    net.run_for(secs(45));
    assert!(!net.pool.is_live(&c));
    for p in [a, b] {
        let (_, hb) = net.heartbeats_to(p).last().cloned().unwrap_or_else(|| panic!("heartbeats to {p:?}"));
        assert_eq!((hb.standing.live_elsewhere, hb.standing.min), (1, 2));
        assert!(!hb.standing.can_move());
    }
}

#[test]
fn a_node_moved_for_a_short_node_drops_the_indexer_like_a_migration() {
    let cfg = Config { min_indexers: 1, ..Config::default() };
    let (s, x) = (pid("s"), pid("x"));
    let mut net =
        Net::new(cfg.clone(), &[s], 4).with(s, Ix { suggestions: vec![x], ..Ix::honest() }).with(x, Ix::honest());
    net.run_for(secs(1));
    net.ixm(s).suggestions.clear();
    assert!(net.pool.is_live(&x));
    // `x` gave our slot to a node below its minimum.
    net.ixm(x).mode = Mode::Refuse(RefuseReason::Moved);
    net.run_for(secs(21));
    assert_eq!(net.evictions().iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(), vec![(x, EvictReason::Migrated)]);
    assert!(!net.pool.in_cooldown(&x, net.now), "no misbehaviour");
    assert!(net.pool.is_live(&s), "the other indexer is untouched");
    // A seed that moved us is not evicted: it goes Down and is retried on its back-off.
    let mut net = Net::new(cfg, &[s], 4).with(s, Ix::honest());
    net.run_for(secs(1));
    net.ixm(s).mode = Mode::Refuse(RefuseReason::Moved);
    net.run_for(secs(21));
    assert!(net.evictions().is_empty());
    assert_eq!(net.view(s).map(|v| v.state), Some(EntryState::Down));
}

#[test]
fn below_min_a_seed_that_refused_for_capacity_is_retried_every_interval() {
    let cfg = Config { min_indexers: 2, ..Config::default() };
    let (s1, s2, x) = (pid("s1"), pid("s2"), pid("x"));
    let mut net = Net::new(cfg, &[s1, s2], 4)
        .with(s1, Ix { mode: Mode::Refuse(RefuseReason::Full), ..Ix::honest() })
        .with(s2, Ix { mode: Mode::Silent, ..Ix::honest() })
        .with(x, Ix::honest());
    // Only `x` (a non-seed, through a discovery) takes us: one live, below the minimum of two.
    net.run_for(secs(1));
    let mut out = Vec::new();
    net.pool.add_entry(PeerAddr::id_only(x), AddedVia::Discovery, false, net.now, &mut out);
    net.drain(out);
    net.run_for(secs(10 * 60));
    assert_eq!(net.pool.live_count(), 1);
    for s in [s1, s2] {
        assert_eq!(net.view(s).map(|v| v.state), Some(EntryState::Down));
    }
    // The full seed is alive: retried every heartbeat interval while we are short, in case it
    // can now move a node with spare indexers for us. The silent one keeps its back-off (B6).
    let gaps =
        |p: PeerId| -> Vec<u64> { net.probes_to(p).windows(2).map(|w| w[1].since(w[0]).as_secs()).collect::<Vec<_>>() };
    let full = gaps(s1);
    assert!(full.len() >= 20 && full.iter().all(|g| *g <= 20), "{full:?}");
    assert_eq!(gaps(s2)[..4], [20, 40, 80, 160]);
    // Once it takes us, it is back, and the node holds its minimum.
    net.ixm(s1).mode = Mode::Up;
    net.run_for(secs(21));
    assert!(net.pool.is_live(&s1));
    assert_eq!(net.pool.live_count(), 2);
}

#[test]
fn at_zero_seed_recovery_also_tries_the_indexers_suggested_lately() {
    let (s, x, dead) = (pid("s"), pid("x"), pid("dead"));
    // A pool of one: `s` suggests `x` and `dead`, with no room to add them then.
    let mut net = Net::new(Config { min_indexers: 1, ..Config::default() }, &[s], 1)
        .with(s, Ix { suggestions: vec![dead, x], ..Ix::honest() })
        .with(x, Ix::honest())
        .with(dead, Ix { mode: Mode::Silent, ..Ix::honest() });
    net.run_for(secs(1));
    assert!(net.pool.is_live(&s) && !net.pool.contains(&x));
    // The only seed goes out of reach: it is Down, nothing is active.
    net.ixm(s).mode = Mode::Silent;
    let cut = net.now;
    net.run_for(secs(120));
    assert_eq!(net.view(s).map(|v| v.state), Some(EntryState::Down));
    // Seed recovery tried the suggested indexers (the most recent first): `x` took us; `dead`
    // was dropped after failing and is not tried again.
    assert!(net.pool.is_live(&x), "{:?}", net.events);
    assert_eq!(net.added(x).iter().map(|a| a.1).collect::<Vec<_>>(), vec![AddedVia::Suggestion]);
    assert!(net.added(x)[0].0 <= cut + secs(60));
    assert!(net.added(dead).len() <= 1);
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
    let mut net =
        Net::new(Config::default(), &[s], 5).with(s, Ix { suggestions: vec![y], ..Ix::honest() }).with(y, Ix::honest());
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

#[test]
fn a_new_referent_hears_at_once_when_the_told_one_goes_down() {
    let (a, b) = (pid("a"), pid("b"));
    let mut net = Net::new(Config::default(), &[a, b], 5)
        .with(a, Ix { latency_ms: 20, ..Ix::honest() })
        .with(b, Ix { latency_ms: 300, ..Ix::honest() });
    net.run_for(secs(45));
    let told = |net: &Net, p: PeerId, after: Timestamp| -> Vec<Timestamp> {
        net.heartbeats_to(p).iter().filter(|(t, hb)| hb.referent && *t > after).map(|(t, _)| *t).collect()
    };
    assert!(!told(&net, a, T0).is_empty(), "the fastest indexer is the referent");
    let cut = net.now;
    assert!(told(&net, b, cut.saturating_sub(secs(20))).is_empty(), "b is not the referent while a is fine");
    net.ixm(a).mode = Mode::Unreachable;
    net.run_for(secs(25));
    let failed_at = net.heartbeats_to(a).iter().map(|(t, _)| *t).find(|t| *t > cut).expect("a is heartbeated again");
    let b_told = told(&net, b, cut);
    let first = *b_told.first().expect("b becomes the referent");
    assert!(first >= failed_at && first.since(failed_at) <= secs(1), "told {first:?}, a failed at {failed_at:?}");
}

#[test]
fn the_referent_holds_while_scores_are_close() {
    let (a, b) = (pid("a"), pid("b"));
    let same = || Ix { latency_ms: 100, ..Ix::honest() };
    let mut net = Net::new(Config::default(), &[a, b], 5).with(a, same()).with(b, same());
    net.run_for(secs(300));
    let told: BTreeSet<PeerId> = [a, b]
        .into_iter()
        .filter(|p| net.heartbeats_to(*p).iter().any(|(t, hb)| *t > T0 + secs(1) && hb.referent))
        .collect();
    assert_eq!(told.len(), 1, "one indexer is told, every time: {told:?}");
    let count = net.heartbeats_to(*told.iter().next().expect("one")).iter().filter(|(_, hb)| hb.referent).count();
    assert!(count >= 14, "told at every heartbeat: {count}");
}

#[test]
fn the_send_log_forgets_peers_not_sent_to_within_the_horizon() {
    // A node that probes a new peer every minute for three hours keeps the log of the last few,
    // not of every peer it ever sent to; the budget of the recent ones still holds.
    let net = Net::new(Config::default(), &[], 4);
    let mut pool = net.pool;
    let horizon = pool.rate_horizon();
    let mut now = T0;
    for i in 0..180u64 {
        let p = pid(&format!("probed-{i}"));
        pool.log_send(p, now);
        assert!(pool.send_log.len() <= 2 * rate::SEND_LOG_PRUNE_MIN + 1, "{} peers logged", pool.send_log.len());
        now = now + Duration::from_secs(60);
    }
    let last = pid("probed-179");
    for _ in 0..pool.rate_budget() {
        pool.log_send(last, now);
    }
    assert!(pool.rate_allowed_at(&last, now) > now, "the recent sends still count");
    assert!(pool.rate_allowed_at(&last, now) <= now + horizon);
}
