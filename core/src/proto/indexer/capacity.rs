//! Fair capacity under scarcity (issue 13): nodes below their minimum come first.
//!
//! Every heartbeat carries the sender's [`Standing`]: how many *other* indexers count it live,
//! how many it is joining right now, and its minimum. Without it an indexer cannot tell a node
//! that needs it from one that only wants it, and under scarcity (the indexers' capacity covers
//! every node's minimum but not every node's maximum) the slots went to whoever asked first: nodes
//! that already held 3 or 4 indexers kept them while others stayed below their minimum, some at
//! zero, for as long as the scarcity lasted. Two rules fix it, both local to one indexer:
//!
//! * **A full indexer moves a node for a node below its minimum.** When a node that is short
//!   without us asks to join and we are at `max_nodes`, we end the session of a node that keeps at
//!   least its minimum (and at least one indexer) elsewhere — the one with the most spare live
//!   indexers, and among those a node that did not choose us as its search referent — and admit the short
//!   one. The moved node learns it at its next heartbeat: a [`RefuseReason::Moved`] refusal with
//!   suggestions of indexers that have room (somewhere to go); it drops us as after a migration
//!   and still holds its minimum, so nobody is ever pushed to zero to make room. A short node is
//!   refused `Full` only when no session here may move. A probe from a short node is answered
//!   (not refused `Full`) when a session could move for it, so a node's candidate consensus finds
//!   the full indexers that can take it.
//! * **Short nodes come first through the burst guard.** After a short newcomer was refused
//!   `Busy`, newcomers that are not short are refused `Busy` for one `conn_window`, so the
//!   openings of the guard go to the nodes that need them. With no short node waiting, everyone
//!   shares the guard as before.
//!
//! Ties between movable sessions are broken by a key mixed from our id and the node's, so that
//! two full indexers rarely pick the same node at once (its standing, reported by its last
//! heartbeat, cannot tell them about each other's move). The standing is self-reported: a node that
//! lies "short" can take a slot from a node with spare indexers, which still keeps its minimum.

use super::*;
use crate::proto::wire::Standing;

/// Most moved nodes remembered until their next heartbeat (beyond: the oldest is forgotten, and
/// that node is simply treated as a newcomer).
const MOVED_MAX: usize = 1024;

/// Order of the sessions that may move: most spare live indexers first, then nodes that did not
/// choose us as referent, then a key mixed from both ids.
pub(super) type MoveKey = (u16, bool, u64, PeerId);

/// What fair capacity remembers.
#[derive(Clone, Debug, Default)]
pub(super) struct Capacity {
    /// Sessions that may move for a short node, best candidate last.
    pub(super) movable: BTreeSet<MoveKey>,
    /// Nodes whose session was given to a short node, and when: their next heartbeat is refused
    /// `Moved` (once).
    pub(super) moved: BTreeMap<PeerId, Timestamp>,
    /// The last time a short newcomer was refused `Busy`.
    pub(super) short_refused: Option<Timestamp>,
}

/// The key of `peer`'s session in the movable index of indexer `me`, if it may move.
pub(super) fn move_key(me: &PeerId, peer: &PeerId, s: &Session) -> Option<MoveKey> {
    if !s.standing.can_move() {
        return None;
    }
    let (a, b) = (peer.as_bytes(), me.as_bytes());
    let mut mix = [0u8; 8];
    for (i, m) in mix.iter_mut().enumerate() {
        *m = a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    Some((s.standing.spare(), !s.referent, u64::from_le_bytes(mix), *peer))
}

impl IndexerService {
    /// Whether a newcomer with `standing` waits for the short nodes: it is not short, and a short
    /// newcomer was refused `Busy` within the last `conn_window`.
    pub(super) fn defers_to_short(&self, standing: &Standing, now: Timestamp) -> bool {
        !standing.is_short() && self.capacity.short_refused.is_some_and(|t| now.since(t) < self.config.conn_window)
    }

    /// A newcomer with `standing` was refused `Busy`: remember the demand if it is short.
    pub(super) fn note_busy(&mut self, standing: &Standing, now: Timestamp) {
        if standing.is_short() {
            self.capacity.short_refused = Some(now);
        }
    }

    /// The session that would move for a short newcomer, if any.
    pub(super) fn movable_session(&self) -> Option<PeerId> {
        self.capacity.movable.last().map(|k| k.3)
    }

    /// Ends `victim`'s session to make room for a short node; its next heartbeat is refused
    /// `Moved`.
    pub(super) fn move_session(&mut self, victim: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        if !self.close_session(victim, SessionEnd::Moved, out) {
            return;
        }
        let moved = &mut self.capacity.moved;
        moved.insert(victim, now);
        while moved.len() > MOVED_MAX {
            let oldest = moved.iter().min_by_key(|(p, t)| (**t, **p)).map(|(p, _)| *p);
            match oldest {
                Some(p) => moved.remove(&p),
                None => break,
            };
        }
    }

    /// A heartbeat from `peer` without a session: if we moved it and it is not short now, takes
    /// the mark and returns true (refuse it `Moved`). A moved node that became short meanwhile is
    /// treated as any newcomer.
    pub(super) fn take_moved(&mut self, peer: &PeerId, standing: &Standing) -> bool {
        self.capacity.moved.remove(peer).is_some() && !standing.is_short()
    }

    /// Forgets moved nodes that never came back within `session_expiry`.
    pub(super) fn prune_moved(&mut self, now: Timestamp) {
        let stale = self.config.session_expiry;
        self.capacity.moved.retain(|_, at| now.since(*at) <= stale);
        if self.capacity.short_refused.is_some_and(|t| now.since(t) >= self.config.conn_window) {
            self.capacity.short_refused = None;
        }
    }

    /// Suggestions for a node refused for capacity (`Busy`, `Full`, `Moved`): the least loaded
    /// indexers with room; for a short node also full ones, which may move a node for it.
    pub(super) fn capacity_suggestions(&mut self, peer: PeerId, standing: &Standing) -> Vec<PeerAddr> {
        if standing.is_short() {
            self.pick_suggestions(peer, FULL_REFUSAL_SUGGESTIONS, true)
        } else {
            self.least_loaded(peer, FULL_REFUSAL_SUGGESTIONS)
        }
    }
}
