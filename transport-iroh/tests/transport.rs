//! The iroh transport between real endpoints on 127.0.0.1 (relays and address lookup off): who
//! sees whom, bytes both ways, impostor ids, close codes and shutdown.

use futures::io::{AsyncReadExt, AsyncWriteExt};
use iroh::endpoint::{ConnectionError, ReadError, VarInt};
use ocd_core::host::transport::{ConnectionHandle, Established, Transport, TransportError, close_code};
use ocd_core::proto::{Keypair, PeerAddr};
use ocd_transport_iroh::{IrohConfig, IrohTransport, IrohTransportError};
use tokio::sync::mpsc;

type Accepted = Result<Established<IrohTransport>, TransportError>;

async fn transport(label: &str) -> (IrohTransport, Keypair) {
    let key = Keypair::derive(7, label);
    let t = IrohTransport::bind(IrohConfig::loopback(key.secret_bytes())).await.expect("bind on loopback");
    (t, key)
}

/// Runs `t`'s accept loop; every finished inbound connection (or its failure) is sent on the channel.
fn spawn_acceptor(t: IrohTransport) -> mpsc::UnboundedReceiver<Accepted> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = t.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(incoming.await);
            });
        }
    });
    rx
}

/// `a` dials `b`, speaks first (the acceptor only sees the stream once bytes arrive), and `b`
/// reads the greeting.
async fn connected_pair(
    a: &IrohTransport,
    b: &IrohTransport,
    accepted: &mut mpsc::UnboundedReceiver<Accepted>,
) -> (Established<IrohTransport>, Established<IrohTransport>) {
    let mut out = a.connect(b.local_addr()).await.expect("dial");
    out.send.write_all(b"hello").await.expect("write greeting");
    let mut inb = accepted.recv().await.expect("acceptor alive").expect("inbound established");
    let mut greeting = [0u8; 5];
    inb.recv.read_exact(&mut greeting).await.expect("read greeting");
    assert_eq!(&greeting, b"hello");
    (out, inb)
}

