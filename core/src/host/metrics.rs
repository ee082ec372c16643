//! Prometheus metrics: counters and gauges the driver updates, kept in a
//! [`prometheus_client`] registry, encoded by that library in the Prometheus text format
//! (version 0.0.4) and served over HTTP/1.1 by [`hyper`] on a configurable local address.
//!
//! Every counter the driver keeps is moved by [`Metrics::count`] from a [`Counted`] — a core
//! [`Event`] wherever the core emits one, else something only the driver sees (a frame, a full
//! send queue, a bad frame, an expired lookup, a search started). Gauges are copied from the core's
//! read-only views by [`Metrics::observe`] and [`Metrics::observe_pool`]. Values the core keeps
//! itself (the DHT's and the search mesh's counters, the per-indexer scores) are copied into
//! [`Metrics::dht`], [`Metrics::search`] and [`Metrics::indexers`] and encoded at scrape time by a
//! [`Collector`], so that an indexer that left the pool leaves the exposition with it.
//!
//! The format is Prometheus text 0.0.4 (`prometheus_client::encoding::prometheus_text`), not
//! OpenMetrics: every counter keeps its documented `…_total` name on its `HELP` and `TYPE` lines,
//! which `promtool check metrics` requires. Help texts are written with their final period, as
//! exposed; registration hands them to the registry without it (the registry adds one).
//!
//! # The HTTP server: its own thread, on both runtimes
//!
//! [`serve`] binds the listener at once (a port in use is a start-up error) and runs the server on
//! a dedicated thread `ocd-metrics` with a single-threaded tokio runtime: hyper's HTTP/1.1
//! server, one task per connection, so any number of scrapes are served concurrently and idle or
//! slow clients hold nothing but their own task. Each connection is bounded: its request head must
//! arrive within [`HEADER_TIMEOUT`] (which also closes a keep-alive connection idle that long), it
//! lives at most [`CONNECTION_LIFETIME`], and at most [`MAX_CONNECTIONS`] are open at once (more are
//! closed as soon as they are accepted).
//!
//! Why a thread of its own rather than the daemon's executor: the same code then serves both
//! daemons — `ocd` (tokio) and `ocd-smol` (smol) — with no runtime abstraction over TCP, and
//! neither a scrape nor a flood of idle connections can take time from the protocol's tasks.
//! For `ocd-smol` tokio stays out of the protocol path: it runs only on this thread, which shares
//! nothing with the daemon but the [`Metrics`] (atomics and short-held mutexes). A thread-based
//! server (`tiny_http`) was set aside: it parks one thread per open connection, so 200 idle
//! connections cost 200 threads, and it has no per-connection timeouts.

use crate::proto::wire::{KINDS, RefuseReason};
use crate::proto::{Envelope, Event, Peer, RequestKind, SearchEnd};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A gauge holding a count (never negative).
pub type CountGauge = Gauge<u64, AtomicU64>;

/// One pool entry's gauges: (peer id hex, score, last RTT in seconds).
pub type IndexerGauge = (String, f64, Option<f64>);

/// The label set of a metric with one label.
type OneLabel = [(&'static str, &'static str); 1];

