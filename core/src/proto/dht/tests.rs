//! Unit tests of the DHT machine: durable DID bindings.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::proto::identity::Did;
use crate::proto::record::RecordBody;

const NOW: Timestamp = Timestamp(1_700_000_000_000);

fn record(key: &Keypair, did: &str, at: Timestamp) -> PeerRecord {
    let body = RecordBody {
        peer_id: key.peer_id(),
        did: Did::new(did).unwrap(),
        name: "n".into(),
        addrs: Vec::new(),
        api_url: None,
        nats_address: None,
        wallet: None,
        issued_at: at,
        expires_at: at + Duration::from_secs(300),
    };
    PeerRecord::sign(body, key).unwrap()
}

/// An indexer's DHT without other indexers (records are committed at once).
fn server(now: Timestamp) -> Dht {
    let key = Keypair::derive(0, "dht-server");
    Dht::new(Config::default(), key, Vec::new(), true, &[], DetRng::new(1, "dht-test"), now)
}

fn bindings(out: &[Action]) -> Vec<DidBinding> {
    out.iter()
        .filter_map(|a| match a {
            Action::Persist(Persist::DidBinding(b)) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_binding_is_persisted_before_the_record_is_announced_and_not_on_every_refresh() {
    let owner = Keypair::derive(1, "owner");
    let mut dht = server(NOW);
    let mut out = Vec::new();
    let offer = dht.offer_record(owner.peer_id(), record(&owner, "did:o", NOW), NOW, &mut out);
    assert_eq!(offer, Offer::Held(NOW + Duration::from_secs(300)));
    let b = bindings(&out);
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].owner, b[0].until), (owner.peer_id(), NOW + Duration::from_secs(300) + BINDING_TTL));
    let persist = out.iter().position(|a| matches!(a, Action::Persist(_))).unwrap();
    let stored = out.iter().position(|a| matches!(a, Action::Event(Event::RecordStored { .. }))).unwrap();
    assert!(persist < stored, "committed before anything that follows");
    // The owner's refreshes every 150 s: one write per quarter of BINDING_TTL of extension.
    let mut writes = 0;
    for i in 1..=24u64 {
        let t = NOW + Duration::from_secs(150 * i);
        let mut out = Vec::new();
        assert!(matches!(dht.offer_record(owner.peer_id(), record(&owner, "did:o", t), t, &mut out), Offer::Held(_)));
        writes += bindings(&out).len();
    }
    assert_eq!(writes, 3, "24 refreshes over one hour, 3 writes");
    // A STORE from another indexer of a new record binds durably too; a thief's STORE does not.
    let other = Keypair::derive(2, "other");
    let mut out = Vec::new();
    let from = PeerAddr::id_only(Keypair::derive(9, "indexer").peer_id());
    let store = |record| DhtMessage::Store(Store { req: RequestId(1), record, server: true });
    assert_eq!(dht.on_request(from.clone(), store(record(&other, "did:x", NOW)), NOW, &mut out), None);
    assert_eq!(bindings(&out).len(), 1);
    let thief = Keypair::derive(3, "thief");
    let mut out = Vec::new();
    let _ = dht.on_request(from, store(record(&thief, "did:x", NOW)), NOW, &mut out);
    assert!(bindings(&out).is_empty());
}

#[test]
fn restored_bindings_refuse_a_thief_after_a_restart() {
    let (owner, thief) = (Keypair::derive(1, "owner"), Keypair::derive(3, "thief"));
    let mut dht = server(NOW);
    let mut out = Vec::new();
    let _ = dht.offer_record(owner.peer_id(), record(&owner, "did:o", NOW), NOW, &mut out);
    let persisted = bindings(&out);
    // Restarted after the owner's record expired.
    let later = NOW + Duration::from_secs(1200);
    let mut dht = server(later);
    dht.restore(&persisted, later);
    let mut out = Vec::new();
    let offer = dht.offer_record(thief.peer_id(), record(&thief, "did:o", later), later, &mut out);
    assert_eq!(offer, Offer::Refused(StoreError::ForeignDid { did: Did::new("did:o").unwrap() }));
    assert!(out.is_empty());
    // Without the store the thief would have had it.
    let mut fresh = server(later);
    let offer = fresh.offer_record(thief.peer_id(), record(&thief, "did:o", later), later, &mut out);
    assert!(matches!(offer, Offer::Held(_)));
    // A client holds no records and ignores bindings.
    let mut client =
        Dht::new(Config::default(), Keypair::derive(5, "c"), Vec::new(), false, &[], DetRng::new(1, "c"), later);
    client.restore(&persisted, later);
    assert_eq!(client.records().did_owner(&Did::new("did:o").unwrap(), later), None);
}
