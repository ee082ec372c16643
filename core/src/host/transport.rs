//! The two small traits a runtime implements to run the shared [driver](super::driver): a
//! [`Transport`] that produces authenticated connections carrying one bidirectional byte stream
//! each, and a [`Runtime`] that spawns tasks and sleeps. Everything above them — framing, the
//! per-connection queues, the slow-peer policy, duplicate-connection resolution and the core
//! itself — is written once, in the driver.
//!
//! A transport's only job is to move bytes between two *authenticated* keys: the [`PeerId`] it
//! reports for a connection must be the key the remote proved during the QUIC/TLS handshake (iroh's
//! endpoint id, or the ed25519 key of a quinn peer's certificate), never something the remote
//! merely claimed. The network-key `Hello` exchange runs in the core, on top of the stream.
//!
//! Stream convention: the dialer opens one bidirectional stream right after the handshake and the
//! acceptor accepts it; the connection is reported to the driver only once both halves exist. The
//! core always speaks first on a new connection (its `Hello`), so the acceptor's `accept_bi`
//! returns promptly; the driver bounds every dial and every [`Transport::Incoming`] with its
//! handshake timeout, so a silent dialer cannot hold resources.

use crate::proto::{Addr, PeerAddr, PeerId};
use futures::io::{AsyncRead, AsyncWrite};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// A boxed, sendable future: what the traits here return, so that they stay object-safe and
/// independent of any async runtime.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a connection could not be made or accepted.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer address has no usable address, or one could not be parsed.
    #[error("bad address for {peer}: {reason}")]
    BadAddress {
        /// The peer we tried to reach.
        peer: PeerId,
        /// What was wrong.
        reason: String,
    },
    /// The QUIC/TLS connection failed (unreachable, refused, wrong key, ALPN mismatch…).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The connection came up but the stream could not be opened or accepted in time.
    #[error("stream setup failed: {0}")]
    Stream(String),
    /// The remote authenticated as a different key than the one we dialled.
    #[error("dialled {expected} but the remote authenticated as {actual}")]
    WrongPeer {
        /// The key we dialled.
        expected: PeerId,
        /// The key the remote proved.
        actual: PeerId,
    },
    /// The transport is shut down.
    #[error("transport closed")]
    Closed,
}

/// Application close codes the driver uses when it closes a connection.
pub mod close_code {
    /// Normal close (shutdown, idle, replaced by a newer connection).
    pub const NORMAL: u32 = 0;
    /// The remote broke the protocol (malformed/oversized frame, failed `Hello`, violation).
    pub const PROTOCOL: u32 = 1;
    /// The remote did not read fast enough and its send queue overflowed.
    pub const SLOW_PEER: u32 = 2;
}

/// One established, authenticated connection with its single bidirectional stream.
pub struct Established<T: Transport> {
    /// The remote's authenticated key.
    pub peer: PeerId,
    /// The remote's transport address as seen by us (`ip:port`), if known.
    pub remote_addr: Option<Addr>,
    /// Whether we dialled it.
    pub outbound: bool,
    /// Handle to close the connection.
    pub handle: T::Handle,
    /// Our sending half of the stream.
    pub send: T::SendStream,
    /// Our receiving half of the stream.
    pub recv: T::RecvStream,
}

impl<T: Transport> std::fmt::Debug for Established<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("peer", &self.peer)
            .field("remote_addr", &self.remote_addr)
            .field("outbound", &self.outbound)
            .finish_non_exhaustive()
    }
}

/// Closes a connection from anywhere (cheap to clone).
pub trait ConnectionHandle: Clone + Send + Sync + 'static {
    /// Closes the connection with an application code and a short reason. Idempotent.
    fn close(&self, code: u32, reason: &str);
}

