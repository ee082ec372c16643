//! The discrete-event engine: real [`Peer`]s, virtual time, a simulated network, faults and
//! measurements.
//!
//! Events live in a queue ordered by `(time, sequence number)` ([`EventQueue`], a calendar queue
//! equivalent to a binary heap on that key), so simultaneous events run in the order they were
//! scheduled and a run is a pure function of the scenario and seed. Each
//! peer's next wake-up ([`Peer::poll_timeout`]) is re-read after every input it handles and
//! scheduled with a generation counter; an older wake-up still in the heap is skipped when popped
//! (lazy deletion).
//!
//! The engine holds no protocol logic. It executes the peers' [`Output`]s — dials, sends, closes —
//! through [`Network`], round-trips every message through the wire codec, and watches
//! [`Event`]s and the read-only pool views to measure detection and recovery. Byzantine behaviours
//! are filters on a misbehaving peer's outputs (or traffic injected on its behalf); the core itself
//! is always honest.

use crate::net::{ConnectOutcome, FastMap, Network, PeerIx, SendOutcome, ms};
use crate::queue::EventQueue;
use crate::report::{Bans, ByzantineReport, FaultReport, NetReport, PoolReport, Report, Stats};
use crate::scenario::{Behaviour, FaultKind, Scenario, ScenarioError};
use crate::trace::Trace;
use ocd_core::proto::wire::{self, Heartbeat, HeartbeatKind, Message};
use ocd_core::proto::{
    DetRng, Event, EvictReason, FailReason, Input, Keypair, Output, Peer, PeerAddr, PeerId, PeerSetup, RequestId,
    Roles, Timestamp,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Virtual time of the start of every run (ms since the Unix epoch), so timestamps look real.
pub const EPOCH_MS: u64 = 1_700_000_000_000;
/// Pool health is sampled this often.
const SAMPLE_EVERY_MS: u64 = 60_000;
/// Window in which a restarted indexer counts as readmitted.
const READMIT_WINDOW_MS: u64 = 60_000;
/// A flooding node sends its extra heartbeats this often.
const FLOOD_EVERY_MS: u64 = 1_000;
/// Request ids of injected flood heartbeats start here, far above any id a core allocates.
const FLOOD_REQ_BASE: u64 = 1 << 62;
/// Most invariant violations listed in the report (all are counted).
const MAX_VIOLATIONS_LISTED: usize = 200;
/// Most nodes below min listed by name in the report.
const MAX_BELOW_MIN_LISTED: usize = 20;
/// `flap_born_at` moves `born_at` back by this much on every other response.
const FLAP_OFFSET: Duration = Duration::from_secs(3600);

/// A queued event. Kept at 24 bytes: message bytes wait in [`InFlight`], rare payloads are boxed.
#[derive(Debug)]
enum Ev {
    Start(PeerIx),
    Wake {
        peer: PeerIx,
        generation: u64,
    },
    /// The encoded message is `in_flight[slot]`.
    Deliver {
        from: PeerIx,
        to: PeerIx,
        epoch: u64,
        slot: u32,
    },
    Establish {
        a: PeerIx,
        b: PeerIx,
        epoch: u64,
    },
    ConnectFailed {
        a: PeerIx,
        b: PeerIx,
        epoch: u64,
    },
    ConnectFailedUnknown {
        peer: PeerIx,
        target: Box<PeerId>,
    },
    Down {
        peer: PeerIx,
        other: PeerIx,
        epoch: u64,
    },
    /// `(a, b, epoch, partition generation)`.
    CutExpired(Box<(PeerIx, PeerIx, u64, u64)>),
    Fault(usize),
    Sample,
    FloodTick(PeerIx),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    NotStarted,
    Alive,
    Crashed,
}

struct SimPeer {
    name: String,
    roles: Roles,
    setup: PeerSetup,
    min_indexers: usize,
    peer: Option<Peer>,
    life: Life,
    incarnation: u32,
    wake_gen: u64,
    wake_at: Option<u64>,
    /// Indexers in this peer's pool, as told by its events, with the time each was added.
    members: Vec<(PeerIx, u64)>,
    /// Misbehaviour and when it started.
    byz: Option<(Behaviour, u64)>,
    byz_track: Option<usize>,
    flap: bool,
    flood_req: u64,
    /// Fault trackers watching this node.
    watch: Vec<usize>,
}

impl SimPeer {
    fn is_node(&self) -> bool {
        self.roles.node
    }
    fn honest(&self) -> bool {
        self.byz.is_none()
    }
    fn live_count(&self) -> usize {
        self.peer.as_ref().and_then(|p| p.pool()).map_or(0, |pool| pool.live_count())
    }
    fn counts_live(&self, target: &PeerId) -> bool {
        self.peer.as_ref().and_then(|p| p.pool()).is_some_and(|pool| pool.is_live(target))
    }
}

/// Detection and recovery of one fault, per affected node.
struct FaultTrack {
    report: usize,
    at: u64,
    nodes: BTreeMap<PeerIx, NodeTrack>,
}

struct NodeTrack {
    pending: Vec<PeerIx>,
    detect: Vec<u64>,
    detected_all: Option<u64>,
    recovered: Option<u64>,
}

/// Exposure an honest node needs before it is counted in a byzantine indexer's `honest_nodes`
/// (unless it already evicted it): the 2-minute eviction grace plus a few challenge batches.
const BYZANTINE_MIN_EXPOSURE_MS: u64 = 5 * 60 * 1000;

struct ByzTrack {
    peer: PeerIx,
    behaviour: Behaviour,
    since: u64,
    /// Indexer behaviours: honest node → (measured from, evicted at).
    nodes: BTreeMap<PeerIx, (u64, Option<u64>)>,
    /// Indexer behaviours: why those nodes evicted it (first eviction each).
    reasons: BTreeMap<String, usize>,
    /// Indexer behaviours: honest nodes that counted it live after the start → whether their first
    /// eviction after that was for cause (not a refusal, seed return or migration).
    live_nodes: BTreeMap<PeerIx, Option<bool>>,
    /// Node behaviours: indexers reached, and when each banned it.
    reached: BTreeSet<PeerIx>,
    banned: BTreeMap<PeerIx, u64>,
}

struct Readmit {
    report: usize,
    targets: Vec<PeerIx>,
    until: u64,
    nodes: BTreeSet<PeerIx>,
}

/// One simulation run. Build it with [`Simulation::new`], then [`Simulation::run`].
pub struct Simulation {
    scenario: Scenario,
    now: u64,
    end: u64,
    queue: EventQueue<Ev>,
    peers: Vec<SimPeer>,
    ids: Vec<PeerId>,
    index: FastMap<PeerId, PeerIx>,
    net: Network,
    network_key: [u8; 32],
    trace: Trace,
    events: u64,
    messages: u64,
    netr: NetReport,
    out_buf: Vec<Output>,
    fault_targets: Vec<Vec<PeerIx>>,
    fault_sides: Vec<Vec<Vec<PeerIx>>>,
    faults: Vec<FaultReport>,
    trackers: Vec<FaultTrack>,
    byz: Vec<ByzTrack>,
    readmits: Vec<Readmit>,
    live_at_crash: BTreeMap<PeerIx, usize>,
    banned: BTreeSet<PeerIx>,
    violations: Vec<String>,
    violation_count: usize,
    timeline: Vec<(u64, f64, usize)>,
    min_target: usize,
    spins: u64,
    watch_log: BTreeSet<PeerIx>,
    sent_by_kind: [u64; MESSAGE_KINDS],
    in_flight: InFlight,
}

/// Encoded messages on their way, in reusable slots, so queue entries stay small.
#[derive(Default)]
struct InFlight {
    slots: Vec<Vec<u8>>,
    free: Vec<u32>,
}

impl InFlight {
    fn put(&mut self, bytes: Vec<u8>) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = bytes;
                i
            }
            None => {
                self.slots.push(bytes);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        }
    }

    fn take(&mut self, slot: u32) -> Vec<u8> {
        self.free.push(slot);
        self.slots.get_mut(slot as usize).map(std::mem::take).unwrap_or_default()
    }
}

