//! The driver: the one loop, shared by both runtimes, that feeds a [`Peer`] its inputs and
//! executes its outputs over a [`Transport`], using a [`Runtime`] to spawn tasks and keep time.
//!
//! It takes no protocol decision. What it does own is plumbing policy:
//!
//! * **Framing.** Each connection has a reader task (bytes → [`FrameDecoder`] → messages) and a
//!   writer task (a bounded queue of encoded frames → bytes). A malformed or oversized frame
//!   closes that connection only ([`close_code::PROTOCOL`]) and the core hears `ConnectionDown`.
//! * **Slow peers.** The writer queue holds `send_queue` frames. A peer that lets it overflow is
//!   disconnected ([`close_code::SLOW_PEER`]) rather than buffered without bound; the core hears
//!   `ConnectionDown` and its own retry logic takes over. Readers apply back-pressure instead: a
//!   busy driver stops reading, and QUIC flow control slows the sender.
//! * **One connection per peer.** When a second connection to the same peer appears, a newer one
//!   in the same direction replaces the older (the peer reconnected); for opposite directions —
//!   both sides dialled at once — both ends keep the one dialled by the smaller peer id, so they
//!   agree without talking.
//! * **Graceful close.** When the core closes a connection, queued frames (a `Leave`, a `Refused`)
//!   are flushed and the stream finished before the QUIC close.
//! * **Time.** `now` is wall-clock milliseconds at start plus a monotonic clock, so the core never
//!   sees time go backwards.
//! * **Lookups.** A control-socket lookup becomes `Command::Lookup` with a fresh id; the driver
//!   keeps serving while it runs (any number at once, up to [`MAX_PENDING_LOOKUPS`]) and answers
//!   the client when the core's `Event::LookupDone` with that id arrives. The core always answers,
//!   but the wait is still bounded by the client's timeout, and a lookup whose client hung up is
//!   forgotten at once.
//! * **Searches.** A control-socket search becomes `Command::Search` with a fresh id and the
//!   client's user key (by default one of its own, `control-<id>`). Each `Event::SearchHit` is
//!   streamed to the client as it arrives and `Event::SearchDone` ends the answer. The client's
//!   bound ends it too (then, or when the client hangs up, the driver sends
//!   `Command::CancelSearch`, so the core stops the search and tells its indexer).
//!
//! * **Durability.** The core's [`Output::Persist`] and [`Output::Forget`] are committed to the
//!   durable [`Store`] before any output that follows them is executed (DESIGN §2 rule 2). The
//!   driver *group-commits*: after a wake it also takes whatever frames and control requests are
//!   already waiting (up to [`GROUP_MAX`] wakes), feeds them all to the core, then commits every
//!   persist and forget they produced in one write transaction (one fsync) and only then executes
//!   the other outputs, in order. Outputs that came before a persist are held back until the
//!   commit; none is ever executed before a persist that precedes it. A commit that fails stops
//!   the daemon (the core believes the state durable): [`run`] returns the error.
//! * **Sends.** A control-socket `send` becomes `Command::Send` with a fresh id; the core answers
//!   at once with `Event::AppAccepted` (executed after the commit of its persist: a critical
//!   message is on disk when the client hears "queued") or `Event::AppSendRefused`.
//!
//! Shape: [`run`] waits for the next wake (a control command, a connection set up, a frame or a
//! closed reader, the core's timer, a lookup's or search's bound, a client gone) and calls the
//! matching `Driver::on_*` handler; then it executes the core's outputs (`Driver::drain_outputs`
//! → `Driver::execute`) and refreshes the gauges. Every counter moves in [`Metrics::count`].

use super::app::{self, AppStatus, SendReply};
use super::control::{ControlCommand, ControlReply, ControlRequest, MAX_LOOKUP_TIMEOUT, Responder};
use super::journal::JournalWriter;
use super::lookup::LookupReport;
use super::metrics::{Counted, Metrics};
use super::nats::{FromNats, NatsBridge};
use super::search::{MAX_SEARCH_TIMEOUT, SearchDoneReply, SearchEndReason, SearchHitReply};
use super::status::StatusReport;
use super::store::{Durable, Store, StoreError};
use super::transport::{BoxFuture, ConnectionHandle, Established, Runtime, Transport, TransportError, close_code};
use crate::proto::wire::{FrameDecoder, WireError, encode_frame};
use crate::proto::{
    CloseReason, Command, Envelope, Event, Input, NewMessage, Output, Peer, PeerAddr, PeerId, RecordKey, SearchQuery,
    Timestamp,
};
use futures::channel::mpsc;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{FutureExt, SinkExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Read buffer per connection.
const READ_CHUNK: usize = 16 * 1024;
/// Queue from all connection readers to the driver.
const INBOX: usize = 4096;
/// Most control-socket lookups waiting for the core at once; more are refused.
pub const MAX_PENDING_LOOKUPS: usize = 256;
/// Most control-socket searches running at once; more are refused (the core's own cap is lower:
/// it ends a search beyond it as `TooMany`).
pub const MAX_PENDING_SEARCHES: usize = 256;
/// Most wakes (frames, control requests) fed to the core before their outputs are executed, so
/// that their persists share one commit.
pub const GROUP_MAX: usize = 64;

/// The driver's clock: wall-clock milliseconds at start, advanced by a monotonic clock.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall0: u64,
    inst0: Instant,
}

impl Clock {
    /// Starts the clock now.
    pub fn start() -> Self {
        let wall0 = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Clock { wall0, inst0: Instant::now() }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        Timestamp(self.wall0 + self.inst0.elapsed().as_millis() as u64)
    }

    /// The monotonic instant of `t`.
    pub fn instant(&self, t: Timestamp) -> Instant {
        self.inst0 + Duration::from_millis(t.0.saturating_sub(self.wall0))
    }
}

