//! End to end over real QUIC on 127.0.0.1, for both runtimes: `ocd` (tokio + iroh) and `ocd-smol`
//! (smol + quinn). Every daemon is a separate process started from a config file, as a user runs
//! it; outcomes are read from the control socket. No timed assertions: conditions are polled up to
//! generous limits.

use futures::io::{AsyncReadExt, AsyncWriteExt};
use ocd_core::host::transport::Transport;
use ocd_core::proto::{Keypair, PeerAddr};
use ocd_tests::{Net, devnet};
use std::time::Duration;

/// What a raw client observed after sending its bytes.
#[derive(Debug, PartialEq)]
enum Probe {
    /// The daemon closed the connection.
    Closed,
    /// Still open after the wait.
    Open,
}

/// Dials `addr` over the runtime's real transport with a fresh key, sends `bytes` on the stream,
/// and reports whether the daemon closed the connection within 10 s.
fn probe(runtime: &str, addr: &str, bytes: Vec<u8>) -> Probe {
    let pa: PeerAddr = addr.parse().expect("address");
    let key = Keypair::derive(rand_seed(), "probe");
    async fn exchange<T: Transport>(
        t: T,
        pa: PeerAddr,
        bytes: Vec<u8>,
        sleep: impl std::future::Future<Output = ()>,
    ) -> Probe {
        let mut est = t.connect(pa).await.expect("connect");
        est.send.write_all(&bytes).await.expect("write");
        let _ = est.send.flush().await;
        let mut buf = vec![0u8; 4096];
        let read = async {
            loop {
                match est.recv.read(&mut buf).await {
                    Ok(0) | Err(_) => return Probe::Closed,
                    Ok(_) => {} // e.g. the daemon's Hello
                }
            }
        };
        let r = futures::future::select(Box::pin(read), Box::pin(sleep)).await;
        let out = match r {
            futures::future::Either::Left((p, _)) => p,
            futures::future::Either::Right(_) => Probe::Open,
        };
        t.shutdown().await;
        out
    }
    if runtime == "smol" {
        smol::block_on(async {
            let cfg = ocd_runtime_smol::transport::QuinnConfig::new(key, "127.0.0.1:0".parse().expect("addr"));
            let t = ocd_runtime_smol::transport::QuinnTransport::bind(cfg).expect("bind");
            exchange(t, pa, bytes, async {
                smol::Timer::after(Duration::from_secs(10)).await;
            })
            .await
        })
    } else {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio");
        rt.block_on(async {
            let cfg = ocd_transport_iroh::IrohConfig::loopback(key.secret_bytes());
            let t = ocd_transport_iroh::IrohTransport::bind(cfg).await.expect("bind");
            exchange(t, pa, bytes, tokio::time::sleep(Duration::from_secs(10))).await
        })
    }
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
}

