"""The index of one leaf: the LSM of Manas realtime, around the C core.

    engine = Engine(data_dir, writer_threads=2)
    source.seek(engine.checkpoint())                 # resume where the index is durable
    result = engine.apply(ops, source.positions())   # ops in stream order
    hits = engine.search("cat -dog", k=10, order="bm25")

This module is the seam between the service (stream polling, HTTP,
metrics: service.py) and the segments. Everything that touches a document
is C (pinstack._core._index); this is lifecycle and bookkeeping.

LAYOUT OF data_dir
    meta.json            the manifest (below), replaced atomically
    segments/NNNNNNNN.pss  immutable segment files (segfile.h)

THE SEGMENTS
    files    immutable segment files, oldest first (mmap'd SegmentFiles)
    sealed   realtime segments that are full and wait for the flush thread
    active   the one realtime segment being written
A query runs over the tuple files + sealed + [active] (the "view"), which
is replaced, never mutated: a reader that took it keeps every segment in
it alive (Python references) for as long as it searches, and runs again if
the view was replaced meanwhile (Engine._read says why).

    apply      adds and deletes go to the active segment, which looks keys
               up in the older segments (newest first) to drop stale
               versions and to delete the version it replaces, wherever it
               lives (segment.h, ps_older_fn).
    rotation   when the active segment holds max_segment_docs documents (or
               is older than max_segment_age_s with documents in it), it is
               sealed with the stream positions it covers, a new one starts
               at once, and the flush thread is woken.
    flush      the flush thread writes the oldest sealed segment as a file
               (C, GIL released), then, holding the apply lock, carries
               over the deletes that landed on it meanwhile, swaps the file
               in for it, and writes a manifest whose checkpoint is that
               segment's positions.
    compaction the compaction thread merges runs of adjacent files by a
               tiered policy (merge_factor files of one size tier), or one
               file whose deleted share passed expunge_ratio, into one file
               without the deleted and superseded documents, throttled to
               compaction_bytes_per_sec; same swap and manifest step.
    manifest   meta.json: format, generation (bumped by every change),
               the live segment files, and the checkpoint (partition ->
               next offset) that they cover. Written to a temporary file,
               fsynced, renamed over meta.json, directory fsynced. Files no
               manifest names are deleted after the rename.
    restart    Engine() loads the manifest, maps and verifies its files,
               rebuilds their deletions from the newer files' keys
               (shadow), deletes unreferenced files, and starts an empty
               active segment; the service replays the stream from
               checkpoint(). A file that fails its checksum is reported
               (rebuild_reason) and the index starts empty from the start
               of the stream, rather than serve a hole.

THREADS AND LOCKS
    apply lock     apply, rotation, and the swap step of flush and
                   compaction (the only writers of deletion stamps).
    manifest lock  a swap and the manifest write that records it, so that
                   manifests are written in generation order.
    compaction lock one compaction at a time (background or admin).
    Lock order: compaction lock, manifest lock, apply lock. Readers take
    none of them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pinstack._core._index import (
    Hit,
    MessageBatch,
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
from pinstack.leaf.message import ApplyResult, Op, apply_ops
from pinstack.leaf.stream.log import _fsync_dir

__all__ = ["Engine", "EngineError", "Hit"]

log = logging.getLogger("pinstack.leaf.engine")

MANIFEST = "meta.json"
SEGMENT_DIR = "segments"
MANIFEST_FORMAT = 1
_SEGMENT_NAME = re.compile(r"^(\d{8})\.pss$")


class EngineError(RuntimeError):
    """The engine cannot do what was asked (closed, a manifest it cannot
    read, a flush that failed)."""


class _Sealed:
    """A sealed realtime segment, the stream positions it covers, and its
    place in the order of rotations (flushed in that order)."""

    __slots__ = ("segment", "positions", "sealed_at", "serial")

    def __init__(self, segment: RealtimeSegment, positions: dict[int, int], serial: int) -> None:
        self.segment = segment
        self.positions = positions
        self.sealed_at = time.monotonic()
        self.serial = serial


class Engine:
    """One leaf's index. See the module docstring for the design.

    data_dir: where segment files and the manifest live (None: memory
    only; segments are still sealed and rotated, never written).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        *,
        writer_threads: int = 1,
        max_segment_docs: int = 1 << 20,
        max_segment_age_s: float = 600.0,
        max_sealed: int = 2,
        merge_factor: int = 4,
        tier_ratio: float = 4.0,
        expunge_ratio: float = 0.3,
        compaction_bytes_per_sec: int = 64 << 20,
        background: bool = True,
        k1: float = 1.2,
        b: float = 0.75,
    ) -> None:
        if not 1 <= writer_threads <= 64:
            raise ValueError(f"writer_threads must be 1..64 (got {writer_threads})")
        if not 1 <= max_segment_docs <= 1 << 30:
            raise ValueError(f"max_segment_docs must be 1..{1 << 30} (got {max_segment_docs})")
        if merge_factor < 2:
            raise ValueError(f"merge_factor must be at least 2 (got {merge_factor})")
        self.data_dir = data_dir
        self.writer_threads = writer_threads
        self.max_segment_docs = max_segment_docs
        self.max_segment_age_s = max_segment_age_s
        self.max_sealed = max(1, max_sealed)
        self.merge_factor = merge_factor
        self.tier_ratio = tier_ratio
        self.expunge_ratio = expunge_ratio
        self.compaction_bytes_per_sec = compaction_bytes_per_sec
        self._k1, self._b = k1, b

        self._apply_lock = threading.RLock()
        self._manifest_lock = threading.Lock()
        self._cond = threading.Condition(self._apply_lock)  # sealed queue, compaction requests
        self._closed = False
        self._files: list[SegmentFile] = []
        self._sealed: list[_Sealed] = []
        self._positions: dict[int, int] = {}
        self._checkpoint: dict[int, int] = {}
        self._generation = 0
        self._next_name = 1
        self._pending: set[str] = set()  # names being written (GC keeps them)
        self._compaction_lock = threading.Lock()  # one compaction at a time
        self._sealed_serial = 0  # rotations so far
        self._flushed_serial = 0  # rotations whose segment is in a written manifest
        self._error: str | None = None  # last background failure
        self.rebuild_reason: str | None = None
        self.counters: dict[str, float] = {
            "flushes": 0, "flush_seconds": 0.0, "flush_last_seconds": 0.0,
            "flush_bytes": 0, "compactions": 0, "compaction_seconds": 0.0,
            "compaction_last_seconds": 0.0, "compaction_bytes": 0,
            "compaction_docs_dropped": 0, "rotations": 0, "flush_failures": 0,
            "compaction_failures": 0, "applied_ops": 0, "stale_dropped": 0,
        }

        if data_dir is not None:
            self._seg_dir = os.path.join(data_dir, SEGMENT_DIR)
            os.makedirs(self._seg_dir, exist_ok=True)
            self._load()
        self._active = self._new_active(base=1)
        self._active_since = time.monotonic()
        self._publish()

        self._threads: list[threading.Thread] = []
        if background and data_dir is not None:
            for name, target in (("flush", self._flush_loop), ("compact", self._compact_loop)):
                t = threading.Thread(target=target, name=f"pinstack-leaf-{name}", daemon=True)
                t.start()
                self._threads.append(t)

    # ---- state ---------------------------------------------------------------

    def _new_active(self, base: int) -> RealtimeSegment:
        # Room for one more batch past the rotation threshold: rotation is
        # checked before each batch, batches are split to fit.
        return RealtimeSegment(writer_threads=self.writer_threads,
                               max_docs=self.max_segment_docs + _BATCH_MAX,
                               k1=self._k1, b=self._b, base=base)

    def _publish(self) -> None:
        """Replace the view readers take (apply lock held, or no threads yet)."""
        self._view = (*self._files, *(s.segment for s in self._sealed), self._active)

    def _older(self) -> list[Any]:
        return [*self._files, *(s.segment for s in self._sealed)][::-1]

    # ---- the manifest ----------------------------------------------------------

    def _manifest_path(self) -> str:
        assert self.data_dir is not None
        return os.path.join(self.data_dir, MANIFEST)

    def _load(self) -> None:
        path = self._manifest_path()
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            self._collect_garbage(set())
            return
        try:
            meta = json.loads(raw)
            if meta.get("format") != MANIFEST_FORMAT:
                raise EngineError(f"{path}: manifest format {meta.get('format')!r}; this build "
                                  f"reads format {MANIFEST_FORMAT}")
            names = [s["name"] for s in meta["segments"]]
            checkpoint = {int(p): int(o) for p, o in meta["checkpoint"].items()}
            generation = int(meta["generation"])
            next_name = int(meta.get("next_name", 1))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise EngineError(f"{path}: not a manifest this build can read: {e}") from e
        files = []
        try:
            for name in names:
                if not _SEGMENT_NAME.match(name):
                    raise SegmentFileError(f"{path}: bad segment name {name!r}")
                files.append(SegmentFile(os.path.join(self._seg_dir, name)))
        except SegmentFileError as e:
            # A segment we cannot trust: start over from the stream rather
            # than serve an index with a hole in it.
            self.rebuild_reason = str(e)
            log.error("rebuilding the index from the start of the stream: %s", e)
            self._generation = generation
            self._next_name = next_name
            self._write_manifest([], {}, note="rebuild")
            self._collect_garbage(set())
            return
        self._files = files
        self._checkpoint = checkpoint
        self._positions = dict(checkpoint)
        self._generation = generation
        self._next_name = max(next_name, 1 + max(
            (int(_SEGMENT_NAME.match(n).group(1)) for n in names), default=0))  # type: ignore
        if files:
            shadow(files)
        self._collect_garbage(set(names))

    def _write_manifest(self, files: Sequence[SegmentFile], checkpoint: Mapping[int, int],
                        note: str = "") -> None:
        """Replace meta.json (manifest lock held, or no threads yet)."""
        self._generation += 1
        meta = {
            "format": MANIFEST_FORMAT,
            "generation": self._generation,
            "next_name": self._next_name,
            "checkpoint": {str(p): o for p, o in sorted(checkpoint.items())},
            "segments": [{"name": os.path.basename(f.path), "docs": f.docs,
                          "bytes": f.stats()["bytes"]} for f in files],
            "written_at": time.time(),
            "note": note,
        }
        path = self._manifest_path()
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(json.dumps(meta, indent=1).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.data_dir)  # type: ignore[arg-type]

    def _collect_garbage(self, keep: set[str]) -> None:
        """Delete segment files (and temporaries) no manifest names. Readers
        still holding a deleted file keep its mapping."""
        for name in os.listdir(self._seg_dir):
            if name in keep or name.removesuffix(".tmp") in self._pending:
                continue
            if _SEGMENT_NAME.match(name) or name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(self._seg_dir, name))
                except FileNotFoundError:
                    pass

    def _new_path(self) -> str:
        """A fresh file name, kept from garbage collection until _done_path."""
        name = f"{self._next_name:08d}.pss"
        self._next_name += 1
        self._pending.add(name)
        return os.path.join(self._seg_dir, name)

    def _done_path(self, path: str) -> None:
        self._pending.discard(os.path.basename(path))

    # ---- the API the service uses ------------------------------------------------

    def checkpoint(self) -> dict[int, int]:
        """Stream positions (partition -> next offset) that the durable
        index covers: where ingestion resumes after a restart."""
        with self._apply_lock:
            return dict(self._checkpoint)

    def positions(self) -> dict[int, int]:
        """Stream positions applied so far (searchable, maybe not durable)."""
        with self._apply_lock:
            return dict(self._positions)

    def apply(self, ops: Sequence[Op], positions: Mapping[int, int]) -> ApplyResult:
        """Apply ops (parsed messages, stream order); positions: the stream
        positions just after them. Blocks while max_sealed segments wait
        for the flush (back-pressure: memory stays bounded)."""
        return self._apply(len(ops), lambda seg, older, i, j: apply_ops(seg, ops[i:j], older),
                           positions)

    def apply_batch(self, batch: MessageBatch, positions: Mapping[int, int]) -> ApplyResult:
        """apply() for a parsed MessageBatch (message.new_batch): its good
        messages in order, applied in C without a Python object each."""
        return self._apply(batch.ops, lambda seg, older, i, j: batch.apply(seg, older, i, j),
                           positions)

    def _apply(self, n_ops: int, step: Any, positions: Mapping[int, int]) -> ApplyResult:
        """ops [0, n_ops) in slices that fit the active segment (rotating it
        when full or old); step(segment, older, i, j) applies ops [i, j)
        and returns (added, stale, deleted, ...)."""
        added = stale = deleted = 0
        with self._apply_lock:
            self._check_open()
            i = 0
            while i < n_ops:
                self._wait_for_room()
                n = self._active_docs()
                if n >= self.max_segment_docs or (
                        n > 0 and time.monotonic() - self._active_since > self.max_segment_age_s):
                    self._rotate()
                    n = 0
                j = min(n_ops, i + min(_BATCH_MAX, self.max_segment_docs - n))
                r = step(self._active, self._older(), i, j)
                added += r[0]
                stale += r[1]
                deleted += r[2]
                i = j
            self._positions.update(positions)
            self.counters["applied_ops"] += n_ops
            self.counters["stale_dropped"] += stale
        return ApplyResult(added, stale, deleted)

    def _active_docs(self) -> int:
        return self._active.seq_end - self._active.base

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError("the engine is closed")

    def _wait_for_room(self) -> None:
        """Back-pressure: wait while max_sealed segments wait for the flush
        (a failing flush retries; stats() shows background_error)."""
        while len(self._sealed) >= self.max_sealed and self._threads and not self._closed:
            self._cond.wait(0.5)

    def _rotate(self) -> None:
        """Seal the active segment and start another (apply lock held)."""
        old = self._active
        old.seal()
        self._sealed_serial += 1
        self._sealed.append(_Sealed(old, dict(self._positions), self._sealed_serial))
        self._active = self._new_active(base=old.seq_end)
        self._active_since = time.monotonic()
        self.counters["rotations"] += 1
        self._publish()
        self._cond.notify_all()

    def tick(self) -> None:
        """Rotate an active segment older than max_segment_age_s (the
        service calls this when the stream is idle)."""
        with self._apply_lock:
            if (not self._closed and self._active_docs() > 0
                    and time.monotonic() - self._active_since > self.max_segment_age_s
                    and self.data_dir is not None and len(self._sealed) < self.max_sealed):
                self._rotate()

    def _read(self, fn: Any, *args: Any) -> Any:
        """Run a query over the current view, again if the view was
        replaced meanwhile.

        A view is consistent only while it is current: once a flush or a
        compaction swaps a file in for some of its segments, later updates
        delete the old versions in the new file, not in the segments this
        view holds, so a query that took its snapshot after the swap could
        see an old version beside its replacement. A query that ends with
        its view still current took its snapshot while it was current (a
        view is replaced, never restored); otherwise it runs again. Swaps
        are seconds apart, so a retry is rare and one is enough."""
        while True:
            view = self._view
            result = fn(view, *args)
            if self._view is view:
                return result

    def search(self, query: Any, k: int = 10, order: str = "score") -> list[Hit]:
        return self._read(search_view, query, k, order)

    def count(self, query: Any) -> int:
        return self._read(count_view, query)

    def get(self, key: bytes | str) -> Hit | None:
        return self._read(get_view, key)

    # ---- flush ---------------------------------------------------------------

    def _flush_loop(self) -> None:
        while True:
            with self._apply_lock:
                while not self._sealed and not self._closed:
                    self._cond.wait(1.0)
                if not self._sealed:
                    return  # closed and nothing left
                item = self._sealed[0]
            try:
                self._flush_one(item)
                self._error = None
            except Exception as e:  # noqa: BLE001 - reported, retried
                self.counters["flush_failures"] += 1
                self._error = f"flush: {e}"
                log.error("flush failed (will retry): %s", e)
                time.sleep(1.0)
                if self._closed:
                    return

    def _write_and_swap(self, inputs: list[Any], swap: Any, note: str,
                        rate: int = 0) -> tuple[dict[str, int], str]:
        """Write inputs as a new segment file (C, GIL released; no faster
        than rate bytes/s), then, holding the manifest lock and the apply
        lock, carry over the deletes that landed on the inputs meanwhile,
        swap(file) it in, publish the view, and write the manifest (then
        collect what it no longer names). Returns (stats, path)."""
        with self._apply_lock:
            path = self._new_path()
            snap = view_snapshot(self._view)
        try:
            stats, remap = write_segment(path, inputs, snap, max_bytes_per_sec=rate)
            f = SegmentFile(path)
        except BaseException:
            self._done_path(path)
            raise
        with self._manifest_lock:
            self._done_path(path)
            with self._apply_lock:
                remap.carry(f)
                swap(f)
                self._publish()
                files, checkpoint = list(self._files), dict(self._checkpoint)
                self._cond.notify_all()
            self._write_manifest(files, checkpoint, note=note)
            self._collect_garbage({os.path.basename(x.path) for x in files})
        return stats, path

    def _flush_one(self, item: _Sealed) -> None:
        t0 = time.monotonic()

        def swap(f: SegmentFile) -> None:
            self._files.append(f)
            self._sealed.remove(item)
            self._checkpoint = dict(item.positions)

        stats, path = self._write_and_swap([item.segment], swap, "flush")
        dt = time.monotonic() - t0
        with self._apply_lock:
            self.counters["flushes"] += 1
            self.counters["flush_seconds"] += dt
            self.counters["flush_last_seconds"] = dt
            self.counters["flush_bytes"] += stats["bytes"]
            self._flushed_serial = item.serial
            self._cond.notify_all()
        log.info("flushed %d documents to %s in %.3fs", stats["docs"], path, dt)

    def flush(self, timeout: float = 60.0) -> dict[str, Any]:
        """Seal the active segment (if it has documents) and wait until
        every sealed segment is written and in the manifest."""
        deadline = time.monotonic() + timeout
        with self._apply_lock:
            self._check_open()
            if self.data_dir is None:
                return {"flushed": False, "reason": "memory-only engine (no data_dir)"}
            rotated = self._active_docs() > 0
            if rotated:
                self._rotate()
            # What is sealed now; not what ingestion seals while we wait.
            target = self._sealed_serial
            while self._flushed_serial < target:
                if not self._threads:
                    self._apply_lock.release()
                    try:
                        self._flush_one(self._sealed[0])
                    finally:
                        self._apply_lock.acquire()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineError(f"flush: {target - self._flushed_serial} segment(s) still "
                                      f"being written after {timeout}s "
                                      f"({self._error or 'no error'})")
                self._cond.wait(min(left, 0.5))
            return {"flushed": rotated, "generation": self._generation,
                    "checkpoint": dict(self._checkpoint), "segments": len(self._files)}

    # ---- compaction ----------------------------------------------------------

    def _pick_merge(self, force: bool) -> tuple[int, int] | None:
        """The run of files [i, j) to merge next, or None (apply lock held).

        Tiered: files are grouped by size tier (tier_ratio apart); the
        smallest run of merge_factor adjacent files within one tier goes
        first. A single file with expunge_ratio of its documents deleted
        is rewritten alone. force: everything into one file."""
        files = self._files
        if force:
            if len(files) > 1 or (files and files[0].stats()["docs_deleted"] > 0):
                return (0, len(files))
            return None
        sizes = [max(1, f.stats()["bytes"]) for f in files]
        best: tuple[int, int] | None = None
        best_total = None
        m = self.merge_factor
        for i in range(0, len(files) - m + 1):
            run = sizes[i:i + m]
            if max(run) <= min(run) * self.tier_ratio:
                total = sum(run)
                if best_total is None or total < best_total:
                    best, best_total = (i, i + m), total
        if best is not None:
            return best
        for i, f in enumerate(files):
            st = f.stats()
            if st["docs"] and st["docs_deleted"] / st["docs"] >= self.expunge_ratio:
                return (i, i + 1)
        return None

    def _compact_loop(self) -> None:
        while True:
            with self._apply_lock:
                while not self._closed:
                    pick = self._pick_merge(False)
                    if pick is not None:
                        break
                    self._cond.wait(1.0)
                if self._closed:
                    return
            try:
                with self._compaction_lock:
                    with self._apply_lock:  # an admin compact may have gone first
                        pick = self._pick_merge(False)
                    if pick is not None:
                        self._compact_run(*pick)
                self._error = None
            except Exception as e:  # noqa: BLE001 - reported, retried
                self.counters["compaction_failures"] += 1
                self._error = f"compaction: {e}"
                log.error("compaction failed (will retry): %s", e)
                time.sleep(1.0)

    def _compact_run(self, i: int, j: int) -> None:
        t0 = time.monotonic()
        with self._apply_lock:
            inputs = self._files[i:j]

        def swap(f: SegmentFile) -> None:
            # One compaction at a time, and the flush only appends: the
            # inputs are still at i:j.
            assert self._files[i:j] == inputs
            self._files[i:j] = [f]

        stats, path = self._write_and_swap(inputs, swap, "compaction",
                                           rate=self.compaction_bytes_per_sec)
        dt = time.monotonic() - t0
        with self._apply_lock:
            self.counters["compactions"] += 1
            self.counters["compaction_seconds"] += dt
            self.counters["compaction_last_seconds"] = dt
            self.counters["compaction_bytes"] += stats["bytes"]
            self.counters["compaction_docs_dropped"] += stats["dropped"]
        log.info("compacted %d files into %s (%d documents, %d dropped) in %.3fs",
                 j - i, path, stats["docs"], stats["dropped"], dt)

    def compact(self) -> dict[str, Any]:
        """Merge the segment files there are now into one (dropping deleted
        and superseded documents), in the calling thread; files flushed
        meanwhile are left for later. One compaction at a time: this waits
        for a background one that is running."""
        with self._compaction_lock:
            with self._apply_lock:
                self._check_open()
                if self.data_dir is None:
                    return {"compacted": False, "reason": "memory-only engine (no data_dir)"}
                before = len(self._files)
                pick = self._pick_merge(True)
            if pick is not None:
                self._compact_run(*pick)
            with self._apply_lock:
                # segments: the merged file plus any flushed meanwhile
                return {"compacted": pick is not None, "segments_before": before,
                        "merged": pick[1] - pick[0] if pick is not None else 0,
                        "segments": len(self._files), "generation": self._generation}

    # ---- stats and lifecycle -----------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._apply_lock:
            files = [f.stats() for f in self._files]
            sealed = [s.segment.stats() for s in self._sealed]
            active = self._active.stats()
            out: dict[str, Any] = {
                "docs_live": sum(f["docs_live"] for f in files)
                + sum(s["docs_live"] for s in sealed) + active["docs_live"],
                "segments": len(files) + len(sealed) + 1,
                "segment_files": len(files),
                "segment_file_bytes": sum(f["bytes"] for f in files),
                "sealed_segments": len(sealed),
                "files": files,
                "active": active,
                "generation": self._generation,
                "checkpoint": dict(self._checkpoint),
                "positions": dict(self._positions),
                "rebuild_reason": self.rebuild_reason,
                "background_error": self._error,
            }
            out.update(self.counters)
            return out

    def close(self, flush: bool = True) -> None:
        """Stop the background threads; with flush, write what the active
        segment holds first, so a restart has nothing to replay."""
        if self._closed:
            return
        if flush and self.data_dir is not None:
            try:
                self.flush()
            except Exception as e:  # noqa: BLE001 - the stream still has it
                log.error("flush at close failed (the stream will be replayed): %s", e)
        with self._apply_lock:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_BATCH_MAX = 65536
