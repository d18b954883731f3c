/*
 * posting.h - the realtime posting list: an append-only vector of
 * (doc id, term frequency) in buckets, one writer, many lock-free readers.
 *
 * LAYOUT
 *   Entries live in buckets whose capacity doubles from 4 to 4096 and then
 *   stays at 4096: bucket b holds min(4 << b, 4096) entries. Growing never
 *   copies or moves an entry, so a reader may read an old bucket while the
 *   writer fills a new one. A bucket is two arrays: doc ids (uint32) then
 *   term frequencies (uint16, saturating at 65535), 6 bytes an entry.
 *   Where entry i lives is arithmetic (ps_post_locate): no search.
 *
 *   Block maxima: buckets of 128 entries or more also keep, per block of
 *   128 entries, the largest static score and term frequency and the
 *   smallest text length of its documents (ps_block_meta, after the tfs),
 *   and the smallest text length per term-frequency class (ps_block_dl,
 *   after the maxima), which bound BM25 far more tightly.
 *   Top-K over one term skips a block whose best possible score cannot
 *   enter the heap (block-max pruning, as in tantivy's and Lucene's
 *   block-max WAND, here for single-term queries). The writer only raises
 *   maxima and lowers minima, with relaxed atomic stores made before the
 *   release store of the size; a reader that acquired the size therefore
 *   sees bounds that cover its snapshot (or looser ones: still bounds).
 *
 *   The skip list is single-level: one entry per bucket, {first doc id,
 *   bucket pointer}, in an array (the bucket directory). Its capacity is 1
 *   (stored inline in the posting list, so a term with one bucket costs no
 *   extra allocation), then 4, 8, 16...; when it is full the writer copies
 *   it into one twice as big, publishes that, and retires the old one to
 *   the generation handler (gen.h).
 *
 * MEMORY ORDERING (the one rule readers rely on)
 *   The writer fills the entry (and, for a new bucket, the bucket, its
 *   directory slot and possibly a new directory, published with a release
 *   store of `dir`), then publishes the new size with a release store.
 *   A reader loads `size` with acquire FIRST, then `dir` with acquire, and
 *   reads only entries below that size: everything it reads was written
 *   before the size it saw, and the directory it loaded is at least as new
 *   as the one current at that size, so it covers every bucket below it.
 *   Readers must be inside a generation read section (ps_gen_enter) from
 *   loading `dir` until they stop using it.
 *
 * FILE POSTINGS
 *   The same iterator also walks a term's postings in an immutable segment
 *   file (segfile.h): blocks of up to 128 entries, doc gaps and tf - 1
 *   bit-packed, with one skip entry per block ({block maxima, last doc id,
 *   offset}) when there is more than one block. A block is decoded into
 *   the iterator's own buffer and then walked as a bucket, so next() and
 *   the short advance() are the same inline code for both kinds; only
 *   entering the next bucket/block and leaping differ. The file is
 *   read-only: no ordering rules apply.
 *
 * Threads: ps_post_append: the single writer of this list (the term-shard
 * writer thread, segment.c). Iterators: any thread.
 */
#ifndef PS_INDEX_POSTING_H
#define PS_INDEX_POSTING_H

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "arena.h"
#include "gen.h"

#define PS_POST_FIRST_CAP 4u
#define PS_POST_MAX_CAP 4096u
#define PS_POST_DOUBLING 11u  /* buckets 0..10 double: 4..4096 */
#define PS_POST_DOUBLING_ENTRIES 8188u  /* 4 * (2^11 - 1) */
#define PS_DOC_END UINT32_MAX
#define PS_POST_BLOCK 128u
#define PS_POST_META_MIN_BUCKET 5u  /* buckets from 4 << 5 = 128 entries */

typedef struct ps_block_meta {
    _Atomic uint64_t max_score;  /* bits of a double */
    _Atomic uint32_t min_dl;
    _Atomic uint32_t max_tf;
} ps_block_meta;

