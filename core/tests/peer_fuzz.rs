//! Fuzzing a whole `Peer` (node + indexer) with arbitrary inputs from authenticated peers: it never
//! panics, never spins (bounded outputs per input), never sends to itself, and its pool stays
//! within bounds with no duplicates.

use ocd_core::proto::PeerAddr;
use ocd_core::proto::hello_mac;
use ocd_core::proto::wire::{
    CandidatesRequest, CandidatesResponse, ChallengeEntry, Envelope, Heartbeat, HeartbeatKind, HeartbeatResponse,
    Hello, HelloProof, IndexerMessage, LinkMessage, RefuseReason, Refused, RequestId, Standing, WitnessQuery,
    WitnessReport,
};
use ocd_core::proto::{Config, Input, Keypair, Output, Peer, PeerId, PeerSetup, Roles, Timestamp};
use proptest::prelude::*;
use std::collections::BTreeSet;

const KEY: [u8; 32] = [3; 32];
const REMOTES: usize = 5;

fn remote(i: usize) -> PeerId {
    Keypair::derive(77, &format!("remote{i}")).peer_id()
}

#[derive(Clone, Debug)]
enum Op {
    Msg { from: usize, msg: MsgSpec },
    Advance(u64),
    WakeUp,
    Down(usize),
    Reconnect(usize),
}

#[derive(Clone, Debug)]
enum MsgSpec {
    Heartbeat { req: u64, probe: bool, need: u16, challenges: Vec<usize>, want_witnesses: bool },
    Response { req: u64, fill: f64, peers: u32, max: u32, born: u64, found: bool, sugg: Vec<usize>, migrate: bool },
    Refused { req: u64, reason: u8, sugg: Vec<usize> },
    Leave,
    WitnessQuery { req: u64, about: usize },
    WitnessReport { req: u64, seen: bool, born: u64, fill: f64 },
    CandidatesRequest { req: u64, count: u16 },
    CandidatesResponse { req: u64, cands: Vec<usize> },
    StrayHello,
}

fn small_req() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..16, any::<u64>()]
}

fn idxs() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0usize..REMOTES + 1, 0..4)
}

fn weird_f64() -> impl Strategy<Value = f64> {
    prop_oneof![0.0f64..1.0, Just(f64::NAN), Just(f64::INFINITY), Just(-1.0), Just(7.5)]
}

fn msg_spec() -> impl Strategy<Value = MsgSpec> {
    prop_oneof![
        (small_req(), any::<bool>(), any::<u16>(), idxs(), any::<bool>()).prop_map(
            |(req, probe, need, challenges, want_witnesses)| MsgSpec::Heartbeat {
                req,
                probe,
                need,
                challenges,
                want_witnesses
            }
        ),
        (small_req(), weird_f64(), any::<u32>(), any::<u32>(), any::<u64>(), any::<bool>(), idxs(), any::<bool>())
            .prop_map(|(req, fill, peers, max, born, found, sugg, migrate)| MsgSpec::Response {
                req,
                fill,
                peers,
                max,
                born,
                found,
                sugg,
                migrate
            }),
        (small_req(), 0u8..7, idxs()).prop_map(|(req, reason, sugg)| MsgSpec::Refused { req, reason, sugg }),
        Just(MsgSpec::Leave),
        (small_req(), 0usize..REMOTES).prop_map(|(req, about)| MsgSpec::WitnessQuery { req, about }),
        (small_req(), any::<bool>(), any::<u64>(), weird_f64())
            .prop_map(|(req, seen, born, fill)| MsgSpec::WitnessReport { req, seen, born, fill }),
        (small_req(), any::<u16>()).prop_map(|(req, count)| MsgSpec::CandidatesRequest { req, count }),
        (small_req(), idxs()).prop_map(|(req, cands)| MsgSpec::CandidatesResponse { req, cands }),
        Just(MsgSpec::StrayHello),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..REMOTES, msg_spec()).prop_map(|(from, msg)| Op::Msg { from, msg }),
        2 => (1u64..120_000).prop_map(Op::Advance),
        3 => Just(Op::WakeUp),
        1 => (0usize..REMOTES).prop_map(Op::Down),
        1 => (0usize..REMOTES).prop_map(Op::Reconnect),
    ]
}

/// Index `REMOTES` stands for the target itself, so messages can name it.
fn id_of(i: usize, me: PeerId) -> PeerId {
    if i >= REMOTES { me } else { remote(i) }
}

