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
//! through [`Network`], encodes every message with the wire codec (the trace hashes the bytes;
//! the receiver gets the message itself, which the codec round-trips exactly — debug builds
//! decode and compare each one), and watches
//! [`Event`]s and the read-only pool views to measure detection and recovery. Byzantine behaviours
//! are filters on a misbehaving peer's outputs (or traffic injected on its behalf); the core itself
//! is always honest.
//!
//! The `lookup` workload hands [`Command::Lookup`]s to random live nodes at Poisson times drawn
//! from the run's seed and matches their [`Event::LookupDone`]s; the `search` workload does the
//! same with [`Command::Search`] and the [`Event::SearchHit`]s and [`Event::SearchDone`] that
//! answer it. Tests can inject their own commands with [`Simulation::command`] and read the
//! answers with [`Simulation::lookup_result`] and [`Simulation::search_result`].
//!
//! Every peer gets the same search-mesh clock anchor, one `Instant` read when the run is built:
//! the core only adds durations to it and compares them, so the run does not depend on its value
//! (the cross-process determinism test checks it).
//!
//! Every peer also gets the same signature memo ([`SigCheck::memoised`]): a signed record is
//! checked by each of its replicas and readers, and ed25519 verification was most of a run's time.
//! A check gives the same result with or without the memo, so it changes the speed of a run, never
//! its trace ([`Simulation::check_signatures_directly`] turns it off).
//!
//! The code is split by concern, each file adding its own `impl Simulation` block:
//!
//! * this file — [`Simulation`], its public API, building a run, and the per-peer state;
//! * `engine` — the event loop: stepping events, handing inputs to peers, executing their
//!   outputs on the network;
//! * `faults` — crash, restart, partition, heal, loss and latency faults, and their detection
//!   trackers;
//! * `byzantine` — misbehaviour: output filters, forged records, heartbeat floods;
//! * `workloads` — the `lookup` and `search` workloads;
//! * `sends` — the `send` workload and what it measures (each peer's durable store lives in
//!   [`SimPeer`] and survives crashes; persist outputs are applied in `engine`);
//! * `searches` — what distributed search measures: hits, ends, forgeries, the mesh;
//! * `measure` — event bookkeeping, invariants, pool sampling and the final [`Report`].
//!
//! [`Event`]: ocd_core::proto::Event
//! [`Event::LookupDone`]: ocd_core::proto::Event::LookupDone
//! [`Event::SearchHit`]: ocd_core::proto::Event::SearchHit
//! [`Event::SearchDone`]: ocd_core::proto::Event::SearchDone

mod byzantine;
mod corpus;
mod engine;
mod faults;
mod measure;
mod parallel;
mod resources;
mod searches;
mod sends;
mod workloads;

use crate::net::{FastMap, Network, PeerIx, ms};
use crate::queue::EventQueue;
use crate::report::{FaultReport, NetReport, Report, TrafficSample};
use crate::scenario::{Behaviour, Forgery, GroupSpec, Scenario, ScenarioError};
use crate::trace::Trace;
use byzantine::ByzTrack;
use engine::{Ev, InFlight};
use faults::{FaultPlan, FaultTrack, Readmit};
use measure::{LookupAcc, MESSAGE_KINDS, RecordAcc};
use ocd_core::proto::{
    Command, DetRng, Did, Input, Keypair, MemoryStore, Output, Peer, PeerAddr, PeerId, PeerRecord, PeerSetup,
    RecordKey, Roles, SearchEnd, SigCheck, SigMemoStats,
};
use resources::ResourceWorkload;
use searches::SearchAcc;
use sends::SendWorkload;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use workloads::{LookupWorkload, SearchWorkload};

pub use corpus::DumpSpec;
pub use sends::WORKLOAD_SEND_BASE;
pub use workloads::{WORKLOAD_LOOKUP_BASE, WORKLOAD_SEARCH_BASE, search_needle};

/// Virtual time of the start of every run (ms since the Unix epoch), so timestamps look real.
pub const EPOCH_MS: u64 = 1_700_000_000_000;
/// Pool health is sampled this often.
const SAMPLE_EVERY_MS: u64 = 60_000;

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
    /// Boxed: the parallel loop moves it to the thread that runs it.
    peer: Option<Box<Peer>>,
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
    /// When it last started.
    started_at: Option<u64>,
    /// When it last crashed or restarted.
    last_down: Option<u64>,
    /// `claim_foreign_did`: the node whose DID it claims.
    victim: Option<PeerIx>,
    /// `forge_search_hits`: the forgeries it adds, in turn, and how many it has added.
    forge: Vec<Forgery>,
    forged: u64,
    /// Its durable store: survives crashes and restarts, handed back as `Input::Restored`.
    store: MemoryStore,
    /// `clock_skew`: its clock is this many ms ahead of simulated time (negative: behind).
    skew_ms: i64,
}

