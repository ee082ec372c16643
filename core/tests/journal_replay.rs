//! Journals and their replay (DESIGN §10): a node's run through a small network — joining, a
//! lookup, application messages both ways, a peer search — recorded as `ocd run --journal` does,
//! replays identically; a journal with one byte changed is refused at the step it hit; one cut
//! short replays up to its last whole record; a changed input is caught at the next step.

#![allow(clippy::unwrap_used)]

mod common;

use common::Net;
use ocd_core::journal::{self, JournalError, JournalSetup, Reader, Recorder};
use ocd_core::proto::{
    AppProtocol, Command, Config, Input, Keypair, NewMessage, PeerAddr, PeerSetup, RecordKey, Roles, SearchQuery,
    Target, Timestamp,
};
use std::time::{Duration, Instant};

const KEY: [u8; 32] = [21; 32];
const NODE: usize = 1;

fn setups() -> Vec<PeerSetup> {
    let ix = Keypair::derive(8, "journal-ix");
    let mut v = vec![PeerSetup::new(ix.clone(), KEY, Roles::INDEXER)];
    v[0].clock_anchor = Some(Instant::now());
    for i in 0..2 {
        let mut s = PeerSetup::new(Keypair::derive(8, &format!("journal-node{i}")), KEY, Roles::NODE);
        s.config = Config { min_indexers: 1, max_indexers: 1, name: format!("node-{i}"), ..Config::default() };
        s.seeds = vec![PeerAddr::id_only(ix.peer_id())];
        s.rng_seed = 70 + i;
        v.push(s);
    }
    v
}

fn journal_setup(s: &PeerSetup, started: Timestamp) -> JournalSetup {
    JournalSetup {
        peer_id: s.keypair.peer_id(),
        key_file: "key".into(),
        network_key_file: "network.key".into(),
        did: s.did.clone(),
        roles: s.roles,
        config: s.config.clone(),
        seeds: s.seeds.clone(),
        rng_seed: s.rng_seed,
        addrs: s.addrs.clone(),
        started,
        software: "journal_replay test".into(),
    }
}

/// The node's journal over 3 minutes of activity.
fn recorded() -> Vec<u8> {
    let t0 = Timestamp(9_000_000);
    let setups = setups();
    let header = Recorder::header(&journal_setup(&setups[NODE], t0));
    let mut net = Net::new(setups, t0);
    net.journal = Some((NODE, Recorder::default(), header));
    net.run_for(Duration::from_secs(60));
    let other = net.peers[2].id();
    net.input(NODE, Input::Command(Command::Lookup { id: 1, key: RecordKey::Peer(other) }));
    for id in 0..5u64 {
        let message = NewMessage {
            to: Target::Peer(other),
            protocol: AppProtocol::Create,
            datatype: Some(1),
            user: "u".into(),
            payload: id.to_le_bytes().to_vec(),
        };
        net.input(NODE, Input::Command(Command::Send { id: 10 + id, message }));
    }
    net.run_for(Duration::from_secs(30));
    let query = SearchQuery::parse("node-1").unwrap();
    net.input(NODE, Input::Command(Command::Search { id: 2, user: "u".into(), query }));
    net.run_for(Duration::from_secs(90));
    let (_, rec, mut bytes) = net.journal.take().unwrap();
    assert!(rec.steps() > 40, "a busy journal: {} steps", rec.steps());
    bytes.extend(rec.end());
    bytes
}

fn key() -> Keypair {
    setups()[NODE].keypair.clone()
}

#[test]
fn a_journal_replays_identically_and_a_changed_byte_is_named() {
    let bytes = recorded();
    let r = journal::replay(&bytes, key(), KEY, Instant::now()).expect("identical replay");
    assert!(r.clean_end && r.cut_short.is_none(), "{r:?}");
    assert!(r.steps > 40 && r.outputs > 50, "{r:?}");

    // The wrong key is refused.
    let e = journal::replay(&bytes, Keypair::derive(1, "other"), KEY, Instant::now()).unwrap_err();
    assert!(matches!(e, JournalError::WrongKey { .. }), "{e}");

    // One byte changed in a record: refused at that record's step (step 21 starts here).
    let prefix_len = bytes.len() - remaining_after(&bytes, 20);
    let mut changed = bytes.clone();
    changed[prefix_len + 6] ^= 0x40;
    let e = journal::replay(&changed, key(), KEY, Instant::now()).unwrap_err();
    match e {
        JournalError::Corrupt { step, .. } => assert_eq!(step, 21, "the changed record's step"),
        other => panic!("expected a corrupt record, got {other}"),
    }
    assert!(e_text(&changed).contains("step 21"), "the error names the step: {}", e_text(&changed));

    // Cut short inside a record: the whole records before it replay, and it says where.
    let cut = &bytes[..prefix_len + 3];
    let r = journal::replay(cut, key(), KEY, Instant::now()).expect("a cut journal replays its prefix");
    assert_eq!(r.steps, 20);
    assert!(matches!(r.cut_short, Some(JournalError::Truncated { step: 21, .. })), "{r:?}");
    assert!(!r.clean_end);

    // Not a journal at all.
    assert!(matches!(journal::replay(b"hello", key(), KEY, Instant::now()), Err(JournalError::Format(_))));
}

fn e_text(bytes: &[u8]) -> String {
    journal::replay(bytes, key(), KEY, Instant::now()).unwrap_err().to_string()
}

/// Bytes left after the header and `n` records.
fn remaining_after(bytes: &[u8], n: usize) -> usize {
    let mut pos = 12;
    for _ in 0..=n {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 4 + len + 8;
    }
    bytes.len() - pos
}

#[test]
fn a_changed_input_is_caught_at_the_next_step() {
    // Re-encode the journal with one input's time moved: valid records, different behaviour.
    let bytes = recorded();
    let (setup, mut reader) = Reader::open(&bytes).unwrap();
    let mut out = Recorder::header(&setup);
    let mut n = 0;
    let mut moved_at = None;
    while let Some(r) = reader.next_record().unwrap() {
        n += 1;
        let r = match r {
            journal::Record::Step { outputs, hash, now, input }
                if moved_at.is_none() && n > 30 && *input == Input::Timeout =>
            {
                moved_at = Some(n);
                journal::Record::Step { outputs, hash, now: now + Duration::from_secs(100), input }
            }
            r => r,
        };
        let body = postcard::to_stdvec(&r).unwrap();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&blake3::hash(&body).as_bytes()[..8]);
    }
    let moved_at = moved_at.expect("a timeout to move");
    match journal::replay(&out, key(), KEY, Instant::now()) {
        Err(JournalError::Diverged { step, .. }) => assert!(step > moved_at, "caught after the change: {step}"),
        other => panic!("the changed input went unnoticed: {other:?}"),
    }
}
