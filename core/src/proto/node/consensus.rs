//! Candidate consensus (spec B §3.2, E F11): after an eviction the node asks its live indexers for
//! candidates, probes the `need + consensus_extra_candidates` that most of them named (a refused
//! or silent probe scores 0) and admits the best above `min_score_start`.
//!
//! The seed probed every candidate of every voter: each voter names `need + 2`, so a node that
//! lost one indexer opened about six connections to fill one slot, a connection and a heartbeat
//! exchange each. Probing `need + 2` keeps the choice among several, and the candidates several
//! voters agree on come first (ties in random order).

use super::*;

impl IndexerPool {
    pub(super) fn start_consensus(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let need = self.need();
        let count = need.saturating_add(self.config.consensus_extra_candidates).min(self.config.max_candidates);
        let count = u16::try_from(count).unwrap_or(u16::MAX);
        let voters: Vec<PeerId> = self.entries.iter().filter(|(_, e)| Self::is_voter(e)).map(|(id, _)| *id).collect();
        let mut waiting = BTreeSet::new();
        for v in voters {
            let req = self.next_request();
            self.track(req, v, RequestKind::Candidates, now);
            waiting.insert(req);
            out.emit(NodeOut::Send { to: v, message: CandidatesRequest { req, count }.into() });
        }
        self.consensus =
            Some(Consensus { probing: false, waiting, received: Vec::new(), scores: BTreeMap::new(), candidates: 0 });
    }

    pub(super) fn consensus_progress(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        loop {
            let Some(c) = &self.consensus else {
                return;
            };
            if !c.waiting.is_empty() {
                return;
            }
            if c.probing {
                self.finish_consensus(now, out);
                return;
            }
            self.probe_candidates(now, out);
        }
    }

    pub(super) fn probe_candidates(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let Some(mut c) = self.consensus.take() else {
            return;
        };
        let mut votes: BTreeMap<PeerId, (PeerAddr, u32)> = BTreeMap::new();
        for a in std::mem::take(&mut c.received) {
            if a.id == self.me || self.entries.contains_key(&a.id) || self.in_cooldown(&a.id, now) {
                continue;
            }
            votes.entry(a.id).or_insert((a, 0)).1 += 1;
        }
        let mut ranked: Vec<(PeerAddr, u32)> = votes.into_values().collect();
        self.rng.shuffle(&mut ranked);
        // Stable: ties keep their random order.
        ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
        let probes = self.need().max(1).saturating_add(self.config.consensus_extra_candidates);
        ranked.truncate(probes.min(self.config.max_candidates));
        let candidates: Vec<PeerAddr> = ranked.into_iter().map(|(a, _)| a).collect();
        c.candidates = candidates.len();
        c.probing = true;
        if self.send_log.len() >= SEND_LOG_MAX {
            self.prune_send_log(now);
        }
        for a in candidates {
            let id = a.id;
            c.scores.insert(id, (a.clone(), 0.0));
            let log_room = self.send_log.contains_key(&id) || self.send_log.len() < SEND_LOG_MAX;
            if !log_room || self.busy_until(&id).is_some() || self.rate_allowed_at(&id, now) > now {
                // Over budget: not probed, scores 0.
                continue;
            }
            let req = self.next_request();
            let message = self.probe_message(req, &id);
            self.track(req, id, RequestKind::CandidateProbe, now);
            c.waiting.insert(req);
            self.log_send(id, now);
            out.emit(NodeOut::Event(Event::HeartbeatSent { indexer: id }));
            out.emit(NodeOut::Learn(a));
            out.emit(NodeOut::Send { to: id, message });
        }
        self.consensus = Some(c);
    }

    pub(super) fn finish_consensus(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let Some(c) = self.consensus.take() else {
            return;
        };
        let mut ranked: Vec<(PeerAddr, f64)> = c.scores.into_values().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.id.cmp(&b.0.id)));
        let floor = self.config.min_score_start;
        let mut admitted = 0;
        for (addr, s) in ranked {
            if self.need() == 0 || s < floor {
                break;
            }
            if self.add_entry(addr, AddedVia::Consensus, false, now, out) {
                admitted += 1;
            }
        }
        out.emit(NodeOut::Event(Event::ConsensusFinished { candidates: c.candidates, admitted }));
        if admitted == 0 {
            self.seed_refill(now, out);
        }
    }

    pub(super) fn on_candidates(&mut self, from: PeerId, r: CandidatesResponse, now: Timestamp, out: &mut Vec<Action>) {
        let Some(req) = self.take_request(r.req, from) else {
            return;
        };
        if !matches!(req.kind, RequestKind::Candidates) {
            self.fail_request(r.req, req, FailReason::Timeout, now, out);
            return;
        }
        let per_voter = self.config.max_candidates;
        let cap = per_voter.saturating_mul(self.max_pool.max(1)).saturating_mul(2);
        if let Some(c) = &mut self.consensus
            && c.waiting.remove(&r.req)
        {
            let room = cap.saturating_sub(c.received.len()).min(per_voter);
            c.received.extend(r.candidates.into_iter().take(room));
        }
    }
}
