//! An indexer's durable state through whole peers (DESIGN §8, issues 11 and 15): the DID bindings
//! and bans it persisted come back after a crash, so a restarted indexer still refuses a DID thief
//! and keeps a banned node out until its ban ends — and no longer.

#![allow(clippy::unwrap_used)]

mod common;

use common::Net;
use ocd_core::proto::{
    Config, Did, Event, Keypair, MemoryStore, PeerAddr, PeerId, PeerSetup, RefuseReason, Roles, StoreRefusal, Timestamp,
};
use std::time::Duration;

const KEY: [u8; 32] = [11; 32];
const IX: usize = 0;
/// The DID's owner.
const OWNER: usize = 1;
/// Another key claiming the owner's DID.
const THIEF: usize = 2;

fn victim_did() -> Did {
    Did::new("did:flow:victim").unwrap()
}

/// An indexer, the owner of `victim_did()`, and a thief with its own key and the same DID, down
/// until a test starts it.
fn network() -> Net {
    let t0 = Timestamp(7_000_000);
    let ix = Keypair::derive(5, "durable-ix");
    let mut setups = vec![PeerSetup::new(ix.clone(), KEY, Roles::INDEXER)];
    for (i, label) in ["owner", "thief"].into_iter().enumerate() {
        let mut s = PeerSetup::new(Keypair::derive(5, label), KEY, Roles::NODE);
        s.config = Config { min_indexers: 1, max_indexers: 1, ..Config::default() };
        s.seeds = vec![PeerAddr::id_only(ix.peer_id())];
        s.did = victim_did();
        s.rng_seed = 40 + i as u64;
        setups.push(s);
    }
    let mut net = Net::new(setups, t0);
    net.crash(THIEF);
    net.run_for(Duration::from_secs(60));
    net
}

fn id(net: &Net, i: usize) -> PeerId {
    net.peers[i].id()
}

/// The indexer's events about `peer` from `since` on.
fn indexer_events(net: &Net, peer: PeerId, since: Timestamp) -> Vec<(Timestamp, Event)> {
    net.events
        .iter()
        .filter(|(t, i, e)| *i == IX && *t >= since && about(e, peer))
        .map(|(t, _, e)| (*t, e.clone()))
        .collect()
}

fn about(e: &Event, peer: PeerId) -> bool {
    match e {
        Event::RecordStored { owner, from, .. } => *owner == peer || *from == peer,
        Event::RecordRejected { from, owner, .. } => *from == peer || *owner == peer,
        Event::PeerStruck { peer: p, .. } | Event::PeerBanned { peer: p, .. } => *p == peer,
        Event::RequestRefused { peer: p, .. } => *p == peer,
        Event::SessionOpened { node } | Event::SessionClosed { node, .. } => *node == peer,
        _ => false,
    }
}

fn stored_for(events: &[(Timestamp, Event)], peer: PeerId) -> bool {
    events.iter().any(|(_, e)| matches!(e, Event::RecordStored { owner, .. } if *owner == peer))
}

fn foreign_did_refusals(events: &[(Timestamp, Event)], peer: PeerId) -> usize {
    events
        .iter()
        .filter(
            |(_, e)| matches!(e, Event::RecordRejected { from, reason: StoreRefusal::ForeignDid, .. } if *from == peer),
        )
        .count()
}

/// The owner's binding is on the indexer's store; the owner and the indexer go down; the
/// indexer comes back after the owner's record expired (only the binding is left) and the thief
/// shows up.
fn owner_gone_indexer_restarted(net: &mut Net, keep_store: bool) -> Timestamp {
    let (owner, ix) = (id(net, OWNER), id(net, IX));
    assert!(stored_for(&indexer_events(net, owner, Timestamp(0)), owner), "the owner's record is held");
    let (bound_to, until) = net.stores[IX].binding(&victim_did()).expect("the binding was persisted");
    assert_eq!(bound_to, owner);
    assert!(until > net.now + Duration::from_secs(3600), "{until:?}");
    net.crash(OWNER);
    net.run_for(Duration::from_secs(1));
    net.crash(IX);
    // Longer than the owner's record lives (record_ttl, 5 min): only the binding is left.
    net.run_for(Config::default().record_ttl + Duration::from_secs(60));
    if !keep_store {
        net.stores[IX] = MemoryStore::new();
    }
    net.restart(IX);
    let back = net.now;
    let _ = ix;
    net.restart(THIEF);
    net.run_for(Duration::from_secs(120));
    back
}

