//! Unit tests of the DHT machine: durable DID bindings, replication, hedged reads.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::proto::identity::Did;
use crate::proto::record::RecordBody;
use std::collections::BTreeSet;

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
    let offer = dht.offer_record(owner.peer_id(), record(&owner, "did:o", NOW), true, NOW, &mut out);
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
        assert!(matches!(
            dht.offer_record(owner.peer_id(), record(&owner, "did:o", t), true, t, &mut out),
            Offer::Held(_)
        ));
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
    let _ = dht.offer_record(owner.peer_id(), record(&owner, "did:o", NOW), true, NOW, &mut out);
    let persisted = bindings(&out);
    // Restarted after the owner's record expired.
    let later = NOW + Duration::from_secs(1200);
    let mut dht = server(later);
    dht.restore(&persisted, later);
    let mut out = Vec::new();
    let offer = dht.offer_record(thief.peer_id(), record(&thief, "did:o", later), true, later, &mut out);
    assert_eq!(offer, Offer::Refused(StoreError::ForeignDid { did: Did::new("did:o").unwrap() }));
    assert!(out.is_empty());
    // Without the store the thief would have had it.
    let mut fresh = server(later);
    let offer = fresh.offer_record(thief.peer_id(), record(&thief, "did:o", later), true, later, &mut out);
    assert!(matches!(offer, Offer::Held(_)));
    // A client holds no records and ignores bindings.
    let mut client =
        Dht::new(Config::default(), Keypair::derive(5, "c"), Vec::new(), false, &[], DetRng::new(1, "c"), later);
    client.restore(&persisted, later);
    assert_eq!(client.records().did_owner(&Did::new("did:o").unwrap(), later), None);
}

/// The DHT requests in `out`: (recipient, message).
fn dht_sends(out: &[Action]) -> Vec<(PeerId, DhtMessage)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { to, message: Envelope::Dht(m) } => Some((*to, m.clone())),
            _ => None,
        })
        .collect()
}

/// Answers every `FIND_NODE` in `out` (no closer peers known), until none is left; returns the
/// peers that got a `STORE` (writes are not answered).
fn answer_all(dht: &mut Dht, out: Vec<Action>, now: Timestamp) -> Vec<PeerId> {
    answer(dht, out, |_| None, now)
}

/// Like [`answer_all`], and every `FIND_VALUE` with `value(peer)`.
fn answer(
    dht: &mut Dht,
    out: Vec<Action>,
    value: impl Fn(&PeerId) -> Option<PeerRecord>,
    now: Timestamp,
) -> Vec<PeerId> {
    exchange(dht, out, value, now)
        .into_iter()
        .filter(|(_, m)| matches!(m, DhtMessage::Store(_) | DhtMessage::StoreBatch(_)))
        .map(|(to, _)| to)
        .collect()
}

/// Answers the requests in `out` (see [`answer`]) until none is left; returns every request.
fn exchange(
    dht: &mut Dht,
    mut out: Vec<Action>,
    value: impl Fn(&PeerId) -> Option<PeerRecord>,
    now: Timestamp,
) -> Vec<(PeerId, DhtMessage)> {
    let mut asked = Vec::new();
    while !out.is_empty() {
        let mut next = Vec::new();
        for (to, m) in dht_sends(&out) {
            let reply = match &m {
                DhtMessage::FindValue(f) => {
                    DhtMessage::Value(Value { req: f.req, record: value(&to), closer: Vec::new() })
                }
                DhtMessage::FindNode(f) => DhtMessage::Nodes(Nodes { req: f.req, closer: Vec::new() }),
                // Writes are one-way: recorded, not answered.
                DhtMessage::Store(_) | DhtMessage::StoreBatch(_) | DhtMessage::AddProvider(_) => {
                    asked.push((to, m));
                    continue;
                }
                _ => continue,
            };
            asked.push((to, m));
            dht.on_response(PeerAddr::id_only(to), reply, now, &mut next);
        }
        out = next;
    }
    asked
}

/// The union of the k closest peers `dht`'s table knows to both of `r`'s keys: where a first
/// version goes, one `STORE` per peer.
fn both_keys_replicas(dht: &Dht, r: &PeerRecord) -> BTreeSet<PeerId> {
    let k = Config::default().kad_k;
    [RecordKey::Peer(r.body.peer_id), RecordKey::Did(r.body.did.clone())]
        .iter()
        .flat_map(|key| dht.table.closest(&key.kad_key(), k))
        .map(|p| p.id)
        .collect()
}

/// Asserts that `stores` went to exactly `expected`, once per peer.
fn once_each(stores: &[PeerId], expected: &BTreeSet<PeerId>) {
    let got: BTreeSet<PeerId> = stores.iter().copied().collect();
    assert_eq!(got.len(), stores.len(), "one STORE per peer, even one in both keys' sets");
    assert_eq!(&got, expected, "to the union of both keys' replicas");
}

