#!/usr/bin/env bash
# Crash storm, long version (issue 13, part 1): the real daemon under a mixed admin
# workload, a verification load and alerts falling due to a real SMTP server,
# killed with SIGKILL N times (default 200) and checked after every restart
# (tests/it/crash_storm.rs). BACKEND is redb (the default) or postgres (a private
# PostgreSQL server that the test starts; only apikeyd is killed); it may also be
# given as APIKEYD_STORM_BACKEND. The test suite runs the short versions (20 kills
# on redb, 10 on PostgreSQL). APIKEYD_STORM_SEED=S replays a run's choices.
#   bash tests/crash-storm.sh [KILLS] [BACKEND]
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${2:-${APIKEYD_STORM_BACKEND:-redb}}"
case "$backend" in
  redb) test=crash_storm::a_storm_of_kills_loses_no_acknowledged_change ;;
  postgres) test=crash_storm::a_storm_of_kills_on_postgresql_loses_no_acknowledged_change ;;
  *) echo "crash-storm.sh: BACKEND must be redb or postgres, not '$backend'" >&2; exit 2 ;;
esac
APIKEYD_STORM_KILLS="${1:-200}" exec cargo test --test it "$test" -- --exact --nocapture
