//! What records cost an indexer per heartbeat, next to one record verification (issue 4).
//!
//! All four benchmarks are in the one group `records`, so they are measured side by side:
//!
//! * `record_verify` — [`PeerRecord::verify`] of a typical record (name, one address, an API URL):
//!   the shape checks plus one ed25519 verification.
//! * `indexer_heartbeat_unchanged_record` — the steady state: an [`IndexerService`] with 400
//!   sessions handles a regular heartbeat from one of them whose `record` is `None`, because the
//!   indexer already holds the node's current record.
//! * `indexer_heartbeat_changed_record` — the same, but every heartbeat carries a record of its
//!   node that the indexer does not hold yet (signed outside the timed loop), so the indexer
//!   verifies one signature, stores and indexes the record per heartbeat.
//! * `indexer_heartbeat_identical_record` — every heartbeat carries the record the indexer already
//!   holds: it must be recognised as held without verifying it again.
//!
//! The record desk is the real [`Dht`] in server mode with an empty routing table (so a record is
//! stored locally, with no claim query nor replication), the configuration is the default one
//! except for `max_conn_per_window` (see [`bench_config`]). What is timed per iteration is
//! `IndexerService::on_heartbeat` and dropping the output (the
//! heartbeat response), as the router does. Heartbeats (and their records) are built before each
//! round, outside the timed loop.
//!
//! Time is simulated: the 400 nodes heartbeat in turn, 50 ms apart, so each heartbeats every 20 s
//! as an honest node does and no rate limit refuses it. Between rounds (untimed) the timers of the
//! indexer and the DHT run, and every `record_ttl / 2` the nodes re-sign their records and carry
//! them in one round of heartbeats, as real nodes do at half-life, so the indexer keeps holding
//! every node's record however long criterion runs.
//!
//! Target: an indexer handles a heartbeat with no record change faster than one ed25519
//! verification. Run: `cargo bench -p ocd-core --bench records -- --warm-up-time 1 --measurement-time 3`.

mod common;

use common::{Node, record_of};
use criterion::{Criterion, criterion_group, criterion_main};
use ocd_core::proto::internals::{Action, Dht, IndexerService};
use ocd_core::proto::wire::{Heartbeat, HeartbeatKind, IndexerMessage};
use ocd_core::proto::{Config, Did, Envelope, Keypair, PeerAddr, RequestId, Timestamp};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Sessions held by the benchmarked indexer.
const NODES: usize = 400;
/// Time between two heartbeats of the same node (the default heartbeat interval).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);
/// When the simulation starts.
const START: Timestamp = Timestamp::from_millis(1_700_000_000_000);

/// The default configuration, except that all 400 nodes may open their session in the first
/// round (`max_conn_per_window`, default 20 per 30 s). That limit is only checked for heartbeats
/// without a session, never on the measured path; every other limit (heartbeat and publish rate
/// windows, capacity 500, session expiry) is the default one and is respected by the schedule.
fn bench_config() -> Config {
    Config { max_conn_per_window: NODES, ..Config::default() }
}

/// What the heartbeats of a benchmark carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carry {
    /// No record: the indexer holds the current one (steady state).
    Nothing,
    /// A freshly re-signed record the indexer does not hold yet.
    Fresh,
    /// The record the indexer already holds.
    Held,
}

/// An indexer with [`NODES`] sessions and the schedule of their heartbeats.
struct Bench {
    indexer: IndexerService,
    dht: Dht,
    nodes: Vec<Node>,
    ttl: Duration,
    now: Timestamp,
    /// When the nodes last re-signed their records.
    signed_at: Timestamp,
    req: u64,
    out: Vec<Action>,
    /// The heartbeats of the current round not sent yet, in node order.
    round: std::vec::IntoIter<(PeerAddr, Heartbeat)>,
}

impl Bench {
    /// An indexer that admitted every node (DID, name and record in its first heartbeat).
    fn new() -> Self {
        let config = bench_config();
        let ttl = config.record_ttl;
        let (indexer, dht) = common::indexer(config, START);
        let nodes = common::nodes(NODES, START, ttl);
        let mut bench = Bench {
            indexer,
            dht,
            nodes,
            ttl,
            now: START,
            signed_at: START,
            req: 0,
            out: Vec::new(),
            round: Vec::new().into_iter(),
        };
        let first: Vec<_> = bench
            .nodes
            .iter()
            .map(|n| Heartbeat {
                did: Some(n.did.clone()),
                name: Some(n.record.body.name.clone()),
                record: Some(n.record.clone()),
                ..Heartbeat::bare(RequestId(0), HeartbeatKind::Regular)
            })
            .collect();
        bench.untimed_round(first);
        assert_eq!(bench.indexer.session_count(), NODES);
        assert_eq!(bench.dht.records().len(), NODES);
        bench
    }

    fn next_req(&mut self) -> RequestId {
        self.req += 1;
        RequestId(self.req)
    }

    /// One heartbeat of the node whose turn it is; the simulated clock moves on to the next one.
    fn step(&mut self, from: PeerAddr, hb: Heartbeat) {
        self.indexer.on_heartbeat(from, hb, &mut self.dht, self.now, &mut self.out);
        black_box(&self.out);
        self.out.clear();
        self.now = self.now + HEARTBEAT_EVERY / NODES as u32;
    }

    /// Builds the regular heartbeats of a round (one per node, in order) carrying `carry`.
    fn build_round(&mut self, carry: Carry) -> Vec<Heartbeat> {
        if carry == Carry::Fresh {
            self.resign();
        }
        (0..NODES)
            .map(|i| Heartbeat {
                record: match carry {
                    Carry::Nothing => None,
                    Carry::Fresh | Carry::Held => Some(self.nodes[i].record.clone()),
                },
                ..Heartbeat::bare(self.next_req(), HeartbeatKind::Regular)
            })
            .collect()
    }

