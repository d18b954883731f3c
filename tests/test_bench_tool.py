"""pinstack-bench against real sockets: a real memcached (and pinstack-cache),
and tiny Python servers that count keys, answer slowly, answer garbage or
hang up.

The central check is bookkeeping: for a fixed --requests count, what the
tool says it did equals what the server's own `stats` says it was asked
(cmd_get, cmd_set, get_hits, get_misses), exactly, over both protocols,
with pipelining, against memcached and pinstack-cache alike. Then the
measurement claims: the Zipfian key pattern has the requested rank-frequency
slope, and an open-loop run against a server that cannot keep up reports
latency that grows (no coordinated omission).
Then the failure modes: garbage, error replies, dropped connections, an
unreachable port.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections import Counter
from typing import Callable

import pytest
from helpers import MemcacheConn

from pinstack.bench import BenchError, histogram, run
from pinstack.bench.cli import main

# ---- helpers ---------------------------------------------------------------

COUNTED = ("cmd_get", "cmd_set", "get_hits", "get_misses", "total_connections")


def counters(server) -> dict[str, int]:
    stats = server.stats()
    return {k: int(stats[k]) for k in COUNTED}


def stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in COUNTED}


def get_lengths(port: int, keys: list[str]) -> dict[str, int]:
    """key -> value length, via one multi-get."""
    with MemcacheConn(port) as conn:
        conn.send(b"get " + " ".join(keys).encode() + b"\r\n")
        lengths = {}
        while True:
            line = conn.read_until()
            if line == b"END\r\n":
                return lengths
            _, key, _flags, size = line.split()[:4]
            lengths[key.decode()] = int(size)
            conn.read_exact(int(size) + 2)


def sets_in(budget: int, ratio_set: int, ratio_get: int) -> int:
    """Sets among a connection's first `budget` requests (the ratio is a fixed cycle)."""
    cycle = ratio_set + ratio_get
    return budget // cycle * ratio_set + min(budget % cycle, ratio_set)


def expected_sets(requests: int, connections: int, ratio_set: int, ratio_get: int) -> int:
    base, extra = divmod(requests, connections)
    return sum(sets_in(base + (g < extra), ratio_set, ratio_get) for g in range(connections))


@pytest.fixture
def memcached(memcached_server):
    """The reference memcached, one worker thread (conftest starts and checks it)."""
    return memcached_server("-t", "1")


@pytest.fixture(params=["memcached", "pinstack-cache"])
def any_server(request):
    """Each implementation in turn: the bookkeeping must agree with both."""
    factory = request.getfixturevalue(
        "memcached_server" if request.param == "memcached" else "cache_server")
    return factory()


class FakeServer:
    """A small threaded TCP server on 127.0.0.1.

    `respond(line, conn_state)` gets each request line (without CRLF) and
    returns the bytes to answer, b"" for nothing, or None to close the
    connection. Replies to the lines of one read are sent together, unless
    `per_line` (for servers that must answer one request at a time).
    """

    def __init__(self, respond: Callable[[bytes, dict], bytes | None], per_line: bool = False):
        self.respond = respond
        self.per_line = per_line
        self.accepted = 0
        self._closed = False
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._converse(conn)
            except OSError:
                pass  # the client hung up: that is what some tests do

    def _converse(self, conn: socket.socket) -> None:
        state: dict = {}
        buf = b""
        conn.settimeout(10)
        while not self._closed:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            out = []
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                reply = self.respond(line, state)
                if reply is None:
                    conn.sendall(b"".join(out))
                    return
                if self.per_line:
                    conn.sendall(reply)
                else:
                    out.append(reply)
            if out:
                conn.sendall(b"".join(out))

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self._thread.join(timeout=2)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def base_options(port: int, **overrides) -> dict:
    options = dict(server=f"127.0.0.1:{port}", threads=1, clients=1, seed=7,
                   key_maximum=999, timeout=10)
    options.update(overrides)
    return options


# ---- bookkeeping against memcached -----------------------------------------