/// Every metric of one daemon. Shared between the driver (writer) and the HTTP thread (reader).
#[derive(Debug)]
pub struct Metrics {
    /// Heartbeats (and probes) this node sent.
    pub heartbeats_sent: Counter,
    /// Heartbeats this indexer received from authenticated peers.
    pub heartbeats_received: Counter,
    /// Heartbeats and probes refused (by us as an indexer, or to us as a node); other refusals do not count.
    pub heartbeats_refused: Counter,
    /// Indexers evicted from our pool.
    pub evictions: Counter,
    /// Peers we banned.
    pub bans: Counter,
    /// Frames sent.
    pub frames_sent: Counter,
    /// Frames received.
    pub frames_received: Counter,
    /// Connections closed for a malformed/oversized frame.
    pub protocol_errors: Counter,
    /// Connections closed because their send queue overflowed.
    pub slow_peers: Counter,
    /// Handshakes (`Hello`) that failed.
    pub handshake_failures: Counter,
    /// Live indexers in the pool (gauge).
    pub pool_live: CountGauge,
    /// Admitted node sessions (gauge).
    pub sessions: CountGauge,
    /// Open connections (gauge).
    pub connections: CountGauge,
    /// Lookups (`ocd lookup`) that found a verified record.
    pub lookups_found: Counter,
    /// Lookups the core answered with "not found".
    pub lookups_not_found: Counter,
    /// Lookups the core did not answer within the client's bound.
    pub lookups_timed_out: Counter,
    /// Records this indexer accepted into its store (`Event::RecordStored`).
    pub records_stored: Counter,
    /// Records this indexer refused (`Event::RecordRejected`).
    pub records_rejected: Counter,
    /// Frames sent, by message kind ([`KINDS`]).
    pub sent_by_kind: KindCounters,
    /// Frames received, by message kind ([`KINDS`]).
    pub received_by_kind: KindCounters,
    /// Searches started over the control socket (`ocd search`).
    pub searches_started: Counter,
    /// This node's searches that ended, by [`SearchEnd`] (indexed as [`SEARCH_ENDS`]).
    pub searches_ended: [Counter; SEARCH_ENDS.len()],
    /// Verified hits delivered to this node's searches (`Event::SearchHit`).
    pub search_hits: Counter,
    /// Forged, altered or unrelated hits dropped (`Event::ForgedHitDropped`).
    pub forged_hits_dropped: Counter,
    /// Nodes' searches this indexer started emitting (`Event::SearchEmitted`).
    pub searches_emitted: Counter,
    /// The search view, copied from the core after every step.
    pub search: Arc<Mutex<SearchGauges>>,
    /// The DHT's view, copied from the core after every step.
    pub dht: Arc<Mutex<DhtGauges>>,
    /// Per-indexer gauges: (peer id hex, score, last RTT seconds).
    pub indexers: Arc<Mutex<Vec<IndexerGauge>>>,
    /// Application messages, by [`APP_EVENTS`] (accepted, delivered, retried, …).
    pub app: [Counter; APP_EVENTS.len()],
    /// Messages in the DNT queue, every class (gauge).
    pub app_queue_depth: CountGauge,
    /// Entries in the inbox (gauge).
    pub inbox_size: CountGauge,
    /// The NATS bridge: link up (1) or down (0), and its counters (see [`Metrics::observe_nats`]).
    pub nats_connected: CountGauge,
    /// Messages from the apps, by outcome (`handled`, `dropped`).
    pub nats_received: [Counter; 2],
    /// Publications the server confirmed.
    pub nats_published: Counter,
    /// Publications waiting for the server (gauge).
    pub nats_pending: CountGauge,
    /// Times the NATS link came back.
    pub nats_reconnects: Counter,
    /// The NATS counters at the last observation.
    nats_seen: Arc<Mutex<[u64; 4]>>,
    /// Write transactions committed to the durable store (a plain atomic: the driver reads it for
    /// the status; exposed at scrape time).
    pub store_commits: Arc<AtomicU64>,
    /// Persist and forget outputs committed.
    pub store_items: Counter,
    /// Time spent committing, in microseconds (exposed in seconds at scrape time).
    pub store_commit_micros: Arc<AtomicU64>,
    /// The indexers refusing this node's heartbeats because they hold another DID for its key;
    /// warns when one starts (see [`super::status::DidRefusals`]). Exposed at scrape time.
    pub did_refusals: Arc<Mutex<super::status::DidRefusals>>,
    /// The registry every metric above is registered in; [`Metrics::render`] encodes it.
    registry: Registry,
}

/// Registers `metric` under `name` with `help`, written as in the exposition (ending with a
/// period: the registry adds its own).
fn register(registry: &mut Registry, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
    registry.register(name, help.strip_suffix('.').unwrap_or(help), metric);
}

