//! Heartbeats (spec A §3.1, §6.2, E F7): sending them on the node's one heartbeat tick, matching
//! their answers by request id (B8) and handling failures — a refusal `Busy` is "not now", a
//! failing seed goes Down, any other failing entry is evicted when others remain.

use super::*;

/// A node at its minimum of live indexers doubles its wait after each `Busy` refusal in a row at
/// most this many times (half an interval, then one, then two: retries come at most four
/// intervals apart).
const BUSY_MAX_DOUBLINGS: u32 = 2;

/// How many times more refusals in a row a node at its minimum gives a busy indexer before it
/// counts them as a failure (see `last_indexer_max_failures`).
const BUSY_PATIENCE_AT_MIN: u32 = 2;

impl IndexerPool {
    /// Live entries other than `peer`.
    fn live_others(&self, peer: &PeerId) -> usize {
        self.entries.iter().filter(|(id, e)| *id != peer && e.state == EntryState::Live).count()
    }

    /// A node that backed off from busy indexers while it had its minimum, and has fallen below
    /// it since: their retries come when a node below its minimum would have sent them (at most
    /// one heartbeat interval after the refusal), not at the end of the back-off.
    pub(super) fn hurry_backed_off(&mut self, now: Timestamp) {
        if !self.backed_off || self.live_count() >= self.min_pool {
            return;
        }
        for e in self.entries.values_mut() {
            if let Some(cap) = e.busy_cap.take() {
                e.next_due = e.next_due.min(cap.max(now));
            }
        }
        self.backed_off = false;
    }

