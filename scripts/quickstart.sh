#!/usr/bin/env bash
# Runs a standalone tusk node on this machine (Debian 12, as root): installs
# PostgreSQL 15 and Rust if missing, builds tusk, and runs it in the
# foreground. Data lives in /var/lib/tusk (override with PGHOME). Ctrl-C stops
# it cleanly; running the script again restarts on the same data.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "quickstart: run as root (tusk runs PostgreSQL as the postgres user)" >&2; exit 1; }
scripts/install-rust.sh
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-postgres.sh 15
cargo build --release --locked

export PGHOME=${PGHOME:-/var/lib/tusk}
# First free port from 5432 (a Debian cluster may already use 5432).
if [ -z "${PGPORT:-}" ]; then
  for p in $(seq 5432 5499); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PGPORT=$p; break; fi
  done
fi
export PGPORT APIPORT=${APIPORT:-8008}
socket=${TUSK_SOCKET_DIR:-/run/postgresql}
cat <<MSG
quickstart: starting tusk (standalone) on port $PGPORT, data in $PGHOME/pgdata/pgroot
quickstart: once it logs "PostgreSQL is ready", from another shell:
    psql -h $socket -p $PGPORT -U postgres
  or over TCP with TLS and the generated password:
    PGPASSFILE=$PGHOME/pgdata/pgroot/pgpass psql "host=127.0.0.1 port=$PGPORT user=postgres sslmode=require"
quickstart: Ctrl-C stops it cleanly.
MSG
exec target/release/tusk
