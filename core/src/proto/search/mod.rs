//! Distributed peer search (spec C §15, D §5.3; DESIGN §7): a user finds a peer by name, DID or
//! peer id anywhere in the federation, not only through the indexers of its own node.
//!
//! ## The flow
//!
//! ```text
//! node ──Request{req, query}──▶ emitter (its referent, else its best live indexer)
//!   emitter: hits from its referenced records ──Hits──▶ node
//!   emitter ══ signed MeshQuery on the search mesh (iroh-gossip: HyParView + PlumTree) ══▶ indexers
//!   responder (a referent of a match) ──Found{query, records}──▶ emitter
//!   emitter: verify, dedupe by peer id ──Hits──▶ node     … until nothing new for search_timeout
//!   emitter ──Done──▶ node
//! ```
//!
//! * **Referents.** Each node's heartbeat names one referent (its best-scored indexer). Only
//!   referenced nodes are found: the referent matches against the node's verified record in its
//!   store, and the reference goes with the session or the next heartbeat naming another referent
//!   (the seed never dropped them, C §18.3).
//! * **Hits are signed records**, never bare strings (the seed relayed unauthenticated strings,
//!   C §15.4): the emitter verifies each (signature, expiry, and that it matches the query) and
//!   strikes a responder that sends a forged, altered or unrelated one; the node verifies again and
//!   drops an emitter that relays one from its pool. Both deduplicate by peer id.
//! * **Matching** is the seed's (C §15.2): exact peer id, exact DID, or case-insensitive substring
//!   of the name (Unicode lower case), OR-ed. A search returns at most `search_max_results`, a
//!   batch at most `search_max_batch` records.
//! * **One active search per user** on a node (the seed's `SearchTracker`): a new one cancels the
//!   previous. A search ends when nothing new came for `search_timeout` (the emitter says `Done`;
//!   the node's own idle timer backs it up), at the result cap, or when cancelled.
//! * **Abuse control.** A node's searches count in the indexer's get window (the seed had no
//!   check). Mesh queries are signed by their emitter, carry an expiry and a per-emitter number
//!   (the dedupe id), and each indexer accepts at most `search_mesh_max_per_minute` new queries per
//!   emitter: a query that fails any check is dropped before the mesh forwards it.
//!
//! ## Files
//!
//! `mod.rs` the machine, queries and matching · `client.rs` the node's searches · `serve.rs` the
//! emitter and the responder · `mesh.rs` the iroh-gossip mesh · `messages.rs` its messages.

use crate::proto::action::Sink;
use crate::proto::config::Config;
use crate::proto::identity::{Did, Keypair, PeerAddr, PeerId, SigCheck};
use crate::proto::record::{MAX_NAME_LEN, PeerRecord};
use crate::proto::rng::DetRng;
use crate::proto::time::Timestamp;
use crate::proto::wire::Envelope;
use crate::proto::{Action, Event};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

mod client;
mod mesh;
pub(crate) mod messages;
mod serve;
#[cfg(test)]
mod tests;

pub use mesh::MeshStats;
pub use messages::{MeshMessage, ResourceAsk, ResourceAsked, SearchFound, SearchHits, SearchMessage, SearchRequest};

/// What to find: any of a peer id, a DID, or a name substring (the seed's OR semantics).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchQuery {
    /// Exact peer id.
    pub peer: Option<PeerId>,
    /// Exact DID.
    pub did: Option<Did>,
    /// Case-insensitive substring of the name.
    pub name: Option<String>,
}

/// Why a needle is not a search.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Nothing to search for.
    #[error("the search needle is empty")]
    Empty,
    /// Longer than any name or DID.
    #[error("the search needle is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
}

impl SearchQuery {
    /// The query for a user's needle (DESIGN §6): a peer id (64 hex digits) is matched exactly;
    /// anything else is matched as an exact DID or a name substring.
    pub fn parse(needle: &str) -> Result<SearchQuery, QueryError> {
        let needle = needle.trim();
        if needle.is_empty() {
            return Err(QueryError::Empty);
        }
        if needle.len() > MAX_NAME_LEN.max(Did::MAX_LEN) {
            return Err(QueryError::TooLong);
        }
        if let Ok(peer) = needle.parse::<PeerId>() {
            return Ok(SearchQuery { peer: Some(peer), ..SearchQuery::default() });
        }
        Ok(SearchQuery { peer: None, did: Did::new(needle).ok(), name: Some(needle.to_string()) })
    }

