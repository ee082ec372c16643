//! The indexer service's messages, carried in
//! [`Envelope::Indexer`](crate::proto::wire::Envelope::Indexer): requests from nodes (heartbeats,
//! leave, candidates, publish, record gets) and the indexer's replies, which come back in the same
//! variant to the node machine that asked.

use crate::proto::identity::{Did, PeerAddr, PeerId};
use crate::proto::record::{PeerRecord, RecordKey};
use crate::proto::time::Timestamp;
use crate::proto::wire::{Refused, RequestId};
use serde::{Deserialize, Serialize};

/// Node → indexer requests and the indexer's replies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum IndexerMessage {
    /// Node → indexer liveness proof, challenges and pool hints (also a one-shot probe). Boxed,
    /// as is its answer: the two are two thirds of all traffic but three times the size of every
    /// other message, and every envelope is moved several times between machine and wire.
    Heartbeat(Box<Heartbeat>),
    /// Indexer → node raw metrics and challenge answers.
    HeartbeatResponse(Box<HeartbeatResponse>),
    /// A request refused, with the reason (and where to go instead, when known).
    Refused(Refused),
    /// Node → indexer: "you are no longer in my pool"; frees the session at once.
    Leave,
    /// Node → indexer: "give me replacement indexers" after an eviction.
    CandidatesRequest(CandidatesRequest),
    /// Reply to a [`CandidatesRequest`].
    CandidatesResponse(CandidatesResponse),
    /// Node → indexer: store my signed record (also carried by heartbeats when it changed).
    Publish(Publish),
    /// Reply to a [`Publish`]: the expiry of the sender's record the indexer now holds.
    Published(Published),
    /// Node → indexer: find a record by DID or peer id (the indexer resolves it in the DHT).
    GetRecord(GetRecord),
    /// Reply to a [`GetRecord`]: the record, which the node verifies itself.
    RecordReply(RecordReply),
}

impl IndexerMessage {
    /// Whether this is a request to an indexer (as opposed to a reply to a node).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            IndexerMessage::Heartbeat(_)
                | IndexerMessage::Leave
                | IndexerMessage::CandidatesRequest(_)
                | IndexerMessage::Publish(_)
                | IndexerMessage::GetRecord(_)
        )
    }

    /// The request id of a request (`None` for `Leave` and for replies).
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            IndexerMessage::Heartbeat(m) => Some(m.req),
            IndexerMessage::CandidatesRequest(m) => Some(m.req),
            IndexerMessage::Publish(m) => Some(m.req),
            IndexerMessage::GetRecord(m) => Some(m.req),
            _ => None,
        }
    }
}

/// Whether a heartbeat opens/keeps a session or only measures the indexer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeartbeatKind {
    /// A regular heartbeat: creates or refreshes the sender's session.
    Regular,
    /// A one-shot probe during candidate consensus: answered with metrics, creates no session and
    /// does not use the burst guard (seed B §18.11), but counts in the sender's rate window.
    Probe,
}

/// Node → indexer heartbeat (A §3.1). The sender's identity is the authenticated connection peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Request id echoed in the reply.
    pub req: RequestId,
    /// Regular heartbeat or probe.
    pub kind: HeartbeatKind,
    /// How many more indexers the node wants (`max − pool`, floored at 0).
    pub need: u16,
    /// Where the sender's pool stands without the recipient, so a full indexer serves nodes below
    /// their minimum first and moves only nodes that keep their minimum elsewhere (issue 13).
    pub standing: Standing,
    /// This indexer is the node's referent for distributed search (its best-scored indexer).
    pub referent: bool,
    /// The sender is itself an indexer; the receiver may suggest it to others.
    pub is_indexer: bool,
    /// Peer ids to spot-check: the node's own id first, then up to 2 others (A §6.5).
    pub challenges: Vec<PeerId>,
    /// The node's own DID, asked every 5th challenge batch (A §6.5).
    pub challenge_did: Option<Did>,
    /// Ask for witnesses in the reply (sent with challenge batches).
    pub want_witnesses: bool,
    /// The sender's DID, sent until the indexer has acknowledged a session.
    pub did: Option<Did>,
    /// The sender's name, sent with `did`.
    pub name: Option<String>,
    /// The sender's signed record, sent only when the indexer does not hold this version yet
    /// (its last [`HeartbeatResponse::record_expires`] differs).
    pub record: Option<PeerRecord>,
}

