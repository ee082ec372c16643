//! Records offered by their owners and replication: a record claiming a DID new to us is checked
//! in the DHT before it is served, a committed record is stored on the k closest peers of both of
//! its keys by **one** indexer per version (the owner's referent, see [`Dht::offer_record`]), and an
//! indexer re-announces its signed provider record every `provide_interval`.
//!
//! Replication reuses the closest set a (converged) lookup found for a key for [`CLOSEST_TTL`]:
//! the next versions of the same record go straight to their replicas, one message per replica
//! for both keys, without a lookup. A set is patched rather than dropped: a peer that fails an
//! RPC leaves it, a closer peer our routing table learns joins it, and only a set that lost half
//! its peers is looked up again. A new referent asks the replicas whether they hold the version
//! before storing it again ([`Dht::replicate_held`]).

use super::*;

impl Dht {
    /// A record handed over by `from` (publish, or embedded in a heartbeat). It must be `from`'s
    /// own. Identical to the one held: nothing to verify. A refresh of a held record (same DID):
    /// verified, stored and, when `replicate`, replicated. A DID new to us: verified, then checked
    /// in the DHT before it is served ([`Offer::Checking`]; the verdict comes as
    /// [`DhtDone::Claim`]).
    ///
    /// A node hands each version of its record to every indexer of its pool, but only one of
    /// them — its referent — is asked to `replicate` it, and only it checks a new DID's claim;
    /// the others hold a record with a DID new to them unchecked (neither stored nor served)
    /// until the node names them its referent ([`Dht::replicate_held`]). Every indexer re-running
    /// the same 2 × k `STORE`s, then the same claim lookup, was most of the federation's traffic.
    pub fn offer_record(
        &mut self,
        from: PeerId,
        record: PeerRecord,
        replicate: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> Offer {
        if record.body.peer_id != from {
            return Offer::Refused(StoreError::Invalid(RecordError::WrongKey));
        }
        if let Some(held) = self.store.by_peer(&from, now)
            && *held == record
        {
            return Offer::Held(record.body.expires_at);
        }
        if self.claims.get(&from) == Some(&record) {
            return Offer::Checking;
        }
        if !replicate && self.unchecked.get(&from) == Some(&record) {
            return Offer::Held(record.body.expires_at);
        }
        self.stats.verifications += 1;
        if let Err(e) = record.verify_with(now, &self.sigs) {
            return Offer::Refused(StoreError::Invalid(e));
        }
        let known_binding = self.store.by_peer(&from, now).is_some_and(|h| h.body.did == record.body.did)
            || self.store.did_owner(&record.body.did, now) == Some(from);
        if !known_binding && self.server {
            if !self.table.is_empty()
                && let Some(owner) = self.store.did_owner(&record.body.did, now)
            {
                debug_assert_ne!(owner, from);
                return Offer::Refused(StoreError::ForeignDid { did: record.body.did.clone() });
            }
            // Only the indexer that replicates the record checks its claim: the owner's other
            // indexers hold it, neither stored nor served, until one of them becomes the
            // replicator (`replicate_held`). Every indexer of a joining node running the same
            // lookup was a sixth of the federation's traffic. So too with an empty routing table
            // (an indexer in its first seconds): a copy it stored and served, replicated by
            // nobody, answered the referent's claim lookup as if the DHT held the record, and the
            // record was never written to its replicas.
            if !replicate && (self.unchecked.len() < self.config.record_store_max || self.unchecked.contains_key(&from))
            {
                let expires = record.body.expires_at;
                self.unchecked.insert(from, record);
                return Offer::Held(expires);
            }
            if !self.table.is_empty() {
                return self.claim(from, record, replicate, now, out);
            }
        }
        self.unchecked.remove(&from);
        self.commit(from, record, replicate, now, out)
    }

    /// Checks `record`'s claim of a DID new to us against the DHT before committing it
    /// ([`Offer::Checking`]; the verdict comes as [`DhtDone::Claim`]).
    fn claim(
        &mut self,
        from: PeerId,
        record: PeerRecord,
        replicate: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> Offer {
        self.unchecked.remove(&from);
        let key = RecordKey::Did(record.body.did.clone());
        self.claims.insert(from, record.clone());
        let goal = Goal::Claim { record, publisher: from, replicate };
        let started = self.maintain(goal, key.kad_key(), now, out);
        if started { Offer::Checking } else { Offer::Refused(StoreError::Stale) }
    }

    /// `peer` names us its referent: the version of its record we hold is replicated unless we
    /// replicated this very version already (we may have held it as one of its other indexers, or
    /// its DID check may have just ended). Cheap when there is nothing to do.
    ///
    /// Its previous referent has usually replicated that version (the node moved, or its referent
    /// crashed): a converged `FIND_VALUE` on its peer key asks the replicas first, and the 2 × k
    /// `STORE`s go out only if fewer than [`TAKEOVER_HOLDERS`] of them hold it.
    ///
    /// A record we held unchecked (we were one of its owner's other indexers) has its DID claim
    /// checked first, then is committed; the check also tells whether the DHT holds it already.
    pub fn replicate_held(&mut self, peer: &PeerId, now: Timestamp, out: &mut Vec<Action>) {
        let Some(r) = self.store.by_peer(peer, now) else {
            if self.server
                && self.unchecked_expiry(peer, now).is_some()
                && !self.claims.contains_key(peer)
                && let Some(r) = self.unchecked.remove(peer)
            {
                if self.table.is_empty() {
                    // Nobody to check the claim with (a lone indexer): committed, as a record
                    // handed to it as the replicator would be.
                    self.commit(*peer, r, true, now, out);
                } else if self.claim(*peer, r.clone(), true, now, out) != Offer::Checking {
                    // Not started (too many queries): held unchecked again, tried at its next
                    // heartbeat.
                    self.unchecked.insert(*peer, r);
                }
            }
            return;
        };
        if !self.server || self.table.is_empty() {
            return;
        }
        if self.table.len() >= self.lookup_config.k && self.young_writes.remove(peer) {
            let r = r.clone();
            self.replicate_to_new_replicas(r, now, out);
            return;
        }
        if self.replicated.get(peer) == Some(&r.body.expires_at) {
            return;
        }
        let r = r.clone();
        // In a DHT of fewer than about 2k indexers, the node's other indexers (which hold its
        // record too) are a large part of any closest set: holders prove nothing there.
        if self.table.len() < 2 * self.lookup_config.k {
            self.replicate(r, false, now, out);
            return;
        }
        self.replicated.insert(*peer, r.body.expires_at);
        let target = RecordKey::Peer(*peer).kad_key();
        if !self.maintain(Goal::Takeover { record: r.clone(), holders: 0 }, target, now, out) {
            self.replicated.remove(peer);
            self.replicate(r, false, now, out);
        }
    }

    pub(super) fn commit(
        &mut self,
        from: PeerId,
        record: PeerRecord,
        replicate: bool,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> Offer {
        let expires = record.body.expires_at;
        let refresh = self.store.by_peer(&from, now).is_some_and(|h| h.body.same_content(&record.body));
        match self.store.put_verified(record.clone(), now) {
            Ok(stored) => {
                persist_bindings(stored, out);
                out.emit(DhtOut::Event(Event::RecordStored {
                    owner: record.body.peer_id,
                    did: record.body.did.clone(),
                    from,
                }));
                if replicate {
                    self.replicate(record, refresh, now, out);
                }
                Offer::Held(expires)
            }
            Err(e) => Offer::Refused(e),
        }
    }

    /// Stores `record` on the k closest peers of both of its keys: to the closest sets cached for
    /// them (one message per peer of their union), after a lookup for a key without one.
    ///
    /// A `refresh` (a new version of a record held with the same content) is not urgent: its
    /// replicas still hold a valid previous version, so it waits for their next batch
    /// (`STORE_BATCH`), even when a key's set must first be looked up. A changed or first
    /// version goes at once, one `STORE` per replica.
    pub(super) fn replicate(&mut self, record: PeerRecord, refresh: bool, now: Timestamp, out: &mut Vec<Action>) {
        if !self.server || self.table.is_empty() {
            return;
        }
        self.replicated.insert(record.body.peer_id, record.body.expires_at);
        if self.table.len() < self.lookup_config.k {
            self.young_writes.insert(record.body.peer_id);
        }
        let mut known: Vec<PeerAddr> = Vec::new();
        // Replicas that joined a cached set since its last write (an indexer that started or came
        // back near the key) hold no version of the record: a refresh reaches them at once.
        let mut joined: Vec<PeerAddr> = Vec::new();
        let mut missing = Vec::new();
        for key in [RecordKey::Peer(record.body.peer_id), RecordKey::Did(record.body.did.clone())] {
            let target = key.kad_key();
            match self.cached_closest(&target, now) {
                Some((c, new)) => {
                    for p in c {
                        if new.contains(&p.id) {
                            if !joined.iter().any(|k| k.id == p.id) {
                                joined.push(p);
                            }
                        } else if !known.iter().any(|k| k.id == p.id) {
                            known.push(p);
                        }
                    }
                }
                None => missing.push(target),
            }
        }
        known.retain(|p| !joined.iter().any(|j| j.id == p.id));
        if refresh && !joined.is_empty() {
            self.send_to_closest(Goal::first_version(record.clone()), joined, now, out);
        } else {
            known.append(&mut joined);
        }
        if !refresh && !missing.is_empty() {
            // A first or changed version goes to the union of both keys' replicas, one `STORE`
            // per peer: the keys without a set are looked up first (one after the other), the
            // replicas known so far carried along.
            let then = missing.get(1).copied();
            let goal = Goal::Replicate { record, refresh, with: known, then };
            self.replicate_after_lookup(goal, missing[0], now, out);
            return;
        }
        for target in missing {
            self.maintain(
                Goal::Replicate { record: record.clone(), refresh, with: Vec::new(), then: None },
                target,
                now,
                out,
            );
        }
        if known.is_empty() {
            return;
        }
        if refresh {
            self.queue_refresh(record, known, now, out);
        } else {
            self.send_to_closest(Goal::first_version(record), known, now, out);
        }
    }

    /// Looks up `target`'s closest set for a write that will also go to the replicas in its
    /// `with`; if the lookup cannot start (too many queries), those are written to at once.
    pub(super) fn replicate_after_lookup(&mut self, goal: Goal, target: Key, now: Timestamp, out: &mut Vec<Action>) {
        let fallback = match &goal {
            Goal::Replicate { record, with, .. } if !with.is_empty() => Some((record.clone(), with.clone())),
            _ => None,
        };
        if !self.maintain(goal, target, now, out)
            && let Some((record, with)) = fallback
        {
            self.send_to_closest(Goal::first_version(record), with, now, out);
        }
    }

    /// A record replicated from a partial view of the DHT (see `young_writes`): stored on the
    /// peers its keys' closest sets gained since, patched from the full routing table (a key
    /// without a set is looked up and stored on all of its replicas).
    fn replicate_to_new_replicas(&mut self, record: PeerRecord, now: Timestamp, out: &mut Vec<Action>) {
        let mut joined: Vec<PeerAddr> = Vec::new();
        for key in [RecordKey::Peer(record.body.peer_id), RecordKey::Did(record.body.did.clone())] {
            let target = key.kad_key();
            match self.cached_closest(&target, now) {
                Some((peers, new)) => {
                    for p in peers {
                        if new.contains(&p.id) && !joined.iter().any(|j| j.id == p.id) {
                            joined.push(p);
                        }
                    }
                }
                None => {
                    self.maintain(Goal::first_version(record.clone()), target, now, out);
                }
            }
        }
        if !joined.is_empty() {
            self.send_to_closest(Goal::first_version(record), joined, now, out);
        }
    }

    /// Queues a refreshed record for each of its replicas; a replica's batch goes at once when it
    /// is full, all of them when the earliest waiting record is due.
    pub(super) fn queue_refresh(
        &mut self,
        record: PeerRecord,
        replicas: Vec<PeerAddr>,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let life = record.body.expires_at.since(record.body.issued_at);
        let due = now + life / REFRESH_DELAY_DIVISOR;
        self.next_refresh = Some(self.next_refresh.map_or(due, |t| t.min(due)));
        let owner = record.body.peer_id;
        let mut full = Vec::new();
        let len = approx_len(&record);
        for r in replicas {
            let batch = self.refreshes.entry(r.id).or_default();
            if let Some(old) = batch.records.insert(owner, record.clone()) {
                batch.bytes -= approx_len(&old);
            }
            batch.bytes += len;
            if batch.records.len() >= MAX_STORE_BATCH || batch.bytes >= STORE_BATCH_BYTES {
                full.push(r.id);
            }
        }
        let batches: Vec<(PeerId, Vec<PeerRecord>)> = full
            .into_iter()
            .filter_map(|p| self.refreshes.remove(&p).map(|b| (p, b.records.into_values().collect())))
            .collect();
        self.send_batches(batches, now, out);
    }

    /// Sends every waiting refresh.
    pub(super) fn flush_refreshes(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        self.next_refresh = None;
        let batches: Vec<(PeerId, Vec<PeerRecord>)> = std::mem::take(&mut self.refreshes)
            .into_iter()
            .map(|(p, b)| (p, b.records.into_values().collect()))
            .collect();
        self.send_batches(batches, now, out);
    }

    /// One `STORE_BATCH` per replica (split at [`MAX_STORE_BATCH`]), one-way like every write
    /// ([`Dht::send_writes`]).
    fn send_batches(&mut self, batches: Vec<(PeerId, Vec<PeerRecord>)>, now: Timestamp, out: &mut Vec<Action>) {
        if batches.is_empty() {
            return;
        }
        let server = self.server;
        for (to, records) in batches {
            for chunk in records.chunks(MAX_STORE_BATCH) {
                let req = self.next_request();
                self.stats.rpcs += 1;
                self.written.insert(to, now);
                let message = DhtMessage::StoreBatch(StoreBatch { req, records: chunk.to_vec(), server });
                out.emit(DhtOut::Send { to, message: message.into() });
            }
        }
        self.stats.queries += 1;
    }

    /// The closest set cached for `target`, unless it lapsed. It is kept up to date without
    /// lookups: a peer that fails an RPC leaves it ([`Dht::note_failure`]), and a peer our
    /// routing table learned since (an indexer that joined or came back) and that is closer than
    /// its farthest joins it, the farthest leaving.
    ///
    /// Also returns the peers that joined the set in this call (they were not in it at its last
    /// use, so they hold nothing written through it).
    pub(super) fn cached_closest(&mut self, target: &Key, now: Timestamp) -> Option<(Vec<PeerAddr>, Vec<PeerId>)> {
        let k = self.lookup_config.k;
        let c = self.closest.get_mut(target).filter(|c| c.until > now)?;
        let mut joined = Vec::new();
        for p in self.table.closest(target, k) {
            if !self.failures.contains_key(&p.id) && !c.peers.iter().any(|q| q.id == p.id) {
                joined.push(p.id);
                c.peers.push(p);
            }
        }
        if !joined.is_empty() {
            c.peers.sort_by_key(|p| Key::from(p.id).distance(target));
            c.peers.truncate(k);
            joined.retain(|j| c.peers.iter().any(|p| p.id == *j));
        }
        Some((c.peers.clone(), joined))
    }

    /// Remembers the closest set a replication lookup found for `target`.
    pub(super) fn cache_closest(&mut self, target: Key, peers: &[PeerAddr], now: Timestamp) {
        if peers.is_empty() || (self.closest.len() >= MAX_CLOSEST_CACHED && !self.closest.contains_key(&target)) {
            return;
        }
        self.closest.insert(target, Closest { peers: peers.to_vec(), until: now + CLOSEST_TTL });
    }

    /// Signs a fresh provider record and stores it on the k closest peers of the rendezvous key,
    /// unless the last one is news enough still (see [`PROVIDER_FILL_STEP`]): then only to the
    /// replicas that joined that key's closest set since.
    pub(super) fn provide(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        if let Some((at, (fill, capacity))) = self.provided
            && now < at + self.config.provider_ttl / 2
            && capacity == self.fill.1
            && (fill - self.fill.0).abs() < PROVIDER_FILL_STEP
            && let Some(held) = self.providers.get(&self.me).cloned()
        {
            if let Some((peers, joined)) = self.cached_closest(&indexer_rendezvous(), now) {
                let peers: Vec<PeerAddr> = peers.into_iter().filter(|p| joined.contains(&p.id)).collect();
                if !peers.is_empty() {
                    self.send_to_closest(Goal::Provide { record: held }, peers, now, out);
                }
            }
            return;
        }
        let body = ProviderBody {
            provider: PeerAddr { id: self.me, addrs: self.addrs.clone() },
            fill_rate: self.fill.0,
            capacity: self.fill.1,
            issued_at: now,
            expires_at: now + self.config.provider_ttl,
        };
        let Ok(record) = ProviderRecord::sign(body, &self.keypair) else {
            return;
        };
        self.providers.insert(self.me, record.clone());
        if self.table.is_empty() {
            return;
        }
        self.provided = Some((now, self.fill));
        // Like a record's replicas, the rendezvous key's closest set is looked up once and then
        // kept up to date (see `cached_closest`).
        let target = indexer_rendezvous();
        match self.cached_closest(&target, now) {
            Some((peers, _)) => self.send_to_closest(Goal::Provide { record }, peers, now, out),
            None => {
                self.maintain(Goal::Provide { record }, target, now, out);
            }
        }
    }
}

/// About how many bytes `r` takes encoded (an upper estimate: lengths plus fixed fields).
fn approx_len(r: &PeerRecord) -> usize {
    let b = &r.body;
    let opt = |o: &Option<String>| o.as_ref().map_or(1, |s| s.len() + 3);
    160 + b.did.as_str().len()
        + b.name.len()
        + b.addrs.iter().map(|a| a.len() + 3).sum::<usize>()
        + opt(&b.api_url)
        + opt(&b.nats_address)
        + opt(&b.wallet)
}
