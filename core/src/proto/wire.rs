//! The wire: one versioned `postcard` [`Message`] enum in length-prefixed frames.
//!
//! A frame is `u32` big-endian payload length, then the payload: one version byte
//! ([`WIRE_VERSION`]) followed by the postcard encoding of a [`Message`]. Payloads are at most
//! [`MAX_FRAME_LEN`] bytes. Decoding never panics and never allocates beyond the frame it was given;
//! any error is terminal for the connection it came from (seed bug B9: Go's decoder spun on a
//! sticky syntax error).
//!
//! Every request carries a [`RequestId`] echoed by its reply, so replies — and round-trip times —
//! are matched exactly (seed bug B8: a late reply was consumed as the next heartbeat's).
//!
//! Numbers that come from peers (fill rates, scores) may be NaN or out of range; the state
//! machines sanitise them where they use them.

use super::identity::{Did, PeerAddr, PeerId};
use super::kad::Key;
use super::record::{PeerRecord, ProviderRecord};
use super::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Version byte leading every payload. Bumped on any incompatible change to [`Message`].
pub const WIRE_VERSION: u8 = 2;

/// Largest accepted payload (version byte + message), in bytes.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Errors from decoding frames and messages. Each one closes the connection it came from.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum WireError {
    /// The length prefix announces more than [`MAX_FRAME_LEN`] bytes.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    Oversized(usize),
    /// A zero-length payload.
    #[error("empty frame")]
    Empty,
    /// The version byte is not one this build speaks.
    #[error("unsupported wire version {0}")]
    Version(u8),
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes left after the message inside one frame.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// Matches a reply to its request; unique per sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// Everything peers say to each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message on every connection, both ways: a fresh nonce to prove the network key on.
    Hello(Hello),
    /// Proof of the network key over both peer ids and both nonces.
    HelloProof(HelloProof),
    /// Node → indexer liveness proof, challenges and pool hints (also a one-shot probe).
    Heartbeat(Heartbeat),
    /// Indexer → node raw metrics and challenge answers.
    HeartbeatResponse(HeartbeatResponse),
    /// Any request refused, with the reason (and where to go instead, when known).
    Refused(Refused),
    /// Node → indexer: "you are no longer in my pool"; frees the session at once.
    Leave,
    /// Node → node: "what do you know of indexer X?"
    WitnessQuery(WitnessQuery),
    /// Reply to a [`WitnessQuery`], from the witness's own observations.
    WitnessReport(WitnessReport),
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
    /// DHT: the peers closest to a key that the receiver knows.
    FindNode(FindNode),
    /// Reply to [`FindNode`].
    Nodes(Nodes),
    /// DHT: the record under a key, or the closest peers known.
    FindValue(FindValue),
    /// Reply to [`FindValue`].
    Value(Value),
    /// DHT: store this record (the receiver validates it).
    Store(Store),
    /// DHT: announce a provider of a key (the receiver validates the signed provider record).
    AddProvider(AddProvider),
    /// Reply to [`Store`] and [`AddProvider`].
    StoreAck(StoreAck),
    /// DHT: providers of a key, and the closest peers known.
    GetProviders(GetProviders),
    /// Reply to [`GetProviders`].
    Providers(Providers),
}

impl Message {
    /// A short name for logs and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::HelloProof(_) => "hello_proof",
            Message::Heartbeat(_) => "heartbeat",
            Message::HeartbeatResponse(_) => "heartbeat_response",
            Message::Refused(_) => "refused",
            Message::Leave => "leave",
            Message::WitnessQuery(_) => "witness_query",
            Message::WitnessReport(_) => "witness_report",
            Message::CandidatesRequest(_) => "candidates_request",
            Message::CandidatesResponse(_) => "candidates_response",
            Message::Publish(_) => "publish",
            Message::Published(_) => "published",
            Message::GetRecord(_) => "get_record",
            Message::RecordReply(_) => "record_reply",
            Message::FindNode(_) => "find_node",
            Message::Nodes(_) => "nodes",
            Message::FindValue(_) => "find_value",
            Message::Value(_) => "value",
            Message::Store(_) => "store",
            Message::AddProvider(_) => "add_provider",
            Message::StoreAck(_) => "store_ack",
            Message::GetProviders(_) => "get_providers",
            Message::Providers(_) => "providers",
        }
    }
}

/// Opens the handshake (DESIGN §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Fresh random nonce the peer must prove the network key over.
    pub nonce: [u8; 32],
}

/// Closes the handshake: `mac = BLAKE3-keyed(network_key, "ocd hello v1" ‖ prover ‖ verifier ‖
/// verifier_nonce ‖ prover_nonce)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloProof {
    /// The keyed MAC.
    pub mac: [u8; 32],
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

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The sender is banned.
    Banned,
    /// The sender exceeded its per-window rate.
    RateLimited,
    /// The burst guard is full; retry later.
    Busy,
    /// The indexer is at capacity.
    Full,
    /// The sender's admission score is below the indexer's threshold.
    LowScore,
    /// The receiver does not serve this request (not an indexer).
    NotServed,
    /// The sender is not known to the receiver (no session, no record).
    Unknown,
    /// The record is invalid or claims a DID bound to another key.
    BadRecord,
}

/// A refused request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Echo of the request id.
    pub req: RequestId,
    /// Why.
    pub reason: RefuseReason,
    /// Other indexers to try, when the refusal is about capacity.
    pub suggestions: Vec<PeerAddr>,
}

/// "What do you know of this indexer?" (A §3.5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessQuery {
    /// Request id.
    pub req: RequestId,
    /// The indexer asked about.
    pub indexer: PeerId,
}

