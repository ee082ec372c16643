//! The parallel event loop (`--threads N`): a conservative window of events runs its peers'
//! state machines on several threads, and everything else in the sequential order, so a run gives
//! the same trace hash, report and outcome with any number of threads.
//!
//! A window starts at the first queued event at `t0` and takes, in queue order, the events due
//! before `t0 + lookahead`, where the lookahead is the smallest delay anything done in a window
//! can put on another peer: the minimum link latency (and the connect timeout, if smaller). It
//! takes only events whose peers are known (deliveries, wake-ups, dials completing or failing,
//! links going down); any other kind (a fault, a workload's tick, a sample) ends it.
//!
//! 1. **Admit** (sequential, queue order): the wake-ups of a peer and the messages to it go to
//!    the peer's *job*. Any other event (a dial completing or failing, a link going down) stays
//!    as it is, to run in order at replay, and ends the jobs of the peers it concerns: their
//!    later events run in order too.
//! 2. **Run** (parallel): each job takes its peer out of the table and runs its events in
//!    order, with the wake-ups the peer arms for itself within the window, judging staleness as
//!    the sequential loop would, and keeps each step's outputs and next deadline. A peer's
//!    machine reads nothing but itself and the run's signature memo, whose answers do not depend
//!    on order. A job stops after a step whose outputs act on links (a close, a dial) or end a
//!    lookup (the lookup workload then acts on the peer); its remaining events run in order at
//!    replay. A message from a peer that has a job too is handled only if that job has already
//!    run past it without acting on a link (the sender could have closed and redialled the link
//!    the message is on); otherwise the receiver's job stops there. Which jobs stop where depends
//!    on the threads' timing, never the outcome: what a job does not run is run in order.
//! 3. **Replay** (sequential, queue order): the events that stayed run as the sequential loop
//!    runs them; for each step of a job, what the sequential loop does around the machine —
//!    counting, tracing, executing the outputs (sends draw their latency from the network's
//!    generator here, in order), re-arming the wake-up. An event a replayed output schedules
//!    before the window's end (a wake-up, the follow-up of a lookup) runs in place, in
//!    `(time, order)` as the queue would have run it: a wake-up the job already ran is replayed
//!    from it, anything else runs as in the sequential loop. Handing an input to a peer whose
//!    job has steps not replayed yet would break the order: it is checked, and cannot happen.
//!
//! The loop runs only where nothing sequential reads another peer's machine mid-window:
//! scenarios with byzantine behaviours (from when they start), search, send or resource
//! workloads, `--trace` or `--dump-corpus` run sequentially. The one such read of the lookup
//! workload (whether the target of a follow-up lookup is admitted) is answered from the state the
//! target's job recorded at that point.

use super::engine::{Ev, plan_rearm, run_peer};
use super::{Life, SimPeer, Simulation};
use crate::net::PeerIx;
use crate::queue::PopIf;
use ocd_core::proto::wire::Envelope;
use ocd_core::proto::{Event, Input, Output, Peer, PeerId, Timestamp};
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most events in one window.
const MAX_WINDOW: usize = 4096;

/// Not in the current window.
const OUT: u32 = u32::MAX;

/// In the current window through an event replayed in order, without a job.
const MARKED: u32 = u32::MAX - 1;

/// The window being replayed: what [`Simulation::schedule`] needs to run an event in place.
pub(super) struct Window {
    /// Events scheduled before this time during the replay run in place.
    pub(super) end: u64,
    /// Those events, `(at, order, event)`.
    deferred: Vec<(u64, u64, Ev)>,
    order: u64,
}

impl Window {
    pub(super) fn defer(&mut self, at: u64, ev: Ev) {
        self.order += 1;
        self.deferred.push((at, self.order, ev));
    }

    /// The earliest deferred event due before `t`.
    fn pop_before(&mut self, t: u64) -> Option<(u64, Ev)> {
        let (i, _) = self
            .deferred
            .iter()
            .enumerate()
            .filter(|(_, (at, _, _))| *at < t)
            .min_by_key(|(_, (at, order, _))| (*at, *order))?;
        let (at, _, ev) = self.deferred.swap_remove(i);
        Some((at, ev))
    }
}

