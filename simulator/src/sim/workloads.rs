//! Workloads: commands handed to the peers as their applications would, at times drawn from the
//! run's seed.
//!
//! Each kind keeps its resolved specs and in-flight state in its own struct (built from the
//! scenario in [`Simulation::new`], a field of [`Simulation`]), schedules its own ticks from
//! `Simulation::schedule_workloads`, and hands what it observes to `measure`. `lookup` and
//! `search` are here; `send` is in `sends` (a state struct, an `Ev` tick variant, a `build`, its
//! accumulator and report section).

use super::engine::Ev;
use super::{EPOCH_MS, Life, SimPeer, Simulation};
use crate::net::{PeerIx, ms};
use crate::scenario::{Scenario, ScenarioError, SearchBy};
use ocd_core::proto::{Command, DetRng, Input, PeerId, PeerRecord, RecordKey, SearchQuery};
use std::collections::BTreeMap;

/// Ids of the `lookup` workload's commands start here; smaller ids are free for
/// [`Simulation::command`].
pub const WORKLOAD_LOOKUP_BASE: u64 = 1 << 48;
/// Ids of the `search` workload's commands start here; smaller ids are free for
/// [`Simulation::command`].
pub const WORKLOAD_SEARCH_BASE: u64 = 1 << 48;
/// Search traffic is counted until this long after the last search workload's `until`.
const SEARCH_WINDOW_TAIL_MS: u64 = 30_000;

/// One `lookup` workload, resolved.
struct LookupWork {
    /// Absolute times.
    from: u64,
    until: u64,
    rate_per_s: f64,
    warmup_ms: u64,
    /// Peers looked up (`None`: every node-role peer).
    targets: Option<Vec<PeerIx>>,
}

/// A workload lookup in flight.
pub(super) struct PendingLookup {
    pub(super) asker: PeerIx,
    pub(super) target: PeerIx,
    pub(super) issued: u64,
    pub(super) by_did: bool,
    /// The target had no live indexer when the lookup was issued (still joining, or its pool
    /// emptied): no indexer may hold its record yet.
    pub(super) target_unadmitted: bool,
    /// The asker had a live indexer when the lookup was issued: if it asked nobody, it refused
    /// the lookup itself, to keep its gets within its indexers' windows.
    pub(super) asker_admitted: bool,
}

/// The scenario's `lookup` workloads and the lookups they have in flight.
pub(super) struct LookupWorkload {
    work: Vec<LookupWork>,
    /// Draws gaps, askers and targets.
    rng: DetRng,
    /// By command id.
    pub(super) pending: BTreeMap<u64, PendingLookup>,
    next_id: u64,
}

/// Workload `i`'s absolute start and end (cut to the run's `end`) and its resolved node-role
/// targets (`None`: every node-role peer).
#[allow(clippy::type_complexity)]
fn resolve_window(
    scenario: &Scenario,
    peers: &[SimPeer],
    i: usize,
    (from, until, targets): (std::time::Duration, Option<std::time::Duration>, &[String]),
    end: u64,
) -> Result<(u64, u64, Option<Vec<PeerIx>>), ScenarioError> {
    let targets = if targets.is_empty() {
        None
    } else {
        let ctx = format!("workload #{}", i + 1);
        let t = scenario.resolve(&ctx, targets)?;
        Some(t.into_iter().map(|x| x as PeerIx).filter(|x| peers[*x as usize].roles.node).collect())
    };
    let until = until.map_or(end, |u| (EPOCH_MS + ms(u)).min(end));
    Ok((EPOCH_MS + ms(from), until, targets))
}

impl LookupWorkload {
    /// Resolves every `lookup` workload of `scenario` (`end`: the run's end, absolute).
    pub(super) fn build(scenario: &Scenario, peers: &[SimPeer], end: u64) -> Result<LookupWorkload, ScenarioError> {
        let mut work = Vec::new();
        for (i, w) in scenario.workloads.iter().enumerate() {
            let Some(l) = &w.lookup else { continue };
            let (from, until, targets) = resolve_window(scenario, peers, i, (l.from, l.until, &l.targets), end)?;
            work.push(LookupWork { from, until, rate_per_s: l.rate_per_s, warmup_ms: ms(l.warmup), targets });
        }
        Ok(LookupWorkload {
            work,
            rng: DetRng::new(scenario.seed, "ocd-sim lookups"),
            pending: BTreeMap::new(),
            next_id: WORKLOAD_LOOKUP_BASE,
        })
    }

