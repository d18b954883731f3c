"""Malformed and hostile input, differentially against memcached 1.6.18
(memcached's t/malicious-commands.t in spirit): garbage, binary junk, keys
one byte too long, values longer or shorter than declared, absurd lengths,
lines that never end, and a seeded fuzz of mutated commands. The server
must answer exactly as memcached does, close exactly when memcached closes,
and go on serving.

Not covered: a first byte of 0x80 (memcached switches that connection to
its binary protocol, which pinstack-cache does not serve), and a value
length that is accepted but far too large to ever arrive (memcached answers
only once the whole value has been swallowed, pinstack-cache at once: the
bytes agree, the timing cannot be compared).
"""

from __future__ import annotations

import random

from proto_util import Close, Quiet, check_scripts, describe, run_script, same

K251 = b"k" * 251


def test_garbage_lines(server_pair):
    check_scripts(server_pair, {
        "words": b"hello world\r\nfoo\r\n12345\r\n",
        "punctuation": b"!@#$%^&*()\r\n--\r\n::\r\n",
        "control bytes": b"\x01\x02\x03\x04\r\n\x1b[0m\r\n\x7f\x7f\r\n",
        "high bytes": b"\xff\xfe\xfd\r\n\xc3\xa9t\xc3\xa9\r\n",
        "NUL first": b"\x00version\r\n",
        "NUL after a command": b"version\x00\x00\r\nmg\x00a v\r\n",
        "CR in the middle": b"ver\rsion\r\nget a\rb\r\n",
        "only CRs": b"\r\r\r\n",
        "blank lines": b"\r\n\r\n\n\n",
        "leading spaces": b"   version\r\n  get a\r\n",
        "a token of every byte": bytes(range(1, 10)) + bytes(range(11, 128)) + b"\r\n",
        "binary junk lines": bytes((i * 37 + 11) % 255 + 1 for i in range(500)).replace(
            b"\n", b"") + b"\r\n",
    })


def test_keys_of_251_bytes(server_pair):
    cmds = [
        b"set %s 0 0 1\r\nx\r\n", b"add %s 0 0 1\r\nx\r\n", b"replace %s 0 0 1\r\nx\r\n",
        b"append %s 0 0 1\r\nx\r\n", b"prepend %s 0 0 1\r\nx\r\n", b"cas %s 0 0 1 1\r\nx\r\n",
        b"get %s\r\n", b"gets %s\r\n", b"gat 0 %s\r\n", b"gats 0 %s\r\n", b"bget %s\r\n",
        b"delete %s\r\n", b"incr %s 1\r\n", b"decr %s 1\r\n", b"touch %s 1\r\n",
        b"mg %s v\r\n", b"ms %s 1\r\nx\r\n", b"md %s\r\n", b"ma %s\r\n", b"me %s\r\n",
        b"set %s 0 0 1 noreply\r\nx\r\n", b"delete %s noreply\r\n", b"incr %s 1 noreply\r\n",
    ]
    check_scripts(server_pair, {repr(c): c % K251 for c in cmds}, fresh=False)


def test_keys_with_odd_bytes(server_pair):
    check_scripts(server_pair, {
        "control bytes in a key": b"set a\x01b 0 0 1\r\nx\r\nget a\x01b\r\nmg a\x01b v k\r\n",
        "utf-8 key": b"set \xc3\xa9t\xc3\xa9 0 0 1\r\nx\r\nget \xc3\xa9t\xc3\xa9\r\n",
        "key with a CR": b"set a\rb 0 0 1\r\nx\r\nget a\rb\r\n",
        "key with a tab": b"set a\tb 0 0 1\r\nx\r\nget a\tb\r\nget a\r\n",
    })


def test_values_of_the_wrong_length(server_pair):
    check_scripts(server_pair, {
        "longer than declared": b"set a 0 0 2\r\nabcdef\r\nget a\r\n",
        "longer by one": b"set a 0 0 2\r\nabc\r\nget a\r\n",
        "no CRLF after the value": b"set a 0 0 2\r\nab\n\r\nget a\r\n",
        "CR CR LF after the value": b"set a 0 0 2\r\nab\r\r\n",
        "LF-only command line": b"set a 0 0 2\nab\r\nget a\r\n",
        "shorter: the next command becomes value": b"set a 0 0 10\r\nabc\r\nget a\r\nget a\r\n",
        "shorter: broken chunk": b"set a 0 0 5\r\nab\r\nxyz\r\n",
        "zero declared, data given": b"set a 0 0 0\r\nxyz\r\nget a\r\n",
        "ms longer than declared": b"ms a 1\r\nxx\r\nmg a v\r\n",
        "ms shorter than declared": b"ms a 9\r\nabc\r\nmg a\r\nmg a v\r\n",
        "cas longer than declared": b"set a 0 0 1\r\nx\r\ncas a 0 0 1 1\r\nxy\r\n",
        "value arrives late": [Quiet(b"set a 0 0 4\r\nab"), b"cd\r\nget a\r\n"],
        "value arrives late and wrong": [Quiet(b"set a 0 0 4\r\nab"), b"cdef\r\nget a\r\n"],
    })


def test_bad_lengths(server_pair):
    lengths = [b"-1", b"-100", b"-2147483648", b"2147483646", b"2147483647", b"4294967295",
               b"9223372036854775807", b"9223372036854775808", b"18446744073709551616",
               b"99999999999999999999999", b"0x10", b"1e3", b"+-1", b"--1", b"1.5", b"",
               b"abc", b"1abc"]
    scripts = {}
    for n in lengths:
        scripts[b"set " + n] = b"set a 0 0 " + n + b"\r\n"
        scripts[b"ms " + n] = b"ms a " + n + b"\r\n"
    scripts["lengths that wrap to small values"] = (
        b"set a 0 0 4294967297\r\nx\r\nget a\r\nms b 4294967298 T0\r\nxy\r\nmg b v\r\n")
    check_scripts(server_pair, {str(k): v for k, v in scripts.items()})


