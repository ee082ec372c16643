//! Faults: crash, restart, partition, heal, loss and latency changes, making peers byzantine —
//! and the trackers that measure how affected nodes detect and recover from each.

use super::engine::Ev;
use super::{EPOCH_MS, Life, Simulation, derive_u64};
use crate::net::{PeerIx, ms};
use crate::report::FaultReport;
use crate::scenario::{Behaviour, FaultKind, Scenario, ScenarioError};
use ocd_core::proto::Input;
use std::collections::{BTreeMap, BTreeSet};

/// Window in which a restarted indexer counts as readmitted.
const READMIT_WINDOW_MS: u64 = 60_000;

/// Every fault of the scenario resolved to peers, by fault index.
pub(super) struct FaultPlan {
    targets: Vec<Vec<PeerIx>>,
    sides: Vec<Vec<Vec<PeerIx>>>,
    victims: Vec<Option<PeerIx>>,
}

impl FaultPlan {
    /// Resolves the targets, partition sides and byzantine victims of every fault.
    pub(super) fn build(scenario: &Scenario) -> Result<FaultPlan, ScenarioError> {
        let mut targets = Vec::new();
        let mut sides = Vec::new();
        let mut victims = Vec::new();
        for (i, f) in scenario.faults.iter().enumerate() {
            let ctx = format!("fault #{}", i + 1);
            let to_ix = |v: Vec<usize>| v.into_iter().map(|x| x as PeerIx).collect::<Vec<_>>();
            targets.push(to_ix(scenario.resolve(&ctx, &f.kind.target_strings())?));
            victims.push(match &f.kind {
                FaultKind::Byzantine { victim: Some(v), .. } => {
                    scenario.resolve(&ctx, std::slice::from_ref(v))?.first().map(|x| *x as PeerIx)
                }
                _ => None,
            });
            sides.push(match &f.kind {
                FaultKind::Partition { sides } => {
                    sides.iter().map(|s| scenario.resolve(&ctx, s).map(to_ix)).collect::<Result<Vec<_>, _>>()?
                }
                _ => Vec::new(),
            });
        }
        let mut plan = FaultPlan { targets, sides, victims };
        plan.default_victims(scenario);
        Ok(plan)
    }

    /// Default victim of `claim_foreign_did`: the first node-role peer no byzantine fault targets.
    fn default_victims(&mut self, scenario: &Scenario) {
        let byz_targets: BTreeSet<PeerIx> = scenario
            .faults
            .iter()
            .zip(&self.targets)
            .filter(|(f, _)| matches!(f.kind, FaultKind::Byzantine { .. }))
            .flat_map(|(_, t)| t.iter().copied())
            .collect();
        let n = scenario.peer_count();
        let default_victim = (0..n as PeerIx).find(|p| scenario.roles_of(*p as usize).node && !byz_targets.contains(p));
        for (f, v) in scenario.faults.iter().zip(self.victims.iter_mut()) {
            if matches!(f.kind, FaultKind::Byzantine { behaviour: Behaviour::ClaimForeignDid, .. }) && v.is_none() {
                *v = default_victim;
            }
        }
    }
}

/// Detection and recovery of one fault, per affected node.
pub(super) struct FaultTrack {
    pub(super) report: usize,
    pub(super) at: u64,
    pub(super) nodes: BTreeMap<PeerIx, NodeTrack>,
}

pub(super) struct NodeTrack {
    pub(super) pending: Vec<PeerIx>,
    pub(super) detect: Vec<u64>,
    pub(super) detected_all: Option<u64>,
    pub(super) recovered: Option<u64>,
    /// It had no live indexer at some moment before it recovered.
    pub(super) reached_zero: bool,
}

impl NodeTrack {
    fn new() -> NodeTrack {
        NodeTrack { pending: Vec::new(), detect: Vec::new(), detected_all: None, recovered: None, reached_zero: false }
    }
}

/// Nodes that counted a restarted indexer live again within [`READMIT_WINDOW_MS`].
pub(super) struct Readmit {
    pub(super) report: usize,
    pub(super) targets: Vec<PeerIx>,
    pub(super) until: u64,
    pub(super) nodes: BTreeSet<PeerIx>,
}

