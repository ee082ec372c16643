//! A flat view of every message, for unit tests that script peers: one enum with a variant per
//! message, converted to and from [`Envelope`] at the machine's boundary.

use super::*;

/// Every message as one flat enum (the shape of wire version 2).
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub(crate) enum Message {
    Hello(Hello),
    HelloProof(HelloProof),
    HelloReply(HelloReply),
    HelloProofWith(HelloProofWith),
    Heartbeat(Heartbeat),
    HeartbeatResponse(HeartbeatResponse),
    Refused(Refused),
    Leave,
    WitnessQuery(WitnessQuery),
    WitnessReport(WitnessReport),
    CandidatesRequest(CandidatesRequest),
    CandidatesResponse(CandidatesResponse),
    Publish(Publish),
    Published(Published),
    GetRecord(GetRecord),
    RecordReply(RecordReply),
    Dht(DhtMessage),
    Search(SearchMessage),
    App(AppMessage),
}

impl From<Envelope> for Message {
    fn from(e: Envelope) -> Self {
        match e {
            Envelope::Link(LinkMessage::Hello(m)) => Message::Hello(m),
            Envelope::Link(LinkMessage::HelloProof(m)) => Message::HelloProof(m),
            Envelope::Link(LinkMessage::HelloReply(m)) => Message::HelloReply(m),
            Envelope::Link(LinkMessage::HelloProofWith(m)) => Message::HelloProofWith(m),
            Envelope::Indexer(m) => match m {
                IndexerMessage::Heartbeat(m) => Message::Heartbeat(*m),
                IndexerMessage::HeartbeatResponse(m) => Message::HeartbeatResponse(*m),
                IndexerMessage::Refused(m) => Message::Refused(m),
                IndexerMessage::Leave => Message::Leave,
                IndexerMessage::CandidatesRequest(m) => Message::CandidatesRequest(m),
                IndexerMessage::CandidatesResponse(m) => Message::CandidatesResponse(m),
                IndexerMessage::Publish(m) => Message::Publish(m),
                IndexerMessage::Published(m) => Message::Published(m),
                IndexerMessage::GetRecord(m) => Message::GetRecord(m),
                IndexerMessage::RecordReply(m) => Message::RecordReply(m),
            },
            Envelope::Node(NodeMessage::WitnessQuery(m)) => Message::WitnessQuery(m),
            Envelope::Node(NodeMessage::WitnessReport(m)) => Message::WitnessReport(m),
            Envelope::Dht(m) => Message::Dht(m),
            Envelope::Search(m) => Message::Search(m),
            Envelope::App(m) => Message::App(m),
        }
    }
}

impl From<Message> for Envelope {
    fn from(m: Message) -> Self {
        match m {
            Message::Hello(m) => m.into(),
            Message::HelloProof(m) => m.into(),
            Message::HelloReply(m) => m.into(),
            Message::HelloProofWith(m) => m.into(),
            Message::Heartbeat(m) => m.into(),
            Message::HeartbeatResponse(m) => m.into(),
            Message::Refused(m) => IndexerMessage::Refused(m).into(),
            Message::Leave => IndexerMessage::Leave.into(),
            Message::WitnessQuery(m) => m.into(),
            Message::WitnessReport(m) => m.into(),
            Message::CandidatesRequest(m) => m.into(),
            Message::CandidatesResponse(m) => m.into(),
            Message::Publish(m) => m.into(),
            Message::Published(m) => m.into(),
            Message::GetRecord(m) => m.into(),
            Message::RecordReply(m) => m.into(),
            Message::Dht(m) => m.into(),
            Message::Search(m) => m.into(),
            Message::App(m) => m.into(),
        }
    }
}

impl Message {
    /// The kind name of the message's envelope.
    pub(crate) fn kind(&self) -> &'static str {
        Envelope::from(self.clone()).kind()
    }
}
