//! Record and DHT flows through whole `Peer`s on a tiny in-memory network: records published by
//! heartbeats and replicated among indexers, lookups by DID and by peer id, DID theft refused,
//! records expiring after their owner stops, provider discovery filling a node's pool.
//!
//! The network delivers every message after 10 ms through the real wire encoding; connections
//! open at once between live peers and fail to dead ones.

#![allow(clippy::unwrap_used)]

use ocd_core::proto::wire::{self, Envelope, IndexerMessage};
use ocd_core::proto::{
    AddedVia, Command, Config, Did, Event, Input, Keypair, Output, Peer, PeerAddr, PeerId, PeerSetup, RecordKey, Roles,
    Timestamp,
};
use ocd_core::proto::{PeerRecord, RecordBody};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const KEY: [u8; 32] = [3; 32];
const T0: Timestamp = Timestamp(1_700_000_000_000);
const LATENCY: Duration = Duration::from_millis(10);

enum Delivery {
    Up { at: usize, from: usize, outbound: bool },
    Down { at: usize, from: usize },
    Failed { at: usize, peer: usize },
    Msg { at: usize, from: usize, bytes: Vec<u8> },
}

struct Net {
    peers: Vec<Option<Peer>>,
    ids: Vec<PeerId>,
    keys: Vec<Keypair>,
    now: Timestamp,
    queue: BTreeMap<(Timestamp, u64), Delivery>,
    seq: u64,
    links: BTreeSet<(usize, usize)>,
    events: Vec<(usize, Timestamp, Event)>,
    /// Messages sent by kind, to count what travelled.
    sent: Vec<(usize, usize, Envelope)>,
    /// Rewrites a peer's outgoing message (a misbehaving node).
    tamper: BTreeMap<usize, Box<dyn Fn(Envelope) -> Envelope>>,
}