#[test]
fn replication_keeps_its_closest_sets_up_to_date_without_lookups() {
    let peers: Vec<PeerAddr> =
        (0..40).map(|i| PeerAddr::id_only(Keypair::derive(100 + i, "replica").peer_id())).collect();
    let me = Keypair::derive(0, "dht-server");
    let mut dht = Dht::new(Config::default(), me, Vec::new(), true, &peers, DetRng::new(1, "dht-test"), NOW);
    let owner = Keypair::derive(1, "owner");
    let k = Config::default().kad_k;

    // The first version: a lookup per key (one after the other), then one STORE per peer of the
    // union of both keys' k closest, nothing before both lookups ended.
    let mut out = Vec::new();
    let r = record(&owner, "did:o", NOW);
    dht.replicate(r.clone(), false, NOW, &mut out);
    let sends = dht_sends(&out);
    assert!(!sends.is_empty() && sends.iter().all(|(_, m)| matches!(m, DhtMessage::FindNode(_))), "looked up first");
    let first = answer_all(&mut dht, out, NOW);
    let union = both_keys_replicas(&dht, &r);
    once_each(&first, &union);
    assert!(union.len() < 2 * k, "the keys' sets overlap here: a peer in both got one STORE");

    // The next version: straight to the replicas, one STORE per peer for both keys, no lookup.
    let t = NOW + Duration::from_secs(150);
    let mut out = Vec::new();
    dht.replicate(record(&owner, "did:o", t), false, t, &mut out);
    let sends = dht_sends(&out);
    assert!(sends.iter().all(|(_, m)| matches!(m, DhtMessage::Store(_))), "no lookup: {sends:?}");
    let second: BTreeSet<PeerId> = sends.iter().map(|(to, _)| *to).collect();
    assert_eq!(second, union);
    assert_eq!(sends.len(), union.len(), "one STORE per replica");

    // A replica is found unreachable right after the write (its dial failed): it leaves the
    // sets; the next version goes to the others, with no lookup (the routing table refills a set,
    // but not with a peer that just failed). Writes are one-way: nothing answers the others.
    let dead = *union.iter().next().unwrap();
    let idle = *union.iter().nth(1).unwrap();
    let mut later = Vec::new();
    dht.on_unreachable(dead, t + Duration::from_secs(1), &mut later);
    // Another one closes its connection long after the write (an idle close): no failure.
    dht.on_unreachable(idle, t + Config::default().kad_rpc_timeout + Duration::from_secs(1), &mut later);
    let t2 = t + Duration::from_secs(150);
    let mut out = Vec::new();
    dht.replicate(record(&owner, "did:o", t2), false, t2, &mut out);
    let sends = dht_sends(&out);
    assert!(sends.iter().all(|(_, m)| matches!(m, DhtMessage::Store(_))), "no lookup: {sends:?}");
    assert!(!sends.iter().any(|(to, _)| *to == dead), "the failed replica is left out");
    assert!(sends.iter().any(|(to, _)| *to == idle), "a replica that closed an idle link stays");
    answer_all(&mut dht, out, t2);

    // A peer closer than the farthest replica joins the routing table: it joins the set (the
    // farthest would leave a full one), still without a lookup.
    let target = RecordKey::Peer(owner.peer_id()).kad_key();
    let farthest = dht.closest[&target].peers.iter().map(|p| Key::from(p.id).distance(&target)).max().unwrap();
    let newcomer = (0..10_000u64)
        .map(|i| Keypair::derive(5000 + i, "newcomer").peer_id())
        .find(|p| Key::from(*p).distance(&target) < farthest)
        .unwrap();
    let t25 = t2 + Duration::from_secs(1);
    dht.table.insert(PeerAddr::id_only(newcomer), t25);
    let mut out = Vec::new();
    dht.replicate(record(&owner, "did:o", t25), false, t25, &mut out);
    let sends = dht_sends(&out);
    assert!(sends.iter().all(|(_, m)| matches!(m, DhtMessage::Store(_))), "no lookup: {sends:?}");
    assert!(sends.iter().any(|(to, _)| *to == newcomer), "the newcomer gets the record");
    assert_eq!(dht.closest[&target].peers.len(), k);
    assert!(dht.closest[&target].peers.iter().any(|p| p.id == newcomer));
    answer_all(&mut dht, out, t25);

    // A set that lost half of its peers is looked up again.
    let victims: Vec<PeerId> = dht.closest[&target].peers.iter().take(k / 2 + 1).map(|p| p.id).collect();
    for v in victims {
        dht.note_failure(v, t25);
    }
    assert!(!dht.closest.contains_key(&target));
    let mut out = Vec::new();
    dht.replicate(record(&owner, "did:o", t25), false, t25, &mut out);
    assert!(dht_sends(&out).iter().any(|(_, m)| matches!(m, DhtMessage::FindNode(_))), "looked up again");

    // A cached set lapses after CLOSEST_TTL.
    answer_all(&mut dht, out, t2);
    let t3 = t2 + CLOSEST_TTL;
    let mut out = Vec::new();
    dht.replicate(record(&owner, "did:o", t3), false, t3, &mut out);
    assert!(dht_sends(&out).iter().any(|(_, m)| matches!(m, DhtMessage::FindNode(_))));
}

