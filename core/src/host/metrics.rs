//! Prometheus metrics: counters and gauges the driver updates, rendered in the text exposition
//! format and served over plain HTTP on a configurable local address.
//!
//! Every counter the driver keeps is moved by [`Metrics::count`] from a [`Counted`] — a core
//! [`Event`] wherever the core emits one, else something only the driver sees (a frame, a full
//! send queue, a bad frame, an expired lookup, a search started). Gauges are copied from the core's
//! read-only views by [`Metrics::observe`] and [`Metrics::observe_pool`].

use crate::proto::wire::KINDS;
use crate::proto::{Envelope, Event, Peer, RequestKind, SearchEnd};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Every metric of one daemon. Shared between the driver (writer) and the HTTP thread (reader).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Heartbeats (and probes) this node sent.
    pub heartbeats_sent: AtomicU64,
    /// Heartbeats this indexer received from authenticated peers.
    pub heartbeats_received: AtomicU64,
    /// Heartbeats and probes refused (by us as an indexer, or to us as a node); other refusals do not count.
    pub heartbeats_refused: AtomicU64,
    /// Indexers evicted from our pool.
    pub evictions: AtomicU64,
    /// Peers we banned.
    pub bans: AtomicU64,
    /// Frames sent.
    pub frames_sent: AtomicU64,
    /// Frames received.
    pub frames_received: AtomicU64,
    /// Connections closed for a malformed/oversized frame.
    pub protocol_errors: AtomicU64,
    /// Connections closed because their send queue overflowed.
    pub slow_peers: AtomicU64,
    /// Handshakes (`Hello`) that failed.
    pub handshake_failures: AtomicU64,
    /// Live indexers in the pool (gauge).
    pub pool_live: AtomicU64,
    /// Admitted node sessions (gauge).
    pub sessions: AtomicU64,
    /// Open connections (gauge).
    pub connections: AtomicU64,
    /// Lookups (`ocd lookup`) that found a verified record.
    pub lookups_found: AtomicU64,
    /// Lookups the core answered with "not found".
    pub lookups_not_found: AtomicU64,
    /// Lookups the core did not answer within the client's bound.
    pub lookups_timed_out: AtomicU64,
    /// Records this indexer accepted into its store (`Event::RecordStored`).
    pub records_stored: AtomicU64,
    /// Records this indexer refused (`Event::RecordRejected`).
    pub records_rejected: AtomicU64,
    /// Frames sent, by message kind ([`KINDS`]).
    pub sent_by_kind: KindCounters,
    /// Frames received, by message kind ([`KINDS`]).
    pub received_by_kind: KindCounters,
    /// Searches started over the control socket (`ocd search`).
    pub searches_started: AtomicU64,
    /// This node's searches that ended, by [`SearchEnd`] (indexed as [`SEARCH_ENDS`]).
    pub searches_ended: [AtomicU64; SEARCH_ENDS.len()],
    /// Verified hits delivered to this node's searches (`Event::SearchHit`).
    pub search_hits: AtomicU64,
    /// Forged, altered or unrelated hits dropped (`Event::ForgedHitDropped`).
    pub forged_hits_dropped: AtomicU64,
    /// Nodes' searches this indexer started emitting (`Event::SearchEmitted`).
    pub searches_emitted: AtomicU64,
    /// The search view, copied from the core after every step.
    pub search: Mutex<SearchGauges>,
    /// The DHT's view, copied from the core after every step.
    pub dht: Mutex<DhtGauges>,
    /// Per-indexer gauges: (peer id hex, score, last RTT seconds).
    pub indexers: Mutex<Vec<(String, f64, Option<f64>)>>,
    /// Application messages, by [`APP_EVENTS`] (accepted, delivered, retried, …).
    pub app: [AtomicU64; APP_EVENTS.len()],
    /// Messages in the DNT queue, every class (gauge).
    pub app_queue_depth: AtomicU64,
    /// Entries in the inbox (gauge).
    pub inbox_size: AtomicU64,
    /// Write transactions committed to the durable store.
    pub store_commits: AtomicU64,
    /// Persist and forget outputs committed.
    pub store_items: AtomicU64,
    /// Time spent committing, in microseconds.
    pub store_commit_micros: AtomicU64,
}

