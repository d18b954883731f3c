"""The on-disk format of the embedded log: segment files of checksummed,
self-numbered records. Pure functions over bytes and file descriptors;
log.py owns files, locks and threads. The work done per record (framing,
checksums, the sparse index) is C, a buffer per call
(src/_core/index/logrec.c); this module says what to do with the result.

Segment file
------------
    file header   16 bytes   magic b"PSLOGv1\\n", u64 base offset (LE)
    record        16 bytes   u32 crc, u32 length, u64 offset (LE)
                  length     payload
    record ...

The file is named after its base offset (20 digits, `00000000000000000042.log`)
and the header repeats it. Record offsets are dense: the n-th record of a
segment has offset base + n, and every record carries its own offset.

crc is CRC-32 (zlib's, the IEEE polynomial) of the 12 header bytes after it
(length and offset) followed by the payload. Covering length and offset
means a zero-filled region (what a crash can leave after a file grew) never
passes as records (zero bytes have a non-zero CRC), and a record copied to
the wrong place or read at the wrong offset fails. Carrying the offset also
lets a reader find the next good record after damage by searching for the
8 bytes of an expected offset (find_next_valid) instead of trying every
byte position.

A payload is 0..MAX_RECORD_BYTES bytes. A header whose length is larger is
damage, which keeps a flipped high bit from making a reader allocate
gigabytes.

Invariants the callers rely on
------------------------------
* decode() never returns a record whose checksum or offset is wrong; it
  stops in front of it and says why (`problem`), or stops in front of a
  record that does not fit in the buffer and says how many bytes that
  record needs (`need`).
* scan() reads a whole region of a file and reports the first damage,
  with the sparse index of everything before it.
"""

from __future__ import annotations

import os
import struct
from array import array
from typing import NamedTuple

from pinstack._core._index import decode_records, encode_records

FILE_MAGIC = b"PSLOGv1\n"
FILE_HEADER = struct.Struct("<8sQ")  # magic, base offset
RECORD_HEADER = struct.Struct("<IIQ")  # crc, length, offset
FILE_HEADER_SIZE = FILE_HEADER.size  # 16
HEADER_SIZE = RECORD_HEADER.size  # 16
MAX_RECORD_BYTES = 64 << 20
INDEX_INTERVAL = 4096  # bytes between two sparse index entries
SCAN_CHUNK = 1 << 20
RESYNC_MAX_RECORDS = 256  # find_next_valid skips at most this many damaged records
RESYNC_MAX_BYTES = 16 << 20  # ... and looks at most this far past the damage
RESYNC_WINDOW = 1 << 20

_OFFSET = struct.Struct("<Q")


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}.log"


def file_header(base_offset: int) -> bytes:
    return FILE_HEADER.pack(FILE_MAGIC, base_offset)


def check_file_header(data: bytes, base_offset: int) -> str | None:
    """None if data (the first 16 bytes of a file) is the header of the
    segment based at base_offset, else what is wrong with it."""
    if len(data) < FILE_HEADER_SIZE:
        return f"file header truncated ({len(data)} of {FILE_HEADER_SIZE} bytes)"
    magic, base = FILE_HEADER.unpack_from(data)
    if magic != FILE_MAGIC:
        return f"bad file magic {magic!r}"
    if base != base_offset:
        return f"file header says base offset {base}, its name says {base_offset}"
    return None


def encode(
    payloads: list[bytes], first_offset: int, start_pos: int, last_index_pos: int,
    index_offsets: array, index_positions: array,
) -> tuple[bytes, int]:
    """The bytes of records for payloads, numbered from first_offset, to be
    written at file position start_pos. Appends a sparse index entry to
    index_offsets/index_positions whenever INDEX_INTERVAL bytes have passed
    since last_index_pos; returns (data, new last_index_pos). The framing is
    C (src/_core/index/logrec.c), one call for the batch."""
    data, last_index_pos, entries = encode_records(payloads, first_offset, start_pos,
                                                   last_index_pos, MAX_RECORD_BYTES)
    add_index(entries, index_offsets, index_positions)
    return data, last_index_pos


def add_index(entries: list[tuple[int, int]], index_offsets: array,
              index_positions: array) -> None:
    """Append (offset, position) sparse index entries to the two arrays."""
    for off, pos in entries:
        index_offsets.append(off)
        index_positions.append(pos)


class Decoded(NamedTuple):
    records: list  # [(offset, payload bytes)] for offsets >= skip_below (a count if not split)
    pos: int  # buffer position after the last whole record decoded
    offset: int  # offset of the next record (at pos)
    problem: str | None  # damage found at pos, if any
    need: int  # bytes the record at pos needs when it did not fit (else 0)
    first_pos: int = 0  # position of the first record returned (the rest follow it)
    nbytes: int = 0  # payload bytes of the records returned


