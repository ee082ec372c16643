//! DHT provider discovery (spec B §4.3–§4.7): when the pool has room the node finds indexers
//! announced under the rendezvous key, preferring less loaded ones, at most one per /24.

use super::*;

/// The first DHT provider discovery waits this long after start (B §4.3: a 5 s warm-up).
pub(super) const DISCOVERY_WARMUP: Duration = Duration::from_secs(5);

impl IndexerPool {
    /// Asks the DHT for providers when the pool has room, at most every `discovery_interval`
    /// (doubling while discoveries add nothing). Needs a live indexer to start from.
    pub(super) fn discover_if_due(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        if self.discovering || now < self.next_discovery || self.need() == 0 {
            return;
        }
        if !self.entries.values().any(|e| e.state == EntryState::Live) {
            return;
        }
        self.discovering = true;
        let step = self.config.discovery_interval.saturating_mul(1 << self.discovery_misses.min(3));
        self.next_discovery = now + step;
        // B §4.7: ask for three times the need, keep the best `need`.
        out.emit(NodeOut::DiscoverIndexers { want: self.need().saturating_mul(3) });
    }

    /// Providers found by a discovery: the pool takes up to its need, preferring less loaded
    /// indexers (randomised) and at most one per /24, skipping members and cooling-down peers.
    pub fn on_providers(&mut self, providers: &[ProviderRecord], now: Timestamp, out: &mut Vec<Action>) {
        self.discovering = false;
        if self.shut {
            return;
        }
        let need = self.need();
        let me = self.me;
        let entries = &self.entries;
        let cooldown = &self.cooldown;
        let picked = select_by_fill(
            providers,
            need,
            |p| *p == me || entries.contains_key(p) || cooldown.get(p).is_some_and(|t| *t > now),
            &mut self.rng,
        );
        let mut added = 0;
        for p in picked {
            if self.add_entry(p, AddedVia::Discovery, false, now, out) {
                added += 1;
            }
        }
        if added == 0 {
            self.discovery_misses = self.discovery_misses.saturating_add(1);
        } else {
            self.discovery_misses = 0;
        }
        self.pump(now, out);
    }
}
