"""pinstack-bench: the command line over pinstack.bench.run().

Parses argv into run()'s options (long option names with dashes), runs, and
prints memtier_benchmark's final table on stdout:

    Type   Ops/sec  Hits/sec  Misses/sec  Avg. Latency  p50 / p99 / p99.9 Latency  KB/sec

(latencies in milliseconds, as memtier prints them), then connection and
error lines. --json FILE writes everything, full histograms included.

Exit status: 0 the run completed; 1 it could not start or was stopped by an
error (--on-error stop), the message on stderr; 64 (EX_USAGE) bad options;
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .._version import __version__
from . import OPTIONS, BenchError, normalize_options, run

PROG = "pinstack-bench"
EX_USAGE = 64
EX_INTERRUPTED = 130

TABLE_RULE = "=" * 126
TABLE_SUBRULE = "-" * 126


def build_parser() -> argparse.ArgumentParser:
    d = OPTIONS  # the defaults live in one place; the help text quotes them
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Load generator for memcached-protocol servers (text or meta), "
        "in the spirit of memtier_benchmark. The load loop runs in C.",
        argument_default=None,
    )
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    conn = p.add_argument_group("connections")
    conn.add_argument("-s", "--server", metavar="HOST:PORT",
                      help=f"server to load ([ADDR]:PORT for IPv6; default {d['server']})")
    conn.add_argument("-t", "--threads", type=int, metavar="N",
                      help=f"worker threads (default {d['threads']})")
    conn.add_argument("-c", "--clients", type=int, metavar="N",
                      help=f"connections per thread (default {d['clients']})")
    conn.add_argument("--pipeline", type=int, metavar="N",
                      help=f"requests in flight per connection (default {d['pipeline']})")
    conn.add_argument("--protocol", choices=["text", "meta"],
                      help=f"text: get/set; meta: mg/ms (default {d['protocol']})")
    conn.add_argument("--reconnect-interval", type=int, metavar="N",
                      help="close and reopen each connection every N requests (default never)")
    conn.add_argument("--timeout", type=float, metavar="S",
                      help="a request unanswered for S seconds times out; 0 never "
                      f"(default {d['timeout']:g})")
    conn.add_argument("--connect-timeout", type=float, metavar="S",
                      help=f"give up connecting after S seconds (default {d['connect_timeout']:g})")

    length = p.add_argument_group("how much")
    only_one = length.add_mutually_exclusive_group()
    only_one.add_argument("--requests", type=int, metavar="N",
                          help="total requests, split exactly across connections "
                          "(default 10000 per connection)")
    only_one.add_argument("--test-time", type=float, metavar="S", help="run for S seconds")
    length.add_argument("--rate", type=float, metavar="N",
                        help="open loop: N requests/s in total, sent on schedule, latency "
                        "measured from the scheduled time (default: closed loop)")

    work = p.add_argument_group("workload")
    work.add_argument("--ratio", metavar="SET:GET", help=f"sets to gets (default {d['ratio']})")
    work.add_argument("--multiget", type=int, metavar="N",
                      help=f"keys per get (default {d['multiget']})")
    work.add_argument("--key-prefix", metavar="STR", help=f"default {d['key_prefix']}")
    work.add_argument("--key-minimum", type=int, metavar="N", help=f"default {d['key_minimum']}")
    work.add_argument("--key-maximum", type=int, metavar="N", help=f"default {d['key_maximum']}")
    work.add_argument("--key-pattern", metavar="P[:P]",
                      help="S sequential, R uniform, G gaussian, Z zipfian; SET:GET to differ "
                      f"(default {d['key_pattern']})")
    work.add_argument("--zipf-skew", type=float, metavar="S",
                      help=f"Z: rank r drawn with probability ~ r^-S (default {d['zipf_skew']:g})")
    work.add_argument("--key-median", type=float, metavar="N", help="G: centre (default mid-range)")
    work.add_argument("--key-stddev", type=float, metavar="N",
                      help="G: standard deviation (default range/6)")
    sizes = work.add_mutually_exclusive_group()
    sizes.add_argument("-d", "--data-size", type=int, metavar="N",
                       help=f"value bytes (default {d['data_size']})")
    sizes.add_argument("--data-size-range", metavar="MIN-MAX", help="uniform value size")
    sizes.add_argument("--data-size-list", metavar="SIZE:WEIGHT,...", help="weighted value sizes")
    work.add_argument("--expiry-range", metavar="MIN-MAX",
                      help=f"expiry seconds, uniform (default {d['expiry_range']}: never)")
    work.add_argument("--seed", type=int, metavar="N", help=f"random seed (default {d['seed']})")

    out = p.add_argument_group("errors and output")
    out.add_argument("--on-error", choices=["stop", "continue"],
                     help="stop: end the run at the first error; continue: count it, reset "
                     f"the connection if needed, go on (default {d['on_error']})")
    out.add_argument("--json", metavar="FILE", help="write all results, histograms included")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a line per second on stderr (default: when stderr is a terminal)")
    out.add_argument("--timeline-interval", type=float, metavar="S",
                     help=f"slot width of the JSON timeline (default {d['timeline_interval']:g})")
    return p


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options = {k: v for k, v in vars(args).items() if v is not None and k != "json"}
    if args.progress is None:
        options["progress"] = sys.stderr.isatty()
    return options


def _ms(us: float) -> float:
    return us / 1000.0


def format_table(result: dict[str, Any]) -> str:
    """memtier_benchmark's ALL STATS table for a run() result."""
    header = (
        f"{'Type':<6}{'Ops/sec':>14}{'Hits/sec':>13}{'Misses/sec':>13}"
        f"{'Avg. Latency':>16}{'p50 Latency':>16}{'p99 Latency':>16}{'p99.9 Latency':>16}"
        f"{'KB/sec':>14}"
    )

    def row(name: str, stats: dict[str, Any], hits: float | None, misses: float | None) -> str:
        lat = stats["latency"]
        hits_s = f"{hits:>13.2f}" if hits is not None else f"{'---':>13}"
        misses_s = f"{misses:>13.2f}" if misses is not None else f"{'---':>13}"
        return (
            f"{name:<6}{stats['ops_per_sec']:>14.2f}{hits_s}{misses_s}"
            f"{_ms(lat['mean_us']):>16.5f}{_ms(lat['p50_us']):>16.5f}"
            f"{_ms(lat['p99_us']):>16.5f}{_ms(lat['p99.9_us']):>16.5f}"
            f"{stats['kb_per_sec']:>14.2f}"
        )

    get, set_, total = result["get"], result["set"], result["total"]
    lines = [
        "ALL STATS",
        TABLE_RULE,
        header,
        TABLE_SUBRULE,
        row("Sets", set_, None, None),
        row("Gets", get, get["hits_per_sec"], get["misses_per_sec"]),
        row("Totals", total, get["hits_per_sec"], get["misses_per_sec"]),
    ]
    return "\n".join(lines)