#[test]
fn refreshed_versions_wait_for_one_batch_per_replica_and_changes_go_at_once() {
    let peers: Vec<PeerAddr> =
        (0..40).map(|i| PeerAddr::id_only(Keypair::derive(100 + i, "replica").peer_id())).collect();
    let me = Keypair::derive(0, "dht-server");
    let mut dht = Dht::new(Config::default(), me, Vec::new(), true, &peers, DetRng::new(1, "dht-test"), NOW);
    let (a, b) = (Keypair::derive(1, "a"), Keypair::derive(2, "b"));
    let mut replicas: BTreeMap<PeerId, usize> = BTreeMap::new();
    for (key, did) in [(&a, "did:a"), (&b, "did:b")] {
        let mut out = Vec::new();
        dht.replicate(record(key, did, NOW), false, NOW, &mut out);
        let stored: BTreeSet<PeerId> = answer_all(&mut dht, out, NOW).into_iter().collect();
        for p in stored {
            *replicas.entry(p).or_default() += 1;
        }
    }
    // Both refreshed (same content, later expiry): nothing is sent yet.
    let t = NOW + Duration::from_secs(150);
    let mut out = Vec::new();
    dht.replicate(record(&a, "did:a", t), true, t, &mut out);
    dht.replicate(record(&b, "did:b", t), true, t, &mut out);
    assert!(dht_sends(&out).is_empty(), "refreshes wait for their batch");
    // Due a quarter of their lifetime later: one batch per replica, holding both where both go.
    let batches = |out: &[Action]| -> Vec<(PeerId, DhtMessage)> {
        dht_sends(out).into_iter().filter(|(_, m)| matches!(m, DhtMessage::StoreBatch(_))).collect()
    };
    let mut out = Vec::new();
    dht.handle_timeout(t + Duration::from_secs(74), &mut out);
    assert!(batches(&out).is_empty());
    let due = t + Duration::from_secs(75);
    assert!(dht.poll_timeout().is_some_and(|d| d <= due));
    let mut out = Vec::new();
    dht.handle_timeout(due, &mut out);
    let sends = batches(&out);
    assert_eq!(sends.len(), replicas.len(), "one message per replica");
    for (to, m) in &sends {
        let DhtMessage::StoreBatch(batch) = m else { panic!("not a batch: {m:?}") };
        assert_eq!(batch.records.len(), replicas[to], "every record this replica holds, once");
        assert!(batch.records.iter().all(|r| r.body.issued_at == t));
    }
    assert!(dht.refreshes.is_empty() && dht.next_refresh.is_none(), "nothing left waiting");
    // A replica stores a batch like single records: verified, held, and (writes being one-way)
    // not answered.
    let mut replica =
        Dht::new(Config::default(), Keypair::derive(7, "r"), Vec::new(), true, &[], DetRng::new(2, "r"), t);
    let DhtMessage::StoreBatch(batch) = sends[0].1.clone() else { unreachable!() };
    let mut out = Vec::new();
    let refused = replica.on_request(PeerAddr::id_only(me_id()), DhtMessage::StoreBatch(batch.clone()), t, &mut out);
    assert_eq!(refused, None);
    for r in &batch.records {
        assert_eq!(replica.local(&RecordKey::Peer(r.body.peer_id), t), Some(r));
    }
    assert!(dht_sends(&out).is_empty(), "an applied write is not answered: {out:?}");
    // A tampered record in a batch is refused, answered with the refusal, and reported so the
    // sender is struck.
    let mut bad = record(&a, "did:a", t + Duration::from_secs(1));
    std::sync::Arc::make_mut(&mut bad.body).name = "forged".into();
    let mut out = Vec::new();
    let refused = replica.on_request(
        PeerAddr::id_only(me_id()),
        DhtMessage::StoreBatch(StoreBatch { req: RequestId(9), records: vec![bad], server: true }),
        t,
        &mut out,
    );
    assert_eq!(refused, Some(StoreRefusal::Invalid));
    assert!(matches!(
        &dht_sends(&out)[..],
        [(_, DhtMessage::StoreAck(StoreAck { req: RequestId(9), refused: Some(StoreRefusal::Invalid) }))]
    ));
    // Committing decides: the same content with a later expiry is a refresh (it waits), a changed
    // record (new name) goes at once.
    let held = record(&a, "did:a", t);
    let _ = dht.store.put_verified(held, t).unwrap();
    let t2 = due + Duration::from_secs(1);
    let mut out = Vec::new();
    assert!(matches!(dht.commit(a.peer_id(), record(&a, "did:a", t2), true, t2, &mut out), Offer::Held(_)));
    assert!(dht_sends(&out).is_empty(), "a refresh waits");
    let mut changed = record(&a, "did:a", t2 + Duration::from_secs(1));
    std::sync::Arc::make_mut(&mut changed.body).name = "renamed".into();
    let changed = PeerRecord::sign((*changed.body).clone(), &a).unwrap();
    let mut out = Vec::new();
    assert!(matches!(dht.commit(a.peer_id(), changed, true, t2, &mut out), Offer::Held(_)));
    assert!(dht_sends(&out).iter().any(|(_, m)| matches!(m, DhtMessage::Store(_))), "a change goes at once");
}

fn me_id() -> PeerId {
    Keypair::derive(0, "dht-server").peer_id()
}

#[test]
fn a_server_whose_seeds_all_fail_tries_them_again_soon() {
    let seeds: Vec<PeerAddr> = (0..3).map(|i| PeerAddr::id_only(Keypair::derive(200 + i, "seed").peer_id())).collect();
    let mut dht =
        Dht::new(Config::default(), Keypair::derive(0, "s"), Vec::new(), true, &seeds, DetRng::new(1, "t"), NOW);
    // Its first refresh asks the seeds, which have not started: every dial fails, twice.
    for round in 0..2 {
        let t = NOW + Duration::from_secs(round);
        let mut out = Vec::new();
        dht.handle_timeout(t, &mut out);
        if round == 1 {
            dht.maintain(Goal::Refresh, Key::from(dht.me), t, &mut out);
        }
        for s in &seeds {
            dht.on_unreachable(s.id, t, &mut Vec::new());
        }
    }
    assert!(dht.table().is_empty(), "every seed failed twice");
    // They are asked again BOOTSTRAP_RETRY later, not at the next periodic refresh.
    let retry = NOW + Duration::from_secs(1) + BOOTSTRAP_RETRY;
    assert!(dht.poll_timeout().is_some_and(|t| t <= retry));
    let mut out = Vec::new();
    dht.handle_timeout(retry, &mut out);
    let asked: BTreeSet<PeerId> =
        dht_sends(&out).into_iter().filter(|(_, m)| matches!(m, DhtMessage::FindNode(_))).map(|(to, _)| to).collect();
    assert_eq!(asked, seeds.iter().map(|s| s.id).collect());
}

