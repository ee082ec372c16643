//! The NATS bridge at the host (DESIGN §9): the client that talks to the local apps' NATS server,
//! and the glue between it, the pure mapping ([`crate::proto::bridge::Bridge`]), the core and the
//! durable inbox.
//!
//! * **The client** is async-nats on a thread of its own (`ocd-nats`) running a current-thread
//!   tokio runtime, for both daemons: the smol daemon keeps tokio out of its protocol path (the
//!   driver only sees two `futures` channels), and both daemons run the same, tested client.
//!   async-nats reconnects by itself with back-off and resubscribes; the daemon runs on while NATS
//!   is down, and `status` shows the link ([`NatsStatus`]).
//! * **In.** Messages on the bridge's subjects go to the driver, which hands them to the mapping;
//!   the commands it returns go to the core. A malformed message is logged (rate-limited) and
//!   counted, never fatal.
//! * **Out, nothing lost.** Inbox entries are read back from the store after each commit that
//!   appended some (and at start: whatever a previous run left unpublished), mapped, and
//!   published in arrival order with the message id in `Nats-Msg-Id`. A batch counts as published
//!   only when the server has answered a round trip sent after it (a request on a subject nobody
//!   serves: "no responders" comes back after the server processed everything before it); then
//!   the entries are marked published in the store. A batch that was not confirmed (the server
//!   went away) is published again once the link is back, so an app may see an entry twice
//!   (deduplicate on `Nats-Msg-Id`), never zero times.
//! * **Requests.** A resource search from another node is put to the apps as a NATS request; every
//!   reply until the search's idle timeout is handed to the mapping.

use super::store::{InboxRecord, Store, StoreError};
use crate::proto::bridge::{Bridge, BridgeAction, BridgeConfig, BridgeError, Handled, Publication};
use crate::proto::{Command, Event, PeerBook, PeerId, PeerRecord, Timestamp};
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Inbox entries read from the store per page when catching up.
const INBOX_PAGE: usize = 256;
/// Publications sent before one confirming round trip.
const BATCH: usize = 128;
/// How long a confirming round trip may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);
/// Inbound messages waiting for the driver; more wait in the client (back-pressure).
const INBOUND_QUEUE: usize = 1024;
/// Publications waiting for the server before the inbox is read no further (it is read again
/// when the server confirms some).
const MAX_PENDING: u64 = 10_000;
/// At most one malformed-message WARN per this interval; the others are counted.
const MALFORMED_WARN_EVERY: Duration = Duration::from_secs(10);

/// The driver → client direction.
#[derive(Debug)]
enum ToNats {
    /// Publish; `seq` marks the last publication of inbox entry `seq`.
    Publish { publication: Publication, seq: Option<u64> },
    /// Publish as a request; replies come back as [`FromNats::Reply`].
    Request { token: u64, publication: Publication },
    /// Stop taking replies.
    EndRequest { token: u64 },
}

/// The client → driver direction.
#[derive(Debug)]
pub enum FromNats {
    /// A message on a subscribed subject.
    Message {
        /// Its subject.
        subject: String,
        /// Its body.
        payload: Vec<u8>,
    },
    /// A reply to request `token`.
    Reply {
        /// The request.
        token: u64,
        /// The reply's body.
        payload: Vec<u8>,
    },
    /// The server confirmed these inbox entries' publications.
    Published(Vec<u64>),
}

/// The link as `status` shows it, shared between the client thread and the driver.
#[derive(Debug, Default)]
pub struct NatsLink {
    connected: AtomicBool,
    received: AtomicU64,
    malformed: AtomicU64,
    published: AtomicU64,
    pending: AtomicU64,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl NatsLink {
    fn set_error(&self, e: impl ToString) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(e.to_string());
        }
    }
}

/// The NATS part of `ocd status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsStatus {
    /// The server.
    pub url: String,
    /// Whether the link is up.
    pub connected: bool,
    /// Messages received from the apps.
    pub received: u64,
    /// Of those, malformed or not actionable (logged and dropped).
    pub malformed: u64,
    /// Publications the server confirmed.
    pub published: u64,
    /// Publications waiting for the server.
    pub pending: u64,
    /// Times the link came back after being lost.
    pub reconnects: u64,
    /// Resource searches this node runs, and other nodes' searches put to our apps.
    pub searches: (usize, usize),
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// The bridge as the driver owns it.
pub struct NatsBridge {
    url: String,
    bridge: Bridge,
    to: mpsc::UnboundedSender<ToNats>,
    /// Messages, replies and confirmations from the client.
    pub from: mpsc::Receiver<FromNats>,
    link: Arc<NatsLink>,
    store: Option<Arc<Store>>,
    /// The last inbox arrival sequence handed to the mapping.
    cursor: u64,
    /// Malformed-message WARNs: when the last was logged, and how many were left out since.
    warned: Option<Timestamp>,
    unlogged: u64,
}

