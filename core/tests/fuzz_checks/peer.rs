//! `peer_node` and `peer_indexer`: a whole [`Peer`] fed a structured sequence of inputs built
//! with `arbitrary` — messages of every kind from authenticated remote peers, connections coming
//! up, going down and failing, time jumps, commands — checking what must always hold: no panic,
//! a bounded number of outputs per input (no spin), nothing sent to, dialled or closed at itself,
//! a next deadline never in the past (and after a timeout, in the future), and bounded tables
//! (pool, sessions, behaviour table, indexer cache, DHT records and queries, DNT queue).
//!
//! The grown-up version of `core/tests/peer_fuzz.rs` (same harness: remotes that really complete
//! the `Hello` exchange, the same checks), with every message kind, replies that echo the request
//! ids the peer really sent, signed (or forged) records, the search mesh's gossip, commands and
//! durable state handed back at start.

use super::records::provider_record;
use super::tracing;
use arbitrary::{Arbitrary, Unstructured};
use ocd_core::journal::{SEED_MAGIC, Seed, SeedStep};
use ocd_core::proto::wire::{
    AddProvider, AppMessage, AppRefusal, CandidatesRequest, CandidatesResponse, Carried, ChallengeEntry, DhtMessage,
    FindNode, FindValue, GetProviders, GetRecord, Heartbeat, HeartbeatKind, HeartbeatResponse, Hello, HelloProof,
    HelloProofWith, HelloReply, IndexerMessage, Key, LinkMessage, MAX_STORE_BATCH, MeshMessage, NodeMessage, Nodes,
    Providers, Publish, Published, RecordReply, SearchFound, SearchHits, SearchMessage, SearchRequest, Standing, Store,
    StoreAck, StoreBatch, Value, WIRE_VERSION, WitnessQuery, WitnessReport,
};
use ocd_core::proto::{
    AppProtocol, Command, Config, Did, DidBinding, Envelope, Input, Keypair, MessageId, NewMessage, Output, Peer,
    PeerAddr, PeerId, PeerRecord, PeerSetup, QueuedMessage, ReceivedIds, RecordBody, RecordKey, RefuseReason, Relation,
    RequestId, Restored, Roles, SearchQuery, Signature, StoreRefusal, Target, Timestamp, hello_mac,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

/// The network key every peer of the harness holds.
const KEY: [u8; 32] = [3; 32];
/// Remote peers connected from the start.
pub const REMOTES: usize = 5;
/// Peers with keys that are not connected at first (records, suggestions, dials).
pub const STRANGERS: usize = 3;
const OTHERS: usize = REMOTES + STRANGERS;
/// The time the peer starts at.
pub const START: Timestamp = Timestamp(1_700_000_000_000);
/// Inputs per run at most (a long input is not a slow one).
pub const MAX_OPS: usize = 256;
/// Outputs one input may produce at most (more is a spin).
pub const MAX_OUTPUTS: usize = 10_000;

/// A node, fed the input.
pub fn peer_node(data: &[u8]) {
    run(Roles::NODE, data);
}

/// An indexer, fed the input.
pub fn peer_indexer(data: &[u8]) {
    run(Roles::INDEXER, data);
}

struct Keys {
    target: Keypair,
    others: Vec<Keypair>,
}

fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Keys {
        target: Keypair::derive(77, "target"),
        others: (0..OTHERS)
            .map(|i| if i < REMOTES { format!("remote{i}") } else { format!("stranger{i}") })
            .map(|label| Keypair::derive(77, &label))
            .collect(),
    })
}

/// The DID [`PeerSetup::new`] gives a key.
fn did_of(k: &Keypair) -> Did {
    let mut b = [0u8; 16];
    b.copy_from_slice(&k.peer_id().as_bytes()[..16]);
    Did::from_random(b)
}

/// The search mesh's clock anchor (any instant gives the same outputs).
fn anchor() -> std::time::Instant {
    static ANCHOR: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *ANCHOR.get_or_init(std::time::Instant::now)
}

// ---- the input's vocabulary ----------------------------------------------------------------

/// A peer: one of the others, or (the last index) the peer under test itself; the high bit adds
/// a transport address.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Who(u8);

impl Who {
    fn index(self) -> usize {
        usize::from(self.0 & 0x7f) % (OTHERS + 1)
    }
    fn key(self) -> &'static Keypair {
        keys().others.get(self.index()).unwrap_or(&keys().target)
    }
    fn id(self) -> PeerId {
        self.key().peer_id()
    }
    fn addr(self) -> PeerAddr {
        let addrs = if self.0 & 0x80 != 0 { vec![format!("10.0.0.{}:4001", self.index())] } else { Vec::new() };
        PeerAddr { id: self.id(), addrs }
    }
}

fn addrs(v: &[Who]) -> Vec<PeerAddr> {
    v.iter().take(12).map(|w| w.addr()).collect()
}

/// A DID: one of a key's, or a shared one.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct DidRef(u8);

impl DidRef {
    fn did(self) -> Did {
        let i = usize::from(self.0) % (OTHERS + 3);
        match i {
            _ if i < OTHERS => did_of(&keys().others[i]),
            _ if i == OTHERS => did_of(&keys().target),
            _ if i == OTHERS + 1 => Did::new("did:shared").expect("a DID"),
            _ => Did::new("x".repeat(Did::MAX_LEN)).expect("a DID"),
        }
    }
}

/// A name or user: a few, including an empty and an over-long one.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct NameRef(u8);

impl NameRef {
    fn name(self) -> String {
        match self.0 % 8 {
            0 => String::new(),
            1 => "alice".into(),
            2 => "ALICE".into(),
            3 => "bob".into(),
            4 => "node-1".into(),
            5 => "ünïcødé".into(),
            6 => "n".repeat(129),
            _ => "target".into(),
        }
    }
}

/// An instant: relative to now (seconds), or absolute.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum TimeRef {
    Rel(i32),
    Abs(u64),
}

impl TimeRef {
    fn at(self, now: Timestamp) -> Timestamp {
        match self {
            TimeRef::Rel(s) if s >= 0 => now + Duration::from_secs(s.unsigned_abs().into()),
            TimeRef::Rel(s) => now.saturating_sub(Duration::from_secs(s.unsigned_abs().into())),
            TimeRef::Abs(t) => Timestamp(t),
        }
    }
}

/// A number from a peer: mostly in range, or not at all.
#[derive(Debug, Clone, Copy)]
pub enum Float {
    Unit(u16),
    Nan,
    Inf,
    NegInf,
    Raw(f64),
}

impl<'a> Arbitrary<'a> for Float {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.arbitrary::<u8>()? {
            0..=191 => Float::Unit(u.arbitrary()?),
            192..=207 => Float::Nan,
            208..=215 => Float::Inf,
            216..=223 => Float::NegInf,
            _ => Float::Raw(u.arbitrary()?),
        })
    }
}

impl Float {
    fn value(self) -> f64 {
        match self {
            Float::Unit(x) => f64::from(x) / f64::from(u16::MAX),
            Float::Nan => f64::NAN,
            Float::Inf => f64::INFINITY,
            Float::NegInf => f64::NEG_INFINITY,
            Float::Raw(x) => x,
        }
    }
}

/// A request id: one the peer under test sent to this remote (the k-th most recent), or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Req {
    Recent(u8),
    Raw(u64),
}

/// How a record or announcement is signed: mostly by its owner.
#[derive(Debug, Clone, Copy)]
pub enum Forge {
    /// By its owner.
    Honest,
    /// By another key.
    Signer(Who),
    /// By its owner, with one bit flipped.
    Flip(u8),
}

impl<'a> Arbitrary<'a> for Forge {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.arbitrary::<u8>()? {
            0..=199 => Forge::Honest,
            200..=227 => Forge::Signer(u.arbitrary()?),
            _ => Forge::Flip(u.arbitrary()?),
        })
    }
}

/// When a record or announcement was issued and how long it lives: mostly plausible (issued
/// within the clock skew, a lifetime within the limit), sometimes anything.
#[derive(Debug, Clone, Copy)]
pub enum Lifespan {
    /// Issued `2 × issued` seconds from now, living `(1 + lifetime) / 256` of the limit.
    Plausible { issued: i8, lifetime: u8 },
    /// Issued this many seconds from now, living this many seconds.
    Wild { issued: i32, lifetime: u32 },
}

