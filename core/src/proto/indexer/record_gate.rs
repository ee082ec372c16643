//! The record gate (spec C §14): publishes and records carried by heartbeats, record gets and DHT
//! requests, behind the "is this peer known" check, the publish and get windows, and the DID
//! binding; a bad record costs two strikes. The store itself is the DHT's, reached through
//! [`RecordDesk`] — the synchronous part the indexer needs in the same step (the expiry it holds
//! goes into the very heartbeat response), kept narrow so the role is unit-tested on a plain store.

use super::*;

/// What the indexer role needs from the record store and the DHT (implemented by
/// [`Dht`](super::dht::Dht); unit tests use a plain store).
pub trait RecordDesk {
    /// A record handed over by its owner `from` (publish, or embedded in a heartbeat); stored in
    /// the DHT too when `replicate` (see [`Dht::offer_record`](super::dht::Dht::offer_record)).
    fn offer(
        &mut self,
        from: PeerId,
        record: PeerRecord,
        replicate: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> Offer;
    /// `peer` names us its referent: the version of its record held is stored in the DHT, unless
    /// this version already was (by us, or by its previous referent: the replicas are asked
    /// first, see [`Dht::replicate_held`](super::dht::Dht::replicate_held)).
    fn replicate_held(&mut self, peer: &PeerId, now: Timestamp, out: &mut Vec<Action>);
    /// The expiry of `peer`'s record held and served.
    fn held_expiry(&self, peer: &PeerId, now: Timestamp) -> Option<Timestamp>;
    /// Starts the DHT spot check of `did` (a heartbeat's DID challenge).
    fn check_did(&mut self, did: &Did, now: Timestamp, out: &mut Vec<Action>) -> DidCheck;
    /// The key `did` is bound to in the store, if any.
    fn did_owner(&self, did: &Did, now: Timestamp) -> Option<PeerId>;
}

/// How a DID spot check goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DidCheck {
    /// A DHT query runs; its result is handed to [`IndexerService::finish_did_check`].
    Pending(QueryId),
    /// Answered at once (no other indexer to ask): the record found, if any.
    Answered(Option<PeerRecord>),
}

/// What became of a record handed over by its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RecordTaken {
    /// Held (with its expiry), or being checked (`None`).
    Held(Option<Timestamp>),
    /// Refused (struck, not banned).
    Refused,
    /// Refused, and the refusal (and a close, when it banned the peer) already emitted.
    Answered,
}

impl IndexerService {
    /// A node publishes its record (C §14.2): rate-limited with the publish window, the record must
    /// be the sender's own and bound to the DID it uses; a bad one costs two strikes.
    pub fn on_publish(
        &mut self,
        from: PeerId,
        publish: Publish,
        desk: &mut dyn RecordDesk,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        if self.config.blocked_peers.contains(&from) {
            self.refuse(from, Req::Indexer(publish.req), RefuseReason::Unknown, Vec::new(), out);
            return;
        }
        if !self.admit_request(from, Req::Indexer(publish.req), RateKind::Publish, now, out) {
            return;
        }
        let req = Req::Indexer(publish.req);
        match self.take_record(from, publish.record, true, req, desk, now, out) {
            RecordTaken::Held(expires) => {
                out.emit(IndexerOut::Send { to: from, message: Published { req: req.id(), expires }.into() })
            }
            RecordTaken::Refused => self.refuse(from, req, RefuseReason::BadRecord, Vec::new(), out),
            RecordTaken::Answered => {}
        }
    }

