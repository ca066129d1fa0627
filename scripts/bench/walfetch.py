#!/usr/bin/env python3
"""WAL restore benchmark: recovery through restore_command, tusk and
pgBackRest 2.45 side by side in one run, against the same garage (S3)
behind the same TLS front (haproxy), BASELINES.md's method.

For each system a base copy (pg_basebackup -X none) is taken, then the WAL
of `pgbench -i -s S`, repeated until --segments segments were written, is
archived, and the copy recovers only through the
archive (recovery.signal) until it is promoted:
  cp               the floor: replay alone (`cp` from the stopped source's
                   pg_wal, uncompressed, no S3)
  tusk direct      a PostgreSQL not run by tusk, `restore_command = 'tusk
                   wal-fetch %f %p'` with no supervisor (what a WAL-G user
                   does by hand; tusk's detached prefetcher, WAL-G's way)
  tusk supervised  the copy run by a tusk node (prefetch in the supervisor)
  pgBackRest       `archive-get` (archive-async=y: its own prefetch queue,
                   process-max 2, lz4)
Timed from the start of PostgreSQL (or tusk) to promotion; CPU seconds of
everything in a cpuacct cgroup entered before exec (PostgreSQL's own work
included, the same for all).

Usage (as root, after `cargo build --release`):
  scripts/bench/walfetch.py [--segments 140] [--scale 10] [--repeat 3] [--systems tusk,pgbackrest]
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


def recover(name, data, port, argv_env, restore_command=None, tusk_env=None, log=None):
    """Starts recovery of `data` in a fresh cgroup; returns (seconds, cpu_s, segments)."""
    meter = A.Meter(name)
    procs_file = os.path.join(meter.path, "cgroup.procs")
    # work/s: short (a socket path has at most 107 bytes).
    sock = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(data))), "s")
    os.makedirs(sock, exist_ok=True)
    shutil.chown(sock, "postgres", "postgres")
    open(os.path.join(data, "recovery.signal"), "w").close()
    A.run("chown", "-R", "postgres:postgres", os.path.dirname(data))
    meter.start()
    t0 = time.time()
    if tusk_env is not None:
        # A tusk node on the copy (its PGHOME above the data directory).
        sock = tusk_env["TUSK_SOCKET_DIR"]
        proc = subprocess.Popen(["sh", "-c", f'echo $$ > {procs_file} && exec "$@"', "sh", A.TUSK], env=tusk_env,
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=os.path.dirname(log))
    else:
        opts = (f"-p {port} -k {sock} -c listen_addresses= -c archive_mode=off -c log_line_prefix='%m [%p] ' "
                f"-c log_connections=off -c log_disconnections=off "
                f"-c restore_command='{restore_command}'")
        env_args = [f"{k}={v}" for k, v in argv_env.items()]
        log = os.path.join(os.path.dirname(data), f"{name}.log")
        r = subprocess.run(["sh", "-c", f'echo $$ > {procs_file} && exec "$@"', "sh", "runuser", "-u", "postgres", "--",
                        "env", "-i", f"PATH={os.environ['PATH']}", *env_args, f"{A.PG_BIN}/pg_ctl", "-D", data,
                        "-l", log, "-o", opts, "start"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start: {r.stdout}{r.stderr}{open(log, errors='replace').read()[-3000:]}")
        proc = None
    pg = A.Pg(sock, port)
    try:
        A.wait(lambda: (proc is not None and proc.poll() is not None and "exited")
               or pg.sql("select not pg_is_in_recovery()", check=False) == "t", 300, f"{name} promoted")
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"tusk exited with {proc.returncode}")
    except RuntimeError:
        print(open(log, errors="replace").read()[-5000:], file=sys.stderr)
        raise
    dt = time.time() - t0
    meter.stop()
    cpu = meter.usage_ns() / 1e9
    text = open(log, errors="replace").read()
    n = text.count("from archive")
    if proc is not None:
        proc.terminate()
        proc.wait(60)
    else:
        A.as_postgres(f"{A.PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
    meter.close()
    return dt, cpu, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--segments", type=int, default=140, help="WAL segments to restore (at least)")
    ap.add_argument("--repeat", type=int, default=3, help="recoveries per mode (the median is reported)")
    ap.add_argument("--systems", default="tusk,pgbackrest")
    ap.add_argument("--modes", default="cp,direct,supervised,archive-get", help="which recoveries to run")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (and print it)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    if not os.path.exists(A.TUSK):
        sys.exit("build first: cargo build --release")
    base = tempfile.mkdtemp(prefix="tusk-bench-walfetch-", dir="/tmp")
    os.chmod(base, 0o755)
    ports = A.free_port_block()
    procs, running = [], []
    results = {}
    try:
        genv, s3env = A.s3_front(base, ports, procs)
        s3env["BACKUP_SCHEDULE"] = "0 0 1 1 *"
        sources = {}
        for i, name in enumerate(args.systems.split(",")):
            port = ports + 20 + i * 5
            print(f"== {name}: source", flush=True)
            sysm = A.make_system(name, base, port, ports, genv, s3env)
            running.append(sysm)
            # Every segment stays in pg_wal too: the `cp` floor reads them.
            sysm.pg.sql("alter system set wal_keep_size = '16GB'")
            sysm.pg.sql("select pg_reload_conf()")
            sysm.pg.sql("select pg_switch_wal()")
            A.wait(lambda: A.ready(sysm.data) == 0, 120, "initial archiving")
            copy = os.path.join(base, f"{name}-copy")
            os.makedirs(copy)
            os.chmod(copy, 0o755)
            sysm.base_copy(os.path.join(copy, "data"))
            # The WAL to restore: `pgbench -i` (which recreates its tables)
            # until at least --segments segments were written.
            lsn0 = sysm.pg.sql("select pg_current_wal_lsn()")
            while True:
                sysm.pgbench(args.scale)
                written = int(float(sysm.pg.sql(f"select pg_current_wal_lsn() - '{lsn0}'::pg_lsn")))
                if written >= args.segments * 16 * 1024 * 1024:
                    break
            sysm.pg.sql("select pg_switch_wal()")
            A.wait(lambda: A.ready(sysm.data) == 0, 900, "archive drained")
            sysm.stop()
            sources[name] = (sysm, copy, port)
        for name, (sysm, copy, port) in sources.items():
            modes = ["cp", "direct", "supervised"] if name == "tusk" else ["archive-get"]
            modes = [m for m in modes if m in args.modes.split(",")]
            for mode in modes:
                runs = []
                for k in range(args.repeat):
                    work = os.path.join(base, f"{name}-{mode}-{k}")
                    data = os.path.join(work, "home/pgdata/pgroot/data")
                    os.makedirs(os.path.dirname(data))
                    for d in (work, os.path.join(work, "home"), os.path.join(work, "home/pgdata")):
                        os.chmod(d, 0o755)
                    A.run("cp", "-a", os.path.join(copy, "data"), data)
                    rport = port + 10
                    if mode == "cp":
                        # The floor: replay alone, the WAL copied from the
                        # stopped source's own pg_wal (nothing recycled).
                        r = recover(f"{name}-{mode}-{k}", data, rport, {},
                                    f"cp {os.path.join(sysm.data, 'pg_wal')}/%f %p")
                    elif mode == "direct":
                        env = {k: v for k, v in s3env.items() if k.startswith(("AWS_", "WALG_"))}
                        # No supervisor listens there: wal-fetch runs the archiver itself.
                        env["TUSK_SOCKET_DIR"] = os.path.join(work, "no-supervisor")
                        if os.environ.get("TUSK_LOG_LEVEL"):
                            env["TUSK_LOG_LEVEL"] = os.environ["TUSK_LOG_LEVEL"]
                        r = recover(f"{name}-{mode}-{k}", data, rport, env, f"{A.TUSK} wal-fetch %f %p")
                    elif mode == "supervised":
                        env = sysm.env(work, rport)
                        r = recover(f"{name}-{mode}-{k}", data, rport, None, tusk_env=env,
                                    log=os.path.join(work, "tusk.log"))
                    else:
                        sock = os.path.join(work, f"sock-{name}-{mode}-{k}")
                        conf = sysm.write_conf(f"copy{k}", data, rport, sock)
                        r = recover(f"{name}-{mode}-{k}", data, rport, {},
                                    f"pgbackrest --config={conf} --stanza=bench archive-get %f \"%p\"")
                    dt, cpu, n = r
                    runs.append({"seconds": round(dt, 2), "cpu_s": round(cpu, 2), "segments": n,
                                 "seg_per_s": round(n / dt, 1) if dt else 0})
                    print(f"   {name} {mode}: {runs[-1]}", flush=True)
                    if not args.keep:
                        shutil.rmtree(work, ignore_errors=True)
                runs.sort(key=lambda x: x["seconds"])
                med = dict(runs[len(runs) // 2])
                med["seconds_range"] = [runs[0]["seconds"], runs[-1]["seconds"]]
                results[f"{name} {mode}"] = med
        print()
        print(json.dumps(results, indent=1))
        peer = results.get("pgbackrest archive-get")
        if peer:
            print()
            print(f"{'recovery through restore_command':34} {'seconds':>9} {'segments':>9} {'CPU s':>7} "
                  f"{'vs archive-get':>15}")
            for k, v in results.items():
                ratio = peer["seconds"] / v["seconds"] if v["seconds"] else float("nan")
                print(f"{k:34} {v['seconds']:>9} {v['segments']:>9} {v['cpu_s']:>7} {ratio:>14.2f}x")
            print("(ratio > 1: faster than pgBackRest's archive-get)")
    finally:
        A.teardown(base, running, procs)
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
