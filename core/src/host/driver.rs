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

use super::control::{ControlCommand, ControlReply, ControlRequest, MAX_LOOKUP_TIMEOUT};
use super::lookup::LookupReport;
use super::metrics::Metrics;
use super::status::StatusReport;
use super::transport::{BoxFuture, ConnectionHandle, Established, Runtime, Transport, TransportError, close_code};
use crate::proto::wire::{FrameDecoder, WireError, encode_frame};
use crate::proto::{CloseReason, Command, Event, Input, Message, Output, Peer, PeerAddr, PeerId, RecordKey, Timestamp};
use futures::channel::{mpsc, oneshot};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{FutureExt, SinkExt, StreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Read buffer per connection.
const READ_CHUNK: usize = 16 * 1024;
/// Queue from all connection readers to the driver.
const INBOX: usize = 4096;
/// Most control-socket lookups waiting for the core at once; more are refused.
pub const MAX_PENDING_LOOKUPS: usize = 256;

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
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            runtime_name: "tokio",
            send_queue: 1024,
            connect_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(250),
            advertised: Vec::new(),
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
    Frame { conn: u64, peer: PeerId, message: Message },
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
    reply: oneshot::Sender<ControlReply>,
}

struct Conn<T: Transport> {
    id: u64,
    outbound: bool,
    handle: T::Handle,
    tx: mpsc::Sender<Outgoing>,
}

enum Wake<T: Transport> {
    Control(Option<ControlRequest>),
    Setup(SetupEvent<T>),
    Conn(ConnEvent),
    Timer,
    /// A lookup's bound passed.
    LookupExpired(u64),
    /// A lookup's client hung up.
    LookupAbandoned,
}

