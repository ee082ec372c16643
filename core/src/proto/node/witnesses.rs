//! Witnesses (spec A §3.5, §6.11): after a challenge batch the node asks one or more of the other
//! nodes the indexer named what *they* see of it; a disagreeing witness is evidence, a silent one is
//! inconclusive. Every daemon with a pool answers such queries from its own observations.

use super::*;

impl IndexerPool {
    /// What we tell a witness query about `indexer`: only for an active entry that has answered.
    pub fn witness_view(&self, indexer: &PeerId) -> Option<WitnessView> {
        let e = self.entries.get(indexer)?;
        if !e.is_active() || !e.answered {
            return None;
        }
        Some(WitnessView { born_at: e.score.last_born_at?, fill_rate: e.score.last_fill_rate, score: e.current })
    }

    pub(super) fn query_witnesses(
        &mut self,
        indexer: PeerId,
        r: &HeartbeatResponse,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        // Each query opens a connection to another node: ask `witness_queries` of the returned
        // witnesses, drawn at random by us (not in the order the indexer chose).
        let mut seen: BTreeSet<PeerId> = BTreeSet::new();
        let mut candidates: Vec<&PeerAddr> = r
            .witnesses
            .iter()
            .filter(|w| w.id != self.me && w.id != indexer && seen.insert(w.id))
            .take(self.config.max_witnesses)
            .collect();
        self.rng.shuffle(&mut candidates);
        candidates.truncate(self.config.witness_queries);
        for w in candidates {
            let req = self.next_request();
            self.track(req, w.id, RequestKind::Witness { indexer, born_at: r.born_at, fill_rate: r.fill_rate }, now);
            out.emit(NodeOut::Learn(w.clone()));
            out.emit(NodeOut::Send { to: w.id, message: WitnessQuery { req, indexer }.into() });
        }
    }

    pub(super) fn on_witness_report(&mut self, from: PeerId, r: WitnessReport, now: Timestamp, out: &mut Vec<Action>) {
        let Some(req) = self.take_request(r.req, from) else {
            return;
        };
        let RequestKind::Witness { indexer, born_at, fill_rate } = req.kind else {
            self.fail_request(r.req, req, FailReason::Timeout, now, out);
            return;
        };
        let tolerance = self.config.witness_fill_tolerance;
        let Some(e) = self.entries.get_mut(&indexer) else {
            return;
        };
        let consistent = r.seen && r.born_at == Some(born_at) && (r.fill_rate - fill_rate).abs() < tolerance;
        e.score.witness_checked = e.score.witness_checked.saturating_add(1);
        if consistent {
            e.score.witness_consistent = e.score.witness_consistent.saturating_add(1);
        }
        self.rescore(&indexer, now);
        if let Some(reason) = self.eviction_reason(&indexer, now) {
            self.evict(indexer, reason, now, out);
        }
    }
}

/// The answer to a witness query about `q.indexer`, from `pool`'s own observations: seen only when
/// it is an active entry that has answered us.
pub(super) fn answer(pool: Option<&IndexerPool>, q: &WitnessQuery) -> WitnessReport {
    match pool.and_then(|p| p.witness_view(&q.indexer)) {
        Some(v) => {
            WitnessReport { req: q.req, seen: true, born_at: Some(v.born_at), fill_rate: v.fill_rate, score: v.score }
        }
        None => WitnessReport { req: q.req, seen: false, born_at: None, fill_rate: 0.0, score: 0.0 },
    }
}
