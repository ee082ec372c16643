//! The daemon's configuration: a TOML file, overridden by environment variables with the seed's
//! names, overridden by command-line flags (DESIGN.md §6).
//!
//! ```toml
//! mode = "node"                      # "node", "indexer" or "node,indexer"   (NODE_MODE)
//! listen = "0.0.0.0:4001"            # QUIC socket                          (NODE_ENDPOINT_PORT sets the port)
//! advertise = ["203.0.113.7:4001"]   # addresses put in our record; default: the bound ones, with
//!                                    # 0.0.0.0 replaced by this machine's address   (OCD_ADVERTISE)
//! seeds = ["<peer-id-hex>@10.0.0.1:4001"]                                   # (INDEXER_ADDRESSES, comma-separated)
//! data_dir = "./ocd-data"            # key, DID, control socket             (OCD_DATA_DIR)
//! network_key = "./psk/psk.key"      # shared private-network key           (PSK_PATH)
//! metrics = "127.0.0.1:9464"         # Prometheus endpoint; absent = off    (OCD_METRICS)
//! nats_url = "nats://127.0.0.1:4222" # the local apps' NATS; absent = no bridge (NATS_URL)
//!
//! [nats]                             # the NATS bridge (DESIGN §9); every field is optional
//! app_name = "oc-discovery"          # our FromApp: messages carrying it are ignored
//! search_idle = "5s"                 # a resource search ends this long after its last result
//! resource_search_subject = "resource_search"   # incoming resource searches are put to the apps here
//! [nats.subjects]                    # subject per method; default: the method name in lower case
//! CREATE_RESOURCE = "create_resource"
//! [nats.codes.datatypes]             # oc-lib's numeric codes, when they differ from the defaults
//! PEER = 9                           # (also [nats.codes.actions], .methods, .relations)
//!
//! [protocol]                         # every field of ocd_core::proto::Config
//! name = "alice"                     # (NAME)
//! min_indexers = 2                   # (MIN_INDEXER)
//! max_indexers = 5                   # (MAX_INDEXER)
//! search_timeout = "5s"              # (SEARCH_TIMEOUT, seconds)
//! record_ttl = "5m"                  # lifetime of our signed record (re-signed at half-life)
//! trusted_peers = ["<peer-id-hex>"]  # an indexer always treats these as known (the seed's peer DB)
//! blocked_peers = ["<peer-id-hex>"]  # never served, never sent to (the seed's BLACKLIST)
//! partners = ["<peer-id-hex>"]       # resources are pushed to them     (PEER_IDS, comma-separated)
//! ```

use crate::proto::{Config, PeerAddr, Roles};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors loading or validating the configuration. Each names the source and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (with line and column).
        message: String,
    },
    /// An environment variable or flag has a bad value.
    #[error("{source_name}: {message}")]
    Value {
        /// The variable or flag.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// The protocol section is inconsistent.
    #[error("[protocol] {0}")]
    Protocol(#[from] crate::proto::ConfigError),
}

/// Everything `ocd run` needs besides its identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Roles: `node`, `indexer` or both (`node,indexer`).
    pub mode: String,
    /// UDP socket the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// `ip:port` addresses advertised in our signed record and provider announcements (behind
    /// NAT or port forwarding). Empty: the bound addresses, a wildcard IP replaced by this
    /// machine's primary address.
    pub advertise: Vec<String>,
    /// Seed indexers, as `<peer-id-hex>@ip:port[,ip:port…]`.
    pub seeds: Vec<String>,
    /// Where the key, DID and control socket live.
    pub data_dir: PathBuf,
    /// The private network's key file.
    pub network_key: PathBuf,
    /// Control socket path (default: `<data_dir>/control.sock`).
    pub control_socket: Option<PathBuf>,
    /// Prometheus metrics address (`None`: metrics off).
    pub metrics: Option<SocketAddr>,
    /// The local apps' NATS server (`None`: no bridge).
    pub nats_url: Option<String>,
    /// The NATS bridge's settings.
    pub nats: crate::proto::bridge::BridgeConfig,
    /// Use iroh relays (tokio runtime only). Off by default: a private federation dials directly.
    pub relays: bool,
    /// Use iroh's address lookup services (tokio runtime only). Off by default.
    pub address_lookup: bool,
    /// QUIC keep-alive interval.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// QUIC idle timeout: a silent connection is closed after this long.
    #[serde(with = "humantime_serde")]
    pub quic_idle_timeout: Duration,
    /// Frames queued per connection before the peer counts as too slow and is disconnected.
    pub send_queue: usize,
    /// Most driver wakes (frames, control requests already waiting) whose durable changes share
    /// one store commit (1: a commit per wake). See the driver's group commit.
    pub group_commit: usize,
    /// Logs as JSON lines instead of text.
    pub log_json: bool,
    /// Journal every input of the core to this file, for `ocd-sim replay` (DESIGN §10).
    pub journal: Option<PathBuf>,
    /// The journal stops growing past this many bytes (what it holds still replays).
    pub journal_max_bytes: u64,
    /// Seed of the core's deterministic RNG (`None`: drawn from the OS at start).
    pub rng_seed: Option<u64>,
    /// Protocol tunables.
    pub protocol: Config,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            mode: "node".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 4001)),
            advertise: Vec::new(),
            seeds: Vec::new(),
            data_dir: PathBuf::from("./ocd-data"),
            network_key: PathBuf::from("./psk/psk.key"),
            control_socket: None,
            metrics: None,
            nats_url: None,
            nats: crate::proto::bridge::BridgeConfig::default(),
            relays: false,
            address_lookup: false,
            keep_alive: Duration::from_secs(5),
            quic_idle_timeout: Duration::from_secs(20),
            send_queue: 1024,
            group_commit: crate::host::driver::GROUP_MAX,
            log_json: false,
            journal: None,
            journal_max_bytes: 1 << 30,
            rng_seed: None,
            protocol: Config::default(),
        }
    }
}

