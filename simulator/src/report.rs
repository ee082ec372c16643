//! The run report (DESIGN.md §5): field names are a contract read by tests, CI and plots.
//!
//! Times are milliseconds of simulated time since the start of the run. Everything but `wall_ms`
//! (and the derived `events_per_wall_s`) is a pure function of the scenario and seed.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Percentiles of a set of durations (ms), nearest-rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Stats {
    /// Percentiles of `v` (`None` if empty).
    pub fn of(v: &mut [u64]) -> Option<Stats> {
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(Stats { p50: percentile(v, 50), p99: percentile(v, 99), max: v[v.len() - 1] })
    }
}

/// Nearest-rank percentile of a sorted, non-empty slice.
pub fn percentile(sorted: &[u64], pct: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len() as u64;
    let rank = (pct * n).div_ceil(100).clamp(1, n);
    sorted[(rank - 1) as usize]
}

/// Pool health over time, over alive, started, honest node-role peers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolReport {
    /// The node-role peers' `min_indexers` (the largest, if groups differ).
    pub min_target: usize,
    /// Nodes below their `min_indexers` live indexers at the end.
    pub final_nodes_below_min: usize,
    /// `[t, mean live pool size, nodes below min]`, every 60 s and at the end.
    pub timeline: Vec<(u64, f64, usize)>,
    /// Mean live pool size at the end.
    pub final_mean_live: f64,
    /// Node-role peers counted at the end.
    pub final_nodes: usize,
    /// The first nodes below min at the end (at most 20), with their live pool size.
    #[serde(default)]
    pub final_below_min_peers: Vec<String>,
}

/// What a fault did and how fast the nodes coped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultReport {
    /// When it fired.
    pub at: u64,
    /// Its kind (`crash`, `partition`, …).
    pub kind: String,
    /// Its targets as written (all sides for a partition).
    pub targets: Vec<String>,
    /// Nodes measured (see DESIGN §5 / the crate docs for each kind).
    pub affected_nodes: usize,
    /// Fault → node stops counting the target live, per (node, target) pair.
    pub detect_ms: Option<Stats>,
    /// Fault → node again has at least `min_indexers` live indexers, per node.
    pub recover_ms: Option<Stats>,
    /// Every detection time behind `detect_ms`, sorted (for CDF plots).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detect_samples_ms: Vec<u64>,
    /// Every recovery time behind `recover_ms`, sorted (for CDF plots).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recover_samples_ms: Vec<u64>,
    /// (node, target) pairs never detected by the end of the run.
    pub undetected: usize,
    /// Nodes never recovered by the end of the run.
    pub unrecovered: usize,
    /// Restart only: nodes that counted a restarted target live again within 60 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readmitted: Option<usize>,
}

/// One byzantine peer's fate. Indexer behaviours fill the `evicted` fields, node behaviours the
/// `banned` ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ByzantineReport {
    /// `"<group>/<i>"`.
    pub peer: String,
    /// The behaviour's scenario name.
    pub behaviour: String,
    /// When it started misbehaving.
    pub since: u64,
    /// Indexer: honest node-role peers that had it in their pool at or after `since`, and either
    /// evicted it or held it for at least 5 simulated minutes (a fair chance to judge it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honest_nodes: Option<usize>,
    /// Indexer: honest nodes that met it less than 5 minutes before the end and still hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub too_recent: Option<usize>,
    /// Indexer: share of those that evicted it after `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted_by: Option<f64>,
    /// Indexer: median time to eviction, from `max(since, time added)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_evict_ms: Option<u64>,
    /// Indexer: why its honest nodes evicted it (`EvictReason` debug form → count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evict_reasons: Option<std::collections::BTreeMap<String, usize>>,
    /// Indexer: honest nodes that counted it live at or after `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_nodes: Option<usize>,
    /// Indexer: share of `live_nodes` whose first eviction of it after that was *for cause* — not a
    /// refusal, a returning seed or a migration (stricter than `evicted_by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted_for_cause_by: Option<f64>,
    /// Node: indexers that received at least one message from it after `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached: Option<usize>,
    /// Node: share of those that banned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banned_by: Option<f64>,
    /// Node: median time from `since` to the ban.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ban_ms: Option<u64>,
}