@pytest.mark.parametrize("protocol", ["text", "meta"])
@pytest.mark.parametrize("multiget", [1, 3])
def test_counts_equal_server_stats_deltas(any_server, protocol, multiget):
    requests, threads, clients = 6007, 2, 3  # not a multiple of the 6 connections
    before = counters(any_server)
    r = run(**base_options(any_server.port, threads=threads, clients=clients, requests=requests,
                           ratio="1:3", multiget=multiget, protocol=protocol,
                           key_prefix=f"counts-{protocol}-{multiget}:"))
    delta = stats_delta(before, counters(any_server))

    sets = expected_sets(requests, threads * clients, 1, 3)
    assert r["set"]["ops"] == sets
    assert r["get"]["ops"] == requests - sets
    assert r["get"]["keys"] == (requests - sets) * multiget
    assert delta["cmd_set"] == r["set"]["ops"]
    assert delta["cmd_get"] == r["get"]["keys"]
    assert delta["get_hits"] == r["get"]["hits"]
    assert delta["get_misses"] == r["get"]["misses"]
    assert r["get"]["hits"] + r["get"]["misses"] == r["get"]["keys"]
    assert r["get"]["hits"] > 0 and r["get"]["misses"] > 0
    assert r["set"]["stored"] == sets
    assert r["total"]["latency"]["count"] == requests
    assert sum(c for _, c in r["total"]["latency"]["histogram"]) == requests
    assert all(v == 0 for v in r["errors"].values())
    assert r["connect"]["count"] == threads * clients
    # + our stats connection, and the harness's probe if the server counts it late
    assert threads * clients + 1 <= delta["total_connections"] <= threads * clients + 2


@pytest.mark.parametrize("protocol", ["text", "meta"])
def test_pipelining_16_gives_the_same_counts(any_server, protocol):
    """One connection sends the same deterministic sequence whatever the
    pipeline depth, and memcached answers in order: every count, hits
    included, is identical; with many connections the totals still match
    the server's."""
    common = dict(requests=5000, ratio="1:2", multiget=2, protocol=protocol)
    results = {}
    for depth in (1, 16):
        before = counters(any_server)
        r = run(**base_options(any_server.port, pipeline=depth,
                               key_prefix=f"pipe-{protocol}-{depth}:", **common))
        delta = stats_delta(before, counters(any_server))
        assert delta["cmd_get"] == r["get"]["keys"]
        assert delta["cmd_set"] == r["set"]["ops"]
        assert delta["get_hits"] == r["get"]["hits"]
        results[depth] = r
    for field in ("ops", "keys", "hits", "misses"):
        assert results[1]["get"][field] == results[16]["get"][field], field
    assert results[1]["set"]["ops"] == results[16]["set"]["ops"]

    before = counters(any_server)
    r = run(**base_options(any_server.port, threads=2, clients=4, pipeline=16,
                           key_prefix=f"pipe-{protocol}-many:", **common))
    delta = stats_delta(before, counters(any_server))
    assert r["total"]["ops"] == 5000
    assert r["set"]["ops"] == expected_sets(5000, 8, 1, 2)
    assert (delta["cmd_get"], delta["cmd_set"], delta["get_hits"]) == (
        r["get"]["keys"], r["set"]["ops"], r["get"]["hits"])


def test_timed_run_drains_what_it_sent(memcached):
    """--test-time stops issuing at the deadline but still waits for the
    replies in flight, so the counts stay exact."""
    before = counters(memcached)
    r = run(**base_options(memcached.port, clients=4, pipeline=8, test_time=0.5, ratio="1:1",
                           key_prefix="timed:"))
    delta = stats_delta(before, counters(memcached))
    assert 0.45 < r["elapsed_s"] < 1.5
    assert r["total"]["ops"] > 100
    assert delta["cmd_get"] == r["get"]["keys"]
    assert delta["cmd_set"] == r["set"]["ops"]


