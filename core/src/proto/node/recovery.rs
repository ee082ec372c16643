//! Refilling and seed recovery (spec A §6.10, E F12): suggestions and seeds fill free slots, a Down
//! seed that answers comes back (making room if needed), and with no active indexer the seeds are
//! retried on a back-off capped exactly at `seed_backoff_max` (B6).

use super::*;

/// Most indexers remembered from suggestions for seed recovery (a memory bound).
const HEARD_OF_MAX: usize = 16;

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
        self.hear_of(suggestions);
        for s in suggestions {
            if self.active_count() >= self.max_pool {
                break;
            }
            self.add_entry(s.clone(), AddedVia::Suggestion, false, now, out);
        }
    }

    /// Remembers indexers suggested to us (bounded, most recent last, never ourselves). Only
    /// suggestions: they already enter the pool unprobed when it has room, so remembering them
    /// trusts nothing new.
    pub(super) fn hear_of(&mut self, indexers: &[PeerAddr]) {
        for a in indexers.iter().take(HEARD_OF_MAX) {
            if a.id == self.me {
                continue;
            }
            self.heard_of.retain(|h| h.id != a.id);
            self.heard_of.push(a.clone());
        }
        let excess = self.heard_of.len().saturating_sub(HEARD_OF_MAX);
        self.heard_of.drain(..excess);
    }

    /// With no active indexer, after the seeds: the indexers we heard of lately, most recent
    /// first, while there is room. A node whose seeds are all out of reach (a partition, a crash
    /// of its seeds) would otherwise wait at zero for them, on a back-off of minutes.
    pub(super) fn heard_of_refill(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        for a in self.heard_of.clone().into_iter().rev() {
            if self.active_count() >= self.max_pool {
                break;
            }
            self.add_entry(a, AddedVia::Suggestion, false, now, out);
        }
    }

    /// Below our minimum, a Down seed that last refused us for capacity (alive, only full or
    /// busy) is retried at least every `heartbeat_interval` instead of on its back-off of up to
    /// `seed_backoff_max` (issue 13): under scarcity a seed that refused us `Full` while we held
    /// our minimum may take us now that we are short (by moving a node with spare indexers), and
    /// neither suggestions nor consensus re-add a peer still in the pool. A seed that timed out or
    /// was unreachable keeps its back-off (B6), as does one in its misbehaviour cooldown.
    pub(super) fn hurry_down_seeds(&mut self, now: Timestamp) {
        if self.live_count() >= self.min_pool {
            return;
        }
        let soon = now + self.config.heartbeat_interval;
        let cooldown = &self.cooldown;
        for (id, e) in self.entries.iter_mut() {
            let cooling = cooldown.get(id).is_some_and(|until| now < *until);
            if e.state == EntryState::Down && e.refused_for_capacity && e.in_flight.is_none() && !cooling {
                e.next_due = e.next_due.min(soon);
            }
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
        self.heard_of_refill(now, out);
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
