"""pinstack.leaf.service.Leaf without HTTP: the write path, ingestion,
readiness, the bad-message policies, restart, metrics bookkeeping, and a
Kafka-fed leaf against librdkafka's mock cluster.

    writes          validated before the log, partitioned by key, durable,
                    then searchable; one bad message rejects the batch
    versions        stale writes dropped, deletes with and without version
    ingestion       bad records in the stream skipped (counted) or halting
                    in front of them; restart re-applies the log
    readiness       ready once caught up; not ready when halted or closed
    metrics         visibility samples per write and partition
    kafka           the same leaf reading a topic; writes refused
"""

from __future__ import annotations

import json
import os
import time
import zlib

import pytest

from pinstack.leaf.message import Schema
from pinstack.leaf.service import (
    BadMessages,
    BadRequest,
    Leaf,
    LeafConfig,
    NotFound,
    WritesNotAccepted,
)
from pinstack.leaf.stream import Log

pytestmark = pytest.mark.timeout(60, method="thread")


def msg(key: str, version: int = 1, title: str = "a cat", **extra) -> bytes:
    m = {"op": "index", "key": key, "version": version, "fields": {"title": title}, **extra}
    return json.dumps(m).encode()


def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def keys(result: dict) -> list[str]:
    return [h["key"] for h in result["hits"]]


def metric(leaf: Leaf, name: str, labels: dict | None = None) -> float:
    value = leaf.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


@pytest.fixture
def open_leaf(tmp_path):
    leaves: list[Leaf] = []

    def make(**kw) -> Leaf:
        kw.setdefault("data_dir", str(tmp_path / "leaf"))
        leaf = Leaf(LeafConfig(**kw))
        leaves.append(leaf)
        return leaf

    yield make
    for leaf in leaves:
        leaf.close()


def write_visible(leaf: Leaf, payloads: list[bytes]) -> dict:
    result = leaf.write(payloads)
    assert leaf.wait_visible(result["partitions"], 10.0)
    return result


# ---- writes ------------------------------------------------------------------------------


def test_a_write_is_durable_then_searchable(open_leaf):
    leaf = open_leaf()
    result = write_visible(leaf, [msg("pin:1", title="black cat"), msg("pin:2", title="dog")])
    assert result["written"] == 2 and result["index"] == 2 and result["delete"] == 0
    assert sum(p["records"] for p in result["partitions"]) == 2
    assert keys(leaf.search("cat")) == ["pin:1"]
    assert leaf.get("pin:2")["fields"] == {"title": "dog"}
    # acknowledged means in the log: its end offsets cover what write() reported
    for p in result["partitions"]:
        assert leaf.log.end_offset(p["partition"]) > p["last_offset"]


def test_messages_go_to_the_partition_of_their_key_in_order(open_leaf):
    leaf = open_leaf(partitions=4)
    payloads = [msg(f"k{i % 5}", version=i) for i in range(40)]
    result = write_visible(leaf, payloads)
    for p in result["partitions"]:
        records = leaf.log.read(p["partition"], p["first_offset"], 100)
        got = [json.loads(r) for _, r in records]
        assert {zlib.crc32(m["key"].encode()) % 4 for m in got} == {p["partition"]}
        for k in {m["key"] for m in got}:
            versions = [m["version"] for m in got if m["key"] == k]
            assert versions == sorted(versions)  # a key's order is kept
    assert leaf.partition_of("k1") == zlib.crc32(b"k1") % 4
    for i in range(5):
        assert leaf.get(f"k{i}")["version"] == 35 + i  # the newest of each key


def test_one_bad_message_rejects_the_batch_and_nothing_reaches_the_log(open_leaf):
    leaf = open_leaf()
    before = leaf.log.stats()["appended_records"]
    bad = [msg("ok:1"), b'{"op":"index","key":"x","version":1,"fields":{"nope":"y"}}',
           msg("ok:2"), b"not json"]
    with pytest.raises(BadMessages) as info:
        leaf.write(bad)
    assert [(i, e.code) for i, e in info.value.errors] == [(1, "unknown_field"), (3, "json")]
    assert "2 of 4 message(s) are invalid" in str(info.value)
    assert leaf.log.stats()["appended_records"] == before
    assert metric(leaf, "pinstack_leaf_rejected_messages_total", {"code": "json"}) == 1
    with pytest.raises(BadRequest):
        leaf.write([])