/// An event of the window, in queue order.
enum Item {
    /// Event `e` of `jobs[j]`.
    Job(u32, u32),
    /// Replayed as the sequential loop runs it.
    InOrder(u64, Ev),
}

/// An event of a job.
struct Admitted {
    at: u64,
    /// A message from a peer with a job: the sender's job, which must have run past it.
    after: Option<u32>,
    what: What,
    outcome: Outcome,
}

// Nearly every job event is a delivery: boxing its message would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum What {
    Wake {
        generation: u64,
    },
    Deliver {
        from: PeerIx,
        from_id: PeerId,
        epoch: u64,
        slot: u32,
        bytes: Vec<u8>,
        message: Option<Envelope>,
        kind: usize,
        /// The link was open when the message arrived (nothing in the job's reach closes it).
        open: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    /// Not run by the job (it stopped before): runs in order at replay.
    InOrder,
    /// Dropped as stale, as the sequential loop drops it.
    Stale,
    /// Run as step `k` of the job.
    Step(u32),
}

/// One input the job's peer handled.
struct Step {
    at: u64,
    /// A wake-up: of the queue's (`None`) or armed by the peer in the window (its generation).
    own_wake: Option<u64>,
    timeout: bool,
    out: Vec<Output>,
    next: Option<u64>,
    /// The peer's live indexers after it.
    live_after: usize,
    /// Its pool's size after it, if it added an indexer.
    pool_len: usize,
}

pub(super) struct Job {
    p: PeerIx,
    peer: Option<Box<Peer>>,
    skew: i64,
    alive: bool,
    wake_gen: u64,
    wake_at: Option<u64>,
    /// Wake-ups the peer arms for itself at or after this run in order at replay.
    horizon: u64,
    /// Its events, in queue order.
    events: Vec<Admitted>,
    steps: Vec<Step>,
    /// Steps replayed so far.
    replayed: u32,
    /// How long its thread took to run it.
    took: Duration,
    live_before: usize,
    /// Whether the lookup workload may ask for the peer's live indexers mid-window.
    track_live: bool,
}

/// How far a job has run, for the jobs of peers it sends to. On a cache line of its own: each
/// step of a job writes it, and the jobs beside it run on other threads.
#[repr(align(128))]
struct JobClock {
    /// Every step of the job due at or before this time has run.
    progress: AtomicU64,
    /// The job's peer may act on its links from this time on (a step that stopped the job, or
    /// events of it that run in order at replay).
    taint: AtomicU64,
}

impl JobClock {
    /// Whether the job has run every step due at or before `t` without touching a link. It does
    /// not wait: the job may be queued behind the one asking, or be waiting for it.
    fn has_run_past(&self, t: u64) -> bool {
        self.progress.load(Ordering::Acquire) >= t && self.taint.load(Ordering::Acquire) > t
    }
}

impl Job {
    /// A job for peer `p`, taking its machine out of `sp` for the window.
    fn new(p: PeerIx, sp: &mut SimPeer, track_live: bool) -> Job {
        Job {
            p,
            peer: sp.peer.take(),
            skew: sp.skew_ms,
            alive: sp.life == Life::Alive,
            wake_gen: sp.wake_gen,
            wake_at: sp.wake_at,
            horizon: u64::MAX,
            events: Vec::new(),
            steps: Vec::new(),
            replayed: 0,
            took: Duration::ZERO,
            live_before: 0,
            track_live,
        }
    }

    /// Runs the job's events, and the wake-ups its peer arms before the horizon, in the order the
    /// sequential loop would.
    fn run(&mut self, me: usize, clocks: &[JobClock]) {
        let started = Instant::now();
        self.run_steps(me, clocks);
        self.took = started.elapsed();
    }

