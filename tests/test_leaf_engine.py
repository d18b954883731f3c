"""The leaf's engine (pinstack.leaf.engine): rotation, flush, manifest,
compaction, restart and recovery, on real files, with the background
threads running as in production.

The oracle is leaf_model.ModelSegment fed the same operations: whatever
the segments look like underneath, the engine must answer like one
logical segment.
"""

from __future__ import annotations

import json
import os
import random
import threading

import pytest
from leaf_model import ModelSegment

from pinstack.leaf.engine import Engine, EngineError
from pinstack.leaf.message import Op

WORDS = ["cat", "dog", "bird", "fish", "mat", "red", "blue"]
QUERIES = ["cat", "cat dog", "cat OR fish", "-dog", "*", "t:1", "mat -t:2"]


def rand_ops(rng: random.Random, n: int, keys: int, version_base: int = 0) -> list[Op]:
    ops = []
    for _ in range(n):
        key = f"k{rng.randrange(keys)}"
        v = version_base + rng.randrange(20)
        if rng.random() < 0.15:
            ops.append(Op("delete", key, v, None, [], 0.0, b""))
        else:
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
            ops.append(Op("index", key, v, text, [f"t:{rng.randrange(4)}"],
                          float(rng.randrange(50)), f"{key}@{v}".encode()))
    return ops


def model_apply(model: ModelSegment, ops: list[Op]) -> None:
    for op in ops:
        if op.kind == "delete":
            model.delete(op.key, op.version)
        else:
            model.add_batch([(op.key, op.version, op.text, op.terms, op.score, op.blob)])


def assert_same(engine: Engine, model: ModelSegment) -> None:
    for q in QUERIES:
        assert engine.count(q) == model.count(q), q
        for order in ("score", "recent"):
            got = [(h.key, h.version, h.blob) for h in engine.search(q, 10, order)]
            want = [(h.key, h.version, h.blob) for h in model.search(q, 10, order)]
            assert got == want, (q, order)
    for i in range(0, 400, 7):
        g, w = engine.get(f"k{i}"), model.get(f"k{i}")
        assert (g and (g.key, g.version, g.blob)) == (w and (w.key, w.version, w.blob))


def test_flush_compaction_restart_answer_like_one_segment(tmp_path):
    rng = random.Random(1)
    model = ModelSegment()
    e = Engine(str(tmp_path), max_segment_docs=120, writer_threads=2, merge_factor=3)
    pos = 0
    for round_ in range(8):
        ops = rand_ops(rng, 100, 400)
        pos += len(ops)
        e.apply(ops, {0: pos})
        model_apply(model, ops)
        assert_same(e, model)
        if round_ % 4 == 3:
            e.flush()
            assert e.checkpoint() == {0: pos}
            assert_same(e, model)
    e.compact()
    st = e.stats()
    assert st["segment_files"] == 1 and st["sealed_segments"] == 0
    assert st["files"][0]["docs"] == st["files"][0]["docs_live"] == model.count("*")
    assert_same(e, model)
    e.close()
    names = json.loads((tmp_path / "meta.json").read_text())["segments"]
    assert sorted(os.listdir(tmp_path / "segments")) == sorted(n["name"] for n in names)

    e2 = Engine(str(tmp_path), max_segment_docs=300)
    assert e2.checkpoint() == {0: pos}
    assert_same(e2, model)
    # and it keeps going after the restart
    ops = rand_ops(rng, 200, 400)
    e2.apply(ops, {0: pos + 200})
    model_apply(model, ops)
    assert_same(e2, model)
    e2.close()


def test_restart_without_close_replays_from_the_checkpoint(tmp_path):
    """What a crash leaves: the manifest of the last flush. The caller
    (the service) replays the stream from checkpoint(); the result is the
    same as if nothing had happened."""
    rng = random.Random(2)
    stream = rand_ops(rng, 1000, 300)
    model = ModelSegment()
    model_apply(model, stream)
    e = Engine(str(tmp_path), max_segment_docs=150)
    for i in range(0, 1000, 50):
        e.apply(stream[i:i + 50], {0: i + 50})
        if i == 500:
            e.flush()
    # no close(): as if killed; a fresh engine sees only the manifest
    e2 = Engine(str(tmp_path), max_segment_docs=400, background=False)
    cp = e2.checkpoint()[0]
    assert 550 <= cp <= 1000
    e2.apply(stream[cp:], {0: 1000})
    assert_same(e2, model)
    e2.close(flush=False)
    e.close(flush=False)