/// Number of [`Message`] variants counted in `sent_by_kind`.
const MESSAGE_KINDS: usize = 10;

fn kind_index(m: &Message) -> usize {
    match m {
        Message::Hello(_) => 0,
        Message::HelloProof(_) => 1,
        Message::Heartbeat(_) => 2,
        Message::HeartbeatResponse(_) => 3,
        Message::Refused(_) => 4,
        Message::Leave => 5,
        Message::WitnessQuery(_) => 6,
        Message::WitnessReport(_) => 7,
        Message::CandidatesRequest(_) => 8,
        Message::CandidatesResponse(_) => 9,
    }
}

const KIND_NAMES: [&str; MESSAGE_KINDS] = [
    "hello",
    "hello_proof",
    "heartbeat",
    "heartbeat_response",
    "refused",
    "leave",
    "witness_query",
    "witness_report",
    "candidates_request",
    "candidates_response",
];

/// Appends `e` to the trace. The frequent variants are written compactly (a tag and the full peer
/// id); the others as their `Debug` text.
fn trace_event(trace: &mut Trace, e: &Event) {
    let (tag, id) = match e {
        Event::PeerAuthenticated { peer } => (b"E:auth", peer),
        Event::RequestRefused { peer, reason } => {
            trace.bytes(b"E:refused");
            trace.bytes(peer.as_bytes());
            trace.debug(reason);
            return;
        }
        Event::IndexerLive { indexer } => (b"E:live", indexer),
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
        other => {
            trace.debug(other);
            return;
        }
    };
    trace.bytes(tag);
    trace.bytes(id.as_bytes());
}

/// `Keypair::derive(seed, name)` for every name, in order, spread over the machine's cores (key
/// derivation dominates building a large simulation; each key is a pure function of its name).
fn derive_keypairs(seed: u64, names: &[String]) -> Vec<Keypair> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads <= 1 || names.len() < 512 {
        return names.iter().map(|n| Keypair::derive(seed, n)).collect();
    }
    let chunk = names.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(|n| Keypair::derive(seed, n)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

fn derive_u64(seed: u64, label: &str) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("ocd-sim seed v1");
    h.update(&seed.to_le_bytes());
    h.update(label.as_bytes());
    let b = h.finalize();
    let mut x = [0u8; 8];
    x.copy_from_slice(&b.as_bytes()[..8]);
    u64::from_le_bytes(x)
}

