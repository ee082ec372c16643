//! # iroh transport for ocd
//!
//! Implements the runtime-neutral [`Transport`] trait of `ocd_core::host` on an iroh
//! [`Endpoint`] (QUIC over the `noq` fork of quinn, TLS with raw ed25519 keys). The daemon's
//! ed25519 key *is* the iroh secret key, so the endpoint id that iroh authenticates during the
//! handshake is the ocd [`PeerId`] byte for byte; nothing here trusts an id the remote merely claims.
//!
//! This crate only moves bytes: each connection carries exactly one bidirectional stream (opened by
//! the dialer, accepted by the acceptor), exposed as `futures::io` reader/writer halves. Framing,
//! queues, the slow-peer policy and duplicate-connection resolution live in the shared driver.
//!
//! ## Network footprint
//!
//! With [`IrohConfig::relays`] and [`IrohConfig::address_lookup`] both off (the devnet and test
//! setting, [`IrohConfig::loopback`]) the endpoint is built from iroh's *minimal* preset: relays
//! disabled, no address lookup (no DNS, pkarr or mDNS), no port mapping, no relay probes, one UDP
//! socket on [`IrohConfig::bind`]. It then only ever sends packets to the socket addresses it is
//! given in [`PeerAddr::addrs`] and to the peers that dial it. Turning `relays` on adds iroh's
//! default relay servers (and with them net-report probes and port mapping); turning
//! `address_lookup` on adds iroh's default lookups (pkarr publishing and resolution, DNS).
//!
//! ## Inbound handshakes
//!
//! Inbound attempts are admitted by a [`HandshakeLimiter`] ([`IrohConfig::inbound`]: global and
//! per-source-IP bounds on handshakes in flight); the excess is dropped with iroh's
//! `Incoming::ignore` before any connection state exists, and one summary line per interval
//! replaces per-attempt logs.
//!
//! ## Peers on `ocd-smol`
//!
//! `ocd-smol` (plain quinn) speaks iroh's TLS dialect — raw ed25519 public keys (RFC 7250), the
//! `<base32 id>.iroh.invalid` server name, the same ALPN — so the two transports connect to each
//! other directly. iroh's QUIC extensions (multipath, n0 NAT traversal, address discovery) are
//! transport parameters a plain QUIC v1 peer does not echo, so they are simply not negotiated: the
//! connection stays on its one direct path. iroh notes this at WARN once per connection
//! (`n0's nat traversal was not negotiated`, `set_status failed error=MultipathNotNegotiated`);
//! both are harmless.

use futures::io::{AsyncRead, AsyncWrite};
use iroh::endpoint::{
    Connection, IdleTimeout, IncomingAddr, PortmapperConfig, QuicTransportConfig, RecvStream, SendStream, VarInt,
    presets,
};
use iroh::{Endpoint, EndpointAddr, EndpointId, NetReportConfig, PublicKey, RelayMode, SecretKey, TransportAddr};
use ocd_core::host::transport::{
    ALPN, BoxFuture, ConnectionHandle, Established, HandshakeLimiter, HandshakePermit, InboundLimits, PermitRecv,
    Transport, TransportError, close_code,
};
use ocd_core::proto::{Addr, PeerAddr, PeerId};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// How an [`IrohTransport`] is built.
#[derive(Clone, PartialEq, Eq)]
pub struct IrohConfig {
    /// The daemon's ed25519 secret key (`Keypair::secret_bytes()`); its public key is our
    /// [`PeerId`] and iroh endpoint id.
    pub secret: [u8; 32],
    /// The UDP socket to bind (port 0 picks a free port). Only this one socket is bound: an IPv4
    /// address gives an IPv4-only endpoint.
    pub bind: SocketAddr,
    /// Use iroh's default relay servers (and its net-report probes and port mapping).
    pub relays: bool,
    /// Use iroh's default address lookup (pkarr publishing and resolution, DNS).
    pub address_lookup: bool,
    /// QUIC keep-alive interval; must be shorter than `idle_timeout`.
    /// Default [`IrohConfig::DEFAULT_KEEP_ALIVE`].
    pub keep_alive: Duration,
    /// QUIC idle timeout: a connection that hears nothing for this long is dropped.
    /// Default [`IrohConfig::DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Longest [`Transport::shutdown`] waits for close frames to be acknowledged; the close
    /// carries on in the background after that. Default [`IrohConfig::DEFAULT_SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
    /// Bounds on inbound handshakes in flight.
    pub inbound: InboundLimits,
}

