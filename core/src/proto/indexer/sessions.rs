//! Sessions (spec A §7, C §10): keyed by the transport-authenticated peer id (B11), gap-aware
//! online time, DID binding (never clobbered, B10), referents and the witness pool; a session ends
//! on expiry, `Leave`, a ban or a low score, and everything attached to it goes with it.

use super::capacity::move_key;
use super::*;

impl IndexerService {
    pub(super) fn open_session(&mut self, addr: PeerAddr, now: Timestamp) {
        let peer = addr.id;
        self.behaviour.insert_session(peer, Session::new(addr, now));
        self.expiry.insert((now, peer));
    }

    /// Records a heartbeat on an existing session, last seen at `last_seen` (read as the
    /// heartbeat came in, see [`IndexerService::on_heartbeat`]): gap-aware online time and
    /// `last_seen`. The expiry index is left as it is: its entry for the session may now be
    /// early, which the next timer run that reaches it renews (see
    /// [`IndexerService::handle_timeout`]).
    pub(super) fn refresh_session(&mut self, peer: PeerId, last_seen: Timestamp, now: Timestamp) {
        let Some(s) = self.behaviour.session_mut(&peer) else {
            return;
        };
        debug_assert_eq!(s.last_seen, last_seen, "the session changed since the heartbeat came in");
        let gap = now.since(last_seen);
        if gap <= self.config.liveness_interval * 2 {
            s.online_ms = s.online_ms.saturating_add(crate::proto::time::duration_ms(gap));
        }
        if now > last_seen {
            s.last_seen = now;
        }
    }

    /// Applies what an admitted heartbeat tells: its address (`same_addr`: the session's is
    /// `from` already), DID and name (never clobbered by `None`), referent flag, indexer role.
    /// The indices (referents, witnesses, movable sessions) are touched only when what they index
    /// changed.
    pub(super) fn update_session(
        &mut self,
        from: PeerAddr,
        same_addr: bool,
        did: Option<Did>,
        hb: &Heartbeat,
        now: Timestamp,
    ) {
        let peer = from.id;
        let me = self.me;
        let Some(s) = self.behaviour.session_mut(&peer) else {
            return;
        };
        let old_key = move_key(&me, &peer, s);
        s.standing = hb.standing;
        debug_assert_eq!(same_addr, s.addr == from, "the session's address changed since the heartbeat came in");
        if !from.addrs.is_empty() && !same_addr {
            s.addr = from.clone();
        }
        if let Some(did) = did
            && s.did.as_ref() != Some(&did)
        {
            s.did = Some(did);
        }
        if let Some(name) = &hb.name {
            let name = truncate(name, MAX_NAME_LEN);
            if s.name.as_deref() != Some(name) {
                s.name = Some(name.to_string());
            }
        }
        if s.referent != hb.referent {
            s.referent = hb.referent;
            if hb.referent {
                self.referents.insert(peer);
            } else {
                self.referents.remove(&peer);
            }
        }
        if s.is_indexer != hb.is_indexer {
            if hb.is_indexer {
                self.indexer_sessions.insert(peer);
            } else {
                self.indexer_sessions.remove(&peer);
            }
        }
        s.is_indexer = hb.is_indexer;
        // Only non-indexer sessions serve as witnesses to nodes.
        let mut leaves_pool = None;
        match (hb.is_indexer, s.witness_slot) {
            (false, None) => {
                // Slots fit in u32: sessions are bounded by `max_nodes`, far below 2^32.
                s.witness_slot = u32::try_from(self.witness_pool.len()).ok();
                self.witness_pool.push(peer);
            }
            (true, Some(slot)) => {
                s.witness_slot = None;
                leaves_pool = Some(slot);
            }
            _ => {}
        }
        let new_key = move_key(&me, &peer, s);
        if old_key != new_key {
            if let Some(k) = old_key {
                self.capacity.movable.remove(&k);
            }
            if let Some(k) = new_key {
                self.capacity.movable.insert(k);
            }
        }
        if let Some(slot) = leaves_pool {
            self.witness_pool_remove(slot as usize);
        }
        if hb.is_indexer {
            self.note_indexer(from, None, now);
        }
    }

    pub(super) fn witness_pool_remove(&mut self, slot: usize) {
        if slot >= self.witness_pool.len() {
            return;
        }
        self.witness_pool.swap_remove(slot);
        if let Some(moved) = self.witness_pool.get(slot).copied()
            && let Some(s) = self.behaviour.session_mut(&moved)
        {
            s.witness_slot = u32::try_from(slot).ok();
        }
    }

    /// Ends a session and everything attached to it. Returns whether there was one.
    pub(super) fn close_session(&mut self, peer: PeerId, reason: SessionEnd, out: &mut Vec<Action>) -> bool {
        let Some(s) = self.behaviour.remove_session(&peer) else {
            return false;
        };
        if let Some(k) = move_key(&self.me, &peer, &s) {
            self.capacity.movable.remove(&k);
        }
        self.expiry.remove(&(s.indexed, peer));
        if let Some(slot) = s.witness_slot {
            self.witness_pool_remove(slot as usize);
        }
        self.referents.remove(&peer);
        if s.is_indexer {
            self.indexer_sessions.remove(&peer);
        }
        // A node that left is no longer an offload candidate; its batch slot frees at once.
        self.offload.in_batch.remove(&peer);
        self.offload.already_tried.remove(&peer);
        out.emit(IndexerOut::Event(Event::SessionClosed { node: peer, reason }));
        true
    }

    /// The node left (it dropped us from its pool): its session ends at once.
    pub fn on_leave(&mut self, from: PeerId, _now: Timestamp, out: &mut Vec<Action>) {
        self.close_session(from, SessionEnd::Left, out);
    }

    /// Binds a DID to the peer. `Ok(Some)` to store, `Ok(None)` when none was sent, `Err` when the
    /// request is refused (refusal emitted): the peer is banned, or it claims another DID than
    /// the one bound to its key (`DidChanged`, no strikes).
    pub(super) fn check_did(
        &mut self,
        peer: PeerId,
        did: Option<&Did>,
        req: Req,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> Result<Option<Did>, ()> {
        let Some(did) = did else {
            return Ok(None);
        };
        match self.behaviour.check_identity(peer, did, now) {
            Ok(()) => Ok(Some(did.clone())),
            Err(AdmissionError::DidChanged { bound, .. }) => {
                out.emit(IndexerOut::Event(Event::DidChangeRefused { peer, bound, claimed: did.clone() }));
                self.refuse(peer, req, RefuseReason::DidChanged, Vec::new(), out);
                Err(())
            }
            Err(e) => {
                if let Some(strike) = e.strike() {
                    self.punish(peer, strike, out);
                }
                self.refuse_banned(peer, req, out);
                Err(())
            }
        }
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}
