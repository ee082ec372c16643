//! What one heartbeat and one session cost an indexer as its session count grows (issue 13).
//!
//! * `sessions/heartbeat/<n>` — an [`IndexerService`] holding `n` established sessions (1 k,
//!   10 k, 100 k) handles the steady-state heartbeat of one of them: a regular heartbeat without
//!   a record, because the indexer already holds the node's current one. What is timed per
//!   heartbeat is what the router does with it: `IndexerService::on_heartbeat`, dropping its
//!   output (the response), then asking both machines for their next deadline (`poll_timeout`), and
//!   running their timers when one is due — so session expiry and the periodic GC (which visit every
//!   session every `gc_interval`) are paid, amortised, where they fall.
//! * Memory per session, measured rather than estimated: the bench binary's global allocator
//!   counts the bytes requested and freed ([`stats_alloc`]); the bytes still held after `n` nodes
//!   opened their session, divided by `n`, are what a session costs. It is printed (not timed)
//!   before the timings, split into the session itself (the indexer's tables: the session, its
//!   expiry, DID, referent and witness indices, and the node's behaviour entry with its rate
//!   windows, in steady state) and the node's record held in the DHT record store.
//!
//! The nodes heartbeat in turn, spread evenly so that each heartbeats every 20 s as an honest node
//! does (no rate limit refuses one); every third node names this indexer as its referent (its
//! record is stored; the others' are held unchecked, as by any indexer that is not the referent).
//! Records live an hour (the longest allowed) and are re-signed and carried once at half-life,
//! outside the measurement, so the indexer keeps holding every node's record however long
//! criterion runs.
//! The heartbeats (and the addresses they come from) are prepared outside the measurement, a few
//! hundred at a time, so that reading them costs the same at any `n`.
//!
//! The configuration is the default one, scaled to `n`: capacity (`max_nodes`) 2n so the indexer
//! is half full (below the offload threshold), the burst guard lets all `n` open their session in
//! the first round, and the behaviour table (default 4,096 peers) and record store hold 2n.
//!
//! Targets: the per-heartbeat cost flat within 2× from 1 k to 100 k sessions; at most 1 KiB per
//! session. Run: `cargo bench -p ocd-core --features internals --bench sessions -- --warm-up-time 1
//! --measurement-time 3`.

mod common;

use common::{Node, record_of};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ocd_core::proto::internals::{Action, Dht, IndexerService};
use ocd_core::proto::wire::{Heartbeat, HeartbeatKind, IndexerMessage};
use ocd_core::proto::{Config, Envelope, PeerAddr, RequestId, Timestamp};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Session counts measured.
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// Time between two heartbeats of the same node (the default heartbeat interval).
const HEARTBEAT_EVERY_MS: u64 = 20_000;
/// Lifetime of the nodes' records: the longest a record may claim, so that re-signing is rare.
const RECORD_TTL: Duration = Duration::from_secs(3600);
/// When the simulation starts.
const START: Timestamp = Timestamp::from_millis(1_700_000_000_000);
/// Heartbeats prepared (outside the measurement) before each timed batch: few enough that the
/// batch stays in the caches. Preparing a whole round at once (`n` heartbeats, 25 MB at 100 k)
/// made the timed loop stream that buffer from memory and free it: a cost of the bench, not of
/// the indexer, that grew with `n`.
const PREPARED: u64 = 256;

/// The default configuration scaled to `n` sessions (see the module doc).
fn bench_config(n: usize) -> Config {
    Config {
        max_nodes: 2 * n,
        max_conn_per_window: n,
        behaviour_table_max: 2 * n,
        record_store_max: (2 * n).max(Config::default().record_store_max),
        record_ttl: RECORD_TTL,
        ..Config::default()
    }
}

/// Bytes and allocations still held, from an allocator region.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    bytes: i64,
    allocations: i64,
}

impl Held {
    fn of(region: &Region<'_, System>) -> Held {
        let s = region.change();
        let bytes = s.bytes_allocated as i64 - s.bytes_deallocated as i64 + s.bytes_reallocated as i64;
        Held { bytes, allocations: s.allocations as i64 - s.deallocations as i64 }
    }

    fn per(self, n: usize) -> (f64, f64) {
        (self.bytes as f64 / n as f64, self.allocations as f64 / n as f64)
    }
}

/// An indexer with `n` sessions and the schedule of their heartbeats.
struct Bench {
    n: usize,
    indexer: IndexerService,
    dht: Dht,
    nodes: Vec<Node>,
    /// Heartbeats sent so far: the clock is `START + beats × 20 s / n`.
    beats: u64,
    /// Which node heartbeats next.
    turn: usize,
    signed_at: Timestamp,
    req: u64,
    out: Vec<Action>,
}

impl Bench {
    /// Signs `n` nodes' records (not measured) and builds an indexer without sessions.
    fn new(n: usize) -> Self {
        let (indexer, dht) = common::indexer(bench_config(n), START);
        let nodes = common::nodes(n, START, RECORD_TTL);
        Bench { n, indexer, dht, nodes, beats: 0, turn: 0, signed_at: START, req: 0, out: Vec::with_capacity(64) }
    }

    fn now(&self) -> Timestamp {
        START + Duration::from_millis(self.beats * HEARTBEAT_EVERY_MS / self.n as u64)
    }