fn converge_3_indexers_10_nodes(runtime: &str) {
    let (status, json, stderr) =
        devnet(runtime, &["--indexers", "3", "--nodes", "10", "--duration", "90s", "--until-converged"]);
    assert!(status.success(), "devnet did not converge: {json:#}\n{stderr}");
    assert_eq!(json["runtime"], runtime);
    assert_eq!(json["converged"], true);
    assert_eq!(json["nodes_below_min"], 0);
    let min = json["min_indexers"].as_u64().expect("min");
    assert_eq!(min, 3);
    let peers = json["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 13);
    for p in peers.iter().filter(|p| p["role"] == "node") {
        assert!(p["live_pool"].as_u64().expect("pool") >= min, "{p}");
        let score = p["mean_score"].as_f64().expect("a node at its minimum has scores");
        assert!(score > 0.0 && score <= 100.0, "{p}");
    }
    let sessions: u64 =
        peers.iter().filter(|p| p["role"] == "indexer").map(|p| p["sessions"].as_u64().unwrap_or(0)).sum();
    assert!(sessions >= 30, "every node has a session at each of the 3 indexers: {sessions}");
}

fn sigkilled_indexer_is_detected_and_replaced(runtime: &str) {
    let (status, json, stderr) = devnet(
        runtime,
        &[
            "--indexers",
            "4",
            "--nodes",
            "6",
            "--min-indexers",
            "3",
            "--duration",
            "120s",
            "--until-converged",
            "--chaos",
        ],
    );
    assert!(status.success(), "{json:#}\n{stderr}");
    let chaos = &json["chaos"];
    let affected = chaos["nodes_affected"].as_u64().expect("affected");
    assert!(affected > 0, "the victim was live somewhere: {chaos}");
    assert_eq!(chaos["nodes_detected"].as_u64(), Some(affected), "{chaos}");
    assert!(chaos["recovered_after_secs"].is_number(), "{chaos}");
    let killed = chaos["killed"].as_str().expect("killed");
    for p in json["peers"].as_array().expect("peers").iter().filter(|p| p["role"] == "node") {
        assert!(p["live_pool"].as_u64().expect("pool") >= 3, "{p}");
        assert_ne!(p["peer"], killed);
    }
}

fn wrong_network_key_gets_nothing_processed(runtime: &str) {
    let mut net = Net::new(runtime);
    let ix = net.start("indexer", &net.config("indexer", "indexer", vec![]));
    let addr = net.address(ix);
    let mut cfg = net.config("intruder", "node", vec![addr]);
    let other_key = net.dir().join("other.key");
    ocd_core::host::identity::create_network_key(&other_key).expect("key");
    cfg.network_key = other_key;
    let intruder = net.start("intruder", &cfg);
    let failed = net.wait_until(Duration::from_secs(60), |n| {
        n.status(ix).counters.handshake_failures + n.status(intruder).counters.handshake_failures >= 1
    });
    assert!(failed, "the Hello exchange never failed:\n{}", net.logs());
    let s = net.status(ix);
    assert_eq!(s.indexer.as_ref().map(|i| i.sessions), Some(0), "{}", s.render());
    assert_eq!(s.counters.heartbeats_received, 0, "nothing from the intruder reached the core");
    let n = net.status(intruder);
    assert_eq!(n.pool.as_ref().map(|p| p.live), Some(0), "{}", n.render());
}

fn bad_frames_close_only_that_connection(runtime: &str) {
    let mut net = Net::new(runtime);
    let ix = net.start("indexer", &net.config("indexer", "indexer", vec![]));
    let addr = net.address(ix);
    let node = net.start("node", &net.config("node", "node", vec![addr.clone()]));
    assert!(
        net.wait_until(Duration::from_secs(60), |n| n.status(node).at_min_pool()),
        "node never reached its pool:\n{}",
        net.logs()
    );
    // A frame whose payload is not a message (unknown wire version).
    let mut malformed = 5u32.to_be_bytes().to_vec();
    malformed.extend_from_slice(&[0xEE, 1, 2, 3, 4]);
    assert_eq!(probe(runtime, &addr, malformed), Probe::Closed);
    // A length prefix far above the 64 KiB limit.
    let mut oversized = (16u32 << 20).to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0u8; 1024]);
    assert_eq!(probe(runtime, &addr, oversized), Probe::Closed);
    let s = net.status(ix);
    assert!(s.counters.protocol_errors >= 2, "{:?}", s.counters);
    // The honest node's connection was not touched: it stays live and keeps heartbeating.
    let before = net.status(node).counters.heartbeats_sent;
    assert!(
        net.wait_until(Duration::from_secs(60), |n| {
            let st = n.status(node);
            st.at_min_pool() && st.counters.heartbeats_sent > before
        }),
        "{}",
        net.logs()
    );
    assert_eq!(net.status(ix).indexer.map(|i| i.sessions), Some(1));
}

fn restarted_daemon_keeps_key_and_did_and_sigterm_is_graceful(runtime: &str) {
    let mut net = Net::new(runtime);
    let ix = net.start("indexer", &net.config("indexer", "indexer", vec![]));
    let first = net.status(ix);
    let status = net.daemons[ix].terminate(Duration::from_secs(15)).expect("exits on SIGTERM");
    assert!(status.success(), "graceful shutdown exits 0: {status:?}\n{}", net.logs());
    assert!(!net.daemons[ix].data_dir.join("control.sock").exists(), "control socket removed on shutdown");
    net.restart(ix);
    let again = net.status(ix);
    assert_eq!(again.peer_id, first.peer_id);
    assert_eq!(again.did, first.did);
}

macro_rules! e2e {
    ($module:ident, $runtime:literal) => {
        mod $module {
            #[test]
            fn three_indexers_and_ten_nodes_converge_with_scores() {
                super::converge_3_indexers_10_nodes($runtime);
            }
            #[test]
            fn sigkilled_indexer_is_detected_and_replaced() {
                super::sigkilled_indexer_is_detected_and_replaced($runtime);
            }
            #[test]
            fn wrong_network_key_gets_nothing_processed() {
                super::wrong_network_key_gets_nothing_processed($runtime);
            }
            #[test]
            fn malformed_and_oversized_frames_close_only_that_connection() {
                super::bad_frames_close_only_that_connection($runtime);
            }
            #[test]
            fn restarted_daemon_keeps_key_and_did_and_sigterm_is_graceful() {
                super::restarted_daemon_keeps_key_and_did_and_sigterm_is_graceful($runtime);
            }
        }
    };
}

e2e!(tokio_iroh, "tokio");
e2e!(smol_quinn, "smol");