def test_a_write_that_fails_on_one_partition_says_what_was_written(open_leaf):
    from pinstack.leaf.service import LeafError, PartialWrite
    from pinstack.leaf.stream import LogError

    leaf = open_leaf(partitions=2)
    keys0 = [k for k in (f"k{i}" for i in range(20)) if leaf.partition_of(k) == 0][:2]
    keys1 = [k for k in (f"k{i}" for i in range(20)) if leaf.partition_of(k) == 1][:2]
    real_append = leaf.log.append

    def append(partition, payloads):
        if partition == 1:
            raise LogError("partition 1: append failed: [Errno 28] No space left on device")
        return real_append(partition, payloads)

    leaf.log.append = append
    with pytest.raises(PartialWrite) as info:
        leaf.write([msg(k) for k in keys0 + keys1])
    assert info.value.written == [{"partition": 0, "first_offset": 0, "last_offset": 1,
                                   "records": 2}]
    assert info.value.failed[0]["partition"] == 1
    assert "No space left" in str(info.value) and "again is safe" in str(info.value)
    with pytest.raises(LeafError, match="nothing was written: partition 1"):
        leaf.write([msg(keys1[0])])


def test_versions_older_writes_are_dropped_and_one_version_is_served(open_leaf):
    leaf = open_leaf()
    write_visible(leaf, [msg("pin:1", 5, "cat five"), msg("pin:1", 3, "cat three"),
                         msg("pin:1", 7, "cat seven")])
    hits = leaf.search("cat", k=10)["hits"]
    assert [(h["key"], h["version"]) for h in hits] == [("pin:1", 7)]
    assert leaf.stats()["ingest"]["stale"] == 1


def test_delete_without_version_deletes_the_live_one(open_leaf):
    leaf = open_leaf()
    write_visible(leaf, [msg("pin:1", 4)])
    result = leaf.delete("pin:1")
    assert result["version"] == 4 and result["delete"] == 1
    assert leaf.wait_visible(result["partitions"], 10.0)
    with pytest.raises(NotFound):
        leaf.get("pin:1")
    with pytest.raises(NotFound):
        leaf.delete("pin:1")  # nothing live, no version: nothing to delete


def test_delete_with_a_version_leaves_a_tombstone(open_leaf):
    leaf = open_leaf()
    result = leaf.delete("pin:9", version=10)
    assert leaf.wait_visible(result["partitions"], 10.0)
    write_visible(leaf, [msg("pin:9", 9)])  # older than the delete: dropped
    assert leaf.search("cat")["hits"] == []
    write_visible(leaf, [msg("pin:9", 11)])
    assert keys(leaf.search("cat")) == ["pin:9"]


def test_search_parameters_are_checked(open_leaf):
    leaf = open_leaf()
    for kwargs, text in [
        ({"q": "cat", "k": 0}, "k must be an integer 1..10000"),
        ({"q": "cat", "k": 10_001}, "k must be"),
        ({"q": "cat", "order": "random"}, "order must be one of"),
        ({"q": "cat AND"}, "position 7"),
        ({"q": "cat", "fields": ["nope"]}, "unknown field 'nope'"),
        ({"q": "x" * 70_000}, "over the limit of 65536"),
        ({"q": "cat", "query": ["term", "cat"]}, "not both"),
        ({"query": "cat"}, "must be a structured query"),
        ({"query": ["nope", "x"]}, "unknown operator"),
        ({"query": ["term", 5]}, "must be str or bytes"),
        ({"q": " ".join(f"w{i}" for i in range(5000))}, "more than 4096 terms"),
    ]:
        with pytest.raises(BadRequest) as info:
            leaf.search(**kwargs)
        assert text in str(info.value), (kwargs, str(info.value))


def test_what_a_hit_returns_follows_the_schema_store(open_leaf):
    schema = Schema(["title"], ["tag"], store="payload")
    leaf = open_leaf(schema=schema)
    write_visible(leaf, [msg("pin:1", payload={"url": "u"}), msg("pin:2")])
    got = {h["key"]: h for h in leaf.search("cat")["hits"]}
    assert got["pin:1"]["payload"] == {"url": "u"} and got["pin:2"]["payload"] is None
    with pytest.raises(BadRequest, match='stores "payload"'):
        leaf.search("cat", fields=["source"])


# ---- ingestion: bad records in the stream, restart ----------------------------------------


def prefill(tmp_path, payloads: list[bytes], partitions: int = 1) -> None:
    """Records in the leaf's log written directly (as another producer could)."""
    wal = Log(tmp_path / "leaf" / "log", partitions)
    wal.append(0, payloads)
    wal.close()


