//! Application messages at the host (DESIGN §6, §8): what `ocd send` asks and is answered, the
//! inbox as `ocd inbox` prints it, and the DNT section of `ocd status`.
//!
//! * **Send.** The control command carries the destination and the protocol as text and the
//!   payload in base64; the driver parses them, hands the core a `Command::Send` and answers when
//!   the core does: [`SendReply`] on `AppAccepted` (a critical message is durably queued by then:
//!   the driver committed the core's persist output before executing the event), an error on
//!   `AppSendRefused`.
//! * **Inbox.** Read by the control socket's own thread straight from the durable store
//!   ([`super::store`]), concurrently with the driver's writes: one [`InboxItem`] per entry in
//!   arrival order, then [`InboxDone`] — or, with `follow`, more entries as they are committed.

use super::lookup::{self, rfc3339};
use super::store::{InboxRecord, StoreStats, age_secs};
use crate::proto::{AppProtocol, Peer, RecordKey, SendRefusal, Target, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Inbox entries read per store transaction while listing.
pub const INBOX_PAGE: usize = 256;

/// Parses a destination: a peer id (64 hex characters, or `/pid/<hex>`) or a DID (anything else,
/// or `/node/<did>`).
pub fn parse_target(arg: &str) -> Result<Target, String> {
    Ok(match lookup::parse_key(arg)? {
        RecordKey::Peer(p) => Target::Peer(p),
        RecordKey::Did(d) => Target::Did(d),
    })
}

/// A payload as the control socket carries it: standard base64, padded.
pub fn encode_payload(bytes: &[u8]) -> String {
    data_encoding::BASE64.encode(bytes)
}

/// A destination as [`parse_target`] reads it back: hex for a peer id, `/node/<did>` for a DID
/// (a DID that looks like a peer id stays a DID).
pub fn target_text(t: &Target) -> String {
    match t {
        Target::Peer(p) => p.to_string(),
        Target::Did(d) => format!("/node/{d}"),
    }
}

/// Parses a protocol name (`create`, …, `search`).
pub fn parse_protocol(arg: &str) -> Result<AppProtocol, String> {
    AppProtocol::parse(arg.trim()).ok_or_else(|| {
        let names: Vec<&str> = AppProtocol::ALL.iter().map(|p| p.name()).collect();
        format!("unknown protocol `{arg}`; one of {}", names.join(", "))
    })
}

/// Why the core refused a send, for the user.
pub fn describe_refusal(reason: SendRefusal, config: &crate::proto::Config) -> String {
    match reason {
        SendRefusal::TooLarge => {
            format!("refused: the payload and user exceed app_max_payload ({} bytes)", config.app_max_payload)
        }
        SendRefusal::QueueFull => {
            format!("refused: the DNT queue is full ({} messages, dnt_queue_max); try later", config.dnt_queue_max)
        }
        SendRefusal::DestinationFull => format!(
            "refused: {} messages are already queued for this destination (dnt_queue_max_per_destination); try later",
            config.dnt_queue_max_per_destination
        ),
        SendRefusal::BadDestination => "refused: the destination is this daemon or a blocked peer".into(),
        SendRefusal::NotANode => "refused: this daemon does not play the node role".into(),
    }
}

/// `ocd send`'s answer: the message id, its class and its state (`queued`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendReply {
    /// The message id (`<sender>-<epoch hex>-<seq>`).
    pub id: String,
    /// `critical`, `moderate` or `none`.
    pub class: String,
    /// `queued`: accepted for delivery (a critical message is durably queued).
    pub state: String,
}

/// One inbox entry as `ocd inbox --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxLine {
    /// Local arrival sequence, from 1.
    pub seq: u64,
    /// The message id.
    pub id: String,
    /// The sender's peer id (hex).
    pub from: String,
    /// The protocol name.
    pub protocol: String,
    /// The OpenCloud datatype code.
    pub datatype: Option<i64>,
    /// The OpenCloud user.
    pub user: String,
    /// The payload, base64 (standard alphabet, padded).
    pub payload: String,
}

impl InboxLine {
    /// The payload's bytes (`None` if `payload` is not base64).
    pub fn payload_bytes(&self) -> Option<Vec<u8>> {
        data_encoding::BASE64.decode(self.payload.as_bytes()).ok()
    }
}

/// One inbox entry on the control socket: the printed line and a few more facts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxItem {
    /// What `--json` prints.
    #[serde(flatten)]
    pub line: InboxLine,
    /// The sender's DID, when its record was known.
    pub from_did: Option<String>,
    /// When it arrived (ms since the epoch).
    pub received_at_ms: u64,
    /// Whether the NATS bridge published it.
    pub published: bool,
}

