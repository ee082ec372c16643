//! Challenge batches (spec A §6.5): every 1–10 heartbeats the node asks an indexer about its own
//! session (ground truth) and a few other pool members, and every fifth batch about its DID, which
//! the indexer must resolve in the DHT to the node's own intact record.

use super::*;

impl IndexerPool {
    pub(super) fn draw_challenge_spacing(&mut self) -> u32 {
        let lo = u64::from(self.config.challenge_spacing_min.max(1));
        let hi = u64::from(self.config.challenge_spacing_max);
        u32::try_from(self.rng.range_inclusive(lo, hi)).unwrap_or(u32::MAX)
    }

    /// If the next heartbeat to `peer` is a challenge batch, draws the spacing to the one after.
    pub(super) fn draw_challenge_spacing_if_due(&mut self, peer: &PeerId) -> Option<u32> {
        let e = self.entries.get(peer)?;
        if e.score.hb_count.saturating_add(1) >= e.score.next_challenge {
            Some(self.draw_challenge_spacing())
        } else {
            None
        }
    }
}
