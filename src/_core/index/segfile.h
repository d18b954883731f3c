/*
 * segfile.h - immutable segment files of a pinstack-leaf index: the
 * writer (flush of a sealed realtime segment, and compaction of several
 * segments into one: the same code) and the reader (mmap).
 *
 * FORMAT (version 2; little-endian; every section starts 8-aligned)
 *   header   "PSSEGv01" (the family's magic), u32 format = 2, u32 0
 *   docs     f64 score[N]; u32 dl[N] (text tokens, for BM25); i64 version[N]
 *   keys     u64 key_off[N + T + 1] into key bytes: refs 0..N-1 are the
 *            documents' keys, N..N+T-1 the tombstones' (keys deleted with a
 *            version and holding no document here); i64 tomb_version[T];
 *            u64 slot[S]: an open-addressing table (S a power of two, at
 *            most half full, linear probing) of (hash >> 32) << 32 | ref + 1
 *            (0: empty), hash = ps_hash64(key)
 *   store    the documents' blobs in blocks of PS_SF_STORE_BLOCK documents:
 *            per block u32 raw_len, u32 comp_len (0: stored raw), then
 *            LZ4 (or raw) of { u32 blob_len[n]; blob bytes }; then
 *            u64 store_off[B + 1]
 *   postings per term, 8-aligned: if df > 128, ps_sf_skip[ceil(df / 128)]
 *            (block maxima, last doc, block offset from the first block)
 *            and ps_block_dl[ceil(df / 128)] (per block the shortest text
 *            length of each tf class, posting.h; new in format 2, which
 *            is all that changed from format 1: a format 1 file is still
 *            read, its BM25 block bounds from the maxima alone);
 *            then the blocks: u8 doc_bits, u8 tf_bits, doc gaps - 1 (the
 *            first relative to the previous block's last doc, or doc + 0
 *            for the first block) and tf - 1, each bit-packed LSB first.
 *            8 zero bytes of padding follow the last term.
 *   terms    u64 term_off[M + 1] into term bytes (sorted bytewise: the
 *            dictionary is looked up by binary search over term_off);
 *            ps_sf_termrec[M] { u64 offset in postings, u32 df, u32 0 }
 *   footer   ps_sf_footer: counts and section offsets; then u32 format,
 *            u32 CRC-32 (zlib's) of every byte before them, "PSSEGv01".
 *
 *   A reader verifies the whole file's checksum and every offset before it
 *   uses anything, so a torn or corrupted file is refused with a message,
 *   never half-read.
 *
 * DELETES
 *   The file is immutable; deletions live beside it in memory: deleted[N],
 *   global sequence stamps as in segment.h (0: live), written by the
 *   leaf's single writing thread (the owner of the active segment, or the
 *   swap that replaces segments; both hold the leaf's apply lock) with
 *   relaxed stores before that thread's next release of a commit; read by
 *   queries with relaxed loads against their snapshot. After a restart
 *   they are rebuilt from the newer segments' keys (ps_sf_shadow).
 *
 * Threads: ps_sf_write runs on any thread (the flush and compaction
 * threads) while its inputs keep serving queries; it reads sealed
 * realtime segments and files only. Everything in a ps_fseg but deleted[]
 * is read-only after ps_fseg_open.
 */
#ifndef PS_INDEX_SEGFILE_H
#define PS_INDEX_SEGFILE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "posting.h"
#include "segment.h"

#define PS_SF_MAGIC "PSSEGv01"
#define PS_SF_FORMAT 2u      /* written */
#define PS_SF_FORMAT_MIN 1u  /* oldest still read */
#define PS_SF_STORE_BLOCK 16u

typedef struct ps_sf_termrec {
    uint64_t off;
    uint32_t df;
    uint32_t zero;
} ps_sf_termrec;

typedef struct ps_sf_footer {
    uint64_t ndocs, ntombs, nterms, nslots, nstore, postings, total_dl;
    uint64_t off_score, off_dl, off_version, off_keyoff, off_keybytes, off_tombver, off_slots;
    uint64_t off_store, off_storeoff, off_post, len_post, off_termoff, off_termbytes,
        off_termrec;
} ps_sf_footer;

typedef struct ps_fseg {
    char *path;
    int fd;
    const uint8_t *map;
    size_t size;
    uint32_t ndocs, ntombs;
    uint64_t nterms, nslots, nstore, postings, total_dl;
    const double *score;
    const uint32_t *dl;
    const int64_t *version;
    const uint64_t *key_off;
    const char *key_bytes;
    const int64_t *tomb_version;
    const uint64_t *slots;
    const uint8_t *store;
    const uint64_t *store_off;
    const uint8_t *post;
    const uint64_t *term_off;
    const char *term_bytes;
    const ps_sf_termrec *terms;
    uint32_t max_store_raw;          /* largest raw store block */
    uint32_t format;                 /* PS_SF_FORMAT_MIN..PS_SF_FORMAT */
    _Atomic uint64_t *deleted;       /* [ndocs] stamps; 0: live */
    _Atomic uint32_t deleted_count;
} ps_fseg;

