//! The NATS bridge, pure (spec D §6, E F16–F20; DESIGN §9): how a node's local OpenCloud apps,
//! talking JSON over their NATS server, drive ocd and hear from it. The NATS client is the host's;
//! this is the mapping, as a small sans-IO machine:
//!
//! * **In.** [`Bridge::on_nats`] takes a message the host received on a subscribed subject
//!   (`propalgation_event`, `create_resource`) and turns it into [`Command`]s for the [`Peer`]
//!   (sends through the messaging machine, so DNT applies; peer searches; peer-book changes) and
//!   resource searches of its own. Keys are read case-insensitively, enums by number (the
//!   configurable [`Codes`]) or by name, `[]byte` payloads as base64. Our own messages
//!   (`FromApp` = the app name) are ignored. A malformed message is an error for the host to log
//!   and count; nothing else happens.
//! * **Out.** [`Bridge::on_inbox`] maps an inbox entry (a message from another node, in arrival
//!   order) to what the apps expect: `create_resource`, `remove_resource`, `planner_execution`,
//!   `considers_event`, the config events, or the resource-search exchange below. Every
//!   publication of an entry carries the message id (`Nats-Msg-Id`), so a republication after a
//!   restart can be recognised. [`Bridge::on_event`] turns peer-search hits into `search_event`s
//!   carrying the requesting `User` (the seed forgot it, B26). [`Bridge::own_peer`] is the
//!   `create_resource` of our own peer at start.
//! * **Resource search** (F19) of type `known` (every peer in the peer book) or `partner`
//!   (partners only): a `search` message to each; the receiving node's bridge puts it to its apps
//!   as a NATS request on `resource_search` ([`BridgeAction::Request`]), and every reply (a JSON
//!   array of resources) goes back to the requester as a `search` message; the requester's bridge
//!   publishes each resource as a `search_event` with the user — only while that user's search is
//!   active (the seed published stale results, B8). One active search per user; a search ends
//!   after `search_idle` without a result, or on `PB_CLOSE_SEARCH`. Type `all` goes to every node
//!   ([`Command::ResourceSearch`]: to our referent indexer, over the indexers' search mesh, to the
//!   nodes that reference each indexer); each puts it to its apps the same way and answers us
//!   directly.
//! * **Planner sessions** (F20): a peer that asked for our planner (an empty `planner` message)
//!   has a session until `PB_CLOSE_PLANNER`; a `PB_PLANNER` without `peer_id` goes to every open
//!   session.
//!
//! Fixed from the seed: B22 (a missing datatype is no crash), B23 (the peer we tell about a
//! relation receives our peer without a relation: its apps choose theirs), B24 (a booking's
//! update or delete travels as an update or delete), B26 (results carry the user), B8.
//!
//! [`Peer`]: crate::proto::Peer

use crate::proto::app::{AppProtocol, InboxEntry, NewMessage, PeerBook, Relation, Target};
use crate::proto::identity::{Did, PeerId};
use crate::proto::record::PeerRecord;
use crate::proto::search::SearchQuery;
use crate::proto::time::Timestamp;
use crate::proto::{Command, Event};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

mod codes;
mod json;
#[cfg(test)]
mod tests;

pub use codes::{ACTIONS, CodeOverrides, Codes, DATATYPES, METHODS, RELATIONS, Table, subject};

/// Command ids the bridge allocates have this bit set, so the host can tell the core's answers to
/// them from answers to its own commands.
pub const BRIDGE_ID_BIT: u64 = 1 << 62;

/// Most peers one message may name (`peer_ids`): a bound on what one message can make ocd send.
pub const MAX_TARGETS: usize = 1024;

/// The bridge's settings (the daemon's `[nats]` section).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// Our `FromApp` (the seed's `config.GetAppName()`): messages carrying it are ours, ignored.
    pub app_name: String,
    /// A resource search ends when no result came for this long (the seed's `SearchTimeout`,
    /// default 5 s); a node answering one stops collecting its apps' replies after as long.
    #[serde(with = "humantime_serde")]
    pub search_idle: Duration,
    /// The subject a node puts incoming resource searches to its apps on (a NATS request).
    pub resource_search_subject: String,
    /// Subject overrides by method name (`CREATE_RESOURCE = "…"`); default: the name in lower case.
    pub subjects: BTreeMap<String, String>,
    /// Code overrides.
    pub codes: CodeOverrides,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            app_name: "oc-discovery".into(),
            search_idle: Duration::from_secs(5),
            resource_search_subject: "resource_search".into(),
            subjects: BTreeMap::new(),
            codes: CodeOverrides::default(),
        }
    }
}

