//! The search mechanism's messages (spec C §5.7, §15): a node's request to its emitter and the
//! hits streamed back, responders' hits to the emitter, and the indexers' search mesh.

use super::SearchQuery;
use crate::proto::identity::PeerId;
use crate::proto::record::PeerRecord;
use crate::proto::wire::{Refused, RequestId};
use serde::{Deserialize, Serialize};

/// One gossip message of the indexers' search mesh (iroh-gossip's HyParView + PlumTree).
pub type MeshMessage = iroh_gossip::proto::topic::Message<PeerId>;

/// Everything the search mechanism says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SearchMessage {
    /// Node → emitter: start a search (the seed's `SearchPeerRequest`).
    Request(SearchRequest),
    /// Node → emitter: stop search `req` (a newer search of the same user, or cancelled).
    Cancel {
        /// The request being cancelled.
        req: RequestId,
    },
    /// Emitter → node: new verified hits of search `req` (the seed's `SearchPeerResult`).
    Hits(SearchHits),
    /// Emitter → node: search `req` ended (nothing new for `search_timeout`).
    Done {
        /// The finished request.
        req: RequestId,
    },
    /// Emitter → node: the request was refused.
    Refused(Refused),
    /// Responder → emitter: matching referenced records for one of its mesh queries.
    Found(SearchFound),
    /// Indexer ↔ indexer: the search mesh.
    Mesh(MeshMessage),
    /// Node → its indexer: put this resource search to every node's apps (type `all`).
    Ask(ResourceAsk),
    /// Indexer → a node that references it: another node's resource search, for its apps.
    Asked(ResourceAsked),
}

impl SearchMessage {
    /// Whether it is a node's request to an indexer (which passes the indexer's gate).
    pub fn is_request(&self) -> bool {
        matches!(self, SearchMessage::Request(_) | SearchMessage::Cancel { .. } | SearchMessage::Ask(_))
    }
}

/// A node's search.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchRequest {
    /// Request id, echoed in every reply.
    pub req: RequestId,
    /// What to find.
    pub query: SearchQuery,
}

/// Hits relayed to the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHits {
    /// The search.
    pub req: RequestId,
    /// Signed records (verified by the emitter, verified again by the node).
    pub records: Vec<PeerRecord>,
}

/// A responder's hits for a mesh query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchFound {
    /// The emitter's number for the query (from the mesh query).
    pub query: u64,
    /// Matching referenced records.
    pub records: Vec<PeerRecord>,
}

/// A node's resource search of type `all` (DESIGN §9): opaque to ocd (the bridge's request),
/// carried over the search mesh to every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceAsk {
    /// The node's request id (a refusal names it).
    pub req: RequestId,
    /// The requesting user.
    pub user: String,
    /// The request, for the apps.
    pub request: Vec<u8>,
}

/// A resource search reaching a node: its apps answer the requester directly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceAsked {
    /// The emitting indexer and its number for the search: the id a node that hears it from two
    /// indexers (it just changed referent) answers once.
    pub origin: (PeerId, u64),
    /// The node that asked (the emitting indexer vouches for it: its session).
    pub requester: PeerId,
    /// The requesting user.
    pub user: String,
    /// The request, for the apps.
    pub request: Vec<u8>,
}