    fn run_steps(&mut self, me: usize, clocks: &[JobClock]) {
        let clock = &clocks[me];
        let Some(mut peer) = self.peer.take() else {
            for e in &mut self.events {
                e.outcome = Outcome::InOrder;
            }
            return;
        };
        // Own wake-ups armed in the window: `(at, generation)`; only the latest can be current.
        let mut own: Option<(u64, u64)> = None;
        let mut next_event = 0usize;
        loop {
            let ev_at = self.events.get(next_event).map(|e| e.at);
            // An own wake-up due before the next event runs first; at the same time it was queued
            // later, so it runs after.
            let take_own = match (own, ev_at) {
                (Some((t, _)), Some(a)) => t < a,
                (Some(_), None) => true,
                (None, _) => false,
            };
            let (at, input, own_wake, timeout) = if take_own {
                let Some((t, generation)) = own.take() else { break };
                if !self.alive || self.wake_gen != generation {
                    continue;
                }
                clock.progress.store(t - 1, Ordering::Release);
                self.wake_at = None;
                (t, Input::Timeout, Some(generation), true)
            } else {
                let Some(e) = self.events.get_mut(next_event) else { break };
                clock.progress.store(e.at - 1, Ordering::Release);
                if let Some(f) = e.after {
                    // A message from a peer with a job of its own: handled here only if that job
                    // has run past it without touching a link (else it runs in order at replay;
                    // both give the same run, this one sooner).
                    if !clocks[f as usize].has_run_past(e.at) {
                        clock.taint.store(e.at, Ordering::Release);
                        break;
                    }
                }
                next_event += 1;
                let input = match &mut e.what {
                    What::Wake { generation } => {
                        if !self.alive || self.wake_gen != *generation {
                            e.outcome = Outcome::Stale;
                            continue;
                        }
                        self.wake_at = None;
                        Input::Timeout
                    }
                    What::Deliver { from_id, message, open, .. } => {
                        if !*open {
                            e.outcome = Outcome::Stale;
                            continue;
                        }
                        let Some(message) = message.take() else {
                            // Admitted only with its message: cannot happen.
                            e.outcome = Outcome::InOrder;
                            break;
                        };
                        Input::Received { from: *from_id, message }
                    }
                };
                e.outcome = Outcome::Step(self.steps.len() as u32);
                (e.at, input, None, matches!(e.what, What::Wake { .. }))
            };
            let mut out = Vec::new();
            let local = Timestamp(at.saturating_add_signed(self.skew));
            let next = run_peer(&mut peer, input, local, self.skew, &mut out);
            let plan = plan_rearm(self.wake_at, next, at, timeout);
            if let Some(w) = plan.set.filter(|_| self.alive) {
                self.wake_gen += 1;
                self.wake_at = w;
                own = w.filter(|t| *t < self.horizon).map(|t| (t, self.wake_gen));
            }
            let stop = out.iter().any(stops_a_job);
            let live_after = if self.track_live { peer.pool().map_or(0, |pool| pool.live_count()) } else { 0 };
            // The measurements check the pool's size when an indexer joins it.
            let pool_len = if out.iter().any(|o| matches!(o, Output::Event(Event::IndexerAdded { .. }))) {
                peer.pool().map_or(0, |pool| pool.len())
            } else {
                0
            };
            self.steps.push(Step { at, own_wake, timeout, out, next, live_after, pool_len });
            if stop {
                clock.taint.store(at, Ordering::Release);
                break;
            }
        }
        for e in &mut self.events[next_event..] {
            e.outcome = Outcome::InOrder;
        }
        clock.progress.store(u64::MAX, Ordering::Release);
        self.peer = Some(peer);
    }
}

/// Outputs after which a job stops: closes and dials change links a later message to the peer
/// may be on, and a finished lookup makes the lookup workload act on the peer.
fn stops_a_job(o: &Output) -> bool {
    matches!(o, Output::Close { .. } | Output::Connect { .. } | Output::Event(Event::LookupDone { .. }))
}

/// The threads and buffers of the parallel loop.
pub(super) struct Parallel {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    jobs: Vec<Job>,
    clocks: Vec<JobClock>,
    items: Vec<Item>,
    /// Peers marked by events replayed in order.
    marked: Vec<PeerIx>,
    /// Windows run, the events they held, and the inputs jobs ran (for the bench's summary).
    pub(super) windows: u64,
    pub(super) windowed: u64,
    pub(super) in_parallel: u64,
    /// Wall time spent admitting, running the jobs and replaying, and the threads' time in the
    /// jobs (for the bench's summary; never read by the run).
    pub(super) phase_time: [Duration; 4],
}

impl Parallel {
    pub(super) fn new(threads: usize) -> Result<Parallel, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("sim-{i}")).build()?;
        Ok(Parallel {
            pool: Arc::new(pool),
            threads,
            jobs: Vec::new(),
            clocks: Vec::new(),
            items: Vec::new(),
            marked: Vec::new(),
            windows: 0,
            windowed: 0,
            in_parallel: 0,
            phase_time: Default::default(),
        })
    }

    pub(super) fn threads(&self) -> usize {
        self.threads
    }
}

