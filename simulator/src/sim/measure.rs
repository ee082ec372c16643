//! Measurement: the bookkeeping behind every report number — peers' events, invariant checks,
//! fault trackers, pool samples, lookup and record counters — and the final [`Report`].

use super::byzantine::ByzTrack;
use super::workloads::PendingLookup;
use super::{EPOCH_MS, Life, LookupResult, SAMPLE_EVERY_MS, SimPeer, Simulation};
use crate::net::PeerIx;
use crate::report::{
    Bans, ByzantineReport, KeyLookups, KindTraffic, LookupReport, PoolReport, RecordsReport, Report, Stats,
    TrafficSample,
};
use crate::scenario::Behaviour;
use crate::trace::Trace;
use ocd_core::proto::wire::{self, Envelope, RefuseReason, StoreRefusal};
use ocd_core::proto::{Did, Event, EvictReason, FailReason, PeerId, PeerRecord, RecordKey, Timestamp};
use std::collections::BTreeMap;

/// Most invariant violations listed in the report (all are counted).
const MAX_VIOLATIONS_LISTED: usize = 200;
/// Most nodes below min listed by name in the report.
const MAX_BELOW_MIN_LISTED: usize = 20;
/// Most lookup failures listed in the report (all are counted).
const MAX_LOOKUP_FAILURES_LISTED: usize = 20;
/// Exposure an honest node needs before it is counted in a byzantine indexer's `honest_nodes`
/// (unless it already evicted it): the 2-minute eviction grace plus a few challenge batches.
const BYZANTINE_MIN_EXPOSURE_MS: u64 = 5 * 60 * 1000;

/// Running totals behind [`LookupReport`].
#[derive(Default)]
pub(super) struct LookupAcc {
    latencies: Vec<u64>,
    hops: Vec<u64>,
    attempts: u64,
    issued: u64,
    ok: u64,
    by_did: KeyLookups,
    by_peer: KeyLookups,
    excluded: u64,
    no_indexer: u64,
    target_unadmitted: u64,
    own_budget: u64,
    failures: Vec<String>,
    /// Minute of issue → (counted, ok).
    per_minute: BTreeMap<u64, (u64, u64)>,
}

/// Running totals behind [`RecordsReport`].
#[derive(Default)]
pub(super) struct RecordAcc {
    stored: u64,
    stored_from_owner: u64,
    /// Indexed like [`REFUSALS`].
    rejected: [u64; 4],
}

const REFUSALS: [&str; 4] = ["Invalid", "ForeignDid", "Stale", "Refused"];

fn refusal_index(r: StoreRefusal) -> usize {
    match r {
        StoreRefusal::Invalid => 0,
        StoreRefusal::ForeignDid => 1,
        StoreRefusal::Stale => 2,
        StoreRefusal::Refused => 3,
    }
}

// ---- messages sent, by kind: the kind table is the core's (`wire::KINDS`) ----

/// Number of message kinds counted in `sent_by_kind`.
pub(super) const MESSAGE_KINDS: usize = wire::KINDS.len();

