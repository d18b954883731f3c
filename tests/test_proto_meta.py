"""The meta protocol (mg ms md ma mn me), differentially against memcached
1.6.18: same scripts to both servers, same answers expected (CAS values and
clock-dependent fields normalised: see proto_util).

Known, deliberate differences are not scripted here; they are listed in the
header comment of src/_core/cache/proto_meta.c (an autovivified base64 key
keeps its binary mark; ma T applies to the item holding the new value).
"""

from __future__ import annotations

from proto_util import Quiet, check_scripts

K250 = b"k" * 250
K251 = b"k" * 251
O32 = b"O" + b"x" * 31     # the longest opaque token accepted
O33 = b"O" + b"x" * 32


def test_mg(server_pair):
    check_scripts(server_pair, {
        "miss": b"mg a\r\nmg a v\r\n",
        "hit without flags": b"set a 0 0 1\r\nx\r\nmg a\r\n",
        "value": b"set a 0 0 3\r\nabc\r\nmg a v\r\n",
        "all return flags in request order": (
            b"set a 42 0 2\r\nxy\r\nmg a v c f t s k Oabc\r\nmg a Oabc k s t f c v\r\n"),
        "flags with ttl": b"set a 0 100 1\r\nx\r\nmg a t v\r\n",
        "no ttl is -1": b"set a 0 0 1\r\nx\r\nmg a t\r\n",
        "flag words: only the first byte counts": b"set a 0 0 1\r\nx\r\nmg a vv k1 s9\r\n",
        "miss returns opaque and key only": b"mg a v c f t s k O123\r\n",
        "empty opaque": b"mg a O\r\nset a 0 0 1\r\nx\r\nmg a O\r\n",
        "opaque of 32 bytes": b"mg a " + O32 + b"\r\nset a 0 0 1\r\nx\r\nmg a " + O32 + b"\r\n",
        "opaque too long, miss": b"mg a " + O33 + b"\r\n",
        "opaque too long, hit": b"set a 0 0 1\r\nx\r\nmg a v " + O33 + b"\r\n",
        "quiet miss is silent": b"mg a q v k O1\r\n",
        "quiet hit still answers": b"set a 0 0 1\r\nx\r\nmg a q\r\nmg a q v k O1\r\n",
        "h and l": b"set a 0 0 1\r\nx\r\nmg a h l\r\nmg a h l\r\n",
        "u leaves the item unfetched": b"set a 0 0 1\r\nx\r\nmg a u h\r\nmg a h\r\n",
        "T sets the ttl": b"set a 0 0 1\r\nx\r\nmg a T100 t\r\nmg a t\r\n",
        "t before T shows the old ttl": b"set a 0 0 1\r\nx\r\nmg a t T100 v\r\n",
        "T-1 expires": b"set a 0 0 1\r\nx\r\nmg a T-1\r\nmg a\r\n",
        "N autovivifies and wins": b"mg a N30 v t c\r\nmg a v t\r\nmg a\r\n",
        "N on a hit does nothing": b"set a 0 0 1\r\nx\r\nmg a N30 v t\r\n",
        "N then T": b"mg a N30 T10 t\r\n",
        "T then N": b"mg a T10 N30 t\r\n",
        "R wins below the threshold, once": (
            b"set a 0 100 1\r\nx\r\nmg a R30 v\r\nmg a R200 v\r\nmg a R200 v\r\nmg a v\r\n"),
        "R without ttl never wins": b"set a 0 0 1\r\nx\r\nmg a R200\r\n",
        "base64 key": b"set abc 0 0 2\r\nhi\r\nmg YWJj b v k\r\nmg YWJj k b\r\n",
        "base64 miss": b"mg YWJj b k\r\n",
        "key too long": b"mg " + K251 + b" v\r\n",
        "key of 250 bytes": b"set " + K250 + b" 0 0 1\r\nx\r\nmg " + K250 + b" v k\r\n",
        "base64 key too long before decoding": b"mg " + b"QUFB" * 63 + b" b\r\n",
        "no key": b"mg\r\nmg \r\n",
        "unknown flag": b"mg a a\r\nmg a 1\r\nmg a E5\r\nmg a x\r\nmg a S\r\n",
        "unknown flag after a bad token": b"mg a Tx a\r\n",
        "duplicate flag": b"mg a v v\r\nmg a t T1 t\r\n",
        "high byte flag": b"mg a \xff\r\n",
        "bad T": b"mg a Tabc\r\nmg a T\r\nmg a T1x\r\n",
        "bad N and R": b"mg a Nabc\r\nmg a N\r\nmg a Rabc\r\nmg a R\r\n",
        "T wraps like memcached": b"set a 0 0 1\r\nx\r\nmg a T4294967296 t\r\n",
        "too many tokens": b"mg a " + b"v " * 19 + b"\r\n",
        "17 flags are not too many": b"mg a " + b"s " * 17 + b"\r\n",
        "many more words than tokens": b"mg a " + b"v " * 40 + b"\r\n",
        "unused flags accepted": b"set a 0 0 1\r\nx\r\nmg a P L\r\n",
        "meta and classic see the same item": (
            b"ms a 2 F7 T0\r\nhi\r\nget a\r\ngets a\r\nmg a v f c\r\n"),
    })


