#!/usr/bin/env bash
# The HTTP contract, fuzzed: schemathesis (tests/contract/requirements.txt) against a
# real apikeyd's /openapi.json, every operation: verify, forward-auth, status, and
# the admin API over TCP with an admin key. Fails on any 5xx or any answer the
# document does not describe (tests/contract/contract.py says which checks run).
#
#   bash tests/contract/run.sh                   # the long version: 1000 examples
#   bash tests/contract/run.sh --examples 100    # what .ci/run runs (~3 min)
#
# Other options go to contract.py (--seed N, --report-dir DIR, --keep) and on to
# `st run`. The daemon is the release build, what ships (APIKEYD_BIN_DIR=target/debug
# to fuzz the test build instead). The virtualenv is made once, in
# target/contract-venv, and remade when requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-target}
venv=$target/contract-venv
req=tests/contract/requirements.txt

if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
  echo "contract: installing $(grep -m1 '^schemathesis==' "$req") into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi

if [ -z "${APIKEYD_BIN_DIR:-}" ]; then
  cargo build --release --quiet --bin apikeyd --bin apikeyctl
  APIKEYD_BIN_DIR=$target/release
fi

args=("$@")
case " $* " in *" --examples "*) ;; *) args=(--examples 1000 "${args[@]}") ;; esac
exec "$venv/bin/python" tests/contract/contract.py --bins "$APIKEYD_BIN_DIR" "${args[@]}"
