//! Signed peer records: what a daemon says about itself, verifiable by anyone.
//!
//! A [`PeerRecord`] is a [`RecordBody`] — peer id, DID, name, transport addresses, application
//! fields, issue and expiry times — signed with the daemon's own key over its canonical postcard
//! encoding, prefixed with a domain tag (DESIGN §3). Because the signing key *is* the peer id, a
//! record keyed by peer id is self-certifying: whoever stores or serves it cannot alter it, and a
//! reader verifies it itself (the seed's `DHTPayload` was never checked, A §6.6).
//!
//! Verification also bounds everything a peer controls: field sizes, the lifetime of a record
//! (so nobody can publish one that never expires), and how far in the future it may claim to have
//! been issued (clock skew). Between two valid records of the same owner, the later expiry wins.

use super::dht::kad::Key;
use super::durable::DidBinding;
use super::identity::{Addr, Did, Keypair, PeerId, SigCheck, Signature};
use super::time::Timestamp;
use super::wire::append_postcard;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Domain separation for record signatures.
const SIGNING_DOMAIN: &[u8] = b"ocd peer record v1\0";
/// Longest name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Most transport addresses in a record.
pub const MAX_ADDRS: usize = 8;
/// Longest transport address or application field, in bytes.
pub const MAX_FIELD_LEN: usize = 512;
/// Longest lifetime (`expires_at − issued_at`) a record may claim.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// How far in the future `issued_at` may be, to tolerate clock skew between daemons.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Why a record was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// The signature does not verify with the record's own peer id.
    #[error("record signature does not verify")]
    BadSignature,
    /// The signing key is not the record's peer id.
    #[error("record is not signed by the key of its peer id")]
    WrongKey,
    /// `now ≥ expires_at`.
    #[error("record expired at {0}")]
    Expired(Timestamp),
    /// `issued_at` is further in the future than the allowed clock skew.
    #[error("record issued in the future ({0})")]
    FromTheFuture(Timestamp),
    /// `expires_at ≤ issued_at`, or a lifetime above `MAX_LIFETIME` (1 h).
    #[error("record lifetime is empty or longer than allowed")]
    BadLifetime,
    /// A field is too long, or there are too many addresses.
    #[error("record field `{0}` is too large")]
    TooLarge(&'static str),
}

/// The signed content of a [`PeerRecord`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBody {
    /// The owner; its key signs the record.
    pub peer_id: PeerId,
    /// The owner's application identifier.
    pub did: Did,
    /// Human-readable name (the seed's `NAME`).
    pub name: String,
    /// Transport addresses the owner can be reached at.
    pub addrs: Vec<Addr>,
    /// Application API URL.
    pub api_url: Option<String>,
    /// NATS address.
    pub nats_address: Option<String>,
    /// Wallet.
    pub wallet: Option<String>,
    /// When the owner signed it.
    pub issued_at: Timestamp,
    /// After this instant the record is void.
    pub expires_at: Timestamp,
}

impl RecordBody {
    /// Whether `other` says the same as this body apart from its issue and expiry times (a
    /// refreshed version rather than a change).
    pub fn same_content(&self, other: &RecordBody) -> bool {
        self.peer_id == other.peer_id
            && self.did == other.did
            && self.name == other.name
            && self.addrs == other.addrs
            && self.api_url == other.api_url
            && self.nats_address == other.nats_address
            && self.wallet == other.wallet
    }

    /// The exact bytes that are signed: a domain tag, then the postcard encoding of the body.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNING_DOMAIN.len() + 160);
        out.extend_from_slice(SIGNING_DOMAIN);
        // Serialising plain data into a Vec cannot fail.
        if !append_postcard(self, &mut out) {
            out.truncate(SIGNING_DOMAIN.len());
        }
        out
    }

    fn check_shape(&self) -> Result<(), RecordError> {
        if self.name.len() > MAX_NAME_LEN {
            return Err(RecordError::TooLarge("name"));
        }
        if self.addrs.len() > MAX_ADDRS {
            return Err(RecordError::TooLarge("addrs"));
        }
        if self.addrs.iter().any(|a| a.len() > MAX_FIELD_LEN) {
            return Err(RecordError::TooLarge("addrs"));
        }
        for (field, v) in [("api_url", &self.api_url), ("nats_address", &self.nats_address), ("wallet", &self.wallet)] {
            if v.as_ref().is_some_and(|s| s.len() > MAX_FIELD_LEN) {
                return Err(RecordError::TooLarge(field));
            }
        }
        if self.expires_at <= self.issued_at || self.expires_at.since(self.issued_at) > MAX_LIFETIME {
            return Err(RecordError::BadLifetime);
        }
        Ok(())
    }
}

/// A record signed by its owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// What is claimed, shared: records travel inside messages and events, which stay small, and
    /// a record is copied to every replica and batch it goes to (a clone is a reference count;
    /// change a body with [`Arc::make_mut`]).
    pub body: Arc<RecordBody>,
    /// The owner's signature over [`RecordBody::signing_bytes`].
    pub signature: Signature,
}

impl PeerRecord {
    /// Signs `body` with `key`, which must be the key of `body.peer_id`; the body must be
    /// well-formed (sizes, lifetime).
    pub fn sign(body: RecordBody, key: &Keypair) -> Result<Self, RecordError> {
        let signature = sign_body(&body, key)?;
        Ok(PeerRecord { body: Arc::new(body), signature })
    }

    /// Checks the record as of `now`: shape, lifetime, not expired, not issued in the future
    /// beyond `MAX_CLOCK_SKEW` (5 min), and the owner's signature.
    pub fn verify(&self, now: Timestamp) -> Result<(), RecordError> {
        verify_body(&*self.body, &self.signature, now, &SigCheck::direct())
    }

    /// [`PeerRecord::verify`], with the signature checked through `sigs` (the same result).
    pub fn verify_with(&self, now: Timestamp, sigs: &SigCheck) -> Result<(), RecordError> {
        verify_body(&*self.body, &self.signature, now, sigs)
    }