/// Distinct peers banned by at least one indexer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bans {
    /// Peers that never misbehaved.
    pub honest: usize,
    /// Byzantine peers.
    pub byzantine: usize,
}

/// Network counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetReport {
    /// Messages handed to the network.
    pub sent: u64,
    /// Dropped: no established link or the other end gone.
    pub dropped_no_link: u64,
    /// Dropped: partition.
    pub dropped_partition: u64,
    /// Dropped: random loss.
    pub dropped_loss: u64,
    /// Dropped by a byzantine filter.
    pub dropped_byzantine: u64,
    /// Dials requested.
    pub connects: u64,
    /// Dials that failed.
    pub connect_failed: u64,
    /// Bytes delivered (encoded payloads).
    pub bytes: u64,
    /// Messages handed to the network, by kind.
    #[serde(default)]
    pub sent_by_kind: std::collections::BTreeMap<String, u64>,
}

/// The report of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The seed used.
    pub seed: u64,
    /// BLAKE3 (hex) of every start, delivered message, connect/close and event, in order.
    pub trace_hash: String,
    /// Simulated time run (ms).
    pub sim_ms: u64,
    /// Wall-clock time of the run (ms); the only non-deterministic field besides `events_per_wall_s`.
    pub wall_ms: u64,
    /// Simulator events processed (wakes, deliveries, link changes, faults, samples).
    pub events: u64,
    /// Messages delivered.
    pub messages: u64,
    /// Number of peers.
    pub peers: usize,
    /// Pool health.
    pub pool: PoolReport,
    /// One entry per fault.
    pub faults: Vec<FaultReport>,
    /// One entry per byzantine peer.
    pub byzantine: Vec<ByzantineReport>,
    /// Ban counts.
    pub bans: Bans,
    /// Broken invariants (capped; see `invariant_violation_count`).
    pub invariant_violations: Vec<String>,
    /// Total invariant violations, including those not listed.
    pub invariant_violation_count: usize,
    /// Network counters.
    pub network: NetReport,
    /// Warnings: ignored keys, unsupported workloads and behaviours.
    pub notes: Vec<String>,
    /// Events per wall second (not deterministic).
    pub events_per_wall_s: f64,
}

impl Report {
    /// A copy with the wall-clock fields zeroed, for determinism comparisons.
    pub fn without_wall_clock(&self) -> Report {
        Report { wall_ms: 0, events_per_wall_s: 0.0, ..self.clone() }
    }

