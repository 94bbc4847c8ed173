#!/usr/bin/env bash
# Instructions per /v1/auth request, counted by callgrind: repeatable whatever else the
# machine is doing, so two builds can be compared on a busy 2-core VM where req/s swing
# by ±25%. For each scenario the daemon runs under callgrind twice, answering R1 and then
# R2 requests (one keep-alive connection, a valid key); the difference of the two totals
# divided by R2 - R1 is the cost of one request without the start (loading the keys).
#
# Scenarios: "plain" (no [[auth.routes]]) and "routes" (three routes; the proxy's
# X-Forwarded-Uri is an already-normal path under one of them).
#
# Usage: bash benches/auth_instructions.sh [APIKEYD_BIN ...]
#   Each binary needs `seed-keys` (build with --features test-hooks). Without arguments
#   it builds and measures this tree's. Environment: N (keys, default 100000), R1, R2
#   (requests, default 2000 and 12000).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
R1=${R1:-2000}
R2=${R2:-12000}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
if [ $# -eq 0 ]; then
  cargo build --release --quiet --bin apikeyd --features test-hooks
  set -- "${CARGO_TARGET_DIR:-target}/release/apikeyd"
fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/apikeyd-callgrind.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

config() { # DIR PORT ROUTES(0|1)
  cat <<EOF
[server]
listen = "127.0.0.1:$2"
state_dir = "$1/state"
admin_socket = "$1/apikeyd.sock"
worker_threads = 1

[ApiKey]
MaxExpirationPeriod = "p6m"
NotAccessedExpirationPeriod = "p3m"
DefaultExpirationPeriod = "p1y"

[auth]
trusted_proxies = ["127.0.0.1/32"]
EOF
  if [ "$3" = 1 ]; then
    cat <<EOF
[[auth.routes]]
prefix = "/catalog/sync"
scope = "bench:sync"
[[auth.routes]]
prefix = "/catalog"
scope = "bench:read"
[[auth.routes]]
prefix = "/admin"
scope = "bench:admin"
EOF
  fi
  cat <<EOF

[groups.Bench]
scopes = ["bench:read"]
create_keys = true

[users.bench]
email = "bench@example.com"
groups = ["Bench"]
EOF
}

# COUNT requests on one keep-alive connection; every answer must be 200.
client() { # PORT KEYFILE COUNT
  python3 - "$@" <<'PY'
import http.client, sys, time
port, keyfile, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
key = open(keyfile).read().strip()
headers = {"Authorization": "Bearer " + key, "X-Forwarded-Uri": "/catalog/items/42",
           "X-Forwarded-For": "203.0.113.9"}
deadline = time.time() + 600
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("HEAD", "/v1/auth", headers=headers)
        r = c.getresponse(); r.read()
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.5)
for _ in range(count - 1):
    c.request("HEAD", "/v1/auth", headers=headers)
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}: {r.getheader('x-api-key-reason')}")
PY
}

# Total instructions of one daemon run answering COUNT requests.
run() { # BIN DIR COUNT
  local bin=$1 dir=$2 count=$3 port pid out
  port=$(free_port)
  sed -i "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$dir/apikeyd.toml"
  out=$dir/callgrind.$count
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$bin" --config "$dir/apikeyd.toml" >"$dir/log.$count" 2>&1 &
  pid=$!
  client "$port" "$dir/key" "$count"
  kill -TERM "$pid"
  wait "$pid" || true
  grep -m1 '^summary:' "$out" | awk '{print $2}'
}

printf '%-40s %-8s %14s\n' binary scenario "instr/request"
for bin in "$@"; do
  for routes in 0 1; do
    dir=$TMP/$(basename "$(dirname "$(dirname "$(dirname "$bin")")")")-$routes
    mkdir -p "$dir"
    config "$dir" 0 "$routes" >"$dir/apikeyd.toml"
    "$bin" seed-keys --config "$dir/apikeyd.toml" --count "$N" --user bench --print-key >"$dir/key" 2>"$dir/seed.log"
    a=$(run "$bin" "$dir" "$R1")
    b=$(run "$bin" "$dir" "$R2")
    per=$(( (b - a) / (R2 - R1) ))
    printf '%-40s %-8s %14s\n' "$bin" "$([ $routes = 1 ] && echo routes || echo plain)" "$per"
  done
done
