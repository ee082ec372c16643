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
    /// Nodes with no live indexer at the end.
    #[serde(default)]
    pub final_nodes_at_zero: usize,
    /// `[t, nodes with no live indexer]`, at the times of `timeline`.
    #[serde(default)]
    pub zero_timeline: Vec<(u64, usize)>,
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
    /// Affected nodes that had no live indexer at some moment between the fault and their
    /// recovery (or the end of the run).
    #[serde(default)]
    pub reached_zero: usize,
    /// Affected nodes with no live indexer at the end of the run.
    #[serde(default)]
    pub left_at_zero: usize,
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
    /// Node: indexers that received at least one message from it after `since` (for
    /// `claim_foreign_did` and `bad_signature`: one carrying a record, i.e. a forged one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached: Option<usize>,
    /// Node: share of those that banned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banned_by: Option<f64>,
    /// Node: median time from `since` to the ban.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ban_ms: Option<u64>,
    /// `claim_foreign_did` / `bad_signature`: records of this peer that indexers accepted after
    /// `since` with a DID other than its own or a signature that does not verify (must be 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_accepted: Option<u64>,
    /// `claim_foreign_did`: the honest node whose DID it claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub victim: Option<String>,
    /// `withhold_records`: workload lookups (of live peers) issued at or after `since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookups: Option<u64>,
    /// `withhold_records`: share of those that still succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookups_ok_ratio: Option<f64>,
    /// `forge_search_hits`: forged records it sent, in `Found` answers to emitters and in `Hits`
    /// relayed to its nodes (`reached` / `banned_by` then count the emitters that received a
    /// forged `Found` and the share of them that banned it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forged_sent: Option<ForgedSent>,
    /// `forge_search_hits`: `ForgedHitDropped` events naming it (emitters and nodes dropping its
    /// forgeries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forged_dropped: Option<u64>,
    /// `forge_search_hits`: its forgeries — relayed by it, or its own record relayed by another —
    /// that a node still handed to its application as a `SearchHit` (must be 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forged_delivered: Option<u64>,
    /// `forge_search_hits`: honest nodes that dropped a forged hit it relayed as their emitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_nodes: Option<usize>,
    /// `forge_search_hits`: share of `exposed_nodes` that evicted it for `ForgedHits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distrusted_by: Option<f64>,
}

/// Forged records a `forge_search_hits` indexer sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgedSent {
    /// In `Found` answers, as a responder, to emitters.
    pub found: u64,
    /// In `Hits`, as an emitter, to its nodes.
    pub hits: u64,
}

/// Issued and successful lookups of one key kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLookups {
    /// Lookups counted (finished, target still alive).
    pub issued: u64,
    /// Those that returned the target's record.
    pub ok: u64,
}

/// The `lookup` workload's outcome (DESIGN §5). A lookup counts when it finished and its target
/// did not crash or restart while it ran; the ratio is about live peers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LookupReport {
    /// Lookups counted (`ok + failed`), DID and peer-id ones together.
    pub issued: u64,
    /// Lookups whose `LookupDone` carried a record of the target.
    pub ok: u64,
    /// Lookups that found nothing, or another peer's record.
    pub failed: u64,
    /// Latency (command → `LookupDone`) of successful lookups: median.
    pub p50_ms: Option<u64>,
    /// 99th percentile.
    pub p99_ms: Option<u64>,
    /// Largest.
    pub max_ms: Option<u64>,
    /// DHT hops of the answering indexer (0: it held the record) over successful lookups: median.
    pub hops_p50: Option<u64>,
    /// 99th percentile.
    pub hops_p99: Option<u64>,
    /// Indexers asked by the looking-up node, mean over counted lookups.
    pub attempts_mean: f64,
    /// Lookups by DID.
    pub by_did: KeyLookups,
    /// Lookups by peer id.
    pub by_peer: KeyLookups,
    /// Finished lookups not counted: the target crashed or restarted while they ran.
    pub excluded: u64,
    /// Of `failed`: the asking node had no live indexer to ask (0 attempts).
    #[serde(default)]
    pub failed_no_indexer: u64,
    /// Of `failed` (indexers were asked): the target had no live indexer when the lookup was
    /// issued (still joining through the indexers' burst guards, or its pool emptied), so its
    /// record may not be stored anywhere yet. The rest of `failed` are real misses.
    #[serde(default)]
    pub failed_target_unadmitted: u64,
    /// Of `failed`: the asking node had live indexers but asked none, every one at the record
    /// gets its window allows (the node refuses the lookup rather than be banned for it).
    #[serde(default)]
    pub failed_own_budget: u64,
    /// `[t, counted, ok]` per minute of issue time (`t` = start of the minute).
    #[serde(default)]
    pub timeline: Vec<(u64, u64, u64)>,
    /// Lookups still running at the end of the run (not counted), or whose asker crashed.
    pub unfinished: u64,
    /// The first failures (at most 20): time, asker, target, key kind, attempts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

