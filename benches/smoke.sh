#!/usr/bin/env bash
# Every benchmark end to end on a small input, in the dev profile (whose dependencies
# `cargo test` has already built): a change that breaks a benchmark fails CI, rather
# than the next person who measures (the alerts benchmark once stopped working
# unnoticed). The figures printed here mean nothing; the README quotes full runs.
#   bash benches/smoke.sh      (about 3 minutes after `cargo test`)
set -euo pipefail
cd "$(dirname "$0")/.."
export APIKEYD_BENCH_QUICK=1
run() {
  local bench=$1
  shift
  echo "== benchmark smoke run: $bench"
  env "$@" cargo bench --profile dev --bench "$bench"
}
run import APIKEYD_BENCH_IMPORT=2000 APIKEYD_BENCH_SINGLE=50 APIKEYD_BENCH_CREATES=50
run verify APIKEYD_BENCH_KEYS=2000 APIKEYD_BENCH_SAMPLE=200 APIKEYD_BENCH_CALLS=2000 \
  APIKEYD_BENCH_SECS=1 APIKEYD_BENCH_ROUNDS=1 APIKEYD_BENCH_CONNS=4 \
  APIKEYD_BENCH_CREATES=50 APIKEYD_BENCH_CREATES_BIG=10
run alerts APIKEYD_BENCH_KEYS=2000 APIKEYD_BENCH_STARTS=1 APIKEYD_BENCH_IDLE_SECS=1 \
  APIKEYD_BENCH_BURST=50 APIKEYD_BENCH_WINDOW_SECS=2 APIKEYD_BENCH_EMAILS=200
# Its PostgreSQL server as in the store's tests (the package .ci/run installs).
run cluster
