//! The indexer's side of search (C §15.3–15.7): the **emitter** (a node's request: local hits, a
//! signed query on the mesh, responders' hits verified and relayed until idle) and the
//! **responder** (a mesh query matched against our referenced records, hits sent straight to the
//! emitter).

use super::mesh::{Delivered, JOIN_PEERS, Mesh, MeshStats};
use super::messages::{ResourceAsk, ResourceAsked, SearchFound, SearchHits, SearchMessage, SearchRequest};
use super::{Referenced, SearchOut, SearchQuery, emit_event, matching};
use crate::proto::action::Sink;
use crate::proto::config::Config;
use crate::proto::identity::{Keypair, PeerAddr, PeerId, SigCheck, Signature};
use crate::proto::rng::DetRng;
use crate::proto::time::Timestamp;
use crate::proto::wire::RequestId;
use crate::proto::{Action, Event};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Domain tag of a mesh query's signature.
const QUERY_DOMAIN: &[u8] = b"ocd/search-query/v1";
/// How long a mesh query stays valid (its dedupe entry lives as long).
const QUERY_LIFETIME: Duration = Duration::from_secs(60);
/// Clock skew tolerated between indexers on a query's expiry.
const QUERY_SKEW: Duration = Duration::from_secs(300);
/// Searches an emitter runs at once, in total and per node.
const MAX_EMITTING: usize = 4096;
const MAX_EMITTING_PER_NODE: usize = 8;
/// Dedupe entries and per-emitter rate windows kept (oldest dropped beyond).
const MAX_SEEN: usize = 65_536;
const MAX_EMITTERS: usize = 4096;

/// The signed part of a mesh query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct QueryBody {
    /// The emitting indexer and where to reach it.
    emitter: PeerAddr,
    /// The emitter's number for this search (with `emitter`, the dedupe id).
    number: u64,
    /// What is looked for.
    wanted: Wanted,
    /// After this instant the query is dropped.
    expires_at: Timestamp,
}

/// What a mesh query looks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Wanted {
    /// Peers: answered from the referenced records, to the emitter.
    Peers(SearchQuery),
    /// Resources (a search of type `all`): put to every referenced node's apps, which answer the
    /// requester directly.
    Resources {
        /// The emitting indexer and its number (repeated from the body, for the nodes).
        origin: (PeerId, u64),
        /// The node that asked.
        requester: PeerId,
        /// Its user.
        user: String,
        /// The request, opaque.
        request: Vec<u8>,
    },
}

impl Wanted {
    fn is_valid(&self, config: &Config) -> bool {
        match self {
            Wanted::Peers(q) => q.is_valid(),
            Wanted::Resources { user, request, .. } => {
                user.len().saturating_add(request.len()) <= config.app_max_payload
            }
        }
    }
}

/// A mesh query: the gossip payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct MeshQuery {
    body: QueryBody,
    signature: Signature,
}

impl QueryBody {
    fn signing_bytes(&self) -> Vec<u8> {
        postcard::to_extend(self, QUERY_DOMAIN.to_vec()).unwrap_or_default()
    }
}

/// A search this indexer emits for a node.
#[derive(Debug)]
struct Emitted {
    node: PeerId,
    req: RequestId,
    query: SearchQuery,
    seen: BTreeSet<PeerId>,
    idle: Timestamp,
}

#[derive(Debug)]
pub(super) struct Serve {
    keypair: Keypair,
    addr: PeerAddr,
    mesh: Option<Mesh>,
    emitted: BTreeMap<u64, Emitted>,
    by_node: BTreeMap<(PeerId, RequestId), u64>,
    next_number: u64,
    gate: QueryGate,
    /// How responders' hits are checked.
    sigs: SigCheck,
}

/// What a mesh query must pass before the mesh forwards it: dedupe ids and per-emitter rates.
#[derive(Debug, Default)]
pub(super) struct QueryGate {
    /// Mesh queries seen: `(emitter, number)` → expiry, and the expiry index.
    seen: BTreeMap<(PeerId, u64), Timestamp>,
    by_expiry: BTreeSet<(Timestamp, PeerId, u64)>,
    /// New queries accepted per emitter over the last minute.
    rates: BTreeMap<PeerId, VecDeque<Timestamp>>,
    /// How the emitters' signatures are checked.
    sigs: SigCheck,
}

impl Serve {
    pub(super) fn new(
        config: &Config,
        keypair: Keypair,
        addr: PeerAddr,
        anchor: Option<std::time::Instant>,
        rng: DetRng,
        now: Timestamp,
    ) -> Serve {
        let mesh = anchor.map(|a| Mesh::new(config, addr.clone(), a, rng, now));
        Serve {
            keypair,
            addr,
            mesh,
            emitted: BTreeMap::new(),
            by_node: BTreeMap::new(),
            next_number: 0,
            gate: QueryGate::default(),
            sigs: SigCheck::direct(),
        }
    }