/// Something to publish on the local NATS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publication {
    /// The subject.
    pub subject: String,
    /// The JSON body.
    pub payload: Vec<u8>,
    /// The `Nats-Msg-Id` header: the id of the inbox entry it comes from.
    pub msg_id: Option<String>,
}

/// What the host must do for the bridge.
#[derive(Clone, Debug, PartialEq)]
pub enum BridgeAction {
    /// Hand this to the [`Peer`](crate::proto::Peer).
    Command(Command),
    /// Publish this.
    Publish(Publication),
    /// Publish this as a NATS request and hand every reply to [`Bridge::on_reply`] with `token`,
    /// until [`BridgeAction::EndRequest`] with the same token.
    Request {
        /// Echoed in the replies.
        token: u64,
        /// The request.
        publication: Publication,
    },
    /// Stop taking replies for `token`.
    EndRequest {
        /// The request.
        token: u64,
    },
}

/// Why a NATS message was not acted on. The host logs it and counts it; nothing else happens.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    /// Not JSON, or not the JSON expected.
    #[error("{what} is not valid JSON: {error}")]
    Json {
        /// What was being read.
        what: &'static str,
        /// The parser's message.
        error: String,
    },
    /// JSON, but not an object.
    #[error("{0} is not a JSON object")]
    NotAnObject(&'static str),
    /// A field of the wrong type.
    #[error("field `{field}` is not {expected}")]
    Field {
        /// The field.
        field: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// A name that is not in the code table.
    #[error("field `{field}`: unknown name `{name}`")]
    UnknownName {
        /// The field.
        field: &'static str,
        /// The name.
        name: String,
    },
    /// A field the action needs is missing.
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    /// An action, method or search type this bridge does not handle.
    #[error("{0}")]
    Unsupported(String),
    /// A peer id or DID that is neither.
    #[error("`{0}` is neither a peer id nor a DID")]
    BadPeer(String),
    /// A search needle that is no search.
    #[error("bad search: {0}")]
    BadSearch(String),
}

/// What a handled NATS message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Acted on.
    Done,
    /// Our own message, or one for a subject or action this bridge leaves to others.
    Ignored,
}

/// A resource search this node started for a user.
#[derive(Clone, Debug)]
struct ResourceSearch {
    deadline: Timestamp,
}

/// A resource search from another node, put to our apps.
#[derive(Clone, Debug)]
struct Answering {
    requester: PeerId,
    user: String,
    datatype: i64,
    deadline: Timestamp,
}

/// The bridge machine.
#[derive(Debug)]
pub struct Bridge {
    config: BridgeConfig,
    codes: Codes,
    me: PeerId,
    next_id: u64,
    /// Peer searches by command id → user.
    peer_searches: BTreeMap<u64, String>,
    /// Resource searches this node runs, by user.
    resource_searches: BTreeMap<String, ResourceSearch>,
    /// Resource searches of other nodes put to our apps, by request token.
    answering: BTreeMap<u64, Answering>,
    /// Peers that asked for our planner and have not closed the session.
    planner_sessions: BTreeSet<PeerId>,
    actions: VecDeque<BridgeAction>,
}

impl Bridge {
    /// A bridge for the node `me`.
    pub fn new(config: BridgeConfig, me: PeerId) -> Bridge {
        let codes = Codes::new(&config.codes);
        Bridge {
            config,
            codes,
            me,
            next_id: 1,
            peer_searches: BTreeMap::new(),
            resource_searches: BTreeMap::new(),
            answering: BTreeMap::new(),
            planner_sessions: BTreeSet::new(),
            actions: VecDeque::new(),
        }
    }

    /// The code tables in force.
    pub fn codes(&self) -> &Codes {
        &self.codes
    }

    /// The subject of a method (by name).
    pub fn subject(&self, method: &str) -> String {
        codes::subject(&self.config.subjects, method)
    }

