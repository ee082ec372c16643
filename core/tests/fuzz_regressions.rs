//! The fuzz targets' inputs replayed on stable: every file of `fuzz/corpus/<target>/` (a small
//! committed seed corpus) and of `fuzz/regressions/<target>/` (every crash the fuzzers found)
//! goes through the same check the target runs (`fuzz_checks/`, shared with `fuzz/`). The
//! `store_decode` files that open store files need the `host` feature (on in the workspace);
//! without it they are checked as stored values only.
//!
//! `cargo test -p ocd-core --test fuzz_regressions -- --ignored write_seed_corpus` rewrites the
//! generated part of the seed corpus (`seed-*` files) from sample messages and records.

mod fuzz_checks;

use fuzz_checks::TARGETS;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

/// Replays every corpus and regression file of `target`; the corpus must not be empty.
fn replay(target: &str) {
    let check = TARGETS.iter().find(|(name, _)| *name == target).map(|(_, f)| *f).expect("a known target");
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ holds the seed corpus and must not be empty");
    let regressions = files(&fuzz_dir().join("regressions").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let bytes = std::fs::read(path).expect("a corpus file is readable");
        if catch_unwind(AssertUnwindSafe(|| check(&bytes))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail: {failed:#?}",
        failed.len(),
        corpus.len() + regressions.len()
    );
}

/// Findings not fixed yet, kept in `fuzz/known/<target>/` (out of the fuzzers' seeds and of the
/// replays above): each must still fail its check — when one passes, its fix landed and the input
/// moves to `fuzz/regressions/`. Ignored: an open finding may take the process down (the store
/// finding of `fuzz/regressions/store_decode/oom-redb-4gib-page-read` allocated 4 GiB until redb
/// was patched).
#[test]
#[ignore = "replays open findings, which may abort the process"]
fn known_findings_still_fail() {
    for (target, check) in TARGETS {
        for path in files(&fuzz_dir().join("known").join(target)) {
            let bytes = std::fs::read(&path).expect("a finding is readable");
            let failed = catch_unwind(AssertUnwindSafe(|| check(&bytes))).is_err();
            assert!(failed, "{} no longer fails: move it to fuzz/regressions/{target}/", path.display());
        }
    }
}

#[test]
fn frame_decoder_inputs_replay() {
    replay("frame_decoder");
}

#[test]
fn record_verify_inputs_replay() {
    replay("record_verify");
}

#[test]
fn store_decode_inputs_replay() {
    replay("store_decode");
}

#[test]
fn peer_node_inputs_replay() {
    replay("peer_node");
}

#[test]
fn peer_indexer_inputs_replay() {
    replay("peer_indexer");
}

/// No corpus or regression folder names an unknown target.
#[test]
fn corpus_folders_match_the_targets() {
    for kind in ["corpus", "regressions"] {
        let Ok(dirs) = std::fs::read_dir(fuzz_dir().join(kind)) else { continue };
        for dir in dirs.filter_map(|e| e.ok()) {
            let name = dir.file_name().to_string_lossy().to_string();
            assert!(TARGETS.iter().any(|(t, _)| *t == name), "fuzz/{kind}/{name} is no target");
        }
    }
}

/// The committed simulator seeds (`sim-*`, from `ocd-sim run --dump-corpus`) still decode whole
/// with this build: a change of `Input`, `Config` or the seed format that breaks them would leave
/// the peer targets replaying nothing of them (re-dump them: see `fuzz/README.md`).
#[test]
fn the_committed_simulator_seeds_decode_whole() {
    use ocd_core::journal::Seed;
    let mut seen = 0;
    for target in ["peer_node", "peer_indexer"] {
        for path in files(&fuzz_dir().join("corpus").join(target)) {
            if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("sim-")) {
                continue;
            }
            let bytes = std::fs::read(&path).expect("a seed is readable");
            let (seed, steps) =
                Seed::read(&bytes, usize::MAX).unwrap_or_else(|| panic!("{} is no seed", path.display()));
            let mut again = seed.header();
            for s in &steps {
                Seed::step(&mut again, s.now, &s.input);
            }
            assert_eq!(again.len(), bytes.len(), "{}: only part of it decodes", path.display());
            assert!(seed.config.validate().is_ok(), "{}: its configuration is refused", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 2, "simulator seeds in the corpus: {seen}");
}

/// The harness builds a message of every kind the wire carries, and each survives the wire.
#[test]
fn the_peer_harness_speaks_every_message_kind() {
    let envelopes = fuzz_checks::peer::sample_envelopes();
    let kinds: std::collections::BTreeSet<&str> = envelopes.iter().map(|e| e.kind()).collect();
    for kind in ocd_core::proto::wire::KINDS {
        if kind != "mesh_control" && kind != "mesh_gossip" {
            assert!(kinds.contains(kind), "no sample of {kind}");
        }
    }
    assert!(kinds.contains("mesh_gossip") && kinds.contains("mesh_control"), "mesh samples: {kinds:?}");
    for e in &envelopes {
        fuzz_checks::wire::envelope(&ocd_core::proto::wire::encode(e));
    }
}

/// A quick stable stand-in for the fuzzers: pseudo-random inputs through the peer checks.
#[test]
fn pseudo_random_inputs_pass_the_peer_checks() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..24 {
        let len = 256 + (next() % 3000) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            fuzz_checks::peer::peer_node(&data);
        } else {
            fuzz_checks::peer::peer_indexer(&data);
        }
    }
}

/// Writes the generated seeds: frames of every message kind, valid records, stored values and a
/// store file's head. Run by hand after a wire or record layout change.
#[test]
#[ignore]
fn write_seed_corpus() {
    use ocd_core::proto::wire::{encode, encode_frame};
    let write = |target: &str, name: &str, bytes: &[u8]| {
        assert!(bytes.len() < 4096, "{target}/{name}: a seed stays under 4 KiB ({} bytes)", bytes.len());
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).expect("the corpus folder");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a seed is written");
    };
    let envelopes = fuzz_checks::peer::sample_envelopes();
    // frame_decoder: [seed_lo, seed_hi, frames…], a few messages per file.
    for (n, chunk) in envelopes.chunks(4).enumerate() {
        let mut bytes = vec![n as u8 * 7 + 3, 0];
        for e in chunk {
            bytes.extend(encode_frame(e));
        }
        write("frame_decoder", &format!("frames-{n:02}"), &bytes);
    }
    write("frame_decoder", "payload-leave", &encode(&envelopes[5]));
    // record_verify: mode byte, then its input.
    let records: Vec<_> = envelopes
        .iter()
        .filter_map(|e| match e {
            ocd_core::proto::Envelope::Indexer(ocd_core::proto::wire::IndexerMessage::Publish(p)) => {
                Some(p.record.clone())
            }
            _ => None,
        })
        .collect();
    let mut peer = vec![0u8];
    peer.extend(postcard::to_stdvec(&records[0]).expect("encodes"));
    write("record_verify", "peer-record", &peer);
    let providers: Vec<_> = envelopes
        .iter()
        .filter_map(|e| match e {
            ocd_core::proto::Envelope::Dht(ocd_core::proto::wire::DhtMessage::AddProvider(p)) => {
                Some(p.provider.clone())
            }
            _ => None,
        })
        .collect();
    let mut prov = vec![1u8];
    prov.extend(postcard::to_stdvec(&providers[0]).expect("encodes"));
    write("record_verify", "provider-record", &prov);
    write(
        "record_verify",
        "altered-peer",
        &[
            2, 1, 5, b'd', b'i', b'd', b':', b'x', 4, b'n', b'a', b'm', b'e', 0, 1, 9, 0, 0, 0x10, 0x27, 0, 0, 1, 0, 3,
            0x80, 1, 2,
        ],
    );
    write(
        "record_verify",
        "altered-provider",
        &[3, 2, 0, 0x80, 0x40, 9, 0, 0, 0, 30, 0, 0x10, 0x27, 0, 0, 1, 0, 5, 1, 1, 3],
    );
    // store_decode: stored values, and alterations of a real store.
    let entry = ocd_core::proto::InboxEntry {
        id: ocd_core::proto::MessageId { sender: ocd_core::proto::Keypair::derive(1, "s").peer_id(), epoch: 1, seq: 2 },
        from_did: ocd_core::proto::Did::new("did:x").ok(),
        protocol: ocd_core::proto::AppProtocol::Create,
        datatype: Some(3),
        user: "alice".into(),
        payload: b"hello".to_vec(),
        received_at: ocd_core::proto::Timestamp(1_700_000_000_000),
    };
    let mut value = vec![0u8];
    value.extend(postcard::to_stdvec(&entry).expect("encodes"));
    write("store_decode", "inbox-entry", &value);
    write("store_decode", "altered-flip", &[2, 1, 1, 0, 0, 0, 0x40, 0x01]);
    write("store_decode", "altered-word", &[3, 1, 1, 0, 0, 1, 0x20, 0, 0xff, 0, 0, 0, 0, 0, 0, 0]);
    write("store_decode", "altered-zero", &[2, 1, 3, 0, 0, 0, 2, 0]);
    #[cfg(feature = "host")]
    {
        let head = &fuzz_checks::store::file::template()[..3000];
        let mut file = vec![1u8];
        file.extend_from_slice(head);
        write("store_decode", "file-head", &file);
    }
}
