"""The pinstack-leaf service: one leaf's stream, index, ingestion and metrics,
without the HTTP (server.py puts this behind HTTP; cli.py starts both).

    leaf = Leaf(LeafConfig(data_dir="/data/leaf"))   # opens, starts ingesting
    leaf.write([b'{"op":"index","key":"pin:1","version":1,"fields":{"title":"a cat"}}'])
    leaf.search("cat", k=10)                           # {"hits": [...], "took_us": ...}
    leaf.close()

Data directory
--------------
    <data>/schema.json   the schema this leaf serves with (written on first
                         start; --schema replaces it)
    <data>/log/          the embedded log (stream/log.py), embedded source only
    <data>/index/        the Engine's directory (segments, manifest)

Ingestion
---------
The ingest thread owns the Source. It seeks it to engine.checkpoint() at
start, then loops: poll_into a MessageBatch (at most POLL_TIMEOUT s,
returning as soon as a record is readable: EmbeddedSource waits on
Log.wait_any and adds the log's checked read buffers as they are, Kafka
on the consumer), parse the batch (C, GIL released: a bad record is
logged with its partition and offset, counted, and skipped; or, with
on_bad_message="halt", ingestion stops in front of it),
engine.apply_batch(batch, positions) (C, GIL released). No Python object
is made per record. Positions are those just after the applied records,
for every assigned partition.

Readiness: the leaf is ready once, after start, the ingest thread has
applied everything up to a total lag of at most `ready_lag` records. It
then stays ready (a burst of writes does not take a caught-up leaf out of
its serving pool) unless ingestion halts or the leaf is closing.

Writes (embedded source only)
-----------------------------
write(payloads), or write_ndjson(body) (split in C), puts the messages in
a MessageBatch and checks every one (C, GIL released): one bad message
rejects the whole batch (BadMessages, with every error) and nothing
reaches the log. Then each message goes to partition crc32(key) %
partitions, so one key's messages stay in one partition, in order; each
partition's messages are one Log.append of the batch (framed in C under the
partition's append lock, one write(2), atomic), and the partitions are
appended in parallel. write returns once every append is durable under
the fsync policy: that is the acknowledgement. The batch is then offered
to the ingest thread (_ParsedWrites), which takes its parse for the
records it reads back instead of parsing them again. With Kafka the
stream is written by others: write raises WritesNotAccepted.

Visibility latency
------------------
pinstack_leaf_visibility_seconds measures, for writes made through this
process (write() and delete()), the time from just before Log.append to
the moment engine.apply has returned for the batch holding the write's last
record in a partition (records of a partition become visible in order, so
the last one visible means all are). So it covers the fsync, the ingest
thread's wake-up, parsing and indexing: what a client sees between sending
a write and it being searchable, minus the network. One observation per
(write, partition). Records that reach the stream some other way (Kafka, a
log written before a restart) are not in it; pinstack_leaf_apply_seconds
(time of each engine.apply) covers every record.

Threads: who owns what
----------------------
    ingest thread    the Source; engine.apply (under _engine_lock); the lag
                     and readiness state (plain attributes it replaces
                     whole, read by others without a lock)
    writer threads   write()/delete(): the batch's parse, Log.append (the Log
                     is thread-safe), _append_pool for the other partitions
                     of a batch; wait_visible() blocks on _applied_cond
    admin callers    flush()/compact(), one at a time (_admin_lock); the
                     engine orders them with apply itself, so ingestion
                     does not wait for a compaction
    any thread       search/count/get/stats (Engine allows them
                     concurrently with apply; they release the GIL in C)
close() stops the ingest thread first, then closes the engine, the source
and the log, in that order.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pinstack._core._index import parse_query
from pinstack.leaf.engine import Engine
from pinstack.leaf.message import (
    MessageError,
    Schema,
    SchemaError,
    batch_errors,
    new_batch,
)
from pinstack.leaf.stream import EmbeddedSource, Log, LogClosed, LogError

__all__ = [
    "DEFAULT_SCHEMA",
    "BadMessages",
    "BadRequest",
    "Leaf",
    "LeafConfig",
    "LeafError",
    "NotFound",
    "WritesNotAccepted",
]

log = logging.getLogger("pinstack.leaf.service")

# With only --data: the example schema of docs/leaf-stream.md.
DEFAULT_SCHEMA = {"text": ["title", "body"], "keywords": ["lang", "tag", "board"]}
DEFAULT_PARTITIONS = 4
POLL_TIMEOUT = 0.1  # s: the ingest thread notices close() within this
POLL_MAX_RECORDS = 4096  # per engine.apply: big enough to amortize, small enough to keep
#                          visibility smooth (add_batch commits document by document anyway)
LAG_INTERVAL = 0.05  # s between two lag readings while records keep coming
TICK_INTERVAL = 1.0  # s between two Engine.tick() calls while the stream is idle
MAX_K = 10_000
ORDERS = ("score", "bm25", "recent")
HIT_FIELDS = ("key", "version", "score", "payload", "fields", "source")
MAX_QUERY_NODES = 1 << 16  # structured queries: stop converting here (C's own limit is lower)
MAX_QUERY_DEPTH = 100  # structured queries: JSON nesting (C's own limit is lower)
MAX_LISTED_ERRORS = 100  # per rejected batch


class LeafError(Exception):
    """The leaf cannot do what was asked (not the caller's fault)."""


class BadRequest(ValueError):
    """The caller asked for something invalid; str() says what."""


class NotFound(LookupError):
    """No document with that key."""


class WritesNotAccepted(LeafError):
    """Writes go to the stream the leaf reads (Kafka), not to the leaf."""


class BadMessages(BadRequest):
    """A write batch with invalid messages: nothing of it was written.
    errors: [(index in the batch, MessageError)]."""

    def __init__(self, errors: list[tuple[int, MessageError]], total: int,
                 lines: list[int | None] | None = None) -> None:
        n = len(errors)
        first = errors[0]
        super().__init__(
            f"{n} of {total} message(s) are invalid, nothing was written; "
            f"message {first[0]}: {first[1]}"
        )
        self.errors = errors
        self.total = total
        self.lines = lines or [None] * n  # per error: its NDJSON line, if it came from one


class PartialWrite(LeafError):
    """Some partitions of a batch were appended, some were not."""

    def __init__(self, message: str, written: list[dict], failed: list[dict]) -> None:
        super().__init__(message)
        self.written = written
        self.failed = failed


@dataclass
class LeafConfig:
    """Everything a leaf is started with (cli.py builds it from flags)."""

    data_dir: str
    source: str = "embedded"  # "embedded" or "kafka"
    partitions: int | None = None  # embedded: None = what the log has, or DEFAULT_PARTITIONS
    fsync: str = "always"  # embedded: "always" or "interval_ms=N"
    on_corrupt: str = "stop"  # embedded: a corrupt log record stops ingestion, or is skipped
    # embedded: "all" keeps every log record (a damaged segment file can
    # always be rebuilt from the log; the disk grows with everything ever
    # written); "checkpoint" deletes log files whose records the durable
    # index (the manifest's checkpoint) holds (bounded disk; a damaged
    # segment file then loses what only it held, and says so).
    log_retention: str = "all"
    log_segment_bytes: int = 64 << 20  # embedded: log files roll at this size
    kafka_brokers: str | None = None
    kafka_topic: str | None = None
    kafka_partitions: list[int] | None = None  # None: all of the topic's
    kafka_config: dict[str, Any] = field(default_factory=dict)
    schema: Schema | None = None  # None: <data>/schema.json, or DEFAULT_SCHEMA
    writer_threads: int = 1
    on_bad_message: str = "skip"  # or "halt": stop ingesting in front of it
    ready_lag: int = 1000  # records behind (all partitions) under which startup is over
    max_query_bytes: int = 65536
    poll_max_records: int = POLL_MAX_RECORDS
    engine_options: dict[str, Any] = field(default_factory=dict)  # more Engine(...) arguments
    # What builds the index: Engine, or anything with its methods (the
    # benchmarks serve tantivy through the same service this way).
    engine_factory: Any = None

    def check(self) -> None:
        if self.source not in ("embedded", "kafka"):
            raise ValueError(f'source must be "embedded" or "kafka" (got {self.source!r})')
        if self.source == "kafka" and not (self.kafka_brokers and self.kafka_topic):
            raise ValueError("the kafka source needs kafka_brokers and kafka_topic")
        if self.on_bad_message not in ("skip", "halt"):
            raise ValueError(f'on_bad_message must be "skip" or "halt" '
                             f"(got {self.on_bad_message!r})")
        if self.ready_lag < 0:
            raise ValueError(f"ready_lag must be >= 0 (got {self.ready_lag})")
        if self.log_retention not in ("all", "checkpoint"):
            raise ValueError(f'log_retention must be "all" or "checkpoint" '
                             f"(got {self.log_retention!r})")


# ---- metrics -------------------------------------------------------------------

_LATENCY_BUCKETS = (
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)
_SLOW_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0)


