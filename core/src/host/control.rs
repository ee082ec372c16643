//! The local control socket: a Unix socket in the data directory (mode 0600) over which
//! `ocd status`, `ocd lookup`, `ocd search`, `ocd send`, `ocd inbox` and the devnet talk to a
//! running daemon.
//!
//! ## Protocol
//!
//! The client writes one JSON line, a [`ControlCommand`]. The daemon answers with JSON lines, each
//! a [`ControlReply`]: zero or more *progress* lines, then exactly one *final* line
//! ([`ControlReply::is_final`]), after which it closes the connection. A search has progress
//! lines — one [`ControlReply::SearchHit`] per verified hit as it arrives — and ends with
//! [`ControlReply::SearchDone`] (or [`ControlReply::Error`]); an inbox listing has one
//! [`ControlReply::InboxEntry`] per entry and ends with [`ControlReply::InboxDone`] (with `follow`,
//! only when the daemon stops). Every other command is answered by its final line alone, so a
//! client that reads one line keeps working for them.
//!
//! ```text
//! → {"command":"search","needle":"carol","timeout_ms":30000}
//! ← {"reply":"search_hit","hit":{"peer_id":"…","did":"…","name":"Carol","addrs":["…"],"expires_at":"…"},…}
//! ← {"reply":"search_done","hits":1,"end":"idle","elapsed_ms":5012}
//! ```
//!
//! ## Inside the daemon
//!
//! The server runs on its own thread and hands each request to the driver through a bounded
//! channel, with a [`Responder`]; the driver answers from its own state, so the control path never
//! touches the core concurrently. The inbox is the exception: the connection's thread reads it
//! from the durable store itself ([`Store`]'s read transactions run beside the driver's writes),
//! and waits for new commits with [`Store::wait_inbox`] to follow it. A request that waits on the network (a lookup, a search) is
//! bounded by the driver; if its client hangs up first, the server drops its end of the
//! [`Responder`] so the driver notices ([`Responder::poll_canceled`]), forgets the lookup and
//! cancels the search.

