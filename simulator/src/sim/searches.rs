//! Measurement of distributed search: the `search` workload's hits and ends, forged hits, the
//! search mesh's shape and traffic, and the report's `searches` section. (Split from `measure`,
//! which keeps the other sections; same habits: events in, counters, one report builder.)

use super::measure::kind;
use super::workloads::PendingSearch;
use super::{EPOCH_MS, Life, SAMPLE_EVERY_MS, Simulation};
use crate::net::PeerIx;
use crate::report::{KeyLookups, MeshReport, SearchReport, Stats};
use crate::scenario::{Behaviour, SearchBy};
use ocd_core::proto::{PeerId, PeerRecord, SearchEnd};
use std::collections::{BTreeMap, BTreeSet};

/// The first and the last this many search failures are listed in the report (all are counted).
const SEARCH_FAILURES_LISTED: usize = 10;

const MESH_GOSSIP: usize = kind("mesh_gossip");
const MESH_CONTROL: usize = kind("mesh_control");
/// The other search messages: node ↔ emitter and responder → emitter.
const SEARCH_KINDS: [usize; 6] = [
    kind("search_request"),
    kind("search_cancel"),
    kind("search_hits"),
    kind("search_done"),
    kind("search_refused"),
    kind("search_found"),
];

/// Running totals behind [`SearchReport`].
#[derive(Default)]
pub(super) struct SearchAcc {
    latencies: Vec<u64>,
    done_latencies: Vec<u64>,
    issued: u64,
    found: u64,
    started: u64,
    excluded: u64,
    by_name: KeyLookups,
    by_did: KeyLookups,
    by_peer: KeyLookups,
    ended: BTreeMap<String, u64>,
    hits: u64,
    forged_delivered: u64,
    unrelated_delivered: u64,
    forged_dropped: u64,
    emitted: u64,
    causes: BTreeMap<String, u64>,
    failures: Vec<String>,
    last_failures: std::collections::VecDeque<String>,
    /// Minute of issue → (counted, found).
    per_minute: BTreeMap<u64, (u64, u64)>,
    /// In the search window: searches started, mesh data and control messages, other search
    /// messages delivered.
    win_searches: u64,
    win_data: u64,
    win_control: u64,
    win_search: u64,
    /// `mesh_control` messages delivered before the window (membership only: no query yet).
    pre_control: u64,
    /// `[t, indexers with a mesh, mean neighbours, with none, components]`.
    mesh_timeline: Vec<(u64, usize, f64, usize, usize)>,
    /// `[t, nodes with a live indexer, referenced by none, by several]`.
    referent_timeline: Vec<(u64, usize, usize, usize)>,
}

/// The search mesh at one instant: alive indexers running one, and their neighbours.
struct MeshShape {
    neighbours: BTreeMap<PeerIx, Vec<PeerIx>>,
    /// Component number of each indexer.
    component: BTreeMap<PeerIx, usize>,
    components: usize,
}

impl Simulation {
    /// Counts a delivered message by kind, and search traffic in the search window.
    pub(super) fn count_delivered(&mut self, k: usize) {
        self.delivered_by_kind[k] += 1;
        self.count_resource_traffic(k);
        if k == MESH_CONTROL && self.search.window.is_some_and(|(a, _)| self.now < a) {
            self.searches.pre_control += 1;
        }
        if self.search.in_window(self.now) {
            let acc = &mut self.searches;
            if k == MESH_GOSSIP {
                acc.win_data += 1;
            } else if k == MESH_CONTROL {
                acc.win_control += 1;
            } else if SEARCH_KINDS.contains(&k) {
                acc.win_search += 1;
            }
        }
    }

    /// A workload search was started.
    pub(super) fn count_search_started(&mut self) {
        self.searches.started += 1;
        if self.search.in_window(self.now) {
            self.searches.win_searches += 1;
        }
    }

    // ---- events ----