    /// Whether `self` should replace `other` for the same owner: it expires later (ties keep the
    /// one already held). Records of different owners never replace each other.
    pub fn supersedes(&self, other: &PeerRecord) -> bool {
        self.body.peer_id == other.body.peer_id && self.body.expires_at > other.body.expires_at
    }
}

/// What peer records and provider records share: a signer, a shape check, a lifetime and the
/// exact bytes signed.
trait SignedBody {
    fn signer(&self) -> PeerId;
    fn signed_bytes(&self) -> Vec<u8>;
    fn shape(&self) -> Result<(), RecordError>;
    fn lifetime(&self) -> (Timestamp, Timestamp);
}

impl SignedBody for RecordBody {
    fn signer(&self) -> PeerId {
        self.peer_id
    }
    fn signed_bytes(&self) -> Vec<u8> {
        self.signing_bytes()
    }
    fn shape(&self) -> Result<(), RecordError> {
        self.check_shape()
    }
    fn lifetime(&self) -> (Timestamp, Timestamp) {
        (self.issued_at, self.expires_at)
    }
}

impl SignedBody for ProviderBody {
    fn signer(&self) -> PeerId {
        self.provider.id
    }
    fn signed_bytes(&self) -> Vec<u8> {
        self.signing_bytes()
    }
    fn shape(&self) -> Result<(), RecordError> {
        self.check_shape()
    }
    fn lifetime(&self) -> (Timestamp, Timestamp) {
        (self.issued_at, self.expires_at)
    }
}

/// Signs a well-formed body with its signer's key.
fn sign_body(body: &impl SignedBody, key: &Keypair) -> Result<Signature, RecordError> {
    if key.peer_id() != body.signer() {
        return Err(RecordError::WrongKey);
    }
    body.shape()?;
    Ok(key.sign(&body.signed_bytes()))
}

/// Shape, lifetime, not expired, not issued beyond [`MAX_CLOCK_SKEW`] in the future, signature.
fn verify_body(
    body: &impl SignedBody,
    signature: &Signature,
    now: Timestamp,
    sigs: &SigCheck,
) -> Result<(), RecordError> {
    body.shape()?;
    let (issued_at, expires_at) = body.lifetime();
    if now >= expires_at {
        return Err(RecordError::Expired(expires_at));
    }
    if issued_at > now + MAX_CLOCK_SKEW {
        return Err(RecordError::FromTheFuture(issued_at));
    }
    sigs.verify(&body.signer(), &body.signed_bytes(), signature).map_err(|_| RecordError::BadSignature)
}

/// Domain separation for provider-record signatures.
const PROVIDER_DOMAIN: &[u8] = b"ocd provider record v1\0";
/// Longest lifetime a provider record may claim (ocd: the seed's 48 h kept dead indexers
/// discoverable for two days, C §18.15).
pub const MAX_PROVIDER_LIFETIME: Duration = Duration::from_secs(1800);

/// What an indexer announces under the rendezvous key: where it is and how loaded it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderBody {
    /// The provider (its key signs the record) and its addresses.
    pub provider: super::identity::PeerAddr,
    /// Heartbeating nodes over capacity when signed, in `[0, 1]`.
    pub fill_rate: f32,
    /// Capacity in nodes.
    pub capacity: u32,
    /// When signed.
    pub issued_at: Timestamp,
    /// After this instant the announcement is void (minutes, not the seed's 48 h).
    pub expires_at: Timestamp,
}

impl ProviderBody {
    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PROVIDER_DOMAIN.len() + 96);
        out.extend_from_slice(PROVIDER_DOMAIN);
        if !append_postcard(self, &mut out) {
            out.truncate(PROVIDER_DOMAIN.len());
        }
        out
    }

    fn check_shape(&self) -> Result<(), RecordError> {
        if self.provider.addrs.len() > MAX_ADDRS || self.provider.addrs.iter().any(|a| a.len() > MAX_FIELD_LEN) {
            return Err(RecordError::TooLarge("addrs"));
        }
        if !(0.0..=1.0).contains(&self.fill_rate) {
            return Err(RecordError::TooLarge("fill_rate"));
        }
        if self.expires_at <= self.issued_at || self.expires_at.since(self.issued_at) > MAX_PROVIDER_LIFETIME {
            return Err(RecordError::BadLifetime);
        }
        Ok(())
    }
}

/// A provider announcement signed by the provider: fill rate and capacity cannot be faked by
/// whoever relays it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderRecord {
    /// What is announced (boxed, like [`PeerRecord::body`]).
    pub body: Box<ProviderBody>,
    /// The provider's signature.
    pub signature: Signature,
}

impl ProviderRecord {
    /// Signs `body` with `key` (the key of `body.provider.id`).
    pub fn sign(body: ProviderBody, key: &Keypair) -> Result<Self, RecordError> {
        let signature = sign_body(&body, key)?;
        Ok(ProviderRecord { body: Box::new(body), signature })
    }

    /// Checks shape, lifetime, expiry, clock skew and signature as of `now`.
    pub fn verify(&self, now: Timestamp) -> Result<(), RecordError> {
        verify_body(&*self.body, &self.signature, now, &SigCheck::direct())
    }

    /// [`ProviderRecord::verify`], with the signature checked through `sigs` (the same result).
    pub fn verify_with(&self, now: Timestamp, sigs: &SigCheck) -> Result<(), RecordError> {
        verify_body(&*self.body, &self.signature, now, sigs)
    }
}

/// The two DHT keys of a peer record: by peer id (`/pid/<PeerId>`) and by DID (`/node/<DID>`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordKey {
    /// `/pid/<PeerId>`.
    Peer(PeerId),
    /// `/node/<DID>`.
    Did(Did),
}

impl RecordKey {
    /// The key's position in the Kademlia space: BLAKE3 of `/pid/<32 bytes>` or `/node/<DID>`.
    pub fn kad_key(&self) -> Key {
        match self {
            RecordKey::Peer(p) => {
                let mut b = b"/pid/".to_vec();
                b.extend_from_slice(p.as_bytes());
                Key::of(&b)
            }
            RecordKey::Did(d) => {
                let mut b = b"/node/".to_vec();
                b.extend_from_slice(d.as_str().as_bytes());
                Key::of(&b)
            }
        }
    }

