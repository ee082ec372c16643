//! The indexers' Kademlia DHT: signed peer records, provider records, iterative lookups.
//!
//! Every indexer runs a [`Dht`] in **server** mode: it keeps a [`RoutingTable`] of other indexers,
//! stores records ([`RecordStore`]) and provider announcements, and answers `FIND_NODE`,
//! `FIND_VALUE`, `STORE`, `ADD_PROVIDER` and `GET_PROVIDERS`. A node runs one in **client** mode
//! (libp2p's client mode, B §4.3): it queries indexers but serves nothing and is never added to
//! a routing table.
//!
//! Queries are composable state machines: each wraps an iterative [`Lookup`] (α in flight, each
//! RPC bounded by `kad_rpc_timeout`, the whole query by `lookup_timeout`; reads are *hedged*: one
//! `FIND_VALUE` first, another only when it is late, failed or came back empty, see `hedge.rs`)
//! and, for writes, ends by sending `STORE`/`ADD_PROVIDER` to the k closest peers found. Writes are one-way: a replica
//! answers only a refusal, and a replica found unreachable right after a write counts as a failed
//! RPC. At most `kad_max_queries` lookups run at once; more are refused at start.
//!
//! Records (keys `/pid/<PeerId>` and `/node/<DID>`, see [`RecordKey`]) are self-certifying:
//! validated when stored and when read, expired records refused, the later expiry of one owner
//! winning, and a DID bound to the first key that claimed it. A record offered by its owner
//! ([`Dht::offer_record`]) that claims a DID this indexer has never seen bound is first checked
//! against the DHT (a `FIND_VALUE` on `/node/<DID>`) by the indexer that replicates it; it is
//! committed and replicated only if no other key holds that DID. The owner's other indexers hold
//! it unchecked and unserved until one of them becomes the replicator. Receivers skip verification of a record identical to the one they
//! hold, so a record is verified once per replica, not once per copy.
//!
//! DID bindings are durable: every new binding, change of owner, release, and extension of more
//! than a quarter of `BINDING_TTL` (1 h) past the stored one is emitted as a
//! [`Persist::DidBinding`], and [`Dht::restore`] takes them back after a restart, so a restarted
//! indexer still refuses a DID thief (the rule and why it is safe: [`RecordStore`],
//! "Persistence").
//!
//! Provider records carry the indexer's signed fill rate and capacity and expire `provider_ttl`
//! (3 min) after signing — an indexer that stops re-announcing disappears within minutes (the
//! seed's 48 h default kept dead indexers discoverable for two days). The seed re-announced every
//! `provide_interval` (60 s); an announcement that would tell the replicas nothing new (the fill
//! moved less than [`PROVIDER_FILL_STEP`], the capacity is the same, and the one they hold has
//! more than half its life left) is skipped, and a replica new to the rendezvous key's closest set
//! gets it at once.
//!
//! The machine never blocks: it emits its [`DhtOut`]s — sends, learned addresses, events and
//! finished queries ([`DhtDone`], which the router hands to whoever started them) — into the sink
//! it is given.
//!
//! ## Files
//!
//! `mod.rs` the machine, timers and views · `kad.rs` the routing table and the iterative lookup ·
//! `queries.rs` queries and their RPCs · `hedge.rs` when a read asks one more peer · `serve.rs`
//! answering requests · `replication.rs` records offered by their owners, replication and
//! provider announcements · `select.rs` choosing indexers among providers · `messages.rs` the
//! RPCs.

use crate::proto::action::Sink;
use crate::proto::config::Config;
use crate::proto::durable::{DidBinding, Persist};
use crate::proto::identity::{Addr, Keypair, PeerAddr, PeerId, SigCheck};
use crate::proto::record::{PeerRecord, ProviderBody, ProviderRecord, RecordError, RecordStore, StoreError, Stored};
use crate::proto::rng::DetRng;
use crate::proto::time::Timestamp;
use crate::proto::wire::{
    AddProvider, DhtMessage, Envelope, FindNode, FindValue, GetProviders, MAX_FRAME_LEN, MAX_STORE_BATCH, Nodes,
    Providers, RecordKey, RequestId, Store, StoreAck, StoreBatch, StoreRefusal, Value,
};
use crate::proto::{Action, Event};
use hedge::RttEstimator;
use kad::{Key, Lookup, LookupConfig, RoutingTable, indexer_rendezvous};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