def test_ms(server_pair):
    big = b"x" * 1048577
    check_scripts(server_pair, {
        "set": b"ms a 2\r\nhi\r\nmg a v\r\n",
        "flags, ttl, returns": b"ms a 2 F5 T100 c k O9\r\nhi\r\nmg a f t v\r\n",
        "return flags in request order": b"ms a 2 O9 k c\r\nhi\r\nms a 2 c O9 k\r\nhi\r\n",
        "quiet success is silent": b"ms a 2 q O1 k c\r\nhi\r\nmg a v\r\n",
        "zero length": b"ms a 0\r\n\r\nmg a v s\r\n",
        "mode E (add)": b"ms a 1 ME\r\nx\r\nms a 1 ME O9 k\r\ny\r\nmg a v\r\n",
        "mode A (append)": b"ms a 1\r\nx\r\nms a 1 MA\r\ny\r\nmg a v\r\n",
        "mode P (prepend)": b"ms a 1\r\nx\r\nms a 1 MP\r\ny\r\nmg a v\r\n",
        "mode R (replace)": b"ms a 1 MR\r\nx\r\nms a 1\r\nx\r\nms a 1 MR\r\ny\r\nmg a v\r\n",
        "mode S (set)": b"ms a 1 MS\r\nx\r\nmg a v\r\n",
        "append to a missing item": b"ms a 1 MA\r\nx\r\nms a 1 MP q\r\nx\r\n",
        "quiet failure still answers": b"ms a 1 MR q\r\nx\r\n",
        "invalid mode": b"ms a 1 MX\r\nx\r\nms a 1 M\r\nx\r\nms a 1 MEE\r\nx\r\n",
        "cas mismatch": b"ms a 1\r\nx\r\nms a 1 C999999\r\ny\r\nmg a v\r\n",
        "cas missing": b"ms a 1 C1\r\nx\r\n",
        "cas match": [b"ms a 1\r\nx\r\n", b"ms a 1 C{cas:a} c\r\ny\r\nmg a v c\r\n"],
        "cas with replace mode": [b"ms a 1\r\nx\r\n", b"ms a 1 MR C{cas:a}\r\ny\r\n"],
        "cas with append mode": [b"ms a 1\r\nx\r\n",
                                 b"ms a 1 MA C1\r\ny\r\nms a 1 MA C{cas:a}\r\nz\r\nmg a v\r\n"],
        "failure returns c0": b"ms a 1 C5 c\r\nx\r\n",
        "I without cas is a plain set": b"ms a 1 I\r\nx\r\nmg a v\r\n",
        "base64 key": b"ms YWJj 2 b k\r\nhi\r\nmg abc v k\r\nget abc\r\nme abc\r\n",
        "base64 key with junk bytes skipped": b"ms Y.W.J.j 1 b k\r\nx\r\n",
        "bad base64 key": b"ms a 2 b\r\nhi\r\nms abc 2 b\r\nhi\r\n",
        "flags wrap like memcached": b"ms a 1 F4294967296\r\nx\r\nmg a f\r\n",
        "bad flags keep the generic error": b"ms a 1 Fabc\r\nx\r\nms a 1 F-1\r\nx\r\n",
        "bad ttl": b"ms a 1 Tabc\r\nx\r\n",
        "bad cas": b"ms a 1 Cabc\r\nx\r\nms a 1 C-1\r\nx\r\n",
        "the last bad argument names the error": b"ms a 1 Fabc Tx\r\nx\r\nms a 1 Tx Fabc\r\nx\r\n",
        "unknown flag stops at once": (
            b"ms a 1 Tx Cx v v\r\nx\r\nms a 1 E5\r\nx\r\nms a 1 S1\r\nx\r\n"),
        "mode error wins over opaque error": b"ms a 1 MZ " + O33 + b"\r\nx\r\n",
        "opaque too long": b"ms a 1 " + O33 + b" k q\r\nx\r\n",
        "opaque of 32 bytes": b"ms a 1 " + O32 + b"\r\nx\r\n",
        "empty opaque": b"ms a 1 O\r\nx\r\n",
        "duplicate flag": b"ms a 1 T1 T2\r\nx\r\n",
        "no length": b"ms a\r\n",
        "bad length: value not swallowed": b"ms a b\r\nxx\r\n",
        "negative length": b"ms a -1\r\n",
        "length is not a flag": b"ms YW Jj 1 b\r\nx\r\n",
        "no key": b"ms\r\n",
        "key too long: value not swallowed": b"ms " + K251 + b" 1\r\nx\r\n",
        "too many tokens": b"ms a 1 " + b"c " * 18 + b"\r\n",
        "value longer than declared": b"ms a 1\r\nxx\r\n",
        "bad data chunk even in quiet mode": b"ms a 1 q\r\nxx\r\nmg a v\r\n",
        "too large": b"ms a 1048577\r\n" + big + b"\r\n",
        "too large, quiet": b"ms a 1048577 q O5 k c\r\n" + big + b"\r\n",
        "too large drops the old value whatever the mode": (
            b"set a 0 0 1\r\nx\r\nms a 1048577 MA\r\n" + big + b"\r\nget a\r\n"),
        "invalid mode keeps the old value": (
            b"set a 0 0 1\r\nx\r\nms a 1048577 Mx\r\n" + big + b"\r\nget a\r\n"),
        "negative ttl expires": b"ms a 1 T-1\r\nx\r\nmg a v\r\n",
    })


