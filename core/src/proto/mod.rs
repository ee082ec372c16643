//! # `ocd_core::proto` — the pure protocol core
//!
//! Everything `ocd` decides lives here, as deterministic state machines with no I/O (DESIGN.md §2):
//! every input carries `now`, randomness comes from a seeded [`DetRng`], timers are deadlines
//! returned by [`Peer::poll_timeout`], and effects are [`Output`]s the caller executes. The same
//! inputs and seed give the same outputs, byte for byte — the simulator checks it with a trace
//! hash.
//!
//! ## Shape
//!
//! A [`Peer`] is one daemon. It owns one state machine per mechanism, each in its own folder with
//! its own messages, and only routes between them (the habit of iroh-gossip's `proto`):
//!
//! ```text
//! proto/
//!   mod.rs      the public surface: Peer, PeerSetup, Roles, Input, Output, Command, Event, Config
//!   peer/       the router: one arm per mechanism, no protocol decision of its own
//!   wire/       frames and the versioned Envelope { Link, Indexer, Node, Dht }, the kind table
//!   link/       the Hello exchange, per-peer queues, address book, idle/handshake timeouts
//!   node/       the node role: the pool (heartbeat, rate, score, challenges, witnesses, eviction,
//!               consensus, recovery, discovery) and record lookups
//!   indexer/    the indexer role: sessions, admission and its gate, responses, offload,
//!               candidates, the record gate
//!   dht/        Kademlia: routing table and iterative lookups (kad), queries, record and
//!               provider stores, replication
//!   app/        application messages between nodes: ids, acknowledgements, the DNT queue, the inbox
//!   bridge/     the NATS bridge's mapping: the local apps' JSON messages ↔ commands, events and
//!               inbox entries (the NATS client is the host's)
//!   search/     distributed peer search: the node's searches, the emitter and responder, the
//!               indexers' search mesh (iroh-gossip's HyParView + PlumTree)
//!   record.rs   signed peer and provider records, the record store, this peer's own record
//!   identity.rs, time.rs, rng.rs, config.rs   shared basics
//! ```
//!
//! Every machine takes its inputs as method calls carrying `now`, emits its own output enum
//! (`NodeOut`, `IndexerOut`, `DhtOut`: send, learn an address, close, event, a request to another
//! machine) into one sink passed in, a `Vec<Action>` that lifts each with `From`, and reports its
//! next deadline with `poll_timeout` (timers are deadlines handed back as `Input::Timeout`). The
//! router executes sends through the link, forwards requests between machines, and turns the rest
//! into [`Output`]s. The link, the lowest layer, writes transport [`Output`]s itself.
//!
//! On the wire, a variant of [`wire::Envelope`] names the machine that serves the requests it
//! carries, and a reply comes back in its request's variant: the router hands it to the machine
//! that asked, so no machine reads another's request ids.
//!
//! ```text
//! Envelope ─┬─ Link(LinkMessage)        Hello, HelloReply, HelloProof(With)      → link
//!           ├─ Indexer(IndexerMessage)  requests (Heartbeat, Leave, Candidates,   → indexer
//!           │                           Publish, GetRecord); replies and Refused  → node
//!           ├─ Node(NodeMessage)        WitnessQuery, WitnessReport               → node
//!           ├─ Dht(DhtMessage)          requests (behind the indexer's gate);     → indexer → dht
//!           │                           replies and Refused                       → dht
//!           └─ Search(SearchMessage)    Request, Cancel (behind the gate);        → indexer → search
//!                                       everything else                           → search
//! ```
//!
//! ## Adding a mechanism
//!
//! 1. a folder `proto/<name>/` with a module doc that explains the protocol and cites the seed;
//! 2. its message enum in `<name>/messages.rs`, and an [`wire::Envelope`] variant for it (bump
//!    [`wire::WIRE_VERSION`], add its kinds to [`wire::KINDS`]);
//! 3. its machine: inputs as methods taking `now`, its own output enum emitted into the sink
//!    (`From<…Out> for Action`), `poll_timeout` and `handle_timeout`, randomness from a [`DetRng`]
//!    forked from the peer's seed;
//! 4. one router arm in `peer/` for its envelope variant, and `From` impls lifting its messages
//!    into the envelope;
//! 5. its `Config` fields with the seed's defaults, each documented with where it comes from;
//! 6. the events it reports, and a simulator workload and report section that exercise it.
//!
//! ## Driving a peer
//!
//! ```
//! use ocd_core::proto::*;
//! let setup = PeerSetup::new(Keypair::derive(1, "doc"), [7; 32], Roles::NODE);
//! let mut peer = Peer::new(setup, Timestamp(1_000));
//! peer.handle(Input::Timeout, Timestamp(1_000));
//! while let Some(out) = peer.poll_output() {
//!     // execute `out`: send, connect, close, or report an event
//!     let _ = out;
//! }
//! let _next_wake = peer.poll_timeout();
//! ```

