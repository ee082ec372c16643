//! The local control socket: a Unix socket in the data directory (mode 0600) over which
//! `ocd status`, `ocd lookup` and the devnet talk to a running daemon. One JSON line in, one JSON
//! line out.
//!
//! The server runs on its own thread and hands each request to the driver through a bounded
//! channel; the driver answers from its own state, so the control path never touches the core
//! concurrently. A request that waits on the network (a lookup) is bounded by the driver; if its
//! client hangs up first, the server drops the pending answer so the driver forgets it.

use super::lookup::{self, LookupReport};
use super::status::StatusReport;
use crate::proto::RecordKey;
use futures::channel::{mpsc, oneshot};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest accepted request line.
const MAX_REQUEST: u64 = 4096;
/// How long a request may wait for the driver (lookups: their own timeout, see
/// [`ControlCommand::Lookup`]).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on a lookup (`ocd lookup --timeout`).
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest lookup bound the daemon accepts.
pub const MAX_LOOKUP_TIMEOUT: Duration = Duration::from_secs(300);

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ControlCommand {
    /// A [`StatusReport`].
    Status,
    /// Shut down gracefully (same as SIGTERM).
    Shutdown,
    /// Find a peer's record by DID or peer id; answered with [`ControlReply::Lookup`], or an
    /// error if the core has not answered within `timeout_ms`.
    Lookup {
        /// What to find, as `/pid/<hex>` or `/node/<did>` on the wire.
        #[serde(with = "lookup::key_text")]
        key: RecordKey,
        /// Bound on the wait, in milliseconds (default 15 s, at most 5 min).
        #[serde(default = "default_lookup_timeout_ms")]
        timeout_ms: u64,
    },
}

fn default_lookup_timeout_ms() -> u64 {
    DEFAULT_LOOKUP_TIMEOUT.as_millis() as u64
}

impl ControlCommand {
    /// How long a client should wait for the reply to this command.
    pub fn reply_timeout(&self) -> Duration {
        match self {
            ControlCommand::Lookup { timeout_ms, .. } => {
                Duration::from_millis(*timeout_ms).min(MAX_LOOKUP_TIMEOUT) + REPLY_TIMEOUT
            }
            _ => REPLY_TIMEOUT * 2,
        }
    }
}

/// What the daemon answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum ControlReply {
    /// The status.
    Status(Box<StatusReport>),
    /// Shutdown started.
    ShuttingDown,
    /// A lookup finished (found or not).
    Lookup(Box<LookupReport>),
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// A request on its way to the driver.
#[derive(Debug)]
pub struct ControlRequest {
    /// The command.
    pub command: ControlCommand,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ControlReply>,
}

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another daemon is already listening on the socket.
    #[error("{0}: another daemon is already running with this data directory")]
    AlreadyRunning(PathBuf),
    /// No daemon is listening.
    #[error("{path}: no daemon is running here ({source}); is `ocd run` started with this data directory?")]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Socket I/O failed.
    #[error("{path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The daemon answered something unreadable.
    #[error("bad reply from the daemon: {0}")]
    BadReply(String),
}

/// Starts the control server on `path` (a stale socket file is replaced; a live one is an error).
pub fn serve(path: &Path, requests: mpsc::Sender<ControlRequest>) -> Result<(), ControlError> {
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ControlError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std::thread::Builder::new()
        .name("ocd-control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let requests = requests.clone();
                // One short-lived thread per client, so a stuck client never blocks the others.
                let _ = std::thread::Builder::new().name("ocd-control-conn".into()).spawn(move || {
                    let _ = answer(stream, requests);
                });
            }
        })
        .map_err(io)?;
    Ok(())
}

fn answer(stream: UnixStream, mut requests: mpsc::Sender<ControlRequest>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match serde_json::from_str::<ControlCommand>(line.trim()) {
        Err(e) => ControlReply::Error { message: format!("bad request: {e}") },
        Ok(command) => {
            let waits_on_network = matches!(command, ControlCommand::Lookup { .. });
            let (tx, rx) = oneshot::channel();
            let sent = futures::executor::block_on(futures::SinkExt::send(
                &mut requests,
                ControlRequest { command, reply: tx },
            ));
            match sent {
                Err(_) => ControlReply::Error { message: "the daemon is shutting down".into() },
                Ok(()) if !waits_on_network => futures::executor::block_on(rx)
                    .unwrap_or(ControlReply::Error { message: "the daemon is shutting down".into() }),
                Ok(()) => match wait_unless_client_leaves(&stream, rx) {
                    Some(reply) => reply,
                    // The client hung up: dropping `rx` tells the driver nobody waits any more.
                    None => return Ok(()),
                },
            }
        }
    };
    let mut out = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".into());
    out.push('\n');
    (&stream).write_all(out.as_bytes())
}

