#!/usr/bin/env python3
"""pinstack-cache against memcached, side by side, in one run.

Starts Debian's memcached and pinstack-cache with the same flags (-t 1 by
default: one worker thread each; the same -m and -I), preloads the same
keys into both, then runs every scenario with pinstack-bench against each
server in turn, alternating which goes first, for several rounds. Reports
the median round per scenario and server:

    ops/s            pinstack-bench's measured throughput
    p50/p99 (us)     its latency percentiles: closed loop, from the send;
                     open loop (the "open loop" scenario, also p90 and
                     p99.9), from the request's scheduled send time
    cpu/req (us)     server CPU time per request: the sum over the server's
                     threads of /proc/PID/task/*/schedstat field 1 (ns on
                     CPU), divided by the requests of the run; the seed's
                     "compute efficiency"
    rq wait/req (us) time the server's threads spent runnable but waiting
                     for a CPU (schedstat field 2), per request (JSON only)
    conn/s, connect p50/p99 (us)
                     connection churn: new connections per second and the
                     client's connect() time to the first byte writable
    cpu/conn (us)    churn only: server CPU per connection beyond what the
                     same requests cost without churn, i.e. (cpu/req of the
                     churn run - cpu/req of "get-heavy 1:10, 100 B") x
                     requests per connection (medians; needs both scenarios)

and the ratio pinstack/memcached (> 1 is better for ops/s and conn/s, < 1 is
better for latency and CPU). Prints a table and writes JSON (default
bench/results/cache_compare.json): every round of every run, the medians,
and per scenario and server the latency histogram of all rounds merged
(what bench/plot_cache.py draws the CDFs from).

    python bench/cache_compare.py                  # defaults: -t 1, 3 rounds
    python bench/cache_compare.py --rounds 5 --requests 400000 --threads 1
    python bench/cache_compare.py --scenarios churn,"open loop" --rounds 1
    python bench/cache_compare.py --plot           # then bench/plot_cache.py

A run limited with --scenarios writes bench/results/cache_compare-partial.json
unless --json says otherwise, so a quick look at one scenario does not
replace the full results.

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
import re
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

# The preloaded key sets, by value size: (key prefix, number of keys; None
# means --keys). A scenario reads and writes the set of its data_size.
KEY_SETS = {
    100: ("k100-", None),
    10_000: ("k10k-", 2_000),
    500_000: ("k500k-", 200),
}

# The scenario without churn that "connection churn" is compared with for
# cpu/conn: the same workload, connections kept.
CHURN_BASELINE = "get-heavy 1:10, 100 B"

# name -> pinstack-bench options (besides server/requests), plus:
#   request_scale  fraction of --requests this scenario runs
#   report         extra metrics for the table (besides ops/s, p50, p99, cpu/req)
SCENARIOS = {
    "get-heavy 1:10, 100 B": dict(ratio="1:10", data_size=100, pipeline=1),
    "get-heavy 1:10, 100 B, pipeline 16": dict(ratio="1:10", data_size=100, pipeline=16),
    "mixed 1:1, 100 B": dict(ratio="1:1", data_size=100, pipeline=1),
    "mixed 1:1, 100 B, pipeline 16": dict(ratio="1:1", data_size=100, pipeline=16),
    "get 10 KB values": dict(ratio="0:1", data_size=10_000, pipeline=1),
    "500 KB values, 1:10": dict(ratio="1:10", data_size=500_000, pipeline=1,
                                request_scale=0.05),
    "multi-get of 50 keys": dict(ratio="0:1", data_size=100, pipeline=1, multiget=50,
                                 request_scale=0.1),
    # Open loop: 20,000 requests/s in total, sent on schedule whatever the
    # server does; a rate both servers sustain on this machine (about a
    # third of their closed-loop throughput), so the percentiles compare
    # service time plus queueing at the same offered load.
    "open loop 20k/s, 1:10, 100 B": dict(ratio="1:10", data_size=100, pipeline=1,
                                         rate=20_000, request_scale=0.5,
                                         report=("p90_us", "p999_us")),
    # Every connection reconnects after 10 requests: connection setup (TCP
    # handshake, accept, hand-off to a worker, close) on the request path.
    "connection churn, reconnect every 10": dict(
        ratio="1:10", data_size=100, pipeline=1, reconnect_interval=10,
        request_scale=0.25,
        report=("conns_per_sec", "connect_p50_us", "connect_p99_us", "cpu_us_per_conn")),
}

# Table labels and formats of every metric.
METRICS = {
    "ops_per_sec": ("ops/s", "{:>12,.0f}"),
    "p50_us": ("p50 us", "{:>12.2f}"),
    "p90_us": ("p90 us", "{:>12.2f}"),
    "p99_us": ("p99 us", "{:>12.2f}"),
    "p999_us": ("p99.9 us", "{:>12.2f}"),
    "cpu_us_per_req": ("cpu/req us", "{:>12.2f}"),
    "conns_per_sec": ("conn/s", "{:>12,.0f}"),
    "connect_p50_us": ("connect p50", "{:>12.2f}"),
    "connect_p99_us": ("connect p99", "{:>12.2f}"),
    "cpu_us_per_conn": ("cpu/conn us", "{:>12.2f}"),
}
BASE_REPORT = ("ops_per_sec", "p50_us", "p99_us", "cpu_us_per_req")
# medians taken over rounds (cpu_us_per_conn is derived from medians)
MEDIAN_KEYS = ("ops_per_sec", "p50_us", "p90_us", "p99_us", "p999_us", "cpu_us_per_req",
               "rq_wait_us_per_req", "conns_per_sec", "connect_p50_us", "connect_p99_us")


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


def measure(server: Server, options: dict) -> tuple[dict, list[list[int]]]:
    """One run: (its metrics, its latency histogram as [[value_us, count], ...])."""
    cpu0, wait0 = server.cpu_ns()
    result = bench_run(server=f"{HOST}:{server.port}", **options)
    cpu1, wait1 = server.cpu_ns()
    requests = result["total"]["ops"]
    errors = result["errors"]
    if errors["protocol"] or errors["error_replies"] or errors["lost"]:
        raise RuntimeError(f"{server.name}: errors during the run: {errors}")
    latency = result["total"]["latency"]
    metrics = {
        "ops_per_sec": result["total"]["ops_per_sec"],
        "p50_us": latency["p50_us"],
        "p90_us": latency["p90_us"],
        "p99_us": latency["p99_us"],
        "p999_us": latency["p99.9_us"],
        "cpu_us_per_req": (cpu1 - cpu0) / 1000 / requests,
        "rq_wait_us_per_req": (wait1 - wait0) / 1000 / requests,
        "requests": requests,
        "get_hits": result["get"]["hits"],
        "get_misses": result["get"]["misses"],
        "reconnects": result["reconnects"],
        "conns_per_sec": result["reconnects"] / result["elapsed_s"] if result["elapsed_s"] else 0,
        "connect_p50_us": result["connect"]["p50_us"],
        "connect_p99_us": result["connect"]["p99_us"],
        # the machine's 1-minute load average after the run: other work on
        # it shows here (client and server alone make about 2)
        "loadavg_1m": float(open("/proc/loadavg").read().split()[0]),
    }
    return metrics, latency["histogram"]


def merge_histograms(histograms: list[list[list[int]]]) -> list[list[int]]:
    """Sum [[value_us, count], ...] histograms (same bucket values) into one."""
    merged: dict[int, int] = {}
    for hist in histograms:
        for value, count in hist:
            merged[value] = merged.get(value, 0) + count
    return [[value, merged[value]] for value in sorted(merged)]


def preload(server: Server, keys: int, size: int, prefix: str) -> None:
    bench_run(server=f"{HOST}:{server.port}", threads=1, clients=4, pipeline=32,
              ratio="1:0", key_pattern="S", key_minimum=1, key_maximum=keys,
              requests=keys, data_size=size, key_prefix=prefix)


def dumps(out: dict) -> str:
    """JSON, indented, except that each latency histogram ([[value_us, count],
    ...], up to thousands of pairs) stays on one line."""
    histograms: list[str] = []

    def park(node):
        if isinstance(node, dict):
            return {k: (park_histogram(v) if k == "latency_histogram" else park(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [park(v) for v in node]
        return node

    def park_histogram(hist):
        histograms.append(json.dumps(hist, separators=(",", ":")))
        return f"@@histogram-{len(histograms) - 1}@@"

    text = json.dumps(park(out), indent=1)
    return re.sub(r'"@@histogram-(\d+)@@"', lambda m: histograms[int(m.group(1))], text)


def default_pinstack() -> str:
    """The pinstack-cache of this Python environment (the one whose
    pinstack.bench we import), else the first on PATH."""
    beside = Path(sys.executable).with_name("pinstack-cache")
    if beside.exists():
        return str(beside)
    return shutil.which("pinstack-cache") or "pinstack-cache"


def select(names: str | None) -> dict[str, dict]:
    """Scenarios whose name contains any of the comma-separated `names`
    (case-insensitive); all of them when names is None."""
    if not names:
        return dict(SCENARIOS)
    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    chosen = {k: v for k, v in SCENARIOS.items() if any(w in k.lower() for w in wanted)}
    if not chosen:
        raise SystemExit(f"--scenarios {names!r} matches none of: " + "; ".join(SCENARIOS))
    return chosen


def summarize(scenarios: dict[str, dict], results: dict, histograms: dict) -> dict:
    summary = {}
    for name, sc in scenarios.items():
        row = {}
        for sname in ("memcached", "pinstack-cache"):
            runs = results[name][sname]
            row[sname] = {k: statistics.median(r[k] for r in runs) for k in MEDIAN_KEYS}
            row[sname]["latency_histogram"] = merge_histograms(histograms[name][sname])
        interval = sc.get("reconnect_interval")
        if interval and CHURN_BASELINE in results:
            for sname in ("memcached", "pinstack-cache"):
                base_runs = results[CHURN_BASELINE][sname]
                base = statistics.median(r["cpu_us_per_req"] for r in base_runs)
                row[sname]["cpu_us_per_conn"] = (row[sname]["cpu_us_per_req"] - base) * interval
        ours, theirs = row["pinstack-cache"], row["memcached"]
        row["ratio"] = {k: (ours[k] / theirs[k] if theirs[k] else None)
                        for k in ours if k != "latency_histogram"}
        summary[name] = row
    return summary


def print_table(scenarios: dict[str, dict], summary: dict) -> None:
    header = f"{'scenario':40s} {'metric':12s} {'memcached':>12s} {'pinstack':>12s} {'ratio':>7s}"
    print(header)
    print("-" * len(header))
    for name, row in summary.items():
        report = BASE_REPORT + tuple(scenarios[name].get("report", ()))
        first = True
        for metric in report:
            if metric not in row["memcached"]:
                continue        # cpu/conn without its baseline scenario
            label, fmt = METRICS[metric]
            theirs, ours = row["memcached"][metric], row["pinstack-cache"][metric]
            ratio = row["ratio"][metric]
            print(f"{name if first else '':40s} {label:12s} "
                  f"{fmt.format(theirs)} {fmt.format(ours)} "
                  f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>7s}")
            first = False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="server worker threads (-t), default 1")
    ap.add_argument("--memory", type=int, default=1024, help="server -m in MiB, default 1024")
    ap.add_argument("--max-item-size", default="1m",
                    help="server -I, default 1m (500 KB values need at least 1m)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200_000,
                    help="requests per run (scaled down for the slow scenarios)")
    ap.add_argument("--clients", type=int, default=8, help="connections (one client thread)")
    ap.add_argument("--keys", type=int, default=100_000, help="keys of 100 B values")
    ap.add_argument("--memcached", default=shutil.which("memcached") or "/usr/bin/memcached")
    ap.add_argument("--pinstack", default=default_pinstack(),
                    help="pinstack-cache to run (default: beside this Python, else on PATH)")
    ap.add_argument("--scenarios", "--only", metavar="NAMES",
                    help="run only scenarios whose name contains one of these "
                    "comma-separated words (case-insensitive)")
    ap.add_argument("--json", help="where to write the results (default bench/results/"
                    "cache_compare.json; cache_compare-partial.json with --scenarios)")
    ap.add_argument("--plot", action="store_true",
                    help="then draw the PNGs from the JSON (bench/plot_cache.py; needs matplotlib)")
    args = ap.parse_args()
    scenarios = select(args.scenarios)
    if args.json is None:
        args.json = str(HERE / "results" / ("cache_compare-partial.json" if args.scenarios
                                            else "cache_compare.json"))

    flags = ["-U", "0", "-t", str(args.threads), "-m", str(args.memory),
             "-I", args.max_item_size]
    mc_argv = [args.memcached] + (["-u", "root"] if os.geteuid() == 0 else []) + flags
    servers = [Server("memcached", mc_argv), Server("pinstack-cache", [args.pinstack] + flags)]
    results: dict[str, dict[str, list[dict]]] = {name: {s.name: [] for s in servers}
                                                 for name in scenarios}
    histograms: dict[str, dict[str, list]] = {name: {s.name: [] for s in servers}
                                              for name in scenarios}
    key_sets = {size: (prefix, count or args.keys) for size, (prefix, count) in KEY_SETS.items()
                if any(sc["data_size"] == size for sc in scenarios.values())}
    try:
        for s in servers:
            for size, (prefix, count) in key_sets.items():
                preload(s, count, size, prefix)
        for rnd in range(args.rounds):
            for name, sc in scenarios.items():
                sc = dict(sc)
                scale = sc.pop("request_scale", 1.0)
                sc.pop("report", None)
                prefix, count = key_sets[sc["data_size"]]
                options = dict(threads=1, clients=args.clients, key_minimum=1,
                               key_maximum=count, key_pattern="R", key_prefix=prefix,
                               requests=max(1000, int(args.requests * scale)), seed=rnd + 1, **sc)
                order = servers if rnd % 2 == 0 else servers[::-1]
                for s in order:
                    m, hist = measure(s, options)
                    results[name][s.name].append(m)
                    histograms[name][s.name].append(hist)
                    print(f"round {rnd + 1} {name:40s} {s.name:15s} "
                          f"{m['ops_per_sec']:>10,.0f} ops/s  p99 {m['p99_us']:>6} us  "
                          f"cpu/req {m['cpu_us_per_req']:.2f} us  "
                          f"load {m['loadavg_1m']:.1f}", file=sys.stderr)
    finally:
        for s in servers:
            s.stop()

    summary = summarize(scenarios, results, histograms)
    print_table(scenarios, summary)

    machine = {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                           if ln.startswith("model name")), "?"),
        "memcached": subprocess.run([args.memcached, "-V"], capture_output=True,
                                    text=True).stdout.strip(),
        "pinstack-cache": subprocess.run([args.pinstack, "--version"], capture_output=True,
                                         text=True).stdout.strip(),
        "loadavg_after": open("/proc/loadavg").read().split()[:3],
    }
    out = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "server_flags": flags,
        "client": {"threads": 1, "connections": args.clients, "requests": args.requests,
                   "rounds": args.rounds},
        "machine": machine,
        "scenarios": {name: {k: v for k, v in sc.items()} for name, sc in scenarios.items()},
        "summary": summary,
        "runs": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(dumps(out))
    print(f"\nJSON: {args.json}")
    if args.plot:
        import plot_cache  # bench/ is on sys.path: this script's own directory

        for png in plot_cache.plot(Path(args.json), Path(args.json).parent):
            print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