#[test]
fn a_new_referent_stores_a_version_only_if_the_replicas_lack_it() {
    let peers: Vec<PeerAddr> =
        (0..40).map(|i| PeerAddr::id_only(Keypair::derive(100 + i, "replica").peer_id())).collect();
    let me = Keypair::derive(0, "dht-server");
    let owner = Keypair::derive(1, "owner");
    let k = Config::default().kad_k;
    let r = record(&owner, "did:o", NOW);
    let fresh = || {
        let mut dht = Dht::new(Config::default(), me.clone(), Vec::new(), true, &peers, DetRng::new(1, "t"), NOW);
        let _ = dht.store.put_verified(r.clone(), NOW).unwrap();
        dht
    };

    // The previous referent replicated it: every replica asked holds it, nothing is stored.
    let mut dht = fresh();
    let mut out = Vec::new();
    dht.replicate_held(&owner.peer_id(), NOW, &mut out);
    let asked = dht_sends(&out);
    assert!(!asked.is_empty() && asked.iter().all(|(_, m)| matches!(m, DhtMessage::FindValue(_))));
    assert!(answer(&mut dht, out, |_| Some(r.clone()), NOW).is_empty(), "already replicated");
    // Asked again for the same version: nothing to do at all.
    let mut out = Vec::new();
    dht.replicate_held(&owner.peer_id(), NOW, &mut out);
    assert!(out.is_empty());

    // Only one peer holds it (say, another indexer of the node): not replicated, so stored on
    // both keys' k closest.
    let mut dht = fresh();
    let holder = peers[0].id;
    let mut out = Vec::new();
    dht.replicate_held(&owner.peer_id(), NOW, &mut out);
    let stored = answer(&mut dht, out, |p| (*p == holder).then(|| r.clone()), NOW);
    once_each(&stored, &both_keys_replicas(&dht, &r));
    assert!(stored.len() >= k);
    assert!(dht.closest.contains_key(&RecordKey::Peer(owner.peer_id()).kad_key()), "its lookup's set is kept");
}

#[test]
fn a_claim_check_that_found_nothing_leaves_the_did_keys_replicas_known() {
    let peers: Vec<PeerAddr> =
        (0..40).map(|i| PeerAddr::id_only(Keypair::derive(100 + i, "replica").peer_id())).collect();
    let mut dht = Dht::new(
        Config::default(),
        Keypair::derive(0, "dht-server"),
        Vec::new(),
        true,
        &peers,
        DetRng::new(1, "t"),
        NOW,
    );
    let owner = Keypair::derive(1, "owner");
    let r = record(&owner, "did:o", NOW);
    let mut out = Vec::new();
    assert_eq!(dht.offer_record(owner.peer_id(), r.clone(), true, NOW, &mut out), Offer::Checking);
    // The check asks the DID key's closest peers; nobody holds the DID. The record is then
    // replicated, and only the peer key needs a lookup.
    let finds: Vec<Key> = exchange(&mut dht, out, |_| None, NOW)
        .into_iter()
        .filter_map(|(_, m)| if let DhtMessage::FindNode(f) = m { Some(f.target) } else { None })
        .collect();
    assert!(finds.iter().all(|t| *t == RecordKey::Peer(owner.peer_id()).kad_key()), "no second lookup of the DID key");
    assert!(!finds.is_empty(), "the peer key was looked up");
    assert_eq!(dht.local(&RecordKey::Did(r.body.did.clone()), NOW), Some(&r));
}

/// A DHT server that knows `n` other indexers.
fn server_with(n: u64) -> (Dht, Vec<PeerAddr>) {
    let peers: Vec<PeerAddr> =
        (0..n).map(|i| PeerAddr::id_only(Keypair::derive(100 + i, "replica").peer_id())).collect();
    let me = Keypair::derive(0, "dht-server");
    (Dht::new(Config::default(), me, Vec::new(), true, &peers, DetRng::new(1, "t"), NOW), peers)
}

