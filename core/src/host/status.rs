//! What `ocd status` shows: a snapshot of the running daemon built from the core's read-only
//! views, serialised as JSON over the control socket, and rendered as a table.

use super::lookup::rfc3339;
use super::metrics::{DhtGauges, MetricsSnapshot};
use crate::proto::wire::RefuseReason;
use crate::proto::{EntryState, Event, PeerId};
use crate::proto::{Peer, PeerAddr, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// What an operator must do when indexers hold another DID for this node's key.
pub const DID_CHANGED_HELP: &str = "they hold another DID for this key (the `did` file was replaced, or a new DID \
     adopted): restore the `did` file this key had before, or wait until those indexers forget the old binding";

/// How long after its last `DidChanged` refusal an indexer is still shown as refusing our DID.
/// A refused seed is retried at least every `seed_backoff_max` (5 min by default), so a lasting
/// refusal stays shown; an indexer that stopped refusing (or that we stopped asking) drops off.
pub const DID_REFUSAL_MEMORY: Duration = Duration::from_secs(600);

/// The indexers that refuse this node's heartbeats with [`RefuseReason::DidChanged`]: they bound
/// this key to another DID. Fed with the node's events. The warning is logged when an indexer
/// starts refusing — its first such refusal, or the first after [`DID_REFUSAL_MEMORY`] without
/// one — not at every refused heartbeat; a DID only changes across a restart, so this is once per
/// indexer per change.
///
/// An indexer that answers a probe is no sign that it accepts our DID (probes carry no identity
/// and a refusing seed is readmitted by them, then refused again), so refusals are forgotten by
/// age, not by `IndexerLive`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DidRefusals {
    last: BTreeMap<PeerId, Instant>,
}

impl DidRefusals {
    /// Updates from a core event seen at `now`; logs the warning when an indexer starts refusing,
    /// and returns whether it did.
    pub fn observe(&mut self, e: &Event, now: Instant) -> bool {
        let Event::HeartbeatRefused { indexer, reason: RefuseReason::DidChanged } = e else {
            return false;
        };
        let starts = self.last.get(indexer).is_none_or(|t| now.saturating_duration_since(*t) > DID_REFUSAL_MEMORY);
        self.last.insert(*indexer, now);
        if starts {
            tracing::warn!(indexer = %indexer.short(), "indexer {indexer} refuses our heartbeats: {DID_CHANGED_HELP}");
        }
        starts
    }

    /// The indexers (peer ids, hex, in order) that refused our DID within [`DID_REFUSAL_MEMORY`]
    /// before `now`.
    pub fn indexers(&self, now: Instant) -> Vec<String> {
        self.last
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) <= DID_REFUSAL_MEMORY)
            .map(|(p, _)| p.to_string())
            .collect()
    }
}

/// A snapshot of the daemon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `tokio` (the `ocd` binary, iroh) or `smol` (`ocd-smol`, quinn).
    pub runtime: String,
    /// Crate version.
    pub version: String,
    /// Our peer id (hex).
    pub peer_id: String,
    /// Our DID.
    pub did: String,
    /// Our name.
    pub name: String,
    /// `node`, `indexer` or both.
    pub roles: Vec<String>,
    /// Our dialable address, `<peer-id>@ip:port[,ip:port…]`: the addresses advertised in our
    /// record and provider announcements.
    pub address: String,
    /// The sockets the transport is bound to (may be `0.0.0.0:port`).
    #[serde(default)]
    pub listen: Vec<String>,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The daemon's clock at this snapshot (ms since the epoch).
    #[serde(default)]
    pub now_ms: u64,
    /// Open, authenticated-or-handshaking connections known to the core.
    pub connections: usize,
    /// The node role's pool.
    pub pool: Option<PoolStatus>,
    /// The indexer role's state.
    pub indexer: Option<IndexerStatus>,
    /// Our own signed record.
    #[serde(default)]
    pub record: Option<OwnRecordStatus>,
    /// The DHT: records, routing table, providers, queries, counters.
    #[serde(default)]
    pub dht: DhtStatus,
    /// Distributed search: this node's searches, this indexer's referenced records, emitted
    /// searches and search mesh.
    #[serde(default)]
    pub search: SearchStatus,
    /// Application messages: the DNT queue, the inbox and the durable store (a node's).
    #[serde(default)]
    pub app: Option<super::app::AppStatus>,
    /// The NATS bridge (`None`: no `nats_url`).
    #[serde(default)]
    pub nats: Option<super::nats::NatsStatus>,
    /// Counters since start.
    pub counters: MetricsSnapshot,
    /// Indexers (peer ids) refusing our heartbeats because they hold another DID for our key
    /// (see [`DID_CHANGED_HELP`]); empty when none does.
    #[serde(default)]
    pub did_refused_by: Vec<String>,
}

