//! Unit tests of the search machine: the gossip payload layout it pre-reads, queries and matching,
//! the emitter's verification of responders' hits, the node's verification and fallback, and the
//! mesh's per-emitter rate.

use super::mesh::gossip_content;
use super::serve::tests_support::{forged_query_payload, signed_query_payload};
use super::*;
use crate::proto::identity::Addr;
use crate::proto::record::RecordBody;
use crate::proto::wire::{RefuseReason, Refused, RequestId};
use iroh_gossip::proto::topic;
use std::time::Duration;

const T0: Timestamp = Timestamp(10_000_000);

fn record(seed: u64, name: &str, now: Timestamp) -> PeerRecord {
    let key = Keypair::derive(seed, "search-test");
    let body = RecordBody {
        peer_id: key.peer_id(),
        did: Did::from_random([seed as u8; 16]),
        name: name.into(),
        addrs: vec![Addr::from("127.0.0.1:1")],
        api_url: None,
        nats_address: None,
        wallet: None,
        issued_at: now,
        expires_at: now + Duration::from_secs(300),
    };
    PeerRecord::sign(body, &key).expect("a well-formed record")
}

struct Refs(Vec<PeerRecord>);

impl Referenced for Refs {
    fn each(&self, f: &mut dyn FnMut(&PeerRecord) -> bool) {
        for r in &self.0 {
            if !f(r) {
                return;
            }
        }
    }
}

fn sends(out: &[Action]) -> Vec<(PeerId, SearchMessage)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { to, message: Envelope::Search(m) } => Some((*to, m.clone())),
            _ => None,
        })
        .collect()
}