/// The application-message events counted, as metric labels, in the order of [`Metrics::app`]:
/// accepted for delivery (`ocd send` answered), delivered (acknowledged by the receiver),
/// retried, abandoned, refused at send (queue full, too large…), refused incoming, received
/// (new in the inbox), duplicate (received again, acknowledged, not delivered twice).
pub const APP_EVENTS: [&str; 8] =
    ["accepted", "delivered", "retried", "abandoned", "refused_outgoing", "refused_incoming", "received", "duplicate"];

/// The index in [`APP_EVENTS`] of an application-message event.
pub fn app_event_index(e: &Event) -> Option<usize> {
    Some(match e {
        Event::AppAccepted { .. } => 0,
        Event::AppDelivered { .. } => 1,
        Event::AppRetry { .. } => 2,
        Event::AppAbandoned { .. } => 3,
        Event::AppSendRefused { .. } => 4,
        Event::AppIncomingRefused { .. } => 5,
        Event::AppReceived { .. } => 6,
        Event::AppDuplicate { .. } => 7,
        _ => return None,
    })
}

/// The ends of a search, as metric labels, in the order of [`Metrics::searches_ended`].
pub const SEARCH_ENDS: [&str; 7] = ["idle", "cancelled", "limit", "no_indexer", "failed", "invalid", "too_many"];

/// The index of `end` in [`SEARCH_ENDS`].
pub fn search_end_index(end: SearchEnd) -> usize {
    match end {
        SearchEnd::Idle => 0,
        SearchEnd::Cancelled => 1,
        SearchEnd::Limit => 2,
        SearchEnd::NoIndexer => 3,
        SearchEnd::Failed => 4,
        SearchEnd::Invalid => 5,
        SearchEnd::TooMany => 6,
    }
}

/// One counter per wire message kind, indexed by [`Envelope::kind_index`].
#[derive(Debug)]
pub struct KindCounters(Box<[AtomicU64]>);

impl Default for KindCounters {
    fn default() -> Self {
        KindCounters(KINDS.iter().map(|_| AtomicU64::new(0)).collect())
    }
}

impl KindCounters {
    /// Counts one message.
    pub fn inc(&self, message: &Envelope) {
        if let Some(c) = self.0.get(message.kind_index()) {
            Metrics::inc(c);
        }
    }

    /// The count of the kind named `kind` (0 for an unknown name).
    pub fn get(&self, kind: &str) -> u64 {
        KINDS.iter().position(|k| *k == kind).and_then(|i| self.0.get(i)).map_or(0, get)
    }

    /// `(kind, count)` for every kind.
    pub fn all(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        KINDS.iter().copied().zip(self.0.iter().map(get))
    }
}

/// The search machine's gauges and the mesh's counters ([`crate::proto::MeshStats`]), as last seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchGauges {
    /// This node's searches in flight.
    pub active: u64,
    /// Nodes whose records this indexer answers searches from (they chose it as referent).
    pub referenced: u64,
    /// Nodes' searches this indexer is emitting.
    pub emitting: u64,
    /// Whether this indexer runs the search mesh.
    pub has_mesh: bool,
    /// Search-mesh neighbours.
    pub mesh_neighbours: u64,
    /// Gossip messages sent on the mesh (data and control).
    pub mesh_sent: u64,
    /// Gossip messages received.
    pub mesh_received: u64,
    /// Mesh payloads dropped before forwarding (invalid, expired, over rate).
    pub mesh_dropped: u64,
    /// Mesh payloads delivered to the search machine.
    pub mesh_delivered: u64,
}

impl SearchGauges {
    /// Reads the core's search view.
    pub fn of(peer: &Peer) -> Self {
        let v = peer.search();
        let m = v.mesh_stats();
        SearchGauges {
            active: v.active().len() as u64,
            referenced: v.referenced() as u64,
            emitting: v.emitting() as u64,
            has_mesh: v.has_mesh(),
            mesh_neighbours: v.mesh_neighbours().len() as u64,
            mesh_sent: m.sent,
            mesh_received: m.received,
            mesh_dropped: m.dropped,
            mesh_delivered: m.delivered,
        }
    }
}