#[test]
fn only_the_referent_checks_a_claim_the_others_hold_the_record_unserved_until_named() {
    let (mut dht, _) = server_with(40);
    let owner = Keypair::derive(1, "owner");
    let r = record(&owner, "did:o", NOW);
    let did_key = RecordKey::Did(r.body.did.clone());

    // Offered by a node that replicates through another indexer: held, no lookup, nothing served.
    let mut out = Vec::new();
    assert_eq!(dht.offer_record(owner.peer_id(), r.clone(), false, NOW, &mut out), Offer::Held(r.body.expires_at));
    assert!(dht_sends(&out).is_empty(), "no claim check: {:?}", dht_sends(&out));
    assert_eq!(dht.held_expiry(&owner.peer_id(), NOW), Some(r.body.expires_at), "the node need not send it again");
    assert_eq!(dht.local(&did_key, NOW), None, "an unchecked DID is not served");
    assert_eq!(dht.local(&RecordKey::Peer(owner.peer_id()), NOW), None);
    assert_eq!(dht.store.did_owner(&r.body.did, NOW), None, "nor bound");
    // The same version again costs nothing.
    let mut out = Vec::new();
    assert_eq!(dht.offer_record(owner.peer_id(), r.clone(), false, NOW, &mut out), Offer::Held(r.body.expires_at));
    assert!(out.is_empty());

    // Named its referent: the claim is checked now, and the record replicated once nobody else
    // holds the DID.
    let mut out = Vec::new();
    dht.replicate_held(&owner.peer_id(), NOW, &mut out);
    let sent = exchange(&mut dht, out, |_| None, NOW);
    assert!(
        sent.iter().any(|(_, m)| matches!(m, DhtMessage::FindValue(f) if f.key == did_key)),
        "the DID claim is checked"
    );
    let stores: Vec<PeerId> =
        sent.iter().filter(|(_, m)| matches!(m, DhtMessage::Store(_))).map(|(to, _)| *to).collect();
    once_each(&stores, &both_keys_replicas(&dht, &r));
    assert_eq!(dht.local(&did_key, NOW), Some(&r), "and served");
}

#[test]
fn an_indexer_with_an_empty_table_serves_no_record_it_was_not_asked_to_replicate() {
    // An indexer in its first seconds: no DHT peer yet. A node that replicates through another
    // indexer hands it its record: held unchecked, not served — a served copy answered the
    // referent's claim check as if the DHT held the record, which then reached no replica.
    let (mut dht, _) = server_with(0);
    let owner = Keypair::derive(1, "owner");
    let r = record(&owner, "did:o", NOW);
    let mut out = Vec::new();
    assert_eq!(dht.offer_record(owner.peer_id(), r.clone(), false, NOW, &mut out), Offer::Held(r.body.expires_at));
    assert_eq!(dht.held_expiry(&owner.peer_id(), NOW), Some(r.body.expires_at));
    assert_eq!(dht.local(&RecordKey::Did(r.body.did.clone()), NOW), None, "not served");
    assert_eq!(dht.local(&RecordKey::Peer(owner.peer_id()), NOW), None);
    // Named its referent while still alone: nobody to check with, so it is committed and served
    // (through the indexer's path, which skips the store when there is nothing to do).
    let mut out = Vec::new();
    crate::proto::indexer::RecordDesk::replicate_held(&mut dht, &owner.peer_id(), NOW, &mut out);
    assert_eq!(dht.local(&RecordKey::Peer(owner.peer_id()), NOW), Some(&r));
    // A lone indexer asked to replicate serves the record at once, as before.
    let (mut lone, _) = server_with(0);
    let other = Keypair::derive(2, "other");
    let r2 = record(&other, "did:p", NOW);
    let mut out = Vec::new();
    assert_eq!(lone.offer_record(other.peer_id(), r2.clone(), true, NOW, &mut out), Offer::Held(r2.body.expires_at));
    assert_eq!(lone.local(&RecordKey::Did(r2.body.did.clone()), NOW), Some(&r2));
}

#[test]
fn a_referent_taking_over_an_unchecked_record_stores_nothing_the_dht_holds_and_refuses_a_thief() {
    let owner = Keypair::derive(1, "owner");
    let thief = Keypair::derive(2, "thief");
    let r = record(&owner, "did:o", NOW);

    // The previous referent replicated this very version: the check finds it, nothing is stored.
    let (mut dht, _) = server_with(40);
    let mut out = Vec::new();
    dht.offer_record(owner.peer_id(), r.clone(), false, NOW, &mut out);
    let mut out = Vec::new();
    dht.replicate_held(&owner.peer_id(), NOW, &mut out);
    let sent = exchange(&mut dht, out, |_| Some(r.clone()), NOW);
    assert!(!sent.is_empty() && sent.iter().all(|(_, m)| matches!(m, DhtMessage::FindValue(_))), "{sent:?}");
    assert_eq!(dht.local(&RecordKey::Peer(owner.peer_id()), NOW), Some(&r));
    let mut out = Vec::new();
    dht.replicate_held(&owner.peer_id(), NOW, &mut out);
    assert!(out.is_empty(), "replicated already");

    // A thief's record held unchecked: when it names us its referent, the DHT says the DID is
    // another key's; it is refused and reported, never stored.
    let (mut dht, _) = server_with(40);
    let stolen = record(&thief, "did:o", NOW);
    let mut out = Vec::new();
    assert_eq!(dht.offer_record(thief.peer_id(), stolen, false, NOW, &mut out), Offer::Held(r.body.expires_at));
    let mut out = Vec::new();
    dht.replicate_held(&thief.peer_id(), NOW, &mut out);
    let mut done = Vec::new();
    for (to, m) in dht_sends(&out) {
        if let DhtMessage::FindValue(f) = m {
            let reply = DhtMessage::Value(Value { req: f.req, record: Some(r.clone()), closer: Vec::new() });
            dht.on_response(PeerAddr::id_only(to), reply, NOW, &mut done);
        }
    }
    assert!(
        done.iter().any(|a| matches!(a, Action::QueryDone(DhtDone::Claim { publisher, accepted: false }) if *publisher == thief.peer_id())),
        "{done:?}"
    );
    assert!(!dht_sends(&done).iter().any(|(_, m)| matches!(m, DhtMessage::Store(_))));
    assert_eq!(dht.store.did_owner(&r.body.did, NOW), Some(owner.peer_id()), "the rightful binding is remembered");
    assert_eq!(dht.held_expiry(&thief.peer_id(), NOW), None);
}

