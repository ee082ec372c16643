#!/usr/bin/env bash
# Application-message benchmarks (release build):
#  1. messages per second through `ocd send` → the receiver's inbox with real daemons on 127.0.0.1
#     (tests/tests/app_throughput.rs), both runtimes, with the driver's group commit (64) and
#     without it (1); then through the `ocd send` command itself (a process per message);
#  2. the cost of a persisted enqueue (a redb commit) per message, by batch size (criterion,
#     core/benches/store.rs).
#
# usage: scripts/app-bench.sh [MESSAGES=2000] [CLIENTS=8] [CLI_MESSAGES=300]
#   env: CARGO_TARGET_DIR; SKIP_CRITERION=1 to skip part 2
set -euo pipefail
cd "$(dirname "$0")/.."
messages="${1:-2000}"
clients="${2:-8}"
cli_messages="${3:-300}"
cargo build -q --release --bin ocd --bin ocd-smol
run() {
  cargo test -q --release -p ocd-tests --test app_throughput -- --ignored --nocapture --test-threads 1 app_throughput \
    2>&1 | grep -E '^\[(tokio|smol)\]'
}
for group in 64 1; do
  OCD_BENCH_GROUP="$group" OCD_BENCH_MESSAGES="$messages" OCD_BENCH_CLIENTS="$clients" run
done
OCD_BENCH_MODE=cli OCD_BENCH_MESSAGES="$cli_messages" OCD_BENCH_CLIENTS="$clients" run
if [ -z "${SKIP_CRITERION:-}" ]; then
  cargo bench -p ocd-core --features host --bench store 2>&1 | grep -E '^store_|time:|thrpt:'
fi
