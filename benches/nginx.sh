#!/usr/bin/env bash
# apikeyd's forward-auth against nginx on loopback (issue 4, section 5).
#
#   bash benches/nginx.sh                      # N=1000000 keys, 5 rounds of 8 s
#   N=10000 ROUNDS=1 DUR=3 bash benches/nginx.sh   # quick check
#
# Scenarios, all with wrk at CONNS connections and the same "Authorization: Bearer
# KEY" header:
#   a   nginx "return 200"
#   b   apikeyd GET /v1/auth directly, with a valid key among N keys
#   c   nginx auth_request to a trivial upstream answering 204, protecting a static file
#   d   the same nginx auth_request to apikeyd (upstream keepalive as in the shipped
#       config/proxies/nginx.conf, whose auth location and upstream are used verbatim)
#   d0  d again with apikeyd switched to the kernel's default CPU scheduling policy
#       (for comparison; not a target)
# ("return" runs before auth_request, so the protected location serves a file.)
# apikeyd runs as the shipped systemd unit runs it: CPUSchedulingPolicy=batch
# (chrt --batch), so its wake-ups do not preempt the proxy it answers; see
# docs/benchmarks.md ("Forward-auth against nginx"). d0 shows what that is worth.
# The servers (nginx with one worker, apikeyd with worker_threads = 1) are pinned to
# SERVER_CPU, wrk (one thread) to CLIENT_CPU. Rounds run the scenarios in turn,
# forwards in odd rounds and backwards in even ones, so that a machine getting
# faster or slower during a round does not favour one side of a ratio. Prints req/s,
# p50 and p99 per scenario and round, the medians over the rounds, and b/a, d/c and
# d0/c as medians of the per-round ratios. Targets: b/a >= 0.85, d/c >= 0.95.
#
# Environment: N (keys, 1000000), ROUNDS (5), DUR (seconds per run, 8), WARMUP
# (seconds, 2), CONNS (32), SERVER_CPU (0), CLIENT_CPU (1), BASE_PORT (18700; uses
# five ports from there), KEEP=1 keeps the temp dir, CARGO_TARGET_DIR as for cargo,
# APIKEYD_BIN to use an apikeyd binary already built instead of building one.
# Installs wrk, nginx and util-linux (taskset, chrt) from Debian's packages when
# missing (apt-get; sudo when not root) and builds apikeyd in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

N=${N:-1000000}
ROUNDS=${ROUNDS:-5}
DUR=${DUR:-8}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASE_PORT=${BASE_PORT:-18700}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SNIPPET=$ROOT/config/proxies/nginx.conf

P_APIKEYD=$BASE_PORT
P_A=$((BASE_PORT + 1))
P_STUB=$((BASE_PORT + 2))
P_C=$((BASE_PORT + 3))
P_D=$((BASE_PORT + 4))

say() { printf '%s\n' "$*" >&2; }
die() { say "nginx.sh: $*"; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# --- tools -------------------------------------------------------------------------
find_nginx() {
  command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true
}
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ -n "$(find_nginx)" ] || missing+=(nginx)
{ command -v taskset && command -v chrt; } >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq || true
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX=$(find_nginx)
[ -n "$NGINX" ] || die "nginx not found after installing it"
command -v wrk >/dev/null 2>&1 || die "wrk not found after installing it"
[ "$(nproc)" -ge 2 ] || say "WARNING: $(nproc) CPU(s): server and client share a core"

if [ -n "${APIKEYD_BIN:-}" ]; then
  APIKEYD=$APIKEYD_BIN
else
  # test-hooks: `apikeyd seed-keys`, which shipped builds lack. The feature adds
  # nothing to the request path, so the figures are those of a release build.
  say "building apikeyd (release, with the test-hooks feature for seed-keys)"
  cargo build --release --quiet --bin apikeyd --features test-hooks
  APIKEYD=$TARGET_DIR/release/apikeyd
fi
"$APIKEYD" seed-keys --help >/dev/null 2>&1 ||
  die "$APIKEYD has no seed-keys subcommand (build it with --features test-hooks)"

# --- temp dir and cleanup ------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/apikeyd-bench.XXXXXX")
APIKEYD_PID=""
NGINX_PID=""
stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$NGINX_PID"
  stop_pid "$APIKEYD_PID"
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then say "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One HTTP request over bash's /dev/tcp; prints the status code (empty on failure).
http_status() { # PORT PATH [HEADER]
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
    if [ -n "${3:-}" ]; then
      printf 'GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n%s\r\n\r\n' "$2" "$3" >&3
    else
      printf 'GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' "$2" >&3
    fi
    IFS=' ' read -r _ code _ <&3 || true
    printf '%s' "${code:-}"
  ) 2>/dev/null
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_up() { # PORT SECONDS PID: until the port answers HTTP, while PID lives
  local end=$((SECONDS + $2))
  until [ -n "$(http_status "$1" /)" ]; do
    [ $SECONDS -lt $end ] && kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
}
for p in $P_APIKEYD $P_A $P_STUB $P_C $P_D; do
  port_free "$p" || die "port $p is in use (set BASE_PORT)"
