#!/usr/bin/env bash
# etcd.sh: throwaway etcd (v3, mutual TLS) for tests.
#   etcd.sh start DIR CLIENT_PORT PEER_PORT [NAME]   one member (NAME: n0)
#       data DIR/data, log DIR/etcd.log, pid DIR/etcd.pid
#   etcd.sh start-cluster DIR BASE_PORT              three members n0 n1 n2
#       client ports BASE, BASE+2, BASE+4; peer ports BASE+1, BASE+3, BASE+5
#       data DIR/nI, log DIR/nI.log, pid DIR/nI.pid
#   etcd.sh stop DIR                                 kill the pids in DIR/*.pid
# Certificates come from DIR/certs (made by certs.sh if absent). start prints
# the client endpoint(s) (comma-separated https URLs) once healthy.
# A started member dies by itself when TESTBED_WATCH_PID (if set) exits, and
# in any case after TESTBED_MAX_SECONDS (default 1800), so leaks are bounded.
# With TESTBED_RM_ON_EXIT=1 the watchdog also removes DIR once that pid is gone.
# With TESTBED_ETCD_RUN_AS=NAME:USER member NAME runs as USER.
# TESTBED_HOST=ADDR: clients reach the members at ADDR instead of 127.0.0.1
# (an address the caller owns, e.g. a test bridge's; added to the server
# certificate's SANs). Peers stay on loopback.
set -Eeuo pipefail
# A failure that has no message of its own still names its line.
trap 'echo "etcd.sh: line $LINENO: $BASH_COMMAND failed (exit $?)" >&2' ERR
# shellcheck source=scripts/testbed/lib.sh
. "$(dirname "$0")/lib.sh"

here=$(cd "$(dirname "$0")" && pwd)
max_seconds=${TESTBED_MAX_SECONDS:-1800}

die() { echo "etcd.sh: $*" >&2; exit 1; }

