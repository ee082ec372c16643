//! The `ocd` binary's own commands (the end-to-end network tests are in `tests/`).

use std::process::Command;

#[test]
fn keygen_creates_an_identity_once_and_a_network_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("psk/network.key");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_ocd"))
            .args(["keygen", "--data-dir"])
            .arg(&data)
            .arg("--network-key")
            .arg(&key)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    let out = String::from_utf8(first.stdout).unwrap();
    assert!(out.contains("(created)"), "{out}");
    assert!(key.exists());
    let second = run();
    let again = String::from_utf8(second.stdout).unwrap();
    assert!(again.contains("(existing)"), "{again}");
    let id = |s: &str| s.lines().next().unwrap().to_string();
    assert_eq!(id(&out), id(&again), "the peer id is kept");
}

#[test]
fn status_without_a_daemon_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ocd")).args(["status", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon is running"));
}

#[test]
fn run_without_a_network_key_explains_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ocd"))
        .args(["run", "--listen", "127.0.0.1:0", "--network-key"])
        .arg(dir.path().join("missing.key"))
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("keygen --network-key"), "{out:?}");
}

#[test]
fn lookup_without_a_daemon_is_an_error_not_a_negative_answer() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ocd"))
        .args(["lookup", "some-did", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon is running"), "{out:?}");
}

#[test]
fn lookup_refuses_a_malformed_key_before_asking() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["/pid/not-hex", ""] {
        let out = Command::new(env!("CARGO_BIN_EXE_ocd"))
            .args(["lookup", bad, "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("no daemon is running"), "{bad}: refused before contacting a daemon: {err}");
    }
}

#[test]
fn a_lost_did_file_stops_the_daemon_until_a_new_did_is_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("network.key");
    let keygen = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ocd"))
            .args(["keygen", "--data-dir"])
            .arg(&data)
            .arg("--network-key")
            .arg(&key)
            .args(extra)
            .output()
            .unwrap()
    };
    assert!(keygen(&[]).status.success());
    let old = std::fs::read_to_string(data.join("did")).unwrap();
    std::fs::remove_file(data.join("did")).unwrap();

    let run = Command::new(env!("CARGO_BIN_EXE_ocd"))
        .args(["run", "--listen", "127.0.0.1:0", "--network-key"])
        .arg(&key)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(String::from_utf8_lossy(&run.stderr).contains("keygen --new-did"), "{run:?}");
    assert!(!data.join("did").exists(), "no DID was created silently");

    let adopt = keygen(&["--new-did"]);
    assert!(adopt.status.success(), "{adopt:?}");
    let new = std::fs::read_to_string(data.join("did")).unwrap();
    assert_ne!(new, old);
    assert!(String::from_utf8_lossy(&adopt.stdout).contains("adopted"), "{adopt:?}");
}

#[test]
fn search_without_a_daemon_is_an_error_not_a_negative_answer() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ocd"))
        .args(["search", "carol", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon is running"), "{out:?}");
}

#[test]
fn search_refuses_an_empty_or_oversized_needle_before_asking() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "   ", &"n".repeat(4096)] {
        let out = Command::new(env!("CARGO_BIN_EXE_ocd"))
            .args(["search", bad, "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("needle"), "{err}");
        assert!(!err.contains("no daemon is running"), "refused before contacting a daemon: {err}");
    }
}

#[test]
fn help_lists_search() {
    let out = Command::new(env!("CARGO_BIN_EXE_ocd")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("distributed peer search"), "{help}");
    assert!(help.contains("search  Search the federation for peers by name, DID or peer id"), "{help}");
    let out = Command::new(env!("CARGO_BIN_EXE_ocd")).args(["search", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["--json", "--timeout", "search_timeout", "0 at least one hit, 1 none, 2 an error"] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

#[test]
fn send_and_inbox_without_a_daemon_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let peer = "ab".repeat(32);
    for args in [vec!["send", peer.as_str(), "--protocol", "create", "--json"], vec!["inbox", "--json"]] {
        let out =
            Command::new(env!("CARGO_BIN_EXE_ocd")).args(&args).arg("--data-dir").arg(dir.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon is running"), "{out:?}");
    }
}

#[test]
fn send_refuses_a_bad_protocol_or_payload_before_asking() {
    let dir = tempfile::tempdir().unwrap();
    let peer = "ab".repeat(32);
    let cases: [(&[&str], &str); 3] = [
        (&["send", &peer, "--protocol", "teleport"], "unknown protocol"),
        (&["send", &peer], "--protocol"),
        (&["send", &peer, "--protocol", "create", "--payload", "/nonexistent/payload"], "/nonexistent/payload"),
    ];
    for (args, expected) in cases {
        let out =
            Command::new(env!("CARGO_BIN_EXE_ocd")).args(args).arg("--data-dir").arg(dir.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("no daemon is running"), "refused before contacting a daemon: {err}");
    }
}

#[test]
fn help_lists_send_and_inbox() {
    let out = Command::new(env!("CARGO_BIN_EXE_ocd")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("send    Send an application message"), "{help}");
    assert!(help.contains("inbox   List the application messages this daemon received"), "{help}");
    let out = Command::new(env!("CARGO_BIN_EXE_ocd")).args(["send", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["--protocol", "--payload", "--datatype", "--user", "durably queued", "2 a refusal or an error"] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

#[test]
fn a_listen_port_in_use_is_a_clear_error_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("network.key");
    let made = Command::new(env!("CARGO_BIN_EXE_ocd"))
        .args(["keygen", "--data-dir"])
        .arg(dir.path().join("k"))
        .arg("--network-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ocd"))
        .args(["run", "--mode", "indexer", "--listen", &addr.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--network-key")
        .arg(&key)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("listen address {addr} is already in use")), "{err}");
    assert!(!err.contains("Endpoint dropped"), "no iroh teardown noise: {err}");
    assert!(!err.contains("ERROR"), "{err}");
    drop(holder);
}