/// Index of message kind `name` in the core's `wire::KINDS` (a compile error if it is gone).
pub(super) const fn kind(name: &str) -> usize {
    let mut i = 0;
    while i < wire::KINDS.len() {
        if same(wire::KINDS[i], name) {
            return i;
        }
        i += 1;
    }
    panic!("unknown message kind")
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Appends `e` to the trace. The frequent variants are written compactly (a tag and the full peer
/// id); the others as their `Debug` text.
fn trace_event(trace: &mut Trace, e: &Event) {
    let (tag, id) = match e {
        Event::PeerAuthenticated { peer } => (b"E:auth", peer),
        Event::RequestRefused { peer, reason, .. } => {
            trace.bytes(b"E:refused");
            trace.bytes(peer.as_bytes());
            trace.debug(reason);
            return;
        }
        Event::IndexerLive { indexer } => (b"E:live", indexer),
        Event::HeartbeatSent { indexer } => (b"E:hbsn", indexer),
        Event::HeartbeatReceived { node } => (b"E:hbrc", node),
        Event::SessionOpened { node } => (b"E:sess", node),
        Event::IndexerAdded { indexer, via } => {
            trace.bytes(b"E:added");
            trace.bytes(indexer.as_bytes());
            trace.debug(via);
            return;
        }
        Event::IndexerEvicted { indexer, reason } => {
            trace.bytes(b"E:evicted");
            trace.bytes(indexer.as_bytes());
            trace.debug(reason);
            return;
        }
        Event::RecordStored { owner, did, from } => {
            trace.bytes(b"E:stored");
            trace.bytes(owner.as_bytes());
            trace.bytes(from.as_bytes());
            trace.bytes(did.as_str().as_bytes());
            return;
        }
        Event::SearchHit { id, record, from } => {
            trace.bytes(b"E:hit");
            trace.u64(*id);
            trace.bytes(record.body.peer_id.as_bytes());
            trace.bytes(&record.signature.0);
            trace.bytes(from.as_bytes());
            return;
        }
        Event::MeshNeighbour { peer, up } => {
            trace.bytes(if *up { b"E:mesh+" } else { b"E:mesh-" });
            trace.bytes(peer.as_bytes());
            return;
        }
        Event::LookupDone { id, key, record, hops, attempts } => {
            trace.bytes(b"E:lookup");
            trace.u64(*id);
            trace.debug(key);
            match record {
                Some(r) => {
                    trace.bytes(r.body.peer_id.as_bytes());
                    trace.u64(r.body.expires_at.0);
                    trace.bytes(&r.signature.0);
                }
                None => trace.bytes(b"-"),
            }
            trace.u32(*hops);
            trace.u32(*attempts);
            return;
        }
        other => {
            trace.debug(other);
            return;
        }
    };
    trace.bytes(tag);
    trace.bytes(id.as_bytes());
}

impl Simulation {
    /// Counts `m` in `sent_by_kind`.
    pub(super) fn count_sent(&mut self, m: &Envelope) {
        self.sent_by_kind[m.kind_index()] += 1;
    }

    /// Traces event `e` of peer `p` and updates whatever it measures.
    pub(super) fn on_event(&mut self, p: PeerIx, e: Event) {
        self.trace.bytes(b"event");
        self.trace.u64(self.now);
        self.trace.u32(p);
        trace_event(&mut self.trace, &e);
        match e {
            // Node role: its pool.
            Event::IndexerAdded { indexer, .. } => self.on_indexer_added(p, indexer),
            Event::IndexerEvicted { indexer, reason } => self.on_indexer_evicted(p, indexer, reason),
            Event::IndexerLive { indexer } => self.on_indexer_live(p, indexer),
            // Indexer role: refusals and bans.
            Event::RequestRefused { peer, reason, .. } => self.on_request_refused(peer, reason),
            Event::PeerBanned { peer, .. } => self.on_peer_banned(p, peer),
            // Records and DHT.
            Event::LookupDone { id, key, record, hops, attempts } => {
                self.on_lookup_done(p, id, key, record, hops, attempts)
            }
            Event::RecordStored { owner, did, from } => self.on_record_stored(p, owner, did, from),
            Event::RecordRejected { reason, .. } => self.records.rejected[refusal_index(reason)] += 1,
            // Search.
            Event::SearchHit { id, record, from } => self.on_search_hit(p, id, record, from),
            Event::SearchDone { id, end, .. } => self.on_search_done(p, id, end),
            Event::SearchEmitted { node, .. } => self.on_search_emitted(p, node),
            Event::ForgedHitDropped { from, .. } => self.on_forged_dropped(p, from),
            // Application messages.
            Event::AppAccepted { id, message, .. } => self.on_app_accepted(p, id, message),
            Event::AppSendRefused { id, reason } => self.on_app_refused(id, reason),
            Event::AppDelivered { message, .. } => self.on_app_delivered(p, message),
            Event::AppAbandoned { message, reason } => self.on_app_abandoned(message, reason),
            // Resource searches of type `all`.
            Event::ResourceSearchSent { id, via } => self.on_resource_sent(id, via),
            Event::ResourceSearchAsked { requester, user, request, .. } => {
                self.on_resource_asked(p, requester, user, request)
            }
            _ => {}
        }
    }

    // ---- node-role events ----

    /// Pool invariants on an addition, and the byzantine indexer's exposure to honest node `p`.
    fn on_indexer_added(&mut self, p: PeerIx, indexer: PeerId) {
        let now = self.now;
        let Some(x) = self.index.get(&indexer).copied() else { return };
        if x == p {
            let m = format!("{}: added itself to its own pool", self.peers[p as usize].name);
            self.violation(m);
            return;
        }
        if self.peers[p as usize].members.iter().any(|(m, _)| *m == x) {
            let m = format!("{}: {} added twice to its pool", self.peers[p as usize].name, self.peers[x as usize].name);
            self.violation(m);
            return;
        }
        let len = self.pool_len_now(p);
        let sp = &mut self.peers[p as usize];
        sp.members.push((x, now));
        let (node, honest) = (sp.is_node(), sp.honest());
        if let (Some(len), Some(pool)) = (len, sp.peer.as_ref().and_then(|q| q.pool()))
            && len > pool.max_pool()
        {
            let m = format!(
                "t={}s: {}: {len} active indexers, above its maximum {}",
                (now - EPOCH_MS) / 1000,
                sp.name,
                pool.max_pool()
            );
            self.violation(m);
        }
        if !self.peers[x as usize].roles.indexer {
            let m = format!(
                "{}: added {}, which is not an indexer",
                self.peers[p as usize].name, self.peers[x as usize].name
            );
            self.violation(m);
        }
        if node
            && honest
            && let Some(t) = self.peers[x as usize].byz_track
            && self.byz[t].behaviour.is_indexer_behaviour()
        {
            self.byz[t].nodes.entry(p).or_insert((now, None));
        }
    }

    /// A byzantine indexer's first eviction by `p`, and whether it was for cause.
    fn on_indexer_evicted(&mut self, p: PeerIx, indexer: PeerId, reason: EvictReason) {
        let now = self.now;
        let Some(x) = self.index.get(&indexer).copied() else { return };
        let sp = &mut self.peers[p as usize];
        sp.members.retain(|(m, _)| *m != x);
        if reason == EvictReason::ForgedHits {
            self.on_distrusted(p, x);
        }
        if let Some(t) = self.peers[x as usize].byz_track
            && let Some(entry) = self.byz[t].nodes.get_mut(&p)
            && entry.1.is_none()
        {
            entry.1 = Some(now);
            *self.byz[t].reasons.entry(format!("{reason:?}")).or_insert(0) += 1;
        }
        if let Some(t) = self.peers[x as usize].byz_track
            && let Some(entry) = self.byz[t].live_nodes.get_mut(&p)
            && entry.is_none()
        {
            let churn = matches!(
                reason,
                EvictReason::HeartbeatFailed(FailReason::Refused(_))
                    | EvictReason::MadeRoomForSeed
                    | EvictReason::Migrated
            );
            *entry = Some(!churn);
        }
    }

    /// A byzantine indexer counted live by an honest node, and readmissions after a restart.
    fn on_indexer_live(&mut self, p: PeerIx, indexer: PeerId) {
        let now = self.now;
        let Some(x) = self.index.get(&indexer).copied() else { return };
        if let Some(t) = self.peers[x as usize].byz_track
            && self.byz[t].behaviour.is_indexer_behaviour()
            && self.peers[p as usize].is_node()
            && self.peers[p as usize].honest()
        {
            self.byz[t].live_nodes.entry(p).or_insert(None);
        }
        for r in &mut self.readmits {
            if now <= r.until && r.targets.contains(&x) {
                r.nodes.insert(p);
            }
        }
    }

    // ---- indexer-role events ----

    fn on_request_refused(&mut self, peer: PeerId, reason: RefuseReason) {
        let role = match self.index.get(&peer).map(|x| &self.peers[*x as usize]) {
            Some(q) if !q.honest() => "byzantine",
            Some(q) if q.roles.indexer => "indexer",
            Some(_) => "node",
            None => "unknown",
        };
        *self.refusals.entry(format!("{reason:?} {role}")).or_insert(0) += 1;
    }

    /// `p` banned `peer`: counted, timed for a byzantine node, a violation for an honest peer.
    fn on_peer_banned(&mut self, p: PeerIx, peer: PeerId) {
        let now = self.now;
        let Some(x) = self.index.get(&peer).copied() else { return };
        self.banned.insert(x);
        let xs = &self.peers[x as usize];
        match xs.byz_track {
            Some(t)
                if !self.byz[t].behaviour.is_indexer_behaviour()
                    || self.byz[t].behaviour == Behaviour::ForgeSearchHits =>
            {
                self.byz[t].banned.entry(p).or_insert(now);
            }
            _ => {}
        }
        if xs.honest() {
            let m = format!(
                "t={}s: honest peer {} banned by {}",
                (now - EPOCH_MS) / 1000,
                xs.name,
                self.peers[p as usize].name
            );
            self.violation(m);
        }
    }

    // ---- record and DHT events ----

    /// Checks the answer to a lookup, then hands it to the workload that asked, or keeps it for
    /// [`Simulation::lookup_result`].
    fn on_lookup_done(
        &mut self,
        p: PeerIx,
        id: u64,
        key: RecordKey,
        record: Option<PeerRecord>,
        hops: u32,
        attempts: u32,
    ) {
        let now = self.now;
        // Whatever asked, a DID must only ever resolve to the peer that owns it.
        if let (RecordKey::Did(d), Some(r)) = (&key, &record) {
            let owner = self.index.get(&r.body.peer_id).copied();
            if owner.is_none_or(|o| self.peers[o as usize].setup.did != *d) {
                let m = format!(
                    "t={}s: {} looked up DID {d} and got the record of {}",
                    (now - EPOCH_MS) / 1000,
                    self.name(p),
                    owner.map_or("an unknown peer", |o| self.name(o))
                );
                self.violation(m);
            }
        }
        match self.lookup.pending.remove(&id) {
            Some(l) if l.asker == p => self.finish_lookup(l, record, hops, attempts),
            other => {
                if let Some(l) = other {
                    self.lookup.pending.insert(id, l);
                }
                let at_ms = now - EPOCH_MS;
                self.lookup_results.insert((p, id), LookupResult { key, record, hops, attempts, at_ms });
            }
        }
    }

    /// Counts a stored record; a foreign DID or a bad signature accepted by an honest indexer is
    /// a violation.
    fn on_record_stored(&mut self, p: PeerIx, owner: PeerId, did: Did, from: PeerId) {
        let now = self.now;
        self.records.stored += 1;
        if from == owner {
            self.records.stored_from_owner += 1;
        }
        let Some(o) = self.index.get(&owner).copied() else { return };
        let foreign = self.peers[o as usize].setup.did != did;
        let honest_indexer = self.peers[p as usize].honest();
        if foreign && honest_indexer {
            let m = format!(
                "t={}s: honest indexer {} stored a record of {} claiming DID {did}{}",
                (now - EPOCH_MS) / 1000,
                self.name(p),
                self.name(o),
                self.peers
                    .iter()
                    .find(|q| q.setup.did == did)
                    .map_or(String::new(), |q| format!(" (owned by {})", q.name))
            );
            self.violation(m);
        }
        if let Some(t) = self.peers[o as usize].byz_track
            && matches!(self.byz[t].behaviour, Behaviour::ClaimForeignDid | Behaviour::BadSignature)
            && now >= self.byz[t].since
        {
            let bad_signature = !foreign && !self.holds_valid_record(p, &owner);
            if foreign || bad_signature {
                self.byz[t].records_accepted += 1;
            }
            if bad_signature && honest_indexer {
                let m = format!(
                    "t={}s: honest indexer {} stored a badly signed record of {}",
                    (now - EPOCH_MS) / 1000,
                    self.name(p),
                    self.name(o)
                );
                self.violation(m);
            }
        }
    }

    /// Whether indexer `p` holds a record of `owner` whose signature verifies (the record it just
    /// reported stored). Checked only for misbehaving owners.
    fn holds_valid_record(&self, p: PeerIx, owner: &PeerId) -> bool {
        let Some(dht) = self.peers[p as usize].peer.as_ref().map(|q| q.dht()) else { return true };
        dht.records().find(|r| r.body.peer_id == *owner).is_none_or(|r| r.verify(Timestamp(self.now)).is_ok())
    }

    // ---- workload lookups ----

    /// A workload lookup whose target crashed or restarted meanwhile.
    pub(super) fn count_lookup_excluded(&mut self) {
        self.lookups.excluded += 1;
    }

    /// Counts finished workload lookup `l` (`ok`: it found the target's record).
    pub(super) fn count_lookup(
        &mut self,
        l: &PendingLookup,
        ok: bool,
        record: Option<&PeerRecord>,
        hops: u32,
        attempts: u32,
    ) {
        let now = self.now;
        let acc = &mut self.lookups;
        acc.issued += 1;
        acc.attempts += u64::from(attempts);
        let by = if l.by_did { &mut acc.by_did } else { &mut acc.by_peer };
        by.issued += 1;
        let minute = acc.per_minute.entry((l.issued - EPOCH_MS) / SAMPLE_EVERY_MS).or_insert((0, 0));
        minute.0 += 1;
        minute.1 += u64::from(ok);
        if ok {
            by.ok += 1;
            acc.ok += 1;
            acc.latencies.push(now - l.issued);
            acc.hops.push(u64::from(hops));
        } else if attempts == 0 && l.asker_admitted {
            acc.own_budget += 1;
        } else if attempts == 0 {
            acc.no_indexer += 1;
        } else if l.target_unadmitted {
            acc.target_unadmitted += 1;
        }
        if !ok && self.lookups.failures.len() < MAX_LOOKUP_FAILURES_LISTED {
            let m = self.lookup_failure(l, record, attempts);
            self.lookups.failures.push(m);
        }
        for b in &mut self.byz {
            if b.behaviour == Behaviour::WithholdRecords && l.issued >= b.since {
                b.lookups.0 += 1;
                if ok {
                    b.lookups.1 += 1;
                }
            }
        }
    }

    /// The report line of failed lookup `l`.
    fn lookup_failure(&self, l: &PendingLookup, record: Option<&PeerRecord>, attempts: u32) -> String {
        format!(
            "t={}s: {} looked up {} by {} ({} attempts, {} ms): {}",
            (l.issued - EPOCH_MS) / 1000,
            self.peers[l.asker as usize].name,
            self.peers[l.target as usize].name,
            if l.by_did { "DID" } else { "peer id" },
            attempts,
            self.now - l.issued,
            match record {
                None => "not found".to_string(),
                Some(r) => format!("got {}'s record", self.index.get(&r.body.peer_id).map_or("?", |x| self.name(*x))),
            }
        )
    }

    // ---- invariants, fault trackers and samples ----

    pub(super) fn violation(&mut self, m: String) {
        self.violation_count += 1;
        if self.violations.len() < MAX_VIOLATIONS_LISTED {
            self.violations.push(m);
        }
    }

    /// Advances every fault tracker watching node `n`: targets it stopped counting live are
    /// detected, and it has recovered once all are and it is back to its minimum.
    pub(super) fn update_watch(&mut self, n: PeerIx) {
        let now = self.now;
        let watches = std::mem::take(&mut self.peers[n as usize].watch);
        let mut keep = Vec::with_capacity(watches.len());
        for ti in watches {
            let sp = &self.peers[n as usize];
            let live = sp.live_count();
            let at = self.trackers[ti].at;
            let Some(t) = self.trackers[ti].nodes.get_mut(&n) else { continue };
            if live == 0 {
                t.reached_zero = true;
            }
            let mut i = 0;
            while i < t.pending.len() {
                let target = t.pending[i];
                if !sp.counts_live(&self.ids[target as usize]) {
                    t.detect.push(now - at);
                    t.pending.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            if t.pending.is_empty() && t.detected_all.is_none() {
                t.detected_all = Some(now);
            }
            if t.detected_all.is_some() && t.recovered.is_none() && live >= sp.min_indexers {
                t.recovered = Some(now);
            }
            if t.recovered.is_none() {
                keep.push(ti);
            }
        }
        self.peers[n as usize].watch = keep;
    }

    /// Peer-ms run so far: finished lives plus the running ones up to now.
    fn peer_ms_so_far(&self) -> u64 {
        let running: u64 = self
            .peers
            .iter()
            .filter(|sp| sp.life == Life::Alive)
            .filter_map(|sp| sp.started_at)
            .map(|t| self.now.saturating_sub(t))
            .sum();
        self.alive_ms + running
    }

    /// The traffic since the previous sample, per peer-minute run in that window.
    fn sample_traffic(&mut self) {
        let (messages, peer_ms) = (self.messages, self.peer_ms_so_far());
        let (m0, p0) = std::mem::replace(&mut self.traffic_mark, (messages, peer_ms));
        let (n, window_ms) = (messages - m0, peer_ms.saturating_sub(p0));
        let per_peer_minute = if window_ms > 0 { n as f64 * 60_000.0 / window_ms as f64 } else { 0.0 };
        self.traffic_timeline.push(TrafficSample { t: self.now - EPOCH_MS, messages: n, per_peer_minute });
    }

    /// The minute's pool health, and the invariants of every pool and every indexer.
    pub(super) fn sample(&mut self) {
        self.sample_traffic();
        self.sample_mesh();
        let (mean, below, _) = self.pool_health();
        self.timeline.push((self.now - EPOCH_MS, mean, below));
        let zero = self.nodes_at_zero();
        self.zero_timeline.push((self.now - EPOCH_MS, zero));
        let t = (self.now - EPOCH_MS) / 1000;
        let mut found = Vec::new();
        for sp in &self.peers {
            let Some(peer) = sp.peer.as_ref() else { continue };
            if let Some(ix) = peer.indexer()
                && ix.session_count() > peer.config().max_nodes
            {
                found.push(format!(
                    "t={t}s: {} holds {} sessions, above max_nodes {}",
                    sp.name,
                    ix.session_count(),
                    peer.config().max_nodes
                ));
            }
            let Some(pool) = peer.pool() else { continue };
            if pool.len() > pool.max_pool() {
                found.push(format!(
                    "t={t}s: {} has {} active indexers, above its maximum {}",
                    sp.name,
                    pool.len(),
                    pool.max_pool()
                ));
            }
            for e in pool.entries() {
                match self.index.get(&e.peer) {
                    Some(x) if self.peers[*x as usize].roles.indexer => {}
                    Some(x) => found.push(format!("t={t}s: {} has non-indexer {} in its pool", sp.name, self.name(*x))),
                    None => found.push(format!("t={t}s: {} has an unknown peer in its pool", sp.name)),
                }
                if e.peer == peer.id() {
                    found.push(format!("t={t}s: {} has itself in its pool", sp.name));
                }
            }
            for (m, _) in &sp.members {
                if !pool.contains(&self.ids[*m as usize]) {
                    found.push(format!(
                        "t={t}s: {} dropped {} from its pool without an IndexerEvicted event",
                        sp.name,
                        self.name(*m)
                    ));
                }
            }
        }
        for m in found {
            self.violation(m);
        }
    }

    /// `(mean live pool size, nodes below min, nodes counted)` over alive, started, honest
    /// node-role peers.
    fn pool_health(&self) -> (f64, usize, usize) {
        let (mut sum, mut below, mut count) = (0usize, 0usize, 0usize);
        for sp in self.counted_nodes() {
            let live = sp.live_count();
            sum += live;
            count += 1;
            if live < sp.min_indexers {
                below += 1;
            }
        }
        let mean = if count == 0 { 0.0 } else { sum as f64 / count as f64 };
        (mean, below, count)
    }

    /// Counted nodes with no live indexer.
    fn nodes_at_zero(&self) -> usize {
        self.counted_nodes().filter(|sp| sp.live_count() == 0).count()
    }

    /// Alive, started, honest node-role peers: the ones pool statistics cover.
    fn counted_nodes(&self) -> impl Iterator<Item = &SimPeer> + '_ {
        self.peers.iter().filter(|sp| sp.is_node() && sp.honest() && sp.life == Life::Alive)
    }

    // ---- the report ----

    /// The report of the run so far; its lists are moved out.
    pub(super) fn finish(&mut self, wall_ms: u64) -> Report {
        let sim_ms = self.end - EPOCH_MS;
        let (mean, below, count) = self.pool_health();
        let below_names: Vec<String> = self
            .counted_nodes()
            .filter(|sp| sp.live_count() < sp.min_indexers)
            .take(MAX_BELOW_MIN_LISTED)
            .map(|sp| format!("{} ({} live)", sp.name, sp.live_count()))
            .collect();
        let at_zero = self.nodes_at_zero();
        if self.timeline.last().map(|x| x.0) != Some(sim_ms) {
            self.timeline.push((sim_ms, mean, below));
            self.zero_timeline.push((sim_ms, at_zero));
        }
        self.finish_faults();
        let byzantine: Vec<ByzantineReport> = self.byz.iter().map(|t| self.byzantine_report(t)).collect();
        let bans = self.bans();
        let notes = self.notes();
        let lookups = (!self.lookup.is_empty()).then(|| self.lookup_report());
        let searches = (!self.search.is_empty()).then(|| self.search_report());
        let sends = (!self.sends.is_empty()).then(|| self.sends_report());
        let resource_searches = (!self.resources.is_empty()).then(|| self.resource_searches_report());
        let records = self.records_report();
        let wall_s = (wall_ms.max(1)) as f64 / 1000.0;
        self.netr.sent_by_kind =
            wire::KINDS.iter().zip(self.sent_by_kind).map(|(k, n)| ((*k).to_string(), n)).collect();
        self.netr.delivered_by_kind =
            wire::KINDS.iter().zip(self.delivered_by_kind).map(|(k, n)| ((*k).to_string(), n)).collect();
        if self.traffic_timeline.last().map(|x| x.t) != Some(sim_ms) {
            self.sample_traffic();
        }
        let peer_minutes = self.peer_ms_so_far() as f64 / 60_000.0;
        let per_pm = |n: u64| if peer_minutes > 0.0 { n as f64 / peer_minutes } else { 0.0 };
        let messages_by_kind = wire::KINDS
            .iter()
            .zip(self.delivered_by_kind.iter().zip(self.delivered_bytes_by_kind))
            .filter(|(_, (n, _))| **n > 0)
            .map(|(k, (n, b))| ((*k).to_string(), KindTraffic { count: *n, bytes: b, per_peer_minute: per_pm(*n) }))
            .collect();
        Report {
            scenario: self.scenario.name.clone(),
            seed: self.scenario.seed,
            trace_hash: self.trace.finalize_hex(),
            sim_ms,
            wall_ms,
            events: self.events,
            messages: self.messages,
            peers: self.peers.len(),
            peer_minutes,
            messages_per_peer_minute: per_pm(self.messages),
            messages_by_kind,
            traffic_timeline: std::mem::take(&mut self.traffic_timeline),
            pool: PoolReport {
                min_target: self.min_target,
                final_nodes_below_min: below,
                timeline: std::mem::take(&mut self.timeline),
                final_mean_live: mean,
                final_nodes: count,
                final_below_min_peers: below_names,
                final_nodes_at_zero: at_zero,
                zero_timeline: std::mem::take(&mut self.zero_timeline),
            },
            faults: std::mem::take(&mut self.faults),
            byzantine,
            bans,
            lookups,
            searches,
            sends,
            resource_searches,
            records,
            refusals: std::mem::take(&mut self.refusals),
            invariant_violations: std::mem::take(&mut self.violations),
            invariant_violation_count: self.violation_count,
            network: std::mem::take(&mut self.netr),
            notes,
            events_per_wall_s: self.events as f64 / wall_s,
        }
    }

    /// Fills in every fault report's detection and recovery from its tracker, and readmissions.
    fn finish_faults(&mut self) {
        for tr in &self.trackers {
            let mut detect = Vec::new();
            let mut recover = Vec::new();
            let (mut undetected, mut unrecovered, mut reached_zero, mut left_at_zero) = (0, 0, 0, 0);
            for (n, t) in &tr.nodes {
                detect.extend(t.detect.iter().copied());
                reached_zero += usize::from(t.reached_zero);
                let sp = &self.peers[*n as usize];
                left_at_zero += usize::from(sp.is_node() && sp.life == Life::Alive && sp.live_count() == 0);
                undetected += t.pending.len();
                match t.recovered {
                    Some(r) => recover.push(r - tr.at),
                    None => unrecovered += 1,
                }
            }
            let f = &mut self.faults[tr.report];
            f.detect_ms = Stats::of(&mut detect);
            f.recover_ms = Stats::of(&mut recover);
            // `Stats::of` sorted them: kept for CDF plots.
            f.detect_samples_ms = detect;
            f.recover_samples_ms = recover;
            f.undetected = undetected;
            f.unrecovered = unrecovered;
            f.reached_zero = reached_zero;
            f.left_at_zero = left_at_zero;
        }
        for r in &self.readmits {
            self.faults[r.report].readmitted = Some(r.nodes.len());
        }
    }

    fn byzantine_report(&self, t: &ByzTrack) -> ByzantineReport {
        let mut b = ByzantineReport {
            peer: self.peers[t.peer as usize].name.clone(),
            behaviour: t.behaviour.name().to_string(),
            since: t.since - EPOCH_MS,
            honest_nodes: None,
            evicted_by: None,
            p50_evict_ms: None,
            evict_reasons: None,
            too_recent: None,
            live_nodes: None,
            evicted_for_cause_by: None,
            reached: None,
            banned_by: None,
            p50_ban_ms: None,
            records_accepted: None,
            victim: t.victim.map(|v| self.peers[v as usize].name.clone()),
            lookups: None,
            lookups_ok_ratio: None,
            forged_sent: None,
            forged_dropped: None,
            forged_delivered: None,
            exposed_nodes: None,
            distrusted_by: None,
        };
        if matches!(t.behaviour, Behaviour::ClaimForeignDid | Behaviour::BadSignature) {
            b.records_accepted = Some(t.records_accepted);
        }
        if t.behaviour == Behaviour::WithholdRecords && !self.lookup.is_empty() {
            b.lookups = Some(t.lookups.0);
            b.lookups_ok_ratio = (t.lookups.0 > 0).then(|| t.lookups.1 as f64 / t.lookups.0 as f64);
        }
        if t.behaviour == Behaviour::ForgeSearchHits {
            self.forger_report(t, &mut b);
        }
        if t.behaviour.is_indexer_behaviour() {
            self.indexer_evictions(t, &mut b);
        } else {
            let mut times: Vec<u64> =
                t.banned.iter().filter(|(i, _)| t.reached.contains(i)).map(|(_, at)| at - t.since).collect();
            let n = t.reached.len();
            b.reached = Some(n);
            b.banned_by = Some(if n == 0 { 0.0 } else { times.len() as f64 / n as f64 });
            b.p50_ban_ms = Stats::of(&mut times).map(|s| s.p50);
        }
        b
    }

    /// What a `forge_search_hits` indexer forged, who dropped it, and who banned or distrusted it.
    fn forger_report(&self, t: &ByzTrack, b: &mut ByzantineReport) {
        b.forged_sent = Some(t.forged);
        b.forged_dropped = Some(t.forged_dropped);
        b.forged_delivered = Some(t.forged_delivered);
        let mut times: Vec<u64> =
            t.banned.iter().filter(|(i, _)| t.reached.contains(i)).map(|(_, at)| at - t.since).collect();
        let n = t.reached.len();
        b.reached = Some(n);
        b.banned_by = Some(if n == 0 { 0.0 } else { times.len() as f64 / n as f64 });
        b.p50_ban_ms = Stats::of(&mut times).map(|s| s.p50);
        let exposed = t.exposed.len();
        b.exposed_nodes = Some(exposed);
        let distrusted = t.exposed.values().filter(|v| v.is_some()).count();
        b.distrusted_by = Some(if exposed == 0 { 0.0 } else { distrusted as f64 / exposed as f64 });
    }

    /// How the honest nodes that met byzantine indexer `t` evicted it.
    fn indexer_evictions(&self, t: &ByzTrack, b: &mut ByzantineReport) {
        // A node that met the indexer in the last `BYZANTINE_MIN_EXPOSURE_MS` of the run and has
        // not evicted it yet had no fair chance to (eviction grace plus a few challenge batches):
        // it is reported as `too_recent`, not as a miss.
        let end = self.now;
        let fair =
            |(from, ev): &&(u64, Option<u64>)| ev.is_some() || end.saturating_sub(*from) >= BYZANTINE_MIN_EXPOSURE_MS;
        let mut times: Vec<u64> =
            t.nodes.values().filter(fair).filter_map(|(from, ev)| ev.map(|e| e.saturating_sub(*from))).collect();
        let n = t.nodes.values().filter(fair).count();
        b.too_recent = Some(t.nodes.len() - n);
        b.honest_nodes = Some(n);
        b.evicted_by = Some(if n == 0 { 0.0 } else { times.len() as f64 / n as f64 });
        b.p50_evict_ms = Stats::of(&mut times).map(|s| s.p50);
        b.evict_reasons = Some(t.reasons.clone());
        let live = t.live_nodes.len();
        let cause = t.live_nodes.values().filter(|v| **v == Some(true)).count();
        b.live_nodes = Some(live);
        b.evicted_for_cause_by = Some(if live == 0 { 0.0 } else { cause as f64 / live as f64 });
    }

    fn bans(&self) -> Bans {
        let mut bans = Bans::default();
        for b in &self.banned {
            if self.peers[*b as usize].honest() {
                bans.honest += 1;
            } else {
                bans.byzantine += 1;
            }
        }
        bans
    }

    /// The scenario's notes, and one about wake-ups pushed forward, if any.
    fn notes(&self) -> Vec<String> {
        let mut notes = self.scenario.notes.clone();
        if self.spins > 0 {
            notes.push(format!(
                "{} wake-ups returned a deadline that was already due; they were pushed 1 ms forward",
                self.spins
            ));
        }
        notes
    }

    fn lookup_report(&mut self) -> LookupReport {
        let acc = &mut self.lookups;
        let lat = Stats::of(&mut acc.latencies);
        let hops = Stats::of(&mut acc.hops);
        LookupReport {
            issued: acc.issued,
            ok: acc.ok,
            failed: acc.issued - acc.ok,
            p50_ms: lat.map(|s| s.p50),
            p99_ms: lat.map(|s| s.p99),
            max_ms: lat.map(|s| s.max),
            hops_p50: hops.map(|s| s.p50),
            hops_p99: hops.map(|s| s.p99),
            attempts_mean: if acc.issued == 0 { 0.0 } else { acc.attempts as f64 / acc.issued as f64 },
            by_did: acc.by_did,
            by_peer: acc.by_peer,
            excluded: acc.excluded,
            failed_no_indexer: acc.no_indexer,
            failed_target_unadmitted: acc.target_unadmitted,
            failed_own_budget: acc.own_budget,
            timeline: acc.per_minute.iter().map(|(m, (n, ok))| (m * SAMPLE_EVERY_MS, *n, *ok)).collect(),
            unfinished: self.lookup.pending.len() as u64,
            failures: std::mem::take(&mut acc.failures),
        }
    }

    fn records_report(&self) -> Option<RecordsReport> {
        let mut r = RecordsReport {
            stored: self.records.stored,
            stored_from_owner: self.records.stored_from_owner,
            rejected: self.records.rejected.iter().sum(),
            rejected_by_reason: REFUSALS
                .iter()
                .zip(self.records.rejected)
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| ((*k).to_string(), n))
                .collect(),
            ..RecordsReport::default()
        };
        let (mut any, mut records, mut table, mut providers) = (false, 0usize, 0usize, 0usize);
        for sp in &self.peers {
            let Some(dht) = sp.peer.as_ref().map(|q| q.dht()) else { continue };
            any = true;
            let st = dht.stats();
            r.dht_queries += st.queries;
            r.dht_rpcs += st.rpcs;
            r.dht_rpc_failures += st.rpc_failures;
            r.dht_verifications += st.verifications;
            r.dht_reads += st.reads;
            r.dht_read_rpcs += st.read_rpcs;
            r.dht_hedges += st.hedges;
            if sp.roles.indexer {
                r.indexers += 1;
                records += dht.record_count();
                r.max_records_per_indexer = r.max_records_per_indexer.max(dht.record_count());
                table += dht.table_len();
                providers += dht.provider_count();
            }
        }
        if !any {
            return None;
        }
        let n = r.indexers.max(1) as f64;
        r.mean_records_per_indexer = records as f64 / n;
        r.mean_routing_table = table as f64 / n;
        r.mean_providers = providers as f64 / n;
        Some(r)
    }
}
