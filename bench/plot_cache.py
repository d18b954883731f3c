#!/usr/bin/env python3
"""Plots of bench/cache_compare.py's results (matplotlib, Agg backend: no display).

Reads the JSON cache_compare.py wrote and draws, next to it by default:

    cache_throughput.png   per scenario, memcached's and pinstack-cache's
                           median ops/s as grouped horizontal bars (log
                           scale: the scenarios span 1,000x), each labelled
                           with its value, and the ratio pinstack/memcached
    cache_latency_cdf.png  per scenario, the latency CDF of both servers,
                           from the histograms of all rounds merged; the
                           y axis is logit-scaled so p50, p90, p99 and p99.9
                           are evenly spaced and the tail is visible

    pip install -r bench/requirements.txt        # matplotlib
    python bench/plot_cache.py                   # bench/results/cache_compare.json
    python bench/plot_cache.py --json other.json --out /tmp
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

HERE = Path(__file__).resolve().parent
SERVERS = ("memcached", "pinstack-cache")
COLORS = {"memcached": "#7f7f7f", "pinstack-cache": "#1f77b4"}
# The CDF's tail is cut at 1 - 1e-5 (p99.999): a logit axis cannot show 1.
TOP_FRACTION = 1 - 1e-5


def caption(data: dict) -> str:
    m = data.get("machine", {})
    return (f"{data.get('command', 'cache_compare.py')}  |  {data.get('when', '?')}  |  "
            f"{m.get('cpus', '?')} CPUs ({m.get('cpu_model', '?')}), server flags "
            f"{' '.join(data.get('server_flags', []))}, client and server share the CPUs")


def short(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def plot_throughput(data: dict, path: Path) -> Path:
    summary = data["summary"]
    names = list(summary)
    fig, ax = plt.subplots(figsize=(11, 0.75 * len(names) + 1.8))
    height = 0.38
    for i, name in enumerate(names):
        for j, server in enumerate(SERVERS):
            value = summary[name][server]["ops_per_sec"]
            y = i + (j - 0.5) * height
            ax.barh(y, value, height=height, color=COLORS[server],
                    label=server if i == 0 else None)
            ax.text(value * 1.04, y, short(value), va="center", fontsize=8)
        ratio = summary[name]["ratio"]["ops_per_sec"]
        if ratio is not None:
            ax.text(1.0, i, f"{ratio:.2f}x ", transform=ax.get_yaxis_transform(),
                    ha="right", va="center", fontsize=9, fontweight="bold")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=9)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("operations per second (median round; log scale)")
    low = min(summary[n][s]["ops_per_sec"] for n in names for s in SERVERS)
    high = max(summary[n][s]["ops_per_sec"] for n in names for s in SERVERS)
    ax.set_xlim(low / 2, high * 6)
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    ax.set_title("pinstack-cache vs memcached: throughput (right: pinstack / memcached)",
                 fontsize=11)
    fig.text(0.01, 0.005, caption(data), fontsize=6.5, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cdf_points(histogram: list[list[float]]) -> tuple[list[float], list[float]]:
    """[[value_us, count], ...] -> (values, cumulative fractions), tail cut
    at TOP_FRACTION."""
    total = sum(count for _, count in histogram)
    xs, ys = [], []
    seen = 0
    for value, count in histogram:
        seen += count
        xs.append(max(value, 1))
        ys.append(min(seen / total, TOP_FRACTION))
        if seen / total >= TOP_FRACTION:
            break
    return xs, ys


def plot_latency_cdf(data: dict, path: Path) -> Path:
    summary = data["summary"]
    names = [n for n in summary
             if all(summary[n][s].get("latency_histogram") for s in SERVERS)]
    if not names:
        raise SystemExit("no latency histograms in the JSON: re-run bench/cache_compare.py")
    cols = 3
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows + 0.6), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for server in SERVERS:
            stats = summary[name][server]
            xs, ys = cdf_points(stats["latency_histogram"])
            ax.step(xs, ys, where="post", color=COLORS[server], linewidth=1.4,
                    label=f"{server} (median round: p50 {stats['p50_us']:.0f}, "
                          f"p99 {stats['p99_us']:.0f} us)")
        ax.set_xscale("log")
        ax.set_yscale("logit")
        ax.set_ylim(0.01, TOP_FRACTION)
        ax.set_yticks([0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999])
        ax.set_yticklabels(["1%", "10%", "50%", "90%", "99%", "99.9%", "99.99%"], fontsize=8)
        ax.minorticks_off()
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("latency (us, log scale)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(loc="lower right", fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle("Latency CDFs, every request of every round (fraction of requests at or "
                 "below a latency)", fontsize=12)
    fig.text(0.01, 0.005, caption(data), fontsize=6.5, color="#555555")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot(json_path: Path, out_dir: Path) -> list[Path]:
    """Draw both PNGs from json_path into out_dir; returns their paths."""
    data = json.loads(Path(json_path).read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_throughput(data, out_dir / "cache_throughput.png"),
            plot_latency_cdf(data, out_dir / "cache_latency_cdf.png")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=str(HERE / "results" / "cache_compare.json"))
    ap.add_argument("--out", help="directory for the PNGs (default: the JSON's)")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(args.json).parent
    for png in plot(Path(args.json), out):
        print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