impl NatsBridge {
    /// Starts the client thread for `url` and the mapping for node `me`. The client connects in
    /// the background; failing to reach the server is no error.
    pub fn start(
        url: &str,
        config: BridgeConfig,
        me: PeerId,
        store: Option<Arc<Store>>,
    ) -> Result<NatsBridge, std::io::Error> {
        let bridge = Bridge::new(config, me);
        let (to, to_rx) = mpsc::unbounded::<ToNats>();
        let (from_tx, from) = mpsc::channel::<FromNats>(INBOUND_QUEUE);
        let link = Arc::new(NatsLink::default());
        let (thread_link, subjects, server) = (link.clone(), bridge.subscriptions(), url.to_string());
        std::thread::Builder::new().name("ocd-nats".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("NATS bridge: cannot start its runtime: {e}");
                    thread_link.set_error(e);
                    return;
                }
            };
            rt.block_on(client(server, subjects, to_rx, from_tx, thread_link));
        })?;
        tracing::info!(url, "NATS bridge: connecting to the local apps' server");
        Ok(NatsBridge { url: url.to_string(), bridge, to, from, link, store, cursor: 0, warned: None, unlogged: 0 })
    }

    /// The bridge's next deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.bridge.poll_timeout()
    }

    /// Runs the bridge's due deadlines; the commands to hand to the core.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Vec<Command> {
        self.bridge.handle_timeout(now);
        self.pump(None)
    }

    /// Our own peer, published at start (and whenever the record is first known).
    pub fn announce(&mut self, record: &PeerRecord) -> Vec<Command> {
        self.bridge.own_peer(record);
        self.pump(None)
    }

    /// Something from the client. Returns the commands for the core.
    pub fn on_from(&mut self, m: FromNats, book: Option<&PeerBook>, now: Timestamp) -> Vec<Command> {
        match m {
            FromNats::Message { subject, payload } => {
                self.link.received.fetch_add(1, Ordering::Relaxed);
                let empty = PeerBook::default();
                match self.bridge.on_nats(&subject, &payload, book.unwrap_or(&empty), now) {
                    Ok(Handled::Done) => tracing::debug!(%subject, bytes = payload.len(), "NATS: message handled"),
                    Ok(Handled::Ignored) => tracing::trace!(%subject, "NATS: message ignored"),
                    Err(e) => self.malformed(&subject, &e, now),
                }
                self.pump(None)
            }
            FromNats::Reply { token, payload } => {
                tracing::debug!(token, bytes = payload.len(), "NATS: reply from the apps");
                if let Err(e) = self.bridge.on_reply(token, &payload, now) {
                    self.malformed("search reply", &e, now);
                }
                self.pump(None)
            }
            FromNats::Published(seqs) => {
                if let Some(store) = &self.store
                    && let Err(e) = store.mark_published(&seqs)
                {
                    tracing::warn!("NATS bridge: marking {} inbox entries published: {e}", seqs.len());
                }
                Vec::new()
            }
        }
    }

    fn malformed(&mut self, subject: &str, e: &BridgeError, now: Timestamp) {
        self.link.malformed.fetch_add(1, Ordering::Relaxed);
        self.link.set_error(format!("{subject}: {e}"));
        if self.warned.is_none_or(|t| now.since(t) >= MALFORMED_WARN_EVERY) {
            let more = std::mem::take(&mut self.unlogged);
            self.warned = Some(now);
            tracing::warn!(subject, more, "NATS: message dropped: {e}");
        } else {
            self.unlogged += 1;
            tracing::debug!(subject, "NATS: message dropped: {e}");
        }
    }

    /// An event of the core: the bridge's own searches' hits are published. Whether it answered
    /// a bridge command (the driver then has nothing to answer).
    pub fn on_event(&mut self, e: &Event, now: Timestamp) -> (bool, Vec<Command>) {
        let ours = self.bridge.on_event(e, now);
        if let Event::AppSendRefused { id, reason } = e
            && ours
        {
            tracing::info!(id, ?reason, "NATS bridge: a send was refused");
        }
        (ours, self.pump(None))
    }

    /// Hands the inbox entries committed since the last call to the mapping, in arrival order,
    /// and their publications to the client. Returns the commands for the core.
    pub fn feed_inbox(&mut self, now: Timestamp) -> Result<Vec<Command>, StoreError> {
        let Some(store) = self.store.clone() else {
            return Ok(Vec::new());
        };
        let mut commands = Vec::new();
        loop {
            if self.link.pending.load(Ordering::Relaxed) > MAX_PENDING {
                return Ok(commands);
            }
            let page: Vec<InboxRecord> = store.unpublished_after(self.cursor, INBOX_PAGE)?;
            if page.is_empty() {
                return Ok(commands);
            }
            let mut done = Vec::new();
            for r in page {
                self.cursor = r.seq;
                self.bridge.on_inbox(&r.entry, now);
                let before = commands.len();
                let tagged = self.pump_into(Some(r.seq), &mut commands);
                debug_assert!(commands.len() >= before);
                if !tagged {
                    done.push(r.seq);
                }
            }
            if !done.is_empty() {
                store.mark_published(&done)?;
            }
        }
    }

    /// Drains the mapping's actions: publications and requests to the client, commands returned.
    fn pump(&mut self, seq: Option<u64>) -> Vec<Command> {
        let mut commands = Vec::new();
        self.pump_into(seq, &mut commands);
        commands
    }

    /// As [`NatsBridge::pump`]; the last publication is tagged with `seq`. Whether one was.
    fn pump_into(&mut self, seq: Option<u64>, commands: &mut Vec<Command>) -> bool {
        let mut publications = Vec::new();
        while let Some(a) = self.bridge.poll_action() {
            match a {
                BridgeAction::Command(c) => commands.push(c),
                BridgeAction::Publish(p) => publications.push(p),
                BridgeAction::Request { token, publication } => {
                    tracing::debug!(token, subject = %publication.subject, "NATS: asking the apps");
                    let _ = self.to.unbounded_send(ToNats::Request { token, publication });
                }
                BridgeAction::EndRequest { token } => {
                    let _ = self.to.unbounded_send(ToNats::EndRequest { token });
                }
            }
        }
        let n = publications.len();
        for (i, publication) in publications.into_iter().enumerate() {
            self.link.pending.fetch_add(1, Ordering::Relaxed);
            let tag = if i + 1 == n { seq } else { None };
            let _ = self.to.unbounded_send(ToNats::Publish { publication, seq: tag });
        }
        n > 0 && seq.is_some()
    }

    /// The link for `status`.
    pub fn status(&self) -> NatsStatus {
        let l = &self.link;
        NatsStatus {
            url: self.url.clone(),
            connected: l.connected.load(Ordering::Relaxed),
            received: l.received.load(Ordering::Relaxed),
            malformed: l.malformed.load(Ordering::Relaxed),
            published: l.published.load(Ordering::Relaxed),
            pending: l.pending.load(Ordering::Relaxed),
            reconnects: l.reconnects.load(Ordering::Relaxed),
            searches: self.bridge.searches(),
            last_error: l.last_error.lock().ok().and_then(|g| g.clone()),
        }
    }
}

