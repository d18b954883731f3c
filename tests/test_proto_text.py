"""The classic memcached text protocol, differentially: every script goes to
pinstack-cache and to memcached 1.6.18 started with the same arguments, and
the answers must be the same bytes (CAS values, versions and clock-dependent
fields normalised: see proto_util).

Each test covers one command family; its scripts run one after another on
the same pair of servers, each on a new connection after a flush_all.
"""

from __future__ import annotations

import time

from helpers import parse_stats
from proto_util import Close, Quiet, check_scripts, describe, run_script, same

K250 = b"k" * 250
K251 = b"k" * 251


def test_storage_commands(server_pair):
    check_scripts(server_pair, {
        "set then get": b"set a 0 0 1\r\nx\r\nget a\r\n",
        "set overwrites": b"set a 0 0 1\r\nx\r\nset a 0 0 3\r\nyyy\r\nget a\r\n",
        "set with flags": b"set a 123 0 2\r\nhi\r\nget a\r\n",
        "flags 2^32-1": b"set a 4294967295 0 1\r\nx\r\nget a\r\n",
        "flags wrap at 2^32 like memcached": b"set a 4294967296 0 1\r\nx\r\nget a\r\n",
        "zero-length value": b"set a 0 0 0\r\n\r\nget a\r\n",
        "binary value": b"set a 0 0 4\r\n\x00\r\n\xff\r\nget a\r\n",
        "value with CRLF inside": b"set a 0 0 5\r\nab\r\nc\r\nget a\r\n",
        "negative exptime expires at once": b"set a 0 -1 1\r\nx\r\nget a\r\n",
        "exptime in seconds": b"set a 0 100 1\r\nx\r\nget a\r\n",
        "exptime absolute in the past": b"set a 0 2592001 1\r\nx\r\nget a\r\n",
        "length with plus sign": b"set a 0 0 +1\r\nx\r\nget a\r\n",
        "length with leading zero": b"set a 0 0 01\r\nx\r\nget a\r\n",
        "length wraps at 2^32 like memcached": b"set a 0 0 4294967297\r\nx\r\nget a\r\n",
        "length with tab trailer": b"set a 0 0 1\tjunk\r\nx\r\nget a\r\n",
        "extra token ignored": b"set a 0 0 1 2\r\nx\r\nget a\r\n",
        "add new": b"add a 0 0 1\r\nx\r\nget a\r\n",
        "add existing": b"set a 0 0 1\r\nx\r\nadd a 0 0 1\r\ny\r\nget a\r\n",
        "replace missing": b"replace a 0 0 1\r\nx\r\nget a\r\n",
        "replace existing": b"set a 0 0 1\r\nx\r\nreplace a 5 0 1\r\ny\r\nget a\r\n",
        "append missing": b"append a 0 0 1\r\nx\r\n",
        "prepend missing": b"prepend a 0 0 1\r\nx\r\n",
        "append and prepend keep flags": (
            b"set a 5 0 1\r\nx\r\nappend a 9 0 2\r\nyz\r\nprepend a 7 0 2\r\nuv\r\nget a\r\n"),
        "cas missing": b"cas a 0 0 1 1\r\nx\r\n",
        "cas mismatch": b"set a 0 0 1\r\nx\r\ncas a 0 0 1 999999\r\ny\r\nget a\r\n",
        "cas match": [b"set a 0 0 1\r\nx\r\n", b"cas a 0 0 1 {cas:a}\r\ny\r\ngets a\r\n"],
        "cas match twice": [b"set a 0 0 1\r\nx\r\n",
                            b"cas a 0 0 1 {cas:a}\r\ny\r\ncas a 0 0 1 {cas:a}\r\nz\r\n"],
        "cas gets": b"set a 0 0 1\r\nx\r\nset b 0 0 1\r\ny\r\ngets a b a\r\n",
        "cas bad number": b"cas a 0 0 1 abc\r\nx\r\n",
        "cas negative": b"cas a 0 0 1 -1\r\nx\r\n",
        "cas too few tokens": b"cas a 0 0 1\r\nx\r\n",
        "set too few tokens": b"set a 0 0\r\n",
        "set too many tokens": b"set a 0 0 1 2 3\r\n",
        "add too few tokens": b"add a 0\r\n",
        "bad flags": b"set a abc 0 1\r\nx\r\n",
        "negative flags": b"set a -1 0 1\r\nx\r\n",
        "bad exptime": b"set a 0 abc 1\r\nx\r\n",
        "bad length": b"set a 0 0 1x\r\nx\r\n",
        "negative length": b"set a 0 0 -1\r\n",
        "huge length": b"set a 0 0 " + b"9" * 30 + b"\r\n",
        "length over INT_MAX-2": b"set a 0 0 2147483646\r\n",
        "key of 250 bytes": b"set " + K250 + b" 0 0 1\r\nx\r\nget " + K250 + b"\r\n",
        "key of 251 bytes": b"set " + K251 + b" 0 0 1\r\nx\r\n",
        "big value": b"set a 0 0 500000\r\n" + b"v" * 500000 + b"\r\nget a\r\n",
        "too large, value swallowed": (
            b"set a 0 0 1048577\r\n" + b"x" * 1048577 + b"\r\nget a\r\n"),
        "too large set drops the old value": (
            b"set a 0 0 1\r\nx\r\nset a 0 0 2000000\r\n" + b"x" * 2000000 + b"\r\nget a\r\n"),
        "too large add keeps the old value": (
            b"set a 0 0 1\r\nx\r\nadd a 0 0 1048577\r\n" + b"x" * 1048577 + b"\r\nget a\r\n"),
        "append beyond the size limit": (
            b"set a 0 0 600000\r\n" + b"y" * 600000 + b"\r\nappend a 0 0 600000\r\n"
            + b"z" * 600000 + b"\r\nmg a s\r\n"),
    })