impl Simulation {
    /// Whether nothing sequential reads another peer's machine mid-window (see the module).
    fn parallel_allowed(&self) -> bool {
        self.watch_log.is_empty()
            && self.dump.is_none()
            && self.search.is_empty()
            && self.sends.is_empty()
            && self.resources.is_empty()
    }

    /// The lookahead of a window: how soon anything a peer does can reach another peer.
    fn lookahead(&self) -> u64 {
        self.net.min_latency().min(self.net.connect_timeout_ms)
    }

    /// [`Simulation::run_until`] with a parallel loop, if one is set up and allowed.
    pub(super) fn run_until_parallel(&mut self, until: u64) -> bool {
        if !self.parallel_allowed() {
            return false;
        }
        let Some(mut par) = self.parallel.take() else { return false };
        let pool = Arc::clone(&par.pool);
        // Inside the pool, this thread is one of its workers and takes its share of each window.
        pool.install(|| {
            while let Some((at, ev)) = self.queue.pop_until(until) {
                self.now = at;
                let lookahead = self.lookahead();
                if lookahead == 0 || !self.byz.is_empty() || touches(&ev).is_none() {
                    self.step(ev);
                    continue;
                }
                self.admit(at, ev, &mut par);
                self.run_window(at, (at + lookahead - 1).min(until), &mut par);
            }
        });
        self.parallel = Some(par);
        self.now = self.now.max(until);
        true
    }

    /// Adds `ev`, due at `at`, to the window: to its peer's job, or as an event replayed in order.
    fn admit(&mut self, at: u64, ev: Ev, par: &mut Parallel) {
        // A wake-up a later one replaced is dropped here, as the sequential loop drops it, rather
        // than given a job: a generation only grows, so it cannot become current again. (An
        // eighth of the bench's window events are such wake-ups.)
        if let Ev::Wake { peer, generation } = ev
            && self.peers[peer as usize].wake_gen != generation
        {
            return;
        }
        let (p, what, after) = match ev {
            Ev::Wake { peer, generation } if self.joinable(peer, par) => (peer, What::Wake { generation }, None),
            Ev::Deliver { from, to, epoch, slot }
                if self.joinable(to, par)
                    && self.win_slot[from as usize] != MARKED
                    && self.in_flight.carries_whole(slot) =>
            {
                let (bytes, message) = self.in_flight.take(slot);
                let message = message.filter(|_| bytes.len() <= ocd_core::proto::wire::MAX_FRAME_LEN);
                let kind = message.as_ref().map_or(0, Envelope::kind_index);
                let open = self.net.is_open(to, from, epoch);
                let from_id = self.ids[from as usize];
                let after = Some(self.win_slot[from as usize]).filter(|j| *j != OUT);
                (to, What::Deliver { from, from_id, epoch, slot, bytes, message, kind, open }, after)
            }
            other => {
                // In order: it ends the jobs of the peers whose machines or links it touches (a
                // message touches its receiver's only).
                for q in ends_jobs(&other) {
                    match self.win_slot[q as usize] {
                        OUT => {
                            self.win_slot[q as usize] = MARKED;
                            par.marked.push(q);
                        }
                        MARKED => {}
                        j => {
                            if let Some(job) = par.jobs.get_mut(j as usize)
                                && job.horizon > at
                            {
                                job.horizon = at;
                            }
                        }
                    }
                }
                par.items.push(Item::InOrder(at, other));
                return;
            }
        };
        let j = match self.win_slot[p as usize] {
            OUT => {
                // The lookup workload asks and looks up node-role peers only.
                let track_live = self.peers[p as usize].roles.node && !self.lookup.is_empty();
                par.jobs.push(Job::new(p, &mut self.peers[p as usize], track_live));
                let j = par.jobs.len() - 1;
                self.win_slot[p as usize] = j as u32;
                j
            }
            j => j as usize,
        };
        let job = &mut par.jobs[j];
        job.events.push(Admitted { at, after, what, outcome: Outcome::InOrder });
        par.items.push(Item::Job(j as u32, (job.events.len() - 1) as u32));
    }

