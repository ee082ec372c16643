//! The admission gate in front of every request (spec B §9, C §9): never from ourselves, a banned
//! peer refused and disconnected, every request counted in its rate window, strikes reported and
//! bans applied. Refusals go back in the variant of the request they answer.

use super::*;

/// A request being answered, tagged with the mechanism it came in, so its refusal goes back in the
/// same envelope variant (and so to the machine that asked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Req {
    /// A heartbeat or probe.
    Heartbeat(RequestId),
    /// Another request of the indexer service (publish, get, candidates).
    Indexer(RequestId),
    /// A DHT request.
    Dht(RequestId),
    /// A search request.
    Search(RequestId),
}

impl Req {
    /// The request id.
    pub(crate) fn id(self) -> RequestId {
        match self {
            Req::Heartbeat(r) | Req::Indexer(r) | Req::Dht(r) | Req::Search(r) => r,
        }
    }

    /// What the request asked, for events.
    pub(crate) fn kind(self) -> RequestKind {
        match self {
            Req::Heartbeat(_) => RequestKind::Heartbeat,
            Req::Indexer(_) => RequestKind::Indexer,
            Req::Dht(_) => RequestKind::Dht,
            Req::Search(_) => RequestKind::Search,
        }
    }

    /// `refused` in this request's envelope variant.
    pub(crate) fn refusal(self, refused: Refused) -> Envelope {
        match self {
            Req::Heartbeat(_) | Req::Indexer(_) => IndexerMessage::Refused(refused).into(),
            Req::Dht(_) => DhtMessage::Refused(refused).into(),
            Req::Search(_) => SearchMessage::Refused(refused).into(),
        }
    }
}

impl IndexerService {
    /// The gate in front of every request: never from ourselves, a banned peer is refused, and the
    /// request counts in the peer's `kind` window (over the limit: refused, and a strike). Returns
    /// whether to go on.
    pub(super) fn admit_request(
        &mut self,
        peer: PeerId,
        req: Req,
        kind: RateKind,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> bool {
        let banned = self.behaviour.is_banned(&peer, now);
        self.admit(peer, banned, req, kind, now, out)
    }

    /// [`IndexerService::admit_request`] for a peer whose ban was looked up already: `banned`
    /// is whether it is banned at `now`.
    pub(super) fn admit(
        &mut self,
        peer: PeerId,
        banned: bool,
        req: Req,
        kind: RateKind,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> bool {
        if peer == self.me {
            return false;
        }
        if banned {
            self.refuse_banned(peer, req, out);
            return false;
        }
        if let Err(e) = self.behaviour.record(peer, kind, now) {
            self.refuse_admission(peer, req, RefuseReason::RateLimited, e, out);
            return false;
        }
        true
    }

    pub(super) fn refuse(
        &mut self,
        peer: PeerId,
        req: Req,
        reason: RefuseReason,
        suggestions: Vec<PeerAddr>,
        out: &mut Vec<Action>,
    ) {
        out.emit(IndexerOut::Send { to: peer, message: req.refusal(Refused { req: req.id(), reason, suggestions }) });
        out.emit(IndexerOut::Event(Event::RequestRefused { peer, request: req.kind(), reason }));
    }

    /// Refuses a banned peer, drops its session and closes its connection.
    pub(super) fn refuse_banned(&mut self, peer: PeerId, req: Req, out: &mut Vec<Action>) {
        self.close_session(peer, SessionEnd::Rejected, out);
        self.refuse(peer, req, RefuseReason::Banned, Vec::new(), out);
        out.emit(IndexerOut::Close { peer, reason: CloseReason::Banned });
    }

    /// Refuses with `reason` after an admission error, reporting its strike; if the strike banned
    /// the peer, its session is dropped and its connection closed after the refusal.
    pub(super) fn refuse_admission(
        &mut self,
        peer: PeerId,
        req: Req,
        reason: RefuseReason,
        error: AdmissionError,
        out: &mut Vec<Action>,
    ) {
        let banned = match (&error, error.strike()) {
            (_, Some(strike)) => self.punish(peer, strike, out),
            (AdmissionError::Banned { .. }, None) => {
                self.close_session(peer, SessionEnd::Rejected, out);
                true
            }
            _ => false,
        };
        let reason = if matches!(error, AdmissionError::Banned { .. }) { RefuseReason::Banned } else { reason };
        self.refuse(peer, req, reason, Vec::new(), out);
        if banned {
            out.emit(IndexerOut::Close { peer, reason: CloseReason::Banned });
        }
    }

    /// Reports a strike; when it banned the peer, persists the ban (before anything else is
    /// done about it), reports it and drops the session.
    pub(super) fn punish(&mut self, peer: PeerId, strike: Strike, out: &mut Vec<Action>) -> bool {
        out.emit(IndexerOut::Event(Event::PeerStruck { peer, strikes: strike.strikes }));
        match strike.banned_until {
            Some(until) => {
                out.emit(IndexerOut::Persist(Persist::Ban { peer, until }));
                out.emit(IndexerOut::Event(Event::PeerBanned { peer, until }));
                self.close_session(peer, SessionEnd::Rejected, out);
                true
            }
            None => false,
        }
    }
}