/// The `search` workload's outcome (DESIGN §5). A search counts when its `SearchDone` came and
/// its target did not crash or restart while it ran; the ratio is about live peers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchReport {
    /// Searches counted (`found` + not found).
    pub issued: u64,
    /// Those where the target's genuine record reached the asker as a `SearchHit`.
    pub found: u64,
    /// Time from the command to the target's hit, over found searches: median.
    pub p50_ms: Option<u64>,
    /// 99th percentile.
    pub p99_ms: Option<u64>,
    /// Largest.
    pub max_ms: Option<u64>,
    /// `SearchHit` events whose record is not a genuine signed record of a simulated peer with
    /// that peer id, DID and name (any search, workload or not; must be 0).
    pub forged_delivered: u64,
    /// `SearchHit` events whose (genuine) record does not match the search's query (must be 0).
    pub unrelated_delivered: u64,
    /// `ForgedHitDropped` events: forged hits dropped by emitters (responders' `Found`) and nodes
    /// (emitters' `Hits`).
    pub forged_dropped: u64,
    /// Searches started by the workload (counted, excluded and unfinished).
    pub started: u64,
    /// Searches by what they looked for.
    pub by_name: KeyLookups,
    /// By DID.
    pub by_did: KeyLookups,
    /// By peer id.
    pub by_peer: KeyLookups,
    /// Finished searches not counted: the target crashed or restarted while they ran (or had
    /// before the target's hit came).
    pub excluded: u64,
    /// Searches with no `SearchDone` by the end of the run, or whose asker crashed.
    pub unfinished: u64,
    /// Counted searches by how they ended (`SearchEnd`: `Idle`, `Limit`, `NoIndexer`, …).
    pub ended: std::collections::BTreeMap<String, u64>,
    /// Distinct hits per counted search, mean (the target and any other peer whose name holds
    /// the needle).
    pub hits_mean: f64,
    /// Time from the command to `SearchDone`, over counted searches: median.
    pub done_p50_ms: Option<u64>,
    /// `SearchEmitted` events (an indexer started emitting a node's search), over the run.
    pub emitted: u64,
    /// Not-found searches by diagnosed cause (see the crate docs).
    pub failure_causes: std::collections::BTreeMap<String, u64>,
    /// `[t, alive honest nodes with a live indexer, held as a referent by no indexer, by more
    /// than one]`, every 60 s: a node no indexer references cannot be found.
    pub referent_timeline: Vec<(u64, usize, usize, usize)>,
    /// `[t, counted, found]` per minute of issue time.
    pub timeline: Vec<(u64, u64, u64)>,
    /// The first 10 and the last 10 failures, with their diagnosis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// The indexers' search mesh and what it cost.
    pub mesh: MeshReport,
}

