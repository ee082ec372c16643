//! The durable store: one [redb] file in the data directory (`ocd.redb`) holding what the core
//! asks to keep across crashes (DESIGN §2 rule 2, §8) — the sender's epoch and reserved sequence
//! numbers, the critical messages not yet acknowledged (encrypted), the inbox and the ids received
//! per sender epoch, and an indexer's DID bindings and bans (so a restarted indexer still refuses
//! a DID thief and keeps a banned peer out until its ban ends).
//!
//! ## How the daemon uses it
//!
//! The store is opened before the core runs; what it holds is handed to the core as
//! [`Input::Restored`](crate::proto::Input::Restored) ([`Store::restore`]). The driver then commits
//! the core's [`Persist`] and [`Forget`] outputs ([`Store::commit`], one write transaction for a
//! batch, durable when it returns) *before* it executes any output that follows them. The control
//! socket reads the inbox from its own threads while the driver writes (redb readers see the last
//! committed state and never block the writer); [`Store::wait_inbox`] wakes `ocd inbox --follow`
//! after each commit that appended to the inbox.
//!
//! ## Schema (version [`SCHEMA_VERSION`])
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | `schema` (u32 LE), `owner` (peer id, 32 bytes), `key_check` (sealed [`KEY_CHECK`]), `sequence` (epoch ‖ reserved, u64 LE each), `inbox_duplicates` (u64 LE) |
//! | `queue` | `(epoch, seq)` | sealed postcard [`QueuedMessage`] |
//! | `inbox` | arrival seq (u64, from 1) | postcard [`InboxEntry`] |
//! | `inbox_ids` | `(sender, epoch, seq)` | arrival seq |
//! | `inbox_unpublished` | arrival seq | `()` — present until the NATS bridge published the entry |
//! | `received_floor` | `(sender, epoch)` | floor: every sequence below it is settled |
//! | `received_seqs` | `(sender, epoch, seq)` | `()` — sequences received at or above the floor |
//! | `did_bindings` | DID (`&str`) | `(owner peer id, until ms)` — the latest binding of the DID |
//! | `bans` | peer id | until (ms) — the latest ban of the peer |
//! | `peer_book` | peer id | relation set by the apps (0 known, 1 partner, 2 blocked) |
//!
//! `did_bindings`, `bans` and `peer_book` were added to version 1 without changing it: files written before
//! them have no such tables, which read as empty (every table but `meta` is opened optionally on
//! read, and created by the first write). They stay bounded: rows whose `until` has passed are
//! never handed back, and are deleted by [`Store::restore`] and, at most every
//! [`PRUNE_INTERVAL`], by a [`Store::commit`]; a binding or ban written already lapsed (a DID its
//! owner released) deletes its row.
//!
//! The values use postcard over the core's own serde types; a change to their layout needs a new
//! [`SCHEMA_VERSION`] (a unit test pins the bytes).
//!
//! ## Encryption
//!
//! Queue entries are sealed with AES-256-GCM under a key derived as the seed derives its DNT cache
//! key (spec D §7.5): HKDF-SHA256 over the 64-byte ed25519 key pair (secret seed ‖ public key), no
//! salt, info `oc-discovery/dnt-cache/v1`, 32 bytes. Each value is `nonce (12 random bytes) ‖
//! ciphertext ‖ tag (16)`, without associated data; the row key is checked against the decrypted
//! id, so rows cannot be swapped. `meta.key_check` is a known text sealed the same way: a store
//! written under another key is refused as foreign before anything is read.
//!
//! ## Failures
//!
//! A missing file is created (initialised under a temporary name, then renamed, so a crash during
//! creation never leaves a half-made store behind). Every other problem — an empty, truncated,
//! corrupt (redb verifies every page's checksum when it opens the file), foreign or newer file, or
//! one another process holds — is a [`StoreError`] naming the file: the daemon refuses to start
//! and never replaces the file.

use crate::proto::{
    Did, DidBinding, Forget, InboxEntry, Keypair, MessageId, PeerId, Persist, QueuedMessage, ReceivedIds, Relation,
    Restored, Timestamp,
};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "ocd.redb";
/// The layout version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
/// HKDF info of the queue-entry key (the seed's, spec D §7.5).
pub const HKDF_INFO: &[u8] = b"oc-discovery/dnt-cache/v1";
/// The text sealed in `meta.key_check`.
pub const KEY_CHECK: &[u8] = b"ocd store key check v1";

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// redb's page cache; the store is small and mostly written.
const CACHE_BYTES: usize = 16 << 20;
/// Lapsed DID bindings and bans are deleted by a commit at most this often (and at restore).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const QUEUE: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("queue");
const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox");
const INBOX_IDS: TableDefinition<([u8; 32], u64, u64), u64> = TableDefinition::new("inbox_ids");
const INBOX_UNPUBLISHED: TableDefinition<u64, ()> = TableDefinition::new("inbox_unpublished");
const RECEIVED_FLOOR: TableDefinition<([u8; 32], u64), u64> = TableDefinition::new("received_floor");
const RECEIVED_SEQS: TableDefinition<([u8; 32], u64, u64), ()> = TableDefinition::new("received_seqs");
const DID_BINDINGS: TableDefinition<&str, ([u8; 32], u64)> = TableDefinition::new("did_bindings");
const BANS: TableDefinition<[u8; 32], u64> = TableDefinition::new("bans");
const PEER_BOOK: TableDefinition<[u8; 32], u8> = TableDefinition::new("peer_book");

