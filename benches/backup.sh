#!/usr/bin/env bash
# Backup and restore at scale (issue 13, part 5; the short version is
# tests/it/backup.rs).
#
#   bash benches/backup.sh                 # N=100000 keys
#   N=10000 bash benches/backup.sh         # quick check
#
# Seeds N keys (apikeyd seed-keys), starts apikeyd, keeps creating keys with
# apikeyctl while `apikeyctl backup` runs, then restores the file with
# `apikeyd restore` into a new state directory holding a copy of the server secret,
# starts apikeyd there and checks: the counts the restore reports are the
# snapshot's, a seeded key and every key acknowledged before the backup started
# verify. Prints the backup's size and time, the creates acknowledged while it ran,
# the daemon's peak RSS before and after, and the restore's time.
#
# Environment: N (100000), KEEP=1 keeps the temp dir, CARGO_TARGET_DIR as for cargo.
# Builds apikeyd in release mode with the test-hooks feature (for seed-keys).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
cargo build --release --features test-hooks --bins -q
BIN=${CARGO_TARGET_DIR:-target}/release
TMP=$(mktemp -d)
DAEMON=
cleanup() {
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
    [ "${KEEP:-0}" = 1 ] && echo "kept $TMP" || rm -rf "$TMP"
}
trap cleanup EXIT

config() { # DIR
    cat > "$1/apikeyd.toml" <<EOF
[server]
listen = "127.0.0.1:0"
state_dir = "$1/state"
admin_socket = "$1/apikeyd.sock"
[ApiKey]
MaxExpirationPeriod = "p6m"
MaxKeysPerUser = 0
[groups.Admin]
scopes = ["catalog:read", "apikeyd:admin"]
create_keys = true
manage_all_keys = true
[users.admin]
groups = ["Admin"]
unix_user = "$(id -un)"
[users.alice]
groups = ["Admin"]
EOF
}

start() { # DIR
    "$BIN/apikeyd" --config "$1/apikeyd.toml" > "$1/out" 2> "$1/log" &
    DAEMON=$!
    for _ in $(seq 600); do
        "$BIN/apikeyctl" --socket "$1/apikeyd.sock" whoami > /dev/null 2>&1 && return
        sleep 0.1
    done
    echo "apikeyd did not start:" >&2; cat "$1/log" >&2; exit 1
}

stop() {
    kill "$DAEMON"; wait "$DAEMON" || true; DAEMON=
}

ctl() { "$BIN/apikeyctl" --socket "$DIR/apikeyd.sock" "$@"; }

DIR=$TMP/a; mkdir -p "$DIR"; config "$DIR"
SAMPLE=$("$BIN/apikeyd" --config "$DIR/apikeyd.toml" seed-keys --count "$N" --user alice --print-key)
start "$DIR"

# The writer: one create after another, each acknowledged key appended to a file
# with the time it was acknowledged.
touch "$TMP/acked"
(
    i=0
    while [ ! -e "$TMP/stop" ]; do
        key=$(ctl key create --user admin --name "load$i" --json | sed -n 's/.*"key": *"\([^"]*\)".*/\1/p')
        echo "$(date +%s.%N) $key" >> "$TMP/acked"
        i=$((i + 1))
    done
) &
WRITER=$!
while [ "$(wc -l < "$TMP/acked" 2>/dev/null || echo 0)" -lt 5 ]; do sleep 0.05; done

peak() { awk '/VmHWM/ {print $2}' "/proc/$DAEMON/status"; }
PEAK0=$(peak)
STARTED=$(date +%s.%N)
ctl backup "$TMP/backup.redb" --json > "$TMP/backup.json" 2> "$TMP/reminder"
ENDED=$(date +%s.%N)
PEAK1=$(peak)
touch "$TMP/stop"; wait "$WRITER"
stop
# Regression check: the snapshot's copy once sat in the daemon's memory whole (redb's
# default 1 GiB cache), +580 MB for 1M keys.
echo "daemon peak RSS: $PEAK0 kB before the backup, $PEAK1 kB after"
python3 - "$TMP/backup.json" "$STARTED" "$ENDED" "$TMP/acked" <<'EOF'
import json, sys
b = json.load(open(sys.argv[1]))
started, ended = float(sys.argv[2]), float(sys.argv[3])
acked = [l.split() for l in open(sys.argv[4]) if l.strip()]
during = sum(1 for t, _ in acked if started <= float(t) <= ended)
c = b["snapshot"]["counts"]
print(f"backup: {c['keys']} keys, {c['audit']} audit entries, {c['jobs']} jobs; "
      f"{b['bytes'] / 1e6:.1f} MB in {b['seconds']:.2f} s; "
      f"{during} creates acknowledged while it ran")
EOF
cat "$TMP/reminder"

# A new machine: its own state directory, the same server secret.
NEW=$TMP/b; mkdir -p "$NEW/state"; config "$NEW"
cp "$DIR/state/server.secret" "$NEW/state/server.secret"
T0=$(date +%s.%N)
"$BIN/apikeyd" --config "$NEW/apikeyd.toml" restore "$TMP/backup.redb"
T1=$(date +%s.%N)
echo "restore: $(python3 -c "print(f'{$T1 - $T0:.2f}')") s"
DIR=$NEW
start "$NEW"
ctl verify "$SAMPLE" > /dev/null || { echo "a seeded key does not verify" >&2; exit 1; }
checked=0
while read -r t key; do
    if python3 -c "import sys; sys.exit(0 if $t < $STARTED else 1)"; then
        ctl verify "$key" > /dev/null || { echo "a key acknowledged before the backup does not verify" >&2; exit 1; }
        checked=$((checked + 1))
    fi
done < "$TMP/acked"
echo "after the restore: a seeded key and the $checked keys acknowledged before the backup verify"
stop