impl IrohConfig {
    /// Default QUIC keep-alive interval (iroh's own default path keep-alive).
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5);
    /// Default QUIC idle timeout: four missed keep-alives.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
    /// Default bound on the graceful part of [`Transport::shutdown`] (iroh's drain takes up to ~3
    /// probe timeouts on a bad path; healthy loopback peers acknowledge in milliseconds).
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

    /// The devnet/test configuration: bound to `127.0.0.1:0`, relays and address lookup off, default
    /// keep-alive, idle timeout and shutdown grace.
    pub fn loopback(secret: [u8; 32]) -> Self {
        IrohConfig {
            secret,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            relays: false,
            address_lookup: false,
            keep_alive: Self::DEFAULT_KEEP_ALIVE,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            shutdown_grace: Self::DEFAULT_SHUTDOWN_GRACE,
            inbound: InboundLimits::default(),
        }
    }
}

impl std::fmt::Debug for IrohConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrohConfig")
            .field("secret", &"<redacted>")
            .field("bind", &self.bind)
            .field("relays", &self.relays)
            .field("address_lookup", &self.address_lookup)
            .field("keep_alive", &self.keep_alive)
            .field("idle_timeout", &self.idle_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("inbound", &self.inbound)
            .finish()
    }
}

/// Why an [`IrohTransport`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum IrohTransportError {
    /// The keep-alive interval is zero or not shorter than the idle timeout.
    #[error("keep-alive {keep_alive:?} must be non-zero and shorter than the idle timeout {idle_timeout:?}")]
    KeepAlive {
        /// The configured keep-alive interval.
        keep_alive: Duration,
        /// The configured idle timeout.
        idle_timeout: Duration,
    },
    /// The idle timeout does not fit QUIC's encoding.
    #[error("idle timeout {0:?} is out of range for QUIC")]
    IdleTimeout(Duration),
    /// The bind address was refused by iroh.
    #[error("invalid bind address {addr}: {source}")]
    BindAddr {
        /// The configured bind address.
        addr: SocketAddr,
        /// iroh's reason.
        source: iroh::endpoint::InvalidSocketAddr,
    },
    /// Another socket already holds the listen address.
    #[error("listen address {0} is already in use")]
    AddrInUse(SocketAddr),
    /// Binding the socket or setting up the endpoint failed.
    #[error("could not bind the iroh endpoint on {addr}: {source}")]
    Bind {
        /// The configured bind address.
        addr: SocketAddr,
        /// iroh's reason.
        source: iroh::endpoint::BindError,
    },
}

/// An iroh [`Endpoint`] speaking [`ALPN`], as an ocd [`Transport`]. Cheap to clone; all clones
/// share the endpoint. Must be used inside a tokio runtime.
#[derive(Clone, Debug)]
pub struct IrohTransport {
    endpoint: Endpoint,
    shutdown_grace: Duration,
    limiter: HandshakeLimiter,
}