/// Runs `peer` until a [`ControlCommand::Shutdown`] arrives on `control` (or every control
/// sender is dropped), then shuts down gracefully: the core says goodbye, queued frames are
/// flushed, connections are closed and the transport is shut down.
pub async fn run<T: Transport, R: Runtime>(
    rt: R,
    transport: T,
    mut peer: Peer,
    clock: Clock,
    options: DriverOptions,
    mut control: mpsc::Receiver<ControlRequest>,
    metrics: Arc<Metrics>,
) {
    let started = clock.now();
    let me = peer.id();
    let bound = transport.local_addr();
    let local = if options.advertised.is_empty() {
        bound.clone()
    } else {
        PeerAddr { id: bound.id, addrs: options.advertised.clone() }
    };
    let (setup_tx, mut setup_rx) = mpsc::unbounded::<SetupEvent<T>>();
    let (conn_tx, mut conn_rx) = mpsc::channel::<ConnEvent>(INBOX);
    let (expired_tx, mut expired_rx) = mpsc::unbounded::<u64>();
    let mut d = State::<T, R> {
        rt: rt.clone(),
        transport: transport.clone(),
        me,
        options: options.clone(),
        metrics: metrics.clone(),
        clock,
        conns: HashMap::new(),
        dialing: HashSet::new(),
        next_conn: 1,
        setup_tx: setup_tx.clone(),
        conn_tx,
        lookups: HashMap::new(),
        next_lookup: 1,
    };

    // Accept loop: each incoming connection finishes its handshake in its own task.
    {
        let (rt2, transport2, tx, timeout) = (rt.clone(), transport.clone(), setup_tx.clone(), options.connect_timeout);
        rt.spawn(Box::pin(async move {
            while let Some(incoming) = transport2.accept().await {
                let tx = tx.clone();
                let sleep = rt2.sleep(timeout);
                rt2.spawn(Box::pin(async move {
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

    tracing::info!(peer = %me, address = %local, runtime = options.runtime_name, "ocd started");
    peer.handle(Input::Timeout, clock.now());
    d.drain(&mut peer);

    let mut timer: Option<(Timestamp, BoxFuture<()>)> = None;
    loop {
        // Never starve the timer behind a busy inbox.
        let now = clock.now();
        if peer.poll_timeout().is_some_and(|t| t <= now) {
            peer.handle(Input::Timeout, now);
            d.drain(&mut peer);
        }
        match (peer.poll_timeout(), &timer) {
            (None, _) => timer = None,
            (Some(t), Some((armed, _))) if *armed == t => {}
            (Some(t), _) => timer = Some((t, rt.sleep_until(clock.instant(t)))),
        }
        let wake = futures::future::poll_fn(|cx| {
            if let Poll::Ready(r) = control.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Control(r));
            }
            if let Poll::Ready(Some(e)) = setup_rx.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Setup(e));
            }
            if let Poll::Ready(Some(e)) = conn_rx.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Conn(e));
            }
            if let Some((_, t)) = timer.as_mut()
                && t.poll_unpin(cx).is_ready()
            {
                return Poll::Ready(Wake::Timer);
            }
            if let Poll::Ready(Some(id)) = expired_rx.poll_next_unpin(cx) {
                return Poll::Ready(Wake::LookupExpired(id));
            }
            if d.lookups.values_mut().any(|p| p.reply.poll_canceled(cx).is_ready()) {
                return Poll::Ready(Wake::LookupAbandoned);
            }
            Poll::Pending
        })
        .await;
        let now = clock.now();
        match wake {
            Wake::Timer => {
                timer = None;
                peer.handle(Input::Timeout, now);
                d.update_pool_gauges(&peer);
            }
            Wake::LookupExpired(id) => {
                if let Some(p) = d.lookups.remove(&id) {
                    Metrics::inc(&metrics.lookups_timed_out);
                    tracing::info!(key = %p.key, waited_ms = now.0.saturating_sub(p.started.0), "lookup: no answer in time");
                    let _ = p.reply.send(ControlReply::Error {
                        message: format!(
                            "lookup of {}: no answer within {}",
                            p.key,
                            humantime::format_duration(p.timeout)
                        ),
                    });
                }
            }
            Wake::LookupAbandoned => {
                d.lookups.retain(|id, p| {
                    let keep = !p.reply.is_canceled();
                    if !keep {
                        tracing::debug!(id, key = %p.key, "lookup abandoned by its client");
                    }
                    keep
                });
            }
            Wake::Setup(SetupEvent::Accepted(est)) => d.adopt(&mut peer, est, now),
            Wake::Setup(SetupEvent::Dialed { peer: id, result }) => {
                d.dialing.remove(&id);
                match result {
                    Ok(est) => d.adopt(&mut peer, est, now),
                    Err(e) => {
                        tracing::debug!(peer = %id.short(), "dial failed: {e}");
                        if !d.conns.contains_key(&id) {
                            peer.handle(Input::ConnectFailed { peer: id }, now);
                        }
                    }
                }
            }
            Wake::Conn(ConnEvent::Frame { conn, peer: from, message }) => {
                if d.conns.get(&from).is_some_and(|c| c.id == conn) {
                    Metrics::inc(&metrics.frames_received);
                    match &message {
                        Message::Heartbeat(_) => Metrics::inc(&metrics.heartbeats_received),
                        Message::Refused(_) => Metrics::inc(&metrics.heartbeats_refused),
                        _ => {}
                    }
                    peer.handle(Input::Received { from, message }, now);
                }
            }
            Wake::Conn(ConnEvent::Closed { conn, peer: from, end }) => {
                if d.conns.get(&from).is_some_and(|c| c.id == conn) {
                    let c = d.conns.remove(&from);
                    match &end {
                        ReadEnd::Protocol(e) => {
                            Metrics::inc(&metrics.protocol_errors);
                            tracing::warn!(peer = %from.short(), "closing connection: {e}");
                            if let Some(c) = c {
                                c.handle.close(close_code::PROTOCOL, "bad frame");
                            }
                        }
                        ReadEnd::Io(e) => tracing::debug!(peer = %from.short(), "connection lost: {e}"),
                        ReadEnd::Eof => tracing::debug!(peer = %from.short(), "connection closed by peer"),
                    }
                    peer.handle(Input::ConnectionDown { peer: from }, now);
                }
            }
            Wake::Control(Some(req)) => match req.command {
                ControlCommand::Status => {
                    let report = StatusReport::build(
                        &peer,
                        options.runtime_name,
                        &local,
                        &bound,
                        started,
                        now,
                        metrics.snapshot(),
                    );
                    let _ = req.reply.send(ControlReply::Status(Box::new(report)));
                }
                ControlCommand::Shutdown => {
                    let _ = req.reply.send(ControlReply::ShuttingDown);
                    break;
                }
                ControlCommand::Lookup { key, timeout_ms } => {
                    if d.lookups.len() >= MAX_PENDING_LOOKUPS {
                        let _ = req.reply.send(ControlReply::Error {
                            message: format!("{MAX_PENDING_LOOKUPS} lookups are already running; try again"),
                        });
                    } else {
                        let id = d.next_lookup;
                        d.next_lookup += 1;
                        let timeout =
                            Duration::from_millis(timeout_ms).clamp(Duration::from_millis(1), MAX_LOOKUP_TIMEOUT);
                        let (sleep, tx) = (rt.sleep(timeout), expired_tx.clone());
                        rt.spawn(Box::pin(async move {
                            sleep.await;
                            let _ = tx.unbounded_send(id);
                        }));
                        tracing::debug!(id, %key, "lookup");
                        // Registered before the core runs: it may answer at once.
                        let pending = PendingLookup { key: key.clone(), started: now, timeout, reply: req.reply };
                        d.lookups.insert(id, pending);
                        peer.handle(Input::Command(Command::Lookup { id, key }), now);
                    }
                }
            },
            Wake::Control(None) => break,
        }
        d.drain(&mut peer);
        Metrics::set(&metrics.connections, d.conns.len() as u64);
        if let Some(p) = peer.pool() {
            Metrics::set(&metrics.pool_live, p.live_count() as u64);
        }
        if let Some(ix) = peer.indexer() {
            Metrics::set(&metrics.sessions, ix.session_count() as u64);
        }
        metrics.observe_dht(&peer);
    }

    tracing::info!("shutting down");
    peer.handle(Input::Command(Command::Shutdown), clock.now());
    d.drain(&mut peer);
    // Whatever the core did not close itself is closed now, gracefully.
    for (_, c) in d.conns.drain() {
        let mut tx = c.tx;
        if tx.try_send(Outgoing::Close { code: close_code::NORMAL, reason: "shutdown" }).is_err() {
            c.handle.close(close_code::NORMAL, "shutdown");
        }
    }
    rt.sleep(options.linger + Duration::from_millis(50)).await;
    transport.shutdown().await;
    tracing::info!("stopped");
}

struct State<T: Transport, R: Runtime> {
    rt: R,
    transport: T,
    me: PeerId,
    options: DriverOptions,
    metrics: Arc<Metrics>,
    clock: Clock,
    conns: HashMap<PeerId, Conn<T>>,
    dialing: HashSet<PeerId>,
    next_conn: u64,
    setup_tx: mpsc::UnboundedSender<SetupEvent<T>>,
    conn_tx: mpsc::Sender<ConnEvent>,
    /// Control-socket lookups waiting for the core, by command id.
    lookups: HashMap<u64, PendingLookup>,
    next_lookup: u64,
}

impl<T: Transport, R: Runtime> State<T, R> {
    /// Executes every pending output of the core.
    fn drain(&mut self, peer: &mut Peer) {
        while let Some(out) = peer.poll_output() {
            match out {
                Output::Connect { peer: pa } => self.dial(pa),
                Output::Send { to, message } => self.send(peer, to, &message),
                Output::Close { peer: id, reason } => {
                    if let Some(c) = self.conns.remove(&id) {
                        let code = match reason {
                            CloseReason::HandshakeFailed | CloseReason::ProtocolViolation | CloseReason::Banned => {
                                close_code::PROTOCOL
                            }
                            _ => close_code::NORMAL,
                        };
                        let mut tx = c.tx;
                        if tx.try_send(Outgoing::Close { code, reason: close_reason_text(reason) }).is_err() {
                            c.handle.close(code, close_reason_text(reason));
                        }
                    }
                }
                Output::Event(e) => self.event(e),
            }
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

    fn send(&mut self, peer: &mut Peer, to: PeerId, message: &Message) {
        let Some(c) = self.conns.get_mut(&to) else {
            // The connection went away and the core will hear it: nothing to send on.
            tracing::trace!(peer = %to.short(), kind = message.kind(), "dropping message: no connection");
            return;
        };
        if matches!(message, Message::Heartbeat(_)) {
            Metrics::inc(&self.metrics.heartbeats_sent);
        }
        match c.tx.try_send(Outgoing::Frame(encode_frame(message))) {
            Ok(()) => Metrics::inc(&self.metrics.frames_sent),
            Err(e) => {
                let c = self.conns.remove(&to);
                if e.is_full() {
                    Metrics::inc(&self.metrics.slow_peers);
                    tracing::warn!(peer = %to.short(), queue = self.options.send_queue, "peer too slow: send queue full, disconnecting");
                }
                if let Some(c) = c {
                    c.handle.close(close_code::SLOW_PEER, "send queue full");
                }
                peer.handle(Input::ConnectionDown { peer: to }, self.clock.now());
            }
        }
    }

    fn event(&mut self, e: Event) {
        match &e {
            Event::IndexerEvicted { .. } => Metrics::inc(&self.metrics.evictions),
            Event::PeerBanned { .. } => Metrics::inc(&self.metrics.bans),
            Event::HandshakeFailed { .. } => Metrics::inc(&self.metrics.handshake_failures),
            Event::RequestRefused { .. } => Metrics::inc(&self.metrics.heartbeats_refused),
            Event::RecordStored { .. } => Metrics::inc(&self.metrics.records_stored),
            Event::RecordRejected { .. } => Metrics::inc(&self.metrics.records_rejected),
            _ => {}
        }
        if let Event::LookupDone { id, key, record, hops, attempts } = &e {
            Metrics::inc(if record.is_some() { &self.metrics.lookups_found } else { &self.metrics.lookups_not_found });
            tracing::info!(%key, found = record.is_some(), hops, attempts, "lookup done");
            if let Some(p) = self.lookups.remove(id) {
                let now = self.clock.now();
                let report = LookupReport::new(&p.key, record.as_ref(), *hops, *attempts, p.started, now);
                let _ = p.reply.send(ControlReply::Lookup(Box::new(report)));
            }
            return;
        }
        match &e {
            Event::IndexerAdded { .. }
            | Event::IndexerLive { .. }
            | Event::IndexerDown { .. }
            | Event::IndexerEvicted { .. }
            | Event::SeedRecovery { .. }
            | Event::PeerBanned { .. }
            | Event::RecordRejected { .. }
            | Event::HandshakeFailed { .. } => tracing::info!(event = ?e),
            _ => tracing::debug!(event = ?e),
        }
    }

    /// Takes ownership of a new connection, resolving duplicates.
    fn adopt(&mut self, peer: &mut Peer, est: Established<T>, now: Timestamp) {
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
        peer.handle(Input::ConnectionUp { peer: id, addr: remote_addr, outbound }, now);
    }

    fn update_pool_gauges(&self, peer: &Peer) {
        if let Some(p) = peer.pool()
            && let Ok(mut g) = self.metrics.indexers.lock()
        {
            g.clear();
            g.extend(p.entries().map(|e| (e.peer.to_string(), e.score, e.last_rtt.map(|d| d.as_secs_f64()))));
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
