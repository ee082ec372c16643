//! End to end, for both runtimes (`ocd` on tokio, `ocd-smol` on smol): the metrics endpoint of a
//! real daemon on 127.0.0.1 answers while 200 idle TCP connections are open and while several
//! clients scrape at once, in the Prometheus text format with every documented metric; and a node
//! whose DID changed under an indexer says so, once, at WARN and in `ocd status`.
//!
//! No timed assertions: a scrape only has to succeed within a client timeout of several seconds
//! (the old endpoint served one connection at a time with a 2 s read timeout, so 200 idle
//! connections held a scrape back for minutes). Conditions are polled up to generous limits.

use ocd_tests::Net;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The client's bound on one scrape: connect, send, read the whole answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Every metric family the README and the metrics module document.
const DOCUMENTED: &[&str] = &[
    "ocd_pool_size",
    "ocd_pool_evictions_total",
    "ocd_heartbeats_sent_total",
    "ocd_heartbeats_received_total",
    "ocd_heartbeats_refused_total",
    "ocd_bans_total",
    "ocd_sessions",
    "ocd_connections",
    "ocd_frames_sent_total",
    "ocd_frames_received_total",
    "ocd_protocol_errors_total",
    "ocd_slow_peers_total",
    "ocd_handshake_failures_total",
    "ocd_dht_records",
    "ocd_dht_table_size",
    "ocd_dht_providers",
    "ocd_dht_queries_running",
    "ocd_dht_queries_total",
    "ocd_dht_queries_refused_total",
    "ocd_dht_rpcs_total",
    "ocd_dht_rpc_failures_total",
    "ocd_dht_stores_accepted_total",
    "ocd_dht_stores_refused_total",
    "ocd_record_verifications_total",
    "ocd_records_stored_total",
    "ocd_records_rejected_total",
    "ocd_lookups_total",
    "ocd_searches_started_total",
    "ocd_searches_ended_total",
    "ocd_search_hits_total",
    "ocd_search_forged_hits_total",
    "ocd_searches_emitted_total",
    "ocd_searches_active",
    "ocd_search_referenced",
    "ocd_searches_emitting",
    "ocd_search_mesh_neighbours",
    "ocd_search_mesh_messages_total",
    "ocd_app_messages_total",
    "ocd_app_queue_depth",
    "ocd_inbox_size",
    "ocd_store_commits_total",
    "ocd_store_items_total",
    "ocd_store_commit_seconds_total",
    "ocd_messages_sent_total",
    "ocd_messages_received_total",
    "ocd_did_refused_indexers",
];

/// The metrics address daemon `i` logged at its last start (`metrics at http://ADDR/metrics`);
/// it was configured with port 0.
fn metrics_addr(net: &Net, i: usize) -> SocketAddr {
    let log = std::fs::read_to_string(&net.daemons[i].log).expect("log");
    let at = log.rfind("metrics at http://").unwrap_or_else(|| panic!("no metrics address logged:\n{log}"));
    let rest = &log[at + "metrics at http://".len()..];
    rest[..rest.find('/').expect("a path")].parse().expect("a socket address")
}

/// One `GET /metrics` on a fresh connection, bounded by [`SCRAPE_TIMEOUT`]: the status line,
/// the headers (lowercased) and the body, or what went wrong.
fn scrape(addr: SocketAddr) -> Result<(String, String, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(SCRAPE_TIMEOUT)).map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| format!("read (after {} bytes): {e}", answer.len()))?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| format!("no header end in {answer:?}"))?;
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Ok((status.to_string(), headers.to_lowercase(), body.to_string()))
}

/// A scrape that must succeed with a Prometheus text body.
fn scrape_ok(addr: SocketAddr, net: &Net) -> String {
    let (status, headers, body) = scrape(addr).unwrap_or_else(|e| panic!("scrape failed: {e}\n{}", net.logs()));
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers}\n{body}");
    assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
    body
}