    /// Whether the scenario has no `lookup` workload.
    pub(super) fn is_empty(&self) -> bool {
        self.work.is_empty()
    }
}

/// One `search` workload, resolved.
struct SearchWork {
    /// Absolute times.
    from: u64,
    until: u64,
    rate_per_s: f64,
    warmup_ms: u64,
    by: SearchBy,
    /// Peers searched for (`None`: every node-role peer).
    targets: Option<Vec<PeerIx>>,
}

/// A workload search in flight.
pub(super) struct PendingSearch {
    pub(super) asker: PeerIx,
    pub(super) target: PeerIx,
    pub(super) issued: u64,
    pub(super) by: SearchBy,
    pub(super) query: SearchQuery,
    /// When the target's genuine record reached the asker.
    pub(super) found_at: Option<u64>,
    /// Distinct owners of the hits delivered so far.
    pub(super) hits: u32,
    /// The asker's referent (its emitter, normally) and the target's, when it was issued.
    pub(super) emitter: Option<PeerIx>,
    pub(super) target_referent: Option<PeerIx>,
    /// The indexer that emitted it (its `SearchEmitted` event).
    pub(super) emitted_by: Option<PeerIx>,
    /// The indexers that held the target as a referent when it was issued (the ones that can
    /// answer it).
    pub(super) referenced_by: Vec<PeerIx>,
}

/// The scenario's `search` workloads and the searches they have in flight.
pub(super) struct SearchWorkload {
    work: Vec<SearchWork>,
    /// Draws gaps, askers and targets.
    rng: DetRng,
    /// By command id.
    pub(super) pending: BTreeMap<u64, PendingSearch>,
    next_id: u64,
    /// Absolute `[from, until + 30 s]` over every search workload, cut to the run (`None`:
    /// none): the window search traffic is counted in.
    pub(super) window: Option<(u64, u64)>,
}

impl SearchWorkload {
    /// Resolves every `search` workload of `scenario` (`end`: the run's end, absolute).
    pub(super) fn build(scenario: &Scenario, peers: &[SimPeer], end: u64) -> Result<SearchWorkload, ScenarioError> {
        let mut work = Vec::new();
        for (i, w) in scenario.workloads.iter().enumerate() {
            let Some(l) = &w.search else { continue };
            let (from, until, targets) = resolve_window(scenario, peers, i, (l.from, l.until, &l.targets), end)?;
            let (rate_per_s, warmup_ms, by) = (l.rate_per_s, ms(l.warmup), l.by);
            work.push(SearchWork { from, until, rate_per_s, warmup_ms, by, targets });
        }
        let window = match (work.iter().map(|w| w.from).min(), work.iter().map(|w| w.until).max()) {
            (Some(a), Some(b)) => Some((a, (b + SEARCH_WINDOW_TAIL_MS).min(end))),
            _ => None,
        };
        Ok(SearchWorkload {
            work,
            rng: DetRng::new(scenario.seed, "ocd-sim searches"),
            pending: BTreeMap::new(),
            next_id: WORKLOAD_SEARCH_BASE,
            window,
        })
    }

    /// Whether the scenario has no `search` workload.
    pub(super) fn is_empty(&self) -> bool {
        self.work.is_empty()
    }

    /// Whether `t` (absolute) is in the window search traffic is counted in.
    pub(super) fn in_window(&self, t: u64) -> bool {
        self.window.is_some_and(|(a, b)| a <= t && t <= b)
    }
}

/// The name needle that finds a peer named `name`: its middle part (the name without its first
/// character and its last two, when it has at least 6), with every letter's case swapped — a
/// case-insensitive substring. For the simulator's unique names (`"n/42-9f3ac01b"` →
/// `"/42-9F3AC0"`) it matches that peer only, barring a 24-bit id-prefix collision.
pub fn search_needle(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let part: &[char] = if chars.len() >= 6 { &chars[1..chars.len() - 2] } else { &chars };
    part.iter()
        .flat_map(|c| {
            let swapped: Vec<char> =
                if c.is_uppercase() { c.to_lowercase().collect() } else { c.to_uppercase().collect() };
            swapped
        })
        .collect()
}

/// Time to the next event of a Poisson process of `rate` per second: exponential with mean
/// `1 / rate`, in whole ms, drawn from `rng`.
pub(super) fn poisson_gap(rng: &mut DetRng, rate: f64) -> u64 {
    let u = 1.0 - rng.unit_f64(); // (0, 1]
    let gap = -u.ln() / rate * 1000.0;
    if gap.is_finite() { gap.round().clamp(0.0, 1e12) as u64 } else { 0 }
}

