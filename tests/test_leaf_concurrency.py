"""pinstack.leaf.RealtimeSegment under one writer and several readers at
once, for seconds, with the GIL released inside search/count/get and the
writer's indexing (add_batch hands each batch to writer_threads=2).

What a reader may rely on, and what each test checks for:

    no partial document    every document carries the terms "all",
                           "part:a", "part:b", "doc:<i>" and text words; a
                           committed document has all of them, so
                           ("andnot", "part:a", "part:b") never matches, and
                           a document found by one of its terms is found, by
                           a later query, by all of them together
    committed prefix       a hit's doc id is below docs_committed read
                           afterwards; what is visible only grows while only
                           adds happen; a batch becomes visible as a growing
                           prefix, while add_batch is still running
    visible on return      a document is found by any reader as soon as the
                           writer's add/add_batch has returned
    updates                a search never returns a key twice; a key's
                           version seen by one reader never goes back;
                           count of a key's term is 0, 1 or (the instant
                           of an update) 2; a key being updated never
                           vanishes from a search, however long it runs
    seal                   readers go on during and after seal(); the
                           writer's next write raises SegmentSealed
    writer threads         a batch handed over before the shard threads
                           have started is still taken (no deadlock);
                           segments made and freed from several threads

Each test runs for DURATION seconds (PINSTACK_LEAF_STRESS_SECONDS to change
it) whatever the machine: a sanitizer build does fewer iterations, not a
longer run. A reader that crashes the process fails the whole run.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

import pytest

from pinstack.leaf import RealtimeSegment, SegmentSealed

# A deadlock inside the C blocks the main thread with the GIL released,
# where pytest-timeout's default (signal) method never gets to run: the
# thread method fails the run instead of hanging it (with --timeout=N).
pytestmark = pytest.mark.timeout(method="thread")

DURATION = float(os.environ.get("PINSTACK_LEAF_STRESS_SECONDS", "2.0"))
READERS = 3

# ---- harness ---------------------------------------------------------------


class Run:
    """Threads that loop until `stop` is set; the first exception of any of
    them is re-raised by finish() with the thread's name."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[tuple[str, BaseException]] = []
        self.threads: list[threading.Thread] = []
        self.iterations: dict[str, int] = {}

    def spawn(self, name: str, body: Callable[[], None], loop: bool = True) -> None:
        def main() -> None:
            n = 0
            try:
                if loop:
                    while not self.stop.is_set():
                        body()
                        n += 1
                else:
                    body()
                    n = 1
            except BaseException as e:  # reported by finish()
                self.errors.append((name, e))
                self.stop.set()
            finally:
                self.iterations[name] = n

        thread = threading.Thread(target=main, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def finish(self, timeout: float = 60.0) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
            assert not t.is_alive(), f"thread {t.name} did not stop within {timeout} s"
        if self.errors:
            name, error = self.errors[0]
            raise AssertionError(f"{name} failed: {error!r}") from error


def doc_terms(i: int) -> list[str]:
    return [f"doc:{i}", "all", "part:a", "part:b"] + [f"f{i % 97}:{j}" for j in range(6)]


def doc_text(i: int) -> str:
    return f"Common words of doc{i} and w{i % 13} w{i % 29} end"


def doc_item(i: int) -> tuple:
    return (f"d{i}", 1, doc_text(i), doc_terms(i), float(i % 7), b"blob:%d" % i)


def doc_query(i: int) -> tuple:
    """Every term of document i, text tokens included."""
    terms = doc_terms(i) + ["common", f"doc{i}", f"w{i % 13}", f"w{i % 29}", "end"]
    return ("and", *(("term", t) for t in terms))


def check_hit_is_whole(seg, hit, order: str = "recent") -> None:
    """A hit of document i: its forward record and every posting are there."""
    i = int(hit.key[1:])
    assert hit.blob == b"blob:%d" % i and hit.version == 1, hit
    if order != "bm25":
        assert hit.score == float(i % 7), hit
    assert seg.count(doc_query(i)) == 1, f"doc {i} found by one term, not by all: {hit}"
    got = seg.get(hit.key)
    assert got is not None and got.doc_id == hit.doc_id, (hit, got)


def writer_of_batches(seg, published: list[int], rng: random.Random,
                      sizes=(1, 7, 64, 300)) -> Callable[[], None]:
    """A writer body: the next documents as one add_batch or single adds;
    published[0] is how many are indexed (set after the call returns)."""

    def body() -> None:
        start = published[0]
        n = rng.choice(sizes)
        if rng.random() < 0.2:
            for i in range(start, start + min(n, 20)):
                item = doc_item(i)
                assert seg.add(item[0], item[1], text=item[2], terms=item[3], score=item[4],
                               blob=item[5]) == i
                published[0] = i + 1
        else:
            assert seg.add_batch([doc_item(i) for i in range(start, start + n)]) == n
            published[0] = start + n

    return body


# ---- the writer threads ----------------------------------------------------


@pytest.mark.parametrize("writer_threads", [2, 4])
def test_add_batch_right_after_construction_does_not_deadlock(writer_threads):
    """The shard threads may not have started yet when the first batch is
    handed over: they must still take it. Fresh segments, first call an
    add_batch, each in a thread given 10 s (a deadlock fails, not hangs)."""
    done: list[int] = []

    def make_and_fill():
        for _ in range(100):
            seg = RealtimeSegment(writer_threads=writer_threads)
            assert seg.add_batch([doc_item(0), doc_item(1)]) == 2
            assert seg.count("all") == 2
            done.append(1)

    thread = threading.Thread(target=make_and_fill, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), (
        f"add_batch never returned: deadlock in the hand-off to the shard threads "
        f"(after {len(done)} segments)")


def test_add_then_add_batch_then_add():
    """Single adds (the owner alone) and batches (the shard threads) mixed."""
    done: list[int] = []

    def mix():
        seg = RealtimeSegment(writer_threads=3)
        i = 0
        for round_ in range(200):
            for _ in range(round_ % 3):
                item = doc_item(i)
                seg.add(item[0], item[1], text=item[2], terms=item[3], score=item[4],
                        blob=item[5])
                i += 1
            n = round_ % 4
            assert seg.add_batch([doc_item(j) for j in range(i, i + n)]) == n
            i += n
            assert seg.count("all") == i
        done.append(i)

    thread = threading.Thread(target=mix, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "a write never returned: deadlock"
    assert done


# ---- adds only -------------------------------------------------------------


def test_readers_never_see_a_partial_document():
    seg = RealtimeSegment(writer_threads=2)
    run = Run()
    published = [0]
    end = time.monotonic() + DURATION

    def stop_after(body):
        def wrapped():
            if time.monotonic() > end:
                run.stop.set()
                return
            body()
        return wrapped

    def detector():
        # No committed document has one of these terms without the other.
        for include, exclude in [("part:a", "part:b"), ("part:b", "part:a"),
                                 ("all", "common"), ("common", "end"), ("end", "all")]:
            q = ("andnot", ("term", include), ("term", exclude))
            assert seg.count(q) == 0, f"a partial document: {q} matches"
            assert seg.search(q, k=3) == [], f"a partial document: {q} returns hits"

    def newest_is_whole():
        for term in ["part:b", "all", "common", "end", "part:a"]:
            for hit in seg.search(("term", term), k=3, order="recent"):
                check_hit_is_whole(seg, hit)
        hits = seg.search("*", k=5, order="recent")
        committed = seg.stats()["docs_committed"]  # read after: it only grows
        for hit in hits:
            assert hit.doc_id < committed, (hit, committed)

    rng = random.Random(7)

    def random_probe():
        top = seg.search("all", k=1, order="recent")
        if not top:
            return
        i = rng.randrange(top[0].doc_id + 1)  # visible: the newest one is
        assert seg.count(("term", rng.choice(doc_terms(i)))) >= 1
        assert seg.count(doc_query(i)) == 1, f"doc {i} below the newest is not whole"

    run.spawn("detector", detector)
    run.spawn("newest", newest_is_whole)
    run.spawn("probe", random_probe)
    run.spawn("writer", stop_after(writer_of_batches(seg, published, random.Random(1))))
    time.sleep(DURATION)
    run.finish()
    n = published[0]
    assert n > 100, f"the writer indexed only {n} documents"
    assert seg.count("all") == seg.count("common") == n
    assert seg.stats()["docs_committed"] == n
    assert min(run.iterations.values()) > 0, run.iterations


def test_visible_documents_only_grow_and_stay_below_the_watermark():
    seg = RealtimeSegment(writer_threads=2)
    run = Run()
    published = [0]
    deadline = time.monotonic() + DURATION

    def reader(seed: int) -> Callable[[], None]:
        last = {"n": 0}
        rng = random.Random(seed)
        terms = ["all", "part:a", "part:b", "common", "end"]

        def body() -> None:
            # Every document has every one of `terms`: whichever is asked,
            # the count never falls below one seen before.
            c = seg.count(("term", rng.choice(terms)))
            assert c >= last["n"], f"visible documents went from {last['n']} to {c}"
            last["n"] = c
            # Documents the writer has returned from are all visible.
            done = published[0]
            assert seg.count("all") >= done, "an added document is not visible"
            hits = seg.search("part:a", k=rng.choice([1, 10, 100]),
                              order=rng.choice(["recent", "score", "bm25"]))
            committed = seg.stats()["docs_committed"]
            for h in hits:
                assert h.doc_id < committed, f"doc id {h.doc_id} >= committed {committed}"
                assert h.key == b"d%d" % h.doc_id
            if done:
                i = rng.randrange(done)
                assert seg.count(("term", f"doc:{i}")) == 1, f"doc {i} added but not found"
                assert seg.get(f"d{i}") is not None, f"doc {i} added but get() misses it"

        return body

    def writer():
        if time.monotonic() > deadline:
            run.stop.set()
            return
        write()

    write = writer_of_batches(seg, published, random.Random(2))
    for r in range(READERS):
        run.spawn(f"reader{r}", reader(r))
    run.spawn("writer", writer)
    time.sleep(DURATION)
    run.finish()
    assert seg.count("all") == published[0] == seg.stats()["docs_committed"]
    assert min(run.iterations.values()) > 0, run.iterations


def test_a_batch_becomes_visible_as_a_growing_prefix_while_add_batch_runs():
    """add_batch releases the GIL and commits document by document: a reader
    running meanwhile sees counts strictly between 0 and the batch size, and
    what it sees is always a prefix of the batch."""
    n = 60_000
    batch = [doc_item(i) for i in range(n)]
    seg = RealtimeSegment(writer_threads=2)
    run = Run()
    seen: list[int] = []
    writing = threading.Event()

    def reader():
        if not writing.is_set():
            time.sleep(0.0001)
            return
        mine: list[int] = []
        while not run.stop.is_set():
            top = seg.search("all", k=1, order="recent")
            c = seg.count("all")
            if top:
                # the newest visible doc is h: then every doc below h is too
                assert c >= top[0].doc_id + 1, f"not a prefix: doc {top[0].doc_id} of {c}"
                check_hit_is_whole(seg, top[0])
            assert not mine or c >= mine[-1], f"visible documents went from {mine[-1]} to {c}"
            mine.append(c)
        seen.extend(mine)

    def writer():
        writing.set()
        assert seg.add_batch(batch) == n

    for r in range(2):
        run.spawn(f"reader{r}", reader)
    run.spawn("writer", writer, loop=False)
    for t in run.threads[-1:]:
        t.join(60)
    run.finish()
    assert seg.count("all") == n
    middle = [c for c in seen if 0 < c < n]
    assert middle, ("no reader saw the batch part-way: add_batch holds the GIL or commits "
                    f"only at its end (counts seen: {sorted(set(seen))[:10]}...)")


# ---- updates ---------------------------------------------------------------

KEYS = 300


def update_writer(seg, run: Run, versions: list[int], rng: random.Random, deadline: float,
                  delete: bool = False):
    """Re-adds random keys with ever higher versions (batches and single
    adds); with delete=True also deletes some (versioned)."""

    def item(k: int) -> tuple:
        versions[k] += 1
        v = versions[k]
        return (f"key{k}", v, f"common v{v % 5}", [f"key:{k}", "all", "part:a", "part:b"],
                float(v % 11), b"key%d:%d" % (k, v))

    def body() -> None:
        if time.monotonic() > deadline:
            run.stop.set()
            return
        r = rng.random()
        if r < 0.15:
            k = rng.randrange(KEYS)
            _, v, text, terms, score, blob = item(k)
            seg.add(f"key{k}", v, text=text, terms=terms, score=score, blob=blob)
        elif delete and r < 0.3:
            k = rng.randrange(KEYS)
            versions[k] += 1
            seg.delete(f"key{k}", versions[k])
        else:
            keys = rng.sample(range(KEYS), rng.choice([1, 5, 50, 200]))
            seg.add_batch([item(k) for k in keys])

    return body


def check_update_hit(hit, order: str = "score") -> int:
    """The hit's forward record is the one written with its version; its key number."""
    k, v = hit.blob.decode().removeprefix("key").split(":")
    assert hit.key == b"key" + k.encode() and hit.version == int(v), hit
    if order != "bm25":
        assert hit.score == float(int(v) % 11), hit
    return int(k)


def test_concurrent_updates_never_show_a_key_twice():
    seg = RealtimeSegment(writer_threads=2)
    versions = [0] * KEYS
    seg.add_batch([(f"key{k}", 0, "common", [f"key:{k}", "all", "part:a", "part:b"], 0.0,
                    b"key%d:0" % k) for k in range(KEYS)])
    run = Run()
    deadline = time.monotonic() + DURATION
    doubles = [0]

    def reader(seed: int) -> Callable[[], None]:
        rng = random.Random(seed)
        newest = [0] * KEYS  # the highest version this reader has seen per key

        def body() -> None:
            order = rng.choice(["score", "recent", "bm25"])
            hits = seg.search(rng.choice(["all", "common", "part:a part:b"]),
                              k=rng.choice([10, 1000]), order=order)
            keys = [h.key for h in hits]
            assert len(keys) == len(set(keys)), f"a key twice in one search ({order})"
            for h in hits:
                check_update_hit(h, order)
            k = rng.randrange(KEYS)
            c = seg.count(("term", f"key:{k}"))
            assert c in (0, 1, 2), f"count of key:{k} is {c}"
            doubles[0] += c == 2
            got = seg.search(("term", f"key:{k}"), k=5, order=rng.choice(["score", "recent"]))
            assert len(got) <= 1, f"key{k} twice: {got}"
            for h in got:
                check_update_hit(h)
                assert h.version >= newest[k], f"key{k} went back from {newest[k]} to {h}"
                newest[k] = h.version
            g = seg.get(f"key{k}")
            if g is not None:
                check_update_hit(g)
                assert g.version >= newest[k], f"get(key{k}) went back: {newest[k]} -> {g}"
                newest[k] = g.version

        return body

    for r in range(READERS):
        run.spawn(f"reader{r}", reader(r))
    run.spawn("writer", update_writer(seg, run, versions, random.Random(3), deadline))
    time.sleep(DURATION)
    run.finish()
    assert len(seg) == KEYS == seg.count("all")
    for k in range(0, KEYS, 7):
        assert seg.get(f"key{k}").version == versions[k]
    assert seg.stats()["docs_deleted"] == seg.stats()["docs_committed"] - KEYS


def test_a_key_never_vanishes_while_it_is_updated():
    """An update is add-new then delete-old: a reader may meet both versions
    (the documented instant), but never neither. So once every key exists
    and none is deleted, a query for all of them finds every key, however
    long it runs while the writer supersedes documents under it."""
    seg = RealtimeSegment(writer_threads=2)
    versions = [0] * KEYS
    seg.add_batch([(f"key{k}", 0, "common", [f"key:{k}", "all", "part:a", "part:b"], 0.0,
                    b"key%d:0" % k) for k in range(KEYS)])
    run = Run()
    deadline = time.monotonic() + DURATION
    short = []

    def reader(seed: int) -> Callable[[], None]:
        rng = random.Random(seed)

        def body() -> None:
            q = rng.choice(["all", "common", ("and", ("term", "part:a"), ("term", "part:b"))])
            c = seg.count(q)
            order = rng.choice(["score", "recent", "bm25"])
            hits = seg.search(q, k=2 * KEYS, order=order)
            found = {check_update_hit(h, order) for h in hits}
            if c < KEYS or len(found) < KEYS:
                short.append((q, c, len(found)))
            k = rng.randrange(KEYS)
            if seg.count(("term", f"key:{k}")) == 0 or seg.get(f"key{k}") is None:
                short.append((f"key:{k}", 0, 0))

        return body

    for r in range(READERS):
        run.spawn(f"reader{r}", reader(r))
    run.spawn("writer", update_writer(seg, run, versions, random.Random(4), deadline))
    time.sleep(DURATION)
    run.finish()
    assert not short, (f"{len(short)} reads missed keys that were only being updated, e.g. "
                       f"(query, count, keys found) = {short[:5]}")


def test_updates_and_deletes_keep_documents_whole():
    seg = RealtimeSegment(writer_threads=2)
    versions = [0] * KEYS
    run = Run()
    deadline = time.monotonic() + DURATION

    def reader(seed: int) -> Callable[[], None]:
        rng = random.Random(seed)

        def body() -> None:
            q = ("andnot", ("term", "part:a"), ("term", "part:b"))
            assert seg.count(q) == 0 and seg.search(q) == []
            order = rng.choice(["score", "recent", "bm25"])
            hits = seg.search("all", k=rng.choice([5, 500]), order=order)
            committed = seg.stats()["docs_committed"]
            assert len({h.key for h in hits}) == len(hits)
            for h in hits:
                assert h.doc_id < committed
                k = check_update_hit(h, order)
                assert seg.count(("and", ("term", f"key:{k}"), ("term", "part:b"),
                                  ("term", "common"))) <= 2

        return body

    for r in range(READERS):
        run.spawn(f"reader{r}", reader(r))
    run.spawn("writer", update_writer(seg, run, versions, random.Random(5), deadline,
                                      delete=True))
    time.sleep(DURATION)
    run.finish()
    live = {h.key for h in seg.search("all", k=10 * KEYS)}
    assert len(live) == len(seg) == seg.count("all")
    for key in live:
        k = int(key[3:])
        assert seg.get(key).version == versions[k]


# ---- seal ------------------------------------------------------------------


def test_readers_go_on_while_the_segment_is_sealed():
    seg = RealtimeSegment(writer_threads=2)
    run = Run()
    published = [0]
    sealed_at: list[int] = []
    write = writer_of_batches(seg, published, random.Random(6))

    def writer():
        try:
            write()
        except SegmentSealed:
            sealed_at.append(published[0])
            run.stop.wait()  # nothing more to write: idle until the end

    counts_after_seal: list[int] = []

    def reader():
        sealed = seg.sealed
        c = seg.count("all")
        hits = seg.search("part:b", k=3, order="recent")
        for h in hits:
            check_hit_is_whole(seg, h)
        if sealed:
            counts_after_seal.append(c)
        q = ("andnot", ("term", "part:a"), ("term", "part:b"))
        assert seg.count(q) == 0

    for r in range(READERS):
        run.spawn(f"reader{r}", reader)
    run.spawn("writer", writer)
    time.sleep(DURATION / 2)
    seg.seal()  # waits for the writer's call in flight, if any
    assert seg.sealed
    time.sleep(DURATION / 2)
    run.finish()
    assert sealed_at, "the writer never met SegmentSealed"
    final = seg.stats()["docs_committed"]
    assert final == published[0] == sealed_at[0] == seg.count("all")
    assert counts_after_seal and set(counts_after_seal) == {final}, \
        f"counts after seal {sorted(set(counts_after_seal))[:5]}, committed {final}"
    assert seg.stats()["sealed"] == 1
    with pytest.raises(SegmentSealed):
        seg.add("late", 1)


def test_many_segments_many_threads_then_freed():
    """Segments made, filled, searched from several threads and dropped,
    again and again: the shard threads start and stop cleanly."""
    run = Run()
    deadline = time.monotonic() + DURATION / 2

    def body():
        if time.monotonic() > deadline:
            run.stop.set()
            return
        seg = RealtimeSegment(writer_threads=3, max_docs=500)
        seg.add_batch([doc_item(i) for i in range(400)])
        assert seg.count("all") == 400
        if random.random() < 0.5:
            seg.seal()
        del seg

    for r in range(3):
        run.spawn(f"maker{r}", body)
    time.sleep(DURATION / 2)
    run.finish()
