//! A damaged durable store stops the daemon at start, for both runtimes: a corrupt, truncated,
//! empty or foreign `ocd.redb` is a clear error naming the file and a non-zero exit (2), and the
//! file is left exactly as it was (never silently replaced).

use ocd_tests::Net;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `<binary> run --config <config>` and returns its exit code and standard error; fails if
/// it is still running after 30 s (it must refuse to start).
fn run_expecting_exit(binary: &Path, config: &Path) -> (Option<i32>, String) {
    let err = tempfile::NamedTempFile::new().expect("temp file");
    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.reopen().expect("stderr file"))
        .spawn()
        .expect("spawn the daemon");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the daemon started on a damaged store: {}",
                std::fs::read_to_string(err.path()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), std::fs::read_to_string(err.path()).unwrap_or_default())
}

fn damaged_store_refuses_to_start(runtime: &str) {
    let mut net = Net::new(runtime);
    let a = net.start("node-a", &net.config("node-a", "node", vec![]));
    let b = net.start("node-b", &net.config("node-b", "node", vec![]));
    for i in [a, b] {
        assert!(net.daemons[i].terminate(Duration::from_secs(20)).is_some_and(|s| s.success()), "{}", net.logs());
    }
    let store = net.daemons[a].data_dir.join("ocd.redb");
    let good = std::fs::read(&store).expect("node-a's store");
    assert!(good.len() >= 3 * 4096, "a store of {} bytes", good.len());
    let config = net.daemons[a].config_path.clone();
    let path_text = store.display().to_string();

    let mut corrupt = good.clone();
    for b in &mut corrupt[2 * 4096..2 * 4096 + 512] {
        *b ^= 0xa5;
    }
    let foreign = std::fs::read(net.daemons[b].data_dir.join("ocd.redb")).expect("node-b's store");
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("corrupt", corrupt, "corrupt store"),
        ("truncated", good[..good.len() / 2].to_vec(), "truncated store"),
        ("empty", Vec::new(), "truncated store"),
        ("foreign", foreign, "a foreign database"),
    ];
    for (case, bytes, expected) in cases {
        std::fs::write(&store, &bytes).expect("write the damaged store");
        let (code, stderr) = run_expecting_exit(&net.binary, &config);
        assert_eq!(code, Some(2), "[{runtime}] {case}: exit code; stderr:\n{stderr}");
        assert!(stderr.contains(&path_text), "[{runtime}] {case}: the error names {path_text}:\n{stderr}");
        assert!(stderr.contains(expected), "[{runtime}] {case}: `{expected}` in:\n{stderr}");
        assert!(!stderr.contains("panicked"), "[{runtime}] {case}: no panic:\n{stderr}");
        let after = std::fs::read(&store).expect("the store");
        assert!(
            after == bytes,
            "[{runtime}] {case}: the file is left as it was ({} bytes, now {})",
            bytes.len(),
            after.len()
        );
    }

    // Put back, it starts again with what it held.
    std::fs::write(&store, &good).expect("restore the store");
    net.restart(a);
    let app = net.status(a).app.expect("a node has an app section");
    assert_eq!(app.store.as_ref().map(|s| s.path.as_str()), Some(path_text.as_str()));
}

#[test]
fn store_damaged_refuses_to_start_tokio() {
    damaged_store_refuses_to_start("tokio");
}

#[test]
fn store_damaged_refuses_to_start_smol() {
    damaged_store_refuses_to_start("smol");
}
