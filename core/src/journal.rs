//! Journals of a real peer's run, and their replay (DESIGN §10): `ocd run --journal FILE` records
//! every [`Input`] handed to the core with its `now`, and a running hash of the [`Output`]s it
//! gave back; `ocd-sim replay FILE` rebuilds the peer and feeds it the same inputs, comparing the
//! hashes step by step. A bug seen in production replays on a laptop.
//!
//! ## Format (version [`VERSION`])
//!
//! ```text
//! magic "OCDJRNL\0" · version u32 LE · record*
//! record = length u32 LE · postcard bytes · the first 8 bytes of their BLAKE3 hash
//! first record: the Setup; then Step records; an End record after a clean shutdown
//! ```
//!
//! A [`Step`](Record::Step) carries, besides the input and its time, how many outputs the host
//! had taken from the core before it handed the input over, and the running hash of them (each
//! output chained as `h = BLAKE3(h ‖ output)`: sends and persists by their postcard encoding, the
//! others by their `Debug` text). The host drains outputs lazily (it may
//! hand the core an input while earlier outputs wait), so the replay drains exactly as many before
//! each input. The setup holds no secret: the key and the network key are named by their files, and
//! the replay reads them (or takes others).
//!
//! Every record carries its own checksum, so a changed byte is refused at the record it hit, named
//! by its step; a journal cut short (a crash, a size cap) replays up to its last whole record and
//! says so.

use crate::proto::{
    Addr, Config, Did, Input, Keypair, Output, Peer, PeerAddr, PeerId, PeerSetup, Roles, SigCheck, Timestamp,
};
use serde::{Deserialize, Serialize};

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"OCDJRNL\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Largest record accepted (an input is at most a frame, 64 KiB; a restored state may be larger).
pub const MAX_RECORD: usize = 64 << 20;

/// How the peer was built: everything of its [`PeerSetup`] but the secrets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalSetup {
    /// The peer's id (the replay checks the key it is given against it).
    pub peer_id: PeerId,
    /// The key file the daemon used.
    pub key_file: String,
    /// The network key file the daemon used.
    pub network_key_file: String,
    /// Its DID.
    pub did: Did,
    /// Its roles.
    pub roles: Roles,
    /// Its protocol configuration.
    pub config: Config,
    /// Its seeds.
    pub seeds: Vec<PeerAddr>,
    /// The seed of its deterministic RNG.
    pub rng_seed: u64,
    /// The addresses it advertised.
    pub addrs: Vec<Addr>,
    /// The `now` it was built with.
    pub started: Timestamp,
    /// The software that wrote the journal (`ocd 0.1.0 (tokio)`).
    pub software: String,
}

/// One record after the setup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// An input handed to the core.
    Step {
        /// Outputs taken from the core before it.
        outputs: u64,
        /// The running hash of those outputs.
        hash: [u8; 32],
        /// Its time.
        now: Timestamp,
        /// The input.
        input: Box<Input>,
    },
    /// The run ended cleanly.
    End {
        /// Outputs taken from the core in all.
        outputs: u64,
        /// Their running hash.
        hash: [u8; 32],
    },
}

/// What goes wrong reading or replaying a journal. Each names the step (the setup is step 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// Not a journal, or another version.
    #[error("not an ocd journal of version {VERSION}: {0}")]
    Format(String),
    /// A record's checksum or encoding is wrong.
    #[error("step {step} (byte {offset}): corrupt record: {why}")]
    Corrupt {
        /// The step.
        step: u64,
        /// Where the record starts.
        offset: usize,
        /// What is wrong.
        why: String,
    },
    /// The journal ends inside a record.
    #[error("step {step} (byte {offset}): the journal ends inside this record (cut short: a crash or a size cap)")]
    Truncated {
        /// The step.
        step: u64,
        /// Where the record starts.
        offset: usize,
    },
    /// The replayed peer did something else.
    #[error("step {step}: the replay differs: {why}")]
    Diverged {
        /// The first step whose outputs differ.
        step: u64,
        /// How.
        why: String,
    },
    /// The key given for the replay is not the journal's peer's.
    #[error("the key is peer {given}, the journal is peer {journal}")]
    WrongKey {
        /// The key's peer id.
        given: PeerId,
        /// The journal's.
        journal: PeerId,
    },
}