const META_SCHEMA: &str = "schema";
const META_OWNER: &str = "owner";
const META_KEY_CHECK: &str = "key_check";
const META_SEQUENCE: &str = "sequence";
const META_INBOX_DUPLICATES: &str = "inbox_duplicates";

/// Why the store cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be read, written or created.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is empty or shorter than its own header says: it was cut off.
    #[error(
        "{path}: truncated store ({detail}); ocd refuses to start rather than replace it. Restore it from a \
         backup, or move it away to start with an empty store (its queued messages and inbox are then lost)"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The file is not a valid redb database, or a page fails its checksum.
    #[error(
        "{path}: corrupt store ({detail}); ocd refuses to start rather than replace it. Restore it from a \
         backup, or move it away to start with an empty store (its queued messages and inbox are then lost)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A valid store written under another key: not this daemon's.
    #[error(
        "{path}: a foreign database, written under another key (peer {owner}), not this daemon's (peer {me}); \
         ocd refuses to use or replace it. Use the data directory it belongs to, or move it away"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// The peer id recorded in it (hex), or `unknown`.
        owner: String,
        /// This daemon's peer id (hex).
        me: String,
    },
    /// A redb database without ocd's metadata.
    #[error("{path}: a redb database, but not an ocd store (no ocd metadata); ocd refuses to use or replace it")]
    NotAStore {
        /// The file.
        path: PathBuf,
    },
    /// A store of another layout version.
    #[error(
        "{path}: store schema version {found}, but this ocd reads version {expected}; run the ocd version that \
         wrote it"
    )]
    Schema {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// Another process has the file open.
    #[error("{path}: in use by another process (is another ocd running with this data directory?)")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// A database operation failed while running (a commit, a read).
    #[error("{path}: {detail}")]
    Db {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// One durable change from the core, in output order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Durable {
    /// Store this.
    Persist(Persist),
    /// Delete this.
    Forget(Forget),
}

/// What one [`Store::commit`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Changes applied.
    pub items: usize,
    /// Entries appended to the inbox.
    pub inbox_appended: u64,
    /// Inbox entries refused because their id was already in the inbox (the core asked twice: a
    /// bug, reported and counted in `meta.inbox_duplicates`).
    pub inbox_duplicates: u64,
    /// Time the write transaction took, commit (fsync) included.
    pub elapsed: Duration,
}

/// One inbox entry as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxRecord {
    /// Local arrival sequence, from 1.
    pub seq: u64,
    /// The message.
    pub entry: InboxEntry,
    /// Whether the NATS bridge published it.
    pub published: bool,
}

/// Counts and sizes, for `ocd status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Critical messages queued.
    pub queued: u64,
    /// Inbox entries.
    pub inbox: u64,
    /// Last arrival sequence (0: empty).
    pub inbox_last_seq: u64,
    /// Inbox entries not yet published to NATS.
    pub unpublished: u64,
    /// Inbox entries the core asked to append twice, refused (should stay 0).
    pub inbox_duplicates: u64,
    /// The file's size in bytes.
    pub file_bytes: u64,
    /// DID bindings held (an indexer's; lapsed ones until the next prune).
    pub did_bindings: u64,
    /// Bans held (an indexer's; ended ones until the next prune).
    pub bans: u64,
}

/// An indexer's durable state as read back: what holds, and whether lapsed rows were seen.
struct IndexerHeld {
    bindings: Vec<DidBinding>,
    bans: Vec<(PeerId, Timestamp)>,
    lapsed: bool,
}

/// Wakes `ocd inbox --follow` readers after commits that appended to the inbox.
#[derive(Debug, Default)]
struct InboxWatch {
    /// (last committed arrival sequence, closed)
    state: Mutex<(u64, bool)>,
    cond: Condvar,
}

/// The durable store of one daemon. Writes come from the driver; reads from any thread.
pub struct Store {
    db: Database,
    path: PathBuf,
    cipher: Aes256Gcm,
    owner: PeerId,
    watch: InboxWatch,
    /// When a commit next deletes lapsed DID bindings and bans.
    next_prune: Mutex<Timestamp>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).field("owner", &self.owner).finish_non_exhaustive()
    }
}

/// The 64-byte ed25519 key pair (secret seed ‖ public key): the seed's `priv.Raw()`, and
/// ed25519-dalek's `SigningKey::to_keypair_bytes`.
pub fn keypair_bytes(keypair: &Keypair) -> [u8; 64] {
    ed25519_dalek::SigningKey::from_bytes(&keypair.secret_bytes()).to_keypair_bytes()
}