def format_summary(result: dict[str, Any]) -> str:
    """The lines under the table: run shape, connections, errors."""
    cfg = result.get("config", {})
    conn = result["connect"]
    err = result["errors"]
    total = result["total"]["latency"]
    lines = [
        f"{result['elapsed_s']:.3f} s, {result['total']['ops']} requests "
        f"({result['get']['ops']} gets for {result['get']['keys']} keys, "
        f"{result['set']['ops']} sets), p99.99 {_ms(total['p99.99_us']):.5f} ms, "
        f"max {_ms(total['max_us']):.5f} ms",
        f"Connect: {conn['count']} connects, avg {_ms(conn['mean_us']):.5f} ms, "
        f"p99 {_ms(conn['p99_us']):.5f} ms; {result['reconnects']} planned reconnects",
        f"Errors: {err['error_replies']} error replies, {err['protocol']} protocol errors, "
        f"{err['timeouts']} timeouts, {err['disconnects']} disconnects, "
        f"{err['connect_failures']} failed reconnects, {err['lost']} requests lost",
    ]
    if cfg:
        loop = f"open loop at {cfg['rate']:g}/s" if cfg.get("rate") else "closed loop"
        lines.insert(
            0,
            f"{cfg['host']}:{cfg['port']} ({cfg['protocol']}), {cfg['threads']} threads x "
            f"{cfg['clients']} connections, pipeline {cfg['pipeline']}, {loop}",
        )
    return "\n".join(lines)


def _write_json(path: str, result: dict[str, Any] | None, error: BenchError | None) -> None:
    doc: dict[str, Any] = {"tool": PROG, "version": __version__}
    if result is not None:
        body = dict(result)
        doc["configuration"] = body.pop("config", None)
        doc["results"] = body
    doc["error"] = None if error is None else {"kind": error.kind, "message": str(error)}
    text = json.dumps(doc, indent=1)
    if path == "-":
        sys.stdout.write(text + "\n")
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    options = _options(args)
    try:
        normalize_options(**options)  # bad options: usage error before anything starts
    except BenchError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_USAGE

    error: BenchError | None = None
    try:
        result: dict[str, Any] | None = run(**options)
    except BenchError as exc:
        error, result = exc, exc.result
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EX_INTERRUPTED

    if result is not None:
        print(format_table(result))
        print(format_summary(result))
    if args.json:
        try:
            _write_json(args.json, result, error)
        except OSError as exc:
            print(f"{PROG}: cannot write {args.json}: {exc.strerror}", file=sys.stderr)
            return 1
    if error is not None:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EX_USAGE if error.kind == "config" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