/// Frames one record: length, postcard, checksum.
fn frame<T: Serialize>(value: &T) -> Vec<u8> {
    let body = postcard::to_stdvec(value).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&blake3::hash(&body).as_bytes()[..8]);
    out
}

/// The running hash of the outputs taken from a core, and the records that carry it.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    hash: [u8; 32],
    outputs: u64,
    steps: u64,
}

impl Recorder {
    /// The journal's first bytes: magic, version and the setup record.
    pub fn header(setup: &JournalSetup) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&frame(setup));
        out
    }

    /// Chains one output taken from the core into the hash.
    pub fn output(&mut self, o: &Output) {
        self.hash = chain(&self.hash, o);
        self.outputs += 1;
    }

    /// The record of an input about to be handed to the core.
    pub fn step(&mut self, now: Timestamp, input: &Input) -> Vec<u8> {
        self.steps += 1;
        frame(&RecordRef::Step { outputs: self.outputs, hash: self.hash, now, input })
    }

    /// The record of a clean end.
    pub fn end(&self) -> Vec<u8> {
        frame(&Record::End { outputs: self.outputs, hash: self.hash })
    }

    /// Inputs recorded so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }
}

/// [`Record::Step`] by reference: the same postcard encoding (variant 0, same fields), so
/// recording does not clone the input.
#[derive(Serialize)]
enum RecordRef<'a> {
    Step { outputs: u64, hash: [u8; 32], now: Timestamp, input: &'a Input },
}

fn chain(hash: &[u8; 32], o: &Output) -> [u8; 32] {
    /// Streams `Debug` text into the hasher, without building the string.
    struct Sink(blake3::Hasher);
    impl std::fmt::Write for Sink {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.update(s.as_bytes());
            Ok(())
        }
    }
    let mut h = Sink(blake3::Hasher::new());
    h.0.update(hash);
    // The bulky outputs by their wire encoding (cheap), the others by their `Debug` text.
    let encoded = match o {
        Output::Send { to, message } => {
            h.0.update(b"send");
            h.0.update(to.as_bytes());
            postcard::to_stdvec(message).ok()
        }
        Output::Persist(p) => {
            h.0.update(b"persist");
            postcard::to_stdvec(p).ok()
        }
        _ => None,
    };
    match encoded {
        Some(bytes) => {
            h.0.update(&bytes);
        }
        None => {
            let _ = std::fmt::Write::write_fmt(&mut h, format_args!("{o:?}"));
        }
    }
    *h.0.finalize().as_bytes()
}

/// Reads a journal's records in order.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    step: u64,
}

impl<'a> Reader<'a> {
    /// Checks the magic and version and reads the setup.
    pub fn open(bytes: &'a [u8]) -> Result<(JournalSetup, Reader<'a>), JournalError> {
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(JournalError::Format("no journal magic".into()));
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != VERSION {
            return Err(JournalError::Format(format!("version {version}")));
        }
        let mut r = Reader { bytes, pos: 12, step: 0 };
        let setup = match r.record::<JournalSetup>()? {
            Some(s) => s,
            None => return Err(JournalError::Truncated { step: 0, offset: 12 }),
        };
        Ok((setup, r))
    }

    /// The next record (`None` at the end of the bytes).
    pub fn next_record(&mut self) -> Result<Option<Record>, JournalError> {
        self.step += 1;
        self.record()
    }

    /// The step of the last record read.
    pub fn step(&self) -> u64 {
        self.step
    }

