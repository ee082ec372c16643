//! The node side of the record service: looking a peer up through the node's indexers.
//!
//! A node is a DHT client: rather than walking the DHT itself (which would mean connections to
//! indexers that do not know it, and that the "is this peer known" gate refuses, C §14.1), it asks
//! one of its live indexers with `GetRecord`; the indexer answers from its store or from an
//! iterative DHT lookup. The reply carries the record itself, which the node verifies — signature,
//! expiry, and that it is the record asked for (seed: the indexer did not re-verify and the node
//! trusted `Found`, C §14.3). An empty, invalid or missing answer moves on to the next indexer, up
//! to `lookup_attempts`, each bounded by `lookup_timeout`.

use super::config::Config;
use super::identity::{PeerAddr, PeerId};
use super::time::Timestamp;
use super::wire::{GetRecord, Message, RecordKey, RecordReply, RequestId};
use super::{Action, Event};
use std::collections::BTreeMap;

/// Request ids of record lookups carry this bit.
pub const REQ_SPACE: u64 = 1 << 61;

#[derive(Clone, Debug)]
struct Pending {
    id: u64,
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
    next_req: u64,
}

impl RecordLookups {
    /// No lookup in flight.
    pub fn new(config: Config) -> Self {
        RecordLookups { config, pending: BTreeMap::new(), next_req: 1 }
    }

    /// Whether `req` belongs to a record lookup.
    pub fn owns(req: RequestId) -> bool {
        req.0 & REQ_SPACE != 0 && req.0 & super::dht::REQ_SPACE == 0
    }

    /// Lookups in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no lookup is in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Starts lookup `id` of `key`, asking `indexers` in order (at most `lookup_attempts`). With no
    /// indexer, it fails at once.
    pub fn start(&mut self, id: u64, key: RecordKey, indexers: Vec<PeerAddr>, now: Timestamp, out: &mut Vec<Action>) {
        let max = usize::try_from(self.config.lookup_attempts.max(1)).unwrap_or(usize::MAX);
        let mut rest: Vec<PeerAddr> = indexers.into_iter().take(max).collect();
        rest.reverse();
        self.ask_next(id, key, rest, 0, now, out);
    }

    fn ask_next(
        &mut self,
        id: u64,
        key: RecordKey,
        mut rest: Vec<PeerAddr>,
        attempts: u32,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(next) = rest.pop() else {
            out.push(Action::Event(Event::LookupDone { id, key, record: None, hops: 0, attempts }));
            return;
        };
        let req = RequestId(REQ_SPACE | (self.next_req & (REQ_SPACE - 1)));
        self.next_req = self.next_req.wrapping_add(1);
        out.push(Action::Learn(next.clone()));
        out.push(Action::Send { to: next.id, message: Message::GetRecord(GetRecord { req, key: key.clone() }) });
        self.pending.insert(
            req,
            Pending { id, key, to: next.id, rest, attempts: attempts + 1, deadline: now + self.config.lookup_timeout },
        );
    }

    /// An indexer's answer. A verified record for the key ends the lookup; anything else moves on.
    pub fn on_reply(&mut self, from: PeerId, reply: RecordReply, now: Timestamp, out: &mut Vec<Action>) {
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
            Some(record) => out.push(Action::Event(Event::LookupDone {
                id: p.id,
                key: p.key,
                record: Some(record),
                hops: u32::from(reply.hops),
                attempts: p.attempts,
            })),
            None => self.ask_next(p.id, p.key, p.rest, p.attempts, now, out),
        }
    }

    /// The request `req` was refused, or its indexer is gone: try the next one.
    pub fn on_failure(&mut self, req: RequestId, now: Timestamp, out: &mut Vec<Action>) {
        if let Some(p) = self.pending.remove(&req) {
            self.ask_next(p.id, p.key, p.rest, p.attempts, now, out);
        }
    }

    /// `peer` cannot be reached: its requests fail.
    pub fn on_unreachable(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        let reqs: Vec<RequestId> = self.pending.iter().filter(|(_, p)| p.to == peer).map(|(r, _)| *r).collect();
        for r in reqs {
            self.on_failure(r, now, out);
        }
    }

    /// Fails requests past their deadline.
    pub fn handle_timeout(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let due: Vec<RequestId> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(r, _)| *r).collect();
        for r in due {
            self.on_failure(r, now, out);
        }
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.pending.values().map(|p| p.deadline).min()
    }
}
