#!/usr/bin/env bash
# Foundation benchmark (issue 2): start → ready for a fresh bootstrap and for a
# restart on existing data, supervisor RSS and CPU at idle, image size.
# Usage: scripts/bench/foundation.sh [runs=5] [idle_seconds=60]
# Runs the release binary as root (postgres runs as the postgres user).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
IDLE=${2:-60}
cargo build --release --quiet
BIN=$PWD/target/release/tusk
WORK=$(mktemp -d /tmp/tusk-bench-XXXXXX)
chmod 755 "$WORK"
PORT=$((40000 + RANDOM % 10000))
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

ready_count() { cat "$1" 2>/dev/null | grep -c 'PostgreSQL is ready' || true; }

# start DIR → sets ELAPSED to the ms from spawn to the "ready" log line; leaves $PID running
start() {
  local dir=$1 log=$1/tusk.log before t0
  before=$(ready_count "$log")
  t0=$(now_ms)
  PGHOME=$dir/home PGPORT=$PORT APIPORT=$((PORT + 1)) TUSK_SOCKET_DIR=$dir/sock \
    TUSK_PG_PARAMETERS='{"shared_buffers":"128MB"}' "$BIN" >>"$log" 2>&1 &
  PID=$!
  until [ "$(ready_count "$log")" -gt "$before" ]; do
    kill -0 "$PID" 2>/dev/null || { echo "tusk died:" >&2; tail -20 "$log" >&2; exit 1; }
    sleep 0.002
  done
  ELAPSED=$(( $(now_ms) - t0 ))
}

stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }

stats() { sort -n | awk '{a[NR]=$1} END {printf "min %d / median %d / max %d ms", a[1], a[int((NR+1)/2)], a[NR]}'; }

fresh=(); restart=()
for i in $(seq "$RUNS"); do
  d=$WORK/run$i; mkdir -p "$d/home"; chmod 755 "$d" "$d/home"
  start "$d"; fresh+=("$ELAPSED"); stop
  start "$d"; restart+=("$ELAPSED"); stop
  rm -rf "$d"
done
echo "start → ready, fresh bootstrap (initdb): $(printf '%s\n' "${fresh[@]}" | stats)   [target ≤ 3000]"
echo "start → ready, restart on existing data: $(printf '%s\n' "${restart[@]}" | stats)   [target ≤ 1000]"

# Idle: supervisor RSS and CPU over $IDLE seconds (not counting postgres).
d=$WORK/idle; mkdir -p "$d/home"; chmod 755 "$d" "$d/home"
start "$d"
sleep 1
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
hz=$(getconf CLK_TCK)
c0=$(ticks); t0=$(now_ms)
sleep "$IDLE"
c1=$(ticks); t1=$(now_ms)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
threads=$(awk '/Threads/ {print $2}' "/proc/$PID/status")
cpu_ms=$(( (c1 - c0) * 1000 / hz ))
echo "supervisor at idle over $(( (t1 - t0) / 1000 )) s: RSS $((rss / 1024)) MB ($rss kB; peak $hwm kB), $threads threads, CPU $cpu_ms ms = $(awk -v c="$cpu_ms" -v t="$((t1 - t0))" 'BEGIN {printf "%.3f", 100 * c / t}') % of a core   [target RSS ≤ 15 MB; Patroni 61 MB, BASELINES.md]"
stop

if command -v podman >/dev/null && [ -f /etc/tusk-test/containers.conf ]; then
  export CONTAINERS_CONF=/etc/tusk-test/containers.conf
  size=$(podman image inspect --format '{{.Size}}' localhost/tusk:latest 2>/dev/null || podman image inspect --format '{{.Size}}' localhost/tusk:test 2>/dev/null || true)
  [ -n "$size" ] && echo "image localhost/tusk:latest: $((size / 1000000)) MB   [target ≤ 300 MB]" \
    || echo "image: not built (scripts/build-image.sh)"
fi
