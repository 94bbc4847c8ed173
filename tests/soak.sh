#!/usr/bin/env bash
# Soak (issue 13, part 7): the release build of apikeyd for MINUTES (default 30)
# under a steady verification load over HTTP (/v1/verify and forward-auth /v1/auth),
# admin churn through apikeyctl (create, edit, rotate, disable, enable, notify,
# remove) and alerts falling due (email to a real SMTP server, operator messages).
# Prints a table per window (requests, latency p50/p99, changes, alerts, RSS,
# descriptors, threads, database size) and a verdict; exits non-zero on a leak.
# tests/it/soak.rs has the thresholds. `.ci/run` runs 1.5 minutes.
#   bash tests/soak.sh [MINUTES]
# Environment: APIKEYD_SOAK_RATE (verifications/s, 1000), APIKEYD_SOAK_CHANGES
# (admin commands/s, 5), APIKEYD_SOAK_WINDOWS (10), APIKEYD_SOAK_SEED.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin apikeyd --bin apikeyctl
APIKEYD_SOAK_MINUTES="${1:-30}" APIKEYD_SOAK_BINS="$(realpath "$target/release")" \
  exec cargo test --quiet --test it soak::soak_stays_flat -- --ignored --exact --nocapture
