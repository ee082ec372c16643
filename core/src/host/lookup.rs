//! `ocd lookup <did|peer-id>`: find a peer's signed record through the running daemon.
//!
//! The CLI parses the argument into a [`RecordKey`] ([`parse_key`]) and sends it over the control
//! socket; the driver hands it to the core as [`Command::Lookup`](crate::proto::Command::Lookup)
//! and answers with a [`LookupReport`] built from the core's `Event::LookupDone`. The record in
//! the report has been verified by the core (signature, expiry, and that it answers the key), so
//! what is printed is what its owner signed.
//!
//! Exit codes of `ocd lookup`, consistent with the rest of the CLI: 0 found, 1 not found (a
//! negative answer), 2 an error (no daemon, no indexer to ask, no answer in time).

use crate::proto::{Did, PeerId, PeerRecord, RecordKey, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses the argument of `ocd lookup`: 64 hex characters are a peer id (`/pid/…`), anything
/// else a DID (`/node/…`). The explicit forms `/pid/<hex>` and `/node/<did>` are accepted too
/// (the latter to look up a DID that happens to be 64 hex characters).
pub fn parse_key(arg: &str) -> Result<RecordKey, String> {
    let arg = arg.trim();
    if let Some(hex) = arg.strip_prefix("/pid/") {
        return PeerId::from_str(hex).map(RecordKey::Peer).map_err(|e| format!("`{hex}` is not a peer id: {e}"));
    }
    if let Some(did) = arg.strip_prefix("/node/") {
        return Did::new(did).map(RecordKey::Did).map_err(|e| format!("`{did}` is not a DID: {e}"));
    }
    if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
        return PeerId::from_str(arg).map(RecordKey::Peer).map_err(|e| format!("`{arg}` is not a peer id: {e}"));
    }
    Did::new(arg).map(RecordKey::Did).map_err(|e| format!("`{arg}` is not a DID or a peer id: {e}"))
}

/// Control-protocol encoding of a [`RecordKey`]: its display form (`/pid/<hex>`, `/node/<did>`).
pub(crate) mod key_text {
    use super::{RecordKey, parse_key};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &RecordKey, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(key)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RecordKey, D::Error> {
        let text = String::deserialize(d)?;
        parse_key(&text).map_err(serde::de::Error::custom)
    }
}

/// A verified record, as printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordView {
    /// Owner (hex).
    pub peer_id: String,
    /// Owner's DID.
    pub did: String,
    /// Owner's name.
    pub name: String,
    /// Transport addresses.
    pub addrs: Vec<String>,
    /// Application API URL.
    pub api_url: Option<String>,
    /// NATS address.
    pub nats_address: Option<String>,
    /// Wallet.
    pub wallet: Option<String>,
    /// When the owner signed it (ms since the epoch).
    pub issued_at_ms: u64,
    /// `issued_at` in RFC 3339.
    pub issued_at: String,
    /// When it stops being valid (ms since the epoch).
    pub expires_at_ms: u64,
    /// `expires_at` in RFC 3339.
    pub expires_at: String,
}

impl RecordView {
    /// The printable form of a verified record.
    pub fn of(record: &PeerRecord) -> Self {
        let b = &record.body;
        RecordView {
            peer_id: b.peer_id.to_string(),
            did: b.did.to_string(),
            name: b.name.clone(),
            addrs: b.addrs.clone(),
            api_url: b.api_url.clone(),
            nats_address: b.nats_address.clone(),
            wallet: b.wallet.clone(),
            issued_at_ms: b.issued_at.0,
            issued_at: rfc3339(b.issued_at),
            expires_at_ms: b.expires_at.0,
            expires_at: rfc3339(b.expires_at),
        }
    }
}

/// The answer to one lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupReport {
    /// What was looked up (`/pid/<hex>` or `/node/<did>`).
    pub key: String,
    /// Whether a record was found.
    pub found: bool,
    /// The record, verified by the daemon.
    pub record: Option<RecordView>,
    /// DHT hops of the indexer that answered (0: it held the record).
    pub hops: u32,
    /// Indexers the daemon asked.
    pub attempts: u32,
    /// Milliseconds from the command reaching the daemon to the answer.
    pub elapsed_ms: u64,
    /// The daemon's clock when it answered (ms since the epoch), for relative times.
    pub answered_at_ms: u64,
}

impl LookupReport {
    /// Builds the report of a finished lookup.
    pub fn new(
        key: &RecordKey,
        record: Option<&PeerRecord>,
        hops: u32,
        attempts: u32,
        started: Timestamp,
        now: Timestamp,
    ) -> Self {
        LookupReport {
            key: key.to_string(),
            found: record.is_some(),
            record: record.map(RecordView::of),
            hops,
            attempts,
            elapsed_ms: now.0.saturating_sub(started.0),
            answered_at_ms: now.0,
        }
    }

