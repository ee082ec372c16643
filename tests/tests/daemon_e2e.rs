//! End to end over real QUIC on 127.0.0.1, for both runtimes: `ocd` (tokio + iroh) and `ocd-smol`
//! (smol + quinn). Every daemon is a separate process started from a config file, as a user runs
//! it; outcomes are read from the control socket. No timed assertions: conditions are polled up to
//! generous limits.

use futures::io::{AsyncReadExt, AsyncWriteExt};
use ocd_core::host::transport::Transport;
use ocd_core::proto::{Keypair, PeerAddr};
use ocd_tests::{Net, devnet};
use std::process::Output;
use std::time::{Duration, Instant};

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

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// One devnet of 3 indexers and 4 nodes serves every lookup assertion: by DID and by peer id from
/// a node, through an indexer's own DHT, an unknown DID (exit 1), and a node with no live indexer
/// (a bounded error, exit 2). Phase timings are printed for the record.
fn lookups_find_nodes_by_did_and_peer_id(runtime: &str) {
    let t0 = Instant::now();
    let mut net = Net::new(runtime);
    let mut seeds = Vec::new();
    let mut indexers = Vec::new();
    for i in 0..3 {
        let name = format!("indexer-{i}");
        let ix = net.start(&name, &net.config(&name, "indexer", seeds.clone()));
        seeds.push(net.address(ix));
        indexers.push(ix);
    }
    let nodes: Vec<usize> = (0..4)
        .map(|j| {
            let name = format!("node-{j}");
            let mut c = net.config(&name, "node", seeds.clone());
            c.protocol.min_indexers = 2;
            net.start(&name, &c)
        })
        .collect();
    let converged = net.wait_until(Duration::from_secs(90), |n| nodes.iter().all(|&i| n.status(i).at_min_pool()));
    assert!(converged, "the nodes never reached their pools:\n{}", net.logs());
    let t_converged = t0.elapsed();
    let (a, b) = (nodes[0], nodes[1]);
    let sb = net.status(b);
    let (b_peer, b_did) = (sb.peer_id.clone(), sb.did.clone());
    let b_addr = sb.address.split_once('@').map(|(_, a)| a.to_string()).expect("address");

    // B's record reaches the DHT with its heartbeats; poll until A can find it.
    let found =
        net.wait_until(Duration::from_secs(90), |n| n.cli(a, &["lookup", &b_did, "--timeout", "10s"]).status.success());
    assert!(found, "node-0 never found node-1 by DID:\n{}", net.logs());
    let t_found = t0.elapsed();

    let by_did = net.cli(a, &["lookup", &b_did]);
    let (out, err) = text(&by_did);
    assert!(by_did.status.success(), "{out}\n{err}");
    assert!(out.contains(&b_peer) && out.contains(&b_did), "{out}");
    assert!(out.contains(&b_addr), "the record carries B's dialable address {b_addr}: {out}");

    let by_peer = net.cli(a, &["lookup", &b_peer, "--json"]);
    let (out, err) = text(&by_peer);
    assert!(by_peer.status.success(), "{out}\n{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(json["found"], true);
    assert_eq!(json["key"], format!("/pid/{b_peer}"));
    assert_eq!(json["record"]["peer_id"], b_peer.as_str());
    assert_eq!(json["record"]["did"], b_did.as_str());
    assert_eq!(json["record"]["name"], "node-1");
    assert!(json["record"]["expires_at_ms"].as_u64() > json["record"]["issued_at_ms"].as_u64(), "{json}");
    assert!(json["attempts"].as_u64() >= Some(1), "{json}");

    // Several lookups at once through one daemon, which keeps serving meanwhile.
    let keys: Vec<String> = nodes.iter().flat_map(|&i| [net.status(i).did, net.status(i).peer_id]).collect();
    let outcomes: Vec<(String, Output)> = std::thread::scope(|s| {
        let net = &net;
        let running: Vec<_> =
            keys.iter().map(|k| s.spawn(move || (k.clone(), net.cli(a, &["lookup", k, "--json"])))).collect();
        assert!(net.status(a).at_min_pool(), "status answers while lookups run");
        running.into_iter().map(|h| h.join().expect("lookup thread")).collect()
    });
    for (k, o) in &outcomes {
        let (out, err) = text(o);
        assert!(o.status.success(), "{k}: {out}\n{err}");
        assert!(out.contains(k.as_str()), "{k}: {out}");
    }

    // An indexer looks up through its own store and the DHT.
    let via_indexer = net.cli(indexers[2], &["lookup", &b_did]);
    let (out, err) = text(&via_indexer);
    assert!(via_indexer.status.success(), "{out}\n{err}");
    assert!(out.contains(&b_peer), "{out}");

    let unknown = net.cli(a, &["lookup", "did:example:nobody-has-this-one"]);
    let (out, err) = text(&unknown);
    assert_eq!(unknown.status.code(), Some(1), "not found is exit 1: {out}\n{err}");
    assert!(err.contains("not found"), "{err}");

    // The status shows the record and DHT view.
    let sa = net.status(a);
    let own = sa.record.as_ref().expect("a node signs its record");
    assert!(own.expires_at_ms > sa.now_ms, "{}", sa.render());
    assert_eq!(sa.dht.mode, "client");
    assert!(sa.counters.lookups_found >= 2 && sa.counters.lookups_not_found >= 1, "{:?}", sa.counters);
    let si = net.status(indexers[0]);
    assert_eq!(si.dht.mode, "server");
    assert!(si.dht.view.records >= 4, "every node's record is held: {}", si.render());
    assert!(si.dht.view.table_size >= 1, "{}", si.render());
    let t_asserted = t0.elapsed();

    // A node whose pool is empty (its only seed is dead) fails cleanly and at once.
    let dead = format!("{}@127.0.0.1:9", Keypair::derive(rand_seed(), "dead").peer_id());
    let lonely = net.start("lonely", &net.config("lonely", "node", vec![dead]));
    let started = Instant::now();
    let none = net.cli(lonely, &["lookup", &b_did, "--timeout", "20s"]);
    let (out, err) = text(&none);
    assert_eq!(none.status.code(), Some(2), "no indexer to ask is an error: {out}\n{err}");
    assert!(err.contains("no live indexer"), "{err}");
    let t_lonely = started.elapsed();

    // Indexers that hold the connection but never answer (SIGSTOP): the core would wait
    // `lookup_timeout` per indexer; the client's bound ends the wait first, as an error.
    let signal = |sig: &str, i: usize| {
        let pid = net.daemons[i].pid().expect("running").to_string();
        assert!(std::process::Command::new("kill").arg(sig).arg(&pid).status().expect("kill").success());
    };
    indexers.iter().for_each(|&i| signal("-STOP", i));
    let started = Instant::now();
    let stuck = net.cli(a, &["lookup", &b_did, "--timeout", "2s"]);
    let t_stuck = started.elapsed();
    indexers.iter().for_each(|&i| signal("-CONT", i));
    let (out, err) = text(&stuck);
    assert_eq!(stuck.status.code(), Some(2), "an unanswered lookup is an error: {out}\n{err}");
    assert!(err.contains("no answer within 2s"), "{err}");
    assert!(net.status(a).counters.lookups_timed_out >= 1);
    eprintln!(
        "[{runtime}] lookup e2e: converged {:.1}s, first lookup ok {:.1}s, assertions done {:.1}s, \
         empty-pool lookup answered in {:.2}s, stopped-indexers lookup bounded at {:.2}s, total {:.1}s",
        t_converged.as_secs_f64(),
        t_found.as_secs_f64(),
        t_asserted.as_secs_f64(),
        t_lonely.as_secs_f64(),
        t_stuck.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

/// Ctrl-C (SIGINT) to `ocd devnet` stops every daemon gracefully, prints the summary seen so far
/// and exits 130 within seconds, leaving no daemon running.
fn sigint_stops_devnet_and_every_daemon(runtime: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let net_dir = dir.path().join("net");
    let mut child = std::process::Command::new(ocd_tests::runtime_binary(runtime))
        .args(["devnet", "--indexers", "2", "--nodes", "2", "--duration", "300s", "--json", "--dir"])
        .arg(&net_dir)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn devnet");
    // Wait until the watch loop runs (its first progress line), then interrupt.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut seen = String::new();
    while !seen.contains("nodes at min(") {
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("devnet never watched:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        assert!(started.elapsed() < Duration::from_secs(90), "devnet never watched:\n{seen}");
    }
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(kill.success());
    let t0 = Instant::now();
    let out = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "devnet still running 20 s after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(out.code(), Some(130), "exit status after SIGINT");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout).expect("read stdout");
    let json: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("no summary ({e}): {stdout}"));
    assert_eq!(json["interrupted"], true);
    assert_eq!(json["converged"], false);
    assert_eq!(json["peers"].as_array().map(Vec::len), Some(4), "{json:#}");
    // No daemon of this devnet is left: none has its data directory on its command line.
    let needle = net_dir.to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle) && !c.contains(" devnet "))
        .collect();
    assert!(left.is_empty(), "daemons left running: {left:?}");
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
            #[test]
            fn lookups_find_nodes_by_did_and_peer_id() {
                super::lookups_find_nodes_by_did_and_peer_id($runtime);
            }
            #[test]
            fn sigint_stops_devnet_and_every_daemon() {
                super::sigint_stops_devnet_and_every_daemon($runtime);
            }
        }
    };
}

e2e!(tokio_iroh, "tokio");
e2e!(smol_quinn, "smol");
