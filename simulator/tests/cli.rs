//! The `ocd-sim` binary: determinism across processes, seeds and thread counts, and errors on bad
//! scenarios.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::PathBuf;
use std::process::Command;

const SMALL: &str = r#"
name = "cli-small"
seed = 9
duration = "3m"

[network]
latency_ms = [5, 40]

[[group]]
name = "idx"
count = 3
role = "indexer"
seeds = ["idx"]
seeds_sample = 2
start_spread = "5s"

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

[[fault]]
at = "90s"
kind = "crash"
targets = ["idx/0"]
"#;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ocd-sim-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(scenario: &PathBuf, seed: Option<u64>, report: &PathBuf) -> serde_json::Value {
    run_with(scenario, seed, report, &[])
}

fn run_with(scenario: &PathBuf, seed: Option<u64>, report: &PathBuf, extra: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ocd-sim"));
    cmd.arg("run").arg(scenario).arg("--report").arg(report).args(extra);
    if let Some(s) = seed {
        cmd.arg("--seed").arg(s.to_string());
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "ocd-sim failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(report).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn same_scenario_and_seed_in_two_processes_give_the_same_report_and_another_seed_does_not() {
    let dir = scratch("det");
    let sc = dir.join("small.toml");
    std::fs::write(&sc, SMALL).unwrap();
    let mut a = run_with(&sc, None, &dir.join("a.json"), &["--threads", "1"]);
    let mut b = run_with(&sc, None, &dir.join("b.json"), &["--threads", "2"]);
    assert_eq!(a["trace_hash"], b["trace_hash"], "one thread and two");
    assert_eq!(a["seed"], 9);
    for r in [&mut a, &mut b] {
        r["wall_ms"] = 0.into();
        r["events_per_wall_s"] = 0.into();
    }
    assert_eq!(a, b, "reports differ beyond wall-clock fields");
    let c = run(&sc, Some(10), &dir.join("c.json"));
    assert_eq!(c["seed"], 10);
    assert_ne!(a["trace_hash"], c["trace_hash"]);
    for key in
        ["scenario", "sim_ms", "events", "messages", "pool", "faults", "byzantine", "bans", "invariant_violations"]
    {
        assert!(a.get(key).is_some(), "report lacks `{key}`");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_scenario_exits_non_zero_with_a_clear_message() {
    let dir = scratch("bad");
    let cases = [
        (SMALL.replace("targets = [\"idx/0\"]", "targets = [\"idx/7\"]"), "out of range"),
        (SMALL.replace("targets = [\"idx/0\"]", "targets = [\"nope/0\"]"), "unknown group"),
        (SMALL.replace("duration = \"3m\"", "duration = \"3 fortnights\""), "bad duration"),
        (SMALL.replace("max_indexers = 3", "max_indexerz = 3"), "max_indexerz"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let sc = dir.join(format!("bad{i}.toml"));
        std::fs::write(&sc, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ocd-sim")).arg("run").arg(&sc).output().unwrap();
        assert!(!out.status.success(), "case {i} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "case {i}: stderr {err:?} lacks {expected:?}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ocd-sim")).arg("run").arg(dir.join("missing.toml")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read scenario"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plot_writes_an_svg_of_a_report() {
    let dir = scratch("plot");
    let sc = dir.join("small.toml");
    std::fs::write(&sc, SMALL).unwrap();
    run(&sc, None, &dir.join("r.json"));
    let out = Command::new(env!("CARGO_BIN_EXE_ocd-sim"))
        .args(["plot"])
        .arg(dir.join("r.json"))
        .arg("--out")
        .arg(dir.join("r.svg"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let svg = std::fs::read_to_string(dir.join("r.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.trim_end().ends_with("</svg>"));
    // The crash's detection times are in the report and drawn as a CDF.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("r.json")).unwrap()).unwrap();
    let samples = report["faults"][0]["detect_samples_ms"].as_array().map_or(0, Vec::len);
    assert!(samples > 0, "detection samples in the report");
    assert!(svg.contains("CDF") && svg.contains("crash at 90s"), "detection CDF drawn");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small network with the search mesh on, searches by name and a forging indexer.
const SEARCH: &str = r#"
name = "cli-search"
seed = 12
duration = "3m"

[network]
latency_ms = [5, 40]

[[group]]
name = "idx"
count = 6
role = "indexer"
seeds = ["idx"]
seeds_sample = 2
start_spread = "5s"

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

[[fault]]
at = "60s"
kind = "byzantine"
targets = ["idx/5"]
behaviour = "forge_search_hits"

[[workload]]
kind = "search"
from = "70s"
rate_per_s = 2.0
warmup = "40s"
"#;

#[test]
fn search_mesh_runs_are_identical_across_processes() {
    // Each process reads its own clock anchor for the mesh (`Instant::now()`): the run must not
    // depend on it.
    let dir = scratch("search");
    let sc = dir.join("search.toml");
    std::fs::write(&sc, SEARCH).unwrap();
    let mut a = run(&sc, None, &dir.join("a.json"));
    let mut b = run(&sc, None, &dir.join("b.json"));
    assert_eq!(a["trace_hash"], b["trace_hash"]);
    let found = a["searches"]["found"].as_u64().unwrap();
    assert!(found > 50, "searches found {found}: {}", a["searches"]);
    assert!(a["network"]["delivered_by_kind"]["mesh_gossip"].as_u64().unwrap() > 0);
    for r in [&mut a, &mut b] {
        r["wall_ms"] = 0.into();
        r["events_per_wall_s"] = 0.into();
    }
    assert_eq!(a, b, "reports differ beyond wall-clock fields");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--dump-corpus` writes fuzzing seeds of node and indexer peers that decode byte for byte, drive
/// a real peer through what it lived (a node seed joins its indexers again), and leave the run
/// itself unchanged (same trace hash as without).
#[test]
fn dump_corpus_writes_seeds_that_replay_and_leaves_the_run_unchanged() {
    use ocd_core::journal::Seed;
    use ocd_core::proto::{Event, Output, Peer};
    let dir = scratch("dump-corpus");
    let scenario = dir.join("small.toml");
    std::fs::write(&scenario, SMALL).unwrap();
    let plain = run(&scenario, None, &dir.join("plain.json"));
    let corpus = dir.join("corpus");
    let out = Command::new(env!("CARGO_BIN_EXE_ocd-sim"))
        .arg("run")
        .arg(&scenario)
        .arg("--report")
        .arg(dir.join("dumped.json"))
        .arg("--dump-corpus")
        .arg(&corpus)
        .output()
        .unwrap();
    assert!(out.status.success(), "ocd-sim failed: {}", String::from_utf8_lossy(&out.stderr));
    let dumped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dumped.json")).unwrap()).unwrap();
    assert_eq!(plain["trace_hash"], dumped["trace_hash"], "recording changed the run");
    for (target, indexer, expected) in [("peer_node", false, 4), ("peer_indexer", true, 3)] {
        let files: Vec<PathBuf> = std::fs::read_dir(corpus.join(target)).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), expected, "{target}: {files:?}");
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            let (seed, steps) = Seed::read(&bytes, usize::MAX).expect("a seed");
            assert_eq!(seed.roles.indexer, indexer, "{}", f.display());
            assert!(!steps.is_empty() && steps.len() <= 400, "{}: {} steps", f.display(), steps.len());
            // Every step decoded: the file is exactly the seed re-encoded.
            let mut again = seed.header();
            for s in &steps {
                Seed::step(&mut again, s.now, &s.input);
            }
            assert_eq!(again, bytes, "{} re-encodes to other bytes", f.display());
            // The recorded inputs drive the peer as they drove it in the run.
            let mut peer = Peer::new(seed.peer_setup(std::time::Instant::now()), seed.started);
            let mut added = 0;
            for s in steps {
                peer.handle(s.input, s.now);
                while let Some(o) = peer.poll_output() {
                    added += usize::from(matches!(o, Output::Event(Event::IndexerAdded { .. })));
                }
            }
            if !indexer {
                assert!(added >= 2, "{}: the replayed node added {added} indexers", f.display());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