    /// Whether `record` is an answer for this key.
    pub fn matches(&self, record: &PeerRecord) -> bool {
        match self {
            RecordKey::Peer(p) => record.body.peer_id == *p,
            RecordKey::Did(d) => record.body.did == *d,
        }
    }
}

impl std::fmt::Display for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordKey::Peer(p) => write!(f, "/pid/{p}"),
            RecordKey::Did(d) => write!(f, "/node/{d}"),
        }
    }
}

/// This peer's own record: signed at start, re-signed at half-life (the seed's claim at start, then
/// before each expiry). Owned by the router, which hands each new version to the node's pool (which
/// sends it to indexers that do not hold it) and, on an indexer, to its own DHT store.
#[derive(Debug)]
pub(crate) struct OwnRecord {
    keypair: Keypair,
    did: Did,
    name: String,
    addrs: Vec<Addr>,
    ttl: Duration,
    current: Option<PeerRecord>,
    /// When `current` is re-signed, kept beside it: hosts ask after every input, and the boxed
    /// body is elsewhere in memory.
    refresh_at: Option<Timestamp>,
    /// Signs each version, and tells a shared memo it is good (see [`SigCheck::sign`]).
    sigs: SigCheck,
}

impl OwnRecord {
    /// Nothing signed yet; names too long for a record are left out, addresses truncated.
    pub(crate) fn new(keypair: Keypair, did: Did, name: &str, mut addrs: Vec<Addr>, ttl: Duration) -> Self {
        addrs.truncate(MAX_ADDRS);
        let name = if name.len() > MAX_NAME_LEN { String::new() } else { name.to_string() };
        OwnRecord { keypair, did, name, addrs, ttl, current: None, refresh_at: None, sigs: SigCheck::direct() }
    }

    /// Signs through `sigs`, so a shared memo knows each version is good.
    pub(crate) fn set_sig_check(&mut self, sigs: SigCheck) {
        self.sigs = sigs;
    }

    /// Signs a fresh version valid from `now`; `None` if signing failed (the old one stays).
    pub(crate) fn sign(&mut self, now: Timestamp) -> Option<PeerRecord> {
        let body = RecordBody {
            peer_id: self.keypair.peer_id(),
            did: self.did.clone(),
            name: self.name.clone(),
            addrs: self.addrs.clone(),
            api_url: None,
            nats_address: None,
            wallet: None,
            issued_at: now,
            expires_at: now + self.ttl,
        };
        body.check_shape().ok()?;
        let signature = self.sigs.sign(&self.keypair, &body.signing_bytes());
        let record = PeerRecord { body: Arc::new(body), signature };
        self.refresh_at = Some(now + self.ttl / 2);
        self.current = Some(record.clone());
        Some(record)
    }

    /// When the current version is re-signed (half its lifetime).
    pub(crate) fn refresh_at(&self) -> Option<Timestamp> {
        debug_assert_eq!(self.refresh_at, self.current.as_ref().map(|r| r.body.issued_at + self.ttl / 2));
        self.refresh_at
    }

    /// The current version.
    pub(crate) fn current(&self) -> Option<&PeerRecord> {
        self.current.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: Timestamp = Timestamp(1_700_000_000_000);

    fn body(key: &Keypair) -> RecordBody {
        RecordBody {
            peer_id: key.peer_id(),
            did: Did::new("did:example:alice").unwrap(),
            name: "alice".into(),
            addrs: vec!["127.0.0.1:4001".into()],
            api_url: Some("http://127.0.0.1:8080".into()),
            nats_address: None,
            wallet: None,
            issued_at: NOW,
            expires_at: NOW + Duration::from_secs(120),
        }
    }

    #[test]
    fn signed_record_verifies_until_it_expires() {
        let k = Keypair::derive(1, "alice");
        let r = PeerRecord::sign(body(&k), &k).unwrap();
        assert_eq!(r.verify(NOW), Ok(()));
        assert_eq!(r.verify(NOW + Duration::from_secs(119)), Ok(()));
        assert_eq!(r.verify(NOW + Duration::from_secs(120)), Err(RecordError::Expired(r.body.expires_at)));
    }

    #[test]
    fn a_record_can_only_be_signed_by_its_owner() {
        let (alice, mallory) = (Keypair::derive(1, "alice"), Keypair::derive(1, "mallory"));
        assert_eq!(PeerRecord::sign(body(&alice), &mallory), Err(RecordError::WrongKey));
        // Re-labelling Alice's record as Mallory's breaks the signature.
        let mut r = PeerRecord::sign(body(&alice), &alice).unwrap();
        std::sync::Arc::make_mut(&mut r.body).peer_id = mallory.peer_id();
        assert_eq!(r.verify(NOW), Err(RecordError::BadSignature));
    }

    #[test]
    fn lifetimes_sizes_and_clock_skew_are_bounded() {
        let k = Keypair::derive(1, "alice");
        let forever = RecordBody { expires_at: NOW + MAX_LIFETIME + Duration::from_secs(1), ..body(&k) };
        assert_eq!(PeerRecord::sign(forever, &k), Err(RecordError::BadLifetime));
        let empty = RecordBody { expires_at: NOW, ..body(&k) };
        assert_eq!(PeerRecord::sign(empty, &k), Err(RecordError::BadLifetime));
        let big = RecordBody { name: "x".repeat(MAX_NAME_LEN + 1), ..body(&k) };
        assert_eq!(PeerRecord::sign(big, &k), Err(RecordError::TooLarge("name")));
        let future = RecordBody {
            issued_at: NOW + MAX_CLOCK_SKEW + Duration::from_secs(1),
            expires_at: NOW + MAX_CLOCK_SKEW + Duration::from_secs(60),
            ..body(&k)
        };
        let r = PeerRecord::sign(future, &k).unwrap();
        assert!(matches!(r.verify(NOW), Err(RecordError::FromTheFuture(_))));
    }

    #[test]
    fn later_expiry_of_the_same_owner_supersedes() {
        let (a, b) = (Keypair::derive(1, "a"), Keypair::derive(1, "b"));
        let old = PeerRecord::sign(body(&a), &a).unwrap();
        let new = PeerRecord::sign(RecordBody { expires_at: NOW + Duration::from_secs(240), ..body(&a) }, &a).unwrap();
        assert!(new.supersedes(&old));
        assert!(!old.supersedes(&new));
        assert!(!old.supersedes(&old));
        let other =
            PeerRecord::sign(RecordBody { expires_at: NOW + Duration::from_secs(999), ..body(&b) }, &b).unwrap();
        assert!(!other.supersedes(&old), "another owner never replaces a record");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Flipping any bit of an encoded record either makes it undecodable or makes it fail
        /// verification — unless the flip landed on bytes that decode to the very same record.
        #[test]
        fn record_validation_never_accepts_a_tampered_record(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let k = Keypair::derive(7, "owner");
            let r = PeerRecord::sign(body(&k), &k).unwrap();
            let mut bytes = postcard::to_stdvec(&r).unwrap();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(t) = postcard::from_bytes::<PeerRecord>(&bytes)
                && t != r
            {
                prop_assert!(t.verify(NOW).is_err(), "tampered record accepted: {t:?}");
            }
        }
    }
}

/// Why a record was not stored.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The record itself is invalid (signature, expiry, sizes).
    #[error(transparent)]
    Invalid(#[from] RecordError),
    /// Its DID is bound to another peer's key: the publisher claims a foreign DID (a strike).
    #[error("DID {did} belongs to another key")]
    ForeignDid {
        /// The DID claimed.
        did: Did,
    },
    /// A record of the same owner that expires later is already held.
    #[error("a newer record is already stored")]
    Stale,
}

/// What storing a record did ([`RecordStore::put`], [`RecordStore::put_verified`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use = "the DID bindings in `persist` must reach the durable store"]
pub struct Stored {
    /// It replaced an older record of its owner.
    pub replaced: bool,
    /// DID bindings to persist ([`Persist::DidBinding`](crate::proto::Persist::DidBinding)), in
    /// order: a binding its owner released (its `until` is the time of the release, so it is
    /// already lapsed), then a new binding, a binding that changed owner, or one whose `until`
    /// moved too far past the stored one (see [`RecordStore`], "Persistence").
    pub persist: Vec<DidBinding>,
}

/// One DID binding held in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Binding {
    owner: PeerId,
    /// Valid until.
    until: Timestamp,
    /// The `until` last handed out to persist (or restored from the durable store).
    stored: Timestamp,
}