def test_a_damaged_segment_makes_the_engine_rebuild_from_the_stream(tmp_path):
    e = Engine(str(tmp_path), max_segment_docs=100)
    e.apply(rand_ops(random.Random(3), 500, 200), {0: 500})
    e.close()
    seg = next((tmp_path / "segments").iterdir())
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x40
    seg.write_bytes(bytes(data))
    e2 = Engine(str(tmp_path))
    assert "damaged" in (e2.rebuild_reason or "")
    assert e2.checkpoint() == {} and e2.count("*") == 0
    assert e2.stats()["rebuild_reason"] == e2.rebuild_reason
    assert os.listdir(tmp_path / "segments") == []
    e2.close()


def test_unreadable_manifest_is_an_error_not_a_silent_empty_index(tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(EngineError, match="manifest"):
        Engine(str(tmp_path))
    (tmp_path / "meta.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(EngineError, match="format 99"):
        Engine(str(tmp_path))


def test_files_no_manifest_names_are_removed_at_start(tmp_path):
    e = Engine(str(tmp_path), max_segment_docs=50)
    e.apply(rand_ops(random.Random(4), 200, 100), {0: 200})
    e.close()
    (tmp_path / "segments" / "99999999.pss").write_bytes(b"junk")
    (tmp_path / "segments" / "00000001.pss.tmp").write_bytes(b"junk")
    (tmp_path / "segments" / "keep-me.txt").write_bytes(b"not ours")
    Engine(str(tmp_path)).close()
    left = set(os.listdir(tmp_path / "segments"))
    assert "99999999.pss" not in left and "00000001.pss.tmp" not in left
    assert "keep-me.txt" in left


def test_background_tiered_compaction_bounds_the_segment_count(tmp_path):
    e = Engine(str(tmp_path), max_segment_docs=100, merge_factor=3)
    rng = random.Random(5)
    for i in range(40):
        e.apply(rand_ops(rng, 100, 5000), {0: (i + 1) * 100})
    e.flush()
    e.compact()  # waits for the background thread; then one file
    assert e.stats()["segment_files"] == 1
    assert e.stats()["compactions"] >= 1
    e.close()


def test_readers_never_see_a_key_twice_or_miss_one_while_segments_move(tmp_path):
    """Every key is always live: a writer keeps updating them (an update
    deletes the old version in whichever segment holds it) while flushes
    and compactions swap segments; readers check every result."""
    keys = 200
    e = Engine(str(tmp_path), max_segment_docs=150, merge_factor=2, writer_threads=2)
    e.apply([Op("index", f"k{i}", 0, "cat", [], float(i), b"") for i in range(keys)], {0: keys})
    stop = threading.Event()
    failures: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            n = e.count("cat")
            hits = e.search("cat", 1000, "score")
            ks = [h.key for h in hits]
            if n != keys or len(ks) != keys or len(set(ks)) != keys:
                failures.append(f"count {n}, hits {len(ks)}, distinct {len(set(ks))}")
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    rng = random.Random(6)
    pos = keys
    for v in range(1, 60):
        ops = [Op("index", f"k{rng.randrange(keys)}", v, "cat", [], float(v), b"")
               for _ in range(50)]
        pos += len(ops)
        e.apply(ops, {0: pos})
        if v % 20 == 0:
            e.flush()
            e.compact()
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    e.close()


def test_memory_only_engine(tmp_path):
    e = Engine(None, max_segment_docs=100)
    model = ModelSegment()
    ops = rand_ops(random.Random(7), 400, 300)
    e.apply(ops, {0: 400})
    model_apply(model, ops)
    assert_same(e, model)
    assert e.flush()["flushed"] is False
    assert e.checkpoint() == {}
    e.close()


def test_closed_engine_refuses_writes(tmp_path):
    e = Engine(str(tmp_path))
    e.close()
    with pytest.raises(EngineError, match="closed"):
        e.apply([Op("index", "a", 1, "x", [], 0.0, b"")], {0: 1})


def test_flush_waits_for_what_was_sealed_when_asked_not_for_what_follows(tmp_path):
    """Ingestion that keeps sealing segments (tiny segments, the sealed
    queue always full) must not starve an admin flush."""
    e = Engine(str(tmp_path), max_segment_docs=5, max_sealed=2)
    stop = threading.Event()

    def ingest() -> None:
        v = 0
        while not stop.is_set():
            v += 1
            e.apply([Op("index", f"k{i}", v, "cat", [], 0.0, b"") for i in range(25)], {0: v})

    t = threading.Thread(target=ingest)
    t.start()
    try:
        for _ in range(3):
            result = e.flush(timeout=20)
            assert result["generation"] >= 1
        e.compact()  # likewise: what is there now, once
    finally:
        stop.set()
        t.join()
    e.close()