etcdctl_() { # etcdctl_ ENDPOINTS ARGS...: etcdctl with the test client cert
  local eps=$1; shift
  ETCDCTL_API=3 etcdctl --endpoints="$eps" --cacert="$certs/ca.crt" \
    --cert="$certs/client.crt" --key="$certs/client.key" \
    --dial-timeout=1s --command-timeout=2s "$@"
}

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# launch NAME DATA LOG PID CLIENT_PORT PEER_PORT INITIAL_CLUSTER
launch() {
  local name=$1 data=$2 log=$3 pidf=$4 cport=$5 pport=$6 initial=$7
  alive "$pidf" && return 0               # already running: idempotent
  local extra=()
  # Skip fsync when this etcd build offers it (tests never need durability).
  # (help captured first: grep -q closing the pipe early trips pipefail)
  local help; help=$(etcd --help 2>&1 || true)
  [[ $help == *--unsafe-no-fsync* ]] && extra+=(--unsafe-no-fsync)
  mkdir -p "$data" && chmod 700 "$data"
  rm -f "$pidf"
  # TESTBED_ETCD_RUN_AS=NAME:USER runs member NAME as USER, so that a test
  # can single out that member's traffic by uid (nftables `meta skuid`).
  local runas=()
  if [[ -n ${TESTBED_ETCD_RUN_AS:-} && ${TESTBED_ETCD_RUN_AS%%:*} == "$name" ]]; then
    local user=${TESTBED_ETCD_RUN_AS#*:}
    chown -R "$user:" "$data"
    chgrp "$user" "$certs" "$certs/ca.crt" "$certs/server.crt" "$certs/server.key"
    chmod g+rx "$certs"
    chmod g+r "$certs/ca.crt" "$certs/server.crt" "$certs/server.key"
    runas=(setpriv --reuid="$user" --regid="$(id -g "$user")" --clear-groups)
  fi
  # timeout caps the lifetime; the inner shell writes its own pid (= etcd's,
  # thanks to exec) so the pid file names the etcd process itself.
  # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
  timeout -s KILL "$max_seconds" bash -c 'echo $$ >"$0"; exec "$@"' "$pidf" \
    "${runas[@]}" etcd --name "$name" --data-dir "$data" \
    --listen-client-urls "https://$host:$cport" \
    --advertise-client-urls "https://$host:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" \
    --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$initial" --initial-cluster-state new \
    --initial-cluster-token "tusk-test-$$" \
    --cert-file "$certs/server.crt" --key-file "$certs/server.key" \
    --trusted-ca-file "$certs/ca.crt" --client-cert-auth \
    --snapshot-count 10000 --logger zap --log-outputs stderr \
    "${extra[@]}" </dev/null >>"$log" 2>&1 &
  # Wait (bounded) for the pid file.
  for _ in $(seq 50); do [ -s "$pidf" ] && break; sleep 0.1; done
  [ -s "$pidf" ] || die "$name did not start; log tail:
$(tail -n 20 "$log")"
  watchdog "$(cat "$pidf")"
}


# wait_healthy ENDPOINTS NAMES...: bounded wait (15 s) for every endpoint;
# fails at once when a member has exited (e.g. its port was taken).
wait_healthy() {
  local eps=$1 end=$((SECONDS + 15)) n why=""; shift
  while [ "$SECONDS" -lt "$end" ]; do
    etcdctl_ "$eps" endpoint health >/dev/null 2>&1 && return 0
    for n in "$@"; do alive "$dir/$n.pid" || why="member $n exited"; done
    [ -z "$why" ] || break
    sleep 0.1
  done
  local msg="" l
  for n in "$@"; do l=$dir/$n.log; msg+=$'\n'"== $l"$'\n'"$(tail -n 15 "$l" 2>/dev/null)"; done
  [ -n "$why" ] || why=$(etcdctl_ "$eps" endpoint health 2>&1 | tail -n 3 || true)
  stop "$dir"       # leave nothing half-started behind
  die "not healthy at $eps: $why$msg"
}

stop() { # stop DIR: TERM, wait up to 5 s, then KILL; only our pid files
  local dir=$1 f pid pids=()
  for f in "$dir"/etcd.pid "$dir"/n[0-9].pid; do
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    # Guard against pid reuse: only signal a process that is etcd.
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = etcd ] && { kill "$pid" 2>/dev/null || true; pids+=("$pid"); }
    rm -f "$f"
  done
  for _ in $(seq 50); do
    local left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
}

cmd=${1:-}
dir=${2:-}
{ [ -n "$cmd" ] && [ -n "$dir" ]; } || die "usage: etcd.sh start|start-cluster|stop DIR ..."
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
certs=$dir/certs
host=${TESTBED_HOST:-127.0.0.1}
sans=()
[ "$host" = 127.0.0.1 ] || sans+=("$host")
case "$cmd" in
  start)
    cport=${3:?CLIENT_PORT}; pport=${4:?PEER_PORT}; name=${5:-n0}
    "$here/certs.sh" "$certs" "${sans[@]}"
    launch "$name" "$dir/data" "$dir/etcd.log" "$dir/etcd.pid" "$cport" "$pport" \
      "$name=http://127.0.0.1:$pport"
    ep="https://$host:$cport"
    wait_healthy "$ep" etcd
    echo "$ep"
    ;;
  start-cluster)
    base=${3:?BASE_PORT}
    "$here/certs.sh" "$certs" "${sans[@]}"
    initial="" eps=""
    for i in 0 1 2; do
      initial+="${initial:+,}n$i=http://127.0.0.1:$((base + 2 * i + 1))"
      eps+="${eps:+,}https://$host:$((base + 2 * i))"
    done
    for i in 0 1 2; do
      launch "n$i" "$dir/n$i" "$dir/n$i.log" "$dir/n$i.pid" \
        "$((base + 2 * i))" "$((base + 2 * i + 1))" "$initial"
    done
    wait_healthy "$eps" n0 n1 n2
    echo "$eps"
    ;;
  stop) stop "$dir" ;;
  *) die "unknown command $cmd" ;;
esac
