//! Heartbeat round trips on loopback: what the ocd transport and wire framing cost on top of iroh.
//!
//! * `bare_iroh_echo` — two iroh endpoints, one connection, one bidirectional stream; each
//!   iteration writes a request as long as an encoded heartbeat frame and reads its echo.
//! * `ocd_heartbeat` — the same through [`IrohTransport`] and its `Established` streams, with the
//!   wire framing: the client writes `encode_frame(Heartbeat)`, the peer decodes it with a
//!   [`FrameDecoder`] and answers an encoded `HeartbeatResponse` frame, which the client decodes.
//!
//! Both share one tokio runtime and the same endpoint configuration. After criterion's report a
//! summary prints messages per second for each and the ratio ocd/bare of the time per round trip.
//! Run: `cargo bench -p ocd-transport-iroh --bench roundtrip` (about 15 s).

use criterion::Criterion;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use ocd_core::host::transport::{ALPN, Established, Transport};
use ocd_core::proto::wire::{
    ChallengeEntry, FrameDecoder, Heartbeat, HeartbeatKind, HeartbeatResponse, IndexerMessage, RequestId, encode_frame,
};
use ocd_core::proto::{Envelope, Keypair, PeerId, Timestamp};
use ocd_transport_iroh::{IrohConfig, IrohTransport};
use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// The challenged peers (own id + 2 others), derived once: key derivation is not what we measure.
fn challenged() -> &'static [PeerId] {
    static PEERS: OnceLock<Vec<PeerId>> = OnceLock::new();
    PEERS.get_or_init(|| (0..3).map(|i| Keypair::derive(i, "challenged").peer_id()).collect())
}

/// A regular heartbeat carrying a challenge batch and a pool hint.
fn heartbeat(req: u64) -> Envelope {
    Envelope::from(Heartbeat {
        need: 1,
        challenges: challenged().to_vec(),
        want_witnesses: true,
        ..Heartbeat::bare(RequestId(req), HeartbeatKind::Regular)
    })
}

/// The indexer's answer to [`heartbeat`]: metrics and the three challenge answers.
fn heartbeat_response(req: RequestId) -> Envelope {
    let challenges = challenged()
        .iter()
        .map(|&peer| ChallengeEntry { peer, found: true, last_seen: Some(Timestamp::from_millis(1_700_000_000_000)) })
        .collect();
    Envelope::from(HeartbeatResponse {
        req,
        fill_rate: 0.25,
        peer_count: 250,
        max_nodes: 1000,
        born_at: Timestamp::from_millis(1_699_000_000_000),
        challenges,
        did_found: None,
        did_record: None,
        record_expires: Some(Timestamp::from_millis(1_700_000_300_000)),
        witnesses: Vec::new(),
        suggestions: Vec::new(),
        suggest_migrate: false,
    })
}

async fn bind(label: &str) -> IrohTransport {
    IrohTransport::bind(IrohConfig::loopback(Keypair::derive(1, label).secret_bytes())).await.expect("bind")
}

/// Round trips timed by one benchmark (warm-up included), for the summary.
#[derive(Default)]
struct Tally {
    iters: Cell<u64>,
    elapsed: Cell<Duration>,
}

impl Tally {
    fn add(&self, iters: u64, elapsed: Duration) {
        self.iters.set(self.iters.get() + iters);
        self.elapsed.set(self.elapsed.get() + elapsed);
    }

    fn per_round_trip(&self) -> Duration {
        self.elapsed.get().div_f64(self.iters.get().max(1) as f64)
    }

