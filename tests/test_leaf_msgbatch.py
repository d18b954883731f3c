"""Messages in bulk (src/_core/index/msgbatch.c, logrec.c): the C write and
ingest paths against what they replaced.

    framing     record.encode and MessageBatch.frame are byte-identical to
                the former Python encoder (tests/leaf_record_model.py)
    checking    record.decode and record.scan agree with the former Python
                decoder and scanner on good, truncated and damaged data
    writing     an NDJSON body splits as Python splits lines, each message
                goes to crc32(key) % partitions, bad ones carry their lines
    ingesting   a log read through poll_into + MessageBatch and applied in C
                gives the same index, counts and bad records as records
                polled one by one, parsed with parse_message and applied
                with add_batch/delete in Python (the former path, kept here
                as the oracle), with invalid JSON, bad fields, deletes,
                updates, stale versions, older segments and corrupt records

Speed: python -m pytest -m bench -s tests/test_leaf_msgbatch.py
"""

from __future__ import annotations

import json
import os
import random
import time
import zlib
from array import array

import leaf_record_model as model
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinstack.leaf import RealtimeSegment
from pinstack.leaf.message import (
    MessageError,
    Schema,
    batch_errors,
    new_batch,
    parse_message,
)
from pinstack.leaf.stream import EmbeddedSource, Log
from pinstack.leaf.stream import record as rec

SCHEMA = Schema(text=["title", "body"], keywords=["lang", "tag"], max_message_bytes=4096,
                max_terms=8)


# ---- framing and checking ---------------------------------------------------------------

payload_lists = st.lists(st.binary(max_size=600), max_size=40)


@settings(max_examples=200, deadline=None)
@given(payload_lists, st.integers(0, 2**40), st.integers(16, 2**30), st.integers(-9000, 9000))
def test_framing_is_byte_identical_to_the_python_encoder(payloads, first, start, back):
    last = max(0, start - back)  # usually behind start; ahead of it is handled alike
    got_off, got_pos, want_off, want_pos = array("q"), array("q"), array("q"), array("q")
    got = rec.encode(payloads, first, start, last, got_off, got_pos)
    want = model.encode(payloads, first, start, last, want_off, want_pos)
    assert got == want
    assert (got_off, got_pos) == (want_off, want_pos)


def _damaged(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    what = rng.randrange(4)
    if what == 0 and b:
        del b[rng.randrange(len(b)):]  # truncated
    elif what == 1 and b:
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)  # a flipped bit
    elif what == 2 and len(b) > 16:
        b[rng.randrange(len(b) - 8):][:8] = os.urandom(8)  # garbage
    return bytes(b)


def test_decoding_agrees_with_the_python_decoder_on_damaged_buffers():
    rng = random.Random(7)
    for case in range(400):
        payloads = [os.urandom(rng.choice((0, 1, 30, 200))) for _ in range(rng.randrange(12))]
        first = rng.randrange(1000)
        data, _ = model.encode(payloads, first, 16, 0, array("q"), array("q"))
        if case % 5 == 0:
            data = b"\0" * 40 + data  # a zero-filled region is never records
        buf = _damaged(data, rng) if case % 3 else data
        for _ in range(4):
            args = (buf, 0, first + rng.choice((0, 0, 1)), rng.choice((0, 1, 3, 100)),
                    rng.choice((-1, first, first + 2)), rng.choice((1, 100, 1 << 62)))
            got, want = rec.decode(*args), model.decode(*args)
            assert (got.records, got.pos, got.offset, got.problem, got.need) == tuple(want), args
            n = rec.decode(*args, split=False)
            assert n.records == len(want.records) and n.nbytes == sum(len(r[1]) for r in
                                                                      want.records)
            if want.records:  # the returned records are buf[first_pos:pos], back to back
                assert n.first_pos + sum(16 + len(r[1]) for r in want.records) == n.pos