use super::app::{INBOX_PAGE, InboxDone, InboxItem, SendReply};
use super::lookup::{self, LookupReport};
use super::search::{DEFAULT_SEARCH_TIMEOUT, MAX_SEARCH_TIMEOUT, SearchDoneReply, SearchHitReply};
use super::status::StatusReport;
use super::store::Store;
use crate::proto::RecordKey;
use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Longest accepted request line (a `send` carries its payload in base64).
const MAX_REQUEST: u64 = 1 << 20;
/// Longest accepted reply line (a status of a large indexer).
const MAX_REPLY: u64 = 16 << 20;
/// How long a request may wait for the driver (lookups and searches: their own timeout, see
/// [`ControlCommand::Lookup`] and [`ControlCommand::Search`]).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on a lookup (`ocd lookup --timeout`).
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest lookup bound the daemon accepts.
pub const MAX_LOOKUP_TIMEOUT: Duration = Duration::from_secs(300);

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlCommand {
    /// A [`StatusReport`].
    Status,
    /// Shut down gracefully (same as SIGTERM).
    Shutdown,
    /// Find a peer's record by DID or peer id; answered with [`ControlReply::Lookup`], or an
    /// error if the core has not answered within `timeout_ms`.
    Lookup {
        /// What to find, as `/pid/<hex>` or `/node/<did>` on the wire.
        #[serde(with = "lookup::key_text")]
        key: RecordKey,
        /// Bound on the wait, in milliseconds (default 15 s, at most 5 min).
        #[serde(default = "default_lookup_timeout_ms")]
        timeout_ms: u64,
    },
    /// Search the federation for peers (DESIGN §7): answered with one [`ControlReply::SearchHit`]
    /// per verified hit as it arrives, then [`ControlReply::SearchDone`] — when the daemon's search
    /// goes idle, or after `timeout_ms` — or [`ControlReply::Error`] for a bad needle. Closing the
    /// connection cancels the search.
    Search {
        /// A peer id (64 hex characters), a DID, or a name substring (case-insensitive).
        needle: String,
        /// Bound on the search, in milliseconds (default 30 s, at most 5 min).
        #[serde(default = "default_search_timeout_ms")]
        timeout_ms: u64,
        /// Whose search: a newer search of the same user cancels this one. Default: a key of its
        /// own, so that concurrent clients never cancel each other.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Send an application message (DESIGN §8): answered with [`ControlReply::Sent`] once the
    /// core accepted it (a critical one durably queued), or [`ControlReply::Error`] when refused.
    Send {
        /// A peer id (64 hex characters) or a DID.
        to: String,
        /// `create`, `update`, `delete`, `verify`, `planner`, `considers`, `admiralty-config`,
        /// `minio-config` or `search`.
        protocol: String,
        /// OpenCloud datatype code.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        datatype: Option<i64>,
        /// OpenCloud user.
        #[serde(default)]
        user: String,
        /// The payload, base64.
        #[serde(default)]
        payload: String,
    },
    /// The inbox: one [`ControlReply::InboxEntry`] per message received after arrival sequence
    /// `since`, in arrival order, then [`ControlReply::InboxDone`]; with `follow`, new entries
    /// keep coming as they are committed until the client hangs up or the daemon stops.
    Inbox {
        /// List entries after this arrival sequence (0: all).
        #[serde(default)]
        since: u64,
        /// Keep streaming new entries.
        #[serde(default)]
        follow: bool,
    },
}

fn default_lookup_timeout_ms() -> u64 {
    DEFAULT_LOOKUP_TIMEOUT.as_millis() as u64
}

fn default_search_timeout_ms() -> u64 {
    DEFAULT_SEARCH_TIMEOUT.as_millis() as u64
}

impl ControlCommand {
    /// Whether the answer may take any time (an inbox listing streams for as long as it has
    /// entries, a follow forever): the client then bounds each line, not the whole answer.
    pub fn unbounded(&self) -> bool {
        matches!(self, ControlCommand::Inbox { .. })
    }

    /// How long a client should wait for the final reply to this command (for an
    /// [`unbounded`](Self::unbounded) one: for each line).
    pub fn reply_timeout(&self) -> Duration {
        match self {
            ControlCommand::Lookup { timeout_ms, .. } => {
                Duration::from_millis(*timeout_ms).min(MAX_LOOKUP_TIMEOUT) + REPLY_TIMEOUT
            }
            ControlCommand::Search { timeout_ms, .. } => {
                Duration::from_millis(*timeout_ms).min(MAX_SEARCH_TIMEOUT) + REPLY_TIMEOUT
            }
            _ => REPLY_TIMEOUT * 2,
        }
    }

    /// Whether the answer waits on the network (then the server watches for the client leaving).
    fn waits_on_network(&self) -> bool {
        matches!(self, ControlCommand::Lookup { .. } | ControlCommand::Search { .. })
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ControlCommand::Status => "status",
            ControlCommand::Shutdown => "shutdown",
            ControlCommand::Lookup { .. } => "lookup",
            ControlCommand::Search { .. } => "search",
            ControlCommand::Send { .. } => "send",
            ControlCommand::Inbox { .. } => "inbox",
        }
    }
}

/// What the daemon answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ControlReply {
    /// The status.
    Status(Box<StatusReport>),
    /// Shutdown started.
    ShuttingDown,
    /// A lookup finished (found or not).
    Lookup(Box<LookupReport>),
    /// A verified hit of a running search (a progress line: more follow).
    SearchHit(Box<SearchHitReply>),
    /// A search ended.
    SearchDone(SearchDoneReply),
    /// A message was accepted for delivery.
    Sent(SendReply),
    /// One inbox entry (a progress line: more follow).
    InboxEntry(Box<InboxItem>),
    /// An inbox listing ended.
    InboxDone(InboxDone),
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

