//! The indexers' Kademlia DHT: signed peer records, provider records, iterative lookups.
//!
//! Every indexer runs a [`Dht`] in **server** mode: it keeps a [`RoutingTable`] of other indexers,
//! stores records ([`RecordStore`]) and provider announcements, and answers `FIND_NODE`,
//! `FIND_VALUE`, `STORE`, `ADD_PROVIDER` and `GET_PROVIDERS`. A node runs one in **client** mode
//! (libp2p's client mode, B §4.3): it queries indexers but serves nothing and is never added to
//! a routing table.
//!
//! Queries are composable state machines: each wraps an iterative [`Lookup`] (α in flight, each
//! RPC bounded by `kad_rpc_timeout`, the whole query by `lookup_timeout`) and, for writes, a store
//! phase sending `STORE`/`ADD_PROVIDER` to the k closest peers found. At most `kad_max_queries`
//! run at once; more are refused at start.
//!
//! Records (keys `/pid/<PeerId>` and `/node/<DID>`, see [`RecordKey`]) are self-certifying:
//! validated when stored and when read, expired records refused, the later expiry of one owner
//! winning, and a DID bound to the first key that claimed it. A record offered by its owner
//! ([`Dht::offer_record`]) that claims a DID this indexer has never seen bound is first checked
//! against the DHT (a `FIND_VALUE` on `/node/<DID>`); it is committed and replicated only if no
//! other key holds that DID. Receivers skip verification of a record identical to the one they
//! hold, so a record is verified once per replica, not once per copy.
//!
//! Provider records carry the indexer's signed fill rate and capacity and expire `provider_ttl`
//! (3 min) after signing — an indexer that stops re-announcing disappears within minutes (the
//! seed's 48 h default kept dead indexers discoverable for two days).
//!
//! The machine never blocks: it queues [`Action`]s ([`Dht::drain_actions`]) and finished queries
//! ([`Dht::poll_done`]) for the [`Peer`](crate::proto::Peer) that routes them.

use crate::proto::config::Config;
use crate::proto::identity::{Addr, Keypair, PeerAddr, PeerId};
use crate::proto::record::{PeerRecord, ProviderBody, ProviderRecord, RecordError, RecordStore, StoreError};
use crate::proto::rng::DetRng;
use crate::proto::time::Timestamp;
use crate::proto::wire::{
    AddProvider, DhtMessage, FindNode, FindValue, GetProviders, Nodes, Providers, RecordKey, RequestId, Store,
    StoreAck, StoreRefusal, Value,
};
use crate::proto::{Action, Event};
use kad::{Key, Lookup, LookupConfig, RoutingTable, indexer_rendezvous};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

pub(crate) mod kad;
pub(crate) mod messages;
/// Most provider announcements held.
const MAX_PROVIDERS: usize = 4096;
/// Provider records returned per `GET_PROVIDERS` answer.
const PROVIDERS_PER_ANSWER: usize = 20;
/// How long DID bindings outlive the record that made them (a thief cannot wait for an expiry).
const BINDING_TTL: Duration = Duration::from_secs(3600);
/// Routing-table refresh (a `FIND_NODE` of our own id) period.
const TABLE_REFRESH: Duration = Duration::from_secs(600);
/// Consecutive failed RPCs after which a peer leaves the routing table.
const MAX_FAILURES: u32 = 2;

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
        /// Committed (`true`) or refused because another key holds the DID (`false`).
        accepted: bool,
    },
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
    Value { key: RecordKey },
    Providers { want: usize },
    Replicate { record: PeerRecord },
    Claim { record: PeerRecord, publisher: PeerId },
    Provide { record: ProviderRecord },
    Refresh,
}

enum Phase {
    Lookup,
    Storing { pending: BTreeSet<RequestId> },
}

struct Query {
    goal: Goal,
    purpose: Purpose,
    lookup: Lookup,
    phase: Phase,
    deadline: Timestamp,
    /// Best value so far and the hop it came from.
    found: Option<(PeerRecord, u32)>,
    providers: BTreeMap<PeerId, ProviderRecord>,
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
}

