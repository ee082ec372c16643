//! The peer book (spec D §6, E F16; DESIGN §9): who this node's partners are and whom it blocks.
//!
//! The seed kept it in the apps' database (`PEER` documents with a `relation`); ocd keeps its own,
//! built from the configuration (`partners`, `trusted_peers`, `blocked_peers`) and from what the
//! local apps say over NATS ([`Command::SetRelation`](crate::proto::Command::SetRelation), which
//! the bridge issues for `PEER` resources that carry a relation). The application-message machine
//! reads it (a blocked peer is refused both ways, a peer in the book counts as known), and the
//! bridge reads it to fan a resource out to the partners or a search out to known peers.
//!
//! Entries the apps set are persisted ([`Persist::Relation`](crate::proto::Persist::Relation));
//! the configuration is applied over them at start, so an operator's `blocked_peers` always wins.

use crate::proto::config::Config;
use crate::proto::identity::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A peer's relation to this node (oc-lib's `PeerRelation`, without `SELF`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Relation {
    /// Known, no special relation: messages from it are accepted, `known` searches reach it.
    Known,
    /// A partner: resources are pushed to it, `partner` searches reach it.
    Partner,
    /// Blocked (the seed's `BLACKLIST`): nothing is sent to it or taken from it.
    Blocked,
}

impl Relation {
    /// `known`, `partner` or `blocked`.
    pub fn name(self) -> &'static str {
        match self {
            Relation::Known => "known",
            Relation::Partner => "partner",
            Relation::Blocked => "blocked",
        }
    }
}

/// The peer book: one relation per peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerBook {
    entries: BTreeMap<PeerId, Relation>,
}

impl PeerBook {
    /// The book the configuration describes.
    pub fn from_config(config: &Config) -> PeerBook {
        let mut book = PeerBook::default();
        book.apply_config(config);
        book
    }

    /// Applies the configuration over the entries: trusted peers are at least known, partners are
    /// partners, blocked peers are blocked (in that order: blocking wins).
    pub fn apply_config(&mut self, config: &Config) {
        for p in &config.trusted_peers {
            self.entries.entry(*p).or_insert(Relation::Known);
        }
        for p in &config.partners {
            self.entries.insert(*p, Relation::Partner);
        }
        for p in &config.blocked_peers {
            self.entries.insert(*p, Relation::Blocked);
        }
    }

    /// Sets (or with `None` removes) a peer's relation; whether anything changed.
    pub fn set(&mut self, peer: PeerId, relation: Option<Relation>) -> bool {
        match relation {
            Some(r) => self.entries.insert(peer, r) != Some(r),
            None => self.entries.remove(&peer).is_some(),
        }
    }

    /// A peer's relation, if it is in the book.
    pub fn relation(&self, peer: &PeerId) -> Option<Relation> {
        self.entries.get(peer).copied()
    }

    /// Whether `peer` is blocked.
    pub fn is_blocked(&self, peer: &PeerId) -> bool {
        self.relation(peer) == Some(Relation::Blocked)
    }

    /// Whether `peer` is in the book and not blocked.
    pub fn is_known(&self, peer: &PeerId) -> bool {
        matches!(self.relation(peer), Some(Relation::Known | Relation::Partner))
    }

    /// The partners, in id order.
    pub fn partners(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.entries.iter().filter(|(_, r)| **r == Relation::Partner).map(|(p, _)| *p)
    }

    /// Every peer in the book that is not blocked, in id order.
    pub fn known(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.entries.iter().filter(|(_, r)| **r != Relation::Blocked).map(|(p, _)| *p)
    }

    /// Every entry, in id order.
    pub fn entries(&self) -> impl Iterator<Item = (PeerId, Relation)> + '_ {
        self.entries.iter().map(|(p, r)| (*p, *r))
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