/// The queue-entry key: HKDF-SHA256 over [`keypair_bytes`], no salt, info [`HKDF_INFO`].
pub fn derive_key(keypair: &Keypair) -> [u8; 32] {
    let ikm = keypair_bytes(keypair);
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, &ikm);
    let mut okm = [0u8; 32];
    // 32 bytes is far below HKDF's limit (255 × 32).
    let _ = hk.expand(HKDF_INFO, &mut okm);
    okm
}

/// Seals `plain`: `nonce ‖ ciphertext ‖ tag`.
fn seal(cipher: &Aes256Gcm, plain: &[u8]) -> Result<Vec<u8>, String> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| format!("no randomness for a nonce: {e}"))?;
    let sealed = cipher.encrypt(&aes_gcm::Nonce::from(nonce), plain).map_err(|_| "encryption failed".to_string())?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a sealed value; `None` when it is too short or does not authenticate under this key.
fn open_sealed(cipher: &Aes256Gcm, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    cipher.decrypt(&aes_gcm::Nonce::from(nonce), body).ok()
}

fn u64_le(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

impl Store {
    /// Opens (or on first start creates) `<data_dir>/ocd.redb` for `keypair`.
    pub fn open(data_dir: &Path, keypair: &Keypair) -> Result<Store, StoreError> {
        Store::open_path(&data_dir.join(STORE_FILE), keypair)
    }

    /// Opens (or creates) the store at `path` for `keypair`. See the module doc for what is
    /// refused.
    pub fn open_path(path: &Path, keypair: &Keypair) -> Result<Store, StoreError> {
        let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(derive_key(keypair)));
        let io = |source| StoreError::Io { path: path.to_path_buf(), source };
        match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => {
                return Err(StoreError::Corrupt { path: path.into(), detail: "not a regular file".into() });
            }
            Ok(m) if m.len() == 0 => {
                return Err(StoreError::Truncated { path: path.into(), detail: "the file is empty".into() });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path, &cipher, keypair.peer_id())?,
            Err(e) => return Err(io(e)),
        }
        // A first look that writes nothing, so that a store that is not ours (or of another
        // version) is refused untouched; one that needs recovery after a crash cannot be opened
        // read-only and is checked after the read-write open repairs it.
        if let Some(ro) = open_read_only(path)? {
            // Pages are not verified yet: a corrupt one may make redb panic.
            guarded(path, || check_meta(&ro, path, &cipher, keypair.peer_id()))??;
        }
        let db = open_db(path)?;
        check_meta(&db, path, &cipher, keypair.peer_id())?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            cipher,
            owner: keypair.peer_id(),
            watch: InboxWatch::default(),
            next_prune: Mutex::new(Timestamp(0)),
        };
        let last = store.inbox_last_seq()?;
        if let Ok(mut s) = store.watch.state.lock() {
            s.0 = last;
        }
        Ok(store)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db { path: self.path.clone(), detail: e.to_string() }
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), detail: detail.into() }
    }

    /// Everything the core needs back at start, as of the wall clock: see [`Store::restore_at`].
    pub fn restore(&self) -> Result<Restored, StoreError> {
        self.restore_at(wall_now())
    }

    /// Everything the core needs back at start, at `now` (the time the core is handed): the
    /// sender sequence, the critical messages still queued (oldest first), the ids received per
    /// sender epoch, and the DID bindings and bans that have not lapsed by `now`. Lapsed rows are
    /// deleted.
    pub fn restore_at(&self, now: Timestamp) -> Result<Restored, StoreError> {
        let mut restored = self.read_restored()?;
        let held = self.read_indexer(now)?;
        if held.lapsed {
            self.prune(now)?;
        }
        restored.bindings = held.bindings;
        restored.bans = held.bans;
        Ok(restored)
    }

    /// The peer book as the apps set it.
    fn read_peer_book(&self, rtx: &redb::ReadTransaction) -> Result<Vec<(PeerId, Relation)>, StoreError> {
        let mut out = Vec::new();
        if let Some(t) = open_optional(rtx, PEER_BOOK).map_err(|e| self.db_err(e))? {
            for row in t.iter().map_err(|e| self.db_err(e))? {
                let (k, v) = row.map_err(|e| self.db_err(e))?;
                let relation = match v.value() {
                    0 => Relation::Known,
                    1 => Relation::Partner,
                    2 => Relation::Blocked,
                    other => return Err(self.corrupt(format!("peer book entry: relation {other}"))),
                };
                out.push((PeerId(k.value()), relation));
            }
        }
        Ok(out)
    }

    /// The DID bindings and bans that hold at `now`, and whether lapsed rows were seen.
    fn read_indexer(&self, now: Timestamp) -> Result<IndexerHeld, StoreError> {
        let rtx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let mut lapsed = false;
        let mut bindings = Vec::new();
        if let Some(t) = open_optional(&rtx, DID_BINDINGS).map_err(|e| self.db_err(e))? {
            for row in t.iter().map_err(|e| self.db_err(e))? {
                let (k, v) = row.map_err(|e| self.db_err(e))?;
                let (owner, until) = v.value();
                if until <= now.0 {
                    lapsed = true;
                    continue;
                }
                let did = Did::new(k.value()).map_err(|e| self.corrupt(format!("DID binding {:?}: {e}", k.value())))?;
                bindings.push(DidBinding { did, owner: PeerId(owner), until: Timestamp(until) });
            }
        }
        let mut bans = Vec::new();
        if let Some(t) = open_optional(&rtx, BANS).map_err(|e| self.db_err(e))? {
            for row in t.iter().map_err(|e| self.db_err(e))? {
                let (k, v) = row.map_err(|e| self.db_err(e))?;
                if v.value() <= now.0 {
                    lapsed = true;
                    continue;
                }
                bans.push((PeerId(k.value()), Timestamp(v.value())));
            }
        }
        Ok(IndexerHeld { bindings, bans, lapsed })
    }

    /// Deletes the DID bindings and bans lapsed at `now`, in a transaction of its own.
    pub fn prune(&self, now: Timestamp) -> Result<(), StoreError> {
        let wtx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut bindings = wtx.open_table(DID_BINDINGS).map_err(|e| self.db_err(e))?;
            let mut bans = wtx.open_table(BANS).map_err(|e| self.db_err(e))?;
            prune_lapsed(&mut bindings, &mut bans, now).map_err(|e| self.db_err(e))?;
        }
        wtx.commit().map_err(|e| self.db_err(e))?;
        if let Ok(mut next) = self.next_prune.lock() {
            *next = now + PRUNE_INTERVAL;
        }
        Ok(())
    }

    /// The application half of [`Store::restore_at`]: sequence, queue, received ids.
    fn read_restored(&self) -> Result<Restored, StoreError> {
        let rtx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let meta = rtx.open_table(META).map_err(|e| self.db_err(e))?;
        let sequence = match meta.get(META_SEQUENCE).map_err(|e| self.db_err(e))? {
            None => None,
            Some(v) => {
                let b = v.value();
                match (b.get(..8).and_then(u64_le), b.get(8..).and_then(u64_le)) {
                    (Some(epoch), Some(reserved)) => Some((epoch, reserved)),
                    _ => return Err(self.corrupt("meta `sequence` is not two u64")),
                }
            }
        };
        let mut queue = Vec::new();
        if let Some(t) = open_optional(&rtx, QUEUE).map_err(|e| self.db_err(e))? {
            for row in t.iter().map_err(|e| self.db_err(e))? {
                let (k, v) = row.map_err(|e| self.db_err(e))?;
                let (epoch, seq) = k.value();
                let plain = open_sealed(&self.cipher, v.value())
                    .ok_or_else(|| self.corrupt(format!("queue entry {epoch:016x}/{seq}: does not decrypt")))?;
                let msg: QueuedMessage = postcard::from_bytes(&plain)
                    .map_err(|e| self.corrupt(format!("queue entry {epoch:016x}/{seq}: {e}")))?;
                if (msg.id.epoch, msg.id.seq) != (epoch, seq) || msg.id.sender != self.owner {
                    return Err(self.corrupt(format!("queue entry {epoch:016x}/{seq}: holds message {}", msg.id)));
                }
                queue.push(msg);
            }
        }
        let mut received: BTreeMap<([u8; 32], u64), ReceivedIds> = BTreeMap::new();
        if let Some(t) = open_optional(&rtx, RECEIVED_FLOOR).map_err(|e| self.db_err(e))? {
            for row in t.iter().map_err(|e| self.db_err(e))? {
                let (k, v) = row.map_err(|e| self.db_err(e))?;
                let (sender, epoch) = k.value();
                slot(&mut received, sender, epoch).floor = v.value();
            }
        }
        if let Some(t) = open_optional(&rtx, RECEIVED_SEQS).map_err(|e| self.db_err(e))? {
            for row in t.iter().map_err(|e| self.db_err(e))? {
                let (k, _) = row.map_err(|e| self.db_err(e))?;
                let (sender, epoch, seq) = k.value();
                slot(&mut received, sender, epoch).seqs.push(seq);
            }
        }
        Ok(Restored {
            sequence,
            queue,
            received: received.into_values().collect(),
            bindings: Vec::new(),
            bans: Vec::new(),
            relations: self.read_peer_book(&rtx)?,
        })
    }

    /// Applies `changes` in order in one write transaction and commits it durably (fsync) before
    /// returning, as of the wall clock: see [`Store::commit_at`]. An empty batch does nothing.
    pub fn commit(&self, changes: &[Durable]) -> Result<CommitStats, StoreError> {
        self.commit_at(changes, wall_now())
    }

    /// Applies `changes` in order in one write transaction and commits it durably (fsync) before
    /// returning. An empty batch does nothing. At `now`, a DID binding or ban that has already
    /// lapsed deletes its row, and at most every [`PRUNE_INTERVAL`] the transaction also deletes
    /// every lapsed one.
    pub fn commit_at(&self, changes: &[Durable], now: Timestamp) -> Result<CommitStats, StoreError> {
        let start = Instant::now();
        let mut stats = CommitStats { items: changes.len(), ..CommitStats::default() };
        if changes.is_empty() {
            return Ok(stats);
        }
        let wtx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        let mut last_inbox = 0;
        {
            let mut w = Writer::open(&wtx).map_err(|e| self.db_err(e))?;
            for change in changes {
                match change {
                    Durable::Persist(p) => self.apply(&mut w, p, now, &mut stats, &mut last_inbox)?,
                    Durable::Forget(Forget::Queued(id)) => {
                        w.queue.remove((id.epoch, id.seq)).map_err(|e| self.db_err(e))?;
                    }
                }
            }
            if stats.inbox_duplicates > 0 {
                let before = w
                    .meta
                    .get(META_INBOX_DUPLICATES)
                    .map_err(|e| self.db_err(e))?
                    .and_then(|v| u64_le(v.value()))
                    .unwrap_or(0);
                let total = (before + stats.inbox_duplicates).to_le_bytes();
                w.meta.insert(META_INBOX_DUPLICATES, total.as_slice()).map_err(|e| self.db_err(e))?;
            }
            if let Ok(mut next) = self.next_prune.lock()
                && now >= *next
            {
                prune_lapsed(&mut w.bindings, &mut w.bans, now).map_err(|e| self.db_err(e))?;
                *next = now + PRUNE_INTERVAL;
            }
        }
        wtx.commit().map_err(|e| self.db_err(e))?;
        stats.elapsed = start.elapsed();
        if last_inbox > 0 {
            if let Ok(mut s) = self.watch.state.lock() {
                s.0 = s.0.max(last_inbox);
            }
            self.watch.cond.notify_all();
        }
        Ok(stats)
    }

    fn apply(
        &self,
        w: &mut Writer<'_>,
        p: &Persist,
        now: Timestamp,
        stats: &mut CommitStats,
        last_inbox: &mut u64,
    ) -> Result<(), StoreError> {
        let db = |e: redb::StorageError| self.db_err(e);
        match p {
            Persist::Sequence { epoch, reserved } => {
                let mut v = [0u8; 16];
                v[..8].copy_from_slice(&epoch.to_le_bytes());
                v[8..].copy_from_slice(&reserved.to_le_bytes());
                w.meta.insert(META_SEQUENCE, v.as_slice()).map_err(db)?;
            }
            Persist::Queued(msg) => {
                let plain = postcard::to_allocvec(msg).map_err(|e| self.db_err(format!("encoding a message: {e}")))?;
                let sealed = seal(&self.cipher, &plain).map_err(|e| self.db_err(e))?;
                w.queue.insert((msg.id.epoch, msg.id.seq), sealed.as_slice()).map_err(db)?;
            }
            Persist::Inbox { entry, floor } => {
                let id = entry.id;
                let key = (id.sender.0, id.epoch, id.seq);
                if w.inbox_ids.get(key).map_err(db)?.is_some() {
                    stats.inbox_duplicates += 1;
                    tracing::error!(message = %id, "the core asked to append a message already in the inbox: not appended twice");
                } else {
                    let seq = w.inbox.last().map_err(db)?.map_or(0, |(k, _)| k.value()) + 1;
                    let bytes =
                        postcard::to_allocvec(entry).map_err(|e| self.db_err(format!("encoding an entry: {e}")))?;
                    w.inbox.insert(seq, bytes.as_slice()).map_err(db)?;
                    w.inbox_ids.insert(key, seq).map_err(db)?;
                    w.unpublished.insert(seq, ()).map_err(db)?;
                    stats.inbox_appended += 1;
                    *last_inbox = seq;
                }
                let current = raise_floor(w, id.sender, id.epoch, *floor).map_err(db)?;
                if id.seq >= current {
                    w.seqs.insert(key, ()).map_err(db)?;
                }
            }
            Persist::Floor { sender, epoch, floor } => {
                raise_floor(w, *sender, *epoch, *floor).map_err(db)?;
            }
            // The latest binding of a DID wins (a new owner after a lapse, a release); one already
            // lapsed only deletes the row.
            Persist::DidBinding(b) if b.until <= now => {
                w.bindings.remove(b.did.as_str()).map_err(db)?;
            }
            Persist::DidBinding(b) => {
                w.bindings.insert(b.did.as_str(), (b.owner.0, b.until.0)).map_err(db)?;
            }
            Persist::Ban { peer, until } if *until <= now => {
                w.bans.remove(peer.0).map_err(db)?;
            }
            Persist::Ban { peer, until } => {
                w.bans.insert(peer.0, until.0).map_err(db)?;
            }
            Persist::Relation { peer, relation: None } => {
                w.book.remove(peer.0).map_err(db)?;
            }
            Persist::Relation { peer, relation: Some(r) } => {
                let code = match r {
                    Relation::Known => 0u8,
                    Relation::Partner => 1,
                    Relation::Blocked => 2,
                };
                w.book.insert(peer.0, code).map_err(db)?;
            }
        }
        Ok(())
    }

    /// Inbox entries after arrival sequence `after`, oldest first, at most `limit`.
    pub fn inbox_after(&self, after: u64, limit: usize) -> Result<Vec<InboxRecord>, StoreError> {
        let rtx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let Some(inbox) = open_optional(&rtx, INBOX).map_err(|e| self.db_err(e))? else {
            return Ok(Vec::new());
        };
        let unpublished = open_optional(&rtx, INBOX_UNPUBLISHED).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        let Some(from) = after.checked_add(1) else {
            return Ok(out);
        };
        for row in inbox.range(from..).map_err(|e| self.db_err(e))?.take(limit) {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let seq = k.value();
            let entry: InboxEntry =
                postcard::from_bytes(v.value()).map_err(|e| self.corrupt(format!("inbox entry {seq}: {e}")))?;
            let published = match &unpublished {
                Some(t) => t.get(seq).map_err(|e| self.db_err(e))?.is_none(),
                None => true,
            };
            out.push(InboxRecord { seq, entry, published });
        }
        Ok(out)
    }

    /// The inbox entry of message `id`, if it arrived.
    pub fn inbox_by_id(&self, id: &MessageId) -> Result<Option<InboxRecord>, StoreError> {
        let seq = {
            let rtx = self.db.begin_read().map_err(|e| self.db_err(e))?;
            let Some(ids) = open_optional(&rtx, INBOX_IDS).map_err(|e| self.db_err(e))? else {
                return Ok(None);
            };
            let Some(seq) = ids.get((id.sender.0, id.epoch, id.seq)).map_err(|e| self.db_err(e))? else {
                return Ok(None);
            };
            seq.value()
        };
        Ok(self.inbox_after(seq.saturating_sub(1), 1)?.into_iter().next().filter(|r| r.seq == seq))
    }

    /// Inbox entries not yet published by the NATS bridge, after arrival sequence `after`, oldest
    /// first, at most `limit` (what the bridge publishes again after a restart).
    pub fn unpublished_after(&self, after: u64, limit: usize) -> Result<Vec<InboxRecord>, StoreError> {
        let seqs: Vec<u64> = {
            let rtx = self.db.begin_read().map_err(|e| self.db_err(e))?;
            let Some(t) = open_optional(&rtx, INBOX_UNPUBLISHED).map_err(|e| self.db_err(e))? else {
                return Ok(Vec::new());
            };
            let Some(from) = after.checked_add(1) else {
                return Ok(Vec::new());
            };
            let mut seqs = Vec::new();
            for row in t.range(from..).map_err(|e| self.db_err(e))?.take(limit) {
                seqs.push(row.map_err(|e| self.db_err(e))?.0.value());
            }
            seqs
        };
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(r) = self.inbox_after(seq.saturating_sub(1), 1)?.into_iter().next().filter(|r| r.seq == seq) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Marks inbox entries as published by the NATS bridge.
    pub fn mark_published(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let wtx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut t = wtx.open_table(INBOX_UNPUBLISHED).map_err(|e| self.db_err(e))?;
            for seq in seqs {
                t.remove(seq).map_err(|e| self.db_err(e))?;
            }
        }
        wtx.commit().map_err(|e| self.db_err(e))
    }

    /// The last arrival sequence committed (0: the inbox is empty).
    pub fn inbox_last_seq(&self) -> Result<u64, StoreError> {
        let rtx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let Some(inbox) = open_optional(&rtx, INBOX).map_err(|e| self.db_err(e))? else {
            return Ok(0);
        };
        Ok(inbox.last().map_err(|e| self.db_err(e))?.map_or(0, |(k, _)| k.value()))
    }

    /// Counts and the file size.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let rtx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let queued = match open_optional(&rtx, QUEUE).map_err(|e| self.db_err(e))? {
            Some(t) => t.len().map_err(|e| self.db_err(e))?,
            None => 0,
        };
        let (inbox, inbox_last_seq) = match open_optional(&rtx, INBOX).map_err(|e| self.db_err(e))? {
            Some(t) => (
                t.len().map_err(|e| self.db_err(e))?,
                t.last().map_err(|e| self.db_err(e))?.map_or(0, |(k, _)| k.value()),
            ),
            None => (0, 0),
        };
        let unpublished = match open_optional(&rtx, INBOX_UNPUBLISHED).map_err(|e| self.db_err(e))? {
            Some(t) => t.len().map_err(|e| self.db_err(e))?,
            None => 0,
        };
        let meta = rtx.open_table(META).map_err(|e| self.db_err(e))?;
        let inbox_duplicates =
            meta.get(META_INBOX_DUPLICATES).map_err(|e| self.db_err(e))?.and_then(|v| u64_le(v.value())).unwrap_or(0);
        let file_bytes = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let did_bindings = match open_optional(&rtx, DID_BINDINGS).map_err(|e| self.db_err(e))? {
            Some(t) => t.len().map_err(|e| self.db_err(e))?,
            None => 0,
        };
        let bans = match open_optional(&rtx, BANS).map_err(|e| self.db_err(e))? {
            Some(t) => t.len().map_err(|e| self.db_err(e))?,
            None => 0,
        };
        Ok(StoreStats { queued, inbox, inbox_last_seq, unpublished, inbox_duplicates, file_bytes, did_bindings, bans })
    }

    /// Waits until the inbox holds an entry after `after`, the store is closed, or `timeout`
    /// passes. Returns the last committed arrival sequence and whether the store was closed.
    pub fn wait_inbox(&self, after: u64, timeout: Duration) -> (u64, bool) {
        let Ok(guard) = self.watch.state.lock() else {
            return (after, true);
        };
        match self.watch.cond.wait_timeout_while(guard, timeout, |s| s.0 <= after && !s.1) {
            Ok((s, _)) => *s,
            Err(_) => (after, true),
        }
    }

    /// Ends every [`Store::wait_inbox`] (the daemon is stopping).
    pub fn close_watchers(&self) {
        if let Ok(mut s) = self.watch.state.lock() {
            s.1 = true;
        }
        self.watch.cond.notify_all();
    }
}

