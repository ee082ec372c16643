//! Shared by the application-message end-to-end tests (`app_*.rs`): daemon configurations tuned
//! for quick retries, and `ocd send` / `ocd inbox` run as a user runs them.

#![allow(dead_code)]

use ocd_core::host::app::InboxLine;
use ocd_core::host::config::DaemonConfig;
use ocd_tests::Net;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// An indexer for daemons that restart over and over: each restart reconnects, heartbeats,
/// publishes and resolves again, far more often than the seed's anti-abuse windows expect of an
/// honest node. These tests are about delivery, not admission, so the windows are wide.
pub fn indexer_config(net: &Net, name: &str) -> DaemonConfig {
    let mut c = net.config(name, "indexer", vec![]);
    let p = &mut c.protocol;
    p.max_conn_per_window = 100_000;
    p.max_hb_per_minute = 100_000;
    p.max_publish_per_minute = 100_000;
    p.max_get_per_minute = 100_000;
    c
}

/// A node with one indexer, retrying every 500 ms (the seed's 15 s would make the tests slow;
/// the mechanism is the same), and a short QUIC idle timeout so that a killed peer's connection
/// is noticed within seconds.
pub fn node_config(net: &Net, name: &str, seed: &str) -> DaemonConfig {
    let mut c = net.config(name, "node", vec![seed.to_string()]);
    c.protocol.min_indexers = 1;
    c.protocol.max_indexers = 1;
    c.protocol.dnt_retry_interval = Duration::from_millis(500);
    c.keep_alive = Duration::from_millis(500);
    c.quic_idle_timeout = Duration::from_secs(3);
    c
}

/// What `ocd send --json` printed on success.
#[derive(Clone, Debug)]
pub struct Sent {
    /// The message id.
    pub id: String,
    /// Its class.
    pub class: String,
}

/// A failed `ocd send`: its exit code and standard error.
#[derive(Clone, Debug)]
pub struct SendFailed {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// What it said.
    pub stderr: String,
}

/// Runs `<binary> send <to> --protocol <protocol> --payload - --json --data-dir <dir>` with
/// `payload` on standard input. On exit 0, checks the printed object is exactly
/// `{"id","class","state":"queued"}`.
pub fn send(binary: &Path, data_dir: &Path, to: &str, protocol: &str, payload: &[u8]) -> Result<Sent, SendFailed> {
    let mut child = Command::new(binary)
        .args(["send", to, "--protocol", protocol, "--payload", "-", "--json", "--data-dir"])
        .arg(data_dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ocd send");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(payload);
    }
    let out = child.wait_with_output().expect("wait for ocd send");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(SendFailed { code: out.status.code(), stderr });
    }
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("`ocd send --json` printed no JSON ({e}): {stdout}"));
    let keys: BTreeSet<&str> = v.as_object().expect("an object").keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["class", "id", "state"]), "{stdout}");
    assert_eq!(v["state"], "queued", "{stdout}");
    Ok(Sent { id: v["id"].as_str().expect("id").to_string(), class: v["class"].as_str().expect("class").to_string() })
}

/// Runs `<binary> inbox --json --data-dir <dir>` and parses its lines, each checked to carry
/// exactly the contract's seven fields.
pub fn inbox(binary: &Path, data_dir: &Path) -> Vec<InboxLine> {
    let out = Command::new(binary)
        .args(["inbox", "--json", "--data-dir"])
        .arg(data_dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run ocd inbox");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ocd inbox failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            let keys: BTreeSet<&str> = v.as_object().expect("an object").keys().map(String::as_str).collect();
            assert_eq!(keys, BTreeSet::from(["datatype", "from", "id", "payload", "protocol", "seq", "user"]), "{l}");
            serde_json::from_value(v).unwrap_or_else(|e| panic!("not an inbox line ({e}): {l}"))
        })
        .collect()
}

/// Decodes an inbox line's base64 payload.
pub fn payload(line: &InboxLine) -> Vec<u8> {
    line.payload_bytes().unwrap_or_else(|| panic!("payload not base64: {line:?}"))
}

/// A small deterministic generator (the tests print their seed so a run can be replayed).
#[derive(Clone, Debug)]
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// An environment variable parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}
