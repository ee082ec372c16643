//! Rate-limit safety (DESIGN §4): a pool change never makes an honest node trip an indexer's
//! heartbeat rate limit (the seed's nudges heartbeated every indexer at once, B16). Send times are
//! remembered per peer, also after eviction.

use super::*;

/// Margin added to the indexer's `behaviour_window` when counting our own heartbeats and probes
/// to it, absorbing latency jitter between our send times and its receive times.
const RATE_SLACK: Duration = Duration::from_secs(1);
/// Most peers whose recent send times are kept; beyond it no *new* peer is probed.
pub(super) const SEND_LOG_MAX: usize = 1024;
/// The send log is first pruned of stale peers when it holds more than this many.
pub(super) const SEND_LOG_PRUNE_MIN: usize = 16;

impl IndexerPool {
    pub(super) fn rate_horizon(&self) -> Duration {
        self.config.behaviour_window.saturating_add(RATE_SLACK)
    }

    pub(super) fn rate_budget(&self) -> usize {
        self.config.max_hb_per_minute.saturating_sub(1).max(1)
    }

    /// The earliest time at or after `now` a heartbeat or probe to `peer` keeps it within budget.
    pub(super) fn rate_allowed_at(&self, peer: &PeerId, now: Timestamp) -> Timestamp {
        let Some(log) = self.send_log.get(peer) else {
            return now;
        };
        // Runs for every due heartbeat and on every pump: no allocation. The log is oldest first,
        // so the recent sends are its tail.
        let horizon = self.rate_horizon();
        let recent = log.iter().rev().take_while(|t| now.since(**t) < horizon).count();
        let budget = self.rate_budget();
        if recent < budget {
            return now;
        }
        // The oldest send that still counts against a new one: `budget` from the end.
        match log.get(log.len() - budget) {
            Some(t) => (*t + horizon).max(now),
            None => now,
        }
    }

    pub(super) fn log_send(&mut self, peer: PeerId, now: Timestamp) {
        let horizon = self.rate_horizon();
        let log = self.send_log.entry(peer).or_default();
        log.retain(|t| now.since(*t) < horizon);
        log.push(now);
        // Oldest first even if the clock stepped back (`rate_allowed_at` reads the tail).
        if log.len() >= 2 && log[log.len() - 2] > now {
            log.sort_unstable();
        }
        // Peers not sent to within the horizon are dropped once the log has doubled since the
        // last prune (it would otherwise keep every indexer ever probed, and each check searches
        // it); they count for nothing either way.
        if self.send_log.len() > self.send_log_prune_at.min(SEND_LOG_MAX) {
            self.prune_send_log(now);
            self.send_log_prune_at = self.send_log.len().saturating_mul(2).max(SEND_LOG_PRUNE_MIN);
        }
    }

    pub(super) fn prune_send_log(&mut self, now: Timestamp) {
        let horizon = self.rate_horizon();
        self.send_log.retain(|_, log| {
            log.retain(|t| now.since(*t) < horizon);
            !log.is_empty()
        });
    }

    /// The earliest time `peer` is free of other heartbeat/probe requests (one in flight per
    /// indexer), if it is not free now.
    pub(super) fn busy_until(&self, peer: &PeerId) -> Option<Timestamp> {
        self.requests
            .values()
            .filter(|r| r.to == *peer && matches!(r.kind, RequestKind::Heartbeat(_) | RequestKind::CandidateProbe))
            .map(|r| r.deadline)
            .max()
    }
}