mod hedge;
pub(crate) mod kad;
pub(crate) mod messages;
mod queries;
mod replication;
mod select;
mod serve;

pub use select::select_by_fill;
/// Most provider announcements held.
const MAX_PROVIDERS: usize = 4096;
/// Provider records returned per `GET_PROVIDERS` answer.
const PROVIDERS_PER_ANSWER: usize = 20;
/// How long DID bindings outlive the record that made them (a thief cannot wait for an expiry).
const BINDING_TTL: Duration = Duration::from_secs(3600);
/// Routing-table refresh (a `FIND_NODE` of our own id) period.
const TABLE_REFRESH: Duration = Duration::from_secs(600);
/// While the table is empty, or holds fewer than `kad_k` peers and misses a bootstrap peer, the
/// missing bootstrap peers are tried again after this long (they may start later, or come back
/// from a partition), doubling up to [`TABLE_REFRESH`] while they stay away.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(30);
/// Consecutive failed RPCs after which a peer leaves the routing table.
const MAX_FAILURES: u32 = 2;
/// How long the closest set a replication lookup found for a key is reused for the next versions
/// of the same record: as long as the routing table goes without a refresh. Meanwhile it is kept
/// up to date from what we learn (a failing peer leaves it, a closer peer the table learns joins
/// it), and looked up again only if it lost half its peers.
const CLOSEST_TTL: Duration = TABLE_REFRESH;
/// A cached closest set that lost more than this share of its peers to failures is looked up
/// again rather than patched from the routing table.
const CLOSEST_MIN_DIVISOR: usize = 2;
/// Peers of a key's closest set that must hold a version for a new replicator to take it as
/// replicated. One is not enough: the node's other indexers hold its record too, and one of them
/// may be among the closest.
const TAKEOVER_HOLDERS: usize = 2;
/// Most closest sets cached (each is k peer addresses); none is added past it until GC.
const MAX_CLOSEST_CACHED: usize = 8192;
/// A refreshed version (same content, later expiry) waits at most this share of its lifetime
/// before its batch goes to the replicas: they still hold the previous version, valid for half a
/// lifetime more, so nothing lapses, and a replicator sends one `STORE_BATCH` per replica per
/// window instead of one `STORE` per record.
const REFRESH_DELAY_DIVISOR: u32 = 4;
/// A change of the fill rate that is news to nodes choosing an indexer: a twentieth of the
/// capacity. Smaller changes wait for the next announcement the record's lifetime requires.
pub const PROVIDER_FILL_STEP: f32 = 0.05;
/// A batch is sent early once its records are about this large when encoded.
const STORE_BATCH_BYTES: usize = MAX_FRAME_LEN / 4;

/// The refreshed records waiting for one replica, by owner, and their approximate encoded size.
#[derive(Debug, Default)]
struct RefreshBatch {
    records: BTreeMap<PeerId, PeerRecord>,
    /// The sum of `approx_len` over `records`, kept as they come and go.
    bytes: usize,
}

/// Identifies a running query.
pub type QueryId = u64;

/// Why a query was started; handed back with its result so the router knows whom to tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A node asked us with `GetRecord`: reply to it.
    NodeGet {
        /// The node.
        to: PeerId,
        /// Its request id.
        req: RequestId,
    },
    /// The local application's [`Command::Lookup`](crate::proto::Command::Lookup).
    Command {
        /// The command's id.
        id: u64,
    },
    /// A destination of an application message (the record's verification is the query's).
    Resolve {
        /// The application-message machine's token.
        token: u64,
    },
    /// The DHT spot check of a heartbeat's DID challenge.
    DidCheck,
    /// Provider discovery for the node's pool.
    Discovery,
    /// Refresh of the indexer's cache of other indexers.
    IndexerCache,
    /// Internal maintenance (replication, provide, table refresh, claim checks).
    Internal,
}