/// Settings of the driver (plumbing only; protocol settings live in the core's config).
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// Runtime name reported by `status` (`tokio` or `smol`).
    pub runtime_name: &'static str,
    /// Frames queued per connection before the peer is disconnected as too slow.
    pub send_queue: usize,
    /// Bound on dialling or accepting a connection.
    pub connect_timeout: Duration,
    /// How long a gracefully closed connection lingers so its last frames arrive.
    pub linger: Duration,
    /// The addresses this daemon advertises in its record and provider announcements (shown by
    /// `status`; empty: the transport's bound addresses).
    pub advertised: Vec<crate::proto::Addr>,
    /// The durable store the core's persist and forget outputs are committed to (`None`: they are
    /// dropped — tests only).
    pub store: Option<Arc<Store>>,
    /// Most wakes grouped into one commit ([`GROUP_MAX`]; 1: a commit per wake).
    pub group_max: usize,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            runtime_name: "tokio",
            send_queue: 1024,
            connect_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(250),
            advertised: Vec::new(),
            store: None,
            group_max: GROUP_MAX,
        }
    }
}

/// Why a connection's reader stopped.
#[derive(Debug)]
enum ReadEnd {
    Eof,
    Io(String),
    Protocol(WireError),
}

enum ConnEvent {
    Frame { conn: u64, peer: PeerId, message: Envelope },
    Closed { conn: u64, peer: PeerId, end: ReadEnd },
}

enum SetupEvent<T: Transport> {
    Accepted(Established<T>),
    Dialed { peer: PeerId, result: Result<Established<T>, TransportError> },
}

enum Outgoing {
    Frame(Vec<u8>),
    Close { code: u32, reason: &'static str },
}

/// A control-socket lookup waiting for the core's answer.
struct PendingLookup {
    key: RecordKey,
    started: Timestamp,
    /// The client's bound.
    timeout: Duration,
    reply: Responder,
}

/// A control-socket search running in the core.
struct PendingSearch {
    /// Whose search (for `Command::CancelSearch`).
    user: String,
    started: Timestamp,
    /// Hits streamed so far.
    hits: u32,
    reply: Responder,
}

/// A control-socket request whose client bound passed.
#[derive(Clone, Copy, Debug)]
enum Expired {
    Lookup(u64),
    Search(u64),
}

struct Conn<T: Transport> {
    id: u64,
    outbound: bool,
    handle: T::Handle,
    tx: mpsc::Sender<Outgoing>,
}

/// What woke the driver.
enum Wake<T: Transport> {
    Control(Option<ControlRequest>),
    Setup(SetupEvent<T>),
    Conn(ConnEvent),
    Timer,
    /// A lookup's or search's bound passed.
    Expired(Expired),
    /// A lookup's or search's client hung up.
    Abandoned,
    /// The NATS client has something (a message from the apps, a reply, a confirmation).
    Nats(FromNats),
}

/// What a daemon runs besides the core and its transport.
#[derive(Default)]
pub struct Extras {
    /// The NATS bridge (a node with `nats_url`).
    pub nats: Option<NatsBridge>,
    /// `--journal`: the journal, its setup record written (and the restored state's step).
    pub journal: Option<JournalWriter>,
}

/// Runs `peer` until a [`ControlCommand::Shutdown`] arrives on `control` (or every control
/// sender is dropped), then shuts down gracefully: the core says goodbye, queued frames are
/// flushed, connections are closed and the transport is shut down. Fails when a commit to the
/// durable store fails (the daemon must stop: the core believes the state durable).
#[allow(clippy::too_many_arguments)]
pub async fn run<T: Transport, R: Runtime>(
    rt: R,
    transport: T,
    peer: Peer,
    clock: Clock,
    options: DriverOptions,
    control: mpsc::Receiver<ControlRequest>,
    metrics: Arc<Metrics>,
    extras: Extras,
) -> Result<(), StoreError> {
    let mut d = Driver::new(rt, transport, peer, clock, options, control, metrics);
    d.nats = extras.nats;
    d.journal = extras.journal;
    d.start();
    while d.fatal.is_none() {
        d.arm_timer();
        if d.fatal.is_some() {
            break;
        }
        let wake = d.next_wake().await;
        let mut stop = d.on_wake(wake).is_break();
        // Group commit: what is already waiting joins this step, so its persists share a commit.
        let mut grouped = 1;
        while !stop && grouped < d.options.group_max.max(1) {
            let Some(wake) = d.try_ready() else { break };
            stop = d.on_wake(wake).is_break();
            grouped += 1;
        }
        d.drain_outputs();
        d.announce_to_nats();
        if let Some(j) = d.journal.as_mut() {
            j.flush();
        }
        d.metrics.observe(&d.peer, d.conns.len());
        d.observe_app();
        if let Some(n) = &d.nats {
            d.metrics.observe_nats(&n.status());
        }
        if stop {
            break;
        }
    }
    if let Some(e) = &d.fatal {
        tracing::error!("stopping: the durable store failed: {e}");
    }
    d.on_shutdown().await
}

/// The loop's state: the core, its connections, and the sources that wake the loop.
struct Driver<T: Transport, R: Runtime> {
    rt: R,
    transport: T,
    peer: Peer,
    me: PeerId,
    options: DriverOptions,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// When we started (for `status`).
    started: Timestamp,
    /// Our advertised address (for `status`).
    local: PeerAddr,
    /// The transport's bound address (for `status`).
    bound: PeerAddr,
    conns: HashMap<PeerId, Conn<T>>,
    dialing: HashSet<PeerId>,
    next_conn: u64,
    /// Control-socket lookups waiting for the core, by command id.
    lookups: HashMap<u64, PendingLookup>,
    next_lookup: u64,
    /// Control-socket searches running in the core, by command id.
    searches: HashMap<u64, PendingSearch>,
    next_search: u64,
    /// Control-socket sends waiting for the core's answer, by command id.
    sends: HashMap<u64, Responder>,
    next_send: u64,
    /// Persist and forget outputs not yet committed.
    durable: Vec<Durable>,
    /// Outputs held back until the commit of the persists among them.
    held: Vec<Output>,
    /// A commit failed: nothing more is executed, the daemon stops.
    fatal: Option<StoreError>,
    /// An application-message event passed since the gauges were last updated.
    app_dirty: bool,
    /// Inbox entries (the store's count at start plus those appended since).
    inbox_size: u64,
    control: mpsc::Receiver<ControlRequest>,
    setup_tx: mpsc::UnboundedSender<SetupEvent<T>>,
    setup_rx: mpsc::UnboundedReceiver<SetupEvent<T>>,
    conn_tx: mpsc::Sender<ConnEvent>,
    conn_rx: mpsc::Receiver<ConnEvent>,
    expired_tx: mpsc::UnboundedSender<Expired>,
    expired_rx: mpsc::UnboundedReceiver<Expired>,
    /// The core's next deadline and a sleep armed for it.
    timer: Option<(Timestamp, BoxFuture<()>)>,
    /// Protocol-error WARNs are rate-limited: when the last one was logged, and how many were
    /// left out since (a flood of bad frames is one line per interval, and counted).
    protocol_warned: Option<Timestamp>,
    protocol_unlogged: u64,
    /// The NATS bridge, when `nats_url` is set (a node's).
    nats: Option<NatsBridge>,
    /// Whether our own peer was published to the apps.
    nats_announced: bool,
    /// Inbox entries were committed since the bridge last read the inbox.
    nats_feed: bool,
    /// `--journal`: every input and output of the core.
    journal: Option<JournalWriter>,
}

/// At most one `closing connection` WARN per this interval; the others are counted into the next.
const PROTOCOL_WARN_EVERY: Duration = Duration::from_secs(10);

impl<T: Transport, R: Runtime> Driver<T, R> {
    fn new(
        rt: R,
        transport: T,
        peer: Peer,
        clock: Clock,
        options: DriverOptions,
        control: mpsc::Receiver<ControlRequest>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let bound = transport.local_addr();
        let local = if options.advertised.is_empty() {
            bound.clone()
        } else {
            PeerAddr { id: bound.id, addrs: options.advertised.clone() }
        };
        let (setup_tx, setup_rx) = mpsc::unbounded::<SetupEvent<T>>();
        let (conn_tx, conn_rx) = mpsc::channel::<ConnEvent>(INBOX);
        let (expired_tx, expired_rx) = mpsc::unbounded::<Expired>();
        Driver {
            rt,
            transport,
            me: peer.id(),
            peer,
            options,
            metrics,
            started: clock.now(),
            clock,
            local,
            bound,
            conns: HashMap::new(),
            dialing: HashSet::new(),
            next_conn: 1,
            lookups: HashMap::new(),
            next_lookup: 1,
            searches: HashMap::new(),
            next_search: 1,
            sends: HashMap::new(),
            next_send: 1,
            durable: Vec::new(),
            held: Vec::new(),
            fatal: None,
            app_dirty: true,
            inbox_size: 0,
            control,
            setup_tx,
            setup_rx,
            conn_tx,
            conn_rx,
            expired_tx,
            expired_rx,
            timer: None,
            protocol_warned: None,
            protocol_unlogged: 0,
            nats: None,
            nats_announced: false,
            nats_feed: true,
            journal: None,
        }
    }

