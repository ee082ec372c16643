//! The quinn transport (`ocd-smol`) and the iroh transport (`ocd`) connect to each other, in both
//! directions, over real UDP on 127.0.0.1 with relays and address lookup off; a dial naming another
//! key fails on both; and the quinn transport bounds its inbound handshakes.
//!
//! iroh runs on a tokio runtime of its own, quinn on smol; the test body drives both from
//! `smol::block_on` (the futures of each only need their own runtime's reactor to be running).

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use ocd_core::host::transport::{Established, InboundLimits, Transport, TransportError};
use ocd_core::proto::{Keypair, PeerAddr};
use ocd_runtime_smol::transport::{QuinnConfig, QuinnTransport};
use ocd_transport_iroh::{IrohConfig, IrohTransport};
use std::future::Future;
use std::time::Duration;

async fn write(send: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) {
    send.write_all(bytes).await.expect("write");
    send.flush().await.expect("flush");
}

async fn read_exactly(recv: &mut (impl AsyncRead + Unpin), len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.expect("read");
    buf
}

fn quinn(label: &str) -> QuinnTransport {
    let bind = "127.0.0.1:0".parse().expect("address");
    QuinnTransport::bind(QuinnConfig::new(Keypair::derive(42, label), bind)).expect("bind")
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio")
}

/// Runs `future` on `rt` and awaits it from any executor.
async fn on<T: Send + 'static>(rt: &tokio::runtime::Runtime, future: impl Future<Output = T> + Send + 'static) -> T {
    rt.spawn(future).await.expect("task")
}

/// At most `secs` seconds of `future`.
async fn within<T>(secs: u64, future: impl Future<Output = T>) -> Option<T> {
    smol::future::or(async { Some(future.await) }, async {
        smol::Timer::after(Duration::from_secs(secs)).await;
        None
    })
    .await
}

#[test]
fn quinn_and_iroh_connect_both_ways_and_bytes_flow() {
    let rt = tokio_runtime();
    let iroh_key = Keypair::derive(42, "iroh");
    let iroh = rt.block_on(IrohTransport::bind(IrohConfig::loopback(iroh_key.secret_bytes()))).expect("iroh binds");
    let q = quinn("quinn");
    smol::block_on(async {
        // quinn dials iroh.
        let (i, target) = (iroh.clone(), iroh.local_addr());
        let accept = on(&rt, async move {
            let incoming = i.accept().await.expect("iroh is accepting");
            let mut conn: Established<IrohTransport> = incoming.await.expect("iroh accepts quinn");
            let hello = read_exactly(&mut conn.recv, 5).await;
            write(&mut conn.send, b"world").await;
            (conn.peer, hello, conn)
        });
        let dial = async {
            let mut conn = q.connect(target).await.expect("quinn dials iroh");
            write(&mut conn.send, b"hello").await;
            let reply = read_exactly(&mut conn.recv, 5).await;
            (conn.peer, reply, conn)
        };
        let ((seen_by_iroh, hello, _ic), (seen_by_quinn, reply, _qc)) =
            within(20, futures::future::join(accept, dial)).await.expect("quinn → iroh within 20 s");
        assert_eq!(seen_by_iroh, q.local_addr().id, "iroh authenticated quinn's key");
        assert_eq!(seen_by_quinn, iroh_key.peer_id(), "quinn authenticated iroh's key");
        assert_eq!((hello.as_slice(), reply.as_slice()), (&b"hello"[..], &b"world"[..]));

        // iroh dials quinn.
        let (i, target) = (iroh.clone(), q.local_addr());
        let dial = on(&rt, async move {
            let mut conn = i.connect(target).await.expect("iroh dials quinn");
            write(&mut conn.send, b"hello").await;
            let reply = read_exactly(&mut conn.recv, 5).await;
            (conn.peer, reply, conn)
        });
        let accept = async {
            let incoming = q.accept().await.expect("quinn is accepting");
            let mut conn = incoming.await.expect("quinn accepts iroh");
            let hello = read_exactly(&mut conn.recv, 5).await;
            write(&mut conn.send, b"world").await;
            (conn.peer, hello, conn)
        };
        let ((seen_by_iroh, reply, _ic), (seen_by_quinn, hello, _qc)) =
            within(20, futures::future::join(dial, accept)).await.expect("iroh → quinn within 20 s");
        assert_eq!(seen_by_quinn, iroh_key.peer_id());
        assert_eq!(seen_by_iroh, q.local_addr().id);
        assert_eq!((hello.as_slice(), reply.as_slice()), (&b"hello"[..], &b"world"[..]));

        // A dial naming another key fails, both ways (the acceptor runs the handshake meanwhile;
        // it must not yield a connection either).
        let someone_else = Keypair::derive(42, "someone-else").peer_id();
        let wrong = PeerAddr { id: someone_else, addrs: iroh.local_addr().addrs };
        let i = iroh.clone();
        let iroh_side = on(&rt, async move {
            let incoming = i.accept().await.expect("iroh is accepting");
            tokio::time::timeout(Duration::from_secs(5), incoming).await.map(|r| r.map(|c| c.peer))
        });
        let (failed, accepted) = within(20, futures::future::join(q.connect(wrong), iroh_side)).await.expect("ends");
        assert!(matches!(failed, Err(TransportError::Connect(_) | TransportError::WrongPeer { .. })), "{failed:?}");
        assert!(!matches!(accepted, Ok(Ok(_))), "iroh must not accept: {accepted:?}");

        let (i, wrong) = (iroh.clone(), PeerAddr { id: someone_else, addrs: q.local_addr().addrs });
        let dial = on(&rt, async move { i.connect(wrong).await.map(|c| c.peer) });
        let quinn_side = async {
            let incoming = q.accept().await.expect("quinn is accepting");
            within(5, incoming).await.map(|r| r.map(|c| c.peer))
        };
        let (failed, accepted) = within(20, futures::future::join(dial, quinn_side)).await.expect("ends");
        assert!(failed.is_err(), "{failed:?}");
        assert!(!matches!(accepted, Some(Ok(_))), "quinn must not accept: {accepted:?}");

        q.shutdown().await;
    });
    rt.block_on(iroh.shutdown());
}

