//! The wire: one versioned `postcard` [`Envelope`] in length-prefixed frames.
//!
//! A frame is `u32` big-endian payload length, then the payload: one version byte
//! ([`WIRE_VERSION`]) followed by the postcard encoding of an [`Envelope`]. Payloads are at most
//! [`MAX_FRAME_LEN`] bytes. Decoding never panics and never allocates beyond the frame it was given;
//! any error is terminal for the connection it came from (seed bug B9: Go's decoder spun on a
//! sticky syntax error).
//!
//! ## The envelope
//!
//! ```text
//! Envelope ─┬─ Link(LinkMessage)        Hello, HelloReply, HelloProof(With)     proto/link/
//!           ├─ Indexer(IndexerMessage)  Heartbeat ⇄ HeartbeatResponse, Leave,   proto/indexer/
//!           │                           Candidates, Publish, GetRecord, Refused
//!           ├─ Node(NodeMessage)        WitnessQuery ⇄ WitnessReport            proto/node/
//!           ├─ Dht(DhtMessage)          FindNode, FindValue, Store, AddProvider, proto/dht/
//!           │                           GetProviders and their replies, Refused
//!           ├─ Search(SearchMessage)    Request, Cancel ⇄ Hits, Done, Refused;  proto/search/
//!           │                           Found; the mesh's gossip
//!           └─ App(AppMessage)          Deliver ⇄ Ack, Refused                  proto/app/
//! ```
//!
//! Each mechanism owns its message enum, in its own folder. A variant is named after the machine
//! that *serves* the requests it carries; a reply or refusal comes back in its request's variant,
//! so the router hands it to the machine that asked and no machine reads another's request ids.
//! Every request carries a [`RequestId`], unique per sender and mechanism, echoed by its reply, so
//! replies — and round-trip times — are matched exactly (seed bug B8: a late reply was consumed as
//! the next heartbeat's).
//!
//! Numbers that come from peers (fill rates, scores) may be NaN or out of range; the state
//! machines sanitise them where they use them.

pub use super::app::{AppMessage, AppRefusal, Deliver};
pub use super::dht::kad::Key;
pub use super::dht::messages::{
    AddProvider, DhtMessage, FindNode, FindValue, GetProviders, MAX_STORE_BATCH, Nodes, Providers, Store, StoreAck,
    StoreBatch, StoreRefusal, Value,
};
use super::identity::PeerAddr;
pub use super::indexer::messages::{
    CandidatesRequest, CandidatesResponse, ChallengeEntry, GetRecord, Heartbeat, HeartbeatKind, HeartbeatResponse,
    IndexerMessage, Publish, Published, RecordReply, Standing,
};
pub use super::link::messages::{Carried, Hello, HelloProof, HelloProofWith, HelloReply, LinkMessage};
pub use super::node::messages::{NodeMessage, WitnessQuery, WitnessReport};
pub use super::record::RecordKey;
pub use super::search::{
    MeshMessage, ResourceAsk, ResourceAsked, SearchFound, SearchHits, SearchMessage, SearchRequest,
};
use serde::{Deserialize, Serialize};

#[cfg(test)]
pub(crate) mod flat;

/// Version byte leading every payload. Bumped on any incompatible change to [`Envelope`] (3: one
/// variant per mechanism; 4: search; 5: application messages; 6: resource searches on the mesh;
/// 7: the three-message `Hello` (`HelloReply`), batched DHT stores (`StoreBatch`) and the node's
/// standing in its heartbeats; 8: one-way DHT writes, a `StoreAck` only for a refusal; 9: the
/// dialler's proof carries its first message, `HelloProofWith`).
pub const WIRE_VERSION: u8 = 9;

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
    /// The payload is not a valid envelope.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes left after the message inside one frame.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// Matches a reply to its request; unique per sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// Everything peers say to each other: one variant per mechanism.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Envelope {
    /// The link layer: the `Hello` exchange.
    Link(LinkMessage),
    /// The indexer service: node requests and the indexer's replies.
    Indexer(IndexerMessage),
    /// Between nodes: witness queries.
    Node(NodeMessage),
    /// The indexers' Kademlia DHT.
    Dht(DhtMessage),
    /// Distributed peer search: a node's searches and the indexers' search mesh.
    Search(SearchMessage),
    /// Application messages between nodes.
    App(AppMessage),
}

/// Short names of every message kind, in [`Envelope::kind_index`] order: the one table of message
/// kinds, for logs, traces, metrics and the simulator's report.
pub const KINDS: [&str; 39] = [
    "hello",
    "hello_proof",
    "heartbeat",
    "heartbeat_response",
    "refused",
    "leave",
    "candidates_request",
    "candidates_response",
    "publish",
    "published",
    "get_record",
    "record_reply",
    "witness_query",
    "witness_report",
    "find_node",
    "nodes",
    "find_value",
    "value",
    "store",
    "add_provider",
    "store_ack",
    "get_providers",
    "providers",
    "dht_refused",
    "search_request",
    "search_cancel",
    "search_hits",
    "search_done",
    "search_refused",
    "search_found",
    "mesh_gossip",
    "mesh_control",
    "app_deliver",
    "app_ack",
    "app_refused",
    "search_ask",
    "search_asked",
    "store_batch",
    "hello_reply",
];