    /// The subjects the host subscribes to.
    pub fn subscriptions(&self) -> Vec<String> {
        vec![self.subject("PROPALGATION_EVENT"), self.subject("CREATE_RESOURCE")]
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<BridgeAction> {
        self.actions.pop_front()
    }

    /// Resource searches running (this node's, and other nodes' put to our apps).
    pub fn searches(&self) -> (usize, usize) {
        (self.resource_searches.len(), self.answering.len())
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let a = self.resource_searches.values().map(|s| s.deadline).min();
        let b = self.answering.values().map(|s| s.deadline).min();
        a.into_iter().chain(b).min()
    }

    /// Ends the searches whose idle time ran out.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.resource_searches.retain(|_, s| s.deadline > now);
        let ended: Vec<u64> = self.answering.iter().filter(|(_, a)| a.deadline <= now).map(|(t, _)| *t).collect();
        for token in ended {
            self.answering.remove(&token);
            self.actions.push_back(BridgeAction::EndRequest { token });
        }
    }

    fn alloc(&mut self) -> u64 {
        let id = BRIDGE_ID_BIT | self.next_id;
        self.next_id += 1;
        id
    }

    fn send(&mut self, to: Target, protocol: AppProtocol, datatype: Option<i64>, user: &str, payload: Vec<u8>) {
        if to == Target::Peer(self.me) {
            return;
        }
        let id = self.alloc();
        let message = NewMessage { to, protocol, datatype, user: user.to_string(), payload };
        self.actions.push_back(BridgeAction::Command(Command::Send { id, message }));
    }

    fn publish(&mut self, method: &str, datatype: Option<i64>, user: &str, payload: &[u8], msg_id: Option<String>) {
        let body = json!({
            "FromApp": self.config.app_name,
            "Datatype": datatype.unwrap_or(-1),
            "Method": self.codes.methods.known(method),
            "User": user,
            "Groups": Value::Array(Vec::new()),
            "SearchAttr": "",
            "Payload": data_encoding::BASE64.encode(payload),
        });
        let publication = Publication { subject: self.subject(method), payload: body.to_string().into_bytes(), msg_id };
        self.actions.push_back(BridgeAction::Publish(publication));
    }

    // ---- in: the apps → ocd ----------------------------------------------------------------------

    /// A message from the local NATS on `subject`. `book` is the node's peer book.
    pub fn on_nats(
        &mut self,
        subject: &str,
        payload: &[u8],
        book: &PeerBook,
        now: Timestamp,
    ) -> Result<Handled, BridgeError> {
        let msg = json::object(payload, "the NATS message")?;
        let from_app = json::string(&msg, "FromApp")?;
        if from_app == self.config.app_name {
            return Ok(Handled::Ignored);
        }
        let envelope = Envelope {
            datatype: json::code(&msg, "Datatype", &self.codes.datatypes)?,
            user: json::string(&msg, "User")?,
            groups: json::strings(&msg, "Groups")?,
            payload: json::bytes(&msg, "Payload")?,
        };
        if subject == self.subject("PROPALGATION_EVENT") {
            self.on_propagation(envelope, book, now)
        } else if subject == self.subject("CREATE_RESOURCE") {
            self.on_create_resource(envelope)
        } else {
            Ok(Handled::Ignored)
        }
    }

    /// `create_resource` from an app: a `PEER` with a relation updates the peer book (F16); a
    /// new partner is told who we are.
    fn on_create_resource(&mut self, env: Envelope) -> Result<Handled, BridgeError> {
        if env.datatype != Some(self.codes.datatypes.known("PEER")) {
            return Ok(Handled::Ignored);
        }
        let peer = json::object(&env.payload, "the peer")?;
        self.set_relation(&peer, false)
    }