/// A family of counters with one label, every value of `values` present from the start (at 0);
/// returns one handle per value, in order.
fn labelled<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: [&'static str; N],
) -> [Counter; N] {
    let family = Family::<OneLabel, Counter>::default();
    let handles = values.map(|v| family.get_or_create_owned(&[(label, v)]));
    register(registry, name, help, family);
    handles
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            register(r, name, help, c.clone());
            c
        };
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = CountGauge::default();
            register(r, name, help, g.clone());
            g
        };
        let heartbeats_sent = counter(&mut r, "ocd_heartbeats_sent", "Heartbeats sent to indexers.");
        let heartbeats_received = counter(&mut r, "ocd_heartbeats_received", "Heartbeats received from nodes.");
        let heartbeats_refused = counter(&mut r, "ocd_heartbeats_refused", "Requests refused (sent or received).");
        let evictions = counter(&mut r, "ocd_pool_evictions", "Indexers evicted from the pool.");
        let bans = counter(&mut r, "ocd_bans", "Peers banned by this indexer.");
        let frames_sent = counter(&mut r, "ocd_frames_sent", "Wire frames sent.");
        let frames_received = counter(&mut r, "ocd_frames_received", "Wire frames received.");
        let protocol_errors = counter(&mut r, "ocd_protocol_errors", "Connections closed for a bad frame.");
        let slow_peers = counter(&mut r, "ocd_slow_peers", "Connections closed on send-queue overflow.");
        let handshake_failures = counter(&mut r, "ocd_handshake_failures", "Failed Hello exchanges.");
        let pool_live = gauge(&mut r, "ocd_pool_size", "Live indexers in the pool.");
        let sessions = gauge(&mut r, "ocd_sessions", "Admitted node sessions.");
        let connections = gauge(&mut r, "ocd_connections", "Open connections.");
        let records_stored = counter(
            &mut r,
            "ocd_records_stored",
            "Records accepted into this indexer's store (from owners or replicas).",
        );
        let records_rejected = counter(&mut r, "ocd_records_rejected", "Records refused by this indexer.");
        let [lookups_found, lookups_not_found, lookups_timed_out] = labelled(
            &mut r,
            "ocd_lookups",
            "Lookups asked over the control socket, by outcome.",
            "outcome",
            ["found", "not_found", "timed_out"],
        );
        let searches_started = counter(&mut r, "ocd_searches_started", "Searches started over the control socket.");
        let search_hits = counter(&mut r, "ocd_search_hits", "Verified search hits delivered.");
        let forged_hits_dropped =
            counter(&mut r, "ocd_search_forged_hits", "Forged, altered or unrelated search hits dropped.");
        let searches_emitted = counter(&mut r, "ocd_searches_emitted", "Nodes' searches this indexer emitted.");
        let searches_ended =
            labelled(&mut r, "ocd_searches_ended", "This node's searches that ended, by end.", "end", SEARCH_ENDS);
        let app = labelled(&mut r, "ocd_app_messages", "Application messages, by event.", "event", APP_EVENTS);
        let app_queue_depth = gauge(&mut r, "ocd_app_queue_depth", "Messages in the DNT queue.");
        let inbox_size = gauge(&mut r, "ocd_inbox_size", "Entries in the inbox.");
        let nats_connected =
            gauge(&mut r, "ocd_nats_connected", "Whether the NATS bridge's link is up (1) or not (0).");
        let nats_received = labelled(
            &mut r,
            "ocd_nats_received",
            "Messages from the local apps over NATS, by outcome.",
            "outcome",
            ["handled", "dropped"],
        );
        let nats_published =
            counter(&mut r, "ocd_nats_published", "Publications to the local apps the server confirmed.");
        let nats_pending = gauge(&mut r, "ocd_nats_pending", "Publications to the local apps waiting for the server.");
        let nats_reconnects = counter(&mut r, "ocd_nats_reconnects", "Times the NATS link came back after a loss.");
        let store_items =
            counter(&mut r, "ocd_store_items", "Persist and forget outputs committed to the durable store.");
        let sent_by_kind = KindCounters::register(&mut r, "ocd_messages_sent", "Wire messages sent, by kind.");
        let received_by_kind =
            KindCounters::register(&mut r, "ocd_messages_received", "Wire messages received, by kind.");
        let views = Views::default();
        r.register_collector(Box::new(views.clone()));
        Metrics {
            heartbeats_sent,
            heartbeats_received,
            heartbeats_refused,
            evictions,
            bans,
            frames_sent,
            frames_received,
            protocol_errors,
            slow_peers,
            handshake_failures,
            pool_live,
            sessions,
            connections,
            lookups_found,
            lookups_not_found,
            lookups_timed_out,
            records_stored,
            records_rejected,
            sent_by_kind,
            received_by_kind,
            searches_started,
            searches_ended,
            search_hits,
            forged_hits_dropped,
            searches_emitted,
            search: views.search,
            dht: views.dht,
            indexers: views.indexers,
            app,
            app_queue_depth,
            inbox_size,
            nats_connected,
            nats_received,
            nats_published,
            nats_pending,
            nats_reconnects,
            nats_seen: Arc::new(Mutex::new([0; 4])),
            store_commits: views.store_commits,
            store_items,
            store_commit_micros: views.store_commit_micros,
            did_refusals: views.did_refusals,
            registry: r,
        }
    }
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