/// A finished query, for the router.
#[derive(Clone, Debug, PartialEq)]
pub enum DhtDone {
    /// A `FIND_VALUE` ended; `record` is verified and matches `key`.
    Value {
        /// The query.
        query: QueryId,
        /// Why it ran.
        purpose: Purpose,
        /// The key.
        key: RecordKey,
        /// The record found.
        record: Option<PeerRecord>,
        /// Hops to the peer that returned it (0: held locally).
        hops: u32,
    },
    /// A `GET_PROVIDERS` ended; every provider record is verified, one per provider, freshest.
    Providers {
        /// Why it ran.
        purpose: Purpose,
        /// The providers found (never ourselves).
        providers: Vec<ProviderRecord>,
    },
    /// A record claiming a DID new to us was checked against the DHT.
    Claim {
        /// Who offered it (its owner).
        publisher: PeerId,
        /// `false`: refused because another key holds the DID (a theft, to be punished);
        /// `true` otherwise (committed, or not stored for a reason of ours).
        accepted: bool,
    },
}

/// What the DHT does: its outputs, lifted into the router's [`Action`].
#[derive(Clone, Debug, PartialEq)]
pub enum DhtOut {
    /// Send to a peer (dialled from the address book when there is no connection).
    Send {
        /// The recipient.
        to: PeerId,
        /// The message.
        message: Envelope,
    },
    /// Remember how to reach a peer.
    Learn(PeerAddr),
    /// Report an event.
    Event(Event),
    /// A query finished: the router hands the result to whoever started it.
    QueryDone(DhtDone),
    /// Store durably before what follows: a DID binding of this indexer (see [`RecordStore`],
    /// "Persistence").
    Persist(Persist),
}

/// What happened to a record offered by its owner ([`Dht::offer_record`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Stored (or already held): this is its expiry.
    Held(Timestamp),
    /// Its DID is new to us and is being checked in the DHT; it is not served yet.
    Checking,
    /// Refused.
    Refused(StoreError),
}

enum Goal {
    Value {
        key: RecordKey,
    },
    Providers {
        want: usize,
    },
    /// Store a record on its key's k closest; a `refresh` joins the replicas' next batch.
    Replicate {
        record: PeerRecord,
        refresh: bool,
        /// Replicas of the record's other key, written with these (one `STORE` to a peer in
        /// both sets) once this key's lookup ends.
        with: Vec<PeerAddr>,
        /// The record's other key, when it has no closest set cached either: looked up next,
        /// carrying this key's replicas in `with`.
        then: Option<Key>,
    },
    /// We became the replicator of a version we hold: is it in the DHT already (another
    /// indexer replicated it)? Only if not is it replicated. `holders`: the peers asked that
    /// hold this very version.
    Takeover {
        record: PeerRecord,
        holders: usize,
    },
    Claim {
        record: PeerRecord,
        publisher: PeerId,
        replicate: bool,
    },
    Provide {
        record: ProviderRecord,
    },
    Refresh,
}

impl Goal {
    /// Store the first (or a changed) version of `record` on the closest set it is sent to.
    pub(super) fn first_version(record: PeerRecord) -> Goal {
        Goal::Replicate { record, refresh: false, with: Vec::new(), then: None }
    }
}

struct Query {
    goal: Goal,
    purpose: Purpose,
    lookup: Lookup,
    deadline: Timestamp,
    /// Best value so far and the hop it came from.
    found: Option<(PeerRecord, u32)>,
    providers: BTreeMap<PeerId, ProviderRecord>,
    /// A hedged read's next hedge: when its queries in flight will all have been outstanding for
    /// the hedge delay (see `hedge.rs`). `None` for other queries, and once the read is
    /// Kademlia's (α in flight).
    hedge_at: Option<Timestamp>,
}

/// A key's k closest peers, as a replication lookup found them.
struct Closest {
    peers: Vec<PeerAddr>,
    until: Timestamp,
}