    /// A `SearchHit` at node `p`: checked for forgery, then matched to the workload search or
    /// kept for [`Simulation::search_result`].
    pub(super) fn on_search_hit(&mut self, p: PeerIx, id: u64, record: PeerRecord, from: PeerId) {
        let genuine = self.genuine(&record);
        let relay = self.peer_of(&from);
        if !genuine {
            self.searches.forged_delivered += 1;
            // The forger: the relay, or the record's claimed owner (a forger's own record relayed
            // by an honest emitter).
            let owner = self.peer_of(&record.body.peer_id);
            let forger = [relay, owner].into_iter().flatten().find_map(|x| {
                self.peers[x as usize].byz_track.filter(|t| self.byz[*t].behaviour == Behaviour::ForgeSearchHits)
            });
            if let Some(t) = forger {
                self.byz[t].forged_delivered += 1;
            }
            let m = format!(
                "t={}s: {} was handed a forged search hit (claims {} / DID {} / name {:?}) relayed by {}",
                (self.now - EPOCH_MS) / 1000,
                self.name(p),
                self.peer_of(&record.body.peer_id).map_or("an unknown peer", |o| self.name(o)),
                record.body.did,
                record.body.name,
                relay.map_or("an unknown peer", |x| self.name(x))
            );
            self.violation(m);
        }
        let target = self.search.pending.get(&id).filter(|l| l.asker == p).map(|l| l.target);
        match target {
            Some(target) => {
                let now = self.now;
                let is_target = genuine && record.body.peer_id == self.ids[target as usize];
                let Some(l) = self.search.pending.get_mut(&id) else { return };
                l.hits += 1;
                if is_target && l.found_at.is_none() {
                    l.found_at = Some(now);
                }
                if !l.query.matches(&record) {
                    self.searches.unrelated_delivered += 1;
                }
            }
            None => self.search_results.entry((p, id)).or_default().hits.push((record, from)),
        }
    }

    /// A `SearchDone` at node `p`.
    pub(super) fn on_search_done(&mut self, p: PeerIx, id: u64, end: SearchEnd) {
        match self.search.pending.remove(&id) {
            Some(l) if l.asker == p => self.finish_search(l, end),
            other => {
                if let Some(l) = other {
                    self.search.pending.insert(id, l);
                }
                let at = self.now - EPOCH_MS;
                self.search_results.entry((p, id)).or_default().done = Some((end, at));
            }
        }
    }

    /// An indexer started emitting `node`'s search: the workload search it serves learns its
    /// emitter.
    pub(super) fn on_search_emitted(&mut self, p: PeerIx, node: PeerId) {
        self.searches.emitted += 1;
        let Some(n) = self.peer_of(&node) else { return };
        // The node's newest workload search without an emitter yet.
        if let Some(l) = self.search.pending.values_mut().rev().find(|l| l.asker == n && l.emitted_by.is_none()) {
            l.emitted_by = Some(p);
        }
    }

    /// `p` dropped a forged hit `from` sent: an honest sender is a violation; a forger is
    /// tracked (a node that dropped one is exposed to it).
    pub(super) fn on_forged_dropped(&mut self, p: PeerIx, from: PeerId) {
        self.searches.forged_dropped += 1;
        let Some(x) = self.peer_of(&from) else { return };
        if self.peers[x as usize].honest() {
            let m = format!(
                "t={}s: {} dropped a search hit of honest {} as forged",
                (self.now - EPOCH_MS) / 1000,
                self.name(p),
                self.name(x)
            );
            self.violation(m);
            return;
        }
        let node = self.peers[p as usize].is_node() && self.peers[p as usize].honest();
        if let Some(t) = self.peers[x as usize].byz_track
            && self.byz[t].behaviour == Behaviour::ForgeSearchHits
        {
            self.byz[t].forged_dropped += 1;
            if node {
                self.byz[t].exposed.entry(p).or_insert(None);
            }
        }
    }

