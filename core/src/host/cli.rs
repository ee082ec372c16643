//! The command line, shared by `ocd` (tokio + iroh) and `ocd-smol` (smol + quinn): both binaries
//! call [`main`] with their [`Launcher`], so they have the same commands, flags and configuration.
//!
//! Exit codes: 0 success; 1 a negative answer (`lookup`: not found; `search`: no hit; `devnet`: did
//! not converge); 2 an error (bad configuration, a corrupt or foreign store, no daemon on the
//! control socket, no indexer to ask, a lookup timeout, an invalid search needle, a refused
//! `send`).

use super::app::{self, InboxItem};
use super::config::DaemonConfig;
use super::control::{self, ControlCommand, ControlReply};
use super::daemon::{DaemonSetup, HostError, init_logging};
use super::devnet::{self, DevnetArgs};
use super::identity;
use super::lookup::{self, LookupReport};
use super::search;
use crate::proto::RecordKey;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code of a negative answer (not found, not converged).
pub const EXIT_NEGATIVE: u8 = 1;
/// Exit code of an error.
pub const EXIT_ERROR: u8 = 2;

/// What a runtime crate provides: how to run a daemon on it.
pub trait Launcher {
    /// Binary name (`ocd` or `ocd-smol`).
    const BINARY: &'static str;
    /// Runtime name for reports (`tokio` or `smol`).
    const RUNTIME: &'static str;
    /// Builds the runtime and the transport and serves until shutdown.
    fn run(setup: DaemonSetup) -> Result<(), HostError>;
}

/// `ocd` — peer-to-peer discovery daemon.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "ocd: peer-to-peer discovery daemon (nodes, indexers, DHT lookups, distributed peer search)"
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Commands,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run the daemon.
    Run(RunArgs),
    /// Create (or show) the key and DID in a data directory, and optionally a network key.
    Keygen(KeygenArgs),
    /// Show a running daemon's pool, sessions, records, DHT and counters.
    Status(StatusArgs),
    /// Find a peer's signed record by DID or peer id, through the running daemon.
    Lookup(LookupArgs),
    /// Search the federation for peers by name, DID or peer id, through the running daemon.
    Search(SearchArgs),
    /// Send an application message to a peer (by peer id or DID), through the running daemon.
    Send(SendArgs),
    /// List the application messages this daemon received, in arrival order.
    Inbox(InboxArgs),
    /// Start a whole network of daemons on 127.0.0.1 and watch it converge.
    Devnet(DevnetArgs),
}

/// `run` flags; each overrides the config file and the environment.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Roles: node, indexer, or node,indexer (env NODE_MODE).
    #[arg(long)]
    pub mode: Option<String>,
    /// QUIC listen address, e.g. 0.0.0.0:4001.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Seed indexer `<peer-id>@ip:port` (repeatable; env INDEXER_ADDRESSES).
    #[arg(long = "seed")]
    pub seeds: Vec<String>,
    /// Data directory (key, DID, control socket).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Network key file (env PSK_PATH).
    #[arg(long)]
    pub network_key: Option<PathBuf>,
    /// Serve Prometheus metrics on this address.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Control socket path.
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Journal every input of the core to FILE (replay it with `ocd-sim replay FILE`).
    #[arg(long, value_name = "FILE")]
    pub journal: Option<PathBuf>,
    /// Name sent to indexers (env NAME).
    #[arg(long)]
    pub name: Option<String>,
    /// Fewest live indexers wanted (env MIN_INDEXER).
    #[arg(long)]
    pub min_indexers: Option<usize>,
    /// Largest pool (env MAX_INDEXER).
    #[arg(long)]
    pub max_indexers: Option<usize>,
    /// Log JSON lines.
    #[arg(long)]
    pub log_json: bool,
}

/// `keygen` flags.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Data directory to create the key and DID in.
    #[arg(long, default_value = "./ocd-data")]
    pub data_dir: PathBuf,
    /// Also create a new network key file here (never overwritten).
    #[arg(long)]
    pub network_key: Option<PathBuf>,
    /// Adopt a new DID for the existing key (after losing the `did` file, or to change it); the
    /// replaced one is kept as `did.previous`. Indexers that bound the old DID to this key refuse
    /// the new one until that binding expires.
    #[arg(long)]
    pub new_did: bool,
}

