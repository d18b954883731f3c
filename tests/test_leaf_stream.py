"""pinstack.leaf.stream: the embedded log and EmbeddedSource, behaviour by
behaviour (docs/leaf-stream.md is the contract).

    round trips     offsets dense from 0, payloads intact, per-partition order
    reads           limits, ranges, the sparse index, big records, reopen
    durability      fsync policies, group commit under many appenders,
                    an acknowledged record is readable at once
    recovery        torn and corrupt tails at random byte positions keep
                    exactly the good prefix; zero-filled tails; clean close
    corruption      a bad record in the middle: stop (and report) or skip
    retention       whole segment files below a checkpoint
    failures        fsync and write errors, closed logs, a second opener
    crash           a producer process SIGKILLed mid-append: every offset
                    it had acknowledged is there after recovery
    source          EmbeddedSource: poll, order, seek back, lag, tailing

The figures in docs/leaf-stream.md come from the `bench`-marked tests at the
end: python -m pytest -m bench -s tests/test_leaf_stream.py
"""

from __future__ import annotations

import glob
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib

import pytest

from pinstack.leaf.stream import (
    CorruptRecordError,
    EmbeddedSource,
    Log,
    LogClosed,
    LogError,
    OffsetOutOfRange,
    Record,
)
from pinstack.leaf.stream import log as log_module
from pinstack.leaf.stream import record as rec

pytestmark = pytest.mark.timeout(120, method="thread")

H = rec.HEADER_SIZE
FH = rec.FILE_HEADER_SIZE


# ---- helpers ---------------------------------------------------------------


def payload(i: int, size: int = 0) -> bytes:
    body = b"record-%d" % i
    return body + b"." * max(0, size - len(body))


def seg_files(path, partition: int = 0) -> list[str]:
    return sorted(glob.glob(os.path.join(str(path), f"p{partition:04d}", "*.log")))


def crash(path) -> None:
    """Make a closed log look as if its process had died: no CLEAN marker."""
    os.unlink(os.path.join(str(path), "CLEAN"))


def read_all(lg: Log, partition: int, start: int = 0) -> list[tuple[int, bytes]]:
    out = []
    offset = start
    while offset < lg.end_offset(partition):
        got, offset = lg.read_batch(partition, offset, 1000)
        out.extend(got)
    return out


def ends(sizes, start=FH):
    """File position after each record, for payloads of these sizes."""
    out = []
    pos = start
    for n in sizes:
        pos += H + n
        out.append(pos)
    return out


@pytest.fixture
def logdir(tmp_path):
    return tmp_path / "log"


# ---- round trips -------------------------------------------------------------


def test_offsets_are_dense_from_zero_and_payloads_round_trip(logdir):
    with Log(logdir, partitions=1) as lg:
        assert lg.end_offset(0) == 0 and lg.start_offset(0) == 0
        assert lg.append(0, [b"a"]) == 0
        assert lg.append(0, [b"b", b"", b"c" * 1000]) == 3
        assert lg.end_offset(0) == 4
        assert lg.read(0, 0) == [(0, b"a"), (1, b"b"), (2, b""), (3, b"c" * 1000)]


def test_partitions_have_their_own_offsets_and_order(logdir):
    rng = random.Random(7)
    want: dict[int, list[bytes]] = {p: [] for p in range(4)}
    with Log(logdir, partitions=4, segment_bytes=8192) as lg:
        for i in range(400):
            p = rng.randrange(4)
            batch = [payload(i * 10 + j, rng.randrange(0, 300)) for j in range(rng.randrange(1, 5))]
            last = lg.append(p, batch)
            want[p].extend(batch)
            assert last == len(want[p]) - 1
        for p in range(4):
            assert read_all(lg, p) == list(enumerate(want[p]))


def test_append_rejects_bad_arguments(logdir):
    with Log(logdir, partitions=2) as lg:
        with pytest.raises(ValueError, match="empty batch"):
            lg.append(0, [])
        with pytest.raises(TypeError, match="a list of payloads"):
            lg.append(0, b"abc")
        with pytest.raises(TypeError, match="must be bytes, not str"):
            lg.append(0, ["abc"])
        with pytest.raises(ValueError, match="partition must be 0..1"):
            lg.append(2, [b"x"])
        with pytest.raises(ValueError, match="partition must be 0..1"):
            lg.read(-1, 0)
        assert lg.end_offset(0) == 0  # nothing went in
        lg.append(0, [bytearray(b"ba")])
        assert lg.read(0, 0) == [(0, b"ba")]


