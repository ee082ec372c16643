//! Who a peer is: an ed25519 key, its public half as [`PeerId`], and an application-level [`Did`].
//!
//! The same key is the transport identity (iroh's node id, or the key inside quinn's self-signed
//! certificate), so the peer id of every received message is authenticated by the transport and
//! nothing in the protocol trusts a self-declared id (seed bug B11).

use crate::proto::seeded::SeededSet;
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

/// Errors when parsing or checking identities.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Not 64 lowercase or uppercase hex characters.
    #[error("peer id must be 64 hex characters")]
    BadPeerIdEncoding,
    /// Not a valid ed25519 public key.
    #[error("peer id is not a valid ed25519 public key")]
    BadPublicKey,
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A DID that is empty, too long, or has control characters.
    #[error("invalid DID")]
    BadDid,
    /// A peer address without a `@` separating id and transport addresses.
    #[error("peer address must look like <peer-id>@<addr>[,<addr>…]")]
    BadPeerAddr,
}

/// A peer's identity: its 32-byte ed25519 public key.
///
/// Ordered lexicographically by its bytes (as a derived `Ord` would be), but compared as two
/// big-endian `u128`s: peer ids key most of the core's maps, and this avoids a `memcmp` call per
/// comparison.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerId(pub [u8; 32]);

impl PeerId {
    fn halves(&self) -> (u128, u128) {
        let mut hi = [0u8; 16];
        let mut lo = [0u8; 16];
        hi.copy_from_slice(&self.0[..16]);
        lo.copy_from_slice(&self.0[16..]);
        (u128::from_be_bytes(hi), u128::from_be_bytes(lo))
    }
}

impl Ord for PeerId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.halves().cmp(&other.halves())
    }
}

impl PartialOrd for PeerId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PeerId {
    /// The raw public-key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short printable form (first 10 hex characters) for logs and tables.
    pub fn short(&self) -> ShortId {
        ShortId(*self)
    }

    /// Verifies `sig` over `msg` with this key.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), IdentityError> {
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::BadPublicKey)?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        vk.verify(msg, &sig).map_err(|_| IdentityError::BadSignature)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl FromStr for PeerId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.trim().as_bytes())
            .map_err(|_| IdentityError::BadPeerIdEncoding)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| IdentityError::BadPeerIdEncoding)?;
        Ok(PeerId(arr))
    }
}

/// Display adapter printing the first 10 hex characters of a [`PeerId`].
#[derive(Clone, Copy)]
pub struct ShortId(PeerId);

impl fmt::Display for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0.0[..5]))
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "sig_bytes")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", data_encoding::HEXLOWER.encode(&self.0[..6]))
    }
}

mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: &[u8] = <&[u8]>::deserialize(d)?;
        v.try_into().map_err(|_| serde::de::Error::invalid_length(v.len(), &"64 bytes"))
    }
}

/// A daemon's ed25519 key pair.
#[derive(Clone)]
pub struct Keypair {
    secret: ed25519_dalek::SigningKey,
    public: PeerId,
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.public.short())
    }
}

impl Keypair {
    /// Builds a key pair from 32 secret bytes (from a key file, or derived by the simulator).
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        let secret = ed25519_dalek::SigningKey::from_bytes(&secret);
        let public = PeerId(secret.verifying_key().to_bytes());
        Keypair { secret, public }
    }

    /// Derives a key deterministically from a seed and a label (simulator and tests only: the
    /// daemon draws its secret from the operating system).
    pub fn derive(seed: u64, label: &str) -> Self {
        let mut h = blake3::Hasher::new_derive_key("ocd-core Keypair::derive v1");
        h.update(&seed.to_le_bytes());
        h.update(label.as_bytes());
        Self::from_secret_bytes(*h.finalize().as_bytes())
    }

    /// The 32 secret bytes (to store in a key file with mode 0600).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// This key's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.public
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.secret.sign(msg).to_bytes())
    }
}

