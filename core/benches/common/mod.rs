//! What the `records` and `sessions` benches build the same way: an indexer (its service and its
//! DHT) and simulated nodes with signed records. Included by both with `mod common;`.

use ocd_core::proto::internals::{Dht, IndexerService};
use ocd_core::proto::{Config, DetRng, Did, Keypair, PeerAddr, PeerRecord, RecordBody, Timestamp};
use std::time::Duration;

/// One simulated node.
pub struct Node {
    pub key: Keypair,
    pub addr: PeerAddr,
    pub did: Did,
    /// Its current record (the one the indexer holds after its last heartbeat).
    pub record: PeerRecord,
}

/// A typical record of node `i`: a name, one address, an API URL; signed at `issued_at`, living
/// `ttl`.
pub fn record_of(key: &Keypair, did: &Did, i: usize, issued_at: Timestamp, ttl: Duration) -> PeerRecord {
    let body = RecordBody {
        peer_id: key.peer_id(),
        did: did.clone(),
        name: format!("node-{i:06}"),
        addrs: vec![format!("/ip4/10.{}.{}.{}/udp/4433/quic-v1", i / 62_500, i / 250 % 250, i % 250 + 1)],
        api_url: Some(format!("https://node-{i:06}.example.org/api")),
        nats_address: None,
        wallet: None,
        issued_at,
        expires_at: issued_at + ttl,
    };
    PeerRecord::sign(body, key).expect("a well-formed record")
}

/// `n` nodes (deterministic keys and DIDs) with records signed at `at`.
pub fn nodes(n: usize, at: Timestamp, ttl: Duration) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let key = Keypair::derive(i as u64, "bench node");
            let did = Did::new(format!("did:ocd:bench-{i:06}")).expect("a valid DID");
            let record = record_of(&key, &did, i, at, ttl);
            let addr = PeerAddr { id: key.peer_id(), addrs: record.body.addrs.clone() };
            Node { key, addr, did, record }
        })
        .collect()
}

/// An indexer without sessions: its service and its DHT (a server), both started at `at`.
pub fn indexer(config: Config, at: Timestamp) -> (IndexerService, Dht) {
    let key = Keypair::derive(0, "bench indexer");
    let me = key.peer_id();
    let dht = Dht::new(config.clone(), key, Vec::new(), true, &[], DetRng::new(1, "bench dht"), at);
    let indexer = IndexerService::new(config, me, DetRng::new(2, "bench indexer"), DetRng::new(3, "bench cache"), at);
    (indexer, dht)
}