/// Counters for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DhtStats {
    /// Queries started.
    pub queries: u64,
    /// Queries refused because `kad_max_queries` were running.
    pub queries_refused: u64,
    /// RPCs sent.
    pub rpcs: u64,
    /// RPCs that failed or timed out.
    pub rpc_failures: u64,
    /// Records accepted from `STORE`s.
    pub stores_accepted: u64,
    /// `STORE`s refused.
    pub stores_refused: u64,
    /// Record signatures verified.
    pub verifications: u64,
    /// Reads: [`Dht::find_value`]s of a record not held locally (asked of the DHT).
    pub reads: u64,
    /// `FIND_VALUE`s sent by reads (part of `rpcs`).
    pub read_rpcs: u64,
    /// Hedges: a read allowed one more `FIND_VALUE` in flight because those in flight were late.
    pub hedges: u64,
}

/// One peer's part of the DHT (server for indexers, client for nodes).
pub struct Dht {
    /// Seed indexers, tried again while they are missing from a small routing table.
    bootstrap: Vec<PeerAddr>,
    me: PeerId,
    keypair: Keypair,
    addrs: Vec<Addr>,
    server: bool,
    config: Arc<Config>,
    lookup_config: LookupConfig,
    table: RoutingTable,
    failures: BTreeMap<PeerId, u32>,
    store: RecordStore,
    /// Records whose DID claim is being checked, by owner.
    claims: BTreeMap<PeerId, PeerRecord>,
    /// Owners whose record we replicated while our routing table held fewer than k peers (we had
    /// just started): its replicas were the closest of a partial view. Once the table holds k, the
    /// owner's next heartbeat sends it to the peers its keys' sets gained since.
    young_writes: BTreeSet<PeerId>,
    /// Records held for owners that did not name us their referent, their DID not checked in the
    /// DHT yet, by owner: neither served nor stored until we become the referent (see
    /// [`Dht::offer_record`]). At most `record_store_max`. A hash table (every heartbeat of such
    /// an owner looks it up; its order is never an output).
    unchecked: crate::proto::seeded::SeededMap<PeerId, PeerRecord>,
    providers: BTreeMap<PeerId, ProviderRecord>,
    /// Closest sets found by replication lookups, by key, reused by the next replications.
    closest: BTreeMap<Key, Closest>,
    /// The expiry of the version of each owner's record we last replicated. A hash table, keyed
    /// like the store's (a referent's heartbeats look it up; its order is never an output).
    replicated: crate::proto::seeded::SeededMap<PeerId, Timestamp>,
    /// Refreshed records waiting for their batch, by replica, then owner.
    refreshes: BTreeMap<PeerId, RefreshBatch>,
    /// When the waiting refreshes are sent.
    next_refresh: Option<Timestamp>,
    queries: BTreeMap<QueryId, Query>,
    /// DHT RPC in flight → (query, peer asked, when).
    rpcs: BTreeMap<RequestId, (QueryId, PeerId, Timestamp)>,
    /// Round trips of answered RPCs, for the hedge delay of reads.
    rtt: RttEstimator,
    /// When each peer was last sent a write (`STORE`, `STORE_BATCH`, `ADD_PROVIDER`): one found
    /// unreachable soon after counts as a failed RPC.
    written: BTreeMap<PeerId, Timestamp>,
    next_query: QueryId,
    next_req: u64,
    rng: DetRng,
    fill: (f32, u32),
    /// When our last provider record was sent, and the fill and capacity it carried.
    provided: Option<(Timestamp, (f32, u32))>,
    next_provide: Option<Timestamp>,
    next_cache_refresh: Option<Timestamp>,
    next_table_refresh: Option<Timestamp>,
    /// The current wait before trying missing bootstrap peers again.
    bootstrap_retry: Duration,
    /// When the garbage collection is next due: at the first timeout from then on, at the latest
    /// one `gc_interval` later.
    next_gc: Timestamp,
    stats: DhtStats,
    /// How records and provider records are checked.
    sigs: SigCheck,
}

impl std::fmt::Debug for Dht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dht")
            .field("me", &self.me.short().to_string())
            .field("server", &self.server)
            .field("table", &self.table.len())
            .field("records", &self.store.len())
            .field("providers", &self.providers.len())
            .field("queries", &self.queries.len())
            .finish()
    }
}