/* Per block, the smallest text length among its documents of term
 * frequency 1, 2, 3 and 4 or more (UINT32_MAX: none). BM25 grows with tf
 * and falls with length, so max over the classes of bm25(tf of the class,
 * its shortest length) bounds the block, with tf of the last class its
 * max_tf: far tighter than bm25(max_tf, min_dl), whose two extremes
 * rarely meet in one document (a common word is mostly tf 1). Kept apart
 * from ps_block_meta: files of format 1 have none (segfile.h). */
#define PS_TF_CLASSES 4u
typedef struct ps_block_dl {
    _Atomic uint32_t min_dl[PS_TF_CLASSES];
} ps_block_dl;

static inline uint32_t ps_tf_class(uint32_t tf) {
    return tf >= PS_TF_CLASSES ? PS_TF_CLASSES - 1 : tf > 0 ? tf - 1 : 0;
}

/* Bounds folded over one or more blocks (ps_post_iter_bounds). */
typedef struct ps_bounds {
    double max_score;
    uint32_t max_tf;
    uint32_t min_dl[PS_TF_CLASSES];  /* per tf class, as ps_block_dl */
} ps_bounds;

static inline void ps_bounds_init(ps_bounds *b) {
    b->max_score = -INFINITY;
    b->max_tf = 0;
    for (uint32_t c = 0; c < PS_TF_CLASSES; c++)
        b->min_dl[c] = UINT32_MAX;
}

typedef struct ps_skip {
    uint32_t first_doc;
    uint32_t *docs;  /* the bucket: docs[cap], then uint16_t tfs[cap] */
} ps_skip;

/* One block of a file posting list: its maxima (as in a realtime
 * bucket), its last doc id and its offset from the list's first block. */
typedef struct ps_sf_skip {
    ps_block_meta meta;
    uint32_t last_doc;
    uint32_t off;
} ps_sf_skip;

typedef struct ps_posting {
    _Atomic uint32_t size;      /* committed entries */
    _Atomic(ps_skip *) dir;     /* bucket directory, capacity by bucket count */
    ps_skip inline_dir;         /* the directory while there is one bucket */
    uint32_t *tail;             /* the writer's own: its current bucket, so an
                                 * append needs no trip through the directory
                                 * (readers never read it) */
} ps_posting;

/* Bucket capacity and where entry i lives. */
static inline uint32_t ps_post_bucket_cap(uint32_t b) {
    return b < PS_POST_DOUBLING ? PS_POST_FIRST_CAP << b : PS_POST_MAX_CAP;
}

static inline void ps_post_locate(uint32_t i, uint32_t *bucket, uint32_t *off) {
    if (i < PS_POST_DOUBLING_ENTRIES) {
        uint32_t b = 31u - (uint32_t)__builtin_clz(i / PS_POST_FIRST_CAP + 1);
        *bucket = b;
        *off = i - PS_POST_FIRST_CAP * ((1u << b) - 1u);
    } else {
        uint32_t rest = i - PS_POST_DOUBLING_ENTRIES;
        *bucket = PS_POST_DOUBLING + rest / PS_POST_MAX_CAP;
        *off = rest % PS_POST_MAX_CAP;
    }
}

/* Buckets in use by the first n entries. */
static inline uint32_t ps_post_nbuckets(uint32_t n) {
    if (n == 0)
        return 0;
    uint32_t b, off;
    ps_post_locate(n - 1, &b, &off);
    return b + 1;
}

static inline uint16_t *ps_bucket_tfs(uint32_t *docs, uint32_t b) {
    return (uint16_t *)(docs + ps_post_bucket_cap(b));
}

/* Block maxima of bucket b (NULL below PS_POST_META_MIN_BUCKET). */
static inline ps_block_meta *ps_bucket_meta(const uint32_t *docs, uint32_t b) {
    if (b < PS_POST_META_MIN_BUCKET)
        return NULL;
    uint32_t cap = ps_post_bucket_cap(b);
    /* docs (4 * cap) + tfs (2 * cap): cap is a multiple of 128, so 8-aligned */
    return (ps_block_meta *)((char *)docs + (size_t)cap * 6);
}