#[test]
fn a_restarted_indexer_still_refuses_a_did_thief() {
    let mut net = network();
    let back = owner_gone_indexer_restarted(&mut net, true);
    let (owner, thief) = (id(&net, OWNER), id(&net, THIEF));
    let seen = indexer_events(&net, thief, back);
    assert!(!stored_for(&seen, thief), "the stolen DID was never accepted: {seen:?}");
    assert!(foreign_did_refusals(&seen, thief) >= 1, "{seen:?}");
    assert!(seen.iter().any(|(_, e)| matches!(e, Event::PeerStruck { .. })), "the thief is struck: {seen:?}");
    // The binding is still the owner's, on the store too.
    assert_eq!(net.stores[IX].binding(&victim_did()).map(|b| b.0), Some(owner));
    // The owner comes back and gets its DID served again.
    net.restart(OWNER);
    let again = net.now;
    net.run_for(Duration::from_secs(60));
    let seen = indexer_events(&net, owner, again);
    assert!(stored_for(&seen, owner), "{seen:?}");
    assert_eq!(foreign_did_refusals(&seen, owner), 0);
}

#[test]
fn without_its_store_a_restarted_indexer_would_give_the_did_away() {
    // The same run on an indexer that lost its store: why the bindings must be durable.
    let mut net = network();
    let back = owner_gone_indexer_restarted(&mut net, false);
    let thief = id(&net, THIEF);
    let seen = indexer_events(&net, thief, back);
    assert!(stored_for(&seen, thief), "{seen:?}");
    assert_eq!(net.stores[IX].binding(&victim_did()).map(|b| b.0), Some(thief));
}

#[test]
fn a_banned_node_stays_banned_across_an_indexer_restart_until_its_ban_ends() {
    let mut net = network();
    let thief = id(&net, THIEF);
    // The thief claims the owner's DID while the owner is up: struck twice per record, banned.
    let start = net.now;
    net.restart(THIEF);
    net.run_for(Duration::from_secs(30));
    let until = indexer_events(&net, thief, start)
        .iter()
        .find_map(|(_, e)| match e {
            Event::PeerBanned { until, .. } => Some(*until),
            _ => None,
        })
        .expect("the thief is banned");
    assert_eq!(net.stores[IX].ban(&thief), Some(until), "the ban is persisted");
    // The indexer crashes and comes back well within the ban.
    net.crash(IX);
    net.run_for(Duration::from_secs(30));
    net.restart(IX);
    let back = net.now;
    assert!(back < until);
    net.run_until(until + Duration::from_secs(300));
    let during: Vec<(Timestamp, Event)> =
        indexer_events(&net, thief, back).into_iter().filter(|(t, _)| *t < until).collect();
    let banned_refusals =
        during.iter().filter(|(_, e)| matches!(e, Event::RequestRefused { reason: RefuseReason::Banned, .. })).count();
    assert!(banned_refusals >= 1, "the thief tried during its ban and was refused as banned: {during:?}");
    assert!(
        during.iter().all(|(_, e)| matches!(
            e,
            Event::RequestRefused { reason: RefuseReason::Banned, .. } | Event::SessionClosed { .. }
        )),
        "nothing but ban refusals until the ban ends: {during:?}"
    );
    // After the ban ends the thief is heard again (and, still a thief, struck and banned anew).
    let after: Vec<(Timestamp, Event)> = indexer_events(&net, thief, until)
        .into_iter()
        .filter(|(_, e)| !matches!(e, Event::RequestRefused { reason: RefuseReason::Banned, .. }))
        .collect();
    assert!(
        after.iter().any(|(_, e)| matches!(e, Event::PeerStruck { .. } | Event::SessionOpened { .. })),
        "{after:?}"
    );
    // The honest owner was never banned.
    let owner = id(&net, OWNER);
    assert!(!net.events.iter().any(|(_, _, e)| matches!(e, Event::PeerBanned { peer, .. } if *peer == owner)));
}