impl Simulation {
    /// Schedules every fault at its time (ties in scenario order).
    pub(super) fn schedule_faults(&mut self) {
        let mut order: Vec<usize> = (0..self.scenario.faults.len()).collect();
        order.sort_by_key(|i| self.scenario.faults[*i].at);
        for i in order {
            let at = EPOCH_MS + ms(self.scenario.faults[i].at);
            self.schedule(at, Ev::Fault(i));
        }
    }

    pub(super) fn fire_fault(&mut self, i: usize) {
        let kind = self.scenario.faults[i].kind.clone();
        let targets = self.fault_plan.targets[i].clone();
        let report = self.faults.len();
        self.trace.bytes(b"fault");
        self.trace.u64(self.now);
        self.trace.u64(i as u64);
        self.faults.push(FaultReport {
            at: self.now - EPOCH_MS,
            kind: kind.name().to_string(),
            targets: kind.target_strings(),
            affected_nodes: 0,
            detect_ms: None,
            recover_ms: None,
            detect_samples_ms: Vec::new(),
            recover_samples_ms: Vec::new(),
            undetected: 0,
            unrecovered: 0,
            reached_zero: 0,
            left_at_zero: 0,
            readmitted: None,
        });
        match kind {
            FaultKind::Crash { .. } => self.crash_fault(report, &targets),
            FaultKind::Restart { .. } => self.restart_fault(report, &targets),
            FaultKind::Partition { .. } => self.partition_fault(report, i),
            FaultKind::Heal => self.heal_fault(report),
            FaultKind::SetLoss { loss } => self.net.set_loss(loss),
            FaultKind::SetLatency { latency_ms } => self.net.set_latency(latency_ms),
            FaultKind::ClockSkew { offset_ms, .. } => {
                for &t in &targets {
                    self.peers[t as usize].skew_ms = offset_ms;
                    // Its deadlines move with its clock: read them again.
                    if self.alive(t) {
                        self.handle(t, Input::Timeout, true);
                    }
                }
            }
            FaultKind::Byzantine { behaviour, forge, .. } => {
                let victim = self.fault_plan.victims.get(i).copied().flatten();
                for &t in &targets {
                    self.make_byzantine(t, behaviour, victim, &forge);
                }
            }
        }
    }

    /// Crashes `targets`, tracking the honest nodes that counted any of them live.
    fn crash_fault(&mut self, report: usize, targets: &[PeerIx]) {
        // Who counts each target live right now.
        let mut nodes: BTreeMap<PeerIx, NodeTrack> = BTreeMap::new();
        for &t in targets {
            let tid = self.ids[t as usize];
            let mut count = 0;
            for (n, sp) in self.peers.iter().enumerate() {
                if sp.is_node() && sp.honest() && sp.life == Life::Alive && sp.counts_live(&tid) {
                    count += 1;
                    if !targets.contains(&(n as PeerIx)) {
                        nodes.entry(n as PeerIx).or_insert_with(NodeTrack::new).pending.push(t);
                    }
                }
            }
            self.live_at_crash.insert(t, count);
        }
        for &t in targets {
            self.crash(t);
        }
        self.track(report, nodes);
    }

    /// Restarts `targets`, watching which nodes readmit them.
    fn restart_fault(&mut self, report: usize, targets: &[PeerIx]) {
        let affected: usize = targets.iter().map(|t| self.live_at_crash.get(t).copied().unwrap_or(0)).sum();
        self.faults[report].affected_nodes = affected;
        self.faults[report].readmitted = Some(0);
        self.readmits.push(Readmit {
            report,
            targets: targets.to_vec(),
            until: self.now + READMIT_WINDOW_MS,
            nodes: BTreeSet::new(),
        });
        for &t in targets {
            self.restart(t);
        }
    }