    /// Starts accepting connections and gives the core its first step.
    fn start(&mut self) {
        if let Some(store) = &self.options.store {
            self.inbox_size = store.stats().map(|s| s.inbox).unwrap_or(0);
        }
        self.spawn_accept_loop();
        tracing::info!(peer = %self.me, address = %self.local, runtime = self.options.runtime_name, "ocd started");
        self.feed(Input::Timeout, self.clock.now());
        self.drain_outputs();
    }

    /// Accept loop: each incoming connection finishes its handshake in its own task.
    fn spawn_accept_loop(&self) {
        let (rt, transport, tx) = (self.rt.clone(), self.transport.clone(), self.setup_tx.clone());
        let timeout = self.options.connect_timeout;
        self.rt.spawn(Box::pin(async move {
            while let Some(incoming) = transport.accept().await {
                let tx = tx.clone();
                let sleep = rt.sleep(timeout);
                rt.spawn(Box::pin(async move {
                    match futures::future::select(Box::pin(incoming), sleep).await {
                        futures::future::Either::Left((Ok(est), _)) => {
                            let _ = tx.unbounded_send(SetupEvent::Accepted(est));
                        }
                        futures::future::Either::Left((Err(e), _)) => tracing::debug!("inbound connection failed: {e}"),
                        futures::future::Either::Right(_) => tracing::debug!("inbound connection timed out"),
                    }
                }));
            }
        }));
    }

