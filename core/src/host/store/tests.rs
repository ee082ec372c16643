use super::*;
use crate::proto::{AppProtocol, Did, Target};

fn key(n: u64) -> Keypair {
    Keypair::derive(n, "store-test")
}

fn msg(me: &Keypair, epoch: u64, seq: u64, payload: &[u8]) -> QueuedMessage {
    QueuedMessage {
        id: MessageId { sender: me.peer_id(), epoch, seq },
        to: Target::Peer(key(99).peer_id()),
        protocol: AppProtocol::Create,
        datatype: Some(7),
        user: "alice".into(),
        payload: payload.to_vec(),
        accepted_at: Timestamp(1_700_000_000_000 + seq),
    }
}

fn entry(sender: PeerId, epoch: u64, seq: u64) -> InboxEntry {
    InboxEntry {
        id: MessageId { sender, epoch, seq },
        from_did: Some(Did::new("did-of-sender").unwrap()),
        protocol: AppProtocol::Update,
        datatype: None,
        user: "bob".into(),
        payload: format!("payload {seq}").into_bytes(),
        received_at: Timestamp(1_700_000_000_500 + seq),
    }
}

fn persist(p: Persist) -> Durable {
    Durable::Persist(p)
}

#[test]
fn the_queue_key_is_the_seeds_derivation() {
    // Computed independently (Python `cryptography`: Ed25519 public key of the seed [7; 32],
    // HKDF-SHA256 over seed ‖ public, no salt, info "oc-discovery/dnt-cache/v1") — what the Go
    // seed derives from `priv.Raw()`.
    let kp = Keypair::from_secret_bytes([7; 32]);
    let bytes = keypair_bytes(&kp);
    assert_eq!(bytes[..32], [7; 32]);
    assert_eq!(kp.peer_id().to_string(), "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c");
    assert_eq!(bytes[32..], kp.peer_id().0);
    assert_eq!(
        data_encoding::HEXLOWER.encode(&derive_key(&kp)),
        "547fa218720104137b45e483992070af2ee6247b8161b0711dc9685f8c805aca"
    );
}

#[test]
fn sealed_values_are_nonce_ciphertext_tag_and_do_not_open_under_another_key() {
    let a = Aes256Gcm::new(&Key::<Aes256Gcm>::from(derive_key(&key(1))));
    let b = Aes256Gcm::new(&Key::<Aes256Gcm>::from(derive_key(&key(2))));
    let s1 = seal(&a, b"hello").unwrap();
    let s2 = seal(&a, b"hello").unwrap();
    assert_eq!(s1.len(), NONCE_LEN + 5 + TAG_LEN);
    assert_ne!(s1[..NONCE_LEN], s2[..NONCE_LEN], "a fresh nonce every time");
    assert_eq!(open_sealed(&a, &s1).as_deref(), Some(&b"hello"[..]));
    assert_eq!(open_sealed(&b, &s1), None);
    let mut flipped = s1.clone();
    flipped[NONCE_LEN] ^= 1;
    assert_eq!(open_sealed(&a, &flipped), None, "tampering is detected");
    assert_eq!(open_sealed(&a, &s1[..10]), None, "too short");
}

