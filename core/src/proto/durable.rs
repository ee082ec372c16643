//! Durable state: what the machines ask the host to store ([`Persist`], [`Forget`]) and what it
//! hands back at start ([`Restored`], through [`Input::Restored`](crate::proto::Input::Restored)).
//!
//! The host commits every `Persist` before it executes the outputs that follow it, so nothing
//! another peer relies on (an acknowledged message, a reserved sequence number, a DID binding)
//! can be lost by a crash. [`MemoryStore`] is the reference semantics of a store, in memory: the
//! simulator and the flow tests keep one per peer across crashes; the daemon's redb store follows
//! the same rules on disk.

use crate::proto::app::{InboxEntry, MessageId, QueuedMessage, Relation};
use crate::proto::identity::{Did, PeerId};
use crate::proto::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A DID bound to a key (DESIGN §8: an indexer's DID bindings are durable).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DidBinding {
    /// The DID.
    pub did: Did,
    /// The key it is bound to.
    pub owner: PeerId,
    /// When the binding lapses.
    pub until: Timestamp,
}

/// What the host must store durably, committed before it executes the outputs that follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Persist {
    /// This sender's epoch, and the sequence numbers reserved in it (every id below `reserved` may
    /// have been used; a restart continues from `reserved`).
    Sequence {
        /// The epoch.
        epoch: u64,
        /// First sequence number not yet reserved.
        reserved: u64,
    },
    /// A critical message accepted for delivery (kept until [`Forget::Queued`]).
    Queued(QueuedMessage),
    /// A message received: append it to the inbox and record its id as received from its sender
    /// epoch, whose floor is now `floor` (ids below it may be forgotten).
    Inbox {
        /// The entry.
        entry: InboxEntry,
        /// The sender epoch's floor.
        floor: u64,
    },
    /// A sender epoch's floor rose (ids below it may be forgotten).
    Floor {
        /// The sender.
        sender: PeerId,
        /// Its epoch.
        epoch: u64,
        /// The new floor.
        floor: u64,
    },
    /// An indexer bound a DID to the key that first stored a record for it, until `until`; a
    /// restarted indexer still refuses a DID thief.
    DidBinding(DidBinding),
    /// An indexer banned a peer until `until`; a restarted indexer keeps the ban.
    Ban {
        /// The banned peer.
        peer: PeerId,
        /// When the ban ends.
        until: Timestamp,
    },
    /// A node's peer book changed (set by the local apps): `None` removes the entry.
    Relation {
        /// The peer.
        peer: PeerId,
        /// Its relation now.
        relation: Option<Relation>,
    },
}

/// What the host may delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Forget {
    /// A critical message was acknowledged or abandoned.
    Queued(MessageId),
}

/// Ids received from one sender epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedIds {
    /// The sender.
    pub sender: PeerId,
    /// Its epoch.
    pub epoch: u64,
    /// Every sequence below it is settled.
    pub floor: u64,
    /// Sequences received at or above the floor.
    pub seqs: Vec<u64>,
}

/// Durable state handed back to the core at start ([`Input::Restored`](crate::proto::Input::Restored)).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// The sender epoch and its reserved sequence numbers (`None`: a fresh store).
    pub sequence: Option<(u64, u64)>,
    /// Critical messages not yet acknowledged, oldest first.
    pub queue: Vec<QueuedMessage>,
    /// Ids received, per sender epoch.
    pub received: Vec<ReceivedIds>,
    /// An indexer's DID bindings (the latest per DID; lapsed ones may be left out).
    pub bindings: Vec<DidBinding>,
    /// An indexer's bans (the latest per peer; ended ones may be left out).
    pub bans: Vec<(PeerId, Timestamp)>,
    /// A node's peer book as the apps set it (the configuration is applied over it).
    #[serde(default)]
    pub relations: Vec<(PeerId, Relation)>,
}

/// What applying one [`Persist`] did to a [`MemoryStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Stored.
    Stored,
    /// An inbox entry whose id the inbox already holds: not appended twice (a core bug if it
    /// happens; the store guards against it anyway).
    DuplicateInbox,
}