/// One publication waiting for the server.
struct Pending {
    publication: Publication,
    seq: Option<u64>,
}

/// The client thread: connects (in the background, retrying), subscribes, and serves both
/// directions until the driver drops its sender.
async fn client(
    url: String,
    subjects: Vec<String>,
    mut rx: mpsc::UnboundedReceiver<ToNats>,
    mut tx: mpsc::Sender<FromNats>,
    link: Arc<NatsLink>,
) {
    let (ev_tx, mut ev_rx) = mpsc::unbounded::<async_nats::Event>();
    let Some(nc) = connect(&url, ev_tx, &link).await else {
        return;
    };
    let (in_tx, mut in_rx) = mpsc::channel::<FromNats>(64);
    subscribe(&nc, subjects, &in_tx, &link).await;
    let sync_subject = format!("_OCD_SYNC.{}", nc.new_inbox().rsplit('.').next().unwrap_or("x"));
    let mut requests: HashMap<u64, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut retry = tokio::time::interval(Duration::from_millis(500));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ever_connected = false;
    loop {
        tokio::select! {
            cmd = rx.next() => match cmd {
                None => break,
                Some(ToNats::Publish { publication, seq }) => pending.push_back(Pending { publication, seq }),
                Some(ToNats::Request { token, publication }) => {
                    requests.insert(token, tokio::spawn(request(nc.clone(), in_tx.clone(), token, publication)));
                }
                Some(ToNats::EndRequest { token }) => {
                    if let Some(t) = requests.remove(&token) {
                        t.abort();
                    }
                }
            },
            m = in_rx.next() => {
                if let Some(m) = m && tx.send(m).await.is_err() {
                    break;
                }
            }
            e = ev_rx.next() => {
                if let Some(e) = e {
                    on_event(e, &url, &link, &mut ever_connected);
                }
            }
            _ = retry.tick() => {}
        }
        requests.retain(|_, t| !t.is_finished());
        if !pending.is_empty() && nc.connection_state() == async_nats::connection::State::Connected {
            match publish_batch(&nc, &sync_subject, &mut pending).await {
                Ok((count, seqs)) => {
                    link.published.fetch_add(count, Ordering::Relaxed);
                    link.pending.fetch_sub(count.min(link.pending.load(Ordering::Relaxed)), Ordering::Relaxed);
                    if !seqs.is_empty() && tx.send(FromNats::Published(seqs)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!("NATS bridge: publication not confirmed, will retry: {e}");
                    link.set_error(e);
                }
            }
        }
    }
    for (_, t) in requests {
        t.abort();
    }
    // Best effort: what is pending stays unpublished in the store and goes out after a restart.
    let _ = tokio::time::timeout(Duration::from_secs(1), nc.flush()).await;
}

/// Connects to `url` (retrying in the background until the server is up), its connection
/// events sent to `events`; `None` (the bridge is off) if the options are refused.
async fn connect(
    url: &str,
    events: mpsc::UnboundedSender<async_nats::Event>,
    link: &NatsLink,
) -> Option<async_nats::Client> {
    let options = async_nats::ConnectOptions::new()
        .name("ocd")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|attempt| {
            // 100 ms doubling to 5 s: a local server that restarts is back within seconds.
            Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(5))
        })
        .event_callback(move |e| {
            let events = events.clone();
            async move {
                let _ = events.unbounded_send(e);
            }
        });
    match options.connect(url).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(url, "NATS bridge: {e}; the bridge is off");
            link.set_error(e);
            None
        }
    }
}

