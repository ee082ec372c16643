//! A measurement, not a test (ignored by default): messages per second through `ocd send` → the
//! receiver's inbox, with real daemons on 127.0.0.1 (one indexer, a sender, a receiver).
//!
//! Concurrent clients send critical messages to the sender's control socket (`socket` mode: the
//! request `ocd send` makes, without a process per message) or run `ocd send` itself (`cli` mode);
//! the receiver's inbox is polled until every message is there. It prints the acceptance rate
//! (durably queued, answered), the end-to-end rate (in the receiver's durable inbox), acceptance
//! latencies, and how many changes each store commit carried on both sides (the group commit).
//!
//! ```text
//! OCD_BENCH_RUNTIME=both|tokio|smol  OCD_BENCH_MESSAGES=2000  OCD_BENCH_CLIENTS=8
//! OCD_BENCH_MODE=socket|cli  OCD_BENCH_GROUP=64 (the daemons' group_commit)  OCD_BENCH_PAYLOAD=1024
//! OCD_BENCH_JOURNAL=1 (both nodes run with `--journal`)
//! cargo test --release -p ocd-tests --test app_throughput -- --ignored --nocapture
//! ```
//!
//! `scripts/app-bench.sh` builds the release binaries and runs it.

mod app_support;

use app_support::{env_or, indexer_config, node_config, send};
use ocd_core::host::config::CONTROL_SOCKET;
use ocd_core::host::control::{self, ControlCommand, ControlReply};
use ocd_core::host::status::StatusReport;
use ocd_tests::Net;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sends one message over the control socket, as `ocd send` does. Returns whether it was accepted.
fn send_socket(socket: &std::path::Path, to: &str, payload_b64: &str) -> bool {
    let command = ControlCommand::Send {
        to: to.to_string(),
        protocol: "create".into(),
        datatype: Some(1),
        user: "bench".into(),
        payload: payload_b64.to_string(),
    };
    matches!(control::request(socket, &command), Ok(ControlReply::Sent(_)))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn commits(s: &StatusReport) -> (u64, u64, u64) {
    let a = &s.counters.app;
    (a.store_commits, a.store_items, a.store_commit_micros)
}

fn measure(runtime: &str, messages: usize, clients: usize, mode: &str, group: usize, size: usize) {
    let mut net = Net::new(runtime);
    let ix = net.start("indexer", &indexer_config(&net, "indexer"));
    let seed = net.address(ix);
    let mut sc = node_config(&net, "sender", &seed);
    sc.group_commit = group;
    // OCD_BENCH_JOURNAL=1: both nodes journal their cores (the cost of `--journal`).
    let journal = env_or("OCD_BENCH_JOURNAL", 0u8) == 1;
    if journal {
        sc.journal = Some(net.dir().join("sender.journal"));
    }
    sc.protocol.dnt_queue_max = messages.max(10_000) + 10;
    sc.protocol.dnt_queue_max_per_destination = messages.max(1_000) + 10;
    let snd = net.start("sender", &sc);
    let mut rc = node_config(&net, "receiver", &seed);
    rc.group_commit = group;
    if journal {
        rc.journal = Some(net.dir().join("receiver.journal"));
    }
    let rcv = net.start("receiver", &rc);
    let ready = net.wait_until(Duration::from_secs(60), |n| n.status(snd).at_min_pool() && n.status(rcv).at_min_pool());
    assert!(ready, "the nodes never reached their indexer:\n{}", net.logs());
    let to = net.status(rcv).peer_id;
    let socket: PathBuf = net.daemons[snd].data_dir.join(CONTROL_SOCKET);
    let inbox_len = |n: &Net| n.status(rcv).app.map_or(0, |a| a.inbox);

    // Warm up: the destination resolved and connected.
    let body = vec![0x42u8; size];
    let payload_b64 = ocd_core::host::app::encode_payload(&body);
    assert!(send_socket(&socket, &to, &payload_b64), "warm-up send refused:\n{}", net.logs());
    assert!(net.wait_until(Duration::from_secs(60), |n| inbox_len(n) >= 1), "warm-up never arrived:\n{}", net.logs());
    let (s0, r0) = (commits(&net.status(snd)), commits(&net.status(rcv)));

    let latencies = Arc::new(Mutex::new(Vec::with_capacity(messages)));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (socket, to, payload_b64, latencies) =
                (socket.clone(), to.clone(), payload_b64.clone(), latencies.clone());
            let (binary, dir, body) = (net.binary.clone(), net.daemons[snd].data_dir.clone(), body.clone());
            let mode = mode.to_string();
            let mine = messages / clients + usize::from(c < messages % clients);
            std::thread::spawn(move || {
                let mut ok = 0;
                for _ in 0..mine {
                    let t = Instant::now();
                    let accepted = if mode == "cli" {
                        send(&binary, &dir, &to, "create", &body).is_ok()
                    } else {
                        send_socket(&socket, &to, &payload_b64)
                    };
                    if accepted {
                        ok += 1;
                        latencies.lock().unwrap_or_else(|e| e.into_inner()).push(t.elapsed());
                    }
                }
                ok
            })
        })
        .collect();
    let accepted: usize = threads.into_iter().map(|t| t.join().expect("client")).sum();
    let t_accepted = t0.elapsed();
    let want = accepted as u64 + 1;
    let arrived = net.wait_until(Duration::from_secs(300), |n| inbox_len(n) >= want);
    let t_delivered = t0.elapsed();
    assert!(arrived, "only {} of {want} arrived:\n{}", inbox_len(&net), net.logs());
    assert_eq!(accepted, messages, "every send accepted");
    let (s1, r1) = (commits(&net.status(snd)), commits(&net.status(rcv)));
    let per_commit = |a: (u64, u64, u64), b: (u64, u64, u64)| {
        let (c, i, us) = (b.0 - a.0, b.1 - a.1, b.2 - a.2);
        (c, i as f64 / c.max(1) as f64, us as f64 / c.max(1) as f64)
    };
    let (sc_n, sc_items, sc_us) = per_commit(s0, s1);
    let (rc_n, rc_items, rc_us) = per_commit(r0, r1);
    let mut lat = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    lat.sort();
    println!(
        "[{runtime}] {mode}: {messages} × {size} B critical, {clients} clients, group_commit {group}: accepted in {:.2}s \
         ({:.0} msg/s; latency p50 {:.1} ms, p99 {:.1} ms), all in the receiver's inbox after {:.2}s ({:.0} msg/s); \
         sender {sc_n} commits × {sc_items:.1} changes, mean {:.2} ms; receiver {rc_n} commits × {rc_items:.1} changes, \
         mean {:.2} ms",
        t_accepted.as_secs_f64(),
        messages as f64 / t_accepted.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        t_delivered.as_secs_f64(),
        messages as f64 / t_delivered.as_secs_f64(),
        sc_us / 1e3,
        rc_us / 1e3,
    );
}

#[test]
#[ignore = "a measurement, not a test: run with --ignored --nocapture (scripts/app-bench.sh)"]
fn app_throughput() {
    let runtime: String = env_or("OCD_BENCH_RUNTIME", "both".to_string());
    let messages: usize = env_or("OCD_BENCH_MESSAGES", 2000);
    let clients: usize = env_or("OCD_BENCH_CLIENTS", 8).max(1);
    let mode: String = env_or("OCD_BENCH_MODE", "socket".to_string());
    let group: usize = env_or("OCD_BENCH_GROUP", 64).max(1);
    let size: usize = env_or("OCD_BENCH_PAYLOAD", 1024);
    let runtimes: Vec<&str> = match runtime.as_str() {
        "both" => vec!["tokio", "smol"],
        one => vec![one],
    };
    for rt in runtimes {
        measure(rt, messages, clients, &mode, group, size);
    }
}
