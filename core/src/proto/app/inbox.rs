//! Receiving (spec D §1.4, §5.6.2; DESIGN §8): only from known, unblocked peers, size-capped; a
//! new message is persisted to the inbox *before* it is acknowledged, a duplicate is acknowledged
//! again and not delivered twice.

#[cfg(test)]
use super::MessageId;
use super::PeerBook;
use super::messages::{AppMessage, AppRefusal, Deliver};
use super::{AppOut, InboxEntry, emit};
use crate::proto::config::Config;
use crate::proto::durable::{Persist, ReceivedIds};
use crate::proto::identity::{PeerId, SigCheck};
use crate::proto::time::Timestamp;
use crate::proto::{Action, Event};
use std::collections::{BTreeMap, BTreeSet};

/// Sequences remembered above one sender epoch's floor; an honest sender's floor keeps it small.
const MAX_PER_SENDER: usize = 65_536;
/// Sender epochs remembered.
const MAX_SENDERS: usize = 100_000;

#[derive(Debug, Default)]
struct Seen {
    floor: u64,
    seqs: BTreeSet<u64>,
}

#[derive(Debug, Default)]
pub(super) struct Inbox {
    received: BTreeMap<(PeerId, u64), Seen>,
    /// How the senders' records are checked.
    pub(super) sigs: SigCheck,
}

impl Inbox {
    pub(super) fn restore(&mut self, received: Vec<ReceivedIds>) {
        for r in received {
            let seen = self.received.entry((r.sender, r.epoch)).or_default();
            seen.floor = seen.floor.max(r.floor);
            let floor = seen.floor;
            seen.seqs.extend(r.seqs.into_iter().filter(|s| *s >= floor));
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_deliver(
        &mut self,
        config: &Config,
        book: &PeerBook,
        from: PeerId,
        d: Deliver,
        known: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let id = d.id;
        let record = d.record.as_ref().filter(|r| r.body.peer_id == from && r.verify_with(now, &self.sigs).is_ok());
        let refusal = if book.is_blocked(&from) {
            Some(AppRefusal::Blocked)
        } else if id.sender != from || !(known || record.is_some() || book.is_known(&from)) {
            Some(AppRefusal::Unknown)
        } else if d.payload.len().saturating_add(d.user.len()) > config.app_max_payload {
            Some(AppRefusal::TooLarge)
        } else if !self.received.contains_key(&(from, id.epoch)) && self.received.len() >= MAX_SENDERS {
            Some(AppRefusal::Busy)
        } else {
            None
        };
        if let Some(reason) = refusal {
            emit(out, AppOut::Event(Event::AppIncomingRefused { from, reason }));
            emit(out, AppOut::Send { to: from, message: AppMessage::Refused { id, reason }.into() });
            return;
        }
        let from_did = record.map(|r| r.body.did.clone());
        let seen = self.received.entry((from, id.epoch)).or_default();
        let mut floor_rose = false;
        if d.floor > seen.floor {
            seen.floor = d.floor;
            let floor = d.floor;
            seen.seqs.retain(|s| *s >= floor);
            floor_rose = true;
        }
        let duplicate = id.seq < seen.floor || seen.seqs.contains(&id.seq);
        if duplicate {
            if floor_rose {
                let floor = seen.floor;
                emit(out, AppOut::Persist(Persist::Floor { sender: from, epoch: id.epoch, floor }));
            }
            emit(out, AppOut::Event(Event::AppDuplicate { id }));
            emit(out, AppOut::Send { to: from, message: AppMessage::Ack { id }.into() });
            return;
        }
        if seen.seqs.len() >= MAX_PER_SENDER {
            let reason = AppRefusal::Busy;
            emit(out, AppOut::Event(Event::AppIncomingRefused { from, reason }));
            emit(out, AppOut::Send { to: from, message: AppMessage::Refused { id, reason }.into() });
            return;
        }
        seen.seqs.insert(id.seq);
        let floor = seen.floor;
        let protocol = d.protocol;
        let entry = InboxEntry {
            id,
            from_did,
            protocol,
            datatype: d.datatype,
            user: d.user,
            payload: d.payload,
            received_at: now,
        };
        // Persisted (committed by the host) before the acknowledgement goes out.
        emit(out, AppOut::Persist(Persist::Inbox { entry, floor }));
        emit(out, AppOut::Send { to: from, message: AppMessage::Ack { id }.into() });
        emit(out, AppOut::Event(Event::AppReceived { id, protocol }));
    }

    #[cfg(test)]
    pub(super) fn knows(&self, id: &MessageId) -> bool {
        self.received.get(&(id.sender, id.epoch)).is_some_and(|s| id.seq < s.floor || s.seqs.contains(&id.seq))
    }
}
