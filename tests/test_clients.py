"""Real clients against pinstack-cache: pymemcache, libmemcached's tools,
and twemproxy (nutcracker) routing over three servers."""

import os
import shutil
import subprocess
import time

import pytest
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient

from helpers import MemcacheConn, clean_env, free_port, wait_for_port


def _client(server, **kw):
    return Client(("127.0.0.1", server.port), connect_timeout=5, timeout=10, **kw)


def test_pymemcache_storage_commands_round_trip(cache_server):
    srv = cache_server()
    c = _client(srv)
    assert c.set("k1", b"v1", expire=0, noreply=False) is True
    assert c.get("k1") == b"v1"
    assert c.add("k1", b"x", noreply=False) is False
    assert c.add("k2", b"two", noreply=False) is True
    assert c.replace("k2", b"TWO", noreply=False) is True
    assert c.replace("nope", b"x", noreply=False) is False
    assert c.append("k2", b"-tail", noreply=False) is True
    assert c.prepend("k2", b"head-", noreply=False) is True
    assert c.get("k2") == b"head-TWO-tail"
    assert c.get_many(["k1", "k2", "missing"]) == {"k1": b"v1", "k2": b"head-TWO-tail"}
    assert c.delete("k1", noreply=False) is True
    assert c.delete("k1", noreply=False) is False
    assert c.get("k1") is None


def test_pymemcache_cas_and_counters(cache_server):
    c = _client(cache_server())
    c.set("n", b"10")
    assert c.incr("n", 5) == 15
    assert c.decr("n", 20) == 0
    assert c.incr("missing", 1) is None
    value, token = c.gets("n")
    assert value == b"0 "       # memcached pads an in-place decr with spaces
    assert c.cas("n", b"7", token, noreply=False) is True
    assert c.cas("n", b"8", token, noreply=False) is False
    assert c.get("n") == b"7"
    assert c.touch("n", expire=100, noreply=False) is True
    assert c.touch("gone", expire=100, noreply=False) is False


def test_pymemcache_binary_and_large_values(cache_server):
    c = _client(cache_server())
    every_byte = bytes(range(256)) * 4 + b"\r\n\r\nEND\r\n"
    c.set("bin", every_byte)
    assert c.get("bin") == every_byte
    big = os.urandom(900 * 1024)          # spans several slab chunks
    c.set("big", big)
    assert c.get("big") == big
    with pytest.raises(Exception):
        # over -I (1 MiB): the server refuses with SERVER_ERROR
        c.set("huge", b"x" * (2 * 1024 * 1024), noreply=False)
    assert c.get("big") == big            # the refusal lost nothing


def test_pymemcache_expiry(cache_server):
    c = _client(cache_server())
    c.set("short", b"x", expire=1)
    c.set("long", b"y", expire=100)
    assert c.get("short") == b"x"
    time.sleep(2.2)
    assert c.get("short") is None
    assert c.get("long") == b"y"


def test_pymemcache_stats_and_version(cache_server):
    srv = cache_server()
    c = _client(srv)
    c.set("a", b"1")
    c.get("a")
    c.get("b")
    stats = c.stats()
    assert stats[b"cmd_set"] == 1
    assert stats[b"get_hits"] == 1
    assert stats[b"get_misses"] == 1
    assert stats[b"curr_items"] == 1
    assert c.version().startswith(b"1.6")


def test_hashclient_spreads_keys_over_three_servers(cache_server):
    servers = [cache_server() for _ in range(3)]
    hc = HashClient([("127.0.0.1", s.port) for s in servers], connect_timeout=5, timeout=10)
    keys = {f"key:{i}": f"value:{i}".encode() for i in range(600)}
    for k, v in keys.items():
        assert hc.set(k, v, noreply=False)
    for k, v in keys.items():
        assert hc.get(k) == v
    counts = [int(s.stats()["curr_items"]) for s in servers]
    assert sum(counts) == len(keys)
    assert all(n > 50 for n in counts), counts


def test_memccapable_ascii_passes(cache_server):
    srv = cache_server()
    out = subprocess.run(["memccapable", "-a", "-h", "127.0.0.1", "-p", str(srv.port), "-t", "10"],
                         capture_output=True, text=True, timeout=120, env=clean_env())
    assert "All tests passed" in out.stdout, out.stdout + out.stderr
    assert "[FAIL]" not in out.stdout
    assert out.returncode == 0


def test_libmemcached_tools(cache_server, tmp_path):
    srv = cache_server()
    target = f"127.0.0.1:{srv.port}"
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"pinstack says hello\n" * 100)
    subprocess.run(["memccp", f"--servers={target}", str(payload)], check=True, timeout=30, env=clean_env())
    got = subprocess.run(["memccat", f"--servers={target}", "payload.bin"],
                         capture_output=True, check=True, timeout=30, env=clean_env())
    assert got.stdout == payload.read_bytes() + b"\n"     # memccat ends with a newline
    st = subprocess.run(["memcstat", f"--servers={target}"], capture_output=True, text=True,
                        check=True, timeout=30, env=clean_env())
    assert "curr_items: 1" in st.stdout
    assert "cmd_set: 1" in st.stdout


@pytest.mark.skipif(shutil.which("nutcracker") is None and not os.environ.get("CI"),
                    reason="nutcracker (twemproxy) not installed")
def test_twemproxy_routes_over_three_servers(cache_server, tmp_path):
    servers = [cache_server() for _ in range(3)]
    proxy_port = free_port()
    conf = tmp_path / "nutcracker.yml"
    conf.write_text(
        "pinstack:\n"
        f"  listen: 127.0.0.1:{proxy_port}\n"
        "  hash: md5\n"
        "  distribution: ketama\n"
        "  timeout: 2000\n"
        "  auto_eject_hosts: false\n"
        "  servers:\n"
        + "".join(f"   - 127.0.0.1:{s.port}:1\n" for s in servers)
    )
    proc = subprocess.Popen(["nutcracker", "-c", str(conf), "-s", str(free_port())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())
    try:
        wait_for_port(proxy_port, proc, timeout=10)
        pc = Client(("127.0.0.1", proxy_port), connect_timeout=5, timeout=10)
        keys = {f"user:{i}": f"profile-{i}".encode() for i in range(300)}
        for k, v in keys.items():
            assert pc.set(k, v, noreply=False)
        assert pc.get_many(list(keys)) == keys
        # every key lives on exactly one backend, and all three got some
        direct = [Client(("127.0.0.1", s.port)) for s in servers]
        owners = {k: [i for i, d in enumerate(direct) if d.get(k) is not None] for k in keys}
        assert all(len(o) == 1 for o in owners.values())
        per_server = [sum(1 for o in owners.values() if o == [i]) for i in range(3)]
        assert all(n > 30 for n in per_server), per_server
        assert pc.delete("user:7", noreply=False)
        assert all(d.get("user:7") is None for d in direct)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_raw_socket_tour(cache_server):
    """The README's two-minute tour, byte for byte."""
    srv = cache_server()
    with MemcacheConn(srv.port) as c:
        c.send(b"set k 0 0 5\r\nhello\r\nget k\r\n")
        c.expect(b"STORED\r\nVALUE k 0 5\r\nhello\r\nEND\r\n")