/// The received ids of one sender epoch, created empty.
fn slot(m: &mut BTreeMap<([u8; 32], u64), ReceivedIds>, sender: [u8; 32], epoch: u64) -> &mut ReceivedIds {
    m.entry((sender, epoch)).or_insert_with(|| ReceivedIds {
        sender: PeerId(sender),
        epoch,
        floor: 0,
        seqs: Vec::new(),
    })
}

/// Checks a store's schema version and key.
fn check_meta(db: &impl ReadableDatabase, path: &Path, cipher: &Aes256Gcm, me: PeerId) -> Result<(), StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { path: path.to_path_buf(), detail };
    let rtx = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
    let meta = match rtx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Err(StoreError::NotAStore { path: path.to_path_buf() }),
        Err(e) => return Err(corrupt(format!("meta table: {e}"))),
    };
    let get = |k: &str| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(meta.get(k).map_err(|e| corrupt(format!("meta `{k}`: {e}")))?.map(|v| v.value().to_vec()))
    };
    let Some(schema) = get(META_SCHEMA)? else {
        return Err(StoreError::NotAStore { path: path.to_path_buf() });
    };
    let found = <[u8; 4]>::try_from(schema.as_slice())
        .map(u32::from_le_bytes)
        .map_err(|_| corrupt("meta `schema` is not a 4-byte version".into()))?;
    if found != SCHEMA_VERSION {
        return Err(StoreError::Schema { path: path.to_path_buf(), found, expected: SCHEMA_VERSION });
    }
    let owner = get(META_OWNER)?
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .map_or_else(|| "unknown".to_string(), |b| PeerId(b).to_string());
    let check = get(META_KEY_CHECK)?.ok_or_else(|| corrupt("meta `key_check` is missing".into()))?;
    if open_sealed(cipher, &check).as_deref() != Some(KEY_CHECK) {
        return Err(StoreError::Foreign { path: path.to_path_buf(), owner, me: me.to_string() });
    }
    Ok(())
}

