//! Refilling and seed recovery (spec A §6.10, E F12): suggestions and seeds fill free slots, a Down
//! seed that answers comes back (making room if needed), and with no active indexer the seeds are
//! retried on a back-off capped exactly at `seed_backoff_max` (B6).

use super::*;

impl IndexerPool {
    /// `seed_backoff_initial · 2^(n−1)`, capped exactly at `seed_backoff_max` (n ≥ 1).
    pub(super) fn backoff(config: &Config, n: u32) -> Duration {
        let max = config.seed_backoff_max;
        let mut d = config.seed_backoff_initial;
        for _ in 1..n.min(64) {
            if d >= max {
                break;
            }
            d = d.saturating_mul(2);
        }
        d.min(max)
    }

    /// A Down seed answered its retry probe: bring it back, making room if the pool is full.
    pub(super) fn readmit_seed(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) -> bool {
        if self.active_count() >= self.max_pool {
            let worst = self
                .entries
                .iter()
                .filter(|(_, e)| e.is_active() && !e.is_seed)
                .min_by(|a, b| a.1.current.total_cmp(&b.1.current).then(b.0.cmp(a.0)))
                .map(|(id, _)| *id);
            match worst {
                Some(w) => self.evict(w, EvictReason::MadeRoomForSeed, now, out),
                None => return false,
            }
        }
        let Some(e) = self.entries.get_mut(&peer) else {
            return false;
        };
        e.state = EntryState::Live;
        e.retries = 0;
        e.next_due = now;
        out.emit(NodeOut::Event(Event::IndexerLive { indexer: peer }));
        true
    }

    /// Adds a new Pending entry (heartbeated at once), if allowed.
    pub(super) fn add_entry(
        &mut self,
        addr: PeerAddr,
        via: AddedVia,
        is_seed: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> bool {
        let id = addr.id;
        if id == self.me
            || self.entries.contains_key(&id)
            || self.in_cooldown(&id, now)
            || self.active_count() >= self.max_pool
        {
            return false;
        }
        let nc = self.draw_challenge_spacing();
        out.emit(NodeOut::Learn(addr.clone()));
        out.emit(NodeOut::Event(Event::IndexerAdded { indexer: id, via }));
        self.entries.insert(id, Entry::new(addr, via, is_seed, now, nc));
        if is_seed {
            self.discharged.remove(&id);
        }
        true
    }

    pub(super) fn add_suggestions(&mut self, suggestions: &[PeerAddr], now: Timestamp, out: &mut Vec<Action>) {
        for s in suggestions {
            if self.active_count() >= self.max_pool {
                break;
            }
            self.add_entry(s.clone(), AddedVia::Suggestion, false, now, out);
        }
    }

    /// Re-adds configured seeds that are not in the pool (nor cooling down) while there is room.
    pub(super) fn seed_refill(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        for s in self.seeds.clone() {
            if self.active_count() >= self.max_pool {
                break;
            }
            self.add_entry(s, AddedVia::Seed, true, now, out);
        }
    }

    /// After membership changes: start a wanted consensus round, or refill from the seeds, and
    /// arm seed recovery when no indexer is active.
    pub(super) fn follow_up(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        if self.consensus.is_none() && self.consensus_wanted {
            self.consensus_wanted = false;
            if self.need() > 0 {
                if self.entries.values().any(Self::is_voter) {
                    self.start_consensus(now, out);
                } else {
                    self.seed_refill(now, out);
                }
            }
        }
        if self.active_count() == 0 && self.recovery.is_none() && !self.seeds.is_empty() {
            self.recovery = Some(Recovery { attempt: 0, next_at: now + Self::backoff(&self.config, 1) });
        }
    }

    pub(super) fn recovery_step(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        if self.active_count() > 0 {
            return;
        }
        let Some(r) = &self.recovery else {
            return;
        };
        if r.next_at > now {
            return;
        }
        let attempt = r.attempt.saturating_add(1);
        self.seed_refill(now, out);
        let cooldown = &self.cooldown;
        for (id, e) in self.entries.iter_mut() {
            let cooling = cooldown.get(id).is_some_and(|until| now < *until);
            if e.state == EntryState::Down && e.in_flight.is_none() && !cooling && e.next_due > now {
                e.next_due = now;
            }
        }
        let next_in = Self::backoff(&self.config, attempt.saturating_add(1));
        self.recovery = Some(Recovery { attempt, next_at: now + next_in });
        out.emit(NodeOut::Event(Event::SeedRecovery { attempt, next_in }));
    }
}