def test_scanning_a_file_agrees_with_the_python_scanner(tmp_path, monkeypatch):
    """record.scan (recovery, lazy indexing) over good, torn and damaged
    files, chunk edges included: the same end, count, problem and index."""
    rng = random.Random(11)
    path = tmp_path / "seg"
    for case in range(120):
        chunk = rng.choice((64, 100, 1 << 20))
        monkeypatch.setattr(rec, "SCAN_CHUNK", chunk)
        monkeypatch.setattr(model, "SCAN_CHUNK", chunk)
        payloads = [os.urandom(rng.choice((0, 5, 40, 300, 5000))) for _ in range(rng.randrange(30))]
        data, _ = model.encode(payloads, 100, 16, 0, array("q"), array("q"))
        data = b"H" * 16 + (_damaged(data, rng) if case % 2 else data)
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            for limit in (len(data), max(16, len(data) - rng.randrange(40)), len(data) + 10):
                got_o, got_p, want_o, want_p = array("q"), array("q"), array("q"), array("q")
                start = rng.choice((0, 16, 5000))
                got = rec.scan(fd, 16, 100, limit, got_o, got_p, start)
                want = model.scan(fd, 16, 100, limit, want_o, want_p, start)
                assert got == want and (got_o, got_p) == (want_o, want_p), (case, limit)
                assert rec.scan(fd, 16, 100, limit) == model.scan(fd, 16, 100, limit)
        finally:
            os.close(fd)


# ---- the write side -----------------------------------------------------------------------


def doc(key, version=1, title="a cat", **kw) -> dict:
    m = {"op": "index", "key": key, "version": version, "fields": {"title": title}}
    m.update(kw)
    return m


def raw(m) -> bytes:
    return json.dumps(m, ensure_ascii=False).encode()


def python_lines(body: bytes) -> list[tuple[int, bytes]]:
    """What the server's NDJSON splitter did before it moved to C."""
    out = []
    for n, line in enumerate(body.split(b"\n"), 1):
        line = line.rstrip(b"\r")
        if line.strip():
            out.append((n, line))
    return out


def framed_payloads(batch, partition: int) -> list[bytes]:
    data, n, _, _ = batch.frame(partition, 0, 16, 0)
    d = model.decode(data, 0, 0, 1 << 30)
    assert d.problem is None and len(d.records) == n and d.pos == len(data)
    return [p for _, p in d.records]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([b"", b" ", b"\t", b"\r", b"\x0b\x0c", b" \r\r"]),
                          st.sampled_from(["good", "bad", "blank", "unicode"]),
                          st.sampled_from([b"", b"\r", b"\r\r", b"  "])),
                max_size=20),
       st.booleans())
def test_an_ndjson_body_splits_as_python_split_lines(lines, final_newline):
    parts = []
    for i, (lead, kind, trail) in enumerate(lines):
        if kind == "good":
            body = raw(doc(f"k{i}"))
        elif kind == "unicode":
            body = raw(doc(f"ké\u2028{i}", title="naïve café"))
        elif kind == "bad":
            body = b'{"op": "index", "key": '
        else:
            body = b""
        parts.append(lead + body + trail)
    body = b"\n".join(parts) + (b"\n" if final_newline else b"")
    want = python_lines(body)
    batch = new_batch(SCHEMA)
    batch.add_ndjson(body)
    assert len(batch) == len(want)
    batch.parse()
    good, bad = [], []
    for n, line in want:
        try:
            parse_message(line, SCHEMA)
            good.append(line)
        except MessageError as e:
            bad.append((n, e.code, str(e)))
    assert [(line, e.code, str(e)) for _, _, line, e in batch.errors()] == bad
    if not bad and good:
        batch.route(1)
        assert framed_payloads(batch, 0) == good


def test_each_message_goes_to_the_partition_of_its_key_in_batch_order():
    keys = [f"k{i}" for i in range(50)] + ["ké", "日本", "\U0001f600", "a\\\"b", "x" * 1024]
    msgs = [raw(doc(k, version=v)) for v in (1, 2) for k in keys]
    msgs.append(json.dumps(doc("\u00e9scaped")).encode())  # key given as a \u escape
    batch = new_batch(SCHEMA)
    batch.add_payloads(msgs)
    batch.parse()
    counts = batch.route(5)
    want: dict[int, list[bytes]] = {}
    for m in msgs:
        key = json.loads(m)["key"]
        want.setdefault(zlib.crc32(key.encode("utf-8")) % 5, []).append(m)
    assert counts == [len(want.get(p, [])) for p in range(5)]
    for p in range(5):
        assert framed_payloads(batch, p) == want.get(p, [])