fn events(out: &[Action]) -> Vec<Event> {
    out.iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn indexer(seed: u64, anchor: Option<std::time::Instant>) -> (SearchService, PeerId) {
    let key = Keypair::derive(seed, "indexer");
    let id = key.peer_id();
    let s =
        SearchService::new(Config::default(), &key, PeerAddr::id_only(id), true, anchor, DetRng::new(seed, "t"), T0);
    (s, id)
}

fn node(seed: u64) -> (SearchService, PeerId) {
    let key = Keypair::derive(seed, "node");
    let id = key.peer_id();
    (SearchService::new(Config::default(), &key, PeerAddr::id_only(id), false, None, DetRng::new(seed, "n"), T0), id)
}

#[test]
fn the_pre_read_gossip_payload_is_the_broadcast_content() {
    // Two mesh states join each other; the data message one broadcasts carries our payload, read
    // back in iroh-gossip's postcard layout (guards the exact-version pin).
    let anchor = crate::test_host::clock_anchor();
    let (mut a, a_id) = indexer(1, Some(anchor));
    let (mut b, b_id) = indexer(2, Some(anchor));
    let refs = Refs(Vec::new());
    let mut out = Vec::new();
    a.handle_timeout(&|_| vec![PeerAddr::id_only(b_id)], &refs, T0, &mut out);
    let mut now = T0;
    let mut data = None;
    let node = Keypair::derive(9, "node").peer_id();
    for round in 0..20 {
        now = now + Duration::from_millis(10);
        if round == 10 {
            let req = SearchRequest { req: RequestId(1), query: SearchQuery::parse("x").expect("valid") };
            a.on_message(node, SearchMessage::Request(req), &refs, now, &mut out);
        }
        let batch = std::mem::take(&mut out);
        for (to, m) in sends(&batch) {
            if let SearchMessage::Mesh(g) = &m
                && matches!(g, topic::Message::Gossip(_))
                && let Some(c) = gossip_content(g)
            {
                data = Some(c);
            }
            let (dst, from) = if to == b_id { (&mut b, a_id) } else { (&mut a, b_id) };
            if matches!(m, SearchMessage::Mesh(_)) {
                dst.on_message(from, m, &refs, now, &mut out);
            }
        }
        a.handle_timeout(&|_| Vec::new(), &refs, now, &mut out);
        b.handle_timeout(&|_| Vec::new(), &refs, now, &mut out);
    }
    assert_eq!(a.mesh_neighbours(), vec![b_id]);
    let content = data.expect("the query went out as a gossip data message");
    let parsed = super::serve::tests_support::decode_query(&content).expect("our signed query");
    assert_eq!(parsed, SearchQuery::parse("x").expect("valid"));
}

#[test]
fn needles_parse_and_match_like_the_seed() {
    let now = T0;
    let r = record(1, "Ünïcode-Node", now);
    let by_peer = SearchQuery::parse(&r.body.peer_id.to_string()).expect("valid");
    assert_eq!(by_peer.peer, Some(r.body.peer_id));
    assert!(by_peer.name.is_none(), "a peer id is matched exactly, not as a name");
    assert!(by_peer.matches(&r));
    assert!(SearchQuery::parse(r.body.did.as_str()).expect("valid").matches(&r));
    assert!(SearchQuery::parse("üNÏCODE").expect("valid").matches(&r), "case-insensitive, Unicode");
    assert!(SearchQuery::parse("  node ").expect("valid").matches(&r), "trimmed substring");
    assert!(!SearchQuery::parse("nodes").expect("valid").matches(&r));
    assert_eq!(SearchQuery::parse("   "), Err(QueryError::Empty));
    assert_eq!(SearchQuery::parse(&"x".repeat(1000)), Err(QueryError::TooLong));
    assert!(!SearchQuery::default().is_valid());
}

#[test]
fn the_emitter_relays_verified_new_hits_and_strikes_a_forger() {
    let now = T0;
    let (mut ix, _) = indexer(1, None);
    let local = record(1, "gamma-local", now);
    let remote = record(2, "gamma-remote", now);
    let refs = Refs(vec![local.clone(), record(3, "other", now)]);
    let node = Keypair::derive(5, "node").peer_id();
    let responder = Keypair::derive(6, "responder").peer_id();
    let mut out = Vec::new();
    let req = SearchRequest { req: RequestId(7), query: SearchQuery::parse("GAMMA").expect("valid") };
    ix.on_message(node, SearchMessage::Request(req), &refs, now, &mut out);
    let s = sends(&out);
    assert_eq!(s.len(), 1);
    assert!(matches!(&s[0], (to, SearchMessage::Hits(h)) if *to == node && h.records == vec![local.clone()]));
    assert_eq!(ix.emitting(), 1);

    // A responder sends the remote hit, the local one again, an altered record and an unrelated one.
    let mut altered = remote.clone();
    std::sync::Arc::make_mut(&mut altered.body).name = "gamma-evil".into();
    let unrelated = record(4, "zeta", now);
    let found = SearchFound { query: 1, records: vec![remote.clone(), local.clone(), altered, unrelated] };
    out.clear();
    ix.on_message(responder, SearchMessage::Found(found), &refs, now, &mut out);
    let s = sends(&out);
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(matches!(&s[0], (to, SearchMessage::Hits(h)) if *to == node && h.records == vec![remote.clone()]));
    assert!(out.contains(&Action::Strike { peer: responder }));
    let forged = events(&out).iter().filter(|e| matches!(e, Event::ForgedHitDropped { .. })).count();
    assert_eq!(forged, 2);

    // Nothing new for search_timeout: Done to the node.
    out.clear();
    let later = now + Config::default().search_timeout;
    assert_eq!(ix.poll_timeout(), Some(later));
    ix.handle_timeout(&|_| Vec::new(), &refs, later, &mut out);
    assert_eq!(sends(&out), vec![(node, SearchMessage::Done { req: RequestId(7) })]);
    assert_eq!(ix.emitting(), 0);
}

#[test]
fn the_node_verifies_hits_drops_duplicates_and_distrusts_a_lying_emitter() {
    let now = T0;
    let (mut n, _) = node(1);
    let emitter = PeerAddr::id_only(Keypair::derive(2, "e").peer_id());
    let mut out = Vec::new();
    n.start((1, "u".into()), SearchQuery::parse("gamma").expect("valid"), vec![emitter.clone()], now, &mut out);
    let req = match sends(&out).as_slice() {
        [(to, SearchMessage::Request(r))] if *to == emitter.id => r.req,
        other => panic!("one request to the emitter: {other:?}"),
    };
    let good = record(3, "Gamma", now);
    let mut forged = record(4, "gamma-2", now);
    std::sync::Arc::make_mut(&mut forged.body).addrs = vec![Addr::from("10.0.0.1:1")];
    out.clear();
    let hits = SearchHits { req, records: vec![good.clone(), good.clone(), forged] };
    n.on_message(emitter.id, SearchMessage::Hits(hits), &Refs(Vec::new()), now, &mut out);
    let ev = events(&out);
    let delivered: Vec<_> = ev.iter().filter(|e| matches!(e, Event::SearchHit { .. })).collect();
    assert_eq!(delivered.len(), 1, "the duplicate is dropped");
    assert!(matches!(delivered[0], Event::SearchHit { record, .. } if *record == good));
    assert!(out.contains(&Action::Distrust { indexer: emitter.id }));
    assert_eq!(n.active().len(), 1, "verified hits still count; the search goes on");

    // Hits from another peer than the emitter are ignored.
    out.clear();
    let other = Keypair::derive(9, "x").peer_id();
    n.on_message(
        other,
        SearchMessage::Hits(SearchHits { req, records: vec![record(5, "gamma-5", now)] }),
        &Refs(Vec::new()),
        now,
        &mut out,
    );
    assert!(events(&out).is_empty());

    out.clear();
    n.on_message(emitter.id, SearchMessage::Done { req }, &Refs(Vec::new()), now, &mut out);
    assert_eq!(events(&out), vec![Event::SearchDone { id: 1, hits: 1, end: SearchEnd::Idle }]);
}

#[test]
fn a_refused_search_moves_to_the_next_indexer_then_fails() {
    let now = T0;
    let (mut n, _) = node(1);
    let first = PeerAddr::id_only(Keypair::derive(2, "a").peer_id());
    let second = PeerAddr::id_only(Keypair::derive(3, "b").peer_id());
    let mut out = Vec::new();
    n.start(
        (1, "u".into()),
        SearchQuery::parse("x").expect("valid"),
        vec![first.clone(), second.clone()],
        now,
        &mut out,
    );
    let req = |out: &[Action], to: PeerId| {
        sends(out).into_iter().find_map(|(t, m)| match m {
            SearchMessage::Request(r) if t == to => Some(r.req),
            _ => None,
        })
    };
    let r1 = req(&out, first.id).expect("asks the first");
    out.clear();
    let refused = Refused { req: r1, reason: RefuseReason::RateLimited, suggestions: Vec::new() };
    n.on_message(first.id, SearchMessage::Refused(refused), &Refs(Vec::new()), now, &mut out);
    let r2 = req(&out, second.id).expect("then the second");
    out.clear();
    n.on_unreachable(second.id, now, &mut out);
    assert_eq!(events(&out), vec![Event::SearchDone { id: 1, hits: 0, end: SearchEnd::Failed }]);
    let _ = r2;
    out.clear();
    n.start((2, "u".into()), SearchQuery::parse("x").expect("valid"), Vec::new(), now, &mut out);
    assert_eq!(events(&out), vec![Event::SearchDone { id: 2, hits: 0, end: SearchEnd::NoIndexer }]);
}

#[test]
fn the_node_ends_an_idle_search_and_tells_the_emitter() {
    let now = T0;
    let (mut n, _) = node(1);
    let e = PeerAddr::id_only(Keypair::derive(2, "a").peer_id());
    let mut out = Vec::new();
    n.start((1, "u".into()), SearchQuery::parse("x").expect("valid"), vec![e.clone()], now, &mut out);
    let req = match sends(&out).as_slice() {
        [(_, SearchMessage::Request(r))] => r.req,
        other => panic!("{other:?}"),
    };
    // The emitter takes it (an empty first batch).
    n.on_message(e.id, SearchMessage::Hits(SearchHits { req, records: Vec::new() }), &Refs(Vec::new()), now, &mut out);
    let deadline = n.poll_timeout().expect("an idle timer");
    let c = Config::default();
    assert_eq!(deadline, now + c.search_timeout + c.response_timeout);
    out.clear();
    n.handle_timeout(&|_| Vec::new(), &Refs(Vec::new()), deadline, &mut out);
    assert!(matches!(sends(&out).as_slice(), [(to, SearchMessage::Cancel { .. })] if *to == e.id));
    assert_eq!(events(&out), vec![Event::SearchDone { id: 1, hits: 0, end: SearchEnd::Idle }]);
    assert_eq!(n.poll_timeout(), None);
}

#[test]
fn a_silent_emitter_is_given_up_for_the_next_indexer() {
    let now = T0;
    let (mut n, _) = node(1);
    let dead = PeerAddr::id_only(Keypair::derive(2, "dead").peer_id());
    let next = PeerAddr::id_only(Keypair::derive(3, "next").peer_id());
    let mut out = Vec::new();
    n.start((1, "u".into()), SearchQuery::parse("x").expect("valid"), vec![dead.clone(), next.clone()], now, &mut out);
    let answer_by = n.poll_timeout().expect("a deadline");
    assert_eq!(answer_by, now + Config::default().response_timeout);
    out.clear();
    n.handle_timeout(&|_| Vec::new(), &Refs(Vec::new()), answer_by, &mut out);
    let s = sends(&out);
    assert!(s.iter().any(|(to, m)| *to == dead.id && matches!(m, SearchMessage::Cancel { .. })));
    assert!(s.iter().any(|(to, m)| *to == next.id && matches!(m, SearchMessage::Request(_))), "{s:?}");
    assert!(events(&out).is_empty(), "the search goes on");
}

#[test]
fn the_mesh_drops_forged_and_over_rate_queries_before_forwarding() {
    let now = T0;
    let config = Config { search_mesh_max_per_minute: 3, ..Config::default() };
    let emitter = Keypair::derive(7, "emitter");
    let mut state = super::serve::tests_support::Gate::default();
    let me = Keypair::derive(8, "me").peer_id();
    assert!(!state.accept(&config, me, &forged_query_payload(&emitter, 1, now), now), "bad signature");
    let expired = signed_query_payload(&emitter, 2, now, now);
    assert!(!state.accept(&config, me, &expired, now), "expired");
    for n in 10..13 {
        let p = signed_query_payload(&emitter, n, now, now + Duration::from_secs(60));
        assert!(state.accept(&config, me, &p, now), "within the rate");
        assert!(state.accept(&config, me, &p, now), "a duplicate passes (the mesh dedupes it) and is not counted");
    }
    let p = signed_query_payload(&emitter, 13, now, now + Duration::from_secs(60));
    assert!(!state.accept(&config, me, &p, now), "the 4th new query in a minute is dropped");
    let later = now + Duration::from_secs(61);
    let p = signed_query_payload(&emitter, 14, later, later + Duration::from_secs(60));
    assert!(state.accept(&config, me, &p, later), "a minute later the window has room again");
    assert!(!state.accept(&config, me, b"garbage", later));
}
