//! Scenarios: the TOML format of DESIGN.md §5, parsed and checked before anything runs.
//!
//! A scenario names groups of peers (`"<group>/<index>"`), the network they share, the faults
//! injected at fixed simulated times and application workloads (`lookup`, `search`, `send`).
//! Everything is resolved up
//! front — durations, targets, group configs — so a typo fails with a clear message before the
//! first simulated millisecond, never halfway through a run.
//!
//! Keys the format does not know are allowed at the top level, in `[network]`, in `[[group]]` and
//! in `[[fault]]` (DESIGN: "extra keys are allowed"); they are listed in [`Scenario::notes`] so a
//! misspelt key does not go unnoticed. `[group.config]` is the exception: it is an
//! `ocd_core::proto::Config` and an unknown field there is an error.
//!
//! Target syntax: `"g/i"` (one peer), `"g/a..b"` (indices `a` to `b − 1`), `"g"` (the whole group).

use ocd_core::proto::{Config, Roles};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a scenario cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key has the wrong type.
    #[error("invalid scenario: {0}")]
    Toml(#[from] toml::de::Error),
    /// A duration that is not `<number><unit>` with unit ms, s, m or h.
    #[error("{context}: bad duration {value:?} (expected e.g. \"500ms\", \"20s\", \"5m\", \"1h\"): {why}")]
    Duration {
        /// Where it was found.
        context: String,
        /// The text.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A target or seed names a group that does not exist.
    #[error("{context}: unknown group {group:?} in target {target:?} (groups: {known})")]
    UnknownGroup {
        /// Where it was found.
        context: String,
        /// The target text.
        target: String,
        /// The unknown group.
        group: String,
        /// The groups that exist.
        known: String,
    },
    /// A target index beyond the group's size.
    #[error("{context}: target {target:?} is out of range: group {group:?} has {count} peers")]
    OutOfRange {
        /// Where it was found.
        context: String,
        /// The target text.
        target: String,
        /// The group.
        group: String,
        /// Its size.
        count: usize,
    },
    /// A target that does not follow the syntax.
    #[error("{context}: bad target {target:?}: {why} (expected \"g/i\", \"g/a..b\" or \"g\")")]
    BadTarget {
        /// Where it was found.
        context: String,
        /// The target text.
        target: String,
        /// What is wrong.
        why: String,
    },
    /// A group's `[group.config]` is not a valid `Config`.
    #[error("group {group:?}: invalid config: {why}")]
    Config {
        /// The group.
        group: String,
        /// What is wrong.
        why: String,
    },
    /// Anything else that makes the scenario meaningless.
    #[error("{context}: {why}")]
    Invalid {
        /// Where.
        context: String,
        /// What is wrong.
        why: String,
    },
}

type Extra = BTreeMap<String, toml::Value>;

#[derive(Deserialize)]
struct RawScenario {
    name: String,
    #[serde(default)]
    seed: u64,
    duration: String,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default, rename = "group")]
    groups: Vec<RawGroup>,
    #[serde(default, rename = "fault")]
    faults: Vec<RawFault>,
    #[serde(default, rename = "workload")]
    workloads: Vec<toml::Table>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Deserialize, Default)]
struct RawNetwork {
    latency_ms: Option<[u64; 2]>,
    loss: Option<f64>,
    idle_timeout: Option<String>,
    connect_timeout: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Deserialize)]
struct RawGroup {
    name: String,
    count: usize,
    role: String,
    #[serde(default)]
    seeds: Vec<String>,
    seeds_sample: Option<usize>,
    start_spread: Option<String>,
    config: Option<toml::Table>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Deserialize)]
struct RawFault {
    at: String,
    kind: String,
    #[serde(default)]
    targets: Vec<String>,
    sides: Option<Vec<Vec<String>>>,
    behaviour: Option<String>,
    victim: Option<String>,
    forge: Option<Vec<String>>,
    loss: Option<f64>,
    latency_ms: Option<[u64; 2]>,
    offset: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

/// A parsed, checked scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Its name (reported).
    pub name: String,
    /// Seed of every random choice of the run (`--seed` overrides it).
    pub seed: u64,
    /// Simulated time to run.
    pub duration: Duration,
    /// The network model's parameters at the start.
    pub network: NetworkSpec,
    /// The peers, group by group; peer indices follow this order.
    pub groups: Vec<GroupSpec>,
    /// Faults, in file order (they fire in time order; ties in file order).
    pub faults: Vec<FaultSpec>,
    /// Application workloads (`lookup`, `search`, `send`; an unknown kind is an error).
    pub workloads: Vec<WorkloadSpec>,
    /// Warnings found while parsing (ignored keys, unsupported features).
    pub notes: Vec<String>,
}

/// `[network]`.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSpec {
    /// One-way latency bounds in ms, drawn uniformly per message (`latency_ms = [lo, hi]`).
    pub latency_ms: (u64, u64),
    /// Drop probability per message.
    pub loss: f64,
    /// After this long a half-open link (crashed peer, partition) is reported down to the live end.
    pub idle_timeout: Duration,
    /// A dial to an unreachable peer fails after this long.
    pub connect_timeout: Duration,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            latency_ms: (10, 80),
            loss: 0.0,
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// `[[group]]`: `count` peers named `"<name>/<i>"`.
#[derive(Clone, Debug)]
pub struct GroupSpec {
    /// Group name.
    pub name: String,
    /// How many peers.
    pub count: usize,
    /// Their roles.
    pub roles: Roles,
    /// Seed indexers, as target strings.
    pub seeds: Vec<String>,
    /// Each peer gets this many seeds drawn from `seeds` (default: all).
    pub seeds_sample: Option<usize>,
    /// Start times are uniform in `[0, start_spread)`.
    pub start_spread: Duration,
    /// The peers' config (defaults overridden by `[group.config]`).
    pub config: Config,
}

/// `[[fault]]`.
#[derive(Clone, Debug)]
pub struct FaultSpec {
    /// When it fires, from the start of the run.
    pub at: Duration,
    /// What it does.
    pub kind: FaultKind,
}

/// What a fault does.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// Drop the targets' state; their links stay half-open.
    Crash {
        /// Target strings.
        targets: Vec<String>,
    },
    /// Start the targets again with the same identity and fresh state.
    Restart {
        /// Target strings.
        targets: Vec<String>,
    },
    /// Cut the network between the listed sides.
    Partition {
        /// Each side is a list of target strings.
        sides: Vec<Vec<String>>,
    },
    /// End every partition.
    Heal,
    /// Change the loss probability.
    SetLoss {
        /// The new probability.
        loss: f64,
    },
    /// Change the latency bounds.
    SetLatency {
        /// The new bounds in ms.
        latency_ms: (u64, u64),
    },
    /// Shift the targets' clocks by `offset_ms` (negative: behind) from now on. Each peer is
    /// handed its own time (`now + offset`), and its deadlines are read back through the offset.
    ClockSkew {
        /// Target strings.
        targets: Vec<String>,
        /// The offset, in ms (replaces any earlier offset of these peers).
        offset_ms: i64,
    },
    /// Make the targets misbehave (an output filter applied by the simulator).
    Byzantine {
        /// Target strings.
        targets: Vec<String>,
        /// How.
        behaviour: Behaviour,
        /// `claim_foreign_did`: the honest node whose DID is claimed (`victim = "g/i"`). Default:
        /// the first node-role peer, in scenario order, that no byzantine fault targets.
        victim: Option<String>,
        /// `forge_search_hits`: the forgeries it adds, in turn (`forge = [...]`; default
        /// [`Forgery::DEFAULT`]).
        forge: Vec<Forgery>,
    },
}

