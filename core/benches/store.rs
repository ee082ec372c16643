//! The cost of a persisted enqueue: committing critical messages to the durable store (redb, one
//! write transaction and fsync per commit, each message sealed with AES-256-GCM), per message, for
//! the batch sizes the driver's group commit produces — 1 (a lone `ocd send`), 16 (a burst, or a
//! receiver's window of deliveries) and 64 (the driver's `GROUP_MAX`). The inbox append on the
//! receiving side is measured the same way.
//!
//! The file lives in the system temporary directory: run it on the disk the daemon would use
//! (`TMPDIR=/var/lib/ocd cargo bench …`), since the fsync dominates. Each measured commit is
//! followed by an unmeasured one that forgets what it queued, so the database stays the same size.
//!
//! ```text
//! cargo bench -p ocd-core --features host --bench store
//! ```

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ocd_core::host::store::{Durable, Store};
use ocd_core::proto::{AppProtocol, Forget, InboxEntry, Keypair, MessageId, Persist, QueuedMessage, Target, Timestamp};
use std::time::{Duration, Instant};

const PAYLOAD: usize = 1024;

fn queued(me: &Keypair, to: &Keypair, seq: u64) -> QueuedMessage {
    QueuedMessage {
        id: MessageId { sender: me.peer_id(), epoch: 1, seq },
        to: Target::Peer(to.peer_id()),
        protocol: AppProtocol::Create,
        datatype: Some(1),
        user: "bench".into(),
        payload: vec![0x5a; PAYLOAD],
        accepted_at: Timestamp(1_700_000_000_000 + seq),
    }
}

fn bench_enqueue(c: &mut Criterion) {
    let me = Keypair::derive(1, "bench-store");
    let to = Keypair::derive(2, "bench-store");
    let mut group = c.benchmark_group("store_enqueue");
    group.sample_size(20).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    for batch in [1u64, 16, 64] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &me).expect("store");
        let mut seq = 0u64;
        group.throughput(Throughput::Elements(batch));
        group.bench_function(BenchmarkId::new("critical_1KiB", batch), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let msgs: Vec<Durable> = (0..batch)
                        .map(|_| {
                            seq += 1;
                            Durable::Persist(Persist::Queued(queued(&me, &to, seq)))
                        })
                        .collect();
                    let ids: Vec<Durable> = msgs
                        .iter()
                        .filter_map(|d| match d {
                            Durable::Persist(Persist::Queued(m)) => Some(Durable::Forget(Forget::Queued(m.id))),
                            _ => None,
                        })
                        .collect();
                    let t = Instant::now();
                    store.commit(&msgs).expect("commit");
                    spent += t.elapsed();
                    store.commit(&ids).expect("forget");
                }
                spent
            });
        });
    }
    group.finish();
}

fn bench_inbox(c: &mut Criterion) {
    let me = Keypair::derive(3, "bench-store");
    let sender = Keypair::derive(4, "bench-store").peer_id();
    let mut group = c.benchmark_group("store_inbox_append");
    group.sample_size(20).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    for batch in [1u64, 16, 64] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &me).expect("store");
        let mut seq = 0u64;
        group.throughput(Throughput::Elements(batch));
        group.bench_function(BenchmarkId::new("1KiB", batch), |b| {
            b.iter(|| {
                let entries: Vec<Durable> = (0..batch)
                    .map(|_| {
                        seq += 1;
                        let entry = InboxEntry {
                            id: MessageId { sender, epoch: 1, seq },
                            from_did: None,
                            protocol: AppProtocol::Create,
                            datatype: Some(1),
                            user: "bench".into(),
                            payload: vec![0x5a; PAYLOAD],
                            received_at: Timestamp(1_700_000_000_000 + seq),
                        };
                        // The sender's floor trails by a window, as it does on the wire.
                        Durable::Persist(Persist::Inbox { entry, floor: seq.saturating_sub(16) })
                    })
                    .collect();
                store.commit(&entries).expect("commit")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_enqueue, bench_inbox);
criterion_main!(benches);
