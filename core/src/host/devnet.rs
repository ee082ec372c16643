//! `ocd devnet`: a whole network of real daemons on 127.0.0.1, each a separate process of the
//! `ocd` (or `ocd-smol`) binary — or both, alternating, with `--runtime mixed` — with relays and
//! address lookup off. It shows the pools filling
//! live, optionally SIGKILLs an indexer midway (`--chaos`), and ends with a summary — one JSON
//! object with `--json` — exiting non-zero if the network did not converge.

use super::config::DaemonConfig;
use super::control::{self, ControlCommand, ControlReply};
use super::identity;
use super::status::{StatusReport, short};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `devnet` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DevnetArgs {
    /// Number of indexers.
    #[arg(long, default_value_t = 3)]
    pub indexers: usize,
    /// Number of nodes.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// How long to run, e.g. 60s or 5m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Runtime of the daemons: tokio (`ocd`), smol (`ocd-smol`) or mixed (the two binaries
    /// alternating, indexers and nodes alike); default: this binary's.
    #[arg(long)]
    pub runtime: Option<String>,
    /// SIGKILL one indexer halfway through and watch the nodes replace it.
    #[arg(long)]
    pub chaos: bool,
    /// Print one JSON summary object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Minimum pool of each node (default: min(3, indexers that stay up)).
    #[arg(long)]
    pub min_indexers: Option<usize>,
    /// Directory for data, configs and logs (default: a fresh temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Stop as soon as every node is at its minimum (with `--chaos`: kill an indexer 3 s after
    /// that and stop once they recover); `--duration` becomes the time limit.
    #[arg(long)]
    pub until_converged: bool,
    /// Keep the directory afterwards (it is always kept when the network did not converge).
    #[arg(long)]
    pub keep: bool,
    /// Every daemon journals its core's inputs to `<dir>/<name>.journal` (replay one with
    /// `ocd-sim replay`); implies `--keep`.
    #[arg(long)]
    pub journal: bool,
}

/// Errors setting up a devnet.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A daemon did not come up.
    #[error("{name} did not start: {reason} (log: {log})")]
    Start {
        /// Which daemon.
        name: String,
        /// Why.
        reason: String,
        /// Its log file.
        log: String,
    },
    /// SIGINT or SIGTERM arrived while the daemons were starting (they were stopped).
    #[error("interrupted while starting the daemons; every daemon was stopped")]
    Interrupted,
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
}

/// One daemon in the final summary.
#[derive(Debug, Serialize)]
pub struct PeerSummary {
    /// Devnet name (`indexer-0`, `node-3`).
    pub name: String,
    /// Peer id (hex).
    pub peer: String,
    /// `indexer` or `node`.
    pub role: String,
    /// Its runtime: `tokio` (`ocd`) or `smol` (`ocd-smol`).
    pub runtime: String,
    /// Whether its process was still answering at the end.
    pub alive: bool,
    /// Live indexers in its pool (nodes; indexers report their own pool of indexers).
    pub live_pool: usize,
    /// Admitted sessions (indexers).
    pub sessions: usize,
    /// Mean score of its live pool entries.
    pub mean_score: Option<f64>,
}

/// What happened to the chaos victim.
#[derive(Debug, Serialize)]
pub struct ChaosSummary {
    /// The killed indexer.
    pub killed: String,
    /// Seconds into the run.
    pub at_secs: f64,
    /// Nodes that had it live when it was killed.
    pub nodes_affected: usize,
    /// Affected nodes that stopped counting it live by the end.
    pub nodes_detected: usize,
    /// Seconds from the kill until the last affected node stopped counting it live.
    pub detected_after_secs: Option<f64>,
    /// Seconds from the kill until every affected node had detected it and every node was at its
    /// minimum again (if it happened).
    pub recovered_after_secs: Option<f64>,
}