/// The reference durable store, in memory: persist outputs applied in order, handed back as a
/// [`Restored`]. It survives whatever the peer does, as a disk would.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    sequence: Option<(u64, u64)>,
    queue: BTreeMap<(u64, u64), QueuedMessage>,
    inbox: Vec<InboxEntry>,
    inbox_ids: BTreeSet<MessageId>,
    received: BTreeMap<(PeerId, u64), (u64, BTreeSet<u64>)>,
    bindings: BTreeMap<Did, (PeerId, Timestamp)>,
    bans: BTreeMap<PeerId, Timestamp>,
    relations: BTreeMap<PeerId, Relation>,
    duplicates: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Applies one persist output.
    pub fn apply(&mut self, p: Persist) -> Applied {
        match p {
            Persist::Sequence { epoch, reserved } => self.sequence = Some((epoch, reserved)),
            Persist::Queued(q) => {
                self.queue.insert((q.id.epoch, q.id.seq), q);
            }
            Persist::Inbox { entry, floor } => {
                let id = entry.id;
                let current = self.raise_floor(id.sender, id.epoch, floor);
                if id.seq >= current
                    && let Some(r) = self.received.get_mut(&(id.sender, id.epoch))
                {
                    r.1.insert(id.seq);
                }
                if !self.inbox_ids.insert(id) {
                    self.duplicates += 1;
                    return Applied::DuplicateInbox;
                }
                self.inbox.push(entry);
            }
            Persist::Floor { sender, epoch, floor } => {
                self.raise_floor(sender, epoch, floor);
            }
            Persist::DidBinding(b) => {
                self.bindings.insert(b.did, (b.owner, b.until));
            }
            Persist::Ban { peer, until } => {
                self.bans.insert(peer, until);
            }
            Persist::Relation { peer, relation: Some(r) } => {
                self.relations.insert(peer, r);
            }
            Persist::Relation { peer, relation: None } => {
                self.relations.remove(&peer);
            }
        }
        Applied::Stored
    }

    /// Applies one forget output.
    pub fn forget(&mut self, f: Forget) {
        match f {
            Forget::Queued(id) => {
                self.queue.remove(&(id.epoch, id.seq));
            }
        }
    }

    fn raise_floor(&mut self, sender: PeerId, epoch: u64, floor: u64) -> u64 {
        let r = self.received.entry((sender, epoch)).or_default();
        if floor > r.0 {
            r.0 = floor;
            r.1.retain(|s| *s >= floor);
        }
        r.0
    }

    /// What a restarting peer is handed; bindings and bans that lapsed by `now` are left out.
    pub fn restored(&self, now: Timestamp) -> Restored {
        Restored {
            sequence: self.sequence,
            queue: self.queue.values().cloned().collect(),
            received: self
                .received
                .iter()
                .map(|((sender, epoch), (floor, seqs))| ReceivedIds {
                    sender: *sender,
                    epoch: *epoch,
                    floor: *floor,
                    seqs: seqs.iter().copied().collect(),
                })
                .collect(),
            bindings: self
                .bindings
                .iter()
                .filter(|(_, (_, until))| *until > now)
                .map(|(did, (owner, until))| DidBinding { did: did.clone(), owner: *owner, until: *until })
                .collect(),
            bans: self.bans.iter().filter(|(_, until)| **until > now).map(|(p, u)| (*p, *u)).collect(),
            relations: self.relations.iter().map(|(p, r)| (*p, *r)).collect(),
        }
    }

    /// Whether nothing was ever stored.
    pub fn is_empty(&self) -> bool {
        self.sequence.is_none()
            && self.queue.is_empty()
            && self.inbox.is_empty()
            && self.received.is_empty()
            && self.bindings.is_empty()
            && self.bans.is_empty()
            && self.relations.is_empty()
    }

    /// The inbox, in arrival order.
    pub fn inbox(&self) -> &[InboxEntry] {
        &self.inbox
    }

    /// Critical messages queued (not yet acknowledged or abandoned).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Inbox entries refused because their id was already there.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The key `did` is bound to, if a binding was stored.
    pub fn binding(&self, did: &Did) -> Option<(PeerId, Timestamp)> {
        self.bindings.get(did).copied()
    }

    /// When `peer`'s stored ban ends, if one was stored.
    pub fn ban(&self, peer: &PeerId) -> Option<Timestamp> {
        self.bans.get(peer).copied()
    }
}
