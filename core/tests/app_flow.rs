//! Application messages through whole peers with durable stores (DESIGN §8): a receiver that is
//! down gets every critical message once it is back, within one retry interval; a sender that
//! crashes with a full queue resumes it from its store; nothing is delivered twice.

mod common;

use common::Net;
use ocd_core::proto::{
    AppProtocol, Command, Config, DeliveryClass, Event, Input, Keypair, MessageId, NewMessage, PeerAddr, PeerSetup,
    Roles, Target, Timestamp,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const KEY: [u8; 32] = [9; 32];
const IX: usize = 0;
const A: usize = 1;
const B: usize = 2;

fn network() -> Net {
    let t0 = Timestamp(5_000_000);
    let config = Config { min_indexers: 1, max_indexers: 1, ..Config::default() };
    let ix = Keypair::derive(3, "ix");
    let mut setups = vec![PeerSetup::new(ix.clone(), KEY, Roles::INDEXER)];
    for i in 0..2 {
        let mut s = PeerSetup::new(Keypair::derive(3, &format!("node{i}")), KEY, Roles::NODE);
        s.config = config.clone();
        s.seeds = vec![PeerAddr::id_only(ix.peer_id())];
        s.rng_seed = 20 + i;
        setups.push(s);
    }
    let mut net = Net::new(setups, t0);
    net.run_for(Duration::from_secs(60));
    net
}

fn send(net: &mut Net, id: u64, to: Target, protocol: AppProtocol) {
    let message = NewMessage { to, protocol, datatype: Some(1), user: "u".into(), payload: id.to_le_bytes().to_vec() };
    net.input(A, Input::Command(Command::Send { id, message }));
}

/// Message ids accepted by `A`, by class.
fn accepted(net: &Net) -> BTreeMap<MessageId, DeliveryClass> {
    net.events
        .iter()
        .filter_map(|(_, i, e)| match e {
            Event::AppAccepted { message, class, .. } if *i == A => Some((*message, *class)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_receiver_that_comes_back_gets_every_critical_message_once() {
    let mut net = network();
    let b_did = net.peers[B].did().clone();
    net.crash(B);
    net.run_for(Duration::from_secs(5));
    for id in 1..=10 {
        send(&mut net, id, Target::Did(b_did.clone()), AppProtocol::Create);
    }
    send(&mut net, 11, Target::Did(b_did.clone()), AppProtocol::Considers);
    net.run_for(Duration::from_secs(120));
    net.restart(B);
    let back = net.now;
    net.run_for(Duration::from_secs(60));

    let critical: BTreeSet<MessageId> =
        accepted(&net).into_iter().filter(|(_, c)| *c == DeliveryClass::Critical).map(|(m, _)| m).collect();
    assert_eq!(critical.len(), 10);
    let inbox: Vec<MessageId> = net.stores[B].inbox().iter().map(|e| e.id).collect();
    let unique: BTreeSet<MessageId> = inbox.iter().copied().collect();
    assert_eq!(unique.len(), inbox.len(), "nothing twice");
    assert!(critical.is_subset(&unique), "every critical message arrived");
    // The moderate one gave up while B was down (1 + 3 attempts, 15 s apart).
    let abandoned = net.events.iter().filter(|(_, i, e)| *i == A && matches!(e, Event::AppAbandoned { .. })).count();
    assert_eq!(abandoned, 1);
    // Delivered within one retry interval (plus a lookup and a round trip) of B's return.
    let last = net
        .events
        .iter()
        .filter_map(|(t, i, e)| matches!(e, Event::AppDelivered { .. }).then_some((*t, *i)))
        .filter(|(_, i)| *i == A)
        .map(|(t, _)| t)
        .max()
        .expect("deliveries");
    assert!(
        last.since(back) <= Config::default().dnt_retry_interval + Duration::from_secs(2),
        "{:?}",
        last.since(back)
    );
    assert!((net.stores[A].queued() == 0), "every queue entry was forgotten on its ack");
}

#[test]
fn a_sender_that_crashes_with_a_full_queue_resumes_it() {
    let mut net = network();
    let b = net.peers[B].id();
    net.crash(B);
    net.run_for(Duration::from_secs(1));
    for id in 1..=20 {
        send(&mut net, id, Target::Peer(b), AppProtocol::Update);
    }
    net.run_for(Duration::from_secs(20));
    assert_eq!(net.stores[A].queued(), 20, "durably queued");
    net.crash(A);
    net.run_for(Duration::from_secs(10));
    net.restart(B);
    net.run_for(Duration::from_secs(30));
    assert!(net.stores[B].inbox().is_empty(), "the sender is down");
    net.restart(A);
    // After a restart the new life sends messages of its own: their ids follow the old ones.
    net.run_for(Duration::from_secs(5));
    send(&mut net, 21, Target::Peer(b), AppProtocol::Delete);
    net.run_for(Duration::from_secs(60));

    let ids: Vec<MessageId> = net.stores[B].inbox().iter().map(|e| e.id).collect();
    let unique: BTreeSet<MessageId> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 21, "{ids:?}");
    assert_eq!(unique.len(), 21, "nothing twice");
    assert_eq!(unique.iter().map(|m| m.epoch).collect::<BTreeSet<_>>().len(), 1, "one epoch across the restart");
    assert!((net.stores[A].queued() == 0));
    // Payloads arrive intact.
    let payloads: BTreeSet<u64> = net.stores[B]
        .inbox()
        .iter()
        .map(|e| u64::from_le_bytes(e.payload.as_slice().try_into().expect("8 bytes")))
        .collect();
    assert_eq!(payloads, (1..=21).collect());
    let _ = IX;
}

/// The peer book (DESIGN §9): a relation the apps set is applied at once (a blocked peer is
/// refused both ways), persisted, and still in force after a restart; removing it lets the peer
/// back in.
#[test]
fn a_peer_the_apps_block_stays_blocked_across_a_restart() {
    use ocd_core::proto::{AppRefusal, Relation, SendRefusal};
    let mut net = network();
    let a_id = net.peers[A].id();
    let b_id = net.peers[B].id();
    net.input(B, Input::Command(Command::SetRelation { peer: a_id, relation: Some(Relation::Blocked) }));
    assert_eq!(net.peers[B].peer_book().and_then(|b| b.relation(&a_id)), Some(Relation::Blocked));
    net.crash(B);
    net.run_for(Duration::from_secs(1));
    net.restart(B);
    net.run_for(Duration::from_secs(30));
    assert_eq!(
        net.peers[B].peer_book().and_then(|b| b.relation(&a_id)),
        Some(Relation::Blocked),
        "the relation came back from the store"
    );
    // A's message to B is refused for good, and B cannot send to A.
    let since = net.now;
    send(&mut net, 1, Target::Peer(b_id), AppProtocol::Verify);
    net.run_for(Duration::from_secs(20));
    let refused_in = net.events.iter().any(|(t, i, e)| {
        *t >= since
            && *i == B
            && matches!(e, Event::AppIncomingRefused { from, reason: AppRefusal::Blocked } if *from == a_id)
    });
    assert!(refused_in, "B refused A's message as blocked");
    let delivered = net.events.iter().any(|(t, i, e)| *t >= since && *i == B && matches!(e, Event::AppReceived { .. }));
    assert!(!delivered, "nothing from a blocked peer reaches the inbox");
    let message = NewMessage {
        to: Target::Peer(a_id),
        protocol: AppProtocol::Create,
        datatype: None,
        user: "u".into(),
        payload: vec![1],
    };
    net.input(B, Input::Command(Command::Send { id: 9, message }));
    let refused_out = net
        .events
        .iter()
        .any(|(_, i, e)| *i == B && matches!(e, Event::AppSendRefused { id: 9, reason: SendRefusal::BadDestination }));
    assert!(refused_out, "B does not send to a peer it blocks");
    // Unblocked (and persisted as such): A's next message is delivered.
    net.input(B, Input::Command(Command::SetRelation { peer: a_id, relation: None }));
    net.crash(B);
    net.run_for(Duration::from_secs(1));
    net.restart(B);
    net.run_for(Duration::from_secs(30));
    assert_eq!(net.peers[B].peer_book().and_then(|b| b.relation(&a_id)), None);
    let since = net.now;
    send(&mut net, 2, Target::Peer(b_id), AppProtocol::Create);
    net.run_for(Duration::from_secs(40));
    let got = net.events.iter().any(|(t, i, e)| *t >= since && *i == B && matches!(e, Event::AppReceived { .. }));
    assert!(got, "an unblocked peer's message is delivered");
    assert!(net.stores[B].inbox().iter().all(|e| e.id.sender != a_id || e.payload == 2u64.to_le_bytes()));
}
