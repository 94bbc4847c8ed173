#!/usr/bin/env bash
# Builds the Debian package target/debian/apikeyd_VERSION-1_ARCH.deb:
# the release binaries, then the man pages, completions and packaged configuration
# made from them (packaging/generate.sh), then `cargo deb` with what
# [package.metadata.deb] in Cargo.toml lists. cargo-deb cannot run a step between
# its build and its packaging, hence --no-build after our own build.
# Needs cargo-deb: cargo install cargo-deb --locked
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
  echo "build-deb.sh: cargo-deb is missing; install it with: cargo install cargo-deb --locked" >&2
  exit 1
fi
cargo build --release --bin apikeyd --bin apikeyctl
bash packaging/generate.sh
cargo deb --no-build "$@"
