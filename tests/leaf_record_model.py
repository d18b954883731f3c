"""The embedded log's record codec as it was written in Python before it
moved to C (src/_core/index/logrec.c): the oracle tests/test_leaf_msgbatch.py
compares pinstack.leaf.stream.record's encode/decode (and MessageBatch's
framing) with, byte for byte. Slow and simple on purpose; the format is
docs/leaf-stream.md's.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from typing import NamedTuple

RECORD_HEADER = struct.Struct("<IIQ")  # crc, length, offset
HEADER_SIZE = RECORD_HEADER.size  # 16
MAX_RECORD_BYTES = 64 << 20
INDEX_INTERVAL = 4096

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