#[test]
fn every_persist_kind_round_trips_through_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let me = key(1);
    let other = key(2).peer_id();
    let (m1, m2, m3) = (msg(&me, 9, 1, b"one"), msg(&me, 9, 2, b"two"), msg(&me, 9, 3, b"three"));
    {
        let store = Store::open(dir.path(), &me).unwrap();
        assert_eq!(store.restore().unwrap(), Restored::default(), "a new store is empty");
        let stats = store
            .commit(&[
                persist(Persist::Sequence { epoch: 9, reserved: 1025 }),
                persist(Persist::Queued(m1.clone())),
                persist(Persist::Queued(m2.clone())),
                persist(Persist::Queued(m3.clone())),
                persist(Persist::Inbox { entry: entry(other, 4, 1), floor: 1 }),
                persist(Persist::Inbox { entry: entry(other, 4, 3), floor: 1 }),
                persist(Persist::Inbox { entry: entry(other, 5, 2), floor: 0 }),
            ])
            .unwrap();
        assert_eq!((stats.items, stats.inbox_appended, stats.inbox_duplicates), (7, 3, 0));
        // The acknowledgement of m2; the sender of epoch 4 settled everything below 3; epoch 5's
        // floor moves without a message.
        store
            .commit(&[
                Durable::Forget(Forget::Queued(m2.id)),
                persist(Persist::Floor { sender: other, epoch: 4, floor: 3 }),
                persist(Persist::Floor { sender: other, epoch: 5, floor: 1 }),
            ])
            .unwrap();
    }
    let store = Store::open(dir.path(), &me).unwrap();
    let r = store.restore().unwrap();
    assert_eq!(r.sequence, Some((9, 1025)));
    assert_eq!(r.queue, vec![m1, m3], "oldest first, the acknowledged one gone");
    assert_eq!(
        r.received,
        vec![
            ReceivedIds { sender: other, epoch: 4, floor: 3, seqs: vec![3] },
            ReceivedIds { sender: other, epoch: 5, floor: 1, seqs: vec![2] },
        ]
    );
    let inbox = store.inbox_after(0, 100).unwrap();
    assert_eq!(inbox.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(inbox[0].entry, entry(other, 4, 1));
    assert_eq!(inbox[2].entry, entry(other, 5, 2));
    assert!(inbox.iter().all(|r| !r.published));
    assert_eq!(store.inbox_after(2, 100).unwrap().len(), 1);
    assert_eq!(store.inbox_after(0, 2).unwrap().len(), 2);
    assert!(store.inbox_after(u64::MAX, 10).unwrap().is_empty());
    let found = store.inbox_by_id(&entry(other, 4, 3).id).unwrap().unwrap();
    assert_eq!(found.seq, 2);
    assert_eq!(store.inbox_by_id(&entry(other, 4, 2).id).unwrap(), None);
    store.mark_published(&[1, 3]).unwrap();
    let published: Vec<bool> = store.inbox_after(0, 10).unwrap().iter().map(|r| r.published).collect();
    assert_eq!(published, [true, false, true]);
    let pending: Vec<u64> = store.unpublished_after(0, 10).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(pending, [2]);
    assert!(store.unpublished_after(2, 10).unwrap().is_empty());
    let stats = store.stats().unwrap();
    assert_eq!((stats.queued, stats.inbox, stats.inbox_last_seq, stats.unpublished), (2, 3, 3, 1));
    assert!(stats.file_bytes > 0);
}

#[test]
fn floors_only_rise_and_forget_the_sequences_below() {
    let dir = tempfile::tempdir().unwrap();
    let me = key(1);
    let other = key(2).peer_id();
    let store = Store::open(dir.path(), &me).unwrap();
    let batch: Vec<Durable> =
        (1..=6).map(|s| persist(Persist::Inbox { entry: entry(other, 1, s), floor: 1 })).collect();
    store.commit(&batch).unwrap();
    store.commit(&[persist(Persist::Floor { sender: other, epoch: 1, floor: 4 })]).unwrap();
    // A late, lower floor changes nothing; a message below the floor is not remembered above it.
    store.commit(&[persist(Persist::Floor { sender: other, epoch: 1, floor: 2 })]).unwrap();
    store.commit(&[persist(Persist::Inbox { entry: entry(other, 1, 8), floor: 2 })]).unwrap();
    let r = store.restore().unwrap();
    assert_eq!(r.received, vec![ReceivedIds { sender: other, epoch: 1, floor: 4, seqs: vec![4, 5, 6, 8] }]);
    assert_eq!(store.stats().unwrap().inbox, 7, "the inbox keeps every entry");
}

#[test]
fn the_same_message_is_never_appended_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &key(1)).unwrap();
    let e = entry(key(2).peer_id(), 1, 1);
    store.commit(&[persist(Persist::Inbox { entry: e.clone(), floor: 1 })]).unwrap();
    let stats = store.commit(&[persist(Persist::Inbox { entry: e, floor: 1 })]).unwrap();
    assert_eq!((stats.inbox_appended, stats.inbox_duplicates), (0, 1));
    let s = store.stats().unwrap();
    assert_eq!((s.inbox, s.inbox_duplicates), (1, 1));
}