impl Dht {
    /// A DHT member: `server` for an indexer, client for a node. `bootstrap` peers (seed indexers)
    /// enter the routing table; a server refreshes its table, announces itself under the
    /// rendezvous key and refreshes its indexer cache from its first timeout on.
    pub fn new(
        config: impl Into<Arc<Config>>,
        keypair: Keypair,
        addrs: Vec<Addr>,
        server: bool,
        bootstrap: &[PeerAddr],
        mut rng: DetRng,
        now: Timestamp,
    ) -> Self {
        let config = config.into();
        let me = keypair.peer_id();
        // Keys the record store's hash table (secret, so that peers cannot grind ids sharing
        // buckets; seeded, so that the same seed gives the same store).
        let store_key = rng.fork("record store").next_u64();
        let lookup_config = LookupConfig {
            k: config.kad_k,
            alpha: config.kad_alpha,
            timeout: config.kad_rpc_timeout,
            max_candidates: config.kad_k.saturating_mul(4),
            converge: config.kad_k,
        };
        let mut table = RoutingTable::new(me, config.kad_k);
        for b in bootstrap {
            table.insert(b.clone(), now);
        }
        Dht {
            me,
            bootstrap: bootstrap.iter().filter(|b| b.id != me).cloned().collect(),
            keypair,
            addrs,
            server,
            lookup_config,
            table,
            failures: BTreeMap::new(),
            store: RecordStore::keyed(config.record_store_max, BINDING_TTL, store_key),
            claims: BTreeMap::new(),
            unchecked: crate::proto::seeded::seeded_map(store_key.rotate_left(29) ^ 0x6a09_e667_f3bc_c908),
            young_writes: BTreeSet::new(),
            providers: BTreeMap::new(),
            closest: BTreeMap::new(),
            replicated: crate::proto::seeded::seeded_map(store_key),
            refreshes: BTreeMap::new(),
            next_refresh: None,
            queries: BTreeMap::new(),
            rpcs: BTreeMap::new(),
            rtt: RttEstimator::default(),
            written: BTreeMap::new(),
            next_query: 1,
            next_req: 1,
            rng,
            fill: (0.0, u32::try_from(config.max_nodes).unwrap_or(u32::MAX)),
            provided: None,
            next_provide: server.then_some(now),
            next_cache_refresh: server.then_some(now + Duration::from_secs(5)),
            next_table_refresh: server.then_some(now),
            bootstrap_retry: BOOTSTRAP_RETRY,
            next_gc: now + config.gc_interval,
            config,
            stats: DhtStats::default(),
            sigs: SigCheck::direct(),
        }
    }

    /// Checks the signatures of records and provider records through `sigs` (the same results:
    /// see [`SigCheck`]).
    pub fn set_sig_check(&mut self, sigs: SigCheck) {
        self.store.set_sig_check(sigs.clone());
        self.sigs = sigs;
    }

    /// Whether this peer serves the DHT.
    pub fn is_server(&self) -> bool {
        self.server
    }

    /// The routing table.
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// Records held.
    pub fn records(&self) -> &RecordStore {
        &self.store
    }

    /// Provider announcements held.
    pub fn provider_count(&self) -> usize {
        self.providers.len()
    }

    /// Queries running.
    pub fn query_count(&self) -> usize {
        self.queries.len()
    }

    /// Counters.
    pub fn stats(&self) -> DhtStats {
        self.stats
    }

    /// Takes back the DID bindings persisted before a restart ([`Input::Restored`](crate::proto::Input::Restored));
    /// lapsed ones are ignored (see [`RecordStore::restore`]). A client holds no records: it
    /// ignores them.
    pub fn restore(&mut self, bindings: &[DidBinding], now: Timestamp) {
        if self.server {
            self.store.restore(bindings, now);
        }
    }

    /// The valid record under `key` held locally.
    pub fn local(&self, key: &RecordKey, now: Timestamp) -> Option<&PeerRecord> {
        match key {
            RecordKey::Peer(p) => self.store.by_peer(p, now),
            RecordKey::Did(d) => self.store.by_did(d, now),
        }
    }