def test_a_record_over_the_maximum_is_refused(logdir, monkeypatch):
    monkeypatch.setattr(rec, "MAX_RECORD_BYTES", 1000)
    with Log(logdir, partitions=1) as lg:
        lg.append(0, [b"x" * 1000])
        with pytest.raises(ValueError, match="at most 1000 bytes"):
            lg.append(0, [b"ok", b"x" * 1001])
        assert lg.end_offset(0) == 1
        assert lg.append(0, [b"y"]) == 1


def test_constructor_checks_its_arguments(logdir):
    with pytest.raises(LogError, match="give partitions=N"):
        Log(logdir)
    with pytest.raises(ValueError, match="partitions must be"):
        Log(logdir, partitions=0)
    with pytest.raises(ValueError, match="fsync must be"):
        Log(logdir, partitions=1, fsync="sometimes")
    with pytest.raises(ValueError, match="fsync must be"):
        Log(logdir, partitions=1, fsync=-1)
    with pytest.raises(ValueError, match="segment_bytes"):
        Log(logdir, partitions=1, segment_bytes=100)
    with pytest.raises(ValueError, match="on_corrupt"):
        Log(logdir, partitions=1, on_corrupt="ignore")


@pytest.mark.parametrize(
    "policy, name",
    [("always", "always"), (0, "always"), ("interval_ms=5", "interval_ms=5"),
     (20, "interval_ms=20")],
)
def test_fsync_policies_are_parsed(logdir, policy, name):
    with Log(logdir, partitions=1, fsync=policy) as lg:
        assert lg.fsync == name
        assert lg.append(0, [b"x"]) == 0
        assert lg.read(0, 0) == [(0, b"x")]


# ---- reads -------------------------------------------------------------------


def test_read_limits_and_ranges(logdir):
    with Log(logdir, partitions=1) as lg:
        lg.append(0, [payload(i, 100) for i in range(50)])
        assert [o for o, _ in lg.read(0, 10, max_records=5)] == [10, 11, 12, 13, 14]
        assert [o for o, _ in lg.read(0, 10, max_bytes=250)] == [10, 11, 12]
        assert [o for o, _ in lg.read(0, 10, max_bytes=1)] == [10]  # at least one
        assert lg.read(0, 50) == []
        assert lg.read(0, 3, max_records=0) == []
        with pytest.raises(OffsetOutOfRange, match=r"offset 51 is out of range \[0, 50\]"):
            lg.read(0, 51)
        with pytest.raises(OffsetOutOfRange):
            lg.read(0, -1)
        with pytest.raises(TypeError):
            lg.read(0, 1.0)


def test_reads_from_any_offset_across_segments_and_after_reopen(logdir):
    rng = random.Random(3)
    sizes = [rng.choice([0, 10, 100, 700, 5000]) for _ in range(3000)]
    data = [payload(i, n) for i, n in enumerate(sizes)]
    with Log(logdir, partitions=1, segment_bytes=64 << 10) as lg:
        for i in range(0, len(data), 7):
            lg.append(0, data[i:i + 7])
        assert len(seg_files(logdir)) > 10
        for start in [0, 1, 2999] + [rng.randrange(3000) for _ in range(50)]:
            assert lg.read(0, start, 20) == list(enumerate(data))[start:start + 20]
    with Log(logdir) as lg:  # sealed segments are indexed lazily after a reopen
        for start in [2999, 0] + [rng.randrange(3000) for _ in range(50)]:
            assert lg.read(0, start, 20) == list(enumerate(data))[start:start + 20]
        assert read_all(lg, 0) == list(enumerate(data))


def test_records_larger_than_the_read_and_scan_chunks(logdir):
    big = [os.urandom(3 << 20), b"small", os.urandom(rec.SCAN_CHUNK + 1)]
    with Log(logdir, partitions=1) as lg:
        lg.append(0, big)
        assert lg.read(0, 0) == list(enumerate(big))
        assert lg.read(0, 2) == [(2, big[2])]
    crash(logdir)
    with Log(logdir) as lg:
        assert lg.recovery == []
        assert read_all(lg, 0) == list(enumerate(big))


def test_segment_files_roll_by_size_and_are_named_by_base_offset(logdir):
    with Log(logdir, partitions=1, segment_bytes=4096) as lg:
        for i in range(100):
            lg.append(0, [payload(i, 200)])
    files = seg_files(logdir)
    assert len(files) > 3
    base = 0
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(FH)
        assert os.path.basename(f) == rec.segment_name(base)
        assert rec.check_file_header(head, base) is None
        n = (os.path.getsize(f) - FH) // (H + 200)
        assert os.path.getsize(f) == FH + n * (H + 200)
        base += n
    assert base == 100