    /// Sends every heartbeat and retry probe that is due, or pushes it back until the peer is free
    /// and within its rate budget.
    pub(super) fn send_due(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let due: Vec<PeerId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.in_flight.is_none() && e.next_due <= now)
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            return;
        }
        // Before any indexer is live, the first one heartbeated is named (provisionally), so a new
        // node is searchable from its first heartbeat, not one interval later.
        let chosen = self.referent();
        self.referent_choice = chosen;
        let provisional = chosen.is_none();
        let referent = chosen.or_else(|| {
            let first = due.iter().find(|p| self.entries.get(p).is_some_and(|e| e.state != EntryState::Down));
            first.copied().filter(|_| self.told_referent.is_none())
        });
        for peer in due {
            let wait = match self.busy_until(&peer) {
                Some(busy) => Some(busy),
                None => Some(self.rate_allowed_at(&peer, now)).filter(|t| *t > now),
            };
            if let Some(t) = wait {
                if let Some(e) = self.entries.get_mut(&peer) {
                    e.next_due = e.next_due.max(t);
                }
                continue;
            }
            match self.entries.get(&peer).map(|e| e.state) {
                Some(EntryState::Down) => self.send_retry_probe(peer, now, out),
                Some(_) => {
                    let named = referent == Some(peer);
                    self.send_heartbeat(peer, named, now, out);
                    if named {
                        self.told_provisional = provisional;
                    }
                }
                None => {}
            }
        }
    }

    /// When the regular heartbeat after one sent at `now` is due: the last tick at or before
    /// `now + heartbeat_interval`, so the gap never exceeds the interval (lookups judge an
    /// indexer by it). A tick closer than half an interval is too soon: then half an interval
    /// from now, and the one after that is back on the tick.
    pub(super) fn next_heartbeat_at(&self, now: Timestamp) -> Timestamp {
        let interval = crate::proto::time::duration_ms(self.config.heartbeat_interval).max(1);
        let target = now.0.saturating_add(interval);
        let origin = self.tick_origin.0;
        let tick = match target.checked_sub(origin) {
            Some(since) => origin + since / interval * interval,
            None => target,
        };
        let half = now.0.saturating_add(interval / 2);
        Timestamp(if tick >= half { tick } else { half })
    }

    /// Our pool as it stands without `peer` (issue 13): the live indexers besides it, those we
    /// are joining right now (a heartbeat in flight to a Pending entry), and our minimum. A full
    /// indexer admits us by moving a node with spare indexers only while this says we are short,
    /// and may move us only while it says we keep our minimum without it.
    pub(super) fn standing_without(&self, peer: &PeerId) -> Standing {
        let (mut live, mut joining) = (0usize, 0usize);
        for (id, e) in &self.entries {
            if id == peer {
                continue;
            }
            match e.state {
                EntryState::Live => live += 1,
                EntryState::Pending if e.in_flight.is_some() => joining += 1,
                _ => {}
            }
        }
        let clamp = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        Standing { live_elsewhere: clamp(live), joining_elsewhere: clamp(joining), min: clamp(self.min_pool) }
    }

    pub(super) fn send_heartbeat(&mut self, peer: PeerId, referent: bool, now: Timestamp, out: &mut Vec<Action>) {
        let need = u16::try_from(self.need()).unwrap_or(u16::MAX);
        let standing = self.standing_without(&peer);
        let mut others: Vec<PeerId> =
            self.entries.iter().filter(|(id, e)| **id != peer && e.is_active()).map(|(id, _)| *id).collect();
        let spacing = self.draw_challenge_spacing_if_due(&peer);
        let req = self.next_request();
        let next_tick = self.next_heartbeat_at(now);
        let Some(e) = self.entries.get_mut(&peer) else {
            return;
        };
        e.score.hb_count = e.score.hb_count.saturating_add(1);
        let mut challenges = Vec::new();
        let mut challenge_did = None;
        let challenge = spacing.is_some();
        if let Some(next) = spacing {
            e.score.hb_count = 0;
            e.score.next_challenge = next;
            e.score.challenge_total = e.score.challenge_total.saturating_add(1);
            e.score.did_batch_counter = e.score.did_batch_counter.saturating_add(1);
            if e.score.did_batch_counter % self.config.did_challenge_every.max(1) == 0 {
                challenge_did = Some(self.did.clone());
            }
            self.rng.shuffle(&mut others);
            challenges.push(self.me);
            challenges.extend(others.into_iter().take(self.config.challenge_extra_peers));
        }
        let (did, name) = if e.acknowledged {
            (None, None)
        } else {
            (Some(self.did.clone()), Some(self.config.name.clone()).filter(|n| !n.is_empty()))
        };
        // The record travels only while this indexer does not hold its current version.
        let record = self.record.as_ref().filter(|r| e.record_held != Some(r.body.expires_at)).cloned();
        let sent = HeartbeatSent {
            retry: false,
            challenge,
            did_challenge: challenge_did.is_some(),
            want_witnesses: challenge,
        };
        e.in_flight = Some(req);
        e.next_due = next_tick;
        e.busy_cap = None;
        if referent {
            self.told_referent = Some(peer);
        }
        self.track(req, peer, RequestKind::Heartbeat(sent), now);
        self.log_send(peer, now);
        out.emit(NodeOut::Event(Event::HeartbeatSent { indexer: peer }));
        out.emit(NodeOut::Send {
            to: peer,
            message: Envelope::from(Heartbeat {
                req,
                kind: HeartbeatKind::Regular,
                need,
                standing,
                referent,
                is_indexer: self.is_indexer,
                challenges,
                challenge_did,
                want_witnesses: challenge,
                did,
                name,
                record,
            }),
        });
    }

    /// A retry probe: "could I join you now?", with our DID, so an indexer that holds another
    /// DID for our key says so (`DidChanged`) instead of answering as if we could.
    pub(super) fn probe_message(&self, req: RequestId, to: &PeerId) -> Envelope {
        Envelope::from(Heartbeat {
            need: u16::try_from(self.need()).unwrap_or(u16::MAX),
            standing: self.standing_without(to),
            is_indexer: self.is_indexer,
            did: Some(self.did.clone()),
            ..Heartbeat::bare(req, HeartbeatKind::Probe)
        })
    }

    pub(super) fn send_retry_probe(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        let req = self.next_request();
        let message = self.probe_message(req, &peer);
        let Some(e) = self.entries.get_mut(&peer) else {
            return;
        };
        e.retries = e.retries.saturating_add(1);
        e.next_due = now + Self::backoff(&self.config, e.retries.saturating_add(1));
        e.in_flight = Some(req);
        let sent = HeartbeatSent { retry: true, challenge: false, did_challenge: false, want_witnesses: false };
        self.track(req, peer, RequestKind::Heartbeat(sent), now);
        self.log_send(peer, now);
        out.emit(NodeOut::Event(Event::HeartbeatSent { indexer: peer }));
        out.emit(NodeOut::Send { to: peer, message });
    }

    pub(super) fn on_heartbeat_response(
        &mut self,
        from: PeerId,
        r: HeartbeatResponse,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(req) = self.take_request(r.req, from) else {
            return;
        };
        match req.kind {
            RequestKind::Heartbeat(sent) => self.on_indexer_answer(from, r.req, req.sent_at, sent, r, now, out),
            RequestKind::CandidateProbe => {
                let s = score::quick_score(Some(&r), now.since(req.sent_at), &self.config);
                if let Some(c) = &mut self.consensus
                    && c.waiting.remove(&r.req)
                    && let Some(slot) = c.scores.get_mut(&from)
                {
                    slot.1 = s;
                }
            }
            // The wrong kind of reply fails the request.
            _ => self.fail_request(r.req, req, FailReason::Timeout, now, out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_indexer_answer(
        &mut self,
        from: PeerId,
        req: RequestId,
        sent_at: Timestamp,
        sent: HeartbeatSent,
        r: HeartbeatResponse,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let me = self.me;
        let cfg = &self.config;
        let sigs = &self.lookups.sigs;
        let Some(e) = self.entries.get_mut(&from) else {
            return;
        };
        if e.in_flight != Some(req) {
            return;
        }
        e.in_flight = None;
        e.note_answer(sent, now.since(sent_at), &r, now, cfg);
        e.judge_challenges(sent, &r, challenges::Ours { me, did: &self.did, sigs }, now, cfg);
        match e.state {
            EntryState::Live => {}
            EntryState::Pending => {
                e.state = EntryState::Live;
                out.emit(NodeOut::Event(Event::IndexerLive { indexer: from }));
            }
            EntryState::Down => {
                if !self.readmit_seed(from, now, out) {
                    self.rescore(&from, now);
                    return;
                }
            }
        }
        if !sent.retry {
            // A session is acknowledged: seed recovery is over.
            self.recovery = None;
        }
        if sent.want_witnesses {
            self.query_witnesses(from, &r, now, out);
        }
        self.rescore(&from, now);
        if let Some(reason) = self.eviction_reason(&from, now) {
            self.evict(from, reason, now, out);
            return;
        }
        self.add_suggestions(&r.suggestions, now, out);
        if r.suggest_migrate && !sent.retry {
            self.on_suggest_migrate(from, now, out);
        }
    }

    pub(super) fn on_refused(&mut self, from: PeerId, r: Refused, now: Timestamp, out: &mut Vec<Action>) {
        let Some(req) = self.take_request(r.req, from) else {
            return;
        };
        // A pool member that refuses may still point elsewhere; add those first, so the refusing
        // indexer is not mistaken for the last one.
        if matches!(req.kind, RequestKind::Heartbeat(_) | RequestKind::CandidateProbe) {
            out.emit(NodeOut::Event(Event::HeartbeatRefused { indexer: from, reason: r.reason }));
        }
        if matches!(req.kind, RequestKind::Heartbeat(_)) && self.entries.contains_key(&from) {
            self.add_suggestions(&r.suggestions, now, out);
        }
        self.fail_request(r.req, req, FailReason::Refused(r.reason), now, out);
    }

    pub(super) fn on_heartbeat_failed(
        &mut self,
        peer: PeerId,
        req: RequestId,
        _sent: HeartbeatSent,
        reason: FailReason,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let others_active = self.active_count() > 1;
        let max_failures = self.config.last_indexer_max_failures;
        // (An indexer's own pool is also how its DHT routing table first fills: it keeps the
        // pace below.)
        let at_min = reason == FailReason::Refused(RefuseReason::Busy)
            && !self.is_indexer
            && self.live_others(&peer) >= self.min_pool;
        let Some(e) = self.entries.get_mut(&peer) else {
            return;
        };
        if e.in_flight != Some(req) {
            return;
        }
        e.in_flight = None;
        e.failure_since_answer = true;
        e.acknowledged = false;
        e.score.uptime.consecutive_fails = e.score.uptime.consecutive_fails.saturating_add(1);
        e.refused_for_capacity =
            matches!(reason, FailReason::Refused(RefuseReason::Full | RefuseReason::Busy | RefuseReason::Moved));
        if e.state == EntryState::Down {
            // A retry probe failed; the next one is already scheduled.
            return;
        }
        e.state = EntryState::Pending;
        let refusals = e.score.uptime.consecutive_fails;
        let patience = if at_min { max_failures.saturating_mul(BUSY_PATIENCE_AT_MIN) } else { max_failures };
        if reason == FailReason::Refused(RefuseReason::Busy) && refusals < patience {
            // The indexer's burst guard said "not now" (B §9.2): it is alive and answering, so this
            // is no failure of the indexer. Keep the slot and retry after half to one heartbeat
            // interval, jittered so that refused nodes do not all come back in step; after
            // `last_indexer_max_failures` refusals in a row (twice that at the minimum, below)
            // it counts as a failure.
            //
            // A node that already has its minimum of live indexers is in no hurry: it backs off,
            // each refusal in a row doubling the wait up to four times the first, and gives the
            // indexer twice as many tries before looking elsewhere. The guard admits a fixed
            // number of new sessions per window whoever asks, so in a flash crowd the nodes below
            // their minimum get more of them, and the refusals — nine in ten of a join's went to
            // nodes already at their minimum — fall.
            //
            // Should the node fall below its minimum before the retry, the retry is brought
            // forward to where a node below it would have put it (`hurry_backed_off`).
            let doublings = if at_min { refusals.saturating_sub(1).min(BUSY_MAX_DOUBLINGS) } else { 0 };
            let wait = (self.config.heartbeat_interval / 2).saturating_mul(1 << doublings);
            let jitter = Duration::from_millis(self.rng.below(crate::proto::time::duration_ms(wait) + 1));
            e.next_due = now + wait + jitter;
            let cap = now + self.config.heartbeat_interval;
            e.busy_cap = (e.next_due > cap).then_some(cap);
            self.backed_off |= e.busy_cap.is_some();
            return;
        }
        if reason == FailReason::Refused(RefuseReason::Moved) && !e.is_seed && others_active {
            // The indexer was full and gave our slot to a node below its minimum: we keep ours
            // elsewhere. Not a failure of the indexer, so no failure counts against it.
            self.evict(peer, EvictReason::Migrated, now, out);
            return;
        }
        if e.is_seed {
            e.state = EntryState::Down;
            e.next_due = now + Self::backoff(&self.config, e.retries.saturating_add(1));
            out.emit(NodeOut::Event(Event::IndexerDown { indexer: peer, reason }));
            // Its slot is free: fill it with others.
            self.consensus_wanted = true;
            return;
        }
        if others_active || e.score.uptime.consecutive_fails >= max_failures {
            self.evict(peer, EvictReason::HeartbeatFailed(reason), now, out);
        }
    }
}
