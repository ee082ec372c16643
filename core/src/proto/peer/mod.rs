//! [`Peer`]: one daemon's protocol state, routing between the machines.
//!
//! The router takes no protocol decision: an input goes to the machine it belongs to (a message by
//! its envelope variant), the machines' effects come back through one [`Action`] sink, and the
//! router executes them — sends through the link, requests between machines forwarded, events
//! turned into outputs. Every random choice is made by a machine with a generator forked from the
//! peer's seed.

use crate::proto::app::AppService;
use crate::proto::config::Config;
use crate::proto::dht::{Dht, DhtDone, Purpose};
use crate::proto::identity::{Addr, Did, Keypair, PeerAddr, PeerId, SigCheck};
use crate::proto::indexer::{self, IndexerService};
use crate::proto::link::{Connections, Inbound};
use crate::proto::node::{self, IndexerPool};
use crate::proto::record::{OwnRecord, PeerRecord, RecordKey};
use crate::proto::rng::DetRng;
use crate::proto::search::{Referenced, SearchService};
use crate::proto::time::Timestamp;
use crate::proto::wire::{AppMessage, AppRefusal};
use crate::proto::wire::{Envelope, RecordReply};
use crate::proto::{Action, CloseReason, Command, Event, Input, Output, SendRefusal};
use std::collections::VecDeque;
use std::sync::Arc;

mod views;
pub use views::{DhtView, IndexerView, LinkView, PoolView, SearchView};

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
    /// Any instant, read once by the host: the search mesh's gossip state counts in `Instant`s,
    /// as this anchor plus `now` (it only adds and compares them, so any anchor gives the same
    /// outputs). Without one an indexer answers searches from its own referents only.
    pub clock_anchor: Option<std::time::Instant>,
    /// How the peer checks the signatures of records, provider records and search queries:
    /// directly (the default), or through a memo the host shares between its peers (the
    /// simulator). The results are the same either way (see [`SigCheck`]).
    pub sig_check: SigCheck,
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
            clock_anchor: None,
            sig_check: SigCheck::direct(),
        }
    }
}

/// Passes over the machines' deadlines one [`Input::Timeout`] makes at most.
const TIMEOUT_PASSES: usize = 3;

/// One daemon's protocol state machine.
///
/// Feed it [`Input`]s with [`Peer::handle`], drain [`Output`]s with [`Peer::poll_output`], and
/// call `handle(Input::Timeout, now)` once `now` reaches [`Peer::poll_timeout`].
#[derive(Debug)]
pub struct Peer {
    me: PeerId,
    did: Did,
    roles: Roles,
    config: Arc<Config>,
    link: Connections,
    /// The node role: the pool of indexers and record lookups (also an indexer with seeds).
    node: Option<IndexerPool>,
    indexer: Option<IndexerService>,
    /// Distributed search: the node's searches; the emitter, responder and mesh of an indexer.
    search: SearchService,
    /// Application messages (the node role).
    app: Option<AppService>,
    /// The DHT: a server for an indexer, a client for a node.
    dht: Dht,
    /// Our signed record (re-signed at half-life).
    record: OwnRecord,
    out: VecDeque<Output>,
    actions: Vec<Action>,
    /// Scratch buffer `apply_actions` swaps with `actions`, so no round allocates.
    batch: Vec<Action>,
    shut_down: bool,
    /// [`Peer::poll_timeout`], worked out once at the end of [`Peer::new`] and of each
    /// [`Peer::handle`] (nothing else changes the machines' deadlines): hosts ask after every input.
    next_timeout: Option<Timestamp>,
}