    /// A `PEER` resource with a relation: the peer book follows (a delete removes the entry), and
    /// a partner gets our peer (without a relation: B23).
    fn set_relation(&mut self, peer: &Map<String, Value>, delete: bool) -> Result<Handled, BridgeError> {
        let id = json::text(json::field(peer, "peer_id")).ok_or(BridgeError::Missing("peer_id"))?;
        let peer_id: PeerId = id.parse().map_err(|_| BridgeError::BadPeer(id.clone()))?;
        if peer_id == self.me {
            return Ok(Handled::Ignored);
        }
        let relation = if delete {
            None
        } else {
            let code = json::code(peer, "relation", &self.codes.relations)?;
            let name = code.and_then(|c| self.codes.relations.name(c)).unwrap_or("NONE");
            match name {
                "PARTNER" => Some(Relation::Partner),
                "BLACKLIST" => Some(Relation::Blocked),
                "SELF" => return Ok(Handled::Ignored),
                _ => Some(Relation::Known),
            }
        };
        self.actions.push_back(BridgeAction::Command(Command::SetRelation { peer: peer_id, relation }));
        if relation == Some(Relation::Partner) {
            let us = json!({ "peer_id": self.me.to_string() }).to_string().into_bytes();
            let dt = Some(self.codes.datatypes.known("PEER"));
            self.send(Target::Peer(peer_id), AppProtocol::Update, dt, "", us);
        }
        Ok(Handled::Done)
    }

