#!/usr/bin/env python3
"""Synchronous mode benchmark: tusk and Patroni 3.0.2 side by side, same
machine, same etcd (mTLS), same PostgreSQL 15, same settings, with
synchronous mode off and on (a fresh 3-node cluster per system and mode;
the mode is set in the bootstrap DCS config: TUSK_BOOTSTRAP_DCS for tusk,
bootstrap.dcs for Patroni).

Per system and mode it measures:
  commit cost  PostgreSQL 15's pgbench against the leader (-i -s SCALE, then
               -c CLIENTS -j JOBS -T DURATION, PGBENCH_RUNS times): median
               TPS and average latency. With sync on, only once a
               synchronous standby is really in place (a `sync` row in the
               leader's pg_stat_replication, named in the `sync` key).
  crash        a writer inserts a new number every ~10 ms into whichever
               member accepts writes (one psycopg2 connection per member),
               recording every acknowledged number; the leader's whole
               process tree (agent, postmaster and all its children) is
               SIGSTOPped then SIGKILLed at a random moment within one
               loop_wait after the cluster settled. Reported: fault -> first
               acknowledged write on another member, and how many numbers
               acknowledged so far are missing on the new leader (must be 0
               with sync on). A commit that returned with PostgreSQL's
               "canceling wait for synchronous replication" warning is not
               counted as acknowledged. The killed member is restarted
               and must rejoin before the next repetition.

PostgreSQL runs with the same parameters under both: the ones tusk sets by
itself (Spilo's: pg_stat_statements, wal_compression, connection logging,
...) are given to Patroni too, unless --peer-params plain. The replicas
stream over TLS under both (as in Spilo; --replication-sslmode disable
turns it off for both): the log names each replication link's protocol,
since TLS on it costs 10-15 % of the leader's commit throughput on this
2-core machine. The log also has the CPU seconds of each node's postgres
and agent during pgbench.

Bounded: every wait has a timeout, a watchdog process SIGTERMs this script
at --max-minutes and then SIGKILLs, by PID, whatever it started (processes
running from the run's temporary directory and their children) once this
script is gone; etcd has its own watchdog (scripts/testbed/etcd.sh).
Loopback only. Uses the existing target/release/tusk (copied into the run
directory; no cargo build).

Usage (as root): scripts/bench/sync.py [--runs 3] [--settings 10/2/5]
    [--systems tusk,patroni] [--modes off,on] [--scale 5] [--clients 4]
    [--jobs 2] [--duration 20] [--pgbench-runs 3] [--strict] [--node-count 1] [--max-minutes 60]
    [--peer-params spilo|plain] [--pg-params JSON]
"""
import os
import sys

try:
    import psycopg2
except ImportError:  # Debian's python3-psycopg2 (Patroni's) lives in /usr/bin/python3
    if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3") and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", os.path.abspath(__file__)] + sys.argv[1:])
    sys.exit("psycopg2 is needed (apt-get install python3-psycopg2)")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ha  # noqa: E402  (Node, sql, leader, settled, free_port, start_etcd, sh)

ROOT = ha.ROOT
PG_BIN = ha.PG_BIN
DEADLINE = [float("inf")]

