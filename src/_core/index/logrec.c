/*
 * logrec.c - framing and checking the embedded log's records (logrec.h).
 *
 * WHY IN C
 *
 * Every record written through the leaf is framed once (one CRC-32 over
 * its header and payload) and checked once per read. In Python that was a
 * struct.pack, two zlib.crc32 calls and a bytes join per record on the
 * write side, and an unpack, a slice, two crc32 calls and a tuple per
 * record on the read side: a few microseconds a record, with the GIL held.
 * Here a whole batch is one call with the GIL released.
 *
 * INVARIANTS
 *
 * lr_encode writes exactly what record.py documents, byte for byte (the
 * tests compare it with the former Python encoder kept as an oracle).
 * lr_decode never declares a record good whose checksum, length or offset
 * is wrong, and never reads past the buffer it was given: a header is read
 * only when 16 bytes are there, a payload only when its whole length is.
 *
 * THREADS: none of its own; pure functions over the caller's memory.
 */
#include "logrec.h"

#include <string.h>
#include <zlib.h>

static inline void put_u32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline void put_u64(unsigned char *p, uint64_t v) {
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

static inline uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t get_u64(const unsigned char *p) {
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

/* CRC-32 of the 12 header bytes after the crc field, then the payload. */
static inline uint32_t record_crc(const unsigned char *len_off, const void *payload, size_t n) {
    uLong crc = crc32_z(0L, len_off, 12);
    return (uint32_t)crc32_z(crc, (const Bytef *)payload, n);
}

size_t lr_encode(const char *const *payloads, const size_t *lens, uint32_t n,
                 uint64_t first_offset, uint64_t start_pos, uint64_t *last_index_pos,
                 char *out, lr_index *idx) {
    unsigned char *o = (unsigned char *)out;
    uint64_t pos = start_pos;
    uint64_t last = *last_index_pos;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t offset = first_offset + i;
        size_t len = lens[i];
        put_u32(o + 4, (uint32_t)len);
        put_u64(o + 8, offset);
        if (len)
            memcpy(o + LR_HEADER_SIZE, payloads[i], len);
        put_u32(o, record_crc(o + 4, o + LR_HEADER_SIZE, len));
        if (pos >= last + LR_INDEX_INTERVAL) {  /* (pos - last could wrap) */
            idx->offsets[idx->n] = (int64_t)offset;
            idx->positions[idx->n] = (int64_t)pos;
            idx->n++;
            last = pos;
        }
        o += LR_HEADER_SIZE + len;
        pos += LR_HEADER_SIZE + len;
    }
    *last_index_pos = last;
    return (size_t)(o - (unsigned char *)out);
}

void lr_decode(const char *buf, size_t len, size_t pos, uint64_t offset, uint64_t max_records,
               int64_t skip_below, uint64_t max_bytes, lr_decoded *out,
               uint64_t base_pos, uint64_t *last_index_pos, lr_index *idx) {
    const unsigned char *b = (const unsigned char *)buf;
    memset(out, 0, sizeof(*out));
    out->first_pos = pos;
    while (out->count < max_records && out->nbytes < max_bytes) {
        if (pos > len || len - pos < LR_HEADER_SIZE) {
            out->need = pos < len ? LR_HEADER_SIZE : 0;
            break;
        }
        uint32_t crc = get_u32(b + pos);
        uint32_t n = get_u32(b + pos + 4);
        uint64_t off = get_u64(b + pos + 8);
        if (off != offset) {
            out->problem = LR_BAD_OFFSET;
            out->found_offset = off;
            break;
        }
        if (n > LR_MAX_RECORD_BYTES) {
            out->problem = LR_BAD_LENGTH;
            out->found_length = n;
            break;
        }
        size_t body = pos + LR_HEADER_SIZE;
        if (len - body < n) {
            out->need = LR_HEADER_SIZE + (size_t)n;
            break;
        }
        if (record_crc(b + pos + 4, b + body, n) != crc) {
            out->problem = LR_BAD_CRC;
            break;
        }
        if (idx != NULL && base_pos + pos >= *last_index_pos + LR_INDEX_INTERVAL) {
            idx->offsets[idx->n] = (int64_t)off;
            idx->positions[idx->n] = (int64_t)(base_pos + pos);
            idx->n++;
            *last_index_pos = base_pos + pos;
        }
        if ((int64_t)off >= skip_below) {
            if (out->count == 0)
                out->first_pos = pos;
            out->count++;
            out->nbytes += n;
        }
        pos = body + n;
        offset++;
    }
    if (out->count == 0)
        out->first_pos = pos;
    out->pos = pos;
    out->offset = offset;
}