    /// The "is this peer known" gate (C §14.1) plus the get window, in front of record gets:
    /// a session, a trusted peer, or a valid record held (`known_record`) passes; a blocked peer
    /// never does. Refuses and returns `false` otherwise.
    pub(crate) fn admit_get(
        &mut self,
        from: PeerId,
        req: Req,
        known_record: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> bool {
        if self.behaviour.is_banned(&from, now) {
            self.refuse_banned(from, req, out);
            return false;
        }
        if !self.is_known(&from, known_record) {
            self.refuse(from, req, RefuseReason::Unknown, Vec::new(), out);
            return false;
        }
        self.admit_request(from, req, RateKind::Get, now, out)
    }

    /// The gate in front of DHT requests: never a blocked or banned peer; requests of DHT clients
    /// (`server == false`, i.e. nodes) count in the get window, those of other indexers do not.
    pub(crate) fn admit_dht(
        &mut self,
        from: PeerId,
        req: Req,
        server: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> bool {
        if from == self.me {
            return false;
        }
        if self.config.blocked_peers.contains(&from) {
            self.refuse(from, req, RefuseReason::Unknown, Vec::new(), out);
            return false;
        }
        if server {
            if self.behaviour.is_banned(&from, now) {
                self.refuse_banned(from, req, out);
                return false;
            }
            return true;
        }
        self.admit_request(from, req, RateKind::Get, now, out)
    }

    /// Strikes `peer` for a bad record (invalid signature or shape, a foreign DID, or an invalid
    /// `STORE`): two strikes; closes it when that bans it.
    pub fn punish_bad_record(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        let strike = self.behaviour.record_bad_signature(peer, now);
        if self.punish(peer, strike, out) {
            out.emit(IndexerOut::Close { peer, reason: CloseReason::Banned });
        }
    }

    /// The DHT spot check started for a held heartbeat response ended: send it.
    pub fn finish_did_check(&mut self, query: QueryId, record: Option<PeerRecord>, out: &mut Vec<Action>) {
        if let Some((peer, mut response)) = self.did_checks.remove(&query) {
            response.did_found = Some(record.is_some());
            response.did_record = record;
            out.emit(IndexerOut::Send { to: peer, message: response.into() });
        }
    }

    pub(super) fn is_known(&self, peer: &PeerId, known_record: bool) -> bool {
        !self.config.blocked_peers.contains(peer)
            && (self.behaviour.has_session(peer) || self.config.trusted_peers.contains(peer) || known_record)
    }

    /// Hands a record from its owner to the desk after the identity and publish-window checks, to
    /// be stored in the DHT too when `replicate`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn take_record(
        &mut self,
        peer: PeerId,
        record: PeerRecord,
        replicate: bool,
        req: Req,
        desk: &mut dyn RecordDesk,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> RecordTaken {
        // A DID bound to another key is a theft attempt: the store refuses it and it is struck
        // below. Otherwise the DID must be the one this peer is bound to (or becomes its binding);
        // another one is a changed DID, refused without strikes.
        let foreign = desk.did_owner(&record.body.did, now).is_some_and(|o| o != peer);
        if !foreign {
            match self.check_did(peer, Some(&record.body.did), req, now, out) {
                Err(()) => return RecordTaken::Answered,
                Ok(None) => return RecordTaken::Refused,
                Ok(Some(_)) => {}
            }
        }
        let owner = record.body.peer_id;
        match desk.offer(peer, record, replicate, now, out) {
            Offer::Held(t) => RecordTaken::Held(Some(t)),
            Offer::Checking => RecordTaken::Held(None),
            Offer::Refused(StoreError::Stale) => RecordTaken::Held(desk.held_expiry(&peer, now)),
            Offer::Refused(e) => {
                let reason = match e {
                    StoreError::ForeignDid { .. } => StoreRefusal::ForeignDid,
                    _ => StoreRefusal::Invalid,
                };
                out.emit(IndexerOut::Event(Event::RecordRejected { from: peer, owner, reason }));
                let strike = self.behaviour.record_bad_signature(peer, now);
                if self.punish(peer, strike, out) {
                    self.refuse(peer, req, RefuseReason::Banned, Vec::new(), out);
                    out.emit(IndexerOut::Close { peer, reason: CloseReason::Banned });
                    return RecordTaken::Answered;
                }
                RecordTaken::Refused
            }
        }
    }
}

/// A request of the indexer service from the authenticated `from`: served by the indexer role, or
/// refused `NotServed` by a peer without it.
pub fn on_request(
    indexer: Option<&mut IndexerService>,
    from: PeerAddr,
    m: IndexerMessage,
    desk: &mut Dht,
    now: Timestamp,
    out: &mut Vec<Action>,
) {
    let Some(ix) = indexer else {
        if let Some(req) = m.request_id() {
            not_served(from.id, Req::Indexer(req), out);
        }
        return;
    };
    let peer = from.id;
    match m {
        IndexerMessage::Heartbeat(hb) => ix.on_heartbeat(from, *hb, desk, now, out),
        IndexerMessage::Publish(p) => ix.on_publish(peer, p, desk, now, out),
        IndexerMessage::GetRecord(g) => {
            let known = desk.knows(&peer, now);
            if ix.admit_get(peer, Req::Indexer(g.req), known, now, out) {
                let deadline = ix.config.lookup_timeout;
                desk.find_value(g.key, Purpose::NodeGet { to: peer, req: g.req }, false, deadline, now, out);
            }
        }
        IndexerMessage::Leave => ix.on_leave(peer, now, out),
        IndexerMessage::CandidatesRequest(c) => {
            let known = desk.knows(&peer, now);
            ix.on_candidates_request(peer, c, known, now, out);
        }
        // Replies are routed to the node role, never here.
        IndexerMessage::HeartbeatResponse(_)
        | IndexerMessage::Refused(_)
        | IndexerMessage::CandidatesResponse(_)
        | IndexerMessage::Published(_)
        | IndexerMessage::RecordReply(_) => {}
    }
}

/// A DHT request from the authenticated `from`, behind the indexer's gate: never a blocked or
/// banned peer, clients counted in the get window; a `STORE` of an invalid record strikes its
/// sender. A peer without the indexer role refuses it `NotServed`.
pub fn on_dht_request(
    indexer: Option<&mut IndexerService>,
    from: PeerAddr,
    m: DhtMessage,
    dht: &mut Dht,
    now: Timestamp,
    out: &mut Vec<Action>,
) {
    let Some((req, server)) = m.request() else {
        return;
    };
    let Some(ix) = indexer else {
        not_served(from.id, Req::Dht(req), out);
        return;
    };
    let peer = from.id;
    if ix.admit_dht(peer, Req::Dht(req), server, now, out) && dht.on_request(from, m, now, out).is_some() {
        ix.punish_bad_record(peer, now, out);
    }
}

/// The gate in front of a node's search request (DESIGN §7): the "is this peer known" check and
/// the get window, like a record get (the seed checked neither rate nor behaviour, C §15.3). A
/// cancellation passes for any known peer. A peer without the indexer role refuses `NotServed`.
pub fn admit_search(
    indexer: Option<&mut IndexerService>,
    from: PeerId,
    m: &SearchMessage,
    known_record: bool,
    now: Timestamp,
    out: &mut Vec<Action>,
) -> bool {
    // A peer search and a resource search each count in the node's get window.
    let req = match m {
        SearchMessage::Request(r) => r.req,
        SearchMessage::Ask(a) => a.req,
        _ => return indexer.is_some_and(|ix| ix.is_known(&from, known_record)),
    };
    let Some(ix) = indexer else {
        not_served(from, Req::Search(req), out);
        return false;
    };
    ix.admit_get(from, Req::Search(req), known_record, now, out)
}

/// Refuses a request this peer does not serve (it is not an indexer).
fn not_served(to: PeerId, req: Req, out: &mut Vec<Action>) {
    let refused = Refused { req: req.id(), reason: RefuseReason::NotServed, suggestions: Vec::new() };
    out.emit(IndexerOut::Send { to, message: req.refusal(refused) });
}