#[test]
fn records_replicated_from_a_young_table_are_replicated_again_once_it_holds_k_peers() {
    let k = Config::default().kad_k;
    let (mut dht, _) = server_with(5);
    let owner = Keypair::derive(1, "owner");
    let r = record(&owner, "did:o", NOW);
    let mut out = Vec::new();
    assert_eq!(dht.offer_record(owner.peer_id(), r.clone(), true, NOW, &mut out), Offer::Checking);
    let stored = answer_all(&mut dht, out, NOW);
    assert_eq!(stored.len(), 5, "the five peers known (in both keys' sets), once each");
    let first: BTreeSet<PeerId> = stored.into_iter().collect();
    // Still young: nothing more at the next heartbeats.
    let mut out = Vec::new();
    dht.replicate_held(&owner.peer_id(), NOW, &mut out);
    assert!(out.is_empty());
    // The table grows to k and more: the record goes to the closest sets a full table finds, once.
    let later = NOW + Duration::from_secs(20);
    for i in 0..2 * k as u64 {
        dht.table.insert(PeerAddr::id_only(Keypair::derive(200 + i, "late").peer_id()), later);
    }
    let mut out = Vec::new();
    dht.replicate_held(&owner.peer_id(), later, &mut out);
    let stored: BTreeSet<PeerId> = answer_all(&mut dht, out, later).into_iter().collect();
    // Each key's k closest in the full table that did not get it the first time.
    let expected: BTreeSet<PeerId> = [RecordKey::Peer(owner.peer_id()), RecordKey::Did(r.body.did.clone())]
        .iter()
        .flat_map(|key| dht.table.closest(&key.kad_key(), k))
        .map(|p| p.id)
        .filter(|p| !first.contains(p))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(stored, expected, "to the replicas a full table names, that lack it");
    let mut out = Vec::new();
    dht.replicate_held(&owner.peer_id(), later, &mut out);
    assert!(out.is_empty(), "once");
}

#[test]
fn a_provider_record_goes_out_again_only_when_it_is_news_or_half_its_life_is_gone() {
    let (mut dht, _) = server_with(40);
    let adds = |out: &[Action]| dht_sends(out).iter().filter(|(_, m)| matches!(m, DhtMessage::AddProvider(_))).count();
    let k = Config::default().kad_k;
    dht.set_fill(0.10, 200);
    let mut out = Vec::new();
    dht.provide(NOW, &mut out);
    let sent = exchange(&mut dht, out, |_| None, NOW);
    let announced = sent.iter().filter(|(_, m)| matches!(m, DhtMessage::AddProvider(_))).count();
    assert_eq!(announced, k, "the first goes to the k closest its lookup found");
    let interval = Config::default().provide_interval;
    let ttl = Config::default().provider_ttl;

    // A minute later, nearly the same fill: nothing to tell.
    dht.set_fill(0.12, 200);
    let mut out = Vec::new();
    dht.provide(NOW + interval, &mut out);
    assert_eq!(adds(&out), 0, "{:?}", dht_sends(&out));
    // The fill moved by a twentieth of the capacity: news, to the k closest.
    dht.set_fill(0.16, 200);
    let mut out = Vec::new();
    dht.provide(NOW + interval, &mut out);
    assert_eq!(adds(&out), k);
    // Unchanged, but half the record's life is gone: renewed.
    let mut out = Vec::new();
    dht.provide(NOW + interval + ttl / 2, &mut out);
    assert_eq!(adds(&out), k);
}

/// A server knowing `n` other indexers (a full table: reads and writes as in a federation).
fn server_with_peers(n: u64) -> (Dht, Vec<PeerAddr>) {
    let peers: Vec<PeerAddr> =
        (0..n).map(|i| PeerAddr::id_only(Keypair::derive(100 + i, "replica").peer_id())).collect();
    let me = Keypair::derive(0, "dht-server");
    (Dht::new(Config::default(), me, Vec::new(), true, &peers, DetRng::new(1, "dht-test"), NOW), peers)
}

/// The `FIND_VALUE`s in `out`: (recipient, request).
fn find_values(out: &[Action]) -> Vec<(PeerId, RequestId)> {
    dht_sends(out)
        .into_iter()
        .filter_map(|(to, m)| if let DhtMessage::FindValue(f) = m { Some((to, f.req)) } else { None })
        .collect()
}

/// The record of the finished read in `out`, if one finished.
fn read_done(out: &[Action]) -> Option<Option<PeerRecord>> {
    out.iter().find_map(|a| match a {
        Action::QueryDone(DhtDone::Value { record, .. }) => Some(record.clone()),
        _ => None,
    })
}

fn value(req: RequestId, record: Option<PeerRecord>) -> DhtMessage {
    DhtMessage::Value(Value { req, record, closer: Vec::new() })
}