#[test]
fn queue_entries_are_encrypted_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let me = key(1);
    let marker = b"very-secret-resource-payload-0123456789";
    {
        let store = Store::open(dir.path(), &me).unwrap();
        store.commit(&[persist(Persist::Queued(msg(&me, 1, 1, marker)))]).unwrap();
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(STORE_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "only the daemon's user reads the store");
    }
    let bytes = std::fs::read(dir.path().join(STORE_FILE)).unwrap();
    assert!(!bytes.windows(marker.len()).any(|w| w == marker), "the payload is not on disk in clear");
    assert!(!bytes.windows(5).any(|w| w == b"alice"), "nor the user");
    let store = Store::open(dir.path(), &me).unwrap();
    assert_eq!(store.restore().unwrap().queue[0].payload, marker);
}

#[test]
fn a_store_of_another_key_is_foreign() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key(1), key(2));
    drop(Store::open(dir.path(), &a).unwrap());
    let before = std::fs::read(dir.path().join(STORE_FILE)).unwrap();
    let e = Store::open(dir.path(), &b).unwrap_err();
    assert!(std::fs::read(dir.path().join(STORE_FILE)).unwrap() == before, "refused untouched");
    assert!(matches!(&e, StoreError::Foreign { owner, .. } if *owner == a.peer_id().to_string()), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&dir.path().join(STORE_FILE).display().to_string()), "{text}");
    assert!(text.contains("a foreign database"), "{text}");
    // Still usable by its owner: nothing was replaced.
    assert!(Store::open(dir.path(), &a).is_ok());
}

#[test]
fn another_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let me = key(1);
    drop(Store::open(dir.path(), &me).unwrap());
    let path = dir.path().join(STORE_FILE);
    {
        let db = Database::open(&path).unwrap();
        let wtx = db.begin_write().unwrap();
        wtx.open_table(META).unwrap().insert(META_SCHEMA, 99u32.to_le_bytes().as_slice()).unwrap();
        wtx.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let e = Store::open(dir.path(), &me).unwrap_err();
    assert!(std::fs::read(&path).unwrap() == before, "refused untouched");
    assert!(matches!(e, StoreError::Schema { found: 99, expected: SCHEMA_VERSION, .. }), "{e:?}");
    assert!(e.to_string().starts_with(&path.display().to_string()), "{e}");
}

