//! Application messages between nodes, with disconnection tolerance (spec D §2.2, §5.6, §7, seed
//! 002; DESIGN §8): OpenCloud peers push resource creations, updates and deletions, verifications,
//! planner requests, "considers" and config events to each other, and a peer that is down gets them
//! later. The seed lost in-flight critical messages (B29, B30), treated unknown protocols as
//! critical (B27), had no bound (B28) and counted a successful stream write as delivery. Here:
//!
//! * **Ids and acknowledgement.** Every message has an id: the sender's peer id, an *epoch* (drawn
//!   when the sender's durable state is first created, so a sender that lost its disk never reuses
//!   an id) and a sequence number kept durably (reserved in blocks). The receiver appends the
//!   message to its durable inbox — [`Output::Persist`](crate::proto::Output::Persist), which the
//!   host commits before it executes the outputs that follow — and only then acknowledges. The
//!   sender forgets the message only on that acknowledgement. Duplicates are recognised by id,
//!   without a time window: per sender epoch, a *floor* (every sequence below it is settled; each
//!   message carries the sender's current floor) and the sequences received above it.
//! * **Classes** are explicit per protocol ([`AppProtocol::class`]; no default, B27): *critical*
//!   (`create`, `update`, `delete`) is retried every `dnt_retry_interval` (15 s) until delivered
//!   and kept durably; *moderate* (`verify`, `planner`, `considers`, `admiralty-config`,
//!   `minio-config`) is retried at most `dnt_moderate_retries` (3) times; `search` is never retried.
//! * **The DNT queue** is bounded in total and per destination, with a clear refusal when full. A
//!   destination is a peer id or a DID, resolved through the DHT before every attempt (the seed
//!   retried the stored address forever). Back-off is per destination: when one message to a
//!   destination fails, all of them wait for the next retry, and the next attempt sends the oldest
//!   one first; the others follow its acknowledgement.
//! * **Receiving.** Only from known peers — a session with us, a trusted peer (the peer book), or a
//!   valid record of the sender (carried in the message) — and never from a blocked one;
//!   size-capped.
//!
//! ## Files
//!
//! `mod.rs` the machine and its durable types · `outbox.rs` sending, the DNT queue · `inbox.rs`
//! receiving and duplicates · `messages.rs` its messages.

use crate::proto::action::Sink;
use crate::proto::config::Config;
use crate::proto::durable::{Forget, Persist, Restored};
use crate::proto::identity::{Did, PeerAddr, PeerId, SigCheck};
use crate::proto::record::{PeerRecord, RecordKey};
use crate::proto::rng::DetRng;
use crate::proto::time::Timestamp;
use crate::proto::wire::Envelope;
use crate::proto::{Action, Event};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

mod book;
mod inbox;
pub(crate) mod messages;
mod outbox;
#[cfg(test)]
mod tests;

pub use book::{PeerBook, Relation};
pub use messages::{AppMessage, AppRefusal, Deliver};

/// The application protocols (DESIGN §8, spec D §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AppProtocol {
    /// A resource was created (`/opencloud/resource/create/1.0`).
    Create,
    /// A resource was updated.
    Update,
    /// A resource was deleted.
    Delete,
    /// Verify a resource.
    Verify,
    /// A planner request.
    Planner,
    /// "Considers" a resource.
    Considers,
    /// Admiralty configuration.
    AdmiraltyConfig,
    /// MinIO configuration.
    MinioConfig,
    /// A resource search (never retried).
    Search,
}

/// How hard a message is pushed (the seed's DNT levels, seed 002 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeliveryClass {
    /// Retried until delivered, kept durably.
    Critical,
    /// Retried at most `dnt_moderate_retries` times.
    Moderate,
    /// Sent once.
    None,
}

impl AppProtocol {
    /// Every protocol, in order.
    pub const ALL: [AppProtocol; 9] = [
        AppProtocol::Create,
        AppProtocol::Update,
        AppProtocol::Delete,
        AppProtocol::Verify,
        AppProtocol::Planner,
        AppProtocol::Considers,
        AppProtocol::AdmiraltyConfig,
        AppProtocol::MinioConfig,
        AppProtocol::Search,
    ];

    /// Its delivery class: an explicit table, no default (B27).
    pub fn class(self) -> DeliveryClass {
        match self {
            AppProtocol::Create | AppProtocol::Update | AppProtocol::Delete => DeliveryClass::Critical,
            AppProtocol::Verify
            | AppProtocol::Planner
            | AppProtocol::Considers
            | AppProtocol::AdmiraltyConfig
            | AppProtocol::MinioConfig => DeliveryClass::Moderate,
            AppProtocol::Search => DeliveryClass::None,
        }
    }

