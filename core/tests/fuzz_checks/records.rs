//! `record_verify`: peer and provider records decoded from arbitrary bytes (postcard, as they
//! travel) and verified; signed records altered byte by byte or field by field.

use arbitrary::{Arbitrary, Unstructured};
use ocd_core::proto::{
    Did, Keypair, MAX_ADDRS, MAX_NAME_LEN, PeerAddr, PeerId, PeerRecord, ProviderRecord, RecordBody, Signature,
    Timestamp,
};
use serde::Serialize;
use std::time::Duration;

/// The time records are checked at.
pub const NOW: Timestamp = Timestamp(1_700_000_000_000);
/// Longest lifetime of a peer record, as `ocd_core::proto::record` documents it.
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Largest future skew of `issued_at` accepted.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Longest lifetime of a provider record.
const MAX_PROVIDER_LIFETIME: Duration = Duration::from_secs(1800);
/// Longest transport address or application field.
const MAX_FIELD_LEN: usize = 512;
/// Domain tag of provider-record signatures (`ProviderBody::signing_bytes` is private).
const PROVIDER_DOMAIN: &[u8] = b"ocd provider record v1\0";

/// The first byte picks the mode, the rest is its input:
/// 0 — a peer record's postcard bytes; 1 — a provider record's; 2 — a signed peer record and
/// alterations of it; 3 — the same for a provider record.
pub fn record_verify(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => decoded_peer_record(rest),
        1 => decoded_provider_record(rest),
        2 => altered_peer_record(rest),
        _ => altered_provider_record(rest),
    }
}

fn keys() -> &'static [Keypair] {
    static KEYS: std::sync::OnceLock<Vec<Keypair>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| (0..4).map(|i| Keypair::derive(41, &format!("record-owner-{i}"))).collect())
}

/// Instants worth checking a record at: around its bounds, and fixed ones.
fn instants(issued_at: Timestamp, expires_at: Timestamp) -> [Timestamp; 8] {
    [
        NOW,
        Timestamp(0),
        Timestamp(u64::MAX),
        issued_at,
        issued_at.saturating_sub(MAX_CLOCK_SKEW),
        Timestamp(issued_at.0.saturating_sub(MAX_CLOCK_SKEW.as_millis() as u64 + 1)),
        Timestamp(expires_at.0.saturating_sub(1)),
        expires_at,
    ]
}

fn decoded_peer_record(bytes: &[u8]) {
    let Ok(r) = postcard::from_bytes::<PeerRecord>(bytes) else { return };
    assert!(!r.supersedes(&r), "a record never supersedes itself");
    let b = &*r.body;
    for now in instants(b.issued_at, b.expires_at) {
        if r.verify(now).is_ok() {
            peer_record_holds_its_bounds(&r, now);
        }
    }
}

/// What [`PeerRecord::verify`] promises of a record it accepts at `now`.
fn peer_record_holds_its_bounds(r: &PeerRecord, now: Timestamp) {
    let b = &*r.body;
    assert!(b.name.len() <= MAX_NAME_LEN, "verified record with a {}-byte name", b.name.len());
    assert!(b.addrs.len() <= MAX_ADDRS && b.addrs.iter().all(|a| a.len() <= MAX_FIELD_LEN), "verified record addrs");
    for f in [&b.api_url, &b.nats_address, &b.wallet] {
        assert!(f.as_ref().is_none_or(|s| s.len() <= MAX_FIELD_LEN), "verified record with a long field");
    }
    assert!(b.issued_at < b.expires_at && b.expires_at.since(b.issued_at) <= MAX_LIFETIME, "verified lifetime");
    assert!(now < b.expires_at, "verified an expired record");
    assert!(b.issued_at <= now + MAX_CLOCK_SKEW, "verified a record from the future");
    assert!(b.peer_id.verify(&b.signing_bytes(), &r.signature).is_ok(), "verified without its owner's signature");
    let bytes = postcard::to_stdvec(r).expect("a record encodes");
    let again: PeerRecord = postcard::from_bytes(&bytes).expect("an encoded record decodes");
    assert_eq!(&again, r, "a verified record survives a round trip");
    assert!(again.verify(now).is_ok(), "a verified record verifies after a round trip");
}

