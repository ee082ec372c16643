//! Flow tests of the indexer role, on a plain record store.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::proto::identity::Keypair;
use crate::proto::wire::Standing;
use crate::proto::wire::flat::Message;

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

/// A regular heartbeat from a node with `live` other live indexers and minimum `min`.
fn hb_standing(live: u16, min: u16) -> Heartbeat {
    Heartbeat { standing: Standing { live_elsewhere: live, joining_elsewhere: 0, min }, ..hb() }
}

/// A record desk without a DHT: a plain store (DID checks answered from it).
struct StoreDesk {
    store: crate::proto::record::RecordStore,
    offers: usize,
    /// Every version asked to be replicated: (owner, expiry).
    replicated: Vec<(PeerId, Timestamp)>,
}

impl RecordDesk for StoreDesk {
    fn offer(
        &mut self,
        from: PeerId,
        record: PeerRecord,
        replicate: bool,
        now: Timestamp,
        _out: &mut Vec<Action>,
    ) -> Offer {
        self.offers += 1;
        if record.body.peer_id != from {
            return Offer::Refused(StoreError::Invalid(crate::proto::record::RecordError::WrongKey));
        }
        let expires = record.body.expires_at;
        if self.store.holds(&record) {
            return Offer::Held(expires);
        }
        match self.store.put(record, now) {
            Ok(_) => {
                if replicate {
                    self.replicated.push((from, expires));
                }
                Offer::Held(expires)
            }
            Err(e) => Offer::Refused(e),
        }
    }

    fn replicate_held(&mut self, peer: &PeerId, now: Timestamp, _out: &mut Vec<Action>) {
        if let Some(r) = self.store.by_peer(peer, now)
            && !self.replicated.contains(&(*peer, r.body.expires_at))
        {
            self.replicated.push((*peer, r.body.expires_at));
        }
    }

    fn held_expiry(&self, peer: &PeerId, now: Timestamp) -> Option<Timestamp> {
        self.store.by_peer(peer, now).map(|r| r.body.expires_at)
    }

    fn check_did(&mut self, did: &Did, now: Timestamp, _out: &mut Vec<Action>) -> DidCheck {
        DidCheck::Answered(self.store.by_did(did, now).cloned())
    }

    fn did_owner(&self, did: &Did, now: Timestamp) -> Option<PeerId> {
        self.store.did_owner(did, now)
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
        let desk = StoreDesk {
            store: crate::proto::record::RecordStore::keyed(1000, Duration::from_secs(3600), 0),
            offers: 0,
            replicated: Vec::new(),
        };
        Harness {
            ix: IndexerService::new(
                config,
                me,
                DetRng::new(7, "indexer-test"),
                DetRng::new(8, "indexer-cache-test"),
                at(0),
            ),
            me,
            desk,
        }
    }

    fn send(&mut self, from: &PeerAddr, hb: Heartbeat, now: Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        self.ix.on_heartbeat(from.clone(), hb, &mut self.desk, now, &mut out);
        out
    }

    fn beat(&mut self, from: &PeerAddr, now: Timestamp) -> Vec<Action> {
        self.send(from, hb(), now)
    }

    fn publish(&mut self, from: &PeerAddr, record: PeerRecord, now: Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        self.ix.on_publish(from.id, Publish { req: RequestId(6), record }, &mut self.desk, now, &mut out);
        out
    }

    fn candidates(&mut self, from: &PeerAddr, count: u16, now: Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        self.ix.on_candidates_request(from.id, CandidatesRequest { req: RequestId(5), count }, false, now, &mut out);
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

fn sent_to(out: &[Action], to: PeerId) -> Vec<Message> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { to: t, message } if *t == to => Some(Message::from(message.clone())),
            _ => None,
        })
        .collect()
}

fn response(out: &[Action]) -> &HeartbeatResponse {
    let found = out.iter().find_map(|a| match a {
        Action::Send { message: Envelope::Indexer(IndexerMessage::HeartbeatResponse(r)), .. } => Some(r),
        _ => None,
    });
    found.unwrap_or_else(|| panic!("expected a heartbeat response, got {out:?}"))
}

fn refusal(out: &[Action]) -> &Refused {
    let found = out.iter().find_map(|a| match a {
        Action::Send { message: Envelope::Indexer(IndexerMessage::Refused(r)), .. } => Some(r),
        _ => None,
    });
    found.unwrap_or_else(|| panic!("expected a refusal, got {out:?}"))
}

