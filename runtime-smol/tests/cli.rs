//! The `ocd-smol` binary's own commands (the shared CLI is tested through `ocd`; the end-to-end
//! network tests are in `tests/`).

use std::process::Command;

#[test]
fn a_listen_port_in_use_is_a_clear_error_naming_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("network.key");
    let made = Command::new(env!("CARGO_BIN_EXE_ocd-smol"))
        .args(["keygen", "--data-dir"])
        .arg(dir.path().join("k"))
        .arg("--network-key")
        .arg(&key)
        .output()
        .expect("keygen");
    assert!(made.status.success(), "{made:?}");
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = holder.local_addr().expect("addr");
    let out = Command::new(env!("CARGO_BIN_EXE_ocd-smol"))
        .args(["run", "--mode", "indexer", "--listen", &addr.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--network-key")
        .arg(&key)
        .env("RUST_LOG", "info")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("listen address {addr} is already in use")), "{err}");
    assert!(!err.contains("ERROR"), "{err}");
    drop(holder);
}