/// Opens the file read-only (nothing is written). `None` when it needs the recovery a read-write
/// open performs (it was not closed cleanly).
fn open_read_only(path: &Path) -> Result<Option<redb::ReadOnlyDatabase>, StoreError> {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(CACHE_BYTES);
    match guarded(path, || builder.open_read_only(path))? {
        Ok(db) => Ok(Some(db)),
        Err(redb::DatabaseError::RepairAborted) => Ok(None),
        Err(e) => Err(open_error(path, e)),
    }
}

thread_local! {
    /// Set while [`guarded`] runs a redb call on this thread: its panic is an error, not news.
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a redb call that may panic on a file altered behind its back (redb trusts its pages until
/// their checksums are verified): such a file is corrupt, not a crash. The panic hook stays quiet
/// for it; panics anywhere else are reported as usual.
fn guarded<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, StoreError> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    result.map_err(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "redb panicked reading it".into());
        StoreError::Corrupt { path: path.to_path_buf(), detail: what }
    })
}

/// The tables a commit writes.
struct Writer<'t> {
    meta: redb::Table<'t, &'static str, &'static [u8]>,
    queue: redb::Table<'t, (u64, u64), &'static [u8]>,
    inbox: redb::Table<'t, u64, &'static [u8]>,
    inbox_ids: redb::Table<'t, ([u8; 32], u64, u64), u64>,
    unpublished: redb::Table<'t, u64, ()>,
    floors: redb::Table<'t, ([u8; 32], u64), u64>,
    seqs: redb::Table<'t, ([u8; 32], u64, u64), ()>,
    bindings: redb::Table<'t, &'static str, ([u8; 32], u64)>,
    bans: redb::Table<'t, [u8; 32], u64>,
    book: redb::Table<'t, [u8; 32], u8>,
}