/// `status` flags.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Data directory of the daemon.
    #[arg(long, default_value = "./ocd-data")]
    pub data_dir: PathBuf,
    /// Control socket (default: `<data-dir>/control.sock`).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `lookup` flags.
#[derive(Debug, clap::Args)]
pub struct LookupArgs {
    /// A peer id (64 hex characters) or a DID (anything else; `/node/<did>` forces a DID).
    #[arg(value_parser = lookup::parse_key, value_name = "DID|PEER-ID")]
    pub key: RecordKey,
    /// Data directory of the daemon.
    #[arg(long, default_value = "./ocd-data")]
    pub data_dir: PathBuf,
    /// Control socket (default: `<data-dir>/control.sock`).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Give up after this long, e.g. 15s or 1m (at most 5m).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `search` flags.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Prints each verified hit as it arrives (the signed record of a matching peer). Ends when no new \
hit came for the daemon's search_timeout (5 s by default), or at --timeout.\n\
Exit status: 0 at least one hit, 1 none, 2 an error (no daemon, invalid needle, no live indexer to ask)."
)]
pub struct SearchArgs {
    /// A peer id (64 hex characters, matched exactly), else an exact DID or a case-insensitive
    /// substring of the name.
    #[arg(value_parser = search::parse_needle, value_name = "NEEDLE")]
    pub needle: String,
    /// Data directory of the daemon.
    #[arg(long, default_value = "./ocd-data")]
    pub data_dir: PathBuf,
    /// Control socket (default: `<data-dir>/control.sock`).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// One JSON object per hit and line: {"peer_id","did","name","addrs","expires_at"}.
    #[arg(long)]
    pub json: bool,
    /// Stop after this long even if hits keep coming, e.g. 30s (at most 5m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Search as this user: a newer search of the same user, from any client, cancels this one
    /// (default: a key of its own).
    #[arg(long, value_parser = search::parse_user)]
    pub user: Option<String>,
}

/// `send` flags.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Critical protocols (create, update, delete) are retried until delivered and survive a crash of \
either side; moderate ones (verify, planner, considers, admiralty-config, minio-config) are retried 3 times; search \
is sent once.\n\
Exit status: 0 once the daemon accepted the message (a critical one is then durably queued), 2 a refusal or an error."
)]
pub struct SendArgs {
    /// The destination: a peer id (64 hex characters) or a DID.
    #[arg(value_parser = app::parse_target, value_name = "PEER-ID|DID")]
    pub to: crate::proto::Target,
    /// create, update, delete, verify, planner, considers, admiralty-config, minio-config or search.
    #[arg(long, value_parser = app::parse_protocol)]
    pub protocol: crate::proto::AppProtocol,
    /// OpenCloud datatype code.
    #[arg(long, allow_negative_numbers = true)]
    pub datatype: Option<i64>,
    /// OpenCloud user on whose behalf it is sent.
    #[arg(long, default_value = "")]
    pub user: String,
    /// The payload: a file, or `-` for standard input (default: empty).
    #[arg(long, value_name = "FILE|-")]
    pub payload: Option<PathBuf>,
    /// Print one JSON object: {"id","class","state"}.
    #[arg(long)]
    pub json: bool,
    /// Data directory of the daemon.
    #[arg(long, default_value = "./ocd-data")]
    pub data_dir: PathBuf,
    /// Control socket (default: `<data-dir>/control.sock`).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
}

/// `inbox` flags.
#[derive(Debug, clap::Args)]
#[command(after_help = "Each message is listed once, in the order it arrived (its `seq`); pass the last seq seen as \
--since to list only newer ones.")]
pub struct InboxArgs {
    /// One JSON object per message and line: {"seq","id","from","protocol","datatype","user","payload"}
    /// (payload in base64).
    #[arg(long)]
    pub json: bool,
    /// Only messages that arrived after this arrival sequence.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Keep printing new messages as they arrive (until interrupted or the daemon stops).
    #[arg(long)]
    pub follow: bool,
    /// Data directory of the daemon.
    #[arg(long, default_value = "./ocd-data")]
    pub data_dir: PathBuf,
    /// Control socket (default: `<data-dir>/control.sock`).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
}

