//! `ocd search` end to end over real QUIC on 127.0.0.1, for both runtimes: `ocd` (tokio + iroh) and
//! `ocd-smol` (smol + quinn). Two indexers and three nodes, each a separate process; node A uses
//! only indexer 0 and node C only indexer 1, so A finds C only through the indexers' search mesh.
//! No timed assertions besides "the idle end came after the idle timeout": conditions are polled
//! up to generous limits.

use ocd_core::host::config::DaemonConfig;
use ocd_tests::Net;
use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The daemons' `search_timeout`: a search ends this long after its last new hit. Shorter than the
/// 5 s default to keep the test's wall time modest; the mechanism is the same.
const SEARCH_IDLE: Duration = Duration::from_secs(2);

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// The `--json` lines of a search, each checked to carry exactly the contract's five fields.
fn json_hits(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            let keys: BTreeSet<&str> = v.as_object().expect("an object").keys().map(String::as_str).collect();
            assert_eq!(keys, BTreeSet::from(["addrs", "did", "expires_at", "name", "peer_id"]), "{l}");
            v
        })
        .collect()
}

/// What the test knows of one node.
struct Node {
    peer: String,
    did: String,
    name: String,
    addr: String,
}

fn node_info(net: &Net, index: usize) -> Node {
    let s = net.status(index);
    let addr = s.address.split_once('@').map(|(_, a)| a.to_string()).expect("address");
    Node { peer: s.peer_id, did: s.did, name: s.name, addr }
}

fn config(net: &Net, name: &str, mode: &str, seeds: Vec<String>) -> DaemonConfig {
    let mut c = net.config(name, mode, seeds);
    c.protocol.search_timeout = SEARCH_IDLE;
    c
}

