"""Durability of pinstack-leaf: a real `pinstack-leaf serve` process is
killed with SIGKILL while clients write to it, its files are damaged, and
after every restart the index must hold exactly what was acknowledged.

    kill rounds      writer threads POST batches (updates of a fixed key set
                     with increasing versions, and deletes); the leaf runs
                     with 200-document segments and merge factor 2, so that
                     flushes and compactions never stop; SIGKILL lands at a
                     random moment, or just after /admin/flush or
                     /admin/compact was sent. Restart on the same data
                     directory, check, next round (the state accumulates).
    damaged segment  a byte flipped in, or the end cut off, a segment file
                     the manifest names: the leaf reports it (engine
                     rebuild_reason, its log) and rebuilds from the log.
    damaged log tail the last record of a partition cut in the middle, half
                     a record or garbage after it: recovery truncates the
                     file to the last good record, the rest is all there,
                     and appends go on from there.
    /admin/compact   answers while writes go on (xfail: it does not yet).

The oracle is Model: per key, the last acknowledged write (HTTP 200) and
the writes sent after it whose answer never came (in flight at the kill).
After a restart a key must be in the state of its acknowledged write or of
one of those in-flight writes (each key is written by one thread, one batch
at a time, so these are the only possibilities); whichever the leaf shows
is then the truth (the log has it or has lost it for good), so the next
rounds are checked exactly. Checks (check_index): every key's document
(GET /documents/{key}) is the expected version with the content that was
sent; search "*" and a term every document has return each live key once,
at that version, and nothing else; their counts equal the number of live
keys.

Random choices (keys, deletes, delays, damage) come from SEED: set
PINSTACK_DURABILITY_SEED to repeat them (a failure names the seed); where a
SIGKILL lands in the server's work is up to the machine. Servers listen on
--port 0, the address read from their `serving http://...` line.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import pytest

pytestmark = pytest.mark.timeout(240, method="thread")

LEAF = [sys.executable, "-m", "pinstack.leaf"]
START_TIMEOUT = 30.0  # s: the `serving` line
READY_TIMEOUT = 60.0  # s: /readyz 200 (replaying the log)
PARTITIONS = 4  # the embedded log's default
BATCH = 25  # documents per POST
WRITERS = 3
COMMON = "common"  # a word in every document's title
SEED = int(os.environ.get("PINSTACK_DURABILITY_SEED", random.randrange(1 << 30)))


# ---- the server process ----------------------------------------------------------------------


class LeafProcess:
    """`pinstack-leaf serve --data DATA --port 0 --ready-lag 0 ARGS` in a
    subprocess, stderr to a file of its own (kept for failure reports)."""

    count = 0

    def __init__(self, data: Path, logs: Path, *args: str) -> None:
        LeafProcess.count += 1
        self.err_path = logs / f"serve-{LeafProcess.count:03d}.err"
        argv = [*LEAF, "serve", "--data", str(data), "--port", "0", "--ready-lag", "0", *args]
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            m = re.search(r"serving http://([\d.]+):(\d+)", self.stderr())
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n"
                                     f"{self.stderr()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"serve did not start:\n{self.stderr()}")
            time.sleep(0.02)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.host, self.port, timeout)

    def sigkill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(15) == -signal.SIGKILL

    def sigterm(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"serve did not stop on SIGTERM:\n{self.stderr()}") from None

    def wait_ready(self) -> None:
        """/readyz 200: with --ready-lag 0, everything in the log is applied."""
        c = self.client(5.0)
        deadline = time.monotonic() + READY_TIMEOUT
        body: Any = None
        try:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited with {self.proc.returncode} before "
                                         f"being ready:\n{self.stderr()}")
                try:
                    status, body = c.request("GET", "/readyz")
                    if status == 200:
                        return
                except (OSError, http.client.HTTPException) as e:
                    body = repr(e)
                if time.monotonic() > deadline:
                    raise AssertionError(f"not ready after {READY_TIMEOUT} s: {body}\n"
                                         f"{self.stderr()[-5000:]}")
                time.sleep(0.05)
        finally:
            c.close()


@pytest.fixture
def start(tmp_path):
    """start(data, *args) -> a serving LeafProcess; whatever is still
    running at the end is killed, and the last servers' stderr is printed
    (pytest shows it when the test failed)."""
    started: list[LeafProcess] = []

    def run(data: Path, *args: str) -> LeafProcess:
        leaf = LeafProcess(data, tmp_path, *args)
        started.append(leaf)
        return leaf

    yield run
    for leaf in started:
        if leaf.proc.poll() is None:
            leaf.proc.kill()
            leaf.proc.wait()
    for leaf in started[-2:]:
        print(f"---- {leaf.err_path.name} (exit {leaf.proc.returncode})\n"
              f"{leaf.stderr()[-4000:]}")


class Client:
    """One keep-alive HTTP connection to the leaf. A connection failure
    (the server was killed) raises OSError or http.client.HTTPException."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                ctype: str = "application/json") -> tuple[int, Any]:
        headers = {"Content-Type": ctype} if body is not None else {}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except BaseException:
            self.conn.close()
            raise
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, data.decode("utf-8", "replace")

    def ok(self, method: str, path: str, body: bytes | None = None,
           ctype: str = "application/json") -> Any:
        status, answer = self.request(method, path, body, ctype)
        assert status == 200, f"{method} {path}: HTTP {status}: {answer}"
        return answer

    def close(self) -> None:
        self.conn.close()


