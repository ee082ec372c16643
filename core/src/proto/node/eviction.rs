//! Scoring and eviction (spec A §6.6–§6.9): the score is recomputed after every answer; evidence
//! of lying evicts even a seed, a low score evicts a non-seed, and misbehaviour puts the peer in a
//! cooldown. Evicting one indexer never touches another (B4).

use super::*;

/// Most peers kept in the misbehaviour cooldown; beyond it the one expiring first is forgotten.
const COOLDOWN_MAX: usize = 256;

impl IndexerPool {
    pub(super) fn rescore(&mut self, peer: &PeerId, now: Timestamp) {
        let cfg = &self.config;
        if let Some(e) = self.entries.get_mut(peer)
            && e.answered
        {
            e.factors = e.score.factors(e.latency, now, cfg);
            e.current = e.factors.score();
        }
    }

    pub(super) fn eviction_reason(&self, peer: &PeerId, now: Timestamp) -> Option<EvictReason> {
        let cfg = &self.config;
        let e = self.entries.get(peer)?;
        if e.state != EntryState::Live || e.score.uptime.total_online < cfg.eviction_grace {
            return None;
        }
        let s = &e.score;
        // Proof of lying needs answers: a refused or lost heartbeat is a failure, not a lie.
        let answered = s.challenge_answered;
        if answered >= 2 && f64::from(s.challenge_correct) / f64::from(answered) < cfg.min_challenge_accuracy {
            return Some(EvictReason::FailedChallenges);
        }
        if s.fill_checked >= 3 && s.fill_consistency() < cfg.min_fill_consistency {
            return Some(EvictReason::InconsistentFill);
        }
        if s.witness_checked >= 3 && s.witness_consistency() < cfg.min_witness_consistency {
            return Some(EvictReason::WitnessesDisagree);
        }
        if !e.is_seed && self.active_count() > 1 && e.current < cfg.dynamic_min_score(now.since(e.added_at)) {
            return Some(EvictReason::LowScore);
        }
        None
    }

    /// `indexer` relayed a forged search hit (proof it lies): it leaves the pool, with a cooldown.
    pub fn distrust(&mut self, indexer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        if self.entries.contains_key(&indexer) {
            self.evict(indexer, EvictReason::ForgedHits, now, out);
        }
    }

    /// Removes `peer` from the pool. Only this entry is touched (B4).
    pub(super) fn evict(&mut self, peer: PeerId, reason: EvictReason, now: Timestamp, out: &mut Vec<Action>) {
        let Some(e) = self.entries.remove(&peer) else {
            return;
        };
        if let Some(req) = e.in_flight {
            self.requests.remove(&req);
        }
        out.emit(NodeOut::Event(Event::IndexerEvicted { indexer: peer, reason }));
        if matches!(reason, EvictReason::HeartbeatFailed(FailReason::Timeout | FailReason::Unreachable)) {
            // Silent or out of reach: not one for seed recovery to try again.
            self.heard_of.retain(|h| h.id != peer);
        }
        if !matches!(reason, EvictReason::HeartbeatFailed(_)) {
            // It is alive: tell it, so it frees our session at once.
            out.emit(NodeOut::Send { to: peer, message: IndexerMessage::Leave.into() });
            out.emit(NodeOut::Close { peer, reason: CloseReason::Evicted });
        }
        let misbehaved = matches!(
            reason,
            EvictReason::LowScore
                | EvictReason::FailedChallenges
                | EvictReason::InconsistentFill
                | EvictReason::WitnessesDisagree
                | EvictReason::ForgedHits
        );
        if misbehaved {
            self.add_cooldown(peer, now);
            if e.is_seed {
                // A sticky seed is retried, from scratch, once its cooldown is over.
                let nc = self.draw_challenge_spacing();
                let mut down = Entry::new(e.addr, AddedVia::Seed, true, now, nc);
                down.state = EntryState::Down;
                down.next_due = now + self.config.misbehaviour_cooldown;
                self.entries.insert(peer, down);
                out.emit(NodeOut::Event(Event::IndexerAdded { indexer: peer, via: AddedVia::Seed }));
            }
        }
        self.consensus_wanted = true;
    }

    pub(super) fn on_suggest_migrate(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        let Some(is_seed) = self.entries.get(&peer).map(|e| e.is_seed) else {
            return;
        };
        let other_live: Vec<bool> = self
            .entries
            .iter()
            .filter(|(id, e)| **id != peer && e.state == EntryState::Live)
            .map(|(_, e)| e.is_seed)
            .collect();
        if is_seed {
            let non_seed_live = other_live.iter().filter(|s| !**s).count();
            if non_seed_live >= self.min_pool
                && let Some(e) = self.entries.get_mut(&peer)
            {
                e.is_seed = false;
                self.discharged.insert(peer);
            }
        } else if other_live.len() >= self.min_pool {
            self.evict(peer, EvictReason::Migrated, now, out);
        }
    }

    pub(super) fn add_cooldown(&mut self, peer: PeerId, now: Timestamp) {
        self.cooldown.retain(|_, until| now < *until);
        self.cooldown.insert(peer, now + self.config.misbehaviour_cooldown);
        while self.cooldown.len() > COOLDOWN_MAX {
            let first = self.cooldown.iter().min_by_key(|(id, until)| (**until, **id)).map(|(id, _)| *id);
            match first {
                Some(id) => self.cooldown.remove(&id),
                None => break,
            };
        }
    }
}

impl Entry {
    /// Folds an answer to a heartbeat or retry probe into the entry's score state (A §5, §6.3):
    /// round-trip time (not for a DID challenge, whose answer waits for a DHT lookup), uptime,
    /// `born_at` stability (a change is explained only after a failure and when it moved
    /// forward), fill-rate consistency, and the record version the indexer holds.
    pub(super) fn note_answer(
        &mut self,
        sent: HeartbeatSent,
        rtt: Duration,
        r: &HeartbeatResponse,
        now: Timestamp,
        cfg: &Config,
    ) {
        let e = self;
        // A DID challenge's answer waits for a DHT lookup: its round trip is not the indexer's
        // latency.
        if !sent.did_challenge {
            e.last_rtt = Some(rtt);
            e.latency = score::latency_score(rtt, cfg);
        }
        if !sent.retry {
            e.record_held = r.record_expires;
        }
        e.score.uptime.record_heartbeat(now, cfg.liveness_interval.saturating_mul(2));
        match e.score.last_born_at {
            Some(old) if old != r.born_at => {
                let explained = e.failure_since_answer && r.born_at > old;
                if !explained {
                    e.score.born_at_changes = e.score.born_at_changes.saturating_add(1);
                }
                e.score.last_born_at = Some(r.born_at);
            }
            Some(_) => {}
            None => e.score.last_born_at = Some(r.born_at),
        }
        e.failure_since_answer = false;
        e.answered = true;
        if !sent.retry {
            e.acknowledged = true;
            e.retries = 0;
        }
        e.score.last_fill_rate = score::sanitize_unit(r.fill_rate, 1.0);
        if r.max_nodes > 0 {
            e.score.fill_checked = e.score.fill_checked.saturating_add(1);
            let expected = f64::from(r.peer_count) / f64::from(r.max_nodes);
            if (expected - r.fill_rate).abs() < cfg.fill_tolerance {
                e.score.fill_consistent = e.score.fill_consistent.saturating_add(1);
            }
        }
    }
}
