#!/usr/bin/env bash
# The DNT kill -9 test with more cycles than CI runs (tests/tests/app_kill9.rs): one indexer, a
# sender and a receiver node on 127.0.0.1; while `ocd send` keeps sending critical messages, the
# sender and/or the receiver are SIGKILLed and restarted CYCLES times; every accepted message must
# end in the receiver's inbox exactly once.
#
# usage: scripts/app-kill9.sh [CYCLES=50] [RUNTIME=both|tokio|smol] [RUNS=1]
#   env: OCD_KILL_SEED (replay a schedule), CARGO_TARGET_DIR, CARGO_PROFILE (dev|release)
set -euo pipefail
cd "$(dirname "$0")/.."
cycles="${1:-50}"
runtime="${2:-both}"
runs="${3:-1}"
profile="${CARGO_PROFILE:-dev}"
case "$runtime" in
  both) filter="app_kill9_" ;;
  tokio|smol) filter="app_kill9_$runtime" ;;
  *) echo "runtime: both, tokio or smol" >&2; exit 2 ;;
esac
profile_flag=()
[ "$profile" = release ] && profile_flag=(--release)
cargo build -q "${profile_flag[@]}" --bin ocd --bin ocd-smol
failed=0
for run in $(seq 1 "$runs"); do
  echo "== run $run/$runs: $cycles cycles, $runtime"
  log="$(mktemp -t ocd-kill9.XXXXXX)"
  if OCD_KILL_CYCLES="$cycles" cargo test -q "${profile_flag[@]}" -p ocd-tests --test app_kill9 -- \
      --nocapture --test-threads 1 "$filter" >"$log" 2>&1; then
    grep -E '\[(tokio|smol)\]|^test result' "$log"
    rm -f "$log"
  else
    tail -n 80 "$log"
    echo "FAILED (full log: $log)"
    failed=$((failed + 1))
  fi
done
[ "$failed" -eq 0 ] || { echo "$failed of $runs run(s) failed"; exit 1; }