/// Our own record, as last signed (it is re-signed at half-life).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnRecordStatus {
    /// When it was signed (ms since the epoch).
    pub issued_at_ms: u64,
    /// When it expires (ms since the epoch).
    pub expires_at_ms: u64,
    /// `expires_at` in RFC 3339.
    pub expires_at: String,
    /// Addresses it advertises.
    pub addrs: Vec<String>,
}

/// The DHT part of the status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DhtStatus {
    /// `server` (an indexer: routing table, store, providers) or `client` (a node: queries only).
    pub mode: String,
    /// Gauges and counters.
    #[serde(flatten)]
    pub view: DhtGauges,
}

/// The search part of the status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchStatus {
    /// This node's searches in flight.
    pub active: Vec<ActiveSearchStatus>,
    /// Nodes that chose this indexer as their referent: their records answer searches here.
    pub referenced: usize,
    /// Nodes' searches this indexer is emitting.
    pub emitting: usize,
    /// The search mesh (an indexer's; `None` on a node).
    pub mesh: Option<MeshStatus>,
}

/// One search in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveSearchStatus {
    /// Whose search (`control-<id>` for an `ocd search` without `--user`).
    pub user: String,
    /// The command id.
    pub id: u64,
    /// Distinct verified hits so far.
    pub hits: u32,
}

/// An indexer's search mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MeshStatus {
    /// Neighbours (hex peer ids).
    pub neighbours: Vec<String>,
    /// Gossip messages sent (data and control).
    pub sent: u64,
    /// Gossip messages received.
    pub received: u64,
    /// Payloads dropped before forwarding (invalid, expired, over rate).
    pub dropped: u64,
    /// Payloads delivered to the search machine.
    pub delivered: u64,
}

impl SearchStatus {
    /// Reads the core's search view.
    pub fn of(peer: &Peer) -> Self {
        let v = peer.search();
        let mesh = v.has_mesh().then(|| {
            let m = v.mesh_stats();
            MeshStatus {
                neighbours: v.mesh_neighbours().iter().map(ToString::to_string).collect(),
                sent: m.sent,
                received: m.received,
                dropped: m.dropped,
                delivered: m.delivered,
            }
        });
        SearchStatus {
            active: v.active().into_iter().map(|(user, id, hits)| ActiveSearchStatus { user, id, hits }).collect(),
            referenced: v.referenced(),
            emitting: v.emitting(),
            mesh,
        }
    }
}

/// The pool of a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Minimum wanted live indexers.
    pub min: usize,
    /// Maximum pool size.
    pub max: usize,
    /// Live indexers now.
    pub live: usize,
    /// Every entry.
    pub entries: Vec<PoolEntryStatus>,
}

/// One pool entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolEntryStatus {
    /// The indexer (hex).
    pub peer: String,
    /// `pending`, `live` or `down`.
    pub state: String,
    /// Sticky seed.
    pub seed: bool,
    /// Our search referent.
    pub referent: bool,
    /// How it entered the pool.
    pub via: String,
    /// Score 0–100.
    pub score: f64,
    /// The factors of the score.
    pub factors: Factors,
    /// Last round trip, in milliseconds.
    pub last_rtt_ms: Option<u64>,
    /// Heartbeat failures since its last answer.
    pub fails: u32,
}

/// The score factors of one entry (each 0–1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Factors {
    /// Uptime ratio.
    pub uptime: f64,
    /// Challenge accuracy.
    pub challenges: f64,
    /// Latency score.
    pub latency: f64,
    /// 1 − fill.
    pub fill: f64,
    /// Fill consistency.
    pub fill_consistency: f64,
    /// Witness consistency.
    pub witnesses: f64,
    /// DID challenge success.
    pub did: f64,
    /// `born_at` stability.
    pub born_at: f64,
}