mod action;
mod app;
pub mod bridge;
mod config;
mod dht;
mod durable;
mod identity;
mod indexer;
mod link;
mod node;
mod peer;
mod record;
mod rng;
mod search;
mod seeded;
mod time;
pub mod wire;

#[cfg(feature = "internals")]
pub mod internals;

pub(crate) use action::Action;
#[cfg(feature = "internals")]
pub use action::Sink;
pub use app::{
    Abandon, AppProtocol, AppRefusal, DeliveryClass, InboxEntry, MessageId, NewMessage, PeerBook, QueueView,
    QueuedMessage, Relation, SendRefusal, Target,
};
pub use config::{Config, ConfigError};
pub use dht::DhtStats;
pub use durable::{Applied, DidBinding, Forget, MemoryStore, Persist, ReceivedIds, Restored};
pub use identity::{Addr, Did, IdentityError, Keypair, PeerAddr, PeerId, SigCheck, SigMemoStats, Signature};
pub use indexer::{KnownIndexer, SessionView};
pub use link::hello_mac;
pub use node::{EntryState, PoolEntryView, ScoreFactors};
pub use peer::{DhtView, IndexerView, LinkView, Peer, PeerSetup, PoolView, Roles};
pub use record::{MAX_ADDRS, MAX_NAME_LEN, PeerRecord, ProviderRecord, RecordBody, RecordError, RecordKey};
pub use rng::DetRng;
pub use search::{MeshStats, QueryError, Referenced, SearchEnd, SearchQuery};
pub use time::Timestamp;
pub use wire::{Envelope, RefuseReason, RequestId, StoreRefusal, WireError};

use std::time::Duration;

/// Something that happened outside the core, handed to [`Peer::handle`] (serialisable: a journal
/// records them).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Input {
    /// A transport connection to `peer` is established (the id is authenticated by the transport).
    ConnectionUp {
        /// The remote peer.
        peer: PeerId,
        /// Its transport address as seen by us, if known.
        addr: Option<Addr>,
        /// Whether we dialled it.
        outbound: bool,
    },
    /// The connection to `peer` is gone (closed, reset, timed out).
    ConnectionDown {
        /// The remote peer.
        peer: PeerId,
    },
    /// Dialling `peer` failed; messages queued for it are dropped.
    ConnectFailed {
        /// The peer that could not be reached.
        peer: PeerId,
    },
    /// A decoded message from an authenticated peer.
    Received {
        /// The transport-authenticated sender.
        from: PeerId,
        /// The message.
        message: Envelope,
    },
    /// The deadline returned by [`Peer::poll_timeout`] has passed.
    Timeout,
    /// A request from the local application.
    Command(Command),
    /// Durable state read back by the host at start, before any command.
    Restored(Restored),
}