impl Simulation {
    /// Builds every peer of `scenario` (none has started yet).
    pub fn new(scenario: Scenario) -> Result<Simulation, ScenarioError> {
        let seed = scenario.seed;
        let n = scenario.peer_count();
        let mut network_key = [0u8; 32];
        DetRng::new(seed, "ocd-sim network key").fill(&mut network_key);
        let mut start_rng = DetRng::new(seed, "ocd-sim start times");
        let net_rng = DetRng::new(seed, "ocd-sim network");
        let mut peers = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let mut starts = Vec::with_capacity(n);
        let mut min_target = 0;
        let names: Vec<String> =
            scenario.groups.iter().flat_map(|g| (0..g.count).map(move |i| format!("{}/{}", g.name, i))).collect();
        let mut keypairs = derive_keypairs(seed, &names).into_iter();
        for (gi, g) in scenario.groups.iter().enumerate() {
            let seeds = scenario.resolve(&format!("group {:?} seeds", g.name), &g.seeds)?;
            if g.roles.node {
                min_target = min_target.max(g.config.min_indexers);
            }
            for i in 0..g.count {
                let name = format!("{}/{}", g.name, i);
                let me = peers.len();
                let keypair = keypairs.next().unwrap_or_else(|| Keypair::derive(seed, &name));
                let id = keypair.peer_id();
                let mut config = g.config.clone();
                if config.name.is_empty() {
                    config.name = name.clone();
                }
                let mut mine: Vec<usize> = seeds.iter().copied().filter(|s| *s != me).collect();
                if let Some(k) = g.seeds_sample
                    && k < mine.len()
                {
                    let mut r = DetRng::new(seed, &format!("ocd-sim seeds {name}"));
                    r.shuffle(&mut mine);
                    mine.truncate(k);
                    mine.sort_unstable();
                }
                let mut setup = PeerSetup::new(keypair, network_key, g.roles);
                setup.config = config;
                setup.rng_seed = derive_u64(seed, &format!("{name}#0"));
                // Seed ids are filled in below, once every key exists.
                setup.seeds = mine.iter().map(|s| PeerAddr::id_only(PeerId([*s as u8; 32]))).collect();
                let spread = ms(g.start_spread);
                starts.push(if spread > 0 { start_rng.below(spread) } else { 0 });
                peers.push((
                    mine,
                    SimPeer {
                        name,
                        roles: g.roles,
                        setup,
                        min_indexers: g.config.min_indexers,
                        peer: None,
                        life: Life::NotStarted,
                        incarnation: 0,
                        wake_gen: 0,
                        wake_at: None,
                        members: Vec::new(),
                        byz: None,
                        byz_track: None,
                        flap: false,
                        flood_req: 0,
                        watch: Vec::new(),
                    },
                ));
                ids.push(id);
                let _ = gi;
            }
        }
        let peers: Vec<SimPeer> = peers
            .into_iter()
            .map(|(mine, mut p)| {
                p.setup.seeds = mine.iter().map(|s| PeerAddr::id_only(ids[*s])).collect();
                p
            })
            .collect();
        let mut index = FastMap::default();
        for (i, id) in ids.iter().enumerate() {
            index.insert(*id, i as PeerIx);
        }
        let mut fault_targets = Vec::new();
        let mut fault_sides = Vec::new();
        for (i, f) in scenario.faults.iter().enumerate() {
            let ctx = format!("fault #{}", i + 1);
            let to_ix = |v: Vec<usize>| v.into_iter().map(|x| x as PeerIx).collect::<Vec<_>>();
            fault_targets.push(to_ix(scenario.resolve(&ctx, &f.kind.target_strings())?));
            let sides = match &f.kind {
                FaultKind::Partition { sides } => {
                    sides.iter().map(|s| scenario.resolve(&ctx, s).map(to_ix)).collect::<Result<Vec<_>, _>>()?
                }
                _ => Vec::new(),
            };
            fault_sides.push(sides);
        }
        let net = Network::new(
            n,
            scenario.network.latency_ms,
            scenario.network.loss,
            scenario.network.idle_timeout,
            scenario.network.connect_timeout,
            net_rng,
        );
        let mut trace = Trace::new("ocd-sim trace v1");
        trace.u64(seed);
        let end = EPOCH_MS + ms(scenario.duration);
        let mut sim = Simulation {
            now: EPOCH_MS,
            end,
            queue: EventQueue::new(EPOCH_MS),
            peers,
            ids,
            index,
            net,
            network_key,
            trace,
            events: 0,
            messages: 0,
            netr: NetReport::default(),
            out_buf: Vec::new(),
            fault_targets,
            fault_sides,
            faults: Vec::new(),
            trackers: Vec::new(),
            byz: Vec::new(),
            readmits: Vec::new(),
            live_at_crash: BTreeMap::new(),
            banned: BTreeSet::new(),
            violations: Vec::new(),
            violation_count: 0,
            timeline: Vec::new(),
            min_target,
            spins: 0,
            watch_log: BTreeSet::new(),
            sent_by_kind: [0; MESSAGE_KINDS],
            in_flight: InFlight::default(),
            scenario,
        };
        for (p, at) in starts.into_iter().enumerate() {
            sim.schedule(EPOCH_MS + at, Ev::Start(p as PeerIx));
        }
        let mut order: Vec<usize> = (0..sim.scenario.faults.len()).collect();
        order.sort_by_key(|i| sim.scenario.faults[*i].at);
        for i in order {
            let at = EPOCH_MS + ms(sim.scenario.faults[i].at);
            sim.schedule(at, Ev::Fault(i));
        }
        let mut t = EPOCH_MS + SAMPLE_EVERY_MS;
        while t <= end {
            sim.schedule(t, Ev::Sample);
            t += SAMPLE_EVERY_MS;
        }
        Ok(sim)
    }

    /// The scenario being run.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// Current simulated time, in ms since the start of the run.
    pub fn elapsed_ms(&self) -> u64 {
        self.now - EPOCH_MS
    }