impl Envelope {
    /// Index of this message's kind in [`KINDS`].
    pub fn kind_index(&self) -> usize {
        match self {
            Envelope::Link(m) => match m {
                LinkMessage::Hello(_) => 0,
                LinkMessage::HelloProof(_) => 1,
                LinkMessage::HelloReply(_) => 38,
                // Counted as the message it carries: the proof is 32 bytes riding on it.
                LinkMessage::HelloProofWith(m) => m.first.get().kind_index(),
            },
            Envelope::Indexer(m) => match m {
                IndexerMessage::Heartbeat(_) => 2,
                IndexerMessage::HeartbeatResponse(_) => 3,
                IndexerMessage::Refused(_) => 4,
                IndexerMessage::Leave => 5,
                IndexerMessage::CandidatesRequest(_) => 6,
                IndexerMessage::CandidatesResponse(_) => 7,
                IndexerMessage::Publish(_) => 8,
                IndexerMessage::Published(_) => 9,
                IndexerMessage::GetRecord(_) => 10,
                IndexerMessage::RecordReply(_) => 11,
            },
            Envelope::Node(m) => match m {
                NodeMessage::WitnessQuery(_) => 12,
                NodeMessage::WitnessReport(_) => 13,
            },
            Envelope::Dht(m) => match m {
                DhtMessage::FindNode(_) => 14,
                DhtMessage::Nodes(_) => 15,
                DhtMessage::FindValue(_) => 16,
                DhtMessage::Value(_) => 17,
                DhtMessage::Store(_) => 18,
                DhtMessage::AddProvider(_) => 19,
                DhtMessage::StoreAck(_) => 20,
                DhtMessage::GetProviders(_) => 21,
                DhtMessage::Providers(_) => 22,
                DhtMessage::Refused(_) => 23,
                DhtMessage::StoreBatch(_) => 37,
            },
            Envelope::Search(m) => match m {
                SearchMessage::Request(_) => 24,
                SearchMessage::Cancel { .. } => 25,
                SearchMessage::Hits(_) => 26,
                SearchMessage::Done { .. } => 27,
                SearchMessage::Refused(_) => 28,
                SearchMessage::Found(_) => 29,
                SearchMessage::Mesh(g) if matches!(g.kind(), iroh_gossip::proto::state::MessageKind::Data) => 30,
                SearchMessage::Mesh(_) => 31,
                SearchMessage::Ask(_) => 35,
                SearchMessage::Asked(_) => 36,
            },
            Envelope::App(m) => match m {
                AppMessage::Deliver(_) => 32,
                AppMessage::Ack { .. } => 33,
                AppMessage::Refused { .. } => 34,
            },
        }
    }

    /// The message the machines see in this frame: the one a [`HelloProofWith`] carries, or
    /// the envelope itself.
    pub fn carried(&self) -> &Envelope {
        match self {
            Envelope::Link(LinkMessage::HelloProofWith(m)) => m.first.get(),
            other => other,
        }
    }

    /// A short name for logs and traces (from [`KINDS`]).
    pub fn kind(&self) -> &'static str {
        KINDS[self.kind_index()]
    }
}

/// `From` impls lifting each message into its mechanism's enum and into the [`Envelope`].
macro_rules! lift {
    ($($ty:ident => $mech:ident :: $var:ident),* $(,)?) => {$(
        impl From<$ty> for $mech {
            fn from(m: $ty) -> Self {
                $mech::$var(m.into())
            }
        }
        impl From<$ty> for Envelope {
            fn from(m: $ty) -> Self {
                Envelope::from($mech::$var(m.into()))
            }
        }
    )*};
}

impl From<LinkMessage> for Envelope {
    fn from(m: LinkMessage) -> Self {
        Envelope::Link(m)
    }
}

impl From<IndexerMessage> for Envelope {
    fn from(m: IndexerMessage) -> Self {
        Envelope::Indexer(m)
    }
}

impl From<NodeMessage> for Envelope {
    fn from(m: NodeMessage) -> Self {
        Envelope::Node(m)
    }
}

impl From<DhtMessage> for Envelope {
    fn from(m: DhtMessage) -> Self {
        Envelope::Dht(m)
    }
}

