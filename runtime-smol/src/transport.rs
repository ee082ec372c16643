//! The [`Transport`] of the smol daemon: one quinn endpoint (quinn's smol runtime, rustls with the
//! ring provider) that both dials and accepts, authenticated in both directions by the
//! self-signed ed25519 certificates of [`crate::tls`].
//!
//! This module only moves bytes between two authenticated keys. The generic driver in
//! `ocd_core::host::driver` does the rest (framing, queues, timeouts, duplicate connections),
//! following the stream convention of [`ocd_core::host::transport`]: the dialer opens one
//! bidirectional stream right after the handshake, the acceptor accepts it. quinn announces a new
//! stream to the remote only with its first bytes, which is fine because the core always speaks
//! first (its `Hello`).
//!
//! Each side lets its remote open at most one bidirectional stream and no unidirectional stream or
//! datagram, so a peer cannot make us buffer more than the one stream the protocol uses.
//!
//! Inbound attempts are admitted by a [`HandshakeLimiter`] (global and per-source-IP bounds on
//! handshakes in flight, [`InboundLimits`]); the excess is dropped with `Incoming::ignore` before
//! quinn creates any connection state, and a summary line per interval replaces per-attempt logs.
//!
//! The TLS layer speaks iroh's dialect (raw public keys, see [`crate::tls`]), so this transport
//! and `ocd`'s iroh transport connect to each other; QUIC-wise iroh needs nothing a plain QUIC v1
//! peer lacks: its multipath and NAT-traversal transport parameters are simply not negotiated with
//! us, and the connection stays on its one path.

use crate::tls::{TlsError, TlsIdentity, peer_id_from_spki, server_name};
use ocd_core::host::transport::{
    BoxFuture, ConnectionHandle, Established, HandshakeLimiter, HandshakePermit, InboundLimits, PermitRecv, Transport,
    TransportError, close_code,
};
use ocd_core::proto::{Addr, Keypair, PeerAddr, PeerId};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectError, Connection, ConnectionError, Endpoint, EndpointConfig, IdleTimeout, VarInt};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

/// Longest close reason sent, in bytes (longer ones are cut at a character boundary).
const MAX_REASON_LEN: usize = 64;

/// How long [`Transport::shutdown`] waits for close frames to go out.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Settings of a [`QuinnTransport`].
#[derive(Debug, Clone)]
pub struct QuinnConfig {
    /// The daemon's key: its certificate and its [`PeerId`].
    pub keypair: Keypair,
    /// UDP address to bind (`0.0.0.0:0` or `127.0.0.1:0` pick a free port).
    pub bind: SocketAddr,
    /// Interval of QUIC keep-alive packets on idle connections. Default 5 s, well under
    /// [`idle_timeout`](Self::idle_timeout) so that a live but quiet connection is never dropped.
    pub keep_alive: Duration,
    /// A connection with no packet from the remote for this long is closed. Default 20 s, the
    /// node's heartbeat interval: a peer that misses a whole heartbeat period is gone.
    pub idle_timeout: Duration,
    /// Bounds on inbound handshakes in flight.
    pub inbound: InboundLimits,
}

impl QuinnConfig {
    /// Default keep-alive interval.
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5);
    /// Default idle timeout.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

    /// A configuration with the default keep-alive and idle timeout.
    pub fn new(keypair: Keypair, bind: SocketAddr) -> Self {
        QuinnConfig {
            keypair,
            bind,
            keep_alive: Self::DEFAULT_KEEP_ALIVE,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            inbound: InboundLimits::default(),
        }
    }
}

/// Why a [`QuinnTransport`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum QuinnError {
    /// Another socket already holds the listen address.
    #[error("listen address {0} is already in use")]
    AddrInUse(SocketAddr),
    /// The UDP socket could not be bound, or the endpoint not started on it.
    #[error("could not bind UDP {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: SocketAddr,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The certificate or a TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A setting is out of the range QUIC allows (e.g. an idle timeout beyond 2^62 ms).
    #[error("invalid QUIC setting: {0}")]
    Config(String),
}