# The PostgreSQL parameters tusk sets by itself (Spilo's bootstrap parameters,
# src/postgres/files.rs: spilo_defaults() and parameters()), given to Patroni
# with --peer-params spilo (the default) so that both run the same PostgreSQL
# configuration, as Patroni does inside Spilo. Left out: what is PostgreSQL
# 15's default anyway or Patroni manages itself (listen_addresses, wal_level,
# max_wal_senders, max_replication_slots, hot_standby; wal_log_hints is in
# its bootstrap.dcs). ssl is on under both: tusk (as Spilo) makes a
# self-signed certificate and replicas stream over TLS; Patroni's node gets
# one from openssl and its replicas' libpq (sslmode=prefer) use it.
# max_connections goes into Patroni's bootstrap.dcs: it takes the
# postmaster-level settings from there, not from postgresql.parameters.
# Of Spilo's shared_preload_libraries only pg_stat_statements exists here;
# tusk drops the others.
SPILO_PARAMS = {
    "archive_mode": "on", "archive_command": "/bin/true", "archive_timeout": "1800s",
    "autovacuum_analyze_scale_factor": "0.02", "autovacuum_max_workers": "5",
    "autovacuum_vacuum_scale_factor": "0.05", "checkpoint_completion_target": "0.9",
    "log_autovacuum_min_duration": "0", "log_checkpoints": "on", "log_connections": "on",
    "log_disconnections": "on", "log_line_prefix": "[%p] %q%u@%d ", "log_lock_waits": "on",
    "log_min_duration_statement": "500", "log_statement": "ddl", "log_temp_files": "0",
    "recovery_init_sync_method": "syncfs", "tcp_keepalives_idle": "900", "tcp_keepalives_interval": "100",
    "track_functions": "all", "wal_compression": "on", "shared_preload_libraries": "pg_stat_statements",
    # Spilo's (and tusk's) max_connections: clamp(memory MB / 30, 100, 1000).
    "max_connections": str(min(max(100, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 30), 1000)),
}


# Patroni's pg_hba in this bench (TLS neither required nor refused).
PEER_HBA = ["local all all trust", "host all all 127.0.0.1/32 md5", "host replication standby 127.0.0.1/32 md5"]


class Timeout(RuntimeError):
    pass


def wait(pred, timeout, what):
    end = min(time.time() + timeout, DEADLINE[0])
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    raise Timeout(f"timeout: {what}")


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def tree(roots):
    """The given pids and all their descendants (pids that exist now)."""
    kids, out, todo = children_map(), set(), [p for p in roots if p]
    while todo:
        p = todo.pop()
        if p in out or not os.path.exists(f"/proc/{p}"):
            continue
        out.add(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids):
    """User + system CPU seconds of these processes so far (children that
    exited and were reaped by them included)."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
        except (OSError, ValueError, IndexError):
            pass
    return total / tck


def node_cpu(nodes):
    """{name: (postgres tree CPU s, agent tree CPU s excluding postgres)}."""
    out = {}
    for n in nodes:
        pg = n.pg_pids()
        agent = tree([n.proc.pid]) - pg if n.proc and n.proc.poll() is None else set()
        out[n.name] = (cpu_seconds(pg), cpu_seconds(agent))
    return out


def signal_all(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


class SyncNode(ha.Node):
    """ha.Node with the synchronous mode keys in the bootstrap DCS config and
    a crash that kills the whole process tree."""

    def __init__(self, system, i, base, etcd, setting, scope, dcs_extra, tusk, pg_params, peer_params,
                 rep_sslmode=None):
        super().__init__(system, i, base, etcd, setting, scope)
        self.dcs_extra, self.tusk = dcs_extra, tusk
        self.pg_params, self.peer_params = pg_params, peer_params
        self.rep_sslmode = rep_sslmode

    def start(self):
        ttl, lw, rt = self.setting
        dcs = {"ttl": ttl, "loop_wait": lw, "retry_timeout": rt, "maximum_lag_on_failover": 1048576, **self.dcs_extra}
        if self.system == "tusk":
            env = {
                "PATH": os.environ["PATH"], "SCOPE": self.scope, "PATRONI_NAME": self.name,
                "PGHOME": os.path.join(self.dir, "home"), "PGPORT": str(self.port), "APIPORT": str(self.api),
                "PG_CONNECT_ADDRESS": f"127.0.0.1:{self.port}", "RESTAPI_CONNECT_ADDRESS": f"127.0.0.1:{self.api}",
                "TUSK_SOCKET_DIR": self.sock, "TUSK_PG_PARAMETERS": json.dumps({"shared_buffers": "128MB", **self.pg_params}),
                "TUSK_BOOTSTRAP_DCS": json.dumps(dcs),
                "ETCD3_HOSTS": self.etcd["endpoint"], "ETCD3_CACERT": self.etcd["ca"],
                "ETCD3_CERT": self.etcd["cert"], "ETCD3_KEY": self.etcd["key"],
            }
            if self.rep_sslmode:
                # Patroni's pg_hba here (Spilo's admits replication over TLS only).
                env["PATRONI_REPLICATION_SSLMODE"] = self.rep_sslmode
                env["SPILO_CONFIGURATION"] = json.dumps({"postgresql": {"pg_hba": PEER_HBA}})
            self.proc = subprocess.Popen([self.tusk], env=env, stdout=self.log, stderr=self.log)
        else:
            params = {**self.peer_params, "shared_buffers": "128MB", **self.pg_params,
                      "unix_socket_directories": self.sock}
            dcs_params = {"wal_log_hints": "on"}
            if "max_connections" in params:
                dcs_params["max_connections"] = params.pop("max_connections")
            dcs["postgresql"] = {"use_pg_rewind": True, "use_slots": True, "parameters": dcs_params}
            if self.peer_params:
                crt, key = os.path.join(self.dir, "server.crt"), os.path.join(self.dir, "server.key")
                subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                "-nodes", "-days", "2", "-subj", f"/CN={self.name}", "-keyout", key, "-out", crt],
                               check=True, capture_output=True)
                for f in (crt, key):
                    shutil.chown(f, "postgres", "postgres")
                os.chmod(key, 0o600)
                params.update({"ssl": "on", "ssl_cert_file": crt, "ssl_key_file": key})
            cfg = os.path.join(self.dir, "patroni.yml")
            with open(cfg, "w") as f:
                # JSON is YAML: the dcs mapping is written as JSON.
                f.write(f"""scope: {self.scope}
