#!/usr/bin/env python3
"""WAL archiving benchmark: tusk and pgBackRest 2.45 side by side, in one run,
against the same garage (S3) behind the same TLS front (haproxy), with the
same PostgreSQL 15 settings (BASELINES.md's method).

For each system:
  switched  (--repeat times, median) pause archiving (archive_command = '' + reload), make N segments
            with INSERT + pg_switch_wal() from one connection, resume, time
            until no .ready is left: the archiver's own drain capacity
  pgbench   the same with the WAL of `pgbench -i -s S` as the backlog
  live      archiving on during `pgbench -i -s S`: peak lag (.ready files,
            sampled every 20 ms) and the time from pgbench's end to no lag
  restore   a base copy (pg_basebackup -X none, taken first) recovering only
            through restore_command (tusk wal-fetch with prefetch under a tusk
            supervisor; pgbackrest archive-get, async) until promotion
CPU: the PostgreSQL archiver process is moved into a cpuacct cgroup before
each drain (for tusk, with the supervisor), so the cgroup counts every
archive_command child, pgBackRest's async workers and tusk's supervisor; the
archiver's own CPU is subtracted. Peak RSS: the sum of VmRSS of the cgroup's
processes (archiver excluded), sampled every 20 ms.

pgBackRest: archive-async=y, compress-type=lz4, process-max=2 (issue 5).
tusk: WALG_COMPRESSION_METHOD=lz4, default concurrency (16 up / 10 down).

Usage (as root, after `cargo build --release`):
  scripts/bench/archive.py [--segments 200] [--scale 50] [--systems tusk,pgbackrest]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PG_BIN = "/usr/lib/postgresql/15/bin"
TUSK = os.path.join(ROOT, "target/release/tusk")
CGROOT = "/sys/fs/cgroup/cpuacct"
# The same PostgreSQL settings for both systems (tusk.conf's Spilo defaults
# that change the WAL volume, plus room so no checkpoint recycles WAL).
PG_PARAMS = {
    "shared_buffers": "128MB", "max_wal_size": "8GB", "min_wal_size": "1GB", "checkpoint_timeout": "30min",
    "wal_compression": "on", "wal_log_hints": "on", "wal_level": "replica", "checkpoint_completion_target": "0.9",
    "max_connections": "50", "archive_timeout": "1800s",
}


def run(*args, check=True, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{args}: {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def as_postgres(*args, **kw):
    return run("runuser", "-u", "postgres", "--", *args, **kw)


class Pg:
    """SQL over the unix socket as postgres (Debian's psql wrapper avoided)."""

    def __init__(self, sock, port):
        self.sock, self.port = sock, port

    def sql(self, q, check=True):
        r = run(f"{PG_BIN}/psql", "-XAtq", "-h", self.sock, "-p", str(self.port), "-U", "postgres", "-d",
                "postgres", "-c", q, check=check)
        return r.stdout.strip()

    def script(self, text):
        """Runs `text` in ONE session (one connection)."""
        r = subprocess.run([f"{PG_BIN}/psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", self.sock, "-p",
                            str(self.port), "-U", "postgres", "-d", "postgres", "-f", "-"],
                           input=text, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)


class Meter:
    """CPU (cpuacct cgroup) and peak RSS of the processes that archive."""

    def __init__(self, name):
        self.path = os.path.join(CGROOT, f"tusk-bench-{name}-{os.getpid()}")
        os.makedirs(self.path, exist_ok=True)
        self.peak_kb = 0
        self.exclude = set()
        self._stop = threading.Event()

    def add(self, pid, exclude=False):
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        if exclude:
            self.exclude.add(pid)

    def usage_ns(self):
        with open(os.path.join(self.path, "cpuacct.usage")) as f:
            return int(f.read())

    def _sample(self):
        while not self._stop.wait(0.02):
            total = 0
            try:
                with open(os.path.join(self.path, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                continue
            for pid in pids:
                if pid in self.exclude:
                    continue
                try:
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("VmRSS:"):
                                total += int(line.split()[1])
                except OSError:
                    pass
            self.peak_kb = max(self.peak_kb, total)

    def start(self):
        self.peak_kb = 0
        self._stop.clear()
        self.t = threading.Thread(target=self._sample, daemon=True)
        self.t.start()

    def stop(self):
        self._stop.set()
        self.t.join()

    def close(self):
        # Move survivors back to the root group, then remove ours.
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                for p in f.read().split():
                    try:
                        with open(os.path.join(CGROOT, "cgroup.procs"), "w") as r:
                            r.write(p)
                    except OSError:
                        pass
            os.rmdir(self.path)
        except OSError:
            pass


def proc_cpu_ns(pid):
    """utime+stime of the process itself (not its children), in ns."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


def ready(data):
    try:
        return sum(1 for n in os.listdir(os.path.join(data, "pg_wal/archive_status")) if n.endswith(".ready"))
    except FileNotFoundError:
        return 0


def wait(cond, limit, what):
    end = time.time() + limit
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise RuntimeError(f"timeout: {what}")


class System:
    name = "?"

    def archiver_pid(self):
        return int(wait(lambda: self.pg.sql("select pid from pg_stat_activity where backend_type = 'archiver'"),
                        30, "archiver pid"))

    def pause(self):
        self.pg.sql("alter system set archive_command = ''")
        self.pg.sql("select pg_reload_conf()")
        # tusk uploads new .ready files ahead only while postgres keeps
        # calling archive_command (3 s window): wait it out, so the backlog
        # is really a backlog.
        time.sleep(4)

    def resume(self):
        self.pg.sql("alter system reset archive_command")
        self.pg.sql("select pg_reload_conf()")

    def extra_pids(self):
        return []

    def drain(self, make_backlog, label):
        """Pause, make a backlog, resume; time and meter the drain."""
        wait(lambda: ready(self.data) == 0, 300, "no backlog before pausing")
        self.pause()
        make_backlog()
        n = wait(lambda: ready(self.data) or None, 60, "backlog")
        time.sleep(0.5)
        n = ready(self.data)
        meter = Meter(f"{self.name}-{label}")
        arch = self.archiver_pid()
        meter.add(arch, exclude=True)
        for p in self.extra_pids():
            meter.add(p)
        cpu0, self_cpu0 = meter.usage_ns(), proc_cpu_ns(arch)
        extra0 = sum(proc_cpu_ns(p) for p in self.extra_pids())
        meter.start()
        t0 = time.time()
        self.resume()
        wait(lambda: ready(self.data) == 0, 900, f"{label} drain")
        dt = time.time() - t0
        meter.stop()
        cpu = meter.usage_ns() - cpu0 - (proc_cpu_ns(arch) - self_cpu0)
        extra = sum(proc_cpu_ns(p) for p in self.extra_pids()) - extra0
        meter.close()
        r = {"segments": n, "seconds": round(dt, 2), "seg_per_s": round(n / dt, 1),
             "cpu_ms_per_seg": round(cpu / 1e6 / n, 1), "peak_rss_mb": round(meter.peak_kb / 1024, 1)}
        if self.extra_pids():
            r["supervisor_cpu_ms_per_seg"] = round(extra / 1e6 / n, 1)
        return r

    def switched(self, n):
        self.pg.sql("create table if not exists sw (id serial, v text)")
        body = "".join("insert into sw (v) values (md5(random()::text)); select pg_switch_wal();\n" for _ in range(n))
        return self.drain(lambda: self.pg.script(body), "switched")

    def pgbench_backlog(self, scale):
        return self.drain(lambda: self.pgbench(scale), "pgbench")

    def pgbench(self, scale):
        run(f"{PG_BIN}/pgbench", "-i", "-q", "-s", str(scale), "-h", self.sock, "-p", str(self.port), "-U",
            "postgres", "postgres")

    def live(self, scale):
        wait(lambda: ready(self.data) == 0, 300, "no backlog before live")
        peak = [0]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.02):
                peak[0] = max(peak[0], ready(self.data))
        t = threading.Thread(target=sample, daemon=True)
        t.start()
        t0 = time.time()
        self.pgbench(scale)
        t_end = time.time()
        wait(lambda: ready(self.data) == 0, 300, "live drain")
        t_drained = time.time()
        stop.set()
        t.join()
        return {"pgbench_s": round(t_end - t0, 1), "peak_lag_segments": peak[0],
                "drain_after_end_s": round(t_drained - t_end, 2)}


class Tusk(System):
    name = "tusk"

    def __init__(self, base, port, s3env):
        self.dir = os.path.join(base, "tusk")
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)
        self.port, self.sock = port, os.path.join(self.dir, "sock")
        self.s3env = s3env
        self.proc = self.start_node(self.dir, port)
        self.data = os.path.join(self.dir, "home/pgdata/pgroot/data")
        self.pg = Pg(self.sock, port)

    def env(self, d, port):
        params = dict(PG_PARAMS)
        env = {"PATH": os.environ["PATH"], "PGHOME": os.path.join(d, "home"), "PGPORT": str(port),
               "APIPORT": str(port + 1000), "TUSK_SOCKET_DIR": os.path.join(d, "sock"),
               "TUSK_PG_PARAMETERS": json.dumps({k: v for k, v in params.items()
                                                 if k not in ("wal_level", "archive_timeout")}),
               "PATRONI_NAME": "bench", "WALG_COMPRESSION_METHOD": "lz4"}
        env.update(self.s3env)
        if os.environ.get("TUSK_LOG_LEVEL"):
            env["TUSK_LOG_LEVEL"] = os.environ["TUSK_LOG_LEVEL"]
        return env

    def start_node(self, d, port):
        os.makedirs(os.path.join(d, "home"), exist_ok=True)
        log = open(os.path.join(d, "tusk.log"), "ab")
        p = subprocess.Popen([TUSK], env=self.env(d, port), stdout=log, stderr=log, cwd=d)
        wait(lambda: b"PostgreSQL is ready" in open(os.path.join(d, "tusk.log"), "rb").read(), 120, "tusk ready")
        return p

    def extra_pids(self):
        return [self.proc.pid]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)

    def base_copy(self, dest):
        run(f"{PG_BIN}/pg_basebackup", "-X", "none", "-c", "fast", "-U", "standby", "-h", self.sock, "-p",
            str(self.port), "-D", dest)

    def restore(self, copy_dir):
        """The copy (already in copy_dir/home/pgdata/pgroot/data) recovers under a tusk supervisor."""
        data = os.path.join(copy_dir, "home/pgdata/pgroot/data")
        open(os.path.join(data, "recovery.signal"), "w").close()
        t0 = time.time()
        proc = self.start_node(copy_dir, self.port + 10)
        pg = Pg(os.path.join(copy_dir, "sock"), self.port + 10)
        wait(lambda: pg.sql("select not pg_is_in_recovery()", check=False) == "t", 900, "tusk restore")
        dt = time.time() - t0
        n = open(os.path.join(copy_dir, "tusk.log")).read().count("from archive")
        proc.terminate()
        proc.wait(60)
        return dt, n


class PgBackRest(System):
    name = "pgbackrest"

    def __init__(self, base, port, tls_port, keys):
        self.dir = os.path.join(base, "pgbr")
        os.makedirs(self.dir)
        shutil.chown(self.dir, "postgres", "postgres")
        self.port, self.sock = port, os.path.join(self.dir, "sock")
        os.makedirs(self.sock)
        shutil.chown(self.sock, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.tls_port, self.keys = tls_port, keys
        self.conf = self.write_conf("bench", self.data, port, self.sock)
        as_postgres(f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust")
        cmd = f"pgbackrest --config={self.conf} --stanza=bench archive-push %p"
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            for k, v in PG_PARAMS.items():
                f.write(f"{k} = '{v}'\n")
            f.write(f"port = {port}\nunix_socket_directories = '{self.sock}'\narchive_mode = on\n"
                    f"archive_command = '{cmd}'\nlisten_addresses = ''\n")
        with open(os.path.join(self.data, "pg_hba.conf"), "a") as f:
            f.write("local replication all trust\n")
        as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "pg.log"), "-w", "start")
        self.pg = Pg(self.sock, port)
        self.pg.sql("create role standby login replication")
        as_postgres("pgbackrest", f"--config={self.conf}", "--stanza=bench", "stanza-create")

    def write_conf(self, name, data, port, sock):
        d = os.path.join(self.dir, f"pgbr-{name}")
        for sub in ("spool", "lock", "log"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
            shutil.chown(os.path.join(d, sub), "postgres", "postgres")
        conf = os.path.join(d, "pgbackrest.conf")
        with open(conf, "w") as f:
            f.write(f"""[global]
repo1-type=s3
repo1-s3-endpoint=localhost
repo1-storage-port={self.tls_port}
repo1-storage-verify-tls=n
repo1-s3-uri-style=path
repo1-s3-bucket=bench
repo1-s3-region=garage
repo1-s3-key={self.keys[0]}
repo1-s3-key-secret={self.keys[1]}
repo1-path=/pgbr-{os.getpid()}
compress-type=lz4
compress-level=1
archive-async=y
process-max=2
spool-path={d}/spool
lock-path={d}/lock
log-path={d}/log
log-level-console=warn
log-level-file=info

[bench]
pg1-path={data}
pg1-port={port}
pg1-socket-path={sock}
""")
        shutil.chown(conf, "postgres", "postgres")
        os.chmod(conf, 0o600)
        return conf

    def stop(self):
        as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", check=False)

    def base_copy(self, dest):
        run(f"{PG_BIN}/pg_basebackup", "-X", "none", "-c", "fast", "-U", "standby", "-h", self.sock, "-p",
            str(self.port), "-D", dest)

    def restore(self, copy_dir):
        data = os.path.join(copy_dir, "data")
        sock = os.path.join(copy_dir, "sock")
        os.makedirs(sock, exist_ok=True)
        port = self.port + 10
        conf = self.write_conf("copy", data, port, sock)
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"port = {port}\nunix_socket_directories = '{sock}'\narchive_mode = off\n"
                    f"restore_command = 'pgbackrest --config={conf} --stanza=bench archive-get %f \"%p\"'\n")
        open(os.path.join(data, "recovery.signal"), "w").close()
        run("chown", "-R", "postgres:postgres", copy_dir)
        t0 = time.time()
        as_postgres(f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(copy_dir, "pg.log"), "start")
        pg = Pg(sock, port)
        wait(lambda: pg.sql("select not pg_is_in_recovery()", check=False) == "t", 900, "pgbackrest restore")
        dt = time.time() - t0
        n = open(os.path.join(copy_dir, "pg.log")).read().count("from archive")
        as_postgres(f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
        return dt, n


def s3_front(base, ports, procs):
    """Starts garage on ports (s3, rpc) and haproxy's TLS front on ports+2
    (a CA and a localhost certificate made here: pgBackRest speaks only
    HTTPS); haproxy goes into procs. Returns (garage env, tusk's S3 env)."""
    s3, rpc, tls = ports, ports + 1, ports + 2
    gdir = os.path.join(base, "garage")
    env = dict(os.environ, TESTBED_WATCH_PID=str(os.getpid()),
               PATH=os.environ["PATH"] + ":" + os.path.expanduser("~/.cargo/bin"))
    run(os.path.join(ROOT, "scripts/testbed/garage.sh"), "start", gdir, str(s3), str(rpc), "bench", env=env)
    genv = dict(line.split("=", 1) for line in open(os.path.join(gdir, "env")).read().split())
    # The TLS front both systems use (pgBackRest speaks only HTTPS).
    # A CA and a server certificate for localhost signed by it (rustls
    # refuses a self-signed CA certificate as the server's).
    ca, cakey, cert, key, csr, ext, pem = (os.path.join(base, n) for n in (
        "ca.crt", "ca.key", "s3.crt", "s3.key", "s3.csr", "s3.ext", "s3.pem"))
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench-ca",
        "-keyout", cakey, "-out", ca)
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key, "-out", csr)
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", cakey, "-CAcreateserial", "-days", "2",
        "-extfile", ext, "-out", cert)
    with open(pem, "w") as f:
        f.write(open(cert).read() + open(key).read())
    os.chmod(ca, 0o644)
    os.chmod(cert, 0o644)
    hcfg = os.path.join(base, "haproxy.cfg")
    with open(hcfg, "w") as f:
        f.write(f"""global
  maxconn 512
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend s3tls
  bind 127.0.0.1:{tls} ssl crt {pem}
  default_backend garage
backend garage
  server g 127.0.0.1:{s3}
""")
    procs.append(subprocess.Popen(["haproxy", "-db", "-f", hcfg], stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(base, "haproxy.log"), "w")))
    time.sleep(0.5)
    s3env = {"AWS_ACCESS_KEY_ID": genv["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": genv["AWS_SECRET_ACCESS_KEY"],
             "AWS_REGION": "garage", "AWS_ENDPOINT": f"https://localhost:{tls}", "AWS_S3_FORCE_PATH_STYLE": "true",
             "WALG_S3_CA_CERT_FILE": ca, "WALG_S3_PREFIX": f"s3://bench/tusk-{os.getpid()}"}
    return genv, s3env


def make_system(name, base, port, ports, genv, s3env):
    """The system under test on PostgreSQL port `port`: a tusk node or a
    PostgreSQL archiving with pgBackRest (both to the TLS front at ports+2)."""
    if name == "tusk":
        return Tusk(base, port, s3env)
    return PgBackRest(base, port, ports + 2, (genv["AWS_ACCESS_KEY_ID"], genv["AWS_SECRET_ACCESS_KEY"]))


def teardown(base, running, procs):
    """Stops the systems, the TLS front and garage."""
    for sysm in running:
        try:
            sysm.stop()
        except Exception:
            pass
    for p in procs:
        p.terminate()
    run(os.path.join(ROOT, "scripts/testbed/garage.sh"), "stop", os.path.join(base, "garage"), check=False)


def free_port_block():
    import socket
    for base in range(5000, 9800, 50):
        ok = True
        for p in (base, base + 1, base + 2, base + 20, base + 25, base + 30, base + 35, base + 1020, base + 1030):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return base
    raise RuntimeError("no free ports")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--segments", type=int, default=200)
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--systems", default="tusk,pgbackrest")
    ap.add_argument("--repeat", type=int, default=3, help="backlog drains per system (the median is reported)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    if not os.path.exists(TUSK):
        sys.exit("build first: cargo build --release")
    base = tempfile.mkdtemp(prefix="tusk-bench-archive-", dir="/tmp")
    os.chmod(base, 0o755)
    ports = free_port_block()
    procs = []
    try:
        genv, s3env = s3_front(base, ports, procs)
        results = {}
        running = []
        for i, name in enumerate(args.systems.split(",")):
            port = ports + 20 + i * 5
            print(f"== {name}", flush=True)
            sysm = make_system(name, base, port, ports, genv, s3env)
            running.append(sysm)
            copy = os.path.join(base, f"{name}-copy")
            copy_data = os.path.join(copy, "home/pgdata/pgroot/data") if name == "tusk" else os.path.join(copy, "data")
            os.makedirs(os.path.dirname(copy_data), exist_ok=True)
            os.chmod(copy, 0o755)
            sysm.pg.sql("select pg_switch_wal()")
            wait(lambda: ready(sysm.data) == 0, 120, "initial archiving")
            sysm.base_copy(copy_data)
            r = {}
            for key, fn in (("switched", lambda: sysm.switched(args.segments)),
                            ("pgbench", lambda: sysm.pgbench_backlog(args.scale))):
                runs = []
                for _ in range(args.repeat):
                    runs.append(fn())
                    print(f"   {key}: {runs[-1]}", flush=True)
                runs.sort(key=lambda x: x["seg_per_s"])
                med = dict(runs[len(runs) // 2])
                med["seg_per_s_range"] = [runs[0]["seg_per_s"], runs[-1]["seg_per_s"]]
                r[key] = med
            r["live"] = sysm.live(args.scale)
            print(f"   live: {r['live']}", flush=True)
            sysm.pg.sql("select pg_switch_wal()")
            wait(lambda: ready(sysm.data) == 0, 300, "final archiving")
            sysm.stop()
            dt, n = sysm.restore(copy)
            r["restore"] = {"seconds": round(dt, 2), "segments": n, "seg_per_s": round(n / dt, 1)}
            print(f"   restore: {r['restore']}", flush=True)
            results[name] = r
            if not args.keep:
                # Several GB of WAL per system: free the disk before the next one.
                shutil.rmtree(sysm.dir, ignore_errors=True)
                shutil.rmtree(copy, ignore_errors=True)
        print()
        print(json.dumps(results, indent=1))
        if len(results) == 2 and "tusk" in results and "pgbackrest" in results:
            t, p = results["tusk"], results["pgbackrest"]
            print()
            print(f"{'':34} {'tusk':>12} {'pgBackRest':>12} {'ratio':>8}")

            def row(label, a, b, higher_better=True):
                ratio = (a / b if higher_better else b / a) if a and b else float("nan")
                print(f"{label:34} {a:>12} {b:>12} {ratio:>7.2f}x")
            row("switched drain (seg/s, median)", t["switched"]["seg_per_s"], p["switched"]["seg_per_s"])
            row("pgbench drain (seg/s, median)", t["pgbench"]["seg_per_s"], p["pgbench"]["seg_per_s"])
            row("CPU ms/seg, switched", t["switched"]["cpu_ms_per_seg"], p["switched"]["cpu_ms_per_seg"], False)
            row("CPU ms/seg, pgbench", t["pgbench"]["cpu_ms_per_seg"], p["pgbench"]["cpu_ms_per_seg"], False)
            row("peak RSS MB, pgbench drain", t["pgbench"]["peak_rss_mb"], p["pgbench"]["peak_rss_mb"], False)
            row("live peak lag (segments)", t["live"]["peak_lag_segments"], p["live"]["peak_lag_segments"], False)
            row("live drain after end (s)", t["live"]["drain_after_end_s"], p["live"]["drain_after_end_s"], False)
            row("restore (seg/s)", t["restore"]["seg_per_s"], p["restore"]["seg_per_s"])
            print("(ratio > 1: tusk better)")
    finally:
        teardown(base, locals().get("running", []), procs)
        for d in ("pgbackrest-copy", "pgbr"):
            dd = os.path.join(base, d, "data")
            if os.path.exists(os.path.join(dd, "postmaster.pid")):
                as_postgres(f"{PG_BIN}/pg_ctl", "-D", dd, "-m", "immediate", "-w", "stop", check=False)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")


if __name__ == "__main__":
    main()