def test_a_bad_record_in_the_stream_is_skipped_and_counted(open_leaf, tmp_path):
    prefill(tmp_path, [msg("a"), b'{"op":"index"}', msg("b"), b"\xff"])
    leaf = open_leaf()
    wait_until(lambda: leaf.ready()[0], what="ready")
    assert sorted(keys(leaf.search("cat"))) == ["a", "b"]
    ingest = leaf.stats()["ingest"]
    assert ingest["bad"] == 2 and ingest["records"] == 4 and ingest["halted"] is None
    assert metric(leaf, "pinstack_leaf_bad_messages_total", {"code": "missing"}) == 1
    assert metric(leaf, "pinstack_leaf_bad_messages_total", {"code": "encoding"}) == 1


def test_halt_policy_stops_in_front_of_a_bad_record(open_leaf, tmp_path):
    prefill(tmp_path, [msg("a"), msg("b"), b'{"op":"index"}', msg("c")])
    leaf = open_leaf(on_bad_message="halt")
    wait_until(lambda: leaf.stats()["ingest"]["halted"] is not None, what="halt")
    assert sorted(keys(leaf.search("cat"))) == ["a", "b"]  # what came before it
    ready, why = leaf.ready()
    assert not ready and "partition 0 offset 2" in why and 'missing "key"' in why
    assert leaf.stats()["ingest"]["positions"] == {"0": 2}
    leaf.close()
    # Restarted with the skip policy, it goes past the bad record.
    leaf = open_leaf()
    wait_until(lambda: leaf.ready()[0], what="ready")
    assert sorted(keys(leaf.search("cat"))) == ["a", "b", "c"]


def test_restart_keeps_the_log_and_applies_it_again(open_leaf):
    leaf = open_leaf(partitions=2, schema=Schema(["title"], ["color"]))
    write_visible(leaf, [json.dumps({"op": "index", "key": f"pin:{i}", "version": 1,
                                     "fields": {"title": "cat", "color": "red"}}).encode()
                         for i in range(50)])
    leaf.delete("pin:7")
    leaf.close()
    assert not leaf.ready()[0]
    leaf2 = open_leaf()  # no schema, no partitions: the data directory's own
    assert list(leaf2.schema.keywords) == ["color"] and leaf2.log.partitions == 2
    wait_until(lambda: leaf2.ready()[0], what="ready")
    assert leaf2.count(q="color:red")["count"] == 49
    assert sum(leaf2.log.end_offset(p) for p in (0, 1)) == 51  # the log was kept
    # and applied from the index's checkpoint (all of it, for an index kept in
    # memory only) to its end
    assert leaf2.stats()["ingest"]["positions"] == {str(p): leaf2.log.end_offset(p)
                                                    for p in (0, 1)}


def test_ready_once_caught_up_with_what_was_in_the_log(open_leaf, tmp_path):
    prefill(tmp_path, [msg(f"k{i}") for i in range(3000)])
    leaf = open_leaf(ready_lag=0)
    wait_until(lambda: leaf.ready()[0], what="ready")
    assert leaf.count(q="cat")["count"] == 3000  # ready_lag 0: everything applied
    assert leaf.ready()[1] == "caught up with the stream"


# ---- metrics bookkeeping -------------------------------------------------------------------


def test_visibility_is_sampled_once_per_write_and_partition(open_leaf):
    leaf = open_leaf(partitions=3)
    appends = 0
    for i in range(20):
        result = write_visible(leaf, [msg(f"v{i}"), msg(f"w{i}")])
        appends += len(result["partitions"])
    count = metric(leaf, "pinstack_leaf_visibility_seconds_count")
    assert count == appends
    assert metric(leaf, "pinstack_leaf_visibility_seconds_sum") > 0
    assert metric(leaf, "pinstack_leaf_ingested_records_total") == 40
    assert metric(leaf, "pinstack_leaf_applied_ops_total", {"result": "added"}) == 40


def test_flush_and_compact_go_to_the_engine_and_are_timed(open_leaf):
    leaf = open_leaf()
    out = leaf.flush()
    assert set(out) == {"result", "took_ms"} and isinstance(out["result"], dict)
    leaf.compact()
    assert metric(leaf, "pinstack_leaf_flush_seconds_count") == 1
    assert metric(leaf, "pinstack_leaf_compaction_seconds_count") == 1


def test_close_stops_ingestion_and_releases_the_log(open_leaf, tmp_path):
    leaf = open_leaf()
    leaf.close()
    leaf.close()  # idempotent
    assert not leaf._thread.is_alive()
    assert leaf.ready() == (False, "shutting down")
    Log(tmp_path / "leaf" / "log").close()  # the lock is free again


# ---- kafka ------------------------------------------------------------------------------------