impl RunArgs {
    /// Merges file, environment and flags into one configuration.
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<DaemonConfig, HostError> {
        let mut c = match &self.config {
            Some(path) => DaemonConfig::from_file(path)?,
            None => DaemonConfig::default(),
        };
        c.apply_env(env)?;
        if let Some(v) = &self.mode {
            c.mode = v.clone();
        }
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if !self.seeds.is_empty() {
            c.seeds = self.seeds.clone();
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &self.network_key {
            c.network_key = v.clone();
        }
        if let Some(v) = &self.journal {
            c.journal = Some(v.clone());
        }
        if let Some(v) = self.metrics {
            c.metrics = Some(v);
        }
        if let Some(v) = &self.control_socket {
            c.control_socket = Some(v.clone());
        }
        if let Some(v) = &self.name {
            c.protocol.name = v.clone();
        }
        if let Some(v) = self.min_indexers {
            c.protocol.min_indexers = v;
        }
        if let Some(v) = self.max_indexers {
            c.protocol.max_indexers = v;
        }
        if self.log_json {
            c.log_json = true;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Entry point of both binaries.
pub fn main<L: Launcher>() -> ExitCode {
    let matches = Cli::command().name(L::BINARY).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Commands::Run(args) => {
            let config = match args.resolve(|k| std::env::var(k).ok()) {
                Ok(c) => c,
                Err(e) => return fail(L::BINARY, &e),
            };
            init_logging(config.log_json);
            let setup = match DaemonSetup::load(config) {
                Ok(s) => s,
                Err(HostError::Identity(e @ identity::IdentityFileError::Io { .. }))
                    if e.to_string().contains("network key") =>
                {
                    eprintln!(
                        "{}: {e}\n  create one with `{} keygen --network-key <path>` and share it with the network",
                        L::BINARY,
                        L::BINARY
                    );
                    return ExitCode::from(EXIT_ERROR);
                }
                Err(e) => return fail(L::BINARY, &e),
            };
            if setup.identity.created_key {
                tracing::info!(peer = %setup.identity.keypair.peer_id(), did = %setup.identity.did, "created a new identity");
            }
            match L::run(setup) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(L::BINARY, &e),
            }
        }
        Commands::Keygen(args) => {
            if args.new_did && args.data_dir.join(identity::KEY_FILE).exists() {
                match identity::adopt_new_did(&args.data_dir) {
                    Ok(did) => println!("did      {did} (adopted; the previous one, if any, is in did.previous)"),
                    Err(e) => return fail(L::BINARY, &e),
                }
            }
            let id = match identity::load_or_create(&args.data_dir) {
                Ok(id) => id,
                Err(e) => return fail(L::BINARY, &e),
            };
            println!("peer id  {}", id.keypair.peer_id());
            println!("did      {}", id.did);
            println!(
                "key      {} ({})",
                args.data_dir.join(identity::KEY_FILE).display(),
                if id.created_key { "created" } else { "existing" }
            );
            if let Some(path) = args.network_key {
                if path.exists() {
                    match identity::load_network_key(&path) {
                        Ok(_) => println!("network  {} (existing)", path.display()),
                        Err(e) => return fail(L::BINARY, &e),
                    }
                } else {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    match identity::create_network_key(&path) {
                        Ok(_) => println!("network  {} (created; share it with every member)", path.display()),
                        Err(e) => return fail(L::BINARY, &e),
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Commands::Status(args) => {
            let socket = args.control_socket.unwrap_or_else(|| args.data_dir.join(super::config::CONTROL_SOCKET));
            match control::request(&socket, &ControlCommand::Status) {
                Ok(ControlReply::Status(report)) => {
                    if args.json {
                        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    } else {
                        print!("{}", report.render());
                    }
                    ExitCode::SUCCESS
                }
                Ok(other) => fail(L::BINARY, &format!("unexpected reply {other:?}")),
                Err(e) => fail(L::BINARY, &e),
            }
        }
        Commands::Lookup(args) => run_lookup(L::BINARY, args),
        Commands::Search(args) => run_search(L::BINARY, args),
        Commands::Send(args) => run_send(L::BINARY, args),
        Commands::Inbox(args) => run_inbox(L::BINARY, args),
        Commands::Devnet(args) => {
            init_logging(false);
            devnet::main(args, L::BINARY, L::RUNTIME)
        }
    }
}

/// `lookup`: ask the daemon, print the verified record (or say why not).
fn run_lookup(binary: &str, args: LookupArgs) -> ExitCode {
    let socket = args.control_socket.unwrap_or_else(|| args.data_dir.join(super::config::CONTROL_SOCKET));
    let timeout_ms = u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX).max(1);
    let key = args.key.clone();
    let report: LookupReport = match control::request(&socket, &ControlCommand::Lookup { key, timeout_ms }) {
        Ok(ControlReply::Lookup(report)) => *report,
        Ok(ControlReply::Error { message }) => return fail(binary, &message),
        Ok(other) => return fail(binary, &format!("unexpected reply {other:?}")),
        Err(e) => return fail(binary, &e),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    }
    if report.found {
        if !args.json {
            print!("{}", report.render());
        }
        return ExitCode::SUCCESS;
    }
    if report.attempts == 0 {
        // A node with no live indexer has nobody to ask: an error, not an answer.
        return fail(binary, &format!("cannot look up {}: no live indexer to ask (see `{binary} status`)", report.key));
    }
    eprintln!(
        "{binary}: {} not found ({} indexer{} asked)",
        report.key,
        report.attempts,
        if report.attempts == 1 { "" } else { "s" }
    );
    ExitCode::from(EXIT_NEGATIVE)
}

/// Writes one streamed item: its JSON line with `--json`, else its human form. A closed stdout
/// (`| head`) is no reason to stop reading the answer. Returns whether the item was formatted.
fn print_item<T: serde::Serialize>(
    out: &mut impl Write,
    json: bool,
    value: &T,
    human: impl FnOnce() -> String,
) -> bool {
    let text = if json {
        serde_json::to_string(value).map(|mut l| {
            l.push('\n');
            l
        })
    } else {
        Ok(human())
    };
    let Ok(text) = text else { return false };
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    true
}

/// `search`: ask the daemon, print each verified hit as it arrives, then a summary on stderr.
fn run_search(binary: &str, args: SearchArgs) -> ExitCode {
    let socket = args.control_socket.unwrap_or_else(|| args.data_dir.join(super::config::CONTROL_SOCKET));
    let timeout_ms = u64::try_from(args.timeout.as_millis()).unwrap_or(u64::MAX).max(1);
    let command = ControlCommand::Search { needle: args.needle.clone(), timeout_ms, user: args.user };
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0u32;
    let last = control::request_streaming(&socket, &command, |reply| {
        if let ControlReply::SearchHit(h) = reply
            && print_item(&mut stdout, args.json, &h.hit, || h.render())
        {
            printed += 1;
        }
    });
    match last {
        Ok(ControlReply::SearchDone(done)) => {
            eprintln!("{binary}: {}", done.summary(&args.needle));
            ExitCode::from(done.exit_code())
        }
        Ok(ControlReply::Error { message }) if printed == 0 => fail(binary, &message),
        Ok(other) if printed == 0 => fail(binary, &format!("unexpected reply {other:?}")),
        Err(e) if printed == 0 => fail(binary, &e),
        // The hits printed are verified records: they stand even if the answer broke off.
        Ok(other) => {
            eprintln!("{binary}: search interrupted after {printed} hit(s): {other:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{binary}: search interrupted after {printed} hit(s): {e}");
            ExitCode::SUCCESS
        }
    }
}

/// Largest payload file read (the daemon refuses anything above its `app_max_payload`, 48 KiB by
/// default; this only bounds what is read).
const MAX_PAYLOAD_READ: u64 = 16 << 20;

/// `send`: read the payload, ask the daemon, print the message id once accepted.
fn run_send(binary: &str, args: SendArgs) -> ExitCode {
    use std::io::Read as _;
    let socket = args.control_socket.unwrap_or_else(|| args.data_dir.join(super::config::CONTROL_SOCKET));
    let mut payload = Vec::new();
    let read = match &args.payload {
        None => Ok(0),
        Some(p) if p.as_os_str() == "-" => std::io::stdin().lock().take(MAX_PAYLOAD_READ).read_to_end(&mut payload),
        Some(p) => std::fs::File::open(p).and_then(|f| f.take(MAX_PAYLOAD_READ).read_to_end(&mut payload)),
    };
    if let Err(e) = read {
        let from = args.payload.as_ref().map_or_else(String::new, |p| p.display().to_string());
        return fail(binary, &format!("{from}: {e}"));
    }
    let command = ControlCommand::Send {
        to: app::target_text(&args.to),
        protocol: args.protocol.name().into(),
        datatype: args.datatype,
        user: args.user,
        payload: app::encode_payload(&payload),
    };
    match control::request(&socket, &command) {
        Ok(ControlReply::Sent(sent)) => {
            if args.json {
                println!("{}", serde_json::to_string(&sent).unwrap_or_default());
            } else {
                println!("{} {} ({})", sent.state, sent.id, sent.class);
            }
            ExitCode::SUCCESS
        }
        Ok(ControlReply::Error { message }) => fail(binary, &message),
        Ok(other) => fail(binary, &format!("unexpected reply {other:?}")),
        Err(e) => fail(binary, &e),
    }
}

/// `inbox`: print each entry the daemon streams, once, in arrival order.
fn run_inbox(binary: &str, args: InboxArgs) -> ExitCode {
    let socket = args.control_socket.unwrap_or_else(|| args.data_dir.join(super::config::CONTROL_SOCKET));
    let command = ControlCommand::Inbox { since: args.since, follow: args.follow };
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0u64;
    let last = control::request_streaming(&socket, &command, |reply| {
        if let ControlReply::InboxEntry(item) = reply {
            let item: InboxItem = *item;
            if print_item(&mut stdout, args.json, &item.line, || item.render()) {
                printed += 1;
            }
        }
    });
    match last {
        Ok(ControlReply::InboxDone(done)) => {
            if done.end == "shutdown" {
                eprintln!("{binary}: the daemon stopped (last seq {})", done.last_seq);
            } else if !args.json {
                eprintln!("{binary}: {} message(s); last seq {}", done.count, done.last_seq);
            }
            ExitCode::SUCCESS
        }
        Ok(ControlReply::Error { message }) => fail(binary, &message),
        Ok(other) => fail(binary, &format!("unexpected reply {other:?}")),
        Err(e) if printed > 0 => fail(binary, &format!("inbox interrupted after {printed} message(s): {e}")),
        Err(e) => fail(binary, &e),
    }
}

fn fail(binary: &str, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{binary}: {e}");
    ExitCode::from(EXIT_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_env_which_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "mode = \"indexer\"\n[protocol]\nname = \"file\"\nmin_indexers = 2\n").unwrap();
        let cli = Cli::try_parse_from(["ocd", "run", "--config", file.to_str().unwrap(), "--name", "flag"]).unwrap();
        let Commands::Run(args) = cli.command else { panic!("not run") };
        let c = args
            .resolve(|k| match k {
                "NAME" => Some("env".into()),
                "MIN_INDEXER" => Some("3".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(c.protocol.name, "flag");
        assert_eq!(c.protocol.min_indexers, 3);
        assert_eq!(c.mode, "indexer");
    }

    #[test]
    fn lookup_argument_is_a_peer_id_when_64_hex_characters_else_a_did() {
        let peer = crate::proto::Keypair::derive(9, "cli").peer_id();
        let parse = |args: &[&str]| match Cli::try_parse_from(args) {
            Ok(Cli { command: Commands::Lookup(a) }) => Ok(a),
            Ok(other) => panic!("not lookup: {other:?}"),
            Err(e) => Err(e),
        };
        let hex = peer.to_string();
        let a = parse(&["ocd", "lookup", &hex]).unwrap();
        assert_eq!(a.key, RecordKey::Peer(peer));
        assert_eq!(a.timeout, Duration::from_secs(15));
        assert!(!a.json);
        let a = parse(&["ocd", "lookup", "0f3c9a3e-5d2b-4c1a-9e8f-7a6b5c4d3e2f", "--json", "--timeout", "3s"]).unwrap();
        assert_eq!(a.key, RecordKey::Did(crate::proto::Did::new("0f3c9a3e-5d2b-4c1a-9e8f-7a6b5c4d3e2f").unwrap()));
        assert_eq!(a.timeout, Duration::from_secs(3));
        assert!(a.json);
        let a = parse(&["ocd", "lookup", &format!("/node/{hex}"), "--data-dir", "/tmp/x"]).unwrap();
        assert!(matches!(a.key, RecordKey::Did(_)));
        assert_eq!(a.data_dir, PathBuf::from("/tmp/x"));
        assert!(parse(&["ocd", "lookup"]).is_err(), "the key is required");
        assert!(parse(&["ocd", "lookup", "/pid/abc"]).is_err(), "a malformed peer id is refused");
        assert!(parse(&["ocd", "lookup", "x", "--timeout", "soon"]).is_err());
    }

    #[test]
    fn search_takes_a_needle_and_bounds() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args) {
            Ok(Cli { command: Commands::Search(a) }) => Ok(a),
            Ok(other) => panic!("not search: {other:?}"),
            Err(e) => Err(e),
        };
        let a = parse(&["ocd", "search", "Carol"]).unwrap();
        assert_eq!(a.needle, "Carol");
        assert_eq!(a.timeout, Duration::from_secs(30));
        assert!(!a.json && a.user.is_none());
        assert_eq!(a.data_dir, PathBuf::from("./ocd-data"));
        let a = parse(&["ocd", "search", " sky ", "--json", "--timeout", "3s", "--user", "ops", "--data-dir", "/x"])
            .unwrap();
        assert_eq!((a.needle.as_str(), a.timeout, a.json), ("sky", Duration::from_secs(3), true));
        assert_eq!(a.user.as_deref(), Some("ops"));
        assert_eq!(a.data_dir, PathBuf::from("/x"));
        // An empty or oversized needle is a usage error (exit 2), before any daemon is asked.
        for bad in [&["ocd", "search", ""][..], &["ocd", "search", "  "], &["ocd", "search"]] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        assert!(parse(&["ocd", "search", &"n".repeat(5000)]).is_err());
        assert!(parse(&["ocd", "search", "x", "--user", ""]).is_err());
        assert!(parse(&["ocd", "search", "x", "--timeout", "soon"]).is_err());
    }

    #[test]
    fn send_and_inbox_take_their_flags() {
        let peer = crate::proto::Keypair::derive(9, "cli").peer_id();
        let hex = peer.to_string();
        let cli = Cli::try_parse_from(["ocd", "send", &hex, "--protocol", "create", "--datatype", "-3", "--json"]);
        let Ok(Cli { command: Commands::Send(a) }) = cli else { panic!("not send: {cli:?}") };
        assert_eq!(a.to, crate::proto::Target::Peer(peer));
        assert_eq!(a.protocol, crate::proto::AppProtocol::Create);
        assert_eq!((a.datatype, a.json, a.user.as_str(), a.payload.is_none()), (Some(-3), true, "", true));
        let cli = Cli::try_parse_from(["ocd", "send", "some-did", "--protocol", "minio-config", "--payload", "-"]);
        let Ok(Cli { command: Commands::Send(a) }) = cli else { panic!("not send: {cli:?}") };
        assert!(matches!(a.to, crate::proto::Target::Did(_)));
        assert_eq!(a.payload, Some(PathBuf::from("-")));
        for bad in [&["ocd", "send", &hex][..], &["ocd", "send", &hex, "--protocol", "teleport"], &["ocd", "send"]] {
            assert_eq!(Cli::try_parse_from(bad).unwrap_err().exit_code(), 2, "{bad:?}");
        }
        let cli = Cli::try_parse_from(["ocd", "inbox", "--json", "--since", "41", "--follow"]);
        let Ok(Cli { command: Commands::Inbox(a) }) = cli else { panic!("not inbox: {cli:?}") };
        assert_eq!((a.json, a.since, a.follow), (true, 41, true));
        let Ok(Cli { command: Commands::Inbox(a) }) = Cli::try_parse_from(["ocd", "inbox"]) else { panic!() };
        assert_eq!((a.json, a.since, a.follow), (false, 0, false));
    }

    #[test]
    fn help_describes_search() {
        let help = Cli::command().render_help().to_string();
        assert!(help.contains("distributed peer search"), "{help}");
        assert!(help.contains("search") && help.contains("by name, DID or peer id"), "{help}");
    }

    #[test]
    fn invalid_configuration_is_refused_before_start() {
        let cli = Cli::try_parse_from(["ocd", "run", "--min-indexers", "9", "--max-indexers", "2"]).unwrap();
        let Commands::Run(args) = cli.command else { panic!("not run") };
        assert!(args.resolve(|_| None).is_err());
    }
}