impl FaultKind {
    /// The `kind` string of the scenario format.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::Crash { .. } => "crash",
            FaultKind::Restart { .. } => "restart",
            FaultKind::Partition { .. } => "partition",
            FaultKind::Heal => "heal",
            FaultKind::SetLoss { .. } => "set_loss",
            FaultKind::SetLatency { .. } => "set_latency",
            FaultKind::ClockSkew { .. } => "clock_skew",
            FaultKind::Byzantine { .. } => "byzantine",
        }
    }

    /// The target strings this fault names (all sides for a partition).
    pub fn target_strings(&self) -> Vec<String> {
        match self {
            FaultKind::Crash { targets }
            | FaultKind::Restart { targets }
            | FaultKind::ClockSkew { targets, .. }
            | FaultKind::Byzantine { targets, .. } => targets.clone(),
            FaultKind::Partition { sides } => sides.iter().flatten().cloned().collect(),
            _ => Vec::new(),
        }
    }
}

/// Byzantine behaviours (DESIGN §5). The core stays honest: each is a filter the simulator applies
/// to the byzantine peer's outputs, or traffic it injects on that peer's behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Behaviour {
    /// Indexer: every challenge answer says "not found, never seen".
    LieChallenges,
    /// Indexer: reports a 2 % fill rate while its peer count and capacity stay true.
    FakeFill,
    /// Indexer: `born_at` alternates between the real value and one hour earlier.
    FlapBornAt,
    /// Indexer: drops its heartbeat responses, refusals and candidate responses.
    DropResponses,
    /// Indexer: answers every record request (`FIND_VALUE`, `GetRecord`) with "no record" and
    /// silently drops every `STORE` sent to it.
    WithholdRecords,
    /// Indexer: every search answer it sends — `Found` to an emitter as a responder, `Hits` to a
    /// node as an emitter — carries, next to the genuine records, a forged one ([`Forgery`]).
    ForgeSearchHits,
    /// Node: one extra regular heartbeat per second to every indexer it is connected to.
    HeartbeatFlood,
    /// Node: its heartbeats and `Publish` carry a record signed by its own key that claims an
    /// honest victim's DID (and its heartbeats name that DID).
    ClaimForeignDid,
    /// Node: its heartbeats and `Publish` carry its own record with a corrupted signature.
    BadSignature,
}

impl Behaviour {
    const ALL: [(&'static str, Behaviour); 9] = [
        ("lie_challenges", Behaviour::LieChallenges),
        ("fake_fill", Behaviour::FakeFill),
        ("flap_born_at", Behaviour::FlapBornAt),
        ("drop_responses", Behaviour::DropResponses),
        ("withhold_records", Behaviour::WithholdRecords),
        ("forge_search_hits", Behaviour::ForgeSearchHits),
        ("heartbeat_flood", Behaviour::HeartbeatFlood),
        ("claim_foreign_did", Behaviour::ClaimForeignDid),
        ("bad_signature", Behaviour::BadSignature),
    ];

    /// The scenario-format name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, b)| *b == self).map(|(n, _)| *n).unwrap_or("?")
    }

    /// Parses a scenario-format name.
    pub fn from_name(s: &str) -> Option<Behaviour> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, b)| *b)
    }

    /// Whether the simulator implements it (every behaviour of DESIGN §5 now is).
    pub fn is_simulated(self) -> bool {
        matches!(
            self,
            Behaviour::LieChallenges
                | Behaviour::FakeFill
                | Behaviour::FlapBornAt
                | Behaviour::DropResponses
                | Behaviour::WithholdRecords
                | Behaviour::ForgeSearchHits
                | Behaviour::HeartbeatFlood
                | Behaviour::ClaimForeignDid
                | Behaviour::BadSignature
        )
    }

    /// Whether it is an indexer misbehaviour (else a node one).
    pub fn is_indexer_behaviour(self) -> bool {
        !matches!(self, Behaviour::HeartbeatFlood | Behaviour::ClaimForeignDid | Behaviour::BadSignature)
    }
}

/// What a `forge_search_hits` indexer adds to each search answer it sends (one forgery per
/// message, taking the configured kinds in turn).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Forgery {
    /// `altered`: a genuine record of the answer with its name changed (still matching the query)
    /// and its signature kept — the signature no longer verifies.
    Altered,
    /// `impersonate`: a genuine record of the answer, owner's peer id and all, re-signed with the
    /// forger's own key — a signature that is not the owner's.
    Impersonate,
    /// `unrelated`: the forger's own, validly signed record, which does not match the query.
    Unrelated,
    /// `claim_did`: the forger's own record, validly signed by its own key with its own peer id,
    /// but carrying the DID and name of the first genuine record of the answer — it verifies and
    /// matches the query. Not in the default set: only the DID binding kept by the indexers' DHT
    /// can tell it from a genuine hit (DESIGN §3, "a DID is bound to the first key").
    ClaimDid,
}

impl Forgery {
    const ALL: [(&'static str, Forgery); 4] = [
        ("altered", Forgery::Altered),
        ("impersonate", Forgery::Impersonate),
        ("unrelated", Forgery::Unrelated),
        ("claim_did", Forgery::ClaimDid),
    ];
    /// The default `forge` list: what verification alone must catch.
    pub const DEFAULT: [Forgery; 3] = [Forgery::Altered, Forgery::Impersonate, Forgery::Unrelated];

    /// The scenario-format name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, f)| *f == self).map(|(n, _)| *n).unwrap_or("?")
    }

    /// Parses a scenario-format name.
    pub fn from_name(s: &str) -> Option<Forgery> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, f)| *f)
    }
}

/// `[[workload]]`.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    /// `lookup`, `search` or `send`.
    pub kind: String,
    /// When it starts.
    pub from: Option<Duration>,
    /// Every key as written.
    pub raw: toml::Table,
    /// The parsed `lookup` workload (`None` for the other kinds).
    pub lookup: Option<LookupSpec>,
    /// The parsed `search` workload (`None` for the other kinds).
    pub search: Option<SearchSpec>,
    /// The parsed `send` workload (`None` for the other kinds).
    pub send: Option<SendSpec>,
    /// The parsed `resource_search` workload (`None` for the other kinds).
    pub resource: Option<ResourceSearchSpec>,
}