    /// Its name on the command line and in JSON (`create`, …, `admiralty-config`).
    pub fn name(self) -> &'static str {
        match self {
            AppProtocol::Create => "create",
            AppProtocol::Update => "update",
            AppProtocol::Delete => "delete",
            AppProtocol::Verify => "verify",
            AppProtocol::Planner => "planner",
            AppProtocol::Considers => "considers",
            AppProtocol::AdmiraltyConfig => "admiralty-config",
            AppProtocol::MinioConfig => "minio-config",
            AppProtocol::Search => "search",
        }
    }

    /// The protocol with that name.
    pub fn parse(name: &str) -> Option<AppProtocol> {
        AppProtocol::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl DeliveryClass {
    /// `critical`, `moderate` or `none`.
    pub fn name(self) -> &'static str {
        match self {
            DeliveryClass::Critical => "critical",
            DeliveryClass::Moderate => "moderate",
            DeliveryClass::None => "none",
        }
    }
}

/// A message's id: sender, sender epoch, sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId {
    /// The sender.
    pub sender: PeerId,
    /// The sender's durable-state epoch.
    pub epoch: u64,
    /// Sequence number within the epoch, from 1.
    pub seq: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:016x}-{}", self.sender, self.epoch, self.seq)
    }
}

/// Where a message goes: a peer id, or a DID resolved through the DHT.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Target {
    /// A peer id.
    Peer(PeerId),
    /// A DID.
    Did(Did),
}

impl Target {
    fn key(&self) -> RecordKey {
        match self {
            Target::Peer(p) => RecordKey::Peer(*p),
            Target::Did(d) => RecordKey::Did(d.clone()),
        }
    }

    fn matches(&self, record: &PeerRecord) -> bool {
        match self {
            Target::Peer(p) => record.body.peer_id == *p,
            Target::Did(d) => record.body.did == *d,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Peer(p) => write!(f, "{p}"),
            Target::Did(d) => write!(f, "{d}"),
        }
    }
}

/// A message accepted for delivery; critical ones are persisted until acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Its id.
    pub id: MessageId,
    /// Its destination.
    pub to: Target,
    /// What it is.
    pub protocol: AppProtocol,
    /// OpenCloud datatype code.
    pub datatype: Option<i64>,
    /// OpenCloud user.
    pub user: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// When the application handed it over.
    pub accepted_at: Timestamp,
}

/// A message received, as the inbox keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// Its id (the sender is `id.sender`).
    pub id: MessageId,
    /// The sender's DID, when its record was known.
    pub from_did: Option<Did>,
    /// What it is.
    pub protocol: AppProtocol,
    /// OpenCloud datatype code.
    pub datatype: Option<i64>,
    /// OpenCloud user.
    pub user: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// When it arrived.
    pub received_at: Timestamp,
}

/// Why a send command was refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendRefusal {
    /// The payload or user is larger than `app_max_payload`.
    TooLarge,
    /// The queue holds `dnt_queue_max` messages.
    QueueFull,
    /// The queue holds `dnt_queue_max_per_destination` messages for this destination.
    DestinationFull,
    /// The destination is this peer, or a blocked one.
    BadDestination,
    /// This daemon does not play the node role.
    NotANode,
}

/// Why a message was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Abandon {
    /// A moderate message failed its retries, or a `search` message its only attempt.
    Retries,
    /// The receiver refused it for good.
    Refused(AppRefusal),
}

/// What the application-message machine does: its outputs, lifted into the router's [`Action`].
#[derive(Clone, Debug, PartialEq)]
pub enum AppOut {
    /// Send to a peer.
    Send {
        /// The recipient.
        to: PeerId,
        /// The message.
        message: Envelope,
    },
    /// Remember how to reach a peer (a resolved destination).
    Learn(PeerAddr),
    /// Report an event.
    Event(Event),
    /// Store durably before executing what follows.
    Persist(Persist),
    /// Delete from durable storage.
    Forget(Forget),
    /// Find `key`'s record through the DHT; the answer comes back to [`AppService::on_resolved`].
    Resolve {
        /// Echoed in the answer.
        token: u64,
        /// What to find.
        key: RecordKey,
    },
}

/// The application-message machine of a node.
#[derive(Debug)]
pub struct AppService {
    config: Arc<Config>,
    outbox: outbox::Outbox,
    inbox: inbox::Inbox,
    book: PeerBook,
}