done

# --- apikeyd: config, keys, start ------------------------------------------------------
CONF=$TMP/apikeyd.toml
cat >"$CONF" <<EOF
[server]
listen = "127.0.0.1:$P_APIKEYD"
state_dir = "$TMP/state"
admin_socket = "$TMP/apikeyd.sock"
worker_threads = 1

[ApiKey]
MaxExpirationPeriod = "p6m"
NotAccessedExpirationPeriod = "p3m"
DefaultExpirationPeriod = "p1y"

[auth]
trusted_proxies = ["127.0.0.1/32"]

[groups.Bench]
scopes = ["bench:read"]
create_keys = true

[users.bench]
email = "bench@example.com"
groups = ["Bench"]
EOF

say "seeding $N keys"
KEY=$("$APIKEYD" seed-keys --config "$CONF" --count "$N" --user bench --print-key)
[ -n "$KEY" ] || die "seed-keys printed no key"
AUTH="Authorization: Bearer $KEY"

RUST_LOG=warn taskset -c "$SERVER_CPU" chrt --batch 0 "$APIKEYD" --config "$CONF" \
  >"$TMP/apikeyd.out" 2>"$TMP/apikeyd.log" &
APIKEYD_PID=$!
wait_up "$P_APIKEYD" 600 "$APIKEYD_PID" || { cat "$TMP/apikeyd.log" >&2; die "apikeyd did not start"; }

# --- nginx: one worker, four servers -------------------------------------------------------
mkdir -p "$TMP/nginx" "$TMP/www"
echo "protected" >"$TMP/www/ok.txt"
# The shipped upstream and auth location, verbatim but for addresses and names.
upstream_block=$(awk '/^upstream apikeyd \{/ {on=1} on {print} on && /^\}/ {exit}' "$SNIPPET")
auth_location=$(awk '/BEGIN apikeyd auth location/ {on=1; next} /END apikeyd auth location/ {exit} on {print}' "$SNIPPET")
[ -n "$upstream_block" ] && [ -n "$auth_location" ] || die "cannot find the upstream or auth location in $SNIPPET"
grep -q 'server 127.0.0.1:8700;' <<<"$upstream_block" || die "unexpected upstream block in $SNIPPET"
upstream_apikeyd=${upstream_block//127.0.0.1:8700/127.0.0.1:$P_APIKEYD}
upstream_stub=${upstream_block//127.0.0.1:8700/127.0.0.1:$P_STUB}
upstream_stub=${upstream_stub/upstream apikeyd/upstream stub204}
auth_location_stub=${auth_location//http:\/\/apikeyd\//http://stub204/}
[ "$auth_location_stub" != "$auth_location" ] || die "no proxy_pass http://apikeyd/ in the auth location"
protected='
        location / {
            auth_request /_apikeyd_auth;
            auth_request_set $api_key_name $upstream_http_x_api_key_name;
            auth_request_set $api_key_reason $upstream_http_x_api_key_reason;
        }'
user_line=""
[ "$(id -u)" -eq 0 ] && user_line="user root;"
cat >"$TMP/nginx/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    default_type text/plain;
    # wrk's connections stay open for the whole run (the default closes them after
    # 1000 requests, which apikeyd's server does not do).
    keepalive_requests 1000000;

$upstream_apikeyd

$upstream_stub

    # (a)
    server {
        listen 127.0.0.1:$P_A;
        location / { return 200 "ok\n"; }
    }
    # the trivial auth upstream for (c)
    server {
        listen 127.0.0.1:$P_STUB;
        location / { return 204; }
    }
    # (c)
    server {
        listen 127.0.0.1:$P_C;
        root $TMP/www;
$auth_location_stub
$protected
    }
    # (d)
    server {
        listen 127.0.0.1:$P_D;
        root $TMP/www;
$auth_location
$protected
    }
}
EOF
"$NGINX" -t -q -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" \
  || die "nginx -t failed; config in $TMP/nginx/nginx.conf (KEEP=1 to keep it)"
taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" \
  -e "$TMP/nginx/error.log" -g 'daemon off;' >"$TMP/nginx/stderr.log" 2>&1 &
NGINX_PID=$!
for p in $P_A $P_STUB $P_C $P_D; do
  wait_up "$p" 20 "$NGINX_PID" || { cat "$TMP/nginx/error.log" >&2; die "nginx did not listen on $p"; }
done

# --- sanity: every scenario answers 200 for the key, d refuses a wrong one -----------------
expect() { # WHAT PORT PATH HEADER STATUS
  local got
  got=$(http_status "$2" "$3" "$4") || true
  [ "$got" = "$5" ] || die "$1: expected $5, got '${got:-no answer}'"
}
expect "a" "$P_A" / "$AUTH" 200
expect "b" "$P_APIKEYD" /v1/auth "$AUTH" 200
expect "c" "$P_C" /ok.txt "$AUTH" 200
expect "d" "$P_D" /ok.txt "$AUTH" 200
expect "d, wrong key" "$P_D" /ok.txt "Authorization: Bearer wrong" 401

# --- runs ----------------------------------------------------------------------------------
SCENARIOS="a b c d d0"
declare -A URL=(
  [a]="http://127.0.0.1:$P_A/"
  [b]="http://127.0.0.1:$P_APIKEYD/v1/auth"
  [c]="http://127.0.0.1:$P_C/ok.txt"
  [d]="http://127.0.0.1:$P_D/ok.txt"
  [d0]="http://127.0.0.1:$P_D/ok.txt"
)
declare -A LABEL=(
  [a]="nginx return 200"
  [b]="apikeyd /v1/auth"
  [c]="nginx auth_request -> 204 stub"
  [d]="nginx auth_request -> apikeyd"
  [d0]="d, apikeyd default CPU policy"
)
# apikeyd's scheduling policy, every thread: batch as shipped, or the default.
policy() { chrt "--$1" -a -p 0 "$APIKEYD_PID" >/dev/null; }
RESULTS=$TMP/results.tsv
: >"$RESULTS"

# wrk's output -> "RPS P50_US P99_US ERRORS"
parse_wrk() {
  awk '
    function us(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v + 0 }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v * 1000 }
      if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000000 }
      return v + 0
    }
    $1 == "50%" { p50 = us($2) }
    $1 == "99%" { p99 = us($2) }
    $1 == "Requests/sec:" { rps = $2 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    /Socket errors:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { v = $i; sub(/,/, "", v); err += v } }
    END { printf "%.0f %.1f %.1f %d\n", rps, p50, p99, err }
  '
}
run_wrk() { # SCENARIO SECONDS
  [ "$1" = d0 ] && policy other
  taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${2}s" --latency -H "$AUTH" "${URL[$1]}"
  [ "$1" = d0 ] && policy batch
  return 0
}

