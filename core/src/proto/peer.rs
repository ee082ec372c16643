//! [`Peer`]: one daemon's protocol state, routing between the sub-machines.

use super::config::Config;
use super::connections::{Connections, Inbound};
use super::identity::{Addr, Did, Keypair, PeerAddr, PeerId};
use super::indexer::IndexerService;
use super::pool::IndexerPool;
use super::rng::DetRng;
use super::time::Timestamp;
use super::wire::{Message, RefuseReason, Refused, WitnessReport};
use super::{Action, CloseReason, Command, Input, Output};
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
        Peer {
            me,
            did: setup.did,
            roles: setup.roles,
            config: setup.config,
            conns,
            pool,
            indexer,
            out: VecDeque::new(),
            actions: Vec::new(),
            batch: Vec::new(),
            shut_down: false,
        }
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
                    Some(ix) => ix.on_heartbeat(addr, hb, now, &mut self.actions),
                    None => self.refuse(from, hb.req, RefuseReason::NotServed),
                }
            }
            Message::Leave => {
                if let Some(ix) = &mut self.indexer {
                    ix.on_leave(from, now, &mut self.actions);
                }
            }
            Message::CandidatesRequest(req) => match &mut self.indexer {
                Some(ix) => ix.on_candidates_request(from, req, now, &mut self.actions),
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
