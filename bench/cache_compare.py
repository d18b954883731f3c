#!/usr/bin/env python3
"""pinstack-cache against memcached, side by side, in one run.

Starts Debian's memcached and pinstack-cache with the same flags (-t 1 by
default: one worker thread each), preloads the same keys into both, then
runs every scenario with pinstack-bench against each server in turn,
alternating which goes first, for several rounds. Reports the median round
per scenario and server:

    ops/s            pinstack-bench's measured throughput
    p50/p99 (us)     its latency percentiles (closed loop)
    cpu/req (us)     server CPU time per request: the sum over the server's
                     threads of /proc/PID/task/*/schedstat field 1 (ns on
                     CPU), divided by the requests of the run; the seed's
                     "compute efficiency"
    rq wait/req (us) time the server's threads spent runnable but waiting
                     for a CPU (schedstat field 2), per request

and the ratio pinstack/memcached (> 1 is better for ops/s, < 1 is better for
latency and CPU). Prints a table and writes JSON (default
bench/results/cache_compare.json).

    python bench/cache_compare.py                 # defaults: -t 1, 3 rounds
    python bench/cache_compare.py --rounds 5 --requests 400000 --threads 1

Only loopback addresses are used. The load generator runs in this process
(its C loop releases the GIL), so the machine's cores are shared between
the client and the server, the same way for both servers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pinstack.bench import run as bench_run

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"

# name -> pinstack-bench options (besides server/requests)
SCENARIOS = {
    "get-heavy 1:10, 100 B": dict(ratio="1:10", data_size=100, pipeline=1),
    "get-heavy 1:10, 100 B, pipeline 16": dict(ratio="1:10", data_size=100, pipeline=16),
    "mixed 1:1, 100 B": dict(ratio="1:1", data_size=100, pipeline=1),
    "mixed 1:1, 100 B, pipeline 16": dict(ratio="1:1", data_size=100, pipeline=16),
    "get 10 KB values": dict(ratio="0:1", data_size=10_000, pipeline=1, key_space=2_000),
    "multi-get of 50 keys": dict(ratio="0:1", data_size=100, pipeline=1, multiget=50,
                                 request_scale=0.1),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"port {port} did not open")


class Server:
    def __init__(self, name: str, argv: list[str]):
        self.name = name
        self.port = free_port()
        self.proc = subprocess.Popen(argv + ["-p", str(self.port), "-l", HOST],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        wait_port(self.port, self.proc)

    def cpu_ns(self) -> tuple[int, int]:
        """(on-CPU ns, run-queue wait ns) summed over the server's threads."""
        run = wait = 0
        for path in glob.glob(f"/proc/{self.proc.pid}/task/*/schedstat"):
            try:
                fields = open(path).read().split()
            except OSError:
                continue    # a thread that just exited
            run += int(fields[0])
            wait += int(fields[1])
        return run, wait

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(server: Server, options: dict) -> dict:
    cpu0, wait0 = server.cpu_ns()
    result = bench_run(server=f"{HOST}:{server.port}", **options)
    cpu1, wait1 = server.cpu_ns()
    requests = result["total"]["ops"]
    if result["errors"]["protocol"] or result["errors"]["error_replies"] or result["errors"]["lost"]:
        raise RuntimeError(f"{server.name}: errors during the run: {result['errors']}")
    return {
        "ops_per_sec": result["total"]["ops_per_sec"],
        "p50_us": result["total"]["latency"]["p50_us"],
        "p99_us": result["total"]["latency"]["p99_us"],
        "p999_us": result["total"]["latency"]["p99.9_us"],
        "cpu_us_per_req": (cpu1 - cpu0) / 1000 / requests,
        "rq_wait_us_per_req": (wait1 - wait0) / 1000 / requests,
        "requests": requests,
        "get_hits": result["get"]["hits"],
        "get_misses": result["get"]["misses"],
    }


