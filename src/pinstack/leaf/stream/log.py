"""The embedded stream: an append-only, partitioned, checksummed log on
local disk, with dense offsets and group commit.

Layout
------
    <dir>/meta.json          {"format": "pinstack-leaf-log", "version": 1, "partitions": N}
    <dir>/LOCK               flock()ed by the process that has the log open
    <dir>/CLEAN              present only while the log is closed cleanly
    <dir>/p0000/             one directory per partition
        00000000000000000000.log    segment files named by base offset;
        00000000000000004711.log    the last one is the active segment
The record format is in record.py. A new segment file is written to a
.tmp name, fsynced, renamed and its directory fsynced, so a segment file
always has a whole header.

Offsets and visibility
----------------------
Offsets are dense per partition from 0. `end_offset(p)` is one past the
last *durable* record, and readers see exactly the records below it: a
record is never visible (to read(), wait() or a Source) before it is
durable per the fsync policy. So nothing built from a read (an index
segment, a checkpoint) can refer to a record that a crash could take away.

Durability ("acknowledged")
---------------------------
append(p, payloads) writes the batch (one write(2)) and returns its last
offset only once the whole batch is durable:

* fsync="always": the appender fdatasyncs before returning. Concurrent
  appenders share fsyncs: the write happens under the partition's append
  lock, the fsync under a separate sync lock, and an appender that gets the
  sync lock after another's fsync already covered its records returns
  without one (group commit; `fsyncs` in stats() counts them).
* fsync="interval_ms=N" (or an int N): appenders wait; one background
  thread fdatasyncs every partition with unsynced data at most once per N
  ms (the first write after an idle period is synced at once), then
  releases every appender whose records it covered. A write waits at most
  N ms plus one fsync, and any number of concurrent producers share one.

Roll: when the active segment holds segment_bytes or more, the next append
first fdatasyncs it (so every sealed segment is wholly durable), then
starts a new segment file.

Recovery (on open)
------------------
A cleanly closed log has a CLEAN marker, removed on open. Without it (a
crash), the last segment of each partition is scanned: at the first record
that is cut short, has a bad checksum, a bad length or the wrong offset,
the file is truncated (a torn tail), the truncated bytes are logged and
reported in `Log.recovery`, with how many well-formed records were cut
off after the damage (non-zero means more than a torn tail: mid-file
corruption in the last segment, which recovery cannot tell from a tail
written out of order by the disk). The recovered file is then fdatasynced:
records that reached the page cache but not the disk before a process crash
become durable before anyone can read them.

After a clean close, damage in the last segment is corruption, not a torn
tail: nothing is truncated, the segment is sealed as it is and appends go
to a new segment. Sealed segments are never truncated.

Corrupt records (policy)
------------------------
A reader that meets a damaged record (checksum, length, offset, or a gap
between two segments) either stops (on_corrupt="stop", the default):
read() returns the good records before it and the next read() raises
CorruptRecordError naming partition, offset, file, position and reason;
or skips (on_corrupt="skip"): it resumes at the next good record
(record.find_next_valid), logs the damage once at WARNING and counts the
lost offsets in stats()["corrupt_skipped"]. Skipped offsets are simply
absent: offsets stay increasing but not dense across the damage. A reader
can also step over a bad record under "stop" by reading from the offset
after it.

Threads
-------
Per partition: `append_lock` serializes appenders (encode, write, roll);
`sync_lock` serializes fsyncs; `cond` (a Condition) guards the shared state
readers snapshot (segment list, durable end, readable positions) and wakes
waiters when the durable end moves. One log-wide condition wakes
multi-partition waiters (wait_any). Readers take no lock during I/O: they
pread() below the snapshot's readable position, which only grows. A
segment file deleted by retention while a reader uses it stays open until
that reader is done (reference count). The syncer thread exists only with
an interval policy. Lock order: append_lock -> sync_lock -> cond ->
log-wide condition.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from array import array
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pinstack._core._index import MessageBatch, encode_records

from . import record as rec

__all__ = [
    "CorruptRecordError",
    "Log",
    "LogClosed",
    "LogError",
    "OffsetOutOfRange",
    "Recovery",
]

log = logging.getLogger("pinstack.leaf.stream")

FORMAT_NAME = "pinstack-leaf-log"
FORMAT_VERSION = 1
MAX_PARTITIONS = 4096
READ_CHUNK = 64 << 10


class LogError(Exception):
    """The log cannot do what was asked (bad arguments excepted: those are
    ValueError/TypeError)."""


class LogClosed(LogError):
    """The log was closed."""


class OffsetOutOfRange(LogError):
    """A read below the partition's start offset (retention deleted it) or
    beyond its end offset."""

    def __init__(self, partition: int, offset: int, start: int, end: int) -> None:
        super().__init__(
            f"partition {partition}: offset {offset} is out of range [{start}, {end}]"
        )
        self.partition = partition
        self.offset = offset
        self.start = start
        self.end = end


class CorruptRecordError(LogError):
    """A damaged record met by a reader under on_corrupt="stop"."""

    def __init__(self, partition: int, offset: int, path: str, position: int,
                 reason: str) -> None:
        super().__init__(
            f"partition {partition}: corrupt record at offset {offset} "
            f"({path} position {position}): {reason}"
        )
        self.partition = partition
        self.offset = offset
        self.path = path
        self.position = position
        self.reason = reason


class Recovery(NamedTuple):
    """What open() found wrong in a partition's last segment and did."""

    partition: int
    path: str
    position: int  # where the first damage is
    offset: int  # the offset expected there
    reason: str
    dropped_bytes: int  # bytes truncated (0 when action is "kept")
    records_after: int  # well-formed records after the damage (dropped if truncated)
    action: str  # "truncated" (after a crash) or "kept" (after a clean close)


