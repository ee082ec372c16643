//! Serving DHT requests (server mode only): closest peers, values, providers, and `STORE` /
//! `ADD_PROVIDER`, each validated before it is kept (a record verified once per replica).

use super::*;

impl Dht {
    /// A DHT request from `from` (authenticated). Returns the refusal of a `STORE` whose record is
    /// invalid, so the router can strike the sender.
    pub fn on_request(
        &mut self,
        from: PeerAddr,
        message: DhtMessage,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> Option<StoreRefusal> {
        let peer = from.id;
        let k = self.lookup_config.k;
        let reply = match message {
            DhtMessage::FindNode(FindNode { req, target, server }) => {
                self.note_server(&from, server, now);
                DhtMessage::Nodes(Nodes { req, closer: self.closer(&target, peer, k) })
            }
            DhtMessage::FindValue(FindValue { req, key, server }) => {
                self.note_server(&from, server, now);
                match self.local(&key, now).cloned() {
                    Some(r) => DhtMessage::Value(Value { req, record: Some(r), closer: Vec::new() }),
                    None => {
                        DhtMessage::Value(Value { req, record: None, closer: self.closer(&key.kad_key(), peer, k) })
                    }
                }
            }
            DhtMessage::GetProviders(GetProviders { req, key, server }) => {
                self.note_server(&from, server, now);
                let mut providers: Vec<ProviderRecord> = if key == indexer_rendezvous() {
                    self.providers.values().filter(|r| r.body.expires_at > now).cloned().collect()
                } else {
                    Vec::new()
                };
                if providers.len() > PROVIDERS_PER_ANSWER {
                    self.rng.shuffle(&mut providers);
                    providers.truncate(PROVIDERS_PER_ANSWER);
                }
                DhtMessage::Providers(Providers { req, providers, closer: self.closer(&key, peer, k) })
            }
            DhtMessage::Store(Store { req, record, .. }) => {
                let refused = self.accept_store(peer, record, now, out);
                self.refuse_write(peer, req, refused, out);
                return refused.filter(|r| *r == StoreRefusal::Invalid);
            }
            DhtMessage::StoreBatch(StoreBatch { req, records, .. }) => {
                // Each record on its own; the first refusal is the answer, and an invalid one
                // strikes the sender once for the batch.
                let mut refused = None;
                let mut invalid = false;
                for record in records.into_iter().take(MAX_STORE_BATCH) {
                    let r = self.accept_store(peer, record, now, out);
                    invalid |= r == Some(StoreRefusal::Invalid);
                    refused = refused.or(r);
                }
                self.refuse_write(peer, req, refused, out);
                return invalid.then_some(StoreRefusal::Invalid);
            }
            DhtMessage::AddProvider(AddProvider { req, key, provider }) => {
                let refused = self.accept_provider(peer, key, provider, now);
                self.refuse_write(peer, req, refused, out);
                return refused.filter(|r| *r == StoreRefusal::Invalid);
            }
            _ => return None,
        };
        self.reply(peer, reply, out);
        None
    }

    /// Writes are one-way: only a refusal is answered, as a [`StoreAck`] naming it, so that the
    /// writer can tell (and log) why.
    fn refuse_write(&mut self, to: PeerId, req: RequestId, refused: Option<StoreRefusal>, out: &mut Vec<Action>) {
        if refused.is_some() {
            self.reply(to, DhtMessage::StoreAck(StoreAck { req, refused }), out);
        }
    }

    pub(super) fn reply(&mut self, to: PeerId, message: DhtMessage, out: &mut Vec<Action>) {
        out.emit(DhtOut::Send { to, message: message.into() });
    }

    pub(super) fn closer(&self, target: &Key, exclude: PeerId, k: usize) -> Vec<PeerAddr> {
        let mut v = self.table.closest(target, k + 1);
        v.retain(|a| a.id != exclude);
        v.truncate(k);
        v
    }

    pub(super) fn note_server(&mut self, from: &PeerAddr, server: bool, now: Timestamp) {
        if server && self.server {
            self.table.insert(from.clone(), now);
            self.failures.remove(&from.id);
        }
    }

    pub(super) fn accept_store(
        &mut self,
        from: PeerId,
        record: PeerRecord,
        now: Timestamp,
        out: &mut Vec<Action>,
    ) -> Option<StoreRefusal> {
        if !self.server {
            return Some(StoreRefusal::Refused);
        }
        if self.store.holds(&record) {
            return None;
        }
        self.stats.verifications += 1;
        let owner = record.body.peer_id;
        let did = record.body.did.clone();
        let refusal = match self.store.put(record, now) {
            Ok(stored) => {
                persist_bindings(stored, out);
                self.stats.stores_accepted += 1;
                out.emit(DhtOut::Event(Event::RecordStored { owner, did, from }));
                return None;
            }
            Err(StoreError::Invalid(_)) => StoreRefusal::Invalid,
            Err(StoreError::ForeignDid { .. }) => StoreRefusal::ForeignDid,
            Err(StoreError::Stale) => return None,
        };
        self.stats.stores_refused += 1;
        out.emit(DhtOut::Event(Event::RecordRejected { from, owner, reason: refusal }));
        Some(refusal)
    }

    pub(super) fn accept_provider(
        &mut self,
        from: PeerId,
        key: Key,
        provider: ProviderRecord,
        now: Timestamp,
    ) -> Option<StoreRefusal> {
        if !self.server || key != indexer_rendezvous() {
            return Some(StoreRefusal::Refused);
        }
        if provider.body.provider.id != from {
            return Some(StoreRefusal::Invalid);
        }
        if let Some(old) = self.providers.get(&from) {
            if *old == provider {
                return None;
            }
            if old.body.expires_at >= provider.body.expires_at {
                return Some(StoreRefusal::Stale);
            }
        }
        self.stats.verifications += 1;
        if provider.verify_with(now, &self.sigs).is_err() {
            return Some(StoreRefusal::Invalid);
        }
        if !self.providers.contains_key(&from) && self.providers.len() >= MAX_PROVIDERS {
            let victim = self.providers.iter().min_by_key(|(_, r)| r.body.expires_at).map(|(p, _)| *p);
            if let Some(v) = victim {
                self.providers.remove(&v);
            }
        }
        self.providers.insert(from, provider);
        None
    }
}
