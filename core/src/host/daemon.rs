//! Starting a daemon, written once for both runtimes: resolve the identity and network key, open
//! the durable store and read back what it holds, build the [`Peer`] (handing it the restored
//! state first), start the control socket, metrics and signal handling, then run the [driver]
//! over the runtime's transport until shutdown.

use super::config::{ConfigFileError, DaemonConfig};
use super::control::{self, ControlCommand, ControlError, ControlRequest};
use super::driver::{self, Clock, DriverOptions};
use super::identity::{self, Identity, IdentityFileError};
use super::metrics::{self, Metrics};
use super::store::{Store, StoreError};
use super::transport::{Runtime, Transport};
use crate::proto::{Addr, Input, Peer, PeerAddr, PeerSetup, Restored, Roles, SigCheck};
use futures::channel::mpsc;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;

/// Errors that stop a daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
    /// Identity or network key files.
    #[error(transparent)]
    Identity(#[from] IdentityFileError),
    /// Control socket.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The durable store (corrupt, truncated, foreign, in use, or a failed commit).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The transport could not start.
    #[error("transport: {0}")]
    Transport(String),
    /// Other I/O (metrics socket, runtime, signals).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Everything resolved before the runtime starts.
#[derive(Debug)]
pub struct DaemonSetup {
    /// The configuration (file, environment and flags merged).
    pub config: DaemonConfig,
    /// Key and DID from the data directory.
    pub identity: Identity,
    /// The private network's key.
    pub network_key: [u8; 32],
    /// Roles.
    pub roles: Roles,
    /// Seeds, parsed.
    pub seeds: Vec<PeerAddr>,
    /// The durable store (`<data_dir>/ocd.redb`), open.
    pub store: Arc<Store>,
    /// What the store held at start, handed to the core before anything else.
    pub restored: Restored,
}

impl DaemonSetup {
    /// Validates `config`, loads (or on first start creates) the identity, reads the network
    /// key, and opens (or on first start creates) the durable store and reads it back. A corrupt,
    /// truncated or foreign store is an error naming the file: the daemon does not start.
    pub fn load(config: DaemonConfig) -> Result<Self, HostError> {
        config.validate()?;
        let roles = config.roles()?;
        let seeds = config.seed_addrs()?;
        let identity = identity::load_or_create(&config.data_dir)?;
        let network_key = identity::load_network_key(&config.network_key)?;
        let store = Store::open(&config.data_dir, &identity.keypair)?;
        let restored = store.restore()?;
        tracing::info!(
            path = %store.path().display(),
            queued = restored.queue.len(),
            sender_epochs = restored.received.len(),
            fresh = restored.sequence.is_none(),
            "durable store open"
        );
        Ok(DaemonSetup { config, identity, network_key, roles, seeds, store: Arc::new(store), restored })
    }

    /// The core's setup; `addrs` are the addresses put in our record and provider announcements
    /// (see [`advertised_addrs`]).
    pub fn peer_setup(&self, addrs: Vec<Addr>) -> Result<PeerSetup, HostError> {
        let rng_seed = match self.config.rng_seed {
            Some(s) => s,
            None => identity::os_random_u64()?,
        };
        Ok(PeerSetup {
            config: self.config.protocol.clone(),
            keypair: self.identity.keypair.clone(),
            did: self.identity.did.clone(),
            network_key: self.network_key,
            roles: self.roles,
            seeds: self.seeds.clone(),
            rng_seed,
            addrs,
            // The search mesh's clock: any instant will do, only differences are used.
            clock_anchor: Some(std::time::Instant::now()),
            sig_check: SigCheck::direct(),
        })
    }
}

/// Runs the daemon on `transport` and `rt` until SIGINT/SIGTERM or a control `shutdown`.
pub async fn serve<T: Transport, R: Runtime>(
    rt: R,
    transport: T,
    setup: DaemonSetup,
    runtime_name: &'static str,
) -> Result<(), HostError> {
    let (control_tx, control_rx) = mpsc::channel::<ControlRequest>(64);
    let socket = setup.config.control_socket_path();
    control::serve_with_store(&socket, control_tx.clone(), Some(setup.store.clone()))?;
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = setup.config.metrics {
        let bound = metrics::serve(addr, metrics.clone())
            .map_err(|source| HostError::Io { context: format!("metrics on {addr}"), source })?;
        tracing::info!(%bound, "metrics at http://{bound}/metrics");
    }
    watch_signals(control_tx.clone())?;
    drop(control_tx);
    let clock = Clock::start();
    let advertised = advertised_addrs(&transport.local_addr().addrs, &setup.config.advertise);
    tracing::info!(addrs = ?advertised, "advertising these addresses in our record");
    if setup.roles.node && setup.seeds.is_empty() {
        tracing::warn!(
            "no seed indexers configured (`seeds`, INDEXER_ADDRESSES): this node cannot join the network until \
             an indexer dials it"
        );
    }
    let peer_setup = setup.peer_setup(advertised.clone())?;
    let started = clock.now();
    let mut journal = match &setup.config.journal {
        None => None,
        Some(path) => {
            let js = crate::journal::JournalSetup {
                peer_id: peer_setup.keypair.peer_id(),
                key_file: absolute(&setup.config.data_dir.join(super::identity::KEY_FILE)),
                network_key_file: absolute(&setup.config.network_key),
                did: peer_setup.did.clone(),
                roles: peer_setup.roles,
                config: peer_setup.config.clone(),
                seeds: peer_setup.seeds.clone(),
                rng_seed: peer_setup.rng_seed,
                addrs: peer_setup.addrs.clone(),
                started,
                software: format!("ocd {} ({runtime_name})", env!("CARGO_PKG_VERSION")),
            };
            Some(super::journal::JournalWriter::create(path, &js, setup.config.journal_max_bytes).map_err(
                |source| HostError::Io { context: format!("creating the journal {}", path.display()), source },
            )?)
        }
    };
    let mut peer = Peer::new(peer_setup, started);
    // The durable state first, before any command or timeout.
    let restored = Input::Restored(setup.restored);
    let now = clock.now();
    if let Some(j) = journal.as_mut() {
        j.input(now, &restored);
    }
    peer.handle(restored, now);
    let store = setup.store;
    let options = DriverOptions {
        runtime_name,
        send_queue: setup.config.send_queue,
        connect_timeout: setup.config.protocol.handshake_timeout,
        advertised,
        store: Some(store.clone()),
        group_max: setup.config.group_commit,
        ..DriverOptions::default()
    };
    let nats = match (&setup.config.nats_url, setup.roles.node) {
        (Some(url), true) => Some(
            super::nats::NatsBridge::start(url, setup.config.nats.clone(), peer.id(), Some(store.clone()))
                .map_err(|source| HostError::Io { context: "starting the NATS bridge".into(), source })?,
        ),
        (Some(_), false) => {
            tracing::warn!("nats_url is set but this daemon is no node: the NATS bridge is off");
            None
        }
        (None, _) => None,
    };
    let extras = driver::Extras { nats, journal };
    let result = driver::run(rt, transport, peer, clock, options, control_rx, metrics, extras).await;
    let _ = std::fs::remove_file(&socket);
    // End `inbox --follow` answers, then let the store close cleanly once they let go of it.
    store.close_watchers();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while Arc::strong_count(&store) > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(store);
    result.map_err(HostError::from)
}

/// `path` made absolute when it can be (a journal names files a replay elsewhere must find).
fn absolute(path: &std::path::Path) -> String {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

/// The addresses a daemon puts in its signed record and provider announcements: the configured
/// `advertise` list if any, else the transport's bound addresses with every unspecified IP
/// (`0.0.0.0`, `::`) replaced by this machine's primary address of that family — the one its
/// routing table would use for outside traffic, found without sending anything — or by loopback
/// when the machine has no route. Deduplicated, at most [`crate::proto::MAX_ADDRS`].
pub fn advertised_addrs(bound: &[Addr], configured: &[String]) -> Vec<Addr> {
    let mut out: Vec<Addr> = Vec::new();
    let mut push = |a: String| {
        if !out.contains(&a) && out.len() < crate::proto::MAX_ADDRS {
            out.push(a);
        }
    };
    if !configured.is_empty() {
        configured.iter().map(|a| a.trim().to_string()).for_each(&mut push);
        return out;
    }
    for a in bound {
        match a.parse::<SocketAddr>() {
            Ok(sa) if sa.ip().is_unspecified() => {
                push(SocketAddr::new(primary_ip(sa.is_ipv4()), sa.port()).to_string())
            }
            _ => push(a.clone()),
        }
    }
    out
}

/// This machine's address for outside traffic in one family (loopback without a route). A UDP
/// `connect` only asks the routing table; no packet leaves the machine.
fn primary_ip(v4: bool) -> IpAddr {
    let (any, probe, loopback): (SocketAddr, SocketAddr, IpAddr) = if v4 {
        ((Ipv4Addr::UNSPECIFIED, 0).into(), (Ipv4Addr::new(192, 0, 2, 1), 9).into(), Ipv4Addr::LOCALHOST.into())
    } else {
        (
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into(),
            Ipv6Addr::LOCALHOST.into(),
        )
    };
    UdpSocket::bind(any)
        .and_then(|s| s.connect(probe).and_then(|()| s.local_addr()))
        .map(|l| l.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(loopback)
}

/// SIGINT/SIGTERM start a graceful shutdown; a second signal exits at once.
fn watch_signals(tx: mpsc::Sender<ControlRequest>) -> Result<(), HostError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|source| HostError::Io { context: "installing signal handlers".into(), source })?;
    std::thread::Builder::new()
        .name("ocd-signals".into())
        .spawn(move || {
            let mut tx = tx;
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen > 1 {
                    tracing::warn!("second signal: exiting now");
                    std::process::exit(128 + sig);
                }
                tracing::info!(signal = sig, "signal received: shutting down gracefully");
                let (request, _replies) = ControlRequest::new(ControlCommand::Shutdown);
                let _ = futures::executor::block_on(futures::SinkExt::send(&mut tx, request));
            }
        })
        .map_err(|source| HostError::Io { context: "signal thread".into(), source })?;
    Ok(())
}

