#!/usr/bin/env bash
# Builds a local Debian base image (localhost/debian-base:SUITE) with debootstrap,
# for machines that cannot pull from a container registry.
# Usage: scripts/make-base-image.sh [SUITE]   (bookworm by default; trixie works too)
# Idempotent: returns at once when the image already exists. Needs root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
suite=${1:-bookworm}
image=${BASE_IMAGE_NAME:-localhost/debian-base}:$suite
: "${CONTAINERS_CONF:=/etc/tusk-test/containers.conf}"
export CONTAINERS_CONF
# podman (with its configuration) and debootstrap must be there.
[ -f "$CONTAINERS_CONF" ] && command -v debootstrap >/dev/null ||
    "$here/podman-setup.sh" "$CONTAINERS_CONF" >/dev/null

# The base's revision: an image made by an older version of this script is
# made again (revision 2: "/" is 0755; before, it kept mktemp's 0700, which
# rootless podman's vfs driver applies, leaving non-root users unable to
# enter "/").
revision=2
if podman image exists "$image"; then
    have=$(podman image inspect --format '{{index .Labels "tusk.base.revision"}}' "$image" 2>/dev/null || true)
    if [ "$have" = "$revision" ]; then
        echo "$image already exists" >&2
        exit 0
    fi
    echo "$image is of an older revision (${have:-1}); making it again" >&2
fi

# Host apt sources, deb822 (*.sources) and one-line (*.list) formats. Disabled files
# (any other suffix) are ignored.
shopt -s nullglob
sources=(/etc/apt/sources.list.d/*.sources)
lists=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
shopt -u nullglob

# Keep only Debian's own repositories (drops google, nodesource, docker, ...): an
# entry signed by debian-archive-keyring, or one with no signed-by at all whose URI
# path ends in /debian or /debian-security.
debian_stanzas() {
    [ ${#sources[@]} -gt 0 ] || return 0
    awk -v RS= -v ORS='\n\n' '
        !/(^|\n)Types:[^\n]*deb/ { next }
        /(^|\n)Signed-By:[^\n]*debian-archive-keyring/ { print; next }
        !/(^|\n)Signed-By:/ && /(^|\n)URIs:[^\n]*\/debian(-security)?\/?([ \t\n]|$)/ { print }
    ' "${sources[@]}"
}
debian_lines() {
    for f in "${lists[@]}"; do
        [ -f "$f" ] || continue
        grep -E '^[[:space:]]*deb[[:space:]]' "$f" |
            grep -E 'signed-by=[^] ]*debian-archive-keyring|^[^[]*deb[[:space:]]+[^[[:space:]]+/debian(-security)?/?[[:space:]]' || true
    done
}

# Mirror for debootstrap: first non-security Debian URI of the host.
mirror=$( { debian_stanzas | sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n'
            debian_lines | sed -E 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/'
          } | grep -v -- '-security' | grep . | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}

# The host's codename; rewritten to $suite in the copied sources (bookworm-updates
# -> trixie-updates, ...).
host_suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")

rootfs=$(mktemp -d /var/tmp/debian-base.XXXXXX)
trap 'rm -rf --one-file-system "$rootfs"' EXIT

echo "debootstrap $suite from $mirror" >&2
t0=$(date +%s)
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >&2
t1=$(date +%s)

# Apt sources: the host's Debian entries, suite-adjusted; debootstrap's own
# sources.list only names the main suite (no updates, no security).
rm -f "$rootfs/etc/apt/sources.list"
debian_stanzas | sed "s/\b$host_suite\b/$suite/g" >"$rootfs/etc/apt/sources.list.d/debian.sources"
debian_lines | sed "s/\b$host_suite\b/$suite/g" >"$rootfs/etc/apt/sources.list"
[ -s "$rootfs/etc/apt/sources.list.d/debian.sources" ] || rm -f "$rootfs/etc/apt/sources.list.d/debian.sources"
[ -s "$rootfs/etc/apt/sources.list" ] || rm -f "$rootfs/etc/apt/sources.list"
[ -e "$rootfs/etc/apt/sources.list.d/debian.sources" ] || [ -e "$rootfs/etc/apt/sources.list" ] ||
    echo "deb $mirror $suite main" >"$rootfs/etc/apt/sources.list"

# Slim down like the official -slim images (debuerreotype's slimify + minimizing
# config): dpkg skips docs/man/translations from now on, apt keeps no caches.
cp "$here/../image/dpkg-slim.cfg" "$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
cp "$here/../image/apt-clean.conf" "$rootfs/etc/apt/apt.conf.d/docker-clean"
# Package scripts must not try to start services during image builds.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
# Drop the docs etc. debootstrap already installed. ${rootfs:?} guards against an
# empty variable ever pointing these at the host.
find "${rootfs:?}/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "${rootfs:?}/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/var/cache/apt/*.bin \
    "${rootfs:?}"/var/cache/apt/archives/*.deb "${rootfs:?}"/usr/share/man/* \
    "${rootfs:?}"/usr/share/info/* "${rootfs:?}"/usr/share/groff/* "${rootfs:?}"/var/log/*.log

# mktemp -d made the root 0700; the layer's "./" entry must say 0755, or
# storage drivers that apply it (rootless vfs) leave non-root users unable to
# enter `/`.
chmod 0755 "$rootfs"
tar -C "$rootfs" --numeric-owner -c . |
    podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
        --change "LABEL tusk.base.revision=$revision" - "$image" >&2
t2=$(date +%s)
echo "$image: debootstrap $((t1 - t0)) s, import $((t2 - t1)) s" >&2