impl<'a> Arbitrary<'a> for Lifespan {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(if u.arbitrary::<u8>()? < 224 {
            Lifespan::Plausible { issued: u.arbitrary()?, lifetime: u.arbitrary()? }
        } else {
            Lifespan::Wild { issued: u.arbitrary()?, lifetime: u.arbitrary()? }
        })
    }
}

impl Lifespan {
    /// `(issued_at, expires_at)` at `now`, for records whose lifetime is at most `limit`.
    fn at(self, now: Timestamp, limit: Duration) -> (Timestamp, Timestamp) {
        let (issued, lifetime) = match self {
            Lifespan::Plausible { issued, lifetime } => {
                (i32::from(issued) * 2, limit.as_millis() as u64 * (1 + u64::from(lifetime)) / 256)
            }
            Lifespan::Wild { issued, lifetime } => (issued, u64::from(lifetime) * 1000),
        };
        let issued_at = TimeRef::Rel(issued).at(now);
        (issued_at, issued_at + Duration::from_millis(lifetime))
    }
}

impl Forge {
    fn sign(self, owner: Who, bytes: &[u8]) -> Signature {
        match self {
            Forge::Honest => super::sign(owner.key(), bytes),
            Forge::Signer(w) => super::sign(w.key(), bytes),
            Forge::Flip(b) => {
                let mut s = super::sign(owner.key(), bytes);
                s.0[usize::from(b) % 64] ^= 1 << (b % 8);
                s
            }
        }
    }
}

/// A peer record, signed over whatever shape it has.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct RecordSpec {
    owner: Who,
    did: DidRef,
    name: NameRef,
    span: Lifespan,
    addrs: u8,
    forge: Forge,
}

impl RecordSpec {
    fn record(self, now: Timestamp) -> PeerRecord {
        let (issued_at, expires_at) = self.span.at(now, Duration::from_secs(3600));
        let body = RecordBody {
            peer_id: self.owner.id(),
            did: self.did.did(),
            name: self.name.name(),
            addrs: (0..self.addrs % 10).map(|i| format!("10.1.0.{i}:4001")).collect(),
            api_url: (self.addrs & 0x10 != 0).then(|| "http://api".into()),
            nats_address: None,
            wallet: None,
            issued_at,
            expires_at,
        };
        let signature = self.forge.sign(self.owner, &body.signing_bytes());
        PeerRecord { body: std::sync::Arc::new(body), signature }
    }
}

/// A provider announcement.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct ProviderSpec {
    owner: Who,
    fill: Float,
    capacity: u32,
    span: Lifespan,
    forge: Forge,
}

impl ProviderSpec {
    fn record(self, now: Timestamp) -> ocd_core::proto::ProviderRecord {
        let (issued_at, expires_at) = self.span.at(now, Duration::from_secs(1800));
        let signer = match self.forge {
            Forge::Signer(w) => w.key(),
            _ => self.owner.key(),
        };
        let a = self.owner.addr();
        let mut r =
            provider_record(signer, a.id, a.addrs, self.fill.value() as f32, self.capacity, issued_at, expires_at);
        if let Forge::Flip(b) = self.forge {
            r.signature.0[usize::from(b) % 64] ^= 1 << (b % 8);
        }
        r
    }
}

/// A record key.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum KeyRef {
    Peer(Who),
    Did(DidRef),
}

impl KeyRef {
    fn key(self) -> RecordKey {
        match self {
            KeyRef::Peer(w) => RecordKey::Peer(w.id()),
            KeyRef::Did(d) => RecordKey::Did(d.did()),
        }
    }
}

/// A point of the Kademlia space.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum KadRef {
    Peer(Who),
    Record(KeyRef),
    Rendezvous,
    Raw([u8; 32]),
}

impl KadRef {
    fn key(self) -> Key {
        match self {
            KadRef::Peer(w) => Key::from(w.id()),
            KadRef::Record(k) => k.key().kad_key(),
            KadRef::Rendezvous => Key::of(b"/opencloud/indexers"),
            KadRef::Raw(b) => Key(b),
        }
    }
}

/// A search query.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct QuerySpec {
    peer: Option<Who>,
    did: Option<DidRef>,
    name: Option<NameRef>,
}

impl QuerySpec {
    fn query(self) -> SearchQuery {
        SearchQuery { peer: self.peer.map(Who::id), did: self.did.map(DidRef::did), name: self.name.map(NameRef::name) }
    }
}

/// An application message id: one the peer under test sent to this remote, or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum MsgRef {
    Recent(u8),
    Spec { sender: Who, epoch: u8, seq: u16 },
}

/// A mesh query number: one the peer under test emitted, or any.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum QueryRef {
    Recent(u8),
    Raw(u64),
}

fn refuse_reason(r: u8) -> RefuseReason {
    use RefuseReason::*;
    [Banned, RateLimited, Busy, Full, LowScore, NotServed, Unknown, BadRecord, DidChanged][usize::from(r) % 9]
}

fn protocol(p: u8) -> AppProtocol {
    AppProtocol::ALL[usize::from(p) % AppProtocol::ALL.len()]
}

/// One gossip message of the indexers' search mesh.
#[derive(Arbitrary, Debug, Clone)]
pub enum MeshSpec {
    Join(Option<Who>),
    ForwardJoin {
        peer: Who,
        data: bool,
        ttl: u8,
    },
    Shuffle {
        origin: Who,
        nodes: Vec<Who>,
        ttl: u8,
    },
    ShuffleReply {
        nodes: Vec<Who>,
    },
    Neighbor {
        high: bool,
        data: Option<Who>,
    },
    Disconnect {
        alive: bool,
    },
    /// A signed search query, broadcast (`round`) or to neighbours.
    Query {
        emitter: Who,
        number: u8,
        query: QuerySpec,
        expires: i16,
        round: Option<u16>,
        forge: Forge,
        bad_id: bool,
    },
    Prune,
    Graft {
        recent: Option<u8>,
        round: u16,
    },
    IHave(Vec<(u8, u16)>),
}

/// A message from a remote, of any kind the wire carries.
#[derive(Arbitrary, Debug, Clone)]
pub enum Msg {
    Hello([u8; 32]),
    HelloProof([u8; 32]),
    /// A proof carrying another message (a carried link message is sent as a bare proof).
    HelloProofWith([u8; 32], Box<Msg>),
    Heartbeat {
        req: Req,
        probe: bool,
        need: u16,
        referent: bool,
        is_indexer: bool,
        challenges: Vec<Who>,
        challenge_did: Option<DidRef>,
        want_witnesses: bool,
        did: Option<DidRef>,
        name: Option<NameRef>,
        record: Option<RecordSpec>,
    },
    HeartbeatResponse {
        req: Req,
        fill: Float,
        peer_count: u32,
        max_nodes: u32,
        born: TimeRef,
        /// Answer the challenges of the heartbeat answered (found, last seen now), or these.
        echo: Option<bool>,
        challenges: Vec<(Who, bool, Option<TimeRef>)>,
        did_found: Option<bool>,
        did_record: Option<RecordSpec>,
        record_expires: Option<TimeRef>,
        witnesses: Vec<Who>,
        suggestions: Vec<Who>,
        migrate: bool,
    },
    Refused {
        req: Req,
        reason: u8,
        suggestions: Vec<Who>,
    },
    Leave,
    CandidatesRequest {
        req: Req,
        count: u16,
    },
    CandidatesResponse {
        req: Req,
        candidates: Vec<Who>,
    },
    Publish {
        req: Req,
        record: RecordSpec,
    },
    Published {
        req: Req,
        expires: Option<TimeRef>,
    },
    GetRecord {
        req: Req,
        key: KeyRef,
    },
    RecordReply {
        req: Req,
        record: Option<RecordSpec>,
        hops: u8,
    },
    WitnessQuery {
        req: Req,
        about: Who,
    },
    WitnessReport {
        req: Req,
        seen: bool,
        born: Option<TimeRef>,
        fill: Float,
        score: Float,
    },
    FindNode {
        req: Req,
        target: KadRef,
        server: bool,
    },
    Nodes {
        req: Req,
        closer: Vec<Who>,
    },
    FindValue {
        req: Req,
        key: KeyRef,
        server: bool,
    },
    Value {
        req: Req,
        record: Option<RecordSpec>,
        closer: Vec<Who>,
    },
    Store {
        req: Req,
        record: RecordSpec,
        server: bool,
    },
    AddProvider {
        req: Req,
        key: KadRef,
        provider: ProviderSpec,
    },
    StoreAck {
        req: Req,
        refused: Option<u8>,
    },
    GetProviders {
        req: Req,
        key: KadRef,
        server: bool,
    },
    Providers {
        req: Req,
        providers: Vec<ProviderSpec>,
        closer: Vec<Who>,
    },
    DhtRefused {
        req: Req,
        reason: u8,
        suggestions: Vec<Who>,
    },
    SearchRequest {
        req: Req,
        query: QuerySpec,
    },
    SearchCancel {
        req: Req,
    },
    SearchHits {
        req: Req,
        records: Vec<RecordSpec>,
    },
    SearchDone {
        req: Req,
    },
    SearchRefused {
        req: Req,
        reason: u8,
        suggestions: Vec<Who>,
    },
    SearchFound {
        query: QueryRef,
        records: Vec<RecordSpec>,
    },
    Mesh(MeshSpec),
    /// A node's resource search of type `all` (to an indexer).
    ResourceAsk {
        req: Req,
        user: NameRef,
        request: Vec<u8>,
    },
    /// A resource search put to a node by an indexer.
    ResourceAsked {
        origin: Who,
        number: u8,
        requester: Who,
        user: NameRef,
        request: Vec<u8>,
    },
    AppDeliver {
        id: MsgRef,
        floor: u16,
        protocol: u8,
        datatype: Option<i64>,
        user: NameRef,
        payload: u16,
        record: Option<RecordSpec>,
    },
    AppAck {
        id: MsgRef,
    },
    AppRefused {
        id: MsgRef,
        reason: u8,
    },
    /// Any payload the wire decoder accepts.
    Raw(Vec<u8>),
    /// Refreshed records batched by a replicator.
    StoreBatch {
        req: Req,
        records: Vec<RecordSpec>,
        server: bool,
    },
    /// The accepting side's answer to our `Hello` (its nonce and proof).
    HelloReply {
        nonce: [u8; 32],
        mac: [u8; 32],
    },
}

