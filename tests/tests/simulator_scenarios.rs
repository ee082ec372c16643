//! The shipped simulator scenarios, run in-process, judged on their outcomes (DESIGN.md §5).
//!
//! Each test runs one file of `simulator/scenarios/` with real `ocd-core` peers and asserts what
//! the scenario promises in its header comment.

use ocd_simulator::report::Report;
use ocd_simulator::{Scenario, run};
use std::path::PathBuf;

fn scenario(file: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../simulator/scenarios").join(file);
    Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn report(file: &str) -> Report {
    run(scenario(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn indexer_crash_is_detected_within_25s_p99_and_pools_recover_within_60s() {
    let r = report("indexer-crash.toml");
    let crash = r.faults.iter().find(|f| f.kind == "crash").expect("a crash fault");
    assert!(crash.affected_nodes > 0, "nobody had the crashed indexer live: {crash:?}");
    assert_eq!(crash.undetected, 0, "{crash:?}");
    assert_eq!(crash.unrecovered, 0, "{crash:?}");
    let detect = crash.detect_ms.expect("detections");
    let recover = crash.recover_ms.expect("recoveries");
    assert!(detect.p99 <= 25_000, "detection p99 {} ms > 25 s: {crash:?}", detect.p99);
    assert!(recover.p99 <= 60_000, "recovery p99 {} ms > 60 s: {crash:?}", recover.p99);
    let restart = r.faults.iter().find(|f| f.kind == "restart").expect("a restart fault");
    assert!(restart.readmitted.unwrap_or(0) > 0, "no node readmitted the restarted indexer: {restart:?}");
}

#[test]
fn partition_then_heal_converges() {
    let r = report("partition-heal.toml");
    let partition = r.faults.iter().find(|f| f.kind == "partition").expect("a partition fault");
    assert!(partition.affected_nodes > 0, "{partition:?}");
    assert_eq!(partition.undetected, 0, "nodes kept counting unreachable indexers live: {partition:?}");
    let heal = r.faults.iter().find(|f| f.kind == "heal").expect("a heal fault");
    assert_eq!(heal.unrecovered, 0, "{heal:?}");
    assert_eq!(r.pool.final_nodes_below_min, 0, "below min at the end: {:?}", r.pool.final_below_min_peers);
}

#[test]
fn lying_or_flapping_indexers_are_evicted_by_90_percent_of_their_nodes() {
    let r = report("byzantine-indexers.toml");
    assert_eq!(r.byzantine.len(), 4, "{:?}", r.byzantine);
    for b in &r.byzantine {
        let nodes = b.honest_nodes.unwrap_or(0);
        assert!(nodes > 0, "{} ({}) was in no honest pool, nothing measured", b.peer, b.behaviour);
        let share = b.evicted_by.unwrap_or(0.0);
        assert!(share >= 0.9, "{} ({}) evicted by only {:.0}% of {nodes} nodes", b.peer, b.behaviour, share * 100.0);
    }
    assert_eq!(r.bans.honest, 0);
}

#[test]
fn flooding_node_is_banned_and_no_honest_node_is_ever_banned() {
    let r = report("heartbeat-flood.toml");
    assert_eq!(r.byzantine.len(), 3, "{:?}", r.byzantine);
    for b in &r.byzantine {
        assert!(b.reached.unwrap_or(0) > 0, "{} reached no indexer", b.peer);
        assert_eq!(b.banned_by, Some(1.0), "{} banned by {:?} of {:?} indexers", b.peer, b.banned_by, b.reached);
    }
    assert_eq!(r.bans.honest, 0, "{:?}", r.invariant_violations);
    assert!(r.bans.byzantine >= 3);
    assert!(!r.invariant_violations.iter().any(|v| v.contains("honest peer")), "{:?}", r.invariant_violations);
}

#[test]
fn same_seed_same_trace_hash_twice_in_one_test() {
    let a = report("heartbeat-flood.toml");
    let b = report("heartbeat-flood.toml");
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.without_wall_clock(), b.without_wall_clock());
}

#[test]
fn different_seeds_different_trace_hash() {
    let sc = scenario("heartbeat-flood.toml");
    let seed = sc.seed;
    let a = run(sc.clone()).unwrap();
    let b = run(sc.with_seed(seed + 1)).unwrap();
    assert_ne!(a.trace_hash, b.trace_hash);
    assert_eq!(b.seed, seed + 1);
}

#[test]
fn steady_state_has_no_invariant_violations() {
    let r = report("steady-state.toml");
    assert_eq!(r.invariant_violation_count, 0, "{:#?}", r.invariant_violations);
    assert_eq!(r.bans.honest, 0);
    assert!(r.pool.final_nodes > 0);
}

#[test]
fn steady_state_brings_every_node_to_its_minimum_pool() {
    let r = report("steady-state.toml");
    assert_eq!(r.pool.final_nodes_below_min, 0, "below min at the end: {:?}", r.pool.final_below_min_peers);
    assert!(r.pool.final_mean_live >= r.pool.min_target as f64);
}

#[test]
fn lossy_and_slow_network_keeps_every_node_at_its_minimum_pool() {
    let r = report("lossy-network.toml");
    // Once joined (by 10 min), no node is ever below its minimum, while latency and loss rise.
    let late: Vec<_> = r.pool.timeline.iter().filter(|p| p.0 >= 600_000).collect();
    assert!(!late.is_empty());
    for p in &late {
        assert_eq!(p.2, 0, "nodes below min at {} ms: {:?}", p.0, p);
        assert!(p.1 >= r.pool.min_target as f64, "mean live pool below min at {} ms", p.0);
    }
    assert_eq!(r.pool.final_nodes_below_min, 0);
    assert_eq!(r.bans.honest, 0, "loss must never get an honest node banned");
    assert_eq!(r.invariant_violation_count, 0, "{:#?}", r.invariant_violations);
}

// ---- records, the DHT and lookups (issue 4) ----
//
// The shipped lookup scenarios are sized for release builds (`lookup-scale.toml` has 5,000 nodes);
// these tests run them scaled down — same shape, fewer nodes, shorter — so that each stays under
// about a minute in a debug build. The full-size figures are measured in release (see
// simulator/README.md).

/// The shipped scenario `file` with each `(from, to)` text replacement applied (each `from` must
/// occur, so a change to the file cannot silently void the variant).
fn variant(file: &str, edits: &[(&str, &str)]) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../simulator/scenarios").join(file);
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in edits {
        assert!(text.contains(from), "{file} no longer contains {from:?}");
        text = text.replacen(from, to, 1);
    }
    Scenario::from_toml(&text).unwrap_or_else(|e| panic!("{file} variant: {e}"))
}

fn ok_ratio(r: &Report) -> f64 {
    let l = r.lookups.as_ref().expect("a lookups section");
    assert!(l.issued > 0, "no lookup was counted: {l:?}");
    l.ok as f64 / l.issued as f64
}

#[test]
fn lookups_of_live_nodes_succeed_with_100_indexers_in_few_hops() {
    // 100 indexers as in the full scenario, 150 nodes instead of 5,000, 2.5 minutes.
    let sc = variant(
        "lookup-scale.toml",
        &[
            ("duration = \"8m\"", "duration = \"150s\""),
            ("count = 5000", "count = 150"),
            ("start_spread = \"60s\"", "start_spread = \"20s\""),
            ("from = \"5m\"", "from = \"60s\""),
            ("rate_per_s = 20.0", "rate_per_s = 15.0"),
            ("warmup = \"90s\"", "warmup = \"40s\""),
        ],
    );
    let r = run(sc).unwrap();
    let l = r.lookups.clone().expect("lookups");
    assert!(ok_ratio(&r) >= 0.999, "only {} of {} lookups succeeded: {:#?}", l.ok, l.issued, l.failures);
    assert!(l.by_did.issued > 0 && l.by_peer.issued > 0, "{l:?}");
    // ⌈log2(100)⌉ / 2 + 1 = 4.5
    assert!(l.hops_p50.unwrap_or(u64::MAX) <= 4, "median hops {:?}", l.hops_p50);
    assert_eq!(r.invariant_violation_count, 0, "{:#?}", r.invariant_violations);
    assert_eq!(r.bans.honest, 0, "{:?}", r.refusals);
    let records = r.records.expect("records");
    assert!(records.mean_records_per_indexer > 0.0 && records.mean_routing_table > 0.0, "{records:?}");
}

#[test]
fn lookups_survive_20_percent_of_indexers_crashing_and_restarting() {
    let sc = variant(
        "lookup-churn.toml",
        &[
            ("duration = \"8m\"", "duration = \"5m\""),
            ("count = 100", "count = 30"),
            ("count = 1000", "count = 200"),
            ("start_spread = \"60s\"", "start_spread = \"20s\""),
            ("at = \"4m\"", "at = \"150s\""),
            ("targets = [\"idx/0..20\"]", "targets = [\"idx/0..6\"]"),
            ("at = \"5m\"", "at = \"210s\""),
            ("targets = [\"idx/0..20\"]", "targets = [\"idx/0..6\"]"),
            ("from = \"2m\"", "from = \"70s\""),
        ],
    );
    let r = run(sc.with_seed(22)).unwrap();
    let l = r.lookups.clone().expect("lookups");
    assert!(ok_ratio(&r) >= 0.99, "only {} of {} lookups succeeded: {:#?}", l.ok, l.issued, l.failures);
    let crash = r.faults.iter().find(|f| f.kind == "crash").expect("a crash");
    assert!(crash.affected_nodes > 0, "the crash hit nobody: {crash:?}");
    assert_eq!(r.bans.honest, 0, "{:?}", r.refusals);
    assert_eq!(r.invariant_violation_count, 0, "{:#?}", r.invariant_violations);
}

#[test]
fn a_withholding_indexer_does_not_stop_lookups() {
    let sc = variant(
        "withhold.toml",
        &[
            ("duration = \"10m\"", "duration = \"5m\""),
            ("count = 30", "count = 20"),
            ("count = 600", "count = 200"),
            ("start_spread = \"60s\"", "start_spread = \"20s\""),
            ("at = \"3m\"", "at = \"90s\""),
            ("from = \"2m\"", "from = \"80s\""),
        ],
    );
    let r = run(sc).unwrap();
    let b = r.byzantine.iter().find(|b| b.behaviour == "withhold_records").expect("the withholder");
    assert!(b.lookups.unwrap_or(0) > 0, "no lookup ran while it withheld: {b:?}");
    let share = b.lookups_ok_ratio.unwrap_or(0.0);
    assert!(share >= 0.99, "{:.2}% of lookups ok while {} withheld", share * 100.0, b.peer);
    assert!(r.network.dropped_byzantine > 0, "the withholder was never sent a STORE to drop");
    assert!(ok_ratio(&r) >= 0.99);
    assert_eq!(r.bans.honest, 0);
    assert_eq!(r.invariant_violation_count, 0, "{:#?}", r.invariant_violations);
}

#[test]
fn forged_records_are_never_accepted_and_their_senders_are_banned() {
    let sc =
        variant("foreign-did.toml", &[("duration = \"10m\"", "duration = \"8m\""), ("count = 300", "count = 150")]);
    let r = run(sc).unwrap();
    assert_eq!(r.byzantine.len(), 2, "{:?}", r.byzantine);
    for b in &r.byzantine {
        assert_eq!(b.records_accepted, Some(0), "{} ({}) got records accepted", b.peer, b.behaviour);
        assert!(b.reached.unwrap_or(0) > 0, "{} ({}) never sent a forged record", b.peer, b.behaviour);
        let share = b.banned_by.unwrap_or(0.0);
        assert!(
            share >= 0.9,
            "{} ({}) banned by {:.0}% of {:?} indexers",
            b.peer,
            b.behaviour,
            share * 100.0,
            b.reached
        );
    }
    assert_eq!(r.bans.honest, 0, "{:?}", r.refusals);
    // Among them: no honest indexer stored a forged record, and the victim's DID always resolved
    // to the victim.
    assert_eq!(r.invariant_violation_count, 0, "{:#?}", r.invariant_violations);
    let records = r.records.as_ref().expect("records");
    assert!(records.rejected > 0, "no forged record was ever refused: {records:?}");
    let l = r.lookups.as_ref().expect("lookups");
    assert_eq!(l.failed, 0, "{:#?}", l.failures);
}

const EXPIRY: &str = r#"
name = "record-expiry"
seed = 31
duration = "6m"

[[group]]
name = "idx"
count = 8
role = "indexer"
seeds = ["idx"]
seeds_sample = 3
start_spread = "10s"

[[group]]
name = "n"
count = 30
role = "node"
seeds = ["idx"]
seeds_sample = 2
start_spread = "20s"
[group.config]
min_indexers = 2
max_indexers = 3
record_ttl = "60s"

[[fault]]
at = "2m"
kind = "crash"
targets = ["n/0"]
"#;

#[test]
fn a_crashed_node_stops_being_found_once_its_record_expires() {
    use ocd_core::proto::{Command, RecordKey};
    use ocd_simulator::Simulation;
    use std::time::Duration;

    let mut sim = Simulation::new(Scenario::from_toml(EXPIRY).unwrap()).unwrap();
    let (did, id) = (sim.did_of("n/0").unwrap().clone(), sim.peer_id_of("n/0").unwrap());
    let lookup = |sim: &mut Simulation, at_s: u64, first_id: u64| {
        sim.run_for(Duration::from_secs(at_s));
        assert!(sim.command("n/1", Command::Lookup { id: first_id, key: RecordKey::Did(did.clone()) }));
        assert!(sim.command("n/1", Command::Lookup { id: first_id + 1, key: RecordKey::Peer(id) }));
        // Every lookup ends within lookup_timeout × lookup_attempts (30 s).
        sim.run_for(Duration::from_secs(at_s + 35));
        let a = sim.lookup_result("n/1", first_id).expect("the DID lookup finished").clone();
        let b = sim.lookup_result("n/1", first_id + 1).expect("the peer-id lookup finished").clone();
        (a.record, b.record)
    };
    // Shortly after the crash (2 min) its last record is still valid: found both ways.
    let (a, b) = lookup(&mut sim, 125, 1);
    assert!(sim.peer("n/0").is_none(), "n/0 crashed");
    assert_eq!(a.map(|r| r.body.peer_id), Some(id), "not found by DID right after the crash");
    assert_eq!(b.map(|r| r.body.peer_id), Some(id), "not found by peer id right after the crash");
    // Its record was signed before the crash and lives record_ttl (60 s): gone by crash + 60 s.
    let (a, b) = lookup(&mut sim, 120 + 60 + 10, 3);
    assert_eq!(a, None, "still found by DID after its record expired");
    assert_eq!(b, None, "still found by peer id after its record expired");
    // A live node is still found at that point (the lookup path itself works).
    let live = sim.peer_id_of("n/2").unwrap();
    sim.run_for(Duration::from_secs(240));
    assert!(sim.command("n/1", Command::Lookup { id: 5, key: RecordKey::Peer(live) }));
    sim.run_for(Duration::from_secs(280));
    let r = sim.lookup_result("n/1", 5).expect("finished").clone();
    assert_eq!(r.record.map(|r| r.body.peer_id), Some(live));
}

#[test]
fn same_seed_same_trace_hash_with_the_lookup_workload_on() {
    let text = format!("{EXPIRY}\n[[workload]]\nkind = \"lookup\"\nfrom = \"70s\"\nrate_per_s = 5.0\nwarmup = \"40s\"");
    let sc = Scenario::from_toml(&text).unwrap();
    let a = run(sc.clone()).unwrap();
    let b = run(sc.clone()).unwrap();
    let l = a.lookups.as_ref().expect("lookups");
    assert!(l.issued > 100, "{l:?}");
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.without_wall_clock(), b.without_wall_clock());
    let c = run(sc.with_seed(32)).unwrap();
    assert_ne!(a.trace_hash, c.trace_hash);
}

// ---- distributed search (issue: search mesh) ----
//
// The shipped search scenarios have 100 indexers and thousands of nodes (release checks, see
// simulator/README.md); these run the same mechanisms small: 8 indexers, 60 nodes, a few minutes.

const SEARCH: &str = r#"
name = "search-small"
seed = 41
duration = "4m"

[network]
latency_ms = [10, 80]

[[group]]
name = "idx"
count = 8
role = "indexer"
seeds = ["idx"]
seeds_sample = 3
start_spread = "10s"

[[group]]
name = "n"
count = 60
role = "node"
seeds = ["idx"]
seeds_sample = 3
start_spread = "20s"
[group.config]
min_indexers = 2
max_indexers = 3

[[workload]]
kind = "search"
from = "80s"
rate_per_s = 1.0
warmup = "60s"
by = "name"

[[workload]]
kind = "search"
from = "80s"
rate_per_s = 0.5
warmup = "60s"
by = "did"

[[workload]]
kind = "search"
from = "80s"
rate_per_s = 0.5
warmup = "60s"
by = "peer"
"#;

fn found_ratio(r: &Report) -> f64 {
    let s = r.searches.as_ref().expect("a searches section");
    assert!(s.issued > 0, "no search was counted: {s:?}");
    s.found as f64 / s.issued as f64
}

/// Share of searches that must find their target in these small runs. Below 1: a node whose
/// best-scored indexer changes between heartbeats is briefly held as a referent by no indexer
/// (the core sends the referent flag only in each indexer's regular heartbeat), and a search in
/// that window misses it (`failure_causes`: `unreferenced`, `referent_dropped`).
const SMALL_FOUND_MIN: f64 = 0.95;

#[test]
fn searches_find_live_nodes_by_name_did_and_peer_id_and_repeat_exactly() {
    let sc = Scenario::from_toml(SEARCH).unwrap();
    let a = run(sc.clone()).unwrap();
    let s = a.searches.clone().expect("searches");
    assert!(s.by_name.issued > 0 && s.by_did.issued > 0 && s.by_peer.issued > 0, "{s:?}");
    assert!(found_ratio(&a) >= SMALL_FOUND_MIN, "{} of {} found: {:#?}", s.found, s.issued, s.failures);
    assert!(s.by_did.ok > 0 && s.by_peer.ok > 0, "{s:?}");
    assert_eq!(s.forged_delivered, 0);
    assert_eq!(s.unrelated_delivered, 0);
    assert!(s.p99_ms.unwrap_or(u64::MAX) <= 2_000, "hit latency p99 {:?} ms", s.p99_ms);
    // The mesh formed among all 8 indexers, in one piece, and carried every query.
    let (_, n, mean, none, components) = *s.mesh.timeline.last().expect("mesh samples");
    assert_eq!((n, none, components), (8, 0, 1), "mesh {:?}", s.mesh.timeline);
    assert!(mean >= 2.0, "mean neighbours {mean}");
    assert!(s.mesh.data_messages > 0 && s.mesh.data_per_search_per_indexer > 0.5, "{:?}", s.mesh);
    assert_eq!(a.invariant_violation_count, 0, "{:#?}", a.invariant_violations);
    assert_eq!(a.bans.honest, 0);
    // Same seed, same run: the mesh (iroh-gossip) keeps the trace deterministic.
    let b = run(sc.clone()).unwrap();
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.without_wall_clock(), b.without_wall_clock());
    let c = run(sc.with_seed(42)).unwrap();
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn forged_search_hits_never_reach_an_application_and_forgers_are_dropped() {
    let sc = variant(
        "search-forged.toml",
        &[
            ("duration = \"8m\"", "duration = \"5m\""),
            ("count = 100", "count = 10"),
            ("count = 2000", "count = 80"),
            ("start_spread = \"60s\"", "start_spread = \"20s\""),
            ("targets = [\"idx/0..5\"]", "targets = [\"idx/0..2\"]"),
            ("at = \"3m\"", "at = \"60s\""),
            ("from = \"4m\"", "from = \"80s\""),
            ("rate_per_s = 10.0", "rate_per_s = 3.0"),
            ("warmup = \"90s\"", "warmup = \"50s\""),
        ],
    );
    let r = run(sc).unwrap();
    let s = r.searches.clone().expect("searches");
    assert_eq!(s.forged_delivered, 0, "{:#?}", r.invariant_violations);
    assert_eq!(s.unrelated_delivered, 0);
    assert!(s.forged_dropped > 0, "no forgery was ever dropped");
    assert_eq!(r.byzantine.len(), 2, "{:?}", r.byzantine);
    for b in &r.byzantine {
        let sent = b.forged_sent.expect("forged counts");
        assert!(sent.found + sent.hits > 0, "{} never forged", b.peer);
        assert_eq!(b.forged_delivered, Some(0), "{b:?}");
        // Every honest node it relayed a forgery to evicted it for that.
        if b.exposed_nodes.unwrap_or(0) > 0 {
            assert_eq!(b.distrusted_by, Some(1.0), "{b:?}");
        }
    }
    assert!(
        r.byzantine.iter().any(|b| b.exposed_nodes.unwrap_or(0) > 0),
        "no node was relayed a forgery: {:?}",
        r.byzantine
    );
    assert!(found_ratio(&r) >= SMALL_FOUND_MIN, "{} of {} found: {:#?}", s.found, s.issued, s.failures);
    // No honest peer's hit was taken for a forgery, no honest indexer distrusted, nobody honest banned.
    assert_eq!(r.invariant_violation_count, 0, "{:#?}", r.invariant_violations);
    assert_eq!(r.bans.honest, 0, "{:?}", r.refusals);
}

#[test]
fn searches_survive_indexers_crashing() {
    let sc = variant(
        "search-churn.toml",
        &[
            ("duration = \"8m\"", "duration = \"4m\""),
            ("count = 100", "count = 20"),
            ("count = 2000", "count = 120"),
            ("start_spread = \"60s\"", "start_spread = \"20s\""),
            ("at = \"5m\"", "at = \"150s\""),
            ("targets = [\"idx/0..10\"]", "targets = [\"idx/0..2\"]"),
            ("from = \"4m\"", "from = \"80s\""),
            ("rate_per_s = 10.0", "rate_per_s = 3.0"),
            ("warmup = \"90s\"", "warmup = \"50s\""),
        ],
    );
    let r = run(sc).unwrap();
    let crash = r.faults.iter().find(|f| f.kind == "crash").expect("a crash");
    assert!(crash.affected_nodes > 0, "the crash hit nobody: {crash:?}");
    let s = r.searches.clone().expect("searches");
    assert!(found_ratio(&r) >= SMALL_FOUND_MIN, "{} of {} found: {:#?}", s.found, s.issued, s.failures);
    assert_eq!(s.forged_delivered, 0);
    // The mesh is whole again among the 18 survivors.
    let (_, n, _, none, components) = *s.mesh.timeline.last().expect("mesh samples");
    assert_eq!((n, none, components), (18, 0, 1), "mesh {:?}", s.mesh.timeline);
    assert_eq!(r.bans.honest, 0);
    assert_eq!(r.invariant_violation_count, 0, "{:#?}", r.invariant_violations);
}

// ---- application messages (issue 11) ----

/// Nothing lost, nothing twice: every accepted critical message in its receiver's inbox once,
/// every moderate one delivered, abandoned or dropped with its crashed sender, never twice.
fn assert_sends_settled(name: &str, r: &Report) {
    let s = r.sends.as_ref().unwrap_or_else(|| panic!("{name}: no sends section"));
    let (c, m) = (&s.critical, &s.moderate);
    assert!(c.sent > 0, "{name}: nothing sent: {s:?}");
    assert_eq!((c.lost, c.duplicates, c.pending_at_end), (0, 0, 0), "{name} critical: {c:?}");
    assert_eq!(c.delivered, c.sent, "{name}: every accepted critical message delivered: {c:?}");
    assert_eq!(c.abandoned, 0, "{name}: critical messages are never given up: {c:?}");
    assert_eq!((m.lost, m.duplicates, m.pending_at_end), (0, 0, 0), "{name} moderate: {m:?}");
    assert_eq!(m.delivered + m.abandoned + m.dropped_by_crash, m.sent, "{name} moderate: {m:?}");
    assert_eq!(s.queued_at_end, 0, "{name}: durable queues left at the end");
    assert_eq!(r.invariant_violation_count, 0, "{name}: {:?}", r.invariant_violations);
}

#[test]
fn messages_survive_receiver_and_sender_crashes_a_partition_and_loss_exactly_once() {
    let r = report("send-churn.toml");
    assert_sends_settled("send-churn", &r);
    let c = &r.sends.as_ref().expect("sends").critical;
    // Receivers and senders came back during the run, and the partition healed.
    assert!(c.after_return_count > 0 && c.after_heal_count > 0, "{c:?}");
    // After an end returns, the next attempt starts within one retry interval (15 s) of the
    // last; the one in flight at the return may still fail (connect timeout, a lost packet and
    // the 10 s acknowledgement timeout), so the bound is two intervals and an ack timeout.
    let back = c.after_return_ms.expect("deliveries after a restart");
    assert!(back.p99 <= 40_000, "after a restart p99 {} ms: {c:?}", back.p99);
}

#[test]
fn senders_crashing_with_a_full_queue_deliver_every_accepted_message_once() {
    let r = report("send-sender-crash.toml");
    assert_sends_settled("send-sender-crash", &r);
    let s = r.sends.as_ref().expect("sends");
    // The queues filled: sends beyond the per-destination bound were refused at once.
    assert!(s.critical.refused > 0, "{s:?}");
    assert_eq!(s.refusals.get("DestinationFull").copied(), Some(s.critical.refused), "{s:?}");
    // Every accepted message was queued through both crashes and delivered after the restarts:
    // most within a few round trips of the return, and the p99 within two retry intervals and an
    // acknowledgement timeout, as in `send-churn`. With 1 % loss, the first attempt of a pair of
    // peers fails when one of its handshake or delivery messages is lost, and all the messages
    // queued for that pair wait for the next retry, 15 s later: over 44 such pairs that happens
    // in most runs (seeds 1–3 and 62: p99 16.4–16.6 s; seed 4: 2.4 s).
    assert_eq!(s.critical.after_return_count, s.critical.sent, "{s:?}");
    let back = s.critical.after_return_ms.expect("deliveries after the restarts");
    assert!(back.p50 <= 5_000, "after the restarts p50 {} ms: {s:?}", back.p50);
    assert!(back.p99 <= 40_000, "after the restarts p99 {} ms: {s:?}", back.p99);
}

#[test]
fn messages_cross_a_lossy_network_with_skewed_clocks_and_repeat_exactly() {
    let a = report("send-lossy.toml");
    assert_sends_settled("send-lossy", &a);
    // Skewed nodes keep their pools (an indexer's clock is read against its own offset).
    assert_eq!(a.pool.final_nodes_below_min, 0, "{:?}", a.pool);
    let b = report("send-lossy.toml");
    assert_eq!(a.trace_hash, b.trace_hash, "durable stores, restores and skewed clocks are deterministic");
    assert_eq!(a.sends, b.sends);
}

/// `resource-search-all.toml` scaled down (10 indexers, 300 nodes, a search every 2 s once the
/// network has settled): a resource search of type `all` reaches every other live node once over
/// the indexers' mesh, and every answer of their apps arrives.
#[test]
fn a_resource_search_of_type_all_reaches_every_node_once() {
    let s = variant(
        "resource-search-all.toml",
        &[
            ("count = 100", "count = 10"),
            ("count = 5000", "count = 300"),
            ("start_spread = \"60s\"", "start_spread = \"20s\""),
            ("duration = \"7m\"", "duration = \"6m\""),
            ("from = \"5m\"", "from = \"4m\""),
            ("rate_per_s = 1.0", "rate_per_s = 0.5"),
            ("answer_fraction = 0.01", "answer_fraction = 0.05"),
        ],
    );
    let r = run(s).expect("run");
    let rs = r.resource_searches.as_ref().expect("a resource_searches section");
    assert!(rs.searches >= 20, "{rs:?}");
    assert_eq!(rs.no_indexer, 0, "{rs:?}");
    assert_eq!(rs.asked_twice, 0, "a node asked twice: {rs:?}");
    assert!(rs.reach_min >= 0.99, "a search missed nodes: {rs:?}");
    assert!(rs.answers_sent > 0 && rs.answers_received == rs.answers_sent, "answers lost: {rs:?}");
    let last = rs.time_to_last_result_ms.expect("answered searches");
    assert!(last.p99 <= 5_000, "last answer p99 {} ms: {rs:?}", last.p99);
    assert_eq!(r.invariant_violation_count, 0, "{:?}", r.invariant_violations);
}