impl ControlReply {
    /// Whether this is the last line of an answer ([`ControlReply::SearchHit`] and
    /// [`ControlReply::InboxEntry`] are not).
    pub fn is_final(&self) -> bool {
        !matches!(self, ControlReply::SearchHit(_) | ControlReply::InboxEntry(_))
    }

    fn shutting_down() -> Self {
        ControlReply::Error { message: "the daemon is shutting down".into() }
    }
}

/// A request on its way to the driver.
#[derive(Debug)]
pub struct ControlRequest {
    /// The command.
    pub command: ControlCommand,
    /// Where the answer goes.
    pub reply: Responder,
}

impl ControlRequest {
    /// A request for `command`, and the receiving end of its answer.
    pub fn new(command: ControlCommand) -> (ControlRequest, Replies) {
        let (reply, replies) = Responder::channel();
        (ControlRequest { command, reply }, replies)
    }
}

/// The driver's end of one request's answer: any number of progress replies
/// ([`Responder::progress`]), then one final reply ([`Responder::finish`]).
#[derive(Debug)]
pub struct Responder {
    progress: mpsc::UnboundedSender<ControlReply>,
    last: oneshot::Sender<ControlReply>,
}

/// The server's end of one request's answer (see [`Responder`]).
#[derive(Debug)]
pub struct Replies {
    progress: mpsc::UnboundedReceiver<ControlReply>,
    /// `None` once the final reply (or the driver's hang-up) was seen.
    last: Option<oneshot::Receiver<ControlReply>>,
    /// Replies seen but not handed out yet.
    queued: VecDeque<ControlReply>,
}

impl Responder {
    /// A connected pair.
    pub fn channel() -> (Responder, Replies) {
        let (ptx, prx) = mpsc::unbounded();
        let (ltx, lrx) = oneshot::channel();
        (Responder { progress: ptx, last: ltx }, Replies { progress: prx, last: Some(lrx), queued: VecDeque::new() })
    }

    /// Sends a progress reply; `false` if nobody listens any more.
    pub fn progress(&self, reply: ControlReply) -> bool {
        self.progress.unbounded_send(reply).is_ok()
    }

    /// Sends the final reply (ignored if nobody listens any more).
    pub fn finish(self, reply: ControlReply) {
        let _ = self.last.send(reply);
    }

    /// Whether the client is gone (the server dropped its end).
    pub fn is_canceled(&self) -> bool {
        self.last.is_canceled()
    }

    /// Ready once the client is gone; registers `cx` for that.
    pub fn poll_canceled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.last.poll_canceled(cx)
    }
}

impl Replies {
    /// The next reply, in the driver's order (every progress reply before the final one); `None`
    /// after the final one, or once the driver dropped the [`Responder`] without answering.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<ControlReply>> {
        if let Some(r) = self.queued.pop_front() {
            return Poll::Ready(Some(r));
        }
        let Some(last) = &mut self.last else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(Some(r)) = self.progress.poll_next_unpin(cx) {
            return Poll::Ready(Some(r));
        }
        match last.poll_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.last = None;
                // Progress sent before the final reply may have landed after the poll above.
                while let Ok(r) = self.progress.try_recv() {
                    self.queued.push_back(r);
                }
                self.queued.extend(result.ok());
                Poll::Ready(self.queued.pop_front())
            }
        }
    }
}

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another daemon is already listening on the socket.
    #[error("{0}: another daemon is already running with this data directory")]
    AlreadyRunning(PathBuf),
    /// No daemon is listening.
    #[error("{path}: no daemon is running here ({source}); is `ocd run` started with this data directory?")]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Socket I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The daemon answered something unreadable.
    #[error("bad reply from the daemon: {0}")]
    BadReply(String),
}

/// Starts the control server on `path` (a stale socket file is replaced; a live one is an error),
/// without a store: `inbox` is answered with an error.
pub fn serve(path: &Path, requests: mpsc::Sender<ControlRequest>) -> Result<(), ControlError> {
    serve_with_store(path, requests, None)
}