    fn record<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, JournalError> {
        let (step, offset) = (self.step, self.pos);
        let rest = &self.bytes[self.pos..];
        if rest.is_empty() {
            return Ok(None);
        }
        let corrupt = |why: String| JournalError::Corrupt { step, offset, why };
        if rest.len() < 4 {
            return Err(JournalError::Truncated { step, offset });
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_RECORD {
            return Err(corrupt(format!("length {len} is over {MAX_RECORD}")));
        }
        if rest.len() < 4 + len + 8 {
            return Err(JournalError::Truncated { step, offset });
        }
        let body = &rest[4..4 + len];
        if blake3::hash(body).as_bytes()[..8] != rest[4 + len..4 + len + 8] {
            return Err(corrupt("checksum mismatch".into()));
        }
        let value = postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))?;
        self.pos += 4 + len + 8;
        Ok(Some(value))
    }
}

/// What a replay did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Inputs fed.
    pub steps: u64,
    /// Outputs compared.
    pub outputs: u64,
    /// Whether the journal ended with a clean-shutdown record.
    pub clean_end: bool,
    /// The error that cut it short after `steps` identical steps (a truncated tail), if any.
    pub cut_short: Option<JournalError>,
}

/// The setup of a journal's peer, with its secrets supplied by the caller.
pub fn peer_setup(
    s: &JournalSetup,
    keypair: Keypair,
    network_key: [u8; 32],
    anchor: std::time::Instant,
) -> Result<PeerSetup, JournalError> {
    if keypair.peer_id() != s.peer_id {
        return Err(JournalError::WrongKey { given: keypair.peer_id(), journal: s.peer_id });
    }
    Ok(PeerSetup {
        config: s.config.clone(),
        keypair,
        did: s.did.clone(),
        network_key,
        roles: s.roles,
        seeds: s.seeds.clone(),
        rng_seed: s.rng_seed,
        addrs: s.addrs.clone(),
        clock_anchor: Some(anchor),
        sig_check: SigCheck::direct(),
    })
}

/// Replays `bytes`: rebuilds the peer, feeds it every input, and compares the outputs' hash
/// before each step. The first difference is an error naming its step; a tail cut short inside a
/// record ends the replay with what matched so far ([`Replayed::cut_short`]).
pub fn replay(
    bytes: &[u8],
    keypair: Keypair,
    network_key: [u8; 32],
    anchor: std::time::Instant,
) -> Result<Replayed, JournalError> {
    let (setup, mut reader) = Reader::open(bytes)?;
    let mut peer = Peer::new(peer_setup(&setup, keypair, network_key, anchor)?, setup.started);
    let mut rec = Recorder::default();
    let mut done = Replayed { steps: 0, outputs: 0, clean_end: false, cut_short: None };
    loop {
        let record = match reader.next_record() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(done),
            Err(e @ JournalError::Truncated { .. }) => {
                done.cut_short = Some(e);
                return Ok(done);
            }
            Err(e) => return Err(e),
        };
        let step = reader.step();
        let (outputs, hash) = match &record {
            Record::Step { outputs, hash, .. } | Record::End { outputs, hash } => (*outputs, *hash),
        };
        while rec.outputs < outputs {
            match peer.poll_output() {
                Some(o) => rec.output(&o),
                None => {
                    return Err(JournalError::Diverged {
                        step,
                        why: format!("the live peer had given {outputs} outputs by then, the replay {}", rec.outputs),
                    });
                }
            }
        }
        if rec.hash != hash {
            return Err(JournalError::Diverged { step, why: "the outputs before this step differ".into() });
        }
        done.outputs = rec.outputs;
        match record {
            Record::Step { now, input, .. } => {
                peer.handle(*input, now);
                done.steps += 1;
            }
            Record::End { .. } => {
                done.clean_end = true;
                return Ok(done);
            }
        }
    }
}

// ---- fuzzing seeds ------------------------------------------------------------------------

/// A fuzzing seed's first bytes (see [`Seed`]).
pub const SEED_MAGIC: &[u8; 8] = b"OCDSEED\0";

