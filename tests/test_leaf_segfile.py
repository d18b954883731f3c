"""Immutable segment files and queries across segments (src/_core/index/
segfile.c, query.c's views), against the pure-Python model.

A small LSM is driven here by hand, exactly as the leaf's engine drives
it: an active RealtimeSegment whose adds and deletes see the older
segments (older=...), rotation (seal, new active with base = seq_end),
flush (write_segment of a sealed segment, carry the deletes that landed
meanwhile, swap), compaction (write_segment of several files), and
restart (reopen the files, shadow). After every step every query, count
and get over the whole view must equal the model's over one logical
segment: one live version per key, the newest, in add order.
"""

from __future__ import annotations

import os
import random

import pytest
from leaf_model import ModelSegment

from pinstack._core._index import (
    RealtimeSegment,
    SegmentFile,
    SegmentFileError,
    count_view,
    get_view,
    search_view,
    shadow,
    view_snapshot,
    write_segment,
)

WORDS = ["cat", "dog", "bird", "fish", "mat", "sat", "red", "blue", "one", "two"]
QUERIES = [
    "cat",
    "dog",
    "cat dog",
    "cat OR dog OR bird",
    "cat -dog",
    "(red OR blue) -fish",
    "*",
    "tag:a",
    "tag:b OR tag:c",
    "mat AND tag:a",
    "zebra",
    "-cat",
]


class Lsm:
    """What the engine does, minus threads and the manifest."""

    def __init__(self, root: str, writer_threads: int = 2) -> None:
        self.root = root
        self.writer_threads = writer_threads
        self.files: list[SegmentFile] = []
        self.sealed: list[RealtimeSegment] = []
        self.active = RealtimeSegment(writer_threads=writer_threads, base=1)
        self.seq = 0

    def sources(self) -> list:
        return [*self.files, *self.sealed, self.active]

    def older(self) -> list:
        return [*self.files, *self.sealed][::-1]

    def add_batch(self, docs: list) -> int:
        return self.active.add_batch(docs, older=self.older())

    def delete(self, key: str, version: int) -> bool:
        return self.active.delete(key, version, older=self.older())

    def rotate(self) -> None:
        self.active.seal()
        self.sealed.append(self.active)
        self.active = RealtimeSegment(writer_threads=self.writer_threads,
                                      base=self.active.seq_end)

    def _path(self) -> str:
        self.seq += 1
        return os.path.join(self.root, f"seg-{self.seq:06d}.pss")

    def flush(self) -> None:
        if not self.sealed:
            return
        seg = self.sealed[0]
        stats, remap = write_segment(self._path(), [seg], view_snapshot(self.sources()))
        f = SegmentFile(self._last_path())
        assert stats["docs"] == f.docs
        remap.carry(f)
        self.files.append(f)
        self.sealed.pop(0)

    def _last_path(self) -> str:
        return os.path.join(self.root, f"seg-{self.seq:06d}.pss")

    def compact(self, i: int, j: int) -> None:
        if j - i < 1:
            return
        inputs = self.files[i:j]
        stats, remap = write_segment(self._path(), inputs, view_snapshot(self.sources()))
        f = SegmentFile(self._last_path())
        remap.carry(f)
        self.files[i:j] = [f]

    def restart(self) -> None:
        """Flush everything, then reopen the files as a new process would."""
        self.rotate()
        while self.sealed:
            self.flush()
        paths = [f.path for f in self.files]
        self.files = [SegmentFile(p) for p in paths]
        shadow(self.files)
        self.active = RealtimeSegment(writer_threads=self.writer_threads, base=1)


def check_same(lsm: Lsm, model: ModelSegment, keys: list[str]) -> None:
    src = lsm.sources()
    for q in QUERIES:
        assert count_view(src, q) == model.count(q), q
        for order in ("score", "recent"):
            got = [(h.key, h.version, h.blob) for h in search_view(src, q, 7, order)]
            want = [(h.key, h.version, h.blob) for h in model.search(q, 7, order)]
            assert got == want, (q, order)
        # BM25's statistics count deleted documents until they are merged
        # away (as Lucene's do), so compare what matches, not the scores.
        n = model.count(q)
        if n:
            got = {h.key for h in search_view(src, q, min(n, 10000), "bm25")}
            assert got == {h.key for h in model.search(q, min(n, 10000), "bm25")}, q
    for k in keys:
        g, w = get_view(src, k), model.get(k)
        assert (g is None) == (w is None), k
        if g is not None:
            assert (g.key, g.version, g.blob, g.score) == (w.key, w.version, w.blob, w.score)