    /// `p` evicted `x` for relaying forged hits: a violation if `x` is honest.
    pub(super) fn on_distrusted(&mut self, p: PeerIx, x: PeerIx) {
        if self.peers[x as usize].honest() {
            let m = format!(
                "t={}s: {} evicted honest {} for forged search hits",
                (self.now - EPOCH_MS) / 1000,
                self.name(p),
                self.name(x)
            );
            self.violation(m);
        } else if let Some(t) = self.peers[x as usize].byz_track
            && let Some(e) = self.byz[t].exposed.get_mut(&p)
            && e.is_none()
        {
            *e = Some(self.now);
        }
    }

    // ---- counting ----

    /// Workload search `l` is done: counted, unless its target went down before its hit came.
    fn finish_search(&mut self, l: PendingSearch, end: SearchEnd) {
        let now = self.now;
        let t = &self.peers[l.target as usize];
        let went_down = t.life != Life::Alive || t.last_down.is_some_and(|d| d >= l.issued);
        if l.found_at.is_none() && went_down {
            self.searches.excluded += 1;
            return;
        }
        let diagnosis = l.found_at.is_none().then(|| self.diagnose(&l, end));
        let acc = &mut self.searches;
        acc.issued += 1;
        acc.hits += u64::from(l.hits);
        acc.done_latencies.push(now - l.issued);
        *acc.ended.entry(format!("{end:?}")).or_insert(0) += 1;
        let by = match l.by {
            SearchBy::Name => &mut acc.by_name,
            SearchBy::Did => &mut acc.by_did,
            SearchBy::Peer => &mut acc.by_peer,
        };
        by.issued += 1;
        let minute = acc.per_minute.entry((l.issued - EPOCH_MS) / SAMPLE_EVERY_MS).or_insert((0, 0));
        minute.0 += 1;
        match (l.found_at, diagnosis) {
            (Some(at), _) => {
                minute.1 += 1;
                by.ok += 1;
                acc.found += 1;
                acc.latencies.push(at - l.issued);
            }
            (None, Some((cause, detail))) => {
                *acc.causes.entry(cause.to_string()).or_insert(0) += 1;
                if acc.failures.len() < SEARCH_FAILURES_LISTED {
                    acc.failures.push(detail);
                } else {
                    if acc.last_failures.len() == SEARCH_FAILURES_LISTED {
                        acc.last_failures.pop_front();
                    }
                    acc.last_failures.push_back(detail);
                }
            }
            (None, None) => {}
        }
    }

