//! [`Peer`]: one daemon's protocol state, routing between the sub-machines.

use super::config::Config;
use super::connections::{Connections, Inbound};
use super::dht::{Dht, DhtDone, Purpose, select_by_fill};
use super::identity::{Addr, Did, Keypair, PeerAddr, PeerId};
use super::indexer::IndexerService;
use super::lookup::RecordLookups;
use super::pool::IndexerPool;
use super::record::{PeerRecord, RecordBody};
use super::rng::DetRng;
use super::time::Timestamp;
use super::wire::{Message, RecordReply, RefuseReason, Refused, WitnessReport};
use super::{Action, CloseReason, Command, Event, Input, Output};
use std::collections::VecDeque;

/// Which roles a daemon plays (the seed's `NODE_MODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Roles {
    /// Keeps a pool of indexers and heartbeats them.
    pub node: bool,
    /// Admits node heartbeats and serves records.
    pub indexer: bool,
}

impl Roles {
    /// A plain node.
    pub const NODE: Roles = Roles { node: true, indexer: false };
    /// A plain indexer (keeps a pool of other indexers only if it has seeds).
    pub const INDEXER: Roles = Roles { node: false, indexer: true };
    /// Both.
    pub const BOTH: Roles = Roles { node: true, indexer: true };
}

/// Everything a [`Peer`] is built from.
#[derive(Clone, Debug)]
pub struct PeerSetup {
    /// Tunables.
    pub config: Config,
    /// The daemon's key; its public half is the peer id.
    pub keypair: Keypair,
    /// The daemon's DID (chosen at first start and kept by the host).
    pub did: Did,
    /// The private network's shared key (the seed's PSK).
    pub network_key: [u8; 32],
    /// Node, indexer, or both.
    pub roles: Roles,
    /// Seed indexers (the seed's `INDEXER_ADDRESSES`).
    pub seeds: Vec<PeerAddr>,
    /// Seed for every random choice this peer makes.
    pub rng_seed: u64,
    /// Transport addresses this peer can be reached at, put in its record and provider
    /// announcements (empty where the transport routes by peer id alone, as in the simulator).
    pub addrs: Vec<Addr>,
}

impl PeerSetup {
    /// A setup with default config, a DID derived from the key, no seeds and seed 0.
    pub fn new(keypair: Keypair, network_key: [u8; 32], roles: Roles) -> Self {
        let mut b = [0u8; 16];
        b.copy_from_slice(&keypair.peer_id().as_bytes()[..16]);
        PeerSetup {
            config: Config::default(),
            keypair,
            did: Did::from_random(b),
            network_key,
            roles,
            seeds: Vec::new(),
            rng_seed: 0,
            addrs: Vec::new(),
        }
    }
}

/// One daemon's protocol state machine.
///
/// Feed it [`Input`]s with [`Peer::handle`], drain [`Output`]s with [`Peer::poll_output`], and
/// call `handle(Input::Timeout, now)` once `now` reaches [`Peer::poll_timeout`].
#[derive(Debug)]
pub struct Peer {
    me: PeerId,
    did: Did,
    roles: Roles,
    config: Config,
    conns: Connections,
    pool: Option<IndexerPool>,
    indexer: Option<IndexerService>,
    /// The DHT: a server for an indexer, a client for a node.
    dht: Dht,
    lookups: RecordLookups,
    keypair: Keypair,
    addrs: Vec<Addr>,
    /// Our signed record (re-signed at half-life).
    record: Option<PeerRecord>,
    out: VecDeque<Output>,
    actions: Vec<Action>,
    /// Scratch buffer `apply_actions` swaps with `actions`, so no round allocates.
    batch: Vec<Action>,
    shut_down: bool,
}