def test_reopen_after_close_continues_the_offsets(logdir):
    with Log(logdir, partitions=2, fsync="interval_ms=2") as lg:
        lg.append(0, [b"a", b"b"])
        lg.append(1, [b"c"])
    assert os.path.exists(logdir / "CLEAN")
    with Log(logdir, partitions=2) as lg:
        assert not os.path.exists(logdir / "CLEAN")  # a crash from now on is unclean
        assert lg.recovery == []
        assert (lg.end_offset(0), lg.end_offset(1)) == (2, 1)
        assert lg.append(0, [b"d"]) == 2
        assert lg.read(0, 0) == [(0, b"a"), (1, b"b"), (2, b"d")]
    with pytest.raises(LogError, match="has 2 partitions, 3 asked"):
        Log(logdir, partitions=3)


def test_a_second_opener_is_refused(logdir):
    with Log(logdir, partitions=1):
        with pytest.raises(LogError, match=rf"open in another process \(pid {os.getpid()}\)"):
            Log(logdir, partitions=1)
    Log(logdir).close()  # released by close


def test_a_closed_log_refuses_everything(logdir):
    lg = Log(logdir, partitions=1)
    lg.append(0, [b"x"])
    lg.close()
    lg.close()  # idempotent
    assert lg.closed
    with pytest.raises(LogClosed):
        lg.append(0, [b"y"])
    with pytest.raises(LogClosed):
        lg.read(0, 0)
    with pytest.raises(LogClosed):
        lg.delete_before(0, 1)


# ---- durability --------------------------------------------------------------


def test_an_acknowledged_record_is_readable_at_once(logdir):
    for policy in ("always", "interval_ms=5"):
        with Log(logdir / policy, partitions=1, fsync=policy) as lg:
            for i in range(50):
                last = lg.append(0, [payload(i)])
                assert lg.end_offset(0) >= last + 1
                assert lg.read(0, last) == [(last, payload(i))]


@pytest.mark.parametrize("policy", ["always", "interval_ms=5"])
def test_acknowledged_means_fdatasynced(logdir, policy, monkeypatch):
    """When append returns, an fdatasync that started after the records
    were written has returned, for every byte of every segment file."""
    synced: dict[int, int] = {}  # inode -> file size when an fdatasync started
    real = os.fdatasync

    def recording_fdatasync(fd):
        st = os.fstat(fd)
        real(fd)
        synced[st.st_ino] = max(synced.get(st.st_ino, 0), st.st_size)

    monkeypatch.setattr(log_module.os, "fdatasync", recording_fdatasync)
    with Log(logdir, partitions=1, fsync=policy, segment_bytes=4096) as lg:
        for i in range(60):
            lg.append(0, [payload(i, 150)] * (1 + i % 3))
            for f in seg_files(logdir):
                st = os.stat(f)
                assert synced.get(st.st_ino, 0) >= st.st_size, (i, f)
    assert len(seg_files(logdir)) > 3