# ---- the oracle ----------------------------------------------------------------------------------


class Write(NamedTuple):
    key: str
    op: str  # "index" or "delete"
    version: int
    message: dict

    def state(self) -> tuple | None:
        """What the leaf holds for the key once this write is applied."""
        if self.op == "delete":
            return None
        return (self.version, self.message["fields"], self.message["payload"])


class Model:
    """Per key: the last acknowledged write and the writes sent after it
    without an answer (see the module docstring). Versions of a key only
    grow, whether the write was acknowledged or not."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.lock = threading.Lock()
        self.version = dict.fromkeys(keys, 0)
        self.acked: dict[str, Write | None] = dict.fromkeys(keys)
        self.unknown: dict[str, list[Write]] = {k: [] for k in keys}
        self.acked_writes = 0

    def new_write(self, key: str, op: str, rnd: int, rng: random.Random) -> Write:
        with self.lock:
            self.version[key] += 1
            v = self.version[key]
            if op == "delete":
                msg = {"op": "delete", "key": key, "version": v}
            else:
                msg = {"op": "index", "key": key, "version": v,
                       "fields": {"title": f"{COMMON} {key.replace(':', '')} v{v} r{rnd}",
                                  "tag": [f"r{rnd}"]},
                       "score": rng.random(),
                       "payload": {"key": key, "v": v, "nonce": rng.randrange(1 << 40)}}
            w = Write(key, op, v, msg)
            self.unknown[key].append(w)
            return w

    def acknowledge(self, writes: list[Write]) -> None:
        with self.lock:
            for w in writes:
                self.acked[w.key] = w
                self.unknown[w.key] = [u for u in self.unknown[w.key] if u.version > w.version]
                self.acked_writes += 1

    def expected(self, key: str) -> list[tuple | None]:
        """The states the key may be in: acknowledged first."""
        with self.lock:
            a = self.acked[key]
            return [None if a is None else a.state(), *(u.state() for u in self.unknown[key])]

    def resolve(self, key: str, observed: tuple | None) -> None:
        """The leaf showed `observed`: an in-flight write that it is made of
        becomes the key's acknowledged state; the others are lost for good."""
        with self.lock:
            for u in self.unknown[key]:
                if u.state() == observed and observed is not None or \
                        observed is None and u.op == "delete":
                    self.acked[key] = u
            self.unknown[key] = []

    def describe(self, key: str) -> tuple[str, str]:
        """(the acknowledged write, the writes in flight) of key, for humans."""
        with self.lock:
            return (_describe(self.acked[key]),
                    ", ".join(_describe(u) for u in self.unknown[key]))

    def forget(self, w: Write, before: Write | None) -> None:
        """The test destroyed w in the log: the key is back to `before`."""
        with self.lock:
            assert self.acked[w.key] == w
            self.acked[w.key] = before