def test_framing_numbers_records_and_indexes_them_as_the_log_does():
    msgs = [raw(doc(f"k{i}", title="word " * (i % 50))) for i in range(300)]
    batch = new_batch(SCHEMA)
    batch.add_payloads(msgs)
    batch.parse()
    batch.route(1)
    got = batch.frame(0, 1000, 5000, 900)
    want_off, want_pos = array("q"), array("q")
    data, last = model.encode(msgs, 1000, 5000, 900, want_off, want_pos)
    assert got[0] == data and got[1] == 300 and got[2] == last
    assert got[3] == list(zip(want_off, want_pos))


def test_a_record_over_the_limit_is_refused_before_anything_is_framed():
    batch = new_batch(Schema(text=["title"], max_message_bytes=1 << 20))
    batch.add_payloads([raw(doc("k", title="x" * 5000))])
    batch.parse()
    batch.route(1)
    with pytest.raises(ValueError, match="at most 1000 bytes"):
        batch.frame(0, 0, 16, 0, 1000)


def test_a_batch_is_parsed_once():
    batch = new_batch(SCHEMA)
    batch.add_payloads([raw(doc("k"))])
    assert batch.parse() == 1
    with pytest.raises(ValueError, match="parsed already"):
        batch.add_payloads([raw(doc("j"))])
    with pytest.raises(ValueError, match="parsed already"):
        batch.parse()


# ---- the ingest side: C against the former Python path --------------------------------


def python_apply(segment, ops, older=()) -> tuple[int, int, int]:
    """apply_ops as it was in Python: runs of index ops through add_batch,
    deletes one by one."""
    added = stale = deleted = 0
    i = 0
    while i < len(ops):
        if ops[i].kind == "delete":
            deleted += bool(segment.delete(ops[i].key, ops[i].version, older=older))
            i += 1
            continue
        j = i
        while j < len(ops) and ops[j].kind == "index":
            j += 1
        k = segment.add_batch([op[1:] for op in ops[i:j]], older=older)
        added += k
        stale += (j - i) - k
        i = j
    return added, stale, deleted


def python_ingest(source, segment, older, limit):
    """The former ingest path: Records, parse_message each, apply in Python."""
    records = source.poll(limit, 0)
    ops, bad = [], []
    for p, off, payload in records:
        try:
            ops.append(parse_message(payload, SCHEMA))
        except MessageError as e:
            bad.append((p, off, e.code, str(e)))
    counts = python_apply(segment, ops, older)
    positions = {}
    for p, off, _ in records:
        positions[p] = off + 1
    return counts, bad, positions, len(records)


def c_ingest(source, segment, older, limit):
    batch = new_batch(SCHEMA)
    n = source.poll_into(batch, limit, 0)
    batch.parse()
    bad = [(b.partition, b.offset, b.error.code, str(b.error.args[0]))
           for b in batch_errors(batch, log_skipped=False)]
    counts = batch.apply(segment, older, 0, batch.ops)
    return counts[:3], bad, batch.positions(), n


def random_stream(rng: random.Random, n: int) -> list[bytes]:
    keys = [f"key{i}" for i in range(40)] + ["ké", "日本"]
    words = "cat dog bird fish red blue green old new".split()
    out = []
    for _ in range(n):
        r = rng.random()
        key = rng.choice(keys)
        version = rng.randrange(1, 12)
        if r < 0.08:
            out.append(rng.choice([b"{", b"not json", b'{"op": "index"}', b"[]", b"\xff\xfe",
                                   raw(doc(key, fields={"colour": "red"})),
                                   raw({"op": "index", "key": key, "version": 1.5})]))
        elif r < 0.25:
            out.append(raw({"op": "delete", "key": key, "version": version}))
        else:
            title = " ".join(rng.choice(words) for _ in range(rng.randrange(6)))
            m = {"op": "index", "key": key, "version": version,
                 "fields": {"title": title, "tag": [rng.choice(words)], "lang": "en"},
                 "score": rng.random(), "payload": {"n": rng.randrange(100)}}
            if rng.random() < 0.2:
                del m["fields"]["title"]
            out.append(raw(m))
    return out


