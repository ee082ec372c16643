//! Property tests of the wire: every message round-trips through frames, and no byte sequence
//! makes the decoder panic, spin or buffer beyond one frame.

use ocd_core::proto::Timestamp;
use ocd_core::proto::wire::{
    self, CandidatesRequest, CandidatesResponse, Carried, ChallengeEntry, Envelope, FrameDecoder, Heartbeat,
    HeartbeatKind, HeartbeatResponse, Hello, HelloProof, HelloProofWith, IndexerMessage, RefuseReason, Refused,
    RequestId, Standing, WitnessQuery, WitnessReport,
};
use ocd_core::proto::{Did, PeerAddr, PeerId};
use proptest::prelude::*;

fn peer_id() -> impl Strategy<Value = PeerId> {
    any::<[u8; 32]>().prop_map(PeerId)
}

fn peer_addr() -> impl Strategy<Value = PeerAddr> {
    (peer_id(), prop::collection::vec("[a-z0-9.:]{0,24}", 0..3)).prop_map(|(id, addrs)| PeerAddr { id, addrs })
}

fn did() -> impl Strategy<Value = Did> {
    "[a-z0-9:-]{1,40}".prop_map(|s| Did::new(s).expect("non-empty printable"))
}

fn ts() -> impl Strategy<Value = Timestamp> {
    any::<u64>().prop_map(Timestamp)
}

/// Finite floats only: NaN != NaN would make round-trip equality fail for a reason that is not a bug.
fn float() -> impl Strategy<Value = f64> {
    -1e6f64..1e6f64
}

fn refuse_reason() -> impl Strategy<Value = RefuseReason> {
    prop_oneof![
        Just(RefuseReason::Banned),
        Just(RefuseReason::RateLimited),
        Just(RefuseReason::Busy),
        Just(RefuseReason::Full),
        Just(RefuseReason::LowScore),
        Just(RefuseReason::Moved),
        Just(RefuseReason::NotServed),
        Just(RefuseReason::Unknown),
    ]
}

/// Any message: the link's, including a proof carrying any other message.
fn message() -> impl Strategy<Value = Envelope> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|nonce| Envelope::from(Hello { nonce })),
        any::<[u8; 32]>().prop_map(|mac| Envelope::from(HelloProof { mac })),
        (any::<[u8; 32]>(), not_link()).prop_map(|(mac, first)| {
            let first = Carried::new(first).expect("small non-link messages are carried");
            Envelope::from(HelloProofWith { mac, first })
        }),
        not_link(),
    ]
}

/// Any message but the link's.
fn not_link() -> impl Strategy<Value = Envelope> {
    let req = any::<u64>().prop_map(RequestId);
    prop_oneof![
        (
            req.clone(),
            any::<bool>(),
            any::<u16>(),
            any::<(bool, bool, bool)>(),
            prop::collection::vec(peer_id(), 0..4),
            prop::option::of(did()),
            prop::option::of(did()),
            prop::option::of("[ -~]{0,20}"),
            any::<(u16, u16, u16)>(),
        )
            .prop_map(
                |(req, probe, need, (referent, is_indexer, want_witnesses), challenges, cd, d, name, st)| {
                    Envelope::from(Heartbeat {
                        req,
                        kind: if probe { HeartbeatKind::Probe } else { HeartbeatKind::Regular },
                        need,
                        standing: Standing { live_elsewhere: st.0, joining_elsewhere: st.1, min: st.2 },
                        referent,
                        is_indexer,
                        challenges,
                        challenge_did: cd,
                        want_witnesses,
                        did: d,
                        name,
                        record: None,
                    })
                }
            ),
        (
            req.clone(),
            float(),
            any::<(u32, u32)>(),
            ts(),
            prop::collection::vec((peer_id(), any::<bool>(), prop::option::of(ts())), 0..4),
            prop::option::of(any::<bool>()),
            prop::collection::vec(peer_addr(), 0..4),
            prop::collection::vec(peer_addr(), 0..4),
            any::<bool>(),
        )
            .prop_map(
                |(req, fill_rate, (peer_count, max_nodes), born_at, ch, did_found, witnesses, suggestions, sm)| {
                    Envelope::from(HeartbeatResponse {
                        req,
                        fill_rate,
                        peer_count,
                        max_nodes,
                        born_at,
                        challenges: ch
                            .into_iter()
                            .map(|(peer, found, last_seen)| ChallengeEntry { peer, found, last_seen })
                            .collect(),
                        did_found,
                        did_record: None,
                        record_expires: None,
                        witnesses,
                        suggestions,
                        suggest_migrate: sm,
                    })
                }
            ),
        (req.clone(), refuse_reason(), prop::collection::vec(peer_addr(), 0..3)).prop_map(
            |(req, reason, suggestions)| Envelope::Indexer(IndexerMessage::Refused(Refused {
                req,
                reason,
                suggestions
            }))
        ),
        Just(Envelope::Indexer(IndexerMessage::Leave)),
        (req.clone(), peer_id()).prop_map(|(req, indexer)| Envelope::from(WitnessQuery { req, indexer })),
        (req.clone(), any::<bool>(), prop::option::of(ts()), float(), float()).prop_map(
            |(req, seen, born_at, fill_rate, score)| {
                Envelope::from(WitnessReport { req, seen, born_at, fill_rate, score })
            }
        ),
        (req.clone(), any::<u16>()).prop_map(|(req, count)| Envelope::from(CandidatesRequest { req, count })),
        (req, prop::collection::vec(peer_addr(), 0..5))
            .prop_map(|(req, candidates)| Envelope::from(CandidatesResponse { req, candidates })),
    ]
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
    #![proptest_config(cases(512))]

    #[test]
    fn every_message_round_trips_through_a_frame(msgs in prop::collection::vec(message(), 1..6), chunk in 1usize..64) {
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend(wire::encode_frame(m));
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for c in bytes.chunks(chunk) {
            dec.extend(c);
            while let Some(m) = dec.next_message().expect("valid frames decode") {
                got.push(m);
            }
        }
        prop_assert_eq!(got, msgs);
        prop_assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_errors_are_terminal(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        // As a payload.
        let _ = wire::decode(&bytes);
        // As a stream: terminates, never buffers more than one frame's worth, and stays poisoned.
        let mut dec = FrameDecoder::new();
        dec.extend(&bytes);
        let mut steps = 0;
        loop {
            steps += 1;
            prop_assert!(steps <= bytes.len() + 2, "decoder must make progress");
            match dec.next_message() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    prop_assert_eq!(dec.next_message(), Err(e));
                    break;
                }
            }
        }
        prop_assert!(dec.buffered() <= bytes.len());
    }

    #[test]
    fn flipping_one_byte_of_a_frame_never_panics(m in message(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut p = wire::encode(&m);
        let i = pos.index(p.len());
        p[i] ^= 1 << bit;
        let _ = wire::decode(&p);
    }
}