    /// The expiry of `peer`'s record held: stored and served, or held unchecked for it (see
    /// [`Dht::offer_record`]); not one whose DID is being checked.
    pub fn held_expiry(&self, peer: &PeerId, now: Timestamp) -> Option<Timestamp> {
        self.store.held_expiry(peer, now).or_else(|| self.unchecked_expiry(peer, now))
    }

    /// The expiry of `peer`'s record held unchecked, if still valid.
    fn unchecked_expiry(&self, peer: &PeerId, now: Timestamp) -> Option<Timestamp> {
        self.unchecked.get(peer).map(|r| r.body.expires_at).filter(|e| *e > now)
    }

    /// Whether a valid record of `peer` is held (the "is this peer known" gate).
    pub fn knows(&self, peer: &PeerId, now: Timestamp) -> bool {
        self.store.by_peer(peer, now).is_some()
    }

    /// Sets the fill rate and capacity announced in the next provider record.
    pub fn set_fill(&mut self, fill_rate: f64, capacity: usize) {
        let f = if fill_rate.is_finite() { fill_rate.clamp(0.0, 1.0) } else { 0.0 };
        self.fill = (f as f32, u32::try_from(capacity).unwrap_or(u32::MAX));
    }

    /// The hedge delay of reads now (see `hedge.rs`).
    pub fn hedge_delay(&self) -> Duration {
        self.rtt.hedge_delay(self.config.kad_rpc_timeout)
    }

    /// Runs due timers: RPC and query deadlines, hedges, provide, cache and table refresh, GC.
    pub fn handle_timeout(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let qids: Vec<QueryId> = self
            .queries
            .iter()
            .filter(|(_, q)| {
                q.deadline <= now
                    || q.lookup.poll_timeout().is_some_and(|t| t <= now)
                    || q.hedge_at.is_some_and(|t| t <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for qid in qids {
            if let Some(q) = self.queries.get_mut(&qid) {
                q.lookup.handle_timeout(now);
                // Late: one more peer may be asked (`advance` sends it and sets the next hedge).
                if q.hedge_at.is_some_and(|t| t <= now) {
                    q.hedge_at = None;
                    if q.lookup.hedge() {
                        self.stats.hedges += 1;
                    }
                }
            }
            // RPCs the lookup gave up on are dropped from the in-flight map.
            self.rpcs_gc(qid, now);
            self.advance(qid, now, out);
        }
        if self.next_refresh.is_some_and(|t| t <= now) {
            self.flush_refreshes(now, out);
        }
        if self.next_provide.is_some_and(|t| t <= now) {
            self.next_provide = Some(now + self.config.provide_interval);
            self.provide(now, out);
        }
        if self.next_cache_refresh.is_some_and(|t| t <= now) {
            self.next_cache_refresh = Some(now + self.config.indexer_cache_refresh);
            self.find_providers(self.config.indexer_cache_max * 3, Purpose::IndexerCache, &[], now, out);
        }
        if self.next_table_refresh.is_some_and(|t| t <= now) {
            self.next_table_refresh = Some(now + TABLE_REFRESH);
            // A small table that lost a seed (every contact failed: it had not started yet, it
            // restarted, or a partition cut it off) may have lost its way to a whole part of the
            // federation, which nothing else would show it again: put the missing seeds back and
            // refresh through them, soon, then less and less often while they stay away. A full
            // table (a large federation) has other ways round.
            let missing: Vec<PeerAddr> =
                self.bootstrap.iter().filter(|b| !self.table.contains(&b.id)).cloned().collect();
            if missing.is_empty() || self.table.len() >= self.config.kad_k {
                self.bootstrap_retry = BOOTSTRAP_RETRY;
            } else {
                // An empty table (the seeds may just not have started) keeps trying every 30 s.
                let wait = if self.table.is_empty() { BOOTSTRAP_RETRY } else { self.bootstrap_retry };
                if !self.table.is_empty() {
                    self.bootstrap_retry = (self.bootstrap_retry * 2).min(TABLE_REFRESH);
                }
                for b in missing {
                    self.table.insert(b, now);
                }
                self.next_table_refresh = Some(now + wait);
            }
            if !self.table.is_empty() {
                self.maintain(Goal::Refresh, Key::from(self.me), now, out);
            }
        }
        if now >= self.next_gc {
            self.next_gc = now + self.config.gc_interval;
            self.store.prune(now);
            self.unchecked.retain(|_, r| r.body.expires_at > now);
            let store = &self.store;
            self.young_writes.retain(|p| store.by_peer(p, now).is_some());
            self.providers.retain(|_, r| r.body.expires_at > now);
            self.closest.retain(|_, c| c.until > now);
            self.replicated.retain(|_, expires| *expires > now);
            let window = self.config.kad_rpc_timeout;
            self.written.retain(|_, at| *at + window >= now);
        }
    }

    /// The next deadline (for the garbage collection, its latest time: see [`Dht::gc_due`]).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let queries = self.queries.values().map(|q| {
            let t = match q.lookup.poll_timeout() {
                Some(t) => t.min(q.deadline),
                None => q.deadline,
            };
            q.hedge_at.map_or(t, |h| h.min(t))
        });
        queries
            .chain(self.next_refresh)
            .chain(self.next_provide)
            .chain(self.next_cache_refresh)
            .chain(self.next_table_refresh)
            .chain(std::iter::once(self.next_gc + self.config.gc_interval))
            .min()
    }