def test_reconnect_interval_reconnects_and_times_connects(memcached):
    before = counters(memcached)
    r = run(**base_options(memcached.port, clients=2, requests=1000, reconnect_interval=100,
                           key_prefix="reconnect:"))
    delta = stats_delta(before, counters(memcached))
    # each connection: 500 requests, a new socket every 100 -> 4 reconnects
    assert r["reconnects"] == 8
    assert r["connect"]["count"] == 10
    assert 10 + 1 <= delta["total_connections"] <= 10 + 2  # + stats (+ a late-counted probe)
    assert r["connect"]["p50_us"] > 0
    assert r["total"]["ops"] == 1000


def test_value_sizes_and_sequential_keys(memcached):
    """S with --requests equal to the range writes every key exactly once;
    the values stored have sizes from --data-size-range."""
    r = run(**base_options(memcached.port, clients=4, requests=200, ratio="1:0", key_pattern="S",
                           key_minimum=1, key_maximum=200, data_size_range="10-50",
                           key_prefix="sizes:"))
    assert r["set"]["stored"] == 200
    lengths = get_lengths(memcached.port, [f"sizes:{k}" for k in range(1, 201)])
    assert len(lengths) == 200
    assert all(10 <= n <= 50 for n in lengths.values())
    assert len(set(lengths.values())) > 20


# ---- key distributions ----------------------------------------------------


def counting_server(counts: Counter) -> FakeServer:
    lock = threading.Lock()

    def respond(line: bytes, _state: dict) -> bytes:
        keys = line.split()[1:]
        with lock:
            counts.update(k.decode() for k in keys)
        return b"END\r\n"

    return FakeServer(respond)


@pytest.mark.parametrize("skew", [0.8, 1.2])
def test_zipf_rank_frequency_slope_matches_skew(skew):
    """Zipf: the frequency of rank r falls as r^-skew, i.e. log-log slope
    -skew. Counted at the server, fitted over the 60 hottest ranks."""
    counts: Counter = Counter()
    with counting_server(counts) as server:
        r = run(**base_options(server.port, clients=2, pipeline=32, requests=100_000,
                               ratio="0:1", key_pattern="Z", zipf_skew=skew,
                               key_minimum=1, key_maximum=1000, key_prefix="z"))
    assert r["get"]["ops"] == 100_000
    assert sum(counts.values()) == 100_000
    assert counts.most_common(1)[0][0] == "z1"  # key_minimum is rank 1
    ranks = range(1, 61)
    xs = [math.log(rank) for rank in ranks]
    ys = [math.log(counts[f"z{rank}"]) for rank in ranks]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    assert slope == pytest.approx(-skew, abs=0.08)


def test_gaussian_keys_centre_and_spread():
    counts: Counter = Counter()
    with counting_server(counts) as server:
        run(**base_options(server.port, pipeline=32, requests=20_000, ratio="0:1",
                           key_pattern="G", key_minimum=0, key_maximum=999, key_median=300,
                           key_stddev=50, key_prefix="g"))
    keys = [int(k[1:]) for k in counts.elements()]
    mean = sum(keys) / len(keys)
    sd = math.sqrt(sum((k - mean) ** 2 for k in keys) / len(keys))
    assert mean == pytest.approx(300, abs=3)
    assert sd == pytest.approx(50, rel=0.05)


# ---- open loop and coordinated omission -----------------------------------


def slow_server(delay: float) -> FakeServer:
    def respond(_line: bytes, _state: dict) -> bytes:
        time.sleep(delay)
        return b"END\r\n"

    return FakeServer(respond, per_line=True)


