//! Distributed search through whole peers (DESIGN §7): two indexers form the search mesh, three
//! nodes name their referents, and a search from one node finds a node referenced by the *other*
//! indexer — by name substring (any case), DID and peer id. A newer search of the same user
//! cancels the older one, a search for nobody ends idle, and a node that names another referent
//! (or leaves) stops being found through the old one.
//!
//! The network is a minimal in-test event loop (5 ms links, connections set up on `Connect`): the
//! multi-peer behaviour at scale is the simulator's job; this checks the flows end to end.

use ocd_core::proto::{
    Command, Config, Event, Input, Keypair, PeerAddr, PeerId, PeerSetup, Roles, SearchEnd, SearchQuery, Timestamp,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const KEY: [u8; 32] = [7; 32];

mod common;
use common::Net;

trait Search {
    fn command(&mut self, i: usize, c: Command);
    fn search(&mut self, from: usize, id: u64, needle: &str) -> (Vec<PeerId>, SearchEnd);
}

impl Search for Net {
    fn command(&mut self, i: usize, c: Command) {
        self.input(i, Input::Command(c));
    }

    /// Runs a search from node `from` and returns its hits' owners and how it ended.
    fn search(&mut self, from: usize, id: u64, needle: &str) -> (Vec<PeerId>, SearchEnd) {
        let query = SearchQuery::parse(needle).expect("a valid needle");
        let mark = self.events.len();
        self.command(from, Command::Search { id, user: "u".into(), query });
        self.run_for(Duration::from_secs(20));
        let mut hits = Vec::new();
        let mut end = None;
        for (_, i, e) in &self.events[mark..] {
            match e {
                Event::SearchHit { id: x, record, .. } if *i == from && *x == id => hits.push(record.body.peer_id),
                Event::SearchDone { id: x, end: e, .. } if *i == from && *x == id => end = Some(*e),
                _ => {}
            }
        }
        (hits, end.expect("every search ends"))
    }
}

/// Two indexers seeding each other, and three nodes: "Alpha-Node" and "beta-node" on indexer 0
/// only, "Gamma-Ünïcode" on indexer 1 only (each its only indexer, so its referent).
fn network() -> Net {
    let anchor = Instant::now();
    let t0 = Timestamp(1_000_000);
    let config = Config { min_indexers: 1, max_indexers: 1, ..Config::default() };
    let ix_keys = [Keypair::derive(1, "ix0"), Keypair::derive(1, "ix1")];
    let ix_ids: Vec<PeerId> = ix_keys.iter().map(|k| k.peer_id()).collect();
    let mut peers = Vec::new();
    for (i, k) in ix_keys.iter().enumerate() {
        let mut s = PeerSetup::new(k.clone(), KEY, Roles::INDEXER);
        s.config = Config { name: format!("indexer-{i}"), ..config.clone() };
        s.seeds = vec![PeerAddr::id_only(ix_ids[1 - i])];
        s.rng_seed = i as u64 + 1;
        s.clock_anchor = Some(anchor);
        peers.push(s);
    }
    for (i, (name, ix)) in [("Alpha-Node", 0), ("beta-node", 0), ("Gamma-Ünïcode", 1)].into_iter().enumerate() {
        let mut s = PeerSetup::new(Keypair::derive(2, &format!("node{i}")), KEY, Roles::NODE);
        s.config = Config { name: name.into(), ..config.clone() };
        s.seeds = vec![PeerAddr::id_only(ix_ids[ix])];
        s.rng_seed = 10 + i as u64;
        s.clock_anchor = Some(anchor);
        peers.push(s);
    }
    let mut net = Net::new(peers, t0);
    net.run_until(t0 + Duration::from_secs(90));
    net
}

#[test]
fn a_search_finds_a_node_referenced_by_another_indexer_by_name_did_and_peer_id() {
    let mut net = network();
    let (a, b, gamma) = (2, 3, 4);
    assert!(
        net.peers[0].search().mesh_neighbours().contains(&net.peers[1].id()),
        "the two indexers are mesh neighbours"
    );
    // Gamma, and indexer 0: an indexer with seeds keeps a pool, so it is a node of indexer 1 too.
    assert_eq!(net.peers[1].search().referenced(), 2, "indexer 1 references gamma and indexer 0");
    let gamma_id = net.peers[gamma].id();
    let gamma_did = net.peers[gamma].did().as_str().to_string();

    // Name substring, another case, non-ASCII: found through the mesh (gamma's referent is ix 1).
    let (hits, end) = net.search(a, 1, "gAMMA-üNÏ");
    assert_eq!(hits, vec![gamma_id]);
    assert_eq!(end, SearchEnd::Idle);
    let (hits, _) = net.search(a, 2, &gamma_did);
    assert_eq!(hits, vec![gamma_id], "by exact DID");
    let (hits, _) = net.search(a, 3, &gamma_id.to_string());
    assert_eq!(hits, vec![gamma_id], "by exact peer id");

    // A substring shared by two nodes finds both, each once; the asker finds itself too.
    let (mut hits, _) = net.search(b, 4, "NODE");
    hits.sort();
    let mut want = vec![net.peers[a].id(), net.peers[b].id()];
    want.sort();
    assert_eq!(hits, want);

    // Nobody by that name: no hit, ended idle.
    let (hits, end) = net.search(a, 5, "nobody-has-this-name");
    assert!(hits.is_empty());
    assert_eq!(end, SearchEnd::Idle);
    let forged = net.events.iter().filter(|(_, _, e)| matches!(e, Event::ForgedHitDropped { .. })).count();
    assert_eq!(forged, 0, "honest peers never forge");
}

#[test]
fn a_newer_search_of_the_same_user_cancels_the_older() {
    let mut net = network();
    let q = |n: &str| SearchQuery::parse(n).expect("valid");
    net.command(2, Command::Search { id: 10, user: "alice".into(), query: q("nobody") });
    net.command(2, Command::Search { id: 11, user: "alice".into(), query: q("gamma") });
    net.command(2, Command::Search { id: 12, user: "bob".into(), query: q("beta") });
    net.run_for(Duration::from_secs(20));
    let ends: BTreeMap<u64, SearchEnd> = net
        .events
        .iter()
        .filter(|(_, i, _)| *i == 2)
        .filter_map(|(_, _, e)| match e {
            Event::SearchDone { id, end, .. } => Some((*id, *end)),
            _ => None,
        })
        .collect();
    assert_eq!(ends.get(&10), Some(&SearchEnd::Cancelled));
    assert_eq!(ends.get(&11), Some(&SearchEnd::Idle));
    assert_eq!(ends.get(&12), Some(&SearchEnd::Idle), "another user's search is not touched");
    assert!(net.peers[0].search().emitting() == 0 && net.peers[1].search().emitting() == 0);
    assert!(net.peers[2].search().active().is_empty());
}

#[test]
fn a_node_that_stops_stops_being_found_through_its_referent() {
    let mut net = network();
    let gamma = 4;
    let gamma_id = net.peers[gamma].id();
    let (hits, _) = net.search(2, 1, "gamma");
    assert_eq!(hits, vec![gamma_id]);
    // Gamma leaves politely: its session, and with it the reference, ends at once.
    net.command(gamma, Command::Shutdown);
    net.up[gamma] = false;
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.peers[1].search().referenced(), 1, "gamma's reference went with its session");
    let (hits, end) = net.search(2, 2, "gamma");
    assert!(hits.is_empty(), "a stopped node's record is no longer served by search: {hits:?}");
    assert_eq!(end, SearchEnd::Idle);
}