/// The indexer role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexerStatus {
    /// Admitted nodes.
    pub sessions: usize,
    /// Capacity.
    pub max_nodes: usize,
    /// sessions / capacity.
    pub fill_rate: f64,
    /// Start of this indexer's life (ms since the epoch).
    pub born_at_ms: u64,
    /// Other indexers it knows.
    pub known_indexers: usize,
    /// Admitted nodes.
    pub nodes: Vec<SessionStatus>,
}

/// One admitted node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// The node (hex).
    pub peer: String,
    /// Its name, if sent.
    pub name: Option<String>,
    /// Its DID, if sent.
    pub did: Option<String>,
    /// Seconds since its last heartbeat.
    pub last_seen_secs: u64,
    /// It chose us as referent.
    pub referent: bool,
    /// It is an indexer.
    pub is_indexer: bool,
    /// Its admission score.
    pub admission_score: f64,
}

fn state_name(s: EntryState) -> &'static str {
    match s {
        EntryState::Pending => "pending",
        EntryState::Live => "live",
        EntryState::Down => "down",
    }
}

impl StatusReport {
    /// Builds a snapshot from the core.
    pub fn build(
        peer: &Peer,
        runtime: &str,
        address: &PeerAddr,
        listen: &PeerAddr,
        started: Timestamp,
        now: Timestamp,
        mut counters: MetricsSnapshot,
    ) -> Self {
        let roles = peer.roles();
        let did_refused_by = std::mem::take(&mut counters.did_refused_by);
        let pool = peer.pool().map(|p| PoolStatus {
            min: p.min_pool(),
            max: p.max_pool(),
            live: p.live_count(),
            entries: p
                .entries()
                .map(|e| PoolEntryStatus {
                    peer: e.peer.to_string(),
                    state: state_name(e.state).into(),
                    seed: e.is_seed,
                    referent: e.referent,
                    via: format!("{:?}", e.via).to_lowercase(),
                    score: e.score,
                    factors: Factors {
                        uptime: e.factors.uptime,
                        challenges: e.factors.challenge_accuracy,
                        latency: e.factors.latency,
                        fill: e.factors.fill,
                        fill_consistency: e.factors.fill_consistency,
                        witnesses: e.factors.witness_consistency,
                        did: e.factors.did_success,
                        born_at: e.factors.born_at_penalty,
                    },
                    last_rtt_ms: e.last_rtt.map(|d| d.as_millis() as u64),
                    fails: e.consecutive_fails,
                })
                .collect(),
        });
        let indexer = peer.indexer().map(|ix| IndexerStatus {
            sessions: ix.session_count(),
            max_nodes: peer.config().max_nodes,
            fill_rate: ix.fill_rate(),
            born_at_ms: ix.born_at().0,
            known_indexers: ix.known_indexers().count(),
            nodes: ix
                .sessions()
                .map(|s| SessionStatus {
                    peer: s.peer.to_string(),
                    name: s.name.map(String::from),
                    did: s.did.map(|d| d.to_string()),
                    last_seen_secs: now.0.saturating_sub(s.last_seen.0) / 1000,
                    referent: s.referent,
                    is_indexer: s.is_indexer,
                    admission_score: s.admission_score,
                })
                .collect(),
        });
        StatusReport {
            runtime: runtime.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            peer_id: peer.id().to_string(),
            did: peer.did().to_string(),
            name: peer.config().name.clone(),
            roles: [roles.node.then_some("node"), roles.indexer.then_some("indexer")]
                .into_iter()
                .flatten()
                .map(String::from)
                .collect(),
            address: address.to_string(),
            listen: listen.addrs.clone(),
            uptime_secs: now.0.saturating_sub(started.0) / 1000,
            now_ms: now.0,
            connections: peer.connections().len(),
            pool,
            indexer,
            record: peer.record().map(|r| OwnRecordStatus {
                issued_at_ms: r.body.issued_at.0,
                expires_at_ms: r.body.expires_at.0,
                expires_at: rfc3339(r.body.expires_at),
                addrs: r.body.addrs.clone(),
            }),
            dht: DhtStatus {
                mode: if peer.dht().is_server() { "server" } else { "client" }.into(),
                view: DhtGauges::of(peer),
            },
            search: SearchStatus::of(peer),
            app: None,
            nats: None,
            counters,
            did_refused_by,
        }
    }

    /// Whether this daemon is a node whose pool has reached its minimum.
    pub fn at_min_pool(&self) -> bool {
        self.pool.as_ref().is_some_and(|p| p.live >= p.min)
    }