/// The value of the sample line `sample` (name with labels, if any), if present.
fn value(body: &str, sample: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

fn scrapes_succeed_with_200_idle_connections_and_concurrent_clients(runtime: &str) {
    let mut net = Net::new(runtime);
    let ix = net.start("indexer", &net.config("indexer", "indexer", vec![]));
    let seeds = vec![net.address(ix)];
    let mut config = net.config("node", "node", seeds);
    config.metrics = Some("127.0.0.1:0".parse().expect("addr"));
    let node = net.start("node", &config);
    assert!(net.wait_until(Duration::from_secs(60), |n| n.status(node).at_min_pool()), "{}", net.logs());
    let addr = metrics_addr(&net, node);

    // 200 idle clients: connected and silent; a few have sent half a request head.
    let mut idle: Vec<TcpStream> =
        (0..200).map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("idle connection {i}: {e}"))).collect();
    for s in idle.iter_mut().take(5) {
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\n").expect("half a head");
    }

    let body = scrape_ok(addr, &net);
    for name in DOCUMENTED {
        assert!(body.contains(&format!("\n# TYPE {name} ")), "{name} missing:\n{body}");
    }
    assert_eq!(value(&body, "ocd_pool_size"), Some(1.0), "{body}");
    assert!(value(&body, "ocd_heartbeats_sent_total").is_some_and(|v| v >= 1.0), "{body}");
    assert!(body.contains("# TYPE ocd_heartbeats_sent_total counter\n"), "{body}");
    assert!(body.contains("ocd_lookups_total{outcome=\"not_found\"} 0\n"), "{body}");
    // Per-indexer gauges are refreshed on the driver's timer: poll for them.
    let score = format!("ocd_pool_indexer_score{{indexer=\"{}\"}}", net.status(ix).peer_id);
    assert!(
        net.wait_until(Duration::from_secs(30), |n| value(&scrape_ok(addr, n), &score).is_some()),
        "no {score}:\n{}",
        scrape_ok(addr, &net)
    );

    // Several clients at once, a few scrapes each, with the idle connections still open.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..5).map(|_| scrape(addr).map(|(status, _, body)| (status, body.len()))).collect::<Vec<_>>()
            })
        })
        .collect();
    for c in clients {
        for r in c.join().expect("client thread") {
            let (status, len) = r.unwrap_or_else(|e| panic!("concurrent scrape failed: {e}\n{}", net.logs()));
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert!(len > 1000, "a whole exposition ({len} bytes)");
        }
    }
    // The idle connections did not stop the daemon from doing its work.
    assert!(net.status(node).at_min_pool(), "{}", net.logs());
    drop(idle);
    let _ = scrape_ok(addr, &net);
    let status = net.daemons[node].terminate(Duration::from_secs(15)).expect("exits on SIGTERM");
    assert!(status.success(), "graceful shutdown with the metrics server running: {status:?}\n{}", net.logs());
}

/// A node restarted with a new DID for the same key: the indexer refuses its heartbeats with
/// `DidChanged`; the node warns once per indexer (not per refused heartbeat), `ocd status` shows it
/// (a line in the human form, `did_refused_by` in `--json`), and so does the metric.
fn a_changed_did_is_warned_once_and_shown_in_status(runtime: &str) {
    let mut net = Net::new(runtime);
    let ix = net.start("indexer", &net.config("indexer", "indexer", vec![]));
    let indexer = net.status(ix).peer_id;
    let seeds = vec![net.address(ix)];
    let mut config = net.config("node", "node", seeds);
    config.metrics = Some("127.0.0.1:0".parse().expect("addr"));
    // A refused seed is retried quickly, so that several refusals arrive within the test.
    config.protocol.seed_backoff_initial = Duration::from_secs(1);
    config.protocol.seed_backoff_max = Duration::from_secs(2);
    let node = net.start("node", &config);
    assert!(net.wait_until(Duration::from_secs(60), |n| n.status(node).at_min_pool()), "{}", net.logs());
    let old_did = net.status(node).did;
    assert!(net.status(node).did_refused_by.is_empty());

    net.daemons[node].terminate(Duration::from_secs(15)).expect("exits on SIGTERM");
    let out = std::process::Command::new(&net.binary)
        .args(["keygen", "--new-did", "--data-dir"])
        .arg(&net.daemons[node].data_dir)
        .output()
        .expect("keygen --new-did");
    assert!(out.status.success(), "keygen --new-did: {}", String::from_utf8_lossy(&out.stderr));
    net.restart(node);
    assert_ne!(net.status(node).did, old_did, "a new DID was adopted");

    // More than one refusal, each of them a DidChanged.
    assert!(
        net.wait_until(Duration::from_secs(60), |n| {
            let st = n.status(node);
            st.did_refused_by == vec![indexer.clone()] && st.counters.heartbeats_refused >= 2
        }),
        "the node never showed the indexer refusing its DID: {:?}\n{}",
        (net.status(node).did_refused_by, net.status(node).counters),
        net.logs()
    );
    let log = std::fs::read_to_string(&net.daemons[node].log).expect("log");
    let warnings: Vec<&str> =
        log.lines().filter(|l| l.contains("WARN") && l.contains("refuses our heartbeats")).collect();
    assert_eq!(warnings.len(), 1, "one warning for one indexer, however many refusals:\n{log}");
    assert!(warnings[0].contains("restore the `did` file"), "{}", warnings[0]);

    let human = net.cli(node, &["status"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("WARNING  1 indexer(s) refuse this DID"), "{human}");
    assert!(human.contains(&indexer[..16]), "{human}");
    let json = net.cli(node, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status --json");
    assert_eq!(json["did_refused_by"], serde_json::json!([indexer]), "{json}");
    let body = scrape_ok(metrics_addr(&net, node), &net);
    assert_eq!(value(&body, "ocd_did_refused_indexers"), Some(1.0), "{body}");
}

macro_rules! e2e {
    ($name:ident, $runtime:literal) => {
        mod $name {
            #[test]
            fn scrapes_succeed_with_200_idle_connections_and_concurrent_clients() {
                super::scrapes_succeed_with_200_idle_connections_and_concurrent_clients($runtime);
            }
            #[test]
            fn a_changed_did_is_warned_once_and_shown_in_status() {
                super::a_changed_did_is_warned_once_and_shown_in_status($runtime);
            }
        }
    };
}

e2e!(tokio_iroh, "tokio");
e2e!(smol_quinn, "smol");
