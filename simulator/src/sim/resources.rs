//! The `resource_search` workload and what it measures (DESIGN §9, issue 12): resource searches of
//! type `all` handed to requesters' cores ([`Command::ResourceSearch`]) at Poisson times, followed
//! over the indexers' search mesh to every node they reach ([`Event::ResourceSearchAsked`]), and
//! the answers of the reached nodes' apps back into the requester's inbox; the report's
//! `resource_searches` section.
//!
//! The apps are played here, not in the cores: a reached node answers with probability
//! `answer_fraction` (a draw per search and node from the run's seed) by handing its core one
//! `search` message for the requester ([`Command::Send`]), as its bridge would after its apps
//! replied. Nothing here is protocol logic.

use super::engine::Ev;
use super::measure::kind;
use super::{EPOCH_MS, Life, Simulation};
use crate::net::{PeerIx, ms};
use crate::report::{ResourceSearchesReport, Stats};
use crate::scenario::{Scenario, ScenarioError};
use ocd_core::proto::{AppProtocol, Command, DetRng, InboxEntry, Input, NewMessage, PeerId, Target};
use std::collections::{BTreeMap, BTreeSet};

/// Ids of the `resource_search` workload's commands (searches, then answers) start here.
pub const WORKLOAD_RESOURCE_BASE: u64 = 1 << 49;
/// Traffic is counted until this long after the last search could start.
const TAIL_MS: u64 = 30_000;

/// The kinds a resource search costs, reported per search.
const COUNTED: [(&str, usize); 6] = [
    ("search_ask", kind("search_ask")),
    ("search_asked", kind("search_asked")),
    ("mesh_gossip", kind("mesh_gossip")),
    ("mesh_control", kind("mesh_control")),
    ("app_deliver", kind("app_deliver")),
    ("app_ack", kind("app_ack")),
];

/// One `resource_search` workload, resolved.
struct ResourceWork {
    from: u64,
    until: u64,
    rate_per_s: f64,
    warmup_ms: u64,
    answer_fraction: f64,
    /// Node-role peers that search.
    requesters: Vec<PeerIx>,
}

/// A search, followed.
struct Followed {
    requester: PeerIx,
    started: u64,
    answer_fraction: f64,
    /// Other live started nodes at the start.
    others: u64,
    reached: BTreeSet<PeerIx>,
    last_reached: Option<u64>,
    answers: u64,
    last_answer: Option<u64>,
}

/// The scenario's `resource_search` workloads and the searches they started.
pub(super) struct ResourceWorkload {
    work: Vec<ResourceWork>,
    rng: DetRng,
    seed: u64,
    searches: BTreeMap<u64, Followed>,
    next_id: u64,
    no_indexer: u64,
    asked_twice: u64,
    answers_sent: u64,
    /// `[first possible start, last possible start + TAIL_MS]`, absolute (`None`: no workload).
    window: Option<(u64, u64)>,
    delivered: [u64; COUNTED.len()],
}

