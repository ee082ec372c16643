//! One network whatever the runtime (issue 15): `ocd` (tokio + iroh) and `ocd-smol` (smol + quinn)
//! daemons, each a separate process on 127.0.0.1 with relays and address lookup off, form one
//! network in both directions — indexers on one runtime serve nodes on the other — and look each
//! other up; a SIGKILLed node of the other runtime comes back; `ocd devnet --runtime mixed`
//! converges. Conditions are polled up to generous limits; phase timings are printed.

use ocd_core::host::config::DaemonConfig;
use ocd_tests::{Net, devnet, runtime_binary};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Starts daemon `name` with `config` on `runtime`'s binary. QUIC notices a dead peer after 4 s
/// of silence (keep-alive 1 s) instead of 20 s, to keep the SIGKILL phases short.
fn start_on(net: &mut Net, runtime: &str, name: &str, config: &DaemonConfig) -> usize {
    let mut config = config.clone();
    config.keep_alive = Duration::from_secs(1);
    config.quic_idle_timeout = Duration::from_secs(4);
    net.binary = runtime_binary(runtime);
    let i = net.start(name, &config);
    assert_eq!(net.status(i).runtime, runtime, "{name} runs on {runtime}");
    i
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
fn free_udp_port() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr")
}

/// Runs a client command against daemon `i` with `runtime`'s binary.
fn cli_on(net: &Net, runtime: &str, i: usize, args: &[&str]) -> Output {
    Command::new(runtime_binary(runtime))
        .args(args)
        .arg("--data-dir")
        .arg(&net.daemons[i].data_dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run the client command")
}

fn text(o: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Two indexers on `indexer_rt`, three nodes on `node_rt` (each seeded with both, minimum pool 2):
/// every node reaches both indexers, the nodes and the indexers look each other up by DID and by
/// peer id, and a SIGKILLed node restarts and is back at its minimum.
fn mixed_network_converges_and_looks_up(indexer_rt: &str, node_rt: &str) {
    let t0 = Instant::now();
    let mut net = Net::new(indexer_rt);
    let mut seeds = Vec::new();
    let mut indexers = Vec::new();
    for i in 0..2 {
        let name = format!("indexer-{i}");
        let mut c = net.config(&name, "indexer", seeds.clone());
        c.listen = free_udp_port(); // fixed, so that a restart keeps the address the nodes know
        let ix = start_on(&mut net, indexer_rt, &name, &c);
        seeds.push(net.address(ix));
        indexers.push(ix);
    }
    let nodes: Vec<usize> = (0..3)
        .map(|j| {
            let name = format!("node-{j}");
            let mut c = net.config(&name, "node", seeds.clone());
            c.protocol.min_indexers = 2;
            c.protocol.max_indexers = 2;
            start_on(&mut net, node_rt, &name, &c)
        })
        .collect();

    let converged = net.wait_until(Duration::from_secs(30), |n| nodes.iter().all(|&i| n.status(i).at_min_pool()));
    assert!(converged, "{node_rt} nodes never reached both {indexer_rt} indexers:\n{}", net.logs());
    let t_converged = t0.elapsed();
    for &ix in &indexers {
        let s = net.status(ix);
        let sessions = s.indexer.as_ref().map(|i| i.sessions).unwrap_or(0);
        assert!(sessions >= nodes.len(), "{indexer_rt} indexer has a session per {node_rt} node: {}", s.render());
    }

    // A node looks up another node (through the indexers of the other runtime) by DID and by peer
    // id; an indexer looks up a node. Records reach the DHT with the heartbeats: poll.
    let (a, b) = (nodes[0], nodes[1]);
    let sb = net.status(b);
    let (b_peer, b_did) = (sb.peer_id.clone(), sb.did.clone());
    let found = net.wait_until(Duration::from_secs(30), |n| {
        cli_on(n, node_rt, a, &["lookup", &b_did, "--timeout", "5s"]).status.success()
    });
    assert!(found, "a {node_rt} node never found another by DID via {indexer_rt} indexers:\n{}", net.logs());
    let t_found = t0.elapsed();
    let by_peer = cli_on(&net, node_rt, a, &["lookup", &b_peer, "--json"]);
    assert!(by_peer.status.success(), "{}", text(&by_peer));
    let json: serde_json::Value = serde_json::from_slice(&by_peer.stdout).expect("one JSON object");
    assert_eq!(json["record"]["did"], b_did.as_str());
    assert_eq!(json["record"]["name"], "node-1");
    let via_indexer = cli_on(&net, indexer_rt, indexers[1], &["lookup", &b_did]);
    assert!(via_indexer.status.success() && text(&via_indexer).contains(&b_peer), "{}", text(&via_indexer));
    // And a node finds an indexer's record.
    let ix_peer = net.status(indexers[0]).peer_id;
    let indexer_found = net.wait_until(Duration::from_secs(20), |n| {
        cli_on(n, node_rt, nodes[2], &["lookup", &ix_peer, "--timeout", "5s"]).status.success()
    });
    assert!(indexer_found, "a {node_rt} node never found a {indexer_rt} indexer's record:\n{}", net.logs());

    // SIGKILL a node; restarted (same key, same runtime), it is back with both indexers.
    let c = nodes[2];
    net.daemons[c].kill();
    net.binary = runtime_binary(node_rt);
    net.restart(c);
    let back = net.wait_until(Duration::from_secs(30), |n| n.status(c).at_min_pool());
    assert!(back, "the SIGKILLed {node_rt} node never came back to its pool:\n{}", net.logs());
    let t_node_back = t0.elapsed();

    // SIGKILL an indexer; restarted (same key, port and runtime), every node has both again.
    let ix = indexers[1];
    net.daemons[ix].kill();
    net.binary = runtime_binary(indexer_rt);
    net.restart(ix);
    // The restarted indexer starts empty: it has a session per node only once each node noticed
    // the old connection gone and heartbeated it again.
    let sessions = |n: &Net| n.status(ix).indexer.as_ref().map(|i| i.sessions).unwrap_or(0);
    let all_back = net.wait_until(Duration::from_secs(40), |n| {
        sessions(n) >= nodes.len() && nodes.iter().all(|&i| n.status(i).at_min_pool())
    });
    assert!(all_back, "{node_rt} nodes never got the restarted {indexer_rt} indexer back:\n{}", net.logs());
    let t_done = t0.elapsed();
    eprintln!(
        "{indexer_rt} indexers + {node_rt} nodes: converged {t_converged:?}, lookup {t_found:?}, node back after \
         SIGKILL {t_node_back:?}, indexer back after SIGKILL {t_done:?}"
    );
}

#[test]
fn tokio_indexers_with_smol_nodes_converge_and_look_each_other_up() {
    mixed_network_converges_and_looks_up("tokio", "smol");
}

#[test]
fn smol_indexers_with_tokio_nodes_converge_and_look_each_other_up() {
    mixed_network_converges_and_looks_up("smol", "tokio");
}

#[test]
fn devnet_mixed_converges() {
    let (status, json, stderr) = devnet(
        "tokio",
        &["--runtime", "mixed", "--indexers", "3", "--nodes", "6", "--duration", "60s", "--until-converged"],
    );
    assert!(status.success(), "mixed devnet did not converge: {json:#}\n{stderr}");
    assert_eq!(json["runtime"], "mixed");
    assert_eq!(json["converged"], true);
    let peers = json["peers"].as_array().expect("peers");
    let on = |rt: &str, role: &str| peers.iter().filter(|p| p["runtime"] == rt && p["role"] == role).count();
    assert!(on("tokio", "indexer") >= 1 && on("smol", "indexer") >= 1, "{json:#}");
    assert!(on("tokio", "node") >= 1 && on("smol", "node") >= 1, "{json:#}");
}

/// VmRSS of a process, in KiB (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Floods daemon `addr` from one quinn endpoint on 127.0.0.1: `attempts` connection attempts at
/// once, each given 3 s to complete its handshake; the completed ones stay open and silent until
/// the end (they never send a byte, so they never pass the daemon's stream accept). Returns how
/// many completed.
fn flood(addr: &str, attempts: usize) -> usize {
    use ocd_core::host::transport::Transport;
    use ocd_runtime_smol::transport::{QuinnConfig, QuinnTransport};
    let target: ocd_core::proto::PeerAddr = addr.parse().expect("address");
    smol::block_on(async {
        let key = ocd_core::proto::Keypair::derive(9, "flooder");
        let t = QuinnTransport::bind(QuinnConfig::new(key, "127.0.0.1:0".parse().expect("addr"))).expect("bind");
        let dials = (0..attempts).map(|_| {
            let (t, target) = (t.clone(), target.clone());
            async move {
                smol::future::or(async { t.connect(target).await.ok() }, async {
                    smol::Timer::after(Duration::from_secs(3)).await;
                    None
                })
                .await
            }
        });
        let held: Vec<_> = futures::future::join_all(dials).await.into_iter().flatten().collect();
        let completed = held.len();
        drop(held);
        t.shutdown().await;
        completed
    })
}

/// A flood of silent handshakes against one daemon of `runtime`: at most the per-source bound of
/// them is ever in flight, the excess is dropped, the daemon keeps serving its node, the log gets
/// one summary line per interval instead of a line per attempt, and RSS stays bounded.
fn a_handshake_flood_is_bounded(runtime: &str) {
    let mut net = Net::new(runtime);
    let c = net.config("indexer-0", "indexer", vec![]);
    let ix = start_on(&mut net, runtime, "indexer-0", &c);
    let seed = net.address(ix);
    let mut nc = net.config("node-0", "node", vec![seed.clone()]);
    nc.protocol.min_indexers = 1;
    let node = start_on(&mut net, runtime, "node-0", &nc);
    assert!(net.wait_until(Duration::from_secs(20), |n| n.status(node).at_min_pool()), "{}", net.logs());
    let pid = net.daemons[ix].pid().expect("pid");
    let before = rss_kib(pid).unwrap_or(0);

    let attempts = 1000;
    let completed = flood(&seed, attempts);
    let during = rss_kib(pid).unwrap_or(0);
    assert!(
        completed <= 2 * ocd_core::host::transport::InboundLimits::DEFAULT_MAX_PER_SOURCE,
        "{completed} of {attempts} silent handshakes completed: the per-source bound did not hold"
    );
    assert!(net.status(node).at_min_pool(), "the node kept its indexer through the flood:\n{}", net.logs());

    // The summary line comes at the end of the limiter's interval.
    let summarised = net.wait_until(Duration::from_secs(15), |n| {
        std::fs::read_to_string(&n.daemons[ix].log).is_ok_and(|l| l.contains("inbound handshakes over their limits"))
    });
    let log = std::fs::read_to_string(&net.daemons[ix].log).unwrap_or_default();
    assert!(summarised, "no summary line:\n{}", net.logs());
    // iroh itself warns, per connection of a plain-QUIC peer, that multipath and NAT traversal were
    // not negotiated (`iroh::socket::remote_map::remote_state`); those lines are its own and are
    // counted apart (the daemon's log filter is where they are silenced).
    let iroh_noise = |l: &&str| l.contains("iroh::socket::remote_map");
    let lines = log.lines().filter(|l| !iroh_noise(l)).count();
    let iroh_lines = log.lines().filter(iroh_noise).count();
    assert!(lines < 100, "{lines} log lines for a flood of {attempts}:\n{log}");
    let after = rss_kib(pid).unwrap_or(0);
    eprintln!(
        "{runtime}: {completed}/{attempts} flood handshakes completed; RSS {before} KiB before, {during} KiB right after, \
         {after} KiB after the summary; {lines} log lines (+{iroh_lines} from iroh's remote_state)"
    );
    assert!(after < before + 32 * 1024, "RSS grew from {before} to {after} KiB");
}

#[test]
fn a_handshake_flood_on_ocd_is_bounded() {
    a_handshake_flood_is_bounded("tokio");
}

#[test]
fn a_handshake_flood_on_ocd_smol_is_bounded() {
    a_handshake_flood_is_bounded("smol");
}