    /// Whether `p`'s next event may go to its job: it has none yet, or one no in-order event has
    /// ended. Its machine must be there (not crashed).
    fn joinable(&self, p: PeerIx, par: &Parallel) -> bool {
        match self.win_slot[p as usize] {
            // A peer fault trackers watch is read after each of its inputs: no job.
            OUT => self.peers[p as usize].peer.is_some() && self.peers[p as usize].watch.is_empty(),
            MARKED => false,
            j => par.jobs.get(j as usize).is_some_and(|job| job.horizon == u64::MAX),
        }
    }

    /// Fills the window started at `t0` with what is due up to `limit`, runs its jobs in
    /// parallel and replays it.
    fn run_window(&mut self, t0: u64, limit: u64, par: &mut Parallel) {
        // 1. Admit.
        let started = Instant::now();
        let end = self.fill(limit, par);
        debug_assert!(end >= t0);
        par.clocks.clear();
        for job in &mut par.jobs {
            job.horizon = job.horizon.min(end);
            if job.track_live {
                job.live_before = job.peer.as_ref().and_then(|q| q.pool()).map_or(0, |pool| pool.live_count());
            }
            par.clocks.push(JobClock { progress: AtomicU64::new(0), taint: AtomicU64::new(job.horizon) });
        }
        // 2. Run.
        let admitted = Instant::now();
        let clocks = &par.clocks;
        if par.jobs.len() > 1 {
            par.jobs.par_iter_mut().enumerate().with_max_len(1).for_each(|(i, job)| job.run(i, clocks));
        } else {
            par.jobs.iter_mut().enumerate().for_each(|(i, job)| job.run(i, clocks));
        }
        par.windows += 1;
        par.windowed += par.items.len() as u64;
        for job in &mut par.jobs {
            par.in_parallel += job.steps.len() as u64;
            par.phase_time[3] += job.took;
            self.peers[job.p as usize].peer = job.peer.take();
        }
        // 3. Replay.
        let ran = Instant::now();
        std::mem::swap(&mut self.jobs, &mut par.jobs);
        let mut items = std::mem::take(&mut par.items);
        self.window = Some(Window { end, deferred: Vec::new(), order: 0 });
        for item in items.drain(..) {
            match item {
                Item::Job(j, e) => self.replay_event(j as usize, e as usize),
                Item::InOrder(at, ev) => {
                    self.run_deferred_before(at);
                    self.now = at;
                    self.step(ev);
                }
            }
        }
        self.run_deferred_before(end);
        self.window = None;
        std::mem::swap(&mut self.jobs, &mut par.jobs);
        for job in par.jobs.drain(..) {
            debug_assert_eq!(job.replayed as usize, job.steps.len(), "every step replayed");
            self.win_slot[job.p as usize] = OUT;
        }
        for p in par.marked.drain(..) {
            self.win_slot[p as usize] = OUT;
        }
        par.items = items;
        let t = &mut par.phase_time;
        t[0] += admitted - started;
        t[1] += ran - admitted;
        t[2] += ran.elapsed();
    }

    /// Admits what is due up to `limit`; returns the window's end (the time of the first event
    /// left queued, or just past `limit`).
    fn fill(&mut self, limit: u64, par: &mut Parallel) -> u64 {
        let mut last = 0;
        loop {
            if par.items.len() >= MAX_WINDOW {
                // Anything due at the last admitted event's time or later waits in the queue.
                return last;
            }
            match self.queue.pop_if(limit, |ev| touches(ev).is_some()) {
                PopIf::Popped(at, ev) => {
                    last = at;
                    self.admit(at, ev, par);
                }
                PopIf::Refused(at) => return at,
                PopIf::Nothing => return limit + 1,
            }
        }
    }