/// Requests from the local application.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// Leave every indexer politely and close all connections (graceful shutdown).
    Shutdown,
    /// Find a peer's record by DID or peer id; answered by [`Event::LookupDone`] with the same id.
    Lookup {
        /// Chosen by the caller, echoed in the answer.
        id: u64,
        /// What to find.
        key: RecordKey,
    },
    /// Search the federation for peers (DESIGN §7); hits come as [`Event::SearchHit`] and the end
    /// as [`Event::SearchDone`], with the same id. A newer search of the same `user` cancels this one.
    Search {
        /// Chosen by the caller, echoed in the events.
        id: u64,
        /// Whose search (one active search per user).
        user: String,
        /// What to find.
        query: SearchQuery,
    },
    /// A resource search of type `all` (DESIGN §9): `request` (opaque, the bridge's) goes to our
    /// referent indexer, over the indexers' search mesh, and from each indexer to the nodes that
    /// reference it ([`Event::ResourceSearchAsked`] there); their apps answer us directly with
    /// application messages. Answered by [`Event::ResourceSearchSent`] with the same id.
    ResourceSearch {
        /// Chosen by the caller, echoed in the event.
        id: u64,
        /// Whose search.
        user: String,
        /// The request, for the other nodes' apps.
        request: Vec<u8>,
    },
    /// Cancels `user`'s search, if any ([`Event::SearchDone`] with [`SearchEnd::Cancelled`]).
    CancelSearch {
        /// Whose search.
        user: String,
    },
    /// Send an application message (DESIGN §8): answered by [`Event::AppAccepted`] (after the
    /// persist output of a critical one) or [`Event::AppSendRefused`], with the same id.
    Send {
        /// Chosen by the caller, echoed in the answer.
        id: u64,
        /// The message.
        message: NewMessage,
    },
    /// The local apps set a peer's relation in the peer book (`None` removes it); persisted, and
    /// applied at once (a blocked peer is refused both ways). Ignored by a peer without the node
    /// role, and for a peer the configuration blocks.
    SetRelation {
        /// The peer.
        peer: PeerId,
        /// Its relation.
        relation: Option<Relation>,
    },
}

/// Something the caller must do, drained with [`Peer::poll_output`].
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Open a connection to `peer` (report [`Input::ConnectionUp`] or [`Input::ConnectFailed`]).
    Connect {
        /// Who, and where.
        peer: PeerAddr,
    },
    /// Send `message` to `to` over the established connection.
    Send {
        /// The recipient.
        to: PeerId,
        /// The message.
        message: Envelope,
    },
    /// Close the connection to `peer`.
    Close {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: CloseReason,
    },
    /// Something the application (logs, metrics, the simulator) may want to know.
    Event(Event),
    /// Store this durably, and commit it before executing the outputs that follow.
    Persist(Persist),
    /// This may be deleted from durable storage.
    Forget(Forget),
}

/// Why the core closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer's `Hello` proof was wrong: it does not hold the network key.
    HandshakeFailed,
    /// The `Hello` exchange did not complete in time.
    HandshakeTimeout,
    /// The peer sent something it must not (e.g. a message before the handshake).
    ProtocolViolation,
    /// Unused for too long.
    Idle,
    /// The peer is banned.
    Banned,
    /// Graceful shutdown.
    Shutdown,
    /// We removed this indexer from our pool while it was alive (score, evidence, migration, room
    /// for a seed) and told it so with `Leave`.
    Evicted,
}

/// Why a node stopped counting an indexer as live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// No reply within `response_timeout`.
    Timeout,
    /// The connection could not be set up or was lost with the request in flight.
    Unreachable,
    /// The indexer refused the heartbeat.
    Refused(wire::RefuseReason),
}

/// Why a node removed an indexer from its pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictReason {
    /// The heartbeat failed (immediately when other indexers remain; after
    /// `last_indexer_max_failures` for the last one).
    HeartbeatFailed(FailReason),
    /// The score fell below the dynamic minimum.
    LowScore,
    /// Challenge answers proved the indexer lies about our own session.
    FailedChallenges,
    /// Its fill rate contradicts its own peer count.
    InconsistentFill,
    /// Witnesses contradict what it told us.
    WitnessesDisagree,
    /// It asked us to migrate and we have alternatives.
    Migrated,
    /// Made room for a seed that came back.
    MadeRoomForSeed,
    /// It relayed a forged or altered search hit.
    ForgedHits,
}

/// How an indexer entered a node's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddedVia {
    /// A configured seed.
    Seed,
    /// Suggested in a heartbeat response or refusal.
    Suggestion,
    /// Chosen by candidate consensus after an eviction.
    Consensus,
    /// Found as a provider of the indexer rendezvous key in the DHT.
    Discovery,
}