def random_doc(rng: random.Random, key: str, version: int) -> tuple:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8)))
    terms = [f"tag:{rng.choice('abc')}" for _ in range(rng.randint(0, 2))]
    blob = (f"{key}/{version}/" + "x" * rng.randint(0, 300)).encode()
    return (key, version, text or None, terms, float(rng.randint(0, 20)), blob)


@pytest.mark.parametrize("seed", range(40))
def test_lsm_matches_the_model_through_flush_compaction_and_restart(tmp_path, seed):
    rng = random.Random(seed)
    lsm = Lsm(str(tmp_path), writer_threads=1 + seed % 3)
    model = ModelSegment()
    keys = [f"k{i}" for i in range(60)]
    for _ in range(40):
        op = rng.random()
        if op < 0.55:
            batch = [random_doc(rng, rng.choice(keys), rng.randint(0, 12))
                     for _ in range(rng.randint(1, 25))]
            assert lsm.add_batch(batch) == model.add_batch(batch)
        elif op < 0.7:
            k, v = rng.choice(keys), rng.randint(0, 12)
            assert lsm.delete(k, v) == model.delete(k, v), (k, v)
        elif op < 0.8:
            lsm.rotate()
        elif op < 0.9:
            lsm.flush()
        elif op < 0.97:
            if len(lsm.files) >= 2:
                i = rng.randrange(len(lsm.files) - 1)
                lsm.compact(i, rng.randint(i + 2, len(lsm.files)))
        else:
            lsm.restart()
        check_same(lsm, model, keys)
    lsm.restart()
    check_same(lsm, model, keys)
    # and everything compacted into one file drops every dead document
    lsm.compact(0, len(lsm.files))
    assert len(lsm.files) <= 1
    if lsm.files:
        st = lsm.files[0].stats()
        assert st["docs"] == st["docs_live"] == model.count("*")
    check_same(lsm, model, keys)


def test_file_answers_like_the_segment_it_was_written_from(tmp_path):
    """No deletes: the same documents, terms, postings and statistics, so
    every order (BM25 too) gives identical hits and scores, across block
    boundaries of long posting lists and short ones."""
    rng = random.Random(7)
    seg = RealtimeSegment(writer_threads=2)
    docs = [random_doc(rng, f"d{i}", 1) for i in range(3000)]
    for i in range(0, 3000, 500):
        seg.add_batch(docs[i:i + 500])
    seg.seal()
    path = str(tmp_path / "a.pss")
    stats, _ = write_segment(path, [seg], view_snapshot([seg]))
    f = SegmentFile(path)
    assert stats["docs"] == f.docs == 3000 == len(f)
    assert f.stats()["postings"] == seg.stats()["postings"]
    assert f.stats()["terms"] == seg.stats()["terms"]
    for q in QUERIES + ["cat dog bird", "cat OR dog OR bird OR fish OR mat", "one two -red"]:
        assert f.count(q) == seg.count(q), q
        for order in ("score", "bm25", "recent"):
            for k in (1, 10, 1000):
                a = [(h.key, h.version, h.blob, round(h.score, 9)) for h in seg.search(q, k, order)]
                b = [(h.key, h.version, h.blob, round(h.score, 9)) for h in f.search(q, k, order)]
                assert a == b, (q, order, k)
    for i in (0, 1, 15, 16, 17, 2999):
        h = f.get(f"d{i}")
        want = (docs[i][0].encode(), 1, docs[i][5], docs[i][4])
        assert (h.key, h.version, h.blob, h.score) == want
    assert f.get("nope") is None