/// The protocol events in `out` (without the `HeartbeatReceived` every heartbeat reports).
fn events(out: &[Action]) -> Vec<&Event> {
    out.iter()
        .filter_map(|a| match a {
            Action::Event(Event::HeartbeatReceived { .. }) => None,
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
fn only_the_referent_replicates_a_record_version() {
    let mut h = Harness::new(Config::default());
    let (a, b) = (node(1), node(2));
    let first = record(1, "did:a", at(0));
    // Held for the node, not replicated: we are one of its other indexers.
    h.send(&a, Heartbeat { did: Some(did("did:a")), record: Some(first.clone()), ..hb() }, at(0));
    assert!(h.desk.store.holds(&first));
    assert!(h.desk.replicated.is_empty());
    // The node makes us its referent: the version held is replicated now, once.
    h.send(&a, Heartbeat { referent: true, ..hb() }, at(20));
    assert_eq!(h.desk.replicated, vec![(a.id, first.body.expires_at)]);
    h.send(&a, Heartbeat { referent: true, ..hb() }, at(40));
    assert_eq!(h.desk.replicated.len(), 1, "still the referent: nothing new to replicate");
    // Its next version, carried by a heartbeat naming us: replicated.
    let second = record(1, "did:a", at(150));
    h.send(&a, Heartbeat { referent: true, record: Some(second.clone()), ..hb() }, at(150));
    assert_eq!(h.desk.replicated.last(), Some(&(a.id, second.body.expires_at)));
    // No longer the referent: the next version is only held.
    let third = record(1, "did:a", at(300));
    h.send(&a, Heartbeat { record: Some(third.clone()), ..hb() }, at(300));
    assert!(h.desk.store.holds(&third));
    assert_eq!(h.desk.replicated.len(), 2);
    // A new node naming us on its first heartbeat: its record is replicated at once.
    let rb = record(2, "did:b", at(310));
    h.send(&b, Heartbeat { did: Some(did("did:b")), referent: true, record: Some(rb.clone()), ..hb() }, at(310));
    assert_eq!(h.desk.replicated.last(), Some(&(b.id, rb.body.expires_at)));
    // A publish always replicates (the owner asks for it explicitly).
    let fourth = record(1, "did:a", at(320));
    h.publish(&a, fourth.clone(), at(320));
    assert_eq!(h.desk.replicated.last(), Some(&(a.id, fourth.body.expires_at)));
}

#[test]
fn response_reports_fill_and_challenge_answers() {
    let mut h = Harness::new(Config { max_nodes: 4, ..Config::default() });
    let (a, b, stranger) = (node(1), node(2), node(3));
    h.beat(&a, at(0));
    let out = h.send(&b, Heartbeat { did: Some(did("did:b")), record: Some(record(2, "did:b", at(1))), ..hb() }, at(1));
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
    for (i, fill) in [(1, Some(0.9)), (2, Some(0.2)), (3, None), (4, Some(1.0)), (5, Some(0.4)), (6, Some(f64::NAN))] {
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
    assert!(events(&out).contains(&&Event::RequestRefused {
        peer: newcomer.id,
        request: RequestKind::Heartbeat,
        reason: RefuseReason::Full
    }));
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
            assert!(events(&out).contains(&&Event::SessionClosed { node: offender.id, reason: SessionEnd::Rejected }));
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
    // Every node keeps its minimum (2) without us: each may be asked to move.
    let movable = || hb_standing(2, 2);
    // Round 0: admission up to 90 % fill, but no other indexer is known: no suggestion, so no
    // migration request.
    for (i, n) in nodes.iter().enumerate() {
        let out = h.send(n, movable(), at_ms(i as u64 * 10));
        assert!(!response(&out).suggest_migrate);
    }
    h.ix.note_indexer(indexer(1), Some(0.3), at(1));
    h.ix.note_indexer(indexer(2), None, at(1));
    let mut asked_in_round = Vec::new();
    for round in 1..=21u64 {
        let mut asked = BTreeSet::new();
        for (i, n) in nodes.iter().enumerate() {
            let out = h.send(n, movable(), at_ms(round * 20_000 + i as u64 * 10));
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
        let r = h.send(n, movable(), at_ms(440_000 + i as u64 * 10));
        assert!(!response(&r).suggest_migrate);
        assert!(response(&r).suggestions.is_empty(), "need 0 and not offloading: no suggestions");
    }
}

#[test]
fn offload_asks_only_nodes_that_keep_their_minimum_and_have_somewhere_to_go() {
    let mut h = Harness::new(Config { max_nodes: 10, ..Config::default() });
    let nodes: Vec<PeerAddr> = (0..9).map(node).collect();
    // Nodes 0–3 would fall below their minimum without us, or have no other indexer at all.
    let standing = |i: usize| match i {
        0 => hb_standing(1, 2),
        1 => hb_standing(0, 1),
        2 => hb_standing(0, 0),
        3 => Heartbeat { standing: Standing { live_elsewhere: 1, joining_elsewhere: 3, min: 2 }, ..hb() },
        _ => hb_standing(3, 2),
    };
    // The only other indexer known is above the offload threshold too: nowhere to go.
    h.ix.note_indexer(indexer(1), Some(0.95), at(0));
    for round in 0..3u64 {
        for (i, n) in nodes.iter().enumerate() {
            let out = h.send(n, standing(i), at_ms(round * 20_000 + i as u64 * 10));
            let r = response(&out);
            assert!(!r.suggest_migrate, "round {round}: node {i} asked to move to a fuller indexer");
            if round > 0 {
                assert_eq!(r.suggestions, vec![indexer(1)], "a suggestion, but no place to migrate to");
            }
        }
    }
    assert!(h.ix.offload.in_batch.is_empty());
    // An indexer with room appears: only nodes that keep their minimum are asked.
    h.ix.note_indexer(indexer(2), Some(0.3), at(60));
    let mut asked = BTreeSet::new();
    for (i, n) in nodes.iter().enumerate() {
        if response(&h.send(n, standing(i), at_ms(60_000 + i as u64 * 10))).suggest_migrate {
            asked.insert(i);
        }
    }
    assert_eq!(asked, [4, 5, 6, 7, 8].into_iter().collect::<BTreeSet<usize>>());
}

/// Fills `h` (capacity `max_nodes`) with nodes `first..first + n` of the given standing.
fn fill(h: &mut Harness, first: u64, n: u64, standing: impl Fn(u64) -> Heartbeat, now: Timestamp) {
    for i in first..first + n {
        let out = h.send(&node(i), standing(i), now);
        assert_eq!(events(&out), vec![&Event::SessionOpened { node: node(i).id }]);
    }
}

#[test]
fn full_indexer_moves_a_node_with_spare_indexers_for_a_node_below_its_minimum() {
    let mut h = Harness::new(Config { max_nodes: 4, ..Config::default() });
    h.ix.note_indexer(indexer(1), Some(0.4), at(0));
    h.ix.note_indexer(indexer(2), Some(1.0), at(0));
    // Node 0 needs us (1 other live, min 2); node 1 has exactly its minimum elsewhere; node 2
    // has one spare elsewhere, node 3 two (it chose us as referent).
    fill(&mut h, 0, 1, |_| hb_standing(1, 2), at(1));
    fill(&mut h, 1, 1, |_| hb_standing(2, 2), at(1));
    fill(&mut h, 2, 1, |_| hb_standing(3, 2), at(1));
    fill(&mut h, 3, 1, |_| Heartbeat { referent: true, ..hb_standing(4, 2) }, at(1));
    assert_eq!(h.ix.session_count(), 4);
    // A newcomer that is not short is refused `Full`; nobody moves.
    let out = h.send(&node(10), hb_standing(2, 2), at(2));
    assert_eq!(refusal(&out).reason, RefuseReason::Full);
    assert_eq!(refusal(&out).suggestions, vec![indexer(1)], "known-full indexers are not suggested to it");
    assert_eq!(h.ix.session_count(), 4);
    // A short newcomer takes the slot of node 3, the one with the most spare indexers elsewhere
    // (being our search referent only matters between nodes with as many spare).
    let out = h.send(&node(11), hb_standing(0, 2), at(3));
    let ev = events(&out);
    assert!(ev.contains(&&Event::SessionClosed { node: node(3).id, reason: SessionEnd::Moved }), "{ev:?}");
    assert!(ev.contains(&&Event::SessionOpened { node: node(11).id }));
    assert_eq!(response(&out).peer_count, 4, "never above max_nodes");
    assert!(!h.ix.has_session(&node(3).id));
    // The moved node learns it at its next heartbeat, with somewhere to go; once.
    let out = h.send(&node(3), Heartbeat { referent: true, ..hb_standing(4, 2) }, at(20));
    assert_eq!(refusal(&out).reason, RefuseReason::Moved);
    assert_eq!(refusal(&out).suggestions, vec![indexer(1)]);
    let out = h.send(&node(3), hb_standing(4, 2), at(21));
    assert_eq!(refusal(&out).reason, RefuseReason::Full, "afterwards it is a newcomer like any other");
    // The next short newcomers take node 2's slot, then node 1's (which keeps its minimum).
    let out = h.send(&node(12), hb_standing(1, 2), at(22));
    assert!(events(&out).contains(&&Event::SessionClosed { node: node(2).id, reason: SessionEnd::Moved }));
    let out = h.send(&node(13), hb_standing(0, 1), at(23));
    assert!(events(&out).contains(&&Event::SessionClosed { node: node(1).id, reason: SessionEnd::Moved }));
    // Now nobody here may move (node 0 and the newcomers need us): a short node is refused
    // `Full`, and pointed at full indexers too, which may move a node for it.
    let out = h.send(&node(14), hb_standing(0, 2), at(24));
    let r = refusal(&out);
    assert_eq!(r.reason, RefuseReason::Full);
    assert_eq!(r.suggestions.iter().map(|a| a.id).collect::<BTreeSet<_>>(), [indexer(1).id, indexer(2).id].into());
    for i in [0, 11, 12, 13] {
        assert!(h.ix.has_session(&node(i).id), "node {i} keeps its slot");
    }
}

#[test]
fn a_moved_node_that_became_short_is_a_newcomer_again() {
    let mut h = Harness::new(Config { max_nodes: 2, ..Config::default() });
    fill(&mut h, 0, 2, |_| hb_standing(2, 2), at(1));
    let out = h.send(&node(5), hb_standing(0, 2), at(2));
    let moved = match events(&out).iter().find_map(|e| match e {
        Event::SessionClosed { node, reason: SessionEnd::Moved } => Some(*node),
        _ => None,
    }) {
        Some(p) => p,
        None => panic!("someone moved: {out:?}"),
    };
    // Its other indexers failed meanwhile: short now, it may take the slot of the node left
    // with spare indexers.
    let from = if moved == node(0).id { node(0) } else { node(1) };
    let out = h.send(&from, hb_standing(0, 2), at(20));
    assert!(events(&out).contains(&&Event::SessionOpened { node: from.id }), "{out:?}");
    assert!(h.ix.has_session(&node(5).id), "never the short node it made room for");
    assert_eq!(h.ix.session_count(), 2);
}

#[test]
fn a_short_prober_is_answered_by_a_full_indexer_only_when_someone_can_move() {
    let mut h = Harness::new(Config { max_nodes: 2, ..Config::default() });
    fill(&mut h, 0, 1, |_| hb_standing(1, 2), at(1));
    fill(&mut h, 1, 1, |_| hb_standing(2, 2), at(1));
    let short_probe =
        || Heartbeat { standing: Standing { live_elsewhere: 1, joining_elsewhere: 0, min: 2 }, ..probe() };
    let out = h.send(&node(5), short_probe(), at(2));
    assert_eq!(response(&out).peer_count, 2, "answered: node 1 could move for it");
    assert_eq!(h.ix.session_count(), 2, "a probe moves nobody");
    let out = h.send(
        &node(6),
        Heartbeat { standing: Standing { live_elsewhere: 2, joining_elsewhere: 0, min: 2 }, ..probe() },
        at(2),
    );
    assert_eq!(refusal(&out).reason, RefuseReason::Full, "not short: refused");
    // A node joining enough others is not short either.
    let joining = Heartbeat { standing: Standing { live_elsewhere: 1, joining_elsewhere: 1, min: 2 }, ..probe() };
    assert_eq!(refusal(&h.send(&node(7), joining, at(3))).reason, RefuseReason::Full);
    // Node 1 now needs us too: nobody can move, the short prober is refused.
    h.send(&node(1), hb_standing(1, 2), at(20));
    let out = h.send(&node(5), short_probe(), at(21));
    assert_eq!(refusal(&out).reason, RefuseReason::Full);
}

#[test]
fn short_newcomers_come_first_through_the_burst_guard() {
    let mut h = Harness::new(Config { max_conn_per_window: 2, ..Config::default() });
    let (short, other) = (node(10), node(11));
    fill(&mut h, 0, 2, |_| hb_standing(2, 2), at(1));
    // The guard is full: the short node is refused `Busy`, and remembered.
    assert_eq!(refusal(&h.send(&short, hb_standing(0, 2), at(3))).reason, RefuseReason::Busy);
    // The window has passed, but a short node was refused less than `conn_window` ago: a node
    // that is not short waits…
    assert_eq!(refusal(&h.send(&other, hb_standing(2, 2), at(32))).reason, RefuseReason::Busy);
    // …and the opening goes to the short node.
    let out = h.send(&short, hb_standing(0, 2), at(33));
    assert_eq!(events(&out), vec![&Event::SessionOpened { node: short.id }]);
    // With no short node refused for a whole window, everyone shares the guard again.
    let out = h.send(&other, hb_standing(2, 2), at(34));
    assert_eq!(events(&out), vec![&Event::SessionOpened { node: other.id }]);
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
fn did_is_never_clobbered_and_a_changed_did_is_refused_without_strikes() {
    let mut h = Harness::new(Config::default());
    let a = node(1);
    h.send(&a, Heartbeat { did: Some(did("did:a")), record: Some(record(1, "did:a", at(0))), ..hb() }, at(0));
    h.beat(&a, at(20));
    assert_eq!(h.ix.session(&a.id).unwrap().did, Some(&did("did:a")), "a missing DID does not clobber");
    // A different DID for the same key (a lost `did` file): refused with its own reason, no
    // strikes, however often; the first DID is kept and still works.
    for t in [40, 60, 80, 100] {
        let out = h.send(&a, Heartbeat { did: Some(did("did:new")), challenge_did: Some(did("did:a")), ..hb() }, at(t));
        assert_eq!(refusal(&out).reason, RefuseReason::DidChanged);
        assert!(events(&out).iter().any(|e| matches!(e, Event::DidChangeRefused { .. })));
        assert!(!events(&out).iter().any(|e| matches!(e, Event::PeerStruck { .. } | Event::PeerBanned { .. })));
        assert!(closes(&out).is_empty());
    }
    assert_eq!(h.ix.strikes(&a.id), 0);
    assert_eq!(h.ix.session(&a.id).unwrap().did, Some(&did("did:a")));
    // Its record under the new DID is refused the same way (a publish), still without strikes.
    let out = h.publish(&a, record(1, "did:new", at(110)), at(110));
    assert_eq!(refusal(&out).reason, RefuseReason::DidChanged);
    assert_eq!(h.ix.strikes(&a.id), 0);
    // A probe naming the new DID is refused the same way (a node would otherwise count us live
    // after each probe and be refused at its next heartbeat); one naming the bound DID is answered.
    let out = h.send(&a, Heartbeat { did: Some(did("did:new")), ..probe() }, at(112));
    assert_eq!(refusal(&out).reason, RefuseReason::DidChanged);
    assert_eq!(h.ix.strikes(&a.id), 0);
    let out = h.send(&a, Heartbeat { did: Some(did("did:a")), ..probe() }, at(114));
    assert!(
        out.iter().all(|x| !matches!(x, Action::Send { message: Envelope::Indexer(IndexerMessage::Refused(_)), .. }))
    );
    let out = h.send(&a, Heartbeat { did: Some(did("did:a")), ..hb() }, at(120));
    assert!(response(&out).record_expires.is_some(), "the bound DID is served as before");
    // The DID check asks the record store (the DHT), not the sessions: a's signed record stays
    // findable until it expires, then it is gone.
    let b = node(2);
    let out = h.send(&b, Heartbeat { challenge_did: Some(did("did:a")), ..hb() }, at(121));
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
fn an_indexer_asking_gets_indexer_witnesses_and_nodes_get_nodes() {
    let mut h = Harness::new(Config::default());
    let nodes: Vec<PeerAddr> = (0..6).map(node).collect();
    let indexers: Vec<PeerAddr> = (1..=5).map(indexer).collect();
    for i in &indexers {
        h.send(i, Heartbeat { is_indexer: true, ..hb() }, at(0));
    }
    for n in &nodes {
        h.beat(n, at(0));
    }
    let asker = &indexers[0];
    let mut seen = BTreeSet::new();
    for round in 1..=30u64 {
        let out = h.send(asker, Heartbeat { is_indexer: true, want_witnesses: true, ..hb() }, at(20 * round));
        let ids: BTreeSet<PeerId> = response(&out).witnesses.iter().map(|a| a.id).collect();
        assert_eq!(ids.len(), 3, "distinct, max_witnesses of them");
        assert!(ids.iter().all(|p| indexers[1..].iter().any(|i| i.id == *p)), "other indexers only: {ids:?}");
        seen.extend(ids);
        // A node asking still gets nodes.
        let out =
            h.send(&nodes[0], Heartbeat { want_witnesses: true, ..hb() }, at(20 * round) + Duration::from_millis(1));
        assert!(response(&out).witnesses.iter().all(|a| nodes[1..].contains(a)));
    }
    assert_eq!(seen.len(), 4, "each other indexer is picked sometimes");
    // The other indexers leave: an indexer asking gets node witnesses again.
    for i in &indexers[1..] {
        h.leave(i, at(700));
    }
    let out = h.send(asker, Heartbeat { is_indexer: true, want_witnesses: true, ..hb() }, at(720));
    let w = &response(&out).witnesses;
    assert_eq!(w.len(), 3);
    assert!(w.iter().all(|a| nodes.contains(a)), "{w:?}");
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

/// The bans an indexer asked to persist.
fn persisted_bans(out: &[Action]) -> Vec<(PeerId, Timestamp)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Persist(Persist::Ban { peer, until }) => Some((*peer, *until)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_ban_is_persisted_when_set_and_restored_after_a_restart() {
    let c = Config::default();
    let ban = c.ban_duration;
    let mut h = Harness::new(c.clone());
    let a = node(1);
    // Two foreign-DID records (two strikes each): banned on the second.
    let _ = h.publish(&node(2), record(2, "did:two", at(0)), at(0));
    let out = h.publish(&a, record(1, "did:two", at(1)), at(1));
    assert!(persisted_bans(&out).is_empty(), "a strike alone is not persisted");
    let out = h.publish(&a, record(1, "did:two", at(2)), at(2));
    let until = at(2) + ban;
    assert_eq!(persisted_bans(&out), vec![(a.id, until)]);
    // The persist comes before the ban is acted on (its event, the close).
    let persist_at = out.iter().position(|x| matches!(x, Action::Persist(_))).unwrap();
    let banned_at = out.iter().position(|x| matches!(x, Action::Event(Event::PeerBanned { .. }))).unwrap();
    let close_at = out.iter().position(|x| matches!(x, Action::Close { .. })).unwrap();
    assert!(persist_at < banned_at && persist_at < close_at);
    // Refusals while banned persist nothing more.
    for s in 3..10 {
        assert!(persisted_bans(&h.beat(&a, at(s))).is_empty());
    }

    // A restarted indexer, handed the ban back (and an ended one, ignored).
    let restart = at(60);
    let mut h2 = Harness::new(c);
    h2.ix.restore_bans(&[(a.id, until), (node(3).id, at(59))], restart);
    assert!(h2.ix.is_banned(&a.id, restart));
    assert!(!h2.ix.is_banned(&node(3).id, restart));
    assert_eq!(h2.ix.behaviour().len(), 1, "an ended ban creates no entry");
    let out = h2.beat(&a, restart);
    assert_eq!(refusal(&out).reason, RefuseReason::Banned);
    assert_eq!(closes(&out), vec![(a.id, CloseReason::Banned)]);
    assert!(persisted_bans(&out).is_empty());
    let out = h2.beat(&a, Timestamp(until.0 - 1));
    assert_eq!(refusal(&out).reason, RefuseReason::Banned);
    // The ban ends when it would have without the restart, and the node starts afresh.
    let out = h2.beat(&a, until);
    assert_eq!(events(&out), vec![&Event::SessionOpened { node: a.id }]);
    assert_eq!(h2.ix.strikes(&a.id), 0);
}

/// Runs the timers at `now` and checks the run left no deadline at or before it (no spinning).
fn timers_at(h: &mut Harness, now: Timestamp) -> Vec<Action> {
    let mut out = Vec::new();
    h.ix.handle_timeout(now, &mut out);
    assert!(h.ix.poll_timeout().is_some_and(|t| t > now), "a run leaves its next deadline after now");
    out
}

#[test]
fn a_session_refreshed_many_times_expires_exactly_after_its_last_heartbeat() {
    let c = Config::default();
    let expiry = c.session_expiry;
    let mut h = Harness::new(c);
    let n = node(1);
    // An hour of heartbeats every 20 s, the timers run whenever due, as the router does.
    let mut last = at(0);
    for i in 0..180 {
        last = at(i * 20);
        assert!(h.run_timers(last).is_empty(), "nothing expires while the node heartbeats");
        h.beat(&n, last);
    }
    assert!(h.run_timers(last + expiry).is_empty());
    assert!(h.ix.has_session(&n.id), "silent for exactly session_expiry: still there");
    let out = h.run_timers(last + expiry + Duration::from_millis(1));
    assert_eq!(events(&out), vec![&Event::SessionClosed { node: n.id, reason: SessionEnd::Expired }]);
    assert!(!h.ix.has_session(&n.id));
    assert_eq!(h.ix.expiry.len(), 0, "its index entry went with it");
}

#[test]
fn a_stale_wake_up_expires_nothing_and_does_not_spin() {
    let c = Config::default();
    let expiry = c.session_expiry;
    let mut h = Harness::new(c);
    let n = node(1);
    h.beat(&n, at(0));
    h.beat(&n, at(60));
    // The index still holds the first heartbeat: the next deadline is early, never late.
    let stale = at(0) + expiry + Duration::from_millis(1);
    assert_eq!(h.ix.poll_timeout(), Some(stale.min(h.ix.next_gc)));
    let out = timers_at(&mut h, stale);
    assert!(events(&out).iter().all(|e| !matches!(e, Event::SessionClosed { .. })));
    assert!(h.ix.has_session(&n.id));
    // The entry moved to the real deadline: the next run there expires it.
    let real = at(60) + expiry + Duration::from_millis(1);
    assert_eq!(h.ix.expiry.first().map(|(t, _)| *t), Some(at(60)));
    let out = h.run_timers(at(60) + expiry);
    assert!(events(&out).iter().all(|e| !matches!(e, Event::SessionClosed { .. })));
    let out = h.run_timers(real);
    assert_eq!(events(&out), vec![&Event::SessionClosed { node: n.id, reason: SessionEnd::Expired }]);
}

#[test]
fn many_sessions_expire_in_deadline_order_and_wake_ups_stay_few() {
    let c = Config { max_conn_per_window: 1000, max_nodes: 1000, ..Config::default() };
    let expiry = c.session_expiry;
    let mut h = Harness::new(c);
    let nodes: Vec<PeerAddr> = (0..200).map(node).collect();
    // Sessions open in one order and heartbeat last in the reverse one, so that the index
    // (first heartbeats) and the real deadlines (last heartbeats) disagree.
    for (i, n) in nodes.iter().enumerate() {
        h.beat(n, at_ms(i as u64 * 10));
    }
    let mut last = Vec::new();
    for (i, n) in nodes.iter().enumerate().rev() {
        let t = at(30) + Duration::from_millis((nodes.len() - i) as u64 * 7);
        h.beat(n, t);
        last.push((t, n.id));
    }
    // Also a few sessions refreshed late, past the stale deadlines of the others.
    for n in nodes.iter().step_by(10) {
        let t = at(100);
        h.beat(n, t);
        last.retain(|(_, p)| *p != n.id);
        last.push((t, n.id));
    }
    last.sort();
    // Run the timers as the router would, counting wake-ups, and collect the expiries.
    let mut wake_ups = 0;
    let mut closed = Vec::new();
    let end = at(400);
    while let Some(t) = h.ix.poll_timeout().filter(|t| *t <= end) {
        wake_ups += 1;
        let out = timers_at(&mut h, t);
        for e in events(&out) {
            if let Event::SessionClosed { node, reason: SessionEnd::Expired } = e {
                let l = last.iter().find(|(_, p)| p == node).map(|(l, _)| *l).unwrap();
                assert_eq!(t, l + expiry + Duration::from_millis(1), "expired at its exact deadline");
                closed.push((l, *node));
            }
        }
    }
    assert_eq!(closed, last, "every session expired, in deadline order");
    assert_eq!(h.ix.session_count(), 0);
    assert!(h.ix.expiry.is_empty());
    // Each distinct real deadline wakes the indexer once (as with an exact index), and so does
    // each GC; the 200 stale entries, all due within two seconds, are renewed in a few batched
    // runs on top.
    let mut deadlines: Vec<Timestamp> = last.iter().map(|(t, _)| *t).collect();
    deadlines.dedup();
    let gc_runs = 400 / Config::default().gc_interval.as_secs() as usize + 1;
    assert!(wake_ups <= deadlines.len() + gc_runs + 3, "{wake_ups} wake-ups for {} deadlines", deadlines.len());
}

#[test]
fn a_late_timer_run_expires_every_due_session_in_deadline_order() {
    let c = Config { max_conn_per_window: 1000, ..Config::default() };
    let mut h = Harness::new(c);
    let nodes: Vec<PeerAddr> = (0..50).map(node).collect();
    for (i, n) in nodes.iter().enumerate() {
        h.beat(n, at_ms(i as u64));
    }
    let mut expected = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        // Last heartbeats in an order unrelated to the first ones.
        let t = at(40) + Duration::from_millis((i as u64 * 37) % 50);
        h.beat(n, t);
        expected.push((t, n.id));
    }
    expected.sort();
    let out = timers_at(&mut h, at(1000));
    let closed: Vec<PeerId> = events(&out)
        .into_iter()
        .filter_map(|e| match e {
            Event::SessionClosed { node, reason: SessionEnd::Expired } => Some(*node),
            _ => None,
        })
        .collect();
    assert_eq!(closed, expected.iter().map(|(_, p)| *p).collect::<Vec<_>>());
}

#[test]
fn sessions_are_listed_in_peer_id_order() {
    let c = Config { max_conn_per_window: 1000, ..Config::default() };
    let mut h = Harness::new(c);
    for i in 0..100 {
        h.beat(&node(i), at(0));
    }
    let listed: Vec<PeerId> = h.ix.sessions().map(|v| v.peer).collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed.len(), 100);
    assert_eq!(listed, sorted);
}

#[test]
fn what_a_heartbeat_reads_first_is_what_its_response_and_session_reflect() {
    // The session, its address and the held record's expiry are read as the heartbeat comes
    // in (issue 13): a new address, a record carried or a record that lapsed since are still
    // what the session and the response show.
    let mut h = Harness::new(Config::default());
    let a = node(1);
    h.beat(&a, at(0));
    let out = h.send(&a, Heartbeat { record: Some(record(1, "did:a", at(1))), ..hb() }, at(1));
    assert_eq!(response(&out).record_expires, Some(at(301)), "the record carried is acknowledged");
    assert_eq!(response(&h.beat(&a, at(20))).record_expires, Some(at(301)), "steady: the held expiry");
    // The node is reached at another address: the session follows; an empty one changes nothing.
    let moved = PeerAddr { id: a.id, addrs: vec!["192.0.2.7:4001".to_string()] };
    h.beat(&moved, at(40));
    assert_eq!(h.ix.session(&a.id).map(|v| v.addr.clone()), Some(moved.clone()));
    h.beat(&PeerAddr { id: a.id, addrs: Vec::new() }, at(60));
    assert_eq!(h.ix.session(&a.id).map(|v| v.addr.clone()), Some(moved.clone()));
    // A newer version, carried while naming us its referent: the response has its expiry.
    let out = h.send(&moved, Heartbeat { referent: true, record: Some(record(1, "did:a", at(80))), ..hb() }, at(80));
    assert_eq!(response(&out).record_expires, Some(at(380)));
    assert_eq!(response(&h.send(&moved, Heartbeat { referent: true, ..hb() }, at(100))).record_expires, Some(at(380)));
    // Past its expiry (the node kept heartbeating without a new one), none is held any more.
    let mut t = 100;
    while t < 380 {
        t += 20;
        h.beat(&moved, at(t));
    }
    assert_eq!(response(&h.beat(&moved, at(400))).record_expires, None);
    let v = h.ix.session(&a.id).unwrap();
    assert_eq!((v.last_seen, v.first_seen), (at(400), at(0)));
    assert!((v.uptime_ratio - 1.0).abs() < 1e-9, "every gap counted online: {}", v.uptime_ratio);
}

// The behaviour records and the sessions share one table, one entry per peer (`admission.rs`):
// each part keeps its own life.

#[test]
fn a_session_outlives_the_eviction_of_its_behaviour_record() {
    let mut h = Harness::new(Config { behaviour_table_max: 2, ..Config::default() });
    let a = node(1);
    assert!(response(&h.beat(&a, at(0))).fill_rate > 0.0);
    assert!(h.ix.has_session(&a.id) && h.ix.behaviour().contains(&a.id));
    // Two probers take the table's two slots: a's record, the least recently active, goes.
    h.send(&node(2), probe(), at(1));
    h.send(&node(3), probe(), at(2));
    assert!(!h.ix.behaviour().contains(&a.id), "a's behaviour record was evicted");
    assert_eq!(h.ix.behaviour().len(), 2, "the bound counts behaviour records only");
    // Its session is untouched: listed, counted, and it answers challenges.
    assert!(h.ix.has_session(&a.id));
    assert_eq!(h.ix.session_count(), 1);
    assert_eq!(h.ix.sessions().map(|v| v.peer).collect::<Vec<_>>(), vec![a.id]);
    assert_eq!(h.ix.session(&a.id).unwrap().last_seen, at(0));
    assert_eq!(h.ix.strikes(&a.id), 0);
    assert!(!h.ix.is_banned(&a.id, at(3)));
    let out = h.send(&node(2), Heartbeat { challenges: vec![a.id], ..probe() }, at(3));
    assert_eq!(response(&out).challenges, vec![ChallengeEntry { peer: a.id, found: true, last_seen: Some(at(0)) }]);
    // Its next heartbeat refreshes the same session and gives it a fresh record again.
    let out = h.beat(&a, at(20));
    assert!(events(&out).iter().all(|e| !matches!(e, Event::SessionOpened { .. })), "{out:?}");
    assert!(h.ix.behaviour().contains(&a.id));
    let s = h.ix.session(&a.id).unwrap();
    assert_eq!((s.first_seen, s.last_seen), (at(0), at(20)));
}

#[test]
fn a_ban_outlives_the_session_it_ended_then_the_entry_goes() {
    let c = Config::default();
    let mut h = Harness::new(c.clone());
    let (a, b) = (node(1), node(2));
    h.beat(&b, at_ms(0));
    // A heartbeat flood: five in the window, then a strike for each one over; the third bans.
    for i in 0..c.max_hb_per_minute as u64 + 3 {
        h.beat(&a, at_ms(i));
    }
    let until = at_ms(c.max_hb_per_minute as u64 + 2) + c.ban_duration;
    assert_eq!(h.ix.behaviour().banned_until(&a.id, at(1)), Some(until));
    assert!(!h.ix.has_session(&a.id), "the ban ended the session");
    assert!(h.ix.session(&a.id).is_none());
    assert_eq!(h.ix.session_count(), 1);
    assert_eq!(h.ix.sessions().map(|v| v.peer).collect::<Vec<_>>(), vec![b.id]);
    assert_eq!(h.ix.strikes(&a.id), c.strike_threshold);
    assert_eq!(h.ix.behaviour().len(), 2);
    // GC while banned keeps the record (b heartbeats to keep its session).
    let mut t = 20;
    while at(t) < until {
        h.beat(&b, at(t));
        h.run_timers(at(t));
        assert!(h.ix.is_banned(&a.id, at(t)), "at {t} s");
        t += 20;
    }
    // The ban ended: the next GC finds a clean record without a session, and the entry goes.
    let gc = at(t) + c.gc_interval;
    while at(t) <= gc {
        h.beat(&b, at(t));
        h.run_timers(at(t));
        t += 20;
    }
    assert!(!h.ix.behaviour().contains(&a.id));
    assert!(!h.ix.is_banned(&a.id, at(t)));
    assert_eq!(h.ix.behaviour().len(), 1);
    assert_eq!(h.ix.session_count(), 1);
    // A comes back as a newcomer.
    let out = h.beat(&a, at(t));
    assert!(events(&out).contains(&&Event::SessionOpened { node: a.id }));
    assert_eq!(h.ix.strikes(&a.id), 0);
}

#[test]
fn gc_drops_the_combined_entry_only_when_both_parts_are_gone() {
    let c = Config::default();
    let mut h = Harness::new(c.clone());
    let a = node(1);
    let d = did("did:ocd:a");
    h.send(&a, Heartbeat { did: Some(d.clone()), ..hb() }, at(0));
    // A clean record is kept while the session lives, its DID binding with it.
    let mut t = 0;
    while t <= 200 {
        h.beat(&a, at(t));
        h.run_timers(at(t));
        t += 20;
    }
    assert!(h.ix.behaviour().contains(&a.id));
    assert!(h.ix.has_session(&a.id));
    // The node leaves: the record stays (its window still holds heartbeats), the session is gone.
    h.leave(&a, at(t));
    assert!(!h.ix.has_session(&a.id) && h.ix.behaviour().contains(&a.id));
    assert_eq!(h.ix.session_count(), 0);
    // A DID change is still refused while the record lives: the binding outlived the session.
    let out = h.send(&a, Heartbeat { did: Some(did("did:ocd:other")), ..probe() }, at(t + 1));
    assert_eq!(refusal(&out).reason, RefuseReason::DidChanged);
    // Once its windows are empty, GC drops the whole entry.
    h.run_timers(at(t + 1) + c.behaviour_window + c.gc_interval);
    assert!(!h.ix.behaviour().contains(&a.id));
    assert_eq!(h.ix.behaviour().len(), 0);
    // Nothing is bound any more: another DID is accepted.
    let out = h.send(&a, Heartbeat { did: Some(did("did:ocd:other")), ..hb() }, at(t + 200));
    assert!(events(&out).contains(&&Event::SessionOpened { node: a.id }));
}
