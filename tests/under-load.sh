#!/usr/bin/env bash
# The whole suite, run RUNS times (default 10) with every CPU but one kept busy by
# a spinning shell (issue 13, part 8): a test whose outcome depends on timing shows
# up here as one that fails in some runs. Prints one line per run and, at the end,
# each test that failed with the number of runs it failed in; exits non-zero if
# any run failed. Each run's output is kept in target/under-load/run-N.log.
#   bash tests/under-load.sh [RUNS]      BURNERS=N to choose how many CPUs to load
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
cpus=$(nproc)
burners=${BURNERS:-$((cpus > 1 ? cpus - 1 : 1))}
logs=target/under-load
mkdir -p "$logs"
rm -f "$logs"/run-*.log

# Built first, with every CPU: the runs then measure the tests, not the compiler.
cargo test --no-run --quiet

pids=()
stop() { [ "${#pids[@]}" -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq "$burners"); do
  bash -c 'while :; do :; done' &
  pids+=($!)
done
echo "suite x $runs on $cpus CPUs, $burners of them kept busy"

failed_runs=0
for run in $(seq "$runs"); do
  log="$logs/run-$run.log"
  start=$(date +%s)
  rc=0
  cargo test >"$log" 2>&1 || rc=$?
  took=$(($(date +%s) - start))
  passed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) == "passed;") n += $i }
                END { print n + 0 }' "$log")
  failed=$(grep -c '^test .* FAILED$' "$log" || true)
  if [ "$rc" -ne 0 ]; then
    failed_runs=$((failed_runs + 1))
    [ "$failed" -gt 0 ] || failed="? (exit $rc, see $log)"
  fi
  printf 'run %2d: %4s passed, %s failed, %4d s\n' "$run" "${passed:-0}" "$failed" "$took"
done

echo "$((runs - failed_runs)) of $runs runs passed"
if [ "$failed_runs" -gt 0 ]; then
  echo "tests that failed (runs):"
  cat "$logs"/run-*.log | sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' | sort | uniq -c | sort -rn
  exit 1
fi
