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