/// The log filter when `RUST_LOG` is not set.
pub const DEFAULT_LOG_FILTER: &str = "info,iroh::socket::remote_map::remote_state=error";

/// Installs the `tracing` subscriber: `RUST_LOG` (default [`DEFAULT_LOG_FILTER`]), text or JSON
/// lines, on stderr; colours only when stderr is a terminal (a log file gets plain text).
pub fn init_logging(json: bool) {
    use std::io::IsTerminal;
    // Without RUST_LOG: INFO, but not iroh's per-connection WARNs about the NAT-traversal and
    // multipath extensions, which an `ocd-smol` peer (plain QUIC) never negotiates — harmless,
    // and repeated for every connection of that peer. RUST_LOG, when set, is taken as it is.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_addresses_are_dialable() {
        // Specific binds are advertised as they are.
        assert_eq!(advertised_addrs(&["127.0.0.1:4001".into()], &[]), vec!["127.0.0.1:4001".to_string()]);
        // A wildcard bind becomes a concrete address of the same family with the same port.
        for (bound, v4) in [("0.0.0.0:4001", true), ("[::]:4002", false)] {
            let out = advertised_addrs(&[bound.into()], &[]);
            assert_eq!(out.len(), 1, "{out:?}");
            let sa: SocketAddr = out[0].parse().unwrap();
            assert!(!sa.ip().is_unspecified(), "{sa}");
            assert_eq!(sa.is_ipv4(), v4);
            assert_eq!(sa.port(), bound.rsplit(':').next().unwrap().parse::<u16>().unwrap());
        }
        // Configured addresses win; duplicates are dropped.
        let configured = vec!["203.0.113.7:4001".to_string(), "203.0.113.7:4001".to_string()];
        assert_eq!(advertised_addrs(&["0.0.0.0:4001".into()], &configured), vec!["203.0.113.7:4001".to_string()]);
    }
}
