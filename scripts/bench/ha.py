#!/usr/bin/env python3
"""HA benchmark: tusk and Patroni 3.0.2 side by side, same machine, same etcd
(mTLS), same PostgreSQL 15, BASELINES.md's method.

A writer sends an INSERT every 100 ms to whichever node is primary (through
the PostgreSQL binaries, not Debian's psql wrapper). For each system and each
ttl/loop_wait/retry_timeout setting it measures, over N runs:
  graceful   SIGTERM of the leader's agent -> first acknowledged write elsewhere
  switchover CLI switchover -> first write on the new leader (and the write gap)
  demoted    switchover -> the demoted leader streams again (seen by SQL)
  crash      SIGKILL of the leader's agent and postmaster -> first write elsewhere
  bootstrap  start of 3 nodes -> leader + 2 streaming replicas
and the agent's RSS and CPU per node at idle.

Each fault happens at a random moment within one loop_wait after the cluster
settled, so that neither system's renewal cycle is favoured.

Usage (as root): scripts/bench/ha.py [--runs 3] [--settings 30/10/10,10/2/5]
                                     [--systems tusk,patroni] [--idle 30]
"""
import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PG_BIN = "/usr/lib/postgresql/15/bin"
TUSK = os.path.join(ROOT, "target/release/tusk")