/// The search counters of [`MetricsSnapshot`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchCounters {
    /// See [`Metrics::searches_started`].
    pub started: u64,
    /// Searches ended, by end ([`SEARCH_ENDS`] names); ends never seen are left out.
    pub ended: std::collections::BTreeMap<String, u64>,
    /// See [`Metrics::search_hits`].
    pub hits: u64,
    /// See [`Metrics::forged_hits_dropped`].
    pub forged_hits_dropped: u64,
    /// See [`Metrics::searches_emitted`].
    pub emitted: u64,
}

/// The DHT's gauges and the core's DHT counters ([`crate::proto::DhtStats`]), as last seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DhtGauges {
    /// Records held (indexers; a node holds none).
    pub records: u64,
    /// Peers in the routing table.
    pub table_size: u64,
    /// Provider announcements held.
    pub providers: u64,
    /// DHT queries running.
    pub queries_running: u64,
    /// Queries started.
    pub queries: u64,
    /// Queries refused because `kad_max_queries` were running.
    pub queries_refused: u64,
    /// DHT RPCs sent.
    pub rpcs: u64,
    /// DHT RPCs that failed or timed out.
    pub rpc_failures: u64,
    /// Records accepted from `STORE`s.
    pub stores_accepted: u64,
    /// `STORE`s refused.
    pub stores_refused: u64,
    /// Record signatures verified.
    pub verifications: u64,
}

impl DhtGauges {
    /// Reads the core's DHT (a server for an indexer, a client for a node).
    pub fn of(peer: &Peer) -> Self {
        let dht = peer.dht();
        let st = dht.stats();
        DhtGauges {
            records: dht.record_count() as u64,
            table_size: dht.table_len() as u64,
            providers: dht.provider_count() as u64,
            queries_running: dht.query_count() as u64,
            queries: st.queries,
            queries_refused: st.queries_refused,
            rpcs: st.rpcs,
            rpc_failures: st.rpc_failures,
            stores_accepted: st.stores_accepted,
            stores_refused: st.stores_refused,
            verifications: st.verifications,
        }
    }
}

/// Counter values, for `ocd status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsSnapshot {
    /// See [`Metrics::heartbeats_sent`].
    pub heartbeats_sent: u64,
    /// See [`Metrics::heartbeats_received`].
    pub heartbeats_received: u64,
    /// See [`Metrics::heartbeats_refused`].
    pub heartbeats_refused: u64,
    /// See [`Metrics::evictions`].
    pub evictions: u64,
    /// See [`Metrics::bans`].
    pub bans: u64,
    /// See [`Metrics::protocol_errors`].
    pub protocol_errors: u64,
    /// See [`Metrics::slow_peers`].
    pub slow_peers: u64,
    /// See [`Metrics::handshake_failures`].
    pub handshake_failures: u64,
    /// See [`Metrics::lookups_found`].
    pub lookups_found: u64,
    /// See [`Metrics::lookups_not_found`].
    pub lookups_not_found: u64,
    /// See [`Metrics::lookups_timed_out`].
    pub lookups_timed_out: u64,
    /// See [`Metrics::records_stored`].
    pub records_stored: u64,
    /// See [`Metrics::records_rejected`].
    pub records_rejected: u64,
    /// Search counters.
    pub search: SearchCounters,
    /// Application-message counters.
    pub app: AppCounters,
}

/// The application-message counters of [`MetricsSnapshot`] (see [`APP_EVENTS`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppCounters {
    /// Accepted for delivery.
    pub accepted: u64,
    /// Acknowledged by their receiver.
    pub delivered: u64,
    /// Attempted again.
    pub retried: u64,
    /// Given up.
    pub abandoned: u64,
    /// Send commands refused.
    pub refused_outgoing: u64,
    /// Incoming messages refused.
    pub refused_incoming: u64,
    /// New messages received (in the inbox).
    pub received: u64,
    /// Messages received again.
    pub duplicate: u64,
    /// Store commits.
    pub store_commits: u64,
    /// Persist and forget outputs committed.
    pub store_items: u64,
    /// Time spent committing, in microseconds.
    pub store_commit_micros: u64,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Something the driver saw that moves a counter; see [`Metrics::count`].
