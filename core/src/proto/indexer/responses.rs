//! Heartbeat flows and responses (spec C §10–§12): probes, regular heartbeats, and the response
//! with raw metrics, challenge answers, witnesses and suggestions.

use super::*;

impl IndexerService {
    /// A heartbeat (regular or probe) from the transport-authenticated `from`. A record it
    /// carries is handed to `desk` once the heartbeat is admitted.
    pub fn on_heartbeat(
        &mut self,
        from: PeerAddr,
        hb: Heartbeat,
        desk: &mut dyn RecordDesk,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let peer = from.id;
        out.emit(IndexerOut::Event(Event::HeartbeatReceived { node: peer }));
        // At scale, the first lookup of the peer in each table a heartbeat reads is a cache (and
        // TLB) miss, and in a hash table of boxed entries two in a row (the bucket, then the
        // entry). The peer's behaviour record and its session are one entry of one table
        // (`admission.rs`): one probe finds both (is the peer banned; when was its session last
        // seen, and is it reached at the same address). The record store's bucket (the expiry of
        // the peer's record held) is read right after, before anything depends on the entry, so
        // that the processor overlaps the two tables' misses instead of taking them in turn
        // (issue 13). The values stay right until they are used: the gate returns false whenever
        // it ends the session, and nothing writes to the store before the response unless the
        // heartbeat carries a record or names us its referent (then the expiry is read again).
        let entry = self.behaviour.entry(&peer);
        let held = desk.held_expiry(&peer, now);
        let banned = entry.is_some_and(|e| e.banned_at(now));
        let session = entry.and_then(|e| e.session()).map(|s| (s.last_seen, s.addr == from));
        if !self.admit(peer, banned, Req::Heartbeat(hb.req), RateKind::Heartbeat, now, out) {
            return;
        }
        match hb.kind {
            HeartbeatKind::Probe => self.on_probe(peer, session.is_some(), hb, held, desk, now, out),
            HeartbeatKind::Regular => self.on_regular(from, session, hb, held, desk, now, out),
        }
    }