impl IrohTransport {
    /// Binds the endpoint described by `config`.
    pub async fn bind(config: IrohConfig) -> Result<IrohTransport, IrohTransportError> {
        if config.keep_alive.is_zero() || config.keep_alive >= config.idle_timeout {
            return Err(IrohTransportError::KeepAlive {
                keep_alive: config.keep_alive,
                idle_timeout: config.idle_timeout,
            });
        }
        ensure_free(config.bind)?;
        let idle = IdleTimeout::try_from(config.idle_timeout)
            .map_err(|_| IrohTransportError::IdleTimeout(config.idle_timeout))?;
        let quic = QuicTransportConfig::builder().keep_alive_interval(config.keep_alive).max_idle_timeout(Some(idle));

        // `Minimal` only installs the ring crypto provider: no relays, no lookup.
        let mut builder = Endpoint::builder(presets::Minimal)
            .secret_key(SecretKey::from_bytes(&config.secret))
            .alpns(vec![ALPN.to_vec()])
            .transport_config(quic.build())
            .clear_ip_transports()
            .bind_addr(config.bind)
            .map_err(|source| IrohTransportError::BindAddr { addr: config.bind, source })?;
        builder = if config.relays {
            builder.relay_mode(iroh::endpoint::default_relay_mode())
        } else {
            builder
                .relay_mode(RelayMode::Disabled)
                .portmapper_config(PortmapperConfig::Disabled)
                .net_report_config(NetReportConfig::minimal())
        };
        builder = builder.clear_address_lookup();
        if config.address_lookup {
            // The lookups of iroh's `N0` preset.
            builder = builder
                .address_lookup(iroh::address_lookup::PkarrPublisher::n0_dns())
                .address_lookup(iroh::address_lookup::PkarrResolver::n0_dns())
                .address_lookup(iroh::address_lookup::DnsAddressLookup::n0_dns());
        }
        let endpoint = builder.bind().await.map_err(|source| match &source {
            iroh::endpoint::BindError::Sockets { source: io, .. } if io.kind() == std::io::ErrorKind::AddrInUse => {
                IrohTransportError::AddrInUse(config.bind)
            }
            _ => IrohTransportError::Bind { addr: config.bind, source },
        })?;
        tracing::debug!(peer_id = %peer_id_of(endpoint.id()).short(), addrs = ?endpoint.bound_sockets(), "iroh transport bound");
        let limiter = HandshakeLimiter::new(config.inbound);
        spawn_summary_ticker(&endpoint, limiter.clone(), config.inbound.summary_interval);
        Ok(IrohTransport { endpoint, shutdown_grace: config.shutdown_grace, limiter })
    }

    /// The limiter admitting inbound handshakes (for diagnostics and tests).
    pub fn handshake_limiter(&self) -> &HandshakeLimiter {
        &self.limiter
    }

    /// The underlying iroh endpoint (for diagnostics and benchmarks).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// Refuses a listen address another socket holds, before iroh starts anything: iroh would only say
/// `Failed to bind sockets`, without the cause. Port 0 is always free. (A probe socket, closed at
/// once; another process could take the port in between, then iroh's own error is reported.)
fn ensure_free(addr: SocketAddr) -> Result<(), IrohTransportError> {
    if addr.port() == 0 {
        return Ok(());
    }
    match std::net::UdpSocket::bind(addr) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(IrohTransportError::AddrInUse(addr)),
        // Other failures (no such local address, permission) are left to iroh to report.
        Ok(_) | Err(_) => Ok(()),
    }
}

/// Writes the handshake limiter's summary line once per interval (also when no attempt arrives to
/// trigger it), until the endpoint is closed. Holds no clone of the endpoint.
fn spawn_summary_ticker(endpoint: &Endpoint, limiter: HandshakeLimiter, interval: Duration) {
    tokio::spawn(endpoint.closed().run_until(async move {
        loop {
            tokio::time::sleep(interval).await;
            limiter.maybe_summarise(std::time::Instant::now());
        }
    }));
}

/// Closes one iroh connection (a clone of its [`Connection`]).
#[derive(Clone, Debug)]
pub struct IrohConnectionHandle {
    conn: Connection,
}