fn build(spec: MsgSpec, me: PeerId) -> Envelope {
    let addrs = |v: Vec<usize>| v.into_iter().map(|i| PeerAddr::id_only(id_of(i, me))).collect::<Vec<_>>();
    match spec {
        MsgSpec::Heartbeat { req, probe, need, challenges, want_witnesses } => Envelope::from(Heartbeat {
            req: RequestId(req),
            kind: if probe { HeartbeatKind::Probe } else { HeartbeatKind::Regular },
            need,
            standing: Standing { live_elsewhere: need % 4, joining_elsewhere: (need >> 2) % 2, min: (need >> 3) % 4 },
            referent: req % 2 == 0,
            is_indexer: req % 3 == 0,
            challenges: challenges.into_iter().map(|i| id_of(i, me)).collect(),
            challenge_did: None,
            want_witnesses,
            did: None,
            name: None,
            record: None,
        }),
        MsgSpec::Response { req, fill, peers, max, born, found, sugg, migrate } => Envelope::from(HeartbeatResponse {
            req: RequestId(req),
            fill_rate: fill,
            peer_count: peers,
            max_nodes: max,
            born_at: Timestamp(born),
            challenges: vec![ChallengeEntry { peer: me, found, last_seen: Some(Timestamp(born)) }],
            did_found: Some(found),
            did_record: None,
            record_expires: None,
            witnesses: addrs(sugg.clone()),
            suggestions: addrs(sugg),
            suggest_migrate: migrate,
        }),
        MsgSpec::Refused { req, reason, sugg } => Envelope::from(IndexerMessage::Refused(Refused {
            req: RequestId(req),
            reason: [
                RefuseReason::Banned,
                RefuseReason::RateLimited,
                RefuseReason::Busy,
                RefuseReason::Full,
                RefuseReason::LowScore,
                RefuseReason::NotServed,
                RefuseReason::Unknown,
            ][reason as usize % 7],
            suggestions: addrs(sugg),
        })),
        MsgSpec::Leave => Envelope::Indexer(IndexerMessage::Leave),
        MsgSpec::WitnessQuery { req, about } => {
            Envelope::from(WitnessQuery { req: RequestId(req), indexer: id_of(about, me) })
        }
        MsgSpec::WitnessReport { req, seen, born, fill } => Envelope::from(WitnessReport {
            req: RequestId(req),
            seen,
            born_at: Some(Timestamp(born)),
            fill_rate: fill,
            score: fill,
        }),
        MsgSpec::CandidatesRequest { req, count } => Envelope::from(CandidatesRequest { req: RequestId(req), count }),
        MsgSpec::CandidatesResponse { req, cands } => {
            Envelope::from(CandidatesResponse { req: RequestId(req), candidates: addrs(cands) })
        }
        MsgSpec::StrayHello => Envelope::from(Hello { nonce: [1; 32] }),
    }
}

struct Harness {
    peer: Peer,
    now: Timestamp,
    me: PeerId,
}

impl Harness {
    fn new() -> Self {
        let now = Timestamp(1_700_000_000_000);
        let mut setup = PeerSetup::new(Keypair::derive(77, "target"), KEY, Roles::BOTH);
        setup.seeds = (0..2).map(|i| PeerAddr::id_only(remote(i))).collect();
        setup.config = Config { max_indexers: 3, ..Config::default() };
        let me = setup.keypair.peer_id();
        let mut h = Harness { peer: Peer::new(setup, now), now, me };
        for i in 0..REMOTES {
            h.connect(i);
        }
        h
    }

    fn connect(&mut self, i: usize) {
        let r = remote(i);
        self.peer.handle(Input::ConnectionUp { peer: r, addr: None, outbound: true }, self.now);
        let nonce = self.drain().into_iter().find_map(|o| match o {
            Output::Send { to, message: Envelope::Link(LinkMessage::Hello(Hello { nonce })) } if to == r => Some(nonce),
            _ => None,
        });
        let Some(their) = nonce else { return };
        let ours = [i as u8; 32];
        self.peer.handle(Input::Received { from: r, message: Envelope::from(Hello { nonce: ours }) }, self.now);
        let mac = hello_mac(&KEY, &r, &self.me, &their, &ours);
        self.peer.handle(Input::Received { from: r, message: Envelope::from(HelloProof { mac }) }, self.now);
        self.drain();
    }

    fn drain(&mut self) -> Vec<Output> {
        let mut v = Vec::new();
        while let Some(o) = self.peer.poll_output() {
            v.push(o);
            assert!(v.len() < 10_000, "a single input must not produce unbounded output");
        }
        v
    }

    fn check(&mut self) {
        for o in self.drain() {
            match o {
                Output::Send { to, .. } | Output::Close { peer: to, .. } => assert_ne!(to, self.me, "never to self"),
                Output::Connect { peer } => assert_ne!(peer.id, self.me, "never dial self"),
                Output::Event(_) | Output::Persist(_) | Output::Forget(_) => {}
            }
        }
        if let Some(pool) = self.peer.pool() {
            let ids: Vec<PeerId> = pool.entries().map(|e| e.peer).collect();
            let unique: BTreeSet<PeerId> = ids.iter().copied().collect();
            assert_eq!(unique.len(), ids.len(), "no duplicate pool entries");
            assert!(!unique.contains(&self.me), "never self in the pool");
            assert!(pool.len() <= pool.max_pool(), "pool above its maximum");
        }
    }
}

/// `default` cases, or `PROPTEST_CASES` from the environment to fuzz for longer.
fn cases(default: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = default;
    }
    c
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn arbitrary_inputs_never_panic_spin_or_break_pool_bounds(ops in prop::collection::vec(op(), 1..120)) {
        let mut h = Harness::new();
        h.peer.handle(Input::Timeout, h.now);
        h.check();
        for op in ops {
            match op {
                Op::Msg { from, msg } => {
                    let m = build(msg, h.me);
                    h.peer.handle(Input::Received { from: remote(from), message: m }, h.now);
                }
                Op::Advance(ms) => {
                    h.now = Timestamp(h.now.0 + ms);
                    h.peer.handle(Input::Timeout, h.now);
                }
                Op::WakeUp => {
                    if let Some(t) = h.peer.poll_timeout() {
                        if t > h.now { h.now = t; }
                        h.peer.handle(Input::Timeout, h.now);
                    }
                }
                Op::Down(i) => h.peer.handle(Input::ConnectionDown { peer: remote(i) }, h.now),
                Op::Reconnect(i) => { h.check(); h.connect(i); }
            }
            h.check();
        }
        // Time still moves the machine forward without spinning.
        for _ in 0..50 {
            let Some(t) = h.peer.poll_timeout() else { break };
            h.now = if t > h.now { t } else { h.now };
            h.peer.handle(Input::Timeout, h.now);
            h.check();
            let next = h.peer.poll_timeout();
            prop_assert!(next.is_none_or(|n| n > h.now), "a handled deadline must move forward (no spin): {next:?} at {:?}", h.now);
        }
    }
}