fn decoded_provider_record(bytes: &[u8]) {
    let Ok(r) = postcard::from_bytes::<ProviderRecord>(bytes) else { return };
    let b = &*r.body;
    for now in instants(b.issued_at, b.expires_at) {
        if r.verify(now).is_ok() {
            provider_record_holds_its_bounds(&r, now);
        }
    }
}

fn provider_record_holds_its_bounds(r: &ProviderRecord, now: Timestamp) {
    let b = &*r.body;
    assert!((0.0..=1.0).contains(&b.fill_rate), "verified provider with fill rate {}", b.fill_rate);
    assert!(b.provider.addrs.len() <= MAX_ADDRS && b.provider.addrs.iter().all(|a| a.len() <= MAX_FIELD_LEN));
    assert!(b.issued_at < b.expires_at && b.expires_at.since(b.issued_at) <= MAX_PROVIDER_LIFETIME);
    assert!(now < b.expires_at && b.issued_at <= now + MAX_CLOCK_SKEW);
    let signed = postcard::to_extend(b, PROVIDER_DOMAIN.to_vec()).expect("a body encodes");
    assert!(b.provider.id.verify(&signed, &r.signature).is_ok(), "verified without its provider's signature");
    let bytes = postcard::to_stdvec(r).expect("a record encodes");
    let again: ProviderRecord = postcard::from_bytes(&bytes).expect("an encoded record decodes");
    assert!(again.verify(now).is_ok(), "a verified provider record verifies after a round trip");
}

/// A well-formed record body, drawn from the input.
#[derive(Arbitrary, Debug)]
struct BodySpec {
    owner: u8,
    did: String,
    name: String,
    addrs: Vec<String>,
    api_url: Option<String>,
    nats_address: Option<String>,
    wallet: Option<String>,
    /// Seconds before [`NOW`] it was issued.
    age: u16,
    /// Lifetime in milliseconds, at most [`MAX_LIFETIME`].
    lifetime: u32,
}

/// One alteration of a signed record.
#[derive(Arbitrary, Debug)]
enum Alteration {
    /// XOR a byte of its encoding.
    Flip {
        at: u16,
        mask: u8,
    },
    /// Insert a byte into its encoding.
    Insert {
        at: u16,
        byte: u8,
    },
    /// Remove a byte of its encoding.
    Remove {
        at: u16,
    },
    /// Another value for a field (the same value leaves it unchanged).
    Name(String),
    Did(String),
    Owner(u8),
    IssuedAt(u64),
    ExpiresAt(u64),
    Addr(String),
    /// Another record's signature.
    SignatureOf(u8),
}

fn truncated(mut s: String, max: usize) -> String {
    while s.len() > max {
        s.pop();
    }
    s
}

fn body_of(spec: BodySpec) -> RecordBody {
    let owner = &keys()[usize::from(spec.owner) % keys().len()];
    let lifetime = 1 + u64::from(spec.lifetime) % MAX_LIFETIME.as_millis() as u64;
    let issued_at = Timestamp(NOW.0 - u64::from(spec.age) * 1000);
    RecordBody {
        peer_id: owner.peer_id(),
        did: Did::new(truncated(spec.did, Did::MAX_LEN)).unwrap_or_else(|_| Did::new("did:fuzz").expect("a DID")),
        name: truncated(spec.name, MAX_NAME_LEN),
        addrs: spec.addrs.into_iter().take(MAX_ADDRS).map(|a| truncated(a, MAX_FIELD_LEN)).collect(),
        api_url: spec.api_url.map(|s| truncated(s, MAX_FIELD_LEN)),
        nats_address: spec.nats_address.map(|s| truncated(s, MAX_FIELD_LEN)),
        wallet: spec.wallet.map(|s| truncated(s, MAX_FIELD_LEN)),
        issued_at,
        expires_at: Timestamp(issued_at.0 + lifetime),
    }
}