    /// The peer named `"<group>/<i>"`, if it is running.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name).and_then(|p| p.peer.as_ref())
    }

    /// Index of the peer named `name`.
    pub fn peer_index(&self, name: &str) -> Option<PeerIx> {
        self.peers.iter().position(|p| p.name == name).map(|i| i as PeerIx)
    }

    /// The network (links, partitions), read-only.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// The shared network key every peer was given.
    pub fn network_key(&self) -> [u8; 32] {
        self.network_key
    }

    /// Prints every message, dial, close, link change and event of these peers to stderr (the CLI's
    /// `--trace`). Names that match no peer are returned.
    pub fn trace_peers(&mut self, names: &[String]) -> Vec<String> {
        let mut unknown = Vec::new();
        for n in names {
            let hits = self.scenario.resolve("--trace", std::slice::from_ref(n));
            match hits {
                Ok(v) => self.watch_log.extend(v.into_iter().map(|x| x as PeerIx)),
                Err(_) => unknown.push(n.clone()),
            }
        }
        unknown
    }

    fn log(&self, p: PeerIx, what: std::fmt::Arguments<'_>) {
        if self.watch_log.contains(&p) {
            eprintln!("{:>10.3}s {:<10} {what}", (self.now - EPOCH_MS) as f64 / 1000.0, self.peers[p as usize].name);
        }
    }

    fn name(&self, p: PeerIx) -> &str {
        &self.peers[p as usize].name
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.queue.push(at, ev);
    }

    /// Runs to the end of the scenario and returns the report.
    pub fn run(mut self) -> Report {
        self.run_to_end()
    }

    /// [`Simulation::run`] without consuming the simulation, so the caller chooses when (and
    /// whether) to free its peers: a CLI about to exit can skip that work. The report's lists are
    /// moved out; the simulation should not be run further.
    pub fn run_to_end(&mut self) -> Report {
        let wall = std::time::Instant::now();
        self.run_until(self.end);
        let wall_ms = u64::try_from(wall.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.finish(wall_ms)
    }

    /// Processes every event up to and including `until` (absolute ms; see [`EPOCH_MS`]).
    pub fn run_until(&mut self, until: u64) {
        let until = until.min(self.end);
        while let Some((at, ev)) = self.queue.pop_until(until) {
            self.now = at;
            self.step(ev);
        }
        self.now = self.now.max(until);
    }

    /// Processes every event up to `elapsed` after the start.
    pub fn run_for(&mut self, elapsed: Duration) {
        self.run_until(EPOCH_MS + ms(elapsed));
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Start(p) => {
                if self.peers[p as usize].life == Life::NotStarted {
                    self.events += 1;
                    self.start_peer(p);
                }
            }
            Ev::Wake { peer, generation } => {
                let sp = &mut self.peers[peer as usize];
                if sp.life == Life::Alive && sp.wake_gen == generation {
                    self.events += 1;
                    sp.wake_at = None;
                    self.handle(peer, Input::Timeout, true);
                }
            }
            Ev::Deliver { from, to, epoch, slot } => {
                let bytes = self.in_flight.take(slot);
                if !self.net.is_open(to, from, epoch) {
                    return;
                }
                self.events += 1;
                self.deliver(from, to, &bytes);
            }
            Ev::Establish { a, b, epoch } => {
                let alive = self.alive(a) && self.alive(b);
                match self.net.establish(self.now, a, b, epoch, alive) {
                    Ok(dialer) => {
                        self.events += 1;
                        let other = if dialer == a { b } else { a };
                        let (did, oid) = (self.ids[dialer as usize], self.ids[other as usize]);
                        self.handle(dialer, Input::ConnectionUp { peer: oid, addr: None, outbound: true }, false);
                        self.handle(other, Input::ConnectionUp { peer: did, addr: None, outbound: false }, false);
                    }
                    Err(Some(fail_at)) => self.schedule(fail_at, Ev::ConnectFailed { a, b, epoch }),
                    Err(None) => {}
                }
            }
            Ev::ConnectFailed { a, b, epoch } => {
                if let Some(dialer) = self.net.fail(a, b, epoch) {
                    self.events += 1;
                    self.netr.connect_failed += 1;
                    let other = if dialer == a { b } else { a };
                    if self.alive(dialer) {
                        let oid = self.ids[other as usize];
                        self.handle(dialer, Input::ConnectFailed { peer: oid }, false);
                    }
                }
            }
            Ev::ConnectFailedUnknown { peer, target } => {
                if self.alive(peer) {
                    self.events += 1;
                    self.netr.connect_failed += 1;
                    self.handle(peer, Input::ConnectFailed { peer: *target }, false);
                }
            }
            Ev::Down { peer, other, epoch } => {
                if self.net.end_down(peer, other, epoch) && self.alive(peer) {
                    self.events += 1;
                    let oid = self.ids[other as usize];
                    self.handle(peer, Input::ConnectionDown { peer: oid }, false);
                }
            }
            Ev::CutExpired(cut) => {
                let (a, b, epoch, generation) = *cut;
                for p in self.net.cut_expired(a, b, epoch, generation) {
                    if self.alive(p) {
                        self.events += 1;
                        let q = if p == a { b } else { a };
                        let qid = self.ids[q as usize];
                        self.handle(p, Input::ConnectionDown { peer: qid }, false);
                    }
                }
            }
            Ev::Fault(i) => {
                self.events += 1;
                self.fire_fault(i);
            }
            Ev::Sample => {
                self.events += 1;
                self.sample();
            }
            Ev::FloodTick(p) => {
                if self.alive(p) {
                    self.events += 1;
                    self.flood(p);
                }
                self.schedule(self.now + FLOOD_EVERY_MS, Ev::FloodTick(p));
            }
        }
    }

    fn alive(&self, p: PeerIx) -> bool {
        self.peers[p as usize].life == Life::Alive
    }

    fn start_peer(&mut self, p: PeerIx) {
        let now = self.now;
        let sp = &mut self.peers[p as usize];
        sp.peer = Some(Peer::new(sp.setup.clone(), Timestamp(now)));
        sp.life = Life::Alive;
        sp.members.clear();
        self.trace.bytes(b"start");
        self.trace.u64(now);
        self.trace.u32(p);
        self.trace.bytes(self.ids[p as usize].as_bytes());
        self.handle(p, Input::Timeout, true);
    }

    fn deliver(&mut self, from: PeerIx, to: PeerIx, bytes: &[u8]) {
        self.messages += 1;
        self.netr.bytes += bytes.len() as u64;
        self.trace.bytes(b"msg");
        self.trace.u64(self.now);
        self.trace.u32(from);
        self.trace.u32(to);
        self.trace.u64(bytes.len() as u64);
        self.trace.bytes(bytes);
        if let Some(t) = self.peers[from as usize].byz_track
            && self.peers[to as usize].roles.indexer
        {
            self.byz[t].reached.insert(to);
        }
        match wire::decode(bytes) {
            Ok(message) => {
                let fid = self.ids[from as usize];
                self.handle(to, Input::Received { from: fid, message }, false);
            }
            Err(e) => {
                let msg = format!(
                    "{}: undecodable message from {}: {e}",
                    self.peers[to as usize].name, self.peers[from as usize].name
                );
                self.violation(msg);
                self.close_link(to, from);
            }
        }
    }

    /// Hands `input` to peer `p`, executes its outputs and re-arms its wake-up.
    fn handle(&mut self, p: PeerIx, input: Input, is_timeout: bool) {
        let now = self.now;
        if !self.watch_log.is_empty() && self.watch_log.contains(&p) {
            match &input {
                Input::Received { from, message } => {
                    let f = self.index.get(from).map(|x| self.name(*x)).unwrap_or("?");
                    self.log(p, format_args!("<- {f:<10} {message:?}"));
                }
                Input::Timeout => {}
                other => self.log(p, format_args!("input {other:?}")),
            }
        }
        let mut buf = std::mem::take(&mut self.out_buf);
        let next = {
            let Some(peer) = self.peers[p as usize].peer.as_mut() else {
                self.out_buf = buf;
                return;
            };
            peer.handle(input, Timestamp(now));
            while let Some(o) = peer.poll_output() {
                buf.push(o);
            }
            peer.poll_timeout().map(|t| t.0)
        };
        for o in buf.drain(..) {
            self.execute(p, o);
        }
        self.out_buf = buf;
        // Re-arm the wake-up. A deadline already due right after a timeout was handled would spin:
        // push it one ms forward (and count it).
        let sp = &mut self.peers[p as usize];
        if sp.life == Life::Alive {
            match next {
                Some(mut t) => {
                    if t <= now && is_timeout {
                        self.spins += 1;
                        t = now + 1;
                    }
                    let t = t.max(now);
                    if sp.wake_at != Some(t) {
                        sp.wake_gen += 1;
                        sp.wake_at = Some(t);
                        let generation = sp.wake_gen;
                        self.schedule(t, Ev::Wake { peer: p, generation });
                    }
                }
                None => {
                    sp.wake_gen += 1;
                    sp.wake_at = None;
                }
            }
        }
        if !self.peers[p as usize].watch.is_empty() {
            self.update_watch(p);
        }
    }

    fn execute(&mut self, p: PeerIx, o: Output) {
        if !self.watch_log.is_empty() && self.watch_log.contains(&p) {
            match &o {
                Output::Send { to, message } => {
                    let t = self.index.get(to).map(|x| self.name(*x)).unwrap_or("?");
                    self.log(p, format_args!("-> {t:<10} {message:?}"));
                }
                other => self.log(p, format_args!("output {other:?}")),
            }
        }
        match o {
            Output::Send { to, message } => {
                let message = if self.peers[p as usize].byz.is_none() {
                    message
                } else {
                    let Some(message) = self.byzantine_filter(p, message) else {
                        self.netr.dropped_byzantine += 1;
                        return;
                    };
                    message
                };
                match self.index.get(&to).copied() {
                    Some(q) => self.send(p, q, &message),
                    None => {
                        self.netr.sent += 1;
                        self.netr.dropped_no_link += 1;
                    }
                }
            }
            Output::Connect { peer } => {
                self.netr.connects += 1;
                self.trace.bytes(b"dial");
                self.trace.u64(self.now);
                self.trace.u32(p);
                self.trace.bytes(peer.id.as_bytes());
                match self.index.get(&peer.id).copied() {
                    Some(q) => {
                        let alive = self.alive(q);
                        match self.net.connect(self.now, p, q, alive) {
                            ConnectOutcome::AlreadyLinked => {}
                            ConnectOutcome::Establish { at, epoch } => {
                                self.schedule(at, Ev::Establish { a: p, b: q, epoch })
                            }
                            ConnectOutcome::Fail { at, epoch } => {
                                self.schedule(at, Ev::ConnectFailed { a: p, b: q, epoch })
                            }
                        }
                    }
                    None => {
                        let at = self.now + self.net.connect_timeout_ms;
                        self.schedule(at, Ev::ConnectFailedUnknown { peer: p, target: Box::new(peer.id) });
                    }
                }
            }
            Output::Close { peer, reason } => {
                self.trace.bytes(b"close");
                self.trace.u64(self.now);
                self.trace.u32(p);
                self.trace.bytes(peer.as_bytes());
                self.trace.debug(&reason);
                if let Some(q) = self.index.get(&peer).copied() {
                    self.close_link(p, q);
                }
            }
            Output::Event(e) => self.on_event(p, e),
        }
    }

    fn send(&mut self, from: PeerIx, to: PeerIx, message: &Message) {
        self.netr.sent += 1;
        self.sent_by_kind[kind_index(message)] += 1;
        match self.net.send(self.now, from, to) {
            SendOutcome::Deliver { at, epoch } => {
                let slot = self.in_flight.put(wire::encode(message));
                self.schedule(at, Ev::Deliver { from, to, epoch, slot });
            }
            SendOutcome::NoLink => self.netr.dropped_no_link += 1,
            SendOutcome::Partitioned => self.netr.dropped_partition += 1,
            SendOutcome::Lost => self.netr.dropped_loss += 1,
        }
    }

    fn close_link(&mut self, from: PeerIx, to: PeerIx) {
        if let Some((at, epoch)) = self.net.close(self.now, from, to) {
            self.schedule(at, Ev::Down { peer: to, other: from, epoch });
        }
    }

    // ---- byzantine behaviours (output filters; the core stays honest) ----

    fn byzantine_filter(&mut self, p: PeerIx, message: Message) -> Option<Message> {
        let sp = &mut self.peers[p as usize];
        let Some((behaviour, _)) = sp.byz else { return Some(message) };
        if !sp.roles.indexer {
            return Some(message);
        }
        match (behaviour, message) {
            (Behaviour::LieChallenges, Message::HeartbeatResponse(mut r)) => {
                for c in &mut r.challenges {
                    c.found = false;
                    c.last_seen = None;
                }
                Some(Message::HeartbeatResponse(r))
            }
            (Behaviour::FakeFill, Message::HeartbeatResponse(mut r)) => {
                r.fill_rate = 0.02;
                Some(Message::HeartbeatResponse(r))
            }
            (Behaviour::FlapBornAt, Message::HeartbeatResponse(mut r)) => {
                sp.flap = !sp.flap;
                if !sp.flap {
                    r.born_at = r.born_at.saturating_sub(FLAP_OFFSET);
                }
                Some(Message::HeartbeatResponse(r))
            }
            (
                Behaviour::DropResponses,
                Message::HeartbeatResponse(_) | Message::Refused(_) | Message::CandidatesResponse(_),
            ) => None,
            (_, m) => Some(m),
        }
    }

    fn flood(&mut self, p: PeerIx) {
        let sp = &self.peers[p as usize];
        let Some(peer) = sp.peer.as_ref() else { return };
        let (did, name) = (peer.did().clone(), sp.name.clone());
        let targets: Vec<PeerIx> = self
            .net
            .partners(p)
            .into_iter()
            .filter(|q| self.peers[*q as usize].roles.indexer && self.net.is_up_at(p, *q))
            .collect();
        for q in targets {
            let sp = &mut self.peers[p as usize];
            sp.flood_req += 1;
            let hb = Message::Heartbeat(Heartbeat {
                did: Some(did.clone()),
                name: Some(name.clone()),
                ..Heartbeat::bare(RequestId(FLOOD_REQ_BASE + sp.flood_req), HeartbeatKind::Regular)
            });
            self.send(p, q, &hb);
        }
    }

    // ---- faults ----

    fn fire_fault(&mut self, i: usize) {
        let spec = self.scenario.faults[i].clone();
        let targets = self.fault_targets[i].clone();
        let report = self.faults.len();
        self.trace.bytes(b"fault");
        self.trace.u64(self.now);
        self.trace.u64(i as u64);
        self.faults.push(FaultReport {
            at: self.now - EPOCH_MS,
            kind: spec.kind.name().to_string(),
            targets: spec.kind.target_strings(),
            affected_nodes: 0,
            detect_ms: None,
            recover_ms: None,
            detect_samples_ms: Vec::new(),
            recover_samples_ms: Vec::new(),
            undetected: 0,
            unrecovered: 0,
            readmitted: None,
        });
        match spec.kind {
            FaultKind::Crash { .. } => {
                // Who counts each target live right now.
                let mut nodes: BTreeMap<PeerIx, NodeTrack> = BTreeMap::new();
                for &t in &targets {
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
                for &t in &targets {
                    self.crash(t);
                }
                self.track(report, nodes);
            }
            FaultKind::Restart { .. } => {
                let affected: usize = targets.iter().map(|t| self.live_at_crash.get(t).copied().unwrap_or(0)).sum();
                self.faults[report].affected_nodes = affected;
                self.faults[report].readmitted = Some(0);
                self.readmits.push(Readmit {
                    report,
                    targets: targets.clone(),
                    until: self.now + READMIT_WINDOW_MS,
                    nodes: BTreeSet::new(),
                });
                for &t in &targets {
                    self.restart(t);
                }
            }
            FaultKind::Partition { .. } => {
                let sides = self.fault_sides[i].clone();
                let (cut, generation) = self.net.partition(&sides);
                for (a, b, epoch) in cut {
                    self.schedule(
                        self.now + self.net.idle_timeout_ms,
                        Ev::CutExpired(Box::new((a, b, epoch, generation))),
                    );
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
            FaultKind::Heal => {
                self.net.heal();
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
            FaultKind::SetLoss { loss } => self.net.set_loss(loss),
            FaultKind::SetLatency { latency_ms } => self.net.set_latency(latency_ms),
            FaultKind::Byzantine { behaviour, .. } => {
                for &t in &targets {
                    self.make_byzantine(t, behaviour);
                }
            }
        }
    }

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

    fn crash(&mut self, p: PeerIx) {
        let sp = &mut self.peers[p as usize];
        if sp.life != Life::Alive {
            sp.life = Life::Crashed;
            return;
        }
        sp.peer = None;
        sp.life = Life::Crashed;
        sp.wake_gen += 1;
        sp.wake_at = None;
        sp.members.clear();
        for (q, epoch) in self.net.crash(p) {
            self.schedule(self.now + self.net.idle_timeout_ms, Ev::Down { peer: q, other: p, epoch });
        }
    }

    fn restart(&mut self, p: PeerIx) {
        let notify = self.net.reset(p);
        let sp = &mut self.peers[p as usize];
        sp.peer = None;
        sp.life = Life::NotStarted;
        sp.wake_gen += 1;
        sp.wake_at = None;
        sp.incarnation += 1;
        sp.setup.rng_seed = derive_u64(self.scenario.seed, &format!("{}#{}", sp.name, sp.incarnation));
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

    fn make_byzantine(&mut self, p: PeerIx, behaviour: Behaviour) {
        let now = self.now;
        let sp = &mut self.peers[p as usize];
        sp.byz = Some((behaviour, now));
        if !behaviour.is_simulated() {
            return;
        }
        let fits = if behaviour.is_indexer_behaviour() { sp.roles.indexer } else { sp.roles.node };
        if !fits {
            return;
        }
        let ti = self.byz.len();
        sp.byz_track = Some(ti);
        let mut track = ByzTrack {
            peer: p,
            behaviour,
            since: now,
            nodes: BTreeMap::new(),
            reasons: BTreeMap::new(),
            live_nodes: BTreeMap::new(),
            reached: BTreeSet::new(),
            banned: BTreeMap::new(),
        };
        if behaviour.is_indexer_behaviour() {
            for (n, sp) in self.peers.iter().enumerate() {
                if sp.is_node() && sp.honest() && sp.life == Life::Alive && sp.members.iter().any(|(m, _)| *m == p) {
                    track.nodes.insert(n as PeerIx, (now, None));
                    if sp.counts_live(&self.ids[p as usize]) {
                        track.live_nodes.insert(n as PeerIx, None);
                    }
                }
            }
        } else {
            self.schedule(now + FLOOD_EVERY_MS, Ev::FloodTick(p));
        }
        self.byz.push(track);
    }

    // ---- measurements ----

    fn on_event(&mut self, p: PeerIx, e: Event) {
        let now = self.now;
        self.trace.bytes(b"event");
        self.trace.u64(now);
        self.trace.u32(p);
        trace_event(&mut self.trace, &e);
        match e {
            Event::IndexerAdded { indexer, .. } => {
                let Some(x) = self.index.get(&indexer).copied() else { return };
                if x == p {
                    let m = format!("{}: added itself to its own pool", self.peers[p as usize].name);
                    self.violation(m);
                    return;
                }
                if self.peers[p as usize].members.iter().any(|(m, _)| *m == x) {
                    let m = format!(
                        "{}: {} added twice to its pool",
                        self.peers[p as usize].name, self.peers[x as usize].name
                    );
                    self.violation(m);
                    return;
                }
                let sp = &mut self.peers[p as usize];
                sp.members.push((x, now));
                let (node, honest) = (sp.is_node(), sp.honest());
                if let Some(pool) = sp.peer.as_ref().and_then(|q| q.pool())
                    && pool.len() > pool.max_pool()
                {
                    let m = format!(
                        "t={}s: {}: {} active indexers, above its maximum {}",
                        (now - EPOCH_MS) / 1000,
                        sp.name,
                        pool.len(),
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
            Event::IndexerEvicted { indexer, reason } => {
                let Some(x) = self.index.get(&indexer).copied() else { return };
                let sp = &mut self.peers[p as usize];
                sp.members.retain(|(m, _)| *m != x);
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
            Event::IndexerLive { indexer } => {
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
            Event::PeerBanned { peer, .. } => {
                let Some(x) = self.index.get(&peer).copied() else { return };
                self.banned.insert(x);
                let xs = &self.peers[x as usize];
                match xs.byz_track {
                    Some(t) if !self.byz[t].behaviour.is_indexer_behaviour() => {
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
            _ => {}
        }
    }

    fn violation(&mut self, m: String) {
        self.violation_count += 1;
        if self.violations.len() < MAX_VIOLATIONS_LISTED {
            self.violations.push(m);
        }
    }

    fn update_watch(&mut self, n: PeerIx) {
        let now = self.now;
        let watches = std::mem::take(&mut self.peers[n as usize].watch);
        let mut keep = Vec::with_capacity(watches.len());
        for ti in watches {
            let sp = &self.peers[n as usize];
            let live = sp.live_count();
            let at = self.trackers[ti].at;
            let Some(t) = self.trackers[ti].nodes.get_mut(&n) else { continue };
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

    fn sample(&mut self) {
        let (mean, below, count) = self.pool_health();
        self.timeline.push((self.now - EPOCH_MS, mean, below));
        let _ = count;
        // Invariants on every pool and every indexer.
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

    /// Alive, started, honest node-role peers: the ones pool statistics cover.
    fn counted_nodes(&self) -> impl Iterator<Item = &SimPeer> + '_ {
        self.peers.iter().filter(|sp| sp.is_node() && sp.honest() && sp.life == Life::Alive)
    }

    fn finish(&mut self, wall_ms: u64) -> Report {
        let sim_ms = self.end - EPOCH_MS;
        let (mean, below, count) = self.pool_health();
        let below_names: Vec<String> = self
            .counted_nodes()
            .filter(|sp| sp.live_count() < sp.min_indexers)
            .take(MAX_BELOW_MIN_LISTED)
            .map(|sp| format!("{} ({} live)", sp.name, sp.live_count()))
            .collect();
        if self.timeline.last().map(|x| x.0) != Some(sim_ms) {
            self.timeline.push((sim_ms, mean, below));
        }
        for tr in &self.trackers {
            let mut detect = Vec::new();
            let mut recover = Vec::new();
            let (mut undetected, mut unrecovered) = (0, 0);
            for t in tr.nodes.values() {
                detect.extend(t.detect.iter().copied());
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
        }
        for r in &self.readmits {
            self.faults[r.report].readmitted = Some(r.nodes.len());
        }
        let mut byzantine = Vec::new();
        for t in &self.byz {
            let peer = self.peers[t.peer as usize].name.clone();
            let mut b = ByzantineReport {
                peer,
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
            };
            if t.behaviour.is_indexer_behaviour() {
                // A node that met the indexer in the last `BYZANTINE_MIN_EXPOSURE_MS` of the run
                // and has not evicted it yet had no fair chance to (eviction grace plus a few
                // challenge batches): it is reported as `too_recent`, not as a miss.
                let end = self.now;
                let fair = |(from, ev): &&(u64, Option<u64>)| {
                    ev.is_some() || end.saturating_sub(*from) >= BYZANTINE_MIN_EXPOSURE_MS
                };
                let mut times: Vec<u64> = t
                    .nodes
                    .values()
                    .filter(fair)
                    .filter_map(|(from, ev)| ev.map(|e| e.saturating_sub(*from)))
                    .collect();
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
            } else {
                let mut times: Vec<u64> =
                    t.banned.iter().filter(|(i, _)| t.reached.contains(i)).map(|(_, at)| at - t.since).collect();
                let n = t.reached.len();
                b.reached = Some(n);
                b.banned_by = Some(if n == 0 { 0.0 } else { times.len() as f64 / n as f64 });
                b.p50_ban_ms = Stats::of(&mut times).map(|s| s.p50);
            }
            byzantine.push(b);
        }
        let mut bans = Bans::default();
        for b in &self.banned {
            if self.peers[*b as usize].honest() {
                bans.honest += 1;
            } else {
                bans.byzantine += 1;
            }
        }
        let mut notes = self.scenario.notes.clone();
        if self.spins > 0 {
            notes.push(format!(
                "{} wake-ups returned a deadline that was already due; they were pushed 1 ms forward",
                self.spins
            ));
        }
        let wall_s = (wall_ms.max(1)) as f64 / 1000.0;
        self.netr.sent_by_kind = KIND_NAMES.iter().zip(self.sent_by_kind).map(|(k, n)| ((*k).to_string(), n)).collect();
        Report {
            scenario: self.scenario.name.clone(),
            seed: self.scenario.seed,
            trace_hash: self.trace.finalize_hex(),
            sim_ms,
            wall_ms,
            events: self.events,
            messages: self.messages,
            peers: self.peers.len(),
            pool: PoolReport {
                min_target: self.min_target,
                final_nodes_below_min: below,
                timeline: std::mem::take(&mut self.timeline),
                final_mean_live: mean,
                final_nodes: count,
                final_below_min_peers: below_names,
            },
            faults: std::mem::take(&mut self.faults),
            byzantine,
            bans,
            invariant_violations: std::mem::take(&mut self.violations),
            invariant_violation_count: self.violation_count,
            network: std::mem::take(&mut self.netr),
            notes,
            events_per_wall_s: self.events as f64 / wall_s,
        }
    }

    /// Test hook: makes `a` dial `b` as if its core had asked to.
    #[cfg(test)]
    fn dial(&mut self, a: PeerIx, b: PeerIx) {
        let id = self.ids[b as usize];
        self.execute(a, Output::Connect { peer: PeerAddr::id_only(id) });
    }
}

impl NodeTrack {
    fn new() -> NodeTrack {
        NodeTrack { pending: Vec::new(), detect: Vec::new(), detected_all: None, recovered: None }
    }
}

/// Runs `scenario` to the end and returns its report.
pub fn run(scenario: Scenario) -> Result<Report, ScenarioError> {
    Ok(Simulation::new(scenario)?.run())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
name = "two"
seed = 5
duration = "10m"
[network]
latency_ms = [10, 30]
[[group]]
name = "a"
count = 3
role = "indexer"
"#;

    fn sim(extra: &str) -> Simulation {
        Simulation::new(Scenario::from_toml(&format!("{TWO}\n{extra}")).unwrap()).unwrap()
    }

    fn ready(s: &Simulation, a: &str, b: &str) -> bool {
        let bid = s.ids[s.peer_index(b).unwrap() as usize];
        s.peer(a).unwrap().connections().is_ready(&bid)
    }

    #[test]
    fn queue_entries_stay_small() {
        assert!(std::mem::size_of::<Ev>() <= 24, "Ev is {} bytes", std::mem::size_of::<Ev>());
    }

    #[test]
    fn dialled_link_completes_the_hello_exchange_on_both_ends() {
        let mut s = sim("");
        s.run_for(Duration::from_secs(1));
        s.dial(0, 1);
        s.run_for(Duration::from_secs(2));
        assert!(ready(&s, "a/0", "a/1") && ready(&s, "a/1", "a/0"));
        assert!(s.messages >= 4, "two hellos and two proofs");
    }

    #[test]
    fn restart_resets_links_at_once_on_the_other_end() {
        let mut s = sim("[[fault]]\nat = \"5s\"\nkind = \"restart\"\ntargets = [\"a/1\"]");
        s.run_for(Duration::from_secs(1));
        s.dial(0, 1);
        s.run_for(Duration::from_secs(4));
        assert!(ready(&s, "a/0", "a/1"));
        s.run_for(Duration::from_secs(5));
        assert!(s.network().link(0, 1).is_none());
        assert!(!ready(&s, "a/0", "a/1"), "a/0 learnt of the restart at once");
        let b = s.peer("a/1").unwrap();
        assert!(b.connections().is_empty(), "the restarted peer starts with no connections");
    }

    #[test]
    fn crash_leaves_link_half_open_until_the_idle_timeout() {
        let mut s = sim("[[fault]]\nat = \"5s\"\nkind = \"crash\"\ntargets = [\"a/1\"]");
        s.run_for(Duration::from_secs(1));
        s.dial(0, 1);
        s.run_for(Duration::from_secs(6));
        assert!(s.peer("a/1").is_none());
        assert!(ready(&s, "a/0", "a/1"), "still believes the link");
        // idle_timeout defaults to 30 s.
        s.run_for(Duration::from_secs(36));
        assert!(s.network().link(0, 1).is_none());
    }

    #[test]
    fn dial_across_a_partition_fails_and_heal_restores_it() {
        let mut s = sim("[[fault]]\nat = \"1s\"\nkind = \"partition\"\nsides = [[\"a/0\"], [\"a/1\"]]\n\
             [[fault]]\nat = \"20s\"\nkind = \"heal\"");
        s.run_for(Duration::from_secs(2));
        s.dial(0, 1);
        s.dial(0, 2);
        s.run_for(Duration::from_secs(10));
        assert!(!ready(&s, "a/0", "a/1"));
        assert!(ready(&s, "a/0", "a/2"), "a/2 is on no side and reaches everyone");
        assert!(s.netr.connect_failed >= 1);
        s.run_for(Duration::from_secs(21));
        s.dial(0, 1);
        s.run_for(Duration::from_secs(23));
        assert!(ready(&s, "a/0", "a/1"));
    }

    #[test]
    fn one_scenario_twice_gives_the_same_report_and_another_seed_another_hash() {
        let text = format!(
            "{TWO}\n[[group]]\nname = \"n\"\ncount = 20\nrole = \"node\"\nseeds = [\"a\"]\nseeds_sample = 2\nstart_spread = \"30s\"\n[[fault]]\nat = \"2m\"\nkind = \"crash\"\ntargets = [\"a/0\"]"
        );
        let sc = Scenario::from_toml(&text).unwrap();
        let r1 = run(sc.clone()).unwrap();
        let r2 = run(sc.clone()).unwrap();
        assert_eq!(r1.without_wall_clock(), r2.without_wall_clock());
        let r3 = run(sc.with_seed(6)).unwrap();
        assert_ne!(r1.trace_hash, r3.trace_hash);
    }

    #[test]
    fn seeds_sample_draws_distinct_seeds_and_excludes_self() {
        let s = Simulation::new(
            Scenario::from_toml(&format!("{TWO}\n[[group]]\nname = \"n\"\ncount = 5\nrole = \"node+indexer\"\nseeds = [\"a\", \"n\"]\nseeds_sample = 3")).unwrap(),
        )
        .unwrap();
        for (i, p) in s.peers.iter().enumerate().skip(3) {
            assert_eq!(p.setup.seeds.len(), 3);
            assert!(p.setup.seeds.iter().all(|x| x.id != s.ids[i]));
            let set: BTreeSet<_> = p.setup.seeds.iter().map(|x| x.id).collect();
            assert_eq!(set.len(), 3);
        }
    }
}