fn searches_find_nodes_by_name_did_and_peer_id(runtime: &str) {
    let t0 = Instant::now();
    let mut net = Net::new(runtime);
    let ix0 = net.start("indexer-0", &config(&net, "indexer-0", "indexer", vec![]));
    let seed0 = net.address(ix0);
    let ix1 = net.start("indexer-1", &config(&net, "indexer-1", "indexer", vec![seed0.clone()]));
    let seed1 = net.address(ix1);
    // Distinct display names sharing the suffix ".ocd-test" in different cases.
    let mut start_node = |dir: &str, name: &str, seeds: Vec<String>| {
        let mut c = config(&net, dir, "node", seeds.clone());
        c.protocol.name = name.into();
        c.protocol.min_indexers = 1;
        c.protocol.max_indexers = seeds.len();
        net.start(dir, &c)
    };
    let a = start_node("node-a", "Alice.ocd-test", vec![seed0.clone()]);
    let b = start_node("node-b", "BOB.OCD-TEST", vec![seed0.clone(), seed1.clone()]);
    let c = start_node("node-c", "Carol-Skyline.ocd-test", vec![seed1.clone()]);
    let (na, nb, nc) = (node_info(&net, a), node_info(&net, b), node_info(&net, c));
    assert_eq!(nc.name, "Carol-Skyline.ocd-test");

    // Converged: every node live with its indexers, A referenced at indexer 0 and C at indexer 1
    // (their records are searchable there), and the two indexers mesh neighbours (the mesh joins
    // through the DHT routing table, retrying every 10 s while it has no neighbour).
    let references = |net: &Net, ix: usize, node: &Node| {
        net.status(ix).indexer.is_some_and(|i| i.nodes.iter().any(|s| s.peer == node.peer && s.referent))
    };
    let meshed = |net: &Net, ix: usize, other: usize| {
        let other = net.status(other).peer_id;
        net.status(ix).search.mesh.is_some_and(|m| m.neighbours.contains(&other))
    };
    let pools = net.wait_until(Duration::from_secs(60), |n| [a, b, c].iter().all(|&i| n.status(i).at_min_pool()));
    assert!(pools, "the nodes never reached their pools:\n{}", net.logs());
    let t_pools = t0.elapsed();
    let mesh = net.wait_until(Duration::from_secs(60), |n| meshed(n, ix0, ix1) && meshed(n, ix1, ix0));
    assert!(mesh, "the indexers never formed the search mesh:\n{}\n{}", net.status(ix0).render(), net.logs());
    let t_mesh = t0.elapsed();
    // A node names its referent from its first heartbeat after an indexer went live.
    let referenced = net.wait_until(Duration::from_secs(60), |n| references(n, ix0, &na) && references(n, ix1, &nc));
    assert!(referenced, "A and C never chose their referents:\n{}\n{}", net.status(ix1).render(), net.logs());
    let t_converged = t0.elapsed();

    // The first search from A for C goes through the mesh; poll while C's record reaches its
    // referent with its heartbeats.
    let mut attempts = 0;
    let found = net.wait_until(Duration::from_secs(60), |n| {
        attempts += 1;
        n.cli(a, &["search", "skyline", "--timeout", "20s"]).status.success()
    });
    assert!(found, "node A never found node C by name after {attempts} searches:\n{}", net.logs());
    let t_found = t0.elapsed();

    // By a case-insensitive name substring, in JSON: exactly C's record, with its address.
    let by_name = net.cli(a, &["search", "cAROL-sKY", "--json", "--timeout", "20s"]);
    let (out, err) = text(&by_name);
    assert_eq!(by_name.status.code(), Some(0), "{out}\n{err}");
    let hits = json_hits(&out);
    assert_eq!(hits.len(), 1, "{out}");
    assert_eq!(hits[0]["peer_id"], nc.peer.as_str());
    assert_eq!(hits[0]["did"], nc.did.as_str());
    assert_eq!(hits[0]["name"], nc.name.as_str());
    let addrs: Vec<&str> = hits[0]["addrs"].as_array().expect("addrs").iter().filter_map(|v| v.as_str()).collect();
    assert!(addrs.contains(&nc.addr.as_str()), "C's dialable address {} in {addrs:?}", nc.addr);
    let expires = hits[0]["expires_at"].as_str().expect("expires_at");
    assert!(expires.ends_with('Z') && expires.len() == 20, "RFC 3339: {expires}");
    assert!(err.contains("1 hit for `cAROL-sKY`"), "{err}");

    // By DID, human form.
    let by_did = net.cli(a, &["search", &nc.did, "--timeout", "20s"]);
    let (out, err) = text(&by_did);
    assert_eq!(by_did.status.code(), Some(0), "{out}\n{err}");
    assert!(out.starts_with(&format!("{}  {}\n", nc.name, nc.peer)), "{out}");
    assert!(out.contains(&format!("did      {}", nc.did)) && out.contains(&nc.addr), "{out}");
    assert_eq!(out.matches(".ocd-test").count(), 1, "only C: {out}");

    // By peer id.
    let by_peer = net.cli(a, &["search", &nc.peer, "--json", "--timeout", "20s"]);
    let (out, err) = text(&by_peer);
    assert_eq!(by_peer.status.code(), Some(0), "{out}\n{err}");
    let hits = json_hits(&out);
    assert_eq!(hits.len(), 1, "{out}");
    assert_eq!((hits[0]["peer_id"].as_str(), hits[0]["did"].as_str()), (Some(nc.peer.as_str()), Some(nc.did.as_str())));

    // A substring every node's name has: all three, each once, from both indexers' referents.
    let all = net.cli(a, &["search", "OCD-test", "--json", "--timeout", "20s"]);
    let (out, err) = text(&all);
    assert_eq!(all.status.code(), Some(0), "{out}\n{err}");
    let peers: Vec<String> =
        json_hits(&out).iter().map(|h| h["peer_id"].as_str().unwrap_or_default().to_string()).collect();
    let distinct: BTreeSet<&String> = peers.iter().collect();
    assert_eq!(peers.len(), distinct.len(), "hits are deduplicated: {out}");
    assert_eq!(distinct, BTreeSet::from([&na.peer, &nb.peer, &nc.peer]), "{out}\n{err}");

    // A name nobody has: exit 1 once the search went idle, well before --timeout.
    let started = Instant::now();
    let nobody = net.cli(a, &["search", "nobody-has-this-name", "--timeout", "20s"]);
    let t_nobody = started.elapsed();
    let (out, err) = text(&nobody);
    assert_eq!(nobody.status.code(), Some(1), "no hit is exit 1: {out}\n{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("no peer matches `nobody-has-this-name`") && err.contains("no new hit"), "{err}");
    assert!(t_nobody >= SEARCH_IDLE, "ended after the idle timeout, not before: {t_nobody:?}");
    assert!(t_nobody < Duration::from_secs(15), "ended by the idle timeout, not --timeout: {t_nobody:?}");

    // --timeout ends a search that would run longer: still exit 1 without a hit.
    let bounded = net.cli(a, &["search", "nobody-either", "--timeout", "500ms"]);
    let (out, err) = text(&bounded);
    assert_eq!(bounded.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("--timeout reached"), "{err}");

    // A client that disconnects mid-search: the daemon cancels the search.
    let mut child = Command::new(&net.binary)
        .args(["search", "still-nobody", "--timeout", "60s", "--data-dir"])
        .arg(&net.daemons[a].data_dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn search");
    let running = net.wait_until(Duration::from_secs(10), |n| !n.status(a).search.active.is_empty());
    assert!(running, "the search never showed as active: {}", net.status(a).render());
    let cancelled_before = net.status(a).counters.search.ended.get("cancelled").copied().unwrap_or(0);
    child.kill().expect("kill the client");
    let _ = child.wait();
    let cancelled = net.wait_until(Duration::from_secs(10), |n| {
        let s = n.status(a);
        s.search.active.is_empty() && s.counters.search.ended.get("cancelled").copied().unwrap_or(0) > cancelled_before
    });
    assert!(cancelled, "the abandoned search was not cancelled: {}", net.status(a).render());

    // One search per user: a newer search of the same `--user` cancels the older (exit 1, no hit).
    let older = Command::new(&net.binary)
        .args(["search", "nobody-at-all", "--user", "ops", "--timeout", "60s", "--data-dir"])
        .arg(&net.daemons[a].data_dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn search");
    let running =
        net.wait_until(Duration::from_secs(10), |n| n.status(a).search.active.iter().any(|s| s.user == "ops"));
    assert!(running, "the search of user ops never showed as active: {}", net.status(a).render());
    let newer = net.cli(a, &["search", &nc.peer, "--user", "ops", "--timeout", "20s"]);
    assert_eq!(newer.status.code(), Some(0), "{:?}", text(&newer));
    let older = older.wait_with_output().expect("the older search ends");
    let (out, err) = text(&older);
    assert_eq!(older.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("cancelled by a newer search of the same user"), "{err}");

    // Errors: an indexer-only daemon has no indexer to search through; an empty needle.
    let on_indexer = net.cli(ix0, &["search", "skyline"]);
    let (out, err) = text(&on_indexer);
    assert_eq!(on_indexer.status.code(), Some(2), "{out}\n{err}");
    assert!(err.contains("no live indexer"), "{err}");
    let empty = net.cli(a, &["search", " "]);
    assert_eq!(empty.status.code(), Some(2), "{:?}", text(&empty));

    // Status: searches and hits counted at A; the emitter and the mesh at the indexers.
    let sa = net.status(a);
    let counted = &sa.counters.search;
    assert!(counted.started >= 10, "{counted:?}");
    assert!(counted.hits >= 7, "{counted:?}");
    assert_eq!(counted.forged_hits_dropped, 0, "{counted:?}");
    assert!(counted.ended.get("idle").copied().unwrap_or(0) >= 6, "{counted:?}");
    assert!(counted.ended.get("cancelled").copied().unwrap_or(0) >= 3, "--timeout, hang-up, newer search: {counted:?}");
    assert!(sa.search.mesh.is_none(), "a node runs no mesh");
    assert!(sa.render().contains("search: active none"), "{}", sa.render());
    let s0 = net.status(ix0);
    assert!(s0.counters.search.emitted >= 10, "A's searches are emitted by its referent: {:?}", s0.counters.search);
    assert!(s0.search.referenced >= 1, "{}", s0.render());
    let mesh = s0.search.mesh.as_ref().expect("an indexer runs the mesh");
    assert!(mesh.sent > 0 && mesh.received > 0, "{mesh:?}");
    assert!(s0.render().contains("mesh: 1 neighbour "), "{}", s0.render());
    let s1 = net.status(ix1);
    let mesh1 = s1.search.mesh.as_ref().expect("an indexer runs the mesh");
    assert!(mesh1.delivered >= 4, "indexer 1 answered A's searches from the mesh: {mesh1:?}");
    eprintln!(
        "[{runtime}] search e2e: pools {:.1}s, mesh {:.1}s, referents {:.1}s, first hit {:.1}s ({attempts} \
         attempt(s)), idle end {:.1}s, total {:.1}s",
        t_pools.as_secs_f64(),
        t_mesh.as_secs_f64(),
        t_converged.as_secs_f64(),
        t_found.as_secs_f64(),
        t_nobody.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

macro_rules! e2e {
    ($module:ident, $runtime:literal) => {
        mod $module {
            #[test]
            fn searches_find_nodes_by_name_did_and_peer_id() {
                super::searches_find_nodes_by_name_did_and_peer_id($runtime);
            }
        }
    };
}

e2e!(tokio_iroh, "tokio");
e2e!(smol_quinn, "smol");
