//! The application-message mechanism's messages (spec D §2.2, §5.6; DESIGN §8): a message for
//! another node and its acknowledgement, sent over the authenticated connection.

use super::{AppProtocol, MessageId};
use crate::proto::record::PeerRecord;
use serde::{Deserialize, Serialize};

/// Everything the application-message mechanism says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AppMessage {
    /// Sender → receiver: one application message (boxed: it carries a payload and a record).
    Deliver(Box<Deliver>),
    /// Receiver → sender: the message is in the receiver's durable inbox (or was already).
    Ack {
        /// The message.
        id: MessageId,
    },
    /// Receiver → sender: the message is not accepted, and never will be as it is.
    Refused {
        /// The message.
        id: MessageId,
        /// Why.
        reason: AppRefusal,
    },
}

/// An application message on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    /// Sender-assigned id (the sender is the authenticated connection peer, repeated in the id).
    pub id: MessageId,
    /// Every message of this sender's epoch below this sequence number is settled (acknowledged
    /// or abandoned), so the receiver may forget their ids.
    pub floor: u64,
    /// What it is.
    pub protocol: AppProtocol,
    /// The OpenCloud datatype code, if any.
    pub datatype: Option<i64>,
    /// The OpenCloud user on whose behalf it is sent.
    pub user: String,
    /// Opaque application payload.
    pub payload: Vec<u8>,
    /// The sender's signed record: a receiver that does not know the sender yet learns who it is
    /// (its DID) from it.
    pub record: Option<PeerRecord>,
}

/// Why a receiver refuses an application message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppRefusal {
    /// The sender is blocked.
    Blocked,
    /// The sender is not known (no session, no valid record, not in the peer book).
    Unknown,
    /// The payload or a field is larger than the receiver accepts.
    TooLarge,
    /// The receiver does not take application messages (an indexer without the node role).
    NotServed,
    /// The receiver has no room for it now (too many ids remembered for this sender).
    Busy,
}