/// Waits for the driver's reply while watching the client: `None` if the client closed its end
/// first. A helper thread blocks reading the (otherwise idle) client socket; end of stream or an
/// error there means the client is gone.
fn wait_unless_client_leaves(stream: &UnixStream, rx: oneshot::Receiver<ControlReply>) -> Option<ControlReply> {
    let shutting_down = || ControlReply::Error { message: "the daemon is shutting down".into() };
    let Ok(watch) = stream.try_clone() else {
        return Some(futures::executor::block_on(rx).unwrap_or_else(|_| shutting_down()));
    };
    let (gone_tx, gone_rx) = oneshot::channel::<()>();
    let watcher = std::thread::Builder::new().name("ocd-control-watch".into()).spawn(move || {
        let mut byte = [0u8; 1];
        loop {
            match (&watch).read(&mut byte) {
                Ok(0) => break,
                Ok(_) => {} // nothing more is expected from the client; ignore it
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = gone_tx.send(());
    });
    if watcher.is_err() {
        return Some(futures::executor::block_on(rx).unwrap_or_else(|_| shutting_down()));
    }
    let reply = match futures::executor::block_on(futures::future::select(rx, gone_rx)) {
        futures::future::Either::Left((reply, _)) => Some(reply.unwrap_or_else(|_| shutting_down())),
        futures::future::Either::Right(_) => None,
    };
    // Unblock the watcher (the reply, if any, is written on the write half, still open).
    let _ = stream.shutdown(std::net::Shutdown::Read);
    reply
}

/// Sends one command to the daemon listening on `path` and returns its reply (waiting at most
/// [`ControlCommand::reply_timeout`]).
pub fn request(path: &Path, command: &ControlCommand) -> Result<ControlReply, ControlError> {
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    let stream =
        UnixStream::connect(path).map_err(|source| ControlError::NotRunning { path: path.to_path_buf(), source })?;
    stream.set_read_timeout(Some(command.reply_timeout())).map_err(io)?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_string(command).map_err(|e| ControlError::BadReply(e.to_string()))?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new((&stream).take(16 << 20)).read_line(&mut reply).map_err(io)?;
    serde_json::from_str(reply.trim()).map_err(|e| ControlError::BadReply(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn control_socket_round_trip_and_single_instance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(4);
        serve(&path, tx.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(serve(&path, tx), Err(ControlError::AlreadyRunning(_))));
        let server = std::thread::spawn(move || {
            let req = futures::executor::block_on(rx.next()).unwrap();
            assert_eq!(req.command, ControlCommand::Shutdown);
            req.reply.send(ControlReply::ShuttingDown).unwrap();
        });
        assert_eq!(request(&path, &ControlCommand::Shutdown).unwrap(), ControlReply::ShuttingDown);
        server.join().unwrap();
    }

    #[test]
    fn lookup_command_carries_its_key_as_text() {
        let key = lookup::parse_key("did-of-bob").unwrap();
        let cmd = ControlCommand::Lookup { key: key.clone(), timeout_ms: 2_000 };
        let line = serde_json::to_string(&cmd).unwrap();
        assert_eq!(line, r#"{"command":"lookup","key":"/node/did-of-bob","timeout_ms":2000}"#);
        assert_eq!(serde_json::from_str::<ControlCommand>(&line).unwrap(), cmd);
        let default: ControlCommand = serde_json::from_str(r#"{"command":"lookup","key":"/node/x"}"#).unwrap();
        assert!(matches!(default, ControlCommand::Lookup { timeout_ms: 15_000, .. }));
        assert!(serde_json::from_str::<ControlCommand>(r#"{"command":"lookup","key":"/pid/zz"}"#).is_err());
    }

    #[test]
    fn lookup_whose_client_hangs_up_is_dropped_for_the_driver() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let (tx, mut rx) = mpsc::channel::<ControlRequest>(4);
        serve(&path, tx).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        (&client).write_all(b"{\"command\":\"lookup\",\"key\":\"/node/x\"}\n").unwrap();
        let req = futures::executor::block_on(rx.next()).unwrap();
        assert!(matches!(req.command, ControlCommand::Lookup { .. }));
        assert!(!req.reply.is_canceled());
        drop(client);
        // The server notices the hang-up and drops its end: the driver sees a cancelled reply.
        let mut reply = req.reply;
        futures::executor::block_on(reply.cancellation());
        assert!(reply.is_canceled());
    }

    #[test]
    fn no_daemon_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = request(&dir.path().join("none.sock"), &ControlCommand::Status).unwrap_err();
        assert!(e.to_string().contains("no daemon is running"), "{e}");
    }
}