impl SimPeer {
    /// A peer of group `g`, not started yet.
    fn new(name: String, g: &GroupSpec, setup: PeerSetup) -> SimPeer {
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
            started_at: None,
            last_down: None,
            victim: None,
            forge: Vec::new(),
            forged: 0,
            store: MemoryStore::new(),
            skew_ms: 0,
        }
    }
    fn is_node(&self) -> bool {
        self.roles.node
    }
    fn honest(&self) -> bool {
        self.byz.is_none()
    }
    /// Its entry in [`Simulation::eligible_since`].
    fn eligible_since(&self) -> u64 {
        match self.started_at {
            Some(t) if self.is_node() && self.honest() && self.life == Life::Alive => t,
            _ => u64::MAX,
        }
    }
    fn live_count(&self) -> usize {
        self.peer.as_ref().and_then(|p| p.pool()).map_or(0, |pool| pool.live_count())
    }
    fn counts_live(&self, target: &PeerId) -> bool {
        self.peer.as_ref().and_then(|p| p.pool()).is_some_and(|pool| pool.is_live(target))
    }
}

/// The [`Event::LookupDone`] of a command given with [`Simulation::command`].
///
/// [`Event::LookupDone`]: ocd_core::proto::Event::LookupDone
#[derive(Clone, Debug, PartialEq)]
pub struct LookupResult {
    /// What was looked up.
    pub key: RecordKey,
    /// The verified record, if found.
    pub record: Option<PeerRecord>,
    /// DHT hops of the answering indexer.
    pub hops: u32,
    /// Indexers asked.
    pub attempts: u32,
    /// When the answer came, in ms since the start of the run.
    pub at_ms: u64,
}

/// What a search given with [`Simulation::command`] has received so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SearchResult {
    /// Every `SearchHit`, in order: the record and the indexer that relayed it.
    pub hits: Vec<(PeerRecord, PeerId)>,
    /// How it ended and when (ms since the start of the run), once it did.
    pub done: Option<(SearchEnd, u64)>,
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
    /// Fault targets, partition sides and byzantine victims, resolved.
    fault_plan: FaultPlan,
    faults: Vec<FaultReport>,
    trackers: Vec<FaultTrack>,
    byz: Vec<ByzTrack>,
    readmits: Vec<Readmit>,
    live_at_crash: BTreeMap<PeerIx, usize>,
    banned: BTreeSet<PeerIx>,
    violations: Vec<String>,
    violation_count: usize,
    timeline: Vec<(u64, f64, usize)>,
    /// `[t, nodes at zero live]`, sampled with `timeline`.
    zero_timeline: Vec<(u64, usize)>,
    min_target: usize,
    spins: u64,
    watch_log: BTreeSet<PeerIx>,
    sent_by_kind: [u64; MESSAGE_KINDS],
    in_flight: InFlight,
    /// Node-role peers, in index order (lookup askers and targets are drawn from them).
    node_peers: Vec<PeerIx>,
    /// By peer: when an alive honest node-role peer started, `u64::MAX` for any other peer. The
    /// workloads draw askers and targets by scanning this, not the (large) peers themselves.
    eligible_since: Vec<u64>,
    /// The `lookup` workloads and the lookups they have in flight.
    lookup: LookupWorkload,
    lookups: LookupAcc,
    lookup_results: BTreeMap<(PeerIx, u64), LookupResult>,
    /// The `search` workloads and the searches they have in flight.
    search: SearchWorkload,
    /// The `send` workloads and the messages they follow.
    sends: SendWorkload,
    /// The `resource_search` workloads and the searches they started.
    resources: ResourceWorkload,
    searches: SearchAcc,
    search_results: BTreeMap<(PeerIx, u64), SearchResult>,
    delivered_by_kind: [u64; MESSAGE_KINDS],
    /// Encoded bytes delivered, by kind.
    delivered_bytes_by_kind: [u64; MESSAGE_KINDS],
    /// Simulated ms summed over the finished lives of peers (a running life is added at the end).
    alive_ms: u64,
    /// Messages delivered and peer-ms run at the previous minute's sample (for the traffic
    /// timeline), and that timeline.
    traffic_mark: (u64, u64),
    traffic_timeline: Vec<TrafficSample>,
    records: RecordAcc,
    /// `RequestRefused` events by `"<reason> <requester role>"`.
    refusals: BTreeMap<String, u64>,
    /// `--dump-corpus`: the peers whose inputs are recorded as fuzzing seeds.
    dump: Option<Box<corpus::CorpusDump>>,
    /// The signature memo every peer shares (direct checks once turned off).
    sigs: SigCheck,
    /// `--threads`: the parallel loop, when more than one thread is asked for.
    parallel: Option<parallel::Parallel>,
    /// The window the parallel loop is replaying.
    window: Option<parallel::Window>,
    /// By peer: its position in the current window, `u32::MAX` if none.
    win_slot: Vec<u32>,
    /// The jobs of the window being replayed.
    jobs: Vec<parallel::Job>,
}