/// The search mesh: its shape over time and its traffic while the search workload ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshReport {
    /// Alive indexers running a mesh at the end.
    pub indexers: usize,
    /// The window the traffic below is counted over: from the first workload's `from` to the
    /// last one's `until` plus 30 s (or the end), in ms.
    pub window_ms: (u64, u64),
    /// Searches started in the window.
    pub searches: u64,
    /// PlumTree data messages (`mesh_gossip`) delivered in the window.
    pub data_messages: u64,
    /// Membership and tree-repair messages (`mesh_control`) delivered in the window.
    pub control_messages: u64,
    /// `data_messages` per search.
    pub data_per_search: f64,
    /// `control_messages` per search.
    pub control_per_search: f64,
    /// `(data + control) / searches / indexers`: what one search costs one indexer.
    pub messages_per_search_per_indexer: f64,
    /// `data_messages / searches / indexers` (≈ 1: each indexer receives each query once).
    pub data_per_search_per_indexer: f64,
    /// `mesh_control` messages delivered per alive indexer per minute over the window (lazy-push
    /// `IHave`s and tree repairs for the queries, plus membership).
    pub control_per_indexer_per_min: f64,
    /// The same from the start of the run to the window (membership only: joins, shuffles,
    /// neighbour changes — what the mesh costs with no search).
    pub control_per_indexer_per_min_before: f64,
    /// Other search messages (`search_request`, `_cancel`, `_hits`, `_done`, `_refused`,
    /// `_found`) delivered in the window, per search.
    pub search_messages_per_search: f64,
    /// Mesh gossip payloads dropped by indexers before forwarding (invalid, expired, over rate),
    /// summed over alive indexers at the end.
    pub dropped_payloads: u64,
    /// `[t, indexers with a mesh, mean neighbours, indexers with none, connected components]`,
    /// every 60 s.
    pub timeline: Vec<(u64, usize, f64, usize, usize)>,
}

/// Records and the DHT: store events over the run and the indexers' state at the end.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordsReport {
    /// `RecordStored` events (an indexer accepted a record), all sources.
    pub stored: u64,
    /// Of those, handed over by the record's owner itself (publish or heartbeat).
    pub stored_from_owner: u64,
    /// `RecordRejected` events.
    pub rejected: u64,
    /// `RecordRejected` by reason (`Invalid`, `ForeignDid`, `Stale`, `Refused`).
    pub rejected_by_reason: std::collections::BTreeMap<String, u64>,
    /// Alive indexers at the end (the means below are over them).
    pub indexers: usize,
    /// Mean records held per indexer at the end.
    pub mean_records_per_indexer: f64,
    /// Most records held by one indexer at the end.
    pub max_records_per_indexer: usize,
    /// Mean routing-table size of the indexers at the end.
    pub mean_routing_table: f64,
    /// Mean provider announcements held per indexer at the end.
    pub mean_providers: f64,
    /// DHT queries started, summed over alive peers at the end (restarted peers count from 0).
    pub dht_queries: u64,
    /// DHT RPCs sent, summed likewise.
    pub dht_rpcs: u64,
    /// DHT RPCs that failed or timed out, summed likewise.
    pub dht_rpc_failures: u64,
    /// Record signatures verified by the DHT, summed likewise.
    pub dht_verifications: u64,
    /// Reads (`FIND_VALUE` lookups of a record not held locally) started, summed likewise.
    #[serde(default)]
    pub dht_reads: u64,
    /// `FIND_VALUE`s those reads sent, summed likewise.
    #[serde(default)]
    pub dht_read_rpcs: u64,
    /// Hedges of those reads (one more `FIND_VALUE` allowed because those in flight were late).
    #[serde(default)]
    pub dht_hedges: u64,
}

/// Distinct peers banned by at least one indexer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bans {
    /// Peers that never misbehaved.
    pub honest: usize,
    /// Byzantine peers.
    pub byzantine: usize,
}

/// The traffic of one window of the run (see [`Report::traffic_timeline`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficSample {
    /// End of the window (simulated ms since the start).
    pub t: u64,
    /// Messages delivered in the window.
    pub messages: u64,
    /// `messages` per peer-minute run in the window.
    pub per_peer_minute: f64,
}

/// The delivered messages of one kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KindTraffic {
    /// Messages delivered.
    pub count: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// `count` per peer-minute (see [`Report::peer_minutes`]).
    pub per_peer_minute: f64,
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
    /// Messages delivered, by kind.
    #[serde(default)]
    pub delivered_by_kind: std::collections::BTreeMap<String, u64>,
}