/// How a peer checks ed25519 signatures: directly, or through a memo of the checks that
/// succeeded, shared with the other peers of the same host.
///
/// The memo is for the simulator, where one signed record is checked by every replica and reader
/// of it, tens of times, and ed25519 verification was most of the run time. It remembers a BLAKE3
/// digest of `(key, signature, message)` for each signature that verified, so checking the same
/// triple again returns `Ok(())` without the curve arithmetic. Anything not remembered — a new
/// triple, any bad signature — goes to ed25519, and a failed check is never remembered, so a bad
/// signature can pass only through a BLAKE3 collision with a good one. A check therefore gives
/// the same result with or without the memo, whatever the memo holds: outputs never depend on it
/// (the simulator's trace hash is the same either way). The memo lives with the host, which
/// hands a clone of the handle to every peer it builds ([`crate::proto::PeerSetup::sig_check`]);
/// the default checks directly and shares nothing.
#[derive(Clone, Default)]
pub struct SigCheck {
    memo: Option<Arc<Mutex<SigMemo>>>,
}

/// Digests of good signatures, in two generations: when the current one is full it becomes the
/// previous one and the older digests are dropped (a digest found in the previous generation moves
/// to the current one), so the memo stays bounded and keeps what is still being checked.
#[derive(Debug)]
struct SigMemo {
    /// Hash sets: a digest is found with one probe (a B-tree of 100 k digests took a cache miss
    /// per level); their order is never read. Digests are BLAKE3 outputs, spread by themselves.
    current: SeededSet<[u8; 32]>,
    previous: SeededSet<[u8; 32]>,
    per_generation: usize,
    stats: SigMemoStats,
}

/// What a shared signature memo did so far ([`SigCheck::memo_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigMemoStats {
    /// Checks answered from the memo.
    pub hits: u64,
    /// Checks that went to ed25519 (new triples and bad signatures).
    pub misses: u64,
    /// Digests held now.
    pub held: usize,
}

/// Domain separation for the memo's digests.
const SIG_MEMO_DOMAIN: &[u8] = b"ocd-core signature memo v1\0";

impl SigCheck {
    /// Checks every signature with ed25519 (the default).
    pub fn direct() -> Self {
        SigCheck { memo: None }
    }

    /// A memo holding up to about `2 × per_generation` digests of good signatures (32 bytes each),
    /// to be cloned into every peer of the host.
    pub fn memoised(per_generation: usize) -> Self {
        let memo = SigMemo {
            current: SeededSet::default(),
            previous: SeededSet::default(),
            per_generation: per_generation.max(1),
            stats: SigMemoStats::default(),
        };
        SigCheck { memo: Some(Arc::new(Mutex::new(memo))) }
    }

    /// Verifies `sig` over `msg` with `key`: the same result as [`PeerId::verify`], from the memo
    /// when this exact triple verified before.
    pub fn verify(&self, key: &PeerId, msg: &[u8], sig: &Signature) -> Result<(), IdentityError> {
        let Some(memo) = &self.memo else {
            return key.verify(msg, sig);
        };
        let digest = memo_digest(key, msg, sig);
        if memo.lock().unwrap_or_else(PoisonError::into_inner).hit(&digest) {
            return Ok(());
        }
        key.verify(msg, sig)?;
        memo.lock().unwrap_or_else(PoisonError::into_inner).remember(digest);
        Ok(())
    }

    /// Signs `msg` with `key`, and remembers the signature as good: an ed25519 signature made
    /// with a key always verifies with its public half, so checking it later gives `Ok(())` with
    /// or without the memo (debug builds check it for real).
    pub fn sign(&self, key: &Keypair, msg: &[u8]) -> Signature {
        let sig = key.sign(msg);
        if let Some(memo) = &self.memo {
            debug_assert_eq!(key.peer_id().verify(msg, &sig), Ok(()));
            let digest = memo_digest(&key.peer_id(), msg, &sig);
            memo.lock().unwrap_or_else(PoisonError::into_inner).remember(digest);
        }
        sig
    }

    /// What the memo did so far; `None` when checking directly.
    pub fn memo_stats(&self) -> Option<SigMemoStats> {
        self.memo.as_ref().map(|m| {
            let m = m.lock().unwrap_or_else(PoisonError::into_inner);
            SigMemoStats { held: m.current.len() + m.previous.len(), ..m.stats }
        })
    }
}