@pytest.mark.parametrize("policy", ["always", "interval_ms=5"])
def test_many_concurrent_appenders_share_fsyncs(logdir, policy):
    threads, per_thread, partitions = 16, 60, 2
    acked: list[list[tuple[int, int, bytes]]] = [[] for _ in range(threads)]
    errors = []
    start = threading.Barrier(threads)

    def producer(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                p = (t + i) % partitions
                batch = [b"t%d-i%d-j%d" % (t, i, j) for j in range(1 + i % 3)]
                last = lg.append(p, batch)
                for k, b in enumerate(batch):
                    acked[t].append((p, last - len(batch) + 1 + k, b))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    with Log(logdir, partitions=partitions, fsync=policy, segment_bytes=16384) as lg:
        ts = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors
        stats = lg.stats()
        content = {p: dict(read_all(lg, p)) for p in range(partitions)}
    calls = threads * per_thread
    total = sum(len(a) for a in acked)
    assert stats["appended_records"] == total
    assert sum(len(c) for c in content.values()) == total  # nothing else is in the log
    for a in acked:
        for p, offset, b in a:
            assert content[p][offset] == b
        # one producer's records of one partition are in the order it appended them
        for p in range(partitions):
            offs = [o for q, o, _ in a if q == p]
            assert offs == sorted(offs)
    # Group commit: far fewer fsyncs than append calls (each roll adds one).
    assert stats["fsyncs"] < calls / 2, stats


def test_interval_policy_releases_a_lone_writer_quickly(logdir):
    with Log(logdir, partitions=1, fsync="interval_ms=50") as lg:
        lg.append(0, [b"warm"])
        time.sleep(0.1)  # idle for longer than the interval
        t0 = time.monotonic()
        lg.append(0, [b"x"])
        assert time.monotonic() - t0 < 0.045  # synced at once, not after 50 ms


def test_wait_returns_when_data_arrives_or_times_out(logdir):
    with Log(logdir, partitions=2, fsync="interval_ms=5") as lg:
        t0 = time.monotonic()
        assert lg.wait(0, 0, timeout=0.05) is False
        assert time.monotonic() - t0 >= 0.04
        timer = threading.Timer(0.05, lambda: lg.append(1, [b"late"]))
        timer.start()
        assert lg.wait_any({0: 0, 1: 0}, timeout=5) is True
        assert lg.read(1, 0) == [(0, b"late")]
        assert lg.wait(1, 0, timeout=0) is True
        timer.join()


def test_close_releases_waiting_appenders_normally(logdir):
    lg = Log(logdir, partitions=1, fsync="interval_ms=200")
    lg.append(0, [b"first"])  # the next sync is now 200 ms away
    result = []
    t = threading.Thread(target=lambda: result.append(lg.append(0, [b"second"])))
    t.start()
    time.sleep(0.02)
    lg.close()
    t.join(5)
    assert result == [1]
    with Log(logdir) as lg2:
        assert lg2.read(0, 0) == [(0, b"first"), (1, b"second")]


def test_an_fsync_error_fails_the_log(logdir, monkeypatch):
    lg = Log(logdir, partitions=1)
    lg.append(0, [b"ok"])

    def eio(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(log_module.os, "fdatasync", eio)
    with pytest.raises(LogError, match="fsync failed: .*Input/output error"):
        lg.append(0, [b"lost"])
    monkeypatch.undo()
    with pytest.raises(LogError, match="failed earlier and refuses writes"):
        lg.append(0, [b"more"])
    assert lg.stats()["failed"]
    assert lg.read(0, 0) == [(0, b"ok")]  # what was durable stays readable
    lg.close()
    assert not os.path.exists(logdir / "CLEAN")  # the next open recovers


def test_a_failed_write_is_truncated_away(logdir, monkeypatch):
    with Log(logdir, partitions=1) as lg:
        lg.append(0, [b"a" * 100])
        size = os.path.getsize(seg_files(logdir)[0])
        real_write = os.write

        def half_then_enospc(fd, data):
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(Log, "_write", staticmethod(half_then_enospc))
        with pytest.raises(LogError, match="append failed: .*No space left"):
            lg.append(0, [b"b" * 100, b"c" * 100])
        monkeypatch.undo()
        assert os.path.getsize(seg_files(logdir)[0]) == size
        assert lg.append(0, [b"d"]) == 1
        assert lg.read(0, 0) == [(0, b"a" * 100), (1, b"d")]


# ---- recovery ------------------------------------------------------------------


def _write_records(logdir, sizes, **kw):
    data = [payload(i, n) for i, n in enumerate(sizes)]
    with Log(logdir, partitions=1, **kw) as lg:
        for i in range(0, len(data), 3):
            lg.append(0, data[i:i + 3])
    return data


def test_a_torn_tail_at_any_byte_keeps_exactly_the_whole_records(tmp_path):
    rng = random.Random(11)
    sizes = [rng.randrange(0, 120) for _ in range(40)]
    template = tmp_path / "template"
    data = _write_records(template, sizes)
    crash(template)
    record_ends = ends([len(d) for d in data])
    full = open(seg_files(template)[0], "rb").read()
    cuts = sorted(set([FH, FH + 1, len(full) - 1, len(full)] + record_ends[:3]
                      + [rng.randrange(FH, len(full)) for _ in range(60)]))
    for cut in cuts:
        d = tmp_path / f"cut{cut}"
        os.makedirs(d / "p0000")
        for name in ("meta.json",):
            with open(template / name, "rb") as src, open(d / name, "wb") as dst:
                dst.write(src.read())
        with open(d / "p0000" / rec.segment_name(0), "wb") as f:
            f.write(full[:cut])
        kept = sum(1 for e in record_ends if e <= cut)
        good_end = record_ends[kept - 1] if kept else FH
        with Log(d) as lg:
            assert lg.end_offset(0) == kept, cut
            assert read_all(lg, 0) == list(enumerate(data[:kept])), cut
            if cut == good_end:
                assert lg.recovery == []
            else:
                (r,) = lg.recovery
                assert (r.partition, r.offset, r.position) == (0, kept, good_end)
                assert r.dropped_bytes == cut - good_end and r.action == "truncated"
                assert "cut short" in r.reason
            assert os.path.getsize(seg_files(d)[0]) == good_end
            assert lg.append(0, [b"after"]) == kept  # appends continue right there
        with Log(d) as lg:
            assert lg.recovery == [] and lg.read(0, kept) == [(kept, b"after")]


def test_a_corrupt_byte_in_the_tail_keeps_the_records_before_it(tmp_path, caplog):
    rng = random.Random(12)
    sizes = [rng.randrange(1, 150) for _ in range(30)]
    template = tmp_path / "template"
    data = _write_records(template, sizes)
    crash(template)
    record_ends = ends([len(d) for d in data])
    full = open(seg_files(template)[0], "rb").read()
    for trial in range(40):
        pos = rng.randrange(FH, len(full))
        damaged = bytearray(full)
        damaged[pos] ^= 1 << rng.randrange(8)
        d = tmp_path / f"flip{trial}"
        os.makedirs(d / "p0000")
        with open(template / "meta.json", "rb") as src, open(d / "meta.json", "wb") as dst:
            dst.write(src.read())
        with open(d / "p0000" / rec.segment_name(0), "wb") as f:
            f.write(damaged)
        bad = sum(1 for e in record_ends if e <= pos)  # the record holding the byte
        with caplog.at_level(logging.WARNING, "pinstack.leaf.stream"):
            caplog.clear()
            with Log(d) as lg:
                assert read_all(lg, 0) == list(enumerate(data[:bad])), pos
                (r,) = lg.recovery
                assert r.offset == bad and r.position == (record_ends[bad - 1] if bad else FH)
                assert r.dropped_bytes == len(full) - r.position
                # the well-formed records after the damage are counted and reported
                assert r.records_after == len(sizes) - bad - 1
        assert f"truncated {r.dropped_bytes} bytes at position {r.position}" in caplog.text
        if r.records_after:
            assert f"{r.records_after} well-formed records after it were dropped" in caplog.text


def test_a_zero_filled_tail_is_not_taken_for_records(logdir):
    data = _write_records(logdir, [10] * 5)
    crash(logdir)
    with open(seg_files(logdir)[0], "ab") as f:
        f.write(b"\0" * 8192)  # a file that grew but whose blocks were never written
    with Log(logdir) as lg:
        assert read_all(lg, 0) == list(enumerate(data))
        (r,) = lg.recovery
        assert r.dropped_bytes == 8192 and r.records_after == 0
        assert "record says offset 0, 5 expected" in r.reason


def test_recovery_only_touches_the_last_segment(logdir):
    data = _write_records(logdir, [300] * 60, segment_bytes=4096)
    files = seg_files(logdir)
    crash(logdir)
    with open(files[-1], "ab") as f:
        f.write(b"torn")
    with Log(logdir) as lg:
        assert [r.path for r in lg.recovery] == [files[-1]]
        assert read_all(lg, 0) == list(enumerate(data))


def test_a_damaged_file_header_is_rewritten_after_a_crash(logdir):
    data = _write_records(logdir, [20] * 4)
    crash(logdir)
    with open(seg_files(logdir)[0], "r+b") as f:
        f.write(b"XXXX")
    with Log(logdir) as lg:
        assert lg.recovery == []
        assert read_all(lg, 0) == list(enumerate(data))
    with open(seg_files(logdir)[0], "rb") as f:
        assert rec.check_file_header(f.read(FH), 0) is None


def test_after_a_clean_close_damage_is_kept_and_appends_go_to_a_new_segment(logdir):
    data = _write_records(logdir, [50] * 10)
    damage_at = ends([50] * 10)[4] + H + 3  # a payload byte of record 5
    with open(seg_files(logdir)[0], "r+b") as f:
        f.seek(damage_at)
        f.write(b"!")
    with Log(logdir) as lg:
        (r,) = lg.recovery
        assert (r.action, r.offset, r.dropped_bytes, r.records_after) == ("kept", 5, 0, 4)
        assert r.reason == "checksum mismatch"
        assert lg.end_offset(0) == 10
        assert lg.append(0, [b"new"]) == 10
        assert [os.path.basename(f) for f in seg_files(logdir)] == [
            rec.segment_name(0), rec.segment_name(10)]
        assert lg.read(0, 0) == list(enumerate(data[:5]))  # the good prefix first
        with pytest.raises(CorruptRecordError) as info:
            lg.read(0, 5)
        e = info.value
        assert (e.partition, e.offset, e.path, e.reason) == (0, 5, seg_files(logdir)[0],
                                                              "checksum mismatch")
        assert str(e).startswith("partition 0: corrupt record at offset 5 (")
        assert lg.read(0, 6) == list(enumerate(data))[6:] + [(10, b"new")]  # stepping over


def test_after_a_clean_close_a_last_segment_without_one_good_record_is_set_aside(logdir):
    _write_records(logdir, [50] * 3)
    path = seg_files(logdir)[0]
    with open(path, "r+b") as f:
        f.seek(FH + 4)
        f.write(b"\xff\xff\xff\x7f")  # the first record's length: nothing resyncs...
        f.seek(FH + 16 + 2 * (H + 50) + 8)
        f.write(b"\x09")  # ... and the third record's offset is wrong too
    with Log(logdir) as lg:
        (r,) = lg.recovery
        assert (r.action, r.offset, r.records_after) == ("kept", 0, 1)
    # offset 1 was good: the segment stays, readers stop at offset 0
    with Log(logdir) as lg:
        with pytest.raises(CorruptRecordError, match="offset 0"):
            lg.read(0, 0)
    os.unlink(seg_files(logdir)[1])
    with open(path, "r+b") as f:
        f.write(b"\0" * os.path.getsize(path))
    with Log(logdir) as lg:
        (r,) = lg.recovery
        assert (r.action, r.records_after) == ("kept", 0)
        assert os.path.exists(path + ".damaged")
        assert lg.end_offset(0) == 0 and lg.append(0, [b"x"]) == 0


# ---- corruption in the middle ----------------------------------------------------


@pytest.fixture
def damaged_middle(logdir):
    """Three+ sealed segments; one payload byte of offset 25 flipped."""
    data = _write_records(logdir, [200] * 100, segment_bytes=4096)
    files = seg_files(logdir)
    assert len(files) >= 4
    bases = [int(os.path.basename(f)[:20]) for f in files]
    i = max(k for k, b in enumerate(bases) if b <= 25)
    pos = FH + (25 - bases[i]) * (H + 200) + H + 100
    with open(files[i], "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x40]))
    crash(logdir)  # recovery must not touch sealed segments even after a crash
    return data, files[i], pos - H - 100


def test_a_bad_record_in_the_middle_stops_readers_by_default(logdir, damaged_middle):
    data, path, position = damaged_middle
    with Log(logdir) as lg:
        assert lg.recovery == []
        got, nxt = lg.read_batch(0, 0, 1000)
        assert got == list(enumerate(data[:25])) and nxt == 25
        with pytest.raises(CorruptRecordError) as info:
            lg.read(0, 25)
        assert (info.value.offset, info.value.path, info.value.position) == (25, path, position)
        assert "checksum mismatch" in str(info.value)
        # the operator's way past it: read from the next offset
        assert read_all(lg, 0, 26) == list(enumerate(data))[26:]
        # through a Source: the good records first, then the error, position kept
        src = EmbeddedSource(lg, offsets={0: 20})
        assert [r.offset for r in src.poll(1000, 0)] == [20, 21, 22, 23, 24]
        with pytest.raises(CorruptRecordError, match="offset 25"):
            src.poll(1000, 0)
        assert src.position(0) == 25


def test_a_bad_record_in_the_middle_is_skipped_on_request(logdir, damaged_middle, caplog):
    data, path, position = damaged_middle
    with caplog.at_level(logging.WARNING, "pinstack.leaf.stream"), \
            Log(logdir, on_corrupt="skip") as lg:
        got = read_all(lg, 0)
        assert got == [(o, d) for o, d in enumerate(data) if o != 25]
        read_all(lg, 0)  # a second pass: the damage is logged and counted once
        assert lg.stats()["corrupt_skipped"] == 1
    assert caplog.text.count("skipped corrupt data at offset 25") == 1
    assert f"{path} position {position}" in caplog.text


def test_a_broken_length_field_is_resynced_by_offset(logdir):
    data = _write_records(logdir, [100] * 20)
    pos = ends([100] * 20)[6] + 4  # the length field of offset 7
    with open(seg_files(logdir)[0], "r+b") as f:
        f.seek(pos)
        f.write(b"\xff\xff\x00\x00")  # 65535: framing is lost
    with Log(logdir, on_corrupt="skip") as lg:
        (r,) = lg.recovery  # after a clean close: kept
        assert r.action == "kept" and r.records_after == 12
        assert read_all(lg, 0) == [(o, d) for o, d in enumerate(data) if o != 7]
        assert lg.stats()["corrupt_skipped"] == 1


def test_a_missing_segment_file_is_a_gap_readers_report(logdir):
    data = _write_records(logdir, [200] * 100, segment_bytes=4096)
    files = seg_files(logdir)
    gone_from = int(os.path.basename(files[2])[:20])
    gone_to = int(os.path.basename(files[3])[:20])
    os.unlink(files[2])
    with Log(logdir) as lg:
        assert lg.read(0, gone_from - 1) == [(gone_from - 1, data[gone_from - 1])]
        with pytest.raises(CorruptRecordError,
                           match=f"segment ends at offset {gone_from} but the next one "
                                 f"starts at {gone_to}"):
            lg.read(0, gone_from)
    with Log(logdir, on_corrupt="skip") as lg:
        got = read_all(lg, 0)
        assert [o for o, _ in got] == [o for o in range(100) if not gone_from <= o < gone_to]
        assert lg.stats()["corrupt_skipped"] == gone_to - gone_from


# ---- retention -------------------------------------------------------------------


def test_retention_deletes_whole_segments_below_the_checkpoint(logdir):
    with Log(logdir, partitions=1, segment_bytes=4096) as lg:
        for i in range(100):
            lg.append(0, [payload(i, 200)])
        files = seg_files(logdir)
        bases = [int(os.path.basename(f)[:20]) for f in files]
        assert lg.delete_before(0, bases[1] - 1) == 0  # segment 0 still holds bases[1]-1
        assert lg.delete_before(0, bases[2] + 1) == 2
        assert lg.start_offset(0) == bases[2]
        assert seg_files(logdir) == files[2:]
        with pytest.raises(OffsetOutOfRange, match=rf"\[{bases[2]}, 100\]"):
            lg.read(0, bases[2] - 1)
        assert lg.read(0, bases[2], 1) == [(bases[2], payload(bases[2], 200))]
        assert lg.delete_before(0, 10**9) == len(files) - 3  # never the active segment
        assert seg_files(logdir) == files[-1:]
        assert lg.append(0, [b"x"]) == 100
    with Log(logdir) as lg:
        assert lg.start_offset(0) == bases[-1] and lg.end_offset(0) == 101


def test_retention_while_a_reader_is_reading(logdir):
    with Log(logdir, partitions=1, segment_bytes=4096) as lg:
        for i in range(0, 3000, 10):
            lg.append(0, [payload(j, 100) for j in range(i, i + 10)])
        stop = threading.Event()
        seen = []

        def reader():
            while not stop.is_set():
                try:
                    start = lg.start_offset(0)
                    for o, p in lg.read(0, start, 200):
                        assert p == payload(o, 100)
                        seen.append(o)
                except OffsetOutOfRange:
                    pass

        t = threading.Thread(target=reader)
        t.start()
        for cut in range(0, 3000, 50):
            lg.delete_before(0, cut)
            time.sleep(0.001)
        stop.set()
        t.join()
        assert seen


# ---- a producer process killed mid-append -----------------------------------------

CHILD = textwrap.dedent("""
    import os, sys, threading
    from pinstack.leaf.stream import Log
    path, side, policy, tag = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    lg = Log(path, partitions=2, fsync=policy, segment_bytes=32768)
    lock = threading.Lock()
    out = open(side, "a", buffering=1)
    def run(t):
        i = 0
        while True:
            batch = [b"%s-%d-%d-%d" % (tag.encode(), t, i, j) + b"x" * (i % 300)
                     for j in range(1 + i % 4)]
            p = (t + i) % 2
            last = lg.append(p, batch)
            with lock:  # acknowledged: record it
                for k, b in enumerate(batch):
                    out.write("%d %d %s\\n" % (p, last - len(batch) + 1 + k, b.decode()))
            i += 1
    for t in range(4):
        threading.Thread(target=run, args=(t,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
""")


@pytest.mark.parametrize("policy", ["always", "interval_ms=5"])
def test_every_acknowledged_record_survives_sigkill(tmp_path, policy):
    path, side = str(tmp_path / "log"), str(tmp_path / "acked.txt")
    rng = random.Random(5)
    for run in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, path, side, policy, f"run{run}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert child.stdout.readline() == b"ready\n", child.stderr.read()
        time.sleep(rng.uniform(0.05, 0.4))  # a random moment mid-append
        child.send_signal(signal.SIGKILL)
        child.wait()
        with open(side) as f:
            acked = [line.split() for line in f if line.endswith("\n")]
        assert acked, "the producer acknowledged nothing"
        with Log(path) as lg:
            content = {p: dict(read_all(lg, p)) for p in range(2)}
            for p, offset, body in acked:
                assert content[int(p)].get(int(offset)) == body.encode(), (p, offset)
            # offsets stay dense after recovery and appends go on from there
            for p in range(2):
                assert sorted(content[p]) == list(range(len(content[p])))


# ---- EmbeddedSource ----------------------------------------------------------------


def test_source_polls_every_partition_in_order(logdir):
    with Log(logdir, partitions=3) as lg:
        want = {p: [] for p in range(3)}
        for i in range(300):
            p = i % 3
            lg.append(p, [payload(i)])
            want[p].append(payload(i))
        src = EmbeddedSource(lg)
        assert src.partitions() == [0, 1, 2]
        assert src.lag() == {0: 100, 1: 100, 2: 100}
        got = {p: [] for p in range(3)}
        while True:
            batch = src.poll(max_records=37, timeout=0)
            if not batch:
                break
            assert len(batch) <= 37
            for r in batch:
                assert isinstance(r, Record)
                assert r.offset == len(got[r.partition])  # per-partition order, no gaps
                got[r.partition].append(r.payload)
        assert got == want
        assert src.lag() == {0: 0, 1: 0, 2: 0}
        assert src.positions() == {0: 100, 1: 100, 2: 100}


def test_source_takes_turns_between_partitions(logdir):
    with Log(logdir, partitions=2) as lg:
        lg.append(0, [b"a"] * 50)
        lg.append(1, [b"b"] * 50)
        src = EmbeddedSource(lg)
        firsts = {src.poll(10, 0)[0].partition for _ in range(4)}
        assert firsts == {0, 1}


def test_source_seeks_back_and_forward(logdir):
    with Log(logdir, partitions=2) as lg:
        lg.append(0, [payload(i) for i in range(20)])
        src = EmbeddedSource(lg, partitions=[0], offsets={0: 15})
        assert [r.offset for r in src.poll(100, 0)] == [15, 16, 17, 18, 19]
        src.seek(0, 3)
        assert [r.offset for r in src.poll(4, 0)] == [3, 4, 5, 6]
        assert src.position(0) == 7
        src.seek(0, 20)
        assert src.poll(100, 0) == []
        with pytest.raises(OffsetOutOfRange):
            src.seek(0, 21)
        with pytest.raises(ValueError, match="not assigned"):
            src.seek(1, 0)
        with pytest.raises(ValueError, match="not assigned"):
            EmbeddedSource(lg, partitions=[0], offsets={1: 0})


def test_source_waits_for_new_records_and_times_out(logdir):
    with Log(logdir, partitions=2, fsync="interval_ms=5") as lg:
        src = EmbeddedSource(lg)
        t0 = time.monotonic()
        assert src.poll(10, timeout=0.1) == []
        assert 0.09 <= time.monotonic() - t0 < 1.0
        timer = threading.Timer(0.05, lambda: lg.append(1, [b"x", b"y"]))
        t0 = time.monotonic()
        timer.start()
        got = src.poll(10, timeout=5)
        assert got == [Record(1, 0, b"x"), Record(1, 1, b"y")]
        assert time.monotonic() - t0 < 1.0
        timer.join()


def test_source_close_owns_the_log_only_when_told(logdir):
    lg = Log(logdir, partitions=1)
    EmbeddedSource(lg).close()
    assert not lg.closed
    src = EmbeddedSource(lg, own_log=True)
    with src:
        pass
    assert lg.closed
    with pytest.raises(ValueError, match="closed"):
        src.poll()


def test_record_crc_covers_length_and_offset():
    data, _ = rec.encode([b"abc"], 7, FH, 0, rec.array("q"), rec.array("q"))
    crc, n, off = rec.RECORD_HEADER.unpack_from(data)
    assert (n, off) == (3, 7)
    assert crc == zlib.crc32(b"abc", zlib.crc32(data[4:16]))
    assert rec.decode(data, 0, 7, 10).records == [(7, b"abc")]
    assert rec.decode(data, 0, 8, 10).problem == "record says offset 7, 8 expected"


# ---- measurements (python -m pytest -m bench -s tests/test_leaf_stream.py) ----------


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}/s"


@pytest.mark.bench
@pytest.mark.timeout(600)
@pytest.mark.parametrize("policy", ["always", "interval_ms=5"])
@pytest.mark.parametrize("batch", [1, 100])
@pytest.mark.parametrize("producers", [1, 8])
def test_bench_append(tmp_path, policy, batch, producers):
    body = os.urandom(500)
    seconds = 3.0
    counts = [0] * producers

    def run(t):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            lg.append(t % 4, [body] * batch)
            counts[t] += batch

    with Log(tmp_path / "log", partitions=4, fsync=policy) as lg:
        ts = [threading.Thread(target=run, args=(t,)) for t in range(producers)]
        t0 = time.monotonic()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        dt = time.monotonic() - t0
        fsyncs = lg.stats()["fsyncs"]
    n = sum(counts)
    print(f"\nappend fsync={policy} batch={batch} producers={producers}: "
          f"{_rate(n, dt)} records, {_rate(n // batch, dt)} appends, "
          f"{_rate(n * 500, dt)[:-2]} B/s, {fsyncs} fsyncs")


@pytest.mark.bench
@pytest.mark.timeout(600)
def test_bench_read(tmp_path):
    body = os.urandom(500)
    with Log(tmp_path / "log", partitions=1, fsync="interval_ms=5") as lg:
        for _ in range(2000):
            lg.append(0, [body] * 100)
        for max_records in (1000, 100, 1):
            t0 = time.monotonic()
            n = 0
            offset = 0
            while offset < 200_000 and time.monotonic() - t0 < 5:
                got, offset = lg.read_batch(0, offset, max_records)
                n += len(got)
            dt = time.monotonic() - t0
            print(f"\nread max_records={max_records}: {_rate(n, dt)} records")
        src = EmbeddedSource(lg)
        t0 = time.monotonic()
        n = 0
        while n < 200_000:
            n += len(src.poll(1000, 0))
        print(f"\nEmbeddedSource.poll(1000): {_rate(n, time.monotonic() - t0)} records")