impl Net {
    /// `indexers` indexers chained as seeds of each other, then `nodes` nodes seeded with the
    /// first `node_seeds` indexers.
    fn new(indexers: usize, nodes: usize, node_seeds: usize, config: Config) -> Net {
        let n = indexers + nodes;
        let keys: Vec<Keypair> = (0..n).map(|i| Keypair::derive(i as u64, "dht-flows")).collect();
        let ids: Vec<PeerId> = keys.iter().map(|k| k.peer_id()).collect();
        let mut peers = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let roles = if i < indexers { Roles::INDEXER } else { Roles::NODE };
            let mut setup = PeerSetup::new(key.clone(), KEY, roles);
            setup.config = Config { name: format!("peer-{i}"), ..config.clone() };
            setup.did = Did::new(format!("did:test:{i}")).unwrap();
            setup.rng_seed = i as u64;
            setup.seeds = if i < indexers {
                (0..i.min(3)).map(|j| PeerAddr::id_only(ids[j])).collect()
            } else {
                (0..node_seeds.min(indexers)).map(|j| PeerAddr::id_only(ids[j])).collect()
            };
            peers.push(Some(Peer::new(setup, T0)));
        }
        Net {
            peers,
            ids,
            keys,
            now: T0,
            queue: BTreeMap::new(),
            seq: 0,
            links: BTreeSet::new(),
            events: Vec::new(),
            sent: Vec::new(),
            tamper: BTreeMap::new(),
        }
    }

    fn ix(&self, id: &PeerId) -> usize {
        self.ids.iter().position(|x| x == id).unwrap()
    }

    fn push(&mut self, d: Delivery) {
        self.seq += 1;
        self.queue.insert((self.now + LATENCY, self.seq), d);
    }

    fn drain(&mut self, p: usize) {
        loop {
            let Some(out) = self.peers[p].as_mut().and_then(|x| x.poll_output()) else { return };
            match out {
                Output::Connect { peer } => {
                    let q = self.ix(&peer.id);
                    if self.peers[q].is_some() {
                        self.links.insert((p.min(q), p.max(q)));
                        self.push(Delivery::Up { at: p, from: q, outbound: true });
                        self.push(Delivery::Up { at: q, from: p, outbound: false });
                    } else {
                        self.push(Delivery::Failed { at: p, peer: q });
                    }
                }
                Output::Send { to, message } => {
                    let q = self.ix(&to);
                    let message = match self.tamper.get(&p) {
                        Some(f) => f(message),
                        None => message,
                    };
                    if self.peers[q].is_some() && self.links.contains(&(p.min(q), p.max(q))) {
                        self.sent.push((p, q, message.clone()));
                        self.push(Delivery::Msg { at: q, from: p, bytes: wire::encode(&message) });
                    }
                }
                Output::Close { peer, .. } => {
                    let q = self.ix(&peer);
                    if self.links.remove(&(p.min(q), p.max(q))) {
                        self.push(Delivery::Down { at: q, from: p });
                    }
                }
                Output::Event(e) => self.events.push((p, self.now, e)),
                Output::Persist(_) | Output::Forget(_) => {}
            }
        }
    }

    fn input(&mut self, p: usize, input: Input) {
        let now = self.now;
        if let Some(peer) = self.peers[p].as_mut() {
            peer.handle(input, now);
            self.drain(p);
        }
    }

    /// Runs the network until `until`.
    fn run_until(&mut self, until: Timestamp) {
        for p in 0..self.peers.len() {
            self.drain(p);
        }
        loop {
            let next_msg = self.queue.keys().next().map(|k| k.0);
            let next_timer = (0..self.peers.len())
                .filter_map(|p| self.peers[p].as_ref().and_then(|x| x.poll_timeout()).map(|t| (t, p)))
                .min();
            let t = match (next_msg, next_timer) {
                (Some(m), Some((tt, _))) => m.min(tt),
                (Some(m), None) => m,
                (None, Some((tt, _))) => tt,
                (None, None) => break,
            };
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            if next_msg == Some(t) {
                let Some((_, d)) = self.queue.pop_first() else { break };
                match d {
                    Delivery::Up { at, from, outbound } => {
                        let peer = self.ids[from];
                        self.input(at, Input::ConnectionUp { peer, addr: None, outbound })
                    }
                    Delivery::Down { at, from } => self.input(at, Input::ConnectionDown { peer: self.ids[from] }),
                    Delivery::Failed { at, peer } => self.input(at, Input::ConnectFailed { peer: self.ids[peer] }),
                    Delivery::Msg { at, from, bytes } => {
                        let message = wire::decode(&bytes).expect("peers send valid frames");
                        self.input(at, Input::Received { from: self.ids[from], message });
                    }
                }
            } else if let Some((_, p)) = next_timer {
                self.input(p, Input::Timeout);
            }
        }
        self.now = until;
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Crashes a peer: it vanishes, its links drop on the other side.
    fn crash(&mut self, p: usize) {
        self.peers[p] = None;
        let links: Vec<(usize, usize)> = self.links.iter().filter(|(a, b)| *a == p || *b == p).copied().collect();
        for (a, b) in links {
            self.links.remove(&(a, b));
            let other = if a == p { b } else { a };
            self.push(Delivery::Down { at: other, from: p });
        }
    }

    /// Looks `key` up from peer `from`; returns (record, hops) once answered.
    fn lookup(&mut self, from: usize, key: RecordKey) -> (Option<PeerRecord>, u32) {
        let id = self.seq + 1_000_000;
        self.input(from, Input::Command(Command::Lookup { id, key }));
        for _ in 0..200 {
            if let Some((record, hops)) = self.events.iter().find_map(|(p, _, e)| match e {
                Event::LookupDone { id: i, record, hops, .. } if *i == id && *p == from => {
                    Some((record.clone(), *hops))
                }
                _ => None,
            }) {
                return (record, hops);
            }
            self.run_for(Duration::from_millis(100));
        }
        panic!("lookup {id} never answered");
    }

    fn did(&self, p: usize) -> Did {
        Did::new(format!("did:test:{p}")).unwrap()
    }
}

fn config() -> Config {
    Config { min_indexers: 2, max_indexers: 3, kad_k: 4, ..Config::default() }
}