/// One counter per wire message kind, indexed by [`Envelope::kind_index`]; registered as one
/// family labelled `kind`.
#[derive(Debug)]
pub struct KindCounters(Box<[Counter]>);

impl Default for KindCounters {
    /// Counters registered nowhere (for tests).
    fn default() -> Self {
        KindCounters(KINDS.iter().map(|_| Counter::default()).collect())
    }
}

impl KindCounters {
    /// A family `name{kind=…}` registered in `registry`, every kind present from the start.
    fn register(registry: &mut Registry, name: &str, help: &str) -> Self {
        let family = Family::<OneLabel, Counter>::default();
        let counters = KINDS.iter().map(|k| family.get_or_create_owned(&[("kind", *k)])).collect();
        register(registry, name, help, family);
        KindCounters(counters)
    }

    /// Counts one message.
    pub fn inc(&self, message: &Envelope) {
        if let Some(c) = self.0.get(message.kind_index()) {
            Metrics::inc(c);
        }
    }

    /// The count of the kind named `kind` (0 for an unknown name).
    pub fn get(&self, kind: &str) -> u64 {
        KINDS.iter().position(|k| *k == kind).and_then(|i| self.0.get(i)).map_or(0, Counter::get)
    }

    /// `(kind, count)` for every kind.
    pub fn all(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        KINDS.iter().copied().zip(self.0.iter().map(Counter::get))
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
    /// Indexers (peer ids) refusing our heartbeats because they hold another DID for our key;
    /// shown by `ocd status` at the top level of its report, not here.
    #[serde(skip)]
    pub did_refused_by: Vec<String>,
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

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &Counter) {
        counter.inc();
    }

    /// Sets a gauge.
    pub fn set(gauge: &CountGauge, v: u64) {
        gauge.set(v);
    }

    /// Copies the NATS bridge's link state into the metrics (counters move by what changed).
    pub fn observe_nats(&self, s: &super::nats::NatsStatus) {
        self.nats_connected.set(u64::from(s.connected));
        self.nats_pending.set(s.pending);
        let Ok(mut seen) = self.nats_seen.lock() else { return };
        let now = [s.received.saturating_sub(s.malformed), s.malformed, s.published, s.reconnects];
        let counters = [&self.nats_received[0], &self.nats_received[1], &self.nats_published, &self.nats_reconnects];
        for ((c, n), before) in counters.into_iter().zip(now).zip(seen.iter_mut()) {
            if n > *before {
                c.inc_by(n - *before);
                *before = n;
            }
        }
    }