def test_storage_noreply(server_pair):
    check_scripts(server_pair, {
        "set": b"set a 0 0 1 noreply\r\nx\r\nget a\r\n",
        "add": b"add a 0 0 1 noreply\r\nx\r\nadd a 0 0 1 noreply\r\ny\r\nget a\r\n",
        "replace": b"replace a 0 0 1 noreply\r\nx\r\nget a\r\n",
        "append/prepend": (b"set a 0 0 1\r\nx\r\nappend a 0 0 1 noreply\r\ny\r\n"
                           b"prepend a 0 0 1 noreply\r\nw\r\nget a\r\n"),
        "cas": b"cas a 0 0 1 1 noreply\r\nx\r\nset a 0 0 1\r\nx\r\ncas a 0 0 1 1 noreply\r\ny\r\n",
        "errors are silenced too": b"set a abc 0 1 noreply\r\nx\r\n",
        "noreply as the length": b"set a 0 0 noreply\r\n",
        "bad data chunk silenced": b"set a 0 0 1 noreply\r\nxyz\r\nget a\r\n",
        "too large silenced": b"set a 0 0 1048577 noreply\r\n" + b"x" * 1048577 + b"\r\n",
        "noreply does not leak to the next command": b"set a 0 0 1 noreply\r\nx\r\nversion\r\n",
    })


