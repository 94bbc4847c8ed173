#!/usr/bin/env bash
# The package test (issue 14): builds the .deb, installs it with `dpkg -i`, and checks
# the installed system: the apikeyd user and the directories with their modes, the
# conffile, `apikeyd check-config /etc/apikeyd/apikeyd.toml` (as root and as the
# daemon's user), `systemd-analyze verify` of the installed unit, the unit neither
# enabled nor started, `man` on every installed page, the completions; then purges.
#
# Where it installs: into a throwaway copy of this machine. `unshare --mount` gives the
# script a private mount namespace in which an overlayfs over / (changes go to a temp
# dir) becomes the root of a chroot; dpkg, the maintainer scripts, systemd-sysusers
# and systemd-tmpfiles run there exactly as on a real install, against this machine's
# own packages, and nothing reaches the real /etc/passwd, /usr or dpkg database.
# Safer than `dpkg -i` on the machine itself (which a developer running this would
# not want on a workstation), and more faithful than `dpkg --root` into an empty
# directory (the maintainer scripts run chrooted there and need a whole system in
# it; debootstrap would need a Debian mirror and minutes). Needs root and
# CAP_SYS_ADMIN (CI runs as root on a throwaway machine).
#
# Usage: packaging/test-deb.sh [DEB]   (without DEB: bash packaging/build-deb.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}

fail() {
  echo "test-deb: FAIL: $*" >&2
  exit 1
}

if [ "$(id -u)" -ne 0 ]; then
  fail "needs root (dpkg -i into an overlay of /, in a private mount namespace)"
fi

if [ $# -ge 1 ]; then
  deb=$1
else
  bash packaging/build-deb.sh
  deb=$(ls -t "$target"/debian/apikeyd_*.deb | head -1)
fi
[ -f "$deb" ] || fail "no package at $deb"
echo "test-deb: testing $deb"

# --- The package itself ---------------------------------------------------------
contents=$(dpkg-deb --contents "$deb" | awk '{print $NF}')
for path in \
  ./usr/bin/apikeyd ./usr/bin/apikeyctl \
  ./etc/apikeyd/apikeyd.toml \
  ./usr/lib/systemd/system/apikeyd.service \
  ./usr/lib/sysusers.d/apikeyd.conf \
  ./usr/lib/tmpfiles.d/apikeyd.conf \
  ./usr/share/man/man8/apikeyd.8.gz \
  ./usr/share/man/man8/apikeyd-check-config.8.gz \
  ./usr/share/man/man1/apikeyctl.1.gz \
  ./usr/share/man/man1/apikeyctl-key-create.1.gz \
  ./usr/share/man/man5/apikeyd.toml.5.gz \
  ./usr/share/bash-completion/completions/apikeyctl \
  ./usr/share/zsh/vendor-completions/_apikeyctl \
  ./usr/share/fish/vendor_completions.d/apikeyctl.fish \
  ./usr/share/bash-completion/completions/apikeyd \
  ./usr/lib/apikeyd/plugins/webhook; do
  grep -qxF "$path" <<<"$contents" || fail "the package lacks $path"
done
if grep -q "generate-docs\|seed-keys" <<<"$contents"; then
  fail "the package holds pages of hidden subcommands"
fi
control=$(mktemp -d "${TMPDIR:-/tmp}/apikeyd-deb-control.XXXXXX")
trap 'rm -rf "$control"' EXIT
dpkg-deb --control "$deb" "$control"
grep -qxF /etc/apikeyd/apikeyd.toml "$control/conffiles" ||
  fail "/etc/apikeyd/apikeyd.toml is not a conffile: $(cat "$control/conffiles" 2>/dev/null)"
# Once: cargo-deb inserts its fragments at every #DEBHELPER# token, comments included.
[ "$(grep -c '^ *systemd-sysusers ' "$control/postinst")" = 1 ] ||
  fail "the postinst does not run systemd-sysusers exactly once"
grep -q "systemd-tmpfiles" "$control/postinst" || fail "the postinst does not run systemd-tmpfiles"
grep -q "daemon-reload" "$control/postinst" || fail "the postinst does not reload systemd"
# Starting or enabling on install: cargo-deb's start fragment and its enable
# fragment's comment. (The try-restart after an upgrade only restarts a running service.)
if grep -q "deb-systemd-invoke start\|was-enabled defaults to true" "$control/postinst"; then
  fail "the postinst starts or enables the service"
fi

# --- Installed into an overlay of this machine ----------------------------------
scratch=$(mktemp -d "${TMPDIR:-/tmp}/apikeyd-deb-root.XXXXXX")
trap 'rm -rf "$control" "$scratch"' EXIT
mkdir -p "$scratch/upper" "$scratch/work" "$scratch/root"
cp "$deb" "$scratch/apikeyd.deb"
cp packaging/test-deb-inside.sh "$scratch/inside.sh"

unshare --mount --propagation private bash -euo pipefail -c '
  s=$1
  mount -t overlay overlay -o "lowerdir=/,upperdir=$s/upper,workdir=$s/work" "$s/root" ||
    { echo "test-deb: FAIL: cannot mount an overlay of / (needs CAP_SYS_ADMIN)" >&2; exit 1; }
  for m in proc sys dev dev/pts; do mount --rbind "/$m" "$s/root/$m"; done
  # A fresh /run and /tmp: no running systemd to talk to (as in a container), no
  # sockets of this machine.
  mount -t tmpfs tmpfs "$s/root/run"
  mount -t tmpfs tmpfs "$s/root/tmp"
  cp "$s/apikeyd.deb" "$s/inside.sh" "$s/root/tmp/"
  chroot "$s/root" bash /tmp/inside.sh /tmp/apikeyd.deb
' test-deb "$scratch"
echo "test-deb: OK"
