//! DNT under crashes, end to end, for both runtimes: one indexer, a sender node and a receiver
//! node, each a real process on 127.0.0.1. While a client keeps sending critical messages with
//! `ocd send` to the receiver's peer id, the sender, the receiver or both are killed with SIGKILL
//! over and over and restarted on the same data directories. At the end, every message `ocd send`
//! accepted (exit 0) must be in the receiver's inbox exactly once, with its payload, and the
//! inbox must hold no message twice.
//!
//! `OCD_KILL_CYCLES` (default 10) sets the number of kill cycles, `OCD_KILL_SEED` the seed of the
//! kill schedule (printed, so a run can be replayed); `scripts/app-kill9.sh` runs 50 cycles.
//! No timed assertions: the drain at the end is polled up to a generous limit.

mod app_support;

use app_support::{Lcg, SendFailed, env_or, inbox, indexer_config, node_config, payload, send};
use ocd_tests::Net;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One runtime at a time: the two share 2 cores with their daemons and `ocd send` processes.
static SERIAL: Mutex<()> = Mutex::new(());

/// What the sending client saw.
#[derive(Default)]
struct Sends {
    /// Accepted: (message id, payload).
    accepted: Vec<(String, Vec<u8>)>,
    /// Not accepted (the sender was down, or stopping): exit code and message.
    failed: Vec<SendFailed>,
}