def state_of_hit(hit: dict) -> tuple:
    return (hit["version"], hit.get("fields"), hit["payload"])


def check_index(client: Client, model: Model, where: str) -> dict[str, Any]:
    """Compare the leaf with the model (module docstring); resolve the
    in-flight writes. Returns a summary for failure messages."""
    problems: list[str] = []
    observed: dict[str, tuple | None] = {}
    for key in model.keys:
        status, doc = client.request(
            "GET", f"/documents/{urllib.parse.quote(key, safe='')}"
                   "?fields=key,version,fields,payload")
        if status == 404:
            observed[key] = None
        elif status == 200:
            if doc["key"] != key:
                problems.append(f"GET {key} returned key {doc['key']!r}")
            observed[key] = state_of_hit(doc)
        else:
            raise AssertionError(f"{where}: GET /documents/{key}: HTTP {status}: {doc}")
        allowed = model.expected(key)
        if observed[key] not in allowed:
            acked, unknown = model.describe(key)
            problems.append(f"{key}: the leaf has {_short(observed[key])}; acknowledged: "
                            f"{acked}" + (f"; in flight: {unknown}" if unknown else ""))
    live = {k: s for k, s in observed.items() if s is not None}
    for q in ("*", COMMON):
        answer = client.ok("GET", "/search?" + urllib.parse.urlencode(
            {"q": q, "k": 10_000, "count": "true", "fields": "key,version,fields,payload"}))
        hits = answer["hits"]
        seen: dict[str, int] = {}
        for h in hits:
            seen[h["key"]] = seen.get(h["key"], 0) + 1
            if h["key"] not in live:
                problems.append(f"search {q!r} returned {h['key']!r} v{h['version']}, which is "
                                f"not live" + ("" if h["key"] in model.version
                                               else " (a key never written)"))
            elif state_of_hit(h) != live[h["key"]]:
                problems.append(f"search {q!r} returned {h['key']} {_short(state_of_hit(h))}, "
                                f"GET returns {_short(live[h['key']])}")
        twice = sorted(k for k, n in seen.items() if n > 1)
        if twice:
            problems.append(f"search {q!r} returned {len(twice)} key(s) more than once: "
                            f"{twice[:5]}")
        missing = sorted(set(live) - set(seen))
        if missing:
            problems.append(f"search {q!r} misses {len(missing)} live key(s): {missing[:5]}")
        if answer["count"] != len(live):
            problems.append(f"count {q!r} is {answer['count']}, live keys {len(live)}")
    assert not problems, (f"{where}: {len(problems)} problem(s) (seed {SEED}):\n  "
                          + "\n  ".join(problems[:30]))
    for key, state in observed.items():
        model.resolve(key, state)
    return {"live": len(live)}


def _short(state: tuple | None) -> str:
    return "nothing" if state is None else f"v{state[0]} (payload {state[2]})"


def _describe(w: Write | None) -> str:
    if w is None:
        return "none"
    if w.op == "delete":
        return f"delete v{w.version}"
    return f"index v{w.version} (payload {w.message['payload']})"


# ---- writers -------------------------------------------------------------------------------------


def make_batch(model: Model, keys: list[str], rnd: int, rng: random.Random,
               size: int = BATCH, delete_share: float = 0.2) -> list[Write]:
    return [model.new_write(k, "delete" if rng.random() < delete_share else "index", rnd, rng)
            for k in rng.sample(keys, min(size, len(keys)))]


def ndjson(writes: list[Write]) -> bytes:
    return b"".join(json.dumps(w.message).encode() + b"\n" for w in writes)


def post(client: Client, writes: list[Write]) -> tuple[int, Any]:
    return client.request("POST", "/documents", ndjson(writes), "application/x-ndjson")


def write_sync(leaf: LeafProcess, model: Model, rnd: int, rng: random.Random,
               batches: int, keys: list[str] | None = None) -> None:
    """Batches written one after another, every one acknowledged."""
    c = leaf.client()
    try:
        for _ in range(batches):
            batch = make_batch(model, keys or model.keys, rnd, rng)
            status, answer = post(c, batch)
            assert status == 200, f"POST /documents: HTTP {status}: {answer}"
            model.acknowledge(batch)
    finally:
        c.close()


