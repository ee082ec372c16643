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
//!
//! The `lookup` workload hands [`Command::Lookup`]s to random live nodes at Poisson times drawn
//! from the run's seed and matches their [`Event::LookupDone`]s; tests can inject their own
//! commands with [`Simulation::command`] and read the answers with
//! [`Simulation::lookup_result`].

use crate::net::{ConnectOutcome, FastMap, Network, PeerIx, SendOutcome, ms};
use crate::queue::EventQueue;
use crate::report::{
    Bans, ByzantineReport, FaultReport, KeyLookups, LookupReport, NetReport, PoolReport, RecordsReport, Report, Stats,
};
use crate::scenario::{Behaviour, FaultKind, Scenario, ScenarioError};
use crate::trace::Trace;
use ocd_core::proto::wire::{self, Heartbeat, HeartbeatKind, Message, StoreRefusal};
use ocd_core::proto::{
    Command, DetRng, Did, Event, EvictReason, FailReason, Input, Keypair, Output, Peer, PeerAddr, PeerId, PeerRecord,
    PeerSetup, RecordKey, RequestId, Roles, Timestamp,
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
/// Ids of the `lookup` workload's commands start here; smaller ids are free for
/// [`Simulation::command`].
pub const WORKLOAD_LOOKUP_BASE: u64 = 1 << 48;
/// Most lookup failures listed in the report (all are counted).
const MAX_LOOKUP_FAILURES_LISTED: usize = 20;

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
    /// The `lookup` workload `workloads[i]` starts a lookup.
    LookupTick(u32),
    /// The peer-id lookup that follows a finished DID lookup.
    LookupFollow {
        asker: PeerIx,
        target: PeerIx,
    },
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
    /// When it last started.
    started_at: Option<u64>,
    /// When it last crashed or restarted.
    last_down: Option<u64>,
    /// `claim_foreign_did`: the node whose DID it claims.
    victim: Option<PeerIx>,
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
    /// Record behaviours: records of this peer accepted after `since` with a foreign DID or a bad
    /// signature.
    records_accepted: u64,
    /// `claim_foreign_did`: the victim.
    victim: Option<PeerIx>,
    /// `withhold_records`: counted workload lookups issued since `since`, and the successful ones.
    lookups: (u64, u64),
}

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
struct PendingLookup {
    asker: PeerIx,
    target: PeerIx,
    issued: u64,
    by_did: bool,
}

/// Running totals behind [`LookupReport`].
#[derive(Default)]
struct LookupAcc {
    latencies: Vec<u64>,
    hops: Vec<u64>,
    attempts: u64,
    issued: u64,
    ok: u64,
    by_did: KeyLookups,
    by_peer: KeyLookups,
    excluded: u64,
    no_indexer: u64,
    failures: Vec<String>,
    /// Minute of issue → (counted, ok).
    per_minute: BTreeMap<u64, (u64, u64)>,
}