impl Peer {
    /// Builds a peer; it starts contacting its seeds on the first [`Input::Timeout`].
    pub fn new(setup: PeerSetup, now: Timestamp) -> Self {
        let me = setup.keypair.peer_id();
        // One copy shared by every machine of this peer (was one each: 7 × 872 B of cold lines).
        let config = Arc::new(setup.config);
        let mut rng = DetRng::new(setup.rng_seed, "peer");
        // The link table's hash key comes from a stream of its own, so every stream drawn from
        // `rng` stays what it was.
        let table_key = DetRng::new(setup.rng_seed, "link table").next_u64();
        let link = Connections::new(me, setup.network_key, &config, rng.fork("connections"), table_key);
        let seeds: Vec<PeerAddr> = setup.seeds.into_iter().filter(|s| s.id != me).collect();
        let bootstrap = seeds.clone();
        let pool = node::pool_size(&config, setup.roles.node, !seeds.is_empty()).map(|max_pool| {
            IndexerPool::new(
                Arc::clone(&config),
                me,
                setup.did.clone(),
                seeds,
                max_pool,
                setup.roles.indexer,
                rng.fork("pool"),
                now,
            )
        });
        let indexer_rng = setup.roles.indexer.then(|| rng.fork("indexer"));
        let dht = Dht::new(
            Arc::clone(&config),
            setup.keypair.clone(),
            setup.addrs.clone(),
            setup.roles.indexer,
            &bootstrap,
            rng.fork("dht"),
            now,
        );
        // Forked last, so the streams above are those of earlier versions.
        let indexer =
            indexer_rng.map(|r| IndexerService::new(Config::clone(&config), me, r, rng.fork("indexer-cache"), now));
        let me_addr = PeerAddr { id: me, addrs: setup.addrs.clone() };
        let search = SearchService::new(
            Arc::clone(&config),
            &setup.keypair,
            me_addr,
            setup.roles.indexer,
            setup.clock_anchor,
            rng.fork("search"),
            now,
        );
        let app = setup.roles.node.then(|| AppService::new(Arc::clone(&config), me, rng.fork("app"), now));
        let record = OwnRecord::new(
            setup.keypair.clone(),
            setup.did.clone(),
            &config.name,
            setup.addrs.clone(),
            config.record_ttl,
        );
        let mut peer = Peer {
            me,
            did: setup.did,
            roles: setup.roles,
            config,
            link,
            node: pool,
            indexer,
            search,
            app,
            dht,
            record,
            out: VecDeque::new(),
            actions: Vec::new(),
            batch: Vec::new(),
            shut_down: false,
            next_timeout: None,
        };
        peer.set_sig_check(setup.sig_check);
        peer.resign(now);
        peer.next_timeout = peer.deadline();
        peer
    }

    /// Hands the host's way of checking signatures to every machine that checks some.
    fn set_sig_check(&mut self, sigs: SigCheck) {
        self.record.set_sig_check(sigs.clone());
        self.dht.set_sig_check(sigs.clone());
        self.search.set_sig_check(sigs.clone());
        if let Some(pool) = &mut self.node {
            pool.set_sig_check(sigs.clone());
        }
        if let Some(app) = &mut self.app {
            app.set_sig_check(sigs);
        }
    }

    /// Signs a fresh record and hands it to the pool and, on an indexer, to our own DHT store.
    fn resign(&mut self, now: Timestamp) {
        let Some(record) = self.record.sign(now) else {
            return;
        };
        if let Some(pool) = &mut self.node {
            pool.set_record(record.clone());
        }
        if let Some(app) = &mut self.app {
            app.set_record(record.clone());
        }
        if self.roles.indexer {
            let _ = self.dht.offer_record(self.me, record, true, now, &mut self.actions);
        }
    }

    /// This peer's current signed record.
    pub fn record(&self) -> Option<&PeerRecord> {
        self.record.current()
    }

