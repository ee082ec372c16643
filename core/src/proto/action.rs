//! [`Action`]: the one sink every machine of the core writes its effects into.
//!
//! Each machine has its own output enum — [`NodeOut`], [`IndexerOut`], [`DhtOut`] — naming exactly
//! the effects it may have, and emits into a `Vec<Action>` passed in ([`Sink::emit`]); the router's
//! [`Action`] is their union, each lifted with `From` (the habit of iroh-gossip's `proto`).

use super::app::AppOut;
use super::dht::{DhtDone, DhtOut};
use super::durable::{Forget, Persist};
use super::identity::{PeerAddr, PeerId};
use super::indexer::IndexerOut;
use super::node::NodeOut;
use super::record::{PeerRecord, RecordKey};
use super::search::SearchOut;
use super::wire::Envelope;
use super::{CloseReason, Event};

/// Every machine's outputs, as the router executes them.
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
    /// A peer sent a forged search hit: the indexer role strikes it.
    Strike {
        /// The peer.
        peer: PeerId,
    },
    /// An indexer of this node's pool relayed a forged search hit: the pool drops it.
    Distrust {
        /// The indexer.
        indexer: PeerId,
    },
    /// Store durably before what follows.
    Persist(Persist),
    /// Delete from durable storage.
    Forget(Forget),
    /// The application-message machine wants a destination resolved.
    Resolve {
        /// Echoed in [`Action::Resolved`].
        token: u64,
        /// What to find.
        key: RecordKey,
    },
    /// A resolution finished (verified record, or none).
    Resolved {
        /// The token.
        token: u64,
        /// The record.
        record: Option<PeerRecord>,
        /// Whether anyone was asked (`false`: no live indexer yet, so not a failure of the
        /// destination).
        asked: bool,
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

/// Where a machine writes its outputs: a `Vec<Action>` takes any machine's output enum.
pub trait Sink<T> {
    /// Adds `item`, lifted into an [`Action`].
    fn emit(&mut self, item: T);
}

impl<T: Into<Action>> Sink<T> for Vec<Action> {
    fn emit(&mut self, item: T) {
        self.push(item.into());
    }
}

impl From<NodeOut> for Action {
    fn from(o: NodeOut) -> Self {
        match o {
            NodeOut::Send { to, message } => Action::Send { to, message },
            NodeOut::Learn(a) => Action::Learn(a),
            NodeOut::Close { peer, reason } => Action::Close { peer, reason },
            NodeOut::Event(e) => Action::Event(e),
            NodeOut::DiscoverIndexers { want } => Action::DiscoverIndexers { want },
            NodeOut::IndexerSeen { peer, fill_rate } => Action::IndexerSeen { peer, fill_rate },
            NodeOut::Resolved { token, record, asked } => Action::Resolved { token, record, asked },
        }
    }
}

impl From<IndexerOut> for Action {
    fn from(o: IndexerOut) -> Self {
        match o {
            IndexerOut::Send { to, message } => Action::Send { to, message },
            IndexerOut::Close { peer, reason } => Action::Close { peer, reason },
            IndexerOut::Event(e) => Action::Event(e),
            IndexerOut::Persist(p) => Action::Persist(p),
        }
    }
}

impl From<DhtOut> for Action {
    fn from(o: DhtOut) -> Self {
        match o {
            DhtOut::Send { to, message } => Action::Send { to, message },
            DhtOut::Learn(a) => Action::Learn(a),
            DhtOut::Event(e) => Action::Event(e),
            DhtOut::QueryDone(d) => Action::QueryDone(d),
            DhtOut::Persist(p) => Action::Persist(p),
        }
    }
}

impl From<SearchOut> for Action {
    fn from(o: SearchOut) -> Self {
        match o {
            SearchOut::Send { to, message } => Action::Send { to, message },
            SearchOut::Learn(a) => Action::Learn(a),
            SearchOut::Event(e) => Action::Event(e),
            SearchOut::Strike { peer } => Action::Strike { peer },
            SearchOut::Distrust { indexer } => Action::Distrust { indexer },
        }
    }
}

impl From<AppOut> for Action {
    fn from(o: AppOut) -> Self {
        match o {
            AppOut::Send { to, message } => Action::Send { to, message },
            AppOut::Learn(a) => Action::Learn(a),
            AppOut::Event(e) => Action::Event(e),
            AppOut::Persist(p) => Action::Persist(p),
            AppOut::Forget(f) => Action::Forget(f),
            AppOut::Resolve { token, key } => Action::Resolve { token, key },
        }
    }
}
