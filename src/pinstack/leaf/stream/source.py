"""Source: what the leaf's ingestion loop reads from, whichever stream is
behind it, and EmbeddedSource, the Source over the embedded Log.

The interface
-------------
A Source is assigned a fixed set of partitions of one stream and keeps a
position per partition: the offset of the next record it will return.

    partitions()          the assigned partitions
    seek(p, offset)       the next poll returns p's records from offset on
    position(p)           where p stands
    poll(max, timeout)    up to max Records (partition, offset, payload);
                          waits up to timeout seconds for the first one
    lag()                 {p: records in the stream after position(p)}
    close()

Records of one partition come in offset order, across polls too; records
of different partitions interleave in no promised order. A poll advances
the positions past what it returns and nothing else: there is no commit,
the leaf's manifest is the checkpoint, and after a restart the leaf
seek()s to it. The Kafka Source is kafka_source.KafkaSource.

Threads: a Source is used by one thread at a time (the ingestion loop).
EmbeddedSource may share its Log with appenders in other threads.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from .log import CorruptRecordError, Log, OffsetOutOfRange

__all__ = ["EmbeddedSource", "Record", "Source"]


class Record(NamedTuple):
    partition: int
    offset: int
    payload: bytes


_new_record = tuple.__new__  # Record(...) runs a Python-level __new__; this is the C one


class Source(abc.ABC):
    """A partitioned stream read from positions the caller controls."""

    @abc.abstractmethod
    def partitions(self) -> list[int]: ...

    @abc.abstractmethod
    def seek(self, partition: int, offset: int) -> None: ...

    @abc.abstractmethod
    def position(self, partition: int) -> int: ...

    @abc.abstractmethod
    def poll(self, max_records: int = 1000, timeout: float = 1.0) -> list[Record]: ...

    @abc.abstractmethod
    def lag(self) -> dict[int, int]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def positions(self) -> dict[int, int]:
        return {p: self.position(p) for p in self.partitions()}

    def poll_into(self, batch: Any, max_records: int = 1000, timeout: float = 1.0) -> int:
        """poll(), into a MessageBatch (pinstack._core._index) instead of a
        list: returns the records added. The same records, order and
        positions as poll(); EmbeddedSource adds them without an object per
        record."""
        records = self.poll(max_records, timeout)
        batch.add_records(records)
        return len(records)

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbeddedSource(Source):
    """A Source over an embedded Log. Partitions default to all of the
    log's, positions to each partition's start offset. With own_log=True,
    close() closes the log too."""

    def __init__(
        self,
        log: Log,
        partitions: Iterable[int] | None = None,
        offsets: Mapping[int, int] | None = None,
        *,
        own_log: bool = False,
    ) -> None:
        self._log = log
        self._own_log = own_log
        parts = list(range(log.partitions)) if partitions is None else list(partitions)
        if not parts or len(set(parts)) != len(parts):
            raise ValueError(f"partitions must be distinct and not empty (got {parts!r})")
        self._pos: dict[int, int] = {}
        for p in parts:
            self._pos[p] = log.start_offset(p)  # also checks that p exists
        for p, offset in (offsets or {}).items():
            if p not in self._pos:
                raise ValueError(f"offset given for partition {p}, which is not assigned")
            self.seek(p, offset)
        self._order = parts
        self._turn = 0
        self._closed = False

    def partitions(self) -> list[int]:
        return list(self._order)

    def seek(self, partition: int, offset: int) -> None:
        if partition not in self._pos:
            raise ValueError(f"partition {partition} is not assigned (have {self._order})")
        start, end = self._log.start_offset(partition), self._log.end_offset(partition)
        if type(offset) is not int or not start <= offset <= end:
            raise OffsetOutOfRange(partition, offset, start, end)
        self._pos[partition] = offset

    def position(self, partition: int) -> int:
        return self._pos[partition]

    def poll(self, max_records: int = 1000, timeout: float = 1.0) -> list[Record]:
        """Up to max_records Records; waits up to timeout seconds when none
        is ready. Partitions take turns being read first."""
        if self._closed:
            raise ValueError("poll on a closed source")
        deadline = time.monotonic() + timeout
        while True:
            out = self._drain(max_records)
            if out:
                return out
            left = deadline - time.monotonic()
            if left <= 0 or not self._log.wait_any(self._pos, left):
                return out

    def poll_into(self, batch: Any, max_records: int = 1000, timeout: float = 1.0) -> int:
        if self._closed:
            raise ValueError("poll on a closed source")
        deadline = time.monotonic() + timeout
        while True:
            n = self._drain(max_records, batch)
            if n:
                return n
            left = deadline - time.monotonic()
            if left <= 0 or not self._log.wait_any(self._pos, left):
                return 0

    def _drain(self, max_records: int, batch: Any = None) -> Any:
        """Read up to max_records, partitions taking turns: Records, or
        with a batch, log runs added to it (returns how many records)."""
        out: list[Record] = []
        taken = 0
        n = len(self._order)
        first = self._turn % n
        self._turn += 1
        log = self._log
        for i in range(n):
            p = self._order[(first + i) % n]
            pos = self._pos[p]
            if log.end_offset(p) <= pos:
                continue
            try:
                if batch is None:
                    recs, nxt = log.read_batch(p, pos, max_records - taken)
                    out.extend([_new_record(Record, (p, o, v)) for o, v in recs])
                    got = len(recs)
                else:
                    runs, nxt, got = log.read_runs(p, pos, max_records - taken)
                    for buf, at, count, first_offset in runs:
                        batch.add_log_run(p, buf, at, count, first_offset)
            except CorruptRecordError:
                if taken:
                    break  # this partition raises on a later poll
                raise
            taken += got
            self._pos[p] = nxt
            if taken >= max_records:
                break
        return out if batch is None else taken

    def lag(self) -> dict[int, int]:
        return {p: self._log.end_offset(p) - pos for p, pos in self._pos.items()}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._own_log:
                self._log.close()