impl Simulation {
    /// Schedules the first tick of every workload.
    pub(super) fn schedule_workloads(&mut self) {
        for i in 0..self.lookup.work.len() {
            let at = self.lookup.work[i].from + self.lookup_gap(i);
            if at <= self.lookup.work[i].until {
                self.schedule(at, Ev::LookupTick(i as u32));
            }
        }
        for i in 0..self.search.work.len() {
            let at = self.search.work[i].from + self.search_gap(i);
            if at <= self.search.work[i].until {
                self.schedule(at, Ev::SearchTick(i as u32));
            }
        }
    }

    // ---- the lookup workload ----

    /// Lookup workload `i` starts a lookup, and schedules its next.
    pub(super) fn lookup_tick(&mut self, i: usize) {
        self.events += 1;
        self.start_workload_lookup(i);
        let next = self.now + self.lookup_gap(i);
        if next <= self.lookup.work[i].until {
            self.schedule(next, Ev::LookupTick(i as u32));
        }
    }

    /// The peer-id lookup that follows a finished DID lookup, if both ends are still up.
    pub(super) fn lookup_follow(&mut self, asker: PeerIx, target: PeerIx) {
        if self.alive(asker) && self.alive(target) {
            self.events += 1;
            self.issue_lookup(asker, target, false);
        }
    }

    /// Time to the next lookup of workload `i`: exponential with mean `1 / rate` (a Poisson
    /// process), in whole ms, from the run's seed.
    pub(super) fn lookup_gap(&mut self, i: usize) -> u64 {
        poisson_gap(&mut self.lookup.rng, self.lookup.work[i].rate_per_s)
    }

    /// Whether `q` may ask or be looked up: an alive, honest node-role peer started `warmup` ago.
    fn lookup_eligible(&self, q: PeerIx, warmup_ms: u64) -> bool {
        debug_assert_eq!(self.eligible_since[q as usize], self.peers[q as usize].eligible_since());
        let since = self.eligible_since[q as usize];
        since != u64::MAX && self.now.saturating_sub(since) >= warmup_ms
    }

    /// A random eligible node looks up a random other eligible target of workload `i` by DID.
    fn start_workload_lookup(&mut self, i: usize) {
        let warmup = self.lookup.work[i].warmup_ms;
        let askers: Vec<PeerIx> =
            self.node_peers.iter().copied().filter(|q| self.lookup_eligible(*q, warmup)).collect();
        if askers.is_empty() {
            return;
        }
        let asker = askers[self.lookup.rng.below(askers.len() as u64) as usize];
        let pool = self.lookup.work[i].targets.as_deref().unwrap_or(&self.node_peers);
        let targets: Vec<PeerIx> =
            pool.iter().copied().filter(|q| *q != asker && self.lookup_eligible(*q, warmup)).collect();
        if targets.is_empty() {
            return;
        }
        let target = targets[self.lookup.rng.below(targets.len() as u64) as usize];
        self.issue_lookup(asker, target, true);
    }

    fn issue_lookup(&mut self, asker: PeerIx, target: PeerIx, by_did: bool) {
        let id = self.lookup.next_id;
        self.lookup.next_id += 1;
        let key = if by_did {
            RecordKey::Did(self.peers[target as usize].setup.did.clone())
        } else {
            RecordKey::Peer(self.ids[target as usize])
        };
        let target_unadmitted = self.live_count_now(target) == 0;
        let asker_admitted = self.live_count_now(asker) > 0;
        let pending = PendingLookup { asker, target, issued: self.now, by_did, target_unadmitted, asker_admitted };
        self.lookup.pending.insert(id, pending);
        self.trace.bytes(b"lookup");
        self.trace.u64(self.now);
        self.trace.u32(asker);
        self.trace.u32(target);
        self.trace.u64(id);
        self.handle(asker, Input::Command(Command::Lookup { id, key }), false);
    }

    /// Workload lookup `l` is done: a DID lookup is followed by a peer-id lookup, and the
    /// outcome is counted, unless the target went down meanwhile (then it is excluded).
    pub(super) fn finish_lookup(&mut self, l: PendingLookup, record: Option<PeerRecord>, hops: u32, attempts: u32) {
        if l.by_did {
            // The peer-id lookup follows, as a separate event at the same instant.
            self.schedule(self.now, Ev::LookupFollow { asker: l.asker, target: l.target });
        }
        let t = &self.peers[l.target as usize];
        if t.life != Life::Alive || t.last_down.is_some_and(|d| d >= l.issued) {
            self.count_lookup_excluded();
            return;
        }
        let ok = record.as_ref().is_some_and(|r| r.body.peer_id == self.ids[l.target as usize]);
        self.count_lookup(&l, ok, record.as_ref(), hops, attempts);
    }
}