/// Subscribes to each of `subjects`, its messages forwarded to `in_tx` by a task of its own.
async fn subscribe(nc: &async_nats::Client, subjects: Vec<String>, in_tx: &mpsc::Sender<FromNats>, link: &NatsLink) {
    for subject in subjects {
        match nc.subscribe(subject.clone()).await {
            Ok(mut sub) => {
                let mut in_tx = in_tx.clone();
                tokio::spawn(async move {
                    while let Some(m) = sub.next().await {
                        let msg = FromNats::Message { subject: m.subject.to_string(), payload: m.payload.to_vec() };
                        if in_tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => {
                tracing::error!(subject, "NATS bridge: cannot subscribe: {e}");
                link.set_error(e);
            }
        }
    }
}

/// A request: `publication` sent with a fresh inbox as its reply subject, every reply forwarded
/// to `in_tx` under `token` until the task is aborted (`EndRequest`) or the driver is gone.
async fn request(nc: async_nats::Client, mut in_tx: mpsc::Sender<FromNats>, token: u64, publication: Publication) {
    let inbox = nc.new_inbox();
    let mut sub = match nc.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => return tracing::debug!(token, "NATS bridge: request: {e}"),
    };
    let headers = headers(&publication.msg_id);
    if let Err(e) =
        nc.publish_with_reply_and_headers(publication.subject, inbox, headers, publication.payload.into()).await
    {
        return tracing::debug!(token, "NATS bridge: request: {e}");
    }
    while let Some(m) = sub.next().await {
        if in_tx.send(FromNats::Reply { token, payload: m.payload.to_vec() }).await.is_err() {
            return;
        }
    }
}

/// A connection event: the link's state and reconnect count, and the log.
fn on_event(e: async_nats::Event, url: &str, link: &NatsLink, ever_connected: &mut bool) {
    match e {
        async_nats::Event::Connected => {
            link.connected.store(true, Ordering::Relaxed);
            if *ever_connected {
                link.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            *ever_connected = true;
            tracing::info!(url, "NATS bridge: connected");
        }
        async_nats::Event::Disconnected => {
            link.connected.store(false, Ordering::Relaxed);
            tracing::warn!(url, "NATS bridge: disconnected; reconnecting, the daemon runs on");
        }
        other => tracing::debug!("NATS bridge: {other}"),
    }
}

/// The `Nats-Msg-Id` header, when there is an id.
fn headers(msg_id: &Option<String>) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    if let Some(id) = msg_id {
        h.insert("Nats-Msg-Id", id.as_str());
    }
    h
}

/// Publishes up to [`BATCH`] pending publications and confirms them with a round trip; on
/// success they leave the queue and their count and tagged inbox sequences are returned.
async fn publish_batch(
    nc: &async_nats::Client,
    sync_subject: &str,
    pending: &mut VecDeque<Pending>,
) -> Result<(u64, Vec<u64>), String> {
    let n = pending.len().min(BATCH);
    for p in pending.iter().take(n) {
        let pb = &p.publication;
        nc.publish_with_headers(pb.subject.clone(), headers(&pb.msg_id), pb.payload.clone().into())
            .await
            .map_err(|e| e.to_string())?;
    }
    // The server answers "no responders" once it has processed everything sent before.
    match tokio::time::timeout(CONFIRM_TIMEOUT, nc.request(sync_subject.to_string(), "".into())).await {
        Err(_) => return Err("no answer from the server in time".into()),
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {}
        Ok(Err(e)) => return Err(e.to_string()),
    }
    let seqs = pending.drain(..n).filter_map(|p| p.seq).collect();
    Ok((n as u64, seqs))
}
