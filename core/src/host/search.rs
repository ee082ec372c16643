//! `ocd search <needle>`: find peers by peer id, DID or name anywhere in the federation, through
//! the running daemon (DESIGN §6, §7).
//!
//! The CLI checks the needle ([`parse_needle`]) and sends it over the control socket as
//! [`ControlCommand::Search`](super::control::ControlCommand::Search). The driver hands it to the
//! core as [`Command::Search`](crate::proto::Command::Search) and streams the answer back on the
//! same connection: one [`SearchHitReply`] line per verified hit as the core reports it
//! (`Event::SearchHit`), then one final [`SearchDoneReply`] line (`Event::SearchDone`, or the
//! client's `--timeout`). Every hit is a signed record the daemon verified (signature, expiry, and
//! that it matches the needle), deduplicated by peer id.
//!
//! Exit codes of `ocd search`, consistent with the rest of the CLI: 0 at least one hit, 1 none
//! (a negative answer), 2 an error (no daemon, an invalid needle, no live indexer to ask, every
//! indexer asked refused).

use super::lookup::rfc3339;
use crate::proto::{PeerId, PeerRecord, SearchEnd, SearchQuery, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::Duration;

/// Default bound on a search (`ocd search --timeout`); a search normally ends earlier, when no new
/// hit came for the daemon's `search_timeout`.
pub const DEFAULT_SEARCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest search bound the daemon accepts.
pub const MAX_SEARCH_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest user key of a search (`ocd search --user`).
pub const MAX_USER_LEN: usize = 64;

/// Checks the argument of `ocd search` (clap value parser): a peer id (64 hex characters), a
/// DID or a name substring. Returns the trimmed needle.
pub fn parse_needle(arg: &str) -> Result<String, String> {
    SearchQuery::parse(arg).map(|_| arg.trim().to_string()).map_err(|e| e.to_string())
}

/// Checks a user key given with `--user` (non-empty, at most [`MAX_USER_LEN`] bytes, printable).
pub fn parse_user(arg: &str) -> Result<String, String> {
    let user = arg.trim();
    if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
        return Err(format!("a user key has 1 to {MAX_USER_LEN} printable bytes"));
    }
    Ok(user.to_string())
}

/// One hit, as printed by `ocd search --json` (one object per line; DESIGN §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHitView {
    /// Owner (hex).
    pub peer_id: String,
    /// Owner's DID.
    pub did: String,
    /// Owner's name.
    pub name: String,
    /// Transport addresses.
    pub addrs: Vec<String>,
    /// When the record stops being valid, RFC 3339.
    pub expires_at: String,
}

/// A hit on the control socket: the printed fields and what the human form needs besides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHitReply {
    /// The hit.
    pub hit: SearchHitView,
    /// `expires_at` in ms since the epoch.
    pub expires_at_ms: u64,
    /// The indexer that relayed it (hex).
    pub via: String,
    /// The daemon's clock when it got the hit (ms since the epoch), for relative times.
    pub at_ms: u64,
}

impl SearchHitReply {
    /// The reply for a hit the core verified.
    pub fn new(record: &PeerRecord, via: &PeerId, now: Timestamp) -> Self {
        let b = &record.body;
        SearchHitReply {
            hit: SearchHitView {
                peer_id: b.peer_id.to_string(),
                did: b.did.to_string(),
                name: b.name.clone(),
                addrs: b.addrs.clone(),
                expires_at: rfc3339(b.expires_at),
            },
            expires_at_ms: b.expires_at.0,
            via: via.to_string(),
            at_ms: now.0,
        }
    }

    /// The human form: the name and peer id, then the DID, addresses and expiry, indented.
    pub fn render(&self) -> String {
        let h = &self.hit;
        let mut s = String::new();
        let _ = writeln!(s, "{}  {}", if h.name.is_empty() { "-" } else { &h.name }, h.peer_id);
        let _ = writeln!(s, "  did      {}", h.did);
        let _ = writeln!(s, "  addrs    {}", if h.addrs.is_empty() { "-".into() } else { h.addrs.join(", ") });
        let left = Duration::from_secs(self.expires_at_ms.saturating_sub(self.at_ms).saturating_add(500) / 1000);
        let _ = writeln!(s, "  expires  {} (in {})", h.expires_at, humantime::format_duration(left));
        s
    }
}