/// Mixed into a [`RecordStore`]'s key for its DID table (so its two tables hash differently).
const DID_TABLE_KEY: u64 = 0x9e37_79b9_7f4a_7c15;

/// The records an indexer holds, reachable by peer id and by DID (the seed's `/pid/<PeerId>` and
/// `/node/<DID>` keys, C §7), validated on the way in and on the way out.
///
/// A DID is bound to the first key that stored a record for it; a record for that DID signed by
/// another key is refused with [`StoreError::ForeignDid`] (the caller strikes the publisher). The
/// binding outlives the record, for `binding_ttl` after its last refresh, so a thief cannot wait
/// for an expiry to take a DID over. The store is bounded: at capacity, the record closest to
/// expiry goes first.
///
/// ## Persistence
///
/// Bindings are durable (DESIGN §8), so a restarted indexer still refuses a thief: every write
/// returns the bindings to persist ([`Stored::persist`]) and [`RecordStore::restore`] takes them
/// back at start. Not every refresh is written — an owner re-signs its record every
/// `record_ttl / 2`, and each refresh moves its binding's `until` by as much. A binding is written
/// when it is **new**, when it **changes owner** (the previous one had lapsed), when its owner
/// **releases** it (the owner's record moved to another DID: written with an `until` already
/// past), and when its `until` has moved **more than a quarter of `binding_ttl`** (15 min for the
/// DHT's 1 h) past the `until` last written. So per bound DID, at most one write per quarter of
/// `binding_ttl` of refreshes.
///
/// Why it stays safe: the stored `until` is never more than `binding_ttl / 4` behind the one in
/// memory, and the one in memory is at least the expiry of the owner's latest record held here
/// plus `binding_ttl`. A restarted indexer therefore keeps the DID bound to its owner at least
/// until *that record's expiry + ¾ `binding_ttl`* — as if its bindings had been made with a
/// `binding_ttl` a quarter shorter. In particular a thief is refused for the whole lifetime of any
/// record of the owner this indexer ever stored (so it can never serve a thief's record while the
/// owner's own may still be valid anywhere), and then for ¾ `binding_ttl` more, against
/// `binding_ttl` without a restart. It is never refused *longer* than without a restart: a
/// stored `until` is never ahead of the one in memory, and a released binding is written as
/// lapsed. The owner itself is never refused: its binding is its own.
#[derive(Clone, Debug)]
pub struct RecordStore {
    /// Records by owner: a hash table, for one cache miss per lookup (an indexer looks its nodes'
    /// records up on every heartbeat). Its order is never an output: [`RecordStore::iter`] sorts.
    /// Each entry keeps the record's expiry next to the key and the record itself boxed: a
    /// heartbeat only needs the expiry ([`RecordStore::held_expiry`]), found in the bucket it
    /// probes, and a table of small buckets stays within the caches (and the TLB) much longer
    /// than one of whole records (issue 13).
    by_peer: crate::proto::seeded::SeededMap<PeerId, Held>,
    /// DID → its owner, valid until, and the `until` last persisted: a hash table too (the DID
    /// of every record stored is looked up; a B-tree search compares a string per level), whose
    /// order is never an output either.
    did_owner: crate::proto::seeded::SeededMap<Did, Binding>,
    max_records: usize,
    binding_ttl: Duration,
    /// How [`RecordStore::put`] checks signatures.
    sigs: SigCheck,
}