    fn per_second(&self) -> f64 {
        self.iters.get() as f64 / self.elapsed.get().as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// (a) Bare iroh: echo `request_len` bytes per iteration.
fn bare_iroh_echo(c: &mut Criterion, rt: &Runtime, request_len: usize, tally: &Tally) {
    let (client, server) = rt.block_on(async { (bind("bare-client").await, bind("bare-server").await) });
    let server_ep = server.endpoint().clone();
    rt.spawn(async move {
        let Some(incoming) = server_ep.accept().await else { return };
        let Ok(accepting) = incoming.accept() else { return };
        let Ok(conn) = accepting.await else { return };
        let Ok((mut send, mut recv)) = conn.accept_bi().await else { return };
        let mut buf = vec![0u8; request_len];
        while recv.read_exact(&mut buf).await.is_ok() {
            if send.write_all(&buf).await.is_err() {
                break;
            }
        }
        conn.closed().await;
    });
    let server_addr = server.endpoint().addr();
    let (conn, mut send, mut recv) = rt.block_on(async {
        let conn = client.endpoint().connect(server_addr, ALPN).await.expect("bare connect");
        let (send, recv) = conn.open_bi().await.expect("open_bi");
        (conn, send, recv)
    });
    let request = vec![0x5a; request_len];
    let mut echo = vec![0u8; request_len];

    c.bench_function("bare_iroh_echo", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    send.write_all(&request).await.expect("write");
                    recv.read_exact(&mut echo).await.expect("read echo");
                }
                let elapsed = start.elapsed();
                tally.add(iters, elapsed);
                elapsed
            })
        })
    });
    conn.close(0u32.into(), b"done");
    rt.block_on(async {
        client.shutdown().await;
        server.shutdown().await;
    });
}

/// The indexer side of (b): decode heartbeats, answer each with an encoded response frame.
async fn answer_heartbeats(mut peer: Established<IrohTransport>) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match peer.recv.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        decoder.extend(&buf[..n]);
        while let Ok(Some(msg)) = decoder.next_message() {
            if let Envelope::Indexer(IndexerMessage::Heartbeat(hb)) = msg
                && peer.send.write_all(&encode_frame(&heartbeat_response(hb.req))).await.is_err()
            {
                return;
            }
        }
    }
}

/// (b) Through `IrohTransport` with the wire framing.
fn ocd_heartbeat(c: &mut Criterion, rt: &Runtime, tally: &Tally) {
    let (client, server) = rt.block_on(async { (bind("ocd-client").await, bind("ocd-server").await) });
    let acceptor = server.clone();
    rt.spawn(async move {
        let Some(incoming) = acceptor.accept().await else { return };
        if let Ok(peer) = incoming.await {
            answer_heartbeats(peer).await;
        }
    });
    let mut conn = rt.block_on(client.connect(server.local_addr())).expect("ocd connect");
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    let mut next_req = 0u64;

    c.bench_function("ocd_heartbeat", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    next_req += 1;
                    conn.send.write_all(&encode_frame(&heartbeat(next_req))).await.expect("write heartbeat");
                    let reply = loop {
                        if let Some(msg) = decoder.next_message().expect("valid frames") {
                            break msg;
                        }
                        let n = conn.recv.read(&mut buf).await.expect("read response");
                        assert!(n > 0, "peer closed the stream");
                        decoder.extend(&buf[..n]);
                    };
                    assert!(matches!(reply, Envelope::Indexer(IndexerMessage::HeartbeatResponse(r)) if r.req == RequestId(next_req)));
                }
                let elapsed = start.elapsed();
                tally.add(iters, elapsed);
                elapsed
            })
        })
    });
    rt.block_on(async {
        client.shutdown().await;
        server.shutdown().await;
    });
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let request_len = encode_frame(&heartbeat(1)).len();
    let response_len = encode_frame(&heartbeat_response(RequestId(1))).len();
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();

    let (bare, ocd) = (Tally::default(), Tally::default());
    bare_iroh_echo(&mut c, &rt, request_len, &bare);
    ocd_heartbeat(&mut c, &rt, &ocd);
    c.final_summary();

    // `cargo test --benches` runs each routine once: too few round trips for a meaningful summary.
    if bare.iters.get() >= 100 && ocd.iters.get() >= 100 {
        eprintln!(
            "roundtrip summary: heartbeat frame {request_len} B, response frame {response_len} B\n  \
             (a) bare iroh echo : {:>9.1?}/rt  {:>9.0} msg/s\n  \
             (b) ocd heartbeat  : {:>9.1?}/rt  {:>9.0} msg/s\n  \
             ratio b/a (time per round trip): {:.2}",
            bare.per_round_trip(),
            bare.per_second(),
            ocd.per_round_trip(),
            ocd.per_second(),
            ocd.per_round_trip().as_secs_f64() / bare.per_round_trip().as_secs_f64().max(f64::MIN_POSITIVE),
        );
    }
}