/// One delivery class of the `send` workloads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SendClassReport {
    /// Messages the senders' cores accepted (`AppAccepted`).
    pub sent: u64,
    /// Send commands refused at once (`AppSendRefused`: queue full, …).
    pub refused: u64,
    /// Distinct accepted messages that reached their receiver's inbox.
    pub delivered: u64,
    /// Inbox appends of an id already in that inbox (must be 0).
    pub duplicates: u64,
    /// Deliveries the senders saw acknowledged (`AppDelivered`).
    pub acknowledged: u64,
    /// Not delivered, sender and receiver alive at the end, accepted before the settle window
    /// and neither restarted in it (critical: must be 0; moderate: neither delivered nor
    /// abandoned nor dropped by a crash).
    pub lost: u64,
    /// Given up after `dnt_moderate_retries` retries, or refused for good by the receiver.
    pub abandoned: u64,
    /// Moderate messages (not durable by design) whose sender crashed before delivering them.
    pub dropped_by_crash: u64,
    /// Not delivered at the end, but accepted (or their sender or receiver restarted) within the
    /// settle window, or still queued at a sender or receiver that is down at the end.
    pub pending_at_end: u64,
    /// Acceptance → inbox.
    pub latency_ms: Option<Stats>,
    /// For messages held up by their receiver or sender being down: its (last) restart → inbox.
    pub after_return_ms: Option<Stats>,
    /// Messages behind `after_return_ms`.
    pub after_return_count: u64,
    /// For messages held up by a partition between sender and receiver: the heal → inbox (the
    /// DHT and the pools across the cut recover first).
    pub after_heal_ms: Option<Stats>,
    /// Messages behind `after_heal_ms`.
    pub after_heal_count: u64,
    /// The first lost messages, described.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost_examples: Vec<String>,
}

/// The `resource_searches` section: searches of type `all` (DESIGN §9) over the indexers' search
/// mesh to every node, answered by the reached nodes' (simulated) apps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceSearchesReport {
    /// Searches started.
    pub searches: u64,
    /// Of those, sent to no indexer (the requester had no live one).
    pub no_indexer: u64,
    /// Nodes each search reached (its apps were asked): mean, and the smallest share of the
    /// nodes alive at the search's start (but the requester) over the searches.
    pub nodes_reached_mean: f64,
    /// The smallest share of the other live nodes one search reached.
    pub reach_min: f64,
    /// The mean share of the other live nodes a search reached.
    pub reach_mean: f64,
    /// A node asked twice for the same search (must be 0).
    pub asked_twice: u64,
    /// Answers the reached apps sent, and those that arrived in the requester's inbox.
    pub answers_sent: u64,
    /// Answers that arrived.
    pub answers_received: u64,
    /// Searches with at least one answer.
    pub searches_answered: u64,
    /// Time from the search's start to its last answer, over answered searches (ms).
    pub time_to_last_result_ms: Option<Stats>,
    /// Time from the search's start to the last node reached (ms).
    pub time_to_last_reached_ms: Option<Stats>,
    /// Messages delivered per search in the workload's window, by kind: `search_ask` (node →
    /// indexer), `search_asked` (indexer → node), `mesh_gossip` and `mesh_control` (the
    /// indexers' mesh), and `app_deliver` + `app_ack` (the answers).
    pub messages_per_search: std::collections::BTreeMap<String, f64>,
    /// Their sum.
    pub messages_per_search_total: f64,
}

/// The `sends` section: every `send` workload's messages, per class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SendsReport {
    /// `create`, `update`, `delete`.
    pub critical: SendClassReport,
    /// `verify`, `planner`, `considers`, the config events.
    pub moderate: SendClassReport,
    /// Send commands refused at once, by reason.
    #[serde(default)]
    pub refusals: std::collections::BTreeMap<String, u64>,
    /// The settle window at the end of the run (ms).
    pub settle_ms: u64,
    /// Critical messages still queued durably at the end, over every peer's store.
    pub queued_at_end: u64,
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
    /// Minutes of simulated time summed over every peer while it was running (crashed and
    /// not-yet-started peers do not count).
    #[serde(default)]
    pub peer_minutes: f64,
    /// `messages / peer_minutes`: the message economy, comparable across scenario sizes.
    #[serde(default)]
    pub messages_per_peer_minute: f64,
    /// Messages delivered by kind (only kinds seen): count, encoded bytes and count per
    /// peer-minute.
    #[serde(default)]
    pub messages_by_kind: std::collections::BTreeMap<String, KindTraffic>,
    /// Messages delivered in each minute (sampled with the pool), per peer-minute run in that
    /// minute: joins, faults and their repair stand out from the steady state.
    #[serde(default)]
    pub traffic_timeline: Vec<TrafficSample>,
    /// Pool health.
    pub pool: PoolReport,
    /// One entry per fault.
    pub faults: Vec<FaultReport>,
    /// One entry per byzantine peer.
    pub byzantine: Vec<ByzantineReport>,
    /// Ban counts.
    pub bans: Bans,
    /// The `lookup` workload (`null` without one).
    #[serde(default)]
    pub lookups: Option<LookupReport>,
    /// The `search` workload (`null` without one).
    #[serde(default)]
    pub searches: Option<SearchReport>,
    /// The `send` workloads (`null` without one).
    #[serde(default)]
    pub sends: Option<SendsReport>,
    /// The `resource_search` workloads (`null` without one).
    #[serde(default)]
    pub resource_searches: Option<ResourceSearchesReport>,
    /// Records and DHT totals (`null` when no peer is running at the end).
    #[serde(default)]
    pub records: Option<RecordsReport>,
    /// `RequestRefused` events by `"<reason> <role of the refused peer>"` (role: `node`,
    /// `indexer`, `byzantine`), e.g. `"RateLimited indexer"`.
    #[serde(default)]
    pub refusals: std::collections::BTreeMap<String, u64>,
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