/// A quinn endpoint that dials and accepts ocd connections. Cheap to clone; all clones share the
/// endpoint.
#[derive(Clone, Debug)]
pub struct QuinnTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    local: PeerAddr,
    limiter: HandshakeLimiter,
}

impl QuinnTransport {
    /// Binds a UDP socket at `config.bind` and starts a quinn endpoint on smol that accepts
    /// connections (mandatory client certificates) and dials with a per-dial verifier.
    pub fn bind(config: QuinnConfig) -> Result<Self, QuinnError> {
        let identity = TlsIdentity::new(&config.keypair)?;
        let transport_config = Arc::new(transport_config(&config)?);

        let server_tls =
            QuicServerConfig::try_from(identity.server_config()?).map_err(|e| QuinnError::Config(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
        server_config
            .transport_config(transport_config.clone())
            .max_incoming(config.inbound.max_handshakes.saturating_mul(2).max(1))
            .incoming_buffer_size(INCOMING_BUFFER)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);

        let client_tls =
            QuicClientConfig::try_from(identity.client_config()?).map_err(|e| QuinnError::Config(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_tls));
        client_config.transport_config(transport_config.clone());

        let bind_error = |source| QuinnError::Bind { addr: config.bind, source };
        let socket = std::net::UdpSocket::bind(config.bind).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => QuinnError::AddrInUse(config.bind),
            _ => bind_error(e),
        })?;
        let endpoint =
            Endpoint::new(EndpointConfig::default(), Some(server_config), socket, Arc::new(quinn::SmolRuntime))
                .map_err(bind_error)?;
        let bound = endpoint.local_addr().map_err(bind_error)?;
        let local = PeerAddr { id: identity.peer_id(), addrs: vec![canonical(bound).to_string()] };

        let limiter = HandshakeLimiter::new(config.inbound);
        let inner = Arc::new(Inner { endpoint, client_config, local, limiter });
        spawn_summary_ticker(Arc::downgrade(&inner), config.inbound.summary_interval);
        Ok(QuinnTransport { inner })
    }

    /// The limiter admitting inbound handshakes (for diagnostics and tests).
    pub fn handshake_limiter(&self) -> &HandshakeLimiter {
        &self.inner.limiter
    }

    /// The socket address the endpoint is bound to.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.inner.endpoint.local_addr().ok()
    }
}

/// Writes the handshake limiter's summary line once per interval (also when no attempt arrives to
/// trigger it), until the transport is dropped or closed.
fn spawn_summary_ticker(inner: Weak<Inner>, interval: Duration) {
    smol::spawn(async move {
        loop {
            smol::Timer::after(interval).await;
            let Some(inner) = inner.upgrade() else { break };
            inner.limiter.maybe_summarise(std::time::Instant::now());
        }
    })
    .detach();
}

/// Bytes quinn buffers for one inbound attempt not yet admitted (its later packets).
const INCOMING_BUFFER: u64 = 64 * 1024;

/// Bytes quinn buffers for all inbound attempts not yet admitted.
const INCOMING_BUFFER_TOTAL: u64 = 4 * 1024 * 1024;

/// Keep-alive, idle timeout, and stream limits: one bidirectional stream per connection (the
/// dialer's), no unidirectional streams, no datagrams.
fn transport_config(config: &QuinnConfig) -> Result<quinn::TransportConfig, QuinnError> {
    let idle = IdleTimeout::try_from(config.idle_timeout).map_err(|e| QuinnError::Config(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(config.keep_alive))
        .max_idle_timeout(Some(idle))
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None);
    Ok(transport)
}