    /// Runs a timeout that is already due — never starve the timer behind a busy inbox — and
    /// arms the timer for the core's next deadline.
    fn arm_timer(&mut self) {
        let now = self.clock.now();
        if self.peer.poll_timeout().is_some_and(|t| t <= now) {
            self.feed(Input::Timeout, now);
            self.drain_outputs();
        }
        if self.nats.as_ref().and_then(|n| n.poll_timeout()).is_some_and(|t| t <= now) {
            self.on_nats_timeout(now);
            self.drain_outputs();
        }
        let next = match (self.peer.poll_timeout(), self.nats.as_ref().and_then(|n| n.poll_timeout())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (next, &self.timer) {
            (None, _) => self.timer = None,
            (Some(t), Some((armed, _))) if *armed == t => {}
            (Some(t), _) => self.timer = Some((t, self.rt.sleep_until(self.clock.instant(t)))),
        }
    }

    /// Waits for the next thing to do, in priority order: control, connection setup, frames, the
    /// timer, expired lookups and searches, abandoned ones.
    async fn next_wake(&mut self) -> Wake<T> {
        futures::future::poll_fn(|cx| {
            if let Poll::Ready(r) = self.control.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Control(r));
            }
            if let Poll::Ready(Some(e)) = self.setup_rx.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Setup(e));
            }
            if let Poll::Ready(Some(e)) = self.conn_rx.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Conn(e));
            }
            if let Some((_, t)) = self.timer.as_mut()
                && t.poll_unpin(cx).is_ready()
            {
                return Poll::Ready(Wake::Timer);
            }
            if let Poll::Ready(Some(e)) = self.expired_rx.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Expired(e));
            }
            if let Some(n) = self.nats.as_mut()
                && let Poll::Ready(Some(m)) = n.from.poll_next_unpin(cx)
            {
                return Poll::Ready(Wake::Nats(m));
            }
            if self.lookups.values_mut().any(|p| p.reply.poll_canceled(cx).is_ready())
                || self.searches.values_mut().any(|p| p.reply.poll_canceled(cx).is_ready())
            {
                return Poll::Ready(Wake::Abandoned);
            }
            Poll::Pending
        })
        .await
    }

    /// A wake that is ready now, without waiting: a frame or a control request (the sources a
    /// burst comes from). `None` when neither has anything.
    fn try_ready(&mut self) -> Option<Wake<T>> {
        if let Ok(e) = self.conn_rx.try_recv() {
            return Some(Wake::Conn(e));
        }
        match self.control.try_recv() {
            Ok(r) => Some(Wake::Control(Some(r))),
            Err(mpsc::TryRecvError::Closed) => Some(Wake::Control(None)),
            Err(mpsc::TryRecvError::Empty) => None,
        }
    }

    /// Handles one wake. `Break` on shutdown (a control `shutdown`, or every control sender gone).
    fn on_wake(&mut self, wake: Wake<T>) -> ControlFlow<()> {
        let now = self.clock.now();
        match wake {
            Wake::Control(None) => return ControlFlow::Break(()),
            Wake::Control(Some(req)) => return self.on_control(req, now),
            Wake::Setup(SetupEvent::Accepted(est)) => self.on_connection(est, now),
            Wake::Setup(SetupEvent::Dialed { peer, result }) => self.on_dialed(peer, result, now),
            Wake::Conn(ConnEvent::Frame { conn, peer, message }) => self.on_frame(conn, peer, message, now),
            Wake::Conn(ConnEvent::Closed { conn, peer, end }) => self.on_connection_closed(conn, peer, end, now),
            Wake::Timer => self.on_timer(now),
            Wake::Expired(Expired::Lookup(id)) => self.on_lookup_expired(id, now),
            Wake::Expired(Expired::Search(id)) => self.on_search_expired(id, now),
            Wake::Abandoned => self.on_abandoned(now),
            Wake::Nats(m) => self.on_nats(m, now),
        }
        ControlFlow::Continue(())
    }

    // ---- wake handlers ---------------------------------------------------------------------------

    /// Whether `conn` is still `peer`'s connection (not one since replaced or closed).
    fn is_current(&self, peer: &PeerId, conn: u64) -> bool {
        self.conns.get(peer).is_some_and(|c| c.id == conn)
    }

    /// An authenticated frame from a connection's reader.
    fn on_frame(&mut self, conn: u64, from: PeerId, message: Envelope, now: Timestamp) {
        if self.is_current(&from, conn) {
            self.metrics.count(Counted::Received(&message));
            self.feed(Input::Received { from, message }, now);
        }
    }

    /// An established connection, inbound or outbound: the driver takes it over, resolving
    /// duplicates (one connection per peer).
    fn on_connection(&mut self, est: Established<T>, now: Timestamp) {
        let id = est.peer;
        if id == self.me {
            est.handle.close(close_code::PROTOCOL, "connection to self");
            return;
        }
        if let Some(existing) = self.conns.get(&id) {
            // Opposite directions: both sides keep the connection dialled by the smaller id.
            let keep_outbound = self.me < id;
            if existing.outbound != est.outbound && existing.outbound == keep_outbound {
                est.handle.close(close_code::NORMAL, "duplicate connection");
                return;
            }
            if let Some(old) = self.conns.remove(&id) {
                old.handle.close(close_code::NORMAL, "replaced by a newer connection");
            }
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        let (tx, rx) = mpsc::channel::<Outgoing>(self.options.send_queue);
        let Established { peer: _, remote_addr, outbound, handle, send, recv } = est;
        self.rt.spawn(Box::pin(write_loop::<T, R>(send, rx, handle.clone(), self.rt.clone(), self.options.linger)));
        self.rt.spawn(Box::pin(read_loop(recv, conn, id, self.conn_tx.clone())));
        self.conns.insert(id, Conn { id: conn, outbound, handle, tx });
        tracing::debug!(peer = %id.short(), outbound, addr = ?remote_addr, "connection up");
        self.feed(Input::ConnectionUp { peer: id, addr: remote_addr, outbound }, now);
    }

    /// A dial we started finished (or timed out).
    fn on_dialed(&mut self, peer: PeerId, result: Result<Established<T>, TransportError>, now: Timestamp) {
        self.dialing.remove(&peer);
        match result {
            Ok(est) => self.on_connection(est, now),
            Err(e) => self.on_dial_failed(peer, e, now),
        }
    }

    /// A dial failed; the core hears it unless the peer reached us meanwhile.
    fn on_dial_failed(&mut self, peer: PeerId, error: TransportError, now: Timestamp) {
        tracing::debug!(peer = %peer.short(), "dial failed: {error}");
        if !self.conns.contains_key(&peer) {
            self.feed(Input::ConnectFailed { peer }, now);
        }
    }

    /// A connection's reader stopped: end of stream, I/O error, or a bad frame (then the
    /// connection is closed as a protocol error).
    fn on_connection_closed(&mut self, conn: u64, from: PeerId, end: ReadEnd, now: Timestamp) {
        if !self.is_current(&from, conn) {
            return;
        }
        let c = self.conns.remove(&from);
        match &end {
            ReadEnd::Protocol(e) => {
                self.metrics.count(Counted::ProtocolError);
                if self.protocol_warned.is_none_or(|t| now.since(t) >= PROTOCOL_WARN_EVERY) {
                    let more = std::mem::take(&mut self.protocol_unlogged);
                    self.protocol_warned = Some(now);
                    if more > 0 {
                        tracing::warn!(peer = %from.short(), more, "closing connection: {e} ({more} more since the last such line)");
                    } else {
                        tracing::warn!(peer = %from.short(), "closing connection: {e}");
                    }
                } else {
                    self.protocol_unlogged += 1;
                    tracing::debug!(peer = %from.short(), "closing connection: {e}");
                }
                if let Some(c) = c {
                    c.handle.close(close_code::PROTOCOL, "bad frame");
                }
            }
            ReadEnd::Io(e) => tracing::debug!(peer = %from.short(), "connection lost: {e}"),
            ReadEnd::Eof => tracing::debug!(peer = %from.short(), "connection closed by peer"),
        }
        self.feed(Input::ConnectionDown { peer: from }, now);
    }

    /// The core's (or the bridge's) deadline passed.
    fn on_timer(&mut self, now: Timestamp) {
        self.timer = None;
        if self.peer.poll_timeout().is_some_and(|t| t <= now) {
            self.feed(Input::Timeout, now);
        }
        if self.nats.as_ref().and_then(|n| n.poll_timeout()).is_some_and(|t| t <= now) {
            self.on_nats_timeout(now);
        }
        self.metrics.observe_pool(&self.peer);
    }

    // ---- the core ----------------------------------------------------------------------------------

    /// Hands the core an input (journaled first, when a journal is kept).
    fn feed(&mut self, input: Input, now: Timestamp) {
        if let Some(j) = self.journal.as_mut() {
            j.input(now, &input);
        }
        self.peer.handle(input, now);
    }

    /// Takes the core's next output (chained into the journal's hash).
    fn poll_core(&mut self) -> Option<Output> {
        let o = self.peer.poll_output()?;
        if let Some(j) = self.journal.as_mut() {
            j.output(&o);
        }
        Some(o)
    }

    // ---- the NATS bridge -------------------------------------------------------------------------

    /// Hands the bridge's commands to the core.
    fn run_commands(&mut self, commands: Vec<Command>, now: Timestamp) {
        for c in commands {
            self.feed(Input::Command(c), now);
        }
    }

    /// Something from the NATS client.
    fn on_nats(&mut self, m: FromNats, now: Timestamp) {
        let Some(n) = self.nats.as_mut() else { return };
        let confirmed = matches!(m, FromNats::Published(_));
        let commands = n.on_from(m, self.peer.peer_book(), now);
        self.run_commands(commands, now);
        if confirmed {
            // The client had room again: read on if the inbox was left behind.
            self.nats_feed = true;
        }
    }

    /// The bridge's deadline passed (a resource search went idle).
    fn on_nats_timeout(&mut self, now: Timestamp) {
        if let Some(n) = self.nats.as_mut() {
            let commands = n.handle_timeout(now);
            self.run_commands(commands, now);
        }
    }

    /// Publishes our own peer to the apps once our record exists.
    fn announce_to_nats(&mut self) {
        if self.nats_announced {
            return;
        }
        let (Some(n), Some(record)) = (self.nats.as_mut(), self.peer.record()) else { return };
        self.nats_announced = true;
        let commands = n.announce(&record.clone());
        self.run_commands(commands, self.clock.now());
        self.drain_outputs();
    }

    /// Hands newly committed inbox entries to the bridge.
    fn feed_nats(&mut self) {
        if !std::mem::take(&mut self.nats_feed) {
            return;
        }
        let now = self.clock.now();
        let Some(n) = self.nats.as_mut() else { return };
        match n.feed_inbox(now) {
            Ok(commands) => self.run_commands(commands, now),
            Err(e) => tracing::warn!("NATS bridge: reading the inbox: {e}"),
        }
    }

    /// A control-socket command. `Break` on `shutdown`.
    fn on_control(&mut self, req: ControlRequest, now: Timestamp) -> ControlFlow<()> {
        match req.command {
            ControlCommand::Status => {
                let report = StatusReport::build(
                    &self.peer,
                    self.options.runtime_name,
                    &self.local,
                    &self.bound,
                    self.started,
                    now,
                    self.metrics.snapshot(),
                );
                let mut report = report;
                report.app = self.app_status(now);
                report.nats = self.nats.as_ref().map(|n| n.status());
                req.reply.finish(ControlReply::Status(Box::new(report)));
            }
            ControlCommand::Shutdown => {
                req.reply.finish(ControlReply::ShuttingDown);
                return ControlFlow::Break(());
            }
            ControlCommand::Lookup { key, timeout_ms } => self.on_lookup(key, timeout_ms, req.reply, now),
            ControlCommand::Search { needle, timeout_ms, user } => {
                self.on_search(&needle, user, timeout_ms, req.reply, now)
            }
            ControlCommand::Send { to, protocol, datatype, user, payload } => {
                self.on_send(&to, &protocol, datatype, user, &payload, req.reply, now)
            }
            // Answered by the control socket's thread from the store; never reaches the driver
            // unless the daemon runs without one.
            ControlCommand::Inbox { .. } => {
                req.reply.finish(ControlReply::Error { message: "this daemon keeps no inbox".into() })
            }
        }
        ControlFlow::Continue(())
    }

    /// A control-socket send: parsed, handed to the core with a fresh id; the core answers at once
    /// (see [`Driver::on_event`]).
    #[allow(clippy::too_many_arguments)]
    fn on_send(
        &mut self,
        to: &str,
        protocol: &str,
        datatype: Option<i64>,
        user: String,
        payload: &str,
        reply: Responder,
        now: Timestamp,
    ) {
        let parsed =
            app::parse_target(to).and_then(|to| Ok((to, app::parse_protocol(protocol)?))).and_then(|(to, protocol)| {
                let payload = data_encoding::BASE64
                    .decode(payload.trim().as_bytes())
                    .map_err(|e| format!("the payload is not base64: {e}"))?;
                Ok(NewMessage { to, protocol, datatype, user, payload })
            });
        let message = match parsed {
            Ok(m) => m,
            Err(message) => return reply.finish(ControlReply::Error { message }),
        };
        let id = self.next_send;
        self.next_send += 1;
        tracing::debug!(id, to = %message.to, protocol = message.protocol.name(), bytes = message.payload.len(), "send");
        // Registered before the core runs: it answers at once.
        self.sends.insert(id, reply);
        self.feed(Input::Command(Command::Send { id, message }), now);
    }

    /// The DNT part of the status (a node's).
    fn app_status(&self, now: Timestamp) -> Option<AppStatus> {
        let store = self.options.store.as_ref();
        let stats = store.and_then(|s| match s.stats() {
            Ok(st) => Some(st),
            Err(e) => {
                tracing::warn!("store statistics: {e}");
                None
            }
        });
        let commits = (
            self.metrics.store_commits.load(std::sync::atomic::Ordering::Relaxed),
            self.metrics.store_commit_micros.load(std::sync::atomic::Ordering::Relaxed),
        );
        let with_store = store.zip(stats.as_ref()).map(|(s, st)| (s.path(), st));
        AppStatus::build(&self.peer, with_store, commits, now)
    }

    /// Updates the queue-depth and inbox gauges after application-message activity.
    fn observe_app(&mut self) {
        if !std::mem::take(&mut self.app_dirty) {
            return;
        }
        if let Some(q) = self.peer.app_queue() {
            let depth: usize = q.classes.iter().map(|(_, n, _)| *n).sum();
            Metrics::set(&self.metrics.app_queue_depth, depth as u64);
        }
        Metrics::set(&self.metrics.inbox_size, self.inbox_size);
    }

    /// A control-socket lookup: handed to the core with a fresh id, bounded by the client's
    /// timeout; refused when [`MAX_PENDING_LOOKUPS`] are already waiting.
    fn on_lookup(&mut self, key: RecordKey, timeout_ms: u64, reply: Responder, now: Timestamp) {
        if self.lookups.len() >= MAX_PENDING_LOOKUPS {
            reply.finish(ControlReply::Error {
                message: format!("{MAX_PENDING_LOOKUPS} lookups are already running; try again"),
            });
            return;
        }
        let id = self.next_lookup;
        self.next_lookup += 1;
        let timeout = Duration::from_millis(timeout_ms).clamp(Duration::from_millis(1), MAX_LOOKUP_TIMEOUT);
        let (sleep, tx) = (self.rt.sleep(timeout), self.expired_tx.clone());
        self.rt.spawn(Box::pin(async move {
            sleep.await;
            let _ = tx.unbounded_send(Expired::Lookup(id));
        }));
        tracing::debug!(id, %key, "lookup");
        // Registered before the core runs: it may answer at once.
        self.lookups.insert(id, PendingLookup { key: key.clone(), started: now, timeout, reply });
        self.feed(Input::Command(Command::Lookup { id, key }), now);
    }

    /// A lookup's bound passed without an answer from the core.
    fn on_lookup_expired(&mut self, id: u64, now: Timestamp) {
        let Some(p) = self.lookups.remove(&id) else {
            return;
        };
        self.metrics.count(Counted::LookupTimedOut);
        tracing::info!(key = %p.key, waited_ms = now.0.saturating_sub(p.started.0), "lookup: no answer in time");
        let message = format!("lookup of {}: no answer within {}", p.key, humantime::format_duration(p.timeout));
        p.reply.finish(ControlReply::Error { message });
    }

    /// A control-socket search: the needle is parsed, handed to the core with a fresh id under
    /// the client's user key (default: one of its own), and bounded by the client's timeout.
    fn on_search(&mut self, needle: &str, user: Option<String>, timeout_ms: u64, reply: Responder, now: Timestamp) {
        let query = match SearchQuery::parse(needle) {
            Ok(q) => q,
            Err(e) => {
                return reply.finish(ControlReply::Error { message: format!("cannot search for `{needle}`: {e}") });
            }
        };
        let user = match user.map(|u| super::search::parse_user(&u)).transpose() {
            Ok(u) => u,
            Err(e) => return reply.finish(ControlReply::Error { message: e }),
        };
        if self.searches.len() >= MAX_PENDING_SEARCHES {
            return reply.finish(ControlReply::Error {
                message: format!("{MAX_PENDING_SEARCHES} searches are already running; try again"),
            });
        }
        let id = self.next_search;
        self.next_search += 1;
        let user = user.unwrap_or_else(|| format!("control-{id}"));
        let timeout = Duration::from_millis(timeout_ms).clamp(Duration::from_millis(1), MAX_SEARCH_TIMEOUT);
        let (sleep, tx) = (self.rt.sleep(timeout), self.expired_tx.clone());
        self.rt.spawn(Box::pin(async move {
            sleep.await;
            let _ = tx.unbounded_send(Expired::Search(id));
        }));
        tracing::debug!(id, %user, needle, "search");
        self.metrics.count(Counted::SearchStarted);
        // Registered before the core runs: it may answer at once.
        self.searches.insert(id, PendingSearch { user: user.clone(), started: now, hits: 0, reply });
        self.feed(Input::Command(Command::Search { id, user, query }), now);
    }

    /// A search's bound passed: the client gets its end, the core cancels the search.
    fn on_search_expired(&mut self, id: u64, now: Timestamp) {
        let Some(p) = self.searches.remove(&id) else {
            return;
        };
        let elapsed_ms = now.0.saturating_sub(p.started.0);
        tracing::debug!(id, user = %p.user, hits = p.hits, "search: client bound reached");
        p.reply.finish(ControlReply::SearchDone(SearchDoneReply {
            hits: p.hits,
            end: SearchEndReason::Timeout,
            elapsed_ms,
        }));
        self.feed(Input::Command(Command::CancelSearch { user: p.user }), now);
    }

    /// Some client hung up: forget its lookup, cancel its search.
    fn on_abandoned(&mut self, now: Timestamp) {
        self.lookups.retain(|id, p| {
            let keep = !p.reply.is_canceled();
            if !keep {
                tracing::debug!(id, key = %p.key, "lookup abandoned by its client");
            }
            keep
        });
        let gone: Vec<u64> = self.searches.iter().filter(|(_, p)| p.reply.is_canceled()).map(|(id, _)| *id).collect();
        for id in gone {
            if let Some(p) = self.searches.remove(&id) {
                tracing::debug!(id, user = %p.user, "search abandoned by its client: cancelling it");
                self.feed(Input::Command(Command::CancelSearch { user: p.user }), now);
            }
        }
    }

    /// Shuts down gracefully: the core says goodbye, queued frames are flushed, every
    /// connection is closed and the transport is shut down. Returns the store's failure, if one
    /// stopped the daemon.
    async fn on_shutdown(mut self) -> Result<(), StoreError> {
        tracing::info!("shutting down");
        self.feed(Input::Command(Command::Shutdown), self.clock.now());
        self.drain_outputs();
        // Whatever the core did not close itself is closed now, gracefully.
        for (_, c) in self.conns.drain() {
            let mut tx = c.tx;
            if tx.try_send(Outgoing::Close { code: close_code::NORMAL, reason: "shutdown" }).is_err() {
                c.handle.close(close_code::NORMAL, "shutdown");
            }
        }
        self.rt.sleep(self.options.linger + Duration::from_millis(50)).await;
        self.transport.shutdown().await;
        if let Some(j) = self.journal.take() {
            j.finish();
        }
        tracing::info!("stopped");
        match self.fatal.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    // ---- the core's outputs ----------------------------------------------------------------------

    /// Executes every pending output of the core: first commits every persist and forget among
    /// them in one transaction, then executes the others in order (repeatedly, as executing may
    /// feed the core again). After a failed commit nothing is executed any more.
    fn drain_outputs(&mut self) {
        loop {
            let mut held = std::mem::take(&mut self.held);
            while let Some(out) = self.poll_core() {
                match out {
                    Output::Persist(p) => self.durable.push(Durable::Persist(p)),
                    Output::Forget(f) => self.durable.push(Durable::Forget(f)),
                    other => held.push(other),
                }
            }
            if !self.commit_durable() {
                // Outputs after an uncommitted persist must not run; the daemon stops.
                held.clear();
            } else if self.nats.is_some() && self.nats_feed {
                self.feed_nats();
                while let Some(out) = self.poll_core() {
                    match out {
                        Output::Persist(p) => self.durable.push(Durable::Persist(p)),
                        Output::Forget(f) => self.durable.push(Durable::Forget(f)),
                        other => held.push(other),
                    }
                }
                if !self.commit_durable() {
                    held.clear();
                }
            }
            if held.is_empty() {
                self.held = held;
                return;
            }
            for out in held.drain(..) {
                self.execute(out);
            }
            self.held = held;
        }
    }

    /// Commits the pending persist and forget outputs. `false` once a commit failed.
    fn commit_durable(&mut self) -> bool {
        if self.fatal.is_some() {
            self.durable.clear();
            return false;
        }
        if self.durable.is_empty() {
            return true;
        }
        let Some(store) = &self.options.store else {
            tracing::trace!(items = self.durable.len(), "no store: persist outputs dropped");
            self.durable.clear();
            return true;
        };
        match store.commit(&self.durable) {
            Ok(stats) => {
                self.metrics.count(Counted::Commit { items: stats.items, elapsed: stats.elapsed });
                self.inbox_size += stats.inbox_appended;
                if stats.inbox_appended > 0 {
                    self.app_dirty = true;
                    self.nats_feed = true;
                }
                tracing::trace!(items = stats.items, micros = stats.elapsed.as_micros() as u64, "committed");
                self.durable.clear();
                true
            }
            Err(e) => {
                tracing::error!(items = self.durable.len(), "commit to the durable store failed: {e}");
                self.durable.clear();
                self.fatal = Some(e);
                false
            }
        }
    }

    fn execute(&mut self, out: Output) {
        match out {
            Output::Connect { peer } => self.dial(peer),
            Output::Send { to, message } => self.send(to, &message),
            Output::Close { peer, reason } => self.close(peer, reason),
            Output::Event(e) => self.on_event(e),
            // Sorted out by `drain_outputs`: never executed.
            Output::Persist(_) | Output::Forget(_) => {}
        }
    }

    fn dial(&mut self, pa: PeerAddr) {
        let id = pa.id;
        if id == self.me || self.dialing.contains(&id) {
            return;
        }
        if let Some(c) = self.conns.remove(&id) {
            // The core asks for a fresh connection although one exists: replace it.
            c.handle.close(close_code::NORMAL, "replaced");
        }
        self.dialing.insert(id);
        let connect = self.transport.connect(pa);
        let sleep = self.rt.sleep(self.options.connect_timeout);
        let tx = self.setup_tx.clone();
        self.rt.spawn(Box::pin(async move {
            let result = match futures::future::select(connect, sleep).await {
                futures::future::Either::Left((r, _)) => r,
                futures::future::Either::Right(_) => Err(TransportError::Connect("timed out".into())),
            };
            let _ = tx.unbounded_send(SetupEvent::Dialed { peer: id, result });
        }));
    }

    /// Queues a frame; a peer whose queue is full is disconnected as too slow.
    fn send(&mut self, to: PeerId, message: &Envelope) {
        let Some(c) = self.conns.get_mut(&to) else {
            // The connection went away and the core will hear it: nothing to send on.
            tracing::trace!(peer = %to.short(), kind = message.kind(), "dropping message: no connection");
            return;
        };
        let result = c.tx.try_send(Outgoing::Frame(encode_frame(message)));
        self.metrics.count(Counted::Sent { message, queued: result.is_ok() });
        if let Err(e) = result {
            let c = self.conns.remove(&to);
            if e.is_full() {
                self.metrics.count(Counted::SlowPeer);
                tracing::warn!(peer = %to.short(), queue = self.options.send_queue, "peer too slow: send queue full, disconnecting");
            }
            if let Some(c) = c {
                c.handle.close(close_code::SLOW_PEER, "send queue full");
            }
            self.feed(Input::ConnectionDown { peer: to }, self.clock.now());
        }
    }

    /// Closes a connection gracefully: its queued frames go out first.
    fn close(&mut self, peer: PeerId, reason: CloseReason) {
        let Some(c) = self.conns.remove(&peer) else {
            return;
        };
        let code = match reason {
            CloseReason::HandshakeFailed | CloseReason::ProtocolViolation | CloseReason::Banned => close_code::PROTOCOL,
            _ => close_code::NORMAL,
        };
        let mut tx = c.tx;
        if tx.try_send(Outgoing::Close { code, reason: close_reason_text(reason) }).is_err() {
            c.handle.close(code, close_reason_text(reason));
        }
    }

    /// An event of the core: counted, logged, and a finished lookup answered.
    fn on_event(&mut self, e: Event) {
        self.metrics.count(Counted::Event(&e));
        if let Some(n) = self.nats.as_mut() {
            let now = self.clock.now();
            let (_, commands) = n.on_event(&e, now);
            self.run_commands(commands, now);
        }
        if super::metrics::app_event_index(&e).is_some() {
            self.app_dirty = true;
        }
        match &e {
            Event::AppAccepted { id, message, class } => {
                tracing::debug!(id, %message, class = class.name(), "message accepted");
                if let Some(reply) = self.sends.remove(id) {
                    let sent =
                        SendReply { id: message.to_string(), class: class.name().into(), state: "queued".into() };
                    reply.finish(ControlReply::Sent(sent));
                }
            }
            Event::AppSendRefused { id, reason } => {
                tracing::info!(id, ?reason, "send refused");
                if let Some(reply) = self.sends.remove(id) {
                    let message = app::describe_refusal(*reason, self.peer.config());
                    reply.finish(ControlReply::Error { message });
                }
            }
            Event::AppDelivered { message, to, attempts, .. } => {
                tracing::debug!(%message, to = %to.short(), attempts, "message delivered")
            }
            Event::AppAbandoned { message, reason } => tracing::warn!(%message, ?reason, "message abandoned"),
            Event::AppIncomingRefused { from, reason } => {
                tracing::info!(from = %from.short(), ?reason, "incoming message refused")
            }
            Event::LookupDone { id, key, record, hops, attempts } => {
                tracing::info!(%key, found = record.is_some(), hops, attempts, "lookup done");
                if let Some(p) = self.lookups.remove(id) {
                    let report =
                        LookupReport::new(&p.key, record.as_ref(), *hops, *attempts, p.started, self.clock.now());
                    p.reply.finish(ControlReply::Lookup(Box::new(report)));
                }
            }
            Event::SearchHit { id, record, from } => {
                tracing::debug!(id, peer = %record.body.peer_id.short(), via = %from.short(), "search hit");
                if let Some(p) = self.searches.get_mut(id) {
                    p.hits = p.hits.saturating_add(1);
                    let hit = SearchHitReply::new(record, from, self.clock.now());
                    p.reply.progress(ControlReply::SearchHit(Box::new(hit)));
                }
            }
            Event::SearchDone { id, hits, end } => {
                tracing::info!(id, hits, ?end, "search done");
                if let Some(p) = self.searches.remove(id) {
                    let elapsed_ms = self.clock.now().0.saturating_sub(p.started.0);
                    let end = SearchEndReason::from(*end);
                    p.reply.finish(ControlReply::SearchDone(SearchDoneReply { hits: *hits, end, elapsed_ms }));
                }
            }
            Event::ForgedHitDropped { .. } => tracing::warn!(event = ?e),
            Event::IndexerAdded { .. }
            | Event::IndexerLive { .. }
            | Event::IndexerDown { .. }
            | Event::IndexerEvicted { .. }
            | Event::SeedRecovery { .. }
            | Event::PeerBanned { .. }
            | Event::RecordRejected { .. }
            | Event::MeshNeighbour { .. } => tracing::info!(event = ?e),
            // Counted (`ocd_handshake_failures_total`); a line each would let a flood fill the log.
            Event::HandshakeFailed { .. } => tracing::debug!(event = ?e),
            _ => tracing::debug!(event = ?e),
        }
    }
}

fn close_reason_text(r: CloseReason) -> &'static str {
    match r {
        CloseReason::HandshakeFailed => "network key proof failed",
        CloseReason::HandshakeTimeout => "handshake timed out",
        CloseReason::ProtocolViolation => "protocol violation",
        CloseReason::Idle => "idle",
        CloseReason::Banned => "banned",
        CloseReason::Shutdown => "shutdown",
        CloseReason::Evicted => "evicted",
    }
}