impl fmt::Debug for SigCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The memo's contents are left out: nothing may depend on them.
        f.write_str(if self.memo.is_some() { "SigCheck(memoised)" } else { "SigCheck(direct)" })
    }
}

/// BLAKE3 of the domain, the key, the signature and the message (the two fixed-size fields first,
/// so the encoding is unambiguous).
fn memo_digest(key: &PeerId, msg: &[u8], sig: &Signature) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(SIG_MEMO_DOMAIN);
    h.update(&key.0);
    h.update(&sig.0);
    h.update(msg);
    *h.finalize().as_bytes()
}

impl SigMemo {
    /// Whether `digest` is held (and counts the check).
    fn hit(&mut self, digest: &[u8; 32]) -> bool {
        if self.current.contains(digest) {
            self.stats.hits += 1;
            return true;
        }
        if self.previous.remove(digest) {
            self.stats.hits += 1;
            self.insert(*digest);
            return true;
        }
        self.stats.misses += 1;
        false
    }

    /// Remembers the digest of a signature that verified.
    fn remember(&mut self, digest: [u8; 32]) {
        self.insert(digest);
    }

    fn insert(&mut self, digest: [u8; 32]) {
        if self.current.len() >= self.per_generation {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(digest);
    }
}

/// Application-level identifier of a daemon (a UUID by default), chosen at first start and kept.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Did(String);

impl Did {
    /// Longest accepted DID, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates and wraps a DID string.
    pub fn new(s: impl Into<String>) -> Result<Self, IdentityError> {
        let s = s.into();
        if s.is_empty() || s.len() > Self::MAX_LEN || s.chars().any(|c| c.is_control()) {
            return Err(IdentityError::BadDid);
        }
        Ok(Did(s))
    }

    /// Derives a UUID-shaped DID from random bytes (the host supplies them).
    pub fn from_random(bytes: [u8; 16]) -> Self {
        let mut b = bytes;
        b[6] = (b[6] & 0x0f) | 0x40; // version 4
        b[8] = (b[8] & 0x3f) | 0x80; // variant 1
        let h = data_encoding::HEXLOWER.encode(&b);
        Did(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
    }

    /// The DID as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Did({})", self.0)
    }
}

/// A transport address, opaque to the core (`"127.0.0.1:4001"` for the daemons; empty in the
/// simulator, which routes by peer id).
pub type Addr = String;

/// A peer id with the transport addresses it can be reached at.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddr {
    /// Who.
    pub id: PeerId,
    /// Where (may be empty when the transport can find the peer by id alone).
    pub addrs: Vec<Addr>,
}

impl PeerAddr {
    /// Most addresses kept per peer; extra ones are dropped on decode and on learning.
    pub const MAX_ADDRS: usize = 8;

    /// A peer address with no transport address (simulator, or id-routed transports).
    pub fn id_only(id: PeerId) -> Self {
        PeerAddr { id, addrs: Vec::new() }
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id.short(), self.addrs.join(","))
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.addrs.join(","))
    }
}

