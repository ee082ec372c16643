//! Workloads: commands handed to the peers as their applications would, at times drawn from the
//! run's seed.
//!
//! Each kind keeps its resolved specs and in-flight state in its own struct (built from the
//! scenario in [`Simulation::new`], a field of [`Simulation`]), schedules its own ticks from
//! `Simulation::schedule_workloads`, and hands what it observes to `measure`. Only `lookup`
//! exists so far; another kind (search, send) goes next to it the same way: a state struct, an
//! `Ev` tick variant, a `build`, and its accumulator and report section in `measure`.

use super::engine::Ev;
use super::{EPOCH_MS, Life, SimPeer, Simulation};
use crate::net::{PeerIx, ms};
use crate::scenario::{Scenario, ScenarioError};
use ocd_core::proto::{Command, DetRng, Input, PeerRecord, RecordKey};
use std::collections::BTreeMap;

/// Ids of the `lookup` workload's commands start here; smaller ids are free for
/// [`Simulation::command`].
pub const WORKLOAD_LOOKUP_BASE: u64 = 1 << 48;

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

impl LookupWorkload {
    /// Resolves every `lookup` workload of `scenario` (`end`: the run's end, absolute).
    pub(super) fn build(scenario: &Scenario, peers: &[SimPeer], end: u64) -> Result<LookupWorkload, ScenarioError> {
        let mut work = Vec::new();
        for (i, w) in scenario.workloads.iter().enumerate() {
            let Some(l) = &w.lookup else { continue };
            let targets = if l.targets.is_empty() {
                None
            } else {
                let ctx = format!("workload #{}", i + 1);
                let t = scenario.resolve(&ctx, &l.targets)?;
                Some(t.into_iter().map(|x| x as PeerIx).filter(|x| peers[*x as usize].roles.node).collect())
            };
            work.push(LookupWork {
                from: EPOCH_MS + ms(l.from),
                until: l.until.map_or(end, |u| (EPOCH_MS + ms(u)).min(end)),
                rate_per_s: l.rate_per_s,
                warmup_ms: ms(l.warmup),
                targets,
            });
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

impl Simulation {
    /// Schedules the first tick of every workload.
    pub(super) fn schedule_workloads(&mut self) {
        for i in 0..self.lookup.work.len() {
            let at = self.lookup.work[i].from + self.lookup_gap(i);
            if at <= self.lookup.work[i].until {
                self.schedule(at, Ev::LookupTick(i as u32));
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
        let rate = self.lookup.work[i].rate_per_s;
        let u = 1.0 - self.lookup.rng.unit_f64(); // (0, 1]
        let gap = -u.ln() / rate * 1000.0;
        if gap.is_finite() { gap.round().clamp(0.0, 1e12) as u64 } else { 0 }
    }

    /// Whether `q` may ask or be looked up: an alive, honest node-role peer started `warmup` ago.
    fn lookup_eligible(&self, q: PeerIx, warmup_ms: u64) -> bool {
        let sp = &self.peers[q as usize];
        sp.is_node()
            && sp.honest()
            && sp.life == Life::Alive
            && sp.started_at.is_some_and(|t| self.now.saturating_sub(t) >= warmup_ms)
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
        self.lookup.pending.insert(id, PendingLookup { asker, target, issued: self.now, by_did });
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