    /// A readable, fixed-width rendering.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "ocd {} (runtime {})  roles: {}", self.version, self.runtime, self.roles.join(","));
        let _ = writeln!(s, "peer     {}", self.peer_id);
        let _ = writeln!(s, "did      {}", self.did);
        if !self.did_refused_by.is_empty() {
            let who: Vec<&str> = self.did_refused_by.iter().map(|p| short(p)).collect();
            let _ = writeln!(
                s,
                "WARNING  {} indexer(s) refuse this DID ({}): {DID_CHANGED_HELP}",
                who.len(),
                who.join(", ")
            );
        }
        if !self.name.is_empty() {
            let _ = writeln!(s, "name     {}", self.name);
        }
        let _ = writeln!(s, "address  {}", self.address);
        if self.listen.iter().any(|l| !self.address.contains(l.as_str())) {
            let _ = writeln!(s, "listen   {}", self.listen.join(", "));
        }
        let _ =
            writeln!(s, "uptime   {}", humantime::format_duration(std::time::Duration::from_secs(self.uptime_secs)));
        let _ = writeln!(s, "conns    {}", self.connections);
        self.render_pool(&mut s);
        self.render_indexer(&mut s);
        let _ = writeln!(s);
        self.render_record_and_dht(&mut s);
        self.render_search(&mut s);
        self.render_nats_and_app(&mut s);
        self.render_counters(&mut s);
        s
    }

    /// The node's pool: one line per indexer with its score factors.
    fn render_pool(&self, s: &mut String) {
        if let Some(p) = &self.pool {
            let _ = writeln!(s, "\npool: {} live (min {}, max {})", p.live, p.min, p.max);
            let _ = writeln!(
                s,
                "  {:<16} {:<7} {:>6}  {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5}  {:>7}  flags",
                "indexer", "state", "score", "upt", "chal", "lat", "fill", "fcon", "wit", "did", "born", "rtt",
            );
            for e in &p.entries {
                let f = &e.factors;
                let flags = [e.seed.then_some("seed"), e.referent.then_some("referent")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(",");
                let rtt = match e.last_rtt_ms {
                    Some(0) => "<1ms".into(),
                    Some(r) => format!("{r}ms"),
                    None => "-".into(),
                };
                let _ = writeln!(
                    s,
                    "  {:<16} {:<7} {:>6.1}  {:>5.2} {:>5.2} {:>5.2} {:>5.2} {:>5.2} {:>5.2} {:>5.2} {:>5.2}  {:>7}  {}",
                    short(&e.peer),
                    e.state,
                    e.score,
                    f.uptime,
                    f.challenges,
                    f.latency,
                    f.fill,
                    f.fill_consistency,
                    f.witnesses,
                    f.did,
                    f.born_at,
                    rtt,
                    flags
                );
            }
        }
    }

    /// The indexer role: its sessions, one line per node admitted.
    fn render_indexer(&self, s: &mut String) {
        if let Some(ix) = &self.indexer {
            let _ = writeln!(
                s,
                "\nindexer: {} nodes admitted (capacity {}, fill {:.1}%), knows {} indexers",
                ix.sessions,
                ix.max_nodes,
                ix.fill_rate * 100.0,
                ix.known_indexers
            );
            if !ix.nodes.is_empty() {
                let _ = writeln!(s, "  {:<16} {:<16} {:>9} {:>6}  flags", "node", "name", "last seen", "admit");
                for n in &ix.nodes {
                    let flags = [n.referent.then_some("referent"), n.is_indexer.then_some("indexer")]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(",");
                    let _ = writeln!(
                        s,
                        "  {:<16} {:<16} {:>8}s {:>6.1}  {}",
                        short(&n.peer),
                        n.name.as_deref().unwrap_or("-"),
                        n.last_seen_secs,
                        n.admission_score,
                        flags
                    );
                }
            }
        }
    }

    /// The signed record and the DHT counters.
    fn render_record_and_dht(&self, s: &mut String) {
        match &self.record {
            Some(r) => {
                let left = r.expires_at_ms.saturating_sub(self.now_ms) / 1000;
                let _ = writeln!(
                    s,
                    "record: expires {} (in {}), re-signed at half-life",
                    r.expires_at,
                    humantime::format_duration(std::time::Duration::from_secs(left))
                );
            }
            None => {
                let _ = writeln!(s, "record: none signed");
            }
        }
        let d = &self.dht.view;
        let _ = writeln!(
            s,
            "dht ({}): {} records, {} peers in the routing table, {} providers, {} queries running",
            self.dht.mode, d.records, d.table_size, d.providers, d.queries_running
        );
        let _ = writeln!(
            s,
            "  queries {} (refused {}); rpcs {} (failed {}); stores accepted {} / refused {}; verifications {}",
            d.queries, d.queries_refused, d.rpcs, d.rpc_failures, d.stores_accepted, d.stores_refused, d.verifications
        );
    }

    /// The NATS bridge and the application messages.
    fn render_nats_and_app(&self, s: &mut String) {
        if let Some(n) = &self.nats {
            let _ = writeln!(
                s,
                "nats {} ({}): received {} (dropped {}), published {}, pending {}, reconnects {}, resource searches {} / answering {}{}",
                n.url,
                if n.connected { "connected" } else { "DISCONNECTED" },
                n.received,
                n.malformed,
                n.published,
                n.pending,
                n.reconnects,
                n.searches.0,
                n.searches.1,
                n.last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default()
            );
        }
        if let Some(app) = &self.app {
            app.render(s);
            let a = &self.counters.app;
            let _ = writeln!(
                s,
                "  sent {} / delivered {} / retried {} / abandoned {} / refused {}; received {} (duplicates {}, refused {})",
                a.accepted,
                a.delivered,
                a.retried,
                a.abandoned,
                a.refused_outgoing,
                a.received,
                a.duplicate,
                a.refused_incoming
            );
        }
    }

    /// The lookup, record, heartbeat and ban counters.
    fn render_counters(&self, s: &mut String) {
        let c = &self.counters;
        let _ = writeln!(
            s,
            "lookups found {} / not found {} / timed out {}; records stored {} / rejected {}",
            c.lookups_found, c.lookups_not_found, c.lookups_timed_out, c.records_stored, c.records_rejected
        );
        let _ = writeln!(
            s,
            "heartbeats sent {} / received {} / refused {}; evictions {}; bans {}",
            c.heartbeats_sent, c.heartbeats_received, c.heartbeats_refused, c.evictions, c.bans
        );
    }

    /// The search lines: searches in flight, referenced records, emitted searches, the mesh and
    /// the search counters.
    fn render_search(&self, s: &mut String) {
        let q = &self.search;
        let active = if q.active.is_empty() {
            "none".to_string()
        } else {
            q.active
                .iter()
                .map(|a| format!("{} ({} hit{})", a.user, a.hits, if a.hits == 1 { "" } else { "s" }))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "search: active {}; {} referenced records; emitting {}", active, q.referenced, q.emitting);
        if let Some(m) = &q.mesh {
            let shorts = m.neighbours.iter().map(|n| short(n)).collect::<Vec<_>>().join(" ");
            let _ = writeln!(
                s,
                "  mesh: {} neighbour{}{}{}; gossip sent {} / received {} / dropped {} / delivered {}",
                m.neighbours.len(),
                if m.neighbours.len() == 1 { "" } else { "s" },
                if shorts.is_empty() { "" } else { " " },
                shorts,
                m.sent,
                m.received,
                m.dropped,
                m.delivered
            );
        }
        let c = &self.counters.search;
        let ended = if c.ended.is_empty() {
            "0".to_string()
        } else {
            c.ended.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(
            s,
            "  searches: started {}, ended {}; hits {}; forged hits dropped {}; emitted {}",
            c.started, ended, c.hits, c.forged_hits_dropped, c.emitted
        );
    }
}

/// The first 16 hex characters of a peer id.
pub fn short(peer: &str) -> &str {
    peer.get(..16).unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Keypair, PeerSetup, Roles};

    fn report(roles: Roles, anchor: bool, counters: MetricsSnapshot) -> StatusReport {
        let key = Keypair::derive(11, "status");
        let mut setup = PeerSetup::new(key, [7; 32], roles);
        setup.clock_anchor = anchor.then(std::time::Instant::now);
        let now = Timestamp(1_700_000_000_000);
        let peer = Peer::new(setup, now);
        let addr = PeerAddr { id: peer.id(), addrs: vec!["127.0.0.1:4001".into()] };
        StatusReport::build(&peer, "tokio", &addr, &addr, now, now, counters)
    }

    #[test]
    fn a_did_refusal_warns_once_per_indexer_and_is_forgotten_by_age() {
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        let refused = |indexer| Event::HeartbeatRefused { indexer, reason: RefuseReason::DidChanged };
        let t0 = Instant::now();
        let mut d = DidRefusals::default();
        assert!(d.observe(&refused(a), t0), "the first refusal warns");
        for i in 1..10 {
            assert!(!d.observe(&refused(a), t0 + Duration::from_secs(i)), "later ones do not");
        }
        assert!(!d.observe(&Event::IndexerLive { indexer: a }, t0), "a probe answer changes nothing");
        assert!(!d.observe(&Event::HeartbeatRefused { indexer: b, reason: RefuseReason::Busy }, t0));
        assert!(d.observe(&refused(b), t0), "another indexer warns too");
        assert_eq!(d.indexers(t0 + Duration::from_secs(9)), vec![a.to_string(), b.to_string()]);
        let later = t0 + Duration::from_secs(9) + DID_REFUSAL_MEMORY;
        assert_eq!(d.indexers(later), vec![a.to_string()], "b's refusal is older than the memory");
        assert!(d.observe(&refused(b), later), "b refusing again after that warns again");
    }

    #[test]
    fn a_node_refused_for_its_did_says_so_and_how_to_fix_it() {
        let counters = MetricsSnapshot { did_refused_by: vec!["ab".repeat(32)], ..MetricsSnapshot::default() };
        let r = report(Roles::NODE, false, counters);
        assert_eq!(r.did_refused_by, vec!["ab".repeat(32)]);
        assert!(r.counters.did_refused_by.is_empty(), "moved to the top level");
        let text = r.render();
        assert!(
            text.contains("WARNING  1 indexer(s) refuse this DID (abababababababab): they hold another DID"),
            "{text}"
        );
        assert!(text.contains("restore the `did` file"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["did_refused_by"][0], "ab".repeat(32));
        let none = report(Roles::NODE, false, MetricsSnapshot::default());
        assert!(!none.render().contains("WARNING"));
        assert_eq!(serde_json::to_value(&none).unwrap()["did_refused_by"], serde_json::json!([]));
    }

    #[test]
    fn an_indexer_shows_its_mesh_and_a_node_its_searches() {
        let ix = report(Roles::INDEXER, true, MetricsSnapshot::default());
        let mesh = ix.search.mesh.as_ref().expect("an indexer with a clock runs the mesh");
        assert!(mesh.neighbours.is_empty());
        let text = ix.render();
        assert!(text.contains("search: active none; 0 referenced records; emitting 0\n"), "{text}");
        assert!(
            text.contains("  mesh: 0 neighbours; gossip sent 0 / received 0 / dropped 0 / delivered 0\n"),
            "{text}"
        );
        assert!(text.contains("  searches: started 0, ended 0; hits 0;"), "{text}");

        let mut counters = MetricsSnapshot::default();
        counters.search.started = 3;
        counters.search.hits = 2;
        counters.search.ended.insert("idle".into(), 2);
        counters.search.ended.insert("cancelled".into(), 1);
        let node = report(Roles::NODE, true, counters);
        assert_eq!(node.search.mesh, None, "a node runs no mesh");
        let text = node.render();
        assert!(!text.contains("mesh:"), "{text}");
        assert!(text.contains("  searches: started 3, ended cancelled 1, idle 2; hits 2;"), "{text}");
        // The JSON carries the section, and an older report without it still reads.
        let json = serde_json::to_value(&node).unwrap();
        assert_eq!(json["search"]["active"], serde_json::json!([]));
        assert_eq!(json["counters"]["search"]["ended"]["idle"], 2);
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("search");
        assert_eq!(serde_json::from_value::<StatusReport>(old).unwrap().search, SearchStatus::default());
        let mesh = SearchStatus {
            active: vec![ActiveSearchStatus { user: "control-4".into(), id: 4, hits: 1 }],
            referenced: 2,
            emitting: 1,
            mesh: Some(MeshStatus { neighbours: vec!["ab".repeat(32)], sent: 5, ..MeshStatus::default() }),
        };
        let text = StatusReport { search: mesh, ..node }.render();
        assert!(text.contains("search: active control-4 (1 hit); 2 referenced records; emitting 1\n"), "{text}");
        assert!(text.contains("  mesh: 1 neighbour abababababababab; gossip sent 5 /"), "{text}");
    }
}
