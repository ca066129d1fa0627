# Shared helpers for the test-bed scripts (sourced, not run).

# watchdog PID: kill PID once TESTBED_WATCH_PID (the test binary) is gone, so
# that a crashed or killed test never leaks a daemon. Detached from stdout so
# that callers reading our output are not kept waiting. Uses the caller's $dir.
watchdog() {
  local pid=$1 watch=${TESTBED_WATCH_PID:-}
  [ -n "$watch" ] || return 0
  ( while kill -0 "$watch" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do sleep 1; done
    kill -9 "$pid" 2>/dev/null
    # Shared (never dropped) instances also ask for their directory to go.
    if [ "${TESTBED_RM_ON_EXIT:-}" = 1 ] && ! kill -0 "$watch" 2>/dev/null; then
      sleep 0.5; rm -rf "$dir"
    fi ) </dev/null >/dev/null 2>&1 &
}