/* A source of documents: a realtime segment or a segment file (one of
 * the two pointers set). Queries run over lists of them (query.h); the
 * writer reads them (a realtime one must be sealed). */
typedef struct ps_src {
    ps_segment *rt;
    ps_fseg *f;
} ps_src;

/* A ps_older_fn over src[0..n), NEWEST first (arg: a ps_src_list): the
 * first source that knows the key answers. */
typedef struct ps_src_list {
    const ps_src *src;
    uint32_t n;
} ps_src_list;
void ps_src_older_lookup(void *arg, const char *key, uint32_t len, uint64_t hash,
                         ps_older_hit *out);
/* The key's live document in src[0..n) (oldest first) at snapshot snap:
 * 0 with *which and *doc, or -1. */
int ps_src_get(const ps_src *src, uint32_t n, const char *key, uint32_t len, uint64_t snap,
               uint32_t *which, uint32_t *doc);

typedef struct ps_sf_write_stats {
    uint64_t docs, dropped, tombs, terms, postings, bytes;
} ps_sf_write_stats;

/* Write in[0..n) (oldest first) as one segment file at `path` (through
 * path + ".tmp", fsync, rename, fsync of the directory): every document
 * not deleted at snapshot `snap`, in input then doc order; their terms
 * merged; tombstones of keys left with no document. remap (may be NULL):
 * remap[i] receives a malloc'd array of the input's doc count: new doc
 * id, or PS_DOC_NONE for a dropped document; the caller frees them.
 * max_bytes_per_sec (0: no limit) throttles the writing.
 * Returns 0, or -1 with err (and no file left behind). */
int ps_sf_write(const char *path, const ps_src *in, uint32_t n, uint64_t snap,
                uint64_t max_bytes_per_sec, uint32_t **remap, ps_sf_write_stats *st, char *err,
                size_t errlen);

/* Map and verify a segment file; NULL with err when it cannot be used. */
ps_fseg *ps_fseg_open(const char *path, char *err, size_t errlen);
void ps_fseg_close(ps_fseg *f);

/* Docs of the input (a file's N, a realtime segment's committed count). */
uint32_t ps_src_docs(const ps_src *in);

/* The term's postings: 0 and an open iterator, or -1 if absent. */
int ps_fseg_postings(const ps_fseg *f, const char *term, uint32_t len, ps_post_iter *it);
/* Document df of a term (0 if absent). */
uint32_t ps_fseg_df(const ps_fseg *f, const char *term, uint32_t len);

static inline bool ps_fseg_is_deleted(const ps_fseg *f, uint32_t doc, uint64_t snap) {
    uint64_t at = atomic_load_explicit(&f->deleted[doc], memory_order_relaxed);
    return at != 0 && at <= snap;
}
static inline const char *ps_fseg_key(const ps_fseg *f, uint32_t ref, uint32_t *len) {
    *len = (uint32_t)(f->key_off[ref + 1] - f->key_off[ref]);
    return f->key_bytes + f->key_off[ref];
}
/* The document's blob, decompressed into buf (max_store_raw bytes).
 * Returns its length, or -1 if the block does not decompress. */
int64_t ps_fseg_blob(const ps_fseg *f, uint32_t doc, char *buf, const char **blob);
/* What the file knows of a key (a ps_older_fn for the leaf). */
void ps_fseg_lookup(ps_fseg *f, const char *key, uint32_t len, uint64_t hash,
                    ps_older_hit *out);
/* The key's live document at snapshot snap, or -1. */
int64_t ps_fseg_get(ps_fseg *f, const char *key, uint32_t len, uint64_t snap);

/* After a restart: every key of a newer segment deletes (stamp 1) the
 * key's live document in the newest older segment that has the key.
 * segs oldest first. Returns the documents deleted. */
uint64_t ps_sf_shadow(ps_fseg *const *segs, uint32_t n);

/* Carry deletes that landed on in[i] after ps_sf_write's snapshot over
 * to the segment written from them (remap: from ps_sf_write). The
 * caller is the leaf's writing thread. Returns deletes carried. */
uint64_t ps_sf_carry_deletes(const ps_src *in, uint32_t n, uint32_t *const *remap,
                             ps_fseg *out);

#endif