/// Running totals behind [`RecordsReport`].
#[derive(Default)]
struct RecordAcc {
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

/// The [`Event::LookupDone`] of a command given with [`Simulation::command`].
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
    /// Node-role peers, in index order (lookup askers and targets are drawn from them).
    node_peers: Vec<PeerIx>,
    fault_victims: Vec<Option<PeerIx>>,
    lookup_work: Vec<LookupWork>,
    lookup_rng: DetRng,
    pending_lookups: BTreeMap<u64, PendingLookup>,
    next_lookup_id: u64,
    lookups: LookupAcc,
    lookup_results: BTreeMap<(PeerIx, u64), LookupResult>,
    records: RecordAcc,
    /// `RequestRefused` events by `"<reason> <requester role>"`.
    refusals: BTreeMap<String, u64>,
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
const MESSAGE_KINDS: usize = 23;

/// Index of `m`'s variant in `sent_by_kind` (names: [`Message::kind`]). Exhaustive on purpose: a
/// new message kind fails to compile here until it is counted.
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
        Message::Publish(_) => 10,
        Message::Published(_) => 11,
        Message::GetRecord(_) => 12,
        Message::RecordReply(_) => 13,
        Message::FindNode(_) => 14,
        Message::Nodes(_) => 15,
        Message::FindValue(_) => 16,
        Message::Value(_) => 17,
        Message::Store(_) => 18,
        Message::AddProvider(_) => 19,
        Message::StoreAck(_) => 20,
        Message::GetProviders(_) => 21,
        Message::Providers(_) => 22,
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
    "publish",
    "published",
    "get_record",
    "record_reply",
    "find_node",
    "nodes",
    "find_value",
    "value",
    "store",
    "add_provider",
    "store_ack",
    "get_providers",
    "providers",
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
        Event::RecordStored { owner, did, from } => {
            trace.bytes(b"E:stored");
            trace.bytes(owner.as_bytes());
            trace.bytes(from.as_bytes());
            trace.bytes(did.as_str().as_bytes());
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
                        started_at: None,
                        last_down: None,
                        victim: None,
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
        let mut fault_victims = Vec::new();
        for (i, f) in scenario.faults.iter().enumerate() {
            let ctx = format!("fault #{}", i + 1);
            let to_ix = |v: Vec<usize>| v.into_iter().map(|x| x as PeerIx).collect::<Vec<_>>();
            fault_targets.push(to_ix(scenario.resolve(&ctx, &f.kind.target_strings())?));
            fault_victims.push(match &f.kind {
                FaultKind::Byzantine { victim: Some(v), .. } => {
                    scenario.resolve(&ctx, std::slice::from_ref(v))?.first().map(|x| *x as PeerIx)
                }
                _ => None,
            });
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
        // Default victim of `claim_foreign_did`: the first node-role peer no byzantine fault targets.
        let byz_targets: BTreeSet<PeerIx> = scenario
            .faults
            .iter()
            .zip(&fault_targets)
            .filter(|(f, _)| matches!(f.kind, FaultKind::Byzantine { .. }))
            .flat_map(|(_, t)| t.iter().copied())
            .collect();
        let default_victim = (0..n as PeerIx).find(|p| scenario.roles_of(*p as usize).node && !byz_targets.contains(p));
        for (f, v) in scenario.faults.iter().zip(fault_victims.iter_mut()) {
            if matches!(f.kind, FaultKind::Byzantine { behaviour: Behaviour::ClaimForeignDid, .. }) && v.is_none() {
                *v = default_victim;
            }
        }
        let node_peers: Vec<PeerIx> =
            peers.iter().enumerate().filter(|(_, p)| p.roles.node).map(|(i, _)| i as PeerIx).collect();
        let mut lookup_work = Vec::new();
        for (i, w) in scenario.workloads.iter().enumerate() {
            let Some(l) = &w.lookup else { continue };
            let targets = if l.targets.is_empty() {
                None
            } else {
                let ctx = format!("workload #{}", i + 1);
                let t = scenario.resolve(&ctx, &l.targets)?;
                Some(t.into_iter().map(|x| x as PeerIx).filter(|x| peers[*x as usize].roles.node).collect())
            };
            lookup_work.push(LookupWork {
                from: EPOCH_MS + ms(l.from),
                until: l.until.map_or(end, |u| (EPOCH_MS + ms(u)).min(end)),
                rate_per_s: l.rate_per_s,
                warmup_ms: ms(l.warmup),
                targets,
            });
        }
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
            node_peers,
            fault_victims,
            lookup_work,
            lookup_rng: DetRng::new(seed, "ocd-sim lookups"),
            pending_lookups: BTreeMap::new(),
            next_lookup_id: WORKLOAD_LOOKUP_BASE,
            lookups: LookupAcc::default(),
            lookup_results: BTreeMap::new(),
            records: RecordAcc::default(),
            refusals: BTreeMap::new(),
            scenario,
        };
        for i in 0..sim.lookup_work.len() {
            let at = sim.lookup_work[i].from + sim.lookup_gap(i);
            if at <= sim.lookup_work[i].until {
                sim.schedule(at, Ev::LookupTick(i as u32));
            }
        }
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
    /// [`Event::LookupDone`] is kept for [`Simulation::lookup_result`].
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
            Ev::LookupTick(i) => {
                self.events += 1;
                let i = i as usize;
                self.start_workload_lookup(i);
                let next = self.now + self.lookup_gap(i);
                if next <= self.lookup_work[i].until {
                    self.schedule(next, Ev::LookupTick(i as u32));
                }
            }
            Ev::LookupFollow { asker, target } => {
                if self.alive(asker) && self.alive(target) {
                    self.events += 1;
                    self.issue_lookup(asker, target, false);
                }
            }
        }
    }

    // ---- the lookup workload ----

    /// Time to the next lookup of workload `i`: exponential with mean `1 / rate` (a Poisson
    /// process), in whole ms, from the run's seed.
    fn lookup_gap(&mut self, i: usize) -> u64 {
        let rate = self.lookup_work[i].rate_per_s;
        let u = 1.0 - self.lookup_rng.unit_f64(); // (0, 1]
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

    fn start_workload_lookup(&mut self, i: usize) {
        let warmup = self.lookup_work[i].warmup_ms;
        let askers: Vec<PeerIx> =
            self.node_peers.iter().copied().filter(|q| self.lookup_eligible(*q, warmup)).collect();
        if askers.is_empty() {
            return;
        }
        let asker = askers[self.lookup_rng.below(askers.len() as u64) as usize];
        let pool = self.lookup_work[i].targets.as_deref().unwrap_or(&self.node_peers);
        let targets: Vec<PeerIx> =
            pool.iter().copied().filter(|q| *q != asker && self.lookup_eligible(*q, warmup)).collect();
        if targets.is_empty() {
            return;
        }
        let target = targets[self.lookup_rng.below(targets.len() as u64) as usize];
        self.issue_lookup(asker, target, true);
    }

    fn issue_lookup(&mut self, asker: PeerIx, target: PeerIx, by_did: bool) {
        let id = self.next_lookup_id;
        self.next_lookup_id += 1;
        let key = if by_did {
            RecordKey::Did(self.peers[target as usize].setup.did.clone())
        } else {
            RecordKey::Peer(self.ids[target as usize])
        };
        self.pending_lookups.insert(id, PendingLookup { asker, target, issued: self.now, by_did });
        self.trace.bytes(b"lookup");
        self.trace.u64(self.now);
        self.trace.u32(asker);
        self.trace.u32(target);
        self.trace.u64(id);
        self.handle(asker, Input::Command(Command::Lookup { id, key }), false);
    }

    fn finish_lookup(&mut self, l: PendingLookup, record: Option<PeerRecord>, hops: u32, attempts: u32) {
        let now = self.now;
        if l.by_did {
            // The peer-id lookup follows, as a separate event at the same instant.
            self.schedule(now, Ev::LookupFollow { asker: l.asker, target: l.target });
        }
        let t = &self.peers[l.target as usize];
        if t.life != Life::Alive || t.last_down.is_some_and(|d| d >= l.issued) {
            self.lookups.excluded += 1;
            return;
        }
        let ok = record.as_ref().is_some_and(|r| r.body.peer_id == self.ids[l.target as usize]);
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
        } else if attempts == 0 {
            acc.no_indexer += 1;
        }
        if !ok && self.lookups.failures.len() < MAX_LOOKUP_FAILURES_LISTED {
            let m = format!(
                "t={}s: {} looked up {} by {} ({} attempts, {} ms): {}",
                (l.issued - EPOCH_MS) / 1000,
                self.peers[l.asker as usize].name,
                self.peers[l.target as usize].name,
                if l.by_did { "DID" } else { "peer id" },
                attempts,
                now - l.issued,
                match &record {
                    None => "not found".to_string(),
                    Some(r) =>
                        format!("got {}'s record", self.index.get(&r.body.peer_id).map_or("?", |x| self.name(*x))),
                }
            );
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

    fn alive(&self, p: PeerIx) -> bool {
        self.peers[p as usize].life == Life::Alive
    }

    fn start_peer(&mut self, p: PeerIx) {
        let now = self.now;
        let sp = &mut self.peers[p as usize];
        sp.peer = Some(Peer::new(sp.setup.clone(), Timestamp(now)));
        sp.life = Life::Alive;
        sp.started_at = Some(now);
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
        let decoded = wire::decode(bytes);
        if let Some(t) = self.peers[from as usize].byz_track
            && self.peers[to as usize].roles.indexer
        {
            // A record forger has reached an indexer once it handed it a (forged) record; other
            // misbehaving nodes with any message.
            let counts = match self.byz[t].behaviour {
                Behaviour::ClaimForeignDid | Behaviour::BadSignature => match &decoded {
                    Ok(Message::Heartbeat(hb)) => hb.record.is_some(),
                    Ok(Message::Publish(_)) => true,
                    _ => false,
                },
                _ => true,
            };
            if counts {
                self.byz[t].reached.insert(to);
            }
        }
        match decoded {
            // A withholding indexer stores nothing it is sent, and answers nothing for it.
            Ok(Message::Store(_))
                if matches!(self.peers[to as usize].byz, Some((Behaviour::WithholdRecords, _)))
                    && self.peers[to as usize].roles.indexer =>
            {
                self.netr.dropped_byzantine += 1;
            }
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
        let applies = if behaviour.is_indexer_behaviour() { sp.roles.indexer } else { sp.roles.node };
        if !applies {
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
            (Behaviour::WithholdRecords, Message::Value(mut v)) => {
                v.record = None;
                Some(Message::Value(v))
            }
            (Behaviour::WithholdRecords, Message::RecordReply(mut r)) => {
                r.record = None;
                Some(Message::RecordReply(r))
            }
            (Behaviour::ClaimForeignDid | Behaviour::BadSignature, Message::Heartbeat(mut hb)) => {
                if let Some(r) = hb.record.take() {
                    hb.record = Some(self.forge_record(p, behaviour, r));
                }
                if behaviour == Behaviour::ClaimForeignDid
                    && hb.did.is_some()
                    && let Some(v) = self.peers[p as usize].victim
                {
                    hb.did = Some(self.peers[v as usize].setup.did.clone());
                }
                Some(Message::Heartbeat(hb))
            }
            (Behaviour::ClaimForeignDid | Behaviour::BadSignature, Message::Publish(mut pb)) => {
                pb.record = self.forge_record(p, behaviour, pb.record);
                Some(Message::Publish(pb))
            }
            (_, m) => Some(m),
        }
    }

    /// The record a misbehaving node sends instead of its own: re-signed by its own key with the
    /// victim's DID (`claim_foreign_did`), or with one signature byte flipped (`bad_signature`).
    fn forge_record(&self, p: PeerIx, behaviour: Behaviour, record: PeerRecord) -> PeerRecord {
        let sp = &self.peers[p as usize];
        match behaviour {
            Behaviour::ClaimForeignDid => {
                let Some(v) = sp.victim else { return record };
                let mut body = (*record.body).clone();
                body.did = self.peers[v as usize].setup.did.clone();
                PeerRecord::sign(body, &sp.setup.keypair).unwrap_or(record)
            }
            Behaviour::BadSignature => {
                let mut r = record;
                r.signature.0[0] ^= 0x01;
                r
            }
            _ => record,
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
                let victim = self.fault_victims.get(i).copied().flatten();
                for &t in &targets {
                    self.make_byzantine(t, behaviour, victim);
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
        sp.last_down = Some(self.now);
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
        sp.last_down = Some(self.now);
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

    fn make_byzantine(&mut self, p: PeerIx, behaviour: Behaviour, victim: Option<PeerIx>) {
        let now = self.now;
        let sp = &mut self.peers[p as usize];
        sp.byz = Some((behaviour, now));
        let victim = if behaviour == Behaviour::ClaimForeignDid { victim.filter(|v| *v != p) } else { None };
        sp.victim = victim;
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
            records_accepted: 0,
            victim,
            lookups: (0, 0),
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
        } else if behaviour == Behaviour::HeartbeatFlood {
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
            Event::LookupDone { id, key, record, hops, attempts } => {
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
                match self.pending_lookups.remove(&id) {
                    Some(l) if l.asker == p => self.finish_lookup(l, record, hops, attempts),
                    other => {
                        if let Some(l) = other {
                            self.pending_lookups.insert(id, l);
                        }
                        let at_ms = now - EPOCH_MS;
                        self.lookup_results.insert((p, id), LookupResult { key, record, hops, attempts, at_ms });
                    }
                }
            }
            Event::RecordStored { owner, did, from } => {
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
            Event::RecordRejected { reason, .. } => {
                self.records.rejected[refusal_index(reason)] += 1;
            }
            Event::RequestRefused { peer, reason } => {
                let role = match self.index.get(&peer).map(|x| &self.peers[*x as usize]) {
                    Some(q) if !q.honest() => "byzantine",
                    Some(q) if q.roles.indexer => "indexer",
                    Some(_) => "node",
                    None => "unknown",
                };
                *self.refusals.entry(format!("{reason:?} {role}")).or_insert(0) += 1;
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

    /// Whether indexer `p` holds a record of `owner` whose signature verifies (the record it just
    /// reported stored). Checked only for misbehaving owners.
    fn holds_valid_record(&self, p: PeerIx, owner: &PeerId) -> bool {
        let Some(dht) = self.peers[p as usize].peer.as_ref().map(|q| q.dht()) else { return true };
        dht.records().iter().find(|r| r.body.peer_id == *owner).is_none_or(|r| r.verify(Timestamp(self.now)).is_ok())
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
                records_accepted: None,
                victim: t.victim.map(|v| self.peers[v as usize].name.clone()),
                lookups: None,
                lookups_ok_ratio: None,
            };
            if matches!(t.behaviour, Behaviour::ClaimForeignDid | Behaviour::BadSignature) {
                b.records_accepted = Some(t.records_accepted);
            }
            if t.behaviour == Behaviour::WithholdRecords && !self.lookup_work.is_empty() {
                b.lookups = Some(t.lookups.0);
                b.lookups_ok_ratio = (t.lookups.0 > 0).then(|| t.lookups.1 as f64 / t.lookups.0 as f64);
            }
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
        let lookups = (!self.lookup_work.is_empty()).then(|| self.lookup_report());
        let records = self.records_report();
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
            lookups,
            records,
            refusals: std::mem::take(&mut self.refusals),
            invariant_violations: std::mem::take(&mut self.violations),
            invariant_violation_count: self.violation_count,
            network: std::mem::take(&mut self.netr),
            notes,
            events_per_wall_s: self.events as f64 / wall_s,
        }
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
            timeline: acc.per_minute.iter().map(|(m, (n, ok))| (m * SAMPLE_EVERY_MS, *n, *ok)).collect(),
            unfinished: self.pending_lookups.len() as u64,
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
            if sp.roles.indexer {
                r.indexers += 1;
                records += dht.records().len();
                r.max_records_per_indexer = r.max_records_per_indexer.max(dht.records().len());
                table += dht.table().len();
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