namespace: /service/
name: {self.name}
restapi: {{listen: 127.0.0.1:{self.api}, connect_address: 127.0.0.1:{self.api}}}
etcd3: {{hosts: {self.etcd['endpoint']}, protocol: https, cacert: {self.etcd['ca']}, cert: {self.etcd['cert']}, key: {self.etcd['key']}}}
bootstrap:
  dcs: {json.dumps(dcs)}
  initdb: [{{encoding: UTF8}}, data-checksums]
postgresql:
  listen: 127.0.0.1:{self.port}
  connect_address: 127.0.0.1:{self.port}
  data_dir: {self.data}
  bin_dir: {PG_BIN}
  pgpass: {self.dir}/pgpass
  authentication:
    superuser: {{username: postgres, password: bench-su}}
    replication: {{username: standby, password: bench-rep{', sslmode: ' + self.rep_sslmode if self.rep_sslmode else ''}}}
    rewind: {{username: postgres, password: bench-su}}
  parameters: {json.dumps(params)}
  pg_hba: {json.dumps(PEER_HBA)}
""")
            for p in (self.dir, cfg):
                shutil.chown(p, "postgres", "postgres")
            self.proc = subprocess.Popen(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                                          "patroni", cfg], stdout=self.log, stderr=self.log, cwd=self.dir,
                                         # setpriv keeps root's HOME: libpq, as postgres, could not
                                         # look for ~/.postgresql/postgresql.crt there, and every TLS
                                         # attempt of a replica failed (sslmode=prefer fell back to
                                         # plain TCP).
                                         env={**os.environ, "HOME": self.dir})

    def pg_pids(self):
        """The postmaster (if it is a live postgres) and all its children."""
        pm = self.postmaster_pid()
        try:
            # postmaster.pid may be stale and its pid reused: only a
            # process running in this node's data directory counts.
            if os.readlink(f"/proc/{pm}/cwd") != os.path.realpath(self.data):
                return set()
        except OSError:
            return set()
        return tree([pm])

    def crash(self):
        """Node loss: SIGSTOP the agent, the postmaster and every descendant
        of either (twice, to catch a fork in between), then SIGKILL them all."""
        agent = self.proc.pid if self.proc and self.proc.poll() is None else None
        pids = set()
        for _ in range(2):
            new = (tree([agent]) | self.pg_pids()) - pids
            signal_all(new, signal.SIGSTOP)
            pids |= new
        signal_all(pids, signal.SIGKILL)
        if self.proc:
            self.proc.wait()
        wait(lambda: not any(os.path.exists(f"/proc/{p}") and not zombie(p) for p in pids), 10, "killed tree gone")

    def stop_all(self):
        self.stop(signal.SIGTERM, wait=30)
        left = self.pg_pids()  # a postmaster the agent left behind
        if left:
            signal_all(left, signal.SIGKILL)


def zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def connect(n):
    c = psycopg2.connect(host=n.sock, port=n.port, user="postgres", dbname="postgres", connect_timeout=1,
                         application_name="bench-writer")
    c.autocommit = True
    return c


class SeqWriter(threading.Thread):
    """Inserts a new number every `interval` s into whichever member accepts
    writes, trying the last good member first; records (time, member, n)
    for every acknowledged insert. An insert running longer than `timeout`
    is cancelled (then not counted as acknowledged)."""

    def __init__(self, nodes, interval, timeout):
        super().__init__(daemon=True)
        self.nodes, self.interval, self.timeout = nodes, interval, timeout
        self.acks, self.lock, self.stop_flag, self.current = [], threading.Lock(), False, 0
        self.seq, self.unconfirmed, self.conns, self.inflight = 0, 0, {}, None
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        while not self.stop_flag:
            f = self.inflight
            if f and time.time() - f[1] > self.timeout:
                try:
                    f[0].cancel()
                except psycopg2.Error:
                    pass
                time.sleep(1)
            time.sleep(0.2)

    def _conn(self, n):
        c = self.conns.get(n.name)
        if c is None or c.closed:
            c = self.conns[n.name] = connect(n)
        return c

    def _drop(self, n):
        c = self.conns.pop(n.name, None)
        if c is not None:
            try:
                c.close()
            except psycopg2.Error:
                pass

    def run(self):
        while not self.stop_flag:
            t = time.time()
            order = self.nodes[self.current:] + self.nodes[:self.current]
            for n in order:
                self.seq += 1
                k = self.seq
                try:
                    c = self._conn(n)
                    del c.notices[:]
                    self.inflight = (c, time.time())
                    try:
                        with c.cursor() as cur:
                            cur.execute("INSERT INTO w VALUES (%s)", (k,))
                    finally:
                        self.inflight = None
                    if any("synchronous replication" in x for x in c.notices):
                        # committed locally, not confirmed by the standby
                        self.unconfirmed += 1
                        self._drop(n)
                        continue
                    with self.lock:
                        self.acks.append((time.time(), n.name, k))
                    self.current = self.nodes.index(n)
                    break
                except psycopg2.errors.ReadOnlySqlTransaction:
                    continue
                except psycopg2.Error:
                    self._drop(n)
            time.sleep(max(0.0, self.interval - (time.time() - t)))
        for n in self.nodes:
            self._drop(n)

    def snapshot(self):
        with self.lock:
            return list(self.acks)

    def first_ack_after(self, t0, not_node, timeout):
        end = min(time.time() + timeout, DEADLINE[0])
        while time.time() < end:
            for t, name, _ in self.snapshot():
                if t > t0 and name != not_node:
                    return t - t0, name
            time.sleep(0.02)
        return None, None


def replication(n):
    """[(application_name, sync_state)] from n's pg_stat_replication, or None."""
    out = ha.sql(n.sock, n.port, "SELECT application_name, sync_state FROM pg_stat_replication")
    if out is None:
        return None
    return [tuple(line.split("|", 1)) for line in out.splitlines() if "|" in line]