/// An IPv4-mapped IPv6 address (from a dual-stack socket) shown as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The first of `peer`'s addresses that parses as `ip:port` and that our socket can reach
/// (an IPv4 socket cannot send to IPv6 addresses).
fn dial_address(peer: &PeerAddr, local: Option<SocketAddr>) -> Result<SocketAddr, TransportError> {
    let ipv4_only = local.is_some_and(|l| l.is_ipv4());
    let mut parsed = peer.addrs.iter().filter_map(|a| a.trim().parse::<SocketAddr>().ok()).peekable();
    if parsed.peek().is_none() {
        return Err(TransportError::BadAddress { peer: peer.id, reason: "no ip:port address".to_string() });
    }
    parsed.find(|a| !(ipv4_only && a.is_ipv6())).ok_or_else(|| TransportError::BadAddress {
        peer: peer.id,
        reason: "only IPv6 addresses and our socket is IPv4".to_string(),
    })
}

fn connection_failed(error: ConnectionError) -> TransportError {
    match error {
        ConnectionError::LocallyClosed => TransportError::Closed,
        other => TransportError::Connect(other.to_string()),
    }
}

fn stream_failed(error: ConnectionError) -> TransportError {
    match error {
        ConnectionError::LocallyClosed => TransportError::Closed,
        other => TransportError::Stream(other.to_string()),
    }
}

/// The key the remote proved in the handshake: the single certificate it presented (the verifiers
/// already refused anything else; this re-derives it rather than trusting any cached claim).
fn authenticated_peer(connection: &Connection) -> Result<PeerId, TransportError> {
    let identity =
        connection.peer_identity().ok_or_else(|| TransportError::Connect("remote presented no certificate".into()))?;
    let certificates = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .map_err(|_| TransportError::Connect("unexpected peer identity type".into()))?;
    match certificates.as_slice() {
        [key] => peer_id_from_spki(key.as_ref()).map_err(|e| TransportError::Connect(e.to_string())),
        other => Err(TransportError::Connect(TlsError::ChainLength(other.len()).to_string())),
    }
}

/// Closes one quinn connection.
#[derive(Clone, Debug)]
pub struct QuinnHandle(Connection);

impl QuinnHandle {
    /// The underlying quinn connection (stats, RTT).
    pub fn connection(&self) -> &Connection {
        &self.0
    }
}

impl ConnectionHandle for QuinnHandle {
    fn close(&self, code: u32, reason: &str) {
        let mut end = reason.len().min(MAX_REASON_LEN);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.0.close(VarInt::from_u32(code), &reason.as_bytes()[..end]);
    }
}

/// An inbound connection being accepted: completes the handshake, derives the remote's
/// [`PeerId`] from its client certificate and accepts the dialer's stream. Dropping it before it
/// completes refuses or closes the connection. It holds a [`HandshakePermit`], passed on to the
/// stream and released when the remote's first bytes arrive.
pub struct QuinnIncoming {
    remote_addr: SocketAddr,
    future: BoxFuture<Result<Established<QuinnTransport>, TransportError>>,
}

impl QuinnIncoming {
    fn new(incoming: quinn::Incoming, permit: HandshakePermit) -> Self {
        let remote_addr = canonical(incoming.remote_address());
        let future = Box::pin(async move {
            let connecting = incoming.accept().map_err(connection_failed)?;
            let connection = connecting.await.map_err(connection_failed)?;
            let peer = match authenticated_peer(&connection) {
                Ok(peer) => peer,
                Err(e) => {
                    connection.close(VarInt::from_u32(close_code::PROTOCOL), b"bad certificate");
                    return Err(e);
                }
            };
            let (send, recv) = connection.accept_bi().await.map_err(stream_failed)?;
            Ok(Established {
                peer,
                remote_addr: Some(canonical(connection.remote_address()).to_string()),
                outbound: false,
                handle: QuinnHandle(connection),
                send,
                recv: PermitRecv::new(recv, Some(permit)),
            })
        });
        QuinnIncoming { remote_addr, future }
    }

    /// The remote's UDP address (not yet validated or authenticated).
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }
}