def decode(buf, pos: int, offset: int, max_records: int, skip_below: int = -1,
           max_bytes: int = 1 << 62, split: bool = True) -> Decoded:
    """Records from buf[pos:] (bytes), the first expected to carry `offset`. Stops
    after max_records returned records or once they hold max_bytes of
    payload, at the end of buf, in front of a record that does not fit
    (need > 0) or in front of damage (problem). Records with offsets below
    skip_below are checked but not returned. With split=False, `records`
    is only their count: they are the bytes buf[first_pos:pos], back to
    back (what MessageBatch.add_log_run takes). The checks are C
    (logrec.c's lr_decode)."""
    records, first_pos, pos, offset, problem, found_offset, found_length, need, nbytes, _ = \
        decode_records(buf, pos, offset, max_records, skip_below, max_bytes, split)
    return Decoded(records, pos, offset, _problem(problem, found_offset, found_length, offset),
                   need, first_pos, nbytes)


def _problem(code: int, found_offset: int, found_length: int, offset: int) -> str | None:
    """decode_records' problem code as a sentence."""
    if code == 1:
        return f"record says offset {found_offset}, {offset} expected"
    if code == 2:
        return f"record length {found_length} over the maximum"
    if code == 3:
        return "checksum mismatch"
    return None


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
        got, _, at, next_offset, code, found_offset, found_length, need, _, index = \
            decode_records(buf, 0, offset, 1 << 62, -1, 1 << 62, False,
                           (pos, last_index_pos) if indexing else None)
        if indexing:
            last_index_pos = index[0]
            add_index(index[1], index_offsets, index_positions)  # type: ignore[arg-type]
        count += got
        problem = _problem(code, found_offset, found_length, next_offset)
        if problem is not None:
            return Scan(pos + at, next_offset, count, problem, last_index_pos)
        offset = next_offset
        pos += at
        if pos == limit:
            break
        if need == 0:
            need = HEADER_SIZE  # the chunk ended on a record boundary: a header comes next
    return Scan(pos, offset, count, None, last_index_pos)


def find_next_valid(fd: int, pos: int, offset: int, limit: int) -> tuple[int, int] | None:
    """After damage at file position pos where `offset` was expected: the
    position and offset of the first good record in (pos, limit) whose
    offset is offset+1..offset+RESYNC_MAX_RECORDS, looking at most
    RESYNC_MAX_BYTES past pos; None if there is none.

    Tries the place the damaged header's length points to first (a flipped
    payload bit leaves the length right), then searches the bytes for the
    little-endian encoding of each candidate offset, smallest first: a
    match 8 bytes into a header that checks out is a record boundary, and
    since offsets grow along the file the first candidate found is the
    earliest good record."""
    if pos + HEADER_SIZE <= limit:
        head = os.pread(fd, HEADER_SIZE, pos)
        if len(head) == HEADER_SIZE:
            _, n, _ = RECORD_HEADER.unpack_from(head)
            nxt = pos + HEADER_SIZE + n
            if n <= MAX_RECORD_BYTES and nxt < limit:
                got = _valid_at(fd, nxt, limit)
                if got is not None and offset < got <= offset + RESYNC_MAX_RECORDS:
                    return nxt, got
    start = pos + 1
    stop = min(limit, pos + RESYNC_MAX_BYTES)
    while start + HEADER_SIZE <= stop:
        end = min(start + RESYNC_WINDOW, stop)
        buf = os.pread(fd, end - start, start)
        for k in range(1, RESYNC_MAX_RECORDS + 1):
            needle = _OFFSET.pack(offset + k)
            at = buf.find(needle, 8)
            while at != -1:
                if _valid_at(fd, start + at - 8, limit) == offset + k:
                    return start + at - 8, offset + k
                at = buf.find(needle, at + 1)
        if end >= stop:
            break
        start = end - (HEADER_SIZE - 1)  # a header across the window edge is seen next time
    return None


def _valid_at(fd: int, pos: int, limit: int) -> int | None:
    """The offset of the record at file position pos if it is whole (inside
    limit) and its checksum is right, else None."""
    if pos < 0 or pos + HEADER_SIZE > limit:
        return None
    head = os.pread(fd, HEADER_SIZE, pos)
    if len(head) < HEADER_SIZE:
        return None
    _, n, off = RECORD_HEADER.unpack_from(head)
    if n > MAX_RECORD_BYTES or pos + HEADER_SIZE + n > limit:
        return None
    d = decode(os.pread(fd, HEADER_SIZE + n, pos), 0, off, 1)
    return off if d.records else None