/// Starts the control server on `path`; `inbox` requests read `store` from the connection's thread.
pub fn serve_with_store(
    path: &Path,
    requests: mpsc::Sender<ControlRequest>,
    store: Option<Arc<Store>>,
) -> Result<(), ControlError> {
    // Held weakly: the store closes when the daemon lets go of it, not when this thread ends.
    let store = store.as_ref().map(Arc::downgrade);
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::thread::Builder::new()
        .name("ocd-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let requests = requests.clone();
                let store = store.as_ref().map(std::sync::Weak::upgrade);
                // One short-lived thread per client, so a stuck client never blocks the others.
                let _ = std::thread::Builder::new().name("ocd-control-conn".into()).spawn(move || {
                    let _ = answer(stream, requests, store.flatten());
                });
            }
        })
        .map_err(io)?;
    Ok(())
}

fn answer(
    stream: UnixStream,
    mut requests: mpsc::Sender<ControlRequest>,
    store: Option<Arc<Store>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    let mut line = String::new();
    let n = BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    if n as u64 >= MAX_REQUEST && !line.ends_with('\n') {
        let message = format!("bad request: longer than {} KiB", MAX_REQUEST / 1024);
        return write_reply(&stream, &ControlReply::Error { message });
    }
    let command = match serde_json::from_str::<ControlCommand>(line.trim()) {
        Ok(command) => command,
        Err(e) => return write_reply(&stream, &ControlReply::Error { message: format!("bad request: {e}") }),
    };
    if let ControlCommand::Inbox { since, follow } = command {
        return match store {
            Some(store) => answer_inbox(&stream, &store, since, follow),
            None => write_reply(&stream, &ControlReply::Error { message: "this daemon keeps no inbox".into() }),
        };
    }
    let waits_on_network = command.waits_on_network();
    let (request, mut replies) = ControlRequest::new(command);
    if futures::executor::block_on(futures::SinkExt::send(&mut requests, request)).is_err() {
        return write_reply(&stream, &ControlReply::shutting_down());
    }
    // A quick answer is awaited as is; one that waits on the network is relayed line by line
    // while the client is watched: if it leaves, dropping `replies` tells the driver.
    let mut gone = if waits_on_network { watch_client(&stream) } else { None };
    let result = loop {
        let next = futures::executor::block_on(futures::future::poll_fn(|cx| {
            if let Poll::Ready(r) = replies.poll_next(cx) {
                return Poll::Ready(Some(r.unwrap_or_else(ControlReply::shutting_down)));
            }
            match gone.as_mut().map(|g| g.poll_unpin(cx)) {
                Some(Poll::Ready(_)) => Poll::Ready(None),
                _ => Poll::Pending,
            }
        }));
        let Some(reply) = next else {
            break Ok(()); // the client hung up
        };
        if let Err(e) = write_reply(&stream, &reply) {
            break Err(e);
        }
        if reply.is_final() {
            break Ok(());
        }
    };
    if gone.is_some() {
        // Unblock the watcher thread.
        let _ = stream.shutdown(std::net::Shutdown::Read);
    }
    result
}