impl ResourceWorkload {
    /// Resolves every `resource_search` workload of `scenario` (`end`: the run's end, absolute).
    pub(super) fn build(scenario: &Scenario, end: u64) -> Result<ResourceWorkload, ScenarioError> {
        let nodes: Vec<PeerIx> =
            (0..scenario.peer_count()).filter(|p| scenario.roles_of(*p).node).map(|p| p as PeerIx).collect();
        let mut work = Vec::new();
        let mut window: Option<(u64, u64)> = None;
        for (i, w) in scenario.workloads.iter().enumerate() {
            let Some(s) = &w.resource else { continue };
            let requesters = if s.targets.is_empty() {
                nodes.clone()
            } else {
                let mut v: Vec<PeerIx> = scenario
                    .resolve(&format!("workload #{}", i + 1), &s.targets)?
                    .into_iter()
                    .filter(|p| scenario.roles_of(*p).node)
                    .map(|p| p as PeerIx)
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            let from = EPOCH_MS + ms(s.from);
            let until = s.until.map_or(end, |u| (EPOCH_MS + ms(u)).min(end));
            let (a, b) = window.unwrap_or((from, until));
            window = Some((a.min(from), b.max(until + TAIL_MS).min(end)));
            work.push(ResourceWork {
                from,
                until,
                rate_per_s: s.rate_per_s,
                warmup_ms: ms(s.warmup),
                answer_fraction: s.answer_fraction,
                requesters,
            });
        }
        Ok(ResourceWorkload {
            work,
            rng: DetRng::new(scenario.seed, "ocd-sim resource searches"),
            seed: scenario.seed,
            searches: BTreeMap::new(),
            next_id: WORKLOAD_RESOURCE_BASE,
            no_indexer: 0,
            asked_twice: 0,
            answers_sent: 0,
            window,
            delivered: [0; COUNTED.len()],
        })
    }

    /// No workload (replaced by [`ResourceWorkload::build`]'s).
    pub(super) fn empty() -> ResourceWorkload {
        ResourceWorkload {
            work: Vec::new(),
            rng: DetRng::new(0, "ocd-sim resource searches"),
            seed: 0,
            searches: BTreeMap::new(),
            next_id: WORKLOAD_RESOURCE_BASE,
            no_indexer: 0,
            asked_twice: 0,
            answers_sent: 0,
            window: None,
            delivered: [0; COUNTED.len()],
        }
    }

    /// Whether the scenario has no `resource_search` workload.
    pub(super) fn is_empty(&self) -> bool {
        self.work.is_empty()
    }

    fn gap(&mut self, i: usize) -> u64 {
        super::workloads::poisson_gap(&mut self.rng, self.work[i].rate_per_s)
    }

    /// Whether node `p`'s apps answer search `id`: a draw from the run's seed.
    fn answers(&self, id: u64, p: PeerIx, fraction: f64) -> bool {
        let mut r = DetRng::new(self.seed ^ id.rotate_left(17) ^ u64::from(p), "ocd-sim resource answer");
        r.unit_f64() < fraction
    }
}

impl Simulation {
    /// Schedules the first tick of every `resource_search` workload.
    pub(super) fn schedule_resource_searches(&mut self) {
        for i in 0..self.resources.work.len() {
            let at = self.resources.work[i].from + self.resources.gap(i);
            if at <= self.resources.work[i].until {
                self.schedule(at, Ev::ResourceTick(i as u32));
            }
        }
    }

    /// Resource-search workload `i` starts a search, and schedules its next.
    pub(super) fn resource_tick(&mut self, i: usize) {
        self.events += 1;
        self.start_resource_search(i);
        let next = self.now + self.resources.gap(i);
        if next <= self.resources.work[i].until {
            self.schedule(next, Ev::ResourceTick(i as u32));
        }
    }

    /// Whether node `q` is alive, honest and started `warmup_ms` ago.
    fn resource_eligible(&self, q: PeerIx, warmup_ms: u64) -> bool {
        let sp = &self.peers[q as usize];
        sp.honest() && sp.life == Life::Alive && sp.started_at.is_some_and(|t| self.now.saturating_sub(t) >= warmup_ms)
    }

    fn start_resource_search(&mut self, i: usize) {
        let w = &self.resources.work[i];
        let (warmup, fraction) = (w.warmup_ms, w.answer_fraction);
        let requesters: Vec<PeerIx> =
            w.requesters.iter().copied().filter(|q| self.resource_eligible(*q, warmup)).collect();
        if requesters.is_empty() {
            return;
        }
        let requester = requesters[self.resources.rng.below(requesters.len() as u64) as usize];
        let others = self.node_peers.iter().filter(|q| **q != requester && self.resource_eligible(**q, 0)).count();
        let id = self.resources.next_id;
        self.resources.next_id += 1;
        self.resources.searches.insert(
            id,
            Followed {
                requester,
                started: self.now,
                answer_fraction: fraction,
                others: others as u64,
                reached: BTreeSet::new(),
                last_reached: None,
                answers: 0,
                last_answer: None,
            },
        );
        self.trace.bytes(b"resource search");
        self.trace.u64(self.now);
        self.trace.u32(requester);
        self.trace.u64(id);
        let command = Command::ResourceSearch { id, user: format!("rs-{id}"), request: id.to_le_bytes().to_vec() };
        self.handle(requester, Input::Command(command), false);
    }