def index_state(segments) -> dict:
    from pinstack._core._index import count_view, get_view, search_view

    keys = [f"key{i}" for i in range(40)] + ["ké", "日本"]
    state = {"count": count_view(segments, ("all",))}
    for k in keys:
        h = get_view(segments, k)
        state[k] = None if h is None else (h.version, h.score, h.blob)
    for q in (("term", "cat"), ("or", ("term", "dog"), ("term", "tag:red")), ("all",)):
        for order in ("score", "bm25", "recent"):
            state[(q, order)] = [(h.key, h.version, round(h.score, 9))
                                 for h in search_view(segments, q, 100, order)]
    return state


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("on_corrupt", ["skip", "stop"])
def test_ingesting_through_c_gives_the_same_index_as_the_python_path(tmp_path, seed,
                                                                     on_corrupt):
    rng = random.Random(seed)
    path = tmp_path / "log"
    with Log(path, partitions=3) as lg:
        for _ in range(6):
            for p in range(3):
                lg.append(p, random_stream(rng, rng.randrange(1, 60)))
    if seed % 2:  # damage a record in the middle of partition 1
        f = sorted((path / "p0001").iterdir())[0]
        data = bytearray(f.read_bytes())
        at = 16 + len(data) // 3
        data[at] ^= 0x40
        f.write_bytes(bytes(data))
    results = []
    for ingest in (python_ingest, c_ingest):
        lg = Log(path, on_corrupt=on_corrupt)
        try:
            older = RealtimeSegment(writer_threads=2)
            active = None
            steps: list = []
            with EmbeddedSource(lg) as src:
                for limit in (150, 100_000, 100_000):
                    if active is None:
                        seg, old = older, ()
                    else:
                        seg, old = active, (older,)
                    try:
                        steps.append(ingest(src, seg, old, limit))
                    except Exception as e:  # noqa: BLE001 - both paths must fail alike
                        steps.append(repr(e))
                    if active is None:
                        older.seal()
                        active = RealtimeSegment(writer_threads=2, base=older.seq_end)
            results.append((steps, index_state([older, active])))
        finally:
            lg.close()
    assert results[0] == results[1]
    assert results[0][1]["count"] > 0


def test_halting_parses_up_to_the_first_bad_message_and_says_where_to_resume(tmp_path):
    with Log(tmp_path / "log", partitions=2) as lg:
        lg.append(0, [raw(doc("a")), raw(doc("b"))])
        lg.append(1, [raw(doc("c")), b"{oops", raw(doc("d"))])
        lg.append(0, [raw(doc("e"))])
        with EmbeddedSource(lg) as src:
            batch = new_batch(SCHEMA)
            assert src.poll_into(batch, 100, 0) == 6
    order = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]  # partitions take turns from 0
    assert batch.parse(halt=True) == 5
    assert batch.first_bad == 4 and batch.ops == 4 and batch.bad == 1
    assert batch.positions(4) == {0: 3, 1: 1}
    assert batch.rewind(4) == {1: 1}
    ((i, p, off, e),) = batch.errors()
    assert (i, p, off, e.code) == (4, *order[4], "json")


# ---- speed (deselected by default) --------------------------------------------------------


@pytest.mark.bench
def test_bench_write_and_ingest_paths(tmp_path):
    schema = Schema(text=["title", "description"], keywords=["lang", "board", "tag"],
                    store="payload")
    msgs = [json.dumps({
        "op": "index", "key": f"pin:{i}", "version": i,
        "fields": {"title": f"A red bicycle number {i} by the canal",
                   "description": "Vintage steel frame, new tyres, a basket in front; "
                                  "collected from the workshop on the corner " * 2,
                   "lang": "en", "board": i % 1000, "tag": ["bike", "vintage", "red"]},
        "score": i / 7, "payload": {"url": f"https://example.com/pins/{i}", "w": 640, "h": 480},
    }).encode() for i in range(100_000)]
    bodies = [b"\n".join(msgs[i:i + 1000]) + b"\n" for i in range(0, len(msgs), 1000)]
    t0 = time.perf_counter()
    for body in bodies:
        b = new_batch(schema)
        b.add_ndjson(body)
        b.parse()
        b.route(4)
        for p in range(4):
            b.frame(p, 0, 16, 0)
    t_write = time.perf_counter() - t0
    with Log(tmp_path / "log", partitions=1, fsync="interval_ms=50") as lg:
        for i in range(0, len(msgs), 10_000):
            lg.append(0, msgs[i:i + 10_000])
        seg = RealtimeSegment(writer_threads=1, max_docs=1 << 20)
        t0 = time.perf_counter()
        with EmbeddedSource(lg) as src:
            t_parse = t_apply = 0.0
            while True:
                b = new_batch(schema)
                if not src.poll_into(b, 4096, 0):
                    break
                t1 = time.perf_counter()
                b.parse()
                t2 = time.perf_counter()
                b.apply(seg, (), 0, b.ops)
                t_parse += t2 - t1
                t_apply += time.perf_counter() - t2
        t_ingest = time.perf_counter() - t0
    n = len(msgs)
    print(f"\nwrite side (split, parse, route, frame): {t_write / n * 1e6:.2f} us/msg; "
          f"ingest (read, parse, index 1 thread): {t_ingest / n * 1e6:.2f} us/msg, of which "
          f"parse {t_parse / n * 1e6:.2f}, index {t_apply / n * 1e6:.2f}")


