#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine as root: installs what
# it needs (PostgreSQL 15, etcd, garage, podman, ...; see
# scripts/install-testbed.sh), then runs every unit and integration test
# against the real components. Same command as .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)

[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (tests start PostgreSQL as the postgres user, and podman)" >&2; exit 1; }
scripts/install-rust.sh
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-postgres.sh 15
scripts/install-testbed.sh
scripts/podman-setup.sh >/dev/null
echo "test.sh: test bed ready after $(( $(date +%s) - t0 )) s"

# Release build first: the integration tests run it (tests/support/node.rs
# refuses a missing or stale target/release/tusk), the image test packs it,
# the benchmarks use it.
cargo build --release --locked
cargo test --locked --no-fail-fast -- --test-threads=2
echo "test.sh: all tests passed in $(( $(date +%s) - t0 )) s"