impl InboxItem {
    /// The item of a stored entry.
    pub fn of(r: &InboxRecord) -> Self {
        let e = &r.entry;
        InboxItem {
            line: InboxLine {
                seq: r.seq,
                id: e.id.to_string(),
                from: e.id.sender.to_string(),
                protocol: e.protocol.name().into(),
                datatype: e.datatype,
                user: e.user.clone(),
                payload: encode_payload(&e.payload),
            },
            from_did: e.from_did.as_ref().map(ToString::to_string),
            received_at_ms: e.received_at.0,
            published: r.published,
        }
    }

    /// A readable line: sequence, arrival time, protocol, sender, user, datatype, size, id.
    pub fn render(&self) -> String {
        let l = &self.line;
        let size = l.payload_bytes().map_or(0, |p| p.len());
        let from = self.from_did.as_deref().unwrap_or(super::status::short(&l.from));
        let datatype = l.datatype.map_or_else(|| "-".to_string(), |d| d.to_string());
        let user = if l.user.is_empty() { "-" } else { l.user.as_str() };
        format!(
            "#{:<6} {}  {:<16} from {}  user {}  datatype {}  {} bytes  id {}\n",
            l.seq,
            rfc3339(Timestamp(self.received_at_ms)),
            l.protocol,
            from,
            user,
            datatype,
            size,
            l.id
        )
    }
}

/// The end of an inbox listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxDone {
    /// Entries sent in this answer.
    pub count: u64,
    /// The last arrival sequence sent (or `since` when none was): pass it as `--since` to resume.
    pub last_seq: u64,
    /// `listed` (everything up to now was listed) or `shutdown` (a follow ended: the daemon stops).
    pub end: String,
}

/// The DNT queue and inbox part of `ocd status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppStatus {
    /// The sender epoch (hex) of this daemon's message ids.
    pub epoch: String,
    /// The next sequence number.
    pub next_seq: u64,
    /// Per class: messages queued and the oldest one's age.
    pub classes: Vec<ClassStatus>,
    /// Per destination.
    pub destinations: Vec<DestinationStatus>,
    /// Inbox entries.
    pub inbox: u64,
    /// Inbox entries not yet published to NATS.
    pub inbox_unpublished: u64,
    /// Inbox appends refused because the id was already there (a core bug if not 0).
    pub inbox_duplicates: u64,
    /// The durable store.
    pub store: Option<StoreStatus>,
}

/// One delivery class of the queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassStatus {
    /// `critical`, `moderate` or `none`.
    pub class: String,
    /// Messages queued.
    pub count: usize,
    /// Age of the oldest, in seconds.
    pub oldest_age_secs: Option<u64>,
}

/// One destination of the queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationStatus {
    /// Peer id (hex) or DID.
    pub to: String,
    /// Messages queued for it.
    pub count: usize,
    /// Milliseconds until the next attempt (`None`: an attempt is under way).
    pub next_attempt_in_ms: Option<u64>,
    /// Failed attempts in a row.
    pub failures: u32,
}

/// The store file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// Its path.
    pub path: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Critical messages in it.
    pub queued: u64,
    /// Write transactions committed since start.
    pub commits: u64,
    /// Mean commit time since start, in microseconds.
    pub mean_commit_us: u64,
}

impl AppStatus {
    /// Reads the core's queue view and the store's counts (`None`: not a node).
    pub fn build(
        peer: &Peer,
        store: Option<(&std::path::Path, &StoreStats)>,
        commits: (u64, u64),
        now: Timestamp,
    ) -> Option<Self> {
        let q = peer.app_queue()?;
        let classes = q
            .classes
            .iter()
            .map(|(class, count, oldest)| ClassStatus {
                class: class.name().into(),
                count: *count,
                oldest_age_secs: oldest.map(|t| age_secs(t, now)),
            })
            .collect();
        let destinations = q
            .destinations
            .iter()
            .map(|(to, count, next, failures)| DestinationStatus {
                to: to.to_string(),
                count: *count,
                next_attempt_in_ms: next.map(|t| t.0.saturating_sub(now.0)),
                failures: *failures,
            })
            .collect();
        let (commits, micros) = commits;
        let mut s = AppStatus {
            epoch: format!("{:016x}", q.epoch),
            next_seq: q.next_seq,
            classes,
            destinations,
            ..AppStatus::default()
        };
        if let Some((path, st)) = store {
            s.inbox = st.inbox;
            s.inbox_unpublished = st.unpublished;
            s.inbox_duplicates = st.inbox_duplicates;
            s.store = Some(StoreStatus {
                path: path.display().to_string(),
                size_bytes: st.file_bytes,
                queued: st.queued,
                commits,
                mean_commit_us: micros.checked_div(commits).unwrap_or(0),
            });
        }
        Some(s)
    }