impl ConnectionHandle for IrohConnectionHandle {
    fn close(&self, code: u32, reason: &str) {
        self.conn.close(VarInt::from_u32(code), reason.as_bytes());
    }
}

/// Our sending half of a connection's stream (`futures::io::AsyncWrite`; `close` finishes the
/// stream).
#[derive(Debug)]
pub struct IrohSendStream(Compat<SendStream>);

impl AsyncWrite for IrohSendStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// Our receiving half of a connection's stream (`futures::io::AsyncRead`). A read after the
/// remote closed the connection fails with an [`std::io::Error`] wrapping iroh's
/// [`iroh::endpoint::ReadError`] (which carries the close code).
#[derive(Debug)]
pub struct IrohRecvStream(PermitRecv<Compat<RecvStream>>);

impl AsyncRead for IrohRecvStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Transport for IrohTransport {
    type Handle = IrohConnectionHandle;
    type SendStream = IrohSendStream;
    type RecvStream = IrohRecvStream;
    type Incoming = BoxFuture<Result<Established<Self>, TransportError>>;

    fn local_addr(&self) -> PeerAddr {
        let mut addrs: Vec<Addr> = Vec::new();
        for bound in self.endpoint.bound_sockets() {
            if bound.ip().is_unspecified() {
                // Bound to every interface: advertise the interface addresses iroh found for that
                // socket's family.
                for found in self.endpoint.addr().ip_addrs() {
                    if found.is_ipv4() == bound.is_ipv4() && !found.ip().is_unspecified() {
                        push_unique(&mut addrs, found.to_string());
                    }
                }
            } else {
                push_unique(&mut addrs, bound.to_string());
            }
        }
        addrs.truncate(PeerAddr::MAX_ADDRS);
        PeerAddr { id: peer_id_of(self.endpoint.id()), addrs }
    }

    fn connect(&self, peer: PeerAddr) -> BoxFuture<Result<Established<Self>, TransportError>> {
        let endpoint = self.endpoint.clone();
        Box::pin(async move { dial(&endpoint, peer).await })
    }

    fn accept(&self) -> BoxFuture<Option<Self::Incoming>> {
        let (endpoint, limiter) = (self.endpoint.clone(), self.limiter.clone());
        Box::pin(async move {
            loop {
                let incoming = endpoint.accept().await?;
                let source = match incoming.remote_addr() {
                    IncomingAddr::Ip(addr) => Some(SocketAddr::new(addr.ip().to_canonical(), addr.port())),
                    _ => None,
                };
                match limiter.admit(source.map(|a| a.ip())) {
                    Ok(permit) => {
                        let finish: Self::Incoming =
                            Box::pin(finish_accept(incoming, source.map(|a| a.to_string()), permit));
                        return Some(finish);
                    }
                    Err(over) => {
                        tracing::trace!(?source, ?over, "inbound attempt dropped over the handshake limit");
                        incoming.ignore();
                    }
                }
            }
        })
    }

    fn shutdown(&self) -> BoxFuture<()> {
        let endpoint = self.endpoint.clone();
        let grace = self.shutdown_grace;
        Box::pin(async move {
            // Closing is started synchronously on the first poll (every connection gets code 0 =
            // `close_code::NORMAL`, new ones are refused); the drain runs in its own task so that
            // it completes in the background if the grace period runs out.
            let close = tokio::spawn(async move { endpoint.close().await });
            if tokio::time::timeout(grace, close).await.is_err() {
                tracing::debug!(?grace, "iroh endpoint still draining after the shutdown grace");
            }
        })
    }
}