def test_bad_numbers_everywhere(server_pair):
    numbers = [b"-1", b"+1", b"01", b"1x", b"x", b"4294967296", b"18446744073709551615",
               b"18446744073709551616", b"-0", b"\t5", b"5\t", b"5\tx", b"\x0b7"]
    scripts = {}
    for n in numbers:
        scripts[b"numbers " + n] = b"".join([
            b"set a " + n + b" 0 1\r\nx\r\n", b"set b 0 " + n + b" 1\r\nx\r\n",
            b"set n 0 0 1\r\n5\r\nincr n " + n + b"\r\ndecr n " + n + b"\r\n",
            b"touch n " + n + b"\r\ngat " + n + b" n\r\n",
            b"mg n T" + n + b" t\r\nma n D" + n + b" v\r\nma m N" + n + b" J" + n + b" v t\r\n",
            b"ms c 1 F" + n + b" c\r\nx\r\nmd n C" + n + b"\r\n",
            b"verbosity " + n + b"\r\nflush_all " + n + b" noreply\r\nflush_all\r\n",
        ])
    check_scripts(server_pair, {k.decode("latin-1"): v for k, v in scripts.items()})


def test_line_without_end_closes(server_pair):
    check_scripts(server_pair, {
        "2049 bytes of junk": Close(b"x" * 2049),
        "long junk in pieces": [Quiet(b"y" * 1500), Close(b"y" * 1500)],
        "a set line that never ends": Close(b"set " + b"k" * 3000),
        "101 spaces then get": Close(b" " * 101 + b"get " + b"k " * 1500),
    })
    check_scripts(server_pair, {"still serving": b"version\r\n"})


def test_long_lines(server_pair):
    keys = b" ".join(b"key%d" % i for i in range(4000))
    check_scripts(server_pair, {
        "2048 bytes then the end": [Quiet(b"x" * 2048), b"\r\n"],
        "a long line that does end": b"x" * 3000 + b"\r\n",
        "huge multiget": b"set key17 0 0 1\r\nx\r\nget " + keys + b"\r\n",
        "multiget longer than 2048 before its end": [
            Quiet(b"get " + b"k " * 1500), b"\r\n"],
        "gets longer than 2048 before its end": [
            Quiet(b"gets " + b"k " * 1500), b"\r\n"],
        "a few leading spaces before get": [Quiet(b"  get " + b"k " * 1500), b"\r\n"],
    })


# ---------------------------------------------------------------- fuzz

# Commands whose answers depend only on the protocol and the stored items
# (no stats output, no admin side effects).
_COMMANDS = [b"get", b"gets", b"gat", b"gats", b"bget", b"touch", b"delete", b"incr",
             b"decr", b"mg", b"md", b"ma", b"me", b"mn", b"version", b"verbosity",
             b"m", b"g", b"gett", b"ms"]
_KEYS = [b"a", b"b", b"n", b"zz", b"YWJj", b"k" * 250, b"k" * 251, b"a:b", b"\xff", b"-"]
# No small positive numbers: as TTLs they would expire between the two
# servers' runs of a line (their clocks tick independently).
_NUMBERS = [b"0", b"7000", b"-1", b"500", b"100000", b"4294967296", b"18446744073709551615",
            b"18446744073709551616", b"abc", b"+300", b"", b"\t"]
_FLAGS = b"bcfhklOqstuvENRTCDJIMPLFSxaz0\xff"
_MODES = [b"I", b"D", b"+", b"-", b"E", b"A", b"P", b"R", b"S", b"X", b"", b"II"]


def _fuzz_line(rng: random.Random) -> bytes:
    words = [rng.choice(_COMMANDS)]
    for _ in range(rng.randint(0, 7)):
        kind = rng.random()
        if kind < 0.35:
            words.append(rng.choice(_KEYS))
        elif kind < 0.6:
            words.append(rng.choice(_NUMBERS))
        elif kind < 0.9:
            flag = bytes([rng.choice(_FLAGS)])
            arg = rng.choice(_MODES) if flag == b"M" else rng.choice(_NUMBERS + [b"", b"x" * 40])
            words.append(flag + arg)
        else:
            words.append(bytes(rng.randint(1, 255) for _ in range(rng.randint(1, 6))).replace(
                b"\n", b"").replace(b" ", b"") or b"?")
    sep = rng.choice([b" ", b" ", b" ", b"  "])
    line = sep.join(words)
    if words[0] == b"ms":
        # ms needs its value: a valid key and length, then a 1-byte value
        return b"ms " + rng.choice(_KEYS[:5]) + b" 1 " + b" ".join(words[1:]) + b"\r\nx"
    return line


def test_fuzzed_commands(server_pair):
    rng = random.Random(20240601)
    setup = (b"set a 0 0 1\r\nx\r\nset b 5 0 3\r\nabc\r\nset n 0 0 2\r\n10\r\n"
             b"set abc 0 0 1\r\ny\r\n")
    for server in server_pair:
        run_script(server.port, setup)
    problems = []
    for i in range(400):
        line = _fuzz_line(rng)
        step = line + b"\r\n"
        ours = run_script(server_pair.ours.port, step)
        theirs = run_script(server_pair.theirs.port, step)
        if not same(ours, theirs):
            problems.append(describe(f"#{i} {line[:120]!r}", ours, theirs))
    assert not problems, f"{len(problems)} fuzzed lines differ:\n" + "\n".join(problems[:20])