class _Damage(NamedTuple):
    pos: int
    offset: int
    reason: str
    records_before: int


def parse_fsync(policy: Any) -> float:
    """The sync interval in seconds; 0.0 means "always"."""
    if policy == "always":
        return 0.0
    ms: Any = policy
    if isinstance(policy, str) and policy.startswith("interval_ms="):
        try:
            ms = int(policy[len("interval_ms="):])
        except ValueError:
            ms = None
    if type(ms) is int and 0 <= ms <= 60_000:
        return ms / 1000.0
    raise ValueError(f'fsync must be "always", "interval_ms=N" or an int N (ms, 0..60000), '
                     f"got {policy!r}")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(path))


class _Segment:
    """One segment file. Fields written by the appender under append_lock
    (size, end_offset, index) or under the partition's cond (readable_pos,
    sealed, refs, retired)."""

    __slots__ = (
        "base", "path", "fd", "size", "end_offset", "readable_pos", "sealed",
        "idx_off", "idx_pos", "last_index_pos", "indexed", "refs", "retired",
        "index_lock", "reported",
    )

    def __init__(self, base: int, path: str, fd: int, size: int) -> None:
        self.base = base
        self.path = path
        self.fd = fd
        self.size = size  # bytes in the file (header included)
        self.end_offset = base  # offset the next appended record gets (active segment)
        self.readable_pos = size  # readers read below this
        self.sealed = False
        self.idx_off = array("q")
        self.idx_pos = array("q")
        self.last_index_pos = 0
        self.indexed = False  # sparse index complete (sealed segments read from disk: lazily)
        self.refs = 0
        self.retired = False
        self.index_lock = threading.Lock()
        self.reported: set[int] = set()  # damage positions already logged

    def floor(self, offset: int) -> tuple[int, int]:
        i = bisect_right(self.idx_off, offset) - 1
        if i < 0:
            return rec.FILE_HEADER_SIZE, self.base
        return self.idx_pos[i], self.idx_off[i]


class _Partition:
    __slots__ = (
        "id", "dir", "segments", "bases", "append_lock", "sync_lock", "cond",
        "written_end", "durable_end", "skipped",
    )

    def __init__(self, pid: int, path: str) -> None:
        self.id = pid
        self.dir = path
        self.segments: list[_Segment] = []  # replaced, never mutated, once published
        self.bases: list[int] = []
        self.append_lock = threading.Lock()
        self.sync_lock = threading.Lock()
        self.cond = threading.Condition(threading.Lock())
        self.written_end = 0
        self.durable_end = 0
        self.skipped = 0


