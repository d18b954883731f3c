"""Differential protocol scripts: the same bytes to pinstack-cache and to
memcached, and a comparison of what comes back.

A *script* is a list of steps, each sent on one connection in order:

    b"set a 0 0 1\\r\\nx\\r\\n"      a step: sent with "mn\\r\\n" appended, and
                                  read until the "MN\\r\\n" that answers it
                                  (fast and exact: no waiting for silence);
                                  mn commands inside the step are counted, so
                                  a step may test mn itself (but no value in
                                  a step may hold a line "mn" or end "MN")
    Quiet(b"...")                 sent as is; read until the server is quiet
                                  (for a step the server must not answer yet)
    Close(b"...")                 sent as is; read until the server hangs up

A plain bytes script is one step. Inside a step, "{cas:KEY}" (also
"{cas-1:KEY}", "{cas+1:KEY}") is replaced, just before sending, by the CAS
that this server holds for KEY (read with "me KEY" on a side connection),
so CAS flows work without assuming both servers number CAS alike.

What necessarily differs between two servers is normalised before the
comparison (normalise()):
  - the version string;
  - CAS values: renamed by order of first appearance (#1, #2...), so the
    comparison checks which answers share a CAS, not the numbers;
  - "me" and metadump fields that describe memory layout or wall-clock time
    (la, size, cls), and TTLs, expiry times and mg's l (seconds since last
    access): compared with a tolerance of one second (the two servers'
    clocks tick independently).
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field
from typing import Union

from helpers import HOST

SENTINEL = b"mn\r\n"
SENTINEL_ANSWER = b"MN\r\n"


@dataclass(frozen=True)
class Quiet:
    """A step the server answers partially or not at all (yet)."""

    data: bytes
    quiet: float = 0.3


@dataclass(frozen=True)
class Close:
    """A step after which the server must close the connection."""

    data: bytes


Step = Union[bytes, Quiet, Close]


@dataclass
class Transcript:
    output: bytes = b""
    closed: bool = False
    steps: list[bytes] = field(default_factory=list)


_TEMPLATE = re.compile(rb"\{cas([+-]1)?:([^}]+)\}")
_ME_CAS = re.compile(rb" cas=(\d+) ")


def _recv_until(sock: socket.socket, want_end: bytes | None, deadline: float,
                quiet: float | None, count: int = 1) -> tuple[bytes, bool]:
    """Read until the data holds `count` times want_end and ends with it, the
    peer closes, or (with quiet) nothing arrives for `quiet` seconds.
    Returns (data, closed)."""
    data = b""
    while True:
        if want_end is not None and data.endswith(want_end) and data.count(want_end) >= count:
            return data, False
        left = deadline - time.monotonic()
        if left <= 0:
            if quiet is not None:
                return data, False
            raise TimeoutError(f"no {want_end!r} in time; got {data[-300:]!r}")
        sock.settimeout(min(left, quiet) if quiet is not None else left)
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            if quiet is not None:
                return data, False
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def _cas_of(port: int, key: bytes) -> int:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(b"me " + key + b"\r\n")
        out, _ = _recv_until(s, b"\r\n", time.monotonic() + 5, None)
    m = _ME_CAS.search(out)
    if not m:
        raise AssertionError(f"cannot read the CAS of {key!r}: {out!r}")
    return int(m.group(1))


def _is_mn(line: bytes) -> bool:
    """Is this request line an mn command (answered "MN")?"""
    line = line.split(b"\x00", 1)[0].rstrip(b"\r").lstrip(b" ")
    return line.split(b" ", 1)[0] == b"mn"


def _resolve(port: int, data: bytes) -> bytes:
    def sub(m: re.Match) -> bytes:
        cas = _cas_of(port, m.group(2))
        if m.group(1):
            cas += int(m.group(1))
        return str(cas).encode()

    return _TEMPLATE.sub(sub, data)


def run_script(port: int, script: bytes | list[Step], timeout: float = 10.0) -> Transcript:
    """Run a script on one new connection; see the module docstring."""
    steps = [script] if isinstance(script, (bytes, Quiet, Close)) else list(script)
    t = Transcript()
    deadline = time.monotonic() + timeout
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        for step in steps:
            if isinstance(step, Quiet):
                sock.sendall(_resolve(port, step.data))
                out, closed = _recv_until(sock, None, deadline, step.quiet)
            elif isinstance(step, Close):
                sock.sendall(_resolve(port, step.data))
                out, closed = _recv_until(sock, None, deadline, None)
            else:
                data = _resolve(port, step)
                mn_lines = sum(1 for line in data.split(b"\n") if _is_mn(line))
                sock.sendall(data + SENTINEL)
                out, closed = _recv_until(sock, SENTINEL_ANSWER, deadline, None, 1 + mn_lines)
            t.output += out
            t.steps.append(out)
            if closed:
                t.closed = True
                break
    return t


# ---------------------------------------------------------------- normalise

_VERSION = re.compile(rb"(?m)^VERSION [^\r\n]*")
_GETS = re.compile(rb"(?m)^(VALUE \S+ \d+ \d+) (\d+)\r\n")
_META = re.compile(rb"(?m)^(VA \d+|HD|EN|NS|EX|NF)((?: [^\r\n]*)?)\r\n")
_ME = re.compile(
    rb"(?m)^ME (\S+) exp=(-?\d+) la=\d+ cas=(\d+) fetch=(yes|no) cls=\d+ size=\d+\r\n")
_DUMP = re.compile(
    rb"(?m)^key=(\S+) exp=(-?\d+) la=\d+ cas=(\d+) fetch=(yes|no) cls=\d+ size=\d+\n")
_STAT_VERSION = re.compile(rb"(?m)^STAT version [^\r\n]*")


class _Norm:
    def __init__(self) -> None:
        self.cas_ids: dict[bytes, int] = {}
        self.times: list[int] = []

    def cas(self, value: bytes) -> bytes:
        if value == b"0":
            return b"0"  # no CAS at all (-C): keep it visible
        n = self.cas_ids.setdefault(value, len(self.cas_ids) + 1)
        return b"#%d" % n

    def time(self, value: bytes) -> bytes:
        n = int(value)
        if n == -1:
            return b"-1"
        self.times.append(n)
        return b"<t>"


def normalise(out: bytes) -> tuple[bytes, list[int]]:
    """(normalised bytes, TTL-like numbers to compare with tolerance)."""
    n = _Norm()
    out = _VERSION.sub(b"VERSION <v>", out)
    out = _STAT_VERSION.sub(b"STAT version <v>", out)
    out = _GETS.sub(lambda m: m.group(1) + b" " + n.cas(m.group(2)) + b"\r\n", out)

    def meta(m: re.Match) -> bytes:
        words = m.group(2).split(b" ")
        for i, w in enumerate(words):
            if len(w) > 1 and w[:1] == b"c" and w[1:].isdigit():
                words[i] = b"c" + n.cas(w[1:])
            elif len(w) > 1 and w[:1] in (b"t", b"l") and re.fullmatch(rb"-?\d+", w[1:]):
                words[i] = w[:1] + n.time(w[1:])  # TTL / seconds since last access
        return m.group(1) + b" ".join(words) + b"\r\n"

    out = _META.sub(meta, out)
    out = _ME.sub(lambda m: b"ME " + m.group(1) + b" exp=" + n.time(m.group(2))
                  + b" cas=" + n.cas(m.group(3)) + b" fetch=" + m.group(4) + b"\r\n", out)
    out = _DUMP.sub(lambda m: b"key=" + m.group(1) + b" exp=" + n.time(m.group(2))
                    + b" cas=" + n.cas(m.group(3)) + b" fetch=" + m.group(4) + b"\n", out)
    return out, n.times


def same(ours: Transcript, theirs: Transcript) -> bool:
    a, ta = normalise(ours.output)
    b, tb = normalise(theirs.output)
    if a != b or ours.closed != theirs.closed or len(ta) != len(tb):
        return False
    return all(abs(x - y) <= 1 for x, y in zip(ta, tb))


def describe(name: str, ours: Transcript, theirs: Transcript) -> str:
    return (f"--- {name}\n    ours   (closed={ours.closed}): {ours.output[:600]!r}\n"
            f"    theirs (closed={theirs.closed}): {theirs.output[:600]!r}")


def flush(port: int) -> None:
    """Empty a server between scripts (on its own connection)."""
    run_script(port, b"flush_all\r\n")


def check_scripts(pair, scripts: dict[str, bytes | list[Step]], fresh: bool = True) -> None:
    """Run each script against both servers (flushing both first unless
    fresh=False) and fail listing every script whose answers differ."""
    problems = []
    for name, script in scripts.items():
        if fresh:
            flush(pair.ours.port)
            flush(pair.theirs.port)
        ours = run_script(pair.ours.port, script)
        theirs = run_script(pair.theirs.port, script)
        if not same(ours, theirs):
            problems.append(describe(name, ours, theirs))
    assert not problems, (f"{len(problems)} of {len(scripts)} scripts differ:\n"
                          + "\n".join(problems))