    /// The counters, for the status report.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            heartbeats_sent: self.heartbeats_sent.get(),
            heartbeats_received: self.heartbeats_received.get(),
            heartbeats_refused: self.heartbeats_refused.get(),
            evictions: self.evictions.get(),
            bans: self.bans.get(),
            protocol_errors: self.protocol_errors.get(),
            slow_peers: self.slow_peers.get(),
            handshake_failures: self.handshake_failures.get(),
            lookups_found: self.lookups_found.get(),
            lookups_not_found: self.lookups_not_found.get(),
            lookups_timed_out: self.lookups_timed_out.get(),
            records_stored: self.records_stored.get(),
            records_rejected: self.records_rejected.get(),
            search: SearchCounters {
                started: self.searches_started.get(),
                ended: SEARCH_ENDS
                    .iter()
                    .zip(&self.searches_ended)
                    .map(|(k, v)| ((*k).to_string(), v.get()))
                    .filter(|(_, v)| *v > 0)
                    .collect(),
                hits: self.search_hits.get(),
                forged_hits_dropped: self.forged_hits_dropped.get(),
                emitted: self.searches_emitted.get(),
            },
            app: AppCounters {
                accepted: self.app[0].get(),
                delivered: self.app[1].get(),
                retried: self.app[2].get(),
                abandoned: self.app[3].get(),
                refused_outgoing: self.app[4].get(),
                refused_incoming: self.app[5].get(),
                received: self.app[6].get(),
                duplicate: self.app[7].get(),
                store_commits: get(&self.store_commits),
                store_items: self.store_items.get(),
                store_commit_micros: get(&self.store_commit_micros),
            },
            did_refused_by: self.did_refusals.lock().map(|d| d.indexers(Instant::now())).unwrap_or_default(),
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
                Event::RequestRefused { request: RequestKind::Heartbeat, .. } => inc(&self.heartbeats_refused),
                Event::HeartbeatRefused { reason, .. } => {
                    inc(&self.heartbeats_refused);
                    if *reason == RefuseReason::DidChanged
                        && let Ok(mut d) = self.did_refusals.lock()
                    {
                        d.observe(e, Instant::now());
                    }
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
                self.store_commits.fetch_add(1, Ordering::Relaxed);
                self.store_items.inc_by(items as u64);
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

    /// The Prometheus text exposition (format 0.0.4), encoded by `prometheus_client`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut s, &self.registry) {
            // Only a failing writer fails, and a String never does.
            tracing::warn!("metrics encoding failed: {e}");
        }
        s
    }
}

/// What the core keeps itself, copied after every driver step and encoded at scrape time.
#[derive(Clone, Debug, Default)]
struct Views {
    search: Arc<Mutex<SearchGauges>>,
    dht: Arc<Mutex<DhtGauges>>,
    indexers: Arc<Mutex<Vec<IndexerGauge>>>,
    store_commits: Arc<AtomicU64>,
    store_commit_micros: Arc<AtomicU64>,
    did_refusals: Arc<Mutex<super::status::DidRefusals>>,
}

/// Writes one metric without labels. `name` is the family name: the encoder adds `_total` to a
/// counter's.
fn one<M: EncodeMetric>(enc: &mut DescriptorEncoder, name: &str, help: &str, m: M) -> Result<(), std::fmt::Error> {
    let metric = enc.encode_descriptor(name, help, None, m.metric_type())?;
    m.encode(metric)
}

