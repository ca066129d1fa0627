#!/usr/bin/env python3
"""Base backup benchmark: tusk and pgBackRest 2.45 side by side, in one run,
against the same garage (S3) behind the same TLS front (haproxy), on the
same data (`pgbench -i -s S` plus a small table), BASELINES.md's method.

For each system (archiving on, its archive drained first):
  backup   a full backup, timed from the command's start to its exit:
           tusk `backup-push` (lz4, WALG_UPLOAD_DISK_CONCURRENCY = cores);
           pgBackRest `backup --type=full --start-fast` (lz4 level 1,
           process-max 2). CPU seconds and peak RSS of every process of the
           command (a cpuacct cgroup entered before exec).
  restore  the backup fetched into an empty directory (tusk `backup-fetch
           DEST LATEST`; pgBackRest `restore`), then recovery through the
           archive until the database is promoted; the same meters.

Usage (as root, after `cargo build --release`):
  scripts/bench/backup.py [--scale 50] [--systems tusk,pgbackrest] [--repeat 3]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import archive as A  # noqa: E402  (the shared testbed of the archive benchmark)


def metered(name, argv, env=None, user=None):
    """Runs argv inside a fresh cpuacct cgroup; returns (seconds, cpu_s, peak_rss_mb, stdout)."""
    meter = A.Meter(name)
    procs_file = os.path.join(meter.path, "cgroup.procs")
    cmd = ["sh", "-c", f'echo $$ > {procs_file} && exec "$@"', "sh"]
    if user:
        cmd = ["sh", "-c", f'echo $$ > {procs_file} && exec runuser -u {user} -- "$@"', "sh"]
    meter.start()
    t0 = time.time()
    r = subprocess.run(cmd + argv, env=env, capture_output=True, text=True)
    dt = time.time() - t0
    meter.stop()
    cpu = meter.usage_ns() / 1e9
    meter.close()
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return dt, cpu, meter.peak_kb / 1024, r.stdout


def size_mb(pg):
    return int(pg.sql("select pg_database_size('postgres')")) / 1048576


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--systems", default="tusk,pgbackrest")
    ap.add_argument("--repeat", type=int, default=3, help="backups per system (the median is reported)")
    ap.add_argument("--no-restore", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    base = tempfile.mkdtemp(prefix="tusk-bench-backup-", dir="/tmp")
    os.chmod(base, 0o755)
    ports = A.free_port_block()
    procs, running = [], []
    try:
        genv, s3env = A.s3_front(base, ports, procs)
        s3env["BACKUP_SCHEDULE"] = "0 0 1 1 *"
        results = {}
        for i, name in enumerate(args.systems.split(",")):
            port = ports + 20 + i * 5
            print(f"== {name}", flush=True)
            sysm = A.make_system(name, base, port, ports, genv, s3env)
            running.append(sysm)
            sysm.pgbench(args.scale)
            sysm.pg.sql("create table marker as select g as id, md5(g::text) as v from generate_series(1, 1000) g")
            sysm.pg.sql("checkpoint")
            sysm.pg.sql("select pg_switch_wal()")
            A.wait(lambda: A.ready(sysm.data) == 0, 300, "archive drained")
            db_mb = size_mb(sysm.pg)
            if name == "tusk":
                # The automatic first backup (empty bucket) must be over.
                A.wait(lambda: b"base backup complete" in open(os.path.join(sysm.dir, "tusk.log"), "rb").read(),
                       300, "tusk's first backup")
                tenv = sysm.env(sysm.dir, port)
                argv, user = [A.TUSK, "backup-push"], None
            else:
                tenv, user = None, "postgres"
                argv = ["pgbackrest", f"--config={sysm.conf}", "--stanza=bench", "backup", "--type=full",
                        "--start-fast"]
            runs = []
            for k in range(args.repeat):
                sysm.pg.sql(f"insert into marker values ({2000 + k}, 'run {k}')")
                dt, cpu, rss, _ = metered(f"{name}-backup{k}", argv, env=tenv, user=user)
                runs.append({"seconds": round(dt, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(rss, 1),
                             "mb_per_s": round(db_mb / dt, 1)})
                print(f"   backup: {runs[-1]}", flush=True)
            runs.sort(key=lambda x: x["seconds"])
            r = {"db_mb": round(db_mb), "backup": dict(runs[len(runs) // 2]),
                 "backup_range_s": [runs[0]["seconds"], runs[-1]["seconds"]]}
            r["backup"]["peak_rss_mb_max"] = max(x["peak_rss_mb"] for x in runs)
            if not args.no_restore:
                sysm.pg.sql("select pg_switch_wal()")
                A.wait(lambda: A.ready(sysm.data) == 0, 300, "archive drained")
                sysm.stop()
                dest_root = os.path.join(base, f"{name}-restore")
                os.makedirs(dest_root)
                os.chmod(dest_root, 0o755)
                if name == "tusk":
                    copy_data = os.path.join(dest_root, "home/pgdata/pgroot/data")
                    os.makedirs(os.path.dirname(copy_data))
                    dt, cpu, rss, _ = metered(f"{name}-fetch", [A.TUSK, "backup-fetch", copy_data, "LATEST"],
                                              env=tenv)
                    r["restore"] = {"fetch_s": round(dt, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(rss, 1)}
                    rdt, n = sysm.restore(dest_root)
                else:
                    copy_data = os.path.join(dest_root, "data")
                    os.makedirs(copy_data)
                    shutil.chown(dest_root, "postgres", "postgres")
                    shutil.chown(copy_data, "postgres", "postgres")
                    os.chmod(copy_data, 0o700)
                    dt, cpu, rss, _ = metered(f"{name}-fetch", ["pgbackrest", f"--config={sysm.conf}",
                                                                "--stanza=bench", "restore",
                                                                f"--pg1-path={copy_data}"], user="postgres")
                    r["restore"] = {"fetch_s": round(dt, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(rss, 1)}
                    # pgBackRest's restore wrote restore_command and recovery.signal itself.
                    rdt, n = restore_pgbackrest(sysm, dest_root)
                r["restore"]["recovery_s"] = round(rdt, 2)
                r["restore"]["total_s"] = round(r["restore"]["fetch_s"] + rdt, 2)
                print(f"   restore: {r['restore']}", flush=True)
            results[name] = r
            try:
                sysm.stop()
            except Exception:
                pass
            shutil.rmtree(sysm.dir, ignore_errors=True)
        print()
        print(json.dumps(results, indent=1))
        if "tusk" in results and "pgbackrest" in results:
            t, p = results["tusk"], results["pgbackrest"]
            print()
            print(f"database: {t['db_mb']} MB (tusk) / {p['db_mb']} MB (pgBackRest)")
            print(f"{'':34} {'tusk':>12} {'pgBackRest':>12} {'ratio':>8}")

            def row(label, a, b):
                ratio = b / a if a and b else float("nan")
                print(f"{label:34} {a:>12} {b:>12} {ratio:>7.2f}x")
            row("full backup (s, median)", t["backup"]["seconds"], p["backup"]["seconds"])
            row("backup CPU (s)", t["backup"]["cpu_s"], p["backup"]["cpu_s"])
            row("backup peak RSS (MB, max)", t["backup"]["peak_rss_mb_max"], p["backup"]["peak_rss_mb_max"])
            if "restore" in t and "restore" in p:
                row("restore: fetch (s)", t["restore"]["fetch_s"], p["restore"]["fetch_s"])
                row("restore: fetch CPU (s)", t["restore"]["cpu_s"], p["restore"]["cpu_s"])
                row("restore: fetch peak RSS (MB)", t["restore"]["peak_rss_mb"], p["restore"]["peak_rss_mb"])
                row("restore: recovery (s)", t["restore"]["recovery_s"], p["restore"]["recovery_s"])
                row("restore: total (s)", t["restore"]["total_s"], p["restore"]["total_s"])
            print("(ratio > 1: tusk better)")
    finally:
        A.teardown(base, running, procs)
        for d in ("pgbackrest-restore/data", "pgbr/data"):
            dd = os.path.join(base, d)
            if os.path.exists(os.path.join(dd, "postmaster.pid")):
                A.as_postgres(f"{A.PG_BIN}/pg_ctl", "-D", dd, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


def restore_pgbackrest(sysm, dest_root):
    """pgBackRest's restored copy recovers through archive-get until promoted."""
    data = os.path.join(dest_root, "data")
    sock = os.path.join(dest_root, "sock")
    os.makedirs(sock, exist_ok=True)
    port = sysm.port + 10
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(f"port = {port}\nunix_socket_directories = '{sock}'\narchive_mode = off\n")
    A.run("chown", "-R", "postgres:postgres", dest_root)
    t0 = time.time()
    A.as_postgres(f"{A.PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(dest_root, "pg.log"), "start")
    pg = A.Pg(sock, port)
    A.wait(lambda: pg.sql("select not pg_is_in_recovery()", check=False) == "t", 900, "pgbackrest recovery")
    dt = time.time() - t0
    A.as_postgres(f"{A.PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
    return dt, 0


if __name__ == "__main__":
    main()