def test_ties_across_a_file_and_an_active_segment_rank_the_newest_first(tmp_path):
    """Documents that score exactly alike in a file (many blocks) and in the
    active segment after it: top-K by every order is the newest live ones,
    the active segment's first, then the file's from its end, though blocks
    and ranges whose bound only ties the worst kept hit are skipped."""
    old = RealtimeSegment(writer_threads=2, base=1)
    old.add_batch([(f"f{i}", 1, "alike words", ["tag:t"], 1.0, b"") for i in range(4000)])
    old.seal()
    path = str(tmp_path / "ties.pss")
    write_segment(path, [old], view_snapshot([old]))
    f = SegmentFile(path)
    active = RealtimeSegment(writer_threads=2, base=old.seq_end)
    for n_active in (0, 3, 300):
        if n_active:
            active.add_batch([(f"a{i}", 1, "alike words", ["tag:t"], 1.0, b"")
                              for i in range(len(active), n_active)], older=[f])
        want = [f"a{i}".encode() for i in reversed(range(n_active))]
        want += [f"f{i}".encode() for i in reversed(range(4000))]
        for q in ("tag:t", "alike", "alike tag:t", "tag:t OR words", "alike -nothing"):
            for order in ("score", "bm25", "recent"):
                for k in (1, 10, 500):
                    got = [h.key for h in search_view([f, active], q, k, order)]
                    assert got == want[:k], (n_active, q, order, k)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_and_counts_equal_set_intersections_in_a_segment_and_its_file(tmp_path, seed):
    """AND counts of terms of very different densities (the leapfrog that
    scans the denser list 16 doc ids at a time, across bucket and block
    boundaries), two and three operands, before and after deletes, in the
    realtime segment and in the file written from it: each equals the
    intersection of the terms' document sets."""
    rng = random.Random(seed)
    n = 30000
    density = {"d50": 0.5, "d20": 0.2, "d5": 0.05, "d1": 0.01, "d01": 0.001}
    has = {t: {i for i in range(n) if rng.random() < p} for t, p in density.items()}
    docs = [(f"k{i}", 1, None, [t for t in density if i in has[t]], 0.0, b"")
            for i in range(n)]
    rt = RealtimeSegment(writer_threads=2, base=1)  # stays writable
    sealed = RealtimeSegment(writer_threads=2, base=1)
    for s in (rt, sealed):
        for i in range(0, n, 5000):
            s.add_batch(docs[i:i + 5000])
    sealed.seal()
    path = str(tmp_path / "and.pss")
    write_segment(path, [sealed], view_snapshot([sealed]))
    f = SegmentFile(path)
    active = RealtimeSegment(base=sealed.seq_end)  # deletes the file's documents
    pairs = [(a, b) for a in density for b in density if a < b]
    queries = [(("and", ("term", a), ("term", b)), has[a] & has[b]) for a, b in pairs]
    queries += [(("and", ("term", "d1"), ("term", "d5"), ("term", "d50")),
                 has["d1"] & has["d5"] & has["d50"]),
                (("and", ("term", "d01"), ("term", "d20"), ("term", "d50")),
                 has["d01"] & has["d20"] & has["d50"])]
    deleted: set[int] = set()
    for _ in range(2):
        for q, want in queries:
            live = len(want - deleted)
            assert rt.count(q) == live, (q, "segment")
            assert count_view([f, active], q) == live, (q, "file")
        gone = rng.sample(sorted(set(range(n)) - deleted), 3000)  # delete some, in both
        deleted.update(gone)
        for i in gone:
            assert rt.delete(f"k{i}")
            assert active.delete(f"k{i}", older=[f])


def test_and_counts_hold_on_the_sse2_intersection_too():
    """Where the CPU has AVX2 the intersection runs its AVX2 build; the same
    AND-count checks again with PINSTACK_NO_AVX2=1 (read once, at first
    use: so in a process of their own) cover the SSE2 build every x86-64
    runs."""
    import subprocess
    import sys

    env = dict(os.environ, PINSTACK_NO_AVX2="1")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-disable",
         f"{__file__}::test_and_counts_equal_set_intersections_in_a_segment_and_its_file"],
        env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 passed" in out.stdout, out.stdout[-2000:]


FORMAT1_FILE = os.path.join(os.path.dirname(__file__), "data", "segment-format1.pss")


def format1_docs() -> list[tuple]:
    """The documents of tests/data/segment-format1.pss, which the build of
    commit e4fd064 (format 1) wrote from them, sealed, in this order."""
    rng = random.Random(5)
    words = ["cat", "dog", "bird", "fish", "mat", "sat", "red", "blue"]
    out = []
    for i in range(700):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 12)))
        out.append((f"d{i}", 1, text, [f"tag:{i % 3}"], float(i % 7), f"b{i}".encode()))
    return out


