#!/usr/bin/env python3
"""1 node against 3 nodes on one RabbitMQ and one MongoDB-compatible server, for
BENCHMARKS.md ("Cluster"). Needs RABBITMQ_URL and MONGODB_URI; uses the release build
(or the binary named by SWIFT_BIN).

    scripts/bench-cluster.py [--orders 1500] [--concurrency 32]

Starts the simulators apart (`swiftlogistics simulate`), then for 1 and for 3 nodes
(fresh database and bus namespace each): waits until the shards are spread, runs
`swiftlogistics bench` against the first node, and reports per node the share of
order transitions it committed and its CPU per order. With 3 nodes it then times the
hand-overs: kill -9 of a node, its restart (a join) and SIGTERM of another, each until
the survivors' views show the shards spread evenly again.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

BIN = os.environ.get("SWIFT_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "target"), "release", "swiftlogistics"
)
ADMIN_PASSWORD = "bench-admin-password"
# The bench registers and logs in its clients from one address and places every order
# through one node: the default per-client budgets would refuse it.
BENCH_BUDGETS = {
    "SWIFT__AUTH__LOGIN_PER_MINUTE": "1000000",
    "SWIFT__AUTH__REGISTER_PER_HOUR": "1000000",
    "SWIFT__RATE_LIMIT__ANONYMOUS_PER_WINDOW": "1000000000",
    "SWIFT__RATE_LIMIT__USER_PER_WINDOW": "1000000000",
    "SWIFT__HTTP__MAX_CONNECTIONS_PER_CLIENT": "100000",
}
TICKS = os.sysconf("SC_CLK_TCK")


def start(args, env, marker):
    process = subprocess.Popen(
        [BIN, *args],
        env={**os.environ, "SWIFT__LOG__LEVEL": "warn", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 90
    for line in process.stdout:
        if marker in line:
            return process, line
        if time.time() > deadline:
            break
    sys.exit(f"{args} did not print {marker!r}")


def field(line, label):
    return line.split(label, 1)[1].split()[0]


def call(method, url, body=None, token=None, timeout=10):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def transitions(url):
    text = call("GET", f"{url}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("swift_order_transitions_total")
    )


class Cluster:
    def __init__(self, names, sims_line, shards):
        self.isolation = f"bench{uuid.uuid4().hex[:12]}"
        self.sims_line = sims_line
        self.shards = shards
        self.names = names
        self.dirs = {n: tempfile.mkdtemp() for n in names}
        self.nodes = {}
        for name in names:
            self.start(name)
        first = self.url(names[0])
        login = call(
            "POST",
            f"{first}/api/auth/login",
            {"email": "admin@swiftlogistics.local", "password": ADMIN_PASSWORD},
        )
        self.admin = login["token"]

    def start(self, name):
        env = {
            "SWIFT__HTTP__BIND": "127.0.0.1:0",
            "SWIFT__STORE__PATH": self.dirs[name],
            "SWIFT__STORE__KIND": "mongo",
            "SWIFT__STORE__DATABASE": self.isolation,
            "SWIFT__BUS__KIND": "amqp",
            "SWIFT__BUS__NAMESPACE": self.isolation,
            "SWIFT__BUS__SHARDS": str(self.shards),
            "SWIFT__CLUSTER__NODE_ID": name,
            "SWIFT__CMS__URL": field(self.sims_line, "CMS SOAP "),
            "SWIFT__ROS__URL": field(self.sims_line, "ROS REST "),
            "SWIFT__WMS__ADDR": field(self.sims_line, "WMS TCP "),
            "SWIFT__AUTH__ADMIN_PASSWORD": ADMIN_PASSWORD,
            "SWIFT__AUTH__DRIVER_PASSWORD": ADMIN_PASSWORD,
            "JWT_SECRET": "bench-secret-shared-by-every-node",
            **BENCH_BUDGETS,
        }
        process, banner = start(["serve", "--no-simulators"], env, "API and pages at")
        self.nodes[name] = (process, field(banner, "API and pages at "))

    def url(self, name):
        return self.nodes[name][1]

    def spread(self, seen_from, expected):
        low, high = self.shards // len(expected), -(-self.shards // len(expected))
        for name in seen_from:
            try:
                view = call("GET", f"{self.url(name)}/api/cluster", token=self.admin)
            except Exception:
                return False
            nodes = view["nodes"]
            if sorted(n["nodeId"] for n in nodes) != sorted(expected):
                return False
            owned = [s for n in nodes for s in n["shards"]]
            if sorted(owned) != list(range(self.shards)):
                return False
            if any(not low <= len(n["shards"]) <= high or n["leaving"] for n in nodes):
                return False
        return True

    def wait_spread(self, seen_from, expected, since):
        while not self.spread(seen_from, expected):
            if time.time() - since > 60:
                sys.exit(f"not spread over {expected}")
            time.sleep(0.02)
        return time.time() - since

    def stop(self):
        for process, _ in self.nodes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def measure(names, sims_line, args):
    cluster = Cluster(names, sims_line, args.shards)
    cluster.wait_spread(names, names, time.time())
    pids = {n: cluster.nodes[n][0].pid for n in names}
    cpu_before = {n: cpu_seconds(p) for n, p in pids.items()}
    moved_before = {n: transitions(cluster.url(n)) for n in names}
    started = time.time()
    bench = subprocess.run(
        [
            BIN,
            "bench",
            "--url",
            cluster.url(names[0]),
            "--orders",
            str(args.orders),
            "--concurrency",
            str(args.concurrency),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    if bench.returncode != 0:
        sys.exit(f"bench failed: {bench.stderr.strip()[:1500]}")
    wall = time.time() - started
    summary = json.loads(bench.stdout.strip().splitlines()[-1])
    cpu = {n: cpu_seconds(p) - cpu_before[n] for n, p in pids.items()}
    moved = {n: transitions(cluster.url(n)) - moved_before[n] for n in names}
    total_moved = sum(moved.values()) or 1
    result = {
        "nodes": len(names),
        "wall_s": round(wall, 1),
        "bench": summary,
        "per_node": {
            n: {
                "share_of_transitions": round(moved[n] / total_moved, 3),
                "cpu_s": round(cpu[n], 2),
                "cpu_ms_per_order": round(1000 * cpu[n] / args.orders, 2),
            }
            for n in names
        },
        "cluster_cpu_ms_per_order": round(1000 * sum(cpu.values()) / args.orders, 2),
    }
    if len(names) == 3:
        a, b, c = names
        killed = time.time()
        cluster.nodes[c][0].kill()
        cluster.nodes[c][0].wait()
        result["handoff_after_kill9_s"] = round(
            cluster.wait_spread([a, b], [a, b], killed), 2
        )
        joined = time.time()
        cluster.start(c)
        result["join_start_to_spread_s"] = round(time.time() - joined, 2)
        result["handoff_after_join_s"] = round(
            cluster.wait_spread([a, b, c], names, joined), 2
        )
        termed = time.time()
        cluster.nodes[b][0].send_signal(signal.SIGTERM)
        code = cluster.nodes[b][0].wait(timeout=30)
        result["sigterm_exit_s"] = round(time.time() - termed, 2)
        result["sigterm_exit_status"] = code
        result["handoff_after_sigterm_s"] = round(
            cluster.wait_spread([a, c], [a, c], termed), 2
        )
    cluster.stop()
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--shards", type=int, default=32)
    args = parser.parse_args()
    sims, sims_line = start(
        ["simulate"],
        {
            f"SWIFT__SIMULATORS__{s}_BIND": "127.0.0.1:0"
            for s in ("CMS", "ROS", "WMS", "CONTROL")
        },
        "Simulators running",
    )
    try:
        for names in (["n1"], ["n1", "n2", "n3"]):
            print(json.dumps(measure(names, sims_line, args)), flush=True)
    finally:
        sims.kill()


if __name__ == "__main__":
    main()