/// `ms` as seconds with one decimal (`12.3s`).
fn secs_of(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

impl Report {
    /// A copy with the wall-clock fields zeroed, for determinism comparisons.
    pub fn without_wall_clock(&self) -> Report {
        Report { wall_ms: 0, events_per_wall_s: 0.0, ..self.clone() }
    }

    /// A human-readable summary (the CLI prints it).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        self.write_run(&mut s);
        self.write_pool(&mut s);
        self.write_faults(&mut s);
        self.write_byzantine(&mut s);
        self.write_lookups(&mut s);
        if let Some(x) = &self.searches {
            summarise_searches(&mut s, x);
        }
        if let Some(x) = &self.sends {
            summarise_sends(&mut s, x);
        }
        self.write_records(&mut s);
        s
    }

    /// The run: scenario, hash, wall time, events and the traffic.
    fn write_run(&self, s: &mut String) {
        let secs = secs_of;
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
        let _ = writeln!(
            s,
            "traffic {:.1} messages per peer-minute ({:.0} peer-minutes, {:.1} KiB per peer-minute)",
            self.messages_per_peer_minute,
            self.peer_minutes,
            self.network.bytes as f64 / 1024.0 / self.peer_minutes.max(f64::MIN_POSITIVE),
        );
        let mut kinds: Vec<(&String, &KindTraffic)> = self.messages_by_kind.iter().collect();
        kinds.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        let top: Vec<String> = kinds
            .iter()
            .take(8)
            .map(|(k, t)| format!("{k} {:.1} ({:.0} B)", t.per_peer_minute, t.bytes as f64 / t.count.max(1) as f64))
            .collect();
        if !top.is_empty() {
            let _ = writeln!(s, "  by kind, per peer-minute (mean size): {}", top.join(", "));
        }
        if !self.traffic_timeline.is_empty() {
            let minutes: Vec<String> =
                self.traffic_timeline.iter().map(|w| format!("{:.0}", w.per_peer_minute)).collect();
            let _ = writeln!(s, "  by minute, per peer-minute: {}", minutes.join(" "));
        }
    }

    /// Pool health: a sample of the timeline and the end state.
    fn write_pool(&self, s: &mut String) {
        let secs = secs_of;
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
            "  final: {} nodes, mean live {:.2}, {} below min, {} at zero",
            self.pool.final_nodes,
            self.pool.final_mean_live,
            self.pool.final_nodes_below_min,
            self.pool.final_nodes_at_zero
        );
        if !self.pool.final_below_min_peers.is_empty() {
            let _ = writeln!(s, "  below min at the end: {}", self.pool.final_below_min_peers.join(", "));
        }
    }

    /// One line per fault: detection and recovery.
    fn write_faults(&self, s: &mut String) {
        let secs = secs_of;
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
                if f.reached_zero > 0 {
                    let _ = write!(s, "  reached zero live: {} (left at zero: {})", f.reached_zero, f.left_at_zero);
                }
                s.push('\n');
            }
        }
    }

    /// One entry per byzantine peer: what the honest peers did about it.
    fn write_byzantine(&self, s: &mut String) {
        let secs = secs_of;
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
                    if let (Some(n), Some(r)) = (b.lookups, b.lookups_ok_ratio) {
                        let _ = writeln!(s, "             lookups while it misbehaved: {} of {n} ok", pct(Some(r)));
                    }
                } else {
                    let _ = write!(
                        s,
                        "  {:<10} {:<16} banned by {:>4} of {} indexers reached, p50 {}",
                        b.peer,
                        b.behaviour,
                        pct(b.banned_by),
                        b.reached.unwrap_or(0),
                        ms(b.p50_ban_ms)
                    );
                    if let Some(n) = b.records_accepted {
                        let _ = write!(s, ", records accepted {n}");
                    }
                    if let Some(v) = &b.victim {
                        let _ = write!(s, " (victim {v})");
                    }
                    s.push('\n');
                }
                if let Some(f) = b.forged_sent {
                    let _ = writeln!(
                        s,
                        "             forged {} records in Found, {} in Hits; {} dropped, {} delivered; emitters \
                         reached {}, banned by {}; exposed nodes {}, distrusted by {}",
                        f.found,
                        f.hits,
                        b.forged_dropped.unwrap_or(0),
                        b.forged_delivered.unwrap_or(0),
                        b.reached.unwrap_or(0),
                        pct(b.banned_by),
                        b.exposed_nodes.unwrap_or(0),
                        pct(b.distrusted_by)
                    );
                }
            }
        }
    }

    /// Lookups: success, latency, hops, failures by cause.
    fn write_lookups(&self, s: &mut String) {
        if let Some(l) = &self.lookups {
            let pct = if l.issued == 0 { 0.0 } else { l.ok as f64 * 100.0 / l.issued as f64 };
            let o = |x: Option<u64>| x.map_or("-".to_string(), |v| v.to_string());
            let _ = writeln!(
                s,
                "\nlookups: {} of {} ok ({pct:.2}%), {} failed; latency p50/p99/max {}/{}/{} ms; hops p50/p99 {}/{}; \
                 attempts mean {:.2}",
                l.ok,
                l.issued,
                l.failed,
                o(l.p50_ms),
                o(l.p99_ms),
                o(l.max_ms),
                o(l.hops_p50),
                o(l.hops_p99),
                l.attempts_mean
            );
            let _ = writeln!(
                s,
                "  by DID {} of {}, by peer id {} of {}; {} failed with no indexer to ask, {} refused by the asker \
                 (its indexers' get windows full), {} whose target had no indexer yet; {} excluded (target \
                 crashed), {} unfinished",
                l.by_did.ok,
                l.by_did.issued,
                l.by_peer.ok,
                l.by_peer.issued,
                l.failed_no_indexer,
                l.failed_own_budget,
                l.failed_target_unadmitted,
                l.excluded,
                l.unfinished
            );
            let per_min: Vec<String> = l
                .timeline
                .iter()
                .map(|(t, n, ok)| {
                    format!("{}m {:.2}%", t / 60_000, if *n == 0 { 0.0 } else { *ok as f64 * 100.0 / *n as f64 })
                })
                .collect();
            let _ = writeln!(s, "  ok per minute: {}", per_min.join(", "));
            for f in l.failures.iter().take(5) {
                let _ = writeln!(s, "  ✗ {f}");
            }
        }
    }

    /// Records, refusals, bans, invariant violations and notes.
    fn write_records(&self, s: &mut String) {
        if let Some(r) = &self.records {
            let reasons: Vec<String> = r.rejected_by_reason.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(
                s,
                "\nrecords: {} stored ({} from owners), {} rejected ({}); at the end {} indexers hold {:.1} records \
                 on average (max {}), routing tables {:.1}, providers {:.1}",
                r.stored,
                r.stored_from_owner,
                r.rejected,
                if reasons.is_empty() { "-".to_string() } else { reasons.join(", ") },
                r.indexers,
                r.mean_records_per_indexer,
                r.max_records_per_indexer,
                r.mean_routing_table,
                r.mean_providers
            );
        }
        if !self.refusals.is_empty() {
            let list: Vec<String> = self.refusals.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(s, "\nrefusals: {}", list.join(", "));
        }
        let _ = writeln!(s, "\nbans: {} honest, {} byzantine", self.bans.honest, self.bans.byzantine);
        let _ = writeln!(s, "invariant violations: {}", self.invariant_violation_count);
        for v in self.invariant_violations.iter().take(20) {
            let _ = writeln!(s, "  ! {v}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
    }
}

fn summarise_sends(s: &mut String, x: &SendsReport) {
    let st = |x: &Option<Stats>| x.map_or("-".to_string(), |v| format!("{}/{}/{}", v.p50, v.p99, v.max));
    for (name, c) in [("critical", &x.critical), ("moderate", &x.moderate)] {
        if c.sent == 0 && c.refused == 0 {
            continue;
        }
        let _ = writeln!(
            s,
            "\nsends {name}: {} sent, {} delivered, {} duplicates, {} lost, {} abandoned, {} dropped by a sender \
             crash, {} pending at the end, {} refused at once; latency p50/p99/max {} ms; after a restart ({} \
             messages) {} ms; after the heal ({} messages) {} ms",
            c.sent,
            c.delivered,
            c.duplicates,
            c.lost,
            c.abandoned,
            c.dropped_by_crash,
            c.pending_at_end,
            c.refused,
            st(&c.latency_ms),
            c.after_return_count,
            st(&c.after_return_ms),
            c.after_heal_count,
            st(&c.after_heal_ms),
        );
        for l in c.lost_examples.iter().take(5) {
            let _ = writeln!(s, "  ✗ {l}");
        }
    }
    if !x.refusals.is_empty() {
        let list: Vec<String> = x.refusals.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "  refused at once: {}", list.join(", "));
    }
}