    /// A human-readable summary (the CLI prints it).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let secs = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
        let _ = writeln!(
            s,
            "scenario {} (seed {}), {} peers, {} simulated",
            self.scenario,
            self.seed,
            self.peers,
            secs(self.sim_ms)
        );
        let _ = writeln!(s, "trace_hash {}", self.trace_hash);
        let _ = writeln!(
            s,
            "wall {:.2}s, {} events ({:.0}/s), {} messages delivered, {} dropped (link {}, partition {}, loss {}, byzantine {})",
            self.wall_ms as f64 / 1000.0,
            self.events,
            self.events_per_wall_s,
            self.messages,
            self.network.dropped_no_link
                + self.network.dropped_partition
                + self.network.dropped_loss
                + self.network.dropped_byzantine,
            self.network.dropped_no_link,
            self.network.dropped_partition,
            self.network.dropped_loss,
            self.network.dropped_byzantine,
        );
        let _ = writeln!(s, "\npool (min target {}):", self.pool.min_target);
        let _ = writeln!(s, "  {:>8}  {:>10}  {:>9}", "t", "mean live", "below min");
        let tl = &self.pool.timeline;
        let step = (tl.len() / 12).max(1);
        for (i, (t, mean, below)) in tl.iter().enumerate() {
            if i % step == 0 || i + 1 == tl.len() {
                let _ = writeln!(s, "  {:>8}  {:>10.2}  {:>9}", secs(*t), mean, below);
            }
        }
        let _ = writeln!(
            s,
            "  final: {} nodes, mean live {:.2}, {} below min",
            self.pool.final_nodes, self.pool.final_mean_live, self.pool.final_nodes_below_min
        );
        if !self.pool.final_below_min_peers.is_empty() {
            let _ = writeln!(s, "  below min at the end: {}", self.pool.final_below_min_peers.join(", "));
        }
        if !self.faults.is_empty() {
            let _ = writeln!(s, "\nfaults:");
            let _ = writeln!(
                s,
                "  {:>8}  {:<11} {:<22} {:>8}  {:>26}  {:>26}  {:>5} {:>5}",
                "at", "kind", "targets", "affected", "detect p50/p99/max", "recover p50/p99/max", "undet", "unrec"
            );
            for f in &self.faults {
                let st = |x: &Option<Stats>| match x {
                    Some(x) => format!("{}/{}/{}", secs(x.p50), secs(x.p99), secs(x.max)),
                    None => "-".into(),
                };
                let mut targets = f.targets.join(",");
                if targets.len() > 22 {
                    targets.truncate(21);
                    targets.push('…');
                }
                let _ = write!(
                    s,
                    "  {:>8}  {:<11} {:<22} {:>8}  {:>26}  {:>26}  {:>5} {:>5}",
                    secs(f.at),
                    f.kind,
                    targets,
                    f.affected_nodes,
                    st(&f.detect_ms),
                    st(&f.recover_ms),
                    f.undetected,
                    f.unrecovered
                );
                if let Some(r) = f.readmitted {
                    let _ = write!(s, "  readmitted within 60s: {r}");
                }
                s.push('\n');
            }
        }
        if !self.byzantine.is_empty() {
            let _ = writeln!(s, "\nbyzantine:");
            for b in &self.byzantine {
                let pct = |x: Option<f64>| x.map(|v| format!("{:.0}%", v * 100.0)).unwrap_or("-".into());
                let ms = |x: Option<u64>| x.map(secs).unwrap_or("-".into());
                if b.honest_nodes.is_some() {
                    let _ = writeln!(
                        s,
                        "  {:<10} {:<16} evicted by {:>4} of {} honest nodes, p50 {} ({} met it too recently)",
                        b.peer,
                        b.behaviour,
                        pct(b.evicted_by),
                        b.honest_nodes.unwrap_or(0),
                        ms(b.p50_evict_ms),
                        b.too_recent.unwrap_or(0)
                    );
                    let _ = writeln!(
                        s,
                        "             for cause by {} of {} nodes that had it live",
                        pct(b.evicted_for_cause_by),
                        b.live_nodes.unwrap_or(0)
                    );
                    if let Some(r) = &b.evict_reasons {
                        let list: Vec<String> = r.iter().map(|(k, v)| format!("{k} {v}")).collect();
                        let _ = writeln!(s, "             reasons: {}", list.join(", "));
                    }
                } else {
                    let _ = writeln!(
                        s,
                        "  {:<10} {:<16} banned by {:>4} of {} indexers reached, p50 {}",
                        b.peer,
                        b.behaviour,
                        pct(b.banned_by),
                        b.reached.unwrap_or(0),
                        ms(b.p50_ban_ms)
                    );
                }
            }
        }
        let _ = writeln!(s, "\nbans: {} honest, {} byzantine", self.bans.honest, self.bans.byzantine);
        let _ = writeln!(s, "invariant violations: {}", self.invariant_violation_count);
        for v in self.invariant_violations.iter().take(20) {
            let _ = writeln!(s, "  ! {v}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).collect();
        assert_eq!(Stats::of(&mut v), Some(Stats { p50: 50, p99: 99, max: 100 }));
        assert_eq!(Stats::of(&mut [7]), Some(Stats { p50: 7, p99: 7, max: 7 }));
        assert_eq!(Stats::of(&mut []), None);
    }
}