/// A destination of an application message.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum TargetRef {
    Peer(Who),
    Did(DidRef),
}

/// One step of the run.
#[derive(Debug, Clone)]
pub enum Op {
    Msg { from: u8, msg: Msg },
    AdvanceMs(u16),
    AdvanceSecs(u16),
    WakeUp,
    Down(u8),
    Failed(u8),
    Reconnect(u8),
    Dial { pick: u8, ok: bool },
    Lookup { id: u8, key: KeyRef },
    Search { id: u8, user: u8, query: QuerySpec },
    CancelSearch { user: u8 },
    Send { id: u8, to: TargetRef, protocol: u8, datatype: Option<i64>, user: NameRef, payload: u16 },
    SetRelation { peer: Who, relation: Option<u8> },
    Shutdown,
}

impl<'a> Arbitrary<'a> for Op {
    /// Mostly messages; shutdown rarely.
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=199)? {
            0..=109 => Op::Msg { from: u.arbitrary()?, msg: u.arbitrary()? },
            110..=117 => Op::AdvanceMs(u.arbitrary()?),
            118..=125 => Op::AdvanceSecs(u.arbitrary::<u16>()? % 1200),
            126..=147 => Op::WakeUp,
            148..=152 => Op::Down(u.arbitrary()?),
            153..=156 => Op::Failed(u.arbitrary()?),
            157..=161 => Op::Reconnect(u.arbitrary()?),
            162..=169 => Op::Dial { pick: u.arbitrary()?, ok: u.arbitrary()? },
            170..=174 => Op::Lookup { id: u.arbitrary()?, key: u.arbitrary()? },
            175..=180 => Op::Search { id: u.arbitrary()?, user: u.arbitrary()?, query: u.arbitrary()? },
            181..=183 => Op::CancelSearch { user: u.arbitrary()? },
            184..=193 => Op::Send {
                id: u.arbitrary()?,
                to: u.arbitrary()?,
                protocol: u.arbitrary()?,
                datatype: u.arbitrary()?,
                user: u.arbitrary()?,
                payload: u.arbitrary()?,
            },
            194..=198 => Op::SetRelation { peer: u.arbitrary()?, relation: u.arbitrary()? },
            _ => Op::Shutdown,
        })
    }
}

/// Small limits, so that the bounds are reached.
#[derive(Arbitrary, Debug, Clone)]
pub struct Knobs {
    seeds: u8,
    max_indexers: u8,
    max_nodes: u8,
    record_store_max: u8,
    kad_max_queries: u8,
    dnt_queue_max: u8,
    behaviour_table_max: u8,
    indexer_cache_max: u8,
    search_max_results: u8,
    max_queued_per_peer: u8,
    app_max_payload: u16,
    rng_seed: u8,
    name: NameRef,
    trusted: Option<Who>,
    blocked: Option<Who>,
    partner: Option<Who>,
}

impl Knobs {
    fn config(&self) -> Config {
        let d = Config::default();
        let mut c = Config {
            max_indexers: 1 + usize::from(self.max_indexers % 4),
            max_nodes: 1 + usize::from(self.max_nodes % 8),
            record_store_max: 1 + usize::from(self.record_store_max % 8),
            kad_max_queries: 1 + usize::from(self.kad_max_queries % 4),
            dnt_queue_max: 1 + usize::from(self.dnt_queue_max % 8),
            behaviour_table_max: 1 + usize::from(self.behaviour_table_max % 8),
            indexer_cache_max: 1 + usize::from(self.indexer_cache_max % 6),
            search_max_results: 1 + usize::from(self.search_max_results % 4),
            max_queued_per_peer: 1 + usize::from(self.max_queued_per_peer % 8),
            app_max_payload: 16 + usize::from(self.app_max_payload % 4096),
            name: self.name.name(),
            trusted_peers: self.trusted.map(Who::id).into_iter().collect(),
            blocked_peers: self.blocked.map(Who::id).into_iter().collect(),
            partners: self.partner.map(Who::id).into_iter().collect(),
            ..d.clone()
        };
        c.min_indexers = c.min_indexers.min(c.max_indexers);
        c.dnt_queue_max_per_destination = c.dnt_queue_max_per_destination.min(c.dnt_queue_max);
        if c.validate().is_ok() { c } else { Config { max_indexers: 3, ..d } }
    }
}

/// Durable state handed back at start, as a store keeps it (unique keys, consistent ids).
#[derive(Arbitrary, Debug, Clone)]
pub struct RestoredSpec {
    sequence: Option<(u8, u16)>,
    queued: u8,
    received: Vec<(Who, u8, u16, Vec<u16>)>,
    bindings: Vec<(DidRef, Who, TimeRef)>,
    bans: Vec<(Who, TimeRef)>,
    relations: Vec<(Who, u8)>,
}

fn relation(r: u8) -> Relation {
    [Relation::Known, Relation::Partner, Relation::Blocked][usize::from(r) % 3]
}

impl RestoredSpec {
    fn restored(&self, me: PeerId, now: Timestamp) -> Restored {
        let mut r = Restored::default();
        if let Some((epoch, reserved)) = self.sequence {
            let (epoch, reserved) = (u64::from(epoch), u64::from(reserved));
            r.sequence = Some((epoch, reserved));
            let n = u64::from(self.queued % 5).min(reserved.saturating_sub(1));
            r.queue = (1..=n)
                .map(|seq| QueuedMessage {
                    id: MessageId { sender: me, epoch, seq },
                    to: Target::Peer(Who(seq as u8).id()),
                    protocol: protocol(seq as u8),
                    datatype: None,
                    user: "alice".into(),
                    payload: vec![7; 8],
                    accepted_at: now.saturating_sub(Duration::from_secs(seq)),
                })
                .collect();
        }
        let mut seen = BTreeSet::new();
        for (who, epoch, floor, seqs) in self.received.iter().take(6) {
            let (sender, epoch, floor) = (who.id(), u64::from(*epoch), u64::from(*floor));
            if sender != me && seen.insert((sender, epoch)) {
                let seqs: BTreeSet<u64> = seqs.iter().map(|s| u64::from(*s)).filter(|s| *s >= floor).take(8).collect();
                r.received.push(ReceivedIds { sender, epoch, floor, seqs: seqs.into_iter().collect() });
            }
        }
        let mut dids = BTreeSet::new();
        for (did, owner, until) in self.bindings.iter().take(6) {
            if dids.insert(did.did()) {
                r.bindings.push(DidBinding { did: did.did(), owner: owner.id(), until: until.at(now) });
            }
        }
        let mut banned = BTreeSet::new();
        for (who, until) in self.bans.iter().take(6) {
            if who.id() != me && banned.insert(who.id()) {
                r.bans.push((who.id(), until.at(now)));
            }
        }
        let mut related = BTreeSet::new();
        for (who, rel) in self.relations.iter().take(6) {
            if who.id() != me && related.insert(who.id()) {
                r.relations.push((who.id(), relation(*rel)));
            }
        }
        r
    }
}