#[test]
fn a_published_record_is_found_by_did_and_by_peer_id_from_another_node() {
    let mut net = Net::new(8, 6, 2, config());
    net.run_for(Duration::from_secs(90));
    let (a, b) = (8, 13);
    for key in [RecordKey::Did(net.did(b)), RecordKey::Peer(net.ids[b])] {
        let (record, hops) = net.lookup(a, key.clone());
        let record = record.unwrap_or_else(|| panic!("{key} not found"));
        assert_eq!(record.body.peer_id, net.ids[b]);
        assert_eq!(record.body.did, net.did(b));
        assert_eq!(record.body.name, "peer-13");
        assert!(hops <= 4, "hops {hops}");
    }
    // An indexer looks up directly in the DHT.
    let (record, _) = net.lookup(5, RecordKey::Did(net.did(b)));
    assert_eq!(record.map(|r| r.body.peer_id), Some(net.ids[b]));
    // Nobody claimed this DID.
    let (record, _) = net.lookup(a, RecordKey::Did(Did::new("did:test:nobody").unwrap()));
    assert!(record.is_none());
    // Records are replicated beyond the node's own indexers.
    let holders =
        (0..8).filter(|i| net.peers[*i].as_ref().unwrap().dht().record_by_peer(&net.ids[b], net.now).is_some()).count();
    assert!(holders >= 4, "replicated to the k closest: {holders} holders");
}

#[test]
fn heartbeats_carry_the_record_only_until_the_indexer_holds_it() {
    let mut net = Net::new(4, 1, 3, config());
    net.run_for(Duration::from_secs(600));
    let node = 4;
    let hbs: Vec<bool> = net
        .sent
        .iter()
        .filter(|(p, _, _)| *p == node)
        .filter_map(|(_, _, m)| match m {
            Envelope::Indexer(IndexerMessage::Heartbeat(hb)) => Some(hb.record.is_some()),
            _ => None,
        })
        .collect();
    let with_record = hbs.iter().filter(|x| **x).count();
    assert!(hbs.len() >= 60, "heartbeats sent: {}", hbs.len());
    // One per indexer at start, then one per indexer per re-signature (every record_ttl / 2).
    let resignatures = 600 / (config().record_ttl.as_secs() / 2);
    let pool = 3;
    assert!(
        with_record <= pool * (1 + resignatures as usize),
        "{with_record} of {} heartbeats carried the record",
        hbs.len()
    );
    assert!(with_record >= pool, "every indexer got it at least once");
}

#[test]
fn a_node_claiming_a_foreign_did_is_refused_and_banned() {
    let mut net = Net::new(6, 3, 2, config());
    net.run_for(Duration::from_secs(60));
    // Node 8 starts claiming node 6's DID with records signed by its own key.
    let thief = 8;
    let victim_did = net.did(6);
    let key = net.keys[thief].clone();
    let me = net.ids[thief];
    let forged = move |now: Timestamp| {
        let body = RecordBody {
            peer_id: me,
            did: victim_did.clone(),
            name: "thief".into(),
            addrs: Vec::new(),
            api_url: None,
            nats_address: None,
            wallet: None,
            issued_at: now,
            expires_at: now + Duration::from_secs(300),
        };
        PeerRecord::sign(body, &key).unwrap()
    };
    let start = net.now;
    net.tamper.insert(
        thief,
        Box::new(move |m| match m {
            Envelope::Indexer(IndexerMessage::Heartbeat(mut hb)) => {
                hb.record = Some(forged(start));
                Envelope::Indexer(IndexerMessage::Heartbeat(hb))
            }
            other => other,
        }),
    );
    net.run_for(Duration::from_secs(120));
    let stored_for_thief = net.events.iter().any(|(p, t, e)| {
        *p < 6
            && *t >= start
            && matches!(e, Event::RecordStored { owner, did, .. } if *owner == me && *did == net.did(6))
    });
    assert!(!stored_for_thief, "no indexer ever accepted the stolen DID");
    let banned_by: BTreeSet<usize> = net
        .events
        .iter()
        .filter(|(p, _, e)| *p < 6 && matches!(e, Event::PeerBanned { peer, .. } if *peer == me))
        .map(|(p, _, _)| *p)
        .collect();
    assert!(!banned_by.is_empty(), "the thief is banned");
    // The victim's DID still resolves to the victim.
    let (record, _) = net.lookup(7, RecordKey::Did(net.did(6)));
    assert_eq!(record.map(|r| r.body.peer_id), Some(net.ids[6]));
    // No honest node was banned.
    assert!(!net.events.iter().any(|(_, _, e)| matches!(e, Event::PeerBanned { peer, .. } if *peer != me)));
}