def test_get_family(server_pair):
    many = b" ".join(b"k%d" % i for i in range(60))
    check_scripts(server_pair, {
        "miss": b"get a\r\n",
        "hit and miss": b"set a 0 0 1\r\nx\r\nget b a c\r\n",
        "same key twice": b"set a 0 0 1\r\nx\r\nget a a\r\n",
        "gets": b"set a 7 0 2\r\nxy\r\ngets a b\r\n",
        "bget": b"set a 0 0 1\r\nx\r\nbget a\r\n",
        "extra spaces": b"set a 0 0 1\r\nx\r\nget   a    a   \r\n",
        "more keys than tokens": (
            b"set k7 0 0 1\r\nx\r\nset k59 0 0 2\r\nyy\r\nget " + many + b"\r\n"),
        "key with a tab is another key": b"set a 0 0 1\r\nx\r\nget a\t\r\n",
        "get without key": b"get\r\n",
        "get with only spaces": b"get \r\n",
        "gets without key": b"gets\r\n",
        "gat": b"set a 0 0 1\r\nx\r\ngat 100 a b\r\nmg a t\r\n",
        "gats": b"set a 0 0 1\r\nx\r\ngats 0 a\r\nmg a t\r\n",
        "gat without key": b"gat 0\r\n",
        "gat without anything": b"gat\r\n",
        "gat bad exptime": b"gat abc a\r\n",
        "gat negative exptime expires": b"set a 0 0 1\r\nx\r\ngat -1 a\r\nget a\r\n",
        "key of 251 bytes": b"get " + K251 + b"\r\n",
        # (memcached also drops the unsent answers of earlier commands of
        # the same read batch; we do not: see proto_text.c)
        "long key drops earlier values": [b"set a 0 0 1\r\nx\r\n", b"get a " + K251 + b" a\r\n"],
        "key of 250 bytes": b"get a a " + K250 + b"\r\n",
        "gat long key": b"gat 0 a " + K251 + b"\r\n",
        "uppercase is unknown": b"GET a\r\n",
        "get-like unknown": b"gett a\r\n",
    })


def test_delete(server_pair):
    check_scripts(server_pair, {
        "hit then miss": b"set a 0 0 1\r\nx\r\ndelete a\r\ndelete a\r\nget a\r\n",
        "legacy zero": b"set a 0 0 1\r\nx\r\ndelete a 0\r\nget a\r\n",
        "legacy nonzero": b"delete a 1\r\n",
        "noreply": b"set a 0 0 1\r\nx\r\ndelete a noreply\r\nget a\r\n",
        "zero and noreply": b"set a 0 0 1\r\nx\r\ndelete a 0 noreply\r\nget a\r\n",
        "usage error silenced by noreply": b"delete a 1 noreply\r\n",
        "zero zero": b"delete a 0 0\r\n",
        "noreply then zero": b"delete a noreply 0\r\n",
        "too many tokens": b"delete a 0 noreply x\r\n",
        "no key": b"delete\r\n",
        "long key": b"delete " + K251 + b"\r\n",
    })


def test_incr_decr(server_pair):
    check_scripts(server_pair, {
        "incr": b"set n 0 0 1\r\n5\r\nincr n 3\r\nget n\r\n",
        "decr pads in place": b"set n 0 0 2\r\n10\r\ndecr n 1\r\nget n\r\n",
        "decr floors at zero": b"set n 0 0 1\r\n5\r\ndecr n 10\r\n",
        "incr wraps": b"set n 0 0 20\r\n18446744073709551615\r\nincr n 1\r\n",
        "incr by 2^64-1": b"set n 0 0 1\r\n9\r\nincr n 18446744073709551615\r\n",
        "incr grows the value": b"set n 0 0 2\r\n99\r\nincr n 1\r\nget n\r\n",
        "leading space": b"set n 0 0 3\r\n 12\r\nincr n 1\r\n",
        "trailing space": b"set n 0 0 3\r\n12 \r\nincr n 1\r\n",
        "non-numeric": b"set n 0 0 1\r\nx\r\nincr n 1\r\n",
        "negative value": b"set n 0 0 2\r\n-1\r\nincr n 1\r\n",
        "value too long": b"set n 0 0 21\r\n184467440737095516151\r\nincr n 1\r\n",
        "miss": b"incr n 1\r\ndecr n 1\r\n",
        "bad delta": b"incr n abc\r\n",
        "negative delta": b"incr n -1\r\n",
        "delta overflow": b"incr n 18446744073709551616\r\n",
        "delta with plus": b"set n 0 0 1\r\n1\r\nincr n +2\r\n",
        "noreply": b"set n 0 0 1\r\n5\r\nincr n 2 noreply\r\ndecr n 1 noreply\r\nget n\r\n",
        "noreply silences errors": b"incr n abc noreply\r\nincr n noreply\r\n",
        "extra token": b"incr n 1 2\r\n",
        "too few tokens": b"incr n\r\ndecr\r\n",
        "long key": b"incr " + K251 + b" 1\r\n",
        "keeps flags": b"set n 42 0 1\r\n1\r\nincr n 1\r\nget n\r\n",
    })


