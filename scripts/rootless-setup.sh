#!/usr/bin/env bash
# Prepares a non-root user for rootless podman, as on Fedora CoreOS: a user
# with subordinate uid/gid ranges (useradd adds them), uidmap (newuidmap),
# a private XDG_RUNTIME_DIR (no systemd/logind here to make /run/user/UID),
# and the same containers.conf as the rootful tests.
# Usage: scripts/rootless-setup.sh [USER]   (default tusk-rootless). Needs root.
# Prints: export ROOTLESS_USER=... XDG_RUNTIME_DIR=...
# Known limits of this test bed (TESTBED.md): slirp4netns cannot open
# /dev/net/tun, so rootless containers need --network host (or none).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
user=${1:-tusk-rootless}
"$here/podman-setup.sh" >/dev/null
command -v newuidmap >/dev/null || {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends uidmap >&2 || { apt-get update >&2; apt-get install -y --no-install-recommends uidmap >&2; }
}
id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
# Ranges: useradd adds them when /etc/subuid exists; add them otherwise.
for f in /etc/subuid /etc/subgid; do
    touch "$f"
    if ! grep -q "^$user:" "$f"; then
        start=$(awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}' "$f")
        echo "$user:$start:65536" >>"$f"
    fi
done
uid=$(id -u "$user")
xdg=/tmp/tusk-rootless-xdg-$uid
install -d -o "$user" -m 0700 "$xdg"
echo "export ROOTLESS_USER=$user XDG_RUNTIME_DIR=$xdg"