say "warming up (${WARMUP}s each)"
for s in $SCENARIOS; do run_wrk "$s" "$WARMUP" >/dev/null; done

echo "apikeyd forward-auth vs nginx: $N keys, $CONNS connections, ${DUR}s per run, $ROUNDS rounds;"
echo "servers on CPU $SERVER_CPU (nginx 1 worker; apikeyd worker_threads = 1, SCHED_BATCH but in d0), wrk -t1 on CPU $CLIENT_CPU"
echo "nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}'), $(nproc) CPUs"
printf '\n%-5s %-34s %10s %10s %10s\n' round scenario req/s p50_us p99_us
for r in $(seq "$ROUNDS"); do
  order=$SCENARIOS
  [ $((r % 2)) -eq 0 ] && order=$(tr ' ' '\n' <<<"$SCENARIOS" | tac | tr '\n' ' ')
  for s in $order; do
    out=$(run_wrk "$s" "$DUR")
    read -r rps p50 p99 err <<<"$(parse_wrk <<<"$out")"
    printf '%-5s %-34s %10s %10s %10s%s\n' "$r" "$s ${LABEL[$s]}" "$rps" "$p50" "$p99" \
      "$([ "$err" -gt 0 ] && echo "  ($err errors/non-2xx!)")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$s" "$rps" "$p50" "$p99" "$err" >>"$RESULTS"
  done
done

# --- medians ---------------------------------------------------------------------------------
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -F'\t' -v s="$1" -v c="$2" '$2 == s { print $c }' "$RESULTS"; }
ratios() { # X Y: per-round rps(X)/rps(Y)
  awk -F'\t' -v x="$1" -v y="$2" '$2 == x { a[$1] = $3 } $2 == y { b[$1] = $3 }
    END { for (r in a) if (b[r] > 0) printf "%.4f\n", a[r] / b[r] }' "$RESULTS"
}
printf '\nmedian of %s rounds\n%-40s %10s %10s %10s\n' "$ROUNDS" scenario req/s p50_us p99_us
for s in $SCENARIOS; do
  printf '%-40s %10.0f %10.1f %10.1f\n' "$s ${LABEL[$s]}" \
    "$(col "$s" 3 | median)" "$(col "$s" 4 | median)" "$(col "$s" 5 | median)"
done
ba=$(ratios b a | median)
dc=$(ratios d c | median)
d0c=$(ratios d0 c | median)
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v >= t) ? "meets" : "BELOW" }'; }
printf '\nb/a = %.3f (target >= 0.85: %s)\n' "$ba" "$(verdict "$ba" 0.85)"
printf 'd/c = %.3f (target >= 0.95: %s)\n' "$dc" "$(verdict "$dc" 0.95)"
printf 'd0/c = %.3f (apikeyd under the default CPU policy; for comparison)\n' "$d0c"
errors=$(awk -F'\t' '{ e += $6 } END { print e + 0 }' "$RESULTS")
[ "$errors" -eq 0 ] || say "WARNING: $errors socket errors or non-2xx answers in the runs above"