impl Peer {
    /// Builds a peer; it starts contacting its seeds on the first [`Input::Timeout`].
    pub fn new(setup: PeerSetup, now: Timestamp) -> Self {
        let me = setup.keypair.peer_id();
        let mut rng = DetRng::new(setup.rng_seed, "peer");
        let conns = Connections::new(me, setup.network_key, &setup.config, rng.fork("connections"));
        let seeds: Vec<PeerAddr> = setup.seeds.into_iter().filter(|s| s.id != me).collect();
        let bootstrap = seeds.clone();
        // A node keeps `max_indexers`; an indexer with seeds keeps a pool of other indexers twice
        // that size (the seed's "strict indexer", C §3).
        let pool = if setup.roles.node {
            Some(setup.config.max_indexers)
        } else if !seeds.is_empty() {
            Some(setup.config.max_indexers * 2)
        } else {
            None
        }
        .map(|max_pool| {
            IndexerPool::new(
                setup.config.clone(),
                me,
                setup.did.clone(),
                seeds,
                max_pool,
                setup.roles.indexer,
                rng.fork("pool"),
                now,
            )
        });
        let indexer =
            setup.roles.indexer.then(|| IndexerService::new(setup.config.clone(), me, rng.fork("indexer"), now));
        let dht = Dht::new(
            setup.config.clone(),
            setup.keypair.clone(),
            setup.addrs.clone(),
            setup.roles.indexer,
            &bootstrap,
            rng.fork("dht"),
            now,
        );
        let mut peer = Peer {
            me,
            did: setup.did,
            roles: setup.roles,
            lookups: RecordLookups::new(setup.config.clone()),
            config: setup.config,
            conns,
            pool,
            indexer,
            dht,
            keypair: setup.keypair,
            addrs: setup.addrs,
            record: None,
            out: VecDeque::new(),
            actions: Vec::new(),
            batch: Vec::new(),
            shut_down: false,
        };
        peer.resign(now);
        peer
    }

    /// Signs a fresh record (the seed's claim at start, then before each expiry) and hands it to
    /// the pool (which sends it to indexers that do not hold it) and to our own DHT store.
    fn resign(&mut self, now: Timestamp) {
        let mut addrs = self.addrs.clone();
        addrs.truncate(super::record::MAX_ADDRS);
        let mut name = self.config.name.clone();
        if name.len() > super::record::MAX_NAME_LEN {
            name = String::new();
        }
        let body = RecordBody {
            peer_id: self.me,
            did: self.did.clone(),
            name,
            addrs,
            api_url: None,
            nats_address: None,
            wallet: None,
            issued_at: now,
            expires_at: now + self.config.record_ttl,
        };
        let Ok(record) = PeerRecord::sign(body, &self.keypair) else {
            return;
        };
        if let Some(pool) = &mut self.pool {
            pool.set_record(record.clone());
        }
        if self.roles.indexer {
            let _ = self.dht.offer_record(self.me, record.clone(), now);
        }
        self.record = Some(record);
    }

    fn record_refresh_at(&self) -> Option<Timestamp> {
        self.record.as_ref().map(|r| r.body.issued_at + self.config.record_ttl / 2)
    }

    /// This peer's current signed record.
    pub fn record(&self) -> Option<&PeerRecord> {
        self.record.as_ref()
    }

    /// The DHT (server for an indexer, client for a node).
    pub fn dht(&self) -> &Dht {
        &self.dht
    }

    /// Record lookups in flight from this node.
    pub fn pending_lookups(&self) -> usize {
        self.lookups.len()
    }

    /// This peer's id.
    pub fn id(&self) -> PeerId {
        self.me
    }

    /// This peer's DID.
    pub fn did(&self) -> &Did {
        &self.did
    }