def lsn(n, expr):
    """An LSN expression evaluated on n, as a number (-1: no answer)."""
    out = ha.sql(n.sock, n.port, f"SELECT ({expr} - '0/0')::bigint", timeout=5)
    try:
        return int(out)
    except (TypeError, ValueError):
        return -1


def sync_key(etcd, scope):
    r = ha.sh("etcdctl", f"--endpoints=https://{etcd['endpoint']}", f"--cacert={etcd['ca']}", f"--cert={etcd['cert']}",
              f"--key={etcd['key']}", "--dial-timeout=1s", "--command-timeout=2s", "get", "--print-value-only",
              f"/service/{scope}/sync", env={**os.environ, "ETCDCTL_API": "3"}, timeout=5)
    try:
        return json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None
    except ValueError:
        return None


def ready(nodes, sync_on, etcd, scope):
    """The leader if every other member streams and, with sync on, a
    synchronous standby is in place (pg_stat_replication says `sync` and the
    `sync` key names it); else None."""
    if not ha.settled(nodes):
        return None
    l = ha.leader(nodes)
    if l is None or not sync_on:
        return l
    rep = replication(l) or []
    syncs = {a for a, s in rep if s in ("sync", "quorum")}
    key = sync_key(etcd, scope) or {}
    named = {x.strip() for x in (key.get("sync_standby") or "").split(",") if x.strip()}
    if syncs and key.get("leader") == l.name and syncs <= named:
        return l
    return None


