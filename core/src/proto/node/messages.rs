//! Messages between nodes, carried in [`Envelope::Node`](crate::proto::wire::Envelope::Node): a
//! node asks another node (a *witness*) what it sees of an indexer (spec A §3.5).

use crate::proto::identity::PeerId;
use crate::proto::time::Timestamp;
use crate::proto::wire::RequestId;
use serde::{Deserialize, Serialize};

/// Node ⇄ node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeMessage {
    /// "What do you know of indexer X?"
    WitnessQuery(WitnessQuery),
    /// Reply to a [`WitnessQuery`], from the witness's own observations.
    WitnessReport(WitnessReport),
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