/// A QUIC-like transport: dials peers by [`PeerAddr`], accepts inbound connections, and reports
/// the authenticated [`PeerId`] of each.
pub trait Transport: Clone + Send + Sync + 'static {
    /// Closes one connection.
    type Handle: ConnectionHandle;
    /// The sending half of a connection's stream.
    type SendStream: AsyncWrite + Unpin + Send + 'static;
    /// The receiving half of a connection's stream.
    type RecvStream: AsyncRead + Unpin + Send + 'static;
    /// A connection being accepted: finishing it (handshake, `accept_bi`) is awaited in its own
    /// task so that one slow peer never blocks the accept loop.
    type Incoming: Future<Output = Result<Established<Self>, TransportError>> + Send + 'static;

    /// Our own address as others should dial it: our key and bound socket addresses.
    fn local_addr(&self) -> PeerAddr;

    /// Dials `peer`, verifies it authenticates as `peer.id`, and opens the stream. The driver bounds
    /// the whole call with its handshake timeout.
    fn connect(&self, peer: PeerAddr) -> BoxFuture<Result<Established<Self>, TransportError>>;

    /// Waits for the next inbound connection attempt; `None` once the transport is shut down.
    fn accept(&self) -> BoxFuture<Option<Self::Incoming>>;

    /// Closes every connection (with [`close_code::NORMAL`]) and stops accepting, waiting briefly
    /// for the close frames to go out.
    fn shutdown(&self) -> BoxFuture<()>;
}

/// What the driver needs from an async runtime: spawning detached tasks and sleeping.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Runs `future` to completion in the background.
    fn spawn(&self, future: BoxFuture<()>);
    /// Completes at `deadline` (immediately if it has passed).
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()>;
    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        self.sleep_until(Instant::now() + duration)
    }
}

/// The QUIC ALPN every ocd connection negotiates (both transports). Bumped with the wire version.
pub const ALPN: &[u8] = b"ocd/1";

/// Bounds on inbound handshakes, the same on both transports (issue 15, item 5): a handshake is
/// *in flight* from the first packet of an inbound connection attempt until the remote's first
/// bytes arrive on the connection's stream (its `Hello`), or until the attempt fails, times out
/// or the connection is dropped. Attempts beyond either limit are dropped before any handshake
/// state exists (QUIC `Incoming::ignore`: no answer, so a spoofed source reflects nothing and a
/// legitimate dialer simply retransmits its Initial a moment later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundLimits {
    /// In-flight inbound handshakes in total. Default [`InboundLimits::DEFAULT_MAX_HANDSHAKES`].
    pub max_handshakes: usize,
    /// In-flight inbound handshakes from one source IP address (every port of it). Default
    /// [`InboundLimits::DEFAULT_MAX_PER_SOURCE`].
    pub max_per_source: usize,
    /// Interval of the summary line (counts of admitted, dropped and failed attempts); nothing is
    /// logged for an interval without drops or failures. Default
    /// [`InboundLimits::DEFAULT_SUMMARY_INTERVAL`].
    pub summary_interval: Duration,
}

impl InboundLimits {
    /// Default global bound: far above what a network's peers need (one connection each, a
    /// handshake lasting a few round trips), small enough that a flood's handshake state stays a
    /// few megabytes.
    pub const DEFAULT_MAX_HANDSHAKES: usize = 256;
    /// Default bound per source IP. Every daemon of a devnet shares 127.0.0.1, so this must cover
    /// a burst of nodes starting at once.
    pub const DEFAULT_MAX_PER_SOURCE: usize = 64;
    /// Default summary interval.
    pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
}

impl Default for InboundLimits {
    fn default() -> Self {
        InboundLimits {
            max_handshakes: Self::DEFAULT_MAX_HANDSHAKES,
            max_per_source: Self::DEFAULT_MAX_PER_SOURCE,
            summary_interval: Self::DEFAULT_SUMMARY_INTERVAL,
        }
    }
}

/// Why an inbound attempt was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundDrop {
    /// [`InboundLimits::max_handshakes`] handshakes were already in flight.
    Global,
    /// [`InboundLimits::max_per_source`] handshakes from the same IP were already in flight.
    PerSource,
}

/// Counts of one summary interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboundCounts {
    /// Attempts admitted.
    pub admitted: u64,
    /// Attempts dropped over the global limit.
    pub dropped_global: u64,
    /// Attempts dropped over the per-source limit.
    pub dropped_per_source: u64,
    /// Admitted attempts that failed or were dropped before the remote's first bytes.
    pub failed: u64,
}

