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
//! A [`Peer`] is one daemon. It owns one sub-machine per mechanism and only routes between them:
//!
//! * [`connections`] — the `Hello` exchange proving the network key, per-peer send queues while a
//!   connection is set up, the address book, idle and handshake timeouts;
//! * [`pool`] — the **node role**: a scored pool of indexers kept alive with heartbeats,
//!   challenges and witnesses, eviction, candidate consensus and seed recovery (spec A §6, B §3);
//! * [`indexer`] — the **indexer role**: admission ([`admission`]: burst guard, rate limits,
//!   strikes, bans), sessions keyed by the authenticated peer id, heartbeat responses, offload and
//!   the candidates responder (spec A §7, B §9, C §9–§13);
//! * [`score`] — the node-side 7-factor indexer score and its helpers;
//! * [`record`] — signed, self-certifying peer records (used by the record service and DHT);
//! * [`kad`] — the Kademlia routing table the indexers' DHT is built on.
//!
//! Sub-machines talk to the router through [`Action`]s; the router turns them into [`Output`]s,
//! dialling peers and queueing messages as needed.
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

pub mod admission;
pub mod config;
pub mod connections;
pub mod dht;
pub mod identity;
pub mod indexer;
pub mod kad;
pub mod lookup;
mod peer;
pub mod pool;
pub mod record;
pub mod rng;
pub mod score;
pub mod time;
pub mod wire;

pub use config::{Config, ConfigError};
pub use identity::{Addr, Did, IdentityError, Keypair, PeerAddr, PeerId, Signature};
pub use peer::{Peer, PeerSetup, Roles};
pub use record::{PeerRecord, ProviderRecord, RecordError};
pub use rng::DetRng;
pub use time::Timestamp;
pub use wire::{Message, RecordKey, RequestId, WireError};

use std::time::Duration;

/// Something that happened outside the core, handed to [`Peer::handle`].
#[derive(Clone, Debug, PartialEq)]
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
        message: Message,
    },
    /// The deadline returned by [`Peer::poll_timeout`] has passed.
    Timeout,
    /// A request from the local application.
    Command(Command),
}

/// Requests from the local application.
#[derive(Clone, Debug, PartialEq)]
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
        message: Message,
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
}

/// What sub-machines ask the router to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send to a peer; the router dials it from the address book if there is no connection.
    Send {
        /// The recipient.
        to: PeerId,
        /// The message.
        message: Message,
    },
    /// Remember how to reach a peer (seeds, suggestions, candidates, witnesses).
    Learn(PeerAddr),
    /// Close the connection to a peer.
    Close {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: CloseReason,
    },
    /// Report an event.
    Event(Event),
    /// The node's pool wants more indexers: discover providers of the indexer rendezvous key
    /// in the DHT (answered with [`IndexerPool::on_providers`](pool::IndexerPool::on_providers)).
    DiscoverIndexers {
        /// How many providers to find.
        want: usize,
    },
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
    /// for a seed) and told it so with [`Message::Leave`].
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
    /// The node said [`Message::Leave`].
    Left,
    /// The node was banned or its score fell below the threshold.
    Rejected,
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
    /// A request was refused.
    RequestRefused {
        /// The requester.
        peer: PeerId,
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