/// A record held by a [`RecordStore`], with its expiry where the table's probe finds it.
#[derive(Clone, Debug)]
struct Held {
    /// `record.body.expires_at`.
    expires_at: Timestamp,
    record: Box<PeerRecord>,
}

impl RecordStore {
    /// An empty store of at most `max_records` records; DID bindings last `binding_ttl` after the
    /// owner's last record expired.
    #[cfg(test)]
    pub fn new(max_records: usize, binding_ttl: Duration) -> Self {
        Self::keyed(max_records, binding_ttl, 0)
    }

    /// As [`RecordStore::new`], with `key` keying its hash table (draw it from the owner's seeded
    /// RNG, see [`SeededState`](crate::proto::seeded::SeededState)).
    pub fn keyed(max_records: usize, binding_ttl: Duration, key: u64) -> Self {
        RecordStore {
            by_peer: crate::proto::seeded::seeded_map(key),
            did_owner: crate::proto::seeded::seeded_map(key ^ DID_TABLE_KEY),
            max_records: max_records.max(1),
            binding_ttl,
            sigs: SigCheck::direct(),
        }
    }

    /// Checks the signatures of the records [`RecordStore::put`] takes through `sigs` (the same
    /// results: see [`SigCheck`]).
    pub fn set_sig_check(&mut self, sigs: SigCheck) {
        self.sigs = sigs;
    }

    /// How far the `until` of a binding may move past the one last persisted before it is
    /// persisted again: a quarter of `binding_ttl` (see "Persistence").
    pub fn persist_slack(&self) -> Duration {
        self.binding_ttl / 4
    }

    /// Most DID bindings held: bindings outlive records, 4× as many as records.
    fn max_bindings(&self) -> usize {
        self.max_records.saturating_mul(4)
    }

    /// Records held (possibly expired until the next [`RecordStore::prune`]).
    pub fn len(&self) -> usize {
        self.by_peer.len()
    }