class Writers:
    """WRITERS threads, each the only writer of its share of the keys, one
    batch at a time, until its connection fails (the server was killed)."""

    def __init__(self, leaf: LeafProcess, model: Model, rnd: int, seed: int) -> None:
        self.model = model
        self.rnd = rnd
        self.acked = 0
        self.http_errors: list[str] = []
        self.cond = threading.Condition()
        self.threads = [
            threading.Thread(target=self._run, args=(leaf, model.keys[i::WRITERS],
                                                     random.Random(seed * 100 + i)),
                             name=f"writer-{i}", daemon=True)
            for i in range(WRITERS)]
        for t in self.threads:
            t.start()

    def _run(self, leaf: LeafProcess, keys: list[str], rng: random.Random) -> None:
        c = leaf.client(timeout=60.0)
        try:
            while True:
                batch = make_batch(self.model, keys, self.rnd, rng)
                try:
                    status, answer = post(c, batch)
                except (OSError, http.client.HTTPException):
                    return  # killed: the batch stays in flight (unknown)
                if status != 200:
                    with self.cond:
                        self.http_errors.append(f"HTTP {status}: {answer}")
                        self.cond.notify_all()
                    return
                self.model.acknowledge(batch)
                with self.cond:
                    self.acked += len(batch)
                    self.cond.notify_all()
        finally:
            c.close()
            with self.cond:
                self.cond.notify_all()

    def wait_acked(self, n: int, timeout: float = 60.0) -> None:
        """Until n documents were acknowledged in this round (progress, not
        timing: the timeout only keeps a stuck server from hanging us)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.acked < n:
                assert not self.http_errors, self.http_errors
                assert any(t.is_alive() for t in self.threads), "every writer stopped"
                left = deadline - time.monotonic()
                assert left > 0, f"only {self.acked} of {n} documents acknowledged"
                self.cond.wait(min(left, 0.5))

    def join(self) -> None:
        for t in self.threads:
            t.join(30)
            assert not t.is_alive(), f"{t.name} did not stop after the kill"
        assert not self.http_errors, f"a write was refused, not cut: {self.http_errors}"


def admin(leaf: LeafProcess, action: str) -> threading.Thread:
    """POST /admin/{action} in a thread of its own, answer ignored (the
    server is about to be killed)."""

    def run() -> None:
        c = leaf.client(timeout=60.0)
        try:
            c.request("POST", f"/admin/{action}")
        except (OSError, http.client.HTTPException):
            pass
        finally:
            c.close()

    t = threading.Thread(target=run, name=f"admin-{action}", daemon=True)
    t.start()
    return t


def stats(leaf: LeafProcess) -> dict[str, Any]:
    c = leaf.client()
    try:
        return c.ok("GET", "/stats")
    finally:
        c.close()


def wait_applied(leaf: LeafProcess, where: str) -> dict[str, Any]:
    """/stats once ingestion has applied everything the log holds (every
    acknowledged write is in the log: nothing is left to arrive)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        st = stats(leaf)
        ingest = st["ingest"]
        assert ingest["halted"] is None and ingest["bad"] == 0, (where, ingest)
        if all(ingest["positions"].get(str(q["partition"]), 0) >= q["end"]
               for q in st["log"]["partitions"]):
            return st
        assert time.monotonic() < deadline, \
            f"{where}: not applied after {READY_TIMEOUT} s: {ingest}\n{leaf.stderr()[-5000:]}"
        time.sleep(0.02)


def check(leaf: LeafProcess, model: Model, where: str) -> dict[str, Any]:
    st = wait_applied(leaf, where)
    c = leaf.client()
    try:
        summary = check_index(c, model, where)
    finally:
        c.close()
    summary["stats"] = st
    return summary


def make_keys(n: int) -> list[str]:
    return [f"pin:{i}" for i in range(n)]


# ---- SIGKILL during ingestion, flush and compaction ----------------------------------------------

KILL_ARGS = ("--max-segment-docs", "200", "--merge-factor", "2", "--compaction-rate", "1m")
ROUNDS = ["ingest", "flush", "compact"] * 4