#[derive(Debug)]
struct LimiterState {
    in_flight: usize,
    per_source: std::collections::HashMap<Option<std::net::IpAddr>, usize>,
    counts: InboundCounts,
    since: Instant,
}

/// Admits inbound handshakes within [`InboundLimits`] and writes the rate-limited summary line.
/// Cheap to clone; clones share the counts. Runtime-neutral (a mutex and counters).
#[derive(Debug, Clone)]
pub struct HandshakeLimiter {
    limits: InboundLimits,
    state: std::sync::Arc<std::sync::Mutex<LimiterState>>,
}

impl HandshakeLimiter {
    /// A limiter with nothing in flight.
    pub fn new(limits: InboundLimits) -> Self {
        let state = LimiterState {
            in_flight: 0,
            per_source: std::collections::HashMap::new(),
            counts: InboundCounts::default(),
            since: Instant::now(),
        };
        HandshakeLimiter { limits, state: std::sync::Arc::new(std::sync::Mutex::new(state)) }
    }

    /// The limits in force.
    pub fn limits(&self) -> InboundLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        // The state is a set of counters: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits an attempt from `source` (`None`: not an IP path, counted only globally), or says
    /// why it must be dropped. The permit holds the slot until it is released or dropped.
    pub fn admit(&self, source: Option<std::net::IpAddr>) -> Result<HandshakePermit, InboundDrop> {
        let mut state = self.lock();
        let from_source = state.per_source.get(&source).copied().unwrap_or(0);
        let verdict = if state.in_flight >= self.limits.max_handshakes {
            state.counts.dropped_global += 1;
            Err(InboundDrop::Global)
        } else if source.is_some() && from_source >= self.limits.max_per_source {
            state.counts.dropped_per_source += 1;
            Err(InboundDrop::PerSource)
        } else {
            state.in_flight += 1;
            *state.per_source.entry(source).or_insert(0) += 1;
            state.counts.admitted += 1;
            Ok(HandshakePermit { limiter: Some(self.clone()), source })
        };
        drop(state);
        self.maybe_summarise(Instant::now());
        verdict
    }

    /// Handshakes in flight now (total, and from `source`).
    pub fn in_flight(&self, source: Option<std::net::IpAddr>) -> (usize, usize) {
        let state = self.lock();
        (state.in_flight, state.per_source.get(&source).copied().unwrap_or(0))
    }

    fn release(&self, source: Option<std::net::IpAddr>, failed: bool) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some(n) = state.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.per_source.remove(&source);
            }
        }
        if failed {
            state.counts.failed += 1;
        }
    }

    /// Takes the counts of the interval that has run for at least [`InboundLimits::summary_interval`]
    /// by `now` and starts a new one; `None` if it has not run that long yet.
    pub fn take_summary(&self, now: Instant) -> Option<InboundCounts> {
        let mut state = self.lock();
        if now.saturating_duration_since(state.since) < self.limits.summary_interval {
            return None;
        }
        state.since = now;
        Some(std::mem::take(&mut state.counts))
    }

    /// Logs the summary line of a finished interval if anything was dropped or failed in it: one
    /// line per interval however many attempts there were (a transport calls this on every attempt
    /// and from a periodic tick).
    pub fn maybe_summarise(&self, now: Instant) {
        let Some(c) = self.take_summary(now) else { return };
        let (in_flight, _) = self.in_flight(None);
        let dropped = c.dropped_global + c.dropped_per_source;
        if dropped > 0 {
            tracing::warn!(
                admitted = c.admitted,
                dropped_over_global_limit = c.dropped_global,
                dropped_over_per_source_limit = c.dropped_per_source,
                failed = c.failed,
                in_flight,
                max_handshakes = self.limits.max_handshakes,
                max_per_source = self.limits.max_per_source,
                "inbound handshakes over their limits in the last {:?}: {dropped} dropped",
                self.limits.summary_interval,
            );
        } else if c.failed > 0 {
            tracing::info!(
                admitted = c.admitted,
                failed = c.failed,
                in_flight,
                "inbound handshakes in the last {:?}: {} failed",
                self.limits.summary_interval,
                c.failed,
            );
        }
    }
}