async fn read_loop<S: futures::io::AsyncRead + Unpin>(
    mut recv: S,
    conn: u64,
    peer: PeerId,
    mut tx: mpsc::Sender<ConnEvent>,
) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let end = 'outer: loop {
        match recv.read(&mut buf).await {
            Ok(0) => break ReadEnd::Eof,
            Ok(n) => {
                decoder.extend(&buf[..n]);
                loop {
                    match decoder.next_message() {
                        Ok(Some(message)) => {
                            if tx.send(ConnEvent::Frame { conn, peer, message }).await.is_err() {
                                return; // the driver is gone
                            }
                        }
                        Ok(None) => break,
                        Err(e) => break 'outer ReadEnd::Protocol(e),
                    }
                }
            }
            Err(e) => break ReadEnd::Io(e.to_string()),
        }
    };
    let _ = tx.send(ConnEvent::Closed { conn, peer, end }).await;
}

async fn write_loop<T: Transport, R: Runtime>(
    mut send: T::SendStream,
    mut rx: mpsc::Receiver<Outgoing>,
    handle: T::Handle,
    rt: R,
    linger: Duration,
) {
    let (code, reason) = loop {
        match rx.next().await {
            Some(Outgoing::Frame(bytes)) => {
                if send.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Some(Outgoing::Close { code, reason }) => break (code, reason),
            None => break (close_code::NORMAL, "closed"),
        }
    };
    let _ = send.flush().await;
    let _ = send.close().await;
    rt.sleep(linger).await;
    handle.close(code, reason);
}
