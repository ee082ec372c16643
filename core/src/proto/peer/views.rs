//! Read-only views of a [`Peer`](super::Peer)'s machines, for status reports, metrics, tests and
//! the simulator. The machines themselves stay private to the core (str0m's habit: a small public
//! surface over a big private machine); a view exposes what an observer may read, nothing that
//! changes state.

use crate::proto::dht::{Dht, DhtStats};
use crate::proto::identity::{PeerAddr, PeerId};
use crate::proto::indexer::{IndexerService, KnownIndexer, SessionView};
use crate::proto::link::Connections;
use crate::proto::node::{IndexerPool, PoolEntryView};
use crate::proto::record::PeerRecord;
use crate::proto::search::{MeshStats, SearchService};
use crate::proto::time::Timestamp;

/// The node role's pool of indexers.
#[derive(Clone, Copy, Debug)]
pub struct PoolView<'a>(pub(crate) &'a IndexerPool);

impl<'a> PoolView<'a> {
    /// Live indexers (what "pool size" means in reports).
    pub fn live_count(&self) -> usize {
        self.0.live_count()
    }

    /// Active entries (Pending + Live), at most [`PoolView::max_pool`].
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no active entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `peer` is in the pool (active or Down).
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.0.contains(peer)
    }

    /// Whether `peer` is in the pool and live.
    pub fn is_live(&self, peer: &PeerId) -> bool {
        self.0.is_live(peer)
    }

    /// Every entry (active and Down), in peer-id order.
    pub fn entries(&self) -> impl Iterator<Item = PoolEntryView> + 'a {
        self.0.entries()
    }

    /// Live indexers, best score first.
    pub fn live_by_score(&self) -> Vec<PeerAddr> {
        self.0.live_by_score()
    }

    /// The configured seeds (self removed, deduplicated, at most `max_pool`).
    pub fn seeds(&self) -> &'a [PeerAddr] {
        self.0.seeds()
    }

    /// Most active entries.
    pub fn max_pool(&self) -> usize {
        self.0.max_pool()
    }

    /// Fewest live entries the node wants.
    pub fn min_pool(&self) -> usize {
        self.0.min_pool()
    }

    /// Whether `peer` is barred from the pool at `now` after a misbehaviour eviction.
    pub fn in_cooldown(&self, peer: &PeerId, now: Timestamp) -> bool {
        self.0.in_cooldown(peer, now)
    }
}

/// The indexer role.
#[derive(Clone, Copy, Debug)]
pub struct IndexerView<'a>(pub(crate) &'a IndexerService);

impl<'a> IndexerView<'a> {
    /// Whether `peer` has a session.
    pub fn has_session(&self, peer: &PeerId) -> bool {
        self.0.has_session(peer)
    }

    /// Admitted nodes (heartbeating sessions).
    pub fn session_count(&self) -> usize {
        self.0.session_count()
    }

    /// Every session, in peer-id order.
    pub fn sessions(&self) -> impl Iterator<Item = SessionView<'a>> + 'a {
        self.0.sessions()
    }

    /// One session.
    pub fn session(&self, peer: &PeerId) -> Option<SessionView<'a>> {
        self.0.session(peer)
    }

    /// Sessions whose node chose this indexer as its referent.
    pub fn referents(&self) -> impl Iterator<Item = SessionView<'a>> + 'a {
        self.0.referents()
    }

    /// When this indexer started.
    pub fn born_at(&self) -> Timestamp {
        self.0.born_at()
    }

    /// Whether `peer` is banned at `now`.
    pub fn is_banned(&self, peer: &PeerId, now: Timestamp) -> bool {
        self.0.is_banned(peer, now)
    }

    /// `peer`'s current strikes.
    pub fn strikes(&self, peer: &PeerId) -> u32 {
        self.0.strikes(peer)
    }

    /// Other indexers this one knows (for suggestions and candidates).
    pub fn known_indexers(&self) -> impl Iterator<Item = &'a KnownIndexer> + 'a {
        self.0.known_indexers()
    }

    /// Sessions over capacity.
    pub fn fill_rate(&self) -> f64 {
        self.0.fill_rate()
    }

    /// Peers in the behaviour table (strikes, bans, rate windows).
    pub fn behaviour_len(&self) -> usize {
        self.0.behaviour().len()
    }
}

/// The DHT (server for an indexer, client for a node).
#[derive(Clone, Copy, Debug)]
pub struct DhtView<'a>(pub(crate) &'a Dht);

impl<'a> DhtView<'a> {
    /// Whether this peer serves the DHT.
    pub fn is_server(&self) -> bool {
        self.0.is_server()
    }

    /// Peers in the routing table.
    pub fn table_len(&self) -> usize {
        self.0.table().len()
    }

    /// Records held.
    pub fn record_count(&self) -> usize {
        self.0.records().len()
    }

    /// Every record held, valid or not yet pruned.
    pub fn records(&self) -> impl Iterator<Item = &'a PeerRecord> + 'a {
        self.0.records().iter()
    }

    /// `peer`'s record, if held and not expired at `now`.
    pub fn record_by_peer(&self, peer: &PeerId, now: Timestamp) -> Option<&'a PeerRecord> {
        self.0.records().by_peer(peer, now)
    }

    /// Provider announcements held.
    pub fn provider_count(&self) -> usize {
        self.0.provider_count()
    }

    /// Queries running.
    pub fn query_count(&self) -> usize {
        self.0.query_count()
    }

    /// Counters.
    pub fn stats(&self) -> DhtStats {
        self.0.stats()
    }
}

/// The connection table.
#[derive(Clone, Copy, Debug)]
pub struct LinkView<'a>(pub(crate) &'a Connections);

impl LinkView<'_> {
    /// Connections (set up or being set up).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no connection.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `peer`'s connection has completed the `Hello` exchange.
    pub fn is_ready(&self, peer: &PeerId) -> bool {
        self.0.is_ready(peer)
    }
}

/// Read-only view of distributed search ([`Peer::search`](super::Peer::search)).
#[derive(Clone, Copy)]
pub struct SearchView<'a> {
    pub(super) search: &'a SearchService,
    pub(super) indexer: Option<&'a IndexerService>,
}

impl SearchView<'_> {
    /// This node's searches in flight: `(user, id, hits so far)`.
    pub fn active(&self) -> Vec<(String, u64, u32)> {
        self.search.active()
    }

    /// Nodes that chose this indexer as their referent (their records are searchable here).
    pub fn referenced(&self) -> usize {
        self.indexer.map_or(0, |ix| ix.referent_ids().count())
    }

    /// Searches this indexer is emitting for its nodes.
    pub fn emitting(&self) -> usize {
        self.search.emitting()
    }

    /// Whether this indexer runs the search mesh.
    pub fn has_mesh(&self) -> bool {
        self.search.has_mesh()
    }

    /// The search-mesh neighbours.
    pub fn mesh_neighbours(&self) -> Vec<PeerId> {
        self.search.mesh_neighbours()
    }

    /// The search-mesh counters.
    pub fn mesh_stats(&self) -> MeshStats {
        self.search.mesh_stats()
    }
}