#[derive(Clone, Copy, Debug)]
pub enum Counted<'a> {
    /// An event of the core.
    Event(&'a Event),
    /// A frame from a peer's current connection, handed to the core.
    Received(&'a Envelope),
    /// A message the core sent to a peer with an open connection; `queued` is false when the
    /// connection's send queue did not take it (the connection is then dropped).
    Sent {
        /// The message.
        message: &'a Envelope,
        /// Whether the frame went into the send queue.
        queued: bool,
    },
    /// A connection was dropped because its send queue was full.
    SlowPeer,
    /// A connection was closed for a malformed or oversized frame.
    ProtocolError,
    /// A control-socket lookup got no answer within its client's bound.
    LookupTimedOut,
    /// A control-socket search was handed to the core.
    SearchStarted,
    /// A batch of persist/forget outputs was committed to the durable store.
    Commit {
        /// Outputs in the batch.
        items: usize,
        /// Time the commit took.
        elapsed: Duration,
    },
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets a gauge.
    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Ordering::Relaxed);
    }

    /// The counters, for the status report.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            heartbeats_sent: get(&self.heartbeats_sent),
            heartbeats_received: get(&self.heartbeats_received),
            heartbeats_refused: get(&self.heartbeats_refused),
            evictions: get(&self.evictions),
            bans: get(&self.bans),
            protocol_errors: get(&self.protocol_errors),
            slow_peers: get(&self.slow_peers),
            handshake_failures: get(&self.handshake_failures),
            lookups_found: get(&self.lookups_found),
            lookups_not_found: get(&self.lookups_not_found),
            lookups_timed_out: get(&self.lookups_timed_out),
            records_stored: get(&self.records_stored),
            records_rejected: get(&self.records_rejected),
            search: SearchCounters {
                started: get(&self.searches_started),
                ended: SEARCH_ENDS
                    .iter()
                    .zip(&self.searches_ended)
                    .map(|(k, v)| ((*k).to_string(), get(v)))
                    .filter(|(_, v)| *v > 0)
                    .collect(),
                hits: get(&self.search_hits),
                forged_hits_dropped: get(&self.forged_hits_dropped),
                emitted: get(&self.searches_emitted),
            },
            app: AppCounters {
                accepted: get(&self.app[0]),
                delivered: get(&self.app[1]),
                retried: get(&self.app[2]),
                abandoned: get(&self.app[3]),
                refused_outgoing: get(&self.app[4]),
                refused_incoming: get(&self.app[5]),
                received: get(&self.app[6]),
                duplicate: get(&self.app[7]),
                store_commits: get(&self.store_commits),
                store_items: get(&self.store_items),
                store_commit_micros: get(&self.store_commit_micros),
            },
        }
    }

    /// Counts what the driver saw: the one place where the driver's counters move.
    pub fn count(&self, what: Counted<'_>) {
        let inc = Self::inc;
        match what {
            Counted::Event(e) => match e {
                Event::IndexerEvicted { .. } => inc(&self.evictions),
                Event::PeerBanned { .. } => inc(&self.bans),
                Event::HandshakeFailed { .. } => inc(&self.handshake_failures),
                // Heartbeats refused, seen from either end: this indexer refusing a node's, or an
                // indexer refusing ours. Other refusals (records, candidates, DHT) do not count.
                Event::RequestRefused { request: RequestKind::Heartbeat, .. } | Event::HeartbeatRefused { .. } => {
                    inc(&self.heartbeats_refused)
                }
                Event::HeartbeatSent { .. } => inc(&self.heartbeats_sent),
                Event::HeartbeatReceived { .. } => inc(&self.heartbeats_received),
                Event::RecordStored { .. } => inc(&self.records_stored),
                Event::RecordRejected { .. } => inc(&self.records_rejected),
                Event::LookupDone { record, .. } => {
                    inc(if record.is_some() { &self.lookups_found } else { &self.lookups_not_found })
                }
                Event::SearchHit { .. } => inc(&self.search_hits),
                Event::SearchDone { end, .. } => inc(&self.searches_ended[search_end_index(*end)]),
                Event::ForgedHitDropped { .. } => inc(&self.forged_hits_dropped),
                Event::SearchEmitted { .. } => inc(&self.searches_emitted),
                e => {
                    if let Some(i) = app_event_index(e) {
                        inc(&self.app[i]);
                    }
                }
            },
            Counted::Received(message) => {
                inc(&self.frames_received);
                self.received_by_kind.inc(message);
            }
            Counted::Sent { message, queued } => {
                if queued {
                    inc(&self.frames_sent);
                    self.sent_by_kind.inc(message);
                }
            }
            Counted::SlowPeer => inc(&self.slow_peers),
            Counted::ProtocolError => inc(&self.protocol_errors),
            Counted::LookupTimedOut => inc(&self.lookups_timed_out),
            Counted::SearchStarted => inc(&self.searches_started),
            Counted::Commit { items, elapsed } => {
                inc(&self.store_commits);
                self.store_items.fetch_add(items as u64, Ordering::Relaxed);
                let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
                self.store_commit_micros.fetch_add(micros, Ordering::Relaxed);
            }
        }
    }

    /// Copies the core's views into the gauges (after every step of the driver): open
    /// connections, live pool entries, admitted sessions, the DHT and search.
    pub fn observe(&self, peer: &Peer, connections: usize) {
        Self::set(&self.connections, connections as u64);
        if let Some(p) = peer.pool() {
            Self::set(&self.pool_live, p.live_count() as u64);
        }
        if let Some(ix) = peer.indexer() {
            Self::set(&self.sessions, ix.session_count() as u64);
        }
        self.observe_dht(peer);
        if let Ok(mut slot) = self.search.lock() {
            *slot = SearchGauges::of(peer);
        }
    }

    /// Copies the core's DHT view into the gauges.
    pub fn observe_dht(&self, peer: &Peer) {
        if let Ok(mut slot) = self.dht.lock() {
            *slot = DhtGauges::of(peer);
        }
    }

    /// Copies the pool's entries (score, last RTT) into the per-indexer gauges.
    pub fn observe_pool(&self, peer: &Peer) {
        if let Some(p) = peer.pool()
            && let Ok(mut g) = self.indexers.lock()
        {
            g.clear();
            g.extend(p.entries().map(|e| (e.peer.to_string(), e.score, e.last_rtt.map(|d| d.as_secs_f64()))));
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
        };
        metric("ocd_heartbeats_sent_total", "counter", "Heartbeats sent to indexers.", get(&self.heartbeats_sent));
        metric(
            "ocd_heartbeats_received_total",
            "counter",
            "Heartbeats received from nodes.",
            get(&self.heartbeats_received),
        );
        metric(
            "ocd_heartbeats_refused_total",
            "counter",
            "Requests refused (sent or received).",
            get(&self.heartbeats_refused),
        );
        metric("ocd_pool_evictions_total", "counter", "Indexers evicted from the pool.", get(&self.evictions));
        metric("ocd_bans_total", "counter", "Peers banned by this indexer.", get(&self.bans));
        metric("ocd_frames_sent_total", "counter", "Wire frames sent.", get(&self.frames_sent));
        metric("ocd_frames_received_total", "counter", "Wire frames received.", get(&self.frames_received));
        metric(
            "ocd_protocol_errors_total",
            "counter",
            "Connections closed for a bad frame.",
            get(&self.protocol_errors),
        );
        metric("ocd_slow_peers_total", "counter", "Connections closed on send-queue overflow.", get(&self.slow_peers));
        metric("ocd_handshake_failures_total", "counter", "Failed Hello exchanges.", get(&self.handshake_failures));
        metric("ocd_pool_size", "gauge", "Live indexers in the pool.", get(&self.pool_live));
        metric("ocd_sessions", "gauge", "Admitted node sessions.", get(&self.sessions));
        metric("ocd_connections", "gauge", "Open connections.", get(&self.connections));
        let dht = self.dht.lock().map(|g| *g).unwrap_or_default();
        metric("ocd_dht_records", "gauge", "Peer records held in this indexer's DHT store.", dht.records);
        metric("ocd_dht_table_size", "gauge", "Indexers in the Kademlia routing table.", dht.table_size);
        metric("ocd_dht_providers", "gauge", "Indexer provider announcements held.", dht.providers);
        metric("ocd_dht_queries_running", "gauge", "DHT queries in flight.", dht.queries_running);
        metric("ocd_dht_queries_total", "counter", "DHT queries started.", dht.queries);
        metric(
            "ocd_dht_queries_refused_total",
            "counter",
            "DHT queries refused because kad_max_queries were running.",
            dht.queries_refused,
        );
        metric("ocd_dht_rpcs_total", "counter", "DHT RPCs sent.", dht.rpcs);
        metric("ocd_dht_rpc_failures_total", "counter", "DHT RPCs that failed or timed out.", dht.rpc_failures);
        metric("ocd_dht_stores_accepted_total", "counter", "Records accepted from DHT STOREs.", dht.stores_accepted);
        metric("ocd_dht_stores_refused_total", "counter", "DHT STOREs refused.", dht.stores_refused);
        metric("ocd_record_verifications_total", "counter", "Record signatures verified.", dht.verifications);
        metric(
            "ocd_records_stored_total",
            "counter",
            "Records accepted into this indexer's store (from owners or replicas).",
            get(&self.records_stored),
        );
        metric(
            "ocd_records_rejected_total",
            "counter",
            "Records refused by this indexer.",
            get(&self.records_rejected),
        );
        s.push_str("# HELP ocd_lookups_total Lookups asked over the control socket, by outcome.\n");
        s.push_str("# TYPE ocd_lookups_total counter\n");
        for (outcome, v) in [
            ("found", get(&self.lookups_found)),
            ("not_found", get(&self.lookups_not_found)),
            ("timed_out", get(&self.lookups_timed_out)),
        ] {
            s.push_str(&format!("ocd_lookups_total{{outcome=\"{outcome}\"}} {v}\n"));
        }
        let search = self.search.lock().map(|g| *g).unwrap_or_default();
        let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
        };
        metric(
            "ocd_searches_started_total",
            "counter",
            "Searches started over the control socket.",
            get(&self.searches_started),
        );
        metric("ocd_search_hits_total", "counter", "Verified search hits delivered.", get(&self.search_hits));
        metric(
            "ocd_search_forged_hits_total",
            "counter",
            "Forged, altered or unrelated search hits dropped.",
            get(&self.forged_hits_dropped),
        );
        metric(
            "ocd_searches_emitted_total",
            "counter",
            "Nodes' searches this indexer emitted.",
            get(&self.searches_emitted),
        );
        metric("ocd_searches_active", "gauge", "This node's searches in flight.", search.active);
        metric("ocd_search_referenced", "gauge", "Records this indexer answers searches from.", search.referenced);
        metric("ocd_searches_emitting", "gauge", "Nodes' searches this indexer is emitting.", search.emitting);
        metric("ocd_search_mesh_neighbours", "gauge", "Search-mesh neighbours.", search.mesh_neighbours);
        s.push_str("# HELP ocd_searches_ended_total This node's searches that ended, by end.\n");
        s.push_str("# TYPE ocd_searches_ended_total counter\n");
        for (end, v) in SEARCH_ENDS.iter().zip(&self.searches_ended) {
            s.push_str(&format!("ocd_searches_ended_total{{end=\"{end}\"}} {}\n", get(v)));
        }
        s.push_str("# HELP ocd_search_mesh_messages_total Search-mesh gossip messages, by event.\n");
        s.push_str("# TYPE ocd_search_mesh_messages_total counter\n");
        for (event, v) in [
            ("sent", search.mesh_sent),
            ("received", search.mesh_received),
            ("dropped", search.mesh_dropped),
            ("delivered", search.mesh_delivered),
        ] {
            s.push_str(&format!("ocd_search_mesh_messages_total{{event=\"{event}\"}} {v}\n"));
        }
        s.push_str("# HELP ocd_app_messages_total Application messages, by event.\n");
        s.push_str("# TYPE ocd_app_messages_total counter\n");
        for (event, v) in APP_EVENTS.iter().zip(&self.app) {
            s.push_str(&format!("ocd_app_messages_total{{event=\"{event}\"}} {}\n", get(v)));
        }
        let mut metric = |name: &str, kind: &str, help: &str, v: String| {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
        };
        metric("ocd_app_queue_depth", "gauge", "Messages in the DNT queue.", get(&self.app_queue_depth).to_string());
        metric("ocd_inbox_size", "gauge", "Entries in the inbox.", get(&self.inbox_size).to_string());
        metric(
            "ocd_store_commits_total",
            "counter",
            "Write transactions committed to the durable store.",
            get(&self.store_commits).to_string(),
        );
        metric(
            "ocd_store_items_total",
            "counter",
            "Persist and forget outputs committed to the durable store.",
            get(&self.store_items).to_string(),
        );
        metric(
            "ocd_store_commit_seconds_total",
            "counter",
            "Time spent committing to the durable store.",
            format!("{}", get(&self.store_commit_micros) as f64 / 1e6),
        );
        for (name, help, counters) in [
            ("ocd_messages_sent_total", "Wire messages sent, by kind.", &self.sent_by_kind),
            ("ocd_messages_received_total", "Wire messages received, by kind.", &self.received_by_kind),
        ] {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for (kind, v) in counters.all() {
                s.push_str(&format!("{name}{{kind=\"{kind}\"}} {v}\n"));
            }
        }
        let indexers = self.indexers.lock().map(|g| g.clone()).unwrap_or_default();
        if !indexers.is_empty() {
            s.push_str("# HELP ocd_pool_indexer_score Score (0-100) of each pool entry.\n");
            s.push_str("# TYPE ocd_pool_indexer_score gauge\n");
            for (peer, score, _) in &indexers {
                s.push_str(&format!("ocd_pool_indexer_score{{indexer=\"{peer}\"}} {score}\n"));
            }
            s.push_str("# HELP ocd_pool_indexer_rtt_seconds Last heartbeat round trip of each pool entry.\n");
            s.push_str("# TYPE ocd_pool_indexer_rtt_seconds gauge\n");
            for (peer, _, rtt) in &indexers {
                if let Some(rtt) = rtt {
                    s.push_str(&format!("ocd_pool_indexer_rtt_seconds{{indexer=\"{peer}\"}} {rtt}\n"));
                }
            }
        }
        s
    }
}

