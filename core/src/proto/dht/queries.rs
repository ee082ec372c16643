//! Iterative queries (Kademlia §2.3): each wraps a [`Lookup`] (α in flight, every RPC bounded by
//! `kad_rpc_timeout`, the query by `lookup_timeout`; reads hedged, see `hedge.rs`) and, for
//! writes, ends by sending one-way writes to the k closest peers found. Replies and refusals
//! arrive in the `Dht` envelope variant and are matched to their RPC by request id and sender.

use super::*;

impl Dht {
    /// Looks `key` up: the local store first (unless `skip_local`), then the DHT, from the routing
    /// table's closest peers, hedged (one `FIND_VALUE` at first, see `hedge.rs`). The answer
    /// comes back as [`DhtDone::Value`] (at once when held locally).
    pub fn find_value(
        &mut self,
        key: RecordKey,
        purpose: Purpose,
        skip_local: bool,
        deadline: Duration,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> QueryId {
        let qid = self.alloc_query();
        if !skip_local && let Some(r) = self.local(&key, now).cloned() {
            out.emit(DhtOut::QueryDone(DhtDone::Value { query: qid, purpose, key, record: Some(r), hops: 0 }));
            return qid;
        }
        let target = key.kad_key();
        self.stats.reads += 1;
        // When the query cannot start, `start` already reported it finished empty under `qid`.
        self.start(qid, Goal::Value { key }, purpose, target, &[], deadline, now, out);
        self.advance(qid, now, out);
        qid
    }

    /// Starts an internal maintenance query (a claim check, replication, a provider announcement,
    /// a table refresh) towards `target`, bounded by `lookup_timeout`. Returns whether it started
    /// (at most `kad_max_queries` run at once).
    pub(super) fn maintain(&mut self, goal: Goal, target: Key, now: Timestamp, out: &mut Vec<Action>) -> bool {
        let qid = self.alloc_query();
        let deadline = self.config.lookup_timeout;
        let started = self.start(qid, goal, Purpose::Internal, target, &[], deadline, now, out);
        self.advance(qid, now, out);
        started.is_some()
    }

    /// Finds providers of the indexer rendezvous key ([`DhtDone::Providers`]), stopping once
    /// `want` distinct providers are known or the lookup converges.
    pub fn find_providers(
        &mut self,
        want: usize,
        purpose: Purpose,
        seeds: &[PeerAddr],
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> bool {
        let qid = self.alloc_query();
        let deadline = self.config.lookup_timeout;
        let mut providers = BTreeMap::new();
        if self.server {
            for (p, r) in &self.providers {
                if *p != self.me && r.body.expires_at > now {
                    providers.insert(*p, r.clone());
                }
            }
        }
        let started = self.start(
            qid,
            Goal::Providers { want: want.max(1) },
            purpose,
            indexer_rendezvous(),
            seeds,
            deadline,
            now,
            out,
        );
        if let Some(q) = started.and_then(|q| self.queries.get_mut(&q)) {
            q.providers = providers;
        }
        self.advance(qid, now, out);
        started.is_some()
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn start(
        &mut self,
        qid: QueryId,
        goal: Goal,
        purpose: Purpose,
        target: Key,
        seeds: &[PeerAddr],
        deadline: Duration,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> Option<QueryId> {
        if self.queries.len() >= self.config.kad_max_queries {
            self.stats.queries_refused += 1;
            self.finish_empty(goal, purpose, qid, out);
            return None;
        }
        self.stats.queries += 1;
        let mut start = self.table.closest(&target, self.lookup_config.k);
        for s in seeds {
            if s.id != self.me && !start.iter().any(|a| a.id == s.id) {
                start.push(s.clone());
            }
        }
        // Writes and claim checks converge on the α closest (see `LookupConfig::converge`): a
        // record or a provider announcement is stored on the k closest *known* once the peers
        // nearest the key have answered, and a claim is checked against the peers that would
        // hold the DID's record. Reads keep Kademlia's full rule: a value is usually found in the
        // first round, and a miss is worth the extra RPCs.
        // Claim checks and takeovers only with a routing table of at least k peers: a young or
        // small DHT's table knows too little around a key for the α closest to be the key's
        // neighbourhood, and a binding missed is a DID stolen. A write converges at any size: a
        // record written from a young table is written again to the replicas its keys gain
        // once the table holds k (`young_writes`), and in a DHT of fewer than k the α closest
        // return everyone, the whole replica set.
        let converge = self.table.len() >= self.lookup_config.k;
        let config = match goal {
            Goal::Replicate { .. } => self.lookup_config.converged(),
            Goal::Provide { .. } | Goal::Claim { .. } | Goal::Takeover { .. } if converge => {
                self.lookup_config.converged()
            }
            _ => self.lookup_config,
        };
        // Reads are hedged (see `hedge.rs`): one `FIND_VALUE` at first, the others only when it
        // is late, failed or came back without the value.
        // A takeover asks as many as it needs holders: usually they all hold the version.
        let lookup = match goal {
            Goal::Value { .. } => Lookup::hedged(self.me, target, start, config),
            Goal::Takeover { .. } => Lookup::hedged_by(self.me, target, start, config, TAKEOVER_HOLDERS),
            _ => Lookup::new(self.me, target, start, config),
        };
        self.queries.insert(
            qid,
            Query {
                goal,
                purpose,
                lookup,
                deadline: now + deadline,
                found: None,
                providers: BTreeMap::new(),
                hedge_at: None,
            },
        );
        Some(qid)
    }

    pub(super) fn alloc_query(&mut self) -> QueryId {
        let q = self.next_query;
        self.next_query += 1;
        q
    }

    pub(super) fn next_request(&mut self) -> RequestId {
        let r = RequestId(self.next_req);
        self.next_req = self.next_req.wrapping_add(1).max(1);
        r
    }

    /// Reports a query that could not run as finished with nothing.
    pub(super) fn finish_empty(&mut self, goal: Goal, purpose: Purpose, qid: QueryId, out: &mut Vec<Action>) {
        let done = match goal {
            Goal::Value { key } => DhtDone::Value { query: qid, purpose, key, record: None, hops: 0 },
            Goal::Providers { .. } => DhtDone::Providers { purpose, providers: Vec::new() },
            Goal::Claim { publisher, .. } => {
                // Not started (too many queries): no verdict on the publisher, whose record is
                // refused `Stale` by the caller and offered again with its next heartbeat.
                self.claims.remove(&publisher);
                return;
            }
            _ => return,
        };
        out.emit(DhtOut::QueryDone(done));
    }

    /// A reply (`Nodes`, `Value`, `Providers`, `StoreAck`) or a refusal to one of our RPCs.
    pub fn on_response(&mut self, from: PeerAddr, message: DhtMessage, now: Timestamp, out: &mut Vec<Action>) {
        let Some(req) = message.reply_to() else {
            return;
        };
        let message = match message {
            DhtMessage::Refused(_) => None,
            m => Some(m),
        };
        self.answer(from, req, message, now, out);
    }

    /// Our RPC `req` was answered (`Some`) or failed (`None`: refused or unreachable).
    pub(super) fn answer(
        &mut self,
        from: PeerAddr,
        req: RequestId,
        message: Option<DhtMessage>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some((qid, asked, sent)) = self.rpcs.get(&req).copied() else {
            return;
        };
        if asked != from.id {
            return;
        }
        self.rpcs.remove(&req);
        if message.is_some() {
            self.rtt.sample(now.since(sent));
        }
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        let answered = message.is_some();
        if answered {
            self.failures.remove(&from.id);
            // A server learns a peer that answers; a client keeps it as a starting point.
            self.table.insert(from.clone(), now);
        }
        match message {
            None => q.lookup.on_failure(&from.id),
            Some(DhtMessage::Nodes(n)) => {
                for c in &n.closer {
                    out.emit(DhtOut::Learn(c.clone()));
                }
                q.lookup.on_response(&from.id, n.closer);
            }
            Some(DhtMessage::Value(v)) => {
                let hop = q.lookup.hop_of(&from.id).unwrap_or(1);
                let key = match &q.goal {
                    Goal::Value { key } => Some(key.clone()),
                    Goal::Claim { record, .. } => Some(RecordKey::Did(record.body.did.clone())),
                    _ => None,
                };
                let mut hit = false;
                if let Goal::Takeover { record, holders } = &mut q.goal {
                    // Identical to the version we hold (and verified): no need to verify it.
                    if v.record.as_ref() == Some(&*record) {
                        *holders += 1;
                        hit = true;
                    }
                } else if let (Some(r), Some(key)) = (v.record, key) {
                    self.stats.verifications += 1;
                    if key.matches(&r) && r.verify_with(now, &self.sigs).is_ok() {
                        let better = q.found.as_ref().is_none_or(|(old, _)| r.supersedes(old));
                        if better {
                            q.found = Some((r, hop));
                        }
                    }
                }
                for c in &v.closer {
                    out.emit(DhtOut::Learn(c.clone()));
                }
                if hit {
                    q.lookup.on_hit(&from.id, v.closer);
                } else {
                    q.lookup.on_response(&from.id, v.closer);
                }
            }
            Some(DhtMessage::Providers(p)) => {
                for r in p.providers.into_iter().take(PROVIDERS_PER_ANSWER) {
                    let id = r.body.provider.id;
                    if id == self.me || q.providers.get(&id).is_some_and(|o| o.body.expires_at >= r.body.expires_at) {
                        continue;
                    }
                    self.stats.verifications += 1;
                    if r.verify_with(now, &self.sigs).is_ok() {
                        q.providers.insert(id, r);
                    }
                }
                for c in &p.closer {
                    out.emit(DhtOut::Learn(c.clone()));
                }
                q.lookup.on_response(&from.id, p.closer);
            }
            Some(_) => q.lookup.on_failure(&from.id),
        }
        if !answered {
            self.note_failure(from.id, now);
        }
        self.advance(qid, now, out);
    }

    /// `peer` cannot be reached: every RPC in flight to it fails, and so does a write sent to it
    /// within `kad_rpc_timeout` (see [`Dht::send_writes`]).
    pub fn on_unreachable(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        if let Some(at) = self.written.remove(&peer)
            && now <= at + self.config.kad_rpc_timeout
        {
            self.note_failure(peer, now);
        }
        let reqs: Vec<RequestId> = self.rpcs.iter().filter(|(_, (_, p, _))| *p == peer).map(|(r, _)| *r).collect();
        for r in reqs {
            self.answer(PeerAddr::id_only(peer), r, None, now, out);
        }
    }

    pub(super) fn note_failure(&mut self, peer: PeerId, now: Timestamp) {
        self.stats.rpc_failures += 1;
        // A failing peer leaves the closest sets it was in (the table refills them, see
        // `cached_closest`); a set that lost half of them is looked up again.
        let keep = self.lookup_config.k.div_ceil(CLOSEST_MIN_DIVISOR);
        self.closest.retain(|_, c| {
            c.peers.retain(|p| p.id != peer);
            c.peers.len() >= keep
        });
        let n = self.failures.entry(peer).or_insert(0);
        *n += 1;
        if *n >= MAX_FAILURES {
            self.failures.remove(&peer);
            self.table.remove(&peer);
            // A server whose table this emptied (its seeds had not started yet, or a partition
            // cut them off) is cut off from the DHT: it replicates, announces and finds nothing
            // until the next table refresh, up to TABLE_REFRESH away. Its seeds are tried again
            // after BOOTSTRAP_RETRY instead.
            if self.server && self.table.is_empty() && !self.bootstrap.is_empty() {
                let at = now + BOOTSTRAP_RETRY;
                self.next_table_refresh = Some(self.next_table_refresh.map_or(at, |t| t.min(at)));
            }
        }
    }

    /// Sends the next RPCs of query `qid`, or ends it.
    pub(super) fn advance(&mut self, qid: QueryId, now: Timestamp, out: &mut Vec<Action>) {
        let hedge_delay = self.hedge_delay();
        let Some(q) = self.queries.get_mut(&qid) else {
            return;
        };
        let finished = {
            // A claim or a takeover that found the record waits for the answers already in flight
            // until the nearest peer's is in: they cost nothing more, and its closest peers make
            // the lookup's candidates the key's replica set, cached for the next version.
            let settled = q.lookup.nearest_answered() || q.lookup.in_flight() == 0;
            let enough = match &q.goal {
                Goal::Value { .. } => q.found.is_some(),
                Goal::Claim { .. } => q.found.is_some() && settled,
                Goal::Takeover { holders, .. } => *holders >= TAKEOVER_HOLDERS && settled,
                Goal::Providers { want } => q.providers.len() >= *want,
                _ => false,
            };
            if enough || now >= q.deadline || q.lookup.is_finished() {
                true
            } else {
                let asks = q.lookup.next_queries(now);
                let target = q.lookup.target();
                let server = self.server;
                let mut sends = Vec::with_capacity(asks.len());
                for a in asks {
                    let req = RequestId(self.next_req);
                    self.next_req = self.next_req.wrapping_add(1).max(1);
                    let message = match &q.goal {
                        Goal::Value { key } => DhtMessage::FindValue(FindValue { req, key: key.clone(), server }),
                        Goal::Takeover { record, .. } => {
                            DhtMessage::FindValue(FindValue { req, key: RecordKey::Peer(record.body.peer_id), server })
                        }
                        Goal::Claim { record, .. } => DhtMessage::FindValue(FindValue {
                            req,
                            key: RecordKey::Did(record.body.did.clone()),
                            server,
                        }),
                        Goal::Providers { .. } => DhtMessage::GetProviders(GetProviders { req, key: target, server }),
                        _ => DhtMessage::FindNode(FindNode { req, target, server }),
                    };
                    sends.push((req, a, message));
                }
                // A hedged read that sent something waits the hedge delay from now: its queries in
                // flight are late once the newest is. Once it is Kademlia's lookup (α in flight),
                // or has nothing in flight, it does not hedge.
                if !q.lookup.is_hedging() || q.lookup.in_flight() == 0 {
                    q.hedge_at = None;
                } else if !sends.is_empty() || q.hedge_at.is_none() {
                    q.hedge_at = Some(now + hedge_delay);
                }
                for (req, a, message) in sends {
                    self.rpcs.insert(req, (qid, a.id, now));
                    self.stats.rpcs += 1;
                    if matches!(q.goal, Goal::Value { .. }) {
                        self.stats.read_rpcs += 1;
                    }
                    out.emit(DhtOut::Learn(a.clone()));
                    out.emit(DhtOut::Send { to: a.id, message: message.into() });
                }
                false
            }
        };
        if finished {
            self.finish_phase(qid, now, out);
        }
    }

    pub(super) fn finish_phase(&mut self, qid: QueryId, now: Timestamp, out: &mut Vec<Action>) {
        let Some(mut q) = self.queries.remove(&qid) else {
            return;
        };
        // Forget RPCs of this query still in flight; late answers are ignored.
        self.rpcs.retain(|_, (x, _, _)| *x != qid);

        let store_msg: Option<Box<dyn Fn(RequestId) -> DhtMessage>> =
            match std::mem::replace(&mut q.goal, Goal::Refresh) {
                Goal::Value { key } => {
                    let (record, hops) = match q.found {
                        Some((r, h)) => (Some(r), h),
                        None => (None, q.lookup.hops().unwrap_or(0)),
                    };
                    out.emit(DhtOut::QueryDone(DhtDone::Value { query: qid, purpose: q.purpose, key, record, hops }));
                    return;
                }
                Goal::Providers { .. } => {
                    let providers = q.providers.into_values().collect();
                    out.emit(DhtOut::QueryDone(DhtDone::Providers { purpose: q.purpose, providers }));
                    return;
                }
                Goal::Refresh => return,
                Goal::Claim { record, publisher, replicate } => {
                    self.finish_claim(q, record, publisher, replicate, now, out);
                    return;
                }
                Goal::Takeover { record, holders } => {
                    if holders >= TAKEOVER_HOLDERS && q.lookup.nearest_answered() {
                        // Replicated already; the peers asked are the key's neighbourhood: its
                        // closest set, for the next version (see the claim above).
                        self.found_closest(&q, now);
                    }
                    if holders < TAKEOVER_HOLDERS {
                        // Not replicated: the lookup ran to convergence on the peer key's closest
                        // peers, its replicas.
                        self.found_closest(&q, now);
                        self.replicated.remove(&record.body.peer_id);
                        self.replicate(record, false, now, out);
                    }
                    return;
                }
                Goal::Replicate { record, refresh, mut with, then } => {
                    let targets = self.found_closest(&q, now);
                    if refresh {
                        self.queue_refresh(record, targets, now, out);
                        return;
                    }
                    for t in targets {
                        if !with.iter().any(|w| w.id == t.id) {
                            with.push(t);
                        }
                    }
                    if let Some(next) = then {
                        let goal = Goal::Replicate { record, refresh, with, then: None };
                        self.replicate_after_lookup(goal, next, now, out);
                    } else {
                        self.send_to_closest(Goal::first_version(record), with, now, out);
                    }
                    return;
                }
                Goal::Provide { record } => Some(Box::new(move |req| {
                    DhtMessage::AddProvider(AddProvider { req, key: indexer_rendezvous(), provider: record.clone() })
                })),
            };
        let Some(make) = store_msg else { return };
        let targets = self.found_closest(&q, now);
        self.send_writes(&*make, targets, now, out);
    }

    /// A claim check's verdict: a record of another key for the DID refuses the claim (and
    /// the rightful binding is kept); otherwise the record is committed, and replicated unless
    /// the DHT holds this very version already.
    fn finish_claim(
        &mut self,
        mut q: Query,
        record: PeerRecord,
        publisher: PeerId,
        replicate: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        self.claims.remove(&publisher);
        // A lookup that found nothing converged on the DID key's closest peers.
        let converged = q.found.is_none();
        let (foreign, own) = match q.found.take() {
            Some((r, _)) if r.body.peer_id != publisher => (Some(r), None),
            found => (None, found.map(|(r, _)| r)),
        };
        if let Some(owner_record) = foreign {
            // Remember the rightful binding so the next attempt is refused locally.
            // Remembered durably too, like any binding.
            if let Ok(stored) = self.store.put_verified(owner_record, now) {
                persist_bindings(stored, out);
            }
            out.emit(DhtOut::Event(Event::RecordRejected {
                from: publisher,
                owner: publisher,
                reason: StoreRefusal::ForeignDid,
            }));
            out.emit(DhtOut::QueryDone(DhtDone::Claim { publisher, accepted: false }));
        } else {
            // Those peers are the replicas of that key: replicating the record needs
            // no second lookup for it. A lookup that found the record stopped early,
            // but once the nearest peer answered its candidates are the
            // neighbourhood too (the next refresh needs no lookup either).
            if converged || q.lookup.nearest_answered() {
                self.found_closest(&q, now);
            }
            match own {
                // The DHT holds a version already: its owner's previous referent
                // replicated it (we take over from it). This very version needs no
                // writes; an earlier one with the same content is refreshed with the
                // replicas' next batch.
                Some(found) if replicate => {
                    let expires = record.body.expires_at;
                    if let Offer::Held(_) = self.commit(publisher, record.clone(), false, now, out) {
                        if found == record {
                            self.replicated.insert(publisher, expires);
                        } else {
                            let refresh = found.body.same_content(&record.body);
                            self.replicate(record, refresh, now, out);
                        }
                    }
                }
                _ => {
                    self.commit(publisher, record, replicate, now, out);
                }
            }
            out.emit(DhtOut::QueryDone(DhtDone::Claim { publisher, accepted: true }));
        }
    }

    /// The k closest peers a write's lookup found, remembered for the next writes to its key.
    fn found_closest(&mut self, q: &Query, now: Timestamp) -> Vec<PeerAddr> {
        let targets = q.lookup.closest_live(self.lookup_config.k);
        self.cache_closest(q.lookup.target(), &targets, now);
        targets
    }

    /// Sends a write's (`Replicate` or `Provide`) messages to the known closest set of `target`,
    /// without a lookup.
    pub(super) fn send_to_closest(
        &mut self,
        goal: Goal,
        targets: Vec<PeerAddr>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let server = self.server;
        let make: Box<dyn Fn(RequestId) -> DhtMessage> = match goal {
            Goal::Replicate { record, .. } => {
                Box::new(move |req| DhtMessage::Store(Store { req, record: record.clone(), server }))
            }
            Goal::Provide { record } => Box::new(move |req| {
                DhtMessage::AddProvider(AddProvider { req, key: indexer_rendezvous(), provider: record.clone() })
            }),
            _ => return,
        };
        self.stats.queries += 1;
        self.send_writes(&*make, targets, now, out);
    }

    /// A write: one one-way message per target. A write is not acknowledged (the transport
    /// delivers it; only a refusal is answered, and a refusal changes nothing for the writer): the
    /// replica's acks were an eighth of the federation's traffic and told the writer nothing it
    /// used but liveness. A target found unreachable within `kad_rpc_timeout` of a write
    /// (the dial failed, or the connection broke with the write on it) counts as a failed RPC
    /// ([`Dht::on_unreachable`]); the other ways a replica is found dead are the lookups.
    pub(super) fn send_writes(
        &mut self,
        make: &dyn Fn(RequestId) -> DhtMessage,
        targets: Vec<PeerAddr>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        for t in targets {
            let req = self.next_request();
            self.stats.rpcs += 1;
            self.written.insert(t.id, now);
            out.emit(DhtOut::Send { to: t.id, message: make(req).into() });
        }
    }

    /// Drops in-flight entries of `qid` whose lookup probe has failed (timed out).
    pub(super) fn rpcs_gc(&mut self, qid: QueryId, now: Timestamp) {
        let Some(q) = self.queries.get(&qid) else {
            self.rpcs.retain(|_, (x, _, _)| *x != qid);
            return;
        };
        let stale: Vec<(RequestId, PeerId)> = self
            .rpcs
            .iter()
            .filter(|(_, (x, p, _))| *x == qid && !q.lookup.is_in_flight(p))
            .map(|(r, (_, p, _))| (*r, *p))
            .collect();
        for (r, p) in stale {
            self.rpcs.remove(&r);
            self.note_failure(p, now);
        }
    }
}
