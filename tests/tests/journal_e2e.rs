//! Journals of real daemons replayed in the simulator (DESIGN §10), on both runtimes: an indexer
//! and a node run with `--journal` over real QUIC on 127.0.0.1 while the node looks a peer up,
//! searches and sends messages; after a clean stop `ocd-sim replay` replays each journal
//! identically (exit 0); one byte changed is refused naming its step (exit 2); a node killed with
//! SIGKILL leaves a journal that replays up to its last whole record.

mod app_support;

use app_support::{indexer_config, node_config, send};
use ocd_tests::{Net, binary};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn replay(journal: &Path) -> Output {
    Command::new(binary("ocd-sim")).arg("replay").arg(journal).output().expect("run ocd-sim replay")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn journals(runtime: &str) {
    let mut net = Net::new(runtime);
    let dir = net.dir().to_path_buf();
    let (ix_journal, node_journal, killed_journal) =
        (dir.join("indexer.journal"), dir.join("node.journal"), dir.join("killed.journal"));
    let mut ci = indexer_config(&net, "indexer");
    ci.journal = Some(ix_journal.clone());
    let ix = net.start("indexer", &ci);
    let seed = net.address(ix);
    let mut ca = node_config(&net, "alice", &seed);
    ca.journal = Some(node_journal.clone());
    let a = net.start("alice", &ca);
    let mut cb = node_config(&net, "bob", &seed);
    cb.journal = Some(killed_journal.clone());
    let b = net.start("bob", &cb);
    let ready = net.wait_until(Duration::from_secs(60), |n| n.status(a).at_min_pool() && n.status(b).at_min_pool());
    assert!(ready, "the nodes never reached their indexer:\n{}", net.logs());
    let bob = net.status(b).peer_id;
    let looked = net.cli(a, &["lookup", &bob]);
    assert!(looked.status.success(), "lookup: {}", text(&looked));
    let searched = net.cli(a, &["search", "bob", "--timeout", "3s"]);
    assert!(searched.status.success(), "search: {}", text(&searched));
    for i in 0..5u8 {
        send(&net.binary, &net.daemons[a].data_dir, &bob, "create", &[i; 16]).expect("send");
    }
    let delivered = net.wait_until(Duration::from_secs(30), |n| {
        n.status(a).app.is_some_and(|q| q.classes.iter().all(|c| c.count == 0))
    });
    assert!(delivered, "messages not delivered:\n{}", net.logs());

    // Bob killed: his journal is cut wherever the kill fell, and replays up to there.
    net.daemons[b].kill();
    // Alice and the indexer stop cleanly: their journals end with the clean-end record.
    for i in [a, ix] {
        let status = net.daemons[i].terminate(Duration::from_secs(10));
        assert!(status.is_some_and(|s| s.success()), "{} did not stop cleanly", net.daemons[i].name);
    }

    for journal in [&node_journal, &ix_journal] {
        let out = replay(journal);
        let said = text(&out);
        println!("{said}");
        assert_eq!(out.status.code(), Some(0), "{}: {said}", journal.display());
        assert!(said.contains("identically") && said.contains("ended cleanly"), "{said}");
        let steps: u64 =
            said.split("replayed ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(steps >= 15, "a busy journal replays many steps: {said}");
    }
    let out = replay(&killed_journal);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("identically"), "{}", text(&out));

    // One byte changed in the middle: refused, naming the step.
    let mut bytes = std::fs::read(&node_journal).expect("journal");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    let changed = dir.join("changed.journal");
    std::fs::write(&changed, &bytes).expect("write");
    let out = replay(&changed);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("step ") && said.contains("corrupt record"), "{said}");
    // Not a journal at all.
    std::fs::write(&changed, b"garbage").expect("write");
    let out = replay(&changed);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not an ocd journal"), "{}", text(&out));
}

#[test]
fn journals_replay_identically_tokio() {
    journals("tokio");
}

#[test]
fn journals_replay_identically_smol() {
    journals("smol");
}