def test_open_loop_latency_grows_when_the_server_falls_behind():
    """A server taking ~3 ms per request on one connection manages ~300/s.
    Scheduled at 1000/s, request k waits for the k-1 before it, so latency
    measured from the schedule climbs through the run. A closed loop against
    the same server reports a flat ~3 ms: it slows down with the server and
    hides the queue (coordinated omission)."""
    with slow_server(0.003) as server:
        opts = base_options(server.port, requests=400, ratio="0:1", key_prefix="slow",
                            timeline_interval=0.1)
        closed = run(**opts)
        open_ = run(**opts, rate=1000)

    closed_lat = closed["get"]["latency"]
    assert closed_lat["p50_us"] < 20_000
    closed_means = [s["mean_us"] for s in closed["timeline"]["slots"] if s["ops"]]
    assert max(closed_means) < 3 * min(closed_means)

    slots = [s for s in open_["timeline"]["slots"] if s["ops"]]
    means = [s["mean_us"] for s in slots]
    assert len(slots) >= 8
    assert means[-1] > 10 * means[0]
    rises = sum(b > a for a, b in zip(means, means[1:]))
    assert rises >= len(means) - 2  # climbs slot after slot
    lat = open_["get"]["latency"]
    assert lat["max_us"] > 500_000  # ~400 * (3 ms - 1 ms) of queueing at the end
    assert lat["p50_us"] > 10 * closed_lat["p50_us"]


def test_open_loop_keeps_its_schedule_when_the_server_keeps_up(memcached):
    r = run(**base_options(memcached.port, clients=2, requests=500, rate=1000, key_prefix="paced:"))
    assert r["elapsed_s"] == pytest.approx(0.5, abs=0.1)
    assert r["total"]["latency"]["p50_us"] < 5_000


# ---- failures ---------------------------------------------------------------