/// `[[workload]] kind = "resource_search"`: at Poisson times (rate `rate_per_s`, from the run's
/// seed), a random live honest node-role peer (started `warmup` ago) starts a resource search of
/// type `all` (DESIGN §9: over its indexer and the search mesh to every node). Each node it
/// reaches plays its apps: with probability `answer_fraction` (a draw per search and node, from
/// the run's seed) they hold a match and answer the requester with one `search` message.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceSearchSpec {
    /// First search no earlier than this (`from`, default 0).
    pub from: Duration,
    /// No search starts after this (`until`, default: the end of the run).
    pub until: Option<Duration>,
    /// Mean searches per simulated second.
    pub rate_per_s: f64,
    /// Least time since the requester started (`warmup`, default 90 s).
    pub warmup: Duration,
    /// Share of reached nodes whose apps answer (`answer_fraction`, default 0.01).
    pub answer_fraction: f64,
    /// Only these peers search (`targets`, target strings; default every node-role peer).
    pub targets: Vec<String>,
}

/// Who a `send` workload's sender writes to (`to = "any" | "partners"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SendTo {
    /// Any honest node-role target, up or down.
    #[default]
    Any,
    /// One of the sender's `partners` (a fixed set per sender, drawn from the run's seed).
    Partners,
}

/// How a `send` workload names the receiver (`by = "peer" | "did"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SendBy {
    /// By peer id.
    #[default]
    Peer,
    /// By DID, resolved through the DHT.
    Did,
}

/// `[[workload]] kind = "send"`: at Poisson times (rate `rate_per_s`, from the run's seed), a
/// random live honest node-role sender (started `warmup` ago) hands its core an application
/// message of `class` for a random honest node-role receiver, which may be down or partitioned at
/// that moment.
#[derive(Clone, Debug, PartialEq)]
pub struct SendSpec {
    /// First message no earlier than this (`from`, default 0).
    pub from: Duration,
    /// No message is sent after this (`until`, default: the end of the run).
    pub until: Option<Duration>,
    /// Mean messages per simulated second.
    pub rate_per_s: f64,
    /// Least time since the sender started (`warmup`, default 90 s).
    pub warmup: Duration,
    /// `critical` (create / update / delete, in turn) or `moderate` (verify, planner, considers,
    /// admiralty-config, minio-config, in turn).
    pub class: ocd_core::proto::DeliveryClass,
    /// Who receives (`to`, default `any`).
    pub to: SendTo,
    /// Partners per sender when `to = "partners"` (`partners`, default 3).
    pub partners: usize,
    /// The receiver is named by peer id or DID (`by`, default `peer`).
    pub by: SendBy,
    /// Payload size in bytes (`payload_bytes`, default 256).
    pub payload_bytes: usize,
    /// Only these peers send (`senders`, target strings; default every node-role peer).
    pub senders: Vec<String>,
    /// Only these peers receive (`targets`, target strings; default every node-role peer).
    pub targets: Vec<String>,
}

/// What a `search` workload searches its target by (`by = "name" | "did" | "peer"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum SearchBy {
    /// A case-swapped middle part of the target's name (a case-insensitive substring that
    /// identifies it).
    #[default]
    Name,
    /// The target's DID, exactly.
    Did,
    /// The target's peer id, exactly.
    Peer,
}

impl SearchBy {
    /// The scenario-format name.
    pub fn name(self) -> &'static str {
        match self {
            SearchBy::Name => "name",
            SearchBy::Did => "did",
            SearchBy::Peer => "peer",
        }
    }
}

/// `[[workload]] kind = "search"`: at Poisson times (rate `rate_per_s`, drawn from the run's
/// seed), a random live honest node-role peer searches (`Command::Search`, a user of its own per
/// search) for a random other live honest node-role peer, by name, DID or peer id. Both must have
/// started at least `warmup` ago.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchSpec {
    /// First search no earlier than this (`from`, default 0).
    pub from: Duration,
    /// No search starts after this (`until`, default: the end of the run).
    pub until: Option<Duration>,
    /// Mean searches started per simulated second.
    pub rate_per_s: f64,
    /// Least time since the searching and the searched peer started (`warmup`, default 90 s), so
    /// the target has named a referent and the asker has an indexer to ask.
    pub warmup: Duration,
    /// What the target is searched by (`by`, default `name`).
    pub by: SearchBy,
    /// Only these peers are searched for (`targets`, target strings; default: every node-role
    /// peer).
    pub targets: Vec<String>,
}

/// `[[workload]] kind = "lookup"`: at Poisson times (rate `rate_per_s`, drawn from the run's
/// seed), a random live honest node-role peer looks up a random other live honest node-role peer,
/// first by DID, then — once that lookup has finished — by peer id. Both peers must have started
/// at least `warmup` ago.
#[derive(Clone, Debug, PartialEq)]
pub struct LookupSpec {
    /// First lookup no earlier than this (`from`, default 0).
    pub from: Duration,
    /// No lookup starts after this (`until`, default: the end of the run).
    pub until: Option<Duration>,
    /// Mean lookups (DID ones; each is followed by a peer-id one) started per simulated second.
    pub rate_per_s: f64,
    /// Least time since the asking and the looked-up peer started (`warmup`, default 90 s), so
    /// the target has had time to publish its record.
    pub warmup: Duration,
    /// Only these peers are looked up (`targets`, target strings; default: every node-role peer).
    pub targets: Vec<String>,
}

/// What every Poisson workload has in common.
struct PoissonSpec {
    from: Duration,
    until: Option<Duration>,
    rate_per_s: f64,
    warmup: Duration,
    targets: Vec<String>,
}

/// Parses a duration such as `"500ms"`, `"20s"`, `"5m"`, `"1h"` (any humantime syntax).
pub fn parse_duration(context: &str, value: &str) -> Result<Duration, ScenarioError> {
    humantime::parse_duration(value.trim()).map_err(|e| ScenarioError::Duration {
        context: context.to_string(),
        value: value.to_string(),
        why: e.to_string(),
    })
}

/// Parses a signed offset such as `"+90s"`, `"-2m"` or `"500ms"` (no sign: ahead), in ms.
pub fn parse_offset(context: &str, value: &str) -> Result<i64, ScenarioError> {
    let v = value.trim();
    let (sign, rest) = match v.strip_prefix('-') {
        Some(r) => (-1, r),
        None => (1, v.strip_prefix('+').unwrap_or(v)),
    };
    let d = parse_duration(context, rest.trim())?;
    let ms = i64::try_from(d.as_millis()).ok().filter(|m| *m <= 365 * 24 * 3_600_000).ok_or_else(|| {
        ScenarioError::Invalid { context: context.to_string(), why: format!("offset {value:?} is more than a year") }
    })?;
    Ok(sign * ms)
}

fn parse_role(group: &str, role: &str) -> Result<Roles, ScenarioError> {
    match role {
        "node" => Ok(Roles::NODE),
        "indexer" => Ok(Roles::INDEXER),
        "node+indexer" | "indexer+node" => Ok(Roles::BOTH),
        other => Err(ScenarioError::Invalid {
            context: format!("group {group:?}"),
            why: format!("unknown role {other:?} (expected \"node\", \"indexer\" or \"node+indexer\")"),
        }),
    }
}

