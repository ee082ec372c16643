//! A node's searches (C §15.3, node side): one active search per user, sent to the referent (else
//! the best live indexer, then the next one if that fails before any hit), every hit verified and
//! deduplicated by peer id, ended by the emitter's `Done`, our own idle timer, the result cap or a
//! cancellation.

use super::{SearchEnd, SearchOut, SearchQuery, emit_event};
use crate::proto::action::Sink;
use crate::proto::config::Config;
use crate::proto::identity::{PeerAddr, PeerId, SigCheck};
use crate::proto::time::Timestamp;
use crate::proto::wire::RequestId;
use crate::proto::{Action, Event};
use std::collections::{BTreeMap, BTreeSet};

use super::messages::{SearchHits, SearchMessage, SearchRequest};

/// Most searches a node keeps in flight (one per user).
pub(super) const MAX_ACTIVE: usize = 64;
/// Indexers a search tries before it fails.
const MAX_ATTEMPTS: usize = 2;

#[derive(Debug)]
struct Active {
    id: u64,
    user: String,
    query: SearchQuery,
    to: PeerId,
    /// Indexers not asked yet, next last.
    rest: Vec<PeerAddr>,
    seen: BTreeSet<PeerId>,
    idle: Timestamp,
    /// The emitter has answered (its first batch, empty or not); until then, by this time.
    answer_by: Option<Timestamp>,
}

#[derive(Debug, Default)]
pub(super) struct Client {
    active: BTreeMap<RequestId, Active>,
    by_user: BTreeMap<String, RequestId>,
    next_req: u64,
    /// Resource searches put to us lately, by origin, until when they are remembered: a node that
    /// hears one from two indexers (it just changed referent) hands it to its apps once.
    asked: BTreeMap<(PeerId, u64), Timestamp>,
    /// How hits are checked.
    pub(super) sigs: SigCheck,
}

/// How long a resource search put to us is remembered (a mesh query's lifetime).
const ASKED_MEMORY: std::time::Duration = std::time::Duration::from_secs(60);
/// Most resource searches remembered (the oldest is forgotten beyond).
const ASKED_MAX: usize = 4096;

impl Client {
    pub(super) fn start(
        &mut self,
        config: &Config,
        (id, user): (u64, String),
        query: SearchQuery,
        indexers: Vec<PeerAddr>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        self.cancel_user(&user, SearchEnd::Cancelled, out);
        let end = if !query.is_valid() {
            Some(SearchEnd::Invalid)
        } else if indexers.is_empty() {
            Some(SearchEnd::NoIndexer)
        } else if self.active.len() >= MAX_ACTIVE {
            Some(SearchEnd::TooMany)
        } else {
            None
        };
        if let Some(end) = end {
            emit_event(out, Event::SearchDone { id, hits: 0, end });
            return;
        }
        let mut rest: Vec<PeerAddr> = indexers.into_iter().take(MAX_ATTEMPTS).collect();
        rest.reverse();
        let a =
            Active { id, user, query, to: PeerId([0; 32]), rest, seen: BTreeSet::new(), idle: now, answer_by: None };
        self.ask_next(config, a, now, out);
    }

