"""Connection handling under abuse: the connection cap, ten thousand
clients, slow and endless senders, idle timeout, deep pipelines. In every
case the other clients keep being served."""

import os
import resource
import socket
import time

import pytest

from helpers import MemcacheConn, rss_kb


def _conn(port, timeout=5):
    return MemcacheConn(port, timeout=timeout)


def _roundtrip(port, req=b"version\r\n", end=b"\r\n"):
    with _conn(port) as c:
        return c.call(req, end)


def _set_get_ok(port):
    with _conn(port) as c:
        c.send(b"set probe 0 0 2\r\nok\r\nget probe\r\n")
        return (c.read_until(b"\r\n") == b"STORED\r\n"
                and c.read_until(b"END\r\n") == b"VALUE probe 0 2\r\nok\r\nEND\r\n")


def _stat(srv, name, group=""):
    return int(srv.stats(group)[name])


def test_over_connection_cap_gets_error_and_close(cache_server):
    """Connections beyond -c get memcached's error line and are closed.

    A closed connection counts until its worker has processed the close
    (as in memcached), so the test opens connections until one is refused
    rather than assuming exactly how many probes are still draining."""
    srv = cache_server("-c", "20")
    held, refused = [], None
    try:
        for _ in range(25):
            c = _conn(srv.port)
            c.sock.settimeout(0.2)        # a refusal is written at once
            try:
                refused = (c, c.read_until(b"\r\n"))
                break
            except socket.timeout:
                c.sock.settimeout(5)
            assert c.call(b"version\r\n").startswith(b"VERSION ")
            held.append(c)
        assert refused is not None, "a 26th connection was never refused"
        c, answer = refused
        assert answer == b"ERROR Too many open connections\r\n"
        assert c.closed_by_peer()
        c.close()
        assert 18 <= len(held) <= 20, len(held)
        # the held ones still work, and the refusal was counted
        assert held[0].call(b"get x\r\n", b"END\r\n") == b"END\r\n"
        stats = held[0].call(b"stats\r\n", b"END\r\n")
        assert b"STAT rejected_connections 1\r\n" in stats
    finally:
        for c in held:
            c.close()
    deadline = time.time() + 5
    while True:                       # capacity comes back once closes are seen
        try:
            if _set_get_ok(srv.port):
                break
        except (ConnectionError, OSError):
            pass
        assert time.time() < deadline, "connections never freed after close"
        time.sleep(0.05)


def test_ten_thousand_connections(cache_server):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 10_000 + 500
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError):
            pytest.skip("cannot raise RLIMIT_NOFILE for the test process")
    srv = cache_server("-c", "12000", "-t", "2")
    socks = []
    try:
        for _ in range(10_000):
            socks.append(_conn(srv.port, timeout=10))
        for c in socks:
            c.send(b"get k\r\n")
        for c in socks:
            assert c.read_until(b"END\r\n") == b"END\r\n"
        assert _stat(srv, "curr_connections") >= 10_000
        assert _set_get_ok(srv.port)
    finally:
        for s in socks:
            s.close()
    deadline = time.time() + 10
    while time.time() < deadline and _stat(srv, "curr_connections") > 2:
        time.sleep(0.1)
    assert _stat(srv, "curr_connections") <= 2


def test_slow_client_does_not_block_others(cache_server):
    srv = cache_server("-t", "1")                  # same worker for everyone
    slow = _conn(srv.port, timeout=10)
    try:
        for b in b"set slow 0 0 3\r\nabc\r\n":
            slow.send(bytes([b]))
            t0 = time.time()
            assert _roundtrip(srv.port).startswith(b"VERSION ")
            assert time.time() - t0 < 1.0
            time.sleep(0.02)
        assert slow.read_until(b"\r\n") == b"STORED\r\n"
    finally:
        slow.close()


def test_endless_line_is_closed_and_others_served(cache_server):
    srv = cache_server()
    bad = _conn(srv.port)
    bad.send(b"x" * 8192)
    assert bad.closed_by_peer(timeout=5)
    bad.close()
    assert _set_get_ok(srv.port)


def test_huge_multiget_line_is_allowed(cache_server):
    srv = cache_server()
    keys = [f"key{i:05d}".encode() for i in range(3000)]      # ~27 KB line
    with _conn(srv.port) as c:
        assert c.call(b"set key00042 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert c.call(b"get " + b" ".join(keys) + b"\r\n", b"END\r\n") == \
            b"VALUE key00042 0 1\r\nx\r\nEND\r\n"


def test_deep_pipeline_answers_in_order(cache_server):
    srv = cache_server("-R", "4")                   # forces many yields
    n = 2000
    req = b"".join(b"set p%d 0 0 %d\r\n%d\r\nget p%d\r\n" % (i, len(str(i)), i, i) for i in range(n))
    want = b"".join(b"STORED\r\nVALUE p%d 0 %d\r\n%d\r\nEND\r\n" % (i, len(str(i)), i) for i in range(n))
    with _conn(srv.port, timeout=20) as c:
        c.send(req)
        got = c.read_exact(len(want))
    assert got == want
    assert _stat(srv, "conn_yields") > 0


def test_client_that_never_reads_is_bounded(cache_server):
    """A client pipelining gets of a large value without reading answers:
    the server stops parsing it (socket full) instead of buffering without
    bound, and keeps serving others."""
    srv = cache_server()
    value = os.urandom(100_000)
    with _conn(srv.port) as c:
        assert c.call(b"set big 0 0 %d\r\n" % len(value) + value + b"\r\n") == b"STORED\r\n"
    hog = socket.create_connection(("127.0.0.1", srv.port))
    hog.setblocking(False)
    sent = 0
    try:
        for _ in range(20000):
            try:
                sent += hog.send(b"get big\r\n" * 100)
            except BlockingIOError:
                break
        assert _set_get_ok(srv.port)
        rss = rss_kb(srv.proc.pid)
        assert rss < 400 * 1024 or os.environ.get("PINSTACK_SANITIZE"), rss
    finally:
        hog.close()
    assert _set_get_ok(srv.port)


def test_idle_timeout_closes_idle_connections(cache_server):
    srv = cache_server("-o", "idle_timeout=1")
    c = _conn(srv.port, timeout=10)
    assert c.call(b"version\r\n").startswith(b"VERSION ")
    t0 = time.time()
    assert c.closed_by_peer(timeout=6)           # closed by the server
    assert time.time() - t0 < 6
    c.close()
    assert _stat(srv, "idle_kicks") >= 1


def test_garbage_from_many_clients_keeps_server_alive(cache_server):
    srv = cache_server()
    rng = __import__("random").Random(7)
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 3000)))
            try:
                s.sendall(junk + b"\r\n")
                s.settimeout(0.2)
                s.recv(65536)
            except (socket.timeout, ConnectionResetError, BrokenPipeError):
                pass
    assert _set_get_ok(srv.port)


def test_vv_traces_commands_and_answers(cache_server):
    srv = cache_server("-vv")
    with _conn(srv.port) as c:
        assert c.call(b"set traced 0 0 1\r\nx\r\n") == b"STORED\r\n"
        assert c.call(b"delete nothing\r\n") == b"NOT_FOUND\r\n"
    deadline = time.time() + 5
    while "connection closed" not in srv.stderr_text() and time.time() < deadline:
        time.sleep(0.05)
    log = srv.stderr_text()
    assert "new client connection" in log
    assert "set traced 0 0 1" in log
    assert "STORED" in log and "NOT_FOUND" in log
    assert "connection closed." in log