    /// Replays event `e` of job `j` at its place in the queue's order.
    fn replay_event(&mut self, j: usize, e: usize) {
        let (at, outcome) = {
            let a = &self.jobs[j].events[e];
            (a.at, a.outcome)
        };
        self.run_deferred_before(at);
        self.now = at;
        let p = self.jobs[j].p;
        let what = std::mem::replace(&mut self.jobs[j].events[e].what, What::Wake { generation: 0 });
        match (outcome, what) {
            (Outcome::Step(k), what) => {
                let (bytes, slot) = match what {
                    What::Deliver { from, slot, bytes, kind, .. } => {
                        self.events += 1;
                        self.count_arrival(from, p, &bytes, Some(kind));
                        (Some(bytes), slot)
                    }
                    What::Wake { generation } => {
                        let sp = &mut self.peers[p as usize];
                        debug_assert!(sp.life == Life::Alive && sp.wake_gen == generation);
                        self.events += 1;
                        sp.wake_at = None;
                        (None, 0)
                    }
                };
                self.replay_step(j, k as usize);
                if let Some(bytes) = bytes {
                    self.in_flight.release(slot, bytes);
                }
            }
            (Outcome::Stale, What::Deliver { slot, bytes, .. }) => self.in_flight.release(slot, bytes),
            (Outcome::Stale, What::Wake { .. }) => {}
            (Outcome::InOrder, What::Wake { generation }) => self.wake(p, generation),
            (Outcome::InOrder, What::Deliver { from, epoch, slot, bytes, message, .. }) => {
                if self.net.is_open(p, from, epoch) {
                    self.events += 1;
                    self.deliver(from, p, &bytes, message);
                }
                self.in_flight.release(slot, bytes);
            }
        }
    }

    /// What the sequential loop does after the machine for step `k` of job `j`, which has run.
    fn replay_step(&mut self, j: usize, k: usize) {
        let job = &mut self.jobs[j];
        assert_eq!(job.replayed as usize, k, "parallel loop: steps replayed out of order");
        job.replayed += 1;
        let p = job.p;
        let step = &mut job.steps[k];
        let (at, next, timeout) = (step.at, step.next, step.timeout);
        let mut out = std::mem::take(&mut step.out);
        self.after_handle(p, &mut out, next, at, timeout);
    }

    /// A wake-up `p` armed for itself within the window, if its job already ran it: replays it.
    pub(super) fn replay_own_wake(&mut self, p: PeerIx, generation: u64) -> bool {
        let j = self.win_slot[p as usize];
        if j == OUT || j == MARKED {
            return false;
        }
        let Some(job) = self.jobs.get(j as usize) else { return false };
        let k = job.replayed as usize;
        match job.steps.get(k) {
            Some(s) if s.own_wake == Some(generation) && s.at == self.now => {
                let sp = &mut self.peers[p as usize];
                debug_assert!(sp.life == Life::Alive && sp.wake_gen == generation);
                self.events += 1;
                sp.wake_at = None;
                self.replay_step(j as usize, k);
                true
            }
            _ => false,
        }
    }

    /// Runs the events deferred during the replay that are due before `t`, in order.
    fn run_deferred_before(&mut self, t: u64) {
        while let Some((at, ev)) = self.window.as_mut().and_then(|w| w.pop_before(t)) {
            self.now = at;
            self.step(ev);
        }
    }

    /// The job of `p` in the window being replayed, if it has steps not replayed yet: its machine
    /// is past the present of the replay.
    fn ahead(&self, p: PeerIx) -> Option<&Job> {
        self.window.as_ref()?;
        let j = self.win_slot[p as usize];
        if j == OUT || j == MARKED {
            return None;
        }
        self.jobs.get(j as usize).filter(|job| (job.replayed as usize) < job.steps.len())
    }

    /// Nothing may hand an input to a peer that is ahead: the parallel loop would have run it out
    /// of order. A broken invariant of the simulator itself, never of a scenario.
    pub(super) fn check_not_ahead(&self, p: PeerIx) {
        assert!(self.ahead(p).is_none(), "parallel loop: {} handled out of order", self.peers[p as usize].name);
    }

    /// The size of `p`'s pool as the sequential loop would see it now, while its step that added
    /// an indexer is replayed (`None`: no pool).
    pub(super) fn pool_len_now(&self, p: PeerIx) -> Option<usize> {
        match self.ahead(p) {
            Some(job) => job.replayed.checked_sub(1).map(|k| job.steps[k as usize].pool_len),
            None => self.peers[p as usize].peer.as_ref().and_then(|q| q.pool()).map(|pool| pool.len()),
        }
    }