fn kill9_keeps_every_accepted_message_exactly_once(runtime: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cycles: u64 = env_or("OCD_KILL_CYCLES", 10);
    let seed: u64 = env_or(
        "OCD_KILL_SEED",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64),
    );
    eprintln!("[{runtime}] kill -9 test: {cycles} cycles, OCD_KILL_SEED={seed}");
    let t0 = Instant::now();
    let mut net = Net::new(runtime);
    let ix = net.start("indexer", &indexer_config(&net, "indexer"));
    let seed_addr = net.address(ix);
    let snd = net.start("sender", &node_config(&net, "sender", &seed_addr));
    let rcv = net.start("receiver", &node_config(&net, "receiver", &seed_addr));
    let ready = net.wait_until(Duration::from_secs(60), |n| n.status(snd).at_min_pool() && n.status(rcv).at_min_pool());
    assert!(ready, "the nodes never reached their indexer:\n{}", net.logs());
    let receiver = net.status(rcv).peer_id;

    // The client: `ocd send` after `ocd send`, as fast as it goes, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sends = Arc::new(Mutex::new(Sends::default()));
    let client = {
        let (stop, sends) = (stop.clone(), sends.clone());
        let (binary, dir, to) = (net.binary.clone(), net.daemons[snd].data_dir.clone(), receiver.clone());
        let tag = format!("{runtime}-{seed}");
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = format!("kill9 {tag} message {n}").into_bytes();
                let r = send(&binary, &dir, &to, "create", &body);
                let mut s = sends.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(sent) => {
                        assert_eq!(sent.class, "critical");
                        s.accepted.push((sent.id, body));
                    }
                    Err(f) => {
                        drop(s);
                        // The daemon is down or restarting: try again shortly.
                        std::thread::sleep(Duration::from_millis(20));
                        sends.lock().unwrap_or_else(|e| e.into_inner()).failed.push(f);
                    }
                }
            }
        })
    };

    // Kill and restart, over and over.
    let mut rng = Lcg(seed);
    let mut schedule = Vec::new();
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
        let victims: &[usize] = match rng.below(3) {
            0 => &[snd],
            1 => &[rcv],
            _ => &[snd, rcv],
        };
        let names: Vec<&str> = victims.iter().map(|&v| if v == snd { "sender" } else { "receiver" }).collect();
        for &v in victims {
            net.daemons[v].kill();
        }
        let down = rng.below(300);
        std::thread::sleep(Duration::from_millis(down));
        for &v in victims {
            net.restart(v);
        }
        let accepted = sends.lock().unwrap_or_else(|e| e.into_inner()).accepted.len();
        schedule.push(format!("cycle {cycle}: killed {} for {down} ms; {accepted} accepted so far", names.join("+")));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    client.join().expect("the sending client");
    let t_kills = t0.elapsed();
    let sends = std::mem::take(&mut *sends.lock().unwrap_or_else(|e| e.into_inner()));
    assert!(
        sends.accepted.len() >= cycles as usize,
        "too few messages accepted to mean anything: {}",
        sends.accepted.len()
    );
    // A refusal or error is exit 2 with a message, never a crash.
    for f in &sends.failed {
        assert_eq!(f.code, Some(2), "`ocd send` failed otherwise than with exit 2: {f:?}");
        assert!(!f.stderr.trim().is_empty(), "a failed `ocd send` says why");
    }

    // Every accepted message is delivered: the sender's queue drains.
    let mut last = None;
    let drained = net.wait_until(Duration::from_secs(120), |n| {
        let s = n.status(snd);
        let done = s.app.as_ref().is_some_and(|a| a.queued() == 0);
        last = Some(s);
        done
    });
    let sender_status = last.map(|s| s.render()).unwrap_or_default();
    assert!(
        drained,
        "the sender's DNT queue never drained ({} accepted):\n{sender_status}\n{}\n{}",
        sends.accepted.len(),
        schedule.join("\n"),
        net.logs()
    );
    let t_drained = t0.elapsed();

    // Exactly once, in arrival order, with the payload sent.
    let lines = inbox(&net.binary, &net.daemons[rcv].data_dir);
    let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, (1..=lines.len() as u64).collect::<Vec<_>>(), "arrival sequences 1, 2, 3… each once");
    let mut by_id: BTreeMap<&str, Vec<&ocd_core::host::app::InboxLine>> = BTreeMap::new();
    for l in &lines {
        by_id.entry(l.id.as_str()).or_default().push(l);
        assert_eq!(l.protocol, "create");
    }
    let twice: Vec<&str> = by_id.iter().filter(|(_, v)| v.len() > 1).map(|(k, _)| *k).collect();
    assert!(twice.is_empty(), "messages in the inbox more than once: {twice:?}\n{}", schedule.join("\n"));
    let missing: Vec<&str> =
        sends.accepted.iter().filter(|(id, _)| !by_id.contains_key(id.as_str())).map(|(id, _)| id.as_str()).collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted messages never reached the inbox: {missing:?}\n{}\n{}",
        missing.len(),
        sends.accepted.len(),
        schedule.join("\n"),
        net.logs()
    );
    for (id, body) in &sends.accepted {
        assert_eq!(&payload(by_id[id.as_str()][0]), body, "payload of {id}");
    }
    let accepted: BTreeSet<&str> = sends.accepted.iter().map(|(id, _)| id.as_str()).collect();
    // Messages in the inbox that no `ocd send` reported: accepted while the sender was being
    // killed, before the client heard the answer. Delivered once all the same.
    let unreported = lines.iter().filter(|l| !accepted.contains(l.id.as_str())).count();
    let receiver_status = net.status(rcv);
    let app = receiver_status.app.as_ref().expect("the receiver is a node");
    assert_eq!(app.inbox_duplicates, 0, "the store refused duplicate appends: the core asked twice");
    assert_eq!(app.inbox, lines.len() as u64);
    eprintln!(
        "[{runtime}] {cycles} kill cycles in {:.1}s; {} messages accepted, {} sends refused while down; inbox {} \
         ({} accepted-unreported); queue drained {:.1}s after the last kill; total {:.1}s",
        t_kills.as_secs_f64(),
        sends.accepted.len(),
        sends.failed.len(),
        lines.len(),
        unreported,
        (t_drained - t_kills).as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    if std::env::var_os("OCD_KILL_VERBOSE").is_some() {
        eprintln!("{}", schedule.join("\n"));
    }
}

#[test]
fn app_kill9_tokio() {
    kill9_keeps_every_accepted_message_exactly_once("tokio");
}

#[test]
fn app_kill9_smol() {
    kill9_keeps_every_accepted_message_exactly_once("smol");
}