lift! {
    Hello => LinkMessage::Hello,
    HelloProof => LinkMessage::HelloProof,
    HelloReply => LinkMessage::HelloReply,
    HelloProofWith => LinkMessage::HelloProofWith,
    Heartbeat => IndexerMessage::Heartbeat,
    HeartbeatResponse => IndexerMessage::HeartbeatResponse,
    CandidatesRequest => IndexerMessage::CandidatesRequest,
    CandidatesResponse => IndexerMessage::CandidatesResponse,
    Publish => IndexerMessage::Publish,
    Published => IndexerMessage::Published,
    GetRecord => IndexerMessage::GetRecord,
    RecordReply => IndexerMessage::RecordReply,
    WitnessQuery => NodeMessage::WitnessQuery,
    WitnessReport => NodeMessage::WitnessReport,
    FindNode => DhtMessage::FindNode,
    Nodes => DhtMessage::Nodes,
    FindValue => DhtMessage::FindValue,
    Value => DhtMessage::Value,
    Store => DhtMessage::Store,
    AddProvider => DhtMessage::AddProvider,
    StoreAck => DhtMessage::StoreAck,
    GetProviders => DhtMessage::GetProviders,
    Providers => DhtMessage::Providers,
    SearchRequest => SearchMessage::Request,
    SearchHits => SearchMessage::Hits,
    SearchFound => SearchMessage::Found,
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
    /// The receiver knows this key with another DID (the sender's `did` file was replaced, or
    /// a new DID adopted): refused, without strikes — an honest operator's mistake is no attack.
    DidChanged,
    /// The indexer was full and gave the sender's slot to a node below its minimum; the sender
    /// keeps at least its minimum elsewhere (issue 13). Not a failure of the indexer: the node
    /// drops it from its pool, as after a migration.
    Moved,
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

/// Encodes an envelope as a frame payload (version byte + postcard).
pub fn encode(msg: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_into(msg, &mut out);
    out
}

/// [`encode`] into `out`, replacing what it held: a caller that encodes many messages reuses one
/// buffer's allocation (the simulator keeps one per message in flight).
pub fn encode_into(msg: &Envelope, out: &mut Vec<u8>) {
    out.clear();
    out.push(WIRE_VERSION);
    // Serialising plain data into a Vec cannot fail.
    if !append_postcard(msg, out) {
        out.truncate(1);
    }
}

/// Appends the postcard encoding of `value` to `out` (the bytes of `postcard::to_extend`, faster);
/// `false` if serialising failed, which plain data never does (`out` may then hold part of it).
pub(crate) fn append_postcard<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> bool {
    postcard::serialize_with_flavor(value, Append(out)).is_ok()
}

/// The length of the postcard encoding of `value` (without the version byte), without writing it.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    postcard::serialize_with_flavor(value, Count(0)).unwrap_or(usize::MAX)
}

/// A postcard output that only counts the bytes.
struct Count(usize);

impl postcard::ser_flavors::Flavor for Count {
    type Output = usize;

    #[inline(always)]
    fn try_push(&mut self, _: u8) -> postcard::Result<()> {
        self.0 += 1;
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0 += data.len();
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.0)
    }
}

/// A postcard output that appends to a `Vec` one `push` per byte (postcard's `to_extend` goes
/// through `Extend` for each byte, several times slower; the bytes are the same).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Encodes an envelope as a whole frame: length prefix + payload.
pub fn encode_frame(msg: &Envelope) -> Vec<u8> {
    let payload = encode(msg);
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes one frame payload (as produced by [`encode`]).
pub fn decode(payload: &[u8]) -> Result<Envelope, WireError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(WireError::Oversized(payload.len()));
    }
    let (&version, body) = payload.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let (msg, rest) = postcard::take_from_bytes::<Envelope>(body).map_err(|e| WireError::Malformed(e.to_string()))?;
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
    pub fn next_message(&mut self) -> Result<Option<Envelope>, WireError> {
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
    use crate::proto::identity::{Did, Keypair};

    fn sample() -> Envelope {
        let p = Keypair::derive(1, "n").peer_id();
        Envelope::from(Heartbeat {
            req: RequestId(9),
            kind: HeartbeatKind::Regular,
            need: 2,
            standing: Standing { live_elsewhere: 1, joining_elsewhere: 0, min: 2 },
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
        bytes.extend(encode_frame(&Envelope::Indexer(IndexerMessage::Leave)));
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            d.extend(chunk);
            while let Some(msg) = d.next_message().unwrap() {
                got.push(msg);
            }
        }
        assert_eq!(got, vec![m, Envelope::Indexer(IndexerMessage::Leave)]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn encoding_into_a_reused_buffer_gives_postcards_bytes() {
        let mut buf = vec![7u8; 1000];
        for m in [sample(), Envelope::Indexer(IndexerMessage::Leave), sample()] {
            let reference = postcard::to_extend(&m, vec![WIRE_VERSION]).unwrap();
            encode_into(&m, &mut buf);
            assert_eq!(buf, reference);
            assert_eq!(encode(&m), reference);
            assert_eq!(decode(&buf), Ok(m));
        }
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
        let mut p = encode(&Envelope::Indexer(IndexerMessage::Leave));
        p[0] = 99;
        assert_eq!(decode(&p), Err(WireError::Version(99)));
        assert!(matches!(decode(&[WIRE_VERSION, 0xff, 0xff, 0xff]), Err(WireError::Malformed(_))));
        assert_eq!(decode(&[]), Err(WireError::Empty));
        let mut t = encode(&Envelope::Indexer(IndexerMessage::Leave));
        t.push(0);
        assert_eq!(decode(&t), Err(WireError::Trailing(1)));
    }
}
