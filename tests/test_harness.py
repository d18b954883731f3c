"""The harness itself: fixtures start, talk to and judge real servers.

The raw-socket helpers are checked against the reference memcached, whose
answers are known; the process handling against pinstack-cache.
"""

from __future__ import annotations

import signal

import pytest
from helpers import MemcacheConn, diff_script, parse_stats, rss_kb, send_recv, stable_stats


def test_send_recv_reads_to_the_expected_end(memcached_server):
    server = memcached_server()
    reply = send_recv(server.port, b"set k 0 0 5\r\nhello\r\nget k\r\n", expect_end=b"END\r\n")
    assert reply == b"STORED\r\nVALUE k 0 5\r\nhello\r\nEND\r\n"


def test_send_recv_without_end_stops_when_the_peer_closes(memcached_server):
    server = memcached_server()
    assert send_recv(server.port, b"version\r\nquit\r\n").startswith(b"VERSION ")


def test_send_recv_times_out_when_the_end_never_comes(memcached_server):
    server = memcached_server()
    with pytest.raises(TimeoutError):
        send_recv(server.port, b"get nothing\r\n", expect_end=b"NEVER\r\n", timeout=0.5)


def test_memcache_conn_reads_lines_and_exact_bytes(memcached_server):
    server = memcached_server()
    with MemcacheConn(server.port) as conn:
        conn.send(b"set key 7 0 3\r\nabc\r\n")
        conn.expect(b"STORED\r\n")
        conn.send(b"get key\r\n")
        assert conn.read_until(b"\r\n") == b"VALUE key 7 3\r\n"
        assert conn.read_exact(5) == b"abc\r\n"
        conn.expect(b"END\r\n")
        conn.send(b"quit\r\n")
        assert conn.closed_by_peer()


def test_parse_stats_and_stable_stats():
    raw = b"STAT pid 42\r\nSTAT curr_items 3\r\nSTAT version 1.6.18 extra\r\nEND\r\n"
    stats = parse_stats(raw)
    assert stats == {"pid": "42", "curr_items": "3", "version": "1.6.18 extra"}
    assert stable_stats(stats) == {"curr_items": "3"}


def test_cache_server_stats_come_from_the_started_process(cache_server):
    server = cache_server()
    assert server.stats()["pid"] == str(server.proc.pid)


def test_both_servers_of_a_pair_answer(server_pair):
    ours, theirs = diff_script(server_pair, b"version\r\n", expect_end=b"\r\n")
    assert ours.startswith(b"VERSION 1.6.18-pinstack-")
    assert theirs.startswith(b"VERSION ")


def test_stop_reports_how_the_server_died(cache_server):
    server = cache_server()
    server.expected_status = None  # this test kills it on purpose
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    assert server.stop() == -signal.SIGKILL  # idempotent


def test_rss_kb_reads_a_live_process(cache_server):
    server = cache_server()
    assert rss_kb(server.proc.pid) > 1000  # a Python process is megabytes


def test_failure_report_carries_stderr(cache_server):
    server = cache_server()
    server.stop()
    report = server.failure_report()
    assert f"port={server.port}" in report and "--- stderr ---" in report