/// Parses a `NODE_MODE` value: a comma- or space-separated list of `node` and `indexer`.
pub fn parse_roles(mode: &str) -> Result<Roles, String> {
    let mut roles = Roles { node: false, indexer: false };
    for part in mode.split([',', ' ', '+']).map(str::trim).filter(|s| !s.is_empty()) {
        match part.to_ascii_lowercase().as_str() {
            "node" => roles.node = true,
            "indexer" => roles.indexer = true,
            "native-indexer" => return Err("the native-indexer mode was removed; use `indexer`".into()),
            other => return Err(format!("unknown role `{other}` (expected node, indexer or node,indexer)")),
        }
    }
    if !roles.node && !roles.indexer {
        return Err("no role given (expected node, indexer or node,indexer)".into());
    }
    Ok(roles)
}

impl DaemonConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigFileError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text).map_err(|message| ConfigFileError::Parse { path: path.to_path_buf(), message })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// This configuration as TOML (what `devnet` writes for each daemon).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Applies the seed's environment variables (and ocd's `OCD_*` ones) from `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigFileError> {
        fn bad(name: &str, message: impl Into<String>) -> ConfigFileError {
            ConfigFileError::Value { source_name: name.to_string(), message: message.into() }
        }
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("NODE_MODE") {
            parse_roles(&v).map_err(|m| bad("NODE_MODE", m))?;
            self.mode = v;
        }
        if let Some(v) = get("INDEXER_ADDRESSES") {
            self.seeds = split_seeds(&v);
        }
        if let Some(v) = get("NAME") {
            self.protocol.name = v;
        }
        if let Some(v) = get("MIN_INDEXER") {
            self.protocol.min_indexers = v.trim().parse().map_err(|_| bad("MIN_INDEXER", "not a number"))?;
        }
        if let Some(v) = get("MAX_INDEXER") {
            self.protocol.max_indexers = v.trim().parse().map_err(|_| bad("MAX_INDEXER", "not a number"))?;
        }
        if let Some(v) = get("NATS_URL") {
            let v = v.trim().to_string();
            self.nats_url = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = get("PEER_IDS") {
            self.protocol.partners = v
                .split([',', ' ', ';'])
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| p.parse().map_err(|_| bad("PEER_IDS", format!("`{p}` is not a peer id (64 hex digits)"))))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = get("PSK_PATH") {
            self.network_key = PathBuf::from(v);
        }
        if let Some(v) = get("SEARCH_TIMEOUT") {
            let secs: u64 = v.trim().parse().map_err(|_| bad("SEARCH_TIMEOUT", "not a number of seconds"))?;
            // The seed: 0 means the default (5 s).
            if secs > 0 {
                self.protocol.search_timeout = Duration::from_secs(secs);
            }
        }
        if let Some(v) = get("NODE_ENDPOINT_PORT") {
            let port: u16 = v.trim().parse().map_err(|_| bad("NODE_ENDPOINT_PORT", "not a port"))?;
            self.listen.set_port(port);
        }
        if let Some(v) = get("OCD_LISTEN") {
            self.listen = v.trim().parse().map_err(|_| bad("OCD_LISTEN", "not ip:port"))?;
        }
        if let Some(v) = get("OCD_ADVERTISE") {
            self.advertise = v.split([',', ' ']).map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect();
        }
        if let Some(v) = get("OCD_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("OCD_METRICS") {
            self.metrics = Some(v.trim().parse().map_err(|_| bad("OCD_METRICS", "not ip:port"))?);
        }
        if let Some(v) = get("OCD_LOG_JSON") {
            self.log_json = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(bad("OCD_LOG_JSON", "not a boolean (true/false, 1/0, yes/no, on/off)")),
            };
        }
        // Name the variables when they, not the file, made the pool bounds inconsistent.
        let (min, max) = (get("MIN_INDEXER"), get("MAX_INDEXER"));
        if (min.is_some() || max.is_some()) && self.protocol.min_indexers > self.protocol.max_indexers {
            let name = if min.is_some() { "MIN_INDEXER" } else { "MAX_INDEXER" };
            return Err(bad(
                name,
                format!(
                    "MIN_INDEXER ({}) must not exceed MAX_INDEXER ({})",
                    self.protocol.min_indexers, self.protocol.max_indexers
                ),
            ));
        }
        if min.is_some() && self.protocol.min_indexers == 0 {
            return Err(bad("MIN_INDEXER", "must be at least 1 (a node needs an indexer)"));
        }
        Ok(())
    }

    /// The roles this daemon plays.
    pub fn roles(&self) -> Result<Roles, ConfigFileError> {
        parse_roles(&self.mode).map_err(|message| ConfigFileError::Value { source_name: "mode".into(), message })
    }

    /// The seeds, parsed.
    pub fn seed_addrs(&self) -> Result<Vec<PeerAddr>, ConfigFileError> {
        self.seeds
            .iter()
            .map(|s| {
                s.trim().parse::<PeerAddr>().map_err(|e| ConfigFileError::Value {
                    source_name: "seeds".into(),
                    message: format!("`{s}`: {e} (expected <peer-id-hex>@ip:port)"),
                })
            })
            .collect()
    }

    /// The control socket path.
    pub fn control_socket_path(&self) -> PathBuf {
        self.control_socket.clone().unwrap_or_else(|| self.data_dir.join(CONTROL_SOCKET))
    }

    /// Checks everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), ConfigFileError> {
        self.roles()?;
        self.seed_addrs()?;
        self.protocol.validate()?;
        for a in &self.advertise {
            match a.trim().parse::<SocketAddr>() {
                Ok(sa) if !sa.ip().is_unspecified() && sa.port() != 0 => {}
                _ => {
                    return Err(ConfigFileError::Value {
                        source_name: "advertise".into(),
                        message: format!("`{a}` is not a dialable ip:port"),
                    });
                }
            }
        }
        if self.advertise.len() > crate::proto::MAX_ADDRS {
            return Err(ConfigFileError::Value {
                source_name: "advertise".into(),
                message: format!("at most {} addresses", crate::proto::MAX_ADDRS),
            });
        }
        if self.send_queue == 0 {
            return Err(ConfigFileError::Value { source_name: "send_queue".into(), message: "must be > 0".into() });
        }
        if self.group_commit == 0 {
            return Err(ConfigFileError::Value { source_name: "group_commit".into(), message: "must be > 0".into() });
        }
        Ok(())
    }
}