    /// Checks hits and mesh queries through `sigs` (the same results: see [`SigCheck`]).
    pub(super) fn set_sig_check(&mut self, sigs: SigCheck) {
        self.gate.sigs = sigs.clone();
        self.sigs = sigs;
    }

    pub(super) fn on_message(
        &mut self,
        config: &Config,
        from: PeerId,
        m: SearchMessage,
        refs: &dyn Referenced,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        match m {
            SearchMessage::Request(r) => self.on_request(config, from, r, refs, now, out),
            SearchMessage::Cancel { req } => {
                if let Some(n) = self.by_node.remove(&(from, req)) {
                    self.emitted.remove(&n);
                }
            }
            SearchMessage::Found(f) => self.on_found(config, from, f, now, out),
            SearchMessage::Ask(a) => self.on_ask(config, from, a, refs, now, out),
            SearchMessage::Mesh(m) => {
                let mut got = Delivered::new();
                let Some(mesh) = &mut self.mesh else { return };
                let (gate, me) = (&mut self.gate, self.keypair.peer_id());
                let accept = |content: &[u8]| gate.accept(config, me, content, now);
                mesh.on_message(from, m, accept, now, out, &mut got);
                self.deliver(config, got, refs, now, out);
            }
            // Replies to nodes are handled by the client.
            SearchMessage::Hits(_)
            | SearchMessage::Done { .. }
            | SearchMessage::Refused(_)
            | SearchMessage::Asked(_) => {}
        }
    }

    /// A node's search, past the indexer's gate: local hits, then the query on the mesh.
    fn on_request(
        &mut self,
        config: &Config,
        node: PeerId,
        r: SearchRequest,
        refs: &dyn Referenced,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        if self.by_node.contains_key(&(node, r.req)) {
            return;
        }
        let per_node = self.by_node.range((node, RequestId(0))..=(node, RequestId(u64::MAX))).count();
        if !r.query.is_valid() || self.emitted.len() >= MAX_EMITTING || per_node >= MAX_EMITTING_PER_NODE {
            out.emit(SearchOut::Send { to: node, message: SearchMessage::Done { req: r.req }.into() });
            return;
        }
        self.next_number += 1;
        let number = self.next_number;
        let local = matching(refs, &r.query, config.search_max_results.min(config.search_max_batch), now);
        emit_event(out, Event::SearchEmitted { node, local_hits: u32::try_from(local.len()).unwrap_or(u32::MAX) });
        let mut e =
            Emitted { node, req: r.req, query: r.query, seen: BTreeSet::new(), idle: now + config.search_timeout };
        e.seen.extend(local.iter().map(|h| h.body.peer_id));
        // Always answered at once, if only with no hit: the node knows its emitter took the search
        // (and tries another indexer when none answers).
        out.emit(SearchOut::Send {
            to: node,
            message: SearchMessage::Hits(SearchHits { req: r.req, records: local }).into(),
        });
        if let Some(mesh) = &mut self.mesh {
            let body = QueryBody {
                emitter: self.addr.clone(),
                number,
                wanted: Wanted::Peers(e.query.clone()),
                expires_at: now + QUERY_LIFETIME,
            };
            let signature = self.keypair.sign(&body.signing_bytes());
            let me = self.keypair.peer_id();
            self.gate.note((me, number), body.expires_at);
            let payload = postcard::to_stdvec(&MeshQuery { body, signature }).unwrap_or_default();
            let mut got = Delivered::new();
            mesh.broadcast(Bytes::from(payload), now, out, &mut got);
            self.by_node.insert((node, e.req), number);
            self.emitted.insert(number, e);
            self.deliver(config, got, refs, now, out);
        } else {
            self.by_node.insert((node, e.req), number);
            self.emitted.insert(number, e);
        }
    }

    /// A node's resource search of type `all`, past the indexer's gate: put to the nodes that
    /// reference this indexer, and signed onto the mesh for the others' (DESIGN §9).
    fn on_ask(
        &mut self,
        config: &Config,
        node: PeerId,
        a: ResourceAsk,
        refs: &dyn Referenced,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        self.next_number += 1;
        let number = self.next_number;
        let origin = (self.keypair.peer_id(), number);
        let wanted = Wanted::Resources { origin, requester: node, user: a.user, request: a.request };
        if !wanted.is_valid(config) {
            return;
        }
        let delivered = ask_referenced(refs, &wanted, out);
        emit_event(out, Event::ResourceSearchEmitted { node, delivered });
        let Some(mesh) = &mut self.mesh else { return };
        let body = QueryBody { emitter: self.addr.clone(), number, wanted, expires_at: now + QUERY_LIFETIME };
        let signature = self.keypair.sign(&body.signing_bytes());
        self.gate.note((self.keypair.peer_id(), number), body.expires_at);
        let payload = postcard::to_stdvec(&MeshQuery { body, signature }).unwrap_or_default();
        let mut got = Delivered::new();
        mesh.broadcast(Bytes::from(payload), now, out, &mut got);
        self.deliver(config, got, refs, now, out);
    }