    fn on_propagation(&mut self, env: Envelope, book: &PeerBook, now: Timestamp) -> Result<Handled, BridgeError> {
        let prop = json::object(&env.payload, "the propagation payload")?;
        let action = json::code(&prop, "Action", &self.codes.actions)?.ok_or(BridgeError::Missing("Action"))?;
        let inner_dt = json::code(&prop, "DataType", &self.codes.datatypes)?.filter(|d| *d > 0);
        let inner = json::bytes(&prop, "Payload")?;
        let action_name = self
            .codes
            .actions
            .name(action)
            .ok_or_else(|| BridgeError::Unsupported(format!("unknown action code {action}")))?
            .to_string();
        let dt = |b: &Bridge, name: &str| b.codes.datatypes.known(name);
        match action_name.as_str() {
            "PB_CREATE" | "PB_UPDATE" | "PB_DELETE" => {
                let protocol = match action_name.as_str() {
                    "PB_CREATE" => AppProtocol::Create,
                    "PB_UPDATE" => AppProtocol::Update,
                    _ => AppProtocol::Delete,
                };
                let booking = [dt(self, "BOOKING"), dt(self, "PURCHASE_RESOURCE")];
                let to_peer = if env.datatype.is_some_and(|d| booking.contains(&d)) {
                    json::object(&inner, "the resource").ok().and_then(|m| json::text(json::field(&m, "peer_id")))
                } else {
                    None
                };
                if let Some(to) = to_peer {
                    // B24: an update or delete of a booking travels as what it is.
                    let target = parse_target(&to)?;
                    self.send(target, protocol, env.datatype, &env.user, inner);
                } else if inner_dt == Some(dt(self, "PEER")) {
                    let peer = json::object(&inner, "the peer")?;
                    return self.set_relation(&peer, protocol == AppProtocol::Delete);
                } else {
                    let partners: Vec<PeerId> = book.partners().collect();
                    for p in partners {
                        self.send(Target::Peer(p), protocol, inner_dt, &env.user, inner.clone());
                    }
                }
            }
            "PB_CONSIDERS" => {
                let m = json::object(&inner, "the considers payload")?;
                let listed = [dt(self, "BOOKING"), dt(self, "PURCHASE_RESOURCE"), dt(self, "WORKFLOW_EXECUTION")];
                let targets: Vec<String> = if env.datatype.is_some_and(|d| listed.contains(&d)) {
                    json::strings(&m, "peer_ids")?
                } else {
                    json::text(json::field(&m, "origin_id")).into_iter().filter(|s| !s.is_empty()).collect()
                };
                if targets.is_empty() {
                    return Err(BridgeError::Missing("peer_ids"));
                }
                if targets.len() > MAX_TARGETS {
                    return Err(BridgeError::Unsupported(format!(
                        "{} peer_ids (at most {MAX_TARGETS})",
                        targets.len()
                    )));
                }
                let datatype = env.datatype.or(inner_dt);
                for t in targets {
                    let target = parse_target(&t)?;
                    self.send(target, AppProtocol::Considers, datatype, &env.user, inner.clone());
                }
            }
            "PB_ADMIRALTY_CONFIG" | "PB_MINIO_CONFIG" => {
                let protocol = if action_name == "PB_MINIO_CONFIG" {
                    AppProtocol::MinioConfig
                } else {
                    AppProtocol::AdmiraltyConfig
                };
                let m = json::object(&inner, "the config payload")?;
                let to = json::text(json::field(&m, "peer_id")).ok_or(BridgeError::Missing("peer_id"))?;
                let target = parse_target(&to)?;
                self.send(target, protocol, env.datatype, &env.user, inner);
            }
            "PB_PLANNER" => {
                let m = json::object(&inner, "the planner payload")?;
                // A map holding only `peer_id` asks for that peer's planner: an empty payload.
                let body = if m.len() > 1 { inner.clone() } else { Vec::new() };
                match json::text(json::field(&m, "peer_id")) {
                    Some(to) => {
                        let target = parse_target(&to)?;
                        self.send(target, AppProtocol::Planner, None, &env.user, body);
                    }
                    None => {
                        let sessions: Vec<PeerId> = self.planner_sessions.iter().copied().collect();
                        for p in sessions {
                            self.send(Target::Peer(p), AppProtocol::Planner, None, &env.user, body.clone());
                        }
                    }
                }
            }
            "PB_CLOSE_PLANNER" => {
                let m = json::object(&inner, "the planner payload")?;
                let to = json::text(json::field(&m, "peer_id")).ok_or(BridgeError::Missing("peer_id"))?;
                let peer: PeerId = to.parse().map_err(|_| BridgeError::BadPeer(to.clone()))?;
                self.planner_sessions.remove(&peer);
            }
            "PB_CLOSE_SEARCH" => {
                if inner_dt == Some(dt(self, "PEER")) {
                    self.actions.push_back(BridgeAction::Command(Command::CancelSearch { user: env.user.clone() }));
                    self.peer_searches.retain(|_, u| *u != env.user);
                } else {
                    self.resource_searches.remove(&env.user);
                }
            }
            "PB_SEARCH" => {
                let m = json::object(&inner, "the search payload")?;
                let needle = json::text(json::field(&m, "search")).unwrap_or_default();
                if inner_dt == Some(dt(self, "PEER")) {
                    let query = SearchQuery::parse(&needle).map_err(|e| BridgeError::BadSearch(e.to_string()))?;
                    let id = self.alloc();
                    self.peer_searches.retain(|_, u| *u != env.user);
                    self.peer_searches.insert(id, env.user.clone());
                    self.actions.push_back(BridgeAction::Command(Command::Search { id, user: env.user, query }));
                } else {
                    let kind = json::text(json::field(&m, "type")).unwrap_or_default().to_ascii_lowercase();
                    let targets: Vec<PeerId> = match kind.as_str() {
                        "known" => book.known().collect(),
                        "partner" => book.partners().collect(),
                        // Every node: over the indexers' search mesh (DESIGN §9).
                        "all" => Vec::new(),
                        other => return Err(BridgeError::Unsupported(format!("resource search of type `{other}`"))),
                    };
                    let datatype = inner_dt.unwrap_or(-1);
                    let request = SearchPayload::Request {
                        datatype,
                        search: needle,
                        groups: env.groups.clone(),
                        scope: kind.clone(),
                    };
                    let body = serde_json::to_vec(&request).unwrap_or_default();
                    self.resource_searches
                        .insert(env.user.clone(), ResourceSearch { deadline: now + self.config.search_idle });
                    if kind == "all" {
                        let id = self.alloc();
                        let command = Command::ResourceSearch { id, user: env.user.clone(), request: body.clone() };
                        self.actions.push_back(BridgeAction::Command(command));
                    }
                    for p in targets {
                        self.send(Target::Peer(p), AppProtocol::Search, Some(datatype), &env.user, body.clone());
                    }
                }
            }
            other => return Err(BridgeError::Unsupported(format!("action {other}"))),
        }
        Ok(Handled::Done)
    }

    // ---- out: ocd → the apps ---------------------------------------------------------------------