@pytest.mark.slow
def test_sigkill_during_ingestion_flush_and_compaction_loses_nothing_acknowledged(
        start, tmp_path):
    rng = random.Random(SEED)
    data = tmp_path / "data"
    model = Model(make_keys(300))
    report: list[str] = []
    mid_write = 0
    killed = "nothing yet"
    for rnd, kind in enumerate(ROUNDS):
        leaf = start(data, *KILL_ARGS)
        leaf.wait_ready()
        found = check(leaf, model, f"restart {rnd}, after a SIGKILL during {killed}")
        engine = found["stats"]["engine"]
        assert engine["rebuild_reason"] is None, \
            f"a SIGKILL during {killed} left a damaged segment: {engine['rebuild_reason']}"
        if rnd == 1:  # round 0 flushed and compacted for sure: files and a checkpoint
            assert engine["segment_files"] >= 1 and sum(engine["checkpoint"].values()) > 0, \
                engine
        if rnd == 0:
            # Segment files and a checkpoint for sure, whatever the timing: two
            # segments' worth, flushed and compacted while nothing else is written
            # (test_admin_compact_returns_while_updates_go_on says why not during).
            write_sync(leaf, model, rnd, rng, 16)
            c = leaf.client(timeout=120.0)
            c.ok("POST", "/admin/flush")
            c.ok("POST", "/admin/compact")
            c.close()
        writers = Writers(leaf, model, rnd, rng.randrange(1 << 30))
        writers.wait_acked(300)  # at least 1.5 segments of new documents
        if kind == "ingest":
            time.sleep(rng.uniform(0, 0.5))
        else:
            time.sleep(rng.uniform(0, 0.2))
            admin(leaf, kind)
            time.sleep(rng.uniform(0, 0.03 if kind == "flush" else 0.3))
        leaf.sigkill()
        writers.join()
        tmp_files = sorted(p.name for p in (data / "index" / "segments").iterdir()
                           if p.name.endswith(".tmp"))
        mid_write += bool(tmp_files)
        killed = f"round {rnd} ({kind})"
        report.append(f"round {rnd} ({kind}): {writers.acked} acknowledged, {found['live']} "
                      f"live at start, {engine['segment_files']} files, killed with "
                      f"{tmp_files or 'no'} segment file(s) being written")
    # Last: a clean stop and start change nothing either.
    leaf = start(data, *KILL_ARGS)
    leaf.wait_ready()
    check(leaf, model, f"after a SIGKILL during {killed}")
    assert leaf.sigterm() == 0
    leaf = start(data, *KILL_ARGS)
    leaf.wait_ready()
    found = check(leaf, model, "after a clean restart")
    assert found["stats"]["engine"]["rebuild_reason"] is None
    assert leaf.sigterm() == 0
    # Shown with -s: how many kills caught a segment file being written.
    print(f"seed {SEED}; {model.acked_writes} writes acknowledged; kills during a segment "
          f"write: {mid_write} of {len(ROUNDS)}\n" + "\n".join(report))


COMPACT_TIMEOUT = 10.0  # s: a compaction of a few hundred KB at 1 MB/s takes well under 1 s


@pytest.mark.slow
def test_admin_compact_returns_while_updates_go_on(start, tmp_path):
    """A compaction asked for merges the files there are when it is asked
    for, and answers, even though writes (updates: deletes on the files)
    never stop. The timeout only keeps a compaction that never ends from
    hanging the test."""
    model = Model(make_keys(300))
    leaf = start(tmp_path / "data", *KILL_ARGS)
    leaf.wait_ready()
    writers = Writers(leaf, model, 0, SEED)
    c = leaf.client(timeout=COMPACT_TIMEOUT)
    try:
        writers.wait_acked(600)
        try:
            status, answer = c.request("POST", "/admin/compact")
        except TimeoutError:
            pytest.fail(f"POST /admin/compact: no answer within {COMPACT_TIMEOUT} s while "
                        f"writes went on ({writers.acked} documents acknowledged so far)")
        assert status == 200, answer
        # Every file there was when it was asked went into one; files that
        # flushes wrote meanwhile are left for later (so `segments` after
        # may exceed `segments_before`: it counts those too).
        result = answer["result"]
        if result["segments_before"] >= 2:
            assert result["compacted"], result
            assert result["merged"] == result["segments_before"], result
    finally:
        c.close()
        leaf.sigkill()
        writers.join()


