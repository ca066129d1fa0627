#!/usr/bin/env bash
# Builds the tusk container image with podman.
# Usage: scripts/build-image.sh [TAG]      (default localhost/tusk:latest)
# Environment:
#   BASE_IMAGE     base image; default: the public debian:SUITE-slim when a registry
#                  is reachable, else localhost/debian-base:SUITE (made on demand
#                  by make-base-image.sh)
#   SUITE          Debian suite for the default base (bookworm; trixie for PG 17)
#   PGVERSION      PostgreSQL major version (15)
#   WITH_JIT=true  keep PostgreSQL's LLVM JIT (+160 MB; left out by default)
#   LOCALES        locales to generate besides C.UTF-8 (default "en_US.UTF-8")
#   SKIP_CARGO=1   use the existing $CARGO_TARGET_DIR/release/tusk as is
# An image that already carries the same content label (binary, Containerfile,
# image/, base image id, build arguments) is reused: tagged, not rebuilt.
#   CONTAINERS_CONF  podman configuration (default /etc/tusk-test/containers.conf,
#                  written by podman-setup.sh)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
tag=${1:-localhost/tusk:latest}
suite=${SUITE:-bookworm}
pgversion=${PGVERSION:-15}
: "${CONTAINERS_CONF:=/etc/tusk-test/containers.conf}"
export CONTAINERS_CONF
[ -f "$CONTAINERS_CONF" ] || "$here/podman-setup.sh" "$CONTAINERS_CONF" >/dev/null

# 1. The binary, built on the host (no Rust toolchain in the image).
if [ "${SKIP_CARGO:-0}" != 1 ]; then
    # Run from a test, cargo's per-package variables (CARGO_MANIFEST_DIR, ...)
    # are set, and build scripts that track them (ring's) would rebuild half
    # the release tree; keep only the user's cargo settings.
    (
        cd "$root"
        for v in $(compgen -e | grep '^CARGO' | grep -vE '^CARGO_(HOME|TARGET_DIR|BUILD_JOBS|NET_[A-Z_]+|REGISTRIES_[A-Z_]+|INCREMENTAL)$'); do
            unset "$v"
        done
        cargo build --release --bin tusk
    )
fi
target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir="$root/$target_dir" ;; esac
bin="$target_dir/release/tusk"
[ -x "$bin" ] || { echo "missing $bin" >&2; exit 1; }

# 2. The base image.
if [ -n "${BASE_IMAGE:-}" ]; then
    base=$BASE_IMAGE
elif curl -s -m 5 -o /dev/null https://registry-1.docker.io/v2/ 2>/dev/null; then
    base=docker.io/library/debian:$suite-slim
else
    echo "no registry reachable: using a debootstrapped base" >&2
    "$here/make-base-image.sh" "$suite"
    base=localhost/debian-base:$suite
fi

# 3. Reuse: the same inputs make the same image.
base_id=$(podman image inspect --format '{{.Id}}' "$base" 2>/dev/null || echo "$base")
sum=$( { echo "$base_id $pgversion ${WITH_JIT:-false} ${LOCALES-en_US.UTF-8}"
         cat "$root/Containerfile" "$bin"; find "$root/image" -type f | sort | xargs cat; } | sha256sum | cut -c1-32)
# awk reads every line: `head -n1` would leave podman writing into a closed
# pipe when several tags name the image (SIGPIPE, and pipefail ends the script).
have=$(podman images --filter "label=tusk.content=$sum" --format '{{.ID}}' | awk 'NR == 1')
if [ -n "$have" ]; then
    podman tag "$have" "$tag"
    size=$(podman image inspect --format '{{.Size}}' "$tag")
    echo "reused image $have as $tag (same binary and inputs)" >&2
    echo "image size: $((size / 1000000)) MB ($size bytes)"
    exit 0
fi

# 4. A small build context: Containerfile, image/, the binary.
ctx=$(mktemp -d /var/tmp/tusk-image-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$root/Containerfile" "$ctx/"
cp -r "$root/image" "$ctx/image"
cp "$bin" "$ctx/tusk"

# 5. Build. --network host: the build reaches the Debian mirror like the host does.
previous=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
t0=$(date +%s)
# --format docker: the OCI format has no HEALTHCHECK.
podman build --network host --format docker \
    --build-arg BASE_IMAGE="$base" --build-arg PGVERSION="$pgversion" \
    --build-arg WITH_JIT="${WITH_JIT:-false}" \
    --build-arg LOCALES="${LOCALES-en_US.UTF-8}" --label tusk.content="$sum" \
    -t "$tag" "$ctx" >&2
t1=$(date +%s)

# The image the tag named before is left untagged: remove it (podman
# refuses, harmlessly, while another tag or a container still uses it).
now=$(podman image inspect --format '{{.Id}}' "$tag")
if [ -n "$previous" ] && [ "$previous" != "$now" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "built $tag from $base (PostgreSQL $pgversion) in $((t1 - t0)) s" >&2
echo "image size: $((size / 1000000)) MB ($size bytes)"