impl<'t> Writer<'t> {
    fn open(wtx: &'t redb::WriteTransaction) -> Result<Self, redb::TableError> {
        Ok(Writer {
            meta: wtx.open_table(META)?,
            queue: wtx.open_table(QUEUE)?,
            inbox: wtx.open_table(INBOX)?,
            inbox_ids: wtx.open_table(INBOX_IDS)?,
            unpublished: wtx.open_table(INBOX_UNPUBLISHED)?,
            floors: wtx.open_table(RECEIVED_FLOOR)?,
            seqs: wtx.open_table(RECEIVED_SEQS)?,
            // Created by the first write on a file made before they existed.
            bindings: wtx.open_table(DID_BINDINGS)?,
            bans: wtx.open_table(BANS)?,
            book: wtx.open_table(PEER_BOOK)?,
        })
    }
}

/// Raises a sender epoch's floor to `floor` (never lowers it) and forgets the sequences below
/// it. Returns the floor now in force.
fn raise_floor(w: &mut Writer<'_>, sender: PeerId, epoch: u64, floor: u64) -> Result<u64, redb::StorageError> {
    let current = w.floors.get((sender.0, epoch))?.map_or(0, |v| v.value());
    if floor <= current {
        return Ok(current);
    }
    w.floors.insert((sender.0, epoch), floor)?;
    w.seqs.retain_in((sender.0, epoch, 0)..(sender.0, epoch, floor), |_, _| false)?;
    Ok(floor)
}

