//! Every tunable of the protocol, with the seed's value as its default.
//!
//! Field names are the daemon's configuration-file keys and the simulator's `[group.config]` keys.
//! Durations are written as `"20s"`, `"5m"`, `"24h"` in TOML. Each field's doc cites where its
//! default comes from in `shared/spec/` (A = 01, B = 02, C = 03, E = 05).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Errors found by [`Config::validate`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A field has a value outside its meaningful range.
    #[error("config field `{field}`: {why}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Protocol configuration. `Config::default()` is the seed's behaviour (with its bugs fixed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    // ---- node role: the indexer pool -------------------------------------------------------
    /// Human-readable name sent to indexers (`NAME`).
    pub name: String,
    /// Fewest live indexers a node wants (`MIN_INDEXER`; diagram default 1, A §6.1).
    pub min_indexers: usize,
    /// Most indexers a node keeps in its pool, never exceeded (`MAX_INDEXER`; default 5, A §6.1, B14).
    pub max_indexers: usize,
    /// Node → indexer heartbeat period (A §4: `20*time.Second`).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a node waits for any response before the request counts as failed (A App. A: 5 s
    /// read deadline; bounded everywhere, B7).
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// The seed's `RecommendedHeartbeatInterval` (60 s): uptime gaps up to twice this count as
    /// online, challenge answers must be this recent ×2, eviction grace is ×2 (A §4, E §9.1).
    #[serde(with = "humantime_serde")]
    pub liveness_interval: Duration,
    /// Fewest heartbeats between two challenge batches (A §4: `rand.Intn(10)+1`).
    pub challenge_spacing_min: u32,
    /// Most heartbeats between two challenge batches (A §4).
    pub challenge_spacing_max: u32,
    /// Other pool indexers challenged alongside the node's own id (A §6.5: own id + ≤ 2 others).
    pub challenge_extra_peers: usize,
    /// Every n-th challenge batch also carries the node's DID (A §6.5: `dhtBatchCounter%5`).
    pub did_challenge_every: u32,
    /// `BaseRoundTrip` (A §4: 400 ms); the latency score reaches 0 at 10× this.
    #[serde(with = "humantime_serde")]
    pub base_round_trip: Duration,
    /// Fill-rate self-consistency tolerance `|peer_count/max_nodes − fill_rate|` (A §6.6: 0.1).
    pub fill_tolerance: f64,
    /// Witness fill-rate tolerance (A §6.11: 0.25).
    pub witness_fill_tolerance: f64,
    /// Most witnesses an indexer returns (C §12: 3).
    pub max_witnesses: usize,
    /// Witnesses a node queries per challenge batch, drawn at random from those returned (ocd:
    /// the seed queried every returned witness on every heartbeat; each query opens a connection
    /// to another node, so one per batch bounds the cost while evidence still accrues each batch).
    pub witness_queries: usize,
    /// Score multiplier lost per unexplained `born_at` change (A §5.3: 0.30).
    pub born_at_penalty: f64,
    /// `dynamicMinScore` at age 0 (A §7.8: 20); also the consensus admission floor (B §3.2).
    pub min_score_start: f64,
    /// `dynamicMinScore` cap (A §7.8: 80).
    pub min_score_end: f64,
    /// Age at which `dynamicMinScore` reaches its cap (A §7.8: 24 h).
    #[serde(with = "humantime_serde")]
    pub min_score_ramp: Duration,
    /// Time online before an indexer may be evicted by score (A §6.7 "Fix 4": 2 × 60 s).
    #[serde(with = "humantime_serde")]
    pub eviction_grace: Duration,
    /// Consecutive failures before the last indexer is evicted (A §6.9: 3).
    pub last_indexer_max_failures: u32,
    /// Below this challenge accuracy (after 2 batches) an indexer is a proven liar and is evicted
    /// regardless of its additive score (ocd: the seed's additive score keeps a liar above the
    /// dynamic threshold for ~23 h).
    pub min_challenge_accuracy: f64,
    /// Below this fill self-consistency (after 3 checks) an indexer is evicted (ocd, as above).
    pub min_fill_consistency: f64,
    /// Below this witness consistency (after 3 conclusive checks) an indexer is evicted (ocd).
    pub min_witness_consistency: f64,
    /// How long an indexer evicted for misbehaviour is not re-admitted (ocd; the seed forgets).
    #[serde(with = "humantime_serde")]
    pub misbehaviour_cooldown: Duration,
    /// Seed-recovery back-off start (A §6.10: 10 s).
    #[serde(with = "humantime_serde")]
    pub seed_backoff_initial: Duration,
    /// Seed-recovery back-off cap, honoured exactly (A §6.10: 5 min; the seed overshoots to 320 s, B6).
    #[serde(with = "humantime_serde")]
    pub seed_backoff_max: Duration,
    /// Extra candidates asked for beyond the need (B §3.2: `need + 2`).
    pub consensus_extra_candidates: usize,
    /// Most candidates an indexer returns, and most a node probes in one round (C §13.3: 10).
    pub max_candidates: usize,

    // ---- indexer role: admission and sessions ----------------------------------------------
    /// Capacity in heartbeating nodes (C §18.24: 500, counted over sessions only, B12).
    pub max_nodes: usize,
    /// Burst guard: most new sessions per window, across all peers (B §9.1: 20).
    pub max_conn_per_window: usize,
    /// Burst-guard window (B §9.1: 30 s).
    #[serde(with = "humantime_serde")]
    pub conn_window: Duration,
    /// Most heartbeats (and probes) per node per behaviour window (B §9.1: 5).
    pub max_hb_per_minute: usize,
    /// Most record publishes per node per behaviour window (B §9.1: 10).
    pub max_publish_per_minute: usize,
    /// Most record gets per node per behaviour window (B §9.1: 50).
    pub max_get_per_minute: usize,
    /// Sliding behaviour window (B §9.1: 60 s).
    #[serde(with = "humantime_serde")]
    pub behaviour_window: Duration,
    /// Strikes that ban a peer (B §9.1: 3).
    pub strike_threshold: u32,
    /// How long a ban lasts (B §9.1: 10 min).
    #[serde(with = "humantime_serde")]
    pub ban_duration: Duration,
    /// One strike is forgiven per this much good time (ocd; the seed's strikes never decay, B §13.13).
    #[serde(with = "humantime_serde")]
    pub strike_decay: Duration,
    /// Most peers tracked in the behaviour table (ocd; the seed's table is unbounded, C §18.8).
    pub behaviour_table_max: usize,
    /// A session with no heartbeat for this long is expired (A §7.2: expiry = last HB + 2 min).
    #[serde(with = "humantime_serde")]
    pub session_expiry: Duration,
    /// Indexer garbage-collection period (A §4: 30 s).
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    /// Fill rate above which the indexer offloads nodes (C §4: 0.80).
    pub offload_threshold: f64,
    /// Most nodes asked to migrate at once (C §4: 5).
    pub offload_batch: usize,
    /// How long an asked node has to migrate before it is moved to "already tried" (C §4: 180 s).
    #[serde(with = "humantime_serde")]
    pub offload_grace: Duration,
    /// Most other indexers an indexer remembers for suggestions and candidates (C §13: 10).
    pub indexer_cache_max: usize,
    /// With no distributed-search result for this long a search ends (A §1: `SearchTimeout`, 5 s).
    #[serde(with = "humantime_serde")]
    pub search_timeout: Duration,
    /// Most hits one search returns (ocd; the seed had no cap, C §15.3).
    pub search_max_results: usize,
    /// Most records in one batch of hits, from a responder or to the node (ocd).
    pub search_max_batch: usize,
    /// New mesh queries an indexer accepts per emitter per minute; more are dropped before they
    /// are forwarded (ocd; the seed had no topic validator, C §15.6).
    pub search_mesh_max_per_minute: usize,

    // ---- application messages and DNT (DESIGN §8, seed 002 §7) ----------------------------
    /// Delay between delivery attempts to a destination (seed: `dntRetryInterval`, 15 s).
    #[serde(with = "humantime_serde")]
    pub dnt_retry_interval: Duration,
    /// Retries of a moderate message after its first failed attempt (seed:
    /// `dntMaxModerateRetries`, 3). Critical messages are retried until delivered, `search` never.
    pub dnt_moderate_retries: u32,
    /// Messages queued for delivery in total (ocd; the seed had no bound, B28).
    pub dnt_queue_max: usize,
    /// Messages queued for one destination (ocd).
    pub dnt_queue_max_per_destination: usize,
    /// Largest payload plus user of an application message, in bytes (ocd; under the frame limit).
    pub app_max_payload: usize,
    /// How long a receiver has to acknowledge a message (it commits it to its inbox first); an
    /// attempt not acknowledged in time counts as failed and waits for the retry (ocd; the seed
    /// counted a stream write as delivery).
    #[serde(with = "humantime_serde")]
    pub app_ack_timeout: Duration,

    // ---- records and the DHT ---------------------------------------------------------------
    /// Lifetime of a node's signed record; it is re-signed when half of it is left (the seed
    /// signed a 2-minute record on every heartbeat and every indexer verified each one; ocd
    /// re-signs at half-life so an indexer verifies a node's record once per ~2.5 min, and a
    /// stopped node stops being found at most this long after its last signature).
    #[serde(with = "humantime_serde")]
    pub record_ttl: Duration,
    /// Kademlia's k: bucket size and replication factor (libp2p's default, 20).
    pub kad_k: usize,
    /// Kademlia's α: queries in flight per lookup (3).
    pub kad_alpha: usize,
    /// How long a DHT peer has to answer one query (ocd; the seed bounded whole operations by 10 s).
    #[serde(with = "humantime_serde")]
    pub kad_rpc_timeout: Duration,
    /// Most DHT lookups an indexer runs at once; more are refused (bounded in-flight queries).
    pub kad_max_queries: usize,
    /// Most records an indexer stores.
    pub record_store_max: usize,
    /// How often an indexer re-announces itself under the rendezvous key (B §4.1: 60 s).
    #[serde(with = "humantime_serde")]
    pub provide_interval: Duration,
    /// Lifetime of a provider announcement (ocd: the seed's 48 h default kept dead indexers
    /// discoverable for two days, C §18.15).
    #[serde(with = "humantime_serde")]
    pub provider_ttl: Duration,
    /// How often an indexer refreshes its cache of other indexers from the DHT (C §13.2: 2 min).
    #[serde(with = "humantime_serde")]
    pub indexer_cache_refresh: Duration,
    /// Bound on the DHT spot check of a DID challenge (C §12.7: 3 s).
    #[serde(with = "humantime_serde")]
    pub dht_check_timeout: Duration,
    /// How long a node waits for an indexer to answer a record lookup (C §14.3: 10 s).
    #[serde(with = "humantime_serde")]
    pub lookup_timeout: Duration,
    /// Indexers a node asks before a lookup fails.
    pub lookup_attempts: u32,
    /// Least time between two DHT provider discoveries of a node whose pool is not full (doubles
    /// while discoveries find nothing new, up to 8×).
    #[serde(with = "humantime_serde")]
    pub discovery_interval: Duration,
    /// Peers an indexer always treats as known (the seed's local peer DB), as hex peer ids.
    #[serde(with = "peer_id_list")]
    pub trusted_peers: Vec<super::identity::PeerId>,
    /// Peers an indexer never serves (the seed's `BLACKLIST` relation), as hex peer ids.
    #[serde(with = "peer_id_list")]
    pub blocked_peers: Vec<super::identity::PeerId>,
    /// A node's partners (the seed's `PEER_IDS` and `PARTNER` relation), as hex peer ids: resources
    /// the local apps create, update or delete are pushed to them (DESIGN §9). More come from the
    /// apps over NATS and are kept in the durable peer book.
    #[serde(with = "peer_id_list")]
    pub partners: Vec<super::identity::PeerId>,

    // ---- connections -----------------------------------------------------------------------
    /// A connection whose `Hello` exchange has not completed by then is closed (ocd).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A connection unused for this long, to a peer that is neither in the pool nor a session, is
    /// closed (ocd), within another three quarters of it (idle links are found by a scan).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most messages queued for a peer while its connection is being set up; more are dropped and
    /// their requests fail (ocd: bounded queues).
    pub max_queued_per_peer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: String::new(),
            min_indexers: 1,
            max_indexers: 5,
            heartbeat_interval: Duration::from_secs(20),
            response_timeout: Duration::from_secs(5),
            liveness_interval: Duration::from_secs(60),
            challenge_spacing_min: 1,
            challenge_spacing_max: 10,
            challenge_extra_peers: 2,
            did_challenge_every: 5,
            base_round_trip: Duration::from_millis(400),
            fill_tolerance: 0.1,
            witness_fill_tolerance: 0.25,
            max_witnesses: 3,
            witness_queries: 1,
            born_at_penalty: 0.30,
            min_score_start: 20.0,
            min_score_end: 80.0,
            min_score_ramp: Duration::from_secs(24 * 3600),
            eviction_grace: Duration::from_secs(120),
            last_indexer_max_failures: 3,
            min_challenge_accuracy: 0.5,
            min_fill_consistency: 0.5,
            min_witness_consistency: 0.5,
            misbehaviour_cooldown: Duration::from_secs(30 * 60),
            seed_backoff_initial: Duration::from_secs(10),
            seed_backoff_max: Duration::from_secs(300),
            consensus_extra_candidates: 2,
            max_candidates: 10,
            max_nodes: 500,
            max_conn_per_window: 20,
            conn_window: Duration::from_secs(30),
            max_hb_per_minute: 5,
            max_publish_per_minute: 10,
            max_get_per_minute: 50,
            behaviour_window: Duration::from_secs(60),
            strike_threshold: 3,
            ban_duration: Duration::from_secs(600),
            strike_decay: Duration::from_secs(600),
            behaviour_table_max: 4096,
            session_expiry: Duration::from_secs(120),
            gc_interval: Duration::from_secs(30),
            offload_threshold: 0.80,
            offload_batch: 5,
            offload_grace: Duration::from_secs(180),
            indexer_cache_max: 10,
            search_timeout: Duration::from_secs(5),
            search_max_results: 100,
            search_max_batch: 32,
            search_mesh_max_per_minute: 600,
            dnt_retry_interval: Duration::from_secs(15),
            dnt_moderate_retries: 3,
            dnt_queue_max: 10_000,
            dnt_queue_max_per_destination: 1_000,
            app_max_payload: 48 * 1024,
            app_ack_timeout: Duration::from_secs(10),
            record_ttl: Duration::from_secs(300),
            kad_k: 20,
            kad_alpha: 3,
            kad_rpc_timeout: Duration::from_secs(3),
            kad_max_queries: 1024,
            record_store_max: 100_000,
            provide_interval: Duration::from_secs(60),
            provider_ttl: Duration::from_secs(180),
            indexer_cache_refresh: Duration::from_secs(120),
            dht_check_timeout: Duration::from_secs(3),
            lookup_timeout: Duration::from_secs(10),
            lookup_attempts: 3,
            discovery_interval: Duration::from_secs(60),
            trusted_peers: Vec::new(),
            blocked_peers: Vec::new(),
            partners: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            max_queued_per_peer: 64,
        }
    }
}