    /// Whether the garbage collection's time has come (see [`Dht::poll_timeout`]: it runs at the
    /// first timeout from then on, and asks for one of its own only a whole `gc_interval` later,
    /// so on a node it rides on the heartbeat tick instead of waking the node twice a minute).
    pub fn gc_due(&self, now: Timestamp) -> bool {
        now >= self.next_gc
    }
}

/// Emits the DID bindings a record store write asks to persist, before anything that follows it.
pub(super) fn persist_bindings(stored: Stored, out: &mut Vec<Action>) {
    for b in stored.persist {
        out.emit(DhtOut::Persist(Persist::DidBinding(b)));
    }
}

impl crate::proto::indexer::RecordDesk for Dht {
    fn offer(
        &mut self,
        from: PeerId,
        record: PeerRecord,
        replicate: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> Offer {
        self.offer_record(from, record, replicate, now, out)
    }

    fn replicate_held(&mut self, peer: &PeerId, now: Timestamp, out: &mut Vec<Action>) {
        // A client replicates nothing, nor does a server that knows no other indexer unless it
        // holds records unchecked (committed when it is named their referent while alone): what
        // `Dht::replicate_held` concludes too, after reaching the record (a cache miss per
        // heartbeat of a referent's node at scale, issue 13).
        if !self.server || (self.table.is_empty() && self.unchecked.is_empty()) {
            return;
        }
        // The steady state (nothing held, or this version replicated already), decided from the
        // store's bucket without reaching the record: what `Dht::replicate_held` would conclude.
        match self.store.held_expiry(peer, now) {
            None if self.unchecked.is_empty() => return,
            None => {}
            Some(e)
                if self.replicated.get(peer) == Some(&e)
                    && (self.young_writes.is_empty() || self.table.len() < self.lookup_config.k) =>
            {
                return;
            }
            Some(_) => {}
        }
        Dht::replicate_held(self, peer, now, out);
    }

    fn held_expiry(&self, peer: &PeerId, now: Timestamp) -> Option<Timestamp> {
        Dht::held_expiry(self, peer, now)
    }

    fn check_did(
        &mut self,
        did: &crate::proto::identity::Did,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> crate::proto::indexer::DidCheck {
        use crate::proto::indexer::DidCheck;
        let key = RecordKey::Did(did.clone());
        if !self.server || self.table.is_empty() {
            return DidCheck::Answered(self.local(&key, now).cloned());
        }
        let deadline = self.config.dht_check_timeout;
        DidCheck::Pending(self.find_value(key, Purpose::DidCheck, true, deadline, now, out))
    }

    fn did_owner(&self, did: &crate::proto::identity::Did, now: Timestamp) -> Option<PeerId> {
        self.store.did_owner(did, now)
    }
}

#[cfg(test)]
mod tests;