impl Heartbeat {
    /// A heartbeat with nothing but its id and kind (no need, challenges, DID or name); fill in
    /// the rest with struct-update syntax.
    pub fn bare(req: RequestId, kind: HeartbeatKind) -> Self {
        Heartbeat {
            req,
            kind,
            need: 0,
            standing: Standing::default(),
            referent: false,
            is_indexer: false,
            challenges: Vec::new(),
            challenge_did: None,
            want_witnesses: false,
            did: None,
            name: None,
            record: None,
        }
    }
}

/// A node's pool as it stands without the indexer it is heartbeating (issue 13): how many *other*
/// indexers count it live, and its minimum. The seed's `need` says how many more a node *wants*;
/// this says whether it *needs* this indexer. A full indexer uses it to admit a node below its
/// minimum by moving one that keeps at least its minimum elsewhere, never one it would leave
/// short (see `indexer/capacity.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// Live indexers in the sender's pool other than the recipient.
    pub live_elsewhere: u16,
    /// Other indexers the sender is joining right now (a heartbeat or probe awaiting its answer
    /// that claimed to be short): they may soon make up its minimum, so it does not claim to be
    /// short to more indexers than it lacks.
    pub joining_elsewhere: u16,
    /// The sender's minimum pool size (`min_indexers`).
    pub min: u16,
}

impl Standing {
    /// Below its minimum without the recipient, counting the indexers it is joining: it needs a
    /// slot there.
    pub fn is_short(&self) -> bool {
        u32::from(self.live_elsewhere) + u32::from(self.joining_elsewhere) < u32::from(self.min)
    }

    /// Keeps at least its minimum, and at least one indexer, without the recipient: it may be
    /// asked to move.
    pub fn can_move(&self) -> bool {
        self.live_elsewhere >= self.min.max(1)
    }

    /// Live indexers it holds elsewhere beyond its minimum.
    pub fn spare(&self) -> u16 {
        self.live_elsewhere.saturating_sub(self.min)
    }
}

/// One challenge answer (A §3.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeEntry {
    /// The challenged peer.
    pub peer: PeerId,
    /// Whether the indexer has a live session for it.
    pub found: bool,
    /// When it last heard from it.
    pub last_seen: Option<Timestamp>,
}

/// Indexer → node reply: raw metrics only, no pre-cooked score (A §3.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Echo of the heartbeat's id.
    pub req: RequestId,
    /// Heartbeating nodes / capacity.
    pub fill_rate: f64,
    /// Heartbeating nodes.
    pub peer_count: u32,
    /// Capacity.
    pub max_nodes: u32,
    /// When this indexer process started; should never change while it runs.
    pub born_at: Timestamp,
    /// Answers to the heartbeat's challenges, in order.
    pub challenges: Vec<ChallengeEntry>,
    /// Answer to `challenge_did`: whether the indexer found that DID in the DHT.
    pub did_found: Option<bool>,
    /// The record the DHT returned for `challenge_did`, for the node to check it is its own.
    pub did_record: Option<PeerRecord>,
    /// The expiry of the sender's record this indexer holds (`None`: none), so the node knows
    /// whether to send its record again.
    pub record_expires: Option<Timestamp>,
    /// Up to 3 other nodes connected to this indexer.
    pub witnesses: Vec<PeerAddr>,
    /// Other indexers worth joining (up to `need`, or 1 when offloading).
    pub suggestions: Vec<PeerAddr>,
    /// The indexer is above its offload threshold and asks this node to move.
    pub suggest_migrate: bool,
}

/// "Give me `count` replacement indexers" (B §3.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidatesRequest {
    /// Request id.
    pub req: RequestId,
    /// How many are wanted (the responder caps it at `max_candidates`).
    pub count: u16,
}

/// Candidate indexers (B §3.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidatesResponse {
    /// Echo of the request id.
    pub req: RequestId,
    /// Other indexers the responder knows.
    pub candidates: Vec<PeerAddr>,
}

/// Node → indexer: store my record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// Request id.
    pub req: RequestId,
    /// The sender's own signed record.
    pub record: PeerRecord,
}

/// Reply to a [`Publish`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Echo of the request id.
    pub req: RequestId,
    /// Expiry of the sender's record now held (`None` if it is still being checked in the DHT).
    pub expires: Option<Timestamp>,
}

/// Node → indexer record lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRecord {
    /// Request id.
    pub req: RequestId,
    /// What to find.
    pub key: RecordKey,
}

/// Reply to a [`GetRecord`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordReply {
    /// Echo of the request id.
    pub req: RequestId,
    /// The record found, unverified: the node checks it.
    pub record: Option<PeerRecord>,
    /// DHT hops the indexer needed (0: it held the record).
    pub hops: u8,
}