class Log:
    """An embedded partitioned log in directory `path` (see the module
    docstring). `partitions` is needed to create a log and checked against
    an existing one; None opens whatever exists.

        with Log("/data/log", partitions=4, fsync="interval_ms=5") as wal:
            last = wal.append(0, [b"one", b"two"])   # durable when it returns
            wal.read(0, 0)                            # [(0, b"one"), (1, b"two")]
    """

    def __init__(
        self,
        path: Any,
        partitions: int | None = None,
        *,
        fsync: Any = "always",
        segment_bytes: int = 64 << 20,
        on_corrupt: str = "stop",
    ) -> None:
        self.path = os.fspath(path)
        self._parts: list[_Partition] = []
        self._interval = parse_fsync(fsync)
        self.fsync = (
            "always" if self._interval == 0 else f"interval_ms={round(self._interval * 1000)}"
        )
        if type(segment_bytes) is not int or not 4096 <= segment_bytes <= (1 << 40):
            raise ValueError(f"segment_bytes must be 4096..2**40 (got {segment_bytes!r})")
        if on_corrupt not in ("stop", "skip"):
            raise ValueError(f'on_corrupt must be "stop" or "skip" (got {on_corrupt!r})')
        if partitions is not None and (type(partitions) is not int
                                       or not 1 <= partitions <= MAX_PARTITIONS):
            raise ValueError(f"partitions must be 1..{MAX_PARTITIONS} (got {partitions!r})")
        self.segment_bytes = segment_bytes
        self.on_corrupt = on_corrupt
        self.recovery: list[Recovery] = []
        self._closed = False
        self._failed: BaseException | None = None
        self._close_lock = threading.Lock()
        self._data_cond = threading.Condition(threading.Lock())
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        self._fsyncs = 0
        self._appended_records = 0
        self._appended_bytes = 0
        self._lock_fd = -1
        os.makedirs(self.path, exist_ok=True)
        self._take_lock()
        try:
            self._open(partitions)
        except BaseException:
            self._release_everything()
            raise
        if self._interval > 0:
            self._syncer = threading.Thread(
                target=self._sync_loop, name=f"log-sync:{self.path}", daemon=True
            )
            self._syncer.start()

    # ---- open and recovery ---------------------------------------------------

    def _take_lock(self) -> None:
        fd = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise LogError(f"log {self.path} is open in another process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _open(self, partitions: int | None) -> None:
        meta_path = os.path.join(self.path, "meta.json")
        clean_path = os.path.join(self.path, "CLEAN")
        if os.path.exists(meta_path):
            try:
                with open(meta_path, "rb") as f:
                    meta = json.loads(f.read())
                count = meta["partitions"]
                if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
                    raise ValueError(f"format {meta.get('format')!r} v{meta.get('version')!r}")
                if type(count) is not int or not 1 <= count <= MAX_PARTITIONS:
                    raise ValueError(f"partitions {count!r}")
            except (ValueError, KeyError, TypeError) as e:
                raise LogError(f"{meta_path}: not a pinstack log ({e})") from None
            if partitions is not None and partitions != count:
                raise LogError(f"log {self.path} has {count} partitions, {partitions} asked")
            clean = os.path.exists(clean_path)
            created = False
        else:
            if partitions is None:
                raise LogError(f"no log in {self.path} (give partitions=N to create one)")
            count = partitions
            for pid in range(count):
                os.makedirs(self._part_dir(pid), exist_ok=True)
            _write_atomically(
                meta_path,
                json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION,
                            "partitions": count}).encode() + b"\n",
            )
            clean = created = True
        for pid in range(count):
            self._parts.append(self._open_partition(pid, clean, created))
        if os.path.exists(clean_path):
            # From now on a crash must be recovered: the marker goes before
            # anything can be appended.
            os.unlink(clean_path)
            _fsync_dir(self.path)

    def _part_dir(self, pid: int) -> str:
        return os.path.join(self.path, f"p{pid:04d}")

    def _open_partition(self, pid: int, clean: bool, created: bool) -> _Partition:
        part = _Partition(pid, self._part_dir(pid))
        os.makedirs(part.dir, exist_ok=True)
        bases = []
        for name in os.listdir(part.dir):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(part.dir, name))  # a segment never finished
            elif name.endswith(".log") and len(name) == 24 and name[:20].isdigit():
                bases.append(int(name[:20]))
        bases.sort()
        segs = [self._open_segment(part, b) for b in bases]
        if not segs:
            if not created:
                log.error("partition %d: no segment file in %s: starting again at offset 0",
                          pid, part.dir)
            segs = [self._create_segment(part, 0)]
        for s in segs[:-1]:
            s.sealed = True
        last = segs[-1]
        problem = rec.check_file_header(os.pread(last.fd, rec.FILE_HEADER_SIZE, 0), last.base)
        if problem is not None:
            log.error("partition %d: %s: %s", pid, last.path, problem)
            if not clean or last.size < rec.FILE_HEADER_SIZE:
                self._rewrite_header(last)  # records are read from byte 16 on regardless
        good, end_offset, damages = self._scan_segment(last)
        if damages:
            records_after = good - damages[0].records_before
        if damages and not clean:
            first = damages[0]
            dropped = last.size - first.pos
            os.ftruncate(last.fd, first.pos)
            last.size = last.readable_pos = first.pos
            cut = bisect_right(last.idx_pos, first.pos - 1)
            del last.idx_off[cut:]
            del last.idx_pos[cut:]
            last.last_index_pos = last.idx_pos[-1] if last.idx_pos else 0
            end_offset = first.offset
            self.recovery.append(Recovery(pid, last.path, first.pos, first.offset, first.reason,
                                          dropped, records_after, "truncated"))
            (log.error if records_after else log.warning)(
                "partition %d: recovered %s: truncated %d bytes at position %d (offset %d): %s%s",
                pid, last.path, dropped, first.pos, first.offset, first.reason,
                f"; {records_after} well-formed records after it were dropped too "
                "(corruption before the tail?)" if records_after else "",
            )
        if not clean:
            # Records a crashed process left in the page cache become
            # durable before anyone reads them.
            os.fdatasync(last.fd)
        last.end_offset = end_offset
        last.indexed = True
        if damages and clean:
            first = damages[0]
            self.recovery.append(Recovery(pid, last.path, first.pos, first.offset, first.reason,
                                          0, records_after, "kept"))
            log.error("partition %d: %s is damaged at position %d (offset %d): %s; "
                      "kept as it is, appends go to a new segment", pid, last.path, first.pos,
                      first.offset, first.reason)
            last.sealed = True
            if end_offset == last.base:
                # Not one good record: nothing to read in it, and the new
                # segment takes its name. Kept aside for a post-mortem.
                os.rename(last.path, last.path + ".damaged")
                os.close(last.fd)
                segs.pop()
            segs.append(self._create_segment(part, end_offset))
        part.segments = segs
        part.bases = [s.base for s in segs]
        part.written_end = part.durable_end = segs[-1].end_offset
        return part

    def _open_segment(self, part: _Partition, base: int) -> _Segment:
        path = os.path.join(part.dir, rec.segment_name(base))
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        return _Segment(base, path, fd, os.fstat(fd).st_size)

    def _create_segment(self, part: _Partition, base: int) -> _Segment:
        path = os.path.join(part.dir, rec.segment_name(base))
        _write_atomically(path, rec.file_header(base))
        seg = self._open_segment(part, base)
        seg.end_offset = base
        seg.indexed = True
        return seg

    def _rewrite_header(self, seg: _Segment) -> None:
        fd = os.open(seg.path, os.O_WRONLY | os.O_CLOEXEC)  # no O_APPEND: pwrite at 0
        try:
            if seg.size < rec.FILE_HEADER_SIZE:
                os.ftruncate(fd, 0)
            os.pwrite(fd, rec.file_header(seg.base), 0)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        seg.size = seg.readable_pos = max(seg.size, rec.FILE_HEADER_SIZE)

    def _scan_segment(self, seg: _Segment) -> tuple[int, int, list[_Damage]]:
        """Check a whole segment file, resyncing past damage, and give it a
        complete sparse index. Returns (good records, the offset after the
        last good one, damages in file order)."""
        idx_off, idx_pos = array("q"), array("q")
        last_index_pos = 0
        pos, offset = rec.FILE_HEADER_SIZE, seg.base
        damages: list[_Damage] = []
        good = 0
        end_offset = offset
        while True:
            s = rec.scan(seg.fd, pos, offset, seg.size, idx_off, idx_pos, last_index_pos)
            good += s.records
            last_index_pos = s.last_index_pos
            if s.records or not damages:
                end_offset = s.end_offset
            if s.problem is None:
                break
            damages.append(_Damage(s.end_pos, s.end_offset, s.problem, good))
            nxt = rec.find_next_valid(seg.fd, s.end_pos, s.end_offset, seg.size)
            if nxt is None:
                break
            pos, offset = nxt
            idx_off.append(offset)  # readers that seek past the damage land here
            idx_pos.append(pos)
            last_index_pos = pos
        seg.idx_off, seg.idx_pos, seg.last_index_pos = idx_off, idx_pos, last_index_pos
        return good, end_offset, damages

    # ---- appending -------------------------------------------------------------

    def _part(self, partition: int) -> _Partition:
        if type(partition) is not int or not 0 <= partition < len(self._parts):
            raise ValueError(f"partition must be 0..{len(self._parts) - 1} (got {partition!r})")
        return self._parts[partition]

    def _check_open(self) -> None:
        if self._failed is not None:
            raise LogError(f"log {self.path} failed earlier and refuses writes: "
                           f"{self._failed}") from self._failed
        if self._closed:
            raise LogClosed(f"log {self.path} is closed")

    def append(self, partition: int, payloads: Sequence[bytes] | MessageBatch) -> int:
        """Append records (bytes) to a partition; returns the last one's
        offset once all of them are durable per the fsync policy.

        payloads may also be a parsed and routed MessageBatch (the leaf's
        writes): the messages it routed to this partition are appended,
        framed in C under the append lock without an object per record."""
        part = self._part(partition)
        limit = rec.MAX_RECORD_BYTES
        if isinstance(payloads, MessageBatch):
            batch = payloads

            def frame(first: int, pos: int, last_index_pos: int) -> tuple:
                out = batch.frame(partition, first, pos, last_index_pos, limit)
                if out[1] == 0:
                    raise ValueError(f"append: the batch has nothing for partition {partition}")
                return out

            return self._append(part, frame)
        if isinstance(payloads, (bytes, bytearray, memoryview, str)):
            raise TypeError("append takes a list of payloads, not one payload")
        if len(payloads) == 0:
            raise ValueError("append: empty batch")
        for p in payloads:
            if type(p) is not bytes and not isinstance(p, (bytes, bytearray)):
                raise TypeError(f"a payload must be bytes, not {type(p).__name__}")

        def frame_payloads(first: int, pos: int, last_index_pos: int) -> tuple:
            data, last, entries = encode_records(payloads, first, pos, last_index_pos, limit)
            return data, len(payloads), last, entries

        return self._append(part, frame_payloads)

    def _append(self, part: _Partition, frame: Any) -> int:
        """One append: frame(first offset, file position, last index
        position) -> (data, records, new last index position, [(offset,
        position)] index entries to add) is called under the append lock,
        the data written with one write(2), then made durable."""
        with part.append_lock:
            self._check_open()
            seg = part.segments[-1]
            if seg.size >= self.segment_bytes and seg.end_offset > seg.base:
                seg = self._roll(part, seg)
            first = seg.end_offset
            old_size, old_last = seg.size, seg.last_index_pos
            nidx = len(seg.idx_off)
            data, n, seg.last_index_pos, entries = frame(first, old_size, old_last)
            rec.add_index(entries, seg.idx_off, seg.idx_pos)
            try:
                self._write(seg.fd, data)
            except OSError as e:
                del seg.idx_off[nidx:]
                del seg.idx_pos[nidx:]
                seg.last_index_pos = old_last
                try:
                    os.ftruncate(seg.fd, old_size)
                except OSError as e2:
                    self._fail(e2)
                raise LogError(f"partition {part.id}: append failed: {e}") from e
            seg.size = old_size + len(data)
            seg.end_offset = first + n
            part.written_end = first + n
        with self._stats_lock:
            self._appended_records += n
            self._appended_bytes += len(data)
        target = first + n
        if self._interval == 0:
            self._sync_to(part, target)
        else:
            self._dirty.set()
            with part.cond:
                while part.durable_end < target:
                    if self._failed is not None:
                        self._check_open()
                    part.cond.wait(0.5)
        return target - 1

    @staticmethod
    def _write(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]

    def _fdatasync(self, part: _Partition, fd: int) -> None:
        """fdatasync(fd); a failure fails the whole log (nothing after it
        can be acknowledged) and raises LogError."""
        try:
            os.fdatasync(fd)
        except OSError as e:
            self._fail(e)
            raise LogError(f"partition {part.id}: fsync failed: {e}") from e
        self._count_fsync()

    def _roll(self, part: _Partition, old: _Segment) -> _Segment:
        """Seal the active segment (fdatasynced first: sealed segments are
        wholly durable) and start a new one. append_lock held."""
        self._fdatasync(part, old.fd)
        new = self._create_segment(part, old.end_offset)
        with part.cond:
            old.sealed = True
            old.readable_pos = old.size
            part.segments = part.segments + [new]
            part.bases = part.bases + [new.base]
            if old.end_offset > part.durable_end:
                part.durable_end = old.end_offset
            part.cond.notify_all()
        self._notify_data()
        log.debug("partition %d: rolled to %s", part.id, new.path)
        return new

    def _sync_to(self, part: _Partition, target: int) -> None:
        """Make the partition durable at least up to offset `target`."""
        while part.durable_end < target:
            with part.sync_lock:
                if part.durable_end >= target:
                    return
                self._check_not_failed()
                with part.cond:
                    seg = part.segments[-1]
                    pos, end = seg.size, seg.end_offset
                self._fdatasync(part, seg.fd)
                self._mark_durable(part, seg, pos, end)

    def _check_not_failed(self) -> None:
        """Raise if the log failed (a sync during close() is still allowed)."""
        if self._failed is not None:
            self._check_open()

    def _mark_durable(self, part: _Partition, seg: _Segment, pos: int, end: int) -> None:
        with part.cond:
            if pos > seg.readable_pos:
                seg.readable_pos = pos
            if end > part.durable_end:
                part.durable_end = end
            part.cond.notify_all()
        self._notify_data()

    def _notify_data(self) -> None:
        with self._data_cond:
            self._data_cond.notify_all()

    def _count_fsync(self) -> None:
        with self._stats_lock:
            self._fsyncs += 1

    def _fail(self, e: BaseException) -> None:
        """An fsync or truncate failed: the state of the file is unknown, so
        the log refuses further writes (retrying an fsync after an error is
        not safe on Linux) and wakes every waiter with the error."""
        if self._failed is None:
            self._failed = e
            log.error("log %s failed: %s; no more writes are accepted", self.path, e)
        for part in self._parts:
            with part.cond:
                part.cond.notify_all()
        self._notify_data()

    def _sync_loop(self) -> None:
        try:
            self._sync_loop_body()
        except BaseException as e:  # a bug: never leave appenders waiting forever
            self._fail(e)
            raise

    def _sync_loop_body(self) -> None:
        interval = self._interval
        last = 0.0
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                break
            due = last + interval - time.monotonic()
            if due > 0 and self._stop.wait(due):
                break
            self._dirty.clear()  # before reading written_end: no write is missed
            last = time.monotonic()
            for part in self._parts:
                if part.written_end > part.durable_end:
                    try:
                        self._sync_to(part, part.written_end)
                    except LogError:
                        return  # _fail() has woken everyone

    def sync(self) -> None:
        """Make everything appended so far durable now."""
        for part in self._parts:
            self._sync_to(part, part.written_end)

    # ---- reading ---------------------------------------------------------------

    def end_offset(self, partition: int) -> int:
        """One past the last durable record: the next offset a reader waits for."""
        return self._part(partition).durable_end

    def start_offset(self, partition: int) -> int:
        """The first offset still held (retention removes older ones)."""
        return self._part(partition).segments[0].base

    @property
    def partitions(self) -> int:
        return len(self._parts)

    def read(self, partition: int, offset: int, max_records: int = 1000,
             max_bytes: int = 16 << 20) -> list[tuple[int, bytes]]:
        """Durable records from `offset` on: [(offset, payload)], at most
        max_records, stopping after max_bytes of payload (at least one
        record). [] at the end offset."""
        return self.read_batch(partition, offset, max_records, max_bytes)[0]

    def read_batch(self, partition: int, offset: int, max_records: int = 1000,
                   max_bytes: int = 16 << 20) -> tuple[list[tuple[int, bytes]], int]:
        """read(), plus the offset to read next: one past the last record
        returned, or further when on_corrupt="skip" stepped over damage."""
        out, nxt, _ = self._read(partition, offset, max_records, max_bytes, False)
        return out, nxt

    def read_runs(self, partition: int, offset: int, max_records: int = 1000,
                  max_bytes: int = 16 << 20) -> tuple[list[tuple[bytes, int, int, int]], int, int]:
        """read_batch() without an object per record: ([(buf, position,
        count, first offset)], next offset, records). Each run is `count`
        checked records back to back in buf from position on, with offsets
        first offset, first offset + 1, ... (MessageBatch.add_log_run)."""
        return self._read(partition, offset, max_records, max_bytes, True)

    def _read(self, partition: int, offset: int, max_records: int, max_bytes: int,
              runs: bool) -> tuple[list[Any], int, int]:
        part = self._part(partition)
        if type(offset) is not int:
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        if self._closed:
            raise LogClosed(f"log {self.path} is closed")
        with part.cond:
            segs, bases, end = part.segments, part.bases, part.durable_end
            active_limit = segs[-1].readable_pos
        start = segs[0].base
        if not start <= offset <= end:
            raise OffsetOutOfRange(partition, offset, start, end)
        out: list[Any] = []
        if offset == end or max_records < 1:
            return out, offset, 0
        i = bisect_right(bases, offset) - 1
        state = [0, 0, runs]  # records and payload bytes so far, the mode
        while i < len(segs) and offset < end and state[0] < max_records \
                and state[1] < max_bytes:
            seg = segs[i]
            last = i == len(segs) - 1
            seg_end = end if last else min(bases[i + 1], end)
            if offset >= seg_end:
                i += 1
                continue
            with part.cond:
                if seg.retired:
                    raise OffsetOutOfRange(partition, offset, part.segments[0].base,
                                           part.durable_end)
                seg.refs += 1
            try:
                offset = self._read_segment(part, seg, offset, seg_end,
                                            active_limit if last else seg.size,
                                            max_records, max_bytes, out, state)
            finally:
                self._release(part, seg)
            if offset < seg_end:
                break  # stopped by a limit or by damage under "stop"
            i += 1
        return out, offset, state[0]

    def _release(self, part: _Partition, seg: _Segment) -> None:
        with part.cond:
            seg.refs -= 1
            close = seg.retired and seg.refs == 0 and seg.fd >= 0
            fd = seg.fd
            if close:
                seg.fd = -1
        if close:
            os.close(fd)

    def _read_segment(self, part: _Partition, seg: _Segment, offset: int, seg_end: int,
                      limit: int, max_records: int, max_bytes: int,
                      out: list, state: list) -> int:
        """Append the records [offset, seg_end) of one segment to out (within
        the limits): (offset, payload) tuples, or runs (buf, position,
        count, first offset) when state[2]; state[0] and state[1] count
        records and payload bytes. Returns the next offset to read."""
        if not seg.indexed and offset > seg.base:
            self._index_lazily(seg)
        pos, off = seg.floor(offset)
        need = 0
        runs = state[2]
        while off < seg_end and state[0] < max_records and state[1] < max_bytes:
            problem = None
            if pos >= limit:
                if not seg.sealed:
                    break  # the durable end of the active segment
                problem = f"segment ends at offset {off} but the next one starts at {seg_end}"
            else:
                want = min(max(READ_CHUNK, need), limit - pos)
                buf = os.pread(seg.fd, want, pos)
                d = rec.decode(buf, 0, off, max_records - state[0], offset,
                               max_bytes - state[1], split=not runs)
                if runs:
                    count = d.records
                    first = d.offset - count
                    if count and d.offset > seg_end:  # overlaps the next segment: not ours
                        count = max(0, seg_end - first)
                    if count:
                        out.append((buf, d.first_pos, count, first))
                        state[0] += count
                        state[1] += d.nbytes
                else:
                    got = d.records
                    if got and got[-1][0] >= seg_end:  # overlaps the next segment: not ours
                        got = [r for r in got if r[0] < seg_end]
                    for r in got:
                        state[1] += len(r[1])
                    out.extend(got)
                    state[0] += len(got)
                pos += d.pos
                off = d.offset
                need = d.need
                problem = d.problem
                if problem is None and (len(buf) < want or (need and pos + need > limit)):
                    problem = f"record cut short (the file ends at position {limit})"
            if problem is None:
                continue
            # Damage at pos, where offset `off` was expected.
            if off >= offset and self.on_corrupt == "stop":
                if state[0]:
                    return off  # the good records now, the error on the next read
                raise CorruptRecordError(part.id, off, seg.path, pos, problem)
            nxt = rec.find_next_valid(seg.fd, pos, off, limit) if pos < limit else None
            resume = nxt[1] if nxt is not None else seg_end
            if off < offset and resume <= offset and nxt is not None:
                pos, off, need = nxt[0], nxt[1], 0  # damage before what was asked: step over
                continue
            if self.on_corrupt == "stop":
                raise CorruptRecordError(part.id, offset, seg.path, pos,
                                         f"{problem} (offsets {off}..{resume - 1} are damaged)")
            self._report_skip(part, seg, pos, max(off, offset), resume, problem)
            if nxt is None:
                return seg_end
            pos, off, need = nxt[0], nxt[1], 0
            offset = max(offset, off)
        return off if off >= offset else offset

    def _report_skip(self, part: _Partition, seg: _Segment, pos: int, off: int, resume: int,
                     reason: str) -> None:
        if pos in seg.reported:
            return
        seg.reported.add(pos)
        lost = max(0, resume - off)
        with part.cond:
            part.skipped += lost
        log.warning("partition %d: skipped corrupt data at offset %d (%s position %d): %s; "
                    "%d offset(s) lost, resuming at %d", part.id, off, seg.path, pos, reason,
                    lost, resume)

    def _index_lazily(self, seg: _Segment) -> None:
        with seg.index_lock:
            if not seg.indexed:
                self._scan_segment(seg)
                seg.indexed = True

    def wait(self, partition: int, offset: int, timeout: float | None = None) -> bool:
        """Block until a record at `offset` or later is readable (end_offset
        > offset) or timeout seconds pass; True if there is one."""
        part = self._part(partition)
        deadline = None if timeout is None else time.monotonic() + timeout
        with part.cond:
            while part.durable_end <= offset:
                if self._closed or self._failed is not None:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                part.cond.wait(left if left is not None and left < 1.0 else 1.0)
            return True

    def wait_any(self, positions: Mapping[int, int], timeout: float | None = None) -> bool:
        """Block until some partition p of positions has end_offset >
        positions[p], or timeout seconds pass; True if one has."""
        parts = [(self._part(p), off) for p, off in positions.items()]
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._data_cond:
            while True:
                for part, off in parts:
                    if part.durable_end > off:
                        return True
                if self._closed or self._failed is not None:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._data_cond.wait(left if left is not None and left < 1.0 else 1.0)

    # ---- retention ---------------------------------------------------------------

    def delete_before(self, partition: int, offset: int) -> int:
        """Retention: delete the partition's segment files that hold only
        records below `offset` (the caller's checkpoint). The active
        segment is never deleted. Returns how many files went."""
        part = self._part(partition)
        if self._closed:
            raise LogClosed(f"log {self.path} is closed")
        with part.cond:
            segs = part.segments
            k = 0
            while k < len(segs) - 1 and segs[k + 1].base <= offset:
                k += 1
            if k == 0:
                return 0
            doomed = segs[:k]
            part.segments = segs[k:]
            part.bases = part.bases[k:]
            to_close = []
            for s in doomed:
                s.retired = True
                if s.refs == 0:
                    to_close.append((s, s.fd))
                    s.fd = -1
        for s in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(s.path)
        for _, fd in to_close:
            os.close(fd)
        _fsync_dir(part.dir)
        log.info("partition %d: retention deleted %d segment file(s) below offset %d; "
                 "the partition now starts at %d", part.id, k, offset, part.segments[0].base)
        return k

    # ---- stats and lifecycle -------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: appended_records, appended_bytes, fsyncs, and per
        partition start, end, segments, bytes, corrupt_skipped."""
        with self._stats_lock:
            d: dict[str, Any] = {
                "appended_records": self._appended_records,
                "appended_bytes": self._appended_bytes,
                "fsyncs": self._fsyncs,
                "fsync": self.fsync,
                "failed": None if self._failed is None else str(self._failed),
            }
        parts = []
        for part in self._parts:
            with part.cond:
                segs = part.segments
                parts.append({
                    "partition": part.id,
                    "start": segs[0].base,
                    "end": part.durable_end,
                    "segments": len(segs),
                    "bytes": sum(s.size for s in segs),
                    "corrupt_skipped": part.skipped,
                })
        d["partitions"] = parts
        d["corrupt_skipped"] = sum(p["corrupt_skipped"] for p in parts)
        return d

    def close(self) -> None:
        """Make everything durable, mark the log clean and release it.
        Idempotent. Appenders still waiting are released normally."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for part in self._parts:
            with part.append_lock:  # wait for a write in progress
                pass
        self._stop.set()
        self._dirty.set()
        if self._syncer is not None:
            self._syncer.join()
        clean = self._failed is None
        if clean:
            try:
                for part in self._parts:
                    self._sync_to(part, part.written_end)
            except LogError:
                clean = False
        for part in self._parts:
            with part.cond:
                part.cond.notify_all()
        self._notify_data()
        if clean:
            _write_atomically(os.path.join(self.path, "CLEAN"), b"")
        self._release_everything()

    def _release_everything(self) -> None:
        for part in self._parts:
            with part.cond:
                for s in part.segments:
                    s.retired = True
                    if s.refs == 0 and s.fd >= 0:
                        os.close(s.fd)
                        s.fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Log({self.path!r}, partitions={len(self._parts)}, fsync={self.fsync!r})"