def test_md(server_pair):
    check_scripts(server_pair, {
        "hit, miss": b"ms a 1\r\nx\r\nmd a\r\nmd a\r\nmg a\r\n",
        "returns opaque and key": b"ms a 1\r\nx\r\nmd a O1 k\r\nmd a O1 k\r\n",
        "quiet hit is silent, miss is not": b"ms a 1\r\nx\r\nmd a q O1 k\r\nmd a q O1 k\r\n",
        "cas mismatch": b"ms a 1\r\nx\r\nmd a C999999 O1 k\r\nmg a v\r\n",
        "cas mismatch in quiet mode answers": b"ms a 1\r\nx\r\nmd a C1 q\r\n",
        "C0 is a compare": b"ms a 1\r\nx\r\nmd a C0\r\n",
        "cas match": [b"ms a 1\r\nx\r\n", b"md a C{cas:a}\r\nmg a\r\n"],
        "T without I deletes": b"ms a 1\r\nx\r\nmd a T30\r\nmg a v\r\n",
        "base64 key": b"ms abc 1\r\nx\r\nmd YWJj b k\r\nmg abc\r\n",
        "bad flags": b"md a a\r\nmd a v v\r\nmd a C\r\nmd a Cx\r\nmd a b\r\n",
        "unused flags accepted": b"md a v t\r\n",
        "opaque too long": b"md a " + O33 + b"\r\n",
        "key too long": b"md " + K251 + b"\r\n",
        "no key": b"md\r\n",
        "too many tokens": b"md a " + b"k " * 19 + b"\r\n",
    })