#[test]
fn a_redb_file_that_is_not_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    {
        let db = Database::create(&path).unwrap();
        let wtx = db.begin_write().unwrap();
        wtx.open_table(TableDefinition::<u64, u64>::new("other")).unwrap().insert(1, 2).unwrap();
        wtx.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let e = Store::open(dir.path(), &key(1)).unwrap_err();
    assert!(matches!(e, StoreError::NotAStore { .. }), "{e:?}");
    assert!(std::fs::read(&path).unwrap() == before, "refused untouched");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

/// A store with some content, and its file's bytes.
fn filled(dir: &Path, me: &Keypair) -> Vec<u8> {
    let store = Store::open(dir, me).unwrap();
    let other = key(2).peer_id();
    let mut batch = vec![persist(Persist::Sequence { epoch: 3, reserved: 1025 })];
    batch.extend((1..=50).map(|s| persist(Persist::Queued(msg(me, 3, s, &[s as u8; 300])))));
    batch.extend((1..=50).map(|s| persist(Persist::Inbox { entry: entry(other, 1, s), floor: 1 })));
    store.commit(&batch).unwrap();
    drop(store);
    std::fs::read(dir.join(STORE_FILE)).unwrap()
}

#[test]
fn a_truncated_file_is_refused_and_kept() {
    let me = key(1);
    for cut in [0usize, 100, 4096, 3] {
        let dir = tempfile::tempdir().unwrap();
        let bytes = filled(dir.path(), &me);
        let path = dir.path().join(STORE_FILE);
        let keep = if cut == 3 { bytes.len() / 3 } else { cut };
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let e = Store::open(dir.path(), &me).unwrap_err();
        assert!(matches!(e, StoreError::Truncated { .. }), "cut at {keep} of {}: {e:?}", bytes.len());
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(e.to_string().contains("truncated store"), "{e}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), keep as u64, "never replaced");
    }
}

#[test]
fn a_corrupt_file_is_refused_and_kept() {
    let me = key(1);
    // Not a database at all.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    std::fs::write(&path, b"this is not a redb file, just some text that happens to be here\n".repeat(100)).unwrap();
    let e = Store::open(dir.path(), &me).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    assert!(e.to_string().contains("corrupt store"), "{e}");

    // A valid store with bytes altered: at every 4 KiB page but the header, in turn.
    let dir = tempfile::tempdir().unwrap();
    let bytes = filled(dir.path(), &me);
    let path = dir.path().join(STORE_FILE);
    let mut refused = 0;
    let pages = bytes.len() / 4096;
    for page in 1..pages {
        let mut bad = bytes.clone();
        for b in &mut bad[page * 4096 + 64..page * 4096 + 128] {
            *b ^= 0x5a;
        }
        std::fs::write(&path, &bad).unwrap();
        match Store::open(dir.path(), &me) {
            Err(e) => {
                assert!(e.to_string().contains(&path.display().to_string()), "{e}");
                assert!(!matches!(e, StoreError::Locked { .. } | StoreError::Io { .. }), "{e:?}");
                refused += 1;
            }
            // A page redb no longer uses (freed) may be altered without harm; whatever opens
            // must restore what was written.
            Ok(store) => {
                let r = store.restore().unwrap();
                assert_eq!(r.queue.len(), 50);
                assert_eq!(store.inbox_after(0, 100).unwrap().len(), 50);
            }
        }
    }
    assert!(refused > 0, "some altered page was noticed ({pages} pages)");
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let me = key(1);
    let _first = Store::open(dir.path(), &me).unwrap();
    let e = Store::open(dir.path(), &me).unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
    assert!(e.to_string().contains("another process"), "{e}");
}

#[test]
fn a_leftover_half_created_store_is_discarded_on_creation() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ocd.redb.new"), b"half").unwrap();
    let store = Store::open(dir.path(), &key(1)).unwrap();
    assert_eq!(store.restore().unwrap(), Restored::default());
    assert!(!dir.path().join("ocd.redb.new").exists());
}

#[test]
fn inbox_waiters_wake_on_commit_and_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path(), &key(1)).unwrap());
    assert_eq!(store.wait_inbox(0, Duration::from_millis(10)), (0, false), "nothing yet: times out");
    let s2 = store.clone();
    let waiter = std::thread::spawn(move || s2.wait_inbox(0, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(50));
    store.commit(&[persist(Persist::Inbox { entry: entry(key(2).peer_id(), 1, 1), floor: 1 })]).unwrap();
    assert_eq!(waiter.join().unwrap(), (1, false));
    let s3 = store.clone();
    let waiter = std::thread::spawn(move || s3.wait_inbox(1, Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(50));
    store.close_watchers();
    assert_eq!(waiter.join().unwrap(), (1, true));
}

#[test]
fn the_stored_layout_is_pinned() {
    // The values are postcard over the core's types: if this changes, bump SCHEMA_VERSION (and
    // migrate), or stores written by the previous version stop opening.
    let sender = PeerId([1; 32]);
    let e = InboxEntry {
        id: MessageId { sender, epoch: 2, seq: 3 },
        from_did: Some(Did::new("d").unwrap()),
        protocol: AppProtocol::Delete,
        datatype: Some(-1),
        user: "u".into(),
        payload: vec![0xaa],
        received_at: Timestamp(5),
    };
    let bytes = postcard::to_allocvec(&e).unwrap();
    let mut expected = vec![1u8; 32];
    expected.extend([2, 3, 1, 1, b'd', 2, 1, 1, 1, b'u', 1, 0xaa, 5]);
    assert_eq!(bytes, expected);
    let q = QueuedMessage {
        id: MessageId { sender, epoch: 2, seq: 3 },
        to: Target::Did(Did::new("d").unwrap()),
        protocol: AppProtocol::Search,
        datatype: None,
        user: String::new(),
        payload: vec![],
        accepted_at: Timestamp(5),
    };
    let bytes = postcard::to_allocvec(&q).unwrap();
    let mut expected = vec![1u8; 32];
    expected.extend([2, 3, 1, 1, b'd', 8, 0, 0, 0, 5]);
    assert_eq!(bytes, expected);
}

#[test]
fn a_store_left_open_by_a_crash_reopens_with_everything_committed() {
    let dir = tempfile::tempdir().unwrap();
    let me = key(1);
    let m = msg(&me, 4, 1, b"kept");
    let store = Store::open(dir.path(), &me).unwrap();
    store
        .commit(&[persist(Persist::Sequence { epoch: 4, reserved: 1025 }), persist(Persist::Queued(m.clone()))])
        .unwrap();
    // Copy the file as a crash would leave it: open, never closed.
    let crashed = dir.path().join("crashed");
    std::fs::create_dir(&crashed).unwrap();
    std::fs::copy(dir.path().join(STORE_FILE), crashed.join(STORE_FILE)).unwrap();
    drop(store);
    let reopened = Store::open(&crashed, &me).unwrap();
    let r = reopened.restore().unwrap();
    assert_eq!((r.sequence, r.queue), (Some((4, 1025)), vec![m]));
}

fn binding(did: &str, owner: PeerId, until: Timestamp) -> Durable {
    persist(Persist::DidBinding(DidBinding { did: Did::new(did).unwrap(), owner, until }))
}

const T: Timestamp = Timestamp(1_800_000_000_000);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn did_bindings_and_bans_survive_a_reopen_and_lapsed_ones_are_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let me = key(1);
    let (a, b, c) = (key(2).peer_id(), key(3).peer_id(), key(4).peer_id());
    {
        let store = Store::open(dir.path(), &me).unwrap();
        store
            .commit_at(
                &[
                    binding("did:a", a, T + secs(3600)),
                    binding("did:short", b, T + secs(60)),
                    // A DID whose first binding lapsed, now another key's: the latest wins.
                    binding("did:moved", a, T + secs(10)),
                    binding("did:moved", b, T + secs(4000)),
                    // Released by its owner: written already lapsed.
                    binding("did:released", c, T + secs(3600)),
                    binding("did:released", c, T),
                    persist(Persist::Ban { peer: b, until: T + secs(600) }),
                    persist(Persist::Ban { peer: c, until: T + secs(30) }),
                ],
                T,
            )
            .unwrap();
        assert_eq!((store.stats().unwrap().did_bindings, store.stats().unwrap().bans), (3, 2));
    }
    // Reopened after the store was dropped (the daemon stopped), 2 minutes later.
    let store = Store::open(dir.path(), &me).unwrap();
    let later = T + secs(120);
    let r = store.restore_at(later).unwrap();
    let mut bindings = r.bindings.clone();
    bindings.sort();
    assert_eq!(
        bindings,
        vec![
            DidBinding { did: Did::new("did:a").unwrap(), owner: a, until: T + secs(3600) },
            DidBinding { did: Did::new("did:moved").unwrap(), owner: b, until: T + secs(4000) },
        ]
    );
    assert_eq!(r.bans, vec![(b, T + secs(600))]);
    // The lapsed rows were deleted by the restore: the tables stay bounded.
    let stats = store.stats().unwrap();
    assert_eq!((stats.did_bindings, stats.bans), (2, 1));
    // The rest of the store is unaffected.
    assert_eq!((r.sequence, r.queue.len(), r.received.len()), (None, 0, 0));
    // Much later everything has lapsed.
    let r = store.restore_at(T + secs(5000)).unwrap();
    assert!(r.bindings.is_empty() && r.bans.is_empty());
    assert_eq!((store.stats().unwrap().did_bindings, store.stats().unwrap().bans), (0, 0));
}

