//! Records offered by their owners and replication: a record claiming a DID new to us is checked
//! in the DHT before it is served, a committed record is stored on the k closest peers of both of
//! its keys, and an indexer re-announces its signed provider record every `provide_interval`.

use super::*;

impl Dht {
    /// A record handed over by `from` (publish, or embedded in a heartbeat). It must be `from`'s
    /// own. Identical to the one held: nothing to verify. A refresh of a held record (same DID):
    /// verified, stored and replicated. A DID new to us: verified, then checked in the DHT before
    /// it is served ([`Offer::Checking`]; the verdict comes as [`DhtDone::Claim`]).
    pub fn offer_record(&mut self, from: PeerId, record: PeerRecord, now: Timestamp, out: &mut Vec<Action>) -> Offer {
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
        self.stats.verifications += 1;
        if let Err(e) = record.verify(now) {
            return Offer::Refused(StoreError::Invalid(e));
        }
        let known_binding = self.store.by_peer(&from, now).is_some_and(|h| h.body.did == record.body.did)
            || self.store.did_owner(&record.body.did, now) == Some(from);
        if !known_binding && self.server && !self.table.is_empty() {
            if let Some(owner) = self.store.did_owner(&record.body.did, now) {
                debug_assert_ne!(owner, from);
                return Offer::Refused(StoreError::ForeignDid { did: record.body.did });
            }
            let key = RecordKey::Did(record.body.did.clone());
            self.claims.insert(from, record.clone());
            let started = self.maintain(Goal::Claim { record, publisher: from }, key.kad_key(), now, out);
            return if started { Offer::Checking } else { Offer::Refused(StoreError::Stale) };
        }
        self.commit(from, record, now, out)
    }

    pub(super) fn commit(&mut self, from: PeerId, record: PeerRecord, now: Timestamp, out: &mut Vec<Action>) -> Offer {
        let expires = record.body.expires_at;
        match self.store.put_verified(record.clone(), now) {
            Ok(stored) => {
                persist_bindings(stored, out);
                out.emit(DhtOut::Event(Event::RecordStored {
                    owner: record.body.peer_id,
                    did: record.body.did.clone(),
                    from,
                }));
                self.replicate(record, now, out);
                Offer::Held(expires)
            }
            Err(e) => Offer::Refused(e),
        }
    }

    /// Stores `record` on the k closest peers of both of its keys.
    pub(super) fn replicate(&mut self, record: PeerRecord, now: Timestamp, out: &mut Vec<Action>) {
        if !self.server || self.table.is_empty() {
            return;
        }
        for key in [RecordKey::Peer(record.body.peer_id), RecordKey::Did(record.body.did.clone())] {
            self.maintain(Goal::Replicate { record: record.clone() }, key.kad_key(), now, out);
        }
    }

    /// Signs a fresh provider record and stores it on the k closest peers of the rendezvous key.
    pub(super) fn provide(&mut self, now: Timestamp, out: &mut Vec<Action>) {
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
        self.maintain(Goal::Provide { record }, indexer_rendezvous(), now, out);
    }
}