impl Config {
    /// Checks ranges that would make the protocol misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(field: &'static str, why: &'static str) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { field, why })
        }
        if self.max_indexers == 0 {
            return bad("max_indexers", "must be at least 1");
        }
        if self.app_max_payload > crate::proto::wire::MAX_FRAME_LEN - 8 * 1024 {
            return bad(
                "app_max_payload",
                "must leave room for the message's header in a 64 KiB frame (at most 57344)",
            );
        }
        if self.dnt_retry_interval.is_zero() {
            return bad("dnt_retry_interval", "must be positive");
        }
        if self.app_ack_timeout.is_zero() {
            return bad("app_ack_timeout", "must be positive");
        }
        if self.search_max_results == 0 || self.search_max_batch == 0 {
            return bad("search_max_results", "search_max_results and search_max_batch must be at least 1");
        }
        if self.min_indexers == 0 {
            return bad("min_indexers", "must be at least 1 (a node needs an indexer)");
        }
        if self.min_indexers > self.max_indexers {
            return bad("min_indexers", "must not exceed max_indexers");
        }
        if self.heartbeat_interval.is_zero() {
            return bad("heartbeat_interval", "must be positive");
        }
        if self.response_timeout.is_zero() || self.response_timeout >= self.heartbeat_interval {
            return bad("response_timeout", "must be positive and shorter than heartbeat_interval");
        }
        if self.challenge_spacing_min == 0 || self.challenge_spacing_min > self.challenge_spacing_max {
            return bad("challenge_spacing_min", "must be in 1..=challenge_spacing_max");
        }
        if self.did_challenge_every == 0 {
            return bad("did_challenge_every", "must be at least 1");
        }
        if self.max_nodes == 0 {
            return bad("max_nodes", "must be at least 1");
        }
        if self.max_hb_per_minute < 2 {
            return bad("max_hb_per_minute", "must be at least 2");
        }
        if self.behaviour_window.is_zero() || self.conn_window.is_zero() {
            return bad("behaviour_window", "windows must be positive");
        }
        // An honest node heartbeats each indexer once per interval and may add one probe and one
        // immediate heartbeat; that must fit the indexer's per-window limit.
        let per_window = self.behaviour_window.as_millis() / self.heartbeat_interval.as_millis().max(1);
        if per_window as usize + 2 > self.max_hb_per_minute {
            return bad("max_hb_per_minute", "too low for heartbeat_interval: honest nodes would be struck");
        }
        if self.strike_threshold == 0 {
            return bad("strike_threshold", "must be at least 1");
        }
        if self.behaviour_table_max == 0 || self.indexer_cache_max == 0 || self.max_queued_per_peer == 0 {
            return bad("behaviour_table_max", "table sizes must be at least 1");
        }
        if self.gc_interval.is_zero() || self.session_expiry.is_zero() {
            return bad("gc_interval", "must be positive");
        }
        if !(0.0..=1.0).contains(&self.offload_threshold) {
            return bad("offload_threshold", "must be within 0..=1");
        }
        if self.seed_backoff_initial.is_zero() || self.seed_backoff_initial > self.seed_backoff_max {
            return bad("seed_backoff_initial", "must be positive and at most seed_backoff_max");
        }
        if self.record_ttl < Duration::from_secs(10) || self.record_ttl > super::record::MAX_LIFETIME {
            return bad("record_ttl", "must be between 10s and 1h");
        }
        if self.kad_k == 0 || self.kad_alpha == 0 || self.kad_max_queries == 0 || self.record_store_max == 0 {
            return bad("kad_k", "kad_k, kad_alpha, kad_max_queries and record_store_max must be at least 1");
        }
        if self.kad_rpc_timeout.is_zero() || self.lookup_timeout.is_zero() || self.dht_check_timeout.is_zero() {
            return bad("kad_rpc_timeout", "DHT timeouts must be positive");
        }
        if self.provide_interval.is_zero()
            || self.provider_ttl <= self.provide_interval
            || self.provider_ttl > super::record::MAX_PROVIDER_LIFETIME
        {
            return bad("provider_ttl", "must exceed provide_interval (positive) and be at most 30m");
        }
        if self.indexer_cache_refresh.is_zero() || self.discovery_interval.is_zero() {
            return bad("indexer_cache_refresh", "must be positive");
        }
        if self.min_score_start > self.min_score_end {
            return bad("min_score_start", "must not exceed min_score_end");
        }
        Ok(())
    }

    /// The seed's `dynamicMinScore(age)`: `start + (end − start)·age/ramp`, capped at `end`
    /// (20 → 80 over 24 h by default).
    pub fn dynamic_min_score(&self, age: Duration) -> f64 {
        let ramp = self.min_score_ramp.as_secs_f64();
        if ramp <= 0.0 {
            return self.min_score_end;
        }
        let frac = (age.as_secs_f64() / ramp).min(1.0);
        self.min_score_start + (self.min_score_end - self.min_score_start) * frac
    }

    /// The RTT at which the latency score reaches 0 (`BaseRoundTrip × 10`, A §6.6).
    pub fn max_rtt(&self) -> Duration {
        self.base_round_trip * 10
    }
}