#[test]
fn commits_delete_lapsed_bindings_and_bans_at_most_every_prune_interval() {
    let dir = tempfile::tempdir().unwrap();
    let me = key(1);
    let store = Store::open(dir.path(), &me).unwrap();
    let owner = key(2).peer_id();
    // The first commit prunes (nothing yet) and sets the next prune a PRUNE_INTERVAL later.
    let batch: Vec<Durable> = (0..100u64).map(|i| binding(&format!("did:{i}"), owner, T + secs(1 + i))).collect();
    store.commit_at(&batch, T).unwrap();
    store.commit_at(&[persist(Persist::Ban { peer: owner, until: T + secs(5) })], T).unwrap();
    assert_eq!(store.stats().unwrap().did_bindings, 100);
    // Every row has lapsed, but the interval has not passed: kept (never handed back, though).
    store.commit_at(&[persist(Persist::Sequence { epoch: 1, reserved: 2 })], T + secs(200)).unwrap();
    assert_eq!(store.stats().unwrap().did_bindings, 100);
    // A commit once the interval has passed deletes them.
    store.commit_at(&[persist(Persist::Sequence { epoch: 1, reserved: 3 })], T + PRUNE_INTERVAL).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!((stats.did_bindings, stats.bans), (0, 0));
}

#[test]
fn a_store_made_before_the_indexer_tables_opens_and_gains_them() {
    let dir = tempfile::tempdir().unwrap();
    let me = key(1);
    let m = msg(&me, 2, 1, b"old");
    {
        let store = Store::open(dir.path(), &me).unwrap();
        store
            .commit(&[persist(Persist::Sequence { epoch: 2, reserved: 1025 }), persist(Persist::Queued(m.clone()))])
            .unwrap();
    }
    // Remove the new tables, as a file written by the previous build of schema 1 lacks them.
    let path = dir.path().join(STORE_FILE);
    {
        let db = Database::open(&path).unwrap();
        let wtx = db.begin_write().unwrap();
        assert!(wtx.delete_table(DID_BINDINGS).unwrap());
        assert!(wtx.delete_table(BANS).unwrap());
        wtx.commit().unwrap();
    }
    let store = Store::open(dir.path(), &me).unwrap();
    let r = store.restore_at(T).unwrap();
    assert_eq!((r.sequence, r.queue.clone()), (Some((2, 1025)), vec![m.clone()]));
    assert!(r.bindings.is_empty() && r.bans.is_empty());
    assert_eq!(store.stats().unwrap().did_bindings, 0);
    let owner = key(2).peer_id();
    store.commit_at(&[binding("did:x", owner, T + secs(60))], T).unwrap();
    drop(store);
    let r = Store::open(dir.path(), &me).unwrap().restore_at(T).unwrap();
    assert_eq!(r.bindings, vec![DidBinding { did: Did::new("did:x").unwrap(), owner, until: T + secs(60) }]);
    assert_eq!(r.queue, vec![m]);
}

