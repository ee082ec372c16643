//! Offload (spec C §6, §12.10): above `offload_threshold` fill, ask at most `offload_batch` nodes at
//! a time to migrate, with a grace before asking others.

use super::*;

/// Offload state (C §6, §12.10): nodes asked to migrate, and those that did not within the grace.
#[derive(Clone, Debug, Default)]
pub(super) struct Offload {
    pub(super) in_batch: BTreeMap<PeerId, Timestamp>,
    pub(super) already_tried: BTreeSet<PeerId>,
}

impl Offload {
    pub(super) fn reset(&mut self) {
        self.in_batch.clear();
        self.already_tried.clear();
    }
}

impl IndexerService {
    /// C §12.10: above the threshold, ask at most `offload_batch` nodes at a time to migrate; one
    /// that has not moved within `offload_grace` joins "already tried" and is not asked again until
    /// every session has been tried. At or below the threshold the state is reset.
    ///
    /// Fixes over the seed (issue 13): a node is asked only when it has somewhere to go (a
    /// suggestion known to be at or below the threshold — the seed asked as soon as any
    /// suggestion existed, so under scarcity nodes moved from one full indexer to another) and
    /// keeps its minimum without us (its [`Standing`](crate::proto::wire::Standing)); a node that
    /// would refuse does not take a batch slot.
    pub(super) fn offload_decision(
        &mut self,
        peer: PeerId,
        fill_rate: f64,
        somewhere_to_go: bool,
        now: Timestamp,
    ) -> bool {
        if fill_rate <= self.config.offload_threshold {
            self.offload.reset();
            return false;
        }
        if !somewhere_to_go || !self.behaviour.session(&peer).is_some_and(|s| s.standing.can_move()) {
            return false;
        }
        let grace = self.config.offload_grace;
        let overdue: Vec<PeerId> =
            self.offload.in_batch.iter().filter(|(_, asked)| now.since(**asked) > grace).map(|(p, _)| *p).collect();
        for p in overdue {
            self.offload.in_batch.remove(&p);
            self.offload.already_tried.insert(p);
        }
        if self.offload.already_tried.len() >= self.behaviour.session_count() {
            self.offload.already_tried.clear();
        }
        if self.offload.already_tried.contains(&peer) {
            return false;
        }
        if self.offload.in_batch.contains_key(&peer) {
            return true;
        }
        if self.offload.in_batch.len() < self.config.offload_batch {
            self.offload.in_batch.insert(peer, now);
            return true;
        }
        false
    }
}