    /// Whether it asks anything, within size limits.
    pub fn is_valid(&self) -> bool {
        let name_ok = self.name.as_ref().is_none_or(|n| !n.is_empty() && n.len() <= MAX_NAME_LEN);
        name_ok && (self.peer.is_some() || self.did.is_some() || self.name.is_some())
    }

    /// Whether `record` matches (C §15.2).
    pub fn matches(&self, record: &PeerRecord) -> bool {
        let b = &record.body;
        self.peer.is_some_and(|p| p == b.peer_id)
            || self.did.as_ref().is_some_and(|d| *d == b.did)
            || self.name.as_ref().is_some_and(|n| !n.is_empty() && b.name.to_lowercase().contains(&n.to_lowercase()))
    }
}

/// The records an indexer may answer searches from: those of the nodes that chose it as their
/// referent, as held (verified) in its store.
pub trait Referenced {
    /// Calls `f` on each referenced record until it returns `false`.
    fn each(&self, f: &mut dyn FnMut(&PeerRecord) -> bool);
}

/// Referenced records matching `query`, at most `limit`, verified as of `now`.
fn matching(refs: &dyn Referenced, query: &SearchQuery, limit: usize, now: Timestamp) -> Vec<PeerRecord> {
    let mut hits = Vec::new();
    if limit == 0 {
        return hits;
    }
    refs.each(&mut |r| {
        if query.matches(r) && r.body.expires_at > now {
            hits.push(r.clone());
        }
        hits.len() < limit
    });
    hits
}

/// How a node's search ended (in [`Event::SearchDone`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchEnd {
    /// Nothing new came for `search_timeout`.
    Idle,
    /// A newer search of the same user, or the application, cancelled it.
    Cancelled,
    /// `search_max_results` hits reached.
    Limit,
    /// No live indexer to ask.
    NoIndexer,
    /// Every indexer asked refused or could not be reached.
    Failed,
    /// The query asks nothing, or too much.
    Invalid,
    /// Too many searches in flight on this node.
    TooMany,
}

/// What the search machine does: its outputs, lifted into the router's [`Action`].
#[derive(Clone, Debug, PartialEq)]
pub enum SearchOut {
    /// Send to a peer.
    Send {
        /// The recipient.
        to: PeerId,
        /// The message.
        message: Envelope,
    },
    /// Remember how to reach a peer (an emitter, a mesh neighbour).
    Learn(PeerAddr),
    /// Report an event.
    Event(Event),
    /// An indexer sent a forged hit: strike it (emitter side, through the indexer's behaviour table).
    Strike {
        /// The responder.
        peer: PeerId,
    },
    /// Our emitter relayed a forged hit: drop it from the pool (node side).
    Distrust {
        /// The indexer.
        indexer: PeerId,
    },
}

/// The search machine: a node's searches and, on an indexer, the emitter, the responder and the
/// search mesh.
#[derive(Debug)]
pub struct SearchService {
    config: Arc<Config>,
    client: client::Client,
    serve: Option<serve::Serve>,
}

impl SearchService {
    /// A search machine. `serve` (an indexer) adds the emitter, the responder and, with a clock
    /// `anchor` from the host, the mesh (without one the indexer answers from its own referents
    /// only).
    pub fn new(
        config: impl Into<Arc<Config>>,
        keypair: &Keypair,
        me_addr: PeerAddr,
        serve: bool,
        anchor: Option<std::time::Instant>,
        rng: DetRng,
        now: Timestamp,
    ) -> SearchService {
        let config = config.into();
        let serve = serve.then(|| serve::Serve::new(&config, keypair.clone(), me_addr, anchor, rng, now));
        SearchService { client: client::Client::default(), config, serve }
    }

    /// Checks search hits and mesh queries through `sigs` (the same results: see [`SigCheck`]).
    pub fn set_sig_check(&mut self, sigs: SigCheck) {
        if let Some(serve) = &mut self.serve {
            serve.set_sig_check(sigs.clone());
        }
        self.client.sigs = sigs;
    }

    /// Starts search `id` of `user` through `indexers` (referent first, then by score).
    pub fn start(
        &mut self,
        (id, user): (u64, String),
        query: SearchQuery,
        indexers: Vec<PeerAddr>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        self.client.start(&self.config, (id, user), query, indexers, now, out);
    }