/// Two whole peers wired back to back (messages delivered at once), the first one's durable
/// outputs committed to `store` as the driver does: before the outputs that follow them.
fn pump(
    peers: &mut [crate::proto::Peer; 2],
    store: &Store,
    from: Timestamp,
    until: Timestamp,
) -> Vec<crate::proto::Event> {
    use crate::proto::{Input, Output};
    let mut events = Vec::new();
    let mut now = from;
    let mut inbox: std::collections::VecDeque<(usize, Input)> = std::collections::VecDeque::new();
    loop {
        for i in 0..2 {
            while let Some(o) = peers[i].poll_output() {
                let other = 1 - i;
                match o {
                    Output::Connect { .. } => {
                        let (me, them) = (peers[i].id(), peers[other].id());
                        inbox.push_back((i, Input::ConnectionUp { peer: them, addr: None, outbound: true }));
                        inbox.push_back((other, Input::ConnectionUp { peer: me, addr: None, outbound: false }));
                    }
                    Output::Send { message, .. } => {
                        inbox.push_back((other, Input::Received { from: peers[i].id(), message }));
                    }
                    Output::Persist(p) if i == 0 => {
                        store.commit_at(&[Durable::Persist(p)], now).unwrap();
                    }
                    Output::Event(e) if i == 0 => events.push(e),
                    _ => {}
                }
            }
        }
        if let Some((i, input)) = inbox.pop_front() {
            peers[i].handle(input, now);
            continue;
        }
        let next = peers.iter().filter_map(|p| p.poll_timeout()).min();
        match next {
            Some(t) if t <= until => {
                now = now.max(t);
                for p in peers.iter_mut() {
                    if p.poll_timeout().is_some_and(|x| x <= now) {
                        p.handle(Input::Timeout, now);
                    }
                }
            }
            _ => return events,
        }
    }
}

