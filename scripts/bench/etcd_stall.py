#!/usr/bin/env python3
"""A stalled etcd member: tusk and Patroni 3.0.2 side by side, same machine,
same 3-member etcd (mTLS), same PostgreSQL 15.

Per system: 3 nodes with ETCD3_HOSTS listing all three etcd members, a
writer inserting every 100 ms into whichever node is primary (ha.py's
Writer). Each etcd member in turn is frozen (SIGSTOP: connections stay open,
nothing answers) for 2 x ttl, then thawed. Per frozen member it reports:
  gap       the longest pause between acknowledged writes while frozen (+1 s);
            a first window of the same length with no fault gives the
            writer's own noise
  failover  whether the leader changed (or the primary stopped taking writes)
  moved     freeze -> the first write by the leader seen on a healthy member
            (the leader's member key: both systems rewrite it each loop while
            WAL moves, so this includes up to one loop_wait of waiting)
  switch    (tusk only) freeze -> /metrics shows the leader's requests on
            another member

Usage (as root): scripts/bench/etcd_stall.py [--settings 10/2/4] [--systems tusk,patroni]
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ha  # noqa: E402  (Node, Writer, wait, leader, settled, free_port, sh)

ROOT = ha.ROOT


def start_etcd_cluster(base):
    """Three etcd members with mutual TLS in BASE/etcd3. Returns (dict for
    ha.Node, member pids, member client endpoints, stop function)."""
    edir = os.path.join(base, "etcd3")
    script = os.path.join(ROOT, "scripts/testbed/etcd.sh")
    for _ in range(5):
        b = ha.free_port()
        import socket
        ok = True
        for p in range(b, b + 6):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if not ok:
            continue
        r = ha.sh(script, "start-cluster", edir, str(b), env={**os.environ, "TESTBED_WATCH_PID": str(os.getpid())})
        if r.returncode == 0:
            break
        for i in range(3):
            shutil.rmtree(os.path.join(edir, f"n{i}"), ignore_errors=True)
    else:
        sys.exit(f"etcd cluster: {r.stdout}{r.stderr}")
    eps = [f"127.0.0.1:{b + 2 * i}" for i in range(3)]
    pids = [int(open(os.path.join(edir, f"n{i}.pid")).read()) for i in range(3)]
    certs = os.path.join(edir, "certs")
    etcd = {"endpoint": ",".join(eps), "ca": f"{certs}/ca.crt", "cert": f"{certs}/client.crt",
            "key": f"{certs}/client.key"}
    return etcd, pids, eps, lambda: ha.sh(script, "stop", edir)


def etcdctl(etcd, eps, *args):
    return ha.sh("etcdctl", f"--endpoints={','.join('https://' + e for e in eps)}", f"--cacert={etcd['ca']}",
                 f"--cert={etcd['cert']}", f"--key={etcd['key']}", "--dial-timeout=1s", "--command-timeout=1s",
                 *args, env={**os.environ, "ETCDCTL_API": "3"})


def mod_revision(etcd, eps, key):
    r = etcdctl(etcd, eps, "get", key, "-w", "json")
    try:
        kvs = json.loads(r.stdout).get("kvs") or []
        return int(kvs[0]["mod_revision"]) if kvs else None
    except (ValueError, KeyError):
        return None


def current_member(node):
    """The member tusk's requests go to, from /metrics."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{node.api}/metrics", timeout=1).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("tusk_dcs_member_up{") and 'current="true"' in line:
            return line.split('member="')[1].split('"')[0]
    return None


def run_system(system, setting, etcd, pids, eps, base):
    scope = f"stall-{system}-{'-'.join(map(str, setting))}-{os.getpid()}"
    nodes = [ha.Node(system, i, os.path.join(base, scope), etcd, setting, scope) for i in (1, 2, 3)]
    rows = []
    try:
        for n in nodes:
            n.start()
        ha.wait(lambda: ha.settled(nodes), 180, "bootstrap")
        l = ha.leader(nodes)
        ha.sql(l.sock, l.port, "CREATE TABLE IF NOT EXISTS bench (at timestamptz)")
        w = ha.Writer(nodes)
        w.start()
        time.sleep(setting[1] + 2)
        # The writer's own noise: the longest gap over as long a window
        # with no fault at all.
        t0 = time.time()
        time.sleep(2 * setting[0])
        rows.append({"member": None, "gap": w.gap_around(t0 + 1, time.time() - 1), "failover": False,
                     "moved": None, "switch": None})
        print(f"#   {system} no fault: gap {rows[-1]['gap']}", file=sys.stderr, flush=True)
        for m in range(3):
            l = ha.leader(nodes)
            healthy = [e for i, e in enumerate(eps) if i != m]
            key = f"/service/{scope}/members/{l.name}"
            rev0 = mod_revision(etcd, healthy, key)
            t0 = time.time()
            os.kill(pids[m], signal.SIGSTOP)
            moved = switch = None
            end = t0 + 2 * setting[0]
            try:
                while time.time() < end:
                    if moved is None:
                        rev = mod_revision(etcd, healthy, key)
                        if rev is not None and rev0 is not None and rev > rev0:
                            moved = time.time() - t0
                    if system == "tusk" and switch is None:
                        cur = current_member(l)
                        if cur is not None and cur != eps[m]:
                            switch = time.time() - t0
                    time.sleep(0.05)
            finally:
                os.kill(pids[m], signal.SIGCONT)
            time.sleep(1)
            gap = w.gap_around(t0, time.time())
            after = ha.leader(nodes)
            rows.append({"member": m, "gap": gap, "failover": after is None or after.name != l.name,
                         "moved": moved, "switch": switch})
            print(f"#   {system} member {m} frozen: gap {gap}, leader {l.name} -> {after.name if after else None}, "
                  f"moved {moved}, switch {switch}", file=sys.stderr, flush=True)
            time.sleep(setting[1] + 2)
        w.stop_flag = True
        w.join()
    finally:
        for n in nodes:
            n.stop(signal.SIGTERM, wait=20)
    return rows


def f(x):
    return "-" if x is None else f"{x:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", default="10/2/4")
    ap.add_argument("--systems", default="tusk,patroni")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    base = tempfile.mkdtemp(prefix="tusk-bench-stall-", dir="/tmp")
    os.chmod(base, 0o755)
    etcd, pids, eps, stop = start_etcd_cluster(base)
    out = []
    try:
        for s in a.settings.split(","):
            setting = tuple(int(x) for x in s.split("/"))
            for system in a.systems.split(","):
                print(f"# {system} at {s} ...", file=sys.stderr, flush=True)
                for r in run_system(system, setting, etcd, pids, eps, base):
                    out.append((s, system, r))
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
        stop()
    print("\none etcd member of three frozen for 2 x ttl, in turn; writer every 100 ms on the primary")
    print("| ttl/loop/retry | system | frozen member | longest write gap (s) | failover | leader's next write on a healthy member (s) | requests moved (tusk /metrics, s) |")
    print("|---|---|---|---|---|---|---|")
    for s, system, r in out:
        member = "none (baseline)" if r["member"] is None else r["member"]
        print(f"| {s} | {system} | {member} | {f(r['gap'])} | {'yes' if r['failover'] else 'no'} | "
              f"{f(r['moved'])} | {f(r['switch'])} |")
    print(f"agent logs: {ha.keep_logs(base)}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