    #[cfg(any(test, feature = "internals"))]
    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }

    #[cfg(any(test, feature = "internals"))]
    /// DID bindings held (possibly lapsed until the next [`RecordStore::prune`]).
    pub fn binding_count(&self) -> usize {
        self.did_owner.len()
    }

    /// Verifies and stores `record`. Returns whether it replaced an older record of its owner,
    /// and the DID bindings to persist.
    pub fn put(&mut self, record: PeerRecord, now: Timestamp) -> Result<Stored, StoreError> {
        record.verify_with(now, &self.sigs)?;
        self.put_verified(record, now)
    }

    /// Whether exactly this record is held (nothing to verify again).
    pub fn holds(&self, record: &PeerRecord) -> bool {
        // The expiry, kept in the table, tells versions apart without reaching the record.
        self.by_peer
            .get(&record.body.peer_id)
            .is_some_and(|h| h.expires_at == record.body.expires_at && *h.record == *record)
    }

    /// The key a DID is bound to at `now`, if any.
    pub fn did_owner(&self, did: &Did, now: Timestamp) -> Option<PeerId> {
        self.did_owner.get(did).filter(|b| b.until > now).map(|b| b.owner)
    }

    #[cfg(any(test, feature = "internals"))]
    /// The binding of `did` at `now`, if any: its owner and until when it holds.
    pub fn binding(&self, did: &Did, now: Timestamp) -> Option<(PeerId, Timestamp)> {
        self.did_owner.get(did).filter(|b| b.until > now).map(|b| (b.owner, b.until))
    }

    /// Iterates over the records held (possibly expired until the next prune), in owner order
    /// (sorted at each call).
    pub fn iter(&self) -> impl Iterator<Item = &PeerRecord> + '_ {
        let mut all: Vec<(&PeerId, &Held)> = self.by_peer.iter().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.into_iter().map(|(_, h)| &*h.record)
    }

    /// Stores a record the caller has just verified with [`PeerRecord::verify`] at `now` (the
    /// DID binding, staleness and bounds are still checked). Returns whether it replaced an older
    /// record of its owner, and the DID bindings to persist.
    pub fn put_verified(&mut self, record: PeerRecord, now: Timestamp) -> Result<Stored, StoreError> {
        if now >= record.body.expires_at {
            return Err(StoreError::Invalid(RecordError::Expired(record.body.expires_at)));
        }
        let owner = record.body.peer_id;
        let did = record.body.did.clone();
        if let Some(b) = self.did_owner.get(&did)
            && b.owner != owner
            && b.until > now
        {
            return Err(StoreError::ForeignDid { did });
        }
        let mut persist = Vec::new();
        let replaced = match self.by_peer.get(&owner).map(|h| &*h.record) {
            Some(old) if !record.supersedes(old) => return Err(StoreError::Stale),
            Some(old) => {
                // The owner moved to another DID: release the old binding (if it is still the
                // owner's), durably too unless it already lapsed there.
                if old.body.did != did
                    && self.did_owner.get(&old.body.did).is_some_and(|b| b.owner == owner)
                    && let Some(b) = self.did_owner.remove(&old.body.did)
                    && b.stored > now
                {
                    persist.push(DidBinding { did: old.body.did.clone(), owner, until: now });
                }
                true
            }
            None => false,
        };
        if !replaced && self.by_peer.len() >= self.max_records {
            // Ties go to the lowest owner: the table's order does not matter.
            let victim = self.by_peer.iter().map(|(p, h)| (h.expires_at, *p)).min().map(|(_, p)| p);
            if let Some(v) = victim {
                self.by_peer.remove(&v);
            }
        }
        let until = record.body.expires_at + self.binding_ttl;
        let slack = self.persist_slack();
        match self.did_owner.get_mut(&did) {
            Some(b) if b.owner == owner => {
                // Never shortened: an older record of the same owner (a replica, or one offered
                // again after a restart) does not undo a later refresh.
                b.until = b.until.max(until);
                if b.until > b.stored + slack {
                    b.stored = b.until;
                    persist.push(DidBinding { did: did.clone(), owner, until: b.until });
                }
            }
            // New, or the previous owner's binding lapsed (checked above).
            _ => {
                self.did_owner.insert(did.clone(), Binding { owner, until, stored: until });
                persist.push(DidBinding { did, owner, until });
            }
        }
        self.by_peer.insert(owner, Held { expires_at: record.body.expires_at, record: Box::new(record) });
        self.bound_bindings();
        Ok(Stored { replaced, persist })
    }

    /// Keeps at most [`max_bindings`](Self::max_bindings) bindings, dropping those of owners
    /// without a record that lapse first (they stay in the durable store until they lapse there).
    fn bound_bindings(&mut self) {
        while self.did_owner.len() > self.max_bindings() {
            let victim = self
                .did_owner
                .iter()
                .filter(|(_, b)| !self.by_peer.contains_key(&b.owner))
                // Ties go to the lowest DID: the table's order does not matter.
                .min_by(|(d, b), (e, c)| b.until.cmp(&c.until).then_with(|| d.cmp(e)))
                .map(|(d, _)| d.clone());
            match victim {
                Some(d) => self.did_owner.remove(&d),
                None => break,
            };
        }
    }

    /// Takes back the bindings persisted before a restart ([`Restored::bindings`](crate::proto::Restored)).
    /// Lapsed ones are ignored; an `until` further ahead than any binding made at `now` could be
    /// (a record issued `MAX_CLOCK_SKEW` ahead, of `MAX_LIFETIME`, plus `binding_ttl`: a clock that
    /// went back, or a damaged store) is brought back to that. A binding already made in this life
    /// for another key is kept (only the peer's own record can precede the restore); one of the
    /// same key keeps the later `until`. Nothing needs persisting again. The bound of 4× the
    /// records holds: beyond it, the restored bindings that lapse first are left out.
    pub fn restore(&mut self, bindings: &[DidBinding], now: Timestamp) {
        let latest = now + MAX_CLOCK_SKEW + MAX_LIFETIME + self.binding_ttl;
        let mut live: Vec<&DidBinding> = bindings.iter().filter(|b| b.until > now).collect();
        // The latest first, so that the room left goes to the bindings that last longest.
        live.sort_by(|a, b| b.until.cmp(&a.until).then_with(|| a.did.cmp(&b.did)));
        for b in live {
            let until = b.until.min(latest);
            match self.did_owner.get_mut(&b.did) {
                Some(held) if held.owner == b.owner && held.until > now => {
                    held.until = held.until.max(until);
                    held.stored = held.stored.max(until);
                }
                Some(held) if held.until > now => {}
                _ => {
                    if self.did_owner.len() >= self.max_bindings() && !self.did_owner.contains_key(&b.did) {
                        continue;
                    }
                    self.did_owner.insert(b.did.clone(), Binding { owner: b.owner, until, stored: until });
                }
            }
        }
    }

    /// The unexpired record of `peer`, if any (`/pid/<PeerId>`). Every record was verified on its
    /// way in and is immutable here, so a read only checks the expiry (no signature check per
    /// heartbeat); whoever receives it from us verifies it again.
    pub fn by_peer(&self, peer: &PeerId, now: Timestamp) -> Option<&PeerRecord> {
        self.by_peer.get(peer).filter(|h| now < h.expires_at).map(|h| &*h.record)
    }

    /// The expiry of `peer`'s unexpired record, if any: what [`RecordStore::by_peer`] would find,
    /// read from the table's bucket without reaching the record.
    pub fn held_expiry(&self, peer: &PeerId, now: Timestamp) -> Option<Timestamp> {
        self.by_peer.get(peer).map(|h| h.expires_at).filter(|e| now < *e)
    }

    /// The valid record for `did`, if any (`/node/<DID>`).
    pub fn by_did(&self, did: &Did, now: Timestamp) -> Option<&PeerRecord> {
        let b = self.did_owner.get(did)?;
        self.by_peer(&b.owner, now).filter(|r| r.body.did == *did)
    }

    /// Drops expired records and lapsed DID bindings (lapsed in the durable store too: a stored
    /// `until` is never ahead of the one in memory).
    pub fn prune(&mut self, now: Timestamp) {
        self.by_peer.retain(|_, h| h.expires_at > now);
        self.did_owner.retain(|_, b| b.until > now);
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_700_000_000_000);

    fn rec(key: &Keypair, did: &str, ttl_s: u64, at: Timestamp) -> PeerRecord {
        let body = RecordBody {
            peer_id: key.peer_id(),
            did: Did::new(did).unwrap(),
            name: "n".into(),
            addrs: Vec::new(),
            api_url: None,
            nats_address: None,
            wallet: None,
            issued_at: at,
            expires_at: at + Duration::from_secs(ttl_s),
        };
        PeerRecord::sign(body, key).unwrap()
    }

    /// The expiry kept next to each record's key (read by heartbeats without reaching the record)
    /// is always the held record's own, through storing, replacing, evicting and pruning.
    #[test]
    fn held_expiry_is_the_held_records_through_every_change() {
        fn consistent(s: &RecordStore, peers: &[PeerId], now: Timestamp) {
            for p in peers {
                assert_eq!(s.held_expiry(p, now), s.by_peer(p, now).map(|r| r.body.expires_at), "{p:?} at {now:?}");
            }
            for (p, h) in &s.by_peer {
                assert_eq!(h.expires_at, h.record.body.expires_at);
                assert_eq!(*p, h.record.body.peer_id);
            }
        }
        let keys: Vec<Keypair> = (0..3).map(|i| Keypair::derive(i, "held expiry")).collect();
        let peers: Vec<PeerId> = keys.iter().map(Keypair::peer_id).collect();
        let mut s = RecordStore::new(2, Duration::from_secs(3600));
        consistent(&s, &peers, NOW);
        let a1 = rec(&keys[0], "did:ocd:a", 60, NOW);
        let _ = s.put(a1.clone(), NOW).unwrap();
        assert!(s.holds(&a1));
        assert_eq!(s.held_expiry(&peers[0], NOW), Some(NOW + Duration::from_secs(60)));
        consistent(&s, &peers, NOW);
        // A newer version replaces the expiry with its own.
        let later = NOW + Duration::from_secs(10);
        let a2 = rec(&keys[0], "did:ocd:a", 300, later);
        let _ = s.put(a2.clone(), later).unwrap();
        assert!(s.holds(&a2) && !s.holds(&a1));
        assert_eq!(s.held_expiry(&peers[0], later), Some(later + Duration::from_secs(300)));
        consistent(&s, &peers, later);
        // Full: the record that expires first goes, with its expiry.
        let _ = s.put(rec(&keys[1], "did:ocd:b", 30, later), later).unwrap();
        let _ = s.put(rec(&keys[2], "did:ocd:c", 600, later), later).unwrap();
        assert_eq!(s.held_expiry(&peers[1], later), None);
        consistent(&s, &peers, later);
        // Expired: neither is found, before or after the prune.
        let end = later + Duration::from_secs(400);
        assert_eq!(s.held_expiry(&peers[0], end), None);
        consistent(&s, &peers, end);
        s.prune(end);
        assert_eq!(s.len(), 1);
        consistent(&s, &peers, end);
    }

    #[test]
    fn records_are_found_by_peer_and_did_until_they_expire() {
        let a = Keypair::derive(1, "a");
        let mut s = RecordStore::new(10, Duration::from_secs(600));
        assert_eq!(s.put(rec(&a, "did:a", 120, NOW), NOW).map(|x| x.replaced), Ok(false));
        let did = Did::new("did:a").unwrap();
        assert_eq!(s.by_did(&did, NOW).map(|r| r.body.peer_id), Some(a.peer_id()));
        assert!(s.by_peer(&a.peer_id(), NOW).is_some());
        let later = NOW + Duration::from_secs(121);
        assert!(s.by_did(&did, later).is_none(), "an expired record is never served");
        s.prune(later);
        assert!(s.is_empty());
    }

    #[test]
    fn a_foreign_did_claim_is_refused_even_after_the_owner_record_expired() {
        let (a, m) = (Keypair::derive(1, "a"), Keypair::derive(1, "mallory"));
        let mut s = RecordStore::new(10, Duration::from_secs(600));
        let _ = s.put(rec(&a, "did:a", 120, NOW), NOW).unwrap();
        let steal = rec(&m, "did:a", 120, NOW);
        assert_eq!(s.put(steal, NOW), Err(StoreError::ForeignDid { did: Did::new("did:a").unwrap() }));
        // Waiting for the owner's record to expire does not help within the binding's lifetime.
        let t = NOW + Duration::from_secs(300);
        s.prune(t);
        assert!(matches!(s.put(rec(&m, "did:a", 120, t), t), Err(StoreError::ForeignDid { .. })));
        assert_eq!(s.by_did(&Did::new("did:a").unwrap(), NOW).map(|r| r.body.peer_id), None, "pruned");
    }

    #[test]
    fn newer_expiry_wins_and_tampered_or_stale_records_are_refused() {
        let a = Keypair::derive(1, "a");
        let mut s = RecordStore::new(10, Duration::from_secs(600));
        let _ = s.put(rec(&a, "did:a", 120, NOW), NOW).unwrap();
        assert_eq!(s.put(rec(&a, "did:a", 60, NOW), NOW), Err(StoreError::Stale));
        let t = NOW + Duration::from_secs(20);
        assert_eq!(s.put(rec(&a, "did:a", 120, t), t).map(|x| x.replaced), Ok(true));
        let mut forged = rec(&a, "did:a", 600, t);
        std::sync::Arc::make_mut(&mut forged.body).name = "forged".into();
        assert_eq!(s.put(forged, t), Err(StoreError::Invalid(RecordError::BadSignature)));
    }

    #[test]
    fn the_store_stays_bounded() {
        let mut s = RecordStore::new(3, Duration::from_secs(60));
        for i in 0..10u64 {
            let k = Keypair::derive(i, "bounded");
            let _ = s.put(rec(&k, &format!("did:{i}"), 100 + i, NOW), NOW).unwrap();
            assert!(s.len() <= 3);
        }
        // The ones closest to expiry went first; DID bindings are bounded too.
        assert!(s.by_did(&Did::new("did:9").unwrap(), NOW).is_some());
        assert!(s.by_did(&Did::new("did:0").unwrap(), NOW).is_none());
        assert!(s.did_owner.len() <= 12);
    }

    fn did(s: &str) -> Did {
        Did::new(s).unwrap()
    }

    #[test]
    fn bindings_dropped_for_room_do_not_depend_on_the_table_key() {
        // One record of room, four bindings: the owners that lost their record leave bindings
        // lapsing at the same instant, and the lowest DIDs go first, whatever the hash key.
        for key in 0..8u64 {
            let mut s = RecordStore::keyed(1, Duration::from_secs(60), key);
            for i in 0..6u64 {
                let k = Keypair::derive(i, "ties");
                let _ = s.put(rec(&k, &format!("did:{i}"), 100, NOW), NOW).unwrap();
            }
            let kept: Vec<u64> = (0..6).filter(|i| s.did_owner(&did(&format!("did:{i}")), NOW).is_some()).collect();
            assert_eq!(kept, vec![2, 3, 4, 5], "table key {key}");
        }
    }

    #[test]
    fn a_new_binding_is_persisted_and_refreshes_only_past_the_slack() {
        let a = Keypair::derive(1, "a");
        let ttl = Duration::from_secs(3600);
        let mut s = RecordStore::new(10, ttl);
        assert_eq!(s.persist_slack(), Duration::from_secs(900));
        let first = s.put(rec(&a, "did:a", 300, NOW), NOW).unwrap();
        let until0 = NOW + Duration::from_secs(300) + ttl;
        assert_eq!(first.persist, vec![DidBinding { did: did("did:a"), owner: a.peer_id(), until: until0 }]);
        // Re-signed every 150 s: each refresh moves `until` by 150 s; written again only once it
        // moved more than 15 min past the stored one (the 7th refresh: 1050 s).
        let mut written = Vec::new();
        for i in 1..=20u64 {
            let t = NOW + Duration::from_secs(150 * i);
            let put = s.put(rec(&a, "did:a", 300, t), t).unwrap();
            assert!(put.replaced);
            let (_, in_memory) = s.binding(&did("did:a"), t).unwrap();
            assert_eq!(in_memory, t + Duration::from_secs(300) + ttl);
            for b in put.persist {
                written.push((i, b.until));
            }
        }
        assert_eq!(written.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [7, 14]);
        // The invariant that makes a restart safe: the stored until is never more than the slack
        // behind the one in memory.
        let mut stored = until0;
        for i in 1..=20u64 {
            let t = NOW + Duration::from_secs(150 * i);
            if let Some((_, u)) = written.iter().find(|(j, _)| *j == i) {
                stored = *u;
            }
            let in_memory = t + Duration::from_secs(300) + ttl;
            assert!(in_memory.since(stored) <= s.persist_slack(), "refresh {i}");
        }
    }

    #[test]
    fn a_binding_that_changes_owner_or_is_released_is_persisted() {
        let (a, b) = (Keypair::derive(1, "a"), Keypair::derive(1, "b"));
        let ttl = Duration::from_secs(600);
        let mut s = RecordStore::new(10, ttl);
        let _ = s.put(rec(&a, "did:x", 120, NOW), NOW).unwrap();
        // Once a's binding lapsed, b may take the DID: a new owner, written at once.
        let t = NOW + Duration::from_secs(120 + 600);
        let put = s.put(rec(&b, "did:x", 120, t), t).unwrap();
        assert_eq!(
            put.persist,
            vec![DidBinding { did: did("did:x"), owner: b.peer_id(), until: t + Duration::from_secs(720) }]
        );
        // b moves to another DID: the old binding is released, written as lapsed, then the new one.
        let t2 = t + Duration::from_secs(10);
        let put = s.put(rec(&b, "did:y", 120, t2), t2).unwrap();
        assert_eq!(
            put.persist,
            vec![
                DidBinding { did: did("did:x"), owner: b.peer_id(), until: t2 },
                DidBinding { did: did("did:y"), owner: b.peer_id(), until: t2 + Duration::from_secs(720) },
            ]
        );
        assert_eq!(s.did_owner(&did("did:x"), t2), None);
        // Refused and stale writes persist nothing (they return errors).
        assert!(s.put(rec(&a, "did:y", 120, t2), t2).is_err());
    }

    #[test]
    fn restored_bindings_refuse_a_thief_and_stay_bounded() {
        let (a, m) = (Keypair::derive(1, "a"), Keypair::derive(1, "mallory"));
        let ttl = Duration::from_secs(3600);
        let mut before = RecordStore::new(10, ttl);
        let put = before.put(rec(&a, "did:a", 300, NOW), NOW).unwrap();
        // A restart, 10 min later: the records are gone, the persisted binding comes back.
        let t = NOW + Duration::from_secs(600);
        let mut after = RecordStore::new(10, ttl);
        let lapsed = DidBinding { did: did("did:old"), owner: m.peer_id(), until: t };
        after.restore(&[put.persist[0].clone(), lapsed], t);
        assert_eq!(after.binding_count(), 1, "the lapsed one is ignored");
        assert_eq!(after.did_owner(&did("did:a"), t), Some(a.peer_id()));
        assert!(after.is_empty());
        assert_eq!(
            after.put(rec(&m, "did:a", 300, t), t),
            Err(StoreError::ForeignDid { did: did("did:a") }),
            "the thief is refused after the restart"
        );
        // The owner comes back: its binding, restored, needs no new write.
        let put = after.put(rec(&a, "did:a", 300, t), t).unwrap();
        assert!(put.persist.is_empty(), "{:?}", put.persist);
        assert!(after.by_did(&did("did:a"), t).is_some());

        // An until beyond any a binding made now could have (a clock that went back) is clamped.
        let mut s = RecordStore::new(10, ttl);
        let far =
            DidBinding { did: did("did:far"), owner: a.peer_id(), until: NOW + Duration::from_secs(86_400 * 365) };
        s.restore(&[far], NOW);
        let (_, until) = s.binding(&did("did:far"), NOW).unwrap();
        assert_eq!(until, NOW + MAX_CLOCK_SKEW + MAX_LIFETIME + ttl);

        // At most 4× max_records bindings; those that last longest are kept.
        let mut s = RecordStore::new(2, ttl);
        let many: Vec<DidBinding> = (0..20u64)
            .map(|i| DidBinding {
                did: did(&format!("did:{i}")),
                owner: Keypair::derive(i, "many").peer_id(),
                until: NOW + Duration::from_secs(100 + i),
            })
            .collect();
        s.restore(&many, NOW);
        assert_eq!(s.binding_count(), 8);
        assert!(s.did_owner(&did("did:19"), NOW).is_some());
        assert!(s.did_owner(&did("did:11"), NOW).is_none());
    }

    #[test]
    fn a_restored_binding_never_shortens_one_made_since_the_start() {
        let a = Keypair::derive(1, "a");
        let ttl = Duration::from_secs(3600);
        let mut s = RecordStore::new(10, ttl);
        let _ = s.put(rec(&a, "did:a", 300, NOW), NOW).unwrap();
        let made = s.binding(&did("did:a"), NOW).unwrap().1;
        s.restore(&[DidBinding { did: did("did:a"), owner: a.peer_id(), until: NOW + Duration::from_secs(60) }], NOW);
        assert_eq!(s.binding(&did("did:a"), NOW).unwrap().1, made);
        // Another key's older binding does not override the one made in this life.
        let m = Keypair::derive(1, "m");
        s.restore(&[DidBinding { did: did("did:a"), owner: m.peer_id(), until: made + Duration::from_secs(60) }], NOW);
        assert_eq!(s.did_owner(&did("did:a"), NOW), Some(a.peer_id()));
    }
}