/// Every peer of a scenario, built but not started.
struct BuiltPeers {
    peers: Vec<SimPeer>,
    ids: Vec<PeerId>,
    /// Start time of each peer, in ms after [`EPOCH_MS`] (taken out before assembling).
    starts: Vec<u64>,
    /// The largest `min_indexers` of any node-role group.
    min_target: usize,
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

/// The seeds of peer `me` (named `name`): the group's `seeds` without itself, cut to a random
/// `seeds_sample` of them (drawn from its own name) when that is smaller.
fn seed_sample(seed: u64, name: &str, seeds: &[usize], me: usize, sample: Option<usize>) -> Vec<usize> {
    let mut mine: Vec<usize> = seeds.iter().copied().filter(|s| *s != me).collect();
    if let Some(k) = sample
        && k < mine.len()
    {
        let mut r = DetRng::new(seed, &format!("ocd-sim seeds {name}"));
        r.shuffle(&mut mine);
        mine.truncate(k);
        mine.sort_unstable();
    }
    mine
}

/// The record name of node `label` in a scenario that searches by name: the label and the first 4
/// bytes of its peer id in hex (`"n/42-9f3ac01b"`), so that a middle part of it names one peer.
fn unique_name(label: &str, id: &PeerId) -> String {
    let b = id.as_bytes();
    format!("{label}-{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}

/// Builds every peer of `scenario`, in group order, with its keys, config, seeds and start time.
fn build_peers(scenario: &Scenario, network_key: [u8; 32], sigs: &SigCheck) -> Result<BuiltPeers, ScenarioError> {
    let seed = scenario.seed;
    let n = scenario.peer_count();
    let mut start_rng = DetRng::new(seed, "ocd-sim start times");
    let mut peers = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let mut min_target = 0;
    let names: Vec<String> =
        scenario.groups.iter().flat_map(|g| (0..g.count).map(move |i| format!("{}/{}", g.name, i))).collect();
    let mut keypairs = derive_keypairs(seed, &names).into_iter();
    // Read once per run: every peer's search mesh counts from it (see the module doc).
    let anchor = std::time::Instant::now();
    let unique_names = scenario.searches_by_name();
    for g in &scenario.groups {
        let seeds = scenario.resolve(&format!("group {:?} seeds", g.name), &g.seeds)?;
        if g.roles.node {
            min_target = min_target.max(g.config.min_indexers);
        }
        for i in 0..g.count {
            let name = format!("{}/{}", g.name, i);
            let keypair = keypairs.next().unwrap_or_else(|| Keypair::derive(seed, &name));
            let id = keypair.peer_id();
            let mut config = g.config.clone();
            if config.name.is_empty() {
                config.name = if unique_names && g.roles.node { unique_name(&name, &id) } else { name.clone() };
            }
            let mine = seed_sample(seed, &name, &seeds, peers.len(), g.seeds_sample);
            let mut setup = PeerSetup::new(keypair, network_key, g.roles);
            setup.config = config;
            setup.rng_seed = derive_u64(seed, &format!("{name}#0"));
            setup.clock_anchor = Some(anchor);
            setup.sig_check = sigs.clone();
            // Seed ids are filled in below, once every key exists.
            let spread = ms(g.start_spread);
            starts.push(if spread > 0 { start_rng.below(spread) } else { 0 });
            peers.push((mine, SimPeer::new(name, g, setup)));
            ids.push(id);
        }
    }
    let peers: Vec<SimPeer> = peers
        .into_iter()
        .map(|(mine, mut p)| {
            p.setup.seeds = mine.iter().map(|s| PeerAddr::id_only(ids[*s])).collect();
            p
        })
        .collect();
    Ok(BuiltPeers { peers, ids, starts, min_target })
}

impl Simulation {
    /// Builds every peer of `scenario` (none has started yet).
    pub fn new(scenario: Scenario) -> Result<Simulation, ScenarioError> {
        let seed = scenario.seed;
        let mut network_key = [0u8; 32];
        DetRng::new(seed, "ocd-sim network key").fill(&mut network_key);
        // Room for a few versions of every peer's record and more: the memo keeps the last
        // one to two generations of good signatures.
        let sigs = SigCheck::memoised(16 * scenario.peer_count() + 4096);
        let mut built = build_peers(&scenario, network_key, &sigs)?;
        let fault_plan = FaultPlan::build(&scenario)?;
        let end = EPOCH_MS + ms(scenario.duration);
        let lookup = LookupWorkload::build(&scenario, &built.peers, end)?;
        let search = SearchWorkload::build(&scenario, &built.peers, end)?;
        let sends = SendWorkload::build(&scenario, end)?;
        let resources = ResourceWorkload::build(&scenario, end)?;
        let starts = std::mem::take(&mut built.starts);
        let mut sim = Simulation::assemble(scenario, network_key, built, fault_plan, (lookup, search, sends), end);
        sim.sigs = sigs;
        sim.resources = resources;
        sim.schedule_workloads();
        sim.schedule_sends();
        sim.schedule_resource_searches();
        sim.schedule_starts(starts);
        sim.schedule_faults();
        sim.schedule_samples();
        Ok(sim)
    }

    /// The simulation before its first event, with everything counted at zero.
    fn assemble(
        scenario: Scenario,
        network_key: [u8; 32],
        built: BuiltPeers,
        fault_plan: FaultPlan,
        (lookup, search, sends): (LookupWorkload, SearchWorkload, SendWorkload),
        end: u64,
    ) -> Simulation {
        let BuiltPeers { peers, ids, starts: _, min_target } = built;
        let mut index = FastMap::default();
        for (i, id) in ids.iter().enumerate() {
            index.insert(*id, i as PeerIx);
        }
        let net = Network::new(
            scenario.peer_count(),
            scenario.network.latency_ms,
            scenario.network.loss,
            scenario.network.idle_timeout,
            scenario.network.connect_timeout,
            DetRng::new(scenario.seed, "ocd-sim network"),
        );
        let mut trace = Trace::new("ocd-sim trace v1");
        trace.u64(scenario.seed);
        let n_peers = peers.len();
        let node_peers: Vec<PeerIx> =
            peers.iter().enumerate().filter(|(_, p)| p.roles.node).map(|(i, _)| i as PeerIx).collect();
        Simulation {
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
            fault_plan,
            faults: Vec::new(),
            trackers: Vec::new(),
            byz: Vec::new(),
            readmits: Vec::new(),
            live_at_crash: BTreeMap::new(),
            banned: BTreeSet::new(),
            violations: Vec::new(),
            violation_count: 0,
            timeline: Vec::new(),
            zero_timeline: Vec::new(),
            min_target,
            spins: 0,
            watch_log: BTreeSet::new(),
            sent_by_kind: [0; MESSAGE_KINDS],
            in_flight: InFlight::default(),
            node_peers,
            eligible_since: vec![u64::MAX; n_peers],
            lookup,
            lookups: LookupAcc::default(),
            lookup_results: BTreeMap::new(),
            search,
            sends,
            resources: ResourceWorkload::empty(),
            searches: SearchAcc::default(),
            search_results: BTreeMap::new(),
            delivered_by_kind: [0; MESSAGE_KINDS],
            delivered_bytes_by_kind: [0; MESSAGE_KINDS],
            alive_ms: 0,
            traffic_mark: (0, 0),
            traffic_timeline: Vec::new(),
            records: RecordAcc::default(),
            refusals: BTreeMap::new(),
            dump: None,
            sigs: SigCheck::direct(),
            parallel: None,
            window: None,
            win_slot: vec![u32::MAX; n_peers],
            jobs: Vec::new(),
            scenario,
        }
    }

    /// Runs the peers' machines on `threads` threads (see the `parallel` module): the same
    /// trace hash, report and outcome as with one, faster on a machine with several cores.
    /// Scenarios the parallel loop cannot run exactly (byzantine behaviours, search, send or
    /// resource workloads, `--trace`, `--dump-corpus`) run on one thread whatever this says.
    pub fn set_threads(&mut self, threads: usize) -> Result<(), rayon::ThreadPoolBuildError> {
        self.parallel = if threads > 1 { Some(parallel::Parallel::new(threads)?) } else { None };
        Ok(())
    }

    /// The threads the machines run on (1: the sequential loop).
    pub fn threads(&self) -> usize {
        self.parallel.as_ref().map_or(1, |p| p.threads())
    }

    /// Windows the parallel loop ran, the events they held, and how many of those ran in
    /// parallel (zeros on one thread).
    pub fn parallel_windows(&self) -> (u64, u64, u64) {
        self.parallel.as_ref().map_or((0, 0, 0), |p| (p.windows, p.windowed, p.in_parallel))
    }

    /// The parallel loop's wall time admitting windows, running their jobs and replaying them,
    /// and its threads' time in the jobs (zeros on one thread).
    pub fn parallel_phases(&self) -> [std::time::Duration; 4] {
        self.parallel.as_ref().map_or_else(Default::default, |p| p.phase_time)
    }

    /// Makes every peer check each signature with ed25519 rather than through the run's shared
    /// memo: slower, with the same results (and trace hash). Call it before the run starts.
    pub fn check_signatures_directly(&mut self) {
        self.sigs = SigCheck::direct();
        for p in &mut self.peers {
            p.setup.sig_check = SigCheck::direct();
        }
    }

    /// What the shared signature memo did so far (`None` when signatures are checked directly).
    pub fn sig_memo_stats(&self) -> Option<SigMemoStats> {
        self.sigs.memo_stats()
    }

    /// Schedules every peer's start (`starts`: ms after [`EPOCH_MS`], by peer index).
    fn schedule_starts(&mut self, starts: Vec<u64>) {
        for (p, at) in starts.into_iter().enumerate() {
            self.schedule(EPOCH_MS + at, Ev::Start(p as PeerIx));
        }
    }

    /// Schedules every pool-health sample, once a minute to the end.
    fn schedule_samples(&mut self) {
        let mut t = EPOCH_MS + SAMPLE_EVERY_MS;
        while t <= self.end {
            self.schedule(t, Ev::Sample);
            t += SAMPLE_EVERY_MS;
        }
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
        self.peers.iter().find(|p| p.name == name).and_then(|p| p.peer.as_deref())
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

    /// The DID of the peer named `name` (known before it starts).
    pub fn did_of(&self, name: &str) -> Option<&Did> {
        self.peers.iter().find(|p| p.name == name).map(|p| &p.setup.did)
    }

    /// The peer id of the peer named `name`.
    pub fn peer_id_of(&self, name: &str) -> Option<PeerId> {
        self.peer_index(name).map(|p| self.ids[p as usize])
    }

    /// Hands `command` to the running peer named `name` now, as its application would, and
    /// executes what it does at once. Returns `false` if no such peer is running.
    ///
    /// For a [`Command::Lookup`], use an `id` below [`WORKLOAD_LOOKUP_BASE`]; its
    /// [`Event::LookupDone`] is kept for [`Simulation::lookup_result`]. For a
    /// [`Command::Search`], an `id` below [`WORKLOAD_SEARCH_BASE`]: its hits and end are kept
    /// for [`Simulation::search_result`].
    ///
    /// [`Event::LookupDone`]: ocd_core::proto::Event::LookupDone
    pub fn command(&mut self, name: &str, command: Command) -> bool {
        let Some(p) = self.peer_index(name) else { return false };
        if !self.alive(p) {
            return false;
        }
        self.trace.bytes(b"command");
        self.trace.u64(self.now);
        self.trace.u32(p);
        self.trace.debug(&command);
        self.handle(p, Input::Command(command), false);
        true
    }

    /// The answer to a lookup given to peer `name` with [`Simulation::command`], once it came.
    pub fn lookup_result(&self, name: &str, id: u64) -> Option<&LookupResult> {
        let p = self.peer_index(name)?;
        self.lookup_results.get(&(p, id))
    }

    /// What a search given to peer `name` with [`Simulation::command`] (an `id` below
    /// [`WORKLOAD_SEARCH_BASE`]) received so far, once it received anything.
    pub fn search_result(&self, name: &str, id: u64) -> Option<&SearchResult> {
        let p = self.peer_index(name)?;
        self.search_results.get(&(p, id))
    }

    /// The record name of the peer named `name` (known before it starts).
    pub fn record_name_of(&self, name: &str) -> Option<&str> {
        self.peers.iter().find(|p| p.name == name).map(|p| p.setup.config.name.as_str())
    }

    /// Records a sample of the peers' inputs as fuzzing seeds (see [`DumpSpec`]); written by
    /// [`Simulation::write_corpus`] after the run. Call before running.
    pub fn dump_corpus(&mut self, spec: DumpSpec) {
        let d = corpus::CorpusDump::new(spec, &self.peers, &self.scenario.name, self.scenario.seed);
        self.dump = Some(Box::new(d));
    }

    /// Writes the seeds recorded since [`Simulation::dump_corpus`]: each file and its input count.
    pub fn write_corpus(&self) -> std::io::Result<Vec<(std::path::PathBuf, usize)>> {
        self.dump.as_ref().map_or(Ok(Vec::new()), |d| d.write())
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

    fn name(&self, p: PeerIx) -> &str {
        &self.peers[p as usize].name
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
        if self.run_until_parallel(until) {
            return;
        }
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
}

/// Runs `scenario` to the end and returns its report.
pub fn run(scenario: Scenario) -> Result<Report, ScenarioError> {
    Ok(Simulation::new(scenario)?.run())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocd_core::proto::{SearchQuery, Timestamp};

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
        assert_eq!(s.messages, 3, "Hello, HelloReply, HelloProof");
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
        // The transport notices the dead end after `[network] idle_timeout`, 30 s by default.
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
    fn lookups_a_node_refuses_to_stay_within_its_indexers_windows_are_counted_apart() {
        // Ten nodes with one or two indexers each look each other up far faster than an indexer
        // serves one peer's gets (50 a minute): the node refuses the excess itself.
        let text = format!(
            "{TWO}\n[[group]]\nname = \"n\"\ncount = 10\nrole = \"node\"\nseeds = [\"a\"]\nseeds_sample = 1\n\
             start_spread = \"10s\"\n[group.config]\nmin_indexers = 1\nmax_indexers = 1\n\
             [[workload]]\nkind = \"lookup\"\nfrom = \"1m\"\nuntil = \"4m\"\nrate_per_s = 10.0"
        );
        let r = run(Scenario::from_toml(&text).unwrap()).unwrap();
        let l = r.lookups.as_ref().expect("a lookup workload");
        assert!(l.failed_own_budget > 0, "{l:?}");
        assert_eq!(l.failed_no_indexer, 0, "every asker had an indexer: {l:?}");
        assert!(l.failed >= l.failed_own_budget + l.failed_target_unadmitted, "{l:?}");
        assert!(l.ok > 0, "{l:?}");
        assert_eq!(r.bans.honest, 0, "no node was banned for its lookups");
    }

    #[test]
    fn the_traffic_timeline_splits_every_message_by_minute() {
        // Nodes join in the first 30 s, an indexer crashes at 2 m: a 10-minute run.
        let text = format!(
            "{TWO}\n[[group]]\nname = \"n\"\ncount = 20\nrole = \"node\"\nseeds = [\"a\"]\nseeds_sample = 2\nstart_spread = \"30s\"\n[[fault]]\nat = \"2m\"\nkind = \"crash\"\ntargets = [\"a/0\"]"
        );
        let r = run(Scenario::from_toml(&text).unwrap()).unwrap();
        let tl = &r.traffic_timeline;
        assert_eq!(tl.len(), 10, "one window per minute: {tl:?}");
        assert!(tl.windows(2).all(|w| w[1].t == w[0].t + 60_000), "{tl:?}");
        assert_eq!(tl.iter().map(|w| w.messages).sum::<u64>(), r.messages, "every message in one window");
        // Each window's rate is its messages over the peer-minutes run in it: at most 23 peers
        // ran a minute each, at least the 22 left after the crash did.
        for w in tl {
            assert!(w.messages > 0, "heartbeats flow every minute: {w:?}");
            let peer_minutes = w.messages as f64 / w.per_peer_minute;
            assert!((0.0..=23.0 + 1e-9).contains(&peer_minutes), "{w:?}: {peer_minutes} peer-minutes");
            if w.t > 180_000 {
                assert!((peer_minutes - 22.0).abs() < 1e-6, "{w:?}: {peer_minutes} peer-minutes");
            }
        }
        // The minutes' peer-minutes add up to the run's.
        let sum: f64 = tl.iter().map(|w| w.messages as f64 / w.per_peer_minute).sum();
        assert!((sum - r.peer_minutes).abs() < 1e-6, "{sum} against {}", r.peer_minutes);
    }

    #[test]
    fn the_signature_memo_changes_nothing_but_the_work() {
        // Forged records and hits, bad signatures, lookups and searches: every kind of check.
        let text = r#"
name = "memo"
seed = 9
duration = "6m"
[network]
latency_ms = [10, 60]
[[group]]
name = "idx"
count = 5
role = "indexer"
seeds = ["idx"]
seeds_sample = 2
start_spread = "5s"
[[group]]
name = "n"
count = 30
role = "node"
seeds = ["idx"]
seeds_sample = 2
start_spread = "30s"
[[group]]
name = "bad"
count = 2
role = "node"
seeds = ["idx"]
seeds_sample = 2
start_spread = "30s"
[[fault]]
at = "1m"
kind = "byzantine"
targets = ["bad/0"]
behaviour = "bad_signature"
[[fault]]
at = "1m"
kind = "byzantine"
targets = ["bad/1"]
behaviour = "claim_foreign_did"
[[fault]]
at = "2m"
kind = "byzantine"
targets = ["idx/0"]
behaviour = "forge_search_hits"
[[workload]]
kind = "lookup"
from = "2m"
rate_per_s = 2.0
[[workload]]
kind = "search"
from = "3m"
rate_per_s = 2.0
warmup = "60s"
by = "name"
"#;
        let sc = Scenario::from_toml(text).unwrap();
        let mut memo = Simulation::new(sc.clone()).unwrap();
        let with = memo.run_to_end();
        let stats = memo.sig_memo_stats().unwrap();
        assert!(stats.hits > stats.misses, "the memo answered most checks: {stats:?}");
        let mut direct = Simulation::new(sc).unwrap();
        direct.check_signatures_directly();
        let without = direct.run_to_end();
        assert_eq!(direct.sig_memo_stats(), None);
        assert_eq!(with.without_wall_clock(), without.without_wall_clock());
        assert!(with.records.as_ref().is_some_and(|r| r.rejected > 0), "bad records were refused");
    }

    #[test]
    fn forged_records_claim_the_victims_did_or_fail_verification() {
        let mut s = sim("[[group]]\nname = \"n\"\ncount = 3\nrole = \"node\"\nseeds = [\"a\"]\n\
             [[fault]]\nat = \"1m\"\nkind = \"byzantine\"\ntargets = [\"n/1\"]\nbehaviour = \"claim_foreign_did\"\n\
             [[fault]]\nat = \"1m\"\nkind = \"byzantine\"\ntargets = [\"n/2\"]\nbehaviour = \"bad_signature\"");
        s.run_for(Duration::from_secs(61));
        let (n0, n1, n2) = (s.peer_index("n/0").unwrap(), s.peer_index("n/1").unwrap(), s.peer_index("n/2").unwrap());
        assert_eq!(s.peers[n1 as usize].victim, Some(n0), "default victim: the first honest node");
        let now = Timestamp(s.now);
        let own = |p: PeerIx| s.peers[p as usize].peer.as_ref().unwrap().record().unwrap().clone();
        let claim = s.forge_record(n1, Behaviour::ClaimForeignDid, own(n1));
        assert_eq!(claim.verify(now), Ok(()), "a validly signed record…");
        assert_eq!(claim.body.did, s.peers[n0 as usize].setup.did, "…claiming the victim's DID");
        assert_eq!(claim.body.peer_id, s.ids[n1 as usize]);
        let bad = s.forge_record(n2, Behaviour::BadSignature, own(n2));
        assert!(bad.verify(now).is_err());
        assert_eq!(bad.body, own(n2).body);
    }

    #[test]
    fn search_needle_is_a_case_swapped_middle_that_names_one_peer() {
        assert_eq!(search_needle("n/42-9f3ac01b"), "/42-9F3AC0");
        assert_eq!(search_needle("Ab"), "aB");
        let s = sim(
            "[[group]]\nname = \"n\"\ncount = 30\nrole = \"node\"\n[[workload]]\nkind = \"search\"\nrate_per_s = 1.0",
        );
        let names: Vec<String> = (0..30).map(|i| s.record_name_of(&format!("n/{i}")).unwrap().to_string()).collect();
        assert!(names[3].starts_with("n/3-") && names[3].len() == "n/3-".len() + 8, "{}", names[3]);
        for (i, n) in names.iter().enumerate() {
            let q = SearchQuery { name: Some(search_needle(n)), ..SearchQuery::default() };
            let hits: Vec<usize> = (0..30)
                .filter(|j| names[*j].to_lowercase().contains(&q.name.as_ref().unwrap().to_lowercase()))
                .collect();
            assert_eq!(hits, vec![i], "needle {:?} of {n}", q.name);
            assert_ne!(q.name.as_deref(), Some(n.as_str()), "a proper, case-changed substring");
        }
        // Indexers keep their label; without a name search, nodes do too.
        assert_eq!(s.record_name_of("a/0"), Some("a/0"));
        assert_eq!(sim("[[group]]\nname = \"n\"\ncount = 1\nrole = \"node\"").record_name_of("n/0"), Some("n/0"));
    }

    #[test]
    fn forged_hits_fail_verification_or_the_query_except_a_did_claim() {
        let mut s = sim("[[group]]\nname = \"n\"\ncount = 3\nrole = \"node\"\nseeds = [\"a\"]\n\
             [[workload]]\nkind = \"search\"\nfrom = \"5m\"\nrate_per_s = 1.0");
        s.run_for(Duration::from_secs(30));
        let (forger, n0) = (s.peer_index("a/2").unwrap(), s.peer_index("n/0").unwrap());
        let now = Timestamp(s.now);
        let genuine = s.peers[n0 as usize].peer.as_ref().unwrap().record().unwrap().clone();
        let query = SearchQuery { name: Some(search_needle(&genuine.body.name)), ..SearchQuery::default() };
        assert!(genuine.verify(now).is_ok() && query.matches(&genuine) && s.genuine(&genuine));
        let mut forge = |kind: Forgery| {
            s.peers[forger as usize].forge = vec![kind];
            s.forge_hit(forger, std::slice::from_ref(&genuine)).unwrap()
        };
        let altered = forge(Forgery::Altered);
        assert!(altered.verify(now).is_err() && query.matches(&altered));
        let impersonated = forge(Forgery::Impersonate);
        assert!(impersonated.verify(now).is_err() && query.matches(&impersonated));
        assert_eq!(impersonated.body.peer_id, genuine.body.peer_id);
        let unrelated = forge(Forgery::Unrelated);
        assert!(unrelated.verify(now).is_ok() && !query.matches(&unrelated));
        let claim = forge(Forgery::ClaimDid);
        assert!(claim.verify(now).is_ok() && query.matches(&claim), "passes what emitters and nodes check");
        assert_eq!(claim.body.did, genuine.body.did);
        assert_eq!(claim.body.peer_id, s.ids[forger as usize]);
        assert!(!s.genuine(&claim) && !s.genuine(&altered) && !s.genuine(&impersonated));
    }

    #[test]
    fn a_search_given_as_a_command_collects_its_hits_and_end() {
        let text = "name = \"s\"\nseed = 8\nduration = \"3m\"\n\
             [[group]]\nname = \"i\"\ncount = 3\nrole = \"indexer\"\nseeds = [\"i\"]\n\
             [[group]]\nname = \"n\"\ncount = 4\nrole = \"node\"\nseeds = [\"i\"]\nstart_spread = \"5s\"\n\
             [group.config]\nmin_indexers = 1\nmax_indexers = 2\n\
             [[workload]]\nkind = \"search\"\nfrom = \"2m\"\nrate_per_s = 1.0";
        let mut s = Simulation::new(Scenario::from_toml(text).unwrap()).unwrap();
        s.run_for(Duration::from_secs(70));
        let name = s.record_name_of("n/3").unwrap().to_string();
        let query = SearchQuery { name: Some(search_needle(&name)), ..SearchQuery::default() };
        assert!(s.command("n/0", Command::Search { id: 7, user: "t".into(), query }));
        s.run_for(Duration::from_secs(85));
        let r = s.search_result("n/0", 7).expect("answered");
        let owners: Vec<PeerId> = r.hits.iter().map(|(rec, _)| rec.body.peer_id).collect();
        assert_eq!(owners, vec![s.peer_id_of("n/3").unwrap()]);
        assert!(matches!(r.done, Some((SearchEnd::Idle, at)) if at > 70_000), "{:?}", r.done);
    }

    #[test]
    fn lookup_times_are_a_pure_function_of_the_seed() {
        let w =
            "[[group]]\nname = \"n\"\ncount = 2\nrole = \"node\"\n[[workload]]\nkind = \"lookup\"\nrate_per_s = 4.0";
        let gaps = |s: &mut Simulation| (0..200).map(|_| s.lookup_gap(0)).collect::<Vec<_>>();
        let (a, b) = (gaps(&mut sim(w)), gaps(&mut sim(w)));
        assert_eq!(a, b);
        let mean = a.iter().sum::<u64>() as f64 / a.len() as f64;
        assert!((150.0..400.0).contains(&mean), "mean gap {mean} ms for 4/s");
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
