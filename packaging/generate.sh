#!/usr/bin/env bash
# Writes what the Debian package ships besides the binaries, from the built binaries:
#   OUT/man/man8/apikeyd*.8.gz, OUT/man/man1/apikeyctl*.1.gz (clap_mangen)
#   OUT/completions/{bash,zsh,fish}/                      (clap_complete)
#   OUT/apikeyd.toml                                      the packaged configuration
# Usage: packaging/generate.sh [BIN_DIR [OUT]]
#   BIN_DIR defaults to $CARGO_TARGET_DIR/release (target/release), OUT to BIN_DIR/assets,
#   where Cargo.toml's [package.metadata.deb] assets expect them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:-${CARGO_TARGET_DIR:-target}/release}
out=${2:-$bin_dir/assets}

rm -rf "$out"
mkdir -p "$out"
"$bin_dir/apikeyd" generate-docs --out "$out"
"$bin_dir/apikeyctl" generate-docs --out "$out"
# Debian policy: man pages gzip -9n. cargo-deb compresses single man page assets,
# not those it finds through a glob, so they are compressed here.
gzip -9n "$out"/man/man*/*

# config/apikeyd.toml is set up for running from the source tree (data in ./var,
# plugins in ./plugins). Under systemd the relative state_dir and admin_socket would
# land in /var/lib/apikeyd and /run/apikeyd anyway, but the package names them
# outright, so that `apikeyd` and `apikeyctl` run by hand with this file find the
# same places; plugins_dir must be absolute (the unit's working directory is /).
# Each replacement must hit exactly one line, or the package would ship the
# source-tree paths silently.
replace() { # KEY VALUE
  local n
  n=$(grep -c "^$1 = " config/apikeyd.toml || true)
  if [ "$n" != 1 ]; then
    echo "generate.sh: expected one '$1 = ' line in config/apikeyd.toml, found $n" >&2
    exit 1
  fi
  sed_args+=(-e "s|^$1 = .*|$1 = \"$2\"|")
}
sed_args=()
replace state_dir /var/lib/apikeyd
replace admin_socket /run/apikeyd/apikeyd.sock
replace plugins_dir /usr/lib/apikeyd/plugins
sed "${sed_args[@]}" config/apikeyd.toml >"$out/apikeyd.toml"
echo "generate.sh: wrote $out"