/// One in-flight inbound handshake's slot in a [`HandshakeLimiter`]. [`HandshakePermit::complete`]
/// releases it as a success; dropping it unreleased counts a failure.
#[derive(Debug)]
pub struct HandshakePermit {
    limiter: Option<HandshakeLimiter>,
    source: Option<std::net::IpAddr>,
}

impl HandshakePermit {
    /// The handshake got as far as the remote's first bytes: frees the slot.
    pub fn complete(mut self) {
        if let Some(limiter) = self.limiter.take() {
            limiter.release(self.source, false);
        }
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        if let Some(limiter) = self.limiter.take() {
            limiter.release(self.source, true);
        }
    }
}

/// A stream's receiving half that holds its connection's [`HandshakePermit`] until the first bytes
/// arrive (then completes it) or the stream is dropped (then the attempt counts as failed). Both
/// transports wrap their accepted streams in it.
#[derive(Debug)]
pub struct PermitRecv<R> {
    inner: R,
    permit: Option<HandshakePermit>,
}

impl<R> PermitRecv<R> {
    /// Wraps `inner`; `permit` is `None` for streams that hold none (dialled connections).
    pub fn new(inner: R, permit: Option<HandshakePermit>) -> Self {
        PermitRecv { inner, permit }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for PermitRecv<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll
            && *n > 0
            && let Some(permit) = self.permit.take()
        {
            permit.complete();
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
    }

    #[test]
    fn per_source_and_global_limits_drop_the_excess_and_permits_free_their_slots() {
        let limits =
            InboundLimits { max_handshakes: 3, max_per_source: 2, summary_interval: Duration::from_secs(3600) };
        let limiter = HandshakeLimiter::new(limits);
        let a1 = limiter.admit(ip(1)).expect("a1");
        let a2 = limiter.admit(ip(1)).expect("a2");
        assert_eq!(limiter.admit(ip(1)).err(), Some(InboundDrop::PerSource));
        let b1 = limiter.admit(ip(2)).expect("b1");
        assert_eq!(limiter.admit(ip(3)).err(), Some(InboundDrop::Global));
        assert_eq!(limiter.in_flight(ip(1)), (3, 2));

        a1.complete();
        drop(a2);
        assert_eq!(limiter.in_flight(ip(1)), (1, 0));
        let _a3 = limiter.admit(ip(1)).expect("a slot came back");
        drop(b1);
        let counts = limiter.take_summary(Instant::now() + Duration::from_secs(3600)).expect("interval over");
        assert_eq!(
            counts,
            InboundCounts { admitted: 4, dropped_global: 1, dropped_per_source: 1, failed: 2 },
            "a dropped permit is a failure, a completed one is not"
        );
        assert!(limiter.take_summary(Instant::now()).is_none(), "a new interval started");
    }

    #[test]
    fn permit_recv_completes_on_first_bytes_and_fails_when_dropped_silent() {
        let limiter = HandshakeLimiter::new(InboundLimits::default());
        let mut talking = PermitRecv::new(&b"hello"[..], Some(limiter.admit(ip(1)).expect("permit")));
        let silent = PermitRecv::new(&b""[..], Some(limiter.admit(ip(1)).expect("permit")));
        assert_eq!(limiter.in_flight(ip(1)), (2, 2));
        let mut buf = [0u8; 2];
        let n = futures::executor::block_on(futures::io::AsyncReadExt::read(&mut talking, &mut buf)).expect("read");
        assert_eq!(n, 2);
        assert_eq!(limiter.in_flight(ip(1)), (1, 1));
        drop(silent);
        assert_eq!(limiter.in_flight(ip(1)), (0, 0));
        let counts = limiter.take_summary(Instant::now() + Duration::from_secs(60)).expect("interval over");
        assert_eq!((counts.admitted, counts.failed), (2, 1));
    }
}
