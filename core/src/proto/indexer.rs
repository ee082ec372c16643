//! Indexer role: admission and sessions. (Stub — being implemented.)

use super::Action;
use super::config::Config;
use super::identity::{PeerAddr, PeerId};
use super::rng::DetRng;
use super::time::Timestamp;
use super::wire::{CandidatesRequest, Heartbeat};

/// The indexer role.
#[derive(Debug)]
pub struct IndexerService {
    _config: Config,
}

impl IndexerService {
    /// An indexer born at `now`.
    pub fn new(config: Config, _me: PeerId, _rng: DetRng, _now: Timestamp) -> Self {
        IndexerService { _config: config }
    }
    /// A heartbeat from an authenticated peer.
    pub fn on_heartbeat(&mut self, _from: PeerAddr, _hb: Heartbeat, _now: Timestamp, _out: &mut Vec<Action>) {}
    /// The node left.
    pub fn on_leave(&mut self, _from: PeerId, _now: Timestamp, _out: &mut Vec<Action>) {}
    /// A candidates request.
    pub fn on_candidates_request(
        &mut self,
        _from: PeerId,
        _r: CandidatesRequest,
        _now: Timestamp,
        _out: &mut Vec<Action>,
    ) {
    }
    /// Remember another indexer (from this peer's own pool).
    pub fn note_indexer(&mut self, _indexer: PeerAddr, _fill_rate: Option<f64>, _now: Timestamp) {}
    /// Runs due timers (GC).
    pub fn handle_timeout(&mut self, _now: Timestamp, _out: &mut Vec<Action>) {}
    /// Next deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        None
    }
    /// Whether `peer` has a session.
    pub fn has_session(&self, _peer: &PeerId) -> bool {
        false
    }
}
