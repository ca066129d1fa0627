#!/usr/bin/env bash
# Benchmark: tusk's image under podman, 3 nodes (issue 10). Prints a table:
# image size, `podman save | podman load` into an empty store, podman run ->
# ready for a fresh cluster, podman stop / kill of the leader -> first write
# elsewhere (ttl 30 = tusk's defaults, and ttl 10), idle memory per container.
# tusk's figures only: Patroni does not run as a container on these machines.
#
# Runs the ignored test `bench_podman_cluster` in tests/podman_cluster.rs
# (same harness as the test: per-node network and UTS namespaces, etcd with
# mutual TLS on a test bridge). Needs root and podman (scripts/podman-setup.sh).
# Environment: TUSK_BENCH_ROUNDS (3) stops and kills per setting.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo build --release --locked --bin tusk >&2
exec cargo test --locked --test podman_cluster -- --ignored --exact bench_podman_cluster --nocapture --test-threads=1
