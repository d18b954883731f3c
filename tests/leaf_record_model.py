"""The embedded log's record codec as it was written in Python before it
moved to C (src/_core/index/logrec.c): the oracle tests/test_leaf_msgbatch.py
compares pinstack.leaf.stream.record's encode/decode/scan (and
MessageBatch's framing) with, byte for byte. Slow and simple on purpose; the format is
docs/leaf-stream.md's.
"""

from __future__ import annotations

import os
import struct
import zlib
from array import array
from typing import NamedTuple

RECORD_HEADER = struct.Struct("<IIQ")  # crc, length, offset
HEADER_SIZE = RECORD_HEADER.size  # 16
MAX_RECORD_BYTES = 64 << 20
INDEX_INTERVAL = 4096
SCAN_CHUNK = 1 << 20

_LEN_OFF = struct.Struct("<IQ")
_CRC = struct.Struct("<I")
_crc32 = zlib.crc32


def encode(
    payloads: list[bytes], first_offset: int, start_pos: int, last_index_pos: int,
    index_offsets: array, index_positions: array,
) -> tuple[bytes, int]:
    """The bytes of records for payloads, numbered from first_offset, to be
    written at file position start_pos. Appends a sparse index entry to
    index_offsets/index_positions whenever INDEX_INTERVAL bytes have passed
    since last_index_pos; returns (data, new last_index_pos)."""
    parts = []
    append = parts.append
    pack_lo = _LEN_OFF.pack
    pack_crc = _CRC.pack
    pos = start_pos
    offset = first_offset
    for p in payloads:
        n = len(p)
        if n > MAX_RECORD_BYTES:
            raise ValueError(f"a record is at most {MAX_RECORD_BYTES} bytes (got {n})")
        lo = pack_lo(n, offset)
        append(pack_crc(_crc32(p, _crc32(lo))))
        append(lo)
        append(p)
        if pos - last_index_pos >= INDEX_INTERVAL:
            index_offsets.append(offset)
            index_positions.append(pos)
            last_index_pos = pos
        pos += HEADER_SIZE + n
        offset += 1
    return b"".join(parts), last_index_pos


class Decoded(NamedTuple):
    records: list  # [(offset, payload bytes)] for offsets >= skip_below
    pos: int  # buffer position after the last whole record decoded
    offset: int  # offset of the next record (at pos)
    problem: str | None  # damage found at pos, if any
    need: int  # bytes the record at pos needs when it did not fit (else 0)


def decode(buf, pos: int, offset: int, max_records: int, skip_below: int = -1,
           max_bytes: int = 1 << 62) -> Decoded:
    """Records from buf[pos:] (bytes), the first expected to carry `offset`. Stops
    after max_records returned records or once they hold max_bytes of
    payload, at the end of buf, in front of a record that does not fit
    (need > 0) or in front of damage (problem). Records with offsets below
    skip_below are checked but not returned."""
    out: list = []
    end = len(buf)
    unpack = RECORD_HEADER.unpack_from
    nbytes = 0
    while len(out) < max_records and nbytes < max_bytes:
        if end - pos < HEADER_SIZE:
            return Decoded(out, pos, offset, None, HEADER_SIZE if pos < end else 0)
        crc, n, off = unpack(buf, pos)
        if off != offset:
            return Decoded(out, pos, offset, f"record says offset {off}, {offset} expected", 0)
        if n > MAX_RECORD_BYTES:
            return Decoded(out, pos, offset, f"record length {n} over the maximum", 0)
        body = pos + HEADER_SIZE
        if end - body < n:
            return Decoded(out, pos, offset, None, HEADER_SIZE + n)
        data = buf[body:body + n]
        if _crc32(data, _crc32(buf[pos + 4:body])) != crc:
            return Decoded(out, pos, offset, "checksum mismatch", 0)
        if off >= skip_below:
            out.append((off, data))
            nbytes += n
        pos = body + n
        offset += 1
    return Decoded(out, pos, offset, None, 0)


class Scan(NamedTuple):
    end_pos: int  # file position after the last good record
    end_offset: int  # offset the next record would have
    records: int  # good records scanned
    problem: str | None  # why the scan stopped before `limit`, if it did
    last_index_pos: int


def scan(
    fd: int, pos: int, offset: int, limit: int,
    index_offsets: array | None = None, index_positions: array | None = None,
    last_index_pos: int = 0,
) -> Scan:
    """Check every record of the file region [pos, limit), first offset
    `offset`, filling the sparse index arrays if given. Stops at the first
    damage, or at a record cut short by `limit` (a torn tail)."""
    count = 0
    need = 0
    unpack = RECORD_HEADER.unpack_from
    indexing = index_offsets is not None
    while pos < limit:
        if pos + need > limit:
            what = "record header" if need == HEADER_SIZE else "record"
            return Scan(pos, offset, count,
                        f"{what} cut short: {limit - pos} of {need} bytes", last_index_pos)
        want = min(max(SCAN_CHUNK, need), limit - pos)
        buf = os.pread(fd, want, pos)
        if len(buf) < want:
            return Scan(pos, offset, count, f"file ends before position {limit}",
                        last_index_pos)
        view = memoryview(buf)
        at = 0
        need = 0
        while True:
            if want - at < HEADER_SIZE:
                need = HEADER_SIZE
                break
            crc, n, off = unpack(buf, at)
            if off != offset:
                return Scan(pos + at, offset, count,
                            f"record says offset {off}, {offset} expected", last_index_pos)
            if n > MAX_RECORD_BYTES:
                return Scan(pos + at, offset, count, f"record length {n} over the maximum",
                            last_index_pos)
            body = at + HEADER_SIZE
            if want - body < n:
                need = HEADER_SIZE + n
                break
            if _crc32(view[body:body + n], _crc32(view[at + 4:body])) != crc:
                return Scan(pos + at, offset, count, "checksum mismatch", last_index_pos)
            if indexing and pos + at - last_index_pos >= INDEX_INTERVAL:
                index_offsets.append(offset)
                index_positions.append(pos + at)
                last_index_pos = pos + at
            at = body + n
            offset += 1
            count += 1
        view.release()
        pos += at
        if pos == limit:
            break
    return Scan(pos, offset, count, None, last_index_pos)