    /// Sends resource search `id` of `user` (type `all`, DESIGN §9) to the first of `indexers`
    /// (the referent): it reaches every node's apps over the search mesh, and they answer us
    /// directly. Fire and forget: the bridge ends the search when results stop coming.
    pub fn ask(&mut self, (id, user): (u64, String), request: Vec<u8>, indexers: Vec<PeerAddr>, out: &mut Vec<Action>) {
        let via = indexers.into_iter().next();
        if let Some(indexer) = &via {
            let req = self.client.next_request();
            out.emit(SearchOut::Learn(indexer.clone()));
            let ask = ResourceAsk { req, user, request };
            out.emit(SearchOut::Send { to: indexer.id, message: SearchMessage::Ask(ask).into() });
        }
        emit_event(out, Event::ResourceSearchSent { id, via: via.map(|a| a.id) });
    }

    /// Cancels `user`'s search, if any.
    pub fn cancel(&mut self, user: &str, out: &mut Vec<Action>) {
        self.client.cancel_user(user, SearchEnd::Cancelled, out);
    }

    /// A search message from the authenticated `from` (a node's requests have passed the
    /// indexer's gate).
    pub fn on_message(
        &mut self,
        from: PeerId,
        message: SearchMessage,
        refs: &dyn Referenced,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        match message {
            SearchMessage::Hits(h) => self.client.on_hits(&self.config, from, h, now, out),
            SearchMessage::Done { req } => self.client.on_done(from, req, out),
            SearchMessage::Refused(r) => self.client.on_failure(&self.config, from, r.req, now, out),
            // The router checked that `from` is one of our indexers.
            SearchMessage::Asked(a) => {
                if self.client.first_ask(a.origin, now) {
                    let e = Event::ResourceSearchAsked {
                        requester: a.requester,
                        user: a.user,
                        request: a.request,
                        via: from,
                    };
                    emit_event(out, e);
                }
            }
            m => {
                if let Some(s) = &mut self.serve {
                    s.on_message(&self.config, from, m, refs, now, out);
                }
            }
        }
    }

    /// `peer` cannot be reached.
    pub fn on_unreachable(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        self.client.on_unreachable(&self.config, peer, now, out);
        if let Some(s) = &mut self.serve {
            s.on_unreachable(peer, now, out);
        }
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let c = self.client.poll_timeout();
        let s = self.serve.as_ref().and_then(|s| s.poll_timeout());
        c.into_iter().chain(s).min()
    }

    /// Handles due deadlines; `contacts` are routing-table peers the mesh may join through.
    pub fn handle_timeout(
        &mut self,
        contacts: &dyn Fn(usize) -> Vec<PeerAddr>,
        refs: &dyn Referenced,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        self.client.handle_timeout(&self.config, now, out);
        if let Some(s) = &mut self.serve {
            s.handle_timeout(&self.config, contacts, refs, now, out);
        }
    }

    /// Searches this node has in flight: `(user, id, hits so far)`.
    pub fn active(&self) -> Vec<(String, u64, u32)> {
        self.client.active()
    }

    /// Searches this indexer is emitting.
    pub fn emitting(&self) -> usize {
        self.serve.as_ref().map_or(0, |s| s.emitting())
    }

    /// Whether `peer` is a mesh neighbour (its connection is kept open).
    pub fn is_mesh_neighbour(&self, peer: &PeerId) -> bool {
        self.serve.as_ref().is_some_and(|s| s.is_neighbour(peer))
    }

    /// The mesh neighbours.
    pub fn mesh_neighbours(&self) -> Vec<PeerId> {
        self.serve.as_ref().map(|s| s.neighbours()).unwrap_or_default()
    }

    /// The mesh counters.
    pub fn mesh_stats(&self) -> MeshStats {
        self.serve.as_ref().map(|s| s.mesh_stats()).unwrap_or_default()
    }

    /// Whether this indexer runs a mesh.
    pub fn has_mesh(&self) -> bool {
        self.serve.as_ref().is_some_and(|s| s.has_mesh())
    }
}

impl From<SearchMessage> for Envelope {
    fn from(m: SearchMessage) -> Self {
        Envelope::Search(m)
    }
}

pub(crate) fn emit_event(out: &mut Vec<Action>, e: Event) {
    out.emit(SearchOut::Event(e));
}