/// Streams the inbox after `since` from `store`, then (with `follow`) every entry committed later,
/// until the client hangs up or the store is closed.
fn answer_inbox(stream: &UnixStream, store: &Store, since: u64, follow: bool) -> std::io::Result<()> {
    let gone = if follow { watch_client(stream) } else { None };
    let mut gone = gone;
    let mut after = since;
    let mut count = 0u64;
    loop {
        let page = match store.inbox_after(after, INBOX_PAGE) {
            Ok(page) => page,
            Err(e) => return write_reply(stream, &ControlReply::Error { message: e.to_string() }),
        };
        for record in &page {
            write_reply(stream, &ControlReply::InboxEntry(Box::new(InboxItem::of(record))))?;
            after = record.seq;
            count += 1;
        }
        if page.len() == INBOX_PAGE {
            continue;
        }
        if !follow {
            return write_reply(
                stream,
                &ControlReply::InboxDone(InboxDone { count, last_seq: after, end: "listed".into() }),
            );
        }
        // Wait for a commit, checking every second whether the client is still there.
        let (_, closed) = store.wait_inbox(after, Duration::from_secs(1));
        if gone.as_mut().is_some_and(|g| !matches!(g.try_recv(), Ok(None))) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        if closed && store.inbox_last_seq().unwrap_or(after) <= after {
            let done = InboxDone { count, last_seq: after, end: "shutdown".into() };
            return write_reply(stream, &ControlReply::InboxDone(done));
        }
    }
}

fn write_reply(stream: &UnixStream, reply: &ControlReply) -> std::io::Result<()> {
    let mut out = serde_json::to_string(reply).unwrap_or_else(|_| "{}".into());
    out.push('\n');
    (&*stream).write_all(out.as_bytes())
}

