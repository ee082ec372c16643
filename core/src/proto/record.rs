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
use super::identity::{Addr, Did, Keypair, PeerId, Signature};
use super::time::Timestamp;
use serde::{Deserialize, Serialize};
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
    /// The exact bytes that are signed: a domain tag, then the postcard encoding of the body.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let out = SIGNING_DOMAIN.to_vec();
        // Serialising plain data into a Vec cannot fail.
        match postcard::to_extend(self, out) {
            Ok(v) => v,
            Err(_) => SIGNING_DOMAIN.to_vec(),
        }
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
    /// What is claimed (boxed: records travel inside messages and events, which stay small).
    pub body: Box<RecordBody>,
    /// The owner's signature over [`RecordBody::signing_bytes`].
    pub signature: Signature,
}

impl PeerRecord {
    /// Signs `body` with `key`, which must be the key of `body.peer_id`; the body must be
    /// well-formed (sizes, lifetime).
    pub fn sign(body: RecordBody, key: &Keypair) -> Result<Self, RecordError> {
        let signature = sign_body(&body, key)?;
        Ok(PeerRecord { body: Box::new(body), signature })
    }

    /// Checks the record as of `now`: shape, lifetime, not expired, not issued in the future
    /// beyond `MAX_CLOCK_SKEW` (5 min), and the owner's signature.
    pub fn verify(&self, now: Timestamp) -> Result<(), RecordError> {
        verify_body(&*self.body, &self.signature, now)
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
fn verify_body(body: &impl SignedBody, signature: &Signature, now: Timestamp) -> Result<(), RecordError> {
    body.shape()?;
    let (issued_at, expires_at) = body.lifetime();
    if now >= expires_at {
        return Err(RecordError::Expired(expires_at));
    }
    if issued_at > now + MAX_CLOCK_SKEW {
        return Err(RecordError::FromTheFuture(issued_at));
    }
    body.signer().verify(&body.signed_bytes(), signature).map_err(|_| RecordError::BadSignature)
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
        match postcard::to_extend(self, PROVIDER_DOMAIN.to_vec()) {
            Ok(v) => v,
            Err(_) => PROVIDER_DOMAIN.to_vec(),
        }
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
        verify_body(&*self.body, &self.signature, now)
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
}

impl OwnRecord {
    /// Nothing signed yet; names too long for a record are left out, addresses truncated.
    pub(crate) fn new(keypair: Keypair, did: Did, name: &str, mut addrs: Vec<Addr>, ttl: Duration) -> Self {
        addrs.truncate(MAX_ADDRS);
        let name = if name.len() > MAX_NAME_LEN { String::new() } else { name.to_string() };
        OwnRecord { keypair, did, name, addrs, ttl, current: None }
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
        let record = PeerRecord::sign(body, &self.keypair).ok()?;
        self.current = Some(record.clone());
        Some(record)
    }

    /// When the current version is re-signed (half its lifetime).
    pub(crate) fn refresh_at(&self) -> Option<Timestamp> {
        self.current.as_ref().map(|r| r.body.issued_at + self.ttl / 2)
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
        r.body.peer_id = mallory.peer_id();
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

/// The records an indexer holds, reachable by peer id and by DID (the seed's `/pid/<PeerId>` and
/// `/node/<DID>` keys, C §7), validated on the way in and on the way out.
///
/// A DID is bound to the first key that stored a record for it; a record for that DID signed by
/// another key is refused with [`StoreError::ForeignDid`] (the caller strikes the publisher). The
/// binding outlives the record, for `binding_ttl` after its last refresh, so a thief cannot wait
/// for an expiry to take a DID over. The store is bounded: at capacity, the record closest to
/// expiry goes first.
#[derive(Clone, Debug)]
pub struct RecordStore {
    by_peer: std::collections::BTreeMap<PeerId, PeerRecord>,
    /// DID → (owner, binding valid until).
    did_owner: std::collections::BTreeMap<Did, (PeerId, Timestamp)>,
    max_records: usize,
    binding_ttl: Duration,
}

impl RecordStore {
    /// An empty store of at most `max_records` records; DID bindings last `binding_ttl` after the
    /// owner's last record expired.
    pub fn new(max_records: usize, binding_ttl: Duration) -> Self {
        RecordStore {
            by_peer: std::collections::BTreeMap::new(),
            did_owner: std::collections::BTreeMap::new(),
            max_records: max_records.max(1),
            binding_ttl,
        }
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

    /// Verifies and stores `record`. Returns whether it replaced an older record of its owner.
    pub fn put(&mut self, record: PeerRecord, now: Timestamp) -> Result<bool, StoreError> {
        record.verify(now)?;
        self.put_verified(record, now)
    }

    /// Whether exactly this record is held (nothing to verify again).
    pub fn holds(&self, record: &PeerRecord) -> bool {
        self.by_peer.get(&record.body.peer_id) == Some(record)
    }

    /// The key a DID is bound to at `now`, if any.
    pub fn did_owner(&self, did: &Did, now: Timestamp) -> Option<PeerId> {
        self.did_owner.get(did).filter(|(_, until)| *until > now).map(|(p, _)| *p)
    }

    /// Iterates over the records held (possibly expired until the next prune).
    pub fn iter(&self) -> impl Iterator<Item = &PeerRecord> + '_ {
        self.by_peer.values()
    }

    /// Stores a record the caller has just verified with [`PeerRecord::verify`] at `now` (the
    /// DID binding, staleness and bounds are still checked).
    pub fn put_verified(&mut self, record: PeerRecord, now: Timestamp) -> Result<bool, StoreError> {
        if now >= record.body.expires_at {
            return Err(StoreError::Invalid(RecordError::Expired(record.body.expires_at)));
        }
        let owner = record.body.peer_id;
        let did = record.body.did.clone();
        if let Some((bound, until)) = self.did_owner.get(&did)
            && *bound != owner
            && *until > now
        {
            return Err(StoreError::ForeignDid { did });
        }
        let replaced = match self.by_peer.get(&owner) {
            Some(old) if !record.supersedes(old) => return Err(StoreError::Stale),
            Some(old) => {
                // The owner moved to another DID: release the old binding.
                if old.body.did != did {
                    self.did_owner.remove(&old.body.did);
                }
                true
            }
            None => false,
        };
        if !replaced && self.by_peer.len() >= self.max_records {
            let victim = self.by_peer.iter().min_by_key(|(_, r)| r.body.expires_at).map(|(p, _)| *p);
            if let Some(v) = victim {
                self.by_peer.remove(&v);
            }
        }
        let until = record.body.expires_at + self.binding_ttl;
        self.did_owner.insert(did, (owner, until));
        self.by_peer.insert(owner, record);
        // Bindings outlive records; keep at most 4× as many, dropping those of owners without a
        // record that lapse first.
        while self.did_owner.len() > self.max_records.saturating_mul(4) {
            let victim = self
                .did_owner
                .iter()
                .filter(|(_, (o, _))| !self.by_peer.contains_key(o))
                .min_by_key(|(_, (_, until))| *until)
                .map(|(d, _)| d.clone());
            match victim {
                Some(d) => self.did_owner.remove(&d),
                None => break,
            };
        }
        Ok(replaced)
    }

    /// The unexpired record of `peer`, if any (`/pid/<PeerId>`). Every record was verified on its
    /// way in and is immutable here, so a read only checks the expiry (no signature check per
    /// heartbeat); whoever receives it from us verifies it again.
    pub fn by_peer(&self, peer: &PeerId, now: Timestamp) -> Option<&PeerRecord> {
        self.by_peer.get(peer).filter(|r| now < r.body.expires_at)
    }

    /// The valid record for `did`, if any (`/node/<DID>`).
    pub fn by_did(&self, did: &Did, now: Timestamp) -> Option<&PeerRecord> {
        let (owner, _) = self.did_owner.get(did)?;
        self.by_peer(owner, now).filter(|r| r.body.did == *did)
    }

    /// Drops expired records and lapsed DID bindings.
    pub fn prune(&mut self, now: Timestamp) {
        self.by_peer.retain(|_, r| r.body.expires_at > now);
        self.did_owner.retain(|_, (_, until)| *until > now);
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

    #[test]
    fn records_are_found_by_peer_and_did_until_they_expire() {
        let a = Keypair::derive(1, "a");
        let mut s = RecordStore::new(10, Duration::from_secs(600));
        assert_eq!(s.put(rec(&a, "did:a", 120, NOW), NOW), Ok(false));
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
        s.put(rec(&a, "did:a", 120, NOW), NOW).unwrap();
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
        s.put(rec(&a, "did:a", 120, NOW), NOW).unwrap();
        assert_eq!(s.put(rec(&a, "did:a", 60, NOW), NOW), Err(StoreError::Stale));
        let t = NOW + Duration::from_secs(20);
        assert_eq!(s.put(rec(&a, "did:a", 120, t), t), Ok(true));
        let mut forged = rec(&a, "did:a", 600, t);
        forged.body.name = "forged".into();
        assert_eq!(s.put(forged, t), Err(StoreError::Invalid(RecordError::BadSignature)));
    }

    #[test]
    fn the_store_stays_bounded() {
        let mut s = RecordStore::new(3, Duration::from_secs(60));
        for i in 0..10u64 {
            let k = Keypair::derive(i, "bounded");
            s.put(rec(&k, &format!("did:{i}"), 100 + i, NOW), NOW).unwrap();
            assert!(s.len() <= 3);
        }
        // The ones closest to expiry went first; DID bindings are bounded too.
        assert!(s.by_did(&Did::new("did:9").unwrap(), NOW).is_some());
        assert!(s.by_did(&Did::new("did:0").unwrap(), NOW).is_none());
        assert!(s.did_owner.len() <= 12);
    }
}