// ---- the search mesh's wire layout (iroh-gossip 0.101, pinned exactly) -----------------------

#[derive(Serialize, Deserialize)]
enum TopicLayout {
    Swarm(SwarmLayout),
    Gossip(PlumLayout),
}

#[derive(Serialize, Deserialize)]
struct PeerInfoLayout {
    id: PeerId,
    data: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
enum PriorityLayout {
    High,
    Low,
}

#[derive(Serialize, Deserialize)]
enum SwarmLayout {
    Join(Option<Vec<u8>>),
    ForwardJoin { peer: PeerInfoLayout, ttl: u16 },
    Shuffle { origin: PeerId, nodes: Vec<PeerInfoLayout>, ttl: u16 },
    ShuffleReply { nodes: Vec<PeerInfoLayout> },
    Neighbor { priority: PriorityLayout, data: Option<Vec<u8>> },
    Disconnect { alive: bool, respond: bool },
}

#[derive(Serialize, Deserialize)]
enum ScopeLayout {
    Swarm(u16),
    Neighbors,
}

#[derive(Serialize, Deserialize)]
enum PlumLayout {
    Gossip { id: [u8; 32], content: Vec<u8>, scope: ScopeLayout },
    Prune,
    Graft { id: Option<[u8; 32]>, round: u16 },
    IHave(Vec<([u8; 32], u16)>),
}

/// A mesh query, the content of a gossip data message (the search machine's layout).
#[derive(Serialize, Deserialize)]
struct QueryBodyLayout {
    emitter: PeerAddr,
    number: u64,
    query: SearchQuery,
    expires_at: Timestamp,
}

#[derive(Serialize, Deserialize)]
struct MeshQueryLayout {
    body: QueryBodyLayout,
    signature: Signature,
}

const QUERY_DOMAIN: &[u8] = b"ocd/search-query/v1";

fn mesh_message(layout: &TopicLayout) -> MeshMessage {
    let bytes = postcard::to_stdvec(layout).expect("a layout encodes");
    postcard::from_bytes(&bytes).expect("the iroh-gossip message layout (a new iroh-gossip version?)")
}

fn peer_data(w: Who) -> Vec<u8> {
    postcard::to_stdvec(&w.addr()).expect("an address encodes")
}

// ---- the harness -------------------------------------------------------------------------

struct Harness {
    peer: Peer,
    now: Timestamp,
    me: PeerId,
    config: Config,
    /// Which of the others have a connection.
    up: [bool; OTHERS],
    /// Dials the peer asked for and nobody answered yet.
    dials: Vec<PeerId>,
    /// What the peer sent lately, to whom.
    sent: VecDeque<(PeerId, Envelope)>,
    /// Mesh queries the peer emitted or forwarded: `(emitter, number)`.
    queries: VecDeque<(PeerId, u64)>,
    /// Gossip message ids the peer sent.
    gossip_ids: VecDeque<[u8; 32]>,
    /// Application messages the peer sent: `(to, id)`.
    delivered: VecDeque<(PeerId, MessageId)>,
    /// Queue entries handed back at start (the queue may hold them beyond its bound).
    restored_queue: usize,
    shut_down: bool,
    /// Connections the peer may hold at most.
    max_connections: usize,
    /// For a seed's run: every peer the host connected or the peer dialled (the bound of its
    /// connections instead of `max_connections`).
    linked: Option<BTreeSet<PeerId>>,
}

fn push_bounded<T>(q: &mut VecDeque<T>, x: T) {
    if q.len() >= 64 {
        q.pop_front();
    }
    q.push_back(x);
}

fn index_of(id: &PeerId) -> Option<usize> {
    keys().others.iter().position(|k| k.peer_id() == *id)
}

/// The request id a message carries, if any.
fn request_id(e: &Envelope) -> Option<RequestId> {
    match e {
        Envelope::Indexer(m) => match m {
            IndexerMessage::Heartbeat(x) => Some(x.req),
            IndexerMessage::HeartbeatResponse(x) => Some(x.req),
            IndexerMessage::Refused(x) => Some(x.req),
            IndexerMessage::CandidatesRequest(x) => Some(x.req),
            IndexerMessage::CandidatesResponse(x) => Some(x.req),
            IndexerMessage::Publish(x) => Some(x.req),
            IndexerMessage::Published(x) => Some(x.req),
            IndexerMessage::GetRecord(x) => Some(x.req),
            IndexerMessage::RecordReply(x) => Some(x.req),
            IndexerMessage::Leave => None,
        },
        Envelope::Node(NodeMessage::WitnessQuery(x)) => Some(x.req),
        Envelope::Node(NodeMessage::WitnessReport(x)) => Some(x.req),
        Envelope::Dht(m) => m.request().map(|(r, _)| r).or_else(|| m.reply_to()),
        Envelope::Search(m) => match m {
            SearchMessage::Request(x) => Some(x.req),
            SearchMessage::Cancel { req } | SearchMessage::Done { req } => Some(*req),
            SearchMessage::Hits(x) => Some(x.req),
            SearchMessage::Refused(x) => Some(x.req),
            SearchMessage::Ask(x) => Some(x.req),
            SearchMessage::Found(_) | SearchMessage::Mesh(_) | SearchMessage::Asked(_) => None,
        },
        Envelope::Link(_) | Envelope::App(_) => None,
    }
}

impl Harness {
    fn new(roles: Roles, knobs: &Knobs, restored: Option<&RestoredSpec>) -> Self {
        let config = knobs.config();
        let mut setup = PeerSetup::new(keys().target.clone(), KEY, roles);
        setup.seeds = (0..usize::from(knobs.seeds % 4)).map(|i| Who(i as u8).addr()).collect();
        setup.config = config.clone();
        setup.rng_seed = knobs.rng_seed.into();
        setup.clock_anchor = Some(anchor());
        setup.addrs = vec!["127.0.0.1:4001".into()];
        let mut h = Harness::from_setup(setup, START, false);
        if let Some(spec) = restored {
            let r = spec.restored(h.me, h.now);
            h.restored_queue = r.queue.len();
            h.input(Input::Restored(r));
        }
        for i in 0..REMOTES {
            h.connect(i, false);
        }
        h.timeout();
        h
    }

    /// The peer of `setup` started at `now`, checked once, with nothing connected; `seed`: a
    /// seed's run, whose connections are bounded by the peers it links with, not [`OTHERS`].
    fn from_setup(setup: PeerSetup, now: Timestamp, seed: bool) -> Self {
        let me = setup.keypair.peer_id();
        let config = setup.config.clone();
        let mut h = Harness {
            peer: Peer::new(setup, now),
            now,
            me,
            config,
            up: [false; OTHERS],
            dials: Vec::new(),
            sent: VecDeque::new(),
            queries: VecDeque::new(),
            gossip_ids: VecDeque::new(),
            delivered: VecDeque::new(),
            restored_queue: 0,
            shut_down: false,
            max_connections: OTHERS,
            linked: seed.then(BTreeSet::new),
        };
        h.check(false);
        h
    }

    fn input(&mut self, input: Input) {
        self.peer.handle(input, self.now);
        self.check(false);
    }

    /// A timeout at `now`: the handled deadlines must move forward at once, none left at `now`
    /// for another round (no spin; `regressions/peer_node/app-deadline-left-at-now` was one).
    fn timeout(&mut self) {
        self.peer.handle(Input::Timeout, self.now);
        self.check(true);
    }

