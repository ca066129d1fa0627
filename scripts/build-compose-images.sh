#!/usr/bin/env bash
# Builds the compose example's helper images from Debian packages:
#   etcd (etcd-server) and HAProxy (haproxy), deploy/compose/*.Containerfile.
# Usage: scripts/build-compose-images.sh [ETCD_TAG [HAPROXY_TAG]]
#        (default localhost/tusk-etcd:latest, localhost/tusk-haproxy:latest)
# Environment: BASE_IMAGE, SUITE (bookworm), CONTAINERS_CONF, as build-image.sh.
# An image already carrying the same content label (its Containerfile, the
# files it copies and the base image's id) is reused, not rebuilt; the two
# builds run in parallel.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
etcd_tag=${1:-localhost/tusk-etcd:latest}
haproxy_tag=${2:-localhost/tusk-haproxy:latest}
suite=${SUITE:-bookworm}
: "${CONTAINERS_CONF:=/etc/tusk-test/containers.conf}"
export CONTAINERS_CONF
[ -f "$CONTAINERS_CONF" ] || "$here/podman-setup.sh" "$CONTAINERS_CONF" >/dev/null

if [ -n "${BASE_IMAGE:-}" ]; then
    base=$BASE_IMAGE
elif curl -s -m 5 -o /dev/null https://registry-1.docker.io/v2/ 2>/dev/null; then
    base=docker.io/library/debian:$suite-slim
    podman pull -q "$base" >/dev/null
else
    "$here/make-base-image.sh" "$suite"
    base=localhost/debian-base:$suite
fi
base_id=$(podman image inspect --format '{{.Id}}' "$base")

ctx=$(mktemp -d /var/tmp/tusk-compose-ctx.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$root"/deploy/compose/*.Containerfile "$ctx/"
cp -r "$root/image" "$ctx/image"

# build NAME TAG: reuses an image with the same content label, else builds.
build() {
    local name=$1 tag=$2 sum have t0
    sum=$( { echo "$base_id"; cat "$ctx/$name.Containerfile" "$ctx/image/dpkg-slim.cfg" "$ctx/image/apt-clean.conf"; } |
        sha256sum | cut -c1-32)
    have=$(podman image inspect --format '{{index .Labels "tusk.content"}}' "$tag" 2>/dev/null || true)
    if [ "$have" = "$sum" ]; then
        echo "$tag: up to date" >&2
        return 0
    fi
    t0=$(date +%s)
    podman build --network host --format docker --build-arg BASE_IMAGE="$base" \
        --label tusk.content="$sum" -f "$ctx/$name.Containerfile" -t "$tag" "$ctx" >"$ctx/$name.log" 2>&1 ||
        { cat "$ctx/$name.log" >&2; echo "building $tag failed" >&2; return 1; }
    echo "built $tag in $(($(date +%s) - t0)) s" >&2
}

build etcd "$etcd_tag" & e=$!
build haproxy "$haproxy_tag" & h=$!
rc=0
wait $e || rc=1
wait $h || rc=1
exit $rc