    /// `p`'s live indexers as the sequential loop would see them now: for a peer that is ahead,
    /// as they were after its last replayed step.
    pub(super) fn live_count_now(&self, p: PeerIx) -> usize {
        match self.ahead(p) {
            Some(job) => match job.replayed {
                _ if !job.track_live => unreachable!("parallel loop: live indexers of a peer not tracked"),
                0 => job.live_before,
                k => job.steps[k as usize - 1].live_after,
            },
            None => self.peers[p as usize].live_count(),
        }
    }
}

/// The peers whose jobs `ev`, run in order, ends.
fn ends_jobs(ev: &Ev) -> impl Iterator<Item = PeerIx> {
    let peers = match ev {
        Ev::Deliver { to, .. } => [Some(*to), None],
        other => touches(other).unwrap_or([None, None]),
    };
    peers.into_iter().flatten()
}

/// The peers whose machines or links `ev` can touch, for the kinds of events that can join a
/// window (`None`: it ends the window).
fn touches(ev: &Ev) -> Option<[Option<PeerIx>; 2]> {
    match ev {
        Ev::Wake { peer, .. } => Some([Some(*peer), None]),
        Ev::Deliver { from, to, .. } => Some([Some(*to), Some(*from)]),
        Ev::Establish { a, b, .. } | Ev::ConnectFailed { a, b, .. } => Some([Some(*a), Some(*b)]),
        Ev::Down { peer, other, .. } => Some([Some(*peer), Some(*other)]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{Admitted, Job, JobClock, Outcome, What};
    use crate::net::PeerIx;
    use crate::scenario::Scenario;
    use crate::sim::{EPOCH_MS, Simulation};
    use ocd_core::proto::wire::{Envelope, IndexerMessage};
    use std::sync::atomic::AtomicU64;

    /// Lookups, dials, crashes, restarts, a partition and its heal, loss and latency changes,
    /// skewed clocks: everything the parallel loop runs or ends its windows on.
    const MIXED: &str = r#"
name = "parallel-mixed"
seed = 31
duration = "4m"

[network]
latency_ms = [10, 40]
loss = 0.01

[[group]]
name = "idx"
count = 8
role = "indexer"
seeds = ["idx"]
seeds_sample = 2
start_spread = "5s"
[group.config]
max_nodes = 60

[[group]]
name = "n"
count = 120
role = "node"
seeds = ["idx"]
seeds_sample = 2
start_spread = "30s"
[group.config]
min_indexers = 2
max_indexers = 3

[[fault]]
at = "60s"
kind = "clock_skew"
targets = ["n/0..10"]
offset = "+40s"

[[fault]]
at = "70s"
kind = "crash"
targets = ["idx/0", "n/10..15"]

[[fault]]
at = "80s"
kind = "crash"
targets = ["idx/7"]

[[fault]]
at = "90s"
kind = "partition"
sides = [["idx/1..4", "n/15..60"], ["idx/4..8", "n/60..120"]]

[[fault]]
at = "110s"
kind = "set_latency"
latency_ms = [5, 60]

[[fault]]
at = "120s"
kind = "heal"

[[fault]]
at = "130s"
kind = "restart"
targets = ["idx/0", "n/10..15"]

[[fault]]
at = "150s"
kind = "set_loss"
loss = 0.0

[[workload]]
kind = "lookup"
from = "40s"
rate_per_s = 8.0
"#;

    fn report(text: &str, threads: usize) -> (serde_json::Value, (u64, u64, u64)) {
        let mut sim = Simulation::new(Scenario::from_toml(text).unwrap()).unwrap();
        sim.set_threads(threads).unwrap();
        let r = sim.run_to_end();
        let mut v = serde_json::to_value(&r).unwrap();
        v["wall_ms"] = 0.into();
        v["events_per_wall_s"] = 0.into();
        (v, sim.parallel_windows())
    }

    /// The top-level fields of two reports that differ.
    fn differing(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return vec!["(not objects)".into()] };
        a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
    }

    #[test]
    fn any_number_of_threads_gives_the_sequential_run() {
        let (one, none) = report(MIXED, 1);
        assert_eq!(none, (0, 0, 0), "one thread runs no window");
        for threads in [2, 3] {
            let (many, (windows, events, in_parallel)) = report(MIXED, threads);
            assert!(
                windows > 1000 && in_parallel > events / 2,
                "{windows} windows, {in_parallel} of {events} run apart"
            );
            assert_eq!(one["trace_hash"], many["trace_hash"], "{threads} threads");
            assert!(one == many, "with {threads} threads, the reports differ in {:?}", differing(&one, &many));
        }
        assert!(one["lookups"]["issued"].as_u64().unwrap() > 500, "{}", one["lookups"]);
        assert!(one["network"]["connect_failed"].as_u64().unwrap() > 0, "{}", one["network"]);
    }

    /// What becomes of a message from `sender` to `receiver` due at `at`, in the receiver's job,
    /// when the sender's job (job 0) has run up to `progress` and may act on its links from
    /// `taint` on.
    fn outcome_in_job(
        sim: &mut Simulation,
        sender: PeerIx,
        receiver: PeerIx,
        at: u64,
        progress: u64,
        taint: u64,
    ) -> Outcome {
        let message: Envelope = IndexerMessage::Leave.into();
        let mut job = Job::new(receiver, &mut sim.peers[receiver as usize], false);
        job.events.push(Admitted {
            at,
            after: Some(0),
            what: What::Deliver {
                from: sender,
                from_id: sim.ids[sender as usize],
                epoch: 0,
                slot: 0,
                bytes: Vec::new(),
                message: Some(message),
                kind: 0,
                open: true,
            },
            outcome: Outcome::InOrder,
        });
        let clocks = [
            JobClock { progress: AtomicU64::new(progress), taint: AtomicU64::new(taint) },
            JobClock { progress: AtomicU64::new(0), taint: AtomicU64::new(u64::MAX) },
        ];
        job.run(1, &clocks);
        sim.peers[receiver as usize].peer = job.peer.take();
        job.events[0].outcome
    }

    /// The sender-clock check: a message from a peer that has a job of its own is handled in the
    /// receiver's job only if the sender's job has run past it without acting on a link (it
    /// could have closed and redialled the link the message is on); otherwise it is left to the
    /// replay, in order.
    #[test]
    fn a_message_runs_in_a_job_only_once_its_senders_job_ran_past_it_without_touching_a_link() {
        let mut sim = Simulation::new(Scenario::from_toml(MIXED).unwrap()).unwrap();
        sim.run_until(EPOCH_MS + 20_000);
        let (receiver, sender) = (0, 8);
        assert_eq!((sim.name(receiver), sim.name(sender)), ("idx/0", "n/0"));
        let at = sim.now + 5;
        // The sender's job ran past the message and acts on no link in the window.
        assert_eq!(outcome_in_job(&mut sim, sender, receiver, at, u64::MAX, u64::MAX), Outcome::Step(0));
        // Its job acted on a link before the message arrives.
        assert_eq!(outcome_in_job(&mut sim, sender, receiver, at, u64::MAX, at - 3), Outcome::InOrder);
        // Its job acts on a link at the message's time, or has not run that far yet.
        assert_eq!(outcome_in_job(&mut sim, sender, receiver, at, u64::MAX, at), Outcome::InOrder);
        assert_eq!(outcome_in_job(&mut sim, sender, receiver, at, at - 1, u64::MAX), Outcome::InOrder);
        // Past it, and tainted only later.
        assert_eq!(outcome_in_job(&mut sim, sender, receiver, at, at, at + 1), Outcome::Step(0));
    }

    #[test]
    fn scenarios_it_cannot_run_exactly_run_sequentially() {
        let search = MIXED.replace("kind = \"lookup\"", "kind = \"search\"");
        let (one, _) = report(&search, 1);
        let (two, windows) = report(&search, 2);
        assert_eq!(windows, (0, 0, 0), "a search workload runs on one thread");
        assert!(one == two, "the reports differ in {:?}", differing(&one, &two));
    }

    #[test]
    fn a_byzantine_peer_ends_the_parallel_loop_from_when_it_misbehaves() {
        let byz = format!(
            "{MIXED}\n[[fault]]\nat = \"100s\"\nkind = \"byzantine\"\ntargets = [\"n/20\"]\nbehaviour = \"claim_foreign_did\"\n"
        );
        let (one, _) = report(&byz, 1);
        let (two, (windows, _, _)) = report(&byz, 2);
        assert!(windows > 0, "windows run before the misbehaviour starts");
        assert!(one == two, "the reports differ in {:?}", differing(&one, &two));
    }
}
