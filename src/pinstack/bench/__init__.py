"""pinstack-bench: a memtier_benchmark-class load generator for memcached.

The load loop is C (src/_core/bench/): pthreads, one epoll loop per thread,
non-blocking sockets, a real incremental reply parser, per-thread HDR-style
histograms merged at the end. This module only turns options into the flat
form the C side takes; run() releases the GIL for the whole run.

    >>> from pinstack.bench import run
    >>> result = run(server="127.0.0.1:11211", threads=2, clients=4,
    ...              requests=100_000, ratio="1:10", key_pattern="Z",
    ...              zipf_skew=0.99)
    >>> result["get"]["latency"]["p99_us"]

Options take Python values or the command line's strings ("1:10",
"16-512", "32:8,1024:1" ...); see OPTIONS for every name and default.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .._core._bench import PERCENTILES, BenchError, histogram
from .._core._bench import run as _run_c

__all__ = ["OPTIONS", "PERCENTILES", "BenchError", "histogram", "normalize_options", "run"]

DEFAULT_PORT = 11211

#: Every option run() takes, with its default. Names are the CLI's long
#: options with dashes as underscores. The defaults follow memtier_benchmark
#: where it has the same knob (except `requests`: a total here, not per client).
OPTIONS: dict[str, Any] = {
    "server": f"127.0.0.1:{DEFAULT_PORT}",  # HOST:PORT ([v6addr]:PORT for IPv6)
    "threads": 4,
    "clients": 50,                 # connections per thread
    "pipeline": 1,                 # requests in flight per connection
    "requests": None,              # total, split exactly across connections
    "test_time": None,             # seconds; when neither: 10000 per connection
    "ratio": "1:10",               # SET:GET
    "multiget": 1,                 # keys per get
    "key_prefix": "memtier-",
    "key_minimum": 0,
    "key_maximum": 10_000_000,
    "key_pattern": "R",            # S R G Z, or SET:GET such as "S:R"
    "zipf_skew": 1.0,              # Z: P(rank r) ~ r^-skew
    "key_median": None,            # G: default the middle of the range
    "key_stddev": None,            # G: default range / 6
    "data_size": 32,
    "data_size_range": None,       # "MIN-MAX": uniform
    "data_size_list": None,        # "SIZE:WEIGHT,...": weighted
    "expiry_range": "0-0",         # seconds, uniform; 0 = never expire
    "protocol": "text",            # text | meta
    "rate": None,                  # total requests/s: open loop; None = closed loop
    "reconnect_interval": 0,       # reconnect each connection every N requests
    "on_error": "stop",            # stop | continue
    "timeout": 5.0,                # seconds without a reply before a request times out (0: never)
    "connect_timeout": 2.0,
    "progress": False,             # a line per second on stderr
    "timeline_interval": 1.0,      # seconds per slot of result["timeline"]
    "seed": 0,
}

_KEY_PATTERN_LETTERS = "SRGZ"


def _fail(message: str) -> BenchError:
    return BenchError(message, "config")


def _int(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise _fail(f"--{_dash(name)}: expected an integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        if not re.fullmatch(r"[0-9]+", text):
            raise _fail(f"--{_dash(name)}: expected an integer, got {value!r}")
        value = int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise _fail(f"--{_dash(name)}: expected an integer, got {value!r}")
    if value < minimum:
        raise _fail(f"--{_dash(name)}: must be at least {minimum}, got {value}")
    return value


def _float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(f"--{_dash(name)}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise _fail(f"--{_dash(name)}: expected a number >= 0, got {value!r}")
    return number


def _dash(name: str) -> str:
    return name.replace("_", "-")


def _pair(name: str, value: Any, sep: str) -> tuple[int, int]:
    """'A<sep>B' or (A, B) -> two non-negative ints."""
    if isinstance(value, str):
        parts = value.split(sep)
        if len(parts) != 2:
            raise _fail(f"--{_dash(name)}: expected A{sep}B, got {value!r}")
    else:
        try:
            parts = list(value)
        except TypeError:
            raise _fail(f"--{_dash(name)}: expected A{sep}B, got {value!r}") from None
        if len(parts) != 2:
            raise _fail(f"--{_dash(name)}: expected two values, got {value!r}")
    return _int(name, parts[0]), _int(name, parts[1])


def parse_server(value: str) -> tuple[str, str]:
    """'host:port', '[v6]:port' or 'host' (port 11211) -> (host, port)."""
    text = str(value).strip()
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if match:
        return match.group(1), match.group(2) or str(DEFAULT_PORT)
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = text, str(DEFAULT_PORT)
    if not host or ":" in host:
        raise _fail(f"--server: expected HOST:PORT (IPv6 as [ADDR]:PORT), got {value!r}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(f"--server: bad port in {value!r}")
    return host, port


def _key_patterns(value: Any) -> tuple[str, str]:
    text = value if isinstance(value, str) else ":".join(value)
    parts = text.upper().split(":")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or any(len(p) != 1 or p not in _KEY_PATTERN_LETTERS for p in parts):
        raise _fail(f"--key-pattern: S, R, G or Z, or SET:GET like S:R; got {value!r}")
    return parts[0], parts[1]


def _size_list(value: Any) -> list[tuple[int, int]]:
    if isinstance(value, str):
        entries = [e for e in value.split(",") if e.strip()]
        pairs = [_pair("data_size_list", e.strip(), ":") for e in entries]
    else:
        pairs = [_pair("data_size_list", e, ":") for e in value]
    if not pairs:
        raise _fail("--data-size-list: expected SIZE:WEIGHT[,SIZE:WEIGHT...]")
    return pairs


def normalize_options(**options: Any) -> dict[str, Any]:
    """Options as run() takes them -> the flat dict the C core takes.

    Raises BenchError(kind="config") for an unknown option or a value that
    does not parse; range checks (1 <= threads <= 256, ...) are the C core's.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(unknown)}")
    o = {**OPTIONS, **{k: v for k, v in options.items() if v is not None}}

    host, port = parse_server(o["server"])
    threads = _int("threads", o["threads"], 1)
    clients = _int("clients", o["clients"], 1)
    requests = 0
    test_time = 0.0
    if options.get("requests") is not None:
        requests = _int("requests", o["requests"], 1)
        if options.get("test_time") is not None:
            raise _fail("give --requests or --test-time, not both")
    elif options.get("test_time") is not None:
        test_time = _float("test_time", o["test_time"])
        if test_time <= 0:
            raise _fail("--test-time: must be more than 0 seconds")
    else:
        requests = 10_000 * threads * clients
    ratio_set, ratio_get = _pair("ratio", o["ratio"], ":")
    pattern_set, pattern_get = _key_patterns(o["key_pattern"])
    sizes_given = sum(options.get(k) is not None
                      for k in ("data_size", "data_size_range", "data_size_list"))
    if sizes_given > 1:
        raise _fail("give one of --data-size, --data-size-range, --data-size-list")
    protocol = str(o["protocol"]).lower()
    on_error = str(o["on_error"]).lower()
    return {
        "host": host,
        "port": port,
        "threads": threads,
        "clients": clients,
        "pipeline": _int("pipeline", o["pipeline"], 1),
        "requests": requests,
        "test_time": test_time,
        "ratio_set": ratio_set,
        "ratio_get": ratio_get,
        "multiget": _int("multiget", o["multiget"], 1),
        "key_prefix": str(o["key_prefix"]),
        "key_minimum": _int("key_minimum", o["key_minimum"]),
        "key_maximum": _int("key_maximum", o["key_maximum"]),
        "key_pattern_set": pattern_set,
        "key_pattern_get": pattern_get,
        "zipf_skew": _float("zipf_skew", o["zipf_skew"]),
        "key_median": -1.0 if o["key_median"] is None else _float("key_median", o["key_median"]),
        "key_stddev": -1.0 if o["key_stddev"] is None else _float("key_stddev", o["key_stddev"]),
        "data_size": _int("data_size", o["data_size"]),
        "data_size_range": None if o["data_size_range"] is None
        else _pair("data_size_range", o["data_size_range"], "-"),
        "data_size_list": None if o["data_size_list"] is None
        else _size_list(o["data_size_list"]),
        "expiry_range": _pair("expiry_range", o["expiry_range"], "-"),
        "protocol": protocol,
        "rate": 0.0 if o["rate"] is None else _float("rate", o["rate"]),
        "reconnect_interval": _int("reconnect_interval", o["reconnect_interval"]),
        "on_error": on_error,
        "timeout": _float("timeout", o["timeout"]),
        "connect_timeout": _float("connect_timeout", o["connect_timeout"]),
        "progress": bool(o["progress"]),
        "timeline_interval": _float("timeline_interval", o["timeline_interval"]),
        "seed": _int("seed", o["seed"]),
    }


def run(**options: Any) -> dict[str, Any]:
    """Runs one benchmark and returns its results.

    The result dict holds, for "get", "set" and "total": ops, ops_per_sec,
    kb_per_sec, errors and "latency" (count, mean/min/max, p50..p99.99 in
    microseconds and the full histogram as [[value_us, count], ...]); gets
    add hits/misses (per key), sets stored/not_stored. Also "connect"
    (connection setup histogram), "errors" (error_replies, protocol,
    timeouts, disconnects, connect_failures, lost), "timeline" (ops and
    mean/max latency per timeline_interval), "elapsed_s" and "config" (the
    normalised options, enough to repeat the run).

    Raises BenchError: kind "config" (bad options), "connect" (server
    unreachable), "run" (--on-error stop hit an error; .result has the
    partial results), "system".
    """
    flat = normalize_options(**options)
    try:
        result = _run_c(flat)
    except BenchError as exc:
        if exc.result is not None:
            exc.result["config"] = flat
        raise
    result["config"] = flat
    return result