/// Watches the client while its answer is pending: the receiver completes when the client
/// closed its end. A helper thread blocks reading the (otherwise idle) client socket; end of
/// stream or an error there means the client is gone. `None` if the watch cannot be set up (the
/// answer is then relayed without it).
fn watch_client(stream: &UnixStream) -> Option<oneshot::Receiver<()>> {
    let watch = stream.try_clone().ok()?;
    let (gone_tx, gone_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("ocd-control-watch".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            loop {
                match (&watch).read(&mut byte) {
                    Ok(0) => break,
                    Ok(_) => {} // nothing more is expected from the client; ignore it
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = gone_tx.send(());
        })
        .ok()?;
    Some(gone_rx)
}

/// Sends one command to the daemon listening on `path` and returns its final reply (waiting at
/// most [`ControlCommand::reply_timeout`]); progress replies, if any, are skipped.
pub fn request(path: &Path, command: &ControlCommand) -> Result<ControlReply, ControlError> {
    request_streaming(path, command, |_| {})
}

/// Sends one command to the daemon listening on `path`, hands every progress reply to
/// `on_progress` as it arrives, and returns the final reply. The whole answer is bounded by
/// [`ControlCommand::reply_timeout`]; returning (or the process ending) closes the connection,
/// which cancels a search still running.
pub fn request_streaming(
    path: &Path,
    command: &ControlCommand,
    mut on_progress: impl FnMut(ControlReply),
) -> Result<ControlReply, ControlError> {
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    let stream =
        UnixStream::connect(path).map_err(|source| ControlError::NotRunning { path: path.to_path_buf(), source })?;
    let unbounded = command.unbounded();
    let deadline = Instant::now() + command.reply_timeout();
    stream.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_string(command).map_err(|e| ControlError::BadReply(e.to_string()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut reader = BufReader::new(&stream);
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let line_bound = match command {
            // A follow waits for new messages as long as it takes.
            ControlCommand::Inbox { follow: true, .. } => None,
            _ if unbounded => Some(command.reply_timeout()),
            _ => Some(left),
        };
        stream.set_read_timeout(line_bound).map_err(io)?;
        let mut reply = String::new();
        let n = (&mut reader).take(MAX_REPLY).read_line(&mut reply).map_err(io)?;
        if n == 0 {
            return Err(ControlError::BadReply("the daemon closed the connection before answering".into()));
        }
        let reply: ControlReply =
            serde_json::from_str(reply.trim()).map_err(|e| ControlError::BadReply(e.to_string()))?;
        if reply.is_final() {
            return Ok(reply);
        }
        on_progress(reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn control_socket_round_trip_and_single_instance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(4);
        serve(&path, tx.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(serve(&path, tx), Err(ControlError::AlreadyRunning(_))));
        let server = std::thread::spawn(move || {
            let req = futures::executor::block_on(rx.next()).unwrap();
            assert_eq!(req.command, ControlCommand::Shutdown);
            req.reply.finish(ControlReply::ShuttingDown);
        });
        assert_eq!(request(&path, &ControlCommand::Shutdown).unwrap(), ControlReply::ShuttingDown);
        server.join().unwrap();
    }

    #[test]
    fn lookup_command_carries_its_key_as_text() {
        let key = lookup::parse_key("did-of-bob").unwrap();
        let cmd = ControlCommand::Lookup { key: key.clone(), timeout_ms: 2_000 };
        let line = serde_json::to_string(&cmd).unwrap();
        assert_eq!(line, r#"{"command":"lookup","key":"/node/did-of-bob","timeout_ms":2000}"#);
        assert_eq!(serde_json::from_str::<ControlCommand>(&line).unwrap(), cmd);
        let default: ControlCommand = serde_json::from_str(r#"{"command":"lookup","key":"/node/x"}"#).unwrap();
        assert!(matches!(default, ControlCommand::Lookup { timeout_ms: 15_000, .. }));
        assert!(serde_json::from_str::<ControlCommand>(r#"{"command":"lookup","key":"/pid/zz"}"#).is_err());
    }

    #[test]
    fn lookup_whose_client_hangs_up_is_dropped_for_the_driver() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(4);
        serve(&path, tx).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        (&client).write_all(b"{\"command\":\"lookup\",\"key\":\"/node/x\"}\n").unwrap();
        let req = futures::executor::block_on(rx.next()).unwrap();
        assert!(matches!(req.command, ControlCommand::Lookup { .. }));
        assert!(!req.reply.is_canceled());
        drop(client);
        // The server notices the hang-up and drops its end: the driver sees a cancelled reply.
        let mut reply = req.reply;
        futures::executor::block_on(futures::future::poll_fn(|cx| reply.poll_canceled(cx)));
        assert!(reply.is_canceled());
    }

    fn hit(name: &str) -> ControlReply {
        use super::super::search::SearchHitView;
        ControlReply::SearchHit(Box::new(SearchHitReply {
            hit: SearchHitView {
                peer_id: "ab".repeat(32),
                did: format!("did-{name}"),
                name: name.into(),
                addrs: vec!["127.0.0.1:4001".into()],
                expires_at: "2030-01-01T00:00:00Z".into(),
            },
            expires_at_ms: 1_893_456_000_000,
            via: "cd".repeat(32),
            at_ms: 1_893_455_000_000,
        }))
    }

    #[test]
    fn search_command_and_replies_on_the_wire() {
        let cmd: ControlCommand = serde_json::from_str(r#"{"command":"search","needle":"carol"}"#).unwrap();
        assert_eq!(cmd, ControlCommand::Search { needle: "carol".into(), timeout_ms: 30_000, user: None });
        assert_eq!(cmd.reply_timeout(), Duration::from_secs(35));
        let line = serde_json::to_string(&cmd).unwrap();
        assert_eq!(line, r#"{"command":"search","needle":"carol","timeout_ms":30000}"#);
        let with_user = ControlCommand::Search { needle: "x".into(), timeout_ms: 1, user: Some("ops".into()) };
        let line = serde_json::to_string(&with_user).unwrap();
        assert_eq!(serde_json::from_str::<ControlCommand>(&line).unwrap(), with_user);
        let huge = ControlCommand::Search { needle: "x".into(), timeout_ms: u64::MAX, user: None };
        assert_eq!(huge.reply_timeout(), MAX_SEARCH_TIMEOUT + REPLY_TIMEOUT);

        let h = hit("carol");
        assert!(!h.is_final());
        let line = serde_json::to_string(&h).unwrap();
        assert!(line.starts_with(r#"{"reply":"search_hit","hit":{"peer_id":"#), "{line}");
        assert_eq!(serde_json::from_str::<ControlReply>(&line).unwrap(), h);
        let done = ControlReply::SearchDone(SearchDoneReply {
            hits: 1,
            end: super::super::search::SearchEndReason::Idle,
            elapsed_ms: 5_010,
        });
        assert!(done.is_final() && ControlReply::ShuttingDown.is_final());
        let line = serde_json::to_string(&done).unwrap();
        assert_eq!(line, r#"{"reply":"search_done","hits":1,"end":"idle","elapsed_ms":5010}"#);
        assert_eq!(serde_json::from_str::<ControlReply>(&line).unwrap(), done);
    }

    #[test]
    fn search_hits_stream_in_order_then_the_final_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(4);
        serve(&path, tx).unwrap();
        let server = std::thread::spawn(move || {
            let req = futures::executor::block_on(rx.next()).unwrap();
            assert!(matches!(req.command, ControlCommand::Search { .. }));
            assert!(req.reply.progress(hit("a")));
            std::thread::sleep(Duration::from_millis(50));
            // Progress sent right before the final reply still comes first.
            assert!(req.reply.progress(hit("b")));
            assert!(req.reply.progress(hit("c")));
            let end = super::super::search::SearchEndReason::Idle;
            req.reply.finish(ControlReply::SearchDone(SearchDoneReply { hits: 3, end, elapsed_ms: 7 }));
        });
        let mut seen = Vec::new();
        let cmd = ControlCommand::Search { needle: "x".into(), timeout_ms: 5_000, user: None };
        let last = request_streaming(&path, &cmd, |r| match r {
            ControlReply::SearchHit(h) => seen.push(h.hit.name),
            other => panic!("not a progress reply: {other:?}"),
        })
        .unwrap();
        server.join().unwrap();
        assert_eq!(seen, ["a", "b", "c"]);
        assert!(matches!(last, ControlReply::SearchDone(SearchDoneReply { hits: 3, .. })), "{last:?}");
        // `request` skips the progress lines.
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(4);
        let path2 = dir.path().join("d.sock");
        serve(&path2, tx).unwrap();
        let server = std::thread::spawn(move || {
            let req = futures::executor::block_on(rx.next()).unwrap();
            req.reply.progress(hit("a"));
            req.reply.finish(ControlReply::Error { message: "stop".into() });
        });
        assert_eq!(request(&path2, &cmd).unwrap(), ControlReply::Error { message: "stop".into() });
        server.join().unwrap();
    }

    #[test]
    fn search_whose_client_hangs_up_mid_stream_is_cancelled_for_the_driver() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(4);
        serve(&path, tx).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        (&client).write_all(b"{\"command\":\"search\",\"needle\":\"x\"}\n").unwrap();
        let req = futures::executor::block_on(rx.next()).unwrap();
        assert!(req.reply.progress(hit("a")));
        let mut line = String::new();
        BufReader::new(&client).read_line(&mut line).unwrap();
        assert!(line.contains("search_hit"), "{line}");
        assert!(!req.reply.is_canceled());
        drop(client);
        let mut reply = req.reply;
        futures::executor::block_on(futures::future::poll_fn(|cx| reply.poll_canceled(cx)));
        assert!(reply.is_canceled());
        assert!(!reply.progress(hit("b")), "nobody listens any more");
    }

    #[test]
    fn driver_gone_without_answer_is_an_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(4);
        serve(&path, tx).unwrap();
        let server = std::thread::spawn(move || {
            let req = futures::executor::block_on(rx.next()).unwrap();
            drop(req);
        });
        let cmd = ControlCommand::Search { needle: "x".into(), timeout_ms: 5_000, user: None };
        let reply = request(&path, &cmd).unwrap();
        server.join().unwrap();
        assert!(matches!(&reply, ControlReply::Error { message } if message.contains("shutting down")), "{reply:?}");
    }

    #[test]
    fn no_daemon_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = request(&dir.path().join("none.sock"), &ControlCommand::Status).unwrap_err();
        assert!(e.to_string().contains("no daemon is running"), "{e}");
    }
}