impl AppService {
    /// A machine with a fresh epoch (drawn from `rng` and `now`); [`AppService::restore`] replaces
    /// it with the stored one.
    pub fn new(config: impl Into<Arc<Config>>, me: PeerId, mut rng: DetRng, now: Timestamp) -> AppService {
        let config = config.into();
        let epoch = rng.next_u64() ^ now.as_millis();
        let book = PeerBook::from_config(&config);
        AppService { outbox: outbox::Outbox::new(me, epoch), inbox: inbox::Inbox::default(), config, book }
    }

    /// Checks the signatures of the records senders attach through `sigs` (the same results: see
    /// [`SigCheck`]).
    pub fn set_sig_check(&mut self, sigs: SigCheck) {
        self.inbox.sigs = sigs;
    }

    /// Durable state from the host, before any command.
    pub fn restore(&mut self, r: Restored, now: Timestamp, out: &mut Vec<Action>) {
        let mut book = PeerBook::default();
        for (peer, relation) in &r.relations {
            book.set(*peer, Some(*relation));
        }
        book.apply_config(&self.config);
        self.book = book;
        self.inbox.restore(r.received);
        self.outbox.restore(r.sequence, r.queue, now, out);
    }

    /// The application sends a message (`id` is the caller's, echoed in the events).
    #[allow(clippy::too_many_arguments)]
    pub fn send(&mut self, id: u64, message: NewMessage, now: Timestamp, out: &mut Vec<Action>) {
        self.outbox.send(&self.config, &self.book, id, message, now, out);
    }

    /// The apps set a peer's relation (`None` removes it); persisted when it changes. A peer the
    /// configuration blocks stays blocked.
    pub fn set_relation(&mut self, peer: PeerId, relation: Option<Relation>, out: &mut Vec<Action>) {
        if self.config.blocked_peers.contains(&peer) {
            return;
        }
        if self.book.set(peer, relation) {
            emit(out, AppOut::Persist(Persist::Relation { peer, relation }));
        }
    }

    /// The peer book.
    pub fn book(&self) -> &PeerBook {
        &self.book
    }

    /// A message of this mechanism from the authenticated `from`; `known` says whether the host
    /// side knows the sender (a session or the DHT); `record` is our own, attached to messages.
    pub fn on_message(&mut self, from: PeerId, m: AppMessage, known: bool, now: Timestamp, out: &mut Vec<Action>) {
        match m {
            AppMessage::Deliver(d) => self.inbox.on_deliver(&self.config, &self.book, from, *d, known, now, out),
            AppMessage::Ack { id } => self.outbox.on_ack(&self.config, from, id, now, out),
            AppMessage::Refused { id, reason } => self.outbox.on_refused(&self.config, from, id, reason, now, out),
        }
    }

    /// The answer to [`AppOut::Resolve`]; `asked` is false when no indexer could be asked (none
    /// live yet): that is no failure of the destination, and it is tried again shortly.
    pub fn on_resolved(
        &mut self,
        token: u64,
        record: Option<PeerRecord>,
        asked: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        self.outbox.on_resolved(&self.config, token, (record, asked), now, out);
    }

    /// `peer` cannot be reached.
    pub fn on_unreachable(&mut self, peer: PeerId, now: Timestamp, out: &mut Vec<Action>) {
        self.outbox.on_unreachable(&self.config, peer, now, out);
    }

    /// Sets our own record, attached to outgoing messages.
    pub fn set_record(&mut self, record: PeerRecord) {
        self.outbox.set_record(record);
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.outbox.poll_timeout()
    }

    /// Handles due deadlines.
    pub fn handle_timeout(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        self.outbox.handle_timeout(&self.config, now, out);
    }

    /// The queue, for status: per class the count and the oldest acceptance time, and per
    /// destination the count.
    pub fn queue(&self) -> QueueView {
        self.outbox.view()
    }
}

/// A message the application hands over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// Destination.
    pub to: Target,
    /// What it is.
    pub protocol: AppProtocol,
    /// OpenCloud datatype code.
    pub datatype: Option<i64>,
    /// OpenCloud user.
    pub user: String,
    /// Payload.
    pub payload: Vec<u8>,
}

/// The DNT queue as status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueView {
    /// Per class: messages queued and the oldest one's acceptance time.
    pub classes: Vec<(DeliveryClass, usize, Option<Timestamp>)>,
    /// Per destination: messages queued, the next attempt, and failed attempts in a row.
    pub destinations: Vec<(Target, usize, Option<Timestamp>, u32)>,
    /// The sender epoch and next sequence number.
    pub epoch: u64,
    /// Next sequence number.
    pub next_seq: u64,
}

impl From<AppMessage> for Envelope {
    fn from(m: AppMessage) -> Self {
        Envelope::App(m)
    }
}

fn emit(out: &mut Vec<Action>, o: AppOut) {
    out.emit(o);
}
