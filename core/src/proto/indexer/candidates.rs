//! Candidates and the cache of other indexers (spec B §3.1, C §13): replacement indexers for a
//! node's consensus round, and the bounded cache they and suggestions come from, fed by this
//! peer's own pool, heartbeating indexers and DHT providers.

use super::*;

impl IndexerService {
    /// A request for replacement indexers (C §13.3), behind the "is this peer known" gate.
    pub fn on_candidates_request(
        &mut self,
        from: PeerId,
        request: CandidatesRequest,
        known_record: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        if !self.admit_get(from, Req::Indexer(request.req), known_record, now, out) {
            return;
        }
        let count = match usize::from(request.count) {
            0 => DEFAULT_CANDIDATES,
            c => c.min(self.config.max_candidates),
        };
        let me = self.me;
        let mut pool: Vec<&KnownIndexer> =
            self.known.values().filter(|k| k.addr.id != from && k.addr.id != me).collect();
        self.rng.shuffle(&mut pool);
        let candidates = pool.into_iter().take(count).map(|k| k.addr.clone()).collect();
        out.emit(IndexerOut::Send { to: from, message: CandidatesResponse { req: request.req, candidates }.into() });
    }

    /// Remembers another indexer seen alive at `now` (from this peer's own pool, or a heartbeating
    /// indexer), with its fill rate if known. Keeps the `indexer_cache_max` most recently seen.
    pub fn note_indexer(&mut self, indexer: PeerAddr, fill_rate: Option<f64>, now: Timestamp) {
        if indexer.id == self.me {
            return;
        }
        let fill_rate = fill_rate.filter(|f| f.is_finite()).map(|f| f.clamp(0.0, 1.0));
        if let Some(k) = self.known.get_mut(&indexer.id) {
            if !indexer.addrs.is_empty() {
                k.addr = indexer;
            }
            if fill_rate.is_some() {
                k.fill_rate = fill_rate;
            }
            k.last_seen = k.last_seen.max(now);
            return;
        }
        let max = self.config.indexer_cache_max.max(1);
        while self.known.len() >= max {
            let oldest = self.known.iter().min_by_key(|(id, k)| (k.last_seen, **id)).map(|(id, _)| *id);
            match oldest {
                Some(id) => self.known.remove(&id),
                None => break,
            };
        }
        self.known.insert(indexer.id, KnownIndexer { addr: indexer, fill_rate, last_seen: now });
    }

    /// Providers of the indexer rendezvous key found by the DHT's periodic cache refresh: keep up
    /// to `indexer_cache_max` of them, less loaded first (randomised), at most one per /24.
    pub fn on_providers(&mut self, providers: &[ProviderRecord], now: Timestamp) {
        let me = self.me;
        let want = self.config.indexer_cache_max;
        for addr in select_by_fill(providers, want, |p| *p == me, &mut self.cache_rng) {
            let fill = providers.iter().find(|r| r.body.provider.id == addr.id).map(|r| f64::from(r.body.fill_rate));
            self.note_indexer(addr, fill, now);
        }
    }
}