def wait_ready(nodes, sync_on, etcd, scope, timeout, what):
    box = []
    wait(lambda: box.append(ready(nodes, sync_on, etcd, scope)) or box[-1] is not None, timeout, what)
    return box[-1]


def pgbench(l, args, timeout):
    r = subprocess.run([f"{PG_BIN}/pgbench", "-h", l.sock, "-p", str(l.port), "-U", "postgres", *args, "postgres"],
                       capture_output=True, text=True, timeout=timeout,
                       env={"PATH": os.environ["PATH"], "PGCONNECT_TIMEOUT": "5"})
    if r.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)}: {r.stdout[-800:]}{r.stderr[-800:]}")
    return r.stdout + r.stderr


def bench(system, sync_on, a, setting, etcd, base, tusk):
    mode = "on" if sync_on else "off"
    scope = f"sync-{system}-{mode}-{os.getpid()}"
    extra = {"synchronous_mode": sync_on}
    if sync_on:
        extra.update({"synchronous_mode_strict": a.strict, "synchronous_node_count": a.node_count})
    pg_params = json.loads(a.pg_params)
    peer_params = SPILO_PARAMS if a.peer_params == "spilo" else {}
    nodes = [SyncNode(system, i, os.path.join(base, scope), etcd, setting, scope, extra, tusk, pg_params, peer_params,
                      a.replication_sslmode) for i in (1, 2, 3)]
    res = {"system": system, "mode": mode, "tps": None, "lat_ms": None, "failover": [], "lost": [], "acked": [],
           "new_is_sync": [], "unconfirmed": 0, "error": None}
    w = None

    def log(msg):
        print(f"#   {system} sync={mode}: {msg}", file=sys.stderr, flush=True)
    try:
        t0 = time.time()
        for n in nodes:
            n.start()
        l = wait_ready(nodes, sync_on, etcd, scope, 180, "bootstrap")
        log(f"ready after {time.time() - t0:.1f} s, leader {l.name}, replication {replication(l)}")
        # 1. commit latency
        pgbench(l, ["-i", "-q", "-s", str(a.scale)], timeout=600)
        l = wait_ready(nodes, sync_on, etcd, scope, 120, "ready before pgbench")
        # The same start for both systems: the load checkpointed on the
        # leader and replayed on every replica (a replica still replaying
        # it takes CPU from the leader's pgbench on a small machine).
        t1 = time.time()
        ha.sql(l.sock, l.port, "CHECKPOINT", timeout=120)
        target = lsn(l, "pg_current_wal_lsn()")
        wait(lambda: all(lsn(n, "pg_last_wal_replay_lsn()") >= target for n in nodes if n is not l),
             120, "replicas replayed the pgbench load")
        log(f"load checkpointed and replayed on the replicas in {time.time() - t1:.1f} s")
        ssn = ha.sql(l.sock, l.port, "SHOW synchronous_standby_names")
        if a.dump_settings:
            # Every setting not at its built-in default, on the leader and a
            # replica, to compare the two systems' PostgreSQL.
            for n in [l] + [n for n in nodes if n is not l][:1]:
                rows = ha.sql(n.sock, n.port, "SELECT name || '=' || setting FROM pg_settings "
                              "WHERE source NOT IN ('default', 'override') ORDER BY 1", timeout=10)
                log(f"settings on {n.name}{' (leader)' if n is l else ''}: " + " ".join(rows.split()))
        tpss, lats = [], []
        for k in range(a.pgbench_runs):
            cpu0 = node_cpu(nodes)
            out = pgbench(l, ["-c", str(a.clients), "-j", str(a.jobs), "-T", str(a.duration)],
                          timeout=a.duration + 120)
            cpu1 = node_cpu(nodes)
            cpu = {n: (cpu1[n][0] - cpu0[n][0], cpu1[n][1] - cpu0[n][1]) for n in cpu1}
            tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
            lat = re.search(r"latency average = ([0-9.]+) ms", out)
            if tps and lat:
                tpss.append(float(tps.group(1)))
                lats.append(float(lat.group(1)))
            log(f"pgbench {k + 1}/{a.pgbench_runs}: tps {tps and tps.group(1)}, latency {lat and lat.group(1)} ms; "
                "CPU seconds (postgres / agent): "
                + ", ".join(f"{n}{' (leader)' if n == l.name else ''} {v[0]:.1f} / {v[1]:.2f}" for n, v in cpu.items()))
        res["tps_runs"], res["lat_runs"] = tpss, lats
        res["tps"] = statistics.median(tpss) if tpss else None
        res["lat_ms"] = statistics.median(lats) if lats else None
        rep_after = replication(l)
        tls = ha.sql(l.sock, l.port, "SELECT string_agg(r.application_name || ' ' || "
                     "CASE WHEN s.ssl THEN s.version || ' ' || s.cipher ELSE 'no TLS' END, ', ') "
                     "FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)")
        log(f"replication links: {tls}")
        log(f"pgbench on {l.name}: tps {res['tps']}, latency {res['lat_ms']} ms; synchronous_standby_names "
            f"'{ssn}'; replication after the run {rep_after}")
        if sync_on and not any(s == "sync" for _, s in rep_after or []):
            raise RuntimeError(f"no sync standby any more after pgbench: {rep_after}")
        # 2. crash failover with a writer
        ha.sql(l.sock, l.port, "CHECKPOINT", timeout=60)
        ha.sql(l.sock, l.port, "CREATE TABLE w (n bigint PRIMARY KEY)")
        w = SeqWriter(nodes, a.interval, a.write_timeout)
        w.start()
        checked = 0  # numbers up to this one were verified on an earlier leader
        for rep in range(a.runs):
            l = wait_ready(nodes, sync_on, etcd, scope, 180, f"ready before crash {rep + 1}")
            syncs = {x for x, s in (replication(l) or []) if s == "sync"}
            time.sleep(1 + random.uniform(0, setting[1]))
            t0 = time.time()
            l.crash()
            took, new = w.first_ack_after(t0, l.name, a.failover_timeout)
            if took is None:
                raise RuntimeError(f"crash {rep + 1}: no acknowledged write on another member in {a.failover_timeout} s")
            acked = {k for _, _, k in w.snapshot() if k > checked}
            nn = next(n for n in nodes if n.name == new)
            present = None
            for _ in range(50):
                try:
                    c = connect(nn)
                    try:
                        with c.cursor() as cur:
                            cur.execute("SELECT n FROM w WHERE n > %s", (checked,))
                            present = {r[0] for r in cur.fetchall()}
                    finally:
                        c.close()
                    break
                except psycopg2.Error:
                    time.sleep(0.2)
            if present is None:
                raise RuntimeError(f"crash {rep + 1}: cannot read w on {new}")
            lost = sorted(acked - present)
            res["failover"].append(took)
            res["lost"].append(len(lost))
            res["acked"].append(len(acked))
            res["new_is_sync"].append(new in syncs if sync_on else None)
            log(f"crash {rep + 1}: killed {l.name}, first write on {new} after {took:.2f} s; "
                f"{len(lost)} of {len(acked)} acknowledged writes missing there{(' ' + str(lost[:10])) if lost else ''}; "
                f"sync standby before the crash {sorted(syncs) or '-'}")
            checked = max(acked | {checked})
            if rep < a.runs - 1:
                l.start()
        res["unconfirmed"] = w.unconfirmed
    except Exception as e:  # noqa: BLE001 -- reported in the table, the other runs go on
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"ERROR {res['error']}")
    finally:
        if w:
            w.stop_flag = True
            w.join(a.write_timeout + 5)
            res["unconfirmed"] = w.unconfirmed
        for n in nodes:
            n.stop_all()
            # the data goes, agent.log stays (for keep_logs)
            shutil.rmtree(os.path.join(n.dir, "home" if system == "tusk" else "data"), ignore_errors=True)
    return res


