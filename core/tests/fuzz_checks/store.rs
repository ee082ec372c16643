//! `store_decode`: what the durable store reads back. Its values are postcard over the core's own
//! types (queue entries sealed with AES-256-GCM first, which a fuzzer cannot forge: the plaintext
//! decoding is fuzzed directly), and the file itself is a redb database: an arbitrary file, or a
//! real store with bytes altered, must open to an error or to a store that reads without panic.
//! The file modes need the `host` feature (the fuzz crate enables it; in the workspace it is on).

use ocd_core::proto::{InboxEntry, QueuedMessage};

/// The first byte picks the mode, the rest is its input:
/// 0 — a stored value's plaintext (queue entry and inbox entry); 1 — a whole store file;
/// 2, 3 — a real store file with alterations drawn from the input.
pub fn store_decode(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => values(rest),
        #[cfg(feature = "host")]
        1 => file::arbitrary_file(rest),
        #[cfg(feature = "host")]
        _ => file::altered_store(rest),
        #[cfg(not(feature = "host"))]
        _ => values(rest),
    }
}

/// A queue entry (after decryption) and an inbox entry decode without panic, and what decodes
/// survives a round trip.
fn values(bytes: &[u8]) {
    if let Ok(m) = postcard::from_bytes::<QueuedMessage>(bytes) {
        let enc = postcard::to_stdvec(&m).expect("a queue entry encodes");
        assert_eq!(postcard::from_bytes::<QueuedMessage>(&enc).ok(), Some(m), "a queue entry round trip");
    }
    if let Ok(e) = postcard::from_bytes::<InboxEntry>(bytes) {
        let enc = postcard::to_stdvec(&e).expect("an inbox entry encodes");
        assert_eq!(postcard::from_bytes::<InboxEntry>(&enc).ok(), Some(e), "an inbox entry round trip");
    }
}

#[cfg(feature = "host")]
pub mod file {
    use arbitrary::{Arbitrary, Unstructured};
    use ocd_core::host::store::{Durable, STORE_FILE, Store};
    use ocd_core::proto::{
        AppProtocol, Did, DidBinding, InboxEntry, Keypair, MessageId, Persist, QueuedMessage, Target, Timestamp,
    };
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The time stores are read at.
    const NOW: Timestamp = Timestamp(1_700_000_000_000);