def test_touch(server_pair):
    check_scripts(server_pair, {
        "hit": b"set a 0 0 1\r\nx\r\ntouch a 100\r\nmg a t v\r\n",
        "miss": b"touch a 0\r\n",
        "negative expires": b"set a 0 0 1\r\nx\r\ntouch a -1\r\nget a\r\n",
        "bad exptime": b"touch a abc\r\n",
        "noreply": b"set a 0 0 1\r\nx\r\ntouch a 10 noreply\r\ntouch b 10 noreply\r\n",
        "extra token": b"touch a 1 2\r\n",
        "too few tokens": b"touch a\r\ntouch\r\n",
        "long key": b"touch " + K251 + b" 1\r\n",
    })


def test_flush_all(server_pair):
    check_scripts(server_pair, {
        "flush": b"set a 0 0 1\r\nx\r\nflush_all\r\nget a\r\n",
        "flush 0": b"set a 0 0 1\r\nx\r\nflush_all 0\r\nget a\r\n",
        "set after flush survives": b"flush_all\r\nset a 0 0 1\r\nx\r\nget a\r\n",
        "delayed flush": b"set a 0 0 1\r\nx\r\nflush_all 100\r\nget a\r\n",
        "negative delay flushes now": b"set a 0 0 1\r\nx\r\nflush_all -1\r\nget a\r\n",
        "bad delay": b"flush_all abc\r\n",
        "noreply": b"set a 0 0 1\r\nx\r\nflush_all noreply\r\nget a\r\n",
        "delay and noreply": b"flush_all 0 noreply\r\n",
        "error silenced": b"flush_all abc noreply\r\n",
        "extra token": b"flush_all 0 0\r\n",
        "too many tokens": b"flush_all 0 0 0\r\n",
    })
    # the delayed flush above must not empty the cache later in this test
    check_scripts(server_pair, {"flush clears the delay": b"flush_all\r\n"})


def test_flush_all_disabled(make_server_pair):
    check_scripts(make_server_pair("-F"), {
        "refused": b"set a 0 0 1\r\nx\r\nflush_all\r\nget a\r\n",
        "refused even with noreply is silent": b"flush_all noreply\r\n",
    }, fresh=False)


def test_no_cas(make_server_pair):
    check_scripts(make_server_pair("-C"), {
        "gets shows cas 0": b"set a 0 0 1\r\nx\r\ngets a\r\n",
        "meta c shows 0": b"set a 0 0 1\r\nx\r\nmg a c\r\nms b 1 c\r\ny\r\n",
    }, fresh=False)


def test_misc_commands(server_pair):
    check_scripts(server_pair, {
        "version": b"version\r\n",
        "version ignores arguments": b"version extra\r\n",
        "verbosity": b"verbosity 1\r\nverbosity 0\r\n",
        "verbosity clamps": b"verbosity 5\r\nverbosity 0\r\n",
        "verbosity bad": b"verbosity abc\r\nverbosity -1\r\n",
        "verbosity noreply": b"verbosity 1 noreply\r\nverbosity 0 noreply\r\n",
        "verbosity extra token": b"verbosity 1 2\r\n",
        "verbosity too many tokens": b"verbosity 1 2 3\r\n",
        "verbosity without level": b"verbosity\r\n",
        "shutdown is disabled": b"shutdown\r\nshutdown graceful\r\n",
        "unknown command": b"foo\r\nfoo bar baz\r\n",
        "one-letter command": b"g\r\nm\r\n",
        "empty line": b"\r\n",
        "lone LF": b"\n",
        "CR CR LF": b"\r\r\n",
        "spaces only": b"   \r\n",
        "LF-terminated command": b"version\n",
        "tab is not a separator": b"version\t\r\nget\ta\r\n",
        "NUL ends the command": b"version\x00junk\r\nget a\x00b\r\n",
        "debug commands absent": b"misbehave\r\ndebugtime 1\r\n",
    })