def test_ma(server_pair):
    check_scripts(server_pair, {
        "miss": b"ma a\r\nma a q\r\nma a O1 k\r\n",
        "incr by one": b"ms a 1\r\n5\r\nma a\r\nma a v\r\n",
        "delta and modes": (b"ms a 2\r\n10\r\nma a v D5\r\nma a v MD D3\r\nma a v M- D30\r\n"
                            b"ma a v M+\r\nma a v MI D10\r\nma a v M+ D18446744073709551615\r\n"),
        "decr pads like decr": b"ms a 2\r\n10\r\nma a MD\r\nmg a v\r\n",
        "return flags": b"ms a 1\r\n5\r\nma a v t c O1 k\r\nma a O1 k t c\r\n",
        "quiet hit is silent": b"ms a 1\r\n5\r\nma a q\r\nma a q v\r\nmg a v\r\n",
        "autovivify": b"ma a N0 J5\r\nma a v\r\nmg a v\r\n",
        "autovivify answers even in quiet mode": b"ma a N0 q\r\nma b N0 q v\r\n",
        "autovivify with value and flags": b"ma a N0 v O1 k t c\r\n",
        "autovivify with ttl": b"ma a N100 v t\r\n",
        "initial value 2^64-1": b"ma a N100 J18446744073709551615 v\r\nma a v\r\n",
        "J ignored on a hit": b"ms a 1\r\n5\r\nma a M+ J99 N0 v\r\n",
        "T on an in-place change": b"ms a 2\r\n19\r\nma a T100\r\nmg a t v\r\n",
        "T-1 expires": b"ms a 1\r\n5\r\nma a T-1\r\nmg a v\r\n",
        "wraps": b"ms a 20\r\n18446744073709551615\r\nma a v\r\nma a v MD D5\r\n",
        "non-numeric": b"ms a 3\r\nabc\r\nma a\r\nma a q\r\n",
        "cas mismatch": b"ms a 1\r\n5\r\nma a C1 O1 k\r\nma a C1 q\r\nmg a v\r\n",
        "C0 is no compare": b"ms a 1\r\n9\r\nma a C0 v\r\n",
        "cas match": [b"ms a 1\r\n5\r\n", b"ma a C{cas:a} v c\r\n"],
        "base64 key": b"ma YWJj b N0 k v\r\nma YWJj b k v\r\nmg abc v\r\n",
        "bad flags": (b"ma a Mx\r\nma a MII\r\nma a Dabc\r\nma a Jabc\r\nma a D-1\r\n"
                      b"ma a J18446744073709551616\r\nma a b\r\nma a v v\r\n"),
        "opaque too long": b"ma a " + O33 + b"\r\nms a 1\r\n1\r\nma a " + O33 + b"\r\nmg a v\r\n",
        "key too long": b"ma " + K251 + b"\r\n",
        "no key": b"ma\r\n",
        "too many tokens": b"ma a " + b"v " * 19 + b"\r\n",
    })


def test_mn_me(server_pair):
    check_scripts(server_pair, {
        "mn": b"mn\r\nmn extra\r\n",
        "me miss": b"me a\r\nme a extra\r\n",
        "me hit": b"set a 0 0 1\r\nx\r\nme a\r\nget a\r\nme a\r\n",
        "me with ttl": b"set a 0 100 1\r\nx\r\nme a\r\n",
        "me base64": b"set abc 0 0 1\r\nx\r\nme YWJj b\r\nme !!! b\r\nme zz b\r\n",
        "me binary key": b"ms YWJj 1 b\r\nx\r\nme abc\r\n",
        "me errors": b"me\r\nme " + K251 + b"\r\n",
        "unknown m commands": b"mx\r\nmgg a\r\nm\r\n",
    })