#[test]
fn a_read_whose_closest_peer_holds_the_value_sends_one_find_value() {
    let (mut dht, _) = server_with_peers(40);
    let owner = Keypair::derive(1, "owner");
    let r = record(&owner, "did:o", NOW);
    let key = RecordKey::Peer(owner.peer_id());
    let closest = dht.table().closest(&key.kad_key(), 1)[0].id;
    let mut out = Vec::new();
    dht.find_value(key, Purpose::Command { id: 1 }, false, Config::default().lookup_timeout, NOW, &mut out);
    let asked = find_values(&out);
    assert_eq!(asked.len(), 1, "one FIND_VALUE, not α");
    assert_eq!(asked[0].0, closest, "to the closest peer known");
    let mut out = Vec::new();
    let at = NOW + Duration::from_millis(80);
    dht.on_response(PeerAddr::id_only(closest), value(asked[0].1, Some(r.clone())), at, &mut out);
    assert_eq!(read_done(&out), Some(Some(r.clone())));
    assert!(find_values(&out).is_empty());
    assert_eq!(dht.query_count(), 0);

    // The DID challenge's spot check (skip_local) is a read too: one FIND_VALUE.
    let mut out = Vec::new();
    let did = Did::new("did:o").unwrap();
    let check = crate::proto::indexer::RecordDesk::check_did(&mut dht, &did, at, &mut out);
    assert!(matches!(check, crate::proto::indexer::DidCheck::Pending(_)));
    assert_eq!(find_values(&out).len(), 1);
    // Writes keep α in flight.
    let mut out = Vec::new();
    dht.maintain(Goal::Refresh, Key::from(dht.me), at, &mut out);
    assert_eq!(dht_sends(&out).len(), Config::default().kad_alpha);
}

#[test]
fn a_read_whose_first_peer_is_silent_hedges_after_the_hedge_delay() {
    // A client (no provide or refresh timers of its own: the read's are the only deadlines).
    let peers: Vec<PeerAddr> =
        (0..40).map(|i| PeerAddr::id_only(Keypair::derive(100 + i, "replica").peer_id())).collect();
    let mut dht =
        Dht::new(Config::default(), Keypair::derive(0, "client"), Vec::new(), false, &peers, DetRng::new(1, "c"), NOW);
    let rpc_timeout = Config::default().kad_rpc_timeout;
    // Before any answer: the conservative default.
    assert_eq!(dht.hedge_delay(), hedge::HEDGE_DEFAULT);
    // Reads answered in 100 ms teach the Dht its round trip.
    let owners: Vec<Keypair> = (0..20).map(|i| Keypair::derive(10 + i, "owner")).collect();
    let mut t = NOW;
    for o in &owners[..10] {
        let mut out = Vec::new();
        dht.find_value(RecordKey::Peer(o.peer_id()), Purpose::Command { id: 1 }, false, rpc_timeout * 3, t, &mut out);
        let (to, req) = find_values(&out)[0];
        t = t + Duration::from_millis(100);
        let mut out = Vec::new();
        dht.on_response(PeerAddr::id_only(to), value(req, Some(record(o, "did:x", NOW))), t, &mut out);
        assert!(read_done(&out).is_some());
    }
    let delay = dht.hedge_delay();
    assert!(
        delay >= Duration::from_millis(200) && delay < Duration::from_millis(400),
        "about twice the measured round trip: {delay:?}"
    );

    // The next read's first peer is silent (dead, or stalled).
    let owner = &owners[10];
    let r = record(owner, "did:y", t);
    let start = t;
    let mut out = Vec::new();
    dht.find_value(
        RecordKey::Peer(owner.peer_id()),
        Purpose::Command { id: 2 },
        false,
        rpc_timeout * 3,
        start,
        &mut out,
    );
    let first = find_values(&out);
    assert_eq!(first.len(), 1);
    assert_eq!(dht.poll_timeout(), Some(start + delay), "the hedge is the next deadline");
    // Nothing more before the hedge delay…
    let mut out = Vec::new();
    dht.handle_timeout((start + delay).saturating_sub(Duration::from_millis(1)), &mut out);
    assert!(find_values(&out).is_empty(), "no hedge before the delay");
    // …one more FIND_VALUE at it, to the next closest peer, long before the RPC timeout.
    let mut out = Vec::new();
    dht.handle_timeout(start + delay, &mut out);
    let hedge = find_values(&out);
    assert_eq!(hedge.len(), 1, "one hedge");
    assert_ne!(hedge[0].0, first[0].0);
    assert!(delay < rpc_timeout / 2);
    assert_eq!(dht.stats().hedges, 1);
    // The hedge answers: the read is done, without waiting for the silent peer.
    let mut out = Vec::new();
    let at = start + delay + Duration::from_millis(100);
    dht.on_response(PeerAddr::id_only(hedge[0].0), value(hedge[0].1, Some(r.clone())), at, &mut out);
    assert_eq!(read_done(&out), Some(Some(r)));
    assert_eq!(dht.query_count(), 0);

    // A first peer found unreachable is replaced at once (no hedge delay to wait).
    let owner = &owners[11];
    let mut out = Vec::new();
    dht.find_value(RecordKey::Peer(owner.peer_id()), Purpose::Command { id: 3 }, false, rpc_timeout * 3, at, &mut out);
    let first = find_values(&out);
    let mut out = Vec::new();
    dht.on_unreachable(first[0].0, at, &mut out);
    let next = find_values(&out);
    assert_eq!(next.len(), 1, "the next peer is asked at once");
    assert_ne!(next[0].0, first[0].0);
}

#[test]
fn a_read_nobody_can_answer_still_asks_the_k_closest() {
    let (mut dht, peers) = server_with_peers(40);
    let k = Config::default().kad_k;
    let key = RecordKey::Peer(Keypair::derive(1, "nobody").peer_id());
    let target = key.kad_key();
    let mut out = Vec::new();
    dht.find_value(key, Purpose::Command { id: 1 }, false, Config::default().lookup_timeout, NOW, &mut out);
    assert_eq!(find_values(&out).len(), 1);
    let asked: Vec<PeerId> = exchange(&mut dht, out, |_| None, NOW)
        .into_iter()
        .filter(|(_, m)| matches!(m, DhtMessage::FindValue(_)))
        .map(|(to, _)| to)
        .collect();
    let mut truth: Vec<PeerId> = peers.iter().map(|p| p.id).collect();
    truth.sort_by_key(|p| target.distance(&Key::from(*p)));
    truth.truncate(k);
    let asked_set: BTreeSet<PeerId> = asked.iter().copied().collect();
    assert_eq!(asked.len(), asked_set.len(), "each asked once");
    assert_eq!(asked_set, truth.into_iter().collect(), "Kademlia's rule: the k closest were all asked");
    assert_eq!(dht.query_count(), 0, "the miss finished");
}

