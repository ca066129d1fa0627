#!/usr/bin/env python3
"""New replica benchmark: a replica built from the base backup in S3
(Spilo's `wal_e` method: backup-fetch, WAL from the archive, then
streaming) against one built by `pg_basebackup` from the leader, at the
same size, in one run, alternating.

One etcd with mutual TLS; garage behind the same TLS front as the other
benchmarks. A tusk leader holds `pgbench -i -s S` and a fresh base backup
(`tusk backup-push`), plus a little WAL written after it. Each run starts a
new member and times it from start to streaming (pg_stat_wal_receiver
says `streaming`), with the leader's CPU seconds over that time (what the
copy cost the primary). The pg_basebackup runs use the same storage with
`WALE_BACKUP_THRESHOLD_PERCENTAGE=0` (any WAL since the backup makes the
member fall back to pg_basebackup, Spilo's rule), so everything else is
equal.

Usage (as root, after `cargo build --release`):
  scripts/bench/replica.py [--scale 50] [--repeat 3]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import archive as A  # noqa: E402  (garage + TLS front)
import ha as H  # noqa: E402  (etcd with mTLS, ports, SQL)


class Member:
    def __init__(self, base, name, etcd, s3env, extra=None):
        self.name = name
        self.dir = os.path.join(base, name)
        os.makedirs(os.path.join(self.dir, "home"))
        os.chmod(self.dir, 0o755)
        self.port, self.api = H.free_port(), H.free_port()
        self.sock = os.path.join(self.dir, "sock")
        self.env = {
            "PATH": os.environ["PATH"], "SCOPE": "bench", "PATRONI_NAME": name,
            "PGHOME": os.path.join(self.dir, "home"), "PGPORT": str(self.port), "APIPORT": str(self.api),
            "PG_CONNECT_ADDRESS": f"127.0.0.1:{self.port}", "RESTAPI_CONNECT_ADDRESS": f"127.0.0.1:{self.api}",
            "TUSK_SOCKET_DIR": self.sock, "TUSK_PG_PARAMETERS": '{"shared_buffers":"128MB"}',
            "TUSK_BOOTSTRAP_DCS": json.dumps({"ttl": 10, "loop_wait": 2, "retry_timeout": 5}),
            "ETCD3_HOSTS": etcd["endpoint"], "ETCD3_CACERT": etcd["ca"], "ETCD3_CERT": etcd["cert"],
            "ETCD3_KEY": etcd["key"], "BACKUP_SCHEDULE": "0 0 1 1 *",
        }
        self.env.update(s3env)
        self.env.update(extra or {})
        self.log = os.path.join(self.dir, "tusk.log")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([A.TUSK], env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def sql(self, q):
        return H.sql(self.sock, self.port, q, timeout=10)

    def streaming(self):
        return self.sql("select status from pg_stat_wal_receiver") == "streaming"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tree_cpu_s(self):
        """CPU seconds of the agent and its PostgreSQL: each process's own
        time plus that of its children already reaped (the walsender of a
        finished pg_basebackup), plus the live children's."""
        def cpu(pid, reaped):
            with open(f"/proc/{pid}/stat") as f:
                x = f.read().rsplit(")", 1)[1].split()
            ticks = int(x[11]) + int(x[12]) + ((int(x[13]) + int(x[14])) if reaped else 0)
            return ticks / os.sysconf("SC_CLK_TCK")
        total = 0.0
        pm = None
        try:
            pm = int(open(os.path.join(self.dir, "home/pgdata/pgroot/data/postmaster.pid")).readline())
        except (OSError, ValueError):
            pass
        for parent in [self.proc.pid] + ([pm] if pm else []):
            try:
                total += cpu(parent, True)
            except OSError:
                continue
            for child in H.sh("pgrep", "-P", str(parent)).stdout.split():
                if int(child) == pm:
                    continue
                try:
                    total += cpu(int(child), False)
                except OSError:
                    pass
        return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    if not os.path.exists(A.TUSK):
        sys.exit("build first: cargo build --release")
    base = tempfile.mkdtemp(prefix="tusk-bench-replica-", dir="/tmp")
    os.chmod(base, 0o755)
    procs, members = [], []
    stop_etcd = None
    try:
        etcd, stop_etcd = H.start_etcd(base)
        _, s3env = A.s3_front(base, A.free_port_block(), procs)
        leader = Member(base, "leader", etcd, s3env)
        members.append(leader)
        leader.start()
        H.wait(lambda: leader.sql("select not pg_is_in_recovery()") == "t", 120, "the leader")
        A.run(f"{A.PG_BIN}/pgbench", "-i", "-q", "-s", str(args.scale), "-h", leader.sock, "-p", str(leader.port),
              "-U", "postgres", "postgres")
        t0 = time.time()
        r = A.run(A.TUSK, "backup-push", env=leader.env)
        print(f"backup-push {time.time() - t0:.1f} s: {r.stdout.strip()[:120]}", flush=True)
        leader.sql("create table after_backup as select g from generate_series(1, 100000) g")
        db_mb = int(leader.sql("select pg_database_size('postgres')")) // 1048576
        results = {"s3": [], "basebackup": []}
        for k in range(args.repeat):
            for method in ("s3", "basebackup"):
                extra = {} if method == "s3" else {"WALE_BACKUP_THRESHOLD_PERCENTAGE": "0"}
                m = Member(base, f"{method}{k}", etcd, s3env, extra)
                members.append(m)
                cpu0 = leader.tree_cpu_s()
                t0 = time.time()
                m.start()
                H.wait(lambda: m.streaming(), 600, f"{m.name} streaming")
                dt = time.time() - t0
                cpu = leader.tree_cpu_s() - cpu0
                text = open(m.log, errors="replace").read()
                used_s3 = "replica created from the base backup in S3" in text
                assert used_s3 == (method == "s3"), f"{m.name}: expected {method}, log says otherwise"
                results[method].append({"seconds": round(dt, 2), "leader_cpu_s": round(cpu, 2)})
                print(f"   {method}: {results[method][-1]}", flush=True)
                m.stop()
                shutil.rmtree(os.path.join(m.dir, "home"), ignore_errors=True)
        print()
        print(f"database {db_mb} MB; new replica, start to streaming (median of {args.repeat}):")
        med = {k: statistics.median(x["seconds"] for x in v) for k, v in results.items()}
        cpu = {k: statistics.median(x["leader_cpu_s"] for x in v) for k, v in results.items()}
        print(f"{'':28} {'seconds':>9} {'leader CPU s':>13}")
        print(f"{'from S3 (backup-fetch)':28} {med['s3']:>9.2f} {cpu['s3']:>13.2f}")
        print(f"{'pg_basebackup':28} {med['basebackup']:>9.2f} {cpu['basebackup']:>13.2f}")
        print(f"from S3 is {med['basebackup'] / med['s3']:.2f}x as fast")
        print(json.dumps(results))
    finally:
        for m in members:
            m.stop()
        for p in procs:
            p.terminate()
        A.run(os.path.join(A.ROOT, "scripts/testbed/garage.sh"), "stop", os.path.join(base, "garage"), check=False)
        if stop_etcd:
            stop_etcd()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