fn check_latency(context: &str, l: [u64; 2]) -> Result<(u64, u64), ScenarioError> {
    if l[0] > l[1] {
        return Err(ScenarioError::Invalid {
            context: context.to_string(),
            why: format!("latency_ms = [{}, {}]: the lower bound exceeds the upper bound", l[0], l[1]),
        });
    }
    Ok((l[0], l[1]))
}

fn check_loss(context: &str, loss: f64) -> Result<f64, ScenarioError> {
    if !(0.0..=1.0).contains(&loss) {
        return Err(ScenarioError::Invalid {
            context: context.to_string(),
            why: format!("loss = {loss} is not a probability in [0, 1]"),
        });
    }
    Ok(loss)
}

fn note_extra(notes: &mut Vec<String>, context: &str, extra: &Extra) {
    for k in extra.keys() {
        notes.push(format!("{context}: key `{k}` is not used by the simulator (ignored)"));
    }
}

/// The `[network]` table.
fn parse_network(rn: RawNetwork, notes: &mut Vec<String>) -> Result<NetworkSpec, ScenarioError> {
    note_extra(notes, "[network]", &rn.extra);
    let mut network = NetworkSpec::default();
    if let Some(l) = rn.latency_ms {
        network.latency_ms = check_latency("[network]", l)?;
    }
    if let Some(l) = rn.loss {
        network.loss = check_loss("[network]", l)?;
    }
    if let Some(t) = &rn.idle_timeout {
        network.idle_timeout = parse_duration("[network] idle_timeout", t)?;
    }
    if let Some(t) = &rn.connect_timeout {
        network.connect_timeout = parse_duration("[network] connect_timeout", t)?;
    }
    Ok(network)
}

