//! The NATS bridge end to end (DESIGN §9), on both runtimes: real `nats-server`s (one per node),
//! the apps played by an outside client (nats-py, `scripts/nats-app.py`), real QUIC on 127.0.0.1.
//!
//! Node A's apps publish a creation: it reaches B's apps once as `create_resource`, with its
//! message id; with B killed, an update arrives after B returns; with B's `nats-server` down, a
//! creation waits in B's inbox and is published once the server is back (B's server keeps what ocd
//! publishes in a JetStream stream, deduplicated by `Nats-Msg-Id`, so the test sees every
//! publication whether or not an app was listening at that instant). A PEER search comes back as
//! `search_event` with the user; resource searches of type `partner`, `known` and `all` (over the
//! indexer) are answered by B's apps and come back the same way; a malformed message is counted and changes nothing.
//!
//! Skipped (with a message) when `nats-server` or nats-py is missing; `.ci/run` installs both.

mod app_support;

use app_support::{indexer_config, node_config};
use ocd_tests::Net;
use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nats-app.py")
}

/// Whether `nats-server` and nats-py are here.
fn tools_present() -> bool {
    let server = Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success());
    let py = Command::new("python3").args(["-c", "import nats"]).output().is_ok_and(|o| o.status.success());
    if !server || !py {
        // CI installs both: there a missing tool is a failure, not a skip.
        assert!(std::env::var_os("CI").is_none(), "nats-server ({server}) or nats-py ({py}) missing in CI");
        eprintln!("skipped: nats-server ({server}) or nats-py ({py}) missing; .ci/run installs them");
    }
    server && py
}

/// A `nats-server` on 127.0.0.1 with JetStream, restartable on the same port and store.
struct NatsServer {
    port: u16,
    store: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    fn start(dir: &Path, name: &str) -> NatsServer {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let mut s = NatsServer { port, store: dir.join(format!("nats-{name}")), child: None };
        s.up();
        s
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.down();
    }
}