    /// An event of the core. Peer-search hits of the bridge's searches become `search_event`s
    /// with the user; returns whether the event answered a bridge command (its id carries
    /// [`BRIDGE_ID_BIT`]).
    pub fn on_event(&mut self, event: &Event, now: Timestamp) -> bool {
        match event {
            Event::SearchHit { id, record, .. } if id & BRIDGE_ID_BIT != 0 => {
                if let Some(user) = self.peer_searches.get(id).cloned() {
                    let hit = peer_json(record, None).to_string().into_bytes();
                    let dt = Some(self.codes.datatypes.known("PEER"));
                    self.publish("SEARCH_EVENT", dt, &user, &hit, None);
                }
                true
            }
            Event::SearchDone { id, .. } if id & BRIDGE_ID_BIT != 0 => {
                self.peer_searches.remove(id);
                true
            }
            // Another node's resource search of type `all`, delivered by our indexer.
            Event::ResourceSearchAsked { requester, user, request, .. } => {
                if let Ok(SearchPayload::Request { datatype, search, groups, scope: _ }) =
                    serde_json::from_slice::<SearchPayload>(request)
                {
                    self.ask_apps(*requester, user, datatype, search, groups, None, now);
                }
                false
            }
            Event::AppAccepted { id, .. }
            | Event::AppSendRefused { id, .. }
            | Event::LookupDone { id, .. }
            | Event::ResourceSearchSent { id, .. } => id & BRIDGE_ID_BIT != 0,
            _ => false,
        }
    }

    /// Our own peer, published as `create_resource` at start (`SearchAttr` `peer_id`).
    pub fn own_peer(&mut self, record: &PeerRecord) {
        let relation = self.codes.relations.known("SELF");
        let body = json!({
            "FromApp": self.config.app_name,
            "Datatype": self.codes.datatypes.known("PEER"),
            "Method": self.codes.methods.known("CREATE_RESOURCE"),
            "User": "",
            "Groups": Value::Array(Vec::new()),
            "SearchAttr": "peer_id",
            "Payload": data_encoding::BASE64.encode(peer_json(record, Some(relation)).to_string().as_bytes()),
        });
        let publication = Publication {
            subject: self.subject("CREATE_RESOURCE"),
            payload: body.to_string().into_bytes(),
            msg_id: None,
        };
        self.actions.push_back(BridgeAction::Publish(publication));
    }

    /// An inbox entry, in arrival order: what the apps must hear of it. Every publication carries
    /// the entry's id as its `Nats-Msg-Id`.
    pub fn on_inbox(&mut self, entry: &InboxEntry, now: Timestamp) {
        let msg_id = Some(entry.id.to_string());
        let sender = entry.id.sender;
        match entry.protocol {
            AppProtocol::Create | AppProtocol::Update => {
                self.publish("CREATE_RESOURCE", entry.datatype, &entry.user, &entry.payload, msg_id)
            }
            AppProtocol::Delete => self.publish("REMOVE_RESOURCE", entry.datatype, &entry.user, &entry.payload, msg_id),
            AppProtocol::Considers => {
                self.publish("CONSIDERS_EVENT", entry.datatype, &entry.user, &entry.payload, msg_id)
            }
            AppProtocol::AdmiraltyConfig => {
                self.publish("ADMIRALTY_CONFIG_EVENT", entry.datatype, &entry.user, &entry.payload, msg_id)
            }
            AppProtocol::MinioConfig => {
                self.publish("MINIO_CONFIG_EVENT", entry.datatype, &entry.user, &entry.payload, msg_id)
            }
            AppProtocol::Verify => self.publish("VERIFY_RESOURCE", entry.datatype, &entry.user, &entry.payload, msg_id),
            AppProtocol::Planner => {
                // F20: an empty payload asks for our planner and opens a session; the apps answer
                // with a PB_PLANNER naming the sender. Either way they get the sender's id.
                let mut m = match json::object(&entry.payload, "planner") {
                    Ok(m) => m,
                    Err(_) => Map::new(),
                };
                if entry.payload.is_empty() {
                    self.planner_sessions.insert(sender);
                }
                m.insert("peer_id".into(), Value::String(sender.to_string()));
                let body = Value::Object(m).to_string().into_bytes();
                let dt = Some(self.codes.datatypes.known("BOOKING"));
                self.publish("PLANNER_EXECUTION", dt, &entry.user, &body, msg_id);
            }
            AppProtocol::Search => match serde_json::from_slice::<SearchPayload>(&entry.payload) {
                // A request read back after a restart, long over: its requester stopped listening.
                Ok(SearchPayload::Request { .. }) if now.since(entry.received_at) > self.config.search_idle => {}
                Ok(SearchPayload::Request { datatype, search, groups, scope: _ }) => {
                    self.ask_apps(sender, &entry.user, datatype, search, groups, msg_id, now);
                }
                Ok(SearchPayload::Results { datatype, resources }) => {
                    let Some(search) = self.resource_searches.get_mut(&entry.user) else {
                        return; // B8: no search of that user is active (closed or idle): dropped.
                    };
                    search.deadline = now + self.config.search_idle;
                    for (i, r) in resources.iter().enumerate() {
                        let id = msg_id.as_ref().map(|m| format!("{m}-{i}"));
                        self.publish("SEARCH_EVENT", Some(datatype), &entry.user, r.to_string().as_bytes(), id);
                    }
                }
                Err(_) => {}
            },
        }
    }

