//! [`Action`]: the one sink every machine of the core writes its effects into.

use super::dht::DhtDone;
use super::identity::{PeerAddr, PeerId};
use super::wire::Envelope;
use super::{CloseReason, Event};

/// The one sink every machine pushes its effects into; the router executes them.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send to a peer; the router dials it from the address book if there is no connection.
    Send {
        /// The recipient.
        to: PeerId,
        /// The message.
        message: Envelope,
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
    /// The node's pool wants more indexers: discover providers of the indexer rendezvous key in
    /// the DHT (the answer goes back to the pool).
    DiscoverIndexers {
        /// How many providers to find.
        want: usize,
    },
    /// A DHT query finished: the router hands the result to whoever started it.
    QueryDone(DhtDone),
    /// A live indexer of this peer's own pool answered (for an indexer's cache of others).
    IndexerSeen {
        /// The indexer.
        peer: PeerId,
        /// The fill rate it reported, if the answer carried one.
        fill_rate: Option<f64>,
    },
}

impl From<Event> for Action {
    fn from(e: Event) -> Self {
        Action::Event(e)
    }
}

impl From<DhtDone> for Action {
    fn from(d: DhtDone) -> Self {
        Action::QueryDone(d)
    }
}