/// A long-running `nats-app.py` (listen, answer), its standard output kept open; killed on drop.
struct App(Child, #[allow(dead_code)] std::process::ChildStdout);

impl App {
    fn spawn(args: &[&str]) -> App {
        let mut child = Command::new("python3")
            .arg(script())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nats-app.py");
        // Wait for "ready" (subscribed).
        let mut out = child.stdout.take().expect("stdout");
        let mut buf = [0u8; 6];
        let _ = std::io::Read::read_exact(&mut out, &mut buf);
        assert_eq!(&buf, b"ready\n", "nats-app.py did not get ready");
        App(child, out)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn app(args: &[&str]) {
    let out = Command::new("python3").arg(script()).args(args).output().expect("run nats-app.py");
    assert!(out.status.success(), "nats-app.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The JSON lines of a file (none when it does not exist yet).
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// B's stream, dumped.
fn stream(url: &str, dir: &Path) -> Vec<Value> {
    let out = dir.join("stream.jsonl");
    app(&["stream-dump", url, "APPS", out.to_str().expect("path")]);
    lines(&out)
}

/// The stream's `create_resource`/`remove_resource` messages carrying `name`.
fn with_name<'a>(msgs: &'a [Value], name: &str) -> Vec<&'a Value> {
    msgs.iter().filter(|m| m["payload"]["name"] == name).collect()
}

fn bridge(runtime: &str) {
    if !tools_present() {
        return;
    }
    let mut net = Net::new(runtime);
    let dir = net.dir().to_path_buf();
    let mut nats_a = NatsServer::start(&dir, "a");
    let mut nats_b = NatsServer::start(&dir, "b");
    let (url_a, url_b) = (nats_a.url(), nats_b.url());
    // B's server keeps everything ocd publishes to its apps.
    app(&["stream-create", &url_b, "APPS", "create_resource", "remove_resource", "search_event", "planner_execution"]);

    let ix = net.start("indexer", &indexer_config(&net, "indexer"));
    let seed = net.address(ix);
    let mut cb = node_config(&net, "bob", &seed);
    cb.nats_url = Some(url_b.clone());
    let b = net.start("bob", &cb);
    let b_id: ocd_core::proto::PeerId = net.status(b).peer_id.parse().expect("peer id");
    let mut ca = node_config(&net, "alice", &seed);
    ca.nats_url = Some(url_a.clone());
    ca.protocol.partners = vec![b_id];
    let a = net.start("alice", &ca);
    let ready = net.wait_until(Duration::from_secs(60), |n| n.status(a).at_min_pool() && n.status(b).at_min_pool());
    assert!(ready, "the nodes never reached their indexer:\n{}", net.logs());
    let a_events = dir.join("a-events.jsonl");
    let _listen_a =
        App::spawn(&["listen", &url_a, a_events.to_str().expect("path"), "search_event", "create_resource"]);
    let _answer_b = App::spawn(&["answer", &url_b, "resource_search", r#"[{"name":"res-b","kind":"data"}]"#]);

    // B announced itself to its apps at start.
    let announced = net.wait_until(Duration::from_secs(20), |_| {
        stream(&url_b, &dir).iter().any(|m| {
            m["subject"] == "create_resource"
                && m["message"]["SearchAttr"] == "peer_id"
                && m["payload"]["peer_id"] == b_id.to_string()
        })
    });
    assert!(announced, "B never published its own peer:\n{}", net.logs());

    // 1. A creation on A's NATS reaches B's apps once, as create_resource, with its message id.
    app(&["propagate", &url_a, "PB_CREATE", "DATA_RESOURCE", "alice", r#"{"name":"r1"}"#]);
    let got = net.wait_until(Duration::from_secs(30), |_| !with_name(&stream(&url_b, &dir), "r1").is_empty());
    assert!(got, "r1 never reached B's apps:\n{}", net.logs());

    // 2. B killed: an update waits in A's DNT queue and arrives after B returns.
    net.daemons[b].kill();
    app(&["propagate", &url_a, "PB_UPDATE", "DATA_RESOURCE", "alice", r#"{"name":"r2"}"#]);
    let queued = net.wait_until(Duration::from_secs(20), |n| {
        n.status(a).app.is_some_and(|q| q.classes.iter().any(|c| c.class == "critical" && c.count > 0))
    });
    assert!(queued, "A never queued the update for the dead B:\n{}", net.logs());
    std::thread::sleep(Duration::from_secs(1));
    net.restart(b);
    let got = net.wait_until(Duration::from_secs(60), |_| !with_name(&stream(&url_b, &dir), "r2").is_empty());
    assert!(got, "r2 never reached B's apps after B returned:\n{}", net.logs());

    // 3. B's nats-server down: a creation waits in B's inbox, unpublished, and goes out when the
    //    server is back.
    nats_b.down();
    let down = net.wait_until(Duration::from_secs(20), |n| n.status(b).nats.is_some_and(|s| !s.connected));
    assert!(down, "B's status never showed the link down:\n{}", net.logs());
    app(&["propagate", &url_a, "PB_CREATE", "DATA_RESOURCE", "alice", r#"{"name":"r3"}"#]);
    let held = net.wait_until(Duration::from_secs(30), |n| n.status(b).app.is_some_and(|q| q.inbox_unpublished > 0));
    assert!(held, "r3 never waited in B's inbox:\n{}", net.logs());
    nats_b.up();
    let got = net.wait_until(Duration::from_secs(60), |n| {
        n.status(b).app.is_some_and(|q| q.inbox_unpublished == 0) && !with_name(&stream(&url_b, &dir), "r3").is_empty()
    });
    assert!(got, "r3 was not published after B's nats-server returned:\n{}", net.logs());

    // Every resource reached B's apps exactly once (JetStream dedupes a republication by id).
    let all = stream(&url_b, &dir);
    for name in ["r1", "r2", "r3"] {
        let found = with_name(&all, name);
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        let m = found[0];
        assert_eq!(m["subject"], "create_resource", "{m}");
        assert_eq!(m["message"]["FromApp"], "oc-discovery");
        assert_eq!(m["message"]["User"], "alice");
        let id = m["msg_id"].as_str().expect("a Nats-Msg-Id");
        assert!(id.starts_with(&net.status(a).peer_id), "the id names the sender: {id}");
    }

    // 4. A PEER search from A's apps: B's record comes back as search_event with the user.
    app(&["propagate", &url_a, "PB_SEARCH", "PEER", "carol", r#"{"search":"bob"}"#]);
    let hit = net.wait_until(Duration::from_secs(30), |_| {
        lines(&a_events).iter().any(|m| {
            m["subject"] == "search_event"
                && m["message"]["User"] == "carol"
                && m["payload"]["peer_id"] == b_id.to_string()
        })
    });
    assert!(hit, "the PEER search never came back:\n{}", net.logs());

    // 5. Resource searches of type partner and known: B's apps answer, A's apps get the result.
    for (user, kind) in [("dave", "partner"), ("erin", "known"), ("frank", "all")] {
        let inner = format!(r#"{{"type":"{kind}","search":"res"}}"#);
        app(&["propagate", &url_a, "PB_SEARCH", "DATA_RESOURCE", user, &inner]);
        let got = net.wait_until(Duration::from_secs(30), |_| {
            lines(&a_events).iter().any(|m| {
                m["subject"] == "search_event" && m["message"]["User"] == user && m["payload"]["name"] == "res-b"
            })
        });
        assert!(got, "the {kind} resource search never came back:\n{}", net.logs());
    }

    // 6. Malformed messages are counted and change nothing.
    let before = net.status(a).nats.expect("nats status").malformed;
    app(&["publish", &url_a, "propalgation_event", "this is not json"]);
    app(&["publish", &url_a, "propalgation_event", r#"{"Payload":"%%%"}"#]);
    let counted =
        net.wait_until(Duration::from_secs(10), |n| n.status(a).nats.is_some_and(|s| s.malformed >= before + 2));
    assert!(counted, "malformed messages were not counted:\n{}", net.logs());
    assert!(net.status(a).nats.is_some_and(|s| s.connected), "A's link survived them");
    nats_a.down();
}

#[test]
fn nats_bridge_tokio() {
    bridge("tokio");
}

#[test]
fn nats_bridge_smol() {
    bridge("smol");
}
