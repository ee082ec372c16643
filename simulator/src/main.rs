//! `ocd-sim`: run a scenario, the fixed bench, or plot a report.

use anyhow::Context;
use clap::{Parser, Subcommand};
use ocd_core::proto::SigMemoStats;
use ocd_simulator::bench::{self, BenchParams};
use ocd_simulator::{DumpSpec, Report, Scenario, Simulation};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// mimalloc instead of the system allocator: a run allocates and frees millions of small values
/// (messages, map nodes, action buffers), and glibc's malloc was about a tenth of its profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Deterministic simulator of many ocd peers.
#[derive(Parser)]
#[command(name = "ocd-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario and write its report.
    Run {
        /// The scenario file (TOML, DESIGN.md §5).
        scenario: PathBuf,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Print the JSON report on stdout instead of the summary.
        #[arg(long)]
        json: bool,
        /// Log every message, link change and event of these peers (targets: "g/i", "g/a..b", "g")
        /// to stderr.
        #[arg(long, value_delimiter = ',')]
        trace: Vec<String>,
        /// Write fuzzing seeds here: the first inputs of a sample of node and indexer peers, in
        /// `DIR/peer_node/` and `DIR/peer_indexer/` (the seed corpora of `fuzz/`).
        #[arg(long, value_name = "DIR")]
        dump_corpus: Option<PathBuf>,
        /// Check every signature with ed25519 instead of through the run's shared memo (the same
        /// results and trace hash, slower).
        #[arg(long)]
        no_sig_memo: bool,
        /// Threads the peers' machines run on (default: the machine's cores). The same trace
        /// hash and report with any number; scenarios with byzantine behaviours or search, send or
        /// resource workloads run on one.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Run the fixed large scenario and print throughput.
    Bench {
        /// Node-role peers.
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// Indexer-role peers.
        #[arg(long, default_value_t = 100)]
        indexers: usize,
        /// Simulated time (e.g. "1h", "10m").
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Check every signature with ed25519 instead of through the run's shared memo (the same
        /// results and trace hash, slower).
        #[arg(long)]
        no_sig_memo: bool,
        /// Threads the peers' machines run on (default: the machine's cores). The same trace
        /// hash and report with any number; scenarios with byzantine behaviours or search, send or
        /// resource workloads run on one.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Replay a real daemon's journal (`ocd run --journal FILE`): rebuild its peer, feed it the
    /// recorded inputs and compare its outputs' running hash step by step. Exits 0 when the replay
    /// is identical, 1 naming the first step that differs, 2 on an unreadable or corrupt journal.
    Replay {
        /// The journal.
        journal: PathBuf,
        /// The peer's key file (default: the one the journal names).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The network key file (default: the one the journal names).
        #[arg(long)]
        network_key: Option<PathBuf>,
    },
    /// Draw a report's pool timeline as SVG.
    Plot {
        /// A JSON report written by `run --report`.
        report: PathBuf,
        /// The SVG file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

fn write_report(path: &std::path::Path, report: &Report) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write report {}", path.display()))
}

fn main() -> ExitCode {
    let command = match Cli::parse().command {
        Command::Replay { journal, key, network_key } => return replay(&journal, key, network_key),
        other => other,
    };
    match real_main(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ocd-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `ocd-sim replay`.
fn replay(path: &PathBuf, key: Option<PathBuf>, network_key: Option<PathBuf>) -> ExitCode {
    use ocd_core::host::identity;
    use ocd_core::journal::{self, JournalError, Reader};
    let fail = |code: u8, msg: String| {
        eprintln!("ocd-sim replay: {msg}");
        ExitCode::from(code)
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return fail(2, format!("{}: {e}", path.display())),
    };
    let setup = match Reader::open(&bytes) {
        Ok((s, _)) => s,
        Err(e) => return fail(2, format!("{}: {e}", path.display())),
    };
    let key_path = key.unwrap_or_else(|| PathBuf::from(&setup.key_file));
    let keypair = match identity::load_key(&key_path) {
        Ok(k) => k,
        Err(e) => return fail(2, format!("{e} (give the peer's key with --key)")),
    };
    let nk_path = network_key.unwrap_or_else(|| PathBuf::from(&setup.network_key_file));
    let nk = match identity::load_network_key(&nk_path) {
        Ok(k) => k,
        Err(e) => return fail(2, format!("{e} (give the network key with --network-key)")),
    };
    println!(
        "journal {}: peer {} ({}), roles {}{}, written by {}",
        path.display(),
        setup.peer_id,
        setup.did,
        if setup.roles.node { "node" } else { "" },
        if setup.roles.indexer { if setup.roles.node { ",indexer" } else { "indexer" } } else { "" },
        setup.software
    );
    let start = Instant::now();
    match journal::replay(&bytes, keypair, nk, Instant::now()) {
        Ok(r) => {
            println!(
                "replayed {} steps and {} outputs identically in {:.2} s{}",
                r.steps,
                r.outputs,
                start.elapsed().as_secs_f64(),
                if r.clean_end { " (the run ended cleanly)" } else { " (the run did not end cleanly)" }
            );
            if let Some(e) = r.cut_short {
                println!("the journal is cut short: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e @ JournalError::Diverged { .. }) => fail(1, format!("{}: {e}", path.display())),
        Err(e) => fail(2, format!("{}: {e}", path.display())),
    }
}

/// `ocd-sim run`: one scenario, its summary (or JSON report) printed.
fn run(
    scenario: &std::path::Path,
    seed: Option<u64>,
    report: Option<&std::path::Path>,
    json: bool,
    trace: &[String],
    dump_corpus: Option<PathBuf>,
    speed: Speed,
) -> anyhow::Result<()> {
    let mut sc = Scenario::load(scenario)?;
    if let Some(s) = seed {
        sc = sc.with_seed(s);
    }
    let mut sim = Simulation::new(sc)?;
    speed.apply(&mut sim)?;
    let unknown = sim.trace_peers(trace);
    if !unknown.is_empty() {
        anyhow::bail!("--trace: no such peer(s): {}", unknown.join(", "));
    }
    if let Some(dir) = &dump_corpus {
        sim.dump_corpus(DumpSpec::new(dir.clone()));
    }
    let r = sim.run_to_end();
    if dump_corpus.is_some() {
        for (path, steps) in sim.write_corpus()? {
            eprintln!("seed {} ({steps} inputs)", path.display());
        }
    }
    std::mem::forget(sim); // exiting soon: skip freeing every peer
    if let Some(path) = &report {
        write_report(path, &r)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", r.summary());
        if let Some(path) = &report {
            println!("report written to {}", path.display());
        }
    }
    Ok(())
}

/// `ocd-sim bench`'s lines: speed, traffic by kind and by minute, and the run's outcome.
/// How a run goes about its work: neither changes its outcome.
struct Speed {
    no_sig_memo: bool,
    threads: Option<usize>,
}

impl Speed {
    fn apply(self, sim: &mut Simulation) -> anyhow::Result<()> {
        if self.no_sig_memo {
            sim.check_signatures_directly();
        }
        // The machine's cores by default.
        let threads = self.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        sim.set_threads(threads)?;
        Ok(())
    }
}

fn print_bench(r: &Report, peers: usize, setup_s: f64, memo: Option<SigMemoStats>) {
    let wall_s = (r.wall_ms.max(1)) as f64 / 1000.0;
    println!("setup           {setup_s:.2} s (keys and peers)");
    println!("wall            {wall_s:.2} s");
    println!("events          {}", r.events);
    println!("messages        {}", r.messages);
    println!(
        "per peer-minute {:.1} messages, {:.0} bytes",
        r.messages_per_peer_minute,
        r.network.bytes as f64 / r.peer_minutes.max(f64::MIN_POSITIVE)
    );
    let mut kinds: Vec<_> = r.messages_by_kind.iter().collect();
    kinds.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    for (k, t) in kinds.iter().take(12) {
        println!(
            "  {k:<22} {:>7.2} /peer-min  {:>12} msgs  {:>7.0} B each",
            t.per_peer_minute,
            t.count,
            t.bytes as f64 / t.count.max(1) as f64
        );
    }
    let minutes: Vec<String> = r.traffic_timeline.iter().map(|w| format!("{:.0}", w.per_peer_minute)).collect();
    println!("by minute       {} (messages per peer-minute)", minutes.join(" "));
    println!("events/s        {:.0}", r.events as f64 / wall_s);
    println!("messages/s      {:.0}", r.messages as f64 / wall_s);
    println!("peer-s / wall-s {:.0}", peers as f64 * (r.sim_ms as f64 / 1000.0) / wall_s);
    println!("sim-s / wall-s  {:.1}", (r.sim_ms as f64 / 1000.0) / wall_s);
    match memo {
        Some(m) => {
            println!("signature memo  {} checks answered, {} verified ({} held at the end)", m.hits, m.misses, m.held)
        }
        None => println!("signature memo  off (every signature verified)"),
    }
    println!(
        "final pool      mean live {:.2}, {} of {} nodes below min {}",
        r.pool.final_mean_live, r.pool.final_nodes_below_min, r.pool.final_nodes, r.pool.min_target
    );
    if let Some(l) = &r.lookups {
        let pct = if l.issued == 0 { 0.0 } else { l.ok as f64 * 100.0 / l.issued as f64 };
        println!(
            "lookups         {} of {} ok ({pct:.2}%), p50 {} ms, hops p50 {}; failed: {} with no indexer to ask, {} refused by the asker (get windows full), {} whose target had no indexer yet, {} misses",
            l.ok,
            l.issued,
            l.p50_ms.map_or("-".into(), |v| v.to_string()),
            l.hops_p50.map_or("-".into(), |v| v.to_string()),
            l.failed_no_indexer,
            l.failed_own_budget,
            l.failed_target_unadmitted,
            l.failed.saturating_sub(l.failed_no_indexer + l.failed_own_budget + l.failed_target_unadmitted)
        );
    }
    if let Some(rec) = &r.records {
        println!(
            "records         {} stored, {} rejected; {:.0} per indexer at the end",
            rec.stored, rec.rejected, rec.mean_records_per_indexer
        );
    }
    println!("bans            {} honest, {} byzantine", r.bans.honest, r.bans.byzantine);
    println!("invariant violations {}", r.invariant_violation_count);
    println!("trace_hash      {}", r.trace_hash);
}

fn real_main(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { scenario, seed, report, json, trace, dump_corpus, no_sig_memo, threads } => {
            run(&scenario, seed, report.as_deref(), json, &trace, dump_corpus, Speed { no_sig_memo, threads })?
        }
        // Answered by `replay`, with its own exit codes.
        Command::Replay { journal, key, network_key } => {
            let _ = replay(&journal, key, network_key);
        }
        Command::Bench { nodes, indexers, duration, seed, report, no_sig_memo, threads } => {
            let sc = bench::scenario(BenchParams { nodes, indexers, duration, seed })?;
            let peers = sc.peer_count();
            println!(
                "bench: {nodes} nodes + {indexers} indexers, {} simulated, seed {seed}",
                humantime::format_duration(duration)
            );
            let setup = Instant::now();
            let mut sim = Simulation::new(sc)?;
            Speed { no_sig_memo, threads }.apply(&mut sim)?;
            let setup_s = setup.elapsed().as_secs_f64();
            let r = sim.run_to_end();
            let memo = sim.sig_memo_stats();
            let (windows, windowed, in_parallel) = sim.parallel_windows();
            println!("threads         {}", sim.threads());
            if windows > 0 {
                println!(
                    "windows         {windows}, {:.1} events each, {:.1} % of them run in parallel",
                    windowed as f64 / windows as f64,
                    in_parallel as f64 * 100.0 / windowed.max(1) as f64
                );
                let [admit, run, replay, in_jobs] = sim.parallel_phases().map(|d| d.as_secs_f64());
                println!(
                    "window phases   admit {admit:.1} s, jobs {run:.1} s ({in_jobs:.1} s of threads' time in them), replay {replay:.1} s (wall)"
                );
            }
            // Freeing every peer takes a noticeable share of a bench; the process exits right after.
            std::mem::forget(sim);
            print_bench(&r, peers, setup_s, memo);
            if let Some(path) = &report {
                write_report(path, &r)?;
            }
        }
        Command::Plot { report, out } => {
            let text = std::fs::read_to_string(&report).with_context(|| format!("cannot read {}", report.display()))?;
            let r: Report =
                serde_json::from_str(&text).with_context(|| format!("{} is not a report", report.display()))?;
            std::fs::write(&out, ocd_simulator::plot::svg(&r))
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}
