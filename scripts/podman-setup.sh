#!/usr/bin/env bash
# Installs podman + runc (+ debootstrap, podman-compose) when missing and writes a containers.conf
# with the fixes this kind of test machine needs (see TESTBED.md, "Containers: podman"):
#   - runc instead of crun (crun 1.8 refuses hybrid cgroup layouts),
#   - cgroupfs (no systemd), file events logger (no journald),
#   - capped ulimits (a huge inherited nofile makes some programs crawl).
# Idempotent. Usage: scripts/podman-setup.sh [CONF_PATH]
# Afterwards every podman call needs: export CONTAINERS_CONF=<CONF_PATH>
set -euo pipefail

conf=${1:-${TUSK_CONTAINERS_CONF:-/etc/tusk-test/containers.conf}}

# 1. Packages (root needed only when something is missing).
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || [ -x /usr/sbin/runc ] || missing+=(runc)
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v podman-compose >/dev/null || missing+=(podman-compose)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Update the package lists only if the install fails without it.
    apt-get install -y --no-install-recommends "${missing[@]}" uidmap >&2 || {
        apt-get update >&2
        apt-get install -y --no-install-recommends "${missing[@]}" uidmap >&2
    }
fi

# 2. containers.conf (rewritten only when the content differs).
want='# Written by tusk scripts/podman-setup.sh
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
'
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "${want%$'\n'}" ]; then
    mkdir -p "$(dirname "$conf")"
    printf '%s' "$want" >"$conf.tmp.$$"
    mv "$conf.tmp.$$" "$conf"
fi

# 3. Sanity check: podman must work with this configuration.
CONTAINERS_CONF=$conf podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}' >&2

echo "export CONTAINERS_CONF=$conf"
