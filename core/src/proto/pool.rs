//! Node role: the scored indexer pool. (Stub — being implemented.)

use super::Action;
use super::config::Config;
use super::identity::{Did, PeerAddr, PeerId};
use super::rng::DetRng;
use super::time::Timestamp;
use super::wire::Message;

/// What a node knows of an indexer, as told to witnesses.
#[derive(Clone, Debug, PartialEq)]
pub struct WitnessView {
    /// The indexer's last reported `born_at`.
    pub born_at: Timestamp,
    /// Its last reported fill rate.
    pub fill_rate: f64,
    /// Our score of it.
    pub score: f64,
}

/// The node role's pool of indexers.
#[derive(Debug)]
pub struct IndexerPool {
    _config: Config,
}

impl IndexerPool {
    /// A pool seeded with `seeds`, holding at most `max_pool` indexers.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        _me: PeerId,
        _did: Did,
        _seeds: Vec<PeerAddr>,
        _max_pool: usize,
        _is_indexer: bool,
        _rng: DetRng,
        _now: Timestamp,
    ) -> Self {
        IndexerPool { _config: config }
    }
    /// Handles a reply (heartbeat response, refusal, witness report, candidates).
    pub fn on_message(&mut self, _from: PeerId, _m: Message, _now: Timestamp, _out: &mut Vec<Action>) {}
    /// The peer cannot be reached: fail its in-flight requests.
    pub fn on_unreachable(&mut self, _peer: PeerId, _now: Timestamp, _out: &mut Vec<Action>) {}
    /// Runs due timers.
    pub fn handle_timeout(&mut self, _now: Timestamp, _out: &mut Vec<Action>) {}
    /// Next deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        None
    }
    /// Leave every indexer.
    pub fn shutdown(&mut self, _now: Timestamp, _out: &mut Vec<Action>) {}
    /// Whether `peer` is in the pool (live or not).
    pub fn contains(&self, _peer: &PeerId) -> bool {
        false
    }
    /// Whether `peer` is in the pool and live.
    pub fn is_live(&self, _peer: &PeerId) -> bool {
        false
    }
    /// What we tell a witness query about `indexer`.
    pub fn witness_view(&self, _indexer: &PeerId) -> Option<WitnessView> {
        None
    }
}
