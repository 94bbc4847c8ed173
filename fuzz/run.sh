#!/usr/bin/env bash
# Runs every fuzz target for SECONDS_PER_TARGET (default 60) from the seeds in
# corpus/TARGET, and prints per target the executions, executions per second and
# crashes. Exits non-zero if any target crashed (the input is in artifacts/TARGET/).
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET]      FUZZ_TARGETS="period config" to pick some
#   FUZZ_RUNS=10000000 bash fuzz/run.sh 3600   stops each target after that many
#                                              executions (or the time, if first)
#
# cargo-fuzz (`cargo install cargo-fuzz --locked`) passes -Z flags (sanitizers,
# coverage) to rustc: the stable toolchain takes them with RUSTC_BOOTSTRAP=1, so no
# nightly toolchain is needed. The first build (AddressSanitizer, every dependency)
# takes several minutes; later ones only rebuild what changed.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
read -r -a targets <<<"${FUZZ_TARGETS:-period ip_filter key_shape config route_path admin_json auth_head}"
export RUSTC_BOOTSTRAP=1
# FUZZ_SANITIZER=none builds without AddressSanitizer: the code is safe Rust (a
# panic is what a target finds), and the sanitizer build of every dependency takes
# about 16 min on 2 cores against about 5 without. The long runs keep the default.
sanitizer=${FUZZ_SANITIZER:-address}

cargo fuzz build --sanitizer "$sanitizer"
mkdir -p target/logs
failed=0
printf '%-12s %12s %10s  %s\n' target executions 'execs/s' result
for t in "${targets[@]}"; do
  # New inputs go to the first directory (gitignored), the seeds stay as they are.
  mkdir -p "target/corpus/$t" "artifacts/$t"
  log="target/logs/$t.log"
  rc=0
  cargo fuzz run --sanitizer "$sanitizer" "$t" "target/corpus/$t" "corpus/$t" -- \
    -max_total_time="$secs" ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -print_final_stats=1 -timeout=30 \
    >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  execs=${execs:-0}
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  if [ "$rc" -eq 0 ]; then
    result="0 crashes"
  else
    result="CRASH (exit $rc): $(grep -m1 -o "artifacts/$t/[^ ]*" "$log" || echo "see fuzz/$log")"
    failed=1
  fi
  printf '%-12s %12s %10s  %s\n' "$t" "$execs" "${rate:-0}" "$result"
done
exit "$failed"