    /// Whether a resource search put to us by `origin` is new (and remembers it).
    pub(super) fn first_ask(&mut self, origin: (PeerId, u64), now: Timestamp) -> bool {
        self.asked.retain(|_, until| *until > now);
        if self.asked.contains_key(&origin) {
            return false;
        }
        if self.asked.len() >= ASKED_MAX
            && let Some(oldest) = self.asked.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k)
        {
            self.asked.remove(&oldest);
        }
        self.asked.insert(origin, now + ASKED_MEMORY);
        true
    }

    /// A fresh request id (shared with peer searches, so a refusal is never mistaken).
    pub(super) fn next_request(&mut self) -> RequestId {
        self.next_req += 1;
        RequestId(self.next_req)
    }

    /// Sends the search to the next indexer, or ends it `Failed`.
    fn ask_next(&mut self, config: &Config, mut a: Active, now: Timestamp, out: &mut Vec<Action>) {
        let Some(next) = a.rest.pop() else {
            emit_event(out, Event::SearchDone { id: a.id, hits: 0, end: SearchEnd::Failed });
            return;
        };
        self.next_req += 1;
        let req = RequestId(self.next_req);
        a.to = next.id;
        a.idle = now + idle_timeout(config);
        a.answer_by = Some(now + config.response_timeout);
        out.emit(SearchOut::Learn(next.clone()));
        let message = SearchMessage::Request(SearchRequest { req, query: a.query.clone() });
        out.emit(SearchOut::Send { to: next.id, message: message.into() });
        self.by_user.insert(a.user.clone(), req);
        self.active.insert(req, a);
    }

    fn finish(&mut self, req: RequestId, end: SearchEnd, tell: bool, out: &mut Vec<Action>) {
        let Some(a) = self.active.remove(&req) else {
            return;
        };
        if self.by_user.get(&a.user) == Some(&req) {
            self.by_user.remove(&a.user);
        }
        if tell {
            out.emit(SearchOut::Send { to: a.to, message: SearchMessage::Cancel { req }.into() });
        }
        let hits = u32::try_from(a.seen.len()).unwrap_or(u32::MAX);
        emit_event(out, Event::SearchDone { id: a.id, hits, end });
    }

    pub(super) fn cancel_user(&mut self, user: &str, end: SearchEnd, out: &mut Vec<Action>) {
        if let Some(req) = self.by_user.get(user).copied() {
            self.finish(req, end, true, out);
        }
    }

    pub(super) fn on_hits(
        &mut self,
        config: &Config,
        from: PeerId,
        h: SearchHits,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(a) = self.active.get_mut(&h.req) else {
            return;
        };
        if a.to != from {
            return;
        }
        a.answer_by = None;
        let mut forged = false;
        let max = config.search_max_results;
        for r in h.records.into_iter().take(config.search_max_batch) {
            if r.verify_with(now, &self.sigs).is_err() || !a.query.matches(&r) {
                forged = true;
                emit_event(out, Event::ForgedHitDropped { from, owner: r.body.peer_id });
                continue;
            }
            if a.seen.len() < max && a.seen.insert(r.body.peer_id) {
                a.idle = now + idle_timeout(config);
                emit_event(out, Event::SearchHit { id: a.id, record: r, from });
            }
        }
        let full = a.seen.len() >= max;
        if forged {
            // An honest emitter verifies every hit: this one lies. Verified hits still count.
            out.emit(SearchOut::Distrust { indexer: from });
        }
        if full {
            self.finish(h.req, SearchEnd::Limit, true, out);
        }
    }

    pub(super) fn on_done(&mut self, from: PeerId, req: RequestId, out: &mut Vec<Action>) {
        if self.active.get(&req).is_some_and(|a| a.to == from) {
            self.finish(req, SearchEnd::Idle, false, out);
        }
    }

    /// The emitter refused or is gone: before any hit, try the next indexer.
    pub(super) fn on_failure(
        &mut self,
        config: &Config,
        from: PeerId,
        req: RequestId,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        if self.active.get(&req).is_none_or(|a| a.to != from) {
            return;
        }
        let Some(a) = self.active.remove(&req) else {
            return;
        };
        self.by_user.remove(&a.user);
        if a.seen.is_empty() {
            self.ask_next(config, a, now, out);
        } else {
            let hits = u32::try_from(a.seen.len()).unwrap_or(u32::MAX);
            emit_event(out, Event::SearchDone { id: a.id, hits, end: SearchEnd::Idle });
        }
    }

    pub(super) fn on_unreachable(&mut self, config: &Config, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        let reqs: Vec<RequestId> = self.active.iter().filter(|(_, a)| a.to == peer).map(|(r, _)| *r).collect();
        for r in reqs {
            self.on_failure(config, peer, r, now, out);
        }
    }

    pub(super) fn handle_timeout(&mut self, config: &Config, now: Timestamp, out: &mut Vec<Action>) {
        // An emitter that never answered (crashed, not yet known to be): the next indexer.
        let silent: Vec<(RequestId, PeerId)> = self
            .active
            .iter()
            .filter(|(_, a)| a.answer_by.is_some_and(|t| t <= now))
            .map(|(r, a)| (*r, a.to))
            .collect();
        for (r, to) in silent {
            out.emit(SearchOut::Send { to, message: SearchMessage::Cancel { req: r }.into() });
            self.on_failure(config, to, r, now, out);
        }
        let due: Vec<RequestId> = self.active.iter().filter(|(_, a)| a.idle <= now).map(|(r, _)| *r).collect();
        for r in due {
            self.finish(r, SearchEnd::Idle, true, out);
        }
    }

    pub(super) fn poll_timeout(&self) -> Option<Timestamp> {
        self.active.values().flat_map(|a| [Some(a.idle), a.answer_by]).flatten().min()
    }

    pub(super) fn active(&self) -> Vec<(String, u64, u32)> {
        self.active.values().map(|a| (a.user.clone(), a.id, u32::try_from(a.seen.len()).unwrap_or(u32::MAX))).collect()
    }
}

/// The node's own idle timer: the emitter's `search_timeout` plus a round trip of grace, so the
/// emitter's `Done` normally ends the search.
fn idle_timeout(config: &Config) -> std::time::Duration {
    config.search_timeout + config.response_timeout
}