/// One `[[group]]`, checked against the groups before it.
fn parse_group(g: RawGroup, groups: &[GroupSpec], notes: &mut Vec<String>) -> Result<GroupSpec, ScenarioError> {
    let ctx = format!("group {:?}", g.name);
    if g.name.is_empty() || g.name.contains('/') || g.name.contains("..") {
        return Err(ScenarioError::Invalid {
            context: ctx,
            why: "a group name must be non-empty and contain neither '/' nor '..'".into(),
        });
    }
    if groups.iter().any(|x| x.name == g.name) {
        return Err(ScenarioError::Invalid { context: ctx, why: "duplicate group name".into() });
    }
    note_extra(notes, &ctx, &g.extra);
    let roles = parse_role(&g.name, &g.role)?;
    let config: Config = match g.config {
        Some(t) => t.try_into().map_err(|e: toml::de::Error| ScenarioError::Config {
            group: g.name.clone(),
            why: e.message().trim().to_string(),
        })?,
        None => Config::default(),
    };
    config.validate().map_err(|e| ScenarioError::Config { group: g.name.clone(), why: e.to_string() })?;
    let start_spread = match &g.start_spread {
        Some(s) => parse_duration(&format!("{ctx} start_spread"), s)?,
        None => Duration::ZERO,
    };
    Ok(GroupSpec {
        name: g.name,
        count: g.count,
        roles,
        seeds: g.seeds,
        seeds_sample: g.seeds_sample,
        start_spread,
        config,
    })
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ScenarioError::Io { path: path.to_path_buf(), source })?;
        Scenario::from_toml(&text)
    }

    /// Parses and checks a scenario.
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = toml::from_str(text)?;
        let mut notes = Vec::new();
        note_extra(&mut notes, "scenario", &raw.extra);
        let duration = parse_duration("duration", &raw.duration)?;
        if duration.is_zero() {
            return Err(ScenarioError::Invalid { context: "duration".into(), why: "must be positive".into() });
        }

        let network = parse_network(raw.network, &mut notes)?;

        let mut groups: Vec<GroupSpec> = Vec::new();
        for g in raw.groups {
            let group = parse_group(g, &groups, &mut notes)?;
            groups.push(group);
        }
        if groups.iter().all(|g| g.count == 0) {
            return Err(ScenarioError::Invalid { context: "scenario".into(), why: "no peers: add a [[group]]".into() });
        }

        let mut scenario = Scenario {
            name: raw.name,
            seed: raw.seed,
            duration,
            network,
            groups,
            faults: Vec::new(),
            workloads: Vec::new(),
            notes: Vec::new(),
        };
        for g in &scenario.groups {
            let ctx = format!("group {:?} seeds", g.name);
            scenario.resolve(&ctx, &g.seeds)?;
        }

        for (i, f) in raw.faults.into_iter().enumerate() {
            let fault = scenario.parse_fault(i, f, duration, &mut notes)?;
            scenario.faults.push(fault);
        }

        for (i, w) in raw.workloads.into_iter().enumerate() {
            let workload = scenario.parse_workload(i, w, &mut notes)?;
            scenario.workloads.push(workload);
        }
        scenario.notes = notes;
        Ok(scenario)
    }

    /// Checks fault `#i + 1` of the file against the scenario's peers.
    fn parse_fault(
        &self,
        i: usize,
        f: RawFault,
        duration: Duration,
        notes: &mut Vec<String>,
    ) -> Result<FaultSpec, ScenarioError> {
        let ctx = format!("fault #{} ({} at {})", i + 1, f.kind, f.at);
        note_extra(notes, &ctx, &f.extra);
        let at = parse_duration(&format!("{ctx} at"), &f.at)?;
        if at > duration {
            notes.push(format!("{ctx}: fires after the end of the run (never happens)"));
        }
        let need_targets = |targets: &Vec<String>| -> Result<(), ScenarioError> {
            if targets.is_empty() {
                return Err(ScenarioError::Invalid { context: ctx.clone(), why: "needs `targets`".into() });
            }
            Ok(())
        };
        let kind = match f.kind.as_str() {
            "crash" => {
                need_targets(&f.targets)?;
                FaultKind::Crash { targets: f.targets }
            }
            "restart" => {
                need_targets(&f.targets)?;
                FaultKind::Restart { targets: f.targets }
            }
            "partition" => {
                let sides = f.sides.unwrap_or_default();
                if sides.len() < 2 || sides.iter().any(|s| s.is_empty()) {
                    return Err(ScenarioError::Invalid {
                        context: ctx,
                        why: "a partition needs `sides` with at least two non-empty lists of targets".into(),
                    });
                }
                FaultKind::Partition { sides }
            }
            "heal" => FaultKind::Heal,
            "set_loss" => {
                let loss = f.loss.ok_or_else(|| ScenarioError::Invalid {
                    context: ctx.clone(),
                    why: "set_loss needs `loss`".into(),
                })?;
                FaultKind::SetLoss { loss: check_loss(&ctx, loss)? }
            }
            "set_latency" => {
                let l = f.latency_ms.ok_or_else(|| ScenarioError::Invalid {
                    context: ctx.clone(),
                    why: "set_latency needs `latency_ms = [lo, hi]`".into(),
                })?;
                FaultKind::SetLatency { latency_ms: check_latency(&ctx, l)? }
            }
            "clock_skew" => {
                need_targets(&f.targets)?;
                let o = f.offset.as_deref().ok_or_else(|| ScenarioError::Invalid {
                    context: ctx.clone(),
                    why: "clock_skew needs `offset = \"±D\"` (e.g. \"+90s\", \"-2m\")".into(),
                })?;
                FaultKind::ClockSkew { targets: f.targets, offset_ms: parse_offset(&ctx, o)? }
            }
            "byzantine" => {
                need_targets(&f.targets)?;
                self.parse_byzantine(&ctx, f, notes)?
            }
            other => {
                return Err(ScenarioError::Invalid {
                    context: ctx,
                    why: format!(
                        "unknown kind {other:?} (expected crash, restart, partition, heal, set_loss, \
                         set_latency, clock_skew or byzantine)"
                    ),
                });
            }
        };
        for t in kind.target_strings() {
            self.resolve(&ctx, std::slice::from_ref(&t))?;
        }
        if let FaultKind::Byzantine { targets, behaviour, .. } = &kind {
            for p in self.resolve(&ctx, targets)? {
                let roles = self.roles_of(p);
                let fits = if behaviour.is_indexer_behaviour() { roles.indexer } else { roles.node };
                if !fits {
                    notes.push(format!(
                        "{ctx}: `{}` does not apply to {} (wrong role); it has no effect there",
                        behaviour.name(),
                        self.peer_name(p)
                    ));
                }
            }
        }
        Ok(FaultSpec { at, kind })
    }

    /// A `byzantine` fault: its behaviour, victim and forgeries.
    fn parse_byzantine(&self, ctx: &str, f: RawFault, notes: &mut Vec<String>) -> Result<FaultKind, ScenarioError> {
        let name = f.behaviour.as_deref().unwrap_or("");
        let behaviour = Behaviour::from_name(name).ok_or_else(|| ScenarioError::Invalid {
            context: ctx.to_string(),
            why: format!(
                "unknown behaviour {name:?} (expected one of: {})",
                Behaviour::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            ),
        })?;
        if !behaviour.is_simulated() {
            notes.push(format!(
                "{ctx}: behaviour `{}` is not simulated yet (later issue); the peers stay honest",
                behaviour.name()
            ));
        }
        if let Some(v) = &f.victim {
            if behaviour != Behaviour::ClaimForeignDid {
                notes.push(format!("{ctx}: `victim` only applies to claim_foreign_did (ignored)"));
            }
            let ix = self.resolve(ctx, std::slice::from_ref(v))?;
            if ix.len() != 1 || !self.roles_of(ix[0]).node {
                return Err(ScenarioError::Invalid {
                    context: ctx.to_string(),
                    why: format!("victim {v:?} must name one node-role peer"),
                });
            }
        }
        let forge = match &f.forge {
            None => Forgery::DEFAULT.to_vec(),
            Some(list) => {
                if behaviour != Behaviour::ForgeSearchHits {
                    notes.push(format!("{ctx}: `forge` only applies to forge_search_hits (ignored)"));
                }
                let parsed = list
                    .iter()
                    .map(|n| {
                        Forgery::from_name(n).ok_or_else(|| ScenarioError::Invalid {
                            context: ctx.to_string(),
                            why: format!(
                                "unknown forgery {n:?} in `forge` (expected: {})",
                                Forgery::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                            ),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if parsed.is_empty() {
                    return Err(ScenarioError::Invalid {
                        context: ctx.to_string(),
                        why: "`forge` must name at least one forgery".into(),
                    });
                }
                parsed
            }
        };
        Ok(FaultKind::Byzantine { targets: f.targets, behaviour, victim: f.victim, forge })
    }

    /// Checks workload `#i + 1` of the file.
    fn parse_workload(&self, i: usize, w: toml::Table, notes: &mut Vec<String>) -> Result<WorkloadSpec, ScenarioError> {
        let ctx = format!("workload #{}", i + 1);
        let kind = w.get("kind").and_then(|v| v.as_str()).unwrap_or("").to_string();
        let from = match w.get("from").and_then(|v| v.as_str()) {
            Some(s) => Some(parse_duration(&format!("{ctx} from"), s)?),
            None => None,
        };
        let (mut lookup, mut search, mut send, mut resource) = (None, None, None, None);
        match kind.as_str() {
            "resource_search" => resource = Some(self.parse_resource(&ctx, &w, from, notes)?),
            "lookup" => lookup = Some(self.parse_lookup(&ctx, &w, from, notes)?),
            "search" => search = Some(self.parse_search(&ctx, &w, from, notes)?),
            "send" => send = Some(self.parse_send(&ctx, &w, from, notes)?),
            _ => {
                return Err(ScenarioError::Invalid {
                    context: ctx,
                    why: format!("unknown workload kind {kind:?} (expected lookup, search, send or resource_search)"),
                });
            }
        }
        Ok(WorkloadSpec { kind, from, raw: w, lookup, search, send, resource })
    }

    fn parse_lookup(
        &self,
        ctx: &str,
        w: &toml::Table,
        from: Option<Duration>,
        notes: &mut Vec<String>,
    ) -> Result<LookupSpec, ScenarioError> {
        let c =
            self.parse_poisson(ctx, w, from, &["kind", "from", "until", "rate_per_s", "warmup", "targets"], notes)?;
        Ok(LookupSpec { from: c.from, until: c.until, rate_per_s: c.rate_per_s, warmup: c.warmup, targets: c.targets })
    }

    fn parse_resource(
        &self,
        ctx: &str,
        w: &toml::Table,
        from: Option<Duration>,
        notes: &mut Vec<String>,
    ) -> Result<ResourceSearchSpec, ScenarioError> {
        let keys = ["kind", "from", "until", "rate_per_s", "warmup", "targets", "answer_fraction"];
        let c = self.parse_poisson(ctx, w, from, &keys, notes)?;
        let answer_fraction = match w.get("answer_fraction") {
            None => 0.01,
            Some(v) => match v.as_float().or_else(|| v.as_integer().map(|i| i as f64)) {
                Some(f) if (0.0..=1.0).contains(&f) => f,
                _ => {
                    return Err(ScenarioError::Invalid {
                        context: ctx.to_string(),
                        why: "answer_fraction must be a number in [0, 1]".into(),
                    });
                }
            },
        };
        Ok(ResourceSearchSpec {
            from: c.from,
            until: c.until,
            rate_per_s: c.rate_per_s,
            warmup: c.warmup,
            answer_fraction,
            targets: c.targets,
        })
    }

    fn parse_search(
        &self,
        ctx: &str,
        w: &toml::Table,
        from: Option<Duration>,
        notes: &mut Vec<String>,
    ) -> Result<SearchSpec, ScenarioError> {
        let keys = ["kind", "from", "until", "rate_per_s", "warmup", "targets", "by"];
        let c = self.parse_poisson(ctx, w, from, &keys, notes)?;
        let by = match w.get("by").map(|v| v.as_str()) {
            None => SearchBy::Name,
            Some(Some("name")) => SearchBy::Name,
            Some(Some("did")) => SearchBy::Did,
            Some(Some("peer")) => SearchBy::Peer,
            Some(other) => {
                return Err(ScenarioError::Invalid {
                    context: ctx.to_string(),
                    why: format!("by = {other:?}: expected \"name\", \"did\" or \"peer\""),
                });
            }
        };
        Ok(SearchSpec {
            from: c.from,
            until: c.until,
            rate_per_s: c.rate_per_s,
            warmup: c.warmup,
            by,
            targets: c.targets,
        })
    }

    fn parse_send(
        &self,
        ctx: &str,
        w: &toml::Table,
        from: Option<Duration>,
        notes: &mut Vec<String>,
    ) -> Result<SendSpec, ScenarioError> {
        use ocd_core::proto::DeliveryClass;
        let keys = [
            "kind",
            "from",
            "until",
            "rate_per_s",
            "warmup",
            "targets",
            "class",
            "to",
            "partners",
            "by",
            "payload_bytes",
            "senders",
        ];
        let c = self.parse_poisson(ctx, w, from, &keys, notes)?;
        let invalid = |why: String| ScenarioError::Invalid { context: ctx.to_string(), why };
        let word = |key: &str| -> Result<Option<&str>, ScenarioError> {
            match w.get(key) {
                None => Ok(None),
                Some(v) => v.as_str().map(Some).ok_or_else(|| invalid(format!("`{key}` must be a string"))),
            }
        };
        let class = match word("class")? {
            Some("critical") => DeliveryClass::Critical,
            Some("moderate") => DeliveryClass::Moderate,
            other => return Err(invalid(format!("class = {other:?}: expected \"critical\" or \"moderate\""))),
        };
        let to = match word("to")? {
            None | Some("any") => SendTo::Any,
            Some("partners") => SendTo::Partners,
            Some(other) => return Err(invalid(format!("to = {other:?}: expected \"any\" or \"partners\""))),
        };
        let by = match word("by")? {
            None | Some("peer") => SendBy::Peer,
            Some("did") => SendBy::Did,
            Some(other) => return Err(invalid(format!("by = {other:?}: expected \"peer\" or \"did\""))),
        };
        let count = |key: &str, default: usize, max: usize| -> Result<usize, ScenarioError> {
            match w.get(key) {
                None => Ok(default),
                Some(toml::Value::Integer(i)) if *i >= 1 && (*i as u64) <= max as u64 => Ok(*i as usize),
                Some(_) => Err(invalid(format!("`{key}` must be an integer in [1, {max}]"))),
            }
        };
        let partners = count("partners", 3, 1_000)?;
        let payload_bytes = count("payload_bytes", 256, 48 * 1024)?;
        let senders: Vec<String> = match w.get("senders") {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| invalid("`senders` must be strings".into())))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("`senders` must be an array of target strings".into())),
        };
        self.resolve(ctx, &senders)?;
        Ok(SendSpec {
            from: c.from,
            until: c.until,
            rate_per_s: c.rate_per_s,
            warmup: c.warmup,
            class,
            to,
            partners,
            by,
            payload_bytes,
            senders,
            targets: c.targets,
        })
    }

    /// The keys every Poisson workload shares (`from`, `until`, `rate_per_s`, `warmup`,
    /// `targets`); keys not in `known` are noted as ignored.
    fn parse_poisson(
        &self,
        ctx: &str,
        w: &toml::Table,
        from: Option<Duration>,
        known: &[&str],
        notes: &mut Vec<String>,
    ) -> Result<PoissonSpec, ScenarioError> {
        let invalid = |why: String| ScenarioError::Invalid { context: ctx.to_string(), why };
        for k in w.keys() {
            if !known.contains(&k.as_str()) {
                notes.push(format!("{ctx}: key `{k}` is not used by the simulator (ignored)"));
            }
        }
        let dur = |key: &str| -> Result<Option<Duration>, ScenarioError> {
            match w.get(key) {
                None => Ok(None),
                Some(v) => match v.as_str() {
                    Some(s) => parse_duration(&format!("{ctx} {key}"), s).map(Some),
                    None => Err(invalid(format!("`{key}` must be a duration string such as \"90s\""))),
                },
            }
        };
        let until = dur("until")?;
        let warmup = dur("warmup")?.unwrap_or(Duration::from_secs(90));
        let from = from.unwrap_or(Duration::ZERO);
        if until.is_some_and(|u| u <= from) {
            return Err(invalid("`until` must be after `from`".into()));
        }
        let rate_per_s = match w.get("rate_per_s") {
            Some(toml::Value::Float(f)) => *f,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(_) => return Err(invalid("`rate_per_s` must be a number".into())),
            None => return Err(invalid("a workload needs `rate_per_s`".into())),
        };
        if !(rate_per_s.is_finite() && rate_per_s > 0.0 && rate_per_s <= 10_000.0) {
            return Err(invalid(format!("rate_per_s = {rate_per_s} must be in (0, 10000]")));
        }
        let targets: Vec<String> = match w.get("targets") {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| invalid("`targets` must be strings".into())))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("`targets` must be an array of target strings".into())),
        };
        for p in self.resolve(ctx, &targets)? {
            if !self.roles_of(p).node {
                notes.push(format!("{ctx}: target {} is not a node-role peer (never a target)", self.peer_name(p)));
            }
        }
        Ok(PoissonSpec { from, until, rate_per_s, warmup, targets })
    }

    /// Whether a workload searches by name (simulated nodes then get distinct names).
    pub fn searches_by_name(&self) -> bool {
        self.workloads.iter().any(|w| w.search.as_ref().is_some_and(|s| s.by == SearchBy::Name))
    }

    /// Total number of peers.
    pub fn peer_count(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }

    /// Index of the first peer of each group.
    fn group_offset(&self, group: usize) -> usize {
        self.groups.iter().take(group).map(|g| g.count).sum()
    }

    /// The group of peer `p` and its index in the group.
    pub fn locate(&self, p: usize) -> Option<(usize, usize)> {
        let mut base = 0;
        for (gi, g) in self.groups.iter().enumerate() {
            if p < base + g.count {
                return Some((gi, p - base));
            }
            base += g.count;
        }
        None
    }

    /// `"<group>/<index>"` of peer `p`.
    pub fn peer_name(&self, p: usize) -> String {
        match self.locate(p) {
            Some((g, i)) => format!("{}/{}", self.groups[g].name, i),
            None => format!("?/{p}"),
        }
    }

    /// The roles of peer `p`.
    pub fn roles_of(&self, p: usize) -> Roles {
        self.locate(p).map(|(g, _)| self.groups[g].roles).unwrap_or(Roles { node: false, indexer: false })
    }

    /// Resolves target strings to peer indices (sorted, deduplicated).
    pub fn resolve(&self, context: &str, targets: &[String]) -> Result<Vec<usize>, ScenarioError> {
        let mut out = Vec::new();
        for t in targets {
            out.extend(self.resolve_one(context, t)?);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn resolve_one(&self, context: &str, target: &str) -> Result<std::ops::Range<usize>, ScenarioError> {
        let bad = |why: &str| ScenarioError::BadTarget {
            context: context.to_string(),
            target: target.to_string(),
            why: why.to_string(),
        };
        let (gname, sel) = match target.trim().split_once('/') {
            Some((g, s)) => (g, Some(s)),
            None => (target.trim(), None),
        };
        let gi = self.groups.iter().position(|g| g.name == gname).ok_or_else(|| ScenarioError::UnknownGroup {
            context: context.to_string(),
            target: target.to_string(),
            group: gname.to_string(),
            known: self.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", "),
        })?;
        let count = self.groups[gi].count;
        let base = self.group_offset(gi);
        let out_of_range = || ScenarioError::OutOfRange {
            context: context.to_string(),
            target: target.to_string(),
            group: gname.to_string(),
            count,
        };
        let (a, b) = match sel {
            None => (0, count),
            Some(s) => match s.split_once("..") {
                Some((a, b)) => {
                    let a: usize = a.trim().parse().map_err(|_| bad("range start is not a number"))?;
                    let b: usize = b.trim().parse().map_err(|_| bad("range end is not a number"))?;
                    if a >= b {
                        return Err(bad("empty range (a..b is half-open: b must exceed a)"));
                    }
                    if b > count {
                        return Err(out_of_range());
                    }
                    (a, b)
                }
                None => {
                    let i: usize = s.trim().parse().map_err(|_| bad("index is not a number"))?;
                    if i >= count {
                        return Err(out_of_range());
                    }
                    (i, i + 1)
                }
            },
        };
        Ok(base + a..base + b)
    }

    /// Returns a copy with another seed (the CLI's `--seed`).
    pub fn with_seed(mut self, seed: u64) -> Scenario {
        self.seed = seed;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "t"
seed = 3
duration = "2m"
[[group]]
name = "idx"
count = 4
role = "indexer"
[[group]]
name = "n"
count = 10
role = "node"
seeds = ["idx/0", "idx/1"]
start_spread = "10s"
"#;

    fn with(extra: &str) -> Result<Scenario, ScenarioError> {
        Scenario::from_toml(&format!("{BASE}\n{extra}"))
    }

    #[test]
    fn targets_resolve_single_range_and_whole_group() {
        let s = with("").unwrap();
        assert_eq!(s.resolve("t", &["idx/2".into()]).unwrap(), vec![2]);
        assert_eq!(s.resolve("t", &["n/0..3".into()]).unwrap(), vec![4, 5, 6]);
        assert_eq!(s.resolve("t", &["idx".into()]).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(s.peer_name(5), "n/1");
        assert_eq!(s.peer_count(), 14);
    }

    #[test]
    fn bad_targets_are_reported_with_their_context() {
        let s = with("").unwrap();
        let e = s.resolve("fault #1", &["nope/1".into()]).unwrap_err();
        assert!(matches!(e, ScenarioError::UnknownGroup { .. }), "{e}");
        assert!(e.to_string().contains("nope"));
        let e = s.resolve("t", &["idx/4".into()]).unwrap_err();
        assert!(matches!(e, ScenarioError::OutOfRange { count: 4, .. }), "{e}");
        assert!(matches!(s.resolve("t", &["idx/0..5".into()]), Err(ScenarioError::OutOfRange { .. })));
        assert!(matches!(s.resolve("t", &["idx/3..3".into()]), Err(ScenarioError::BadTarget { .. })));
        assert!(matches!(s.resolve("t", &["idx/x".into()]), Err(ScenarioError::BadTarget { .. })));
    }

    #[test]
    fn durations_accept_ms_s_m_h_and_reject_garbage() {
        assert_eq!(parse_duration("x", "500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("x", "20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("x", "5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("x", "1h").unwrap(), Duration::from_secs(3600));
        assert!(matches!(parse_duration("x", "5 parsecs"), Err(ScenarioError::Duration { .. })));
        let e =
            Scenario::from_toml("name='x'\nduration='soon'\n[[group]]\nname='a'\ncount=1\nrole='node'").unwrap_err();
        assert!(e.to_string().contains("duration"), "{e}");
    }

    #[test]
    fn faults_are_checked_at_parse_time() {
        let e = with("[[fault]]\nat='1m'\nkind='crash'\ntargets=['idx/9']").unwrap_err();
        assert!(e.to_string().contains("fault #1"), "{e}");
        let e = with("[[fault]]\nat='1m'\nkind='explode'\ntargets=['idx/1']").unwrap_err();
        assert!(e.to_string().contains("unknown kind"), "{e}");
        let e = with("[[fault]]\nat='1m'\nkind='byzantine'\ntargets=['idx/1']\nbehaviour='nice'").unwrap_err();
        assert!(e.to_string().contains("unknown behaviour"), "{e}");
        let e = with("[[fault]]\nat='1m'\nkind='partition'\nsides=[['idx/0']]").unwrap_err();
        assert!(e.to_string().contains("two"), "{e}");
        let s = with(
            "[[fault]]\nat='1m'\nkind='partition'\nsides=[['idx/0..2','n/0..5'],['idx/2..4']]\n\
             [[fault]]\nat='90s'\nkind='heal'\n\
             [[fault]]\nat='1m'\nkind='byzantine'\ntargets=['idx/3']\nbehaviour='forge_search_hits'",
        )
        .unwrap();
        assert_eq!(s.faults.len(), 3);
        assert!(!s.notes.iter().any(|n| n.contains("forge_search_hits")), "simulated now: {:?}", s.notes);
        assert!(matches!(&s.faults[2].kind, FaultKind::Byzantine { forge, .. } if forge == &Forgery::DEFAULT));
        let s = with("[[fault]]\nat='1m'\nkind='byzantine'\ntargets=['idx/3']\nbehaviour='forge_search_hits'\nforge=['claim_did']")
            .unwrap();
        assert!(matches!(&s.faults[0].kind, FaultKind::Byzantine { forge, .. } if forge == &[Forgery::ClaimDid]));
        let e = with(
            "[[fault]]\nat='1m'\nkind='byzantine'\ntargets=['idx/3']\nbehaviour='forge_search_hits'\nforge=['lies']",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown forgery"), "{e}");
    }

    #[test]
    fn send_workload_is_parsed_and_checked() {
        let s = with(
            "[[workload]]\nkind='send'\nclass='moderate'\nrate_per_s=2\nto='partners'\npartners=2\nby='did'\n\
             payload_bytes=64\nsenders=['idx/0..2']",
        )
        .unwrap();
        let w = s.workloads[0].send.clone().unwrap();
        assert_eq!(w.class, ocd_core::proto::DeliveryClass::Moderate);
        assert_eq!((w.to, w.partners, w.by, w.payload_bytes), (SendTo::Partners, 2, SendBy::Did, 64));
        assert_eq!(w.senders, vec!["idx/0..2".to_string()]);
        let s = with("[[workload]]\nkind='send'\nclass='critical'\nrate_per_s=1").unwrap();
        let w = s.workloads[0].send.clone().unwrap();
        assert_eq!((w.to, w.by, w.payload_bytes, w.partners), (SendTo::Any, SendBy::Peer, 256, 3));
        for (bad, key) in [
            ("class='urgent'", "class"),
            ("class='critical'\nto='friends'", "to"),
            ("class='critical'\nby='name'", "by"),
            ("class='critical'\npayload_bytes=0", "payload_bytes"),
            ("class='critical'\nsenders=['nobody/0']", "nobody"),
        ] {
            let e = with(&format!("[[workload]]\nkind='send'\nrate_per_s=1\n{bad}")).unwrap_err();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn clock_skew_takes_a_signed_offset() {
        let s = with("[[fault]]\nat='1m'\nkind='clock_skew'\ntargets=['idx/0']\noffset='+2m'").unwrap();
        assert!(matches!(&s.faults[0].kind, FaultKind::ClockSkew { offset_ms: 120_000, .. }));
        let s = with("[[fault]]\nat='1m'\nkind='clock_skew'\ntargets=['idx/0']\noffset='-90s'").unwrap();
        assert!(matches!(&s.faults[0].kind, FaultKind::ClockSkew { offset_ms: -90_000, .. }));
        assert_eq!(s.faults[0].kind.name(), "clock_skew");
        let e = with("[[fault]]\nat='1m'\nkind='clock_skew'\ntargets=['idx/0']").unwrap_err();
        assert!(e.to_string().contains("offset"), "{e}");
        let e = with("[[fault]]\nat='1m'\nkind='clock_skew'\ntargets=['idx/0']\noffset='soon'").unwrap_err();
        assert!(e.to_string().contains("soon"), "{e}");
        let e = with("[[fault]]\nat='1m'\nkind='clock_skew'\noffset='+1s'").unwrap_err();
        assert!(e.to_string().contains("targets"), "{e}");
    }

    #[test]
    fn search_workload_is_parsed_and_checked() {
        let s = with("[[workload]]\nkind='search'\nfrom='1m'\nrate_per_s=2\nby='did'\nwarmup='30s'").unwrap();
        let w = s.workloads[0].search.clone().unwrap();
        assert_eq!((w.from, w.until, w.rate_per_s, w.by), (Duration::from_secs(60), None, 2.0, SearchBy::Did));
        assert_eq!(w.warmup, Duration::from_secs(30));
        assert!(s.workloads[0].lookup.is_none());
        assert!(!s.searches_by_name());
        let s = with("[[workload]]\nkind='search'\nrate_per_s=1").unwrap();
        assert_eq!(s.workloads[0].search.as_ref().map(|w| w.by), Some(SearchBy::Name));
        assert!(s.searches_by_name());
        assert!(!s.notes.iter().any(|n| n.contains("unsupported")), "{:?}", s.notes);
        let e = with("[[workload]]\nkind='search'\nrate_per_s=1\nby='mood'").unwrap_err();
        assert!(e.to_string().contains("by"), "{e}");
        let e = with("[[workload]]\nkind='search'").unwrap_err();
        assert!(e.to_string().contains("rate_per_s"), "{e}");
    }

    #[test]
    fn unknown_config_keys_are_errors_but_other_extra_keys_are_noted() {
        let e = Scenario::from_toml(
            &BASE.replace("role = \"indexer\"", "role = \"indexer\"\n[group.config]\nmax_nodez = 5"),
        )
        .unwrap_err();
        assert!(matches!(&e, ScenarioError::Config { group, .. } if group == "idx"), "{e}");
        assert!(e.to_string().contains("max_nodez"), "{e}");
        let s = Scenario::from_toml(&format!(
            "comment = 'hi'\n{BASE}\n[[workload]]\nkind='send'\nclass='critical'\nrate_per_s=1\nfrom='1m'\nsize=3"
        ))
        .unwrap();
        assert!(s.notes.iter().any(|n| n.contains("comment")));
        assert!(s.notes.iter().any(|n| n.contains("`size`")), "{:?}", s.notes);
        assert_eq!(s.workloads.len(), 1);
        let e = Scenario::from_toml(&format!("{BASE}\n[[workload]]\nkind='gossip'\nrate_per_s=1")).unwrap_err();
        assert!(e.to_string().contains("unknown workload kind"), "{e}");
    }

    #[test]
    fn group_config_overrides_defaults_and_is_validated() {
        let s = Scenario::from_toml(&BASE.replace(
            "start_spread = \"10s\"",
            "start_spread = \"10s\"\n[group.config]\nmin_indexers = 2\nmax_indexers = 4\nheartbeat_interval = \"10s\"\nmax_hb_per_minute = 8",
        ))
        .unwrap();
        assert_eq!(s.groups[1].config.min_indexers, 2);
        assert_eq!(s.groups[1].config.heartbeat_interval, Duration::from_secs(10));
        let e = Scenario::from_toml(&BASE.replace("start_spread = \"10s\"", "[group.config]\nmin_indexers = 9"))
            .unwrap_err();
        assert!(matches!(e, ScenarioError::Config { .. }), "{e}");
    }

    #[test]
    fn lookup_workload_is_parsed_and_checked() {
        let s = with("[[workload]]\nkind='lookup'\nfrom='1m'\nuntil='2m'\nrate_per_s=2\ntargets=['n/0..3']").unwrap();
        let l = s.workloads[0].lookup.clone().unwrap();
        assert_eq!(l.from, Duration::from_secs(60));
        assert_eq!(l.until, Some(Duration::from_secs(120)));
        assert_eq!(l.rate_per_s, 2.0);
        assert_eq!(l.warmup, Duration::from_secs(90));
        assert_eq!(l.targets, vec!["n/0..3".to_string()]);
        assert!(!s.notes.iter().any(|n| n.contains("unsupported")), "{:?}", s.notes);
        let e = with("[[workload]]\nkind='lookup'\nfrom='1m'").unwrap_err();
        assert!(e.to_string().contains("rate_per_s"), "{e}");
        let e = with("[[workload]]\nkind='lookup'\nfrom='2m'\nuntil='1m'\nrate_per_s=1").unwrap_err();
        assert!(e.to_string().contains("until"), "{e}");
        let e = with("[[workload]]\nkind='lookup'\nrate_per_s=-1").unwrap_err();
        assert!(e.to_string().contains("rate_per_s"), "{e}");
        let e = with("[[workload]]\nkind='lookup'\nrate_per_s=1\ntargets=['zz']").unwrap_err();
        assert!(matches!(e, ScenarioError::UnknownGroup { .. }), "{e}");
    }

    #[test]
    fn byzantine_victim_must_be_one_node() {
        let ok =
            with("[[fault]]\nat='1m'\nkind='byzantine'\ntargets=['n/1']\nbehaviour='claim_foreign_did'\nvictim='n/0'")
                .unwrap();
        assert!(matches!(&ok.faults[0].kind, FaultKind::Byzantine { victim: Some(v), .. } if v == "n/0"));
        let e = with(
            "[[fault]]\nat='1m'\nkind='byzantine'\ntargets=['n/1']\nbehaviour='claim_foreign_did'\nvictim='idx/0'",
        )
        .unwrap_err();
        assert!(e.to_string().contains("victim"), "{e}");
    }
}