    /// Messages queued, every class.
    pub fn queued(&self) -> usize {
        self.classes.iter().map(|c| c.count).sum()
    }

    /// Readable lines for `ocd status`.
    pub fn render(&self, s: &mut String) {
        let classes = self
            .classes
            .iter()
            .map(|c| match c.oldest_age_secs {
                Some(age) if c.count > 0 => format!("{} {} (oldest {}s)", c.class, c.count, age),
                _ => format!("{} {}", c.class, c.count),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(s, "messages: queue {classes}; inbox {}", self.inbox);
        for d in &self.destinations {
            let next = match d.next_attempt_in_ms {
                Some(ms) => format!("next attempt in {:.1}s", ms as f64 / 1000.0),
                None => "attempt under way".into(),
            };
            let to = if d.to.len() == 64 { super::status::short(&d.to) } else { d.to.as_str() };
            let _ = writeln!(s, "  to {:<16} {} queued, {}, {} failure(s) in a row", to, d.count, next, d.failures);
        }
        if let Some(st) = &self.store {
            let _ = writeln!(
                s,
                "  store {} ({} KiB, {} critical queued; {} commits, mean {} µs)",
                st.path,
                st.size_bytes / 1024,
                st.queued,
                st.commits,
                st.mean_commit_us
            );
        }
        if self.inbox_duplicates > 0 {
            let _ = writeln!(s, "  inbox: {} duplicate append(s) refused (a core bug)", self.inbox_duplicates);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Did, InboxEntry, Keypair, MessageId};

    #[test]
    fn targets_and_protocols_parse() {
        let p = Keypair::derive(1, "app").peer_id();
        assert_eq!(parse_target(&p.to_string()), Ok(Target::Peer(p)));
        assert_eq!(parse_target("carol-did"), Ok(Target::Did(Did::new("carol-did").unwrap())));
        assert!(parse_target("").is_err());
        let hexlike = Target::Did(Did::new("ab".repeat(32)).unwrap());
        assert_eq!(parse_target(&target_text(&hexlike)), Ok(hexlike));
        assert_eq!(parse_target(&target_text(&Target::Peer(p))), Ok(Target::Peer(p)));
        assert_eq!(parse_protocol("admiralty-config"), Ok(AppProtocol::AdmiraltyConfig));
        let e = parse_protocol("teleport").unwrap_err();
        assert!(e.contains("create") && e.contains("minio-config"), "{e}");
    }

    #[test]
    fn an_inbox_item_prints_the_contract_fields() {
        let sender = Keypair::derive(2, "app").peer_id();
        let r = InboxRecord {
            seq: 7,
            entry: InboxEntry {
                id: MessageId { sender, epoch: 0xab, seq: 3 },
                from_did: Some(Did::new("did-s").unwrap()),
                protocol: AppProtocol::Create,
                datatype: Some(4),
                user: "u".into(),
                payload: b"hi".to_vec(),
                received_at: Timestamp(1_700_000_000_000),
            },
            published: false,
        };
        let item = InboxItem::of(&r);
        let line = serde_json::to_value(&item.line).unwrap();
        let keys: std::collections::BTreeSet<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["datatype", "from", "id", "payload", "protocol", "seq", "user"].into_iter().collect());
        let text = serde_json::to_string(&item.line).unwrap();
        assert!(text.starts_with(r#"{"seq":7,"id":""#), "fields in the contract's order: {text}");
        assert_eq!(line["payload"], "aGk=");
        assert_eq!(item.line.payload_bytes(), Some(b"hi".to_vec()));
        assert_eq!(line["id"], format!("{sender}-00000000000000ab-3"));
        // On the control socket the item carries more, flattened; it reads back.
        let wire = serde_json::to_string(&item).unwrap();
        assert_eq!(serde_json::from_str::<InboxItem>(&wire).unwrap(), item);
        let text = item.render();
        assert!(text.starts_with("#7 ") && text.contains("create") && text.contains("did-s"), "{text}");
        assert!(text.contains("2 bytes"), "{text}");
    }
}
