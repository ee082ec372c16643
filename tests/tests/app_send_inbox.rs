//! `ocd send`, `ocd inbox` and the DNT part of `ocd status`, end to end over real QUIC on
//! 127.0.0.1 for both runtimes: fields and exit codes of `send`, `inbox --json`, `--since` and
//! `--follow` (new messages streamed once, in order, until the daemon stops), a refused send, and a
//! critical message queued while its receiver is down, shown by `status`, then delivered.

mod app_support;

use app_support::{inbox, indexer_config, node_config, payload, send};
use ocd_tests::Net;
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn send_inbox_follow_and_status(runtime: &str) {
    let mut net = Net::new(runtime);
    let ix = net.start("indexer", &indexer_config(&net, "indexer"));
    let seed = net.address(ix);
    let snd = net.start("sender", &node_config(&net, "sender", &seed));
    let rcv = net.start("receiver", &node_config(&net, "receiver", &seed));
    let ready = net.wait_until(Duration::from_secs(60), |n| n.status(snd).at_min_pool() && n.status(rcv).at_min_pool());
    assert!(ready, "the nodes never reached their indexer:\n{}", net.logs());
    let (sender, receiver) = (net.status(snd), net.status(rcv));
    let (binary, sdir, rdir) =
        (net.binary.clone(), net.daemons[snd].data_dir.clone(), net.daemons[rcv].data_dir.clone());

    // A follower started on the empty inbox sees each new message once, in order.
    let mut follower = Command::new(&binary)
        .args(["inbox", "--follow", "--json", "--data-dir"])
        .arg(&rdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ocd inbox --follow");
    let (tx, followed) = mpsc::channel::<String>();
    let stdout = follower.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    // Fields: datatype, user and a payload file; a moderate and a `search` message too.
    let file = net.dir().join("payload.json");
    std::fs::write(&file, b"{\"resource\":42}").expect("payload file");
    let out = Command::new(&binary)
        .args(["send", &receiver.peer_id, "--protocol", "update", "--datatype", "-7", "--user", "alice", "--json"])
        .arg("--payload")
        .arg(&file)
        .arg("--data-dir")
        .arg(&sdir)
        .output()
        .expect("ocd send");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(first["class"], "critical");
    let id1 = first["id"].as_str().expect("id").to_string();
    assert!(id1.starts_with(&format!("{}-", sender.peer_id)), "the id starts with the sender: {id1}");
    let m2 = send(&binary, &sdir, &receiver.peer_id, "verify", b"second").expect("moderate send");
    assert_eq!(m2.class, "moderate");
    let m3 = send(&binary, &sdir, &receiver.did, "search", b"third").expect("send by DID");
    assert_eq!(m3.class, "none");

    let mut lines = Vec::new();
    while lines.len() < 3 {
        let line = followed.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            panic!("the follower printed {} of 3 lines:\n{}", lines.len(), net.logs());
        });
        lines.push(serde_json::from_str::<ocd_core::host::app::InboxLine>(&line).expect("an inbox line"));
    }
    let ids: Vec<&str> = lines.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, [id1.as_str(), m2.id.as_str(), m3.id.as_str()], "in arrival order");
    assert_eq!(lines.iter().map(|l| l.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!((lines[0].protocol.as_str(), lines[0].datatype, lines[0].user.as_str()), ("update", Some(-7), "alice"));
    assert_eq!(lines[0].from, sender.peer_id);
    assert_eq!(payload(&lines[0]), b"{\"resource\":42}");
    assert_eq!((lines[1].protocol.as_str(), lines[2].protocol.as_str()), ("verify", "search"));
    assert!(followed.recv_timeout(Duration::from_millis(500)).is_err(), "nothing twice");

    // The same through a plain listing, and `--since`.
    let listed = inbox(&binary, &rdir);
    assert_eq!(listed, lines);
    let since = Command::new(&binary).args(["inbox", "--json", "--since", "2", "--data-dir"]).arg(&rdir).output();
    let since = since.expect("ocd inbox --since");
    let after: Vec<&str> = std::str::from_utf8(&since.stdout).expect("utf-8").lines().collect();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].contains(&m3.id), "{after:?}");
    let human = Command::new(&binary).args(["inbox", "--data-dir"]).arg(&rdir).output().expect("ocd inbox");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.starts_with("#1 ") && text.contains("user alice") && text.contains("15 bytes"), "{text}");

    // A refusal is exit 2 with a reason: the destination is the sender itself.
    let refused = send(&binary, &sdir, &sender.peer_id, "create", b"x").expect_err("sending to oneself");
    assert_eq!(refused.code, Some(2));
    assert!(refused.stderr.contains("refused") && refused.stderr.contains("this daemon"), "{}", refused.stderr);

    // A critical message for a receiver that is down waits in the queue, shown by `status`, and is
    // delivered once the receiver is back.
    net.daemons[rcv].kill();
    let queued = send(&binary, &sdir, &receiver.peer_id, "delete", b"while down").expect("queued while down");
    let waiting = net.wait_until(Duration::from_secs(30), |n| {
        n.status(snd).app.is_some_and(|a| {
            a.classes.iter().any(|c| c.class == "critical" && c.count == 1)
                && a.destinations.iter().any(|d| d.to == receiver.peer_id && d.count == 1 && d.failures >= 1)
        })
    });
    let status = net.status(snd);
    assert!(waiting, "the queue never showed the message:\n{}", status.render());
    let text = status.render();
    assert!(text.contains("messages: queue critical 1 (oldest"), "{text}");
    assert!(text.contains("store ") && text.contains("ocd.redb"), "{text}");
    let app = status.app.expect("app status");
    assert!(app.store.is_some_and(|s| s.size_bytes > 0 && s.queued == 1));
    reader.join().ok();
    let _ = follower.wait();
    net.restart(rcv);
    let delivered = net.wait_until(Duration::from_secs(60), |n| n.status(snd).app.is_some_and(|a| a.queued() == 0));
    assert!(delivered, "never delivered after the restart:\n{}\n{}", net.status(snd).render(), net.logs());
    let all = inbox(&binary, &rdir);
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].id, queued.id);
    let counters = net.status(snd).counters.app;
    assert!(counters.delivered >= 1 && counters.retried >= 1, "{counters:?}");

    // A follower ends cleanly when the daemon stops gracefully.
    let follower = Command::new(&binary)
        .args(["inbox", "--follow", "--since", "4", "--data-dir"])
        .arg(&rdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ocd inbox --follow");
    std::thread::sleep(Duration::from_millis(300));
    assert!(net.daemons[rcv].terminate(Duration::from_secs(20)).is_some_and(|s| s.success()));
    let out = follower.wait_with_output().expect("the follower ends");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the daemon stopped"), "{out:?}");
    assert!(out.stdout.is_empty(), "nothing after seq 4: {out:?}");
}

#[test]
fn app_send_inbox_tokio() {
    send_inbox_follow_and_status("tokio");
}

#[test]
fn app_send_inbox_smol() {
    send_inbox_follow_and_status("smol");
}
