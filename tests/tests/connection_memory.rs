//! Memory held for connections that complete their handshake and reach the driver (issue 15): an
//! indexer takes 8 bursts of 250 concurrent connections from fresh keys, each sending one byte,
//! held 2 s, then dropped. RSS rises to a high-water mark in the first bursts and stays there: the
//! later bursts add (almost) nothing, so nothing is kept per connection.
//!
//! Ignored (about 5 min for both runtimes): run it with
//! `cargo test --release -p ocd-tests --test connection_memory -- --ignored --nocapture`
//! after `cargo build --release --bin ocd --bin ocd-smol`.

use ocd_tests::Net;
use std::time::Duration;

const BURSTS: usize = 8;
const PER_BURST: usize = 250;

/// VmRSS of a process, in KiB (Linux).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// `n` connections at once to `addr`, each from its own key, each sending one byte; held 2 s,
/// then closed. Returns how many completed.
fn burst(addr: &str, n: usize, round: usize) -> usize {
    use futures::AsyncWriteExt;
    use ocd_core::host::transport::Transport;
    use ocd_runtime_smol::transport::{QuinnConfig, QuinnTransport};
    let target: ocd_core::proto::PeerAddr = addr.parse().expect("address");
    smol::block_on(async {
        let dials = (0..n).map(|i| {
            let target = target.clone();
            async move {
                let key = ocd_core::proto::Keypair::derive(9, &format!("burst-{round}-{i}"));
                let t = QuinnTransport::bind(QuinnConfig::new(key, "127.0.0.1:0".parse().ok()?)).ok()?;
                let mut est = t.connect(target).await.ok()?;
                est.send.write_all(&[0u8]).await.ok()?;
                est.send.flush().await.ok()?;
                Some((t, est))
            }
        });
        let held: Vec<_> = futures::future::join_all(dials).await.into_iter().flatten().collect();
        let completed = held.len();
        smol::Timer::after(Duration::from_secs(2)).await;
        for (t, est) in held {
            drop(est);
            t.shutdown().await;
        }
        completed
    })
}

fn plateaus(runtime: &str) {
    let mut net = Net::new(runtime);
    net.binary = ocd_tests::runtime_binary(runtime);
    let c = net.config("indexer-0", "indexer", vec![]);
    let ix = net.start("indexer-0", &c);
    let addr = net.address(ix);
    let pid = net.daemons[ix].pid().expect("pid");
    let mut rss = vec![rss_kib(pid)];
    for round in 0..BURSTS {
        let completed = burst(&addr, PER_BURST, round);
        assert!(completed > PER_BURST / 2, "only {completed} of {PER_BURST} connections completed");
        // Past the core's handshake timeout: every connection of the burst is closed and gone.
        std::thread::sleep(Duration::from_secs(15));
        rss.push(rss_kib(pid));
    }
    eprintln!("{runtime}: RSS KiB per burst of {PER_BURST}: {rss:?}");
    let late = rss[BURSTS] - rss[BURSTS / 2];
    assert!(late < 4 * 1024, "{runtime}: RSS still grew {late} KiB over the last {} bursts: {rss:?}", BURSTS / 2);
    assert!(rss[BURSTS] < rss[0] + 64 * 1024, "{runtime}: RSS {rss:?}");
}

#[test]
#[ignore]
fn connections_that_reach_the_driver_leave_no_memory_behind_ocd_smol() {
    plateaus("smol");
}

#[test]
#[ignore]
fn connections_that_reach_the_driver_leave_no_memory_behind_ocd() {
    plateaus("tokio");
}