/// One peer's part of the DHT (server for indexers, client for nodes).
pub struct Dht {
    me: PeerId,
    keypair: Keypair,
    addrs: Vec<Addr>,
    server: bool,
    config: Config,
    lookup_config: LookupConfig,
    table: RoutingTable,
    failures: BTreeMap<PeerId, u32>,
    store: RecordStore,
    /// Records whose DID claim is being checked, by owner.
    claims: BTreeMap<PeerId, PeerRecord>,
    providers: BTreeMap<PeerId, ProviderRecord>,
    queries: BTreeMap<QueryId, Query>,
    /// DHT RPC in flight → (query, peer asked).
    rpcs: BTreeMap<RequestId, (QueryId, PeerId)>,
    next_query: QueryId,
    next_req: u64,
    rng: DetRng,
    fill: (f32, u32),
    next_provide: Option<Timestamp>,
    next_cache_refresh: Option<Timestamp>,
    next_table_refresh: Option<Timestamp>,
    next_gc: Timestamp,
    actions: Vec<Action>,
    done: VecDeque<DhtDone>,
    stats: DhtStats,
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
        config: Config,
        keypair: Keypair,
        addrs: Vec<Addr>,
        server: bool,
        bootstrap: &[PeerAddr],
        rng: DetRng,
        now: Timestamp,
    ) -> Self {
        let me = keypair.peer_id();
        let lookup_config = LookupConfig {
            k: config.kad_k,
            alpha: config.kad_alpha,
            timeout: config.kad_rpc_timeout,
            max_candidates: config.kad_k.saturating_mul(4),
        };
        let mut table = RoutingTable::new(me, config.kad_k);
        for b in bootstrap {
            table.insert(b.clone(), now);
        }
        Dht {
            me,
            keypair,
            addrs,
            server,
            lookup_config,
            table,
            failures: BTreeMap::new(),
            store: RecordStore::new(config.record_store_max, BINDING_TTL),
            claims: BTreeMap::new(),
            providers: BTreeMap::new(),
            queries: BTreeMap::new(),
            rpcs: BTreeMap::new(),
            next_query: 1,
            next_req: 1,
            rng,
            fill: (0.0, u32::try_from(config.max_nodes).unwrap_or(u32::MAX)),
            next_provide: server.then_some(now),
            next_cache_refresh: server.then_some(now + Duration::from_secs(5)),
            next_table_refresh: server.then_some(now),
            next_gc: now + config.gc_interval,
            config,
            actions: Vec::new(),
            done: VecDeque::new(),
            stats: DhtStats::default(),
        }
    }

    // ---- views ---------------------------------------------------------------------------------

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

    /// The valid record under `key` held locally.
    pub fn local(&self, key: &RecordKey, now: Timestamp) -> Option<&PeerRecord> {
        match key {
            RecordKey::Peer(p) => self.store.by_peer(p, now),
            RecordKey::Did(d) => self.store.by_did(d, now),
        }
    }

    /// The expiry of `peer`'s record held and served (not one still being checked).
    pub fn held_expiry(&self, peer: &PeerId, now: Timestamp) -> Option<Timestamp> {
        self.store.by_peer(peer, now).map(|r| r.body.expires_at)
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

    /// Actions to execute (sends, learned addresses, events); drains them.
    pub fn drain_actions(&mut self, out: &mut Vec<Action>) {
        out.append(&mut self.actions);
    }

    /// The next finished query.
    pub fn poll_done(&mut self) -> Option<DhtDone> {
        self.done.pop_front()
    }

    // ---- starting queries ----------------------------------------------------------------------

    /// Looks `key` up: the local store first (unless `skip_local`), then the DHT. `seeds` are added
    /// to the routing table's closest peers as starting points (a client's pool indexers). The
    /// answer comes back as [`DhtDone::Value`] (at once when held locally).
    pub fn find_value(
        &mut self,
        key: RecordKey,
        purpose: Purpose,
        skip_local: bool,
        seeds: &[PeerAddr],
        deadline: Duration,
        now: Timestamp,
    ) -> QueryId {
        let qid = self.alloc_query();
        if !skip_local && let Some(r) = self.local(&key, now).cloned() {
            self.done.push_back(DhtDone::Value { query: qid, purpose, key, record: Some(r), hops: 0 });
            return qid;
        }
        let target = key.kad_key();
        // When the query cannot start, `start` already reported it finished empty under `qid`.
        self.start(qid, Goal::Value { key }, purpose, target, seeds, deadline, now);
        self.advance(qid, now);
        qid
    }

    /// Finds providers of the indexer rendezvous key ([`DhtDone::Providers`]), stopping once
    /// `want` distinct providers are known or the lookup converges.
    pub fn find_providers(&mut self, want: usize, purpose: Purpose, seeds: &[PeerAddr], now: Timestamp) -> bool {
        let qid = self.alloc_query();
        let deadline = self.config.lookup_timeout;
        let mut providers = BTreeMap::new();
        if self.server {
            for (p, r) in &self.providers {
                if *p != self.me && r.body.expires_at > now {
                    providers.insert(*p, r.clone());
                }
            }
        }
        let started =
            self.start(qid, Goal::Providers { want: want.max(1) }, purpose, indexer_rendezvous(), seeds, deadline, now);
        if let Some(q) = started.and_then(|q| self.queries.get_mut(&q)) {
            q.providers = providers;
        }
        self.advance(qid, now);
        started.is_some()
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        qid: QueryId,
        goal: Goal,
        purpose: Purpose,
        target: Key,
        seeds: &[PeerAddr],
        deadline: Duration,
        now: Timestamp,
    ) -> Option<QueryId> {
        if self.queries.len() >= self.config.kad_max_queries {
            self.stats.queries_refused += 1;
            self.finish_empty(goal, purpose, qid);
            return None;
        }
        self.stats.queries += 1;
        let mut start = self.table.closest(&target, self.lookup_config.k);
        for s in seeds {
            if s.id != self.me && !start.iter().any(|a| a.id == s.id) {
                start.push(s.clone());
            }
        }
        let lookup = Lookup::new(self.me, target, start, self.lookup_config);
        self.queries.insert(
            qid,
            Query {
                goal,
                purpose,
                lookup,
                phase: Phase::Lookup,
                deadline: now + deadline,
                found: None,
                providers: BTreeMap::new(),
            },
        );
        Some(qid)
    }

    fn alloc_query(&mut self) -> QueryId {
        let q = self.next_query;
        self.next_query += 1;
        q
    }

    fn next_request(&mut self) -> RequestId {
        let r = RequestId(self.next_req);
        self.next_req = self.next_req.wrapping_add(1).max(1);
        r
    }

    /// Reports a query that could not run as finished with nothing.
    fn finish_empty(&mut self, goal: Goal, purpose: Purpose, qid: QueryId) {
        match goal {
            Goal::Value { key } => {
                self.done.push_back(DhtDone::Value { query: qid, purpose, key, record: None, hops: 0 })
            }
            Goal::Providers { .. } => self.done.push_back(DhtDone::Providers { purpose, providers: Vec::new() }),
            Goal::Claim { publisher, .. } => {
                self.claims.remove(&publisher);
                self.done.push_back(DhtDone::Claim { publisher, accepted: false });
            }
            _ => {}
        }
    }

    // ---- records offered by their owners -------------------------------------------------------

    /// A record handed over by `from` (publish, or embedded in a heartbeat). It must be `from`'s
    /// own. Identical to the one held: nothing to verify. A refresh of a held record (same DID):
    /// verified, stored and replicated. A DID new to us: verified, then checked in the DHT before
    /// it is served ([`Offer::Checking`]; the verdict comes as [`DhtDone::Claim`]).
    pub fn offer_record(&mut self, from: PeerId, record: PeerRecord, now: Timestamp) -> Offer {
        if record.body.peer_id != from {
            return Offer::Refused(StoreError::Invalid(RecordError::WrongKey));
        }
        if let Some(held) = self.store.by_peer(&from, now)
            && *held == record
        {
            return Offer::Held(record.body.expires_at);
        }
        if self.claims.get(&from) == Some(&record) {
            return Offer::Checking;
        }
        self.stats.verifications += 1;
        if let Err(e) = record.verify(now) {
            return Offer::Refused(StoreError::Invalid(e));
        }
        let known_binding = self.store.by_peer(&from, now).is_some_and(|h| h.body.did == record.body.did)
            || self.store.did_owner(&record.body.did, now) == Some(from);
        if !known_binding && self.server && !self.table.is_empty() {
            if let Some(owner) = self.store.did_owner(&record.body.did, now) {
                debug_assert_ne!(owner, from);
                return Offer::Refused(StoreError::ForeignDid { did: record.body.did });
            }
            let key = RecordKey::Did(record.body.did.clone());
            self.claims.insert(from, record.clone());
            let qid = self.alloc_query();
            let deadline = self.config.lookup_timeout;
            let started = self.start(
                qid,
                Goal::Claim { record, publisher: from },
                Purpose::Internal,
                key.kad_key(),
                &[],
                deadline,
                now,
            );
            self.advance(qid, now);
            return match started {
                Some(_) => Offer::Checking,
                None => Offer::Refused(StoreError::Stale),
            };
        }
        self.commit(from, record, now)
    }

    fn commit(&mut self, from: PeerId, record: PeerRecord, now: Timestamp) -> Offer {
        let expires = record.body.expires_at;
        match self.store.put_verified(record.clone(), now) {
            Ok(_) => {
                self.actions.push(Action::Event(Event::RecordStored {
                    owner: record.body.peer_id,
                    did: record.body.did.clone(),
                    from,
                }));
                self.replicate(record, now);
                Offer::Held(expires)
            }
            Err(e) => Offer::Refused(e),
        }
    }

    /// Stores `record` on the k closest peers of both of its keys.
    fn replicate(&mut self, record: PeerRecord, now: Timestamp) {
        if !self.server || self.table.is_empty() {
            return;
        }
        let deadline = self.config.lookup_timeout;
        for key in [RecordKey::Peer(record.body.peer_id), RecordKey::Did(record.body.did.clone())] {
            let qid = self.alloc_query();
            self.start(
                qid,
                Goal::Replicate { record: record.clone() },
                Purpose::Internal,
                key.kad_key(),
                &[],
                deadline,
                now,
            );
            self.advance(qid, now);
        }
    }

    // ---- serving requests ----------------------------------------------------------------------

    /// A DHT request from `from` (authenticated). Returns the refusal of a `STORE` whose record is
    /// invalid, so the router can strike the sender.
    pub fn on_request(&mut self, from: PeerAddr, message: DhtMessage, now: Timestamp) -> Option<StoreRefusal> {
        let peer = from.id;
        let k = self.lookup_config.k;
        let reply = match message {
            DhtMessage::FindNode(FindNode { req, target, server }) => {
                self.note_server(&from, server, now);
                DhtMessage::Nodes(Nodes { req, closer: self.closer(&target, peer, k) })
            }
            DhtMessage::FindValue(FindValue { req, key, server }) => {
                self.note_server(&from, server, now);
                match self.local(&key, now).cloned() {
                    Some(r) => DhtMessage::Value(Value { req, record: Some(r), closer: Vec::new() }),
                    None => {
                        DhtMessage::Value(Value { req, record: None, closer: self.closer(&key.kad_key(), peer, k) })
                    }
                }
            }
            DhtMessage::GetProviders(GetProviders { req, key, server }) => {
                self.note_server(&from, server, now);
                let mut providers: Vec<ProviderRecord> = if key == indexer_rendezvous() {
                    self.providers.values().filter(|r| r.body.expires_at > now).cloned().collect()
                } else {
                    Vec::new()
                };
                if providers.len() > PROVIDERS_PER_ANSWER {
                    self.rng.shuffle(&mut providers);
                    providers.truncate(PROVIDERS_PER_ANSWER);
                }
                DhtMessage::Providers(Providers { req, providers, closer: self.closer(&key, peer, k) })
            }
            DhtMessage::Store(Store { req, record, .. }) => {
                let refused = self.accept_store(peer, record, now);
                self.reply(peer, DhtMessage::StoreAck(StoreAck { req, refused }));
                return refused.filter(|r| *r == StoreRefusal::Invalid);
            }
            DhtMessage::AddProvider(AddProvider { req, key, provider }) => {
                let refused = self.accept_provider(peer, key, provider, now);
                self.reply(peer, DhtMessage::StoreAck(StoreAck { req, refused }));
                return refused.filter(|r| *r == StoreRefusal::Invalid);
            }
            _ => return None,
        };
        self.reply(peer, reply);
        None
    }

    fn reply(&mut self, to: PeerId, message: DhtMessage) {
        self.actions.push(Action::Send { to, message: message.into() });
    }

    fn closer(&self, target: &Key, exclude: PeerId, k: usize) -> Vec<PeerAddr> {
        let mut v = self.table.closest(target, k + 1);
        v.retain(|a| a.id != exclude);
        v.truncate(k);
        v
    }

    fn note_server(&mut self, from: &PeerAddr, server: bool, now: Timestamp) {
        if server && self.server {
            self.table.insert(from.clone(), now);
            self.failures.remove(&from.id);
        }
    }

    fn accept_store(&mut self, from: PeerId, record: PeerRecord, now: Timestamp) -> Option<StoreRefusal> {
        if !self.server {
            return Some(StoreRefusal::Refused);
        }
        if self.store.holds(&record) {
            return None;
        }
        self.stats.verifications += 1;
        let owner = record.body.peer_id;
        let did = record.body.did.clone();
        let refusal = match self.store.put(record, now) {
            Ok(_) => {
                self.stats.stores_accepted += 1;
                self.actions.push(Action::Event(Event::RecordStored { owner, did, from }));
                return None;
            }
            Err(StoreError::Invalid(_)) => StoreRefusal::Invalid,
            Err(StoreError::ForeignDid { .. }) => StoreRefusal::ForeignDid,
            Err(StoreError::Stale) => return None,
        };
        self.stats.stores_refused += 1;
        self.actions.push(Action::Event(Event::RecordRejected { from, owner, reason: refusal }));
        Some(refusal)
    }

    fn accept_provider(
        &mut self,
        from: PeerId,
        key: Key,
        provider: ProviderRecord,
        now: Timestamp,
    ) -> Option<StoreRefusal> {
        if !self.server || key != indexer_rendezvous() {
            return Some(StoreRefusal::Refused);
        }
        if provider.body.provider.id != from {
            return Some(StoreRefusal::Invalid);
        }
        if let Some(old) = self.providers.get(&from) {
            if *old == provider {
                return None;
            }
            if old.body.expires_at >= provider.body.expires_at {
                return Some(StoreRefusal::Stale);
            }
        }
        self.stats.verifications += 1;
        if provider.verify(now).is_err() {
            return Some(StoreRefusal::Invalid);
        }
        if !self.providers.contains_key(&from) && self.providers.len() >= MAX_PROVIDERS {
            let victim = self.providers.iter().min_by_key(|(_, r)| r.body.expires_at).map(|(p, _)| *p);
            if let Some(v) = victim {
                self.providers.remove(&v);
            }
        }
        self.providers.insert(from, provider);
        None
    }

    // ---- answers -------------------------------------------------------------------------------

    /// A reply (`Nodes`, `Value`, `Providers`, `StoreAck`) or a refusal to one of our RPCs.
    pub fn on_response(&mut self, from: PeerAddr, message: DhtMessage, now: Timestamp) {
        let Some(req) = message.reply_to() else {
            return;
        };
        let message = match message {
            DhtMessage::Refused(_) => None,
            m => Some(m),
        };
        self.answer(from, req, message, now);
    }

    /// Our RPC `req` was answered (`Some`) or failed (`None`: refused or unreachable).
    fn answer(&mut self, from: PeerAddr, req: RequestId, message: Option<DhtMessage>, now: Timestamp) {
        let Some((qid, asked)) = self.rpcs.get(&req).copied() else {
            return;
        };
        if asked != from.id {
            return;
        }
        self.rpcs.remove(&req);
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        let answered = message.is_some();
        if answered {
            self.failures.remove(&from.id);
            // A server learns a peer that answers; a client keeps it as a starting point.
            self.table.insert(from.clone(), now);
        }
        match (&mut q.phase, message) {
            (Phase::Storing { pending }, _) => {
                pending.remove(&req);
            }
            (Phase::Lookup, None) => q.lookup.on_failure(&from.id),
            (Phase::Lookup, Some(DhtMessage::Nodes(n))) => {
                for c in &n.closer {
                    self.actions.push(Action::Learn(c.clone()));
                }
                q.lookup.on_response(&from.id, n.closer);
            }
            (Phase::Lookup, Some(DhtMessage::Value(v))) => {
                let hop = q.lookup.hop_of(&from.id).unwrap_or(1);
                let key = match &q.goal {
                    Goal::Value { key } => Some(key.clone()),
                    Goal::Claim { record, .. } => Some(RecordKey::Did(record.body.did.clone())),
                    _ => None,
                };
                if let (Some(r), Some(key)) = (v.record, key) {
                    self.stats.verifications += 1;
                    if key.matches(&r) && r.verify(now).is_ok() {
                        let better = q.found.as_ref().is_none_or(|(old, _)| r.supersedes(old));
                        if better {
                            q.found = Some((r, hop));
                        }
                    }
                }
                for c in &v.closer {
                    self.actions.push(Action::Learn(c.clone()));
                }
                q.lookup.on_response(&from.id, v.closer);
            }
            (Phase::Lookup, Some(DhtMessage::Providers(p))) => {
                for r in p.providers.into_iter().take(PROVIDERS_PER_ANSWER) {
                    let id = r.body.provider.id;
                    if id == self.me || q.providers.get(&id).is_some_and(|o| o.body.expires_at >= r.body.expires_at) {
                        continue;
                    }
                    self.stats.verifications += 1;
                    if r.verify(now).is_ok() {
                        q.providers.insert(id, r);
                    }
                }
                for c in &p.closer {
                    self.actions.push(Action::Learn(c.clone()));
                }
                q.lookup.on_response(&from.id, p.closer);
            }
            (Phase::Lookup, Some(_)) => q.lookup.on_failure(&from.id),
        }
        if !answered {
            self.note_failure(from.id);
        }
        self.advance(qid, now);
    }

    /// `peer` cannot be reached: every RPC in flight to it fails.
    pub fn on_unreachable(&mut self, peer: PeerId, now: Timestamp) {
        let reqs: Vec<RequestId> = self.rpcs.iter().filter(|(_, (_, p))| *p == peer).map(|(r, _)| *r).collect();
        for r in reqs {
            self.answer(PeerAddr::id_only(peer), r, None, now);
        }
    }

    fn note_failure(&mut self, peer: PeerId) {
        self.stats.rpc_failures += 1;
        let n = self.failures.entry(peer).or_insert(0);
        *n += 1;
        if *n >= MAX_FAILURES {
            self.failures.remove(&peer);
            self.table.remove(&peer);
        }
    }

    /// Sends the next RPCs of query `qid`, or moves it to its next phase or to its end.
    fn advance(&mut self, qid: QueryId, now: Timestamp) {
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        let finished = match &q.phase {
            Phase::Storing { pending } => pending.is_empty() || now >= q.deadline,
            Phase::Lookup => {
                let enough = match &q.goal {
                    Goal::Value { .. } | Goal::Claim { .. } => q.found.is_some(),
                    Goal::Providers { want } => q.providers.len() >= *want,
                    _ => false,
                };
                if enough || now >= q.deadline || q.lookup.is_finished() {
                    true
                } else {
                    let asks = q.lookup.next_queries(now);
                    let target = q.lookup.target();
                    let server = self.server;
                    let mut sends = Vec::with_capacity(asks.len());
                    for a in asks {
                        let req = RequestId(self.next_req);
                        self.next_req = self.next_req.wrapping_add(1).max(1);
                        let message = match &q.goal {
                            Goal::Value { key } => DhtMessage::FindValue(FindValue { req, key: key.clone(), server }),
                            Goal::Claim { record, .. } => DhtMessage::FindValue(FindValue {
                                req,
                                key: RecordKey::Did(record.body.did.clone()),
                                server,
                            }),
                            Goal::Providers { .. } => {
                                DhtMessage::GetProviders(GetProviders { req, key: target, server })
                            }
                            _ => DhtMessage::FindNode(FindNode { req, target, server }),
                        };
                        sends.push((req, a, message));
                    }
                    for (req, a, message) in sends {
                        self.rpcs.insert(req, (qid, a.id));
                        self.stats.rpcs += 1;
                        self.actions.push(Action::Learn(a.clone()));
                        self.actions.push(Action::Send { to: a.id, message: message.into() });
                    }
                    false
                }
            }
        };
        if finished {
            self.finish_phase(qid, now);
        }
    }

    fn finish_phase(&mut self, qid: QueryId, now: Timestamp) {
        let Some(mut q) = self.queries.remove(&qid) else {
            return;
        };
        // Forget RPCs of this query still in flight; late answers are ignored.
        self.rpcs.retain(|_, (x, _)| *x != qid);
        if matches!(q.phase, Phase::Storing { .. }) {
            return;
        }
        let store_msg: Option<Box<dyn Fn(RequestId) -> DhtMessage>> = match q.goal {
            Goal::Value { key } => {
                let (record, hops) = match q.found {
                    Some((r, h)) => (Some(r), h),
                    None => (None, q.lookup.hops().unwrap_or(0)),
                };
                self.done.push_back(DhtDone::Value { query: qid, purpose: q.purpose, key, record, hops });
                return;
            }
            Goal::Providers { .. } => {
                let providers = q.providers.into_values().collect();
                self.done.push_back(DhtDone::Providers { purpose: q.purpose, providers });
                return;
            }
            Goal::Refresh => return,
            Goal::Claim { record, publisher } => {
                self.claims.remove(&publisher);
                let foreign = q.found.take().filter(|(r, _)| r.body.peer_id != publisher);
                if let Some((owner_record, _)) = foreign {
                    // Remember the rightful binding so the next attempt is refused locally.
                    let _ = self.store.put_verified(owner_record, now);
                    self.actions.push(Action::Event(Event::RecordRejected {
                        from: publisher,
                        owner: publisher,
                        reason: StoreRefusal::ForeignDid,
                    }));
                    self.done.push_back(DhtDone::Claim { publisher, accepted: false });
                } else {
                    let accepted = matches!(self.commit(publisher, record, now), Offer::Held(_));
                    self.done.push_back(DhtDone::Claim { publisher, accepted });
                }
                return;
            }
            Goal::Replicate { record } => {
                let server = self.server;
                Some(Box::new(move |req| DhtMessage::Store(Store { req, record: record.clone(), server })))
            }
            Goal::Provide { record } => Some(Box::new(move |req| {
                DhtMessage::AddProvider(AddProvider { req, key: indexer_rendezvous(), provider: record.clone() })
            })),
        };
        let Some(make) = store_msg else { return };
        let targets = q.lookup.closest_answered(self.lookup_config.k);
        let mut pending = BTreeSet::new();
        for t in targets {
            let req = self.next_request();
            self.rpcs.insert(req, (qid, t.id));
            self.stats.rpcs += 1;
            pending.insert(req);
            self.actions.push(Action::Send { to: t.id, message: make(req).into() });
        }
        if pending.is_empty() {
            return;
        }
        q.phase = Phase::Storing { pending };
        q.deadline = now + self.config.kad_rpc_timeout;
        q.goal = Goal::Refresh;
        self.queries.insert(qid, q);
    }

    // ---- timers --------------------------------------------------------------------------------

    /// Runs due timers: RPC and query deadlines, provide, cache and table refresh, GC.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let qids: Vec<QueryId> = self
            .queries
            .iter()
            .filter(|(_, q)| q.deadline <= now || q.lookup.poll_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for qid in qids {
            if let Some(q) = self.queries.get_mut(&qid) {
                q.lookup.handle_timeout(now);
            }
            // RPCs the lookup gave up on are dropped from the in-flight map.
            self.rpcs_gc(qid);
            self.advance(qid, now);
        }
        if self.next_provide.is_some_and(|t| t <= now) {
            self.next_provide = Some(now + self.config.provide_interval);
            self.provide(now);
        }
        if self.next_cache_refresh.is_some_and(|t| t <= now) {
            self.next_cache_refresh = Some(now + self.config.indexer_cache_refresh);
            self.find_providers(self.config.indexer_cache_max * 3, Purpose::IndexerCache, &[], now);
        }
        if self.next_table_refresh.is_some_and(|t| t <= now) {
            self.next_table_refresh = Some(now + TABLE_REFRESH);
            if !self.table.is_empty() {
                let qid = self.alloc_query();
                let target = Key::from(self.me);
                let deadline = self.config.lookup_timeout;
                self.start(qid, Goal::Refresh, Purpose::Internal, target, &[], deadline, now);
                self.advance(qid, now);
            }
        }
        if now >= self.next_gc {
            self.next_gc = now + self.config.gc_interval;
            self.store.prune(now);
            self.providers.retain(|_, r| r.body.expires_at > now);
        }
    }

    /// Drops in-flight entries of `qid` whose lookup probe has failed (timed out).
    fn rpcs_gc(&mut self, qid: QueryId) {
        let Some(q) = self.queries.get(&qid) else {
            self.rpcs.retain(|_, (x, _)| *x != qid);
            return;
        };
        if let Phase::Storing { .. } = q.phase {
            return;
        }
        let stale: Vec<(RequestId, PeerId)> = self
            .rpcs
            .iter()
            .filter(|(_, (x, p))| *x == qid && !q.lookup.is_in_flight(p))
            .map(|(r, (_, p))| (*r, *p))
            .collect();
        for (r, p) in stale {
            self.rpcs.remove(&r);
            self.note_failure(p);
        }
    }

    /// The next deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let queries = self.queries.values().map(|q| match q.lookup.poll_timeout() {
            Some(t) => t.min(q.deadline),
            None => q.deadline,
        });
        queries
            .chain(self.next_provide)
            .chain(self.next_cache_refresh)
            .chain(self.next_table_refresh)
            .chain(std::iter::once(self.next_gc))
            .min()
    }

    /// Signs a fresh provider record and stores it on the k closest peers of the rendezvous key.
    fn provide(&mut self, now: Timestamp) {
        let body = ProviderBody {
            provider: PeerAddr { id: self.me, addrs: self.addrs.clone() },
            fill_rate: self.fill.0,
            capacity: self.fill.1,
            issued_at: now,
            expires_at: now + self.config.provider_ttl,
        };
        let Ok(record) = ProviderRecord::sign(body, &self.keypair) else {
            return;
        };
        self.providers.insert(self.me, record.clone());
        if self.table.is_empty() {
            return;
        }
        let qid = self.alloc_query();
        let deadline = self.config.lookup_timeout;
        self.start(qid, Goal::Provide { record }, Purpose::Internal, indexer_rendezvous(), &[], deadline, now);
        self.advance(qid, now);
    }
}