    /// A connection to other `i` comes up and completes the `Hello` exchange.
    fn connect(&mut self, i: usize, outbound: bool) {
        let k = &keys().others[i];
        let r = k.peer_id();
        self.up[i] = true;
        self.peer.handle(Input::ConnectionUp { peer: r, addr: Some(format!("10.0.0.{i}:4001")), outbound }, self.now);
        let outs = self.check(false);
        let nonce = outs.iter().find_map(|o| match o {
            Output::Send { to, message: Envelope::Link(LinkMessage::Hello(Hello { nonce })) } if *to == r => {
                Some(*nonce)
            }
            _ => None,
        });
        let ours = [i as u8 + 1; 32];
        // The peer dialled: it opened with its Hello, ours crosses it. We dialled: it answers our
        // Hello with its nonce and proof.
        self.peer.handle(Input::Received { from: r, message: Envelope::from(Hello { nonce: ours }) }, self.now);
        let outs = self.check(false);
        let their = nonce.or_else(|| {
            outs.iter().find_map(|o| match o {
                Output::Send { to, message: Envelope::Link(LinkMessage::HelloReply(HelloReply { nonce, .. })) }
                    if *to == r =>
                {
                    Some(*nonce)
                }
                _ => None,
            })
        });
        let Some(their) = their else { return };
        let mac = hello_mac(&KEY, &r, &self.me, &their, &ours);
        self.input(Input::Received { from: r, message: Envelope::from(HelloProof { mac }) });
    }

    /// Drains the outputs, checks each and the peer's state; returns the outputs.
    fn check(&mut self, after_timeout: bool) -> Vec<Output> {
        let mut outs = Vec::new();
        while let Some(o) = self.peer.poll_output() {
            outs.push(o);
            assert!(outs.len() < MAX_OUTPUTS, "a single input must not produce unbounded output");
        }
        for o in &outs {
            if tracing() {
                eprintln!("    -> {o:?}");
            }
            self.observe(o);
        }
        let next = self.peer.poll_timeout();
        if self.shut_down {
            assert_eq!(next, None, "a peer shut down has no deadline");
        } else if after_timeout {
            assert!(
                next.is_none_or(|t| t > self.now),
                "a handled deadline must move forward (no spin): {next:?} at {:?}",
                self.now
            );
        } else {
            assert!(next.is_none_or(|t| t >= self.now), "a deadline in the past: {next:?} at {:?}", self.now);
        }
        self.bounds();
        outs
    }

    fn observe(&mut self, o: &Output) {
        match o {
            Output::Send { to, message } => {
                assert_ne!(*to, self.me, "never sends to itself: {message:?}");
                match message {
                    Envelope::App(AppMessage::Deliver(d)) => push_bounded(&mut self.delivered, (*to, d.id)),
                    Envelope::Search(SearchMessage::Mesh(m)) => self.observe_mesh(m),
                    _ => {}
                }
                push_bounded(&mut self.sent, (*to, message.clone()));
            }
            Output::Connect { peer } => {
                assert_ne!(peer.id, self.me, "never dials itself");
                if let Some(linked) = self.linked.as_mut() {
                    linked.insert(peer.id);
                }
                if !self.dials.contains(&peer.id) && self.dials.len() < 16 {
                    self.dials.push(peer.id);
                }
            }
            Output::Close { peer, .. } => {
                assert_ne!(*peer, self.me, "never closes a connection to itself");
                if let Some(i) = index_of(peer) {
                    self.up[i] = false;
                }
            }
            Output::Persist(ocd_core::proto::Persist::Queued(m)) => {
                assert_eq!(m.id.sender, self.me, "queues only its own messages");
            }
            Output::Event(_) | Output::Persist(_) | Output::Forget(_) => {}
        }
    }

    fn observe_mesh(&mut self, m: &MeshMessage) {
        let Ok(bytes) = postcard::to_stdvec(m) else { return };
        let Ok(TopicLayout::Gossip(PlumLayout::Gossip { id, content, .. })) = postcard::from_bytes(&bytes) else {
            return;
        };
        push_bounded(&mut self.gossip_ids, id);
        if let Ok(q) = postcard::from_bytes::<MeshQueryLayout>(&content) {
            push_bounded(&mut self.queries, (q.body.emitter.id, q.body.number));
        }
    }

    /// Tables stay within their configured bounds.
    fn bounds(&self) {
        if let Some(pool) = self.peer.pool() {
            let ids: Vec<PeerId> = pool.entries().map(|e| e.peer).collect();
            let unique: BTreeSet<PeerId> = ids.iter().copied().collect();
            assert_eq!(unique.len(), ids.len(), "no duplicate pool entries");
            assert!(!unique.contains(&self.me), "never self in the pool");
            assert!(pool.len() <= pool.max_pool(), "pool above its maximum: {} > {}", pool.len(), pool.max_pool());
        }
        if let Some(ix) = self.peer.indexer() {
            assert!(!ix.has_session(&self.me), "never a session with itself");
            assert!(ix.session_count() <= self.config.max_nodes, "sessions {} > max_nodes", ix.session_count());
            assert!(ix.behaviour_len() <= self.config.behaviour_table_max, "behaviour table {}", ix.behaviour_len());
            let known = ix.known_indexers().count();
            assert!(
                known <= self.config.indexer_cache_max,
                "indexer cache {known} > {}",
                self.config.indexer_cache_max
            );
            assert!((0.0..=1.0).contains(&ix.fill_rate()), "fill rate {}", ix.fill_rate());
        }
        let dht = self.peer.dht();
        assert!(dht.record_count() <= self.config.record_store_max, "DHT records {}", dht.record_count());
        assert!(dht.query_count() <= self.config.kad_max_queries, "DHT queries {}", dht.query_count());
        if let Some(q) = self.peer.app_queue() {
            let queued: usize = q.classes.iter().map(|(_, n, _)| n).sum();
            assert!(queued <= self.config.dnt_queue_max.max(self.restored_queue), "DNT queue {queued}");
        }
        let connections = self.peer.connections().len();
        let max = self.linked.as_ref().map_or(self.max_connections, BTreeSet::len);
        assert!(connections <= max, "connections {connections} > {max}");
    }

    fn request(&self, from: PeerId, r: Req) -> RequestId {
        match r {
            Req::Raw(x) => RequestId(x),
            Req::Recent(k) => {
                let ids: Vec<RequestId> =
                    self.sent.iter().rev().filter(|(to, _)| *to == from).filter_map(|(_, e)| request_id(e)).collect();
                if ids.is_empty() { RequestId(u64::from(k)) } else { ids[usize::from(k) % ids.len()] }
            }
        }
    }

    /// The heartbeat `req` answers, if the peer sent it to `from`.
    fn heartbeat_sent(&self, from: PeerId, req: RequestId) -> Option<&Heartbeat> {
        self.sent.iter().rev().find_map(|(to, e)| match e {
            Envelope::Indexer(IndexerMessage::Heartbeat(h)) if *to == from && h.req == req => Some(&**h),
            _ => None,
        })
    }

    fn message_id(&self, from: PeerId, m: MsgRef) -> MessageId {
        match m {
            MsgRef::Spec { sender, epoch, seq } => {
                MessageId { sender: sender.id(), epoch: epoch.into(), seq: seq.into() }
            }
            MsgRef::Recent(k) => {
                let ids: Vec<MessageId> =
                    self.delivered.iter().rev().filter(|(to, _)| *to == from).map(|(_, id)| *id).collect();
                if ids.is_empty() {
                    MessageId { sender: self.me, epoch: 0, seq: k.into() }
                } else {
                    ids[usize::from(k) % ids.len()]
                }
            }
        }
    }