    /// Puts another node's resource search to our apps as a NATS request; their replies go back
    /// to it ([`Bridge::on_reply`]) until the search's idle time passes.
    #[allow(clippy::too_many_arguments)]
    fn ask_apps(
        &mut self,
        requester: PeerId,
        user: &str,
        datatype: i64,
        search: String,
        groups: Vec<String>,
        msg_id: Option<String>,
        now: Timestamp,
    ) {
        let token = self.alloc();
        let body = json!({
            "Datatype": datatype,
            "User": user,
            "Groups": groups,
            "Search": search,
            "Requester": requester.to_string(),
        });
        let deadline = now + self.config.search_idle;
        self.answering.insert(token, Answering { requester, user: user.to_string(), datatype, deadline });
        let publication = Publication {
            subject: self.config.resource_search_subject.clone(),
            payload: body.to_string().into_bytes(),
            msg_id,
        };
        self.actions.push_back(BridgeAction::Request { token, publication });
    }

    /// A reply of our apps to the resource-search request `token`: a JSON array of resources (a
    /// single object is taken as one), sent back to the requesting node.
    pub fn on_reply(&mut self, token: u64, payload: &[u8], now: Timestamp) -> Result<(), BridgeError> {
        let Some(a) = self.answering.get_mut(&token) else {
            return Ok(());
        };
        let resources = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Array(v)) => v,
            Ok(v @ Value::Object(_)) => vec![v],
            Ok(_) => return Err(BridgeError::NotAnObject("the search reply")),
            Err(e) => return Err(BridgeError::Json { what: "the search reply", error: e.to_string() }),
        };
        a.deadline = now + self.config.search_idle;
        if resources.is_empty() {
            return Ok(());
        }
        let (to, user, datatype) = (a.requester, a.user.clone(), a.datatype);
        let body = serde_json::to_vec(&SearchPayload::Results { datatype, resources }).unwrap_or_default();
        self.send(Target::Peer(to), AppProtocol::Search, Some(datatype), &user, body);
        Ok(())
    }
}

/// The fields of a `NATSResponse` the actions read.
struct Envelope {
    datatype: Option<i64>,
    user: String,
    groups: Vec<String>,
    payload: Vec<u8>,
}

/// The payload of a `search` message between nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SearchPayload {
    /// Requester → node: what to look for.
    Request {
        /// The datatype (-1: every resource type).
        datatype: i64,
        /// The search text.
        search: String,
        /// The requesting user's groups.
        groups: Vec<String>,
        /// `known` or `partner`.
        scope: String,
    },
    /// Node → requester: resources its apps found.
    Results {
        /// The datatype asked.
        datatype: i64,
        /// The resources, as the apps gave them.
        resources: Vec<Value>,
    },
}

/// A peer id (hex) or else a DID.
fn parse_target(s: &str) -> Result<Target, BridgeError> {
    if let Ok(p) = s.parse::<PeerId>() {
        return Ok(Target::Peer(p));
    }
    Did::new(s.trim()).map(Target::Did).map_err(|_| BridgeError::BadPeer(s.to_string()))
}

/// A peer as the apps read it: its record's fields (`relation` when given).
fn peer_json(record: &PeerRecord, relation: Option<i64>) -> Value {
    let b = &record.body;
    let mut m = json!({
        "peer_id": b.peer_id.to_string(),
        "did": b.did.as_str(),
        "name": b.name,
        "addrs": b.addrs,
        "api_url": b.api_url,
        "nats_address": b.nats_address,
        "wallet": b.wallet,
        "issued_at": b.issued_at.0,
        "expires_at": b.expires_at.0,
    });
    if let (Some(r), Value::Object(o)) = (relation, &mut m) {
        o.insert("relation".into(), Value::from(r));
    }
    m
}
