//! The node side of the record service: looking a peer up through the node's indexers.
//!
//! A node is a DHT client: rather than walking the DHT itself (which would mean connections to
//! indexers that do not know it, and that the "is this peer known" gate refuses, C §14.1), it asks
//! one of its live indexers with `GetRecord`; the indexer answers from its store or from an
//! iterative DHT lookup. The reply carries the record itself, which the node verifies — signature,
//! expiry, and that it is the record asked for (seed: the indexer did not re-verify and the node
//! trusted `Found`, C §14.3). An empty, invalid or missing answer moves on to the next indexer, up
//! to `lookup_attempts`, each bounded by `lookup_timeout`.

use super::NodeOut;
use crate::proto::action::Sink;
use crate::proto::config::Config;
use crate::proto::identity::{PeerAddr, PeerId};
use crate::proto::time::Timestamp;
use crate::proto::wire::{GetRecord, RecordKey, RecordReply, RequestId};
use crate::proto::{Action, Event};
use std::collections::BTreeMap;

/// Who asked for a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The application ([`Command::Lookup`](crate::proto::Command::Lookup)): answered by
    /// [`Event::LookupDone`].
    Command(u64),
    /// Another machine (a message destination): answered by [`NodeOut::Resolved`].
    Resolve(u64),
}

#[derive(Clone, Debug)]
struct Pending {
    id: Origin,
    key: RecordKey,
    to: PeerId,
    /// Indexers not asked yet, in order.
    rest: Vec<PeerAddr>,
    attempts: u32,
    deadline: Timestamp,
}

/// Record lookups in flight from this node.
#[derive(Debug)]
pub struct RecordLookups {
    config: Config,
    pending: BTreeMap<RequestId, Pending>,
}

impl RecordLookups {
    /// No lookup in flight.
    pub fn new(config: Config) -> Self {
        RecordLookups { config, pending: BTreeMap::new() }
    }

    /// Lookups in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Starts lookup `id` of `key`, asking `indexers` in order (at most `lookup_attempts`). With no
    /// indexer, it fails at once.
    pub fn start(
        &mut self,
        id: Origin,
        key: RecordKey,
        indexers: Vec<PeerAddr>,
        ids: &mut u64,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let max = usize::try_from(self.config.lookup_attempts.max(1)).unwrap_or(usize::MAX);
        let mut rest: Vec<PeerAddr> = indexers.into_iter().take(max).collect();
        rest.reverse();
        self.ask_next((id, key), rest, 0, ids, now, out);
    }

    /// Asks the next indexer of `rest` for lookup `(id, key)`, or ends it when none is left.
    fn ask_next(
        &mut self,
        (id, key): (Origin, RecordKey),
        mut rest: Vec<PeerAddr>,
        attempts: u32,
        ids: &mut u64,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(next) = rest.pop() else {
            out.emit(done(id, key, None, 0, attempts));
            return;
        };
        let req = super::next_request(ids);
        out.emit(NodeOut::Learn(next.clone()));
        out.emit(NodeOut::Send { to: next.id, message: GetRecord { req, key: key.clone() }.into() });
        self.pending.insert(
            req,
            Pending { id, key, to: next.id, rest, attempts: attempts + 1, deadline: now + self.config.lookup_timeout },
        );
    }

    /// An indexer's answer. A verified record for the key ends the lookup; anything else moves on.
    pub fn on_reply(&mut self, from: PeerId, reply: RecordReply, ids: &mut u64, now: Timestamp, out: &mut Vec<Action>) {
        let Some(p) = self.pending.get(&reply.req) else {
            return;
        };
        if p.to != from {
            return;
        }
        let Some(p) = self.pending.remove(&reply.req) else {
            return;
        };
        let valid = reply.record.filter(|r| p.key.matches(r) && r.verify(now).is_ok());
        match valid {
            Some(record) => out.emit(done(p.id, p.key, Some(record), u32::from(reply.hops), p.attempts)),
            None => self.ask_next((p.id, p.key), p.rest, p.attempts, ids, now, out),
        }
    }

    /// The request `req` was refused, or its indexer is gone: try the next one.
    pub fn on_failure(&mut self, req: RequestId, ids: &mut u64, now: Timestamp, out: &mut Vec<Action>) {
        if let Some(p) = self.pending.remove(&req) {
            self.ask_next((p.id, p.key), p.rest, p.attempts, ids, now, out);
        }
    }

    /// `peer` cannot be reached: its requests fail.
    pub fn on_unreachable(&mut self, peer: PeerId, ids: &mut u64, now: Timestamp, out: &mut Vec<Action>) {
        let reqs: Vec<RequestId> = self.pending.iter().filter(|(_, p)| p.to == peer).map(|(r, _)| *r).collect();
        for r in reqs {
            self.on_failure(r, ids, now, out);
        }
    }

    /// Fails requests past their deadline.
    pub fn handle_timeout(&mut self, ids: &mut u64, now: Timestamp, out: &mut Vec<Action>) {
        let due: Vec<RequestId> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(r, _)| *r).collect();
        for r in due {
            self.on_failure(r, ids, now, out);
        }
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.pending.values().map(|p| p.deadline).min()
    }
}

/// A finished lookup, told to whoever asked.
fn done(id: Origin, key: RecordKey, record: Option<crate::proto::PeerRecord>, hops: u32, attempts: u32) -> NodeOut {
    match id {
        Origin::Command(id) => NodeOut::Event(Event::LookupDone { id, key, record, hops, attempts }),
        Origin::Resolve(token) => NodeOut::Resolved { token, record, asked: attempts > 0 },
    }
}

/// The answer to a lookup on a peer with no pool to ask: not found, nobody asked.
pub fn unanswerable(id: u64, key: RecordKey) -> Event {
    Event::LookupDone { id, key, record: None, hops: 0, attempts: 0 }
}