fn summarise_searches(s: &mut String, x: &SearchReport) {
    let pct = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 * 100.0 / b as f64 };
    let o = |x: Option<u64>| x.map_or("-".to_string(), |v| v.to_string());
    let _ = writeln!(
        s,
        "\nsearches: {} of {} found ({:.2}%); hit latency p50/p99/max {}/{}/{} ms; done p50 {} ms; {:.2} hits each",
        x.found,
        x.issued,
        pct(x.found, x.issued),
        o(x.p50_ms),
        o(x.p99_ms),
        o(x.max_ms),
        o(x.done_p50_ms),
        x.hits_mean
    );
    let ended: Vec<String> = x.ended.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        s,
        "  by name {}/{}, DID {}/{}, peer id {}/{}; ended: {}; {} started, {} excluded, {} unfinished",
        x.by_name.ok,
        x.by_name.issued,
        x.by_did.ok,
        x.by_did.issued,
        x.by_peer.ok,
        x.by_peer.issued,
        ended.join(", "),
        x.started,
        x.excluded,
        x.unfinished
    );
    let _ = writeln!(
        s,
        "  forged delivered {}, unrelated delivered {}, forged dropped {}",
        x.forged_delivered, x.unrelated_delivered, x.forged_dropped
    );
    if !x.failure_causes.is_empty() {
        let causes: Vec<String> = x.failure_causes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "  not found, by cause: {}", causes.join(", "));
    }
    for f in x.failures.iter().take(5) {
        let _ = writeln!(s, "  ✗ {f}");
    }
    let m = &x.mesh;
    let _ = writeln!(
        s,
        "  mesh: {} indexers; per search {:.1} data + {:.1} control messages ({:.3} per indexer; data {:.3} per \
         indexer), {:.1} other search messages; control {:.1} per indexer per minute ({:.1} before the searches)",
        m.indexers,
        m.data_per_search,
        m.control_per_search,
        m.messages_per_search_per_indexer,
        m.data_per_search_per_indexer,
        m.search_messages_per_search,
        m.control_per_indexer_per_min,
        m.control_per_indexer_per_min_before
    );
    let refs: Vec<String> = x
        .referent_timeline
        .iter()
        .map(|(t, n, none, several)| format!("{}m {none}/{n} ({several} multi)", t / 60_000))
        .collect();
    if !refs.is_empty() {
        let _ = writeln!(s, "  nodes referenced by no indexer: {}", refs.join(", "));
    }
    if let Some((t, n, mean, none, comps)) = m.timeline.last() {
        let _ = writeln!(
            s,
            "  mesh at {:.0}s: {n} indexers, {mean:.1} neighbours on average, {none} with none, {comps} component(s)",
            *t as f64 / 1000.0
        );
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
