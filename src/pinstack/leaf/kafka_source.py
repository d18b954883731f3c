"""KafkaSource: the leaf's Source over a Kafka topic, with confluent-kafka
(librdkafka).

What it is
----------
The leaf is told which partitions of a topic are its own and from which
offsets to read them (its manifest's checkpoint). So this source never
joins a consumer group's rebalancing and never commits: it assign()s the
partitions at explicit offsets, `enable.auto.commit` and
`enable.auto.offset.store` are forced off, and nothing here calls commit().
A restart seeks to the manifest's offsets again; Kafka's own record of the
group's progress is never consulted.

* poll(max, timeout) waits for the first message with Consumer.poll (which
  returns as soon as one arrives), then drains what is already fetched with
  consume(timeout=0): a batch without waiting for it to fill up.
* An offset that is no longer (or not yet) on the broker is an error, not a
  silent jump: `auto.offset.reset` is "error", and poll() raises
  KafkaSourceError naming the partition and offset.
* lag() is high watermark - position per partition: from the watermarks the
  fetch responses carry when there are some, else asked of the broker.
* An unreachable cluster fails the constructor within connect_timeout with
  KafkaUnavailable naming bootstrap.servers and librdkafka's reason. Later
  outages are logged (rate-limited), remembered in `last_error`, make lag()
  raise KafkaUnavailable, and leave poll() returning nothing until the
  cluster is back (librdkafka reconnects by itself). Fatal client errors
  raise from poll().

librdkafka's own log lines go to the logging module ("pinstack.leaf.kafka").

Threads: librdkafka runs its own threads; this object is used by one
thread at a time (the ingestion loop). The error callback runs inside
poll()/consume() on that thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from pinstack.leaf.stream.source import Record, Source

__all__ = ["KafkaSource", "KafkaSourceError", "KafkaUnavailable"]

log = logging.getLogger("pinstack.leaf.kafka")

_FORCED = {"enable.auto.commit": False, "enable.auto.offset.store": False}
_DEFAULTS = {
    "group.id": "pinstack-leaf",  # required by librdkafka; never used to commit
    "auto.offset.reset": "error",
    "enable.partition.eof": False,
    "socket.connection.setup.timeout.ms": 10_000,
    "fetch.wait.max.ms": 100,  # how long the broker holds an empty fetch: bounds latency
}
_DOWN = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE}


class KafkaSourceError(RuntimeError):
    """Kafka said no: unknown topic or partition, offset out of range,
    fatal client error."""


class KafkaUnavailable(KafkaSourceError):
    """The cluster cannot be reached."""


class KafkaSource(Source):
    """A Source over `topic` at `bootstrap_servers`.

    partitions: the partitions to read (default: all of the topic's).
    offsets: {partition: offset} to start from; a partition without one
    starts at the earliest offset the broker still has. config: extra
    librdkafka settings (security, timeouts...); the commit settings cannot
    be turned on."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partitions: Iterable[int] | None = None,
        offsets: Mapping[int, int] | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        conf: dict[str, Any] = dict(_DEFAULTS)
        for k, v in (config or {}).items():
            if k in _FORCED and v not in (False, "false"):
                raise ValueError(f"{k} must stay off: the leaf never commits to Kafka")
            conf[k] = v
        conf.update(_FORCED)
        conf["bootstrap.servers"] = bootstrap_servers
        conf["error_cb"] = self._on_error
        conf.setdefault("logger", log)
        self.topic = topic
        self.bootstrap_servers = bootstrap_servers
        self.connect_timeout = connect_timeout
        self.last_error: KafkaError | None = None
        self._down_since: float | None = None
        self._logged_at = 0.0
        self._suppressed = 0
        self._fatal: KafkaError | None = None
        self._closed = False
        self._pending: KafkaSourceError | None = None
        try:
            self._consumer = Consumer(conf)
        except KafkaException as e:
            raise KafkaSourceError(f"bad Kafka configuration: {e.args[0]}") from None
        try:
            topic_partitions = self._metadata()
            parts = sorted(topic_partitions) if partitions is None else list(partitions)
            if not parts or len(set(parts)) != len(parts):
                raise ValueError(f"partitions must be distinct and not empty (got {parts!r})")
            missing = [p for p in parts if p not in topic_partitions]
            if missing:
                raise KafkaSourceError(
                    f"topic {topic!r} has no partition(s) {missing} "
                    f"(it has {sorted(topic_partitions)})"
                )
            self._parts = parts
            self._pos: dict[int, int] = dict.fromkeys(parts, OFFSET_BEGINNING)
            for p, offset in (offsets or {}).items():
                if p not in self._pos:
                    raise ValueError(f"offset given for partition {p}, which is not assigned")
                self._check_offset(offset)
                self._pos[p] = offset
            self._consumer.assign(
                [TopicPartition(topic, p, self._pos[p]) for p in parts]
            )
        except BaseException:
            self._consumer.close()
            raise

    # ---- setup -------------------------------------------------------------

    def _metadata(self) -> list[int]:
        try:
            md = self._consumer.list_topics(self.topic, timeout=self.connect_timeout)
        except KafkaException as e:
            err = e.args[0]
            raise KafkaUnavailable(
                f"cannot reach Kafka at {self.bootstrap_servers} within "
                f"{self.connect_timeout:g} s: {err.str() if isinstance(err, KafkaError) else err}"
                + (f" (last error: {self.last_error.str()})" if self.last_error else "")
            ) from None
        tmd = md.topics.get(self.topic)
        if tmd is None or tmd.error is not None:
            reason = tmd.error.str() if tmd is not None and tmd.error else "not in the metadata"
            raise KafkaSourceError(f"topic {self.topic!r} at {self.bootstrap_servers}: {reason}")
        return list(tmd.partitions)

    @staticmethod
    def _check_offset(offset: Any) -> None:
        if type(offset) is not int or offset < 0:
            raise ValueError(f"an offset is an int >= 0 (got {offset!r})")

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = err
        if err.fatal():
            self._fatal = err
        if err.code() in _DOWN and self._down_since is None:
            self._down_since = time.monotonic()
        now = time.monotonic()
        if now - self._logged_at >= 10.0:  # librdkafka repeats itself: once per 10 s
            more = f" ({self._suppressed} similar suppressed)" if self._suppressed else ""
            log.warning("kafka %s: %s%s", self.bootstrap_servers, err.str(), more)
            self._logged_at = now
            self._suppressed = 0
        else:
            self._suppressed += 1

    # ---- the Source interface ---------------------------------------------------

    def partitions(self) -> list[int]:
        return list(self._parts)

    def position(self, partition: int) -> int:
        """The next offset poll() returns for the partition; before the first
        record of a partition given no start offset, the broker's earliest
        (asked for, so this can raise KafkaUnavailable)."""
        pos = self._pos[partition]
        if pos == OFFSET_BEGINNING:
            pos = self._watermarks(partition)[0]
        return pos

    def seek(self, partition: int, offset: int) -> None:
        """Read the partition from `offset` on (back or forward)."""
        if partition not in self._pos:
            raise ValueError(f"partition {partition} is not assigned (have {self._parts})")
        self._check_offset(offset)
        try:
            self._consumer.seek(TopicPartition(self.topic, partition, offset))
        except KafkaException:
            # Not fetching yet (just assigned): assigning again does the same.
            self._consumer.incremental_unassign([TopicPartition(self.topic, partition)])
            self._consumer.incremental_assign([TopicPartition(self.topic, partition, offset)])
        self._pos[partition] = offset

    def poll(self, max_records: int = 1000, timeout: float = 1.0) -> list[Record]:
        if self._closed:
            raise ValueError("poll on a closed source")
        if self._pending is not None:
            e, self._pending = self._pending, None
            raise e
        if max_records < 1:
            return []
        first = self._consumer.poll(timeout)
        if first is None:
            self._raise_if_fatal()
            return []
        msgs = [first]
        if max_records > 1:
            msgs.extend(self._consumer.consume(max_records - 1, 0))
        out: list[Record] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                try:
                    self._message_error(m, err)
                except KafkaSourceError as e:
                    # Keep going: every message consumed here must be
                    # returned, or librdkafka's position and ours part ways.
                    if self._pending is None:
                        self._pending = e
                continue
            p = m.partition()
            off = m.offset()
            if p not in self._pos:
                continue
            pos = self._pos[p]
            if pos >= 0 and off < pos:
                continue  # fetched before a seek forward: not ours any more
            out.append(Record(p, off, m.value() or b""))
            self._pos[p] = off + 1
        if out:
            self._down_since = None
        elif self._pending is not None:
            e, self._pending = self._pending, None
            raise e
        return out

    def _message_error(self, m: Any, err: KafkaError) -> None:
        code = err.code()
        if code == KafkaError._PARTITION_EOF:
            return
        p = m.partition()
        if code in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE):
            raise KafkaSourceError(
                f"topic {self.topic!r} partition {p}: offset {self._pos.get(p)} is out of "
                f"range on the broker: {err.str()}"
            )
        if code in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
                    KafkaError._UNKNOWN_TOPIC, KafkaError.TOPIC_AUTHORIZATION_FAILED):
            raise KafkaSourceError(f"topic {self.topic!r} partition {p}: {err.str()}")
        if err.fatal():
            raise KafkaSourceError(f"fatal Kafka error: {err.str()}")
        self._on_error(err)

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise KafkaSourceError(f"fatal Kafka error: {self._fatal.str()}")

    def _watermarks(self, partition: int) -> tuple[int, int]:
        """(low, high) watermarks: the ones the last fetch response carried,
        unless there are none yet or the cluster was reported down since, in
        which case the broker is asked (KafkaUnavailable if it does not answer)."""
        tp = TopicPartition(self.topic, partition)
        if self._down_since is None:
            try:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if low >= 0 and high >= 0:
                    return low, high
            except KafkaException:
                pass
        try:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=self.connect_timeout)
        except KafkaException as e:
            err = e.args[0]
            raise KafkaUnavailable(
                f"cannot get the offsets of {self.topic!r} partition {partition} from "
                f"{self.bootstrap_servers}: {err.str() if isinstance(err, KafkaError) else err}"
            ) from None
        self._down_since = None
        return low, high

    def lag(self) -> dict[int, int]:
        """{partition: high watermark - position}. Raises KafkaUnavailable
        while the cluster cannot be reached."""
        lags = {}
        for p in self._parts:
            low, high = self._watermarks(p)
            pos = self._pos[p]
            if pos < 0:
                pos = low
            lags[p] = max(0, high - pos)
        return lags

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()  # no commit: enable.auto.commit is off