    /// A responder's hits: each verified and matched against the query; new ones relayed.
    fn on_found(&mut self, config: &Config, from: PeerId, f: SearchFound, now: Timestamp, out: &mut Vec<Action>) {
        let Some(e) = self.emitted.get_mut(&f.query) else {
            return;
        };
        let mut fresh = Vec::new();
        let mut forged = false;
        for r in f.records.into_iter().take(config.search_max_batch) {
            if r.verify_with(now, &self.sigs).is_err() || !e.query.matches(&r) {
                forged = true;
                emit_event(out, Event::ForgedHitDropped { from, owner: r.body.peer_id });
                continue;
            }
            if e.seen.len() < config.search_max_results && e.seen.insert(r.body.peer_id) {
                fresh.push(r);
            }
        }
        if forged {
            out.emit(SearchOut::Strike { peer: from });
        }
        if fresh.is_empty() {
            return;
        }
        e.idle = now + config.search_timeout;
        let (node, req) = (e.node, e.req);
        out.emit(SearchOut::Send { to: node, message: SearchMessage::Hits(SearchHits { req, records: fresh }).into() });
        if e.seen.len() >= config.search_max_results {
            self.end(f.query, out);
        }
    }

    /// Ends an emitted search: `Done` to its node.
    fn end(&mut self, number: u64, out: &mut Vec<Action>) {
        if let Some(e) = self.emitted.remove(&number) {
            self.by_node.remove(&(e.node, e.req));
            out.emit(SearchOut::Send { to: e.node, message: SearchMessage::Done { req: e.req }.into() });
        }
    }

    /// Queries the mesh delivered: answered from our referenced records, straight to the emitter.
    fn deliver(
        &mut self,
        config: &Config,
        got: Delivered,
        refs: &dyn Referenced,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let me = self.keypair.peer_id();
        for (content, _from) in got {
            let Ok(q) = postcard::from_bytes::<MeshQuery>(&content) else { continue };
            if q.body.emitter.id == me {
                continue;
            }
            let query = match &q.body.wanted {
                Wanted::Peers(query) => query,
                // The origin must be the signed emitter's: no indexer speaks for another.
                wanted @ Wanted::Resources { origin, .. } => {
                    if *origin == (q.body.emitter.id, q.body.number) {
                        ask_referenced(refs, wanted, out);
                    }
                    continue;
                }
            };
            let hits = matching(refs, query, config.search_max_batch, now);
            if hits.is_empty() {
                continue;
            }
            let to = q.body.emitter.id;
            out.emit(SearchOut::Learn(q.body.emitter));
            let message = SearchMessage::Found(SearchFound { query: q.body.number, records: hits });
            out.emit(SearchOut::Send { to, message: message.into() });
        }
    }

    pub(super) fn on_unreachable(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        let mut got = Delivered::new();
        if let Some(mesh) = &mut self.mesh {
            mesh.on_unreachable(peer, now, out, &mut got);
        }
        // A disconnection delivers nothing (PlumTree only moves the peer out of its sets).
        let _ = got;
    }

    pub(super) fn poll_timeout(&self) -> Option<Timestamp> {
        let idle = self.emitted.values().map(|e| e.idle).min();
        let seen = self.gate.by_expiry.first().map(|(t, _, _)| *t);
        let mesh = self.mesh.as_ref().and_then(|m| m.poll_timeout());
        [idle, seen, mesh].into_iter().flatten().min()
    }

    pub(super) fn handle_timeout(
        &mut self,
        config: &Config,
        contacts: &dyn Fn(usize) -> Vec<PeerAddr>,
        refs: &dyn Referenced,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let due: Vec<u64> = self.emitted.iter().filter(|(_, e)| e.idle <= now).map(|(n, _)| *n).collect();
        for n in due {
            self.end(n, out);
        }
        self.gate.expire(now);
        let mut got = Delivered::new();
        if let Some(mesh) = &mut self.mesh {
            mesh.handle_timeout(now, out, &mut got);
            if mesh.wants_join(now) {
                mesh.join(contacts(JOIN_PEERS), now, out, &mut got);
            }
        }
        self.deliver(config, got, refs, now, out);
    }

    pub(super) fn emitting(&self) -> usize {
        self.emitted.len()
    }

    pub(super) fn neighbours(&self) -> Vec<PeerId> {
        self.mesh.as_ref().map(|m| m.neighbours().iter().copied().collect()).unwrap_or_default()
    }