    /// A readable rendering of a found record (the caller reports "not found" itself).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let Some(r) = &self.record else {
            let _ = writeln!(s, "{}: not found ({} indexers asked)", self.key, self.attempts);
            return s;
        };
        let now = self.answered_at_ms;
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "peer id   {}", r.peer_id);
        let _ = writeln!(s, "did       {}", r.did);
        let _ = writeln!(s, "name      {}", if r.name.is_empty() { "-" } else { &r.name });
        let _ = writeln!(s, "addrs     {}", if r.addrs.is_empty() { "-".into() } else { r.addrs.join(", ") });
        let _ = writeln!(s, "api url   {}", opt(&r.api_url));
        let _ = writeln!(s, "nats      {}", opt(&r.nats_address));
        let _ = writeln!(s, "wallet    {}", opt(&r.wallet));
        let _ = writeln!(s, "issued    {} ({})", r.issued_at, relative(r.issued_at_ms, now));
        let _ = writeln!(s, "expires   {} ({})", r.expires_at, relative(r.expires_at_ms, now));
        let _ = writeln!(
            s,
            "found in  {} ms; {} DHT hop{} at the answering indexer, {} indexer{} asked; signature verified",
            self.elapsed_ms,
            self.hops,
            if self.hops == 1 { "" } else { "s" },
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
        );
        s
    }
}

/// `t` in RFC 3339 (UTC, seconds).
pub fn rfc3339(t: Timestamp) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(t.0)).to_string()
}

/// `t` relative to `now`: "in 4m 48s", "12s ago", "now".
fn relative(t: u64, now: u64) -> String {
    let secs = |ms: u64| Duration::from_secs(ms.saturating_add(500) / 1000);
    if t >= now + 1000 {
        format!("in {}", humantime::format_duration(secs(t - now)))
    } else if now >= t + 1000 {
        format!("{} ago", humantime::format_duration(secs(now - t)))
    } else {
        "now".into()
    }
}

/// Milliseconds since the epoch on this machine's clock.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Keypair;
    use crate::proto::RecordBody;

    #[test]
    fn sixty_four_hex_characters_are_a_peer_id_anything_else_a_did() {
        let peer = Keypair::derive(3, "lookup").peer_id();
        let hex = peer.to_string();
        assert_eq!(parse_key(&hex), Ok(RecordKey::Peer(peer)));
        assert_eq!(parse_key(&hex.to_uppercase()), Ok(RecordKey::Peer(peer)));
        assert_eq!(parse_key(&format!("/pid/{hex}")), Ok(RecordKey::Peer(peer)));
        let did = "7f0c1d9e-3b8a-4c55-9a0e-2f6d1c3b4a59";
        assert_eq!(parse_key(did), Ok(RecordKey::Did(Did::new(did).unwrap())));
        // 63 hex characters, or 64 with a non-hex one, are DIDs.
        assert!(matches!(parse_key(&hex[..63]), Ok(RecordKey::Did(_))));
        assert!(matches!(parse_key(&format!("{}g", &hex[..63])), Ok(RecordKey::Did(_))));
        // A DID made of 64 hex characters can still be looked up explicitly.
        assert_eq!(parse_key(&format!("/node/{hex}")), Ok(RecordKey::Did(Did::new(hex.clone()).unwrap())));
        assert!(parse_key("").is_err());
        assert!(parse_key("/pid/zz").is_err());
        assert!(parse_key(&"x".repeat(200)).is_err());
    }

    #[test]
    fn report_prints_every_field_of_the_record() {
        let key = Keypair::derive(4, "lookup");
        let body = RecordBody {
            peer_id: key.peer_id(),
            did: Did::new("did-b").unwrap(),
            name: "bob".into(),
            addrs: vec!["127.0.0.1:4001".into()],
            api_url: Some("http://bob:8080".into()),
            nats_address: None,
            wallet: None,
            issued_at: Timestamp(1_700_000_000_000),
            expires_at: Timestamp(1_700_000_300_000),
        };
        let record = PeerRecord::sign(body, &key).unwrap();
        let k = RecordKey::Did(Did::new("did-b").unwrap());
        let report =
            LookupReport::new(&k, Some(&record), 1, 1, Timestamp(1_700_000_012_000), Timestamp(1_700_000_012_040));
        let text = report.render();
        assert!(text.contains(&key.peer_id().to_string()), "{text}");
        assert!(text.contains("did-b") && text.contains("bob") && text.contains("127.0.0.1:4001"), "{text}");
        assert!(text.contains("http://bob:8080"), "{text}");
        assert!(text.contains("2023-11-14T22:13:20Z (12s ago)"), "{text}");
        assert!(text.contains("2023-11-14T22:18:20Z (in 4m 48s)"), "{text}");
        assert!(text.contains("40 ms; 1 DHT hop at the answering indexer, 1 indexer asked"), "{text}");
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["found"], true);
        assert_eq!(json["record"]["expires_at"], "2023-11-14T22:18:20Z");
        assert_eq!(json["key"], "/node/did-b");
    }
}
