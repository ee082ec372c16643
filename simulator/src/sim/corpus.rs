//! `ocd-sim run --dump-corpus DIR`: fuzzing seeds from a simulated run. A sample of the peers
//! (spread over the node-only and the indexer peers) have their first life recorded as
//! [`Seed`]s — setup and every input, at the peer's own time — written to
//! `DIR/peer_node/` and `DIR/peer_indexer/`, the folders of the fuzz targets that read them. A
//! seed starts the fuzzer from states a hand-written script rarely reaches (a full pool, a DHT
//! holding real records, a search mesh in motion).
//!
//! Recording reads the inputs and writes nothing into the run: the trace hash is the same with or
//! without it.

use super::{PeerIx, SimPeer};
use ocd_core::journal::Seed;
use ocd_core::proto::{Input, Timestamp};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to record.
#[derive(Debug, Clone)]
pub struct DumpSpec {
    /// Where the seeds go (`<dir>/peer_node/`, `<dir>/peer_indexer/`).
    pub dir: PathBuf,
    /// Peers recorded of each kind (node-only; with the indexer role) at most.
    pub per_kind: usize,
    /// Inputs recorded per peer at most.
    pub max_steps: usize,
    /// Bytes per seed at most (a step that would pass it ends the recording).
    pub max_bytes: usize,
}

impl DumpSpec {
    /// The defaults: 4 peers of each kind, 400 inputs and 128 KiB each.
    pub fn new(dir: PathBuf) -> DumpSpec {
        DumpSpec { dir, per_kind: 4, max_steps: 400, max_bytes: 128 << 10 }
    }
}

/// One peer's recording.
struct Recording {
    file: String,
    target: &'static str,
    bytes: Vec<u8>,
    steps: usize,
    started: bool,
    done: bool,
}

/// The recordings of a run.
pub(super) struct CorpusDump {
    spec: DumpSpec,
    peers: BTreeMap<PeerIx, Recording>,
}

impl CorpusDump {
    /// Picks the peers to record: of each kind, `per_kind` spread evenly over the peer list.
    pub(super) fn new(spec: DumpSpec, peers: &[SimPeer], scenario: &str, seed: u64) -> CorpusDump {
        let mut chosen = BTreeMap::new();
        for indexer in [false, true] {
            let kind: Vec<usize> = (0..peers.len()).filter(|i| peers[*i].roles.indexer == indexer).collect();
            let n = spec.per_kind.min(kind.len());
            for k in 0..n {
                let i = kind[k * kind.len() / n];
                let file = format!("sim-{}-s{seed}-{}", sanitize(scenario), sanitize(&peers[i].name));
                let target = if indexer { "peer_indexer" } else { "peer_node" };
                chosen.insert(
                    i as PeerIx,
                    Recording { file, target, bytes: Vec::new(), steps: 0, started: false, done: false },
                );
            }
        }
        CorpusDump { spec, peers: chosen }
    }

    /// Peer `p` starts (at its own time `local`): its first life is recorded, a later one is not.
    pub(super) fn start(&mut self, p: PeerIx, sp: &SimPeer, local: u64) {
        let Some(r) = self.peers.get_mut(&p) else { return };
        if r.started {
            r.done = true;
            return;
        }
        r.started = true;
        r.bytes = Seed::of(&sp.setup, Timestamp(local)).header();
    }

    /// Peer `p` is handed `input` at its own time `local`.
    pub(super) fn input(&mut self, p: PeerIx, local: u64, input: &Input) {
        let Some(r) = self.peers.get_mut(&p) else { return };
        if !r.started || r.done {
            return;
        }
        let before = r.bytes.len();
        Seed::step(&mut r.bytes, Timestamp(local), input);
        if r.bytes.len() > self.spec.max_bytes {
            r.bytes.truncate(before);
            r.done = true;
            return;
        }
        r.steps += 1;
        if r.steps >= self.spec.max_steps {
            r.done = true;
        }
    }

    /// Writes every started recording; returns the files and their step counts.
    pub(super) fn write(&self) -> std::io::Result<Vec<(PathBuf, usize)>> {
        let mut written = Vec::new();
        for r in self.peers.values().filter(|r| r.started && r.steps > 0) {
            let dir = self.spec.dir.join(r.target);
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(&r.file);
            write_file(&path, &r.bytes)?;
            written.push((path, r.steps));
        }
        Ok(written)
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// A name safe in a file name.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}