fn close_code_of(err: &std::io::Error) -> Option<VarInt> {
    match err.get_ref()?.downcast_ref::<ReadError>()? {
        ReadError::ConnectionLost(ConnectionError::ApplicationClosed(close)) => Some(close.error_code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_addr_is_our_key_and_bound_loopback_socket() {
    let (a, key) = transport("a").await;
    let addr = a.local_addr();
    assert_eq!(addr.id, key.peer_id());
    assert_eq!(addr.addrs.len(), 1, "{addr:?}");
    let socket: std::net::SocketAddr = addr.addrs[0].parse().expect("ip:port");
    assert!(socket.ip().is_loopback());
    assert_ne!(socket.port(), 0);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_to_every_ipv4_interface_advertises_concrete_ipv4_addresses() {
    let key = Keypair::derive(7, "wildcard");
    let config = IrohConfig { bind: "0.0.0.0:0".parse().expect("addr"), ..IrohConfig::loopback(key.secret_bytes()) };
    let t = IrohTransport::bind(config).await.expect("bind on 0.0.0.0");
    let addr = t.local_addr();
    assert_eq!(addr.id, key.peer_id());
    for a in &addr.addrs {
        let socket: std::net::SocketAddr = a.parse().expect("ip:port");
        assert!(socket.is_ipv4() && !socket.ip().is_unspecified() && socket.port() != 0, "{addr:?}");
    }
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_authenticates_both_ends_and_bytes_flow_both_ways() {
    let (a, key_a) = transport("a").await;
    let (b, key_b) = transport("b").await;
    let mut accepted = spawn_acceptor(b.clone());

    let (mut out, mut inb) = connected_pair(&a, &b, &mut accepted).await;
    assert_eq!(out.peer, key_b.peer_id());
    assert!(out.outbound);
    assert_eq!(out.remote_addr.as_deref(), b.local_addr().addrs.first().map(String::as_str));
    assert_eq!(inb.peer, key_a.peer_id());
    assert!(!inb.outbound);
    assert_eq!(inb.remote_addr.as_deref(), a.local_addr().addrs.first().map(String::as_str));

    // A bulk transfer larger than the stream windows, read while it is written.
    let bulk: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expected = bulk.clone();
    let writer = tokio::spawn(async move {
        out.send.write_all(&bulk).await.expect("bulk write");
        out.send.flush().await.expect("flush");
        out
    });
    let mut got = vec![0u8; expected.len()];
    inb.recv.read_exact(&mut got).await.expect("bulk read");
    assert!(got == expected, "bulk payload arrived intact");
    let mut out = writer.await.expect("writer task");

    inb.send.write_all(b"reply from b").await.expect("write reply");
    let mut reply = [0u8; 12];
    out.recv.read_exact(&mut reply).await.expect("read reply");
    assert_eq!(&reply, b"reply from b");

    // Closing the writer ends the remote's stream cleanly.
    out.send.close().await.expect("finish");
    let mut rest = Vec::new();
    inb.recv.read_to_end(&mut rest).await.expect("end of stream");
    assert!(rest.is_empty());

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialling_an_address_under_another_peer_id_establishes_nothing() {
    let (a, key_a) = transport("a").await;
    let (b, _) = transport("b").await;
    let mut accepted = spawn_acceptor(b.clone());

    let impostor = PeerAddr { id: Keypair::derive(7, "someone else").peer_id(), addrs: b.local_addr().addrs };
    let err = a.connect(impostor).await.expect_err("b cannot prove the other key");
    assert!(matches!(err, TransportError::Connect(_) | TransportError::WrongPeer { .. }), "{err:?}");

    // The honest dial still works, and it is the only connection b ever established: b's two
    // inbound attempts (in either order) are one failure and the honest one.
    let mut out = a.connect(b.local_addr()).await.expect("honest dial");
    out.send.write_all(b"hello").await.expect("write greeting");
    let (mut established, mut failed) = (Vec::new(), 0);
    while established.is_empty() || failed == 0 {
        match accepted.recv().await.expect("acceptor alive") {
            Ok(inb) => established.push(inb),
            Err(err) => {
                assert!(matches!(err, TransportError::Connect(_)), "{err:?}");
                failed += 1;
            }
        }
    }
    assert_eq!((established.len(), failed), (1, 1));
    assert_eq!(established[0].peer, key_a.peer_id());

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_with_a_code_fails_the_remote_read_with_that_code() {
    let (a, _) = transport("a").await;
    let (b, _) = transport("b").await;
    let mut accepted = spawn_acceptor(b.clone());
    let (out, mut inb) = connected_pair(&a, &b, &mut accepted).await;

    out.handle.close(close_code::SLOW_PEER, "send queue overflowed");
    out.handle.close(close_code::SLOW_PEER, "idempotent");
    let mut buf = [0u8; 16];
    let err = inb.recv.read(&mut buf).await.expect_err("the connection is gone");
    assert_eq!(close_code_of(&err), Some(VarInt::from_u32(close_code::SLOW_PEER)), "{err:?}");

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_normally_and_stops_accepting() {
    let (a, _) = transport("a").await;
    let (b, _) = transport("b").await;
    let mut accepted = spawn_acceptor(b.clone());
    let (mut out, _inb) = connected_pair(&a, &b, &mut accepted).await;

    let (c, _) = transport("c").await;
    let pending_accept = tokio::spawn({
        let c = c.clone();
        async move { c.accept().await.is_none() }
    });

    b.shutdown().await;
    c.shutdown().await;

    let mut buf = [0u8; 16];
    let err = out.recv.read(&mut buf).await.expect_err("b closed the connection");
    assert_eq!(close_code_of(&err), Some(VarInt::from_u32(close_code::NORMAL)), "{err:?}");
    assert!(accepted.recv().await.is_none(), "b's accept loop ended");
    assert!(b.accept().await.is_none());
    assert!(pending_accept.await.expect("accept task"), "an accept waiting across shutdown returns None");
    assert!(matches!(b.connect(a.local_addr()).await, Err(TransportError::Closed)));

    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_addresses_are_refused_before_dialling() {
    let (a, _) = transport("a").await;
    let (b, _) = transport("b").await;
    let id = b.local_addr().id;
    for addrs in [vec![], vec!["not an address".to_string(), "example.org".to_string()]] {
        let err = a.connect(PeerAddr { id, addrs }).await.expect_err("nothing to dial");
        assert!(matches!(err, TransportError::BadAddress { .. }), "{err:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_not_below_idle_timeout_is_refused_at_bind() {
    let config = IrohConfig {
        keep_alive: IrohConfig::DEFAULT_IDLE_TIMEOUT,
        ..IrohConfig::loopback(Keypair::derive(7, "a").secret_bytes())
    };
    assert!(matches!(IrohTransport::bind(config).await, Err(IrohTransportError::KeepAlive { .. })));
}