impl Collector for Views {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let dht = self.dht.lock().map(|g| *g).unwrap_or_default();
        let search = self.search.lock().map(|g| *g).unwrap_or_default();
        let indexers = self.indexers.lock().map(|g| g.clone()).unwrap_or_default();
        let did_refused = self.did_refusals.lock().map(|d| d.indexers(Instant::now()).len()).unwrap_or_default();
        let e = &mut enc;
        one(e, "ocd_dht_records", "Peer records held in this indexer's DHT store.", ConstGauge::new(dht.records))?;
        one(e, "ocd_dht_table_size", "Indexers in the Kademlia routing table.", ConstGauge::new(dht.table_size))?;
        one(e, "ocd_dht_providers", "Indexer provider announcements held.", ConstGauge::new(dht.providers))?;
        one(e, "ocd_dht_queries_running", "DHT queries in flight.", ConstGauge::new(dht.queries_running))?;
        one(e, "ocd_dht_queries", "DHT queries started.", ConstCounter::new(dht.queries))?;
        one(
            e,
            "ocd_dht_queries_refused",
            "DHT queries refused because kad_max_queries were running.",
            ConstCounter::new(dht.queries_refused),
        )?;
        one(e, "ocd_dht_rpcs", "DHT RPCs sent.", ConstCounter::new(dht.rpcs))?;
        one(e, "ocd_dht_rpc_failures", "DHT RPCs that failed or timed out.", ConstCounter::new(dht.rpc_failures))?;
        one(e, "ocd_dht_stores_accepted", "Records accepted from DHT STOREs.", ConstCounter::new(dht.stores_accepted))?;
        one(e, "ocd_dht_stores_refused", "DHT STOREs refused.", ConstCounter::new(dht.stores_refused))?;
        one(e, "ocd_record_verifications", "Record signatures verified.", ConstCounter::new(dht.verifications))?;
        one(e, "ocd_searches_active", "This node's searches in flight.", ConstGauge::new(search.active))?;
        one(
            e,
            "ocd_search_referenced",
            "Records this indexer answers searches from.",
            ConstGauge::new(search.referenced),
        )?;
        one(e, "ocd_searches_emitting", "Nodes' searches this indexer is emitting.", ConstGauge::new(search.emitting))?;
        one(e, "ocd_search_mesh_neighbours", "Search-mesh neighbours.", ConstGauge::new(search.mesh_neighbours))?;
        {
            let mut m = e.encode_descriptor(
                "ocd_search_mesh_messages",
                "Search-mesh gossip messages, by event.",
                None,
                MetricType::Counter,
            )?;
            for (event, v) in [
                ("sent", search.mesh_sent),
                ("received", search.mesh_received),
                ("dropped", search.mesh_dropped),
                ("delivered", search.mesh_delivered),
            ] {
                ConstCounter::new(v).encode(m.encode_family(&[("event", event)])?)?;
            }
        }
        one(
            e,
            "ocd_store_commits",
            "Write transactions committed to the durable store.",
            ConstCounter::new(get(&self.store_commits)),
        )?;
        one(
            e,
            "ocd_store_commit_seconds",
            "Time spent committing to the durable store.",
            ConstCounter::new(get(&self.store_commit_micros) as f64 / 1e6),
        )?;
        one(
            e,
            "ocd_did_refused_indexers",
            "Indexers refusing this node's heartbeats because they hold another DID for its key.",
            ConstGauge::new(did_refused as u64),
        )?;
        if !indexers.is_empty() {
            let mut m = e.encode_descriptor(
                "ocd_pool_indexer_score",
                "Score (0-100) of each pool entry.",
                None,
                MetricType::Gauge,
            )?;
            for (peer, score, _) in &indexers {
                ConstGauge::new(*score).encode(m.encode_family(&[("indexer", peer.as_str())])?)?;
            }
            let mut m = e.encode_descriptor(
                "ocd_pool_indexer_rtt_seconds",
                "Last heartbeat round trip of each pool entry.",
                None,
                MetricType::Gauge,
            )?;
            for (peer, _, rtt) in &indexers {
                if let Some(rtt) = rtt {
                    ConstGauge::new(*rtt).encode(m.encode_family(&[("indexer", peer.as_str())])?)?;
                }
            }
        }
        Ok(())
    }
}

/// How long a client may take to send a request's head; a keep-alive connection idle that long
/// between requests is closed too.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest any connection lives, whatever it does (a client that never reads its answer).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Connections served at once; further ones are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 1024;

/// Serves `metrics` at `addr` (`GET`, any path) from a background thread (see the module doc).
/// Returns the bound address; binding errors (a port in use) are returned here.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    std::thread::Builder::new().name("ocd-metrics".into()).spawn(move || {
        rt.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(listener, metrics).await,
                Err(e) => tracing::warn!("metrics endpoint disabled: {e}"),
            }
        })
    })?;
    Ok(local)
}

