#!/usr/bin/env bash
# Installs PostgreSQL MAJOR (default 15) from Debian if it is missing, without
# letting Debian create and start its own "main" cluster on port 5432.
set -euo pipefail
major=${1:-15}
if [ -x "/usr/lib/postgresql/$major/bin/postgres" ]; then
  exit 0
fi
conf=/etc/postgresql-common/createcluster.conf
mkdir -p "$(dirname "$conf")"
if ! grep -qE '^\s*create_main_cluster\s*=\s*false' "$conf" 2>/dev/null; then
  echo 'create_main_cluster = false' >>"$conf"
fi
echo "install-postgres: apt-get install postgresql-$major"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confold "postgresql-$major"