/// A simulated peer's run as a fuzzing seed (`ocd-sim run --dump-corpus DIR`): its whole setup,
/// **secret key included** (a simulated peer's key is derived from the scenario's seed, so it is
/// no secret; a real daemon's run is a [journal](self) instead), then the inputs it was handed.
///
/// ```text
/// magic "OCDSEED\0" · postcard(Seed) · postcard(SeedStep)*
/// ```
///
/// Steps carry no length or checksum, so a fuzzer's mutation of one step changes that step (or
/// ends the run there) rather than the whole input: the peer fuzz targets read every step that
/// decodes, up to the first that does not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Seed {
    /// The peer's secret key (simulated: no secret).
    pub secret: [u8; 32],
    /// The network key.
    pub network_key: [u8; 32],
    /// Its DID.
    pub did: Did,
    /// Its roles.
    pub roles: Roles,
    /// Its configuration.
    pub config: Config,
    /// Its bootstrap peers.
    pub seeds: Vec<PeerAddr>,
    /// Its rng seed.
    pub rng_seed: u64,
    /// Its own addresses.
    pub addrs: Vec<Addr>,
    /// The time it was started at (its own clock).
    pub started: Timestamp,
}

/// One input of a [`Seed`], at its peer's time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedStep {
    /// The peer's time.
    pub now: Timestamp,
    /// The input.
    pub input: Input,
}

/// [`SeedStep`] by reference (the same encoding), so recording does not clone the input.
#[derive(Serialize)]
struct SeedStepRef<'a> {
    now: Timestamp,
    input: &'a Input,
}

impl Seed {
    /// The seed of a peer built from `setup` at `started` (its own clock).
    pub fn of(setup: &PeerSetup, started: Timestamp) -> Seed {
        Seed {
            secret: setup.keypair.secret_bytes(),
            network_key: setup.network_key,
            did: setup.did.clone(),
            roles: setup.roles,
            config: setup.config.clone(),
            seeds: setup.seeds.clone(),
            rng_seed: setup.rng_seed,
            addrs: setup.addrs.clone(),
            started,
        }
    }

    /// The seed's header bytes: magic and setup; [`Seed::step`]s follow.
    pub fn header(&self) -> Vec<u8> {
        let mut out = SEED_MAGIC.to_vec();
        out.extend_from_slice(&postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// One step's bytes, appended to `out`.
    pub fn step(out: &mut Vec<u8>, now: Timestamp, input: &Input) {
        if let Ok(bytes) = postcard::to_stdvec(&SeedStepRef { now, input }) {
            out.extend_from_slice(&bytes);
        }
    }

    /// Reads a seed: its setup and every step that decodes, up to the first that does not (or
    /// `max_steps`). `None` if `bytes` is not a seed or its setup does not decode.
    pub fn read(bytes: &[u8], max_steps: usize) -> Option<(Seed, Vec<SeedStep>)> {
        let rest = bytes.strip_prefix(SEED_MAGIC.as_slice())?;
        let (seed, mut rest) = postcard::take_from_bytes::<Seed>(rest).ok()?;
        let mut steps = Vec::new();
        while !rest.is_empty() && steps.len() < max_steps {
            let Ok((step, tail)) = postcard::take_from_bytes::<SeedStep>(rest) else { break };
            steps.push(step);
            rest = tail;
        }
        Some((seed, steps))
    }

    /// The peer's setup (`anchor`: the search mesh's clock anchor).
    pub fn peer_setup(&self, anchor: std::time::Instant) -> PeerSetup {
        PeerSetup {
            config: self.config.clone(),
            keypair: Keypair::from_secret_bytes(self.secret),
            did: self.did.clone(),
            network_key: self.network_key,
            roles: self.roles,
            seeds: self.seeds.clone(),
            rng_seed: self.rng_seed,
            addrs: self.addrs.clone(),
            clock_anchor: Some(anchor),
            sig_check: SigCheck::direct(),
        }
    }
}
