//! End-to-end test harness: real `ocd` / `ocd-smol` processes on 127.0.0.1, driven through their
//! configuration files and control sockets, exactly as a user runs them.
//!
//! The binaries are the ones cargo built next to the test executable (`target/<profile>/`);
//! `cargo nextest run --workspace` builds them because the runtime crates have integration tests.

use ocd_core::host::config::{CONTROL_SOCKET, DaemonConfig};
use ocd_core::host::control::{self, ControlCommand, ControlReply};
use ocd_core::host::identity;
use ocd_core::host::status::StatusReport;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a daemon binary built by cargo in this target directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo build --bin {name}`; `cargo nextest run --workspace` does)",
        path.display()
    );
    path
}

/// The binary of a runtime: `tokio` → `ocd`, `smol` → `ocd-smol`.
pub fn runtime_binary(runtime: &str) -> PathBuf {
    binary(if runtime == "smol" { "ocd-smol" } else { "ocd" })
}

/// One daemon process.
#[derive(Debug)]
pub struct Daemon {
    /// Name (also its data directory name).
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Config file.
    pub config_path: PathBuf,
    /// Log file (stderr).
    pub log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Its status, if it answers.
    pub fn status(&self) -> Option<StatusReport> {
        match control::request(&self.data_dir.join(CONTROL_SOCKET), &ControlCommand::Status) {
            Ok(ControlReply::Status(r)) => Some(*r),
            _ => None,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `timeout`). Returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A set of daemons sharing a temporary directory and a network key.
#[derive(Debug)]
pub struct Net {
    /// `tokio` or `smol`.
    pub runtime: String,
    /// The binary.
    pub binary: PathBuf,
    /// The network key file.
    pub network_key: PathBuf,
    /// Daemons, in start order.
    pub daemons: Vec<Daemon>,
    dir: tempfile::TempDir,
}

impl Net {
    /// A new, empty network for `runtime`.
    pub fn new(runtime: &str) -> Net {
        let dir = tempfile::tempdir().expect("tempdir");
        let network_key = dir.path().join("network.key");
        identity::create_network_key(&network_key).expect("network key");
        Net { runtime: runtime.into(), binary: runtime_binary(runtime), network_key, daemons: Vec::new(), dir }
    }

    /// The shared directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A config for a daemon named `name` (listening on 127.0.0.1:0, relays off).
    pub fn config(&self, name: &str, mode: &str, seeds: Vec<String>) -> DaemonConfig {
        let mut c = DaemonConfig {
            mode: mode.into(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            seeds,
            data_dir: self.dir().join(name),
            network_key: self.network_key.clone(),
            ..DaemonConfig::default()
        };
        c.protocol.name = name.into();
        c
    }

    /// Starts a daemon with `config` and waits until its control socket answers. Returns its index.
    pub fn start(&mut self, name: &str, config: &DaemonConfig) -> usize {
        let config_path = self.dir().join(format!("{name}.toml"));
        std::fs::write(&config_path, config.to_toml()).expect("write config");
        let log = self.dir().join(format!("{name}.log"));
        let d = Daemon { name: name.into(), data_dir: config.data_dir.clone(), config_path, log, child: None };
        self.daemons.push(d);
        let i = self.daemons.len() - 1;
        self.restart(i);
        i
    }

    /// (Re)starts daemon `i` from its config file and waits for its control socket.
    pub fn restart(&mut self, i: usize) {
        let binary = self.binary.clone();
        let d = &mut self.daemons[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&d.log).expect("log");
        let child = Command::new(&binary)
            .arg("run")
            .arg("--config")
            .arg(&d.config_path)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env_remove("INDEXER_ADDRESSES")
            .env_remove("NODE_MODE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        d.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.status().is_none() {
            if let Some(c) = d.child.as_mut()
                && let Ok(Some(s)) = c.try_wait()
            {
                panic!("{} exited with {s} before answering:\n{}", d.name, d.log_tail());
            }
            assert!(Instant::now() < deadline, "{} never answered on its control socket:\n{}", d.name, d.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Status of daemon `i` (panics with its log if it does not answer).
    pub fn status(&self, i: usize) -> StatusReport {
        let d = &self.daemons[i];
        d.status().unwrap_or_else(|| panic!("{} does not answer:\n{}", d.name, d.log_tail()))
    }

    /// `<peer-id>@ip:port` of daemon `i`.
    pub fn address(&self, i: usize) -> String {
        self.status(i).address
    }

    /// Polls `check` every 100 ms until it holds or `timeout` passes. Returns whether it held.
    pub fn wait_until(&self, timeout: Duration, mut check: impl FnMut(&Net) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if check(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `<binary> <args…> --data-dir <daemon i's data dir>` (a client command such as
    /// `lookup <key>`, talking to daemon `i` over its control socket) and returns its output.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .args(args)
            .arg("--data-dir")
            .arg(&self.daemons[i].data_dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run the client command")
    }

    /// Every daemon's log tail, for failure messages.
    pub fn logs(&self) -> String {
        self.daemons.iter().map(|d| format!("--- {} ---\n{}\n", d.name, d.log_tail())).collect()
    }
}

/// Runs `<binary> devnet …` and returns its exit status and parsed JSON summary.
pub fn devnet(runtime: &str, args: &[&str]) -> (ExitStatus, serde_json::Value, String) {
    let out = Command::new(runtime_binary(runtime))
        .arg("devnet")
        .args(args)
        .arg("--json")
        .env_remove("RUST_LOG")
        .output()
        .expect("run devnet");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("devnet printed no JSON ({e}):\n{}\n{stderr}", String::from_utf8_lossy(&out.stdout))
    });
    (out.status, json, stderr)
}