/// Default control socket name inside the data directory.
pub const CONTROL_SOCKET: &str = "control.sock";

/// Splits an `INDEXER_ADDRESSES` value. Entries are separated by spaces or semicolons, or by
/// commas when the comma is followed by a new peer id (an entry itself may list several
/// addresses after `@`, separated by commas).
pub fn split_seeds(v: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for token in v.split([' ', ';', '\n']).flat_map(|t| t.split(',')).map(str::trim).filter(|t| !t.is_empty()) {
        if token.contains('@') || out.is_empty() {
            out.push(token.to_string());
        } else if let Some(last) = out.last_mut() {
            last.push(',');
            last.push_str(token);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn file_then_env_overrides_in_order() {
        let mut c = DaemonConfig::from_toml(
            "mode = \"indexer\"\nlisten = \"127.0.0.1:5000\"\n[protocol]\nmin_indexers = 2\nname = \"file\"\n",
        )
        .unwrap();
        assert_eq!(c.protocol.min_indexers, 2);
        c.apply_env(env(&[
            ("NAME", "env"),
            ("MIN_INDEXER", "3"),
            ("NODE_MODE", "node,indexer"),
            ("SEARCH_TIMEOUT", "9"),
        ]))
        .unwrap();
        assert_eq!(c.protocol.name, "env");
        assert_eq!(c.protocol.min_indexers, 3);
        assert_eq!(c.protocol.search_timeout, Duration::from_secs(9));
        assert_eq!(c.roles().unwrap(), Roles { node: true, indexer: true });
        assert_eq!(c.listen.port(), 5000);
    }

    #[test]
    fn search_timeout_zero_keeps_the_default_like_the_seed() {
        let mut c = DaemonConfig::default();
        c.apply_env(env(&[("SEARCH_TIMEOUT", "0")])).unwrap();
        assert_eq!(c.protocol.search_timeout, Config::default().search_timeout);
    }

    #[test]
    fn bad_values_name_their_source() {
        let mut c = DaemonConfig::default();
        let e = c.apply_env(env(&[("MIN_INDEXER", "many")])).unwrap_err();
        assert!(e.to_string().starts_with("MIN_INDEXER"), "{e}");
        let mut c = DaemonConfig::default();
        let e = c.apply_env(env(&[("MIN_INDEXER", "5"), ("MAX_INDEXER", "3")])).unwrap_err();
        assert!(e.to_string().starts_with("MIN_INDEXER"), "names the variable, not the field: {e}");
        assert!(e.to_string().contains("MAX_INDEXER (3)"), "{e}");
        let mut c = DaemonConfig::default();
        let e = c.apply_env(env(&[("MIN_INDEXER", "0")])).unwrap_err();
        assert!(e.to_string().starts_with("MIN_INDEXER"), "{e}");
        let mut c = DaemonConfig::default();
        let e = c.apply_env(env(&[("OCD_LOG_JSON", "maybe")])).unwrap_err();
        assert!(e.to_string().starts_with("OCD_LOG_JSON"), "{e}");
        let mut c = DaemonConfig::default();
        c.apply_env(env(&[("OCD_LOG_JSON", "Yes")])).unwrap();
        assert!(c.log_json);
        let e = c.apply_env(env(&[("NODE_MODE", "native-indexer")])).unwrap_err();
        assert!(e.to_string().contains("removed"), "{e}");
        assert!(DaemonConfig::from_toml("bogus = 1").is_err());
    }

    #[test]
    fn seeds_split_on_peer_boundaries() {
        let a = "aa".repeat(32);
        let b = "bb".repeat(32);
        let v = format!("{a}@127.0.0.1:1,127.0.0.1:2,{b}@127.0.0.1:3");
        assert_eq!(split_seeds(&v), vec![format!("{a}@127.0.0.1:1,127.0.0.1:2"), format!("{b}@127.0.0.1:3")]);
        let mut c = DaemonConfig::default();
        c.apply_env(env(&[("INDEXER_ADDRESSES", &v)])).unwrap();
        let seeds = c.seed_addrs().unwrap();
        assert_eq!(seeds.len(), 2);
        assert_eq!(seeds[0].addrs.len(), 2);
    }

    #[test]
    fn advertised_addresses_and_peer_lists_parse_and_are_checked() {
        let a = "aa".repeat(32);
        let mut c = DaemonConfig::from_toml(&format!(
            "advertise = [\"203.0.113.7:4001\"]\n[protocol]\ntrusted_peers = [\"{a}\"]\nblocked_peers = []\n"
        ))
        .unwrap();
        assert_eq!(c.advertise, vec!["203.0.113.7:4001".to_string()]);
        assert_eq!(c.protocol.trusted_peers.len(), 1);
        c.validate().unwrap();
        c.apply_env(env(&[("OCD_ADVERTISE", "198.51.100.1:1, 198.51.100.2:2")])).unwrap();
        assert_eq!(c.advertise.len(), 2);
        c.validate().unwrap();
        c.advertise = vec!["0.0.0.0:4001".into()];
        assert!(c.validate().unwrap_err().to_string().starts_with("advertise"));
        assert!(DaemonConfig::from_toml("[protocol]\ntrusted_peers = [\"nope\"]\n").is_err());
    }

    #[test]
    fn config_round_trips_through_toml() {
        let mut c = DaemonConfig { metrics: Some("127.0.0.1:9464".parse().unwrap()), ..DaemonConfig::default() };
        c.protocol.min_indexers = 3;
        let back = DaemonConfig::from_toml(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }
}