    /// Every node re-signs its record as of now (issued now, expiring `ttl` later).
    fn resign(&mut self) {
        let (now, ttl) = (self.now, self.ttl);
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.record = record_of(&n.key, &n.did, i, now, ttl);
        }
        self.signed_at = now;
    }

    fn pair(&self, hbs: Vec<Heartbeat>) -> std::vec::IntoIter<(PeerAddr, Heartbeat)> {
        self.nodes.iter().map(|n| n.addr.clone()).zip(hbs).collect::<Vec<_>>().into_iter()
    }

    /// Sends a whole round outside any measurement, checking that every heartbeat is answered.
    fn untimed_round(&mut self, hbs: Vec<Heartbeat>) {
        for (from, hb) in self.pair(hbs) {
            self.indexer.on_heartbeat(from, hb, &mut self.dht, self.now, &mut self.out);
            assert!(
                self.out.iter().any(|a| matches!(
                    a,
                    Action::Send { message: Envelope::Indexer(IndexerMessage::HeartbeatResponse(_)), .. }
                )),
                "heartbeat not answered: {:?}",
                self.out
            );
            self.out.clear();
            self.now = self.now + HEARTBEAT_EVERY / NODES as u32;
        }
    }

    /// Between rounds: timers, the nodes' half-life re-signing, then the next round's heartbeats.
    fn prepare_round(&mut self, carry: Carry) {
        if self.indexer.poll_timeout().is_some_and(|t| t <= self.now) {
            self.indexer.handle_timeout(self.now, &mut self.out);
        }
        if self.dht.poll_timeout().is_some_and(|t| t <= self.now) {
            self.dht.handle_timeout(self.now, &mut self.out);
        }
        self.out.clear();
        if carry != Carry::Fresh && self.now >= self.signed_at + self.ttl / 2 {
            let refresh = self.build_round(Carry::Fresh);
            self.untimed_round(refresh);
        }
        assert_eq!(self.indexer.session_count(), NODES, "a session was lost");
        let hbs = self.build_round(carry);
        self.round = self.pair(hbs);
    }

    /// Checks, outside any measurement, one round of `carry` heartbeats: each is answered with a
    /// `HeartbeatResponse` (not refused) and costs exactly the expected signature verifications.
    fn check(&mut self, carry: Carry) {
        self.prepare_round(carry);
        let round = std::mem::replace(&mut self.round, Vec::new().into_iter());
        for (from, hb) in round {
            let before = self.dht.stats().verifications;
            let carried = hb.record.clone();
            self.indexer.on_heartbeat(from.clone(), hb, &mut self.dht, self.now, &mut self.out);
            let response = self.out.iter().find_map(|a| match a {
                Action::Send { to, message: Envelope::Indexer(IndexerMessage::HeartbeatResponse(r)) }
                    if *to == from.id =>
                {
                    Some(r)
                }
                _ => None,
            });
            let response = response.unwrap_or_else(|| panic!("{carry:?}: no HeartbeatResponse in {:?}", self.out));
            assert!(
                !self
                    .out
                    .iter()
                    .any(|a| matches!(a, Action::Send { message: Envelope::Indexer(IndexerMessage::Refused(_)), .. }))
            );
            let held = self.dht.records().by_peer(&from.id, self.now).expect("the indexer holds the record");
            assert_eq!(response.record_expires, Some(held.body.expires_at));
            if let Some(record) = carried {
                assert_eq!(held, &record, "{carry:?}: the carried record is not the one held");
            }
            let verified = self.dht.stats().verifications - before;
            assert_eq!(verified, u64::from(carry == Carry::Fresh), "{carry:?}: signature verifications");
            self.out.clear();
            self.now = self.now + HEARTBEAT_EVERY / NODES as u32;
        }
    }

    /// Times `iters` heartbeats carrying `carry`, rounds prepared outside the measurement.
    fn run(&mut self, iters: u64, carry: Carry) -> Duration {
        let mut elapsed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            if self.round.len() == 0 {
                self.prepare_round(carry);
            }
            let n = (self.round.len() as u64).min(left);
            let start = Instant::now();
            for _ in 0..n {
                if let Some((from, hb)) = self.round.next() {
                    self.step(from, hb);
                }
            }
            elapsed += start.elapsed();
            left -= n;
        }
        elapsed
    }
}

fn records(c: &mut Criterion) {
    let mut group = c.benchmark_group("records");

    let key = Keypair::derive(7, "bench node");
    let did = Did::new("did:ocd:bench-verify").expect("a valid DID");
    let ttl = Config::default().record_ttl;
    let record = record_of(&key, &did, 7, START, ttl);
    let at = START + Duration::from_secs(1);
    assert_eq!(record.verify(at), Ok(()));
    group.bench_function("record_verify", |b| b.iter(|| black_box(&record).verify(black_box(at))));

    for (name, carry) in [
        ("indexer_heartbeat_unchanged_record", Carry::Nothing),
        ("indexer_heartbeat_changed_record", Carry::Fresh),
        ("indexer_heartbeat_identical_record", Carry::Held),
    ] {
        let mut bench = Bench::new();
        bench.check(carry);
        group.bench_function(name, |b| b.iter_custom(|iters| bench.run(iters, carry)));
    }
    group.finish();
}

criterion_group!(benches, records);
criterion_main!(benches);