    /// Cuts the network into the sides of fault `i`, tracking the honest nodes that counted an
    /// indexer across the cut live.
    fn partition_fault(&mut self, report: usize, i: usize) {
        let sides = self.fault_plan.sides[i].clone();
        let (cut, generation) = self.net.partition(&sides);
        self.on_partition();
        for (a, b, epoch) in cut {
            self.schedule(self.now + self.net.idle_timeout_ms, Ev::CutExpired(Box::new((a, b, epoch, generation))));
        }
        let mut nodes: BTreeMap<PeerIx, NodeTrack> = BTreeMap::new();
        for (n, sp) in self.peers.iter().enumerate() {
            let n = n as PeerIx;
            if !(sp.is_node() && sp.honest() && sp.life == Life::Alive) || self.net.side_of(n) == 0 {
                continue;
            }
            let Some(pool) = sp.peer.as_ref().and_then(|p| p.pool()) else { continue };
            for &(m, _) in &sp.members {
                if !self.net.reachable(n, m) && pool.is_live(&self.ids[m as usize]) {
                    nodes.entry(n).or_insert_with(NodeTrack::new).pending.push(m);
                }
            }
        }
        self.track(report, nodes);
    }

    /// Heals every partition, tracking the honest nodes below their minimum until they recover.
    fn heal_fault(&mut self, report: usize) {
        self.net.heal();
        self.on_heal();
        let mut nodes: BTreeMap<PeerIx, NodeTrack> = BTreeMap::new();
        for (n, sp) in self.peers.iter().enumerate() {
            if sp.is_node() && sp.honest() && sp.life == Life::Alive && sp.live_count() < sp.min_indexers {
                let mut t = NodeTrack::new();
                t.detected_all = Some(self.now);
                nodes.insert(n as PeerIx, t);
            }
        }
        self.track(report, nodes);
    }

    /// Starts watching `nodes` for fault report `report` (see `update_watch`).
    fn track(&mut self, report: usize, nodes: BTreeMap<PeerIx, NodeTrack>) {
        self.faults[report].affected_nodes = nodes.len();
        let ti = self.trackers.len();
        let list: Vec<PeerIx> = nodes.keys().copied().collect();
        self.trackers.push(FaultTrack { report, at: self.now, nodes });
        for n in list {
            self.peers[n as usize].watch.push(ti);
            self.update_watch(n);
        }
    }

    /// Adds the life of `p` that ends now (if it is running) to the peer-time total.
    fn end_life(&mut self, p: PeerIx) {
        let sp = &self.peers[p as usize];
        if sp.life == Life::Alive
            && let Some(t) = sp.started_at
        {
            self.alive_ms += self.now.saturating_sub(t);
        }
    }

    /// Stops `p` at once; its links stay half-open on the other ends until the idle timeout.
    fn crash(&mut self, p: PeerIx) {
        let sp = &mut self.peers[p as usize];
        if sp.life != Life::Alive {
            sp.life = Life::Crashed;
            self.eligible_since[p as usize] = u64::MAX;
            return;
        }
        self.end_life(p);
        let sp = &mut self.peers[p as usize];
        sp.peer = None;
        sp.life = Life::Crashed;
        sp.last_down = Some(self.now);
        self.eligible_since[p as usize] = u64::MAX;
        self.on_sender_down(p);
        let sp = &mut self.peers[p as usize];
        sp.wake_gen += 1;
        sp.wake_at = None;
        sp.members.clear();
        for (q, epoch) in self.net.crash(p) {
            self.schedule(self.now + self.net.idle_timeout_ms, Ev::Down { peer: q, other: p, epoch });
        }
    }

    /// Starts a fresh incarnation of `p`; the other ends of its links learn of it at once.
    fn restart(&mut self, p: PeerIx) {
        let notify = self.net.reset(p);
        self.end_life(p);
        let sp = &mut self.peers[p as usize];
        sp.peer = None;
        sp.life = Life::NotStarted;
        self.eligible_since[p as usize] = u64::MAX;
        sp.last_down = Some(self.now);
        sp.wake_gen += 1;
        sp.wake_at = None;
        sp.incarnation += 1;
        sp.setup.rng_seed = derive_u64(self.scenario.seed, &format!("{}#{}", sp.name, sp.incarnation));
        self.on_sender_down(p);
        self.start_peer(p);
        let pid = self.ids[p as usize];
        for (q, was_up) in notify {
            if self.alive(q) {
                let input =
                    if was_up { Input::ConnectionDown { peer: pid } } else { Input::ConnectFailed { peer: pid } };
                self.handle(q, input, false);
            }
        }
    }
}
