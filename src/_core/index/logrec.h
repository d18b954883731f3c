/*
 * logrec.h - the embedded log's record format (docs/leaf-stream.md): framing
 * records for an append and checking them on a read, in C.
 *
 *   record   16 bytes   u32 crc, u32 length, u64 offset (little-endian)
 *            length     payload
 *
 * crc is zlib's CRC-32 of the 12 header bytes after it (length, offset)
 * followed by the payload. src/pinstack/leaf/stream/record.py is the Python
 * face (file headers, recovery scans, resync after damage) and calls these
 * for the per-record work; log.py owns files, locks and threads.
 *
 * Pure functions over caller-owned memory: no state, no allocation, safe
 * from any thread; callers run them with the GIL released.
 */
#ifndef PS_INDEX_LOGREC_H
#define PS_INDEX_LOGREC_H

#include <stddef.h>
#include <stdint.h>

#define LR_HEADER_SIZE 16u
#define LR_MAX_RECORD_BYTES (64u << 20)
#define LR_INDEX_INTERVAL 4096u  /* file bytes between two sparse index entries */

/* The sparse index entries an append adds: (offset, file position) of a
 * record every LR_INDEX_INTERVAL bytes. Capacity: one per record framed. */
typedef struct lr_index {
    int64_t *offsets;
    int64_t *positions;
    uint32_t n;
} lr_index;

/* Bytes lr_encode writes for payloads of these lengths. */
static inline size_t lr_framed_size(const size_t *lens, uint32_t n) {
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += LR_HEADER_SIZE + lens[i];
    return total;
}

/* Frame payloads[0..n) into out (lr_framed_size bytes), numbered from
 * first_offset, for the file position start_pos. *last_index_pos is the
 * position of the last sparse index entry; every record at least
 * LR_INDEX_INTERVAL bytes past it gets an entry in idx (which has room for
 * n) and moves it. Lengths must be <= LR_MAX_RECORD_BYTES (the caller
 * checks). Returns the bytes written. */
size_t lr_encode(const char *const *payloads, const size_t *lens, uint32_t n,
                 uint64_t first_offset, uint64_t start_pos, uint64_t *last_index_pos,
                 char *out, lr_index *idx);

/* What lr_decode found in a buffer of records. */
enum {
    LR_OK = 0,          /* no damage (maybe stopped by a limit, or the end of the buffer) */
    LR_BAD_OFFSET,      /* the header carries another offset than expected (found_offset) */
    LR_BAD_LENGTH,      /* length over LR_MAX_RECORD_BYTES (found_length) */
    LR_BAD_CRC,         /* checksum mismatch */
};

typedef struct lr_decoded {
    size_t first_pos;      /* buffer position of the first record returned */
    size_t pos;            /* position after the last whole record checked */
    uint64_t offset;       /* offset expected at pos */
    uint32_t count;        /* records returned: [first_pos, pos) holds exactly them */
    uint64_t nbytes;       /* their payload bytes */
    int problem;           /* LR_* at pos */
    uint64_t found_offset; /* LR_BAD_OFFSET */
    uint32_t found_length; /* LR_BAD_LENGTH */
    size_t need;           /* bytes the record at pos needs when it did not fit, else 0 */
} lr_decoded;

/* Check records from buf[pos, len), the first expected to carry `offset`.
 * Records with offsets below skip_below are checked but not returned (they
 * come first, so the returned ones are one contiguous run). Stops once
 * max_records were returned or they hold max_bytes of payload, at the end
 * of the buffer, in front of a record that does not fit (need), or in
 * front of damage (problem). Never reads outside buf[0, len).
 *
 * idx (may be NULL): also build the sparse index of the good records, as
 * lr_encode does, buf[0] being at file position base_pos; idx needs room
 * for len / LR_INDEX_INTERVAL + 1 entries. */
void lr_decode(const char *buf, size_t len, size_t pos, uint64_t offset, uint64_t max_records,
               int64_t skip_below, uint64_t max_bytes, lr_decoded *out,
               uint64_t base_pos, uint64_t *last_index_pos, lr_index *idx);

/* The payload of the record at buf + pos, which lr_decode checked:
 * its length, and the position of the next record. */
static inline uint32_t lr_payload_len(const char *buf, size_t pos) {
    const unsigned char *h = (const unsigned char *)buf + pos + 4;
    return (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 24;
}

#endif