/// A proof carrying `inner` (the bytes of an envelope without its version byte), by hand.
fn proof_carrying(inner: &[u8]) -> Vec<u8> {
    let mut p = vec![wire::WIRE_VERSION, 0, 3];
    p.extend([7u8; 32]);
    let mut len = inner.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            p.push(byte);
            break;
        }
        p.push(byte | 0x80);
    }
    p.extend(inner);
    p
}

#[test]
fn a_carried_message_is_counted_as_itself_and_round_trips() {
    let inner = Envelope::from(WitnessQuery { req: RequestId(5), indexer: PeerId([3; 32]) });
    let m = Envelope::from(HelloProofWith { mac: [7; 32], first: Carried::new(inner.clone()).expect("carried") });
    assert_eq!((m.kind(), m.carried()), ("witness_query", &inner));
    let bytes = wire::encode(&m);
    // The frame is the message's own encoding behind the proof: hand-built, it decodes the same.
    assert_eq!(bytes, proof_carrying(&wire::encode(&inner)[1..]));
    assert_eq!(wire::decode(&bytes), Ok(m));
    // A link message is never carried.
    let hello = Envelope::from(Hello { nonce: [1; 32] });
    assert!(!Carried::fits(&hello) && Carried::new(hello).is_none());
}

#[test]
fn a_carried_link_message_or_trailing_byte_fails_the_frame_and_nesting_never_recurses() {
    // A carried Hello (built by hand: `Carried::new` refuses it).
    let hello = wire::encode(&Envelope::from(Hello { nonce: [1; 32] }));
    assert!(matches!(wire::decode(&proof_carrying(&hello[1..])), Err(wire::WireError::Malformed(_))));
    // A carried message with a byte after it.
    let mut leave = wire::encode(&Envelope::Indexer(IndexerMessage::Leave))[1..].to_vec();
    leave.push(0);
    assert!(matches!(wire::decode(&proof_carrying(&leave)), Err(wire::WireError::Malformed(_))));
    // Empty.
    assert!(matches!(wire::decode(&proof_carrying(&[])), Err(wire::WireError::Malformed(_))));
    // Proofs nested as deep as a frame allows: refused at the first level, no recursion.
    let mut nested: Vec<u8> = wire::encode(&Envelope::Indexer(IndexerMessage::Leave))[1..].to_vec();
    while nested.len() + 80 < wire::MAX_FRAME_LEN {
        nested = proof_carrying(&nested)[1..].to_vec();
    }
    let frame = proof_carrying(&nested);
    assert!(frame.len() <= wire::MAX_FRAME_LEN);
    assert!(matches!(wire::decode(&frame), Err(wire::WireError::Malformed(_))));
}

/// A refusal whose frame is exactly `size` bytes (one suggestion with a long address).
fn refusal_of_size(size: usize) -> Envelope {
    let with = |len: usize| {
        let suggestions = vec![PeerAddr { id: PeerId([9; 32]), addrs: vec!["a".repeat(len)] }];
        Envelope::Indexer(IndexerMessage::Refused(Refused {
            req: RequestId(1),
            reason: RefuseReason::Full,
            suggestions,
        }))
    };
    let mut len = size;
    loop {
        let m = with(len);
        let got = wire::encode(&m).len();
        if got == size {
            return m;
        }
        len = len + size - got.min(len + size);
    }
}

#[test]
fn a_message_too_large_for_a_frame_with_the_proof_is_not_carried() {
    // As large as a frame allows alone: sent behind a bare proof.
    let big = refusal_of_size(wire::MAX_FRAME_LEN - 20);
    assert!(wire::decode(&wire::encode(&big)).is_ok(), "a frame alone");
    assert!(!Carried::fits(&big) && Carried::new(big).is_none(), "too large to ride with a proof");
    // Smaller: carried, and the frame with the proof still fits.
    let first = Carried::new(refusal_of_size(wire::MAX_FRAME_LEN - 45)).expect("fits with the proof");
    let frame = wire::encode(&Envelope::from(HelloProofWith { mac: [1; 32], first }));
    assert!(frame.len() <= wire::MAX_FRAME_LEN, "{}", frame.len());
    assert!(wire::decode(&frame).is_ok());
}