/// A witness's own view of an indexer (A §3.5), from its pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WitnessReport {
    /// Echo of the query id.
    pub req: RequestId,
    /// The witness has this indexer in its pool and has heard from it.
    pub seen: bool,
    /// The `born_at` the indexer last told the witness.
    pub born_at: Option<Timestamp>,
    /// The fill rate the indexer last told the witness.
    pub fill_rate: f64,
    /// The witness's score of the indexer.
    pub score: f64,
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

/// The two DHT keys of a peer record: by peer id (`/pid/<PeerId>`) and by DID (`/node/<DID>`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordKey {
    /// `/pid/<PeerId>`.
    Peer(PeerId),
    /// `/node/<DID>`.
    Did(Did),
}

impl RecordKey {
    /// The key's position in the Kademlia space: BLAKE3 of `/pid/<32 bytes>` or `/node/<DID>`.
    pub fn kad_key(&self) -> Key {
        match self {
            RecordKey::Peer(p) => {
                let mut b = b"/pid/".to_vec();
                b.extend_from_slice(p.as_bytes());
                Key::of(&b)
            }
            RecordKey::Did(d) => {
                let mut b = b"/node/".to_vec();
                b.extend_from_slice(d.as_str().as_bytes());
                Key::of(&b)
            }
        }
    }

    /// Whether `record` is an answer for this key.
    pub fn matches(&self, record: &PeerRecord) -> bool {
        match self {
            RecordKey::Peer(p) => record.body.peer_id == *p,
            RecordKey::Did(d) => record.body.did == *d,
        }
    }
}

impl std::fmt::Display for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordKey::Peer(p) => write!(f, "/pid/{p}"),
            RecordKey::Did(d) => write!(f, "/node/{d}"),
        }
    }
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

/// Reply to [`Store`] and [`AddProvider`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreAck {
    /// Echo of the request id.
    pub req: RequestId,
    /// `None`: stored (or the same record was already held).
    pub refused: Option<StoreRefusal>,
}

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

/// Encodes a message as a frame payload (version byte + postcard).
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(WIRE_VERSION);
    // Serialising plain data into a Vec cannot fail.
    match postcard::to_extend(msg, out) {
        Ok(v) => v,
        Err(_) => vec![WIRE_VERSION],
    }
}

/// Encodes a message as a whole frame: length prefix + payload.
pub fn encode_frame(msg: &Message) -> Vec<u8> {
    let payload = encode(msg);
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes one frame payload (as produced by [`encode`]).
pub fn decode(payload: &[u8]) -> Result<Message, WireError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(WireError::Oversized(payload.len()));
    }
    let (&version, body) = payload.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let (msg, rest) = postcard::take_from_bytes::<Message>(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(msg)
}

/// Reassembles frames from a byte stream (one per connection or stream).
///
/// Feed bytes with [`FrameDecoder::extend`], then call [`FrameDecoder::next_message`] until it
/// returns `Ok(None)`. After an error the decoder is poisoned: it keeps returning that error, and
/// the caller must close the connection.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    poisoned: Option<WireError>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.poisoned.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The length of the next frame's payload, if its prefix has arrived (checked against the limit).
    pub fn next_frame_len(&mut self) -> Result<Option<usize>, WireError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME_LEN {
            let e = WireError::Oversized(len);
            self.poisoned = Some(e.clone());
            self.buf = Vec::new();
            return Err(e);
        }
        Ok(Some(len))
    }

    /// The next complete message, `Ok(None)` if more bytes are needed, or a terminal error.
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        let Some(len) = self.next_frame_len()? else {
            return Ok(None);
        };
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let res = decode(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        match res {
            Ok(m) => Ok(Some(m)),
            Err(e) => {
                self.poisoned = Some(e.clone());
                self.buf = Vec::new();
                Err(e)
            }
        }
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::identity::Keypair;

    fn sample() -> Message {
        let p = Keypair::derive(1, "n").peer_id();
        Message::Heartbeat(Heartbeat {
            req: RequestId(9),
            kind: HeartbeatKind::Regular,
            need: 2,
            referent: true,
            is_indexer: false,
            challenges: vec![p],
            challenge_did: Some(Did::new("did:x").unwrap()),
            want_witnesses: true,
            did: None,
            name: Some("n".into()),
            record: None,
        })
    }

    #[test]
    fn frame_round_trip_in_arbitrary_chunks() {
        let m = sample();
        let mut bytes = encode_frame(&m);
        bytes.extend(encode_frame(&Message::Leave));
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            d.extend(chunk);
            while let Some(msg) = d.next_message().unwrap() {
                got.push(msg);
            }
        }
        assert_eq!(got, vec![m, Message::Leave]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn oversized_frame_is_rejected_before_it_is_buffered() {
        let mut d = FrameDecoder::new();
        d.extend(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes());
        assert_eq!(d.next_message(), Err(WireError::Oversized(MAX_FRAME_LEN + 1)));
        d.extend(&[0; 100]);
        assert!(d.next_message().is_err(), "decoder stays poisoned");
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn wrong_version_and_garbage_are_errors() {
        let mut p = encode(&Message::Leave);
        p[0] = 99;
        assert_eq!(decode(&p), Err(WireError::Version(99)));
        assert!(matches!(decode(&[WIRE_VERSION, 0xff, 0xff, 0xff]), Err(WireError::Malformed(_))));
        assert_eq!(decode(&[]), Err(WireError::Empty));
        let mut t = encode(&Message::Leave);
        t.push(0);
        assert_eq!(decode(&t), Err(WireError::Trailing(1)));
    }
}