    /// This peer's roles.
    pub fn roles(&self) -> Roles {
        self.roles
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The node-role pool, if this peer keeps one.
    pub fn pool(&self) -> Option<&IndexerPool> {
        self.pool.as_ref()
    }

    /// The indexer role, if this peer plays it.
    pub fn indexer(&self) -> Option<&IndexerService> {
        self.indexer.as_ref()
    }

    /// The connection table.
    pub fn connections(&self) -> &Connections {
        &self.conns
    }

    /// Processes one input at time `now`.
    pub fn handle(&mut self, input: Input, now: Timestamp) {
        if self.shut_down {
            return;
        }
        match input {
            Input::ConnectionUp { peer, addr, outbound: _ } => {
                self.conns.on_up(peer, addr, now, &mut self.out);
            }
            Input::ConnectionDown { peer } | Input::ConnectFailed { peer } => {
                self.conns.on_down(&peer);
                self.peer_unreachable(peer, now);
            }
            Input::Received { from, message } => match self.conns.on_message(from, message, now, &mut self.out) {
                Inbound::Deliver(m) => self.dispatch(from, m, now),
                Inbound::DeliverHeld(msgs) => {
                    for m in msgs {
                        self.dispatch(from, m, now);
                    }
                }
                Inbound::Nothing => {}
                Inbound::Closed => self.peer_unreachable(from, now),
            },
            Input::Timeout => {
                let pool = &self.pool;
                let indexer = &self.indexer;
                let keep = |p: &PeerId| {
                    pool.as_ref().is_some_and(|x| x.contains(p)) || indexer.as_ref().is_some_and(|x| x.has_session(p))
                };
                let dropped = self.conns.handle_timeout(now, keep, &mut self.out);
                for p in dropped {
                    self.peer_unreachable(p, now);
                }
                if let Some(pool) = &mut self.pool
                    && pool.poll_timeout().is_some_and(|t| t <= now)
                {
                    pool.handle_timeout(now, &mut self.actions);
                }
                if let Some(ix) = &mut self.indexer
                    && ix.poll_timeout().is_some_and(|t| t <= now)
                {
                    ix.handle_timeout(now, &mut self.actions);
                }
                if let Some(ix) = &self.indexer {
                    self.dht.set_fill(ix.fill_rate(), self.config.max_nodes);
                }
                if self.dht.poll_timeout().is_some_and(|t| t <= now) {
                    self.dht.handle_timeout(now);
                }
                if self.lookups.poll_timeout().is_some_and(|t| t <= now) {
                    self.lookups.handle_timeout(now, &mut self.actions);
                }
                if self.record_refresh_at().is_some_and(|t| t <= now) {
                    self.resign(now);
                }
            }
            Input::Command(Command::Shutdown) => {
                if let Some(pool) = &mut self.pool {
                    pool.shutdown(now, &mut self.actions);
                }
                self.apply_actions(now);
                let peers: Vec<PeerId> = self.conns.peers().copied().collect();
                for p in peers {
                    self.conns.close(p, CloseReason::Shutdown, &mut self.out);
                }
                self.shut_down = true;
                return;
            }
            Input::Command(Command::Lookup { id, key }) => {
                if self.roles.indexer {
                    let deadline = self.config.lookup_timeout;
                    self.dht.find_value(key, Purpose::Command { id }, false, &[], deadline, now);
                } else {
                    let indexers = self.pool.as_ref().map(|p| p.live_by_score()).unwrap_or_default();
                    self.lookups.start(id, key, indexers, now, &mut self.actions);
                }
            }
        }
        self.apply_actions(now);
    }

    /// The next output to execute, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Input::Timeout`] must next be handled (`None`: nothing scheduled).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.shut_down {
            return None;
        }
        [
            self.conns.poll_timeout(),
            self.pool.as_ref().and_then(|p| p.poll_timeout()),
            self.indexer.as_ref().and_then(|i| i.poll_timeout()),
            self.dht.poll_timeout(),
            self.lookups.poll_timeout(),
            self.record_refresh_at(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn sender_addr(&self, from: PeerId) -> PeerAddr {
        self.conns.peer_addr(&from)
    }

    fn dispatch(&mut self, from: PeerId, message: Message, now: Timestamp) {
        match message {
            Message::Hello(_) | Message::HelloProof(_) => {
                // Handled by the connection layer; a late duplicate is a violation.
                self.conns.close(from, CloseReason::ProtocolViolation, &mut self.out);
                self.peer_unreachable(from, now);
            }
            Message::Heartbeat(hb) => {
                let addr = self.sender_addr(from);
                match &mut self.indexer {
                    Some(ix) => ix.on_heartbeat(addr, hb, &mut self.dht, now, &mut self.actions),
                    None => self.refuse(from, hb.req, RefuseReason::NotServed),
                }
            }
            Message::Publish(p) => match &mut self.indexer {
                Some(ix) => ix.on_publish(from, p, &mut self.dht, now, &mut self.actions),
                None => self.refuse(from, p.req, RefuseReason::NotServed),
            },
            Message::GetRecord(g) => match &mut self.indexer {
                Some(ix) => {
                    let known = self.dht.knows(&from, now);
                    if ix.admit_get(from, g.req, known, now, &mut self.actions) {
                        let deadline = self.config.lookup_timeout;
                        self.dht.find_value(
                            g.key,
                            Purpose::NodeGet { to: from, req: g.req },
                            false,
                            &[],
                            deadline,
                            now,
                        );
                    }
                }
                None => self.refuse(from, g.req, RefuseReason::NotServed),
            },
            Message::RecordReply(r) => self.lookups.on_reply(from, r, now, &mut self.actions),
            Message::Published(_) => {}
            m @ (Message::FindNode(_)
            | Message::FindValue(_)
            | Message::GetProviders(_)
            | Message::Store(_)
            | Message::AddProvider(_)) => {
                let (req, server) = match &m {
                    Message::FindNode(x) => (x.req, x.server),
                    Message::FindValue(x) => (x.req, x.server),
                    Message::GetProviders(x) => (x.req, x.server),
                    // Replication traffic between indexers is not a node's "get": only DHT clients
                    // count in the get window (routing-table membership was not enough: with 100
                    // indexers a table holds ~60, and honest replicators were rate-limited).
                    Message::Store(x) => (x.req, x.server),
                    // A provider record is signed by its sender, who announces itself as a server.
                    Message::AddProvider(x) => (x.req, true),
                    _ => return,
                };
                match &mut self.indexer {
                    Some(ix) => {
                        if ix.admit_dht(from, req, server, now, &mut self.actions) {
                            let addr = self.conns.peer_addr(&from);
                            if self.dht.on_request(addr, m, now).is_some() {
                                ix.punish_bad_record(from, now, &mut self.actions);
                            }
                        }
                    }
                    None => self.refuse(from, req, RefuseReason::NotServed),
                }
            }
            m @ (Message::Nodes(_) | Message::Value(_) | Message::Providers(_) | Message::StoreAck(_)) => {
                let req = match &m {
                    Message::Nodes(x) => x.req,
                    Message::Value(x) => x.req,
                    Message::Providers(x) => x.req,
                    Message::StoreAck(x) => x.req,
                    _ => return,
                };
                let addr = self.conns.peer_addr(&from);
                self.dht.on_response(addr, req, Some(m), now);
            }
            Message::Refused(r) if Dht::owns(r.req) => {
                let addr = self.conns.peer_addr(&from);
                self.dht.on_response(addr, r.req, None, now);
            }
            Message::Refused(r) if RecordLookups::owns(r.req) => {
                self.lookups.on_failure(r.req, now, &mut self.actions);
            }
            Message::Leave => {
                if let Some(ix) = &mut self.indexer {
                    ix.on_leave(from, now, &mut self.actions);
                }
            }
            Message::CandidatesRequest(req) => match &mut self.indexer {
                Some(ix) => {
                    let known = self.dht.knows(&from, now);
                    ix.on_candidates_request(from, req, known, now, &mut self.actions)
                }
                None => self.refuse(from, req.req, RefuseReason::NotServed),
            },
            Message::WitnessQuery(q) => {
                // Every daemon answers witness queries from its own pool's observations (A §6.11).
                let view = self.pool.as_ref().and_then(|p| p.witness_view(&q.indexer));
                let report = match view {
                    Some(v) => WitnessReport {
                        req: q.req,
                        seen: true,
                        born_at: Some(v.born_at),
                        fill_rate: v.fill_rate,
                        score: v.score,
                    },
                    None => WitnessReport { req: q.req, seen: false, born_at: None, fill_rate: 0.0, score: 0.0 },
                };
                self.actions.push(Action::Send { to: from, message: Message::WitnessReport(report) });
            }
            m @ (Message::HeartbeatResponse(_)
            | Message::Refused(_)
            | Message::WitnessReport(_)
            | Message::CandidatesResponse(_)) => {
                let fill = match &m {
                    Message::HeartbeatResponse(r) => Some(r.fill_rate),
                    _ => None,
                };
                if let Some(pool) = &mut self.pool {
                    pool.on_message(from, m, now, &mut self.actions);
                    // An indexer remembers the live indexers of its own pool for suggestions.
                    if let Some(ix) = &mut self.indexer
                        && pool.is_live(&from)
                    {
                        ix.note_indexer(self.conns.peer_addr(&from), fill, now);
                    }
                }
            }
        }
    }

    fn refuse(&mut self, to: PeerId, req: super::wire::RequestId, reason: RefuseReason) {
        self.actions
            .push(Action::Send { to, message: Message::Refused(Refused { req, reason, suggestions: Vec::new() }) });
    }

    fn peer_unreachable(&mut self, peer: PeerId, now: Timestamp) {
        if let Some(pool) = &mut self.pool {
            pool.on_unreachable(peer, now, &mut self.actions);
        }
        self.dht.on_unreachable(peer, now);
        self.lookups.on_unreachable(peer, now, &mut self.actions);
    }

    /// Routes finished DHT queries to whoever started them.
    fn route_dht(&mut self, now: Timestamp) {
        self.dht.drain_actions(&mut self.actions);
        while let Some(done) = self.dht.poll_done() {
            match done {
                DhtDone::Value { purpose: Purpose::NodeGet { to, req }, record, hops, .. } => {
                    let hops = u8::try_from(hops).unwrap_or(u8::MAX);
                    self.actions
                        .push(Action::Send { to, message: Message::RecordReply(RecordReply { req, record, hops }) });
                }
                DhtDone::Value { purpose: Purpose::Command { id }, key, record, hops, .. } => {
                    self.actions.push(Action::Event(Event::LookupDone { id, key, record, hops, attempts: 1 }));
                }
                DhtDone::Value { purpose: Purpose::DidCheck, query, record, .. } => {
                    if let Some(ix) = &mut self.indexer {
                        ix.finish_did_check(query, record, &mut self.actions);
                    }
                }
                DhtDone::Value { .. } => {}
                DhtDone::Providers { purpose: Purpose::Discovery, providers } => {
                    if let Some(pool) = &mut self.pool {
                        pool.on_providers(&providers, now, &mut self.actions);
                    }
                }
                DhtDone::Providers { purpose: Purpose::IndexerCache, providers } => {
                    if let Some(ix) = &mut self.indexer {
                        let me = self.me;
                        let want = self.config.indexer_cache_max;
                        let mut rng = DetRng::new(now.0, "indexer-cache");
                        for addr in select_by_fill(&providers, want, |p| *p == me, &mut rng) {
                            let fill = providers
                                .iter()
                                .find(|r| r.body.provider.id == addr.id)
                                .map(|r| f64::from(r.body.fill_rate));
                            ix.note_indexer(addr, fill, now);
                        }
                    }
                }
                DhtDone::Providers { .. } => {}
                DhtDone::Claim { publisher, accepted } => {
                    if !accepted && let Some(ix) = &mut self.indexer {
                        ix.punish_bad_record(publisher, now, &mut self.actions);
                    }
                }
            }
        }
    }

    fn apply_actions(&mut self, now: Timestamp) {
        // Failures feed back into the pool, which may act again; bound the rounds defensively.
        for _ in 0..64 {
            self.route_dht(now);
            if self.actions.is_empty() {
                return;
            }
            std::mem::swap(&mut self.actions, &mut self.batch);
            let mut batch = std::mem::take(&mut self.batch);
            let mut failed: Vec<PeerId> = Vec::new();
            for a in batch.drain(..) {
                match a {
                    Action::Send { to, message } => {
                        if !self.conns.send(to, message, now, &mut self.out) && !failed.contains(&to) {
                            failed.push(to);
                        }
                    }
                    Action::Learn(pa) => self.conns.learn(pa),
                    Action::Close { peer, reason } => {
                        if self.conns.close(peer, reason, &mut self.out) && !failed.contains(&peer) {
                            failed.push(peer);
                        }
                    }
                    Action::Event(e) => self.out.push_back(Output::Event(e)),
                    Action::DiscoverIndexers { want } => {
                        // When the query cannot start it is reported finished and empty.
                        let seeds = self.pool.as_ref().map(|p| p.live_by_score()).unwrap_or_default();
                        self.dht.find_providers(want, Purpose::Discovery, &seeds, now);
                    }
                }
            }
            self.batch = batch;
            for p in failed {
                self.peer_unreachable(p, now);
            }
        }
        self.actions.clear();
    }

    /// Addresses this peer's connection layer knows for `peer`.
    pub fn addresses_of(&self, peer: &PeerId) -> Vec<Addr> {
        self.conns.peer_addr(peer).addrs
    }
}