WATCHDOG = r"""
import os, signal, sys, time
parent, base, deadline = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
def alive(p):
    try:
        os.kill(p, 0)
        return True
    except ProcessLookupError:
        return False
termed = None
while alive(parent):
    time.sleep(1)
    now = time.time()
    if termed is None and now > deadline:
        os.kill(parent, signal.SIGTERM); termed = now
    elif termed is not None and now > termed + 120 and alive(parent):
        os.kill(parent, signal.SIGKILL)
# The parent is gone: kill, by pid, what it started and left behind
# (processes whose executable or command line is in its run directory)
# and their descendants.
kids, roots = {}, []
for d in os.listdir("/proc"):
    if not d.isdigit() or int(d) == os.getpid():
        continue
    try:
        with open(f"/proc/{d}/stat") as f:
            kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
        with open(f"/proc/{d}/cmdline", "rb") as f:
            cmd = f.read().decode(errors="replace")
        try:
            exe = os.readlink(f"/proc/{d}/exe")
        except OSError:
            exe = ""
        if base in cmd or exe.startswith(base):
            roots.append(int(d))
    except (OSError, IndexError, ValueError):
        pass
seen = set()
while roots:
    p = roots.pop()
    if p not in seen:
        seen.add(p)
        roots.extend(kids.get(p, []))
for p in seen:
    try:
        os.kill(p, signal.SIGKILL)
    except OSError:
        pass
if seen:  # the parent did not clean up: its run directory goes too
    import shutil
    time.sleep(1)
    shutil.rmtree(base, ignore_errors=True)
"""