def test_a_leaf_reading_kafka_ingests_and_refuses_writes(open_leaf):
    ck = pytest.importorskip("confluent_kafka")
    from confluent_kafka.admin import AdminClient

    quiet = {"log_level": 3}
    admin = AdminClient({"test.mock.num.brokers": 1, **quiet})
    md = admin.list_topics(timeout=10)
    bootstrap = ",".join(f"{b.host}:{b.port}" for b in md.brokers.values())
    producer = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, **quiet})
    for i in range(20):
        producer.produce("pins", value=msg(f"k{i}"), partition=0)
    producer.produce("pins", value=b"{bad", partition=0)
    assert producer.flush(10) == 0
    leaf = open_leaf(source="kafka", kafka_brokers=bootstrap, kafka_topic="pins",
                     kafka_partitions=[0], ready_lag=0, kafka_config=quiet)
    wait_until(lambda: leaf.ready()[0], timeout=20, what="ready")
    assert leaf.count(q="cat")["count"] == 20
    assert leaf.stats()["ingest"]["bad"] == 1
    assert leaf.log is None
    with pytest.raises(WritesNotAccepted, match="write to the topic"):
        leaf.write([msg("x")])
    leaf.close()
    del producer, admin


def test_engine_stats_become_metrics_whatever_their_shape(open_leaf):
    leaf = open_leaf()
    on_disk = {  # an engine with segment files and background flushes
        "docs_live": 7, "segments": 3, "segment_file_bytes": 1000,
        "files": [{"bytes": 600}, {"bytes": 400}], "active": {"bytes_total": 50},
        "flushes": 2, "flush_seconds": 0.25, "flush_last_seconds": 0.1, "compactions": 1,
    }
    leaf.engine.stats = lambda: on_disk
    assert metric(leaf, "pinstack_leaf_segments") == 3
    assert metric(leaf, "pinstack_leaf_segment_bytes") == 1050
    assert metric(leaf, "pinstack_leaf_docs_live") == 7
    assert metric(leaf, "pinstack_leaf_engine_flushes_total") == 2
    assert metric(leaf, "pinstack_leaf_engine_flush_seconds_total") == 0.25
    assert metric(leaf, "pinstack_leaf_engine_flush_last_seconds") == 0.1
    assert metric(leaf, "pinstack_leaf_engine_compactions_total") == 1
    listed = {"docs_live": 1, "segments": [{"bytes": 10}, {"bytes": 5}]}
    leaf.engine.stats = lambda: listed
    assert metric(leaf, "pinstack_leaf_segments") == 2
    assert metric(leaf, "pinstack_leaf_segment_bytes") == 15
    assert leaf.metrics.registry.get_sample_value("pinstack_leaf_engine_flushes_total") is None


# ---- log retention -----------------------------------------------------------------------


def _msgs(start: int, n: int) -> list[bytes]:
    return [json.dumps({"op": "index", "key": f"r{i}", "version": 1,
                        "fields": {"title": f"retained {i} " + "x" * 200}}).encode()
            for i in range(start, start + n)]