def test_an_ingest_batch_takes_the_writers_parse_of_the_records_it_wrote(tmp_path):
    """MessageBatch.attach: the records a write batch appended take its
    verdicts instead of being parsed again, with the same index as a parse;
    an attach at the wrong offsets (bytes that differ) takes nothing."""
    rng = random.Random(3)
    msgs = [m for m in random_stream(rng, 400) if _parses(m)]
    body = b"\n".join(msgs) + b"\n"
    write = new_batch(SCHEMA)
    write.add_ndjson(body)
    write.parse()
    counts = write.route(2)
    states = []
    with Log(tmp_path / "log", partitions=2) as lg:
        firsts = {p: lg.append(p, write) - counts[p] + 1 for p in range(2)}
        for attach in (False, True, "misplaced"):
            read = new_batch(SCHEMA)
            with EmbeddedSource(lg) as src:
                assert src.poll_into(read, 10_000, 0) == len(msgs)
            if attach:
                shift = 1 if attach == "misplaced" else 0
                got = sum(read.attach(write, p, firsts[p] + shift) for p in range(2))
                assert got == (0 if shift else len(msgs))
            read.parse()
            seg = RealtimeSegment(writer_threads=2)
            applied = read.apply(seg, (), 0, read.ops)
            assert read.to_ops() == [parse_message(m, SCHEMA) for m in _by_partition(msgs)]
            states.append((applied, index_state([seg])))
    assert states[0] == states[1] == states[2]


def _parses(m: bytes) -> bool:
    try:
        parse_message(m, SCHEMA)
        return True
    except MessageError:
        return False


def _by_partition(msgs: list[bytes]) -> list[bytes]:
    """msgs in the order a poll of a 2-partition log returns them."""
    part = [zlib.crc32(json.loads(m)["key"].encode()) % 2 for m in msgs]
    return [m for p in range(2) for m, q in zip(msgs, part) if q == p]


def test_parsed_writes_are_taken_once_bounded_and_dropped_on_halt(tmp_path, monkeypatch):
    """The leaf's hand-over of write batches to the ingest thread
    (service._ParsedWrites): what a poll covers is attached and let go,
    what it read past is dropped, offers over the bound or after a halt
    are refused (the ingest thread then parses)."""
    from pinstack.leaf.service import _ParsedWrites

    parsed = _ParsedWrites()
    with Log(tmp_path / "log", partitions=1) as lg:
        writes = []
        for i in range(3):
            w = new_batch(SCHEMA)
            w.add_payloads([raw(doc(f"k{i}:{j}")) for j in range(10)])
            w.parse()
            w.route(1)
            last = lg.append(0, w)
            writes.append((last - 9, last, w))
        parsed.offer(0, *writes[1])  # the first write is never offered
        monkeypatch.setattr(_ParsedWrites, "MAX_MESSAGES", 20)
        parsed.offer(0, *writes[2])
        parsed.offer(0, 100, 109, writes[0][2])  # over the bound: refused
        with EmbeddedSource(lg) as src:
            read = new_batch(SCHEMA)
            assert src.poll_into(read, 25, 0) == 25  # offsets 0..24
            assert parsed.attach(read) == 15  # 10..24 from the two offered writes
            assert parsed._held == 10  # the third is still needed for 25..29
            rest = new_batch(SCHEMA)
            assert src.poll_into(rest, 100, 0) == 5
            assert parsed.attach(rest) == 5 and parsed._held == 0
    parsed.stop()
    parsed.offer(0, *writes[0])
    assert parsed._held == 0
