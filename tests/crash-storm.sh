#!/usr/bin/env bash
# Crash storm, long version (issue 13, part 1): the real daemon under a mixed admin
# workload and a verification load, killed with SIGKILL N times (default 200) and
# checked after every restart (tests/it/crash_storm.rs). The test suite runs the
# short version (20 kills). APIKEYD_STORM_SEED=S replays a run's choices.
#   bash tests/crash-storm.sh [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
APIKEYD_STORM_KILLS="${1:-200}" exec cargo test --test it crash_storm -- --nocapture