#[test]
fn a_takeover_asks_two_replicas_and_keeps_the_peer_keys_set_for_the_next_version() {
    let (mut dht, _) = server_with_peers(80);
    let k = Config::default().kad_k;
    assert!(dht.table.len() >= 2 * k, "a table large enough for holders to prove something");
    let owner = Keypair::derive(1, "owner");
    let r = record(&owner, "did:o", NOW);
    let _ = dht.store.put_verified(r.clone(), NOW).unwrap();
    let peer_key = RecordKey::Peer(owner.peer_id()).kad_key();

    // Named the referent of a record the DHT holds: two FIND_VALUEs (the holders it needs), to
    // the two closest peers known, not α.
    let mut out = Vec::new();
    dht.replicate_held(&owner.peer_id(), NOW, &mut out);
    let asked = find_values(&out);
    let closest: Vec<PeerId> = dht.table.closest(&peer_key, TAKEOVER_HOLDERS).iter().map(|p| p.id).collect();
    assert_eq!(asked.iter().map(|(to, _)| *to).collect::<Vec<_>>(), closest);
    // Both hold this version: nothing more is asked or stored, and the query is over.
    let mut out = Vec::new();
    for (to, req) in asked {
        dht.on_response(PeerAddr::id_only(to), value(req, Some(r.clone())), NOW, &mut out);
    }
    assert!(dht_sends(&out).is_empty(), "{out:?}");
    assert_eq!(dht.query_count(), 0);
    // Its candidates are the peer key's neighbourhood: the next version needs no lookup of it.
    assert!(dht.closest.contains_key(&peer_key));
    let t = NOW + Duration::from_secs(150);
    let mut out = Vec::new();
    dht.replicate(record(&owner, "did:o", t), true, t, &mut out);
    for (_, m) in dht_sends(&out) {
        match m {
            DhtMessage::FindNode(f) => assert_ne!(f.target, peer_key, "the peer key is not looked up again"),
            DhtMessage::FindValue(_) => panic!("no read"),
            _ => {}
        }
    }
}

#[test]
fn a_claim_that_finds_the_record_waits_for_the_nearest_answer_and_keeps_the_did_keys_set() {
    let (mut dht, _) = server_with_peers(40);
    let owner = Keypair::derive(1, "owner");
    let r = record(&owner, "did:o", NOW);
    let did_key = RecordKey::Did(r.body.did.clone());
    let mut out = Vec::new();
    dht.offer_record(owner.peer_id(), r.clone(), false, NOW, &mut out);
    let mut out = Vec::new();
    dht.replicate_held(&owner.peer_id(), NOW, &mut out);
    let asked = find_values(&out);
    assert_eq!(asked.len(), Config::default().kad_alpha);
    // The farthest of those asked answers first, with the record: the claim is not over while
    // the nearest one's answer (already on its way) is out.
    let (nearest, later) = (asked[0], asked[asked.len() - 1]);
    let mut done = Vec::new();
    dht.on_response(PeerAddr::id_only(later.0), value(later.1, Some(r.clone())), NOW, &mut done);
    assert!(!done.iter().any(|a| matches!(a, Action::QueryDone(DhtDone::Claim { .. }))));
    assert!(find_values(&done).is_empty(), "no further RPC");
    dht.on_response(PeerAddr::id_only(nearest.0), value(nearest.1, Some(r.clone())), NOW, &mut done);
    assert!(done.iter().any(|a| matches!(a, Action::QueryDone(DhtDone::Claim { accepted: true, .. }))), "{done:?}");
    assert!(!dht_sends(&done).iter().any(|(_, m)| matches!(m, DhtMessage::Store(_))), "the DHT holds it");
    assert_eq!(dht.local(&did_key, NOW), Some(&r));
    assert!(dht.closest.contains_key(&did_key.kad_key()), "the DID key's replicas are known");
}

#[test]
fn a_write_in_a_dht_smaller_than_k_asks_alpha_peers_per_key_and_stores_on_every_peer_once() {
    let (mut dht, peers) = server_with_peers(10);
    let alpha = Config::default().kad_alpha;
    assert!(dht.table.len() < Config::default().kad_k);
    let owner = Keypair::derive(1, "owner");
    let r = record(&owner, "did:o", NOW);
    let mut out = Vec::new();
    dht.replicate(r.clone(), false, NOW, &mut out);
    let sent = exchange(&mut dht, out, |_| None, NOW);
    let finds = sent.iter().filter(|(_, m)| matches!(m, DhtMessage::FindNode(_))).count();
    assert_eq!(finds, 2 * alpha, "each key's lookup asks its α closest, not all {} peers", peers.len());
    let stores: Vec<PeerId> =
        sent.iter().filter(|(_, m)| matches!(m, DhtMessage::Store(_))).map(|(to, _)| *to).collect();
    once_each(&stores, &peers.iter().map(|p| p.id).collect());
}