#[test]
fn a_restarted_core_refuses_the_thief_from_the_redb_store() {
    // End to end through the daemon's store: the indexer core's persist outputs committed to
    // redb, the file reopened after the store was dropped, the restored state handed to a new core.
    use crate::proto::{Event, Input, Peer, PeerAddr, PeerSetup, Roles, StoreRefusal};
    let dir = tempfile::tempdir().unwrap();
    let ix = key(10);
    let did = Did::new("did:victim").unwrap();
    let node = |label: &str| {
        let mut s = PeerSetup::new(Keypair::derive(11, label), [1; 32], Roles::NODE);
        s.config.min_indexers = 1;
        s.config.max_indexers = 1;
        s.seeds = vec![PeerAddr::id_only(ix.peer_id())];
        s.did = did.clone();
        s
    };
    let (owner, thief) = (node("owner"), node("thief"));
    let (owner_id, thief_id) = (owner.keypair.peer_id(), thief.keypair.peer_id());
    {
        let store = Store::open(dir.path(), &ix).unwrap();
        let mut peers = [Peer::new(PeerSetup::new(ix.clone(), [1; 32], Roles::INDEXER), T), Peer::new(owner, T)];
        peers[0].handle(Input::Restored(store.restore_at(T).unwrap()), T);
        let events = pump(&mut peers, &store, T, T + secs(60));
        assert!(
            events.iter().any(|e| matches!(e, Event::RecordStored { owner, .. } if *owner == owner_id)),
            "{events:?}"
        );
    }
    // The indexer restarts 10 minutes later: the owner's record expired, its binding did not.
    let later = T + secs(600);
    let store = Store::open(dir.path(), &ix).unwrap();
    let restored = store.restore_at(later).unwrap();
    assert!(restored.bindings.iter().any(|b| b.did == did && b.owner == owner_id), "{:?}", restored.bindings);
    let mut peers = [Peer::new(PeerSetup::new(ix.clone(), [1; 32], Roles::INDEXER), later), Peer::new(thief, later)];
    peers[0].handle(Input::Restored(restored), later);
    let events = pump(&mut peers, &store, later, later + secs(60));
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::RecordRejected { from, reason: StoreRefusal::ForeignDid, .. } if *from == thief_id
        )),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| matches!(e, Event::RecordStored { owner, .. } if *owner == thief_id)));
    // The thief was banned, durably.
    let banned = events.iter().find_map(|e| match e {
        Event::PeerBanned { peer, until } if *peer == thief_id => Some(*until),
        _ => None,
    });
    let until = banned.expect("the thief is banned");
    drop(store);
    let r = Store::open(dir.path(), &ix).unwrap().restore_at(later + secs(60)).unwrap();
    assert!(r.bans.contains(&(thief_id, until)), "{:?}", r.bans);
}

#[test]
fn the_peer_book_survives_a_reopen_and_removals_stick() {
    use crate::proto::Relation;
    let dir = tempfile::tempdir().unwrap();
    let me = key(1);
    let (a, b, c) = (key(2).peer_id(), key(3).peer_id(), key(4).peer_id());
    {
        let store = Store::open(dir.path(), &me).unwrap();
        let set = |peer, relation| persist(Persist::Relation { peer, relation });
        store
            .commit(&[
                set(a, Some(Relation::Partner)),
                set(b, Some(Relation::Blocked)),
                set(c, Some(Relation::Known)),
                set(a, Some(Relation::Known)),
                set(c, None),
            ])
            .unwrap();
    }
    let store = Store::open(dir.path(), &me).unwrap();
    let mut relations = store.restore().unwrap().relations;
    relations.sort();
    let mut expected = vec![(a, Relation::Known), (b, Relation::Blocked)];
    expected.sort();
    assert_eq!(relations, expected);
}
