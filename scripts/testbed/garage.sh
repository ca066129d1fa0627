#!/usr/bin/env bash
# garage.sh: throwaway single-node garage 2.x (S3) for tests.
#   garage.sh start DIR S3_PORT RPC_PORT [BUCKET]   (BUCKET: tusk-test)
#       config DIR/garage.toml, log DIR/garage.log, pid DIR/garage.pid,
#       credentials (generated once per DIR) in DIR/env:
#       AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION=garage,
#       AWS_ENDPOINT, AWS_S3_FORCE_PATH_STYLE=true, BUCKET. Prints the endpoint.
#   garage.sh stop DIR                              kill the pid in DIR/garage.pid
#   garage.sh cli DIR ARGS...                       run the garage CLI on DIR's node
# The server dies by itself when TESTBED_WATCH_PID (if set) exits, and in any
# case after TESTBED_MAX_SECONDS (default 1800).
# TESTBED_HOST=ADDR: the S3 API listens on ADDR instead of 127.0.0.1 (an
# address the caller owns, e.g. a test bridge's); RPC stays on loopback.
# With TESTBED_RM_ON_EXIT=1 the watchdog also removes DIR once that pid is gone.
set -euo pipefail
# shellcheck source=scripts/testbed/lib.sh
. "$(dirname "$0")/lib.sh"

max_seconds=${TESTBED_MAX_SECONDS:-1800}
host=${TESTBED_HOST:-127.0.0.1}
export PATH="$PATH:$HOME/.cargo/bin"

die() { echo "garage.sh: $*" >&2; exit 1; }
g() { garage -c "$dir/garage.toml" "$@"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
logtail() { printf '\n== %s (tail)\n%s' "$dir/garage.log" "$(tail -n 20 "$dir/garage.log" 2>/dev/null)"; }

# retry SECONDS CMD...: rerun CMD every 0.1 s until it succeeds (bounded);
# fails at once when the server has exited (e.g. its port was taken).
retry() {
  local end=$((SECONDS + $1)) out; shift
  while :; do
    out=$("$@" 2>&1) && { printf '%s' "$out"; return 0; }
    # garage stays up when its S3 listener fails to bind: watch the log too.
    if ! alive "$dir/garage.pid" ||
       tail -c +"$((log_start + 1))" "$dir/garage.log" | grep -qE 'exited with error|already in use'; then
      break
    fi
    [ "$SECONDS" -lt "$end" ] || break
    sleep 0.1
  done
  stop              # leave nothing half-started behind
  die "failed: $*: $(printf '%s' "$out" | tail -n 5)$(logtail)"
}

# s3_up PORT: the S3 API answers HTTP (anonymous requests get an S3 error).
s3_up() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$host:$1/")" != 000 ]; }

# secret FILE HEXLEN: a random hex string, generated once and kept in FILE.
secret() { [ -s "$1" ] || openssl rand -hex "$(( $2 / 2 ))" >"$1"; cat "$1"; }

start() {
  local s3=${3:?S3_PORT} rpc=${4:?RPC_PORT} bucket=${5:-tusk-test}
  command -v garage >/dev/null || die "garage not found (run scripts/install-testbed.sh)"
  mkdir -p "$dir/meta" "$dir/data" "$dir/secrets"
  chmod 700 "$dir/secrets"
  local rpc_secret key_id key_secret
  rpc_secret=$(secret "$dir/secrets/rpc_secret" 64)
  key_id=GK$(secret "$dir/secrets/key_id" 24)
  key_secret=$(secret "$dir/secrets/key_secret" 64)

  # Rewritten on every start (ports may change); node identity lives in meta/.
  umask 077
  cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$rpc_secret"

[s3_api]
s3_region = "garage"
api_bind_addr = "$host:$s3"
root_domain = ".s3.garage.localhost"
EOF
  umask 022

  log_start=$(stat -c %s "$dir/garage.log" 2>/dev/null || echo 0)
  if ! alive "$dir/garage.pid"; then
    rm -f "$dir/garage.pid"
    # The inner shell writes its pid and execs garage: the pid file names garage.
    # shellcheck disable=SC2016  # $$ and $@ belong to the inner shell
    NO_COLOR=1 timeout -s KILL "$max_seconds" bash -c 'echo $$ >"$0"; exec "$@"' "$dir/garage.pid" \
      garage -c "$dir/garage.toml" server </dev/null >>"$dir/garage.log" 2>&1 &
    for _ in $(seq 50); do [ -s "$dir/garage.pid" ] && break; sleep 0.1; done
    [ -s "$dir/garage.pid" ] || die "garage did not start$(logtail)"
    watchdog "$(cat "$dir/garage.pid")"
  fi

  # Wait for the RPC endpoint, then give the node a role once (layout v1).
  local node status
  status=$(retry 15 g status)
  if grep -q 'NO ROLE ASSIGNED' <<<"$status"; then
    node=$(retry 5 g node id -q); node=${node%%@*}
    retry 5 g layout assign -z dc1 -c 1G "$node" >/dev/null
    retry 5 g layout apply --version 1 >/dev/null
  fi
  g bucket info "$bucket" >/dev/null 2>&1 || retry 10 g bucket create "$bucket" >/dev/null
  g key info "$key_id" >/dev/null 2>&1 ||
    retry 10 g key import -n tusk-test "$key_id" "$key_secret" --yes >/dev/null
  retry 10 g bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null
  retry 10 s3_up "$s3" >/dev/null

  cat >"$dir/env" <<EOF
AWS_ACCESS_KEY_ID=$key_id
AWS_SECRET_ACCESS_KEY=$key_secret
AWS_REGION=garage
AWS_ENDPOINT=http://$host:$s3
AWS_S3_FORCE_PATH_STYLE=true
BUCKET=$bucket
EOF
  echo "http://$host:$s3"
}


stop() { # TERM, wait up to 5 s, then KILL; only a pid that is garage
  local pid
  [ -s "$dir/garage.pid" ] || return 0
  pid=$(cat "$dir/garage.pid")
  rm -f "$dir/garage.pid"
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = garage ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

cmd=${1:-}
dir=${2:-}
{ [ -n "$cmd" ] && [ -n "$dir" ]; } || die "usage: garage.sh start|stop|cli DIR ..."
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  cli) shift 2; g "$@" ;;
  *) die "unknown command $cmd" ;;
esac
