#!/usr/bin/env bash
# The half of packaging/test-deb.sh that runs inside the throwaway root (an overlay
# of the machine, chrooted): install, check, purge. Not meant to be run elsewhere:
# it installs the package on whatever system it runs on.
set -euo pipefail
deb=$1

fail() {
  echo "test-deb: FAIL: $*" >&2
  exit 1
}

if getent passwd apikeyd >/dev/null || [ -e /usr/bin/apikeyd ]; then
  fail "this root already has apikeyd installed; the test needs a clean one"
fi

# Dependencies come from this machine's packages, as on a real install.
dpkg -i "$deb" || fail "dpkg -i failed"
dpkg -s apikeyd | grep -q "^Status: install ok installed" || fail "dpkg does not list apikeyd as installed"

# The postinst: user, directories, modes.
getent passwd apikeyd >/dev/null || fail "no apikeyd user"
getent group apikeyd >/dev/null || fail "no apikeyd group"
expect_stat() { # PATH "MODE USER GROUP"
  local got
  got=$(stat -c '%a %U %G' "$1")
  [ "$got" = "$2" ] || fail "$1 is $got, expected $2"
}
expect_stat /etc/apikeyd "750 root apikeyd"
expect_stat /etc/apikeyd/apikeyd.toml "640 root apikeyd"
expect_stat /var/lib/apikeyd "750 apikeyd apikeyd"

# The packaged configuration is valid, names the system's paths, and the daemon's
# user can read it.
apikeyd check-config /etc/apikeyd/apikeyd.toml || fail "apikeyd check-config rejects the installed file"
runuser -u apikeyd -- apikeyd check-config ||
  fail "apikeyd check-config as the apikeyd user fails (the default --config is /etc/apikeyd/apikeyd.toml)"
for line in 'state_dir = "/var/lib/apikeyd"' 'admin_socket = "/run/apikeyd/apikeyd.sock"' \
  'plugins_dir = "/usr/lib/apikeyd/plugins"'; do
  grep -qxF "$line" /etc/apikeyd/apikeyd.toml || fail "the installed config lacks: $line"
done

# The unit: clean under systemd-analyze verify (which also checks that ExecStart
# exists), not enabled, not started (nothing can run it: no systemd here, and no
# apikeyd process may exist).
unit=/usr/lib/systemd/system/apikeyd.service
verify=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify failed: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify is not clean: $verify"
state=$(systemctl is-enabled apikeyd.service 2>&1 || true)
[ "$state" = disabled ] || fail "apikeyd.service is '$state' after install, expected disabled"
if compgen -G "/etc/systemd/system/*.wants/apikeyd.service" >/dev/null; then
  fail "the install enabled apikeyd.service"
fi
# Only the installed binary counts: this chroot shares the machine's processes, where
# other apikeyd (tests running beside this one) may be.
for pid in $(pgrep -x apikeyd || true); do
  case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in
    /usr/bin/apikeyd | /usr/sbin/apikeyd) fail "an apikeyd process runs after the install" ;;
  esac
done

# The man pages: found by name, rendered without warnings, every apikeyctl subcommand
# has its page.
for page in apikeyd.8 apikeyd-check-config.8 apikeyd-migrate.8 apikeyctl.1 apikeyctl-key.1 \
  apikeyctl-key-create.1 apikeyctl-verify.1 apikeyd.toml.5; do
  file=$(man -w "${page%.*}" 2>/dev/null) || fail "man -w ${page%.*}: not found"
  out=$(MANWIDTH=80 man --warnings -l "$file" 2>&1 >/dev/null) || fail "man -l $file failed"
  [ -z "$out" ] || fail "man -l $file warns: $out"
  MANWIDTH=80 man -l "$file" | grep -q "^NAME" || fail "man -l $file shows no NAME"
done

# The completions: bash parses them, and they offer the subcommands.
bash -n /usr/share/bash-completion/completions/apikeyctl || fail "bash rejects the apikeyctl completion"
bash -n /usr/share/bash-completion/completions/apikeyd || fail "bash rejects the apikeyd completion"
grep -q "check-config" /usr/share/zsh/vendor-completions/_apikeyd || fail "zsh completion lacks check-config"
grep -q "rotate" /usr/share/fish/vendor_completions.d/apikeyctl.fish || fail "fish completion lacks key rotate"

# Removal: the postrm runs; the conffile goes with --purge, the data directory stays.
dpkg --purge apikeyd || fail "dpkg --purge failed"
[ ! -e /usr/bin/apikeyd ] || fail "/usr/bin/apikeyd left after purge"
[ ! -e /etc/apikeyd/apikeyd.toml ] || fail "the conffile is left after purge"
echo "test-deb: installed, checked and purged in a throwaway root"