async fn accept_loop(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: wait a
                // little rather than spin.
                tracing::debug!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("metrics: {MAX_CONNECTIONS} connections open, closing a new one");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics connection: {e}"),
                Err(_) => tracing::debug!("metrics connection closed after {CONNECTION_LIFETIME:?}"),
            }
            drop(slot);
        });
    }
}

type Body = http_body_util::Full<bytes::Bytes>;

/// The answer to one request: the exposition for `GET` and `HEAD`, whatever the path.
fn respond<B>(req: &hyper::Request<B>, metrics: &Metrics) -> hyper::Response<Body> {
    use hyper::{Method, StatusCode, header};
    let mut res = hyper::Response::new(Body::default());
    if req.method() != Method::GET && req.method() != Method::HEAD {
        *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        res.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
    );
    *res.body_mut() = Body::new(metrics.render().into());
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PeerId;
    use std::io::{Read, Write};
    use std::net::TcpStream;

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
        let body = get(addr, "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        assert!(body.starts_with("HTTP/1.1 200 OK"));
        assert!(body.contains("content-type: text/plain; version=0.0.4"), "{body}");
        assert!(body.contains("\nocd_heartbeats_sent_total 1\n"), "{body}");
        assert!(body.contains("\nocd_pool_size 3\n"));
        assert!(body.contains("\nocd_dht_rpcs_total 42\n"), "{body}");
        assert!(body.contains("\nocd_dht_records 0\n"), "{body}");
        assert!(body.contains("ocd_lookups_total{outcome=\"found\"} 1\n"), "{body}");
        assert!(body.contains("ocd_lookups_total{outcome=\"not_found\"} 2\n"), "{body}");
        assert!(body.contains("ocd_pool_indexer_score{indexer=\"ab\"} 87.5"));
        assert!(body.contains("ocd_pool_indexer_rtt_seconds{indexer=\"ab\"} 0.012"));
    }

    /// Sends `request` on a fresh connection and reads until the server closes it (at most 5 s).
    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    #[test]
    fn idle_connections_do_not_delay_scrapes() {
        let m = Arc::new(Metrics::default());
        let addr = serve("127.0.0.1:0".parse().unwrap(), m).unwrap();
        // Idle clients: connected, silent; one has sent half a request head.
        let mut idle: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(addr).unwrap()).collect();
        idle[0].write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
        let scrapes: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || get(addr, "GET / HTTP/1.1\r\nconnection: close\r\n\r\n")))
            .collect();
        for s in scrapes {
            let body = s.join().unwrap();
            assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
            assert!(body.contains("\nocd_pool_size 0\n"), "{body}");
        }
        // Keep-alive: two requests on one connection.
        let two = "GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nconnection: close\r\n\r\n";
        assert_eq!(get(addr, two).matches("HTTP/1.1 200 OK").count(), 2);
        let refused = get(addr, "POST / HTTP/1.1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        assert!(refused.starts_with("HTTP/1.1 405"), "{refused}");
        drop(idle);
    }

    #[test]
    fn did_refusals_reach_the_snapshot_and_the_gauge() {
        let m = Metrics::default();
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        let refused = |indexer| Event::HeartbeatRefused { indexer, reason: RefuseReason::DidChanged };
        for _ in 0..3 {
            m.count(Counted::Event(&refused(a)));
        }
        m.count(Counted::Event(&refused(b)));
        m.count(Counted::Event(&Event::HeartbeatRefused { indexer: b, reason: RefuseReason::Busy }));
        assert_eq!(m.snapshot().did_refused_by, vec![a.to_string(), b.to_string()]);
        assert_eq!(m.heartbeats_refused.get(), 5);
        assert!(m.render().contains("\nocd_did_refused_indexers 2\n"));
        assert!(Metrics::default().render().contains("\nocd_did_refused_indexers 0\n"));
    }

    #[test]
    fn count_moves_the_counters() {
        use crate::proto::Timestamp;
        use crate::proto::wire::{IndexerMessage, RefuseReason, Refused, RequestId};
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
        assert_eq!((m.frames_received.get(), m.frames_sent.get()), (2, 1));
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