    /// The DHT (server for an indexer, client for a node).
    pub fn dht(&self) -> DhtView<'_> {
        DhtView(&self.dht)
    }

    /// Record lookups in flight from this node.
    pub fn pending_lookups(&self) -> usize {
        self.node.as_ref().map_or(0, |p| p.pending_lookups())
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
    pub fn pool(&self) -> Option<PoolView<'_>> {
        self.node.as_ref().map(PoolView)
    }

    /// The indexer role, if this peer plays it.
    pub fn indexer(&self) -> Option<IndexerView<'_>> {
        self.indexer.as_ref().map(IndexerView)
    }

    /// Distributed search: active searches, referenced records, the mesh.
    pub fn search(&self) -> SearchView<'_> {
        SearchView { search: &self.search, indexer: self.indexer.as_ref() }
    }

    /// The application-message queue (DNT), if this peer plays the node role.
    pub fn app_queue(&self) -> Option<crate::proto::QueueView> {
        self.app.as_ref().map(|a| a.queue())
    }

    /// The peer book (partners, known and blocked peers), if this peer plays the node role.
    pub fn peer_book(&self) -> Option<&crate::proto::PeerBook> {
        self.app.as_ref().map(|a| a.book())
    }

    /// The connection table.
    pub fn connections(&self) -> LinkView<'_> {
        LinkView(&self.link)
    }

    /// Processes one input at time `now`.
    pub fn handle(&mut self, input: Input, now: Timestamp) {
        if self.shut_down {
            return;
        }
        match input {
            Input::ConnectionUp { peer, addr, outbound } => self.link.on_up(peer, addr, outbound, now, &mut self.out),
            Input::ConnectionDown { peer } | Input::ConnectFailed { peer } => {
                self.link.on_down(&peer);
                self.peer_unreachable(peer, now);
            }
            Input::Received { from, message } => self.on_received(from, message, now),
            Input::Timeout => {
                // What one machine does at its deadline can make another's due at this very
                // instant (a ban closes the last mesh neighbour, whose rejoin is then due): a few
                // passes, so that no deadline is left at `now` for the host to call again.
                for _ in 0..TIMEOUT_PASSES {
                    self.on_timeout(now);
                    self.apply_actions(now);
                    self.next_timeout = self.deadline();
                    if self.next_timeout.is_none_or(|t| t > now) {
                        break;
                    }
                }
                // Every action was applied and the deadline worked out since.
                return;
            }
            Input::Command(Command::Shutdown) => {
                self.on_shutdown(now);
                self.next_timeout = None;
                return;
            }
            Input::Command(Command::Lookup { id, key }) => {
                if self.roles.indexer {
                    let deadline = self.config.lookup_timeout;
                    self.dht.find_value(key, Purpose::Command { id }, false, deadline, now, &mut self.actions);
                } else {
                    match &mut self.node {
                        Some(pool) => pool.lookup(id, key, now, &mut self.actions),
                        None => self.actions.push(node::lookup::unanswerable(id, key).into()),
                    }
                }
            }
            Input::Command(Command::Search { id, user, query }) => {
                // The referent first (the best-scored live indexer), then the others by score.
                let indexers = self.node.as_ref().map(|p| p.live_by_score()).unwrap_or_default();
                self.search.start((id, user), query, indexers, now, &mut self.actions);
            }
            Input::Command(Command::ResourceSearch { id, user, request }) => {
                let indexers = self.node.as_ref().map(|p| p.live_by_score()).unwrap_or_default();
                self.search.ask((id, user), request, indexers, &mut self.actions);
            }
            Input::Command(Command::CancelSearch { user }) => self.search.cancel(&user, &mut self.actions),
            Input::Command(Command::Send { id, message }) => match &mut self.app {
                Some(app) => app.send(id, message, now, &mut self.actions),
                None => self.actions.push(Action::Event(Event::AppSendRefused { id, reason: SendRefusal::NotANode })),
            },
            Input::Command(Command::SetRelation { peer, relation }) => {
                if let Some(app) = &mut self.app {
                    app.set_relation(peer, relation, &mut self.actions);
                }
            }
            Input::Restored(r) => {
                self.dht.restore(&r.bindings, now);
                if let Some(ix) = &mut self.indexer {
                    ix.restore_bans(&r.bans, now);
                }
                if let Some(app) = &mut self.app {
                    app.restore(r, now, &mut self.actions);
                }
            }
        }
        self.apply_actions(now);
        self.next_timeout = self.deadline();
    }

    fn on_received(&mut self, from: PeerId, message: Envelope, now: Timestamp) {
        match self.link.on_message(from, message, now, &mut self.out) {
            Inbound::Deliver(m) => self.route(from, m, now),
            Inbound::DeliverHeld(msgs) => {
                for m in msgs {
                    self.route(from, m, now);
                }
            }
            Inbound::Nothing => {}
            Inbound::Closed => self.peer_unreachable(from, now),
        }
    }

    fn on_timeout(&mut self, now: Timestamp) {
        let pool = &self.node;
        let indexer = &self.indexer;
        let search = &self.search;
        let keep = |p: &PeerId| {
            pool.as_ref().is_some_and(|x| x.contains(p))
                || indexer.as_ref().is_some_and(|x| x.has_session(p))
                || search.is_mesh_neighbour(p)
        };
        let dropped = self.link.handle_timeout(now, keep, &mut self.out);
        for p in dropped {
            self.peer_unreachable(p, now);
        }
        if let Some(pool) = &mut self.node
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
        if self.dht.gc_due(now) || self.dht.poll_timeout().is_some_and(|t| t <= now) {
            self.dht.handle_timeout(now, &mut self.actions);
        }
        if self.search.poll_timeout().is_some_and(|t| t <= now) {
            let me = self.me;
            let table = self.dht.table();
            let contacts = |n: usize| table.closest(&me.into(), n);
            let refs = Refs { indexer: self.indexer.as_ref(), dht: &self.dht, now };
            self.search.handle_timeout(&contacts, &refs, now, &mut self.actions);
        }
        if let Some(app) = &mut self.app
            && app.poll_timeout().is_some_and(|t| t <= now)
        {
            app.handle_timeout(now, &mut self.actions);
        }
        if self.record.refresh_at().is_some_and(|t| t <= now) {
            self.resign(now);
        }
    }

    fn on_shutdown(&mut self, now: Timestamp) {
        if let Some(pool) = &mut self.node {
            pool.shutdown(now, &mut self.actions);
        }
        self.apply_actions(now);
        let peers = self.link.peers();
        for p in peers {
            self.link.close(p, CloseReason::Shutdown, &mut self.out);
        }
        self.shut_down = true;
    }

    /// The next output to execute, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Input::Timeout`] must next be handled (`None`: nothing scheduled).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        debug_assert_eq!(self.next_timeout, self.deadline(), "the cached deadline is stale");
        self.next_timeout
    }

    /// The earliest of the machines' deadlines.
    fn deadline(&self) -> Option<Timestamp> {
        if self.shut_down {
            return None;
        }
        // The earliest of seven optional times, without building an iterator over them (this
        // runs after every input).
        fn earlier(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
            match (a, b) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, None) => x,
                (None, y) => y,
            }
        }
        let mut next = earlier(self.link.poll_timeout(), self.record.refresh_at());
        if let Some(pool) = &self.node {
            next = earlier(next, pool.poll_timeout());
        }
        if let Some(ix) = &self.indexer {
            next = earlier(next, ix.poll_timeout());
        }
        next = earlier(next, self.dht.poll_timeout());
        next = earlier(next, self.search.poll_timeout());
        if let Some(app) = &self.app {
            next = earlier(next, app.poll_timeout());
        }
        next
    }

    /// Hands an authenticated message to its machine: one arm per envelope variant (requests and
    /// replies of one mechanism go to the two ends of it).
    fn route(&mut self, from: PeerId, message: Envelope, now: Timestamp) {
        let out = &mut self.actions;
        match message {
            // Handled by the link; a late duplicate is a violation.
            Envelope::Link(_) => {
                self.link.close(from, CloseReason::ProtocolViolation, &mut self.out);
                self.peer_unreachable(from, now);
            }
            Envelope::Indexer(m) if m.is_request() => {
                let addr = self.link.peer_addr(&from);
                indexer::on_request(self.indexer.as_mut(), addr, m, &mut self.dht, now, out);
            }
            Envelope::Indexer(m) => {
                if let Some(pool) = &mut self.node {
                    pool.on_indexer_reply(from, m, now, out);
                }
            }
            Envelope::Node(m) => node::on_message(self.node.as_mut(), from, m, now, out),
            Envelope::Dht(m) => {
                let addr = self.link.peer_addr(&from);
                if m.request().is_some() {
                    indexer::on_dht_request(self.indexer.as_mut(), addr, m, &mut self.dht, now, out);
                } else {
                    self.dht.on_response(addr, m, now, out);
                }
            }
            Envelope::Search(m) => {
                // Resource searches are for a node's apps, and reach it only through its own
                // indexers (an indexer that references another indexer puts them to it too).
                if matches!(m, crate::proto::wire::SearchMessage::Asked(_))
                    && !(self.roles.node && self.node.as_ref().is_some_and(|p| p.contains(&from)))
                {
                    return;
                }
                let known = self.dht.knows(&from, now);
                if m.is_request() && !indexer::admit_search(self.indexer.as_mut(), from, &m, known, now, out) {
                    return;
                }
                let refs = Refs { indexer: self.indexer.as_ref(), dht: &self.dht, now };
                self.search.on_message(from, m, &refs, now, out);
            }
            Envelope::App(m) => match &mut self.app {
                Some(app) => {
                    let known =
                        self.indexer.as_ref().is_some_and(|ix| ix.has_session(&from)) || self.dht.knows(&from, now);
                    app.on_message(from, m, known, now, out);
                }
                None => {
                    if let AppMessage::Deliver(d) = m {
                        let refused = AppMessage::Refused { id: d.id, reason: AppRefusal::NotServed };
                        out.push(Action::Send { to: from, message: refused.into() });
                    }
                }
            },
        }
    }

    fn peer_unreachable(&mut self, peer: PeerId, now: Timestamp) {
        if let Some(pool) = &mut self.node {
            pool.on_unreachable(peer, now, &mut self.actions);
        }
        self.dht.on_unreachable(peer, now, &mut self.actions);
        self.search.on_unreachable(peer, now, &mut self.actions);
        if let Some(app) = &mut self.app {
            app.on_unreachable(peer, now, &mut self.actions);
        }
    }

    /// Hands a finished DHT query to whoever started it.
    fn on_query_done(&mut self, done: DhtDone, now: Timestamp) {
        match done {
            DhtDone::Value { purpose: Purpose::NodeGet { to, req }, record, hops, .. } => {
                let hops = u8::try_from(hops).unwrap_or(u8::MAX);
                let message = RecordReply { req, record, hops }.into();
                self.actions.push(Action::Send { to, message });
            }
            DhtDone::Value { purpose: Purpose::Command { id }, key, record, hops, .. } => {
                self.actions.push(Action::Event(Event::LookupDone { id, key, record, hops, attempts: 1 }));
            }
            DhtDone::Value { purpose: Purpose::Resolve { token }, record, .. } => {
                self.actions.push(Action::Resolved { token, record, asked: true });
            }
            DhtDone::Value { purpose: Purpose::DidCheck, query, record, .. } => {
                if let Some(ix) = &mut self.indexer {
                    ix.finish_did_check(query, record, &mut self.actions);
                }
            }
            DhtDone::Value { .. } => {}
            DhtDone::Providers { purpose: Purpose::Discovery, providers } => {
                if let Some(pool) = &mut self.node {
                    pool.on_providers(&providers, now, &mut self.actions);
                }
            }
            DhtDone::Providers { purpose: Purpose::IndexerCache, providers } => {
                if let Some(ix) = &mut self.indexer {
                    ix.on_providers(&providers, now);
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

    fn apply_actions(&mut self, now: Timestamp) {
        // Failures feed back into the pool, which may act again; bound the rounds defensively.
        for _ in 0..64 {
            if self.actions.is_empty() {
                return;
            }
            std::mem::swap(&mut self.actions, &mut self.batch);
            let mut batch = std::mem::take(&mut self.batch);
            let mut failed: Vec<PeerId> = Vec::new();
            for a in batch.drain(..) {
                match a {
                    Action::Send { to, message } => {
                        if !self.link.send(to, message, now, &mut self.out) && !failed.contains(&to) {
                            failed.push(to);
                        }
                    }
                    Action::Learn(pa) => self.link.learn(pa),
                    Action::Close { peer, reason } => {
                        if self.link.close(peer, reason, &mut self.out) && !failed.contains(&peer) {
                            failed.push(peer);
                        }
                    }
                    Action::Event(e) => self.out.push_back(Output::Event(e)),
                    Action::DiscoverIndexers { want } => {
                        // When the query cannot start it is reported finished and empty.
                        let seeds = self.node.as_ref().map(|p| p.live_by_score()).unwrap_or_default();
                        self.dht.find_providers(want, Purpose::Discovery, &seeds, now, &mut self.actions);
                    }
                    Action::QueryDone(done) => self.on_query_done(done, now),
                    Action::IndexerSeen { peer, fill_rate } => {
                        if let Some(ix) = &mut self.indexer {
                            ix.note_indexer(self.link.peer_addr(&peer), fill_rate, now);
                        }
                    }
                    Action::Strike { peer } => {
                        if let Some(ix) = &mut self.indexer {
                            ix.punish_bad_record(peer, now, &mut self.actions);
                        }
                    }
                    Action::Distrust { indexer } => {
                        if let Some(pool) = &mut self.node {
                            pool.distrust(indexer, now, &mut self.actions);
                        }
                    }
                    Action::Persist(p) => self.out.push_back(Output::Persist(p)),
                    Action::Forget(f) => self.out.push_back(Output::Forget(f)),
                    Action::Resolve { token, key } => match &mut self.node {
                        Some(pool) => pool.resolve(token, key, now, &mut self.actions),
                        None => {
                            let deadline = self.config.lookup_timeout;
                            let purpose = Purpose::Resolve { token };
                            self.dht.find_value(key, purpose, false, deadline, now, &mut self.actions);
                        }
                    },
                    Action::Resolved { token, record, asked } => {
                        if let Some(app) = &mut self.app {
                            app.on_resolved(token, record, asked, now, &mut self.actions);
                        }
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
        self.link.peer_addr(peer).addrs
    }
}

/// An indexer's referenced records: the records, held in its store, of the nodes whose heartbeat
/// names it as their referent.
struct Refs<'a> {
    indexer: Option<&'a IndexerService>,
    dht: &'a Dht,
    now: Timestamp,
}

impl Referenced for Refs<'_> {
    fn each(&self, f: &mut dyn FnMut(&PeerRecord) -> bool) {
        let Some(ix) = self.indexer else { return };
        for p in ix.referent_ids() {
            if let Some(r) = self.dht.local(&RecordKey::Peer(*p), self.now)
                && !f(r)
            {
                return;
            }
        }
    }
}