/// Why an indexer ended a node's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// No heartbeat within `session_expiry`.
    Expired,
    /// The node said `Leave`.
    Left,
    /// The node was banned or its score fell below the threshold.
    Rejected,
    /// The indexer was full and gave the node's slot to a node below its minimum; the node keeps
    /// at least its minimum elsewhere (issue 13).
    Moved,
}

/// What a refused request asked (in [`Event::RequestRefused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// A heartbeat or probe.
    Heartbeat,
    /// Another request of the indexer service: publish, record get, candidates.
    Indexer,
    /// A DHT RPC.
    Dht,
    /// A search.
    Search,
}

/// Events for the application, logs, metrics and the simulator's report.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    // ---- connections ----
    /// A peer proved the network key; its messages are now processed.
    PeerAuthenticated {
        /// The peer.
        peer: PeerId,
    },
    /// A peer failed the `Hello` exchange and was disconnected.
    HandshakeFailed {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: CloseReason,
    },
    // ---- node role ----
    /// An indexer joined the pool (not yet live until it answers).
    IndexerAdded {
        /// The indexer.
        indexer: PeerId,
        /// How it was found.
        via: AddedVia,
    },
    /// The pool sent a heartbeat or probe to `indexer`.
    HeartbeatSent {
        /// The indexer.
        indexer: PeerId,
    },
    /// `indexer` refused one of our heartbeats or probes.
    HeartbeatRefused {
        /// The indexer.
        indexer: PeerId,
        /// Why.
        reason: wire::RefuseReason,
    },
    /// An indexer answered a heartbeat and now counts as live.
    IndexerLive {
        /// The indexer.
        indexer: PeerId,
    },
    /// A seed stopped answering; it stays in the pool, marked down, and is retried with back-off.
    IndexerDown {
        /// The seed.
        indexer: PeerId,
        /// Why.
        reason: FailReason,
    },
    /// An indexer was removed from the pool.
    IndexerEvicted {
        /// The indexer.
        indexer: PeerId,
        /// Why.
        reason: EvictReason,
    },
    /// A candidate-consensus round ended.
    ConsensusFinished {
        /// Candidates received from the voters.
        candidates: usize,
        /// Candidates admitted to the pool.
        admitted: usize,
    },
    /// No live indexer: the seeds are being retried.
    SeedRecovery {
        /// Attempt number, from 1.
        attempt: u32,
        /// Delay before the next attempt.
        next_in: Duration,
    },
    // ---- indexer role ----
    /// A node's session was admitted.
    SessionOpened {
        /// The node.
        node: PeerId,
    },
    /// A node's session ended.
    SessionClosed {
        /// The node.
        node: PeerId,
        /// Why.
        reason: SessionEnd,
    },
    /// An indexer got a heartbeat or probe from `node` (before admission).
    HeartbeatReceived {
        /// The sender.
        node: PeerId,
    },
    /// A request was refused.
    RequestRefused {
        /// The requester.
        peer: PeerId,
        /// What it asked.
        request: RequestKind,
        /// Why.
        reason: wire::RefuseReason,
    },
    /// A peer received strikes.
    PeerStruck {
        /// The peer.
        peer: PeerId,
        /// Its strike count now.
        strikes: u32,
    },
    /// A peer claimed another DID than the one bound to its key; refused without strikes.
    DidChangeRefused {
        /// The peer.
        peer: PeerId,
        /// The DID bound to its key.
        bound: Did,
        /// The DID it claimed.
        claimed: Did,
    },
    /// A peer was banned.
    PeerBanned {
        /// The peer.
        peer: PeerId,
        /// Until when.
        until: Timestamp,
    },
    // ---- records and DHT ----
    /// A [`Command::Lookup`] finished. `record` is verified (signature, expiry, key) by this peer.
    LookupDone {
        /// The command's id.
        id: u64,
        /// What was looked up.
        key: RecordKey,
        /// The verified record, or `None` when it was not found.
        record: Option<PeerRecord>,
        /// DHT hops the answering indexer needed (0: it held the record).
        hops: u32,
        /// Indexers asked by this peer (1 unless one failed or had nothing).
        attempts: u32,
    },
    /// An indexer accepted a record into its store (new owner, or a newer record of one).
    RecordStored {
        /// The record's owner.
        owner: PeerId,
        /// The record's DID.
        did: Did,
        /// Who handed it over (the owner itself, or a replicating indexer).
        from: PeerId,
    },
    // ---- search ----
    /// A verified, new hit of search `id`.
    SearchHit {
        /// The command's id.
        id: u64,
        /// The hit: a record verified by this node and matching the query.
        record: PeerRecord,
        /// The indexer that relayed it.
        from: PeerId,
    },
    /// Search `id` ended.
    SearchDone {
        /// The command's id.
        id: u64,
        /// Distinct hits delivered.
        hits: u32,
        /// Why it ended.
        end: SearchEnd,
    },
    /// This indexer started emitting a node's search.
    SearchEmitted {
        /// The node.
        node: PeerId,
        /// Hits from this indexer's own referenced records.
        local_hits: u32,
    },
    /// A forged, altered or unrelated search hit was dropped (its sender is struck or distrusted).
    ForgedHitDropped {
        /// Who sent it.
        from: PeerId,
        /// The record's claimed owner.
        owner: PeerId,
    },
    /// A [`Command::ResourceSearch`] was sent to `via` (`None`: no live indexer, nothing sent).
    ResourceSearchSent {
        /// The command's id.
        id: u64,
        /// The indexer it went to.
        via: Option<PeerId>,
    },
    /// Another node's resource search reached this node, through its indexer `via`: for its apps.
    ResourceSearchAsked {
        /// The node that asked (its indexer vouches for it).
        requester: PeerId,
        /// The requesting user.
        user: String,
        /// The request.
        request: Vec<u8>,
        /// Our indexer that delivered it.
        via: PeerId,
    },
    /// This indexer put a node's resource search to its referenced nodes and on the mesh.
    ResourceSearchEmitted {
        /// The requesting node.
        node: PeerId,
        /// Referenced nodes it was put to here.
        delivered: u32,
    },
    /// A search-mesh neighbour came up or went down.
    MeshNeighbour {
        /// The neighbour.
        peer: PeerId,
        /// Up or down.
        up: bool,
    },
    // ---- application messages ----
    /// A message was accepted for delivery (a critical one is durably queued: its persist output
    /// came first).
    AppAccepted {
        /// The command's id.
        id: u64,
        /// The message's id.
        message: MessageId,
        /// Its class.
        class: DeliveryClass,
    },
    /// A send command was refused.
    AppSendRefused {
        /// The command's id.
        id: u64,
        /// Why.
        reason: SendRefusal,
    },
    /// A message is in its receiver's inbox (acknowledged).
    AppDelivered {
        /// The message.
        message: MessageId,
        /// The receiver.
        to: PeerId,
        /// Attempts it took.
        attempts: u32,
        /// When the application handed it over.
        accepted_at: Timestamp,
    },
    /// A message is attempted again.
    AppRetry {
        /// The message.
        message: MessageId,
        /// This attempt's number (from 2).
        attempt: u32,
    },
    /// A message was given up.
    AppAbandoned {
        /// The message.
        message: MessageId,
        /// Why.
        reason: Abandon,
    },
    /// A new message arrived (its persist output came first, its acknowledgement follows).
    AppReceived {
        /// The message.
        id: MessageId,
        /// What it is.
        protocol: AppProtocol,
    },
    /// A message arrived again; acknowledged, not delivered twice.
    AppDuplicate {
        /// The message.
        id: MessageId,
    },
    /// An incoming message was refused.
    AppIncomingRefused {
        /// The sender.
        from: PeerId,
        /// Why.
        reason: AppRefusal,
    },
    /// An indexer refused a record.
    RecordRejected {
        /// Who handed it over.
        from: PeerId,
        /// The record's claimed owner.
        owner: PeerId,
        /// Why.
        reason: wire::StoreRefusal,
    },
}