class LeafMetrics:
    """The leaf's Prometheus metrics, in a registry of its own (two leaves
    in one process, as in tests, do not share counters). Counters and
    histograms are updated where things happen; _ScrapeCollector reads the
    rest (lag, readiness, engine and log stats) when /metrics is scraped."""

    def __init__(self, leaf: Leaf) -> None:
        r = self.registry = CollectorRegistry()
        self.ingested = Counter(
            "pinstack_leaf_ingested_records", "Stream records read and handled by ingestion "
            "(applied or skipped); rate() of it is the ingest rate", registry=r)
        self.applied = Counter(
            "pinstack_leaf_applied_ops", "Messages applied to the index, by result: added "
            "(indexed), stale (older than the indexed version, dropped), deleted (a delete "
            "that removed a document), delete_missed (a delete that found none newer-or-equal)",
            ["result"], registry=r)
        self.bad = Counter(
            "pinstack_leaf_bad_messages", "Stream records skipped as invalid messages, "
            "by rule broken (message.py codes)", ["code"], registry=r)
        self.rejected = Counter(
            "pinstack_leaf_rejected_messages", "Messages refused by the write API before "
            "reaching the log, by rule broken", ["code"], registry=r)
        self.written = Counter(
            "pinstack_leaf_written_records", "Records appended to the embedded log by the "
            "write API (acknowledged)", registry=r)
        self.visibility = Histogram(
            "pinstack_leaf_visibility_seconds", "Writes made through this process: from "
            "Log.append called to engine.apply returned for the write's last record "
            "(per write and partition)", buckets=_LATENCY_BUCKETS, registry=r)
        self.apply_seconds = Histogram(
            "pinstack_leaf_apply_seconds", "Duration of each engine.apply (one polled batch)",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.query_seconds = Histogram(
            "pinstack_leaf_query_seconds", "Index query time, by operation (search, count, "
            "get), without HTTP", ["op"], buckets=_LATENCY_BUCKETS, registry=r)
        self.flush_seconds = Histogram(
            "pinstack_leaf_flush_seconds", "Duration of flushes run through the service "
            "(admin API)", buckets=_SLOW_BUCKETS, registry=r)
        self.compaction_seconds = Histogram(
            "pinstack_leaf_compaction_seconds", "Duration of compactions run through the "
            "service (admin API)", buckets=_SLOW_BUCKETS, registry=r)
        self.http_requests = Counter(
            "pinstack_leaf_http_requests", "HTTP requests answered, by endpoint (route "
            "template), method and status", ["endpoint", "method", "status"], registry=r)
        self.http_seconds = Histogram(
            "pinstack_leaf_http_request_seconds", "HTTP request time from a whole request "
            "received to its response queued, by endpoint", ["endpoint"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.gc_pause = Histogram(
            "pinstack_leaf_gc_pause_seconds", "Python's cyclic garbage collector: each "
            "collection's pause (every Python thread waits), by generation; observed only in "
            "a pinstack-leaf serve process", ["generation"], buckets=_LATENCY_BUCKETS,
            registry=r)
        r.register(_ScrapeCollector(leaf))


def _engine_summary(stats: Mapping[str, Any]) -> tuple[float | None, float | None, float | None]:
    """(segments, bytes, live documents) from engine.stats(), tolerant of its
    shape: `segments` a count or a list of per-segment dicts; bytes from a
    top-level `bytes`, else the segment files' (`segment_file_bytes`, or the
    `bytes` of each entry of `files`/`segments`) plus the active segment's
    memory (`active.bytes_total`)."""
    segs = stats.get("segments")
    nsegs: float | None = None
    if isinstance(segs, (int, float)):
        nsegs = float(segs)
    elif isinstance(segs, (list, tuple)):
        nsegs = float(len(segs))
    total = stats.get("bytes")
    if not isinstance(total, (int, float)):
        total = stats.get("segment_file_bytes")
        if not isinstance(total, (int, float)):
            listed = stats.get("files", segs)
            total = sum(float(f.get("bytes", 0) or 0) for f in listed
                        if isinstance(f, Mapping)) if isinstance(listed, (list, tuple)) else 0
        active = stats.get("active")
        if isinstance(active, Mapping):
            total += float(active.get("bytes_total", 0) or 0)
    live = stats.get("docs_live")
    return nsegs, float(total), float(live) if isinstance(live, (int, float)) else None


# Engine counters exported when engine.stats() has them (its background flush
# and compaction threads time themselves): name -> (type, help).
_ENGINE_COUNTERS = {
    "flushes": ("counter", "Segments flushed to files by the engine"),
    "flush_seconds": ("counter", "Time spent flushing, all flushes"),
    "flush_bytes": ("counter", "Bytes of segment files written by flushes"),
    "flush_failures": ("counter", "Flushes that failed"),
    "flush_last_seconds": ("gauge", "Duration of the last flush"),
    "compactions": ("counter", "Compactions (merges) done by the engine"),
    "compaction_seconds": ("counter", "Time spent compacting, all compactions"),
    "compaction_bytes": ("counter", "Bytes of segment files written by compactions"),
    "compaction_docs_dropped": ("counter", "Deleted or superseded documents compactions "
                                           "dropped"),
    "compaction_failures": ("counter", "Compactions that failed"),
    "compaction_last_seconds": ("gauge", "Duration of the last compaction"),
    "rotations": ("counter", "Active segments sealed (a new one started)"),
}


class _ScrapeCollector(Collector):
    """What is read at scrape time rather than counted as it happens."""

    def __init__(self, leaf: Leaf) -> None:
        self._leaf = leaf

    def collect(self):  # type: ignore[override]
        leaf = self._leaf
        ready = GaugeMetricFamily("pinstack_leaf_ready", "1 once caught up after start "
                                  "(see /readyz), else 0")
        ready.add_metric([], 1.0 if leaf.ready()[0] else 0.0)
        yield ready
        lag = GaugeMetricFamily("pinstack_leaf_lag_records", "Records in the stream not yet "
                                "applied, per partition (as of the ingest thread's last "
                                "reading)", labels=["partition"])
        for p, n in sorted(leaf._lag.items()):
            lag.add_metric([str(p)], float(n))
        yield lag
        pos = GaugeMetricFamily("pinstack_leaf_applied_offset", "Next stream offset to "
                                "apply, per partition", labels=["partition"])
        for p, n in sorted(leaf._positions.items()):
            pos.add_metric([str(p)], float(n))
        yield pos
        if leaf.closed:
            return
        try:
            stats = leaf.engine.stats()
        except Exception:  # noqa: BLE001 - a scrape must not fail because of one source
            log.exception("engine.stats() failed during a metrics scrape")
            stats = {}
        nsegs, nbytes, live = _engine_summary(stats)
        if nsegs is not None:
            yield GaugeMetricFamily("pinstack_leaf_segments", "Index segments (active, "
                                    "sealed and on disk)", value=nsegs)
        if nbytes is not None:
            yield GaugeMetricFamily("pinstack_leaf_segment_bytes", "Bytes of all index "
                                    "segments (memory of in-memory ones, file size of "
                                    "flushed ones)", value=nbytes)
        if live is not None:
            yield GaugeMetricFamily("pinstack_leaf_docs_live", "Searchable documents",
                                    value=live)
        for key, (kind, text) in _ENGINE_COUNTERS.items():
            value = stats.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                yield family(f"pinstack_leaf_engine_{key}", text, value=float(value))
        if leaf.log is not None:
            ls = leaf.log.stats()
            yield CounterMetricFamily("pinstack_leaf_log_appended_records", "Records appended "
                                      "to the embedded log", value=ls["appended_records"])
            yield CounterMetricFamily("pinstack_leaf_log_appended_bytes", "Bytes appended to "
                                      "the embedded log", value=ls["appended_bytes"])
            yield CounterMetricFamily("pinstack_leaf_log_fsyncs", "fdatasync calls of the "
                                      "embedded log", value=ls["fsyncs"])
            size = GaugeMetricFamily("pinstack_leaf_log_bytes", "Bytes of the embedded log "
                                     "on disk, per partition", labels=["partition"])
            for p in ls["partitions"]:
                size.add_metric([str(p["partition"])], float(p["bytes"]))
            yield size


# ---- visibility ----------------------------------------------------------------


class _VisibilityClock:
    """Pairs the appends of this process's writes with the applies that make
    them searchable (see "Visibility latency" in the module docstring).

    Either side can come first: the ingest thread may apply a record before
    the appender thread, woken by the same fsync, gets to register it. So the
    writer side looks at recent applies (a short ring per partition) as
    well as leaving a pending entry for the ingest thread."""

    MAX_PENDING = 100_000  # per partition; oldest dropped (ingestion stuck)
    RING = 256

    def __init__(self, histogram: Histogram) -> None:
        self._hist = histogram
        self._lock = threading.Lock()
        self._pending: dict[int, deque[tuple[int, float]]] = {}  # (last offset, t0)
        self._applied: dict[int, deque[tuple[int, float]]] = {}  # (position after, t)

    def appended(self, partition: int, last_offset: int, t0: float) -> None:
        seen = None
        with self._lock:
            ring = self._applied.get(partition)
            if ring and ring[-1][0] > last_offset:
                # The first apply past last_offset made it visible, if the ring still
                # holds it: it has dropped nothing yet, or it holds an older apply.
                if len(ring) < self.RING or ring[0][0] <= last_offset:
                    seen = next(t for end, t in ring if end > last_offset)
            else:
                pend = self._pending.setdefault(partition, deque())
                if len(pend) >= self.MAX_PENDING:
                    pend.popleft()
                pend.append((last_offset, t0))
        if seen is not None:
            self._hist.observe(max(0.0, seen - t0))

    def applied(self, moved: Mapping[int, int], now: float) -> None:
        done: list[float] = []
        with self._lock:
            for p, pos in moved.items():
                ring = self._applied.get(p)
                if ring is None:
                    ring = self._applied[p] = deque(maxlen=self.RING)
                ring.append((pos, now))
                pend = self._pending.get(p)
                while pend and pend[0][0] < pos:
                    done.append(now - pend.popleft()[1])
        for d in done:
            self._hist.observe(d)


# ---- parsed writes, handed to the ingest thread -----------------------------------


class _ParsedWrites:
    """Write batches whose records are in the log, for the ingest thread to
    take their parse (MessageBatch.attach) instead of parsing the same bytes
    again: a record written through this leaf is parsed once.

    Writers offer (partition, first offset, last offset, batch) after their
    append; the ingest thread takes what overlaps the records it polled and
    drops what it has read past. An offer that comes after the ingest
    thread read those records (it can: records are readable once durable,
    the writer returns a moment later) is dropped unused; the ingest thread
    then parsed them itself. Bounded by MAX_MESSAGES (about 1 KB each with
    their request body and parse: ~130 MB at most; ingestion far behind:
    later records are parsed by the ingest thread), emptied when ingestion
    halts. One lock, held for dict work only."""

    MAX_MESSAGES = 1 << 17

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[int, dict[int, tuple[int, Any]]] = {}  # p -> first -> (last, batch)
        self._held = 0
        self._stopped = False

    def offer(self, partition: int, first: int, last: int, batch: Any) -> None:
        n = last - first + 1
        with self._lock:
            if not self._stopped and self._held + n <= self.MAX_MESSAGES:
                self._parts.setdefault(partition, {})[first] = (last, batch)
                self._held += n

    def stop(self) -> None:
        """Ingestion halted: drop everything, take no more offers."""
        with self._lock:
            self._parts.clear()
            self._held = 0
            self._stopped = True

    def attach(self, batch: Any) -> int:
        """Attach to a polled, unparsed batch what overlaps its records;
        returns the messages attached."""
        starts = batch.rewind(0)
        ends = batch.positions()
        take = []
        with self._lock:
            for p, lo in starts.items():
                entries = self._parts.get(p)
                if not entries:
                    continue
                hi = ends[p]
                for first, (last, src) in list(entries.items()):
                    if first < hi and last >= lo:
                        take.append((src, p, first))
                    if last < hi:
                        del entries[first]
                        self._held -= last - first + 1
        return sum(batch.attach(src, p, first) for src, p, first in take)


# ---- the leaf ------------------------------------------------------------------


def _choose_schema(config: LeafConfig) -> tuple[Schema, bool]:
    """(schema, whether to save it): config.schema, else <data>/schema.json,
    else DEFAULT_SCHEMA. It is saved (once the leaf has opened its stream,
    so a leaf refused for a data directory in use changes nothing) so that
    a restart without --schema serves the same one."""
    path = os.path.join(config.data_dir, "schema.json")
    stored = Schema.load(path) if os.path.exists(path) else None
    schema = config.schema or stored or Schema.from_dict(DEFAULT_SCHEMA)
    if stored is not None and stored.to_dict() != schema.to_dict():
        log.warning("schema differs from the one %s was served with; messages already "
                    "indexed keep the terms the old one gave them: %s -> %s",
                    config.data_dir, stored.to_dict(), schema.to_dict())
    return schema, stored is None or stored.to_dict() != schema.to_dict()


def _save_schema(data_dir: str, schema: Schema) -> None:
    path = os.path.join(data_dir, "schema.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(schema.to_dict(), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _to_query(q: Any, query: Any, max_bytes: int) -> Any:
    """The structured query the engine is given, from a human-syntax string
    q or a structured form `query` (JSON: lists for tuples).

    A string is parsed here with parse_query (C) and searched in its
    structured form: the engine then applies its structured limits (node
    count, depth) to either form, with the parser's own messages. The cost
    (about 1-2 us) is noise next to a search."""
    if q is None and query is None:
        raise BadRequest('missing query: give "q" (query syntax) or "query" (structured)')
    if q is not None and query is not None:
        raise BadRequest('give "q" (query syntax) or "query" (structured), not both')
    if q is not None:
        if not isinstance(q, str):
            raise BadRequest('"q" must be a string (the query syntax)')
        n = len(q) if q.isascii() else len(q.encode("utf-8", "surrogatepass"))
        if n > max_bytes:
            raise BadRequest(f"query is {n} bytes, over the limit of {max_bytes}")
        try:
            return parse_query(q)
        except (ValueError, UnicodeEncodeError) as e:
            raise BadRequest(str(e)) from None
    nodes = 0

    def convert(x: Any, depth: int) -> Any:
        nonlocal nodes
        if isinstance(x, list):
            nodes += 1
            if nodes > MAX_QUERY_NODES:
                raise BadRequest(f"query: more than {MAX_QUERY_NODES} nodes")
            if depth > MAX_QUERY_DEPTH:
                raise BadRequest(f"query: nested deeper than {MAX_QUERY_DEPTH}")
            return tuple(convert(c, depth + 1) for c in x)
        return x

    if not isinstance(query, list):
        raise BadRequest('"query" must be a structured query: a list such as '
                         '["and", ["term", "cat"], ["term", "dog"]]')
    return convert(query, 0)


class Leaf:
    """One leaf: stream, schema, engine, ingest thread, metrics. Opening it
    starts ingestion; close() stops everything (idempotent)."""

    def __init__(self, config: LeafConfig) -> None:
        config.check()
        self.config = config
        self.started_at = time.time()
        self.closed = False
        self.log: Log | None = None
        self.source: Any = None
        self.engine: Any = None
        os.makedirs(config.data_dir, exist_ok=True)
        self.schema, save_schema = _choose_schema(config)
        self.metrics = LeafMetrics(self)
        # Written by the ingest thread only (replaced whole; readers just load them).
        self._lag: dict[int, int] = {}
        self._positions: dict[int, int] = {}
        self._ready = False
        self._halted: str | None = None
        self._ingest_error: str | None = None
        self._counts = {"records": 0, "batches": 0, "added": 0, "stale": 0, "deleted": 0,
                        "bad": 0, "parsed_by_write": 0}
        self._engine_lock = threading.Lock()  # apply and tick vs close
        self._admin_lock = threading.Lock()  # flush, compact: one at a time
        self._applied_cond = threading.Condition()
        self._stop = threading.Event()
        self._draining = False  # set by the server when it starts to shut down
        self._waits_cancelled = False
        self._visibility = _VisibilityClock(self.metrics.visibility)
        self._append_pool: ThreadPoolExecutor | None = None
        self._parsed = _ParsedWrites()
        try:
            self._open()
            if save_schema:
                _save_schema(config.data_dir, self.schema)
        except BaseException:
            self._close_parts()
            raise
        self._thread = threading.Thread(target=self._ingest_loop, name="leaf-ingest",
                                        daemon=True)
        self._thread.start()

    def _open(self) -> None:
        c = self.config
        self.engine = (c.engine_factory or Engine)(os.path.join(c.data_dir, "index"),
                                                   writer_threads=c.writer_threads,
                                                   **c.engine_options)
        checkpoint = self.engine.checkpoint()
        self.rebuild_incomplete: str | None = None
        if c.source == "embedded":
            log_dir = os.path.join(c.data_dir, "log")
            parts = c.partitions
            if parts is None and not os.path.exists(os.path.join(log_dir, "meta.json")):
                parts = DEFAULT_PARTITIONS
            self.log = Log(log_dir, parts, fsync=c.fsync, on_corrupt=c.on_corrupt,
                           segment_bytes=c.log_segment_bytes)
            try:
                self.source = EmbeddedSource(self.log, offsets=checkpoint)
            except LogError as e:
                raise LeafError(f"the index in {c.data_dir}/index covers stream positions "
                                f"{checkpoint} that the log in {log_dir} does not have: {e}"
                                ) from None
            rebuilt = getattr(self.engine, "rebuild_reason", None)
            lost = {p: self.log.start_offset(p) for p in range(self.log.partitions)
                    if self.log.start_offset(p) > checkpoint.get(p, 0)}
            if rebuilt and lost:
                self.rebuild_incomplete = (
                    f"the index was rebuilt from the log ({rebuilt}), but log retention had "
                    f"already deleted records below offsets {lost}: documents only they held "
                    f"are lost")
                log.error("%s", self.rebuild_incomplete)
            self._append_pool = ThreadPoolExecutor(
                max_workers=min(self.log.partitions, 16), thread_name_prefix="leaf-append")
            self._positions = self.source.positions()
        else:
            from pinstack.leaf.kafka_source import KafkaSource  # needs confluent-kafka

            self.source = KafkaSource(c.kafka_brokers or "", c.kafka_topic or "",
                                      c.kafka_partitions, offsets=checkpoint,
                                      config=c.kafka_config)
            self._positions = {p: o for p, o in checkpoint.items()
                               if p in self.source.partitions()}

    # ---- ingestion (the ingest thread) ------------------------------------------

    def _ingest_loop(self) -> None:
        src = self.source
        backoff = 0.0
        last_lag = last_tick = 0.0
        # Engine.tick(), where the engine has it: time-based work (sealing an
        # old active segment) that apply() only does when documents come.
        tick = getattr(self.engine, "tick", None)
        while not self._stop.is_set():
            if self._halted is not None:  # stays halted; keep the lag gauges current
                self._read_lag()
                self._stop.wait(1.0)
                continue
            batch = new_batch(self.schema)
            try:
                records = src.poll_into(batch, self.config.poll_max_records, POLL_TIMEOUT)
            except Exception as e:  # noqa: BLE001 - reported, retried
                backoff = min(5.0, backoff * 2 or 0.1)
                self._report_ingest_error(f"reading the stream failed: {e}")
                self._stop.wait(backoff)
                continue
            backoff = 0.0
            now = time.monotonic()
            try:
                if records:
                    self._apply(batch)
                if now - last_tick >= TICK_INTERVAL:
                    last_tick = now
                    with self._engine_lock:
                        if not self.closed:
                            if tick is not None and not records:
                                tick()
                            self._retain()
            except Exception as e:  # noqa: BLE001
                log.exception("ingestion halted: applying to the index failed")
                self._halt(f"applying to the index failed: {e}")
            if not records or now - last_lag >= LAG_INTERVAL:
                last_lag = now
                self._read_lag()

    def _apply(self, batch: Any) -> None:
        """Parse and apply one polled MessageBatch (C, GIL released), then
        publish the positions after it."""
        halt = self.config.on_bad_message == "halt"
        self._counts["parsed_by_write"] += self._parsed.attach(batch)
        batch.parse(halt)
        stop_at = None
        records = len(batch)
        positions = dict(self._positions)
        if halt and batch.first_bad is not None:
            # halt policy: apply what is in front of the bad record (parsing
            # stopped at it), then stop there: rewind the source to it.
            records = batch.first_bad
            stop_at = batch_errors(batch, halt=True)[0].error
            positions.update(batch.positions(records))
            positions.update(batch.rewind(records))
            for p, off in positions.items():
                if self.source.position(p) != off:
                    self.source.seek(p, off)
            bad: list[Any] = []
        else:
            bad = batch_errors(batch) if batch.bad else []
            positions.update(batch.positions())
        apply_batch = getattr(self.engine, "apply_batch", None)
        t0 = time.monotonic()
        with self._engine_lock:
            if self.closed:
                return
            if apply_batch is not None:
                result = apply_batch(batch, positions)
            else:  # an engine that takes Op lists (the benchmarks' tantivy)
                result = self.engine.apply(batch.to_ops(), positions)
        now = time.monotonic()
        m = self.metrics
        m.apply_seconds.observe(now - t0)
        moved = {p: o for p, o in positions.items() if o != self._positions.get(p)}
        self._visibility.applied(moved, now)
        with self._applied_cond:
            self._positions = positions
            self._applied_cond.notify_all()
        ndel = batch.deletes
        m.ingested.inc(records)
        m.applied.labels("added").inc(result.added)
        m.applied.labels("stale").inc(result.stale)
        m.applied.labels("deleted").inc(result.deleted)
        m.applied.labels("delete_missed").inc(ndel - result.deleted)
        for b in bad:
            m.bad.labels(b.error.code).inc()
        c = self._counts
        c["records"] += records
        c["batches"] += 1
        c["added"] += result.added
        c["stale"] += result.stale
        c["deleted"] += result.deleted
        c["bad"] += len(bad)
        self._ingest_error = None
        if stop_at is not None:
            log.error("ingestion halted in front of a bad message (on_bad_message=halt): %s",
                      stop_at)
            self._halt(f"bad message at {stop_at}")

    def _retain(self) -> None:
        """log_retention="checkpoint": drop log files the durable index
        covers (ingest thread, engine lock held)."""
        if self.log is None or self.config.log_retention != "checkpoint":
            return
        for p, offset in self.engine.checkpoint().items():
            if p < self.log.partitions:
                self.log.delete_before(p, offset)

    def _halt(self, reason: str) -> None:
        self._halted = reason
        self._parsed.stop()  # nothing will take them any more
        with self._applied_cond:
            self._applied_cond.notify_all()

    def _read_lag(self) -> None:
        try:
            lag = self.source.lag()
        except Exception as e:  # noqa: BLE001 - Kafka unreachable: not caught up
            self._report_ingest_error(f"reading the stream's lag failed: {e}")
            return
        self._lag = lag
        if not self._ready and self._halted is None and \
                sum(lag.values()) <= self.config.ready_lag:
            self._ready = True
            log.info("caught up with the stream (lag %d records): ready", sum(lag.values()))

    def _report_ingest_error(self, message: str) -> None:
        if message != self._ingest_error:
            log.error("%s (retrying)", message)
        self._ingest_error = message

    # ---- state ------------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        """(ready, why): see "Readiness" in the module docstring."""
        if self.closed or self._stop.is_set() or self._draining:
            return False, "shutting down"
        if self._halted is not None:
            return False, f"ingestion halted: {self._halted}"
        if self._ready:
            return True, "caught up with the stream"
        lag = sum(self._lag.values()) if self._lag else None
        why = "catching up with the stream"
        if lag is not None:
            why += f": {lag} records behind (ready at {self.config.ready_lag})"
        if self._ingest_error:
            why += f"; {self._ingest_error}"
        return False, why

    def stats(self) -> dict[str, Any]:
        ready, why = self.ready()
        d: dict[str, Any] = {
            "ready": ready,
            "ready_reason": why,
            "rebuild_incomplete": self.rebuild_incomplete,
            "uptime_s": round(time.time() - self.started_at, 3),
            "source": self.config.source,
            "schema": self.schema.to_dict(),
            "ingest": {
                **self._counts,
                "positions": {str(p): o for p, o in sorted(self._positions.items())},
                "lag": {str(p): n for p, n in sorted(self._lag.items())},
                "lag_total": sum(self._lag.values()),
                "halted": self._halted,
                "error": self._ingest_error,
                "on_bad_message": self.config.on_bad_message,
            },
            "engine": self.engine.stats(),
        }
        if self.log is not None:
            d["log"] = self.log.stats()
        else:
            d["kafka"] = {"brokers": self.config.kafka_brokers, "topic": self.config.kafka_topic,
                          "partitions": self.source.partitions()}
        return d

    # ---- writes (writer threads) ------------------------------------------------------

    def partition_of(self, key: str) -> int:
        """The partition a key's messages go to: stable across restarts and
        processes (crc32 of its UTF-8), so a key's order is kept. Writes
        route in C (MessageBatch.route) by the same rule."""
        assert self.log is not None
        return zlib.crc32(key.encode("utf-8")) % self.log.partitions

    def write(self, payloads: Sequence[bytes]) -> dict[str, Any]:
        """Validate every message, append them, return once durable:
        {"written", "index", "delete", "partitions": [{partition,
        first_offset, last_offset, records}]}. Raises BadMessages (nothing
        written), WritesNotAccepted, PartialWrite or LeafError."""
        self._check_writable()
        if not payloads:
            raise BadRequest("no messages to write")
        batch = new_batch(self.schema)
        batch.add_payloads(payloads)
        return self._write_batch(batch)

    def write_ndjson(self, body: bytes) -> dict[str, Any]:
        """write() for an NDJSON body: one message a line, blank lines
        skipped, split in C. A BadMessages says each bad message's line
        (its `lines`)."""
        self._check_writable()
        batch = new_batch(self.schema)
        batch.add_ndjson(body)
        if not len(batch):
            raise BadRequest("no messages to write")
        return self._write_batch(batch)

    def _check_writable(self) -> None:
        if self.log is None:
            raise WritesNotAccepted(
                f"this leaf reads Kafka topic {self.config.kafka_topic!r} at "
                f"{self.config.kafka_brokers}: write to the topic, not to the leaf")

    def _write_batch(self, batch: Any) -> dict[str, Any]:
        """Parse (C, GIL released; one bad message rejects the batch, every
        error listed), route each message to its key's partition, append
        each partition's share (framed in C under the log's lock)."""
        assert self.log is not None
        batch.parse()
        if batch.bad:
            found = batch.errors()
            for _, _, _, e in found:
                self.metrics.rejected.labels(e.code).inc()
            raise BadMessages([(i, e) for i, _, _, e in found], len(batch),
                              lines=[line for _, _, line, _ in found])
        counts = batch.route(self.log.partitions)
        results = self._append_groups(batch, {p: n for p, n in enumerate(counts) if n})
        for w in results:
            self._parsed.offer(w["partition"], w["first_offset"], w["last_offset"], batch)
        self.metrics.written.inc(len(batch))
        ndel = batch.deletes
        return {"written": len(batch), "index": len(batch) - ndel, "delete": ndel,
                "partitions": results}

    def _append_groups(self, batch: Any, groups: dict[int, int]) -> list[dict[str, Any]]:
        """One Log.append per partition (groups: partition -> its
        messages), in parallel (each waits for its fsync; with an interval
        policy sequential appends would wait one interval each)."""
        t0 = time.monotonic()
        assert self.log is not None and self._append_pool is not None
        items = sorted(groups.items())
        futures: list[tuple[int, int, Any]] = []
        for p, n in items[1:]:
            try:
                futures.append((p, n, self._append_pool.submit(self.log.append, p, batch)))
            except RuntimeError:  # the pool is shut down: close() has begun
                futures.append((p, n, None))
        outcome: list[tuple[int, int, Any]] = []
        p0, n0 = items[0]
        try:
            outcome.append((p0, n0, self.log.append(p0, batch)))
        except Exception as e:  # noqa: BLE001 - collected below
            outcome.append((p0, n0, e))
        for p, n, fut in futures:
            if fut is None:
                outcome.append((p, n, LogClosed("the leaf is shutting down")))
                continue
            try:
                outcome.append((p, n, fut.result()))
            except Exception as e:  # noqa: BLE001
                outcome.append((p, n, e))
        written, failed = [], []
        for p, n, res in outcome:
            if isinstance(res, Exception):
                failed.append({"partition": p, "records": n, "error": str(res)})
            else:
                self._visibility.appended(p, res, t0)
                written.append({"partition": p, "first_offset": res - n + 1,
                                "last_offset": res, "records": n})
        if failed:
            closed = any(isinstance(r, LogClosed) for _, _, r in outcome)
            what = "the leaf is shutting down" if closed else failed[0]["error"]
            if not written:
                raise LeafError(f"nothing was written: {what}")
            raise PartialWrite(
                f"{len(failed)} of {len(outcome)} partition(s) were not written ({what}); "
                f"writing the batch again is safe (versions decide)", written, failed)
        return written

    def delete(self, key: str, version: int | None = None) -> dict[str, Any]:
        """Write a delete message for key (through the log, like any write).
        Without a version: the live document's (NotFound if there is none),
        so a newer version still on its way is not deleted."""
        if version is None:
            hit = self.get_hit(key)
            if hit is None:
                raise NotFound(f"no document with key {key!r}")
            version = hit.version
        msg = json.dumps({"op": "delete", "key": key, "version": version},
                         ensure_ascii=False).encode("utf-8", "surrogatepass")
        result = self.write([msg])
        result["version"] = version
        return result

    def wait_visible(self, partitions: Sequence[Mapping[str, Any]], timeout: float) -> bool:
        """Wait until the records write() reported (its "partitions") are
        applied; False on timeout, halt or close."""
        want = {w["partition"]: w["last_offset"] for w in partitions}
        deadline = time.monotonic() + timeout
        with self._applied_cond:
            while True:
                pos = self._positions
                if all(pos.get(p, 0) > off for p, off in want.items()):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or self._halted is not None or self._stop.is_set() \
                        or self._waits_cancelled:
                    return False
                self._applied_cond.wait(min(left, 0.5))

    # ---- reads (any thread) -------------------------------------------------------------

    def query(self, q: Any = None, query: Any = None) -> Any:
        """The engine's form of a request's query (BadRequest if invalid)."""
        return _to_query(q, query, self.config.max_query_bytes)

    def search(self, q: Any = None, query: Any = None, *, k: int = 10, order: str = "score",
               count: bool = False, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """{"hits": [...], "count"?: n, "took_us": ...}; BadRequest for a
        bad query or parameter."""
        if type(k) is not int or not 1 <= k <= MAX_K:
            raise BadRequest(f"k must be an integer 1..{MAX_K} (got {k!r})")
        if order not in ORDERS:
            raise BadRequest(f"order must be one of {', '.join(ORDERS)} (got {order!r})")
        fields = self._check_fields(fields, default=("key", "version", "score", "payload"))
        parsed = self.query(q, query)
        hist = self.metrics.query_seconds
        t0 = time.perf_counter()
        try:
            hits = self.engine.search(parsed, k, order)
            t1 = time.perf_counter()
            hist.labels("search").observe(t1 - t0)
            total = None
            if count:
                total = self.engine.count(parsed)
                hist.labels("count").observe(time.perf_counter() - t1)
        except (ValueError, TypeError) as e:  # the structured form's rules (C)
            raise BadRequest(str(e)) from None
        took = time.perf_counter() - t0
        out: dict[str, Any] = {"hits": [self.render(h, fields) for h in hits]}
        if total is not None:
            out["count"] = total
        out["took_us"] = round(took * 1e6)
        return out

    def count(self, q: Any = None, query: Any = None) -> dict[str, Any]:
        parsed = self.query(q, query)
        t0 = time.perf_counter()
        try:
            n = self.engine.count(parsed)
        except (ValueError, TypeError) as e:
            raise BadRequest(str(e)) from None
        took = time.perf_counter() - t0
        self.metrics.query_seconds.labels("count").observe(took)
        return {"count": n, "took_us": round(took * 1e6)}

    def get_hit(self, key: str) -> Any:
        t0 = time.perf_counter()
        try:
            hit = self.engine.get(key)
        except (ValueError, TypeError, UnicodeEncodeError) as e:
            raise BadRequest(f"bad key: {e}") from None
        self.metrics.query_seconds.labels("get").observe(time.perf_counter() - t0)
        return hit

    def get(self, key: str, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """The document of key, rendered (NotFound if there is none)."""
        fields = self._check_fields(fields, default=None)
        hit = self.get_hit(key)
        if hit is None:
            raise NotFound(f"no document with key {key!r}")
        return self.render(hit, fields)

    def _check_fields(self, fields: Sequence[str] | None,
                      default: Sequence[str] | None) -> tuple[str, ...]:
        store = self.schema.store
        available = {"source": HIT_FIELDS, "payload": HIT_FIELDS[:4],
                     "none": HIT_FIELDS[:3]}[store]
        if fields is None:
            return tuple(f for f in (default or available) if f in available)
        for f in fields:
            if f not in HIT_FIELDS:
                raise BadRequest(f"unknown field {f!r} in fields (known: "
                                 f"{', '.join(HIT_FIELDS)})")
            if f not in available:
                raise BadRequest(f"field {f!r} is not available: this leaf stores "
                                 f'"{store}" (schema "store"), which gives '
                                 f"{', '.join(available)}")
        return tuple(fields)

    def render(self, hit: Any, fields: Sequence[str]) -> dict[str, Any]:
        """A Hit as JSON-ready dict with the requested fields. The blob is
        what Schema.store says: the message (source), its payload as JSON
        (payload), or nothing (none)."""
        out: dict[str, Any] = {}
        if "key" in fields:
            try:
                out["key"] = hit.key.decode("utf-8")
            except UnicodeDecodeError:  # not from a message (they are str); keep it exact
                out["key"] = hit.key.hex()
                out["key_encoding"] = "hex"
        if "version" in fields:
            out["version"] = hit.version
        if "score" in fields:
            out["score"] = hit.score
        want_blob = [f for f in fields if f in ("payload", "fields", "source")]
        if want_blob:
            store = self.schema.store
            try:
                doc = json.loads(hit.blob) if hit.blob else None
            except ValueError:
                doc = None
            if store == "payload":
                out["payload"] = doc
            elif store == "source":
                doc = doc if isinstance(doc, dict) else {}
                for f in want_blob:
                    if f == "payload":
                        out["payload"] = doc.get("payload")
                    elif f == "fields":
                        out["fields"] = doc.get("fields", {})
                    else:
                        out["source"] = doc
        return out

    # ---- admin (serialized with ingestion) ----------------------------------------------

    def flush(self) -> dict[str, Any]:
        return self._admin(self.engine.flush, self.metrics.flush_seconds)

    def compact(self) -> dict[str, Any]:
        return self._admin(self.engine.compact, self.metrics.compaction_seconds)

    def _admin(self, action: Any, hist: Histogram) -> dict[str, Any]:
        # Not under _engine_lock: the engine orders flush and compaction with
        # apply itself, and a compaction can take minutes that ingestion must
        # not wait for. One admin action at a time.
        with self._admin_lock:
            if self.closed:
                raise LeafError("the leaf is shutting down")
            t0 = time.perf_counter()
            try:
                result = action()
            except Exception as e:  # noqa: BLE001 - the engine's reason, for the operator
                raise LeafError(f"{action.__name__} failed: {e}") from e
            took = time.perf_counter() - t0
        hist.observe(took)
        return {"result": result, "took_ms": round(took * 1000, 3)}

    # ---- lifecycle --------------------------------------------------------------------

    def drain(self) -> None:
        """Shutdown begins: report not ready (load balancers stop sending)
        while requests in flight finish. Ingestion goes on until close()."""
        self._draining = True

    def cancel_waits(self) -> None:
        """Make every wait_visible() return now (shutdown's grace time is over)."""
        with self._applied_cond:
            self._waits_cancelled = True
            self._applied_cond.notify_all()

    def close(self) -> None:
        """Stop ingesting, then close the engine, the source and the log.
        Idempotent."""
        if self.closed:
            return
        self._stop.set()
        with self._applied_cond:
            self._applied_cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        self._close_parts()

    def _close_parts(self) -> None:
        self._stop.set()
        with self._engine_lock:
            self.closed = True
            if self.engine is not None:
                try:
                    self.engine.close()
                except Exception:  # noqa: BLE001 - go on closing the rest
                    log.exception("closing the engine failed")
        if self.source is not None:
            try:
                self.source.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the source failed")
        if self._append_pool is not None:
            self._append_pool.shutdown(wait=True)
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> Leaf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def schema_from_file(path: str) -> Schema:
    """Schema.load with a one-line error for the command line."""
    try:
        return Schema.load(path)
    except OSError as e:
        raise SchemaError(f"schema file {path}: {e.strerror}") from None