    fn mesh(&self, spec: &MeshSpec) -> MeshMessage {
        let info = |w: &Who, data: bool| PeerInfoLayout { id: w.id(), data: data.then(|| peer_data(*w)) };
        let layout = match spec {
            MeshSpec::Join(d) => TopicLayout::Swarm(SwarmLayout::Join(d.map(peer_data))),
            MeshSpec::ForwardJoin { peer, data, ttl } => {
                TopicLayout::Swarm(SwarmLayout::ForwardJoin { peer: info(peer, *data), ttl: (*ttl).into() })
            }
            MeshSpec::Shuffle { origin, nodes, ttl } => TopicLayout::Swarm(SwarmLayout::Shuffle {
                origin: origin.id(),
                nodes: nodes.iter().take(8).map(|w| info(w, true)).collect(),
                ttl: (*ttl).into(),
            }),
            MeshSpec::ShuffleReply { nodes } => TopicLayout::Swarm(SwarmLayout::ShuffleReply {
                nodes: nodes.iter().take(8).map(|w| info(w, w.0 & 1 == 0)).collect(),
            }),
            MeshSpec::Neighbor { high, data } => TopicLayout::Swarm(SwarmLayout::Neighbor {
                priority: if *high { PriorityLayout::High } else { PriorityLayout::Low },
                data: data.map(peer_data),
            }),
            MeshSpec::Disconnect { alive } => {
                TopicLayout::Swarm(SwarmLayout::Disconnect { alive: *alive, respond: false })
            }
            MeshSpec::Query { emitter, number, query, expires, round, forge, bad_id } => {
                let body = QueryBodyLayout {
                    emitter: emitter.addr(),
                    number: (*number).into(),
                    query: query.query(),
                    expires_at: TimeRef::Rel(i32::from(*expires)).at(self.now),
                };
                let mut signed = QUERY_DOMAIN.to_vec();
                signed.extend(postcard::to_stdvec(&body).expect("a query encodes"));
                let signature = forge.sign(*emitter, &signed);
                let content = postcard::to_stdvec(&MeshQueryLayout { body, signature }).expect("a query encodes");
                let mut id = *blake3::hash(&content).as_bytes();
                if *bad_id {
                    id[0] ^= 1;
                }
                let scope = round.map_or(ScopeLayout::Neighbors, ScopeLayout::Swarm);
                TopicLayout::Gossip(PlumLayout::Gossip { id, content, scope })
            }
            MeshSpec::Prune => TopicLayout::Gossip(PlumLayout::Prune),
            MeshSpec::Graft { recent, round } => {
                let id = recent.and_then(|k| {
                    let n = self.gossip_ids.len();
                    (n > 0).then(|| self.gossip_ids[usize::from(k) % n])
                });
                TopicLayout::Gossip(PlumLayout::Graft { id, round: *round })
            }
            MeshSpec::IHave(v) => TopicLayout::Gossip(PlumLayout::IHave(
                v.iter()
                    .take(8)
                    .map(|(k, round)| {
                        let n = self.gossip_ids.len();
                        let id = if n > 0 { self.gossip_ids[usize::from(*k) % n] } else { [*k; 32] };
                        (id, *round)
                    })
                    .collect(),
            )),
        };
        mesh_message(&layout)
    }

