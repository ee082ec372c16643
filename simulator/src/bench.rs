//! The fixed large scenario of `ocd-sim bench`.
//!
//! `indexers` indexers, each seeded on 2 others drawn from all indexers, and `nodes` nodes with
//! `min_indexers = 2`, `max_indexers = 4`, each seeded on 2 indexers drawn from all of them.
//! Capacity is about twice the demand: `max_nodes = 2 · nodes · 4 / indexers`. Nodes start over
//! the first 5 minutes, indexers over the first 30 s. Every node publishes its signed record
//! (replicated in the indexers' DHT), and a `lookup` workload of 10 DID lookups per simulated
//! second (each followed by a peer-id lookup) runs from 6 minutes on (from half the run if it is
//! shorter).

use crate::scenario::{Scenario, ScenarioError};
use std::time::Duration;

/// Parameters of the bench scenario.
#[derive(Clone, Copy, Debug)]
pub struct BenchParams {
    /// Node-role peers.
    pub nodes: usize,
    /// Indexer-role peers.
    pub indexers: usize,
    /// Simulated time.
    pub duration: Duration,
    /// Seed.
    pub seed: u64,
}

/// Builds the bench scenario.
pub fn scenario(p: BenchParams) -> Result<Scenario, ScenarioError> {
    let max_indexers = 4usize;
    let max_nodes = (2 * p.nodes * max_indexers).div_ceil(p.indexers.max(1)).max(1);
    let duration_ms = p.duration.as_millis();
    let lookups_from = (6 * 60 * 1000).min(duration_ms / 2);
    let text = format!(
        r#"
name = "bench-{nodes}n-{indexers}i"
seed = {seed}
duration = "{duration}ms"

[network]
latency_ms = [10, 80]

[[group]]
name = "idx"
count = {indexers}
role = "indexer"
seeds = ["idx"]
seeds_sample = 2
start_spread = "30s"
[group.config]
max_nodes = {max_nodes}

[[group]]
name = "n"
count = {nodes}
role = "node"
seeds = ["idx"]
seeds_sample = 2
start_spread = "5m"
[group.config]
min_indexers = 2
max_indexers = {max_indexers}

[[workload]]
kind = "lookup"
from = "{lookups_from}ms"
rate_per_s = 10.0
"#,
        nodes = p.nodes,
        indexers = p.indexers,
        seed = p.seed,
        duration = duration_ms,
    );
    Scenario::from_toml(&text)
}