    /// The heartbeat of node `i`: its first one carries its DID and name.
    fn heartbeat(&mut self, i: usize, first: bool, record: bool) -> Heartbeat {
        self.req += 1;
        let node = &self.nodes[i];
        Heartbeat {
            referent: i.is_multiple_of(3),
            did: first.then(|| node.did.clone()),
            name: first.then(|| node.record.body.name.clone()),
            record: record.then(|| node.record.clone()),
            ..Heartbeat::bare(RequestId(self.req), HeartbeatKind::Regular)
        }
    }

    /// A node heartbeats from `from` (answered, never refused); the clock moves on. The address
    /// is the router's (the connection's), prepared outside the measurement with the heartbeat.
    fn beat(&mut self, from: PeerAddr, hb: Heartbeat) {
        let now = self.now();
        self.indexer.on_heartbeat(from, hb, &mut self.dht, now, &mut self.out);
        black_box(&self.out);
        self.out.clear();
        self.timers(now);
        self.beats += 1;
    }

    /// What the router does after each input: next deadlines, and the timers when due.
    fn timers(&mut self, now: Timestamp) {
        if black_box(self.indexer.poll_timeout()).is_some_and(|t| t <= now) {
            self.indexer.handle_timeout(now, &mut self.out);
        }
        if black_box(self.dht.poll_timeout()).is_some_and(|t| t <= now) {
            self.dht.handle_timeout(now, &mut self.out);
        }
        self.out.clear();
    }

    /// A whole round (every node once, in order) outside any measurement, each heartbeat checked.
    fn round(&mut self, first: bool, record: bool) {
        for i in 0..self.n {
            let hb = self.heartbeat(i, first, record);
            let now = self.now();
            let from = self.nodes[i].addr.clone();
            self.indexer.on_heartbeat(from, hb, &mut self.dht, now, &mut self.out);
            assert!(
                self.out.iter().any(|a| matches!(
                    a,
                    Action::Send { message: Envelope::Indexer(IndexerMessage::HeartbeatResponse(_)), .. }
                )),
                "heartbeat not answered: {:?}",
                self.out
            );
            self.out.clear();
            self.timers(now);
            self.beats += 1;
        }
    }

    /// Every node re-signs its record as of now.
    fn resign(&mut self) {
        let now = self.now();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.record = record_of(&n.key, &n.did, i, now, RECORD_TTL);
        }
        self.signed_at = now;
    }

    /// Opens every session, then runs steady rounds, measuring what stays allocated; prints it.
    fn fill(&mut self) {
        let n = self.n;
        let region = Region::new(GLOBAL);
        // 1. Every node opens its session (DID and name in its first heartbeat, no record yet).
        self.round(true, false);
        // 2. Two steady rounds: rate windows and indices at their steady size.
        self.round(false, false);
        self.round(false, false);
        let sessions = Held::of(&region);
        // 3. Each node hands its record (the indexer stores and indexes it), then a steady round.
        self.round(false, true);
        self.round(false, false);
        let total = Held::of(&region);
        assert_eq!(self.indexer.session_count(), n);
        // Every record is held: the referents' stored, the others' held unchecked (an indexer
        // alone in its DHT stores only what it replicates, as any indexer not the referent).
        let now = self.now();
        assert!(self.nodes.iter().all(|x| self.dht.held_expiry(&x.key.peer_id(), now).is_some()));
        assert_eq!(self.dht.records().len(), n.div_ceil(3));
        let records =
            Held { bytes: total.bytes - sessions.bytes, allocations: total.allocations - sessions.allocations };
        let (sb, sa) = sessions.per(n);
        let (rb, ra) = records.per(n);
        let (tb, ta) = total.per(n);
        eprintln!(
            "sessions/{n}: memory per session {sb:.0} B in {sa:.1} allocations (session state); \
             + {rb:.0} B in {ra:.1} allocations (its record held); = {tb:.0} B in {ta:.1} allocations"
        );
    }

    /// Times `iters` steady-state heartbeats (re-signing at half-life outside the measurement),
    /// in batches of at most [`PREPARED`] prepared beforehand.
    fn run(&mut self, iters: u64) -> Duration {
        let mut elapsed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            if self.turn == 0 && self.now() >= self.signed_at + RECORD_TTL / 2 {
                self.resign();
                self.round(false, true);
            }
            let batch = ((self.n - self.turn) as u64).min(left).min(PREPARED);
            let hbs: Vec<(PeerAddr, Heartbeat)> = (self.turn..self.turn + batch as usize)
                .map(|i| (self.nodes[i].addr.clone(), self.heartbeat(i, false, false)))
                .collect();
            let start = Instant::now();
            for (from, hb) in hbs {
                self.beat(from, hb);
            }
            elapsed += start.elapsed();
            self.turn = (self.turn + batch as usize) % self.n;
            left -= batch;
        }
        assert_eq!(self.indexer.session_count(), self.n, "a session was lost");
        elapsed
    }
}

fn sessions(c: &mut Criterion) {
    let mut group = c.benchmark_group("sessions");
    for n in SIZES {
        let built = Instant::now();
        let mut bench = Bench::new(n);
        bench.fill();
        eprintln!("sessions/{n}: set up in {:.1} s", built.elapsed().as_secs_f64());
        group.bench_function(BenchmarkId::new("heartbeat", n), |b| b.iter_custom(|iters| bench.run(iters)));
    }
    group.finish();
}

criterion_group!(benches, sessions);
criterion_main!(benches);