    pub(super) fn is_neighbour(&self, peer: &PeerId) -> bool {
        self.mesh.as_ref().is_some_and(|m| m.neighbours().contains(peer))
    }

    pub(super) fn mesh_stats(&self) -> MeshStats {
        self.mesh.as_ref().map(|m| m.stats).unwrap_or_default()
    }

    pub(super) fn has_mesh(&self) -> bool {
        self.mesh.is_some()
    }
}

impl QueryGate {
    fn note(&mut self, (emitter, number): (PeerId, u64), expires: Timestamp) {
        if self.seen.len() >= MAX_SEEN
            && let Some((_, p, n)) = self.by_expiry.pop_first()
        {
            self.seen.remove(&(p, n));
        }
        if self.seen.insert((emitter, number), expires).is_none() {
            self.by_expiry.insert((expires, emitter, number));
        }
    }

    fn expire(&mut self, now: Timestamp) {
        while let Some((t, p, n)) = self.by_expiry.first().copied() {
            if t > now {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&(p, n));
        }
        let horizon = now.saturating_sub(Duration::from_secs(60));
        self.rates.retain(|_, w| w.back().is_some_and(|t| *t > horizon));
    }

    /// Judges a gossip payload before the mesh forwards it: a signed query of its emitter, not
    /// expired nor too far ahead, and — when new — within the emitter's rate.
    pub(super) fn accept(&mut self, config: &Config, me: PeerId, content: &[u8], now: Timestamp) -> bool {
        let Ok(q) = postcard::from_bytes::<MeshQuery>(content) else { return false };
        let b = &q.body;
        if b.expires_at <= now || b.expires_at > now + QUERY_LIFETIME + QUERY_SKEW || !b.wanted.is_valid(config) {
            return false;
        }
        if self.sigs.verify(&b.emitter.id, &b.signing_bytes(), &q.signature).is_err() {
            return false;
        }
        let key = (b.emitter.id, b.number);
        if self.seen.contains_key(&key) || b.emitter.id == me {
            return true;
        }
        if !self.rates.contains_key(&b.emitter.id) && self.rates.len() >= MAX_EMITTERS {
            return false;
        }
        let window = self.rates.entry(b.emitter.id).or_default();
        let horizon = now.saturating_sub(Duration::from_secs(60));
        while window.front().is_some_and(|t| *t <= horizon) {
            window.pop_front();
        }
        if window.len() >= config.search_mesh_max_per_minute {
            return false;
        }
        window.push_back(now);
        self.note(key, b.expires_at);
        true
    }
}

/// Puts a resource search to every node that references this indexer (but its requester); how
/// many.
fn ask_referenced(refs: &dyn Referenced, wanted: &Wanted, out: &mut Vec<Action>) -> u32 {
    let Wanted::Resources { origin, requester, user, request } = wanted else { return 0 };
    let mut nodes = Vec::new();
    refs.each(&mut |r| {
        if r.body.peer_id != *requester {
            nodes.push(r.body.peer_id);
        }
        true
    });
    for to in &nodes {
        let asked =
            ResourceAsked { origin: *origin, requester: *requester, user: user.clone(), request: request.clone() };
        out.emit(SearchOut::Send { to: *to, message: SearchMessage::Asked(asked).into() });
    }
    u32::try_from(nodes.len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
pub(super) mod tests_support {
    use super::*;

    pub(in crate::proto::search) type Gate = QueryGate;

    fn payload(emitter: &Keypair, number: u64, expires_at: Timestamp, signer: &Keypair) -> Vec<u8> {
        let body = QueryBody {
            emitter: PeerAddr::id_only(emitter.peer_id()),
            number,
            wanted: Wanted::Peers(SearchQuery::parse("x").unwrap_or_default()),
            expires_at,
        };
        let signature = signer.sign(&body.signing_bytes());
        postcard::to_stdvec(&MeshQuery { body, signature }).unwrap_or_default()
    }

    /// A query signed by its emitter.
    pub(in crate::proto::search) fn signed_query_payload(
        emitter: &Keypair,
        number: u64,
        _now: Timestamp,
        expires_at: Timestamp,
    ) -> Vec<u8> {
        payload(emitter, number, expires_at, emitter)
    }

    /// A query claiming `emitter` but signed by another key.
    pub(in crate::proto::search) fn forged_query_payload(emitter: &Keypair, number: u64, now: Timestamp) -> Vec<u8> {
        payload(emitter, number, now + Duration::from_secs(30), &Keypair::derive(99, "forger"))
    }

    /// The query inside a payload.
    pub(in crate::proto::search) fn decode_query(content: &[u8]) -> Option<SearchQuery> {
        postcard::from_bytes::<MeshQuery>(content).ok().and_then(|q| match q.body.wanted {
            Wanted::Peers(query) => Some(query),
            Wanted::Resources { .. } => None,
        })
    }
}