def _wait(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_log_retention_checkpoint_deletes_what_the_index_holds(open_leaf):
    leaf = open_leaf(partitions=1, log_retention="checkpoint", log_segment_bytes=8192)
    for i in range(0, 400, 100):
        write_visible(leaf, _msgs(i, 100))
    assert leaf.log.start_offset(0) == 0  # nothing durable in the index yet
    leaf.flush()
    checkpoint = leaf.engine.checkpoint()[0]
    assert checkpoint == 400
    assert _wait(lambda: leaf.log.start_offset(0) > 0)
    assert leaf.log.start_offset(0) <= checkpoint
    assert leaf.count("*")["count"] == 400


def test_log_retention_all_keeps_everything_and_rebuilds_a_damaged_index(open_leaf, tmp_path):
    data = str(tmp_path / "leaf")
    leaf = open_leaf(data_dir=data, partitions=1, log_segment_bytes=8192)
    write_visible(leaf, _msgs(0, 300))
    leaf.flush()
    time.sleep(1.2)  # a tick of the ingest thread: retention would act now
    assert leaf.log.start_offset(0) == 0
    leaf.close()
    seg_dir = os.path.join(data, "index", "segments")
    name = sorted(os.listdir(seg_dir))[0]
    with open(os.path.join(seg_dir, name), "r+b") as fh:
        fh.seek(100)
        b = fh.read(1)
        fh.seek(100)
        fh.write(bytes([b[0] ^ 0xFF]))
    leaf2 = open_leaf(data_dir=data, partitions=1, log_segment_bytes=8192)
    assert "damaged" in (leaf2.engine.rebuild_reason or "")
    assert leaf2.rebuild_incomplete is None
    assert _wait(lambda: leaf2.count("*")["count"] == 300)


def test_a_rebuild_after_retention_says_what_is_lost(open_leaf, tmp_path):
    data = str(tmp_path / "leaf")
    leaf = open_leaf(data_dir=data, partitions=1, log_retention="checkpoint",
                     log_segment_bytes=8192)
    for i in range(0, 300, 100):  # one append is one log file at most: several
        write_visible(leaf, _msgs(i, 100))
    leaf.flush()
    assert _wait(lambda: leaf.log.start_offset(0) > 0)
    leaf.close()
    seg_dir = os.path.join(data, "index", "segments")
    for name in os.listdir(seg_dir):
        with open(os.path.join(seg_dir, name), "r+b") as fh:
            fh.truncate(50)
    leaf2 = open_leaf(data_dir=data, partitions=1, log_retention="checkpoint",
                      log_segment_bytes=8192)
    assert leaf2.rebuild_incomplete and "lost" in leaf2.rebuild_incomplete
    assert leaf2.stats()["rebuild_incomplete"] == leaf2.rebuild_incomplete


def test_equal_bytes_written_twice_are_indexed_twice(open_leaf):
    """Every record read from the log is indexed, whatever was written
    before it: the same bytes written again are two records, and the second
    replaces the first (equal versions: the later wins)."""
    leaf = open_leaf(partitions=2)
    msgs = _msgs(0, 50)
    write_visible(leaf, msgs)
    write_visible(leaf, msgs[:10])  # the same bytes again: versions equal, later wins
    st = leaf.stats()["ingest"]
    assert st["records"] == 60 and st["added"] == 60
    assert leaf.count("*")["count"] == 50


def test_a_kafka_leaf_resumes_from_its_checkpoint_after_a_restart(open_leaf, tmp_path):
    """Kafka gives the offsets, the manifest keeps them: after a flush and a
    restart the leaf seeks each partition to its checkpoint (no consumer
    group), replays only what follows, and ends in the same state as the
    stream says: updates, deletes and stale versions across the restart."""
    ck = pytest.importorskip("confluent_kafka")
    from confluent_kafka.admin import AdminClient

    quiet = {"log_level": 3}
    admin = AdminClient({"test.mock.num.brokers": 1, **quiet})
    md = admin.list_topics(timeout=10)
    bootstrap = ",".join(f"{b.host}:{b.port}" for b in md.brokers.values())
    producer = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, **quiet})
    want: dict[str, int] = {}  # key -> live version
    newest: dict[str, int] = {}  # key -> newest version seen (documents and deletes)

    def produce(key: str, version: int, delete: bool = False) -> None:
        p = zlib.crc32(key.encode()) % 2
        fresh = newest.get(key, -1) <= version
        if fresh:
            newest[key] = version
        if delete:
            value = json.dumps({"op": "delete", "key": key, "version": version}).encode()
            if fresh:
                want.pop(key, None)
        else:
            value = msg(key, version, title=f"cat v{version}")
            if fresh:
                want[key] = version
        producer.produce("pins2", value=value, partition=p)

    for i in range(60):
        produce(f"k{i}", 1)
    for i in range(0, 60, 3):
        produce(f"k{i}", 2)
    assert producer.flush(10) == 0
    data = str(tmp_path / "kleaf")
    config = dict(data_dir=data, source="kafka", kafka_brokers=bootstrap,
                  kafka_topic="pins2", ready_lag=0, kafka_config=quiet)
    leaf = open_leaf(**config)
    wait_until(lambda: leaf.count(q="cat")["count"] == len(want), timeout=20, what="first pass")
    leaf.flush()
    checkpoint = leaf.engine.checkpoint()
    assert sum(checkpoint.values()) == 80
    leaf.close()
    for i in range(0, 60, 5):
        produce(f"k{i}", 3, delete=True)
    for i in range(1, 60, 4):
        produce(f"k{i}", 0)  # stale: older than what is indexed
    produce("new", 1)
    assert producer.flush(10) == 0
    leaf2 = open_leaf(**config)
    assert leaf2.engine.checkpoint() == checkpoint
    wait_until(lambda: leaf2.ready()[0] and leaf2.count(q="cat")["count"] == len(want),
               timeout=20, what="replay after the restart")
    st = leaf2.stats()["ingest"]
    assert st["records"] == 12 + 15 + 1  # only what followed the checkpoint
    hits = leaf2.search(q="cat", k=1000)["hits"]
    assert {h["key"]: h["version"] for h in hits} == want
    leaf2.close()
