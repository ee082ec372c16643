#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ (libFuzzer, nightly) for SECONDS each, one after the
# other, one process each, and prints per target: runs, exec/s, coverage (libFuzzer's `cov:`,
# instrumented edges reached, and `ft:` features) and the corpus size.
#
# New inputs go to fuzz/target/corpus/<target>/ (ignored); the committed seeds in
# fuzz/corpus/<target>/, the crash inputs in fuzz/regressions/<target>/ and the simulator's seeds
# in fuzz/target/sim-corpus/<target>/ (written by `ocd-sim run SCENARIO --dump-corpus
# fuzz/target/sim-corpus`, when present) are read, never written. A crash leaves its input in fuzz/artifacts/<target>/ and fails the script: minimise it
# (`cargo +nightly fuzz tmin <target> <file>`), copy it to fuzz/regressions/<target>/ (replayed by
# `cargo test -p ocd-core --test fuzz_regressions`), and fix the bug. OCD_FUZZ_TRACE=1 with
# `cargo +nightly fuzz run <target> <file>` prints a peer target's steps.
#
# Without nightly or cargo-fuzz (`cargo install cargo-fuzz --locked`) it says so and exits 0.
#
# usage: scripts/fuzz.sh [SECONDS=25] [TARGET…]
#   env: FUZZ_ARGS — more libFuzzer flags (e.g. -max_len=8192)
#        FUZZ_SANITIZER — `address` (the default) or `none`: the core forbids `unsafe`, so its
#        state machines lose little without AddressSanitizer and run about 6× more inputs a
#        second (redb, under store_decode, has unsafe code: keep `address` there)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-25}"
shift || true

if ! cargo +nightly --version >/dev/null 2>&1 || ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz or nightly not present: fuzzing skipped"
  exit 0
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

sanitizer="${FUZZ_SANITIZER:-address}"
echo "building ${#targets[@]} fuzz targets (cargo +nightly fuzz build, release + debug assertions, sanitizer: $sanitizer)"
cargo +nightly fuzz build --sanitizer "$sanitizer"

failed=()
summary=()
for t in "${targets[@]}"; do
  work="target/corpus/$t"
  mkdir -p "$work" "artifacts/$t"
  seeds=()
  for d in "corpus/$t" "regressions/$t" "target/sim-corpus/$t"; do
    if [ -d "$d" ] && [ -n "$(ls -A "$d")" ]; then seeds+=("$d"); fi
  done
  log="target/fuzz-$t.log"
  echo "== $t: ${seconds}s"
  # One process (no -jobs/-workers: those fork workers that log to files); leak detection off:
  # the checks keep per-process caches (keys, signatures, a store template) on purpose.
  # shellcheck disable=SC2086
  if cargo +nightly fuzz run --sanitizer "$sanitizer" "$t" "$work" "${seeds[@]}" -- \
      -max_total_time="$seconds" -timeout=20 -detect_leaks=0 -print_final_stats=1 ${FUZZ_ARGS:-} \
      >"$log" 2>&1; then
    status=ok
  else
    status=CRASH
    failed+=("$t")
    grep -E "panicked at|^thread '|Test unit written|SUMMARY|==[0-9]+==ERROR|deadly signal|timeout" "$log" | head -20 || true
    tail -5 "$log"
  fi
  last=$(grep -E "^#[0-9]+\s+(DONE|pulse|NEW|REDUCE|INITED)" "$log" | tail -1 || true)
  runs=$(sed -nE 's/^stat::number_of_executed_units:\s*([0-9]+).*/\1/p' "$log" | tail -1)
  rate=$(sed -nE 's/^stat::average_exec_per_sec:\s*([0-9]+).*/\1/p' "$log" | tail -1)
  cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$last")
  line=$(printf '%-14s %-5s runs %-9s exec/s %-6s cov %-6s ft %-7s corpus %s' \
    "$t" "$status" "${runs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")
  echo "$line"
  summary+=("$line")
done

echo
echo "== fuzzing summary (${seconds}s per target; logs in fuzz/target/fuzz-<target>.log)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
  exit 1
fi