def preload(server: Server, keys: int, size: int, prefix: str) -> None:
    bench_run(server=f"{HOST}:{server.port}", threads=1, clients=4, pipeline=32,
              ratio="1:0", key_pattern="S", key_minimum=1, key_maximum=keys,
              requests=keys, data_size=size, key_prefix=prefix)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="server worker threads (-t), default 1")
    ap.add_argument("--memory", type=int, default=1024, help="server -m in MiB, default 1024")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200_000, help="requests per run")
    ap.add_argument("--clients", type=int, default=8, help="connections (one client thread)")
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--memcached", default=shutil.which("memcached") or "/usr/bin/memcached")
    ap.add_argument("--pinstack", default=shutil.which("pinstack-cache") or "pinstack-cache")
    ap.add_argument("--only", help="run only scenarios whose name contains this")
    ap.add_argument("--json", default=str(HERE / "results" / "cache_compare.json"))
    args = ap.parse_args()

    flags = ["-U", "0", "-t", str(args.threads), "-m", str(args.memory)]
    mc_argv = [args.memcached] + (["-u", "root"] if os.geteuid() == 0 else []) + flags
    servers = [Server("memcached", mc_argv), Server("pinstack-cache", [args.pinstack] + flags)]
    scenarios = {k: v for k, v in SCENARIOS.items() if not args.only or args.only in k}
    results: dict[str, dict[str, list[dict]]] = {name: {s.name: [] for s in servers}
                                                 for name in scenarios}
    try:
        for s in servers:
            preload(s, args.keys, 100, "k100-")
            preload(s, 2_000, 10_000, "k10k-")
        for rnd in range(args.rounds):
            for name, sc in scenarios.items():
                sc = dict(sc)
                key_space = sc.pop("key_space", args.keys)
                scale = sc.pop("request_scale", 1.0)
                options = dict(threads=1, clients=args.clients, key_minimum=1,
                               key_maximum=key_space, key_pattern="R",
                               key_prefix="k10k-" if sc["data_size"] == 10_000 else "k100-",
                               requests=max(1000, int(args.requests * scale)), seed=rnd + 1, **sc)
                order = servers if rnd % 2 == 0 else servers[::-1]
                for s in order:
                    m = measure(s, options)
                    results[name][s.name].append(m)
                    print(f"round {rnd + 1} {name:40s} {s.name:15s} "
                          f"{m['ops_per_sec']:>10,.0f} ops/s  p99 {m['p99_us']:>6} us  "
                          f"cpu/req {m['cpu_us_per_req']:.2f} us", file=sys.stderr)
    finally:
        for s in servers:
            s.stop()

    summary = {}
    for name in scenarios:
        row = {}
        for sname in ("memcached", "pinstack-cache"):
            runs = results[name][sname]
            row[sname] = {k: statistics.median(r[k] for r in runs)
                          for k in ("ops_per_sec", "p50_us", "p99_us", "p999_us",
                                    "cpu_us_per_req", "rq_wait_us_per_req")}
        ours, theirs = row["pinstack-cache"], row["memcached"]
        row["ratio"] = {k: (ours[k] / theirs[k] if theirs[k] else None) for k in ours}
        summary[name] = row

    header = (f"{'scenario':40s} {'metric':12s} {'memcached':>12s} {'pinstack':>12s} {'ratio':>7s}")
    print(header)
    print("-" * len(header))
    for name, row in summary.items():
        for metric, label in (("ops_per_sec", "ops/s"), ("p50_us", "p50 us"),
                              ("p99_us", "p99 us"), ("cpu_us_per_req", "cpu/req us")):
            theirs, ours, ratio = row["memcached"][metric], row["pinstack-cache"][metric], \
                row["ratio"][metric]
            fmt = "{:>12,.0f}" if metric == "ops_per_sec" else "{:>12.2f}"
            print(f"{name if metric == 'ops_per_sec' else '':40s} {label:12s} "
                  f"{fmt.format(theirs)} {fmt.format(ours)} "
                  f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>7s}")

    machine = {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                           if ln.startswith("model name")), "?"),
        "memcached": subprocess.run([args.memcached, "-V"], capture_output=True,
                                    text=True).stdout.strip(),
    }
    out = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "server_flags": flags,
        "machine": machine,
        "summary": summary,
        "runs": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