def test_quit(server_pair):
    check_scripts(server_pair, {
        "quit closes, later commands ignored": Close(b"version\r\nquit\r\nversion\r\n"),
        "quit with argument": Close(b"quit now\r\n"),
    })


def test_http_request_closes(server_pair):
    check_scripts(server_pair, {
        "GET": Close(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        "last word decides": Close(b"foo bar HTTP/1.0\r\n"),
    })


def test_admin_commands(server_pair):
    check_scripts(server_pair, {
        "cache_memlimit": b"cache_memlimit 100\r\ncache_memlimit 64\r\n",
        "cache_memlimit too small": b"cache_memlimit 7\r\ncache_memlimit 0\r\n",
        "cache_memlimit wraps to 0": b"cache_memlimit 4294967296\r\n",
        "cache_memlimit in bytes": b"cache_memlimit 2000000000\r\n",
        "cache_memlimit bad": b"cache_memlimit abc\r\ncache_memlimit -1\r\n",
        "cache_memlimit noreply": b"cache_memlimit 64 noreply\r\n",
        "cache_memlimit tokens": b"cache_memlimit\r\ncache_memlimit 64 1 2\r\n",
        "slabs": b"slabs\r\nslabs foo\r\nslabs reassign\r\nslabs reassign 1\r\n",
        "slabs reassign same": b"slabs reassign 1 1\r\n",
        "slabs reassign bad class": b"slabs reassign 99 2\r\nslabs reassign 2 99\r\n",
        "slabs reassign bad number": b"slabs reassign a b\r\n",
        "slabs reassign noreply is a token too many": b"slabs reassign 1 2 noreply\r\n",
        "slabs automove": b"slabs automove 0\r\nslabs automove 2\r\nslabs automove 1\r\n",
        "slabs automove bad": b"slabs automove 3\r\nslabs automove abc\r\nslabs automove\r\n",
        "slabs automove noreply": b"slabs automove 1 noreply\r\n",
        "slabs automove ratio missing": b"slabs automove ratio\r\nslabs automove ratio abc\r\n",
        "lru_crawler": b"lru_crawler\r\nlru_crawler foo\r\nlru_crawler foo bar\r\n",
        "lru_crawler crawl bad class": (
            b"lru_crawler crawl 99\r\nlru_crawler crawl 0\r\nlru_crawler crawl abc\r\n"
            b"lru_crawler crawl 1,99\r\n"),
        "lru_crawler crawl without classes": b"lru_crawler crawl\r\n",
        "lru_crawler sleep": b"lru_crawler sleep 10\r\nlru_crawler sleep 100\r\n",
        "lru_crawler sleep bad": b"lru_crawler sleep abc\r\nlru_crawler sleep 2000000\r\n",
        "lru_crawler tocrawl": b"lru_crawler tocrawl 10\r\nlru_crawler tocrawl 0\r\n",
        "lru_crawler tocrawl bad": b"lru_crawler tocrawl -1\r\n",
        "lru_crawler enable when running": b"lru_crawler enable\r\n",
        "lru_crawler metadump bad class": b"lru_crawler metadump 99\r\n",
        "lru_crawler metadump without classes": b"lru_crawler metadump\r\n",
        "lru_crawler metadump after other answers": (
            b"set a 0 0 1\r\nx\r\nlru_crawler metadump all\r\n"),
        "lru": b"lru\r\nlru foo\r\nlru mode\r\nlru mode foo\r\n",
        "lru mode": b"lru mode flat\r\nlru mode segmented\r\n",
        "lru mode noreply": b"lru mode flat noreply\r\nlru mode segmented noreply\r\n",
        "lru temp_ttl": b"lru temp_ttl 10\r\nlru temp_ttl -1\r\nlru temp_ttl abc\r\n",
        "lru tune bad": (b"lru tune 50 50 0.1 2\r\nlru tune 10 10 0 2\r\nlru tune 10 10 x 2\r\n"
                         b"lru tune 10 10 0.1\r\n"),
    })


def test_lru_crawler_metadump(server_pair):
    check_scripts(server_pair, {
        "one item": [b"set some/key 0 0 3\r\nabc\r\n", Quiet(b"lru_crawler metadump all\r\n", 1.0)],
        "empty class list item": [b"set a 0 100 1\r\nx\r\n",
                                  Quiet(b"lru_crawler metadump 1\r\n", 1.0)],
    })


def test_pipelined_batch(server_pair):
    script = b"".join([
        b"set a 0 0 1\r\nx\r\n", b"set b 1 0 2\r\nyy\r\n", b"get a b c\r\n",
        b"incr a 1\r\n", b"append b 0 0 1\r\nz\r\n", b"gets b\r\n", b"delete a\r\n",
        b"get a\r\n", b"bogus\r\n", b"touch b 100\r\n", b"add b 0 0 1\r\nq\r\n",
        b"set c 0 0 1 noreply\r\n1\r\n", b"incr c 5\r\n", b"decr c 100\r\n",
        b"mg b v k f\r\n", b"ms d 2 T0\r\ndd\r\n", b"md d q\r\n", b"mg d\r\n",
        b"version\r\n", b"verbosity 0\r\n",
    ] * 3)
    check_scripts(server_pair, {"mixed pipeline": script})


def test_many_small_commands_in_one_send(server_pair):
    script = b"".join(b"set k%d 0 0 %d\r\n%s\r\n" % (i, len(str(i)), str(i).encode())
                      for i in range(300))
    script += b"get " + b" ".join(b"k%d" % i for i in range(0, 300, 7)) + b"\r\n"
    script += b"".join(b"incr k%d 1\r\n" % i for i in range(50))
    check_scripts(server_pair, {"300 sets, a multiget, 50 incrs": script})


# ---------------------------------------------------------------- stats


def _stat_subset(port: int, names: list[str]) -> dict[str, str]:
    raw = run_script(port, b"stats\r\n").output
    stats = parse_stats(raw)
    return {k: stats.get(k, "<missing>") for k in names}


# What the protocol counts or causes to be counted. Not compared:
# get_expired/get_flushed/curr_items, which depend on when each server's LRU
# maintainer reclaims dead items.
COUNTERS = [
    "cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "cmd_meta", "get_hits", "get_misses",
    "delete_misses", "delete_hits", "incr_misses", "incr_hits", "decr_misses",
    "decr_hits", "cas_misses", "cas_hits", "cas_badval", "touch_hits", "touch_misses",
    "store_too_large", "store_no_memory",
]


def test_stats_counters(server_pair):
    workload = [
        b"set a 0 0 1\r\nx\r\nset b 0 0 1\r\ny\r\nset bad 0 0 1\r\nxyz\r\n",
        b"get a b c\r\ngets a\r\nbget zz\r\n",
        b"gat 100 a zz\r\ngats 100 b\r\ntouch a 10\r\ntouch zz 10\r\n",
        b"set n 0 0 1\r\n1\r\nincr n 1\r\ndecr n 1\r\nincr zz 1\r\ndecr zz 1\r\n",
        b"delete a\r\ndelete a\r\n",
        b"cas zz 0 0 1 1\r\nx\r\ncas b 0 0 1 999999\r\nx\r\n",
        b"cas b 0 0 1 {cas:b}\r\nq\r\n",
        b"set e 0 -1 1\r\nx\r\nget e\r\n",
        b"set big 0 0 1048577\r\n" + b"x" * 1048577 + b"\r\n",
        b"mg b v\r\nmg zz v\r\nmg b T10\r\nme b\r\nme zz\r\nmn\r\n",
        b"ms m 1\r\nx\r\nmd m\r\nmd m\r\nma zz\r\nma zz N0\r\nma zz\r\nmd zz C1\r\n",
        b"flush_all\r\nget b\r\n",
    ]
    pair = server_pair
    ours = run_script(pair.ours.port, workload)
    theirs = run_script(pair.theirs.port, workload)
    assert same(ours, theirs), describe("workload", ours, theirs)
    assert _stat_subset(pair.ours.port, COUNTERS) == _stat_subset(pair.theirs.port, COUNTERS)


def test_stats_reset(server_pair):
    check_scripts(server_pair, {
        "reset": b"set a 0 0 1\r\nx\r\nget a\r\nget b\r\nstats reset\r\n",
        "reset ignores arguments": b"stats reset now\r\n",
    }, fresh=False)
    names = ["cmd_get", "get_hits", "get_misses", "cmd_flush"]
    ours = _stat_subset(server_pair.ours.port, names)
    assert ours == _stat_subset(server_pair.theirs.port, names)
    assert ours == {"cmd_get": "0", "get_hits": "0", "get_misses": "0", "cmd_flush": "0"}


def test_stats_subcommands(server_pair):
    check_scripts(server_pair, {
        "unknown": b"stats bogus\r\nstats a b c d e\r\n",
        "detail usage": b"stats detail\r\nstats detail xx\r\n",
        "cachedump errors": (b"stats cachedump\r\nstats cachedump 1\r\n"
                             b"stats cachedump a 0\r\nstats cachedump 64 0\r\n"),
        "sizes": b"stats sizes\r\n",
    })
    for group in (b"", b" settings", b" items", b" slabs", b" conns"):
        for pair_port in (server_pair.ours.port, server_pair.theirs.port):
            out = run_script(pair_port, b"set a 0 0 1\r\nx\r\nstats" + group + b"\r\n").output
            body = out[len(b"STORED\r\n"):-len(b"MN\r\n")]
            assert body.endswith(b"END\r\n"), (group, body[-200:])
            lines = body[:-len(b"END\r\n")].split(b"\r\n")[:-1]
            assert lines and all(line.startswith(b"STAT ") for line in lines), (group, body[:300])


def test_stats_detail(server_pair):
    check_scripts(server_pair, {
        "off by default: nothing recorded": b"set foo:1 0 0 1\r\nx\r\nstats detail dump\r\n",
        "recording": (b"stats detail on\r\nset foo:1 0 0 1\r\nx\r\nget foo:1 bar:2 baz\r\n"
                      b"delete foo:1\r\ndelete qux:1\r\ngets bar:3\r\nstats detail dump\r\n"),
        "many prefixes in memcached's order": (
            b"stats detail on\r\n"
            + b"".join(b"get p%d:x\r\n" % i for i in range(40))
            + b"set a:b:c 0 0 1\r\nx\r\nget :x\r\nstats detail dump\r\n"),
        "kept when turned off": b"stats detail off\r\nget foo:9\r\nstats detail dump\r\n",
        "stats reset clears it": b"stats reset\r\nstats detail dump\r\n",
        "extra argument ignored": b"stats detail on extra\r\nstats detail off\r\n",
    }, fresh=False)


def test_value_arrives_in_pieces(server_pair):
    """A value split across writes, with pauses: the answer waits for it."""
    for port_pair in ((server_pair.ours, server_pair.theirs),):
        results = []
        for server in port_pair:
            results.append(run_script(server.port, [
                Quiet(b"set a 0 0 10\r\n01234"),
                Quiet(b"567"),
                b"89\r\nget a\r\n",
            ]))
        assert same(*results), describe("pieces", *results)


def test_swallow_arrives_in_pieces(server_pair):
    big = b"x" * 1048577
    script = [Quiet(b"set a 0 0 1048577\r\n" + big[:1000], 0.5), Quiet(big[1000:500000]),
              big[500000:] + b"\r\nget a\r\n"]
    ours = run_script(server_pair.ours.port, script)
    theirs = run_script(server_pair.theirs.port, script)
    # memcached answers a refused set once the value is swallowed; we may
    # answer earlier: compare the whole conversation, not each step
    assert same(ours, theirs), describe("swallow", ours, theirs)


def test_expiry_over_time(server_pair):
    """An item with a 1 s TTL is gone 2.5 s later, on both."""
    for server in server_pair:
        run_script(server.port, b"set a 0 1 1\r\nx\r\n")
    time.sleep(2.5)
    check_scripts(server_pair, {"expired": b"get a\r\nmg a v\r\n"}, fresh=False)