    // ---- what the cores tell ----

    /// `ResourceSearchSent`: counts a search that found no indexer.
    pub(super) fn on_resource_sent(&mut self, id: u64, via: Option<PeerId>) {
        if via.is_none() && self.resources.searches.contains_key(&id) {
            self.resources.no_indexer += 1;
        }
    }

    /// `ResourceSearchAsked` at node `p`: the search reached it; its apps may answer.
    pub(super) fn on_resource_asked(&mut self, p: PeerIx, requester: PeerId, user: String, request: Vec<u8>) {
        let Some(id) = request.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) else { return };
        let now = self.now;
        let Some(f) = self.resources.searches.get_mut(&id) else { return };
        if !f.reached.insert(p) {
            self.resources.asked_twice += 1;
            return;
        }
        f.last_reached = Some(now);
        let fraction = f.answer_fraction;
        if !self.resources.answers(id, p, fraction) {
            return;
        }
        self.resources.answers_sent += 1;
        let cmd = self.resources.next_id;
        self.resources.next_id += 1;
        let message = NewMessage {
            to: Target::Peer(requester),
            protocol: AppProtocol::Search,
            datatype: Some(1),
            user,
            payload: request,
        };
        self.handle(p, Input::Command(Command::Send { id: cmd, message }), false);
    }

    /// An inbox entry at `p`: an answer to one of its resource searches.
    pub(super) fn on_resource_answer(&mut self, p: PeerIx, entry: &InboxEntry) {
        if entry.protocol != AppProtocol::Search {
            return;
        }
        let Some(id) = entry.payload.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) else { return };
        let now = self.now;
        if let Some(f) = self.resources.searches.get_mut(&id)
            && f.requester == p
        {
            f.answers += 1;
            f.last_answer = Some(now);
        }
    }

    /// Counts a delivered message of the kinds a resource search costs, in the window.
    pub(super) fn count_resource_traffic(&mut self, k: usize) {
        let Some((a, b)) = self.resources.window else { return };
        if self.now < a || self.now > b {
            return;
        }
        if let Some(i) = COUNTED.iter().position(|(_, x)| *x == k) {
            self.resources.delivered[i] += 1;
        }
    }

    /// The report's `resource_searches` section.
    pub(super) fn resource_searches_report(&mut self) -> ResourceSearchesReport {
        let r = &self.resources;
        let n = r.searches.len() as u64;
        let per = |x: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
        let mut to_last: Vec<u64> = Vec::new();
        let mut to_reached: Vec<u64> = Vec::new();
        let (mut reached, mut answers, mut answered) = (0u64, 0u64, 0u64);
        let (mut reach_min, mut reach_sum) = (1.0f64, 0.0f64);
        for f in r.searches.values() {
            reached += f.reached.len() as u64;
            answers += f.answers;
            let share = if f.others == 0 { 1.0 } else { (f.reached.len() as f64 / f.others as f64).min(1.0) };
            reach_min = reach_min.min(share);
            reach_sum += share;
            if let Some(t) = f.last_answer {
                answered += 1;
                to_last.push(t - f.started);
            }
            if let Some(t) = f.last_reached {
                to_reached.push(t - f.started);
            }
        }
        let messages_per_search: BTreeMap<String, f64> =
            COUNTED.iter().zip(r.delivered).map(|((name, _), d)| ((*name).to_string(), per(d))).collect();
        let total = per(r.delivered.iter().sum());
        ResourceSearchesReport {
            searches: n,
            no_indexer: r.no_indexer,
            nodes_reached_mean: per(reached),
            reach_min: if n == 0 { 0.0 } else { reach_min },
            reach_mean: if n == 0 { 0.0 } else { reach_sum / n as f64 },
            asked_twice: r.asked_twice,
            answers_sent: r.answers_sent,
            answers_received: answers,
            searches_answered: answered,
            time_to_last_result_ms: Stats::of(&mut to_last),
            time_to_last_reached_ms: Stats::of(&mut to_reached),
            messages_per_search,
            messages_per_search_total: total,
        }
    }
}
