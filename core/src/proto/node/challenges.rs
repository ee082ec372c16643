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

/// Who the node is, for judging challenge answers: its id, its DID, and how its own record's
/// signature is checked (the pool's [`SigCheck`]).
#[derive(Clone, Copy)]
pub(super) struct Ours<'a> {
    pub(super) me: PeerId,
    pub(super) did: &'a Did,
    pub(super) sigs: &'a SigCheck,
}

impl Entry {
    /// Judges the answers to a challenge batch: the node's own session must be found and recent;
    /// a DID challenge counts only if the DHT returned the node's own, intact record.
    pub(super) fn judge_challenges(
        &mut self,
        sent: HeartbeatSent,
        r: &HeartbeatResponse,
        ours: Ours<'_>,
        now: Timestamp,
        cfg: &Config,
    ) {
        let Ours { me, did, sigs } = ours;
        let e = self;
        if sent.challenge {
            let last_seen = r.challenges.iter().find(|c| c.peer == me && c.found).and_then(|c| c.last_seen);
            let correct = last_seen.is_some_and(|t| e.score.own_session_recent(t, now, cfg));
            e.score.challenge_answered = e.score.challenge_answered.saturating_add(1);
            if correct {
                e.score.challenge_correct = e.score.challenge_correct.saturating_add(1);
            }
        }
        if sent.did_challenge {
            e.score.did_checked = e.score.did_checked.saturating_add(1);
            // Found only if the DHT returned our own record, intact.
            let ours = r.did_record.as_ref().is_some_and(|rec| {
                rec.body.peer_id == me && rec.body.did == *did && rec.verify_with(now, sigs).is_ok()
            });
            if r.did_found == Some(true) && ours {
                e.score.did_success = e.score.did_success.saturating_add(1);
            }
        }
    }
}