/// Why a search ended, on the control socket: the core's [`SearchEnd`], or the client's bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchEndReason {
    /// Nothing new came for `search_timeout`.
    Idle,
    /// A newer search of the same user cancelled it.
    Cancelled,
    /// `search_max_results` hits reached.
    Limit,
    /// The daemon has no live indexer to ask (an indexer-only daemon never has one).
    NoIndexer,
    /// Every indexer asked refused or could not be reached.
    Failed,
    /// The needle asks nothing, or too much.
    Invalid,
    /// Too many searches in flight on the daemon.
    TooMany,
    /// The client's `--timeout` passed first.
    Timeout,
}

impl From<SearchEnd> for SearchEndReason {
    fn from(e: SearchEnd) -> Self {
        match e {
            SearchEnd::Idle => SearchEndReason::Idle,
            SearchEnd::Cancelled => SearchEndReason::Cancelled,
            SearchEnd::Limit => SearchEndReason::Limit,
            SearchEnd::NoIndexer => SearchEndReason::NoIndexer,
            SearchEnd::Failed => SearchEndReason::Failed,
            SearchEnd::Invalid => SearchEndReason::Invalid,
            SearchEnd::TooMany => SearchEndReason::TooMany,
        }
    }
}

impl SearchEndReason {
    /// Whether the search could not run at all (exit 2 when it has no hit).
    pub fn is_error(self) -> bool {
        matches!(
            self,
            SearchEndReason::NoIndexer | SearchEndReason::Failed | SearchEndReason::Invalid | SearchEndReason::TooMany
        )
    }

    /// A readable explanation.
    pub fn describe(self) -> &'static str {
        match self {
            SearchEndReason::Idle => "no new hit for the search timeout",
            SearchEndReason::Cancelled => "cancelled by a newer search of the same user",
            SearchEndReason::Limit => "the result limit was reached",
            SearchEndReason::NoIndexer => "no live indexer to ask (an indexer-only daemon has none; see `status`)",
            SearchEndReason::Failed => "every indexer asked refused the search or could not be reached",
            SearchEndReason::Invalid => "the needle asks nothing, or too much",
            SearchEndReason::TooMany => "too many searches are running on this daemon; try again",
            SearchEndReason::Timeout => "--timeout reached",
        }
    }
}

/// The end of a search on the control socket (the final line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchDoneReply {
    /// Distinct verified hits delivered.
    pub hits: u32,
    /// Why it ended.
    pub end: SearchEndReason,
    /// Milliseconds from the command reaching the daemon to the end.
    pub elapsed_ms: u64,
}

impl SearchDoneReply {
    /// The exit code of `ocd search`: 0 with a hit, else 2 if the search could not run, else 1.
    pub fn exit_code(&self) -> u8 {
        if self.hits > 0 {
            0
        } else if self.end.is_error() {
            super::cli::EXIT_ERROR
        } else {
            super::cli::EXIT_NEGATIVE
        }
    }