    /// The envelope `msg` stands for, from `from`.
    fn envelope(&self, from: PeerId, msg: &Msg) -> Option<Envelope> {
        let now = self.now;
        let req = |r: &Req| self.request(from, *r);
        let records = |v: &[RecordSpec]| v.iter().take(6).map(|s| s.record(now)).collect::<Vec<_>>();
        Some(match msg {
            Msg::Hello(nonce) => Envelope::from(Hello { nonce: *nonce }),
            Msg::HelloProof(mac) => Envelope::from(HelloProof { mac: *mac }),
            Msg::HelloProofWith(mac, first) => match Carried::new(self.envelope(from, first)?) {
                Some(first) => Envelope::from(HelloProofWith { mac: *mac, first }),
                None => Envelope::from(HelloProof { mac: *mac }),
            },
            Msg::Heartbeat {
                req: r,
                probe,
                need,
                referent,
                is_indexer,
                challenges,
                challenge_did,
                want_witnesses,
                did,
                name,
                record,
            } => Envelope::from(Heartbeat {
                req: req(r),
                kind: if *probe { HeartbeatKind::Probe } else { HeartbeatKind::Regular },
                need: *need,
                // Drawn from `need`'s high bits, so the committed corpus and regressions keep
                // their byte layout.
                standing: Standing {
                    live_elsewhere: (*need >> 8) & 0x7,
                    joining_elsewhere: (*need >> 11) & 0x3,
                    min: *need >> 13,
                },
                referent: *referent,
                is_indexer: *is_indexer,
                challenges: challenges.iter().take(12).map(|w| w.id()).collect(),
                challenge_did: challenge_did.map(DidRef::did),
                want_witnesses: *want_witnesses,
                did: did.map(DidRef::did),
                name: name.map(NameRef::name),
                record: record.map(|s| s.record(now)),
            }),
            Msg::HeartbeatResponse {
                req: r,
                fill,
                peer_count,
                max_nodes,
                born,
                echo,
                challenges,
                did_found,
                did_record,
                record_expires,
                witnesses,
                suggestions,
                migrate,
            } => {
                let req = req(r);
                let challenges = match (echo, self.heartbeat_sent(from, req)) {
                    (Some(found), Some(h)) => h
                        .challenges
                        .iter()
                        .map(|p| ChallengeEntry { peer: *p, found: *found, last_seen: found.then_some(now) })
                        .collect(),
                    _ => challenges
                        .iter()
                        .take(12)
                        .map(|(w, found, seen)| ChallengeEntry {
                            peer: w.id(),
                            found: *found,
                            last_seen: seen.map(|t| t.at(now)),
                        })
                        .collect(),
                };
                Envelope::from(HeartbeatResponse {
                    req,
                    fill_rate: fill.value(),
                    peer_count: *peer_count,
                    max_nodes: *max_nodes,
                    born_at: born.at(now),
                    challenges,
                    did_found: *did_found,
                    did_record: did_record.map(|s| s.record(now)),
                    record_expires: record_expires.map(|t| t.at(now)),
                    witnesses: addrs(witnesses),
                    suggestions: addrs(suggestions),
                    suggest_migrate: *migrate,
                })
            }
            Msg::Refused { req: r, reason, suggestions } => {
                Envelope::from(IndexerMessage::Refused(ocd_core::proto::wire::Refused {
                    req: req(r),
                    reason: refuse_reason(*reason),
                    suggestions: addrs(suggestions),
                }))
            }
            Msg::Leave => Envelope::Indexer(IndexerMessage::Leave),
            Msg::CandidatesRequest { req: r, count } => {
                Envelope::from(CandidatesRequest { req: req(r), count: *count })
            }
            Msg::CandidatesResponse { req: r, candidates } => {
                Envelope::from(CandidatesResponse { req: req(r), candidates: addrs(candidates) })
            }
            Msg::Publish { req: r, record } => Envelope::from(Publish { req: req(r), record: record.record(now) }),
            Msg::Published { req: r, expires } => {
                Envelope::from(Published { req: req(r), expires: expires.map(|t| t.at(now)) })
            }
            Msg::GetRecord { req: r, key } => Envelope::from(GetRecord { req: req(r), key: key.key() }),
            Msg::RecordReply { req: r, record, hops } => {
                Envelope::from(RecordReply { req: req(r), record: record.map(|s| s.record(now)), hops: *hops })
            }
            Msg::WitnessQuery { req: r, about } => Envelope::from(WitnessQuery { req: req(r), indexer: about.id() }),
            Msg::WitnessReport { req: r, seen, born, fill, score } => Envelope::from(WitnessReport {
                req: req(r),
                seen: *seen,
                born_at: born.map(|t| t.at(now)),
                fill_rate: fill.value(),
                score: score.value(),
            }),
            Msg::FindNode { req: r, target, server } => {
                Envelope::from(FindNode { req: req(r), target: target.key(), server: *server })
            }
            Msg::Nodes { req: r, closer } => Envelope::from(Nodes { req: req(r), closer: addrs(closer) }),
            Msg::FindValue { req: r, key, server } => {
                Envelope::from(FindValue { req: req(r), key: key.key(), server: *server })
            }
            Msg::Value { req: r, record, closer } => {
                Envelope::from(Value { req: req(r), record: record.map(|s| s.record(now)), closer: addrs(closer) })
            }
            Msg::Store { req: r, record, server } => {
                Envelope::from(Store { req: req(r), record: record.record(now), server: *server })
            }
            Msg::HelloReply { nonce, mac } => Envelope::from(HelloReply { nonce: *nonce, mac: *mac }),
            Msg::StoreBatch { req: r, records, server } => Envelope::Dht(DhtMessage::StoreBatch(StoreBatch {
                req: req(r),
                records: records.iter().take(MAX_STORE_BATCH + 1).map(|s| s.record(now)).collect(),
                server: *server,
            })),
            Msg::AddProvider { req: r, key, provider } => {
                Envelope::from(AddProvider { req: req(r), key: key.key(), provider: provider.record(now) })
            }
            Msg::StoreAck { req: r, refused } => Envelope::from(StoreAck {
                req: req(r),
                refused: refused.map(|x| {
                    [StoreRefusal::Invalid, StoreRefusal::ForeignDid, StoreRefusal::Stale, StoreRefusal::Refused]
                        [usize::from(x) % 4]
                }),
            }),
            Msg::GetProviders { req: r, key, server } => {
                Envelope::from(GetProviders { req: req(r), key: key.key(), server: *server })
            }
            Msg::Providers { req: r, providers, closer } => Envelope::from(Providers {
                req: req(r),
                providers: providers.iter().take(6).map(|p| p.record(now)).collect(),
                closer: addrs(closer),
            }),
            Msg::DhtRefused { req: r, reason, suggestions } => {
                Envelope::Dht(DhtMessage::Refused(ocd_core::proto::wire::Refused {
                    req: req(r),
                    reason: refuse_reason(*reason),
                    suggestions: addrs(suggestions),
                }))
            }
            Msg::SearchRequest { req: r, query } => Envelope::from(SearchRequest { req: req(r), query: query.query() }),
            Msg::SearchCancel { req: r } => Envelope::Search(SearchMessage::Cancel { req: req(r) }),
            Msg::SearchHits { req: r, records: v } => Envelope::from(SearchHits { req: req(r), records: records(v) }),
            Msg::SearchDone { req: r } => Envelope::Search(SearchMessage::Done { req: req(r) }),
            Msg::SearchRefused { req: r, reason, suggestions } => {
                Envelope::Search(SearchMessage::Refused(ocd_core::proto::wire::Refused {
                    req: req(r),
                    reason: refuse_reason(*reason),
                    suggestions: addrs(suggestions),
                }))
            }
            Msg::SearchFound { query, records: v } => {
                let number = match query {
                    QueryRef::Raw(n) => *n,
                    QueryRef::Recent(k) => {
                        let mine: Vec<u64> =
                            self.queries.iter().rev().filter(|(e, _)| *e == self.me).map(|(_, n)| *n).collect();
                        if mine.is_empty() { u64::from(*k) } else { mine[usize::from(*k) % mine.len()] }
                    }
                };
                Envelope::from(SearchFound { query: number, records: records(v) })
            }
            Msg::Mesh(spec) => Envelope::Search(SearchMessage::Mesh(self.mesh(spec))),
            Msg::ResourceAsk { req: r, user, request } => {
                Envelope::Search(SearchMessage::Ask(ocd_core::proto::wire::ResourceAsk {
                    req: req(r),
                    user: user.name(),
                    request: request.clone(),
                }))
            }
            Msg::ResourceAsked { origin, number, requester, user, request } => {
                Envelope::Search(SearchMessage::Asked(ocd_core::proto::wire::ResourceAsked {
                    origin: (origin.id(), u64::from(*number)),
                    requester: requester.id(),
                    user: user.name(),
                    request: request.clone(),
                }))
            }
            Msg::AppDeliver { id, floor, protocol: p, datatype, user, payload, record } => {
                Envelope::App(AppMessage::Deliver(Box::new(ocd_core::proto::wire::Deliver {
                    id: self.message_id(from, *id),
                    floor: (*floor).into(),
                    protocol: protocol(*p),
                    datatype: *datatype,
                    user: user.name(),
                    payload: vec![0x5a; usize::from(*payload) % 8192],
                    record: record.map(|s| s.record(now)),
                })))
            }
            Msg::AppAck { id } => Envelope::App(AppMessage::Ack { id: self.message_id(from, *id) }),
            Msg::AppRefused { id, reason } => Envelope::App(AppMessage::Refused {
                id: self.message_id(from, *id),
                reason: [
                    AppRefusal::Blocked,
                    AppRefusal::Unknown,
                    AppRefusal::TooLarge,
                    AppRefusal::NotServed,
                    AppRefusal::Busy,
                ][usize::from(*reason) % 5],
            }),
            Msg::Raw(bytes) => {
                let mut payload = vec![WIRE_VERSION];
                payload.extend_from_slice(bytes);
                return ocd_core::proto::wire::decode(&payload).ok();
            }
        })
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Msg { from, msg } => {
                let ups: Vec<usize> = (0..OTHERS).filter(|i| self.up[*i]).collect();
                if ups.is_empty() {
                    return;
                }
                let from = keys().others[ups[usize::from(from) % ups.len()]].peer_id();
                if let Some(message) = self.envelope(from, &msg) {
                    self.input(Input::Received { from, message });
                }
            }
            Op::AdvanceMs(ms) => {
                self.now = self.now + Duration::from_millis(ms.into());
                self.timeout();
            }
            Op::AdvanceSecs(s) => {
                self.now = self.now + Duration::from_secs(s.into());
                self.timeout();
            }
            Op::WakeUp => {
                if let Some(t) = self.peer.poll_timeout() {
                    self.now = self.now.max(t);
                    self.timeout();
                }
            }
            Op::Down(i) => {
                let i = usize::from(i) % OTHERS;
                if self.up[i] {
                    self.up[i] = false;
                    self.input(Input::ConnectionDown { peer: keys().others[i].peer_id() });
                }
            }
            Op::Failed(k) => {
                if !self.dials.is_empty() {
                    let peer = self.dials.remove(usize::from(k) % self.dials.len());
                    self.input(Input::ConnectFailed { peer });
                }
            }
            Op::Dial { pick, ok } => {
                if self.dials.is_empty() {
                    return;
                }
                let peer = self.dials.remove(usize::from(pick) % self.dials.len());
                match index_of(&peer) {
                    Some(i) if ok && !self.up[i] => self.connect(i, true),
                    Some(i) if ok => {
                        self.input(Input::ConnectionUp { peer, addr: Some(format!("10.0.0.{i}:4001")), outbound: true })
                    }
                    _ => self.input(Input::ConnectFailed { peer }),
                }
            }
            Op::Reconnect(i) => {
                let i = usize::from(i) % OTHERS;
                if self.up[i] {
                    self.up[i] = false;
                    self.input(Input::ConnectionDown { peer: keys().others[i].peer_id() });
                }
                self.connect(i, false);
            }
            Op::Lookup { id, key } => self.input(Input::Command(Command::Lookup { id: id.into(), key: key.key() })),
            Op::Search { id, user, query } => self.input(Input::Command(Command::Search {
                id: id.into(),
                user: format!("user{}", user % 4),
                query: query.query(),
            })),
            Op::CancelSearch { user } => {
                self.input(Input::Command(Command::CancelSearch { user: format!("user{}", user % 4) }))
            }
            Op::Send { id, to, protocol: p, datatype, user, payload } => {
                let to = match to {
                    TargetRef::Peer(w) => Target::Peer(w.id()),
                    TargetRef::Did(d) => Target::Did(d.did()),
                };
                let message = NewMessage {
                    to,
                    protocol: protocol(p),
                    datatype,
                    user: user.name(),
                    payload: vec![0xa5; usize::from(payload) % 8192],
                };
                self.input(Input::Command(Command::Send { id: id.into(), message }));
            }
            Op::SetRelation { peer, relation: r } => {
                self.input(Input::Command(Command::SetRelation { peer: peer.id(), relation: r.map(relation) }))
            }
            Op::Shutdown => {
                self.shut_down = true;
                self.input(Input::Command(Command::Shutdown));
            }
        }
    }
}

/// Builds the peer from the input's head, runs its ops, then lets time run on. An input that is
/// a simulated peer's recorded run (a [`Seed`]) is replayed instead, as mutated.
fn run(roles: Roles, data: &[u8]) {
    if data.starts_with(SEED_MAGIC) {
        return run_seed(roles, data);
    }
    let mut u = Unstructured::new(data);
    let Ok(knobs) = Knobs::arbitrary(&mut u) else { return };
    let Ok(restored) = Option::<RestoredSpec>::arbitrary(&mut u) else { return };
    if tracing() {
        eprintln!("{roles:?} {knobs:?}\n{:?}\nrestored: {restored:?}", knobs.config());
    }
    let mut h = Harness::new(roles, &knobs, restored.as_ref());
    let mut ops = 0;
    while !u.is_empty() && ops < MAX_OPS {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        if tracing() {
            eprintln!("[{:?}] {op:?}", h.now);
        }
        h.apply(op);
        ops += 1;
    }
    if tracing() {
        eprintln!("[{:?}] wake-ups", h.now);
    }
    h.run_on();
}