/// The devnet's result.
#[derive(Debug, Serialize)]
pub struct DevnetSummary {
    /// `tokio`, `smol` or `mixed`.
    pub runtime: String,
    /// Indexers started.
    pub indexers: usize,
    /// Nodes started.
    pub nodes: usize,
    /// Seconds run.
    pub duration_secs: f64,
    /// Each node's minimum pool.
    pub min_indexers: usize,
    /// Every node at its minimum pool and every surviving daemon answering, at the end.
    pub converged: bool,
    /// Nodes below their minimum at the end.
    pub nodes_below_min: usize,
    /// Seconds from starting the nodes until every node first reached its minimum.
    pub converged_after_secs: Option<f64>,
    /// SIGINT or SIGTERM ended the run early (the summary is what was seen so far).
    pub interrupted: bool,
    /// The chaos event, with `--chaos`.
    pub chaos: Option<ChaosSummary>,
    /// Where data and logs are (kept with `--keep` or on failure).
    pub dir: String,
    /// Every daemon.
    pub peers: Vec<PeerSummary>,
}

struct Daemon {
    name: String,
    indexer: bool,
    runtime: &'static str,
    dir: PathBuf,
    child: Child,
    peer: String,
    address: String,
    killed: bool,
}

impl Daemon {
    fn socket(&self) -> PathBuf {
        self.dir.join(super::config::CONTROL_SOCKET)
    }
    fn status(&self) -> Option<StatusReport> {
        if self.killed {
            return None;
        }
        match control::request(&self.socket(), &ControlCommand::Status) {
            Ok(ControlReply::Status(r)) => Some(*r),
            _ => None,
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevnetError {
    let context = context.into();
    move |source| DevnetError::Io { context, source }
}

/// Finds the daemon binary for `runtime`: this executable, or its sibling.
fn binary_for(runtime: &str, own_binary: &str, own_runtime: &str) -> Result<PathBuf, DevnetError> {
    let me = std::env::current_exe().map_err(io("locating this executable"))?;
    if runtime == own_runtime {
        return Ok(me);
    }
    let name = match runtime {
        "tokio" => "ocd",
        "smol" => "ocd-smol",
        other => return Err(DevnetError::Usage(format!("unknown runtime `{other}` (tokio, smol or mixed)"))),
    };
    let sibling = me.with_file_name(name);
    if sibling.exists() {
        Ok(sibling)
    } else {
        Err(DevnetError::Usage(format!(
            "`{own_binary} devnet --runtime {runtime}` needs the `{name}` binary next to {} (build it with `cargo build --release --bin {name}`)",
            me.display()
        )))
    }
}

/// Exit code of a run ended by SIGINT or SIGTERM (128 + SIGINT, as shells report Ctrl-C).
const EXIT_INTERRUPTED: u8 = 130;

/// Runs the devnet and prints its summary. Exit code 0 iff it converged, 130 when SIGINT or
/// SIGTERM ended it early (after stopping every daemon and printing the summary so far).
pub fn main(args: DevnetArgs, own_binary: &str, own_runtime: &str) -> ExitCode {
    match run(&args, own_binary, own_runtime) {
        Ok(summary) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
            } else {
                print_summary(&summary);
            }
            if summary.interrupted {
                ExitCode::from(EXIT_INTERRUPTED)
            } else if summary.converged {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(DevnetError::Interrupted) => {
            eprintln!("{own_binary} devnet: {}", DevnetError::Interrupted);
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => {
            eprintln!("{own_binary} devnet: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the devnet: start, watch, (chaos), stop, summarise.
pub fn run(args: &DevnetArgs, own_binary: &str, own_runtime: &str) -> Result<DevnetSummary, DevnetError> {
    let mut net = Devnet::prepare(args, own_binary, own_runtime)?;
    if let Err(e) = net.start() {
        stop_all(&mut net.daemons);
        return Err(e);
    }
    let watched = net.watch();
    Ok(net.finish(watched))
}

/// One devnet run: its settings, its daemons and the view on stderr.
struct Devnet<'a> {
    args: &'a DevnetArgs,
    runtime: String,
    /// The binaries daemons alternate between (one, or tokio's and smol's for `mixed`).
    exes: Vec<(&'static str, PathBuf)>,
    dir: PathBuf,
    key: PathBuf,
    /// Live indexers every node must reach.
    min: usize,
    /// Each node's pool bound.
    max: usize,
    interrupted: Arc<AtomicBool>,
    view: View,
    daemons: Vec<Daemon>,
    nodes_started: Instant,
}

/// What the watch saw.
struct Watched {
    last: Vec<Option<StatusReport>>,
    chaos: Option<ChaosSummary>,
    converged_after: Option<f64>,
    duration: Duration,
}

impl<'a> Devnet<'a> {
    /// Checks the arguments, creates the directory and the network key, installs the signal
    /// handlers.
    fn prepare(args: &'a DevnetArgs, own_binary: &str, own_runtime: &str) -> Result<Self, DevnetError> {
        if args.indexers == 0 || args.nodes == 0 {
            return Err(DevnetError::Usage("need at least one indexer and one node".into()));
        }
        if args.chaos && args.indexers < 2 {
            return Err(DevnetError::Usage("--chaos needs at least 2 indexers".into()));
        }
        let runtime = args.runtime.clone().unwrap_or_else(|| own_runtime.to_string());
        let exes = match runtime.as_str() {
            "mixed" => vec![
                ("tokio", binary_for("tokio", own_binary, own_runtime)?),
                ("smol", binary_for("smol", own_binary, own_runtime)?),
            ],
            "tokio" => vec![("tokio", binary_for("tokio", own_binary, own_runtime)?)],
            "smol" => vec![("smol", binary_for("smol", own_binary, own_runtime)?)],
            other => return Err(DevnetError::Usage(format!("unknown runtime `{other}` (tokio, smol or mixed)"))),
        };
        let dir = match &args.dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("ocd-devnet-{}", std::process::id())),
        };
        if dir.exists() && std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(false) {
            return Err(DevnetError::Usage(format!("{} is not empty; pick another --dir", dir.display())));
        }
        let surviving = args.indexers - usize::from(args.chaos);
        let min = args.min_indexers.unwrap_or(surviving.min(3)).max(1);
        if min > surviving {
            return Err(DevnetError::Usage(format!(
                "--min-indexers {min} exceeds the {surviving} indexers that stay up"
            )));
        }
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let key = dir.join("network.key");
        identity::create_network_key(&key).map_err(|e| DevnetError::Usage(e.to_string()))?;
        Ok(Devnet {
            args,
            runtime,
            exes,
            dir,
            key,
            min,
            max: args.indexers.clamp(min, 5.max(min)),
            interrupted: watch_interrupts()?,
            view: View::new(),
            daemons: Vec::new(),
            nodes_started: Instant::now(),
        })
    }

    /// The runtime and binary of the `k`-th daemon started (indexers first, then nodes): with
    /// `mixed`, even ones run `ocd` and odd ones `ocd-smol`, so both kinds of indexer serve both
    /// kinds of node.
    fn exe_for(&self, k: usize) -> (&'static str, &Path) {
        let (runtime, exe) = &self.exes[k % self.exes.len()];
        (runtime, exe)
    }

    fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Starts the indexers one by one (each seeded with those before it), then the nodes.
    fn start(&mut self) -> Result<(), DevnetError> {
        let (args, max, min) = (self.args, self.max, self.min);
        self.view.note(&format!(
            "starting {} indexers and {} nodes ({}) in {}",
            args.indexers,
            args.nodes,
            self.runtime,
            self.dir.display()
        ));
        for i in 0..args.indexers {
            let seeds: Vec<String> = self.daemons.iter().map(|d| d.address.clone()).collect();
            let exe = self.exe_for(self.daemons.len());
            let j = args.journal;
            let d = spawn(exe, &self.dir, &self.key, &format!("indexer-{i}"), true, seeds, (1, max), j)?;
            self.daemons.push(d);
            if let Some(d) = self.daemons.last_mut() {
                wait_up(d, Duration::from_secs(20))?;
            }
            if self.is_interrupted() {
                return Err(DevnetError::Interrupted);
            }
        }
        let seeds: Vec<String> = self.daemons.iter().map(|d| d.address.clone()).collect();
        self.nodes_started = Instant::now();
        for j in 0..args.nodes {
            let exe = self.exe_for(self.daemons.len());
            let journal = args.journal;
            let d = spawn(exe, &self.dir, &self.key, &format!("node-{j}"), false, seeds.clone(), (min, max), journal)?;
            self.daemons.push(d);
        }
        for d in self.daemons.iter_mut().filter(|d| !d.indexer) {
            wait_up(d, Duration::from_secs(20))?;
        }
        if self.is_interrupted() {
            return Err(DevnetError::Interrupted);
        }
        Ok(())
    }

    /// Every daemon's status, nodes first: a node counts an indexer live only after the indexer
    /// opened its session, so asking the indexers last makes the snapshot causally consistent (each
    /// live pool entry seen is backed by a session seen), whatever the admissions in between.
    fn poll_statuses(&self) -> Vec<Option<StatusReport>> {
        let mut last: Vec<Option<StatusReport>> = vec![None; self.daemons.len()];
        for indexers in [false, true] {
            for (i, d) in self.daemons.iter().enumerate().filter(|(_, d)| d.indexer == indexers) {
                last[i] = d.status();
            }
        }
        last
    }

    /// Watches until the duration is over, the network converged (`--until-converged`) or a signal
    /// came; kills the victim indexer when chaos is due.
    fn watch(&mut self) -> Watched {
        let (args, min) = (self.args, self.min);
        self.view.note(&format!(
            "legend: nodes at min({min}) = nodes with at least {min} live indexers · node pools = live \
             indexers of each node, in order · indexer sessions = nodes heartbeating each indexer"
        ));
        let start = Instant::now();
        let mut chaos: Option<(ChaosSummary, Vec<String>)> = None;
        let mut converged_after = None;
        let mut last_line = String::new();
        let mut last_print = Instant::now();
        loop {
            let elapsed = start.elapsed();
            let last = self.poll_statuses();
            let (at_min, pools, sessions) = tally(&self.daemons, &last, min);
            if at_min == args.nodes && converged_after.is_none() {
                converged_after = Some(self.nodes_started.elapsed().as_secs_f64());
            }
            if let Some((c, had_it)) = chaos.as_mut() {
                self.follow_chaos(c, had_it, &last, elapsed, at_min == args.nodes);
            }
            let line = format!(
                "nodes at min({min}): {at_min}/{} · node pools {pools} · indexer sessions {sessions}",
                args.nodes
            );
            if self.view.tty || line != last_line || last_print.elapsed() >= Duration::from_secs(10) {
                self.view.status(&format!("[{:>4.0}s] {line}", elapsed.as_secs_f64()));
                last_line = line;
                last_print = Instant::now();
            }
            let recovered = chaos.as_ref().is_some_and(|(c, _)| c.recovered_after_secs.is_some());
            let done = at_min == args.nodes && (!args.chaos || recovered);
            let stop = elapsed >= args.duration || (args.until_converged && done);
            if stop || self.is_interrupted() {
                if !stop {
                    self.view.note("interrupted: stopping every daemon and summarising what was seen so far");
                }
                let chaos = chaos.map(|(c, _)| c);
                return Watched { last, chaos, converged_after, duration: start.elapsed() };
            }
            let chaos_due = if args.until_converged {
                converged_after.map(|t| Duration::from_secs_f64(t) + Duration::from_secs(3))
            } else {
                Some(args.duration / 2)
            };
            if args.chaos && chaos.is_none() && chaos_due.is_some_and(|due| elapsed >= due) {
                chaos = Some(self.kill_victim(&last, elapsed));
                continue;
            }
            let tick = if args.until_converged { Duration::from_millis(250) } else { Duration::from_secs(1) };
            let nap = tick.min(args.duration.saturating_sub(elapsed)).max(Duration::from_millis(50));
            sleep_unless(&self.interrupted, nap);
        }
    }

    /// SIGKILLs the indexer most nodes have live, to make the point; returns the chaos record and
    /// the nodes that had it.
    fn kill_victim(&mut self, last: &[Option<StatusReport>], elapsed: Duration) -> (ChaosSummary, Vec<String>) {
        let daemons = &self.daemons;
        let victim = (0..self.args.indexers)
            .max_by_key(|&i| last.iter().flatten().filter(|r| pool_has_live(r, &daemons[i].peer)).count())
            .unwrap_or(0);
        let had_it: Vec<String> = daemons
            .iter()
            .zip(last)
            .filter(|(d, r)| !d.indexer && r.as_ref().is_some_and(|r| pool_has_live(r, &daemons[victim].peer)))
            .map(|(d, _)| d.name.clone())
            .collect();
        let d = &mut self.daemons[victim];
        let _ = d.child.kill(); // SIGKILL
        let _ = d.child.wait();
        d.killed = true;
        let (name, peer) = (d.name.clone(), d.peer.clone());
        self.view.note(&format!("chaos: SIGKILL {name} ({}), live in {} node pools", short(&peer), had_it.len()));
        let chaos = ChaosSummary {
            killed: peer,
            at_secs: elapsed.as_secs_f64(),
            nodes_affected: had_it.len(),
            nodes_detected: 0,
            detected_after_secs: None,
            recovered_after_secs: None,
        };
        (chaos, had_it)
    }

    /// Updates the chaos record: how many affected nodes stopped counting the victim live, and
    /// when they all did and were all back at their minimum.
    fn follow_chaos(
        &mut self,
        c: &mut ChaosSummary,
        had_it: &[String],
        last: &[Option<StatusReport>],
        elapsed: Duration,
        all_at_min: bool,
    ) {
        let since = elapsed.as_secs_f64() - c.at_secs;
        let still = self
            .daemons
            .iter()
            .zip(last)
            .filter(|(d, r)| had_it.contains(&d.name) && r.as_ref().is_some_and(|r| pool_has_live(r, &c.killed)))
            .count();
        c.nodes_detected = c.nodes_affected - still;
        if still == 0 && c.detected_after_secs.is_none() {
            c.detected_after_secs = Some(since);
            self.view.note(&format!(
                "chaos: all {} affected nodes detected the dead indexer after {since:.1}s",
                c.nodes_affected
            ));
        }
        if still == 0 && all_at_min && c.recovered_after_secs.is_none() {
            c.recovered_after_secs = Some(since);
            self.view.note(&format!("chaos: every node is back at its minimum {since:.1}s after the kill"));
        }
    }

    /// Stops every daemon and builds the summary (removing the directory of a converged run unless
    /// asked to keep it).
    fn finish(mut self, w: Watched) -> DevnetSummary {
        let (args, min) = (self.args, self.min);
        let peers: Vec<PeerSummary> = self.daemons.iter().zip(&w.last).map(|(d, r)| peer_summary(d, r)).collect();
        let nodes_below_min = peers.iter().filter(|p| p.role == "node" && (!p.alive || p.live_pool < min)).count();
        let daemons_down = self.daemons.iter().zip(&w.last).filter(|(d, r)| !d.killed && r.is_none()).count();
        let interrupted = self.is_interrupted();
        let converged = !interrupted
            && nodes_below_min == 0
            && daemons_down == 0
            && w.chaos.as_ref().is_none_or(|c| c.recovered_after_secs.is_some());
        self.view.note("stopping every daemon (graceful shutdown)");
        stop_all(&mut self.daemons);
        let keep = args.keep || args.journal || !converged || args.dir.is_some();
        if !keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        DevnetSummary {
            runtime: self.runtime,
            indexers: args.indexers,
            nodes: args.nodes,
            duration_secs: w.duration.as_secs_f64(),
            min_indexers: min,
            converged,
            nodes_below_min,
            converged_after_secs: w.converged_after,
            interrupted,
            chaos: w.chaos,
            dir: if keep { self.dir.display().to_string() } else { String::new() },
            peers,
        }
    }
}

/// One daemon's line of the summary, from its last status.
fn peer_summary(d: &Daemon, r: &Option<StatusReport>) -> PeerSummary {
    PeerSummary {
        name: d.name.clone(),
        peer: d.peer.clone(),
        role: if d.indexer { "indexer" } else { "node" }.into(),
        runtime: d.runtime.into(),
        alive: r.is_some(),
        live_pool: r.as_ref().and_then(|r| r.pool.as_ref()).map(|p| p.live).unwrap_or(0),
        sessions: r.as_ref().and_then(|r| r.indexer.as_ref()).map(|i| i.sessions).unwrap_or(0),
        mean_score: r.as_ref().and_then(|r| r.pool.as_ref()).and_then(|p| {
            let live: Vec<f64> = p.entries.iter().filter(|e| e.state == "live").map(|e| e.score).collect();
            (!live.is_empty()).then(|| live.iter().sum::<f64>() / live.len() as f64)
        }),
    }
}

/// From now on SIGINT and SIGTERM set the returned flag instead of killing devnet, so it can stop
/// its daemons and summarise; a second signal exits at once (status 130).
fn watch_interrupts() -> Result<Arc<AtomicBool>, DevnetError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, i32::from(EXIT_INTERRUPTED), Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flag)))
            .map_err(io("installing signal handlers".to_string()))?;
    }
    Ok(flag)
}

/// Sleeps for `d`, waking early when `flag` is set.
fn sleep_unless(flag: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !flag.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn pool_has_live(r: &StatusReport, peer: &str) -> bool {
    r.pool.as_ref().is_some_and(|p| p.entries.iter().any(|e| e.peer == peer && e.state == "live"))
}

fn tally(daemons: &[Daemon], last: &[Option<StatusReport>], min: usize) -> (usize, String, String) {
    let mut at_min = 0;
    let mut pools = String::new();
    let mut sessions = Vec::new();
    for (d, r) in daemons.iter().zip(last) {
        if d.indexer {
            sessions.push(match r.as_ref().and_then(|r| r.indexer.as_ref()) {
                Some(ix) => ix.sessions.to_string(),
                None => "✗".into(),
            });
        } else {
            let live = r.as_ref().and_then(|r| r.pool.as_ref()).map(|p| p.live).unwrap_or(0);
            if live >= min {
                at_min += 1;
            }
            pools.push(char::from_digit(live.min(9) as u32, 10).unwrap_or('?'));
        }
    }
    (at_min, pools, format!("[{}]", sessions.join(" ")))
}

/// The watch view on stderr. On a terminal the status line is redrawn in place and notes print
/// above it; elsewhere (a log, a pipe) every line is a plain line, the status only when it changes
/// or every 10 s.
struct View {
    tty: bool,
    status_shown: bool,
}

impl View {
    fn new() -> Self {
        use std::io::IsTerminal;
        View { tty: std::io::stderr().is_terminal(), status_shown: false }
    }

    /// A line that stays.
    fn note(&mut self, line: &str) {
        if self.status_shown {
            eprint!("\r\x1b[2K");
            self.status_shown = false;
        }
        eprintln!("{line}");
    }

    /// The current status: in place on a terminal.
    fn status(&mut self, line: &str) {
        if self.tty {
            use std::io::Write;
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
            self.status_shown = true;
        } else {
            eprintln!("{line}");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    (runtime, exe): (&'static str, &Path),
    dir: &Path,
    key: &Path,
    name: &str,
    indexer: bool,
    seeds: Vec<String>,
    (min, max): (usize, usize),
    journal: bool,
) -> Result<Daemon, DevnetError> {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).map_err(io(format!("creating {}", data.display())))?;
    let mut c = DaemonConfig {
        mode: if indexer { "indexer" } else { "node" }.into(),
        listen: "127.0.0.1:0".parse().map_err(|_| DevnetError::Usage("bad listen address".into()))?,
        seeds,
        data_dir: data.clone(),
        network_key: key.to_path_buf(),
        relays: false,
        address_lookup: false,
        ..DaemonConfig::default()
    };
    c.protocol.name = name.into();
    if journal {
        c.journal = Some(dir.join(format!("{name}.journal")));
    }
    c.protocol.min_indexers = min;
    c.protocol.max_indexers = max;
    let config_path = dir.join(format!("{name}.toml"));
    std::fs::write(&config_path, c.to_toml()).map_err(io(format!("writing {}", config_path.display())))?;
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg("--config").arg(&config_path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    // The daemons read only their config file: the devnet must not inherit a user's overrides.
    for var in
        ["NODE_MODE", "INDEXER_ADDRESSES", "NAME", "MIN_INDEXER", "MAX_INDEXER", "PSK_PATH", "NODE_ENDPOINT_PORT"]
    {
        cmd.env_remove(var);
    }
    for var in ["OCD_LISTEN", "OCD_DATA_DIR", "OCD_METRICS", "SEARCH_TIMEOUT"] {
        cmd.env_remove(var);
    }
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let child = cmd.spawn().map_err(io(format!("starting {}", exe.display())))?;
    Ok(Daemon {
        name: name.into(),
        indexer,
        runtime,
        dir: data,
        child,
        peer: String::new(),
        address: String::new(),
        killed: false,
    })
}

fn wait_up(d: &mut Daemon, timeout: Duration) -> Result<(), DevnetError> {
    let deadline = Instant::now() + timeout;
    let log = d.dir.with_extension("log").display().to_string();
    loop {
        if let Ok(Some(status)) = d.child.try_wait() {
            return Err(DevnetError::Start { name: d.name.clone(), reason: format!("exited with {status}"), log });
        }
        if let Some(r) = d.status() {
            d.peer = r.peer_id.clone();
            d.address = r.address.clone();
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DevnetError::Start {
                name: d.name.clone(),
                reason: "no answer on its control socket".into(),
                log,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop_all(daemons: &mut [Daemon]) {
    for d in daemons.iter().filter(|d| !d.killed) {
        let _ = control::request(&d.socket(), &ControlCommand::Shutdown);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for d in daemons.iter_mut().filter(|d| !d.killed) {
        loop {
            match d.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = d.child.kill();
                    let _ = d.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn print_summary(s: &DevnetSummary) {
    println!();
    println!(
        "{:<12} {:<16} {:<8} {:<7} {:>5} {:>8} {:>7}",
        "name", "peer", "role", "runtime", "pool", "sessions", "score"
    );
    for p in &s.peers {
        println!(
            "{:<12} {:<16} {:<8} {:<7} {:>5} {:>8} {:>7}",
            p.name,
            short(&p.peer),
            p.role,
            p.runtime,
            if p.alive { p.live_pool.to_string() } else { "✗".into() },
            p.sessions,
            p.mean_score.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into())
        );
    }
    println!(
        "pool: live indexers in the peer's own pool (an indexer keeps one only of the indexers it was seeded \
         with) · sessions: nodes heartbeating this indexer · score: mean score of the live pool entries"
    );
    println!();
    if let Some(c) = &s.chaos {
        println!(
            "chaos: killed {} at {:.0}s; it was live in {} node pools; {} detected it{}; {}",
            short(&c.killed),
            c.at_secs,
            c.nodes_affected,
            c.nodes_detected,
            c.detected_after_secs.map(|t| format!(" (all within {t:.1}s)")).unwrap_or_default(),
            match c.recovered_after_secs {
                Some(r) => format!("every node back at its minimum after {r:.1}s"),
                None => "the nodes did NOT all recover".into(),
            }
        );
    }
    println!(
        "{} runtime, {} indexers, {} nodes, {:.0}s: {} ({} nodes below their minimum of {}){}",
        s.runtime,
        s.indexers,
        s.nodes,
        s.duration_secs,
        if s.interrupted {
            "INTERRUPTED"
        } else if s.converged {
            "CONVERGED"
        } else {
            "NOT CONVERGED"
        },
        s.nodes_below_min,
        s.min_indexers,
        s.converged_after_secs.map(|t| format!("; all nodes first at minimum after {t:.1}s")).unwrap_or_default()
    );
    if !s.dir.is_empty() {
        println!("data and logs: {}", s.dir);
    }
}