fn altered_peer_record(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(spec) = BodySpec::arbitrary(&mut u) else { return };
    let body = body_of(spec);
    let owner = keys().iter().find(|k| k.peer_id() == body.peer_id).expect("an owner key");
    let r = PeerRecord::sign(body, owner).expect("a well-formed body signs");
    // A time at which the original is valid.
    let now = Timestamp(r.body.expires_at.0 - 1).min(r.body.issued_at + MAX_CLOCK_SKEW);
    assert!(r.verify(now).is_ok(), "a freshly signed record verifies");
    let Ok(alterations) = Vec::<Alteration>::arbitrary_take_rest(u) else { return };
    let mut bytes = postcard::to_stdvec(&r).expect("a record encodes");
    let mut value = r.clone();
    for a in alterations.into_iter().take(16) {
        match a {
            Alteration::Flip { at, mask } => {
                let n = bytes.len();
                if n > 0 {
                    bytes[usize::from(at) % n] ^= mask;
                }
            }
            Alteration::Insert { at, byte } => {
                let n = bytes.len();
                bytes.insert(usize::from(at) % (n + 1), byte);
            }
            Alteration::Remove { at } => {
                let n = bytes.len();
                if n > 0 {
                    bytes.remove(usize::from(at) % n);
                }
            }
            Alteration::Name(s) => std::sync::Arc::make_mut(&mut value.body).name = truncated(s, MAX_NAME_LEN),
            Alteration::Did(s) => {
                if let Ok(d) = Did::new(s) {
                    std::sync::Arc::make_mut(&mut value.body).did = d;
                }
            }
            Alteration::Owner(i) => {
                std::sync::Arc::make_mut(&mut value.body).peer_id = keys()[usize::from(i) % keys().len()].peer_id()
            }
            Alteration::IssuedAt(t) => std::sync::Arc::make_mut(&mut value.body).issued_at = Timestamp(t),
            Alteration::ExpiresAt(t) => std::sync::Arc::make_mut(&mut value.body).expires_at = Timestamp(t),
            Alteration::Addr(a) => std::sync::Arc::make_mut(&mut value.body).addrs.push(a),
            Alteration::SignatureOf(i) => {
                let k = &keys()[usize::from(i) % keys().len()];
                value.signature = super::sign(k, &body_of_key(k).signing_bytes());
            }
        }
    }
    // Byte alterations of the original's encoding.
    if let Ok(t) = postcard::from_bytes::<PeerRecord>(&bytes)
        && t != r
    {
        assert!(t.verify(now).is_err(), "an altered record verifies: {t:?}");
    }
    // Field alterations.
    if value != r {
        assert!(value.verify(now).is_err(), "a record with altered fields verifies: {value:?}");
    }
}

/// A plain body of `k`'s.
fn body_of_key(k: &Keypair) -> RecordBody {
    RecordBody {
        peer_id: k.peer_id(),
        did: Did::new("did:other").expect("a DID"),
        name: "other".into(),
        addrs: Vec::new(),
        api_url: None,
        nats_address: None,
        wallet: None,
        issued_at: NOW,
        expires_at: NOW + Duration::from_secs(60),
    }
}

/// The wire layout of a provider record (its body type is not public): decoding this gives one.
#[derive(Serialize)]
struct ProviderLayout {
    provider: PeerAddr,
    fill_rate: f32,
    capacity: u32,
    issued_at: Timestamp,
    expires_at: Timestamp,
    signature: Signature,
}