# ---- a damaged segment file ----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flip-a-byte", "cut-the-end"])
def test_a_damaged_segment_file_is_reported_and_the_index_rebuilt_from_the_log(
        start, tmp_path, damage):
    rng = random.Random(SEED)
    data = tmp_path / "data"
    args = ("--max-segment-docs", "100", "--merge-factor", "4")
    model = Model(make_keys(200))
    leaf = start(data, *args)
    leaf.wait_ready()
    write_sync(leaf, model, 0, rng, 16)
    c = leaf.client()
    c.ok("POST", "/admin/flush")
    c.close()
    write_sync(leaf, model, 1, rng, 4)  # in the log only, after the checkpoint
    found = check(leaf, model, "before the damage")
    assert found["stats"]["engine"]["rebuild_reason"] is None
    if damage == "flip-a-byte":
        leaf.sigkill()
    else:
        assert leaf.sigterm() == 0  # a clean close flushes everything: the log is all covered
    manifest = json.loads((data / "index" / "meta.json").read_text())
    names = [s["name"] for s in manifest["segments"]]
    assert names, manifest
    victim = data / "index" / "segments" / rng.choice(names)
    raw = bytearray(victim.read_bytes())
    if damage == "flip-a-byte":
        raw[len(raw) // 2] ^= 0x10
    else:
        del raw[len(raw) * 2 // 3:]
    victim.write_bytes(bytes(raw))

    leaf = start(data, *args)
    leaf.wait_ready()
    found = check(leaf, model, f"after the rebuild ({damage} in {victim.name})")
    reason = found["stats"]["engine"]["rebuild_reason"]
    assert reason is not None and victim.name in reason, reason
    assert re.search(rf"rebuilding the index from the start of the stream: .*{victim.name}",
                     leaf.stderr()), leaf.stderr()
    assert not victim.exists()  # not named by the new manifest: removed
    rebuilt = json.loads((data / "index" / "meta.json").read_text())
    assert rebuilt["generation"] > manifest["generation"]

    # The rebuilt index is durable like any other: more writes, a flush, a kill.
    write_sync(leaf, model, 2, rng, 4)
    c = leaf.client()
    c.ok("POST", "/admin/flush")
    c.close()
    write_sync(leaf, model, 3, rng, 2)
    leaf.sigkill()
    leaf = start(data, *args)
    leaf.wait_ready()
    found = check(leaf, model, "after a kill that followed the rebuild")
    assert found["stats"]["engine"]["rebuild_reason"] is None
    assert leaf.sigterm() == 0


# ---- a damaged log tail --------------------------------------------------------------------------

_FILE_HEADER = 16
_RECORD = struct.Struct("<IIQ")  # crc, length, offset (docs/leaf-stream.md)


def log_records(path: Path) -> list[tuple[int, int, int, bytes]]:
    """(position, offset, length, payload) of every record of a log segment
    file, read independently of stream/record.py."""
    raw = path.read_bytes()
    out = []
    pos = _FILE_HEADER
    while pos + _RECORD.size <= len(raw):
        crc, length, offset = _RECORD.unpack_from(raw, pos)
        payload = raw[pos + _RECORD.size:pos + _RECORD.size + length]
        assert len(payload) == length and zlib.crc32(raw[pos + 4:pos + 16] + payload) == crc, \
            f"{path}: a damaged record at {pos} before the test damaged anything"
        out.append((pos, offset, length, payload))
        pos += _RECORD.size + length
    assert pos == len(raw), f"{path}: {len(raw) - pos} stray bytes at the end"
    return out


def last_log_file(data: Path, partition: int) -> Path:
    return sorted((data / "log" / f"p{partition:04d}").glob("*.log"))[-1]


def partition_of(key: str) -> int:
    return zlib.crc32(key.encode()) % PARTITIONS


@pytest.mark.parametrize("damage", ["cut-the-last-record", "half-a-record-after",
                                    "garbage-after", "garbage-after-a-clean-stop"])
def test_a_damaged_log_tail_is_truncated_to_the_last_good_record(start, tmp_path, damage):
    """After a crash, recovery truncates the last segment at the first bad
    record. After a clean stop, damage is not a torn tail: the segment is
    kept as it is and appends go to a new one (docs/leaf-stream.md); either
    way everything before the damage is served and appends go on."""
    rng = random.Random(SEED)
    data = tmp_path / "data"
    pins = make_keys(200)
    model = Model([*pins, "torn:1"])
    leaf = start(data, "--max-segment-docs", "100")
    leaf.wait_ready()
    write_sync(leaf, model, 0, rng, 12, pins)
    c = leaf.client()
    c.ok("POST", "/admin/flush")
    write_sync(leaf, model, 1, rng, 4, pins)  # after the checkpoint: replayed from the log
    torn = model.new_write("torn:1", "index", 2, rng)  # the last record of its partition
    status, answer = post(c, [torn])
    assert status == 200, answer
    model.acknowledge([torn])
    c.close()
    check(leaf, model, "before the damage")
    if damage == "garbage-after-a-clean-stop":
        assert leaf.sigterm() == 0
    else:
        leaf.sigkill()

    p = partition_of(torn.key)
    path = last_log_file(data, p)
    pos, offset, length, payload = log_records(path)[-1]
    assert json.loads(payload)["key"] == torn.key
    size = path.stat().st_size
    if damage == "cut-the-last-record":
        # A torn write: its record is gone, and so is the acknowledgement
        # (the test's doing: a real torn write is never acknowledged).
        os.truncate(path, pos + _RECORD.size + length // 2)
        model.forget(torn, None)
        good_end, first_bad, dropped = pos, offset, size - pos - (length - length // 2)
    else:
        if damage == "half-a-record-after":
            # A valid record of the next offset, written halfway: a document that
            # must not appear.
            ghost = json.dumps({"op": "index", "key": "ghost:1", "version": 1,
                                "fields": {"title": COMMON}}).encode()
            head = _RECORD.pack(0, len(ghost), offset + 1)[4:]
            record = struct.pack("<I", zlib.crc32(head + ghost)) + head + ghost
            tail = record[:len(record) // 2]
        else:
            tail = bytes(rng.randrange(256) for _ in range(100))
        with open(path, "ab") as f:
            f.write(tail)
        good_end, first_bad, dropped = size, offset + 1, len(tail)

    leaf = start(data, "--max-segment-docs", "100")
    leaf.wait_ready()
    if damage == "garbage-after-a-clean-stop":
        assert re.search(rf"partition {p}: {re.escape(str(path))} is damaged at position "
                         rf"{good_end} \(offset {first_bad}\): .*; kept as it is, appends go "
                         rf"to a new segment", leaf.stderr()), leaf.stderr()
        assert path.stat().st_size == good_end + dropped  # kept for a post-mortem
        assert last_log_file(data, p).name == f"{first_bad:020d}.log"
    else:
        assert re.search(rf"partition {p}: recovered {re.escape(str(path))}: truncated "
                         rf"{dropped} bytes at position {good_end} \(offset {first_bad}\)",
                         leaf.stderr()), leaf.stderr()
        assert path.stat().st_size == good_end
    check(leaf, model, f"after recovering from {damage}")
    end = {q["partition"]: q["end"] for q in stats(leaf)["log"]["partitions"]}[p]
    assert end == first_bad

    # Appends go on from the last good record, and survive the next kill.
    write_sync(leaf, model, 3, rng, 6, pins)
    again = model.new_write("torn:1", "index", 3, rng)
    c = leaf.client()
    status, answer = post(c, [again])
    assert status == 200, answer
    model.acknowledge([again])
    c.close()
    leaf.sigkill()
    offsets = [r[1] for r in log_records(last_log_file(data, p))]  # well-formed, dense
    assert offsets[-1] >= end and offsets == list(range(offsets[0], offsets[-1] + 1))
    leaf = start(data, "--max-segment-docs", "100")
    leaf.wait_ready()
    check(leaf, model, f"after a kill that followed the recovery from {damage}")
    assert "recovered" not in leaf.stderr()  # nothing to truncate this time
    assert leaf.sigterm() == 0