    fn key() -> &'static Keypair {
        static KEY: OnceLock<Keypair> = OnceLock::new();
        KEY.get_or_init(|| Keypair::derive(5, "store-fuzz"))
    }

    /// A directory of this process for the files tried (in memory when `/dev/shm` exists).
    fn scratch_dir() -> &'static PathBuf {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let shm = std::path::Path::new("/dev/shm");
            let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
            base.join(format!("ocd-fuzz-store-{}", std::process::id()))
        })
    }

    /// A fresh path for one try (its directory is removed with the last file, see [`discard`]).
    fn scratch_file() -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(scratch_dir()).expect("a scratch directory");
        scratch_dir().join(format!("{}-{STORE_FILE}", N.fetch_add(1, Ordering::Relaxed)))
    }

    /// Removes a tried file, and its directory once empty.
    fn discard(path: &std::path::Path) {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(path.with_extension("redb.new"));
        let _ = std::fs::remove_dir(scratch_dir());
    }

    /// Most memory opening (and reading back) a store file of a few pages may take, in MiB
    /// (`OCD_FUZZ_STORE_MIB` overrides it, to explore past a known excess).
    fn max_open_mib() -> u64 {
        static MIB: OnceLock<u64> = OnceLock::new();
        *MIB.get_or_init(|| std::env::var("OCD_FUZZ_STORE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(512))
    }

    /// A line of `/proc/self/status`, in KiB (Linux).
    fn status_kib(field: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
    }

    /// Resets the peak resident size to the current one (Linux), returning the current one.
    fn reset_peak_rss() -> Option<u64> {
        std::fs::write("/proc/self/clear_refs", "5").ok()?;
        status_kib("VmRSS:")
    }

    /// Opens `bytes` as a store file; if it opens, reads everything back. Returns whether it
    /// opened. Whatever the bytes, it takes at most [`max_open_mib`] of memory (where the peak
    /// resident size can be watched).
    fn open_bytes(bytes: &[u8]) -> bool {
        let path = scratch_file();
        std::fs::write(&path, bytes).expect("the scratch file is written");
        let before = reset_peak_rss();
        let result = Store::open_path(&path, key());
        if super::super::tracing() {
            eprintln!("{} bytes: {:?}", bytes.len(), result.as_ref().map(|_| "opened"));
        }
        let opened = match result {
            Ok(store) => {
                if let Ok(r) = store.restore_at(NOW) {
                    assert!(r.queue.iter().all(|m| m.id.sender == key().peer_id()), "only our own queue entries");
                    assert!(r.bindings.iter().all(|b| b.until > NOW), "no lapsed binding is handed back");
                    assert!(r.bans.iter().all(|(_, until)| *until > NOW), "no ended ban is handed back");
                }
                let _ = store.inbox_after(0, 1000);
                let _ = store.unpublished_after(0, 1000);
                let _ = store.stats();
                let _ = store.commit_at(&[Durable::Persist(Persist::Sequence { epoch: 9, reserved: 9 })], NOW);
                true
            }
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains(&path.display().to_string()), "a store error names its file: {text}");
                false
            }
        };
        if let (Some(before), Some(peak)) = (before, status_kib("VmHWM:")) {
            let grew = peak.saturating_sub(before) / 1024;
            assert!(grew < max_open_mib(), "opening a {}-byte store file took {grew} MiB", bytes.len());
        }
        discard(&path);
        opened
    }

    /// Arbitrary bytes are never taken for a store.
    pub fn arbitrary_file(bytes: &[u8]) {
        assert!(!open_bytes(bytes), "{} arbitrary bytes opened as a store", bytes.len());
    }

    /// The bytes of a real store holding a bit of everything (made once per process).
    pub fn template() -> &'static [u8] {
        static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
        BYTES.get_or_init(|| {
            let path = scratch_file();
            let me = key();
            let store = Store::open_path(&path, me).expect("a new store");
            let other = Keypair::derive(6, "store-fuzz-other").peer_id();
            let mut batch = vec![Durable::Persist(Persist::Sequence { epoch: 3, reserved: 40 })];
            for seq in 1..=6u64 {
                batch.push(Durable::Persist(Persist::Queued(QueuedMessage {
                    id: MessageId { sender: me.peer_id(), epoch: 3, seq },
                    to: Target::Peer(other),
                    protocol: AppProtocol::Create,
                    datatype: Some(7),
                    user: "alice".into(),
                    payload: vec![seq as u8; 40],
                    accepted_at: Timestamp(NOW.0 - 1000 + seq),
                })));
                batch.push(Durable::Persist(Persist::Inbox {
                    entry: InboxEntry {
                        id: MessageId { sender: other, epoch: 1, seq },
                        from_did: Did::new("did-of-other").ok(),
                        protocol: AppProtocol::Update,
                        datatype: None,
                        user: "bob".into(),
                        payload: vec![0xa0 | seq as u8; 24],
                        received_at: Timestamp(NOW.0 - 500 + seq),
                    },
                    floor: 1,
                }));
            }
            batch.push(Durable::Persist(Persist::Floor { sender: other, epoch: 1, floor: 3 }));
            batch.push(Durable::Persist(Persist::DidBinding(DidBinding {
                did: Did::new("did-of-other").expect("a DID"),
                owner: other,
                until: Timestamp(NOW.0 + 3_600_000),
            })));
            batch.push(Durable::Persist(Persist::Ban { peer: other, until: Timestamp(NOW.0 + 60_000) }));
            store.commit_at(&batch, NOW).expect("the template commits");
            drop(store);
            let bytes = std::fs::read(&path).expect("the template is read");
            discard(&path);
            bytes
        })
    }

    /// One alteration of the template's bytes.
    #[derive(Arbitrary, Debug)]
    enum Alteration {
        /// XOR the byte at `page * 4096 + offset` (pages hold redb's structures).
        Flip { page: u16, offset: u16, mask: u8 },
        /// Write a little-endian u64 there (lengths, page numbers, checksums).
        Word { page: u16, offset: u16, value: u64 },
        /// Cut the file to this many bytes fewer.
        Truncate(u32),
        /// Zero a 4 KiB page.
        ZeroPage(u16),
    }

    /// A real store altered: opens to an error, or to a store that reads without panic.
    pub fn altered_store(data: &[u8]) {
        let mut bytes = template().to_vec();
        let Ok(alterations) = Vec::<Alteration>::arbitrary_take_rest(Unstructured::new(data)) else { return };
        for a in alterations.into_iter().take(8) {
            if super::super::tracing() {
                eprintln!("{a:?}");
            }
            let n = bytes.len();
            if n == 0 {
                break;
            }
            let pages = n.div_ceil(4096);
            let at = |page: u16, offset: u16| (usize::from(page) % pages * 4096 + usize::from(offset) % 4096) % n;
            match a {
                Alteration::Flip { page, offset, mask } => bytes[at(page, offset)] ^= mask,
                Alteration::Word { page, offset, value } => {
                    let i = at(page, offset);
                    for (j, b) in value.to_le_bytes().into_iter().enumerate() {
                        if let Some(x) = bytes.get_mut(i + j) {
                            *x = b;
                        }
                    }
                }
                Alteration::Truncate(k) => bytes.truncate(n - (k as usize % n)),
                Alteration::ZeroPage(p) => {
                    let start = usize::from(p) % pages * 4096;
                    bytes[start..(start + 4096).min(n)].fill(0);
                }
            }
        }
        open_bytes(&bytes);
    }
}
