"""Memory pressure: writing far more than -m keeps the server serving with
evictions, resident memory stays bounded, and a shift in value sizes moves
slab pages between classes."""

import os
import time

import pytest

from helpers import MemcacheConn, rss_kb

SANITIZED = bool(os.environ.get("PINSTACK_SANITIZE"))


def _fill(port, prefix, count, size, batch=200):
    """Pipelined noreply sets, then one acknowledged set as a barrier."""
    value = b"v" * size
    with MemcacheConn(port, timeout=30) as c:
        for start in range(0, count, batch):
            c.send(b"".join(
                b"set %s%d 0 0 %d noreply\r\n%s\r\n" % (prefix, i, size, value)
                for i in range(start, min(start + batch, count))))
        assert c.call(b"set barrier 0 0 1\r\nb\r\n") == b"STORED\r\n"


def _get(port, key):
    with MemcacheConn(port, timeout=10) as c:
        return c.call(b"get " + key + b"\r\n", b"END\r\n")


def _stats(srv, group=""):
    return {k: int(v) if v.lstrip("-").isdigit() else v for k, v in srv.stats(group).items()}


def test_ten_times_memory_limit_evicts_and_stays_bounded(cache_server):
    mb = 16
    srv = cache_server("-m", str(mb), "-t", "2")
    size = 4000
    count = (10 * mb * 1024 * 1024) // size
    _fill(srv.port, b"fill", count, size)
    st = _stats(srv)
    assert st["evictions"] > 0
    assert st["limit_maxbytes"] == mb * 1024 * 1024
    assert st["bytes"] <= mb * 1024 * 1024
    # the newest items are there, the oldest were evicted
    assert _get(srv.port, b"fill%d" % (count - 1)).startswith(b"VALUE ")
    assert _get(srv.port, b"fill0") == b"END\r\n"
    if not SANITIZED:
        # interpreter (~15 MiB) + hash table + buffers over the slab limit
        assert rss_kb(srv.proc.pid) < (mb + 48) * 1024, rss_kb(srv.proc.pid)


def test_memory_limit_holds_with_mixed_sizes(make_server_pair):
    """Five value sizes, three times -m of each. Like memcached, a class with
    no page gets its first page even over the limit (so that every size can
    be stored); beyond that the limit holds. memcached is the yardstick."""
    mb = 8
    pair = make_server_pair("-m", str(mb))
    for srv in pair:
        for size in (100, 1000, 20_000, 200_000, 700_000):
            _fill(srv.port, b"s%d_" % size, max(20, (3 * mb * 1024 * 1024) // size), size, batch=10)
    ours, theirs = (_stats(s, "slabs")["total_malloced"] for s in pair)
    assert ours <= theirs + 1024 * 1024, (ours, theirs)
    assert _stats(pair.ours)["evictions"] > 0
    assert _get(pair.ours.port, b"barrier").startswith(b"VALUE barrier")


def test_explicit_slabs_reassign_moves_a_page(cache_server):
    srv = cache_server("-m", "16", "-o", "slab_automove=0")
    _fill(srv.port, b"small", 20000, 100)
    slabs = _stats(srv, "slabs")
    small_cls = max((int(k.split(":")[0]) for k in slabs if k.split(":")[0].isdigit()
                     and k.endswith(":total_pages")),
                    key=lambda c: slabs[f"{c}:total_pages"])
    pages_before = slabs[f"{small_cls}:total_pages"]
    assert pages_before >= 2
    target = small_cls + 5
    with MemcacheConn(srv.port) as c:
        assert c.call(b"slabs reassign %d %d\r\n" % (small_cls, target)) == b"OK\r\n"
    deadline = time.time() + 15
    while time.time() < deadline:
        if _stats(srv)["slabs_moved"] >= 1:
            break
        time.sleep(0.1)
    assert _stats(srv)["slabs_moved"] >= 1
    slabs = _stats(srv, "slabs")
    assert slabs[f"{small_cls}:total_pages"] == pages_before - 1
    assert _get(srv.port, b"barrier").startswith(b"VALUE barrier")


@pytest.mark.slow
def test_size_shift_moves_pages_automatically(cache_server):
    mb = 16
    srv = cache_server("-m", str(mb), "-o", "slab_automove=1,slab_automove_window=3")
    _fill(srv.port, b"small", (mb * 1024 * 1024 * 2) // 100, 100)       # all memory to small items
    moved = 0
    deadline = time.time() + 60
    round_no = 0
    while time.time() < deadline:
        _fill(srv.port, b"large%d_" % round_no, 200, 20_000, batch=20)  # now large values
        round_no += 1
        moved = _stats(srv)["slabs_moved"]
        if moved >= 3:
            break
        time.sleep(0.5)
    assert moved >= 3, "automove did not move pages toward the large class"
    # the large class now holds a useful number of items
    assert _get(srv.port, b"large%d_199" % (round_no - 1)).startswith(b"VALUE ")