#[test]
fn inbound_handshakes_beyond_the_limit_are_dropped_until_a_slot_frees() {
    smol::block_on(async {
        let a = quinn("a");
        let bind = "127.0.0.1:0".parse().expect("address");
        let limits =
            InboundLimits { max_handshakes: 8, max_per_source: 2, summary_interval: Duration::from_secs(3600) };
        let b =
            QuinnTransport::bind(QuinnConfig { inbound: limits, ..QuinnConfig::new(Keypair::derive(42, "b"), bind) })
                .expect("bind");
        let limiter = b.handshake_limiter().clone();
        let source = Some("127.0.0.1".parse().expect("ip"));

        // B accepts in the background; each admitted attempt waits for the dialer's first bytes.
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let acceptor = b.clone();
        let accept_loop = smol::spawn(async move {
            while let Some(incoming) = acceptor.accept().await {
                let tx = tx.clone();
                smol::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        let _ = tx.unbounded_send(conn);
                    }
                })
                .detach();
            }
        });

        // Two silent dialers (handshake done, stream opened, nothing written) fill 127.0.0.1's slots.
        let mut first = a.connect(b.local_addr()).await.expect("dial 1");
        let _second = a.connect(b.local_addr()).await.expect("dial 2");
        let both_in_flight = within(5, async {
            while limiter.in_flight(source).1 < 2 {
                smol::Timer::after(Duration::from_millis(20)).await;
            }
        });
        assert!(both_in_flight.await.is_some(), "two handshakes in flight");
        // A third is dropped (no answer at all) while they stay silent.
        let third = within(2, a.connect(b.local_addr())).await;
        assert!(third.is_none(), "the third handshake must not complete while two are in flight: {third:?}");

        // The first dialer speaks: its slot frees once B reads the bytes, and a new dial gets through.
        write(&mut first.send, b"hello").await;
        let mut rx = rx;
        let mut accepted = within(5, futures::StreamExt::next(&mut rx)).await.flatten().expect("B accepts the first");
        assert_eq!(read_exactly(&mut accepted.recv, 5).await, b"hello");
        assert_eq!(limiter.in_flight(source).1, 1, "the first bytes released the slot");
        let mut fourth = within(10, a.connect(b.local_addr())).await.expect("a slot is free").expect("dial 4");
        write(&mut fourth.send, b"again").await;
        let counts = limiter.take_summary(std::time::Instant::now() + Duration::from_secs(3600)).expect("interval");
        assert!(counts.dropped_per_source >= 1, "{counts:?}");
        assert!(counts.admitted >= 3, "{counts:?}");

        a.shutdown().await;
        b.shutdown().await;
        drop(accept_loop);
    });
}