    /// A probe from `peer`, which has a session here if `has_session`; `held` is the expiry of
    /// its record held, read as the probe came in.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_probe(
        &mut self,
        peer: PeerId,
        has_session: bool,
        hb: Heartbeat,
        held: Option<Timestamp>,
        desk: &mut dyn RecordDesk,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        if !has_session {
            // A probe asks "could I join you now?": answer as the prober's first regular heartbeat
            // would be answered, without using the burst guard. Otherwise a node admits us after
            // the probe, is refused `Busy` on its next heartbeat, and loops. Full, we could still
            // take a short prober by moving a node with spare indexers (`capacity.rs`).
            let standing = hb.standing;
            if self.behaviour.session_count() >= self.config.max_nodes
                && !(standing.is_short() && self.movable_session().is_some())
            {
                let suggestions = self.capacity_suggestions(peer, &standing);
                self.refuse(peer, Req::Heartbeat(hb.req), RefuseReason::Full, suggestions, out);
                return;
            }
            if self.burst.check(now).is_err() || self.defers_to_short(&standing, now) {
                self.note_busy(&standing, now);
                let suggestions = self.capacity_suggestions(peer, &standing);
                self.refuse(peer, Req::Heartbeat(hb.req), RefuseReason::Busy, suggestions, out);
                return;
            }
        }
        // A probe names the prober's DID: one that changed for a known key is refused here too,
        // or a node would see us live after each probe and be refused at its next heartbeat.
        if self.check_did(peer, hb.did.as_ref(), Req::Heartbeat(hb.req), now, out).is_err() {
            return;
        }
        self.respond(peer, &hb, true, Some(held), desk, now, out);
    }

    /// A regular heartbeat from `from`. `session` is, if it has one, when its session was last
    /// seen and whether the session's address is `from`; `held` the expiry of its record held;
    /// both read as the heartbeat came in.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_regular(
        &mut self,
        from: PeerAddr,
        session: Option<(Timestamp, bool)>,
        mut hb: Heartbeat,
        held: Option<Timestamp>,
        desk: &mut dyn RecordDesk,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let peer = from.id;
        // Still the expiry the response carries, unless the store may change on the way.
        let held = (hb.record.is_none() && !hb.referent).then_some(held);
        if let Some((last_seen, same_addr)) = session {
            let Ok(did) = self.check_did(peer, hb.did.as_ref(), Req::Heartbeat(hb.req), now, out) else {
                return;
            };
            self.refresh_session(peer, last_seen, now);
            let score = self.session(&peer).map_or(0.0, |v| v.admission_score);
            let age = self.behaviour.session(&peer).map_or(Duration::ZERO, |s| now.since(s.first_seen));
            if score < self.config.dynamic_min_score(age) {
                self.close_session(peer, SessionEnd::Rejected, out);
                self.refuse(peer, Req::Heartbeat(hb.req), RefuseReason::LowScore, Vec::new(), out);
                return;
            }
            self.update_session(from, same_addr, did, &hb, now);
        } else {
            let standing = hb.standing;
            if self.take_moved(&peer, &standing) {
                // We gave its slot to a short node: it keeps its minimum elsewhere.
                let suggestions = self.pick_suggestions(peer, FULL_REFUSAL_SUGGESTIONS, false);
                self.refuse(peer, Req::Heartbeat(hb.req), RefuseReason::Moved, suggestions, out);
                return;
            }
            if self.burst.check(now).is_err() || self.defers_to_short(&standing, now) {
                self.note_busy(&standing, now);
                let suggestions = self.capacity_suggestions(peer, &standing);
                self.refuse(peer, Req::Heartbeat(hb.req), RefuseReason::Busy, suggestions, out);
                return;
            }
            // Full: a short node takes the slot of a node with spare indexers, nobody else gets in.
            let mover = if self.behaviour.session_count() >= self.config.max_nodes {
                match self.movable_session().filter(|_| standing.is_short()) {
                    Some(victim) => Some(victim),
                    None => {
                        let suggestions = self.capacity_suggestions(peer, &standing);
                        self.refuse(peer, Req::Heartbeat(hb.req), RefuseReason::Full, suggestions, out);
                        return;
                    }
                }
            } else {
                None
            };
            let Ok(did) = self.check_did(peer, hb.did.as_ref(), Req::Heartbeat(hb.req), now, out) else {
                return;
            };
            let score = admission_score(1.0, self.behaviour.strikes(&peer), self.config.strike_threshold);
            if score < self.config.dynamic_min_score(Duration::ZERO) {
                self.refuse(peer, Req::Heartbeat(hb.req), RefuseReason::LowScore, Vec::new(), out);
                return;
            }
            if let Some(victim) = mover {
                self.move_session(victim, now, out);
            }
            self.burst.record(now);
            self.open_session(from.clone(), now);
            out.emit(IndexerOut::Event(Event::SessionOpened { node: peer }));
            self.update_session(from, true, did, &hb, now);
        }
        if let Some(record) = hb.record.take() {
            let counted = match self.behaviour.record(peer, RateKind::Publish, now) {
                Ok(()) => true,
                Err(e) => {
                    if let Some(strike) = e.strike()
                        && self.punish(peer, strike, out)
                    {
                        self.refuse(peer, Req::Heartbeat(hb.req), RefuseReason::Banned, Vec::new(), out);
                        out.emit(IndexerOut::Close { peer, reason: CloseReason::Banned });
                        return;
                    }
                    false
                }
            };
            // Only the node's referent replicates its record: one replicator per version.
            if counted
                && self.take_record(peer, record, hb.referent, Req::Heartbeat(hb.req), desk, now, out)
                    == RecordTaken::Answered
            {
                return;
            }
        }
        // While we are its referent, the version of its record we hold is in the DHT: one we held
        // as one of its other indexers, or one whose DID check has just ended, is replicated now.
        if hb.referent {
            desk.replicate_held(&peer, now, out);
        }
        self.respond(peer, &hb, false, held, desk, now, out);
    }

    /// Sends the heartbeat response (C §12). A probe gets no witnesses and no offload. `held` is
    /// the expiry of the peer's record held when it is known still to be right (else it is read
    /// from `desk`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn respond(
        &mut self,
        peer: PeerId,
        hb: &Heartbeat,
        probe: bool,
        held: Option<Option<Timestamp>>,
        desk: &mut dyn RecordDesk,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let fill_rate = self.fill_rate();
        let challenges = hb
            .challenges
            .iter()
            .take(MAX_CHALLENGES_ANSWERED)
            .map(|p| match self.behaviour.session(p) {
                Some(s) => ChallengeEntry { peer: *p, found: true, last_seen: Some(s.last_seen) },
                None => ChallengeEntry { peer: *p, found: false, last_seen: None },
            })
            .collect();
        let witnesses = match (hb.want_witnesses && !probe, hb.is_indexer) {
            (false, _) => Vec::new(),
            (true, true) => self.sample_indexer_witnesses(peer),
            (true, false) => self.sample_witnesses(peer),
        };
        let offloading = !probe && fill_rate > self.config.offload_threshold;
        let mut wanted = usize::from(hb.need).min(self.config.max_candidates);
        if offloading {
            wanted = wanted.max(1);
        }
        // A node below its minimum is also pointed at full indexers: one may move a node for it.
        let suggestions = self.pick_suggestions(peer, wanted, hb.standing.is_short());
        let somewhere_to_go = suggestions.iter().any(|s| self.has_room(&s.id));
        let suggest_migrate = !probe && self.offload_decision(peer, fill_rate, somewhere_to_go, now);
        let response = HeartbeatResponse {
            req: hb.req,
            fill_rate,
            peer_count: u32::try_from(self.behaviour.session_count()).unwrap_or(u32::MAX),
            max_nodes: u32::try_from(self.config.max_nodes).unwrap_or(u32::MAX),
            born_at: self.born_at,
            challenges,
            did_found: None,
            did_record: None,
            record_expires: held.unwrap_or_else(|| desk.held_expiry(&peer, now)),
            witnesses,
            suggestions,
            suggest_migrate,
        };
        // The DID challenge is answered for real: a DHT lookup of `/node/<DID>` (C §12.7), the
        // response held until it ends (bounded by `dht_check_timeout`).
        let mut response = response;
        if let Some(did) = hb.challenge_did.as_ref().filter(|_| !probe) {
            match desk.check_did(did, now, out) {
                DidCheck::Pending(q) => {
                    self.did_checks.insert(q, (peer, response));
                    return;
                }
                DidCheck::Answered(r) => {
                    response.did_found = Some(r.is_some());
                    response.did_record = r;
                }
            }
        }
        out.emit(IndexerOut::Send { to: peer, message: response.into() });
    }

    /// Witnesses for another indexer: up to `max_witnesses` random indexer sessions other than the
    /// requester (indexers that hold us in their pools see what it asks about), or node sessions
    /// when there are none. Indexers are linked to each other for the DHT, so its query rides a
    /// link already open, where a node witness costs a connection (3 handshake messages) for one
    /// question.
    pub(super) fn sample_indexer_witnesses(&mut self, requester: PeerId) -> Vec<PeerAddr> {
        let me = self.me;
        let mut picks: Vec<PeerId> =
            self.indexer_sessions.iter().copied().filter(|p| *p != requester && *p != me).collect();
        if picks.is_empty() {
            return self.sample_witnesses(requester);
        }
        self.rng.shuffle(&mut picks);
        picks
            .into_iter()
            .filter_map(|p| self.behaviour.session(&p).map(|s| s.addr.clone()))
            .take(self.config.max_witnesses)
            .collect()
    }

    /// Up to `max_witnesses` random non-indexer sessions other than the requester, drawn by index.
    pub(super) fn sample_witnesses(&mut self, requester: PeerId) -> Vec<PeerAddr> {
        let n = self.witness_pool.len();
        let k = self.config.max_witnesses.saturating_add(2).min(n);
        // Floyd's algorithm: k distinct indices in O(k), then a shuffle so any prefix is uniform.
        let mut picked: Vec<usize> = Vec::with_capacity(k);
        for j in (n - k)..n {
            let t = self.rng.below(j as u64 + 1) as usize;
            picked.push(if picked.contains(&t) { j } else { t });
        }
        self.rng.shuffle(&mut picked);
        let me = self.me;
        picked
            .into_iter()
            .filter_map(|i| self.witness_pool.get(i))
            .filter(|p| **p != requester && **p != me)
            .filter_map(|p| self.behaviour.session(p).map(|s| s.addr.clone()))
            .take(self.config.max_witnesses)
            .collect()
    }

    /// Whether `indexer` is known to have room below our offload threshold (or its fill is
    /// unknown): somewhere an offloaded node can go.
    pub(super) fn has_room(&self, indexer: &PeerId) -> bool {
        self.known.get(indexer).is_some_and(|k| k.fill_rate.is_none_or(|f| f <= self.config.offload_threshold))
    }

    /// Up to `count` known indexers (not `exclude`, not us, not known full unless `include_full`),
    /// preferring a lower known fill rate with some randomness.
    pub(super) fn pick_suggestions(&mut self, exclude: PeerId, count: usize, include_full: bool) -> Vec<PeerAddr> {
        if count == 0 {
            return Vec::new();
        }
        let me = self.me;
        let rng = &mut self.rng;
        let mut ranked: Vec<(f64, &KnownIndexer)> = self
            .known
            .values()
            .filter(|k| {
                k.addr.id != exclude && k.addr.id != me && (include_full || k.fill_rate.is_none_or(|f| f < 1.0))
            })
            .map(|k| (k.fill_rate.unwrap_or(UNKNOWN_FILL) + rng.unit_f64() * SUGGESTION_JITTER, k))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        ranked.into_iter().take(count).map(|(_, k)| k.addr.clone()).collect()
    }

    /// Up to `count` known indexers (not `exclude`, not us, not known full), least loaded first.
    pub(super) fn least_loaded(&self, exclude: PeerId, count: usize) -> Vec<PeerAddr> {
        let mut ranked: Vec<&KnownIndexer> = self
            .known
            .values()
            .filter(|k| k.addr.id != exclude && k.addr.id != self.me && k.fill_rate.is_none_or(|f| f < 1.0))
            .collect();
        ranked.sort_by(|a, b| a.fill_rate.unwrap_or(UNKNOWN_FILL).total_cmp(&b.fill_rate.unwrap_or(UNKNOWN_FILL)));
        ranked.into_iter().take(count).map(|k| k.addr.clone()).collect()
    }
}