/// Deletes the DID bindings and bans lapsed at `now`.
fn prune_lapsed(
    bindings: &mut redb::Table<'_, &'static str, ([u8; 32], u64)>,
    bans: &mut redb::Table<'_, [u8; 32], u64>,
    now: Timestamp,
) -> Result<(), redb::StorageError> {
    bindings.retain(|_, (_, until)| until > now.0)?;
    bans.retain(|_, until| until > now.0)?;
    Ok(())
}

/// The wall clock as the core's time (milliseconds since the Unix epoch, as the driver counts).
fn wall_now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    Timestamp(ms)
}

fn open_optional<K: redb::Key + 'static, V: redb::Value + 'static>(
    rtx: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, redb::TableError> {
    match rtx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens an existing file with redb, checking every page, mapping each failure to a typed error.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(CACHE_BYTES).set_check_integrity_on_open(true);
    guarded(path, || builder.open(path))?.map_err(|e| open_error(path, e))
}

/// A redb open error as a typed error naming the file.
fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    let p = path.to_path_buf();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            StoreError::Locked { path: p }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            StoreError::Truncated { path: p, detail: e.to_string() }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Corrupt { path: p, detail: e.to_string() }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(source)) => StoreError::Io { path: p, source },
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => classify_corruption(path, detail),
        redb::DatabaseError::UpgradeRequired(v) => {
            StoreError::Corrupt { path: p, detail: format!("redb file format version {v}, not this redb's") }
        }
        other => StoreError::Corrupt { path: p, detail: other.to_string() },
    }
}

