//! The DHT's RPCs (Kademlia's `FIND_NODE`, `FIND_VALUE`, `STORE`, `ADD_PROVIDER`,
//! `GET_PROVIDERS`), carried in [`Envelope::Dht`](crate::proto::wire::Envelope::Dht). Replies and
//! refusals come back in the same variant, so they can only reach the DHT machine.

use super::kad::Key;
use crate::proto::identity::PeerAddr;
use crate::proto::record::{PeerRecord, ProviderRecord, RecordKey};
use crate::proto::wire::{Refused, RequestId};
use serde::{Deserialize, Serialize};

/// DHT requests and replies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DhtMessage {
    /// The peers closest to a key that the receiver knows.
    FindNode(FindNode),
    /// Reply to [`FindNode`].
    Nodes(Nodes),
    /// The record under a key, or the closest peers known.
    FindValue(FindValue),
    /// Reply to [`FindValue`].
    Value(Value),
    /// Store this record (the receiver validates it).
    Store(Store),
    /// Announce a provider of a key (the receiver validates the signed provider record).
    AddProvider(AddProvider),
    /// Answer to a refused write ([`Store`], [`StoreBatch`], [`AddProvider`]); writes are one-way
    /// and a write that was applied is not answered.
    StoreAck(StoreAck),
    /// Providers of a key, and the closest peers known.
    GetProviders(GetProviders),
    /// Reply to [`GetProviders`].
    Providers(Providers),
    /// A DHT request refused by the receiver's admission gate.
    Refused(Refused),
    /// Store these records (each validated like a [`Store`]): refreshed versions of records the
    /// receiver replicates, batched by their replicator. Answered, when refused, by one
    /// [`StoreAck`] naming the first refusal.
    StoreBatch(StoreBatch),
}

impl DhtMessage {
    /// The request id and the sender's self-declared `server` flag of a request (`None` for
    /// replies). A provider record is signed by its sender, who announces itself as a server.
    pub fn request(&self) -> Option<(RequestId, bool)> {
        match self {
            DhtMessage::FindNode(x) => Some((x.req, x.server)),
            DhtMessage::FindValue(x) => Some((x.req, x.server)),
            DhtMessage::GetProviders(x) => Some((x.req, x.server)),
            DhtMessage::Store(x) => Some((x.req, x.server)),
            DhtMessage::StoreBatch(x) => Some((x.req, x.server)),
            DhtMessage::AddProvider(x) => Some((x.req, true)),
            _ => None,
        }
    }

    /// The request id a reply or refusal echoes (`None` for requests).
    pub fn reply_to(&self) -> Option<RequestId> {
        match self {
            DhtMessage::Nodes(x) => Some(x.req),
            DhtMessage::Value(x) => Some(x.req),
            DhtMessage::Providers(x) => Some(x.req),
            DhtMessage::StoreAck(x) => Some(x.req),
            DhtMessage::Refused(x) => Some(x.req),
            _ => None,
        }
    }
}

/// DHT request: closest peers to `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindNode {
    /// Request id.
    pub req: RequestId,
    /// The point looked up.
    pub target: Key,
    /// The sender serves the DHT (an indexer) and may be added to routing tables.
    pub server: bool,
}

/// Reply to [`FindNode`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nodes {
    /// Echo of the request id.
    pub req: RequestId,
    /// Up to k peers closest to the target.
    pub closer: Vec<PeerAddr>,
}

/// DHT request: the record under `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindValue {
    /// Request id.
    pub req: RequestId,
    /// The key.
    pub key: RecordKey,
    /// The sender serves the DHT.
    pub server: bool,
}

/// Reply to [`FindValue`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Value {
    /// Echo of the request id.
    pub req: RequestId,
    /// The record, if held (the asker verifies it).
    pub record: Option<PeerRecord>,
    /// Up to k peers closest to the key.
    pub closer: Vec<PeerAddr>,
}

/// DHT request: store a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// Request id.
    pub req: RequestId,
    /// The record.
    pub record: PeerRecord,
    /// The sender serves the DHT (a replicating indexer): not counted in the get window.
    pub server: bool,
}

/// DHT request: add a provider of `key`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddProvider {
    /// Request id.
    pub req: RequestId,
    /// The key provided.
    pub key: Key,
    /// The provider's signed announcement (must be the sender's own).
    pub provider: ProviderRecord,
}

/// Why a [`Store`] or [`AddProvider`] was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreRefusal {
    /// Bad signature, expired, malformed.
    Invalid,
    /// The record's DID is bound to another key.
    ForeignDid,
    /// A newer record of the same owner is held.
    Stale,
    /// The receiver does not serve the DHT, or refuses the sender.
    Refused,
}

/// Answer to a refused write ([`Store`], [`StoreBatch`], [`AddProvider`]). Writes are one-way: an
/// applied write is not answered (the transport delivers it), so the writer hears only refusals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreAck {
    /// Echo of the request id.
    pub req: RequestId,
    /// Why the write was refused (`None`, "stored", is never sent and is ignored).
    pub refused: Option<StoreRefusal>,
}

/// DHT request: store several records (refreshed versions, batched by their replicator).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreBatch {
    /// Request id.
    pub req: RequestId,
    /// The records, at most [`MAX_STORE_BATCH`]; more are ignored.
    pub records: Vec<PeerRecord>,
    /// The sender serves the DHT (a replicating indexer).
    pub server: bool,
}

/// Most records a [`StoreBatch`] carries (and a receiver looks at).
pub const MAX_STORE_BATCH: usize = 16;

/// DHT request: providers of `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetProviders {
    /// Request id.
    pub req: RequestId,
    /// The key.
    pub key: Key,
    /// The sender serves the DHT.
    pub server: bool,
}

/// Reply to [`GetProviders`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Providers {
    /// Echo of the request id.
    pub req: RequestId,
    /// Signed provider records held (the asker verifies them).
    pub providers: Vec<ProviderRecord>,
    /// Up to k peers closest to the key.
    pub closer: Vec<PeerAddr>,
}