GARBAGE = {
    "unknown line": b"HELLO THERE\r\n",
    "bare newline": b"END\n",
    "bad VALUE length": b"VALUE k 0 banana\r\nxx\r\nEND\r\n",
    "value without CRLF": b"VALUE slow0 0 2\r\nxxyyEND\r\n",
    "too many values": b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nEND\r\n",
    "endless line": b"x" * 10_000,
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_reply_stops_the_run_with_a_clear_message(name):
    with FakeServer(lambda _line, _state: GARBAGE[name]) as server:
        started = time.monotonic()
        with pytest.raises(BenchError) as info:
            run(**base_options(server.port, requests=100, ratio="0:1", on_error="stop"))
    assert time.monotonic() - started < 5
    err = info.value
    assert err.kind == "run"
    assert "protocol error" in str(err)
    assert err.result["errors"]["protocol"] >= 1


def test_garbage_reply_is_counted_and_the_connection_reset_on_continue():
    replies = iter([b"END\r\n"] * 10 + [b"GARBAGE\r\n"] + [b"END\r\n"] * 10_000)
    lock = threading.Lock()

    def respond(_line, _state):
        with lock:
            return next(replies)

    with FakeServer(respond, per_line=True) as server:
        r = run(**base_options(server.port, requests=100, ratio="0:1", pipeline=4,
                               on_error="continue"))
    errors = r["errors"]
    assert errors["protocol"] == 1
    assert r["connect"]["count"] == 2  # reset, then reconnected
    assert r["get"]["ops"] + errors["protocol"] + errors["lost"] == 100


def test_error_replies_are_counted_or_stop_the_run():
    def respond(line, _state):
        if line.startswith(b"set"):
            return b""  # the data line follows; answer that
        if line.startswith(b"get"):
            return b"SERVER_ERROR out of memory\r\n"
        return b"STORED\r\n"

    with FakeServer(respond) as server:
        r = run(**base_options(server.port, requests=40, ratio="1:1", on_error="continue"))
        assert r["get"]["errors"] == 20
        assert r["errors"]["error_replies"] == 20
        assert r["set"]["stored"] == 20
        with pytest.raises(BenchError, match="SERVER_ERROR out of memory"):
            run(**base_options(server.port, requests=40, ratio="1:1", on_error="stop"))


def test_dropped_connection_is_reconnected_and_counted():
    def respond(_line, state):
        state["n"] = state.get("n", 0) + 1
        return None if state["n"] % 25 == 0 else b"END\r\n"  # hang up every 25th request

    with FakeServer(respond, per_line=True) as server:
        r = run(**base_options(server.port, clients=2, requests=200, ratio="0:1",
                               on_error="continue"))
        with pytest.raises(BenchError, match="closed by the server"):
            run(**base_options(server.port, requests=200, ratio="0:1", on_error="stop"))
    # Each connection sends 100 requests, 25 per socket: 24 answered, the 25th
    # lost with the socket; the 4th hang-up ends its work, so no reconnect.
    errors = r["errors"]
    assert errors["disconnects"] == 8
    assert errors["lost"] == 8
    assert r["get"]["ops"] == 192
    assert r["connect"]["count"] == 2 + 6


def test_unanswered_requests_time_out():
    with FakeServer(lambda _line, _state: b"") as server:  # never answers
        started = time.monotonic()
        with pytest.raises(BenchError, match="no reply"):
            run(**base_options(server.port, requests=10, ratio="0:1", timeout=0.3))
    assert time.monotonic() - started < 3


def test_unreachable_port_is_a_quick_clear_error(free_port):
    port = free_port()
    started = time.monotonic()
    with pytest.raises(BenchError) as info:
        run(**base_options(port, threads=2, clients=2, requests=10))
    assert time.monotonic() - started < 2
    assert info.value.kind == "connect"
    assert info.value.result is None
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "Connection refused" in str(info.value)


def test_bad_options_are_refused_before_connecting():
    with pytest.raises(BenchError, match="--threads") as info:
        run(server="127.0.0.1:1", threads=0, requests=1)
    assert info.value.kind == "config"
    with pytest.raises(BenchError, match="--key-minimum"):
        run(server="127.0.0.1:1", requests=1, key_minimum=10, key_maximum=5)
    with pytest.raises(BenchError, match="--ratio"):
        run(server="127.0.0.1:1", requests=1, ratio="3")
    with pytest.raises(TypeError):
        run(server="127.0.0.1:1", requests=1, no_such_option=1)


# ---- the histogram ---------------------------------------------------------


def test_histogram_has_three_significant_digits_up_to_a_minute():
    values = [1, 7, 999, 2047, 2048, 2050, 12_345, 987_654, 60_000_000, 61_234_567]
    h = histogram(values)
    assert h["count"] == len(values)
    assert h["max_us"] == 61_234_567
    assert h["min_us"] == 1
    for value, (reported, count) in zip(values, h["histogram"]):
        assert count == 1
        assert value <= reported <= value * (1 + 1 / 1024)
    exact = histogram(range(1, 1001))
    assert (exact["p50_us"], exact["p99_us"], exact["p99.9_us"]) == (500, 990, 999)
    assert exact["mean_us"] == pytest.approx(500.5)


# ---- command line ------------------------------------------------------------


def test_cli_prints_memtier_table_and_writes_json(memcached, tmp_path, capsys):
    out_file = tmp_path / "run.json"
    code = main(["-s", f"127.0.0.1:{memcached.port}", "-t", "1", "-c", "2", "--requests", "2000",
                 "--key-prefix", "cli:", "--json", str(out_file), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "ALL STATS" in out
    for column in ("Type", "Ops/sec", "Hits/sec", "Misses/sec", "Avg. Latency", "p50 Latency",
                   "p99 Latency", "p99.9 Latency", "KB/sec"):
        assert column in out
    assert any(line.startswith("Gets") for line in out.splitlines())
    doc = json.loads(out_file.read_text())
    assert doc["error"] is None
    assert doc["configuration"]["requests"] == 2000
    res = doc["results"]
    assert res["total"]["ops"] == 2000
    hist = res["get"]["latency"]["histogram"]
    assert sum(count for _value, count in hist) == res["get"]["ops"]
    assert all(isinstance(v, int) and isinstance(c, int) for v, c in hist)


def test_cli_unreachable_server_exits_1_with_the_reason(free_port, capsys):
    code = main(["-s", f"127.0.0.1:{free_port()}", "--requests", "10", "--no-progress"])
    assert code == 1
    assert "cannot connect" in capsys.readouterr().err


def test_cli_bad_option_is_a_usage_error(capsys):
    assert main(["--ratio", "x:y", "--no-progress"]) == 64
    assert "--ratio" in capsys.readouterr().err