def test_stale_while_revalidate(server_pair):
    check_scripts(server_pair, {
        "invalidate, win, then Z": (
            b"ms a 1\r\nx\r\nmd a I T30\r\nmg a v c t\r\nmg a v c t\r\nmg a\r\n"),
        "invalidate quietly": b"ms a 1\r\nx\r\nmd a I q\r\nmd a I q\r\nmg a v\r\n",
        "invalidate a missing key": b"md a I\r\n",
        "a plain set clears staleness": b"ms a 1\r\nx\r\nmd a I\r\nms a 1 I\r\ny\r\nmg a v\r\n",
        "stale store needs an older cas": (
            b"ms a 1\r\nx\r\nmd a I\r\nmg a c\r\nms a 1 C999999 I\r\ny\r\nmg a v\r\n"),
        "stale store with an older cas keeps it stale": [
            b"ms a 1\r\nx\r\nmd a I\r\nmg a c\r\n",
            b"ms a 1 C{cas-1:a} I\r\ny\r\nmg a v c\r\nmg a v c\r\n"],
        "stale store on a fresh item marks it stale": [
            b"ms a 1\r\nx\r\n", b"ms a 1 C{cas-1:a} I\r\ny\r\nmg a v\r\n"],
        "stale store with C0 is refused": b"ms a 1\r\nx\r\nmd a I\r\nms a 1 I C0 q\r\ny\r\n",
        "stale store with the current cas is a normal cas": [
            b"ms a 1\r\nx\r\nmd a I\r\n", b"ms a 1 C{cas:a} I\r\ny\r\nmg a v\r\n"],
        "the winner refreshes": [
            b"ms a 1\r\nx\r\nmd a I\r\nmg a c v\r\n",
            b"ms a 1 C{cas:a}\r\ny\r\nmg a v\r\n"],
        "recache after invalidate": b"ms a 1 T100\r\nx\r\nmd a I\r\nmg a R200 v\r\nmg a R200 v\r\n",
        "vivify then fill": b"mg a N30 v c\r\nmg a N30 v\r\nms a 1\r\nx\r\nmg a v\r\n",
    })


def test_meta_pipelines(server_pair):
    script = b"".join([
        b"ms a 1 T0\r\n1\r\n", b"mg a v c k\r\n", b"ma a v\r\n", b"mg zz q k\r\n",
        b"mg a q v\r\n", b"md a q\r\n", b"mg a\r\n", b"ma a N0 J7 v\r\n",
        b"get a\r\n", b"ms b 3 MA\r\nxyz\r\n", b"mn\r\n", b"me zz\r\n",
    ] * 4)
    check_scripts(server_pair, {
        "mixed meta and text": script,
        "quiet pipeline ended by mn": (
            b"mg a q v\r\nmg b q v\r\nms c 1 q\r\nx\r\nmg c q v k\r\nmd c q\r\nmd c q\r\nmn\r\n"),
        "value split across writes": [Quiet(b"ms a 5 c\r\nab"), Quiet(b"c"), b"de\r\nmg a v\r\n"],
    })


def test_base64_decoding(server_pair):
    check_scripts(server_pair, {
        "valid forms": b"mg YQ== b k\r\nmg YWI= b k\r\nmg YWJj b k\r\n",
        "missing padding": b"mg YQ b k\r\nmg YQ= b k\r\n",
        "too much padding": b"mg Y=== b k\r\nmg ==== b k\r\n",
        "decoding stops at padding": b"mg YQ==YQ== b k\r\nmg Y=Q= b k\r\n",
        "bytes outside the alphabet skipped": b"mg Y-Q_=.= b k\r\nmg !!!! b k\r\n",
        "binary bytes round-trip": b"ms AP8NCiA= 1 b k\r\nx\r\nmg AP8NCiA= b k v\r\n",
    })