    /// Why workload search `l` did not find its target: `(cause, detail)`. Causes, first that
    /// applies: the search ended other than idle (its end in snake case); the target had no live
    /// indexer when the search was issued (`target_no_indexer`); no indexer held the target as a
    /// referent then (`unreferenced`); every one that did has
    /// crashed since (`referent_down`); none of those alive holds it any more at the end — the
    /// target named another referent meanwhile (`referent_dropped`); no indexer emitted the
    /// search and the asker's referent, which it went to first, is down (`asker_referent_down`)
    /// or not (`not_emitted`); the emitter
    /// was one of them (`local_miss`); the emitter, or every referent, has no mesh neighbour now
    /// (`emitter_isolated`, `referent_isolated`); no referent is in the emitter's mesh component
    /// now (`mesh_split`); else `unexplained`.
    fn diagnose(&self, l: &PendingSearch, end: SearchEnd) -> (&'static str, String) {
        let shape = self.mesh_shape();
        let name = |x: Option<PeerIx>| x.map_or("-".to_string(), |x| self.name(x).to_string());
        let names = |v: &[PeerIx]| v.iter().map(|x| self.name(*x)).collect::<Vec<_>>().join(", ");
        let nb = |x: PeerIx| shape.neighbours.get(&x).map_or(0, |v| v.len());
        let comp = |x: PeerIx| shape.component.get(&x).copied();
        let refs = &l.referenced_by;
        let alive: Vec<PeerIx> = refs.iter().copied().filter(|r| self.alive(*r)).collect();
        let emitter = l.emitted_by;
        let still = self.referenced_by(l.target);
        let cause = match end {
            SearchEnd::Idle => match emitter {
                _ if refs.is_empty() && l.target_referent.is_none() => "target_no_indexer",
                _ if refs.is_empty() => "unreferenced",
                _ if alive.is_empty() => "referent_down",
                _ if !alive.iter().any(|r| still.contains(r)) => "referent_dropped",
                None if l.emitter.is_some_and(|e| !self.alive(e)) => "asker_referent_down",
                None => "not_emitted",
                Some(e) if refs.contains(&e) => "local_miss",
                Some(e) if nb(e) == 0 => "emitter_isolated",
                Some(_) if alive.iter().all(|r| nb(*r) == 0) => "referent_isolated",
                Some(e) if !alive.iter().any(|r| comp(*r).is_some() && comp(*r) == comp(e)) => "mesh_split",
                Some(_) => "unexplained",
            },
            SearchEnd::Cancelled => "cancelled",
            SearchEnd::Limit => "limit",
            SearchEnd::NoIndexer => "no_indexer",
            SearchEnd::Failed => "failed",
            SearchEnd::Invalid => "invalid",
            SearchEnd::TooMany => "too_many",
        };
        let detail = format!(
            "t={}s: {} searched {} by {} ({:?}), ended {end:?} after {} ms with {} hits: {cause}; emitter {} \
             ({} mesh neighbours; the asker's referent was {}); held as a referent by [{}] at issue, by [{}] \
             at the end; the target named {} its referent at issue, {} at the end",
            (l.issued - EPOCH_MS) / 1000,
            self.name(l.asker),
            self.name(l.target),
            l.by.name(),
            l.query.name.as_deref().unwrap_or("-"),
            self.now - l.issued,
            l.hits,
            name(emitter),
            emitter.map_or(0, nb),
            name(l.emitter),
            names(refs),
            names(&still),
            name(l.target_referent),
            name(self.referent_of(l.target)),
        );
        (cause, detail)
    }

    /// The mesh now: every alive indexer running one, its neighbours, and the connected
    /// components of the (undirected) neighbour graph.
    fn mesh_shape(&self) -> MeshShape {
        let mut neighbours = BTreeMap::new();
        for (i, sp) in self.peers.iter().enumerate() {
            let Some(peer) = sp.peer.as_ref() else { continue };
            if sp.life != Life::Alive || !peer.search().has_mesh() {
                continue;
            }
            let nb: Vec<PeerIx> = peer.search().mesh_neighbours().iter().filter_map(|q| self.peer_of(q)).collect();
            neighbours.insert(i as PeerIx, nb);
        }
        let mut adj: BTreeMap<PeerIx, BTreeSet<PeerIx>> = BTreeMap::new();
        for (a, nb) in &neighbours {
            adj.entry(*a).or_default();
            for b in nb {
                if neighbours.contains_key(b) {
                    adj.entry(*a).or_default().insert(*b);
                    adj.entry(*b).or_default().insert(*a);
                }
            }
        }
        let mut component = BTreeMap::new();
        let mut components = 0;
        for start in adj.keys() {
            if component.contains_key(start) {
                continue;
            }
            let mut stack = vec![*start];
            component.insert(*start, components);
            while let Some(x) = stack.pop() {
                for y in &adj[&x] {
                    if !component.contains_key(y) {
                        component.insert(*y, components);
                        stack.push(*y);
                    }
                }
            }
            components += 1;
        }
        MeshShape { neighbours, component, components }
    }