def test_a_format_1_file_is_still_read_and_answers_like_a_new_one(tmp_path):
    """Format 2 added per-block length bounds by term-frequency class; a
    file of format 1 (without them) opens, and every query, order and k
    gives what the same documents give in a segment and in a format 2
    file (its BM25 block bounds are looser, its answers the same)."""
    with open(FORMAT1_FILE, "rb") as fh:
        assert int.from_bytes(fh.read(12)[8:12], "little") == 1
    old = SegmentFile(FORMAT1_FILE)
    seg = RealtimeSegment(base=1)
    seg.add_batch(format1_docs())
    seg.seal()
    path = str(tmp_path / "new.pss")
    write_segment(path, [seg], view_snapshot([seg]))
    with open(path, "rb") as fh:
        assert int.from_bytes(fh.read(12)[8:12], "little") == 2
    new = SegmentFile(path)
    assert len(old) == len(new) == 700
    for q in QUERIES + ["cat dog bird", "cat OR dog OR bird OR fish OR mat", "red -tag:1"]:
        assert old.count(q) == new.count(q) == seg.count(q), q
        for order in ("score", "bm25", "recent"):
            for k in (1, 10, 1000):
                want = [(h.key, h.version, h.blob, round(h.score, 9))
                        for h in seg.search(q, k, order)]
                for f in (old, new):
                    got = [(h.key, h.version, h.blob, round(h.score, 9))
                           for h in f.search(q, k, order)]
                    assert got == want, (q, order, k)


def test_a_format_newer_than_this_build_is_refused(tmp_path):
    data = bytearray(open(FORMAT1_FILE, "rb").read())
    data[8:12] = (3).to_bytes(4, "little")
    data[-16:-12] = (3).to_bytes(4, "little")
    path = tmp_path / "future.pss"
    path.write_bytes(bytes(data))
    with pytest.raises(SegmentFileError, match=r"has format 3; this build reads formats 1 to 2"):
        SegmentFile(str(path))


def test_write_refuses_an_unsealed_segment_and_an_unwritable_path(tmp_path):
    seg = RealtimeSegment()
    seg.add("a", 1, text="x")
    with pytest.raises(ValueError, match="sealed"):
        write_segment(str(tmp_path / "a.pss"), [seg], view_snapshot([seg]))
    seg.seal()
    with pytest.raises(SegmentFileError, match="cannot create"):
        write_segment(str(tmp_path / "no" / "such" / "dir.pss"), [seg], view_snapshot([seg]))
    assert os.listdir(tmp_path) == []


def test_an_empty_segment_writes_and_reads(tmp_path):
    seg = RealtimeSegment()
    seg.add("a", 1, text="x")
    seg.delete("a", 2)  # leaves a tombstone and no document
    seg.seal()
    path = str(tmp_path / "e.pss")
    stats, _ = write_segment(path, [seg], view_snapshot([seg]))
    assert stats["docs"] == 0 and stats["tombstones"] == 1
    f = SegmentFile(path)
    assert len(f) == 0 and f.count("*") == 0 and f.search("x") == [] and f.get("a") is None
    # the tombstone still drops an older version arriving later
    act = RealtimeSegment(base=seg.seq_end)
    assert act.add_batch([("a", 1, "x", [], 0.0, b"")], older=[f]) == 0
    assert act.add_batch([("a", 3, "x", [], 0.0, b"")], older=[f]) == 1


@pytest.fixture
def good_file(tmp_path):
    rng = random.Random(3)
    seg = RealtimeSegment()
    seg.add_batch([random_doc(rng, f"d{i}", 1) for i in range(500)])
    seg.seal()
    path = str(tmp_path / "g.pss")
    write_segment(path, [seg], view_snapshot([seg]))
    return path


def test_truncated_files_are_refused_with_a_clear_error(good_file):
    data = open(good_file, "rb").read()
    for cut in (0, 1, 15, 16, 100, len(data) // 2, len(data) - 17, len(data) - 8, len(data) - 1):
        with open(good_file, "wb") as fh:
            fh.write(data[:cut])
        with pytest.raises(SegmentFileError, match="truncated|too short"):
            SegmentFile(good_file)


def test_every_flipped_byte_is_caught(good_file):
    data = bytearray(open(good_file, "rb").read())
    rng = random.Random(11)
    positions = sorted(set(rng.randrange(len(data)) for _ in range(200)) | {0, 8, len(data) - 1})
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        with open(good_file, "wb") as fh:
            fh.write(bad)
        with pytest.raises(SegmentFileError, match="damaged|format|not a segment file|end marker"):
            SegmentFile(good_file)
    with open(good_file, "wb") as fh:
        fh.write(data)
    assert len(SegmentFile(good_file)) == 500


def test_missing_file(tmp_path):
    with pytest.raises(SegmentFileError, match="No such file"):
        SegmentFile(str(tmp_path / "nope.pss"))