#[test]
fn a_badly_signed_record_is_never_stored_and_costs_a_ban() {
    let mut net = Net::new(4, 2, 2, config());
    net.run_for(Duration::from_secs(30));
    let bad = 5;
    let me = net.ids[bad];
    net.tamper.insert(
        bad,
        Box::new(move |m| match m {
            Envelope::Indexer(IndexerMessage::Heartbeat(mut hb)) => {
                if let Some(r) = &mut hb.record {
                    std::sync::Arc::make_mut(&mut r.body).name = "changed after signing".into();
                }
                Envelope::Indexer(IndexerMessage::Heartbeat(hb))
            }
            other => other,
        }),
    );
    // Force a new record to travel: the node re-signs at half-life.
    net.run_for(config().record_ttl);
    let rejected = net
        .events
        .iter()
        .filter(|(p, _, e)| *p < 4 && matches!(e, Event::RecordRejected { from, .. } if *from == me))
        .count();
    assert!(rejected >= 1, "the tampered record was refused");
    assert!(
        net.events.iter().any(|(p, _, e)| *p < 4 && matches!(e, Event::PeerBanned { peer, .. } if *peer == me)),
        "two bad records ban"
    );
    // Every record of the node any indexer holds verifies.
    for i in 0..4 {
        if let Some(r) = net.peers[i].as_ref().unwrap().dht().record_by_peer(&me, net.now) {
            assert!(r.verify(net.now).is_ok());
            assert_ne!(r.body.name, "changed after signing");
        }
    }
}

#[test]
fn a_stopped_node_stops_being_found_once_its_record_expires() {
    let mut net = Net::new(6, 3, 2, config());
    net.run_for(Duration::from_secs(60));
    let gone = 8;
    let (record, _) = net.lookup(7, RecordKey::Peer(net.ids[gone]));
    let expires = record.expect("found while it runs").body.expires_at;
    net.crash(gone);
    net.run_for(Duration::from_secs(10));
    assert!(net.lookup(7, RecordKey::Peer(net.ids[gone])).0.is_some(), "still valid right after the crash");
    net.run_until(expires + Duration::from_secs(1));
    assert!(net.lookup(7, RecordKey::Peer(net.ids[gone])).0.is_none(), "expired");
    assert!(net.lookup(7, RecordKey::Did(net.did(gone))).0.is_none(), "expired by DID too");
    // A running node is still found.
    assert!(net.lookup(7, RecordKey::Did(net.did(6))).0.is_some());
}

#[test]
fn a_node_discovers_indexers_in_the_dht_and_dead_providers_fade() {
    // Nodes know a single seed; the pool fills from DHT providers.
    let cfg = Config { min_indexers: 2, max_indexers: 4, ..config() };
    let mut net = Net::new(8, 2, 1, cfg.clone());
    // The seed suggests nobody, so only the DHT can fill the pool.
    net.tamper.insert(
        0,
        Box::new(|m| match m {
            Envelope::Indexer(IndexerMessage::HeartbeatResponse(mut r)) => {
                r.suggestions.clear();
                Envelope::Indexer(IndexerMessage::HeartbeatResponse(r))
            }
            other => other,
        }),
    );
    net.run_for(Duration::from_secs(120));
    let node = 8;
    let discovered: BTreeSet<PeerId> = net
        .events
        .iter()
        .filter(|(p, _, e)| *p == node && matches!(e, Event::IndexerAdded { via: AddedVia::Discovery, .. }))
        .filter_map(|(_, _, e)| match e {
            Event::IndexerAdded { indexer, .. } => Some(*indexer),
            _ => None,
        })
        .collect();
    let vias: Vec<String> = net
        .events
        .iter()
        .filter(|(p, _, _)| *p == node)
        .filter_map(|(_, t, e)| match e {
            Event::IndexerAdded { via, .. } => Some(format!("{}:{via:?}", t.0 - T0.0)),
            _ => None,
        })
        .collect();
    assert!(!discovered.is_empty(), "providers were discovered: {vias:?}");
    let pool = net.peers[node].as_ref().unwrap().pool().unwrap();
    assert!(pool.live_count() >= 3, "pool filled beyond the single seed: {}", pool.live_count());
    // An indexer that stops providing disappears from provider answers within provider_ttl.
    net.crash(7);
    net.run_for(cfg.provider_ttl + cfg.gc_interval + Duration::from_secs(1));
    for i in 0..7 {
        let held = net.peers[i].as_ref().unwrap().dht().provider_count();
        assert!(held <= 7, "indexer {i} still holds {held} providers (the dead one faded)");
    }
}