/// A resource search of type `all` (DESIGN §9): from node 2 ("Gamma", on indexer 1) it crosses
/// the mesh and reaches both nodes of indexer 0 once each, with the requester, user and request
/// intact — and never the requester itself.
#[test]
fn a_resource_search_reaches_every_other_node_once_over_the_mesh() {
    let mut net = network();
    let mark = net.events.len();
    let request = b"{\"kind\":\"request\"}".to_vec();
    let requester = net.peers[4].id();
    net.command(4, Command::ResourceSearch { id: 7, user: "alice".into(), request: request.clone() });
    net.run_for(Duration::from_secs(10));
    let mut asked: BTreeMap<usize, u32> = BTreeMap::new();
    let mut sent = None;
    for (_, i, e) in &net.events[mark..] {
        match e {
            Event::ResourceSearchAsked { requester: r, user, request: q, via } => {
                assert_eq!((*r, user.as_str(), q), (requester, "alice", &request));
                assert!(net.peers[*i].pool().is_some_and(|p| p.contains(via)), "delivered by the node's own indexer");
                *asked.entry(*i).or_default() += 1;
            }
            Event::ResourceSearchSent { id: 7, via } if *i == 4 => sent = Some(*via),
            _ => {}
        }
    }
    assert!(sent.is_some_and(|v| v.is_some()), "the requester sent it to its indexer");
    assert_eq!(asked, BTreeMap::from([(2, 1), (3, 1)]), "each other node once, not the requester");
}