impl FromStr for PeerAddr {
    type Err = IdentityError;
    /// Parses `<peer-id>@<addr>[,<addr>…]` or a bare `<peer-id>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (id, rest) = match s.split_once('@') {
            Some((id, rest)) => (id, rest),
            None => (s, ""),
        };
        let id = PeerId::from_str(id)?;
        let addrs: Vec<Addr> =
            rest.split(',').map(str::trim).filter(|a| !a.is_empty()).take(Self::MAX_ADDRS).map(String::from).collect();
        Ok(PeerAddr { id, addrs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_round_trips_through_text() {
        let k = Keypair::derive(1, "a");
        let s = k.peer_id().to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(PeerId::from_str(&s), Ok(k.peer_id()));
        assert!(PeerId::from_str("zz").is_err());
    }

    #[test]
    fn peer_ids_order_like_their_bytes() {
        let ids: Vec<PeerId> = (0..200).map(|i| Keypair::derive(i, "o").peer_id()).collect();
        for a in &ids {
            for b in &ids {
                assert_eq!(a.cmp(b), a.0.cmp(&b.0));
            }
        }
        let mut x = [0u8; 32];
        let mut y = [0u8; 32];
        x[31] = 1;
        y[15] = 1;
        assert!(PeerId(x) < PeerId(y));
    }

    #[test]
    fn signatures_verify_only_for_the_signed_bytes_and_key() {
        let k = Keypair::derive(1, "a");
        let other = Keypair::derive(1, "b");
        let sig = k.sign(b"hello");
        assert!(k.peer_id().verify(b"hello", &sig).is_ok());
        assert_eq!(k.peer_id().verify(b"hellO", &sig), Err(IdentityError::BadSignature));
        assert!(other.peer_id().verify(b"hello", &sig).is_err());
    }

    #[test]
    fn memoised_checks_agree_with_direct_ones() {
        let k = Keypair::derive(1, "a");
        let other = Keypair::derive(1, "b");
        let sig = k.sign(b"hello");
        let memo = SigCheck::memoised(16);
        let id = k.peer_id();
        // Cold, then warm: the same answer, the second from the memo.
        assert_eq!(memo.verify(&id, b"hello", &sig), Ok(()));
        assert_eq!(memo.verify(&id, b"hello", &sig), Ok(()));
        let stats = memo.memo_stats().unwrap();
        assert_eq!((stats.hits, stats.misses, stats.held), (1, 1, 1));
        // With the memo warm, every altered triple is still refused, each time.
        let mut bad_sig = sig;
        bad_sig.0[0] ^= 1;
        for _ in 0..2 {
            assert_eq!(memo.verify(&id, b"hellO", &sig), Err(IdentityError::BadSignature));
            assert_eq!(memo.verify(&id, b"hello", &bad_sig), id.verify(b"hello", &bad_sig));
            assert!(memo.verify(&id, b"hello", &bad_sig).is_err());
            assert!(memo.verify(&other.peer_id(), b"hello", &sig).is_err());
        }
        // Failures are not remembered.
        assert_eq!(memo.memo_stats().unwrap().held, 1);
        // What the memo signs is known good; a forged copy is not.
        let signed = memo.sign(&other, b"mine");
        assert_eq!(signed, other.sign(b"mine"));
        assert_eq!(memo.verify(&other.peer_id(), b"mine", &signed), Ok(()));
        assert_eq!(memo.memo_stats().unwrap().hits, 2);
        assert!(memo.verify(&id, b"mine", &signed).is_err());
        assert!(memo.verify(&other.peer_id(), b"minE", &signed).is_err());
        assert_eq!(SigCheck::direct().memo_stats(), None);
        assert_eq!(SigCheck::direct().verify(&id, b"hello", &sig), Ok(()));
    }

    #[test]
    fn memo_is_shared_by_clones_and_stays_bounded() {
        let k = Keypair::derive(2, "a");
        let memo = SigCheck::memoised(4);
        let clone = memo.clone();
        let msgs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 3]).collect();
        for m in &msgs {
            assert_eq!(memo.verify(&k.peer_id(), m, &k.sign(m)), Ok(()));
        }
        let held = clone.memo_stats().unwrap().held;
        assert!(held <= 8, "{held} digests held");
        // The latest ones are answered from the memo through the clone.
        let last = &msgs[19];
        assert_eq!(clone.verify(&k.peer_id(), last, &k.sign(last)), Ok(()));
        assert_eq!(clone.memo_stats().unwrap().hits, 1);
        // Evicted ones are checked again, with the same result.
        let first = &msgs[0];
        assert_eq!(clone.verify(&k.peer_id(), first, &k.sign(first)), Ok(()));
        assert_eq!(clone.memo_stats().unwrap().misses, 21);
    }

    #[test]
    fn peer_addr_parses_id_and_addresses() {
        let k = Keypair::derive(3, "x");
        let pa: PeerAddr = format!("{}@127.0.0.1:4001, 127.0.0.1:4002", k.peer_id()).parse().unwrap();
        assert_eq!(pa.id, k.peer_id());
        assert_eq!(pa.addrs, vec!["127.0.0.1:4001".to_string(), "127.0.0.1:4002".to_string()]);
    }

    #[test]
    fn did_from_random_is_uuid_shaped() {
        let d = Did::from_random([7; 16]);
        assert_eq!(d.as_str().len(), 36);
        assert!(Did::new("").is_err());
        assert!(Did::new("a\nb").is_err());
    }
}