impl std::fmt::Debug for QuinnIncoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuinnIncoming").field("remote_addr", &self.remote_addr).finish_non_exhaustive()
    }
}

impl Future for QuinnIncoming {
    type Output = Result<Established<QuinnTransport>, TransportError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl Transport for QuinnTransport {
    type Handle = QuinnHandle;
    type SendStream = quinn::SendStream;
    type RecvStream = PermitRecv<quinn::RecvStream>;
    type Incoming = QuinnIncoming;

    fn local_addr(&self) -> PeerAddr {
        self.inner.local.clone()
    }

    fn connect(&self, peer: PeerAddr) -> BoxFuture<Result<Established<Self>, TransportError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let addr = dial_address(&peer, inner.endpoint.local_addr().ok())?;
            let connecting = inner
                .endpoint
                .connect_with(inner.client_config.clone(), addr, &server_name(peer.id))
                .map_err(|e| match e {
                    ConnectError::EndpointStopping => TransportError::Closed,
                    other => TransportError::Connect(other.to_string()),
                })?;
            let connection = connecting.await.map_err(connection_failed)?;
            let actual = match authenticated_peer(&connection) {
                Ok(actual) => actual,
                Err(e) => {
                    connection.close(VarInt::from_u32(close_code::PROTOCOL), b"bad certificate");
                    return Err(e);
                }
            };
            if actual != peer.id {
                connection.close(VarInt::from_u32(close_code::PROTOCOL), b"wrong peer");
                return Err(TransportError::WrongPeer { expected: peer.id, actual });
            }
            let (send, recv) = connection.open_bi().await.map_err(stream_failed)?;
            let remote_addr: Addr = canonical(connection.remote_address()).to_string();
            Ok(Established {
                peer: actual,
                remote_addr: Some(remote_addr),
                outbound: true,
                handle: QuinnHandle(connection),
                send,
                recv: PermitRecv::new(recv, None),
            })
        })
    }

    fn accept(&self) -> BoxFuture<Option<Self::Incoming>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            loop {
                let incoming = inner.endpoint.accept().await?;
                let source = canonical(incoming.remote_address()).ip();
                match inner.limiter.admit(Some(source)) {
                    Ok(permit) => return Some(QuinnIncoming::new(incoming, permit)),
                    Err(over) => {
                        tracing::trace!(%source, ?over, "inbound attempt dropped over the handshake limit");
                        incoming.ignore();
                    }
                }
            }
        })
    }

    fn shutdown(&self) -> BoxFuture<()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.endpoint.close(VarInt::from_u32(close_code::NORMAL), b"shutdown");
            smol::future::or(inner.endpoint.wait_idle(), async {
                smol::Timer::after(SHUTDOWN_GRACE).await;
            })
            .await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(addrs: &[&str]) -> PeerAddr {
        PeerAddr { id: Keypair::derive(1, "p").peer_id(), addrs: addrs.iter().map(|a| a.to_string()).collect() }
    }

    #[test]
    fn dial_address_skips_unparseable_and_unreachable_families() {
        let v4: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let p = peer(&["nonsense", "[::1]:9", "127.0.0.1:9"]);
        assert_eq!(dial_address(&p, Some(v4)).expect("v4"), "127.0.0.1:9".parse().expect("addr"));
        assert!(matches!(dial_address(&peer(&["x", ""]), Some(v4)), Err(TransportError::BadAddress { .. })));
        assert!(matches!(dial_address(&peer(&["[::1]:9"]), Some(v4)), Err(TransportError::BadAddress { .. })));
    }

    #[test]
    fn idle_timeout_out_of_range_is_a_config_error() {
        let mut config = QuinnConfig::new(Keypair::derive(1, "a"), "127.0.0.1:0".parse().expect("addr"));
        config.idle_timeout = Duration::from_secs(u64::MAX);
        assert!(matches!(transport_config(&config), Err(QuinnError::Config(_))));
    }
}