/// Serves `metrics` at `addr` (any path) from a background thread. Returns the bound address.
pub fn serve(addr: SocketAddr, metrics: std::sync::Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("ocd-metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, &metrics);
        }
    })?;
    Ok(local)
}

fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    // Read the request head (bounded), ignore it: every path serves the metrics.
    let mut line = String::new();
    for _ in 0..64 {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" || line.len() > 8192 {
            break;
        }
    }
    let body = metrics.render();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        body
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;

    #[test]
    fn metrics_endpoint_serves_prometheus_text() {
        let m = Arc::new(Metrics::default());
        Metrics::inc(&m.heartbeats_sent);
        Metrics::set(&m.pool_live, 3);
        Metrics::inc(&m.lookups_found);
        Metrics::inc(&m.lookups_not_found);
        Metrics::inc(&m.lookups_not_found);
        m.dht.lock().unwrap().rpcs = 42;
        m.indexers.lock().unwrap().push(("ab".into(), 87.5, Some(0.012)));
        let addr = serve("127.0.0.1:0".parse().unwrap(), m).unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK"));
        assert!(body.contains("\nocd_heartbeats_sent_total 1\n"), "{body}");
        assert!(body.contains("\nocd_pool_size 3\n"));
        assert!(body.contains("\nocd_dht_rpcs_total 42\n"), "{body}");
        assert!(body.contains("\nocd_dht_records 0\n"), "{body}");
        assert!(body.contains("ocd_lookups_total{outcome=\"found\"} 1\n"), "{body}");
        assert!(body.contains("ocd_lookups_total{outcome=\"not_found\"} 2\n"), "{body}");
        assert!(body.contains("ocd_pool_indexer_score{indexer=\"ab\"} 87.5"));
        assert!(body.contains("ocd_pool_indexer_rtt_seconds{indexer=\"ab\"} 0.012"));
    }

    #[test]
    fn count_moves_the_counters() {
        use crate::proto::wire::{IndexerMessage, RefuseReason, Refused, RequestId};
        use crate::proto::{PeerId, Timestamp};
        let m = Metrics::default();
        let peer = PeerId([7; 32]);
        let leave = Envelope::Indexer(IndexerMessage::Leave);
        let refused = Envelope::Indexer(IndexerMessage::Refused(Refused {
            req: RequestId(1),
            reason: RefuseReason::Busy,
            suggestions: vec![],
        }));
        m.count(Counted::Received(&refused));
        m.count(Counted::Received(&leave));
        m.count(Counted::Event(&Event::HeartbeatRefused { indexer: peer, reason: RefuseReason::Busy }));
        m.count(Counted::Event(&Event::RequestRefused {
            peer,
            request: RequestKind::Heartbeat,
            reason: RefuseReason::Full,
        }));
        // A refused record get is no heartbeat refusal.
        m.count(Counted::Event(&Event::RequestRefused {
            peer,
            request: RequestKind::Indexer,
            reason: RefuseReason::Unknown,
        }));
        m.count(Counted::Event(&Event::HeartbeatSent { indexer: peer }));
        m.count(Counted::Event(&Event::HeartbeatReceived { node: peer }));
        m.count(Counted::Event(&Event::PeerBanned { peer, until: Timestamp(0) }));
        m.count(Counted::Sent { message: &leave, queued: true });
        m.count(Counted::Sent { message: &refused, queued: false });
        m.count(Counted::SlowPeer);
        m.count(Counted::LookupTimedOut);
        let s = m.snapshot();
        assert_eq!((s.heartbeats_refused, s.bans, s.slow_peers, s.lookups_timed_out), (2, 1, 1, 1));
        assert_eq!((s.heartbeats_sent, s.heartbeats_received), (1, 1));
        assert_eq!((get(&m.frames_received), get(&m.frames_sent)), (2, 1));
    }

    #[test]
    fn search_events_and_messages_move_the_search_counters() {
        use crate::proto::wire::{RequestId, SearchMessage};
        use crate::proto::{Did, Keypair, PeerRecord, RecordBody, Timestamp};
        let m = Metrics::default();
        let key = Keypair::derive(8, "metrics");
        let body = RecordBody {
            peer_id: key.peer_id(),
            did: Did::new("did-m").unwrap(),
            name: "m".into(),
            addrs: vec![],
            api_url: None,
            nats_address: None,
            wallet: None,
            issued_at: Timestamp(1),
            expires_at: Timestamp(2),
        };
        let record = PeerRecord::sign(body, &key).unwrap();
        let from = key.peer_id();
        m.count(Counted::SearchStarted);
        m.count(Counted::SearchStarted);
        m.count(Counted::Event(&Event::SearchHit { id: 1, record, from }));
        m.count(Counted::Event(&Event::SearchDone { id: 1, hits: 1, end: SearchEnd::Idle }));
        m.count(Counted::Event(&Event::SearchDone { id: 2, hits: 0, end: SearchEnd::Cancelled }));
        m.count(Counted::Event(&Event::ForgedHitDropped { from, owner: from }));
        m.count(Counted::Event(&Event::SearchEmitted { node: from, local_hits: 0 }));
        let done = Envelope::Search(SearchMessage::Done { req: RequestId(1) });
        m.count(Counted::Sent { message: &done, queued: true });
        m.count(Counted::Received(&done));
        m.count(Counted::Received(&done));
        let s = m.snapshot().search;
        assert_eq!((s.started, s.hits, s.forged_hits_dropped, s.emitted), (2, 1, 1, 1));
        assert_eq!(s.ended.get("idle"), Some(&1));
        assert_eq!(s.ended.get("cancelled"), Some(&1));
        assert_eq!(s.ended.get("limit"), None, "ends never seen are left out");
        assert_eq!((m.sent_by_kind.get("search_done"), m.received_by_kind.get("search_done")), (1, 2));
        assert_eq!(m.sent_by_kind.get("no_such_kind"), 0);
        m.search.lock().unwrap().mesh_neighbours = 2;
        m.search.lock().unwrap().mesh_sent = 9;
        let text = m.render();
        for line in [
            "\nocd_searches_started_total 2\n",
            "\nocd_search_hits_total 1\n",
            "\nocd_search_forged_hits_total 1\n",
            "\nocd_search_mesh_neighbours 2\n",
            "\nocd_searches_ended_total{end=\"idle\"} 1\n",
            "\nocd_searches_ended_total{end=\"too_many\"} 0\n",
            "\nocd_search_mesh_messages_total{event=\"sent\"} 9\n",
            "\nocd_messages_sent_total{kind=\"search_done\"} 1\n",
            "\nocd_messages_received_total{kind=\"mesh_gossip\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        // Every end has its label.
        assert_eq!(SEARCH_ENDS.len(), m.searches_ended.len());
        for end in [SearchEnd::Idle, SearchEnd::TooMany, SearchEnd::Invalid] {
            assert!(search_end_index(end) < SEARCH_ENDS.len());
        }
    }
}