/// Peer-id lists as arrays of hex strings in TOML.
mod peer_id_list {
    use super::super::identity::PeerId;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::str::FromStr;

    pub fn serialize<S: Serializer>(v: &[PeerId], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|p| p.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerId>, D::Error> {
        let raw = Vec::<String>::deserialize(d)?;
        raw.iter().map(|s| PeerId::from_str(s).map_err(serde::de::Error::custom)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds_and_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(20));
        assert_eq!(c.max_hb_per_minute, 5);
        assert_eq!(c.strike_threshold, 3);
        assert_eq!(c.max_nodes, 500);
    }

    #[test]
    fn dynamic_min_score_ramps_from_20_to_80_over_a_day() {
        let c = Config::default();
        assert_eq!(c.dynamic_min_score(Duration::ZERO), 20.0);
        assert!((c.dynamic_min_score(Duration::from_secs(6 * 3600)) - 35.0).abs() < 1e-9);
        assert!((c.dynamic_min_score(Duration::from_secs(12 * 3600)) - 50.0).abs() < 1e-9);
        assert_eq!(c.dynamic_min_score(Duration::from_secs(48 * 3600)), 80.0);
    }

    #[test]
    fn config_parses_from_toml_with_durations_and_rejects_unknown_keys() {
        let c: Config = toml::from_str("max_nodes = 50\nheartbeat_interval = \"10s\"\nmax_hb_per_minute = 8").unwrap();
        assert_eq!(c.max_nodes, 50);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        c.validate().unwrap();
        assert!(toml::from_str::<Config>("max_nodez = 50").is_err());
    }

    #[test]
    fn validate_rejects_limits_that_would_ban_honest_nodes() {
        let c = Config { max_hb_per_minute: 3, ..Config::default() };
        assert!(c.validate().is_err());
        let c = Config { min_indexers: 6, ..Config::default() };
        assert!(c.validate().is_err());
    }
}