/// A corrupted-file error from redb: a truncated file when it is shorter than redb's header or
/// a page it refers to, else corrupt.
fn classify_corruption(path: &Path, detail: String) -> StoreError {
    let lower = detail.to_lowercase();
    if lower.contains("truncat") || lower.contains("too short") || lower.contains("eof") || lower.contains("length") {
        StoreError::Truncated { path: path.to_path_buf(), detail }
    } else {
        StoreError::Corrupt { path: path.to_path_buf(), detail }
    }
}

/// Creates a new store at `path`: initialised under a temporary name, synced, then renamed.
fn create(path: &Path, cipher: &Aes256Gcm, owner: PeerId) -> Result<(), StoreError> {
    let tmp = path.with_extension("redb.new");
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io { path: p, source }
    };
    let db_err = |e: &dyn std::fmt::Display| StoreError::Db { path: tmp.clone(), detail: e.to_string() };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&tmp)(e)),
    }
    {
        let db = redb::Builder::new().set_cache_size(CACHE_BYTES).create(&tmp).map_err(|e| db_err(&e))?;
        let wtx = db.begin_write().map_err(|e| db_err(&e))?;
        {
            // Every table exists from the start.
            let mut w = Writer::open(&wtx).map_err(|e| db_err(&e))?;
            w.meta.insert(META_SCHEMA, SCHEMA_VERSION.to_le_bytes().as_slice()).map_err(|e| db_err(&e))?;
            w.meta.insert(META_OWNER, owner.0.as_slice()).map_err(|e| db_err(&e))?;
            let check = seal(cipher, KEY_CHECK).map_err(|e| db_err(&e))?;
            w.meta.insert(META_KEY_CHECK, check.as_slice()).map_err(|e| db_err(&e))?;
        }
        wtx.commit().map_err(|e| db_err(&e))?;
    }
    // The inbox is in clear: only the daemon's user may read the file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename durable; a directory that cannot be synced is not fatal.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    tracing::info!(path = %path.display(), "created the durable store");
    Ok(())
}

/// The age of `t` at `now`, in whole seconds.
pub fn age_secs(t: Timestamp, now: Timestamp) -> u64 {
    now.0.saturating_sub(t.0) / 1000
}

#[cfg(test)]
mod tests;