/// A provider record with these fields, signed by `key` over its body (whatever its shape).
pub fn provider_record(
    key: &Keypair,
    id: PeerId,
    addrs: Vec<String>,
    fill_rate: f32,
    capacity: u32,
    issued_at: Timestamp,
    expires_at: Timestamp,
) -> ProviderRecord {
    let layout = ProviderLayout {
        provider: PeerAddr { id, addrs },
        fill_rate,
        capacity,
        issued_at,
        expires_at,
        signature: Signature([0; 64]),
    };
    let bytes = postcard::to_stdvec(&layout).expect("a layout encodes");
    let mut r: ProviderRecord = postcard::from_bytes(&bytes).expect("the provider record layout");
    let signed = postcard::to_extend(&*r.body, PROVIDER_DOMAIN.to_vec()).expect("a body encodes");
    r.signature = super::sign(key, &signed);
    r
}

#[derive(Arbitrary, Debug)]
struct ProviderSpec {
    owner: u8,
    addrs: Vec<String>,
    fill: u16,
    capacity: u32,
    age: u16,
    lifetime: u32,
}

#[derive(Arbitrary, Debug)]
enum ProviderAlteration {
    Flip { at: u16, mask: u8 },
    Insert { at: u16, byte: u8 },
    Remove { at: u16 },
    Fill(f32),
    Capacity(u32),
    Owner(u8),
    IssuedAt(u64),
    ExpiresAt(u64),
}

fn altered_provider_record(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(spec) = ProviderSpec::arbitrary(&mut u) else { return };
    let owner = &keys()[usize::from(spec.owner) % keys().len()];
    let lifetime = 1 + u64::from(spec.lifetime) % MAX_PROVIDER_LIFETIME.as_millis() as u64;
    let issued_at = Timestamp(NOW.0 - u64::from(spec.age) * 1000);
    let addrs = spec.addrs.into_iter().take(MAX_ADDRS).map(|a| truncated(a, MAX_FIELD_LEN)).collect();
    let fill = f32::from(spec.fill) / f32::from(u16::MAX);
    let r = provider_record(
        owner,
        owner.peer_id(),
        addrs,
        fill,
        spec.capacity,
        issued_at,
        Timestamp(issued_at.0 + lifetime),
    );
    let now = Timestamp(r.body.expires_at.0 - 1).min(r.body.issued_at + MAX_CLOCK_SKEW);
    assert!(r.verify(now).is_ok(), "a freshly signed provider record verifies");
    let Ok(alterations) = Vec::<ProviderAlteration>::arbitrary_take_rest(u) else { return };
    let mut bytes = postcard::to_stdvec(&r).expect("a record encodes");
    let mut value = r.clone();
    for a in alterations.into_iter().take(16) {
        match a {
            ProviderAlteration::Flip { at, mask } => {
                let n = bytes.len();
                bytes[usize::from(at) % n] ^= mask;
            }
            ProviderAlteration::Insert { at, byte } => {
                let n = bytes.len();
                bytes.insert(usize::from(at) % (n + 1), byte);
            }
            ProviderAlteration::Remove { at } => {
                let n = bytes.len();
                if n > 1 {
                    bytes.remove(usize::from(at) % n);
                }
            }
            ProviderAlteration::Fill(f) => value.body.fill_rate = f,
            ProviderAlteration::Capacity(c) => value.body.capacity = c,
            ProviderAlteration::Owner(i) => value.body.provider.id = keys()[usize::from(i) % keys().len()].peer_id(),
            ProviderAlteration::IssuedAt(t) => value.body.issued_at = Timestamp(t),
            ProviderAlteration::ExpiresAt(t) => value.body.expires_at = Timestamp(t),
        }
    }
    // Changed means its signed bytes changed (`-0.0 == 0.0` but signs differently).
    let signed = |x: &ProviderRecord| postcard::to_extend(&*x.body, Vec::new()).expect("encodes");
    if let Ok(t) = postcard::from_bytes::<ProviderRecord>(&bytes)
        && (signed(&t) != signed(&r) || t.signature != r.signature)
    {
        assert!(t.verify(now).is_err(), "an altered provider record verifies: {t:?}");
    }
    if signed(&value) != signed(&r) {
        assert!(value.verify(now).is_err(), "a provider record with altered fields verifies: {value:?}");
    }
}