/* Per-class shortest lengths of bucket b's blocks, after its maxima. */
static inline ps_block_dl *ps_bucket_dl(const uint32_t *docs, uint32_t b) {
    ps_block_meta *m = ps_bucket_meta(docs, b);
    return m != NULL ? (ps_block_dl *)(m + ps_post_bucket_cap(b) / PS_POST_BLOCK) : NULL;
}

void ps_post_init(ps_posting *p);
/* Append (doc, tf); doc must exceed every doc already in the list. score
 * and dl are the document's static score and text length, for the block
 * maxima. Bucket memory from `arena` (the writer's own), retired
 * directories to `gen`. Returns 0, or -1 when out of memory (nothing
 * published). */
int ps_post_append(ps_posting *p, uint32_t doc, uint32_t tf, double score, uint32_t dl,
                   ps_arena *arena, ps_gen *gen);
/* Free a directory that is not the inline one (segment teardown). */
void ps_post_free_dir(ps_posting *p);

/* A reader's snapshot iterator: the entries committed when it was opened,
 * further cut at doc ids below `limit` (the segment's committed-document
 * watermark). */
typedef struct ps_post_iter {
    const ps_skip *dir;
    uint32_t n;          /* entries in the snapshot */
    uint32_t nbuckets;
    uint32_t limit;      /* doc ids >= limit are past the end */
    uint32_t i;          /* current entry index */
    uint32_t b;          /* current bucket */
    uint32_t off;        /* offset in it */
    uint32_t bucket_n;   /* entries of bucket b inside the snapshot */
    const uint32_t *docs;
    const uint16_t *tfs;
    uint32_t doc;        /* current doc id, PS_DOC_END when done */
    /* file postings only (fdata == NULL: a realtime list) */
    const uint8_t *fdata;      /* the first block */
    const ps_sf_skip *fskip;   /* per block; NULL when there is one block */
    const ps_block_dl *fdlc;   /* per block beside fskip; NULL in format 1 */
    uint32_t fdf;              /* entries */
    uint32_t fbuf_docs[PS_POST_BLOCK];
    uint16_t fbuf_tfs[PS_POST_BLOCK];
} ps_post_iter;

void ps_post_iter_open(ps_post_iter *it, const ps_posting *p, uint32_t limit);
/* Open over a file posting list of df entries, in a file of ndocs
 * documents (segfile.h): the iterator's limit. */
void ps_post_iter_open_file(ps_post_iter *it, const uint8_t *data, const ps_sf_skip *skip,
                            const ps_block_dl *dlc, uint32_t df, uint32_t ndocs);
/* Step into bucket b+1 (the current one is used up). */
uint32_t ps_post_iter_next_bucket(ps_post_iter *it);
static inline uint32_t ps_post_iter_next(ps_post_iter *it) {
    if (it->doc == PS_DOC_END)
        return PS_DOC_END;
    if (__builtin_expect(it->off + 1 < it->bucket_n, 1)) {
        it->off++;
        it->i++;
        uint32_t d = it->docs[it->off];
        return it->doc = d < it->limit ? d : PS_DOC_END;
    }
    return ps_post_iter_next_bucket(it);
}
/* Fold the bounds of the blocks from the current one up to the one
 * holding the first entry >= end into *b (ps_bounds_init first). Returns
 * 0 if one of those blocks keeps no maxima (a small bucket). */
int ps_post_iter_bounds(const ps_post_iter *it, uint64_t end, ps_bounds *b);
/* Reposition at the first entry with doc >= target, before or after the
 * current one (random access: a binary search of the bucket directory or
 * the file's skip entries, then of one bucket or block), and make `limit`
 * the iterator's new end: doc ids >= limit are past it. limit must not
 * exceed the snapshot's limit the iterator was opened with (the caller
 * keeps that: it is the query's, not the list's). Top-K walks a source's
 * doc ids in descending ranges this way (query.c). */
uint32_t ps_post_iter_seek(ps_post_iter *it, uint32_t target, uint32_t limit);
/*
 * Blocks, by number, for walking a list backward a block at a time (top-K
 * over one term, query.c). A file list's block m holds entries
 * [128m, 128m + 128); a realtime list's block 0 holds its first
 * PS_POST_SMALL entries (the buckets too small to keep maxima) and block
 * m >= 1 entries [PS_POST_SMALL + 128(m - 1), PS_POST_SMALL + 128m): every
 * bucket from PS_POST_META_MIN_BUCKET on starts on such a boundary. All
 * cut at the snapshot's size.
 */
