"""Microbenchmarks of the cache engine's C hot paths (src/_core/cache/microbench.c).

Each hook runs one operation n times in a C loop against a thread-less
engine built in this process: slab allocation (item_alloc + item_release),
a hash-table lookup (hit and miss), and a whole "get" / "set" command
through an in-memory connection (parse, execute, reply gathered; no
syscalls).

    python -m pytest -m bench tests/test_microbench.py     # the benchmarks

Every benchmark call runs OPS_PER_CALL = 1000 operations, so the time per
call that pytest-benchmark prints in microseconds reads as nanoseconds per
operation; each test also records "ns_per_op" in its extra_info.

The tests without the bench mark run in the default suite (and under the
sanitizers in CI): they call every hook with a small n and check the
counts it returns exactly, that misuse is refused, and that a server
started in the same process after a microbench works.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from pinstack._core import _cache

OPS_PER_CALL = 1000
KEYS = 100_000
VALUE_SIZE = 100


def get_reply_bytes(value_size: int) -> int:
    """Bytes of the answer to "get key:NNNNNNNN" that hits a value of value_size."""
    return len(f"VALUE key:00000000 0 {value_size}\r\n") + value_size + 2 + len("END\r\n")


@pytest.fixture
def engine():
    """A microbench engine with KEYS keys of VALUE_SIZE bytes, closed afterwards."""
    _cache.microbench_open(keys=KEYS, value_size=VALUE_SIZE, memory_mb=256)
    try:
        yield
    finally:
        _cache.microbench_close()


# ---- the hooks, exercised in the default run -------------------------------


@pytest.mark.parametrize("value_size", [0, 100, 10_000, 500_000, 700_000])
def test_item_alloc_free_makes_n_allocations_of_any_size(value_size):
    # 700 KB is above slab_chunk_max (512 KiB): a chunked item
    _cache.microbench_open(keys=10, value_size=10, memory_mb=64)
    try:
        assert _cache.microbench_item_alloc_free(value_size, 50) == 50
        assert _cache.microbench_item_alloc_free(value_size, 0) == 0
    finally:
        _cache.microbench_close()


def test_item_alloc_free_refuses_an_item_above_the_max_item_size():
    _cache.microbench_open(keys=10, value_size=10, memory_mb=64)
    try:
        with pytest.raises(RuntimeError, match="too large"):
            _cache.microbench_item_alloc_free(2 * 1024 * 1024, 1)
    finally:
        _cache.microbench_close()


def test_hash_lookup_finds_every_stored_key_and_no_absent_one():
    _cache.microbench_open(keys=1000, value_size=10, memory_mb=64)
    try:
        # n larger than the key count: the visit order wraps around
        assert _cache.microbench_hash_lookup(True, 2500) == 2500
        assert _cache.microbench_hash_lookup(False, 2500) == 0
    finally:
        _cache.microbench_close()


@pytest.mark.parametrize("keys", [1, 7, 7919, 20_000])
def test_hash_lookup_visits_only_stored_keys_for_any_key_count(keys):
    # 7919 is the visit stride itself: the hook must fall back to another
    _cache.microbench_open(keys=keys, value_size=1, memory_mb=64)
    try:
        assert _cache.microbench_hash_lookup(True, 3 * keys) == 3 * keys
    finally:
        _cache.microbench_close()


@pytest.mark.parametrize("value_size", [100, 10_000, 300_000])
def test_proto_get_and_set_answer_every_command(value_size):
    # 300 KB values arrive partly through the direct read into the item
    _cache.microbench_open(keys=50, value_size=value_size, memory_mb=256)
    try:
        assert _cache.microbench_proto_get(True, 120) == 120 * get_reply_bytes(value_size)
        assert _cache.microbench_proto_get(False, 120) == 120 * len("END\r\n")
        assert _cache.microbench_proto_set(120) == 120 * len("STORED\r\n")
        # the keys were replaced, not lost: every get still hits, same size
        assert _cache.microbench_proto_get(True, 120) == 120 * get_reply_bytes(value_size)
        assert _cache.microbench_hash_lookup(True, 50) == 50
    finally:
        _cache.microbench_close()


def test_proto_runs_cross_the_read_buffer_and_the_yield_budget(engine):
    # 5000 gets of 18 bytes span several 16 KiB reads and 250 yields
    # (20 commands per wakeup); odd counts leave the script mid-way
    for n in (1, 19, 20, 21, 5000, 4999):
        assert _cache.microbench_proto_get(True, n) == n * get_reply_bytes(VALUE_SIZE)
        assert _cache.microbench_proto_set(n) == n * len("STORED\r\n")


def test_hooks_refuse_to_run_without_an_open_engine():
    with pytest.raises(RuntimeError, match="not open"):
        _cache.microbench_hash_lookup(True, 1)
    with pytest.raises(RuntimeError, match="not open"):
        _cache.microbench_close()


def test_open_refuses_a_second_engine_and_bad_sizes(engine):
    with pytest.raises(RuntimeError, match="already open"):
        _cache.microbench_open(keys=10)
    _cache.microbench_close()
    try:
        with pytest.raises(RuntimeError, match="keys"):
            _cache.microbench_open(keys=0)
        with pytest.raises(RuntimeError, match="raise memory_mb"):
            _cache.microbench_open(keys=100_000, value_size=10_000, memory_mb=64)
    finally:
        _cache.microbench_open(keys=10)   # for the fixture's close


def test_hooks_refuse_a_thread_other_than_the_opener(engine):
    errors = []

    def other():
        try:
            _cache.microbench_proto_get(True, 1)
        except RuntimeError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert errors and "other than its opener" in errors[0]
    assert _cache.microbench_proto_get(True, 1) == get_reply_bytes(VALUE_SIZE)


SERVER_AFTER_MICROBENCH = textwrap.dedent(
    """
    import socket, threading
    from pinstack._core import _cache

    _cache.microbench_open(keys=1000, value_size=100, memory_mb=64)
    _cache.microbench_proto_set(500)
    _cache.microbench_proto_get(True, 500)
    try:
        _cache.run({"port": 0, "num_threads": 2})
        raise SystemExit("run() started a server while a microbench was open")
    except RuntimeError as exc:
        assert "microbench" in str(exc), exc
    _cache.microbench_close()

    replies = {}

    def client():
        try:
            while _cache.port() == 0:
                threading.Event().wait(0.01)
            try:
                _cache.microbench_open(keys=10)
                replies["open"] = "opened while a server ran"
            except RuntimeError as exc:
                replies["open"] = str(exc)
            with socket.create_connection(("127.0.0.1", _cache.port()), timeout=5) as s:
                s.sendall(b"set k 0 0 5\\r\\nhello\\r\\nget k\\r\\nstats\\r\\n")
                data = b""
                while not data.endswith(b"END\\r\\n") or data.count(b"END\\r\\n") < 2:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                replies["data"] = data
        finally:
            _cache.stop()

    thread = threading.Thread(target=client)
    thread.start()
    _cache.run({"port": 0, "num_threads": 2})
    thread.join()

    data = replies["data"]
    assert data.startswith(b"STORED\\r\\nVALUE k 0 5\\r\\nhello\\r\\nEND\\r\\n"), data[:80]
    stats = dict(line.split(b" ")[1:3]
                 for line in data.split(b"\\r\\n") if line.startswith(b"STAT "))
    # the engine starts from zero, not from the microbench's counts
    assert stats[b"curr_items"] == b"1", stats[b"curr_items"]
    assert stats[b"total_items"] == b"1", stats[b"total_items"]
    assert stats[b"cmd_get"] == b"1", stats[b"cmd_get"]
    assert stats[b"get_hits"] == b"1", stats[b"get_hits"]
    assert stats[b"curr_connections"] == b"1", stats[b"curr_connections"]
    assert "server is running" in replies["open"], replies["open"]

    # and a microbench works again once the server is gone
    _cache.microbench_open(keys=1000, value_size=100, memory_mb=64)
    assert _cache.microbench_hash_lookup(True, 1000) == 1000
    _cache.microbench_close()
    print("ok")
    """
)


def test_a_server_started_after_a_microbench_in_the_same_process_starts_clean():
    result = subprocess.run(
        [sys.executable, "-c", SERVER_AFTER_MICROBENCH],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "ok"


# ---- the benchmarks (pytest -m bench) ----------------------------------------


def measure(benchmark, fn, *args, expect):
    result = benchmark(fn, *args, OPS_PER_CALL)
    assert result == expect
    if benchmark.stats is not None:   # None under --benchmark-disable
        benchmark.extra_info["ns_per_op"] = round(
            benchmark.stats.stats.mean / OPS_PER_CALL * 1e9, 1)


@pytest.mark.bench
@pytest.mark.parametrize("value_size", [100, 10_000, 500_000])
def test_bench_slab_item_alloc_free(benchmark, engine, value_size):
    measure(benchmark, _cache.microbench_item_alloc_free, value_size, expect=OPS_PER_CALL)


@pytest.mark.bench
@pytest.mark.parametrize("outcome", ["hit", "miss"])
def test_bench_hash_lookup(benchmark, engine, outcome):
    hit = outcome == "hit"
    measure(benchmark, _cache.microbench_hash_lookup, hit, expect=OPS_PER_CALL if hit else 0)


@pytest.mark.bench
@pytest.mark.parametrize("outcome", ["hit", "miss"])
def test_bench_proto_get(benchmark, engine, outcome):
    hit = outcome == "hit"
    reply = get_reply_bytes(VALUE_SIZE) if hit else len("END\r\n")
    measure(benchmark, _cache.microbench_proto_get, hit, expect=OPS_PER_CALL * reply)


@pytest.mark.bench
def test_bench_proto_set(benchmark, engine):
    measure(benchmark, _cache.microbench_proto_set, expect=OPS_PER_CALL * len("STORED\r\n"))
