#!/usr/bin/env python3
"""REST API benchmark: tusk and Patroni 3.0.2 side by side, same machine,
same etcd (mTLS), same PostgreSQL 15 (the clusters and the fault machinery
come from ha.py).

1. Health check latency under an open-loop load of --rate requests/s
   (examples/apiload, release build: latency from each request's scheduled
   send time, one connection per request as HAProxy checks do) for a few
   checks HAProxy setups use: OPTIONS /primary on the leader, GET /replica
   on a replica, OPTIONS / over all three nodes, GET /patroni on the leader.
2. The HA loop under that load: crash of the leader node (SIGKILL of the
   agent and its postmaster) -> first acknowledged write on another node,
   without API load and with --rate OPTIONS /primary + /replica spread over
   the three APIs; plus how the survivors' APIs answered during the failover.

Usage (as root): scripts/bench/api.py [--rate 1000] [--seconds 10] [--runs 2]
                                      [--setting 10/2/5] [--systems tusk,patroni]
Takes about 6 minutes with the defaults; stops by itself and leaves nothing
running (agents stopped, etcd killed by its watchdog at the latest).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ha  # noqa: E402  (the clusters, the writer and the faults)

APILOAD = os.path.join(ha.ROOT, "target/release/examples/apiload")


class Load:
    """apiload in the background; `finish()` stops it and returns its JSON report."""
    def __init__(self, urls, method, rate, seconds):
        self.proc = subprocess.Popen([APILOAD, "--json", "--rate", str(rate), "--duration", str(seconds),
                                      "--method", method, "--concurrency", "256", "--timeout", "2", *urls],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def finish(self, stop=False):
        if stop and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise RuntimeError("apiload did not stop")
        return json.loads(out)


class LeaderWatch:
    """`etcdctl watch` on the leader key; records when it was deleted (the
    lease expired) so that a crash's failover splits into lease expiry and
    the HA loop's reaction (expiry -> first write on the new leader)."""
    def __init__(self, etcd, scope):
        self.events = []
        self.proc = subprocess.Popen(
            ["etcdctl", f"--endpoints=https://{etcd['endpoint']}", f"--cacert={etcd['ca']}", f"--cert={etcd['cert']}",
             f"--key={etcd['key']}", "watch", f"/service/{scope}/leader"],
            env={**os.environ, "ETCDCTL_API": "3"}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.strip() in ("PUT", "DELETE"):
                self.events.append((time.time(), line.strip()))

    def deleted_after(self, t0):
        return next((t for t, e in list(self.events) if e == "DELETE" and t > t0), None)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def url(n, path):
    return f"http://127.0.0.1:{n.api}{path}"


def latency(nodes, rate, seconds):
    l = ha.leader(nodes)
    r = next(n for n in nodes if n is not l)
    rows = []
    for name, method, urls in (
        ("OPTIONS /primary on the leader", "OPTIONS", [url(l, "/primary")]),
        ("GET /replica on a replica", "GET", [url(r, "/replica")]),
        ("OPTIONS / over 3 nodes", "OPTIONS", [url(n, "/") for n in nodes]),
        ("GET /patroni on the leader", "GET", [url(l, "/patroni")]),
    ):
        rep = Load(urls, method, rate, seconds).finish()
        rows.append((name, rep))
        time.sleep(1)
    return rows


def crashes(system, nodes, setting, scope, etcd, base, runs, rate):
    """Crash failover times without and with API load; the survivors' API answers under load."""
    res = {"idle": [], "load": [], "survivors": [], "idle_reaction": [], "load_reaction": []}
    w = ha.Writer(nodes)
    w.start()
    watch = LeaderWatch(etcd, scope)
    try:
        time.sleep(1)
        for mode in ("idle", "load"):
            for _ in range(runs):
                load = []
                urls = [url(n, p) for n in nodes for p in ("/primary", "/replica")]

                def start_load():
                    if mode == "load":
                        load.append(Load(urls, "OPTIONS", rate, 120))
                        time.sleep(2)  # under load before the fault
                l, t0, took = ha.fault("crash", system, nodes, w, setting, scope, etcd, base, before=start_load)
                res[mode].append(took)
                expired = watch.deleted_after(t0)
                res[mode + "_reaction"].append(t0 + took - expired if expired else None)
                if load:
                    time.sleep(1)
                    rep = load[0].finish(stop=True)
                    dead = f":{l.api}/"
                    surv = [u for u in rep["urls"] if dead not in u["url"]]
                    res["survivors"].append({
                        "errors": sum(u["errors"] for u in surv), "timeouts": sum(u["timeouts"] for u in surv),
                        "unsent": sum(u["unsent"] for u in surv), "responses": sum(u["responses"] for u in surv),
                        "p99": max(u["p99_ms"] for u in surv), "max": max(u["max_ms"] for u in surv),
                        "rate": rep["achieved_rate"]})
                l.start()
    finally:
        watch.stop()
        w.stop_flag = True
        w.join()
    return res


def bench(system, setting, etcd, base, a):
    scope = f"apibench-{system}-{os.getpid()}"
    nodes = [ha.Node(system, i, os.path.join(base, scope), etcd, setting, scope) for i in (1, 2, 3)]
    try:
        for n in nodes:
            n.start()
        ha.wait(lambda: ha.settled(nodes), 120, f"{system} bootstrap")
        l = ha.leader(nodes)
        ha.sql(l.sock, l.port, "CREATE TABLE IF NOT EXISTS bench (at timestamptz)")
        ha.wait(lambda: ha.settled(nodes), 60, f"{system} settled")
        time.sleep(setting[1] + 1)
        print(f"# {system}: latency ...", file=sys.stderr, flush=True)
        lat = latency(nodes, a.rate, a.seconds)
        print(f"# {system}: crashes ...", file=sys.stderr, flush=True)
        cr = crashes(system, nodes, setting, scope, etcd, base, a.runs, a.rate)
        return lat, cr
    finally:
        for n in nodes:
            n.stop(signal.SIGTERM, wait=20)


def fmt(xs):
    return ha.fmt(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--setting", default="10/2/5")
    ap.add_argument("--systems", default="tusk,patroni")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    for args in (["cargo", "build", "--release", "--quiet"],
                 ["cargo", "build", "--release", "--quiet", "--example", "apiload"]):
        subprocess.run(args, cwd=ha.ROOT, check=True)
    setting = tuple(int(x) for x in a.setting.split("/"))
    base = tempfile.mkdtemp(prefix="tusk-bench-api-", dir="/tmp")
    os.chmod(base, 0o755)
    etcd, stop_etcd = ha.start_etcd(base)
    results = {}
    t_start = time.time()
    try:
        for system in a.systems.split(","):
            results[system] = bench(system, setting, etcd, base, a)
    finally:
        stop_etcd()
    systems = list(results)

    print(f"\nHealth check latency under {a.rate} requests/s for {a.seconds} s (open loop, latency from the "
          f"scheduled send, one connection per request), ms")
    print("| check | " + " | ".join(f"{s} p50 / p99 / max | {s} achieved/s, errors, timeouts" for s in systems) + " |")
    print("|---|" + "---|---|" * len(systems))
    for i, (name, _) in enumerate(results[systems[0]][0]):
        cells = []
        for s in systems:
            t = results[s][0][i][1]["total"]
            rate = results[s][0][i][1]["achieved_rate"]
            cells.append(f"{t['p50_ms']:.2f} / {t['p99_ms']:.2f} / {t['max_ms']:.1f}")
            cells.append(f"{rate:.0f}, {t['errors']}, {t['timeouts'] + t['unsent']}")
        print(f"| {name} | " + " | ".join(cells) + " |")

    print(f"\nCrash of the leader node -> first acknowledged write elsewhere, min / median / max (s), "
          f"ttl/loop_wait/retry {a.setting}, {a.runs} runs each")
    print("(reaction = leader key expired in etcd -> first write on the new leader: the HA loop's part; the rest "
          "is the lease running out, which depends on when in the renewal cycle the crash fell)")
    print(f"| system | no API load | no API load: reaction | under {a.rate}/s OPTIONS /primary+/replica on all nodes "
          "| under load: reaction | survivors' API during the failover: responses, errors, timeouts, worst p99 / max (ms) |")
    print("|---|---|---|---|---|---|")
    for s in systems:
        cr = results[s][1]
        sv = cr["survivors"]
        surv = "; ".join(f"{x['responses']}, {x['errors']}, {x['timeouts'] + x['unsent']}, "
                         f"{x['p99']:.1f} / {x['max']:.1f}" for x in sv)
        print(f"| {s} | {fmt(cr['idle'])} | {fmt(cr['idle_reaction'])} | {fmt(cr['load'])} | "
              f"{fmt(cr['load_reaction'])} | {surv} |")
    print(f"\n(total {time.time() - t_start:.0f} s) agent logs: {ha.keep_logs(base)}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