impl Simulation {
    // ---- the search workload ----

    /// Search workload `i` starts a search, and schedules its next.
    pub(super) fn search_tick(&mut self, i: usize) {
        self.events += 1;
        self.start_workload_search(i);
        let next = self.now + self.search_gap(i);
        if next <= self.search.work[i].until {
            self.schedule(next, Ev::SearchTick(i as u32));
        }
    }

    /// Time to the next search of workload `i` (Poisson, from the run's seed).
    pub(super) fn search_gap(&mut self, i: usize) -> u64 {
        poisson_gap(&mut self.search.rng, self.search.work[i].rate_per_s)
    }

    /// A random eligible node searches for a random other eligible target of workload `i`.
    fn start_workload_search(&mut self, i: usize) {
        let warmup = self.search.work[i].warmup_ms;
        let askers: Vec<PeerIx> =
            self.node_peers.iter().copied().filter(|q| self.lookup_eligible(*q, warmup)).collect();
        if askers.is_empty() {
            return;
        }
        let asker = askers[self.search.rng.below(askers.len() as u64) as usize];
        let pool = self.search.work[i].targets.as_deref().unwrap_or(&self.node_peers);
        let targets: Vec<PeerIx> =
            pool.iter().copied().filter(|q| *q != asker && self.lookup_eligible(*q, warmup)).collect();
        if targets.is_empty() {
            return;
        }
        let target = targets[self.search.rng.below(targets.len() as u64) as usize];
        let by = self.search.work[i].by;
        let t = &self.peers[target as usize];
        let query = match by {
            SearchBy::Name => SearchQuery { name: Some(search_needle(&t.setup.config.name)), ..SearchQuery::default() },
            SearchBy::Did => SearchQuery { did: Some(t.setup.did.clone()), ..SearchQuery::default() },
            SearchBy::Peer => SearchQuery { peer: Some(self.ids[target as usize]), ..SearchQuery::default() },
        };
        let id = self.search.next_id;
        self.search.next_id += 1;
        let pending = PendingSearch {
            asker,
            target,
            issued: self.now,
            by,
            query: query.clone(),
            found_at: None,
            hits: 0,
            emitter: self.referent_of(asker),
            target_referent: self.referent_of(target),
            emitted_by: None,
            referenced_by: self.referenced_by(target),
        };
        self.search.pending.insert(id, pending);
        self.count_search_started();
        self.trace.bytes(b"search");
        self.trace.u64(self.now);
        self.trace.u32(asker);
        self.trace.u32(target);
        self.trace.u64(id);
        // A user per search: a newer search of the same user would cancel this one.
        let user = format!("sim-{id}");
        self.handle(asker, Input::Command(Command::Search { id, user, query }), false);
    }

    /// The indexer node `n` names as its referent (its best-scored live one), if any.
    pub(super) fn referent_of(&self, n: PeerIx) -> Option<PeerIx> {
        let pool = self.peers[n as usize].peer.as_ref()?.pool()?;
        let e = pool.entries().find(|e| e.referent)?;
        self.index.get(&e.peer).copied()
    }

    /// The alive indexers that hold node `n` as a referent.
    pub(super) fn referenced_by(&self, n: PeerIx) -> Vec<PeerIx> {
        let id = self.ids[n as usize];
        let mut out = Vec::new();
        for (i, sp) in self.peers.iter().enumerate() {
            if let Some(ix) = sp.peer.as_ref().and_then(|q| q.indexer())
                && ix.session(&id).is_some_and(|s| s.referent)
            {
                out.push(i as PeerIx);
            }
        }
        out
    }

    /// Whether `record` is a genuine record of a simulated peer: its signature verifies now, and
    /// its peer id, DID and name are that peer's.
    pub(super) fn genuine(&self, record: &PeerRecord) -> bool {
        let Some(o) = self.index.get(&record.body.peer_id).copied() else { return false };
        let setup = &self.peers[o as usize].setup;
        record.verify(ocd_core::proto::Timestamp(self.now)).is_ok()
            && record.body.did == setup.did
            && record.body.name == setup.config.name
    }

    /// The peer `id` names, if simulated.
    pub(super) fn peer_of(&self, id: &PeerId) -> Option<PeerIx> {
        self.index.get(id).copied()
    }
}