    /// The minute's mesh shape, for the report's mesh timeline (only with a search workload).
    pub(super) fn sample_mesh(&mut self) {
        if self.search.is_empty() {
            return;
        }
        let shape = self.mesh_shape();
        let n = shape.neighbours.len();
        let sum: usize = shape.neighbours.values().map(|v| v.len()).sum();
        let none = shape.neighbours.values().filter(|v| v.is_empty()).count();
        let mean = if n == 0 { 0.0 } else { sum as f64 / n as f64 };
        self.searches.mesh_timeline.push((self.now - EPOCH_MS, n, mean, none, shape.components));
        // How many indexers hold each node as a referent.
        let mut refs: BTreeMap<PeerId, usize> = BTreeMap::new();
        for sp in &self.peers {
            if let Some(ix) = sp.peer.as_ref().and_then(|q| q.indexer()) {
                for s in ix.referents() {
                    *refs.entry(s.peer).or_insert(0) += 1;
                }
            }
        }
        let (mut nodes, mut unreferenced, mut several) = (0, 0, 0);
        for (i, sp) in self.peers.iter().enumerate() {
            if sp.is_node() && sp.honest() && sp.life == Life::Alive && sp.live_count() > 0 {
                nodes += 1;
                match refs.get(&self.ids[i]).copied().unwrap_or(0) {
                    0 => unreferenced += 1,
                    1 => {}
                    _ => several += 1,
                }
            }
        }
        self.searches.referent_timeline.push((self.now - EPOCH_MS, nodes, unreferenced, several));
    }

    // ---- the report ----

    pub(super) fn search_report(&mut self) -> SearchReport {
        let (mut indexers, mut dropped) = (0usize, 0u64);
        for sp in &self.peers {
            if let Some(peer) = sp.peer.as_ref()
                && sp.life == Life::Alive
                && peer.search().has_mesh()
            {
                indexers += 1;
                dropped += peer.search().mesh_stats().dropped;
            }
        }
        let acc = &mut self.searches;
        let lat = Stats::of(&mut acc.latencies);
        let done = Stats::of(&mut acc.done_latencies);
        let (a, b) = self.search.window.unwrap_or((EPOCH_MS, EPOCH_MS));
        let per = |x: u64, n: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
        let searches = acc.win_searches;
        let ix = indexers.max(1) as f64;
        let minutes = (b - a) as f64 / 60_000.0;
        let mesh = MeshReport {
            indexers,
            window_ms: (a - EPOCH_MS, b - EPOCH_MS),
            searches,
            data_messages: acc.win_data,
            control_messages: acc.win_control,
            data_per_search: per(acc.win_data, searches),
            control_per_search: per(acc.win_control, searches),
            messages_per_search_per_indexer: per(acc.win_data + acc.win_control, searches) / ix,
            data_per_search_per_indexer: per(acc.win_data, searches) / ix,
            control_per_indexer_per_min: if minutes > 0.0 { acc.win_control as f64 / ix / minutes } else { 0.0 },
            control_per_indexer_per_min_before: if a > EPOCH_MS {
                acc.pre_control as f64 / ix / ((a - EPOCH_MS) as f64 / 60_000.0)
            } else {
                0.0
            },
            search_messages_per_search: per(acc.win_search, searches),
            dropped_payloads: dropped,
            timeline: std::mem::take(&mut acc.mesh_timeline),
        };
        SearchReport {
            issued: acc.issued,
            found: acc.found,
            p50_ms: lat.map(|s| s.p50),
            p99_ms: lat.map(|s| s.p99),
            max_ms: lat.map(|s| s.max),
            forged_delivered: acc.forged_delivered,
            unrelated_delivered: acc.unrelated_delivered,
            forged_dropped: acc.forged_dropped,
            started: acc.started,
            by_name: acc.by_name,
            by_did: acc.by_did,
            by_peer: acc.by_peer,
            excluded: acc.excluded,
            unfinished: self.search.pending.len() as u64,
            ended: std::mem::take(&mut acc.ended),
            hits_mean: per(acc.hits, acc.issued),
            done_p50_ms: done.map(|s| s.p50),
            emitted: acc.emitted,
            failure_causes: std::mem::take(&mut acc.causes),
            referent_timeline: std::mem::take(&mut acc.referent_timeline),
            timeline: acc.per_minute.iter().map(|(m, (n, ok))| (m * SAMPLE_EVERY_MS, *n, *ok)).collect(),
            failures: std::mem::take(&mut acc.failures).into_iter().chain(acc.last_failures.drain(..)).collect(),
            mesh,
        }
    }
}