/// Inputs of a seed replayed at most.
pub const MAX_SEED_STEPS: usize = 2_000;

/// A simulated peer's run (`ocd-sim run --dump-corpus`), its setup and inputs as recorded (and
/// as the fuzzer mutated them), under the same checks. The peer takes the target's role besides
/// its own; time never runs back; inputs a host never hands over (a link or message from the peer
/// itself) are skipped.
fn run_seed(roles: Roles, data: &[u8]) {
    let Some((seed, steps)) = Seed::read(data, MAX_SEED_STEPS) else { return };
    if seed.config.validate().is_err() {
        return;
    }
    let mut setup = seed.peer_setup(anchor());
    setup.roles = Roles { node: setup.roles.node || roles.node, indexer: setup.roles.indexer || roles.indexer };
    if tracing() {
        eprintln!("seed: {:?} {} steps", setup.roles, steps.len());
    }
    let mut h = Harness::from_setup(setup, seed.started, true);
    for SeedStep { now, input } in steps {
        // As a host does: a deadline due by the input's time fires first (late, if time jumped).
        if h.peer.poll_timeout().is_some_and(|t| t <= now) && !matches!(input, Input::Timeout) {
            h.now = h.now.max(now);
            h.timeout();
        }
        h.now = h.now.max(now);
        let from = match &input {
            Input::ConnectionUp { peer, .. }
            | Input::ConnectionDown { peer }
            | Input::ConnectFailed { peer }
            | Input::Received { from: peer, .. } => Some(*peer),
            _ => None,
        };
        if from == Some(h.me) {
            continue;
        }
        if tracing() {
            eprintln!("[{:?}] {input:?}", h.now);
        }
        match input {
            Input::Timeout => h.timeout(),
            Input::Restored(r) => {
                h.restored_queue = h.restored_queue.max(r.queue.len());
                h.input(Input::Restored(r));
            }
            Input::ConnectionUp { peer, addr, outbound } => {
                h.linked.get_or_insert_default().insert(peer);
                h.input(Input::ConnectionUp { peer, addr, outbound });
            }
            input => h.input(input),
        }
    }
    h.run_on();
}

impl Harness {
    /// Lets time run on: the machine moves forward without spinning.
    fn run_on(&mut self) {
        for _ in 0..50 {
            let Some(t) = self.peer.poll_timeout() else { break };
            self.now = self.now.max(t);
            self.timeout();
        }
    }
}

/// An envelope of every kind, for the wire corpus: built by the harness from fixed specs.
pub fn sample_envelopes() -> Vec<Envelope> {
    let h = Harness::new(Roles::INDEXER, &Knobs::arbitrary(&mut Unstructured::new(&[])).expect("knobs"), None);
    let me = Who(0);
    let rec = RecordSpec {
        owner: Who(1),
        did: DidRef(1),
        name: NameRef(1),
        span: Lifespan::Plausible { issued: -5, lifetime: 40 },
        addrs: 2,
        forge: Forge::Honest,
    };
    let prov = ProviderSpec {
        owner: Who(2),
        fill: Float::Unit(100),
        capacity: 9,
        span: Lifespan::Plausible { issued: -2, lifetime: 40 },
        forge: Forge::Honest,
    };
    let q = QuerySpec { peer: None, did: None, name: Some(NameRef(1)) };
    let msgs = vec![
        Msg::Hello([1; 32]),
        Msg::HelloProof([2; 32]),
        Msg::Heartbeat {
            req: Req::Raw(1),
            probe: false,
            need: 2,
            referent: true,
            is_indexer: false,
            challenges: vec![Who(1), Who(2)],
            challenge_did: Some(DidRef(3)),
            want_witnesses: true,
            did: Some(DidRef(0)),
            name: Some(NameRef(4)),
            record: Some(rec),
        },
        Msg::HeartbeatResponse {
            req: Req::Raw(1),
            fill: Float::Unit(30_000),
            peer_count: 4,
            max_nodes: 500,
            born: TimeRef::Rel(-3600),
            echo: None,
            challenges: vec![(Who(1), true, Some(TimeRef::Rel(-5)))],
            did_found: Some(true),
            did_record: Some(rec),
            record_expires: Some(TimeRef::Rel(300)),
            witnesses: vec![Who(3)],
            suggestions: vec![Who(0x84)],
            migrate: false,
        },
        Msg::Refused { req: Req::Raw(2), reason: 3, suggestions: vec![Who(4)] },
        Msg::Leave,
        Msg::CandidatesRequest { req: Req::Raw(3), count: 4 },
        Msg::CandidatesResponse { req: Req::Raw(3), candidates: vec![Who(5), Who(6)] },
        Msg::Publish { req: Req::Raw(4), record: rec },
        Msg::Published { req: Req::Raw(4), expires: Some(TimeRef::Rel(600)) },
        Msg::GetRecord { req: Req::Raw(5), key: KeyRef::Did(DidRef(1)) },
        Msg::RecordReply { req: Req::Raw(5), record: Some(rec), hops: 1 },
        Msg::WitnessQuery { req: Req::Raw(6), about: Who(2) },
        Msg::WitnessReport {
            req: Req::Raw(6),
            seen: true,
            born: Some(TimeRef::Rel(-60)),
            fill: Float::Unit(9),
            score: Float::Nan,
        },
        Msg::FindNode { req: Req::Raw(7), target: KadRef::Peer(Who(3)), server: true },
        Msg::Nodes { req: Req::Raw(7), closer: vec![Who(1), Who(0x82)] },
        Msg::FindValue { req: Req::Raw(8), key: KeyRef::Peer(Who(1)), server: true },
        Msg::Value { req: Req::Raw(8), record: Some(rec), closer: vec![] },
        Msg::Store { req: Req::Raw(9), record: rec, server: true },
        Msg::AddProvider { req: Req::Raw(10), key: KadRef::Rendezvous, provider: prov },
        Msg::StoreAck { req: Req::Raw(9), refused: Some(2) },
        Msg::GetProviders { req: Req::Raw(11), key: KadRef::Rendezvous, server: false },
        Msg::Providers { req: Req::Raw(11), providers: vec![prov], closer: vec![Who(2)] },
        Msg::DhtRefused { req: Req::Raw(12), reason: 1, suggestions: vec![] },
        Msg::SearchRequest { req: Req::Raw(13), query: q },
        Msg::SearchCancel { req: Req::Raw(13) },
        Msg::SearchHits { req: Req::Raw(13), records: vec![rec] },
        Msg::SearchDone { req: Req::Raw(13) },
        Msg::SearchRefused { req: Req::Raw(13), reason: 2, suggestions: vec![Who(1)] },
        Msg::SearchFound { query: QueryRef::Raw(1), records: vec![rec] },
        Msg::ResourceAsk { req: Req::Raw(14), user: NameRef(0), request: b"{}".to_vec() },
        Msg::ResourceAsked { origin: Who(2), number: 1, requester: Who(1), user: NameRef(0), request: b"{}".to_vec() },
        Msg::Mesh(MeshSpec::Query {
            emitter: Who(2),
            number: 1,
            query: q,
            expires: 30,
            round: Some(0),
            forge: Forge::Honest,
            bad_id: false,
        }),
        Msg::Mesh(MeshSpec::Join(Some(Who(0x81)))),
        Msg::Mesh(MeshSpec::Shuffle { origin: Who(1), nodes: vec![Who(2), Who(3)], ttl: 3 }),
        Msg::Mesh(MeshSpec::IHave(vec![(1, 2)])),
        Msg::AppDeliver {
            id: MsgRef::Spec { sender: Who(1), epoch: 1, seq: 1 },
            floor: 1,
            protocol: 0,
            datatype: Some(7),
            user: NameRef(1),
            payload: 40,
            record: Some(rec),
        },
        Msg::AppAck { id: MsgRef::Spec { sender: Who(8), epoch: 1, seq: 1 } },
        Msg::AppRefused { id: MsgRef::Spec { sender: Who(8), epoch: 1, seq: 2 }, reason: 1 },
        Msg::StoreBatch { req: Req::Raw(14), records: vec![rec, rec], server: true },
        Msg::HelloReply { nonce: [3; 32], mac: [4; 32] },
        Msg::HelloProofWith([5; 32], Box::new(Msg::Leave)),
    ];
    msgs.iter().filter_map(|m| h.envelope(me.id(), m)).collect()
}
