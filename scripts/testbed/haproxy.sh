#!/usr/bin/env bash
# haproxy.sh: throwaway HAProxy (Debian's /usr/sbin/haproxy) for tests.
#   haproxy.sh start DIR     runs haproxy -db -f DIR/haproxy.cfg in the
#                            background; pid DIR/haproxy.pid, log DIR/haproxy.log;
#                            returns once the config is accepted and it runs
#   haproxy.sh stop DIR      kills the pid in DIR/haproxy.pid
# It dies by itself when TESTBED_WATCH_PID (if set) exits, and in any case
# after TESTBED_MAX_SECONDS (default 1800).
set -euo pipefail
# shellcheck source=scripts/testbed/lib.sh
. "$(dirname "$0")/lib.sh"

max_seconds=${TESTBED_MAX_SECONDS:-1800}
die() { echo "haproxy.sh: $*" >&2; exit 1; }
cmd=${1:-}; dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then die "usage: haproxy.sh start|stop DIR"; fi
pidf=$dir/haproxy.pid log=$dir/haproxy.log cfg=$dir/haproxy.cfg
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)

case $cmd in
start)
  [ -f "$cfg" ] || die "no $cfg"
  "$haproxy" -c -q -f "$cfg" >>"$log" 2>&1 || die "config refused: $(tail -n 20 "$log")"
  rm -f "$pidf"
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
  timeout -s KILL "$max_seconds" bash -c 'echo $$ >"$0"; exec "$@"' "$pidf" \
    "$haproxy" -db -f "$cfg" </dev/null >>"$log" 2>&1 &
  for _ in $(seq 50); do [ -s "$pidf" ] && break; sleep 0.1; done
  [ -s "$pidf" ] || die "did not start: $(tail -n 20 "$log")"
  pid=$(cat "$pidf")
  watchdog "$pid"
  # Running after a moment = the binds worked.
  sleep 0.2
  kill -0 "$pid" 2>/dev/null || die "exited: $(tail -n 20 "$log")"
  echo "$pid"
  ;;
stop)
  if [ -s "$pidf" ]; then kill -9 "$(cat "$pidf")" 2>/dev/null || true; fi
  ;;
*) die "unknown command $cmd" ;;
esac