#define PS_POST_SMALL 124u  /* 4 + 8 + 16 + 32 + 64: buckets 0..4 */
uint32_t ps_post_iter_nblocks(const ps_post_iter *it);
/* Entries [*first, *end) of block m and its last doc id (of the
 * snapshot; may be >= the iterator's limit); its bounds folded into *b.
 * Returns 0 when the block keeps no maxima. */
int ps_post_iter_block_info(const ps_post_iter *it, uint32_t m, uint32_t *first, uint32_t *end,
                            uint32_t *last_doc, ps_bounds *b);
/* Stand on entry idx (< the snapshot's size), before or after the current
 * one; its doc, or PS_DOC_END if that is at or past the limit. */
uint32_t ps_post_iter_goto(ps_post_iter *it, uint32_t idx);
/* Entries of the snapshot with doc < limit, without walking them. */
uint32_t ps_post_iter_count(const ps_post_iter *it);
/* How many of the 16 sorted doc ids at p are below target: the index of
 * the first >= target, if it is among them. All 17 values must be below
 * PS_SIGNED_DOCS (SSE2 compares signed): callers check that their limit
 * is at most that, which every realtime segment's is (max_docs <= 2^31),
 * and fall back to scalar search otherwise. */
#define PS_SIGNED_DOCS 0x80000000u
static inline uint32_t ps_below16(const uint32_t *p, uint32_t target) {
#if defined(__SSE2__)
    const __m128i t = _mm_set1_epi32((int)target);
    __m128i c0 = _mm_cmpgt_epi32(t, _mm_loadu_si128((const __m128i *)p));
    __m128i c1 = _mm_cmpgt_epi32(t, _mm_loadu_si128((const __m128i *)(p + 4)));
    __m128i c2 = _mm_cmpgt_epi32(t, _mm_loadu_si128((const __m128i *)(p + 8)));
    __m128i c3 = _mm_cmpgt_epi32(t, _mm_loadu_si128((const __m128i *)(p + 12)));
    __m128i m = _mm_packs_epi16(_mm_packs_epi32(c0, c1), _mm_packs_epi32(c2, c3));
    /* Sorted: the lanes below target are a prefix; the first clear bit
     * ends it (bit 16 is always clear: bsf, no popcount instruction
     * needed on baseline x86-64). */
    return (uint32_t)__builtin_ctz(~(unsigned)_mm_movemask_epi8(m));
#else
    uint32_t k = 0;
    for (uint32_t j = 0; j < 16; j++)
        k += p[j] < target;
    return k;
#endif
}

/* First entry with doc >= target, using the skip list to leap over whole
 * buckets. The inline part takes the common step of one entry. */
uint32_t ps_post_iter_advance_far(ps_post_iter *it, uint32_t target);
static inline uint32_t ps_post_iter_advance(ps_post_iter *it, uint32_t target) {
    if (it->doc >= target)
        return it->doc;  /* also PS_DOC_END */
    if (it->off + 1 < it->bucket_n && it->docs[it->off + 1] >= target) {
        it->off++;
        it->i++;
        uint32_t d = it->docs[it->off];
        return it->doc = d < it->limit ? d : PS_DOC_END;
    }
    return ps_post_iter_advance_far(it, target);
}
/* The doc ids present in both a and b, ascending, into out (at most cap),
 * advancing both: the leapfrog of an AND of two terms, with a the rarer,
 * run on the bucket arrays directly while both stay inside theirs (b
 * scanned 16 entries at a time). Returns how many; fewer than cap means
 * one of them is exhausted. */
uint32_t ps_post_intersect2(ps_post_iter *a, ps_post_iter *b, uint32_t *out, uint32_t cap);
static inline uint32_t ps_post_iter_tf(const ps_post_iter *it) {
    return it->tfs[it->off];
}

#endif