def fmt_times(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="crashes per system and mode")
    ap.add_argument("--settings", default="10/2/5", help="ttl/loop_wait/retry_timeout")
    ap.add_argument("--systems", default="tusk,patroni")
    ap.add_argument("--modes", default="off,on", help="synchronous_mode values to run")
    ap.add_argument("--strict", action="store_true", help="synchronous_mode_strict: true when sync is on")
    ap.add_argument("--node-count", type=int, default=1, help="synchronous_node_count when sync is on")
    ap.add_argument("--scale", type=int, default=5, help="pgbench -i -s")
    ap.add_argument("--clients", type=int, default=4, help="pgbench -c")
    ap.add_argument("--jobs", type=int, default=2, help="pgbench -j")
    ap.add_argument("--duration", type=int, default=20, help="pgbench -T")
    ap.add_argument("--pgbench-runs", type=int, default=3, help="pgbench runs per system and mode (median)")
    ap.add_argument("--interval", type=float, default=0.01, help="writer: seconds between inserts")
    ap.add_argument("--write-timeout", type=float, default=30, help="writer: cancel an insert after this long")
    ap.add_argument("--failover-timeout", type=float, default=120)
    ap.add_argument("--max-minutes", type=float, default=60, help="hard bound on the whole run")
    ap.add_argument("--pg-params", default="{}", help="JSON: PostgreSQL parameters for both systems")
    ap.add_argument("--peer-params", choices=("spilo", "plain"), default="spilo",
                    help="spilo: Patroni's PostgreSQL gets the parameters tusk sets by itself (Spilo's); "
                    "plain: only shared_buffers and --pg-params")
    ap.add_argument("--replication-sslmode", default=None,
                    help="libpq sslmode of the replicas' connections under both systems (default: each its own: "
                    "tusk require, Patroni prefer)")
    ap.add_argument("--dump-settings", action="store_true", help="log the leader's non-default settings")
    ap.add_argument("--tusk", default=os.path.join(ROOT, "target/release/tusk"), help="tusk binary (not rebuilt)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    if not os.access(a.tusk, os.X_OK) and "tusk" in a.systems:
        sys.exit(f"no tusk binary at {a.tusk}: build it first (cargo build --release)")
    setting = tuple(int(x) for x in a.settings.split("/"))
    modes = [{"off": False, "on": True}[m] for m in a.modes.split(",")]
    systems = a.systems.split(",")

    start = time.time()
    DEADLINE[0] = start + a.max_minutes * 60
    base = tempfile.mkdtemp(prefix="tusk-bench-sync-", dir="/tmp")
    os.chmod(base, 0o755)
    os.environ["TESTBED_MAX_SECONDS"] = str(int(a.max_minutes * 60 + 300))
    wd = subprocess.Popen(["/usr/bin/python3", "-c", WATCHDOG, str(os.getpid()), base, str(DEADLINE[0] + 30)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)

    def on_signal(sig, _frame):
        raise SystemExit(f"signal {sig}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    tusk = None
    if "tusk" in systems:
        # A copy: the binary in target/ may be rebuilt during the run.
        tusk = os.path.join(base, "tusk")
        shutil.copy2(a.tusk, tusk)
        ver = ha.sh(tusk, "--version", timeout=10).stdout.strip()
        print(f"# tusk binary {a.tusk} ({ver}), mtime {time.ctime(os.path.getmtime(a.tusk))}", file=sys.stderr)
    etcd, stop_etcd = ha.start_etcd(base)
    rows = []
    try:
        # Modes in the outer loop, systems alternating inside.
        for sync_on in modes:
            for system in systems:
                print(f"# {system}, synchronous_mode {sync_on}, {a.settings} ... "
                      f"({time.time() - start:.0f} s elapsed)", file=sys.stderr, flush=True)
                rows.append(bench(system, sync_on, a, setting, etcd, base, tusk))
    finally:
        stop_etcd()
        logs = ha.keep_logs(base)
        with open(os.path.join(logs, "results.json"), "w") as f:
            json.dump({"args": vars(a), "rows": rows}, f, indent=1)
        shutil.rmtree(base, ignore_errors=True)
        # The watchdog (wd) exits by itself once this process is gone.

    sync_desc = "synchronous_mode_strict, " if a.strict else ""
    print(f"\nttl/loop_wait/retry_timeout {a.settings}; 3 nodes, one etcd (mTLS), PostgreSQL 15; "
          f"{sync_desc}synchronous_node_count {a.node_count}; Patroni's PostgreSQL parameters: {a.peer_params}"
          f"{'; both: ' + a.pg_params if json.loads(a.pg_params) else ''}")
    print(f"pgbench -i -s {a.scale}; {a.pgbench_runs} x -c {a.clients} -j {a.jobs} -T {a.duration} against the "
          "leader, median (min-max). "
          f"Crash = SIGKILL of the leader's agent + postgres tree, writer every {a.interval * 1000:.0f} ms; "
          f"{a.runs} crashes each, median (min-max)")
    print("| system | sync mode | TPS | latency avg (ms) | crash: fault -> first write (s) | lost acked writes "
          "| new leader was the sync standby |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        tps = (f"{r['tps']:.0f} ({min(r['tps_runs']):.0f}-{max(r['tps_runs']):.0f})"
               if r["tps"] is not None else "-")
        lat = f"{r['lat_ms']:.2f}" if r["lat_ms"] is not None else "-"
        lost = (f"{sum(r['lost'])} of {sum(r['acked'])} (per crash {'/'.join(map(str, r['lost']))})"
                if r["lost"] else "-")
        ns = r["new_is_sync"]
        nsync = "-" if not ns or ns[0] is None else f"{sum(1 for x in ns if x)} of {len(ns)}"
        print(f"| {r['system']} | {r['mode']} | {tps} | {lat} | {fmt_times(r['failover'])} | {lost} | {nsync} |")
    for r in rows:
        if r["error"]:
            print(f"ERROR {r['system']} sync={r['mode']}: {r['error']}")
        if r["unconfirmed"]:
            print(f"note {r['system']} sync={r['mode']}: {r['unconfirmed']} inserts returned with the "
                  "'canceling wait for synchronous replication' warning (not counted as acknowledged)")
    print(f"total {time.time() - start:.0f} s; agent logs and results.json: {logs}")
    if any(r["error"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