/// Dials `peer` on its direct addresses and opens the connection's stream.
async fn dial(endpoint: &Endpoint, peer: PeerAddr) -> Result<Established<IrohTransport>, TransportError> {
    let expected = peer.id;
    let id = PublicKey::from_bytes(&expected.0).map_err(|e| TransportError::BadAddress {
        peer: expected,
        reason: format!("not an ed25519 public key: {e}"),
    })?;
    let direct: Vec<SocketAddr> = peer.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    if direct.is_empty() {
        let reason =
            if peer.addrs.is_empty() { "no address".to_string() } else { format!("no ip:port among {:?}", peer.addrs) };
        return Err(TransportError::BadAddress { peer: expected, reason });
    }
    if endpoint.is_closed() {
        return Err(TransportError::Closed);
    }
    let target = EndpointAddr::from_parts(id, direct.into_iter().map(TransportAddr::Ip));
    let conn = endpoint.connect(target, ALPN).await.map_err(|e| {
        if endpoint.is_closed() { TransportError::Closed } else { TransportError::Connect(error_chain(&e)) }
    })?;
    // iroh's TLS verifier already pins the dialled key; checked again so that a change there can
    // never let an unauthenticated id through.
    let actual = peer_id_of(conn.remote_id());
    if actual != expected {
        conn.close(VarInt::from_u32(close_code::PROTOCOL), b"wrong peer");
        return Err(TransportError::WrongPeer { expected, actual });
    }
    let (send, recv) = conn.open_bi().await.map_err(|e| TransportError::Stream(error_chain(&e)))?;
    Ok(Established {
        peer: actual,
        remote_addr: selected_remote_addr(&conn),
        outbound: true,
        handle: IrohConnectionHandle { conn },
        send: IrohSendStream(send.compat_write()),
        recv: IrohRecvStream(PermitRecv::new(recv.compat(), None)),
    })
}

/// Completes an inbound connection: handshake, ALPN check, then the dialer's stream, which takes
/// over the handshake's `permit` until the remote's first bytes.
async fn finish_accept(
    incoming: iroh::endpoint::Incoming,
    remote_addr: Option<Addr>,
    permit: HandshakePermit,
) -> Result<Established<IrohTransport>, TransportError> {
    let accepting = incoming.accept().map_err(|e| TransportError::Connect(error_chain(&e)))?;
    let conn = accepting.await.map_err(|e| TransportError::Connect(error_chain(&e)))?;
    if conn.alpn() != ALPN {
        conn.close(VarInt::from_u32(close_code::PROTOCOL), b"unexpected alpn");
        return Err(TransportError::Connect(format!("unexpected ALPN {:?}", String::from_utf8_lossy(conn.alpn()))));
    }
    let peer = peer_id_of(conn.remote_id());
    let (send, recv) = conn.accept_bi().await.map_err(|e| TransportError::Stream(error_chain(&e)))?;
    let remote_addr = remote_addr.or_else(|| selected_remote_addr(&conn));
    Ok(Established {
        peer,
        remote_addr,
        outbound: false,
        handle: IrohConnectionHandle { conn },
        send: IrohSendStream(send.compat_write()),
        recv: IrohRecvStream(PermitRecv::new(recv.compat(), Some(permit))),
    })
}

/// The ocd peer id of an authenticated iroh endpoint id (the same 32 bytes).
pub fn peer_id_of(id: EndpointId) -> PeerId {
    PeerId(*id.as_bytes())
}

/// The `ip:port` of the connection's selected (else first) direct path.
fn selected_remote_addr(conn: &Connection) -> Option<Addr> {
    let paths = conn.paths();
    let ip_of = |addr: &TransportAddr| match addr {
        TransportAddr::Ip(a) => Some(a.to_string()),
        _ => None,
    };
    paths
        .iter()
        .find(|p| p.is_selected())
        .and_then(|p| ip_of(p.remote_addr()))
        .or_else(|| paths.iter().find_map(|p| ip_of(p.remote_addr())))
}

fn push_unique(addrs: &mut Vec<Addr>, addr: Addr) {
    if !addrs.contains(&addr) {
        addrs.push(addr);
    }
}

/// An error and its sources on one line (iroh's errors keep the useful part in the sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