def sh(*args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


def sql(sock, port, query, timeout=2):
    try:
        r = subprocess.run([f"{PG_BIN}/psql", "-XAtq", "-h", sock, "-p", str(port), "-U", "postgres",
                            "-d", "postgres", "-c", query], capture_output=True, text=True,
                           timeout=timeout, env={"PGCONNECT_TIMEOUT": "1", "PATH": os.environ["PATH"]})
        return r.stdout.strip() if r.returncode == 0 else None
    except subprocess.TimeoutExpired:
        return None


_next_port = [61000 + os.getpid() % 200 * 20]


def free_port():
    """A free port in 61000-65535: above the kernel's ephemeral range (the
    load of api.py opens many outgoing connections) and outside the port
    windows of the tests, so a concurrent test run does not take it."""
    import socket
    while True:
        p = _next_port[0]
        _next_port[0] = 61000 + (p + 1 - 61000) % 4500
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue


class Node:
    def __init__(self, system, i, base, etcd, setting, scope):
        self.system, self.i, self.name = system, i, f"{system[0]}{i}"
        self.dir = os.path.join(base, self.name)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.port, self.api = free_port(), free_port()
        self.sock = os.path.join(self.dir, "sock")
        os.makedirs(self.sock, exist_ok=True)
        shutil.chown(self.sock, "postgres", "postgres")
        self.etcd, self.setting, self.scope = etcd, setting, scope
        self.proc = None
        self.log = open(os.path.join(self.dir, "agent.log"), "ab")

    @property
    def data(self):
        return os.path.join(self.dir, "home/pgdata/pgroot/data") if self.system == "tusk" else os.path.join(self.dir, "data")

    def start(self):
        ttl, lw, rt = self.setting
        if self.system == "tusk":
            env = {
                "PATH": os.environ["PATH"], "SCOPE": self.scope, "PATRONI_NAME": self.name,
                "PGHOME": os.path.join(self.dir, "home"), "PGPORT": str(self.port), "APIPORT": str(self.api),
                "PG_CONNECT_ADDRESS": f"127.0.0.1:{self.port}", "RESTAPI_CONNECT_ADDRESS": f"127.0.0.1:{self.api}",
                "TUSK_SOCKET_DIR": self.sock, "TUSK_PG_PARAMETERS": '{"shared_buffers":"128MB"}',
                "TUSK_BOOTSTRAP_DCS": json.dumps({"ttl": ttl, "loop_wait": lw, "retry_timeout": rt,
                                                  "maximum_lag_on_failover": 1048576}),
                "ETCD3_HOSTS": self.etcd["endpoint"], "ETCD3_CACERT": self.etcd["ca"],
                "ETCD3_CERT": self.etcd["cert"], "ETCD3_KEY": self.etcd["key"],
            }
            self.proc = subprocess.Popen([TUSK], env=env, stdout=self.log, stderr=self.log)
        else:
            cfg = os.path.join(self.dir, "patroni.yml")
            with open(cfg, "w") as f:
                f.write(f"""scope: {self.scope}
namespace: /service/
name: {self.name}
restapi: {{listen: 127.0.0.1:{self.api}, connect_address: 127.0.0.1:{self.api}}}
etcd3: {{hosts: {self.etcd['endpoint']}, protocol: https, cacert: {self.etcd['ca']}, cert: {self.etcd['cert']}, key: {self.etcd['key']}}}
bootstrap:
  dcs: {{ttl: {ttl}, loop_wait: {lw}, retry_timeout: {rt}, maximum_lag_on_failover: 1048576,
        postgresql: {{use_pg_rewind: true, use_slots: true, parameters: {{wal_log_hints: 'on'}}}}}}
  initdb: [{{encoding: UTF8}}, data-checksums]
postgresql:
  listen: 127.0.0.1:{self.port}
  connect_address: 127.0.0.1:{self.port}
  data_dir: {self.data}
  bin_dir: {PG_BIN}
  pgpass: {self.dir}/pgpass
  authentication:
    superuser: {{username: postgres, password: bench-su}}
    replication: {{username: standby, password: bench-rep}}
    rewind: {{username: postgres, password: bench-su}}
  parameters: {{unix_socket_directories: '{self.sock}', shared_buffers: 128MB}}
  pg_hba: [local all all trust, host all all 127.0.0.1/32 md5, host replication standby 127.0.0.1/32 md5]
""")
            for p in (self.dir, cfg):
                shutil.chown(p, "postgres", "postgres")
            self.proc = subprocess.Popen(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                                          "patroni", cfg], stdout=self.log, stderr=self.log, cwd=self.dir)

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def is_primary(self):
        return sql(self.sock, self.port, "SELECT NOT pg_is_in_recovery()") == "t"

    def streaming(self):
        return sql(self.sock, self.port, "SELECT status FROM pg_stat_wal_receiver") == "streaming"

    def stop(self, sig=signal.SIGTERM, wait=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def crash(self):
        pm = self.postmaster_pid()
        self.proc.kill()
        if pm:
            try:
                os.kill(pm, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def rss_cpu(self, seconds):
        """Agent RSS (kB) and CPU (% of a core) over `seconds`; for Patroni the agent process."""
        pid = self.proc.pid
        if self.system == "patroni":
            # setpriv execs patroni: same pid.
            pass
        def ticks():
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            return int(parts[11]) + int(parts[12])
        t0, c0 = time.time(), ticks()
        time.sleep(seconds)
        c1, t1 = ticks(), time.time()
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
        return rss, 100.0 * (c1 - c0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)


class Writer(threading.Thread):
    """INSERT every 100 ms into whichever node is primary; records acks."""
    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.nodes, self.acks, self.stop_flag, self.current = nodes, [], False, 0

    def run(self):
        while not self.stop_flag:
            t = time.time()
            order = self.nodes[self.current:] + self.nodes[:self.current]
            for n in order:
                if sql(n.sock, n.port, "INSERT INTO bench VALUES (now())", timeout=1) is not None:
                    self.acks.append((time.time(), n.name))
                    self.current = self.nodes.index(n)
                    break
            time.sleep(max(0.0, 0.1 - (time.time() - t)))

    def first_ack_after(self, t0, not_node, timeout=120):
        end = time.time() + timeout
        while time.time() < end:
            for t, name in list(self.acks):
                if t > t0 and name != not_node:
                    return t - t0, name
            time.sleep(0.02)
        return None, None

    def gap_around(self, t0, t1):
        ts = [t for t, _ in self.acks if t0 - 1 <= t <= t1 + 1]
        return max((b - a for a, b in zip(ts, ts[1:])), default=None)


def wait(pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    raise RuntimeError(f"timeout: {what}")


def leader(nodes):
    for n in nodes:
        if n.is_primary():
            return n
    return None


def settled(nodes):
    l = leader(nodes)
    return l is not None and all(n.streaming() for n in nodes if n is not l)


def switchover(system, nodes, cfg_node, scope, etcd, base):
    l = leader(nodes)
    cand = next(n for n in nodes if n is not l)
    if system == "tusk":
        env = {"PATH": os.environ["PATH"], "SCOPE": scope, "ETCD3_HOSTS": etcd["endpoint"], "ETCD3_CACERT": etcd["ca"],
               "ETCD3_CERT": etcd["cert"], "ETCD3_KEY": etcd["key"]}
        r = sh(TUSK, "switchover", "--candidate", cand.name, env=env)
    else:
        ctl = os.path.join(base, "patronictl.yml")
        with open(ctl, "w") as f:
            f.write(f"scope: {scope}\nnamespace: /service/\netcd3: {{hosts: {etcd['endpoint']}, protocol: https, "
                    f"cacert: {etcd['ca']}, cert: {etcd['cert']}, key: {etcd['key']}}}\n")
        r = sh("patronictl", "-c", ctl, "switchover", "--leader", l.name, "--candidate", cand.name, "--force")
        if r.returncode != 0:
            r = sh("patronictl", "-c", ctl, "switchover", "--master", l.name, "--candidate", cand.name, "--force")
    if r.returncode != 0:
        raise RuntimeError(f"switchover failed: {r.stdout} {r.stderr}")
    return l


def fault(kind, system, nodes, w, setting, scope, etcd, base, before=None):
    """Waits until settled, then at a random moment within one loop (the
    crash time depends on where the fault falls in the leader's renewal
    cycle; a fixed delay after settling would bias one system or the other)
    applies `kind` (graceful, switchover, crash) to the leader. `before()`
    runs just before the random wait. Returns (old leader, fault time,
    seconds to the first acknowledged write on another node)."""
    wait(lambda: settled(nodes), 120, f"settled before {kind}")
    if before:
        before()
    time.sleep(1 + random.uniform(0, setting[1]))
    l = leader(nodes)
    t0 = time.time()
    if kind == "graceful":
        l.stop(signal.SIGTERM)
    elif kind == "crash":
        l.crash()
    else:
        switchover(system, nodes, l, scope, etcd, os.path.join(base, scope))
    took, _ = w.first_ack_after(t0, l.name)
    if took is None:
        raise RuntimeError(f"{system} {kind}: no write on another node")
    return l, t0, took


def start_etcd(base):
    """One etcd with mutual TLS in BASE/etcd (its watchdog kills it when this
    process exits). Returns (endpoint/cert dict, stop function)."""
    edir = os.path.join(base, "etcd")
    for _ in range(3):  # a port taken between the check and etcd's bind: again
        port, peer = free_port(), free_port()
        r = sh(os.path.join(ROOT, "scripts/testbed/etcd.sh"), "start", edir, str(port), str(peer),
               env={**os.environ, "TESTBED_WATCH_PID": str(os.getpid())})
        if r.returncode == 0:
            break
        shutil.rmtree(os.path.join(edir, "data"), ignore_errors=True)
    else:
        sys.exit(f"etcd: {r.stdout}{r.stderr}")
    certs = os.path.join(edir, "certs")
    etcd = {"endpoint": f"127.0.0.1:{port}", "ca": f"{certs}/ca.crt", "cert": f"{certs}/client.crt",
            "key": f"{certs}/client.key"}
    return etcd, lambda: sh(os.path.join(ROOT, "scripts/testbed/etcd.sh"), "stop", edir)


def keep_logs(base):
    """Copies the agents' logs to BASE-logs (for diagnosis); returns that path."""
    logs = base + "-logs"
    os.makedirs(logs, exist_ok=True)
    for root, _, files in os.walk(base):
        for f in files:
            if f == "agent.log":
                scope = os.path.basename(os.path.dirname(root))
                shutil.copy(os.path.join(root, f), os.path.join(logs, f"{scope}-{os.path.basename(root)}.log"))
    return logs


def bench_system(system, setting, runs, etcd, base, idle):
    scope = f"bench-{system}-{'-'.join(map(str, setting))}-{os.getpid()}"
    nodes = [Node(system, i, os.path.join(base, scope), etcd, setting, scope) for i in (1, 2, 3)]
    res = {k: [] for k in ("bootstrap", "graceful", "switchover", "switchover_gap", "demoted_streaming", "crash")}
    try:
        t0 = time.time()
        for n in nodes:
            n.start()
        wait(lambda: settled(nodes), 120, "bootstrap")
        res["bootstrap"].append(time.time() - t0)
        l = leader(nodes)
        sql(l.sock, l.port, "CREATE TABLE IF NOT EXISTS bench (at timestamptz)")
        time.sleep(setting[1] + 1)
        rss = []
        for n in nodes:
            rss.append(n.rss_cpu(idle / 3))
        res["rss_kb"] = [r for r, _ in rss]
        res["idle_cpu_pct"] = [c for _, c in rss]
        w = Writer(nodes)
        w.start()
        time.sleep(1)
        for kind in ("graceful", "switchover", "crash"):
            for _ in range(runs):
                l, t0, took = fault(kind, system, nodes, w, setting, scope, etcd, base)
                res[kind].append(took)
                if kind == "switchover":
                    res["switchover_gap"].append(w.gap_around(t0, t0 + took))
                    wait(l.streaming, 60, "demoted leader streaming")
                    res["demoted_streaming"].append(time.time() - t0)
                else:
                    l.start()
        w.stop_flag = True
        w.join()
    finally:
        for n in nodes:
            n.stop(signal.SIGTERM, wait=20)
    return res


def fmt(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settings", default="30/10/10,10/2/5")
    ap.add_argument("--systems", default="tusk,patroni")
    ap.add_argument("--idle", type=int, default=30)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    base = tempfile.mkdtemp(prefix="tusk-bench-ha-", dir="/tmp")
    os.chmod(base, 0o755)
    etcd, stop_etcd = start_etcd(base)
    rows = []
    try:
        for s in a.settings.split(","):
            setting = tuple(int(x) for x in s.split("/"))
            for system in a.systems.split(","):
                print(f"# {system} at {s} ...", file=sys.stderr, flush=True)
                res = bench_system(system, setting, a.runs, etcd, base, a.idle)
                rows.append((s, system, res))
    finally:
        stop_etcd()
    print(f"\nfault -> first write, min / median / max (s), {a.runs} runs each; same machine, same etcd, PostgreSQL 15")
    print("| ttl/loop/retry | system | graceful SIGTERM | switchover | switchover write gap | demoted streams again | crash of leader | bootstrap -> 3 streaming | agent RSS (MB) | idle CPU (% core) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s, system, r in rows:
        rss = "/".join(f"{x / 1024:.1f}" for x in r.get("rss_kb", []))
        cpu = "/".join(f"{x:.2f}" for x in r.get("idle_cpu_pct", []))
        print(f"| {s} | {system} | {fmt(r['graceful'])} | {fmt(r['switchover'])} | {fmt(r['switchover_gap'])} | "
              f"{fmt(r['demoted_streaming'])} | {fmt(r['crash'])} | {fmt(r['bootstrap'])} | {rss} | {cpu} |")
    # Keep the agents' logs for diagnosis; drop the data.
    print(f"agent logs: {keep_logs(base)}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