    /// The one-line summary printed on stderr.
    pub fn summary(&self, needle: &str) -> String {
        let secs = self.elapsed_ms as f64 / 1000.0;
        match self.hits {
            0 if self.end.is_error() => format!("cannot search for `{needle}`: {}", self.end.describe()),
            0 => format!("no peer matches `{needle}` ({}, after {secs:.1} s)", self.end.describe()),
            n => format!(
                "{n} hit{} for `{needle}` ({}, after {secs:.1} s)",
                if n == 1 { "" } else { "s" },
                self.end.describe()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Did, Keypair, RecordBody};

    fn record() -> (Keypair, PeerRecord) {
        let key = Keypair::derive(5, "search");
        let body = RecordBody {
            peer_id: key.peer_id(),
            did: Did::new("did-carol").unwrap(),
            name: "Carol".into(),
            addrs: vec!["127.0.0.1:4001".into(), "10.0.0.3:4001".into()],
            api_url: Some("http://carol:8080".into()),
            nats_address: None,
            wallet: None,
            issued_at: Timestamp(1_700_000_000_000),
            expires_at: Timestamp(1_700_000_300_000),
        };
        let record = PeerRecord::sign(body, &key).unwrap();
        (key, record)
    }

    #[test]
    fn a_hit_prints_the_contract_fields_as_json_and_a_readable_block() {
        let (key, record) = record();
        let via = Keypair::derive(6, "search").peer_id();
        let reply = SearchHitReply::new(&record, &via, Timestamp(1_700_000_012_000));
        let json = serde_json::to_value(&reply.hit).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 5, "{json}");
        for k in ["peer_id", "did", "name", "addrs", "expires_at"] {
            assert!(keys.contains(&k), "{k} missing: {json}");
        }
        assert_eq!(json["peer_id"], key.peer_id().to_string());
        assert_eq!(json["did"], "did-carol");
        assert_eq!(json["name"], "Carol");
        assert_eq!(json["addrs"][1], "10.0.0.3:4001");
        assert_eq!(json["expires_at"], "2023-11-14T22:18:20Z");
        let text = reply.render();
        assert!(text.starts_with(&format!("Carol  {}\n", key.peer_id())), "{text}");
        assert!(text.contains("did      did-carol"), "{text}");
        assert!(text.contains("127.0.0.1:4001, 10.0.0.3:4001"), "{text}");
        assert!(text.contains("2023-11-14T22:18:20Z (in 4m 48s)"), "{text}");
        assert_eq!(reply.via, via.to_string());
    }

    #[test]
    fn exit_codes_follow_hits_then_the_end() {
        let done = |hits, end| SearchDoneReply { hits, end, elapsed_ms: 5_200 };
        assert_eq!(done(1, SearchEndReason::Idle).exit_code(), 0);
        assert_eq!(done(2, SearchEndReason::Timeout).exit_code(), 0);
        assert_eq!(done(1, SearchEndReason::Failed).exit_code(), 0, "hits before a failure still count");
        for end in [SearchEndReason::Idle, SearchEndReason::Timeout, SearchEndReason::Cancelled, SearchEndReason::Limit]
        {
            assert_eq!(done(0, end).exit_code(), 1, "{end:?}");
        }
        for end in
            [SearchEndReason::NoIndexer, SearchEndReason::Failed, SearchEndReason::Invalid, SearchEndReason::TooMany]
        {
            assert_eq!(done(0, end).exit_code(), 2, "{end:?}");
        }
        assert_eq!(
            done(0, SearchEndReason::Idle).summary("zed"),
            "no peer matches `zed` (no new hit for the search timeout, after 5.2 s)"
        );
        assert!(
            done(0, SearchEndReason::NoIndexer).summary("zed").starts_with("cannot search for `zed`: no live indexer")
        );
        assert!(done(3, SearchEndReason::Idle).summary("a").starts_with("3 hits for `a`"));
        let line = serde_json::to_string(&done(0, SearchEndReason::NoIndexer)).unwrap();
        assert_eq!(line, r#"{"hits":0,"end":"no_indexer","elapsed_ms":5200}"#);
        assert_eq!(SearchEndReason::from(SearchEnd::TooMany), SearchEndReason::TooMany);
    }

    #[test]
    fn needles_and_user_keys_are_checked() {
        assert_eq!(parse_needle("  Carol "), Ok("Carol".to_string()));
        assert!(parse_needle("").is_err());
        assert!(parse_needle("   ").is_err());
        assert!(parse_needle(&"x".repeat(10_000)).is_err());
        assert_eq!(parse_user("ops"), Ok("ops".to_string()));
        assert!(parse_user("").is_err());
        assert!(parse_user(&"u".repeat(MAX_USER_LEN + 1)).is_err());
        assert!(parse_user("a\nb").is_err());
    }
}