/// Picks up to `want` providers to join: not excluded, not full, the less loaded first with a
/// random spread (so every node does not rush the same emptiest indexer), and at most one per
/// IPv4 /24 (the seed's `SelectByFillRate` weighed `F(1−F)`, which is symmetric, and its callers
/// passed no fill rates, B §4.6). Loopback and unparsable addresses carry no subnet.
pub fn select_by_fill(
    providers: &[ProviderRecord],
    want: usize,
    exclude: impl Fn(&PeerId) -> bool,
    rng: &mut DetRng,
) -> Vec<PeerAddr> {
    const SPREAD: f64 = 0.25;
    let mut ranked: Vec<(f64, &ProviderRecord)> = providers
        .iter()
        .filter(|r| !exclude(&r.body.provider.id) && f64::from(r.body.fill_rate) < 1.0)
        .map(|r| (f64::from(r.body.fill_rate) + rng.unit_f64() * SPREAD, r))
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut subnets = BTreeSet::new();
    let mut out = Vec::new();
    for (_, r) in ranked {
        if out.len() >= want {
            break;
        }
        if let Some(s) = subnet24(&r.body.provider.addrs)
            && !subnets.insert(s)
        {
            continue;
        }
        out.push(r.body.provider.clone());
    }
    out
}

/// The first three octets of the first non-loopback, specified IPv4 address (`"host:port"`).
fn subnet24(addrs: &[Addr]) -> Option<[u8; 3]> {
    addrs.iter().find_map(|a| {
        let sock: std::net::SocketAddr = a.parse().ok()?;
        match sock.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => {
                let o = ip.octets();
                Some([o[0], o[1], o[2]])
            }
            _ => None,
        }
    })
}

impl crate::proto::indexer::RecordDesk for Dht {
    fn offer(&mut self, from: PeerId, record: PeerRecord, now: Timestamp) -> Offer {
        self.offer_record(from, record, now)
    }

    fn held_expiry(&self, peer: &PeerId, now: Timestamp) -> Option<Timestamp> {
        Dht::held_expiry(self, peer, now)
    }

    fn check_did(&mut self, did: &crate::proto::identity::Did, now: Timestamp) -> crate::proto::indexer::DidCheck {
        use crate::proto::indexer::DidCheck;
        let key = RecordKey::Did(did.clone());
        if !self.server || self.table.is_empty() {
            return DidCheck::Answered(self.local(&key, now).cloned());
        }
        let deadline = self.config.dht_check_timeout;
        DidCheck::Pending(self.find_value(key, Purpose::DidCheck, true, &[], deadline, now))
    }
}
