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
