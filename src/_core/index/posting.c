/*
 * posting.c - append and iterate the bucketed posting list of posting.h.
 *
 * Writer side (one thread per list): ps_post_append fills the slot, and
 * for a new bucket the directory slot (growing the directory by copy +
 * release publish + retire when full), then release-stores the size.
 * The writer also keeps its current bucket in `tail`, a field only it
 * reads. Reader side: ps_post_iter_* never writes shared memory; it reads
 * a snapshot of `size` entries (acquire), through the directory it loaded
 * (acquire) after the size. See posting.h for why that order is enough.
 *
 * Iterators seek both ways (random access through the directory or the
 * file's skip entries) and walk numbered blocks backward, for top-K
 * newest first (query.c). ps_post_intersect2 intersects two iterators on
 * their arrays with branch-free SIMD compares (doc ids below 2^31: signed
 * lanes); its SSE2 or AVX2 build is picked once, into a pointer any
 * thread may set (the same value: relaxed atomics).
 */
#include "posting.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

void ps_post_init(ps_posting *p) {
    atomic_init(&p->size, 0);
    p->inline_dir.first_doc = 0;
    p->inline_dir.docs = NULL;
    p->tail = NULL;
    atomic_init(&p->dir, &p->inline_dir);
}

/* Capacity of the directory while nb buckets exist. */
static inline uint32_t dir_cap(uint32_t nb) {
    if (nb <= 1)
        return 1;
    uint32_t c = 4;
    while (c < nb)
        c <<= 1;
    return c;
}

static inline uint32_t bucket_start(uint32_t b) {
    if (b < PS_POST_DOUBLING)
        return PS_POST_FIRST_CAP * ((1u << b) - 1u);
    return PS_POST_DOUBLING_ENTRIES + (b - PS_POST_DOUBLING) * PS_POST_MAX_CAP;
}

static inline double bits_to_double(uint64_t bits) {
    double d;
    memcpy(&d, &bits, sizeof(d));
    return d;
}

static inline uint64_t double_to_bits(double d) {
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    return bits;
}

static inline size_t bucket_bytes(uint32_t b) {
    uint32_t cap = ps_post_bucket_cap(b);
    size_t bytes = (size_t)cap * (sizeof(uint32_t) + sizeof(uint16_t));
    if (b >= PS_POST_META_MIN_BUCKET)
        bytes += (cap / PS_POST_BLOCK) * (sizeof(ps_block_meta) + sizeof(ps_block_dl));
    return bytes;
}

int ps_post_append(ps_posting *p, uint32_t doc, uint32_t tf, double score, uint32_t dl,
                   ps_arena *arena, ps_gen *gen) {
    uint32_t n = atomic_load_explicit(&p->size, memory_order_relaxed);
    uint32_t b, off;
    ps_post_locate(n, &b, &off);
    uint32_t *docs;
    if (off == 0) {
        ps_skip *dir = atomic_load_explicit(&p->dir, memory_order_relaxed);
        docs = ps_arena_alloc(arena, bucket_bytes(b), 8);
        if (docs == NULL)
            return -1;
        if (b > 0 && b >= dir_cap(b)) {
            uint32_t newcap = dir_cap(b + 1);
            ps_skip *grown = malloc(sizeof(ps_skip) * newcap);
            if (grown == NULL)
                return -1;
            memcpy(grown, dir, sizeof(ps_skip) * b);
            grown[b].first_doc = doc;
            grown[b].docs = docs;
            /* Publish the directory before the size that needs it. */
            atomic_store_explicit(&p->dir, grown, memory_order_release);
            if (dir != &p->inline_dir &&
                ps_gen_retire(gen, dir, sizeof(ps_skip) * dir_cap(b)) != 0) {
                /* Cannot track it: leak it rather than free it under a
                 * reader. (Only when malloc of 24 bytes failed.) */
            }
        } else {
            /* Slot b is beyond every reader's snapshot until the size
             * store below. */
            dir[b].first_doc = doc;
            dir[b].docs = docs;
        }
        p->tail = docs;
    } else {
        docs = p->tail;
    }
    docs[off] = doc;
    tf = tf > UINT16_MAX ? UINT16_MAX : tf;
    ps_bucket_tfs(docs, b)[off] = (uint16_t)tf;
    ps_block_meta *meta = ps_bucket_meta(docs, b);
    if (meta != NULL) {
        /* Only this thread writes the maxima: plain compare, relaxed store. */
        ps_block_meta *m = &meta[off / PS_POST_BLOCK];
        _Atomic uint32_t *cls = ps_bucket_dl(docs, b)[off / PS_POST_BLOCK].min_dl;
        const uint32_t c = ps_tf_class(tf);
        if (off % PS_POST_BLOCK == 0) {
            atomic_store_explicit(&m->max_score, double_to_bits(score), memory_order_relaxed);
            atomic_store_explicit(&m->min_dl, dl, memory_order_relaxed);
            atomic_store_explicit(&m->max_tf, tf, memory_order_relaxed);
            for (uint32_t k = 0; k < PS_TF_CLASSES; k++)
                atomic_store_explicit(&cls[k], k == c ? dl : UINT32_MAX, memory_order_relaxed);
        } else {
            if (dl < atomic_load_explicit(&cls[c], memory_order_relaxed))
                atomic_store_explicit(&cls[c], dl, memory_order_relaxed);
            if (score > bits_to_double(atomic_load_explicit(&m->max_score, memory_order_relaxed)))
                atomic_store_explicit(&m->max_score, double_to_bits(score), memory_order_relaxed);
            if (dl < atomic_load_explicit(&m->min_dl, memory_order_relaxed))
                atomic_store_explicit(&m->min_dl, dl, memory_order_relaxed);
            if (tf > atomic_load_explicit(&m->max_tf, memory_order_relaxed))
                atomic_store_explicit(&m->max_tf, tf, memory_order_relaxed);
        }
    }
    atomic_store_explicit(&p->size, n + 1, memory_order_release);
    return 0;
}

void ps_post_free_dir(ps_posting *p) {
    ps_skip *dir = atomic_load_explicit(&p->dir, memory_order_relaxed);
    if (dir != &p->inline_dir)
        free(dir);
    atomic_store_explicit(&p->dir, &p->inline_dir, memory_order_relaxed);
}

static inline void iter_enter_bucket(ps_post_iter *it, uint32_t b, uint32_t off) {
    it->b = b;
    it->off = off;
    it->docs = it->dir[b].docs;
    it->tfs = ps_bucket_tfs((uint32_t *)it->docs, b);
    uint32_t start = bucket_start(b);
    uint32_t cap = ps_post_bucket_cap(b);
    it->bucket_n = it->n - start < cap ? it->n - start : cap;
    it->i = start + off;
}

static inline uint32_t iter_settle(ps_post_iter *it) {
    uint32_t d = it->docs[it->off];
    it->doc = d < it->limit ? d : PS_DOC_END;
    return it->doc;
}

/* ---- file postings ---------------------------------------------------- */

/* Value i of a little-endian bit-packed array of `bits`-bit values. The
 * file pads the postings with 8 bytes so that the 8-byte read never runs
 * off the mapping. */
static inline uint32_t unpack(const uint8_t *p, uint32_t i, uint32_t bits) {
    uint64_t pos = (uint64_t)i * bits;
    uint64_t w;
    memcpy(&w, p + pos / 8, sizeof(w));
    return (uint32_t)((w >> (pos % 8)) & ((1ull << bits) - 1));
}

/* Decode block b into the iterator's buffer and stand on its first entry. */
static void fiter_enter(ps_post_iter *it, uint32_t b) {
    const uint8_t *p = it->fdata + (b > 0 ? it->fskip[b].off : 0);
    uint32_t n = it->fdf - b * PS_POST_BLOCK;
    if (n > PS_POST_BLOCK)
        n = PS_POST_BLOCK;
    uint32_t dbits = p[0], tbits = p[1];
    p += 2;
    uint32_t prev = b > 0 ? it->fskip[b - 1].last_doc : UINT32_MAX;  /* + 1 wraps to 0 */
    if (dbits == 0) {
        for (uint32_t k = 0; k < n; k++)
            it->fbuf_docs[k] = prev += 1;
    } else {
        for (uint32_t k = 0; k < n; k++)
            it->fbuf_docs[k] = prev += 1 + unpack(p, k, dbits);
    }
    p += ((size_t)n * dbits + 7) / 8;
    if (tbits == 0) {
        for (uint32_t k = 0; k < n; k++)
            it->fbuf_tfs[k] = 1;
    } else {
        for (uint32_t k = 0; k < n; k++)
            it->fbuf_tfs[k] = (uint16_t)(1 + unpack(p, k, tbits));
    }
    it->b = b;
    it->off = 0;
    it->i = b * PS_POST_BLOCK;
    it->bucket_n = n;
    it->docs = it->fbuf_docs;
    it->tfs = it->fbuf_tfs;
}

void ps_post_iter_open_file(ps_post_iter *it, const uint8_t *data, const ps_sf_skip *skip,
                            const ps_block_dl *dlc, uint32_t df, uint32_t ndocs) {
    it->dir = NULL;
    it->fdata = data;
    it->fskip = skip;
    it->fdlc = skip != NULL ? dlc : NULL;
    it->fdf = df;
    it->n = df;
    it->nbuckets = (df + PS_POST_BLOCK - 1) / PS_POST_BLOCK;
    it->limit = ndocs;  /* every doc id of the file is below it */
    if (df == 0) {
        it->doc = PS_DOC_END;
        it->i = 0;
        it->bucket_n = 0;
        return;
    }
    fiter_enter(it, 0);
    it->doc = it->docs[0];
}

void ps_post_iter_open(ps_post_iter *it, const ps_posting *p, uint32_t limit) {
    it->fdata = NULL;
    it->fskip = NULL;
    it->fdlc = NULL;
    it->n = atomic_load_explicit(&((ps_posting *)p)->size, memory_order_acquire);
    it->dir = atomic_load_explicit(&((ps_posting *)p)->dir, memory_order_acquire);
    it->nbuckets = ps_post_nbuckets(it->n);
    it->limit = limit;
    if (it->n == 0) {
        it->doc = PS_DOC_END;
        it->i = 0;
        return;
    }
    iter_enter_bucket(it, 0, 0);
    iter_settle(it);
}

uint32_t ps_post_iter_next_bucket(ps_post_iter *it) {
    if (it->b + 1 < it->nbuckets) {
        if (it->fdata != NULL)
            fiter_enter(it, it->b + 1);
        else
            iter_enter_bucket(it, it->b + 1, 0);
    } else {
        it->doc = PS_DOC_END;
        return PS_DOC_END;
    }
    return iter_settle(it);
}

/* First index in docs[lo, hi) with docs[k] >= target, or hi. Branch-free
 * halving (the comparison becomes a conditional move): where the target
 * falls is unpredictable, so a branch would mispredict half the time. */
static inline uint32_t lower_bound(const uint32_t *docs, uint32_t lo, uint32_t hi, uint32_t target) {
    if (lo >= hi)
        return hi;
    const uint32_t *base = docs + lo;
    uint32_t n = hi - lo;
    while (n > 1) {
        uint32_t half = n / 2;
        base = base[half - 1] < target ? base + half : base;
        n -= half;
    }
    return (uint32_t)(base - docs) + (*base < target);
}

/* File list: the first block in [from, nbuckets) whose last doc is >=
 * target (nbuckets if none). */
static uint32_t fskip_find(const ps_post_iter *it, uint32_t from, uint32_t target) {
    uint32_t lo = from, hi = it->nbuckets;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (it->fskip[mid].last_doc < target)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Realtime list: the last bucket in [from, nbuckets) whose first doc is
 * <= target (from if none); from < nbuckets. */
static uint32_t dir_find(const ps_post_iter *it, uint32_t from, uint32_t target) {
    uint32_t lo = from, hi = it->nbuckets;
    while (lo + 1 < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (it->dir[mid].first_doc <= target)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

uint32_t ps_post_iter_advance_far(ps_post_iter *it, uint32_t target) {
    if (it->doc >= target)
        return it->doc;  /* also PS_DOC_END */
    if (target >= it->limit) {
        it->doc = PS_DOC_END;
        return PS_DOC_END;
    }
    uint32_t b = it->b;
    uint32_t from = it->off;
    if (it->docs[it->bucket_n - 1] < target && it->fdata != NULL) {
        /* Leap: the first block whose last doc is >= target. */
        uint32_t lo = fskip_find(it, b + 1, target);
        if (lo >= it->nbuckets) {
            it->doc = PS_DOC_END;
            return PS_DOC_END;
        }
        fiter_enter(it, lo);
        from = 0;
    } else if (it->docs[it->bucket_n - 1] < target) {
        /* Leap: the last bucket whose first doc is <= target. */
        if (b + 1 >= it->nbuckets) {
            it->doc = PS_DOC_END;
            return PS_DOC_END;
        }
        iter_enter_bucket(it, dir_find(it, b + 1, target), 0);
        from = 0;
    }
    /* Matches of an AND are usually near: scan the next 64 entries 16 at
     * a time (never past the snapshot's part of the bucket), then gallop
     * and binary search the last step. */
    for (uint32_t scanned = 0;
         scanned < 64 && from + 16 <= it->bucket_n && it->limit <= PS_SIGNED_DOCS;
         scanned += 16) {
        uint32_t below = ps_below16(it->docs + from, target);
        if (below < 16) {
            it->off = from + below;
            it->i = (it->fdata != NULL ? it->b * PS_POST_BLOCK : bucket_start(it->b)) + it->off;
            return iter_settle(it);
        }
        from += 16;
    }
    uint32_t lo = from, step = 1, hi = from;
    while (hi < it->bucket_n && it->docs[hi] < target) {
        lo = hi + 1;
        hi += step;
        step <<= 1;
    }
    if (hi > it->bucket_n)
        hi = it->bucket_n;
    uint32_t k = lower_bound(it->docs, lo, hi, target);
    if (k == it->bucket_n) {
        /* Everything in this bucket is below target: the next bucket's
         * first doc is above it (that is how the bucket was chosen). */
        return ps_post_iter_next_bucket(it);
    }
    it->off = k;
    it->i = bucket_start(it->b) + k;
    return iter_settle(it);
}

/* Stand on entry `off` of the current bucket/block, or step into the next
 * one when off is its end. */
static inline void iter_stand(ps_post_iter *it, uint32_t off) {
    if (off >= it->bucket_n) {
        it->i += it->bucket_n - 1 - it->off;
        it->off = it->bucket_n - 1;
        ps_post_iter_next_bucket(it);
        return;
    }
    it->i += off - it->off;
    it->off = off;
    iter_settle(it);
}

/*
 * The intersection's inner loop, in two builds of one body: SSE2 (every
 * x86-64), 16 doc ids of B per compare step, and AVX2, 32 per step,
 * picked once at run time (__builtin_cpu_supports). A step intersects
 * sorted A with sorted B without a branch on its outcome (a coin toss):
 * t = A[a]; k = how many of B's next W are below t. k == W: t lies
 * further on, B moves W and A stays; otherwise B stands on its first
 * entry >= t, t is kept if that is t, and A moves on (B[b - 1] < t when
 * k == W). The loop keeps b + W within B's readable part.
 *
 * isect_run takes A[*ai, ae) against B[*bi, bn) (all below 2^31: signed
 * compares) into out (matches appended at *n; ae - *ai entries of room)
 * and leaves *ai, *bi where it stopped: at ae, or where B's next W would
 * pass bn. From ISECT_SPLIT entries of A on it runs two streams at once,
 * the first half of A from *bi, the second from where its first doc falls
 * in B: each step waits on its own loads (a chain of ~20 cycles), and two
 * independent chains overlap. Stream 1 never passes stream 2's start (its
 * docs are all below it), and its matches come first.
 */
#define ISECT_SPLIT 64u

#define ISECT_STEP(BELOW, W, A, a, B, b, out, n)                                      \
    do {                                                                          \
        const uint32_t t_ = (A)[a];                                               \
        /* B is read nearly line by line: fetch 512 bytes ahead (a prefetch      \
         * past the bucket's end never faults) */                                 \
        __builtin_prefetch((B) + (b) + 128);                                      \
        const uint32_t k_ = BELOW((B) + (b), t_);                                 \
        const uint32_t found_ = k_ < (W);                                         \
        (b) += k_;                                                                \
        (out)[n] = t_;                                                            \
        (n) += found_ & ((B)[(b) - (1 - found_)] == t_);                          \
        (a) += found_;                                                            \
    } while (0)

#define ISECT_RUN_BODY(BELOW, W)                                                  \
    uint32_t a0 = *ai, b0 = *bi, n0 = *n;                                         \
    if (ae - a0 >= ISECT_SPLIT) {                                                 \
        const uint32_t am = a0 + (ae - a0) / 2;                                   \
        uint32_t a1 = a0, b1 = b0, a2 = am, b2 = lower_bound(B, b0, bn, A[am]);   \
        uint32_t n2 = 0;                                                          \
        while (a1 < am && a2 < ae && b2 + (W) <= bn) {                            \
            ISECT_STEP(BELOW, W, A, a1, B, b1, out, n0);                          \
            ISECT_STEP(BELOW, W, A, a2, B, b2, tmp, n2);                          \
        }                                                                         \
        while (a1 < am && b1 + (W) <= bn)                                         \
            ISECT_STEP(BELOW, W, A, a1, B, b1, out, n0);                          \
        if (a1 < am) { /* stream 1 ran into the bucket's end: stream 2's work    \
                        * is dropped, to be redone after it */                    \
            a0 = a1;                                                              \
            b0 = b1;                                                              \
        } else {                                                                  \
            memcpy(out + n0, tmp, n2 * sizeof(*tmp));                             \
            n0 += n2;                                                             \
            while (a2 < ae && b2 + (W) <= bn)                                     \
                ISECT_STEP(BELOW, W, A, a2, B, b2, out, n0);                      \
            a0 = a2;                                                              \
            b0 = b2;                                                              \
        }                                                                         \
    } else {                                                                      \
        while (a0 < ae && b0 + (W) <= bn)                                         \
            ISECT_STEP(BELOW, W, A, a0, B, b0, out, n0);                          \
    }                                                                             \
    *ai = a0;                                                                     \
    *bi = b0;                                                                     \
    *n = n0

typedef void isect_run_fn(const uint32_t *A, uint32_t *ai, uint32_t ae, const uint32_t *B,
                          uint32_t *bi, uint32_t bn, uint32_t *out, uint32_t *n, uint32_t *tmp);

static void isect_run_sse2(const uint32_t *A, uint32_t *ai, uint32_t ae, const uint32_t *B,
                           uint32_t *bi, uint32_t bn, uint32_t *out, uint32_t *n,
                           uint32_t *tmp) {
    ISECT_RUN_BODY(ps_below16, 16u);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define ISECT_AVX2 1
/* How many of the 32 sorted doc ids at p (all below 2^31) are below t. */
__attribute__((target("avx2"))) static inline uint32_t below32_avx2(const uint32_t *p,
                                                                   uint32_t t) {
    const __m256i tv = _mm256_set1_epi32((int)t);
    uint32_t m = 0;
    for (int j = 0; j < 4; j++) {
        __m256i c = _mm256_cmpgt_epi32(tv, _mm256_loadu_si256((const __m256i *)(p + 8 * j)));
        m |= (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(c)) << (8 * j);
    }
    /* the lanes below t are a prefix: its length is the first clear bit */
    return m == UINT32_MAX ? 32u : (uint32_t)__builtin_ctz(~m);
}

__attribute__((target("avx2"))) static void isect_run_avx2(const uint32_t *A, uint32_t *ai,
                                                          uint32_t ae, const uint32_t *B,
                                                          uint32_t *bi, uint32_t bn,
                                                          uint32_t *out, uint32_t *n,
                                                          uint32_t *tmp) {
    ISECT_RUN_BODY(below32_avx2, 32u);
}
#endif

/* The widest build this CPU runs, chosen on first use (a racing first use
 * stores the same pointer: relaxed atomics suffice); PINSTACK_NO_AVX2 in
 * the environment keeps SSE2 (for comparisons). */
static _Atomic(isect_run_fn *) isect_run_impl;

static isect_run_fn *isect_run(void) {
    isect_run_fn *f = atomic_load_explicit(&isect_run_impl, memory_order_relaxed);
    if (f == NULL) {
        f = isect_run_sse2;
#ifdef ISECT_AVX2
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx2") && getenv("PINSTACK_NO_AVX2") == NULL)
            f = isect_run_avx2;
#endif
        atomic_store_explicit(&isect_run_impl, f, memory_order_relaxed);
    }
    return f;
}

uint32_t ps_post_intersect2(ps_post_iter *a, ps_post_iter *b, uint32_t *out, uint32_t cap) {
    uint32_t n = 0;
    uint32_t tmp[PS_POST_MAX_CAP];
    isect_run_fn *run = isect_run();
    while (n < cap && a->doc != PS_DOC_END && b->doc != PS_DOC_END) {
        if (b->off + 32 <= b->bucket_n && a->limit <= PS_SIGNED_DOCS &&
            b->limit <= PS_SIGNED_DOCS) {
            /* Both inside their buckets, b with 32 entries ahead. A's part
             * is cut where matches could overflow out, and at the
             * snapshot's limit (the iterators then settle on the end). */
            const uint32_t *A = a->docs;
            const uint32_t lim = a->limit < b->limit ? a->limit : b->limit;
            uint32_t ai = a->off, bi = b->off;
            uint32_t ae = a->bucket_n - ai > cap - n ? ai + (cap - n) : a->bucket_n;
            ae = lower_bound(A, ai, ae, lim);
            run(A, &ai, ae, b->docs, &bi, b->bucket_n, out, &n, tmp);
            /* (read before iter_stand moves a to another bucket) */
            const bool past = ai == ae && ae < a->bucket_n && A[ae] >= lim;
            iter_stand(a, ai);
            iter_stand(b, bi);
            if (past)
                break;  /* beyond the snapshot: done */
            continue;
        }
        /* One leapfrog step through the iterators: near the end of b's
         * bucket, or across buckets. */
        const uint32_t t = a->doc;
        const uint32_t d = ps_post_iter_advance(b, t);
        if (d == PS_DOC_END)
            break;
        if (d == t) {
            out[n++] = t;
            ps_post_iter_next(a);
        } else {
            ps_post_iter_advance(a, d);
        }
    }
    return n;
}

uint32_t ps_post_iter_seek(ps_post_iter *it, uint32_t target, uint32_t limit) {
    it->limit = limit;
    if (it->n == 0 || target >= limit) {
        it->doc = PS_DOC_END;
        return PS_DOC_END;
    }
    if (it->fdata != NULL) {
        /* The first block whose last doc is >= target. The buffer always
         * holds block it->b (decoded at open, kept at the end). */
        uint32_t blk = 0;
        if (it->fskip != NULL) {
            uint32_t lo = fskip_find(it, 0, target);
            if (lo >= it->nbuckets) {
                it->doc = PS_DOC_END;
                return PS_DOC_END;
            }
            blk = lo;
        }
        if (blk != it->b)
            fiter_enter(it, blk);
        uint32_t k = lower_bound(it->docs, 0, it->bucket_n, target);
        if (k == it->bucket_n) {  /* one block, all below target */
            it->off = it->bucket_n - 1;
            it->doc = PS_DOC_END;
            return PS_DOC_END;
        }
        it->off = k;
        it->i = it->b * PS_POST_BLOCK + k;
        return iter_settle(it);
    }
    /* The last bucket whose first doc is <= target (bucket 0 if none). */
    iter_enter_bucket(it, dir_find(it, 0, target), 0);
    uint32_t k = lower_bound(it->docs, 0, it->bucket_n, target);
    if (k == it->bucket_n) {
        /* All of this bucket is below target: the next one's first doc
         * is above it (or there is none). */
        it->off = it->bucket_n - 1;
        it->i = bucket_start(it->b) + it->off;
        return ps_post_iter_next_bucket(it);
    }
    it->off = k;
    it->i = bucket_start(it->b) + k;
    return iter_settle(it);
}

uint32_t ps_post_iter_nblocks(const ps_post_iter *it) {
    if (it->n == 0)
        return 0;
    if (it->fdata != NULL)
        return it->nbuckets;
    if (it->n <= PS_POST_SMALL)
        return 1;
    return 1 + (it->n - PS_POST_SMALL + PS_POST_BLOCK - 1) / PS_POST_BLOCK;
}

/* The doc id of entry idx of a realtime list, without moving. */
static inline uint32_t rt_doc_at(const ps_post_iter *it, uint32_t idx) {
    uint32_t b, off;
    ps_post_locate(idx, &b, &off);
    return it->dir[b].docs[off];
}

/* Fold one block's bounds (maxima, and per-class lengths when dlc is
 * there; without them every class gets the block's min_dl, which makes the
 * class bound bm25(max_tf, min_dl)). */
static inline void fold_block(const ps_block_meta *m, const ps_block_dl *dlc, ps_bounds *b) {
    double sc = bits_to_double(atomic_load_explicit(&m->max_score, memory_order_relaxed));
    uint32_t tf = atomic_load_explicit(&m->max_tf, memory_order_relaxed);
    if (sc > b->max_score)
        b->max_score = sc;
    if (tf > b->max_tf)
        b->max_tf = tf;
    if (dlc != NULL) {
        for (uint32_t c = 0; c < PS_TF_CLASSES; c++) {
            uint32_t dl = atomic_load_explicit(&dlc->min_dl[c], memory_order_relaxed);
            if (dl < b->min_dl[c])
                b->min_dl[c] = dl;
        }
    } else {
        uint32_t dl = atomic_load_explicit(&m->min_dl, memory_order_relaxed);
        for (uint32_t c = 0; c < PS_TF_CLASSES; c++)
            if (dl < b->min_dl[c])
                b->min_dl[c] = dl;
    }
}

int ps_post_iter_block_info(const ps_post_iter *it, uint32_t m, uint32_t *first, uint32_t *end,
                            uint32_t *last_doc, ps_bounds *bd) {
    if (it->fdata != NULL) {
        *first = m * PS_POST_BLOCK;
        *end = *first + PS_POST_BLOCK < it->n ? *first + PS_POST_BLOCK : it->n;
        if (it->fskip == NULL) {  /* one block: its last doc is in the buffer */
            *last_doc = it->docs[it->bucket_n - 1];
            return 0;
        }
        *last_doc = it->fskip[m].last_doc;
        fold_block(&it->fskip[m].meta, it->fdlc != NULL ? &it->fdlc[m] : NULL, bd);
        return 1;
    }
    if (m == 0) {
        *first = 0;
        *end = it->n < PS_POST_SMALL ? it->n : PS_POST_SMALL;
        *last_doc = rt_doc_at(it, *end - 1);
        return 0;
    }
    *first = PS_POST_SMALL + (m - 1) * PS_POST_BLOCK;
    *end = *first + PS_POST_BLOCK < it->n ? *first + PS_POST_BLOCK : it->n;
    *last_doc = rt_doc_at(it, *end - 1);
    uint32_t b, off;
    ps_post_locate(*first, &b, &off);
    const uint32_t *docs = it->dir[b].docs;
    fold_block(&ps_bucket_meta(docs, b)[off / PS_POST_BLOCK],
               &ps_bucket_dl(docs, b)[off / PS_POST_BLOCK], bd);
    return 1;
}

uint32_t ps_post_iter_goto(ps_post_iter *it, uint32_t idx) {
    if (it->fdata != NULL) {
        uint32_t blk = idx / PS_POST_BLOCK;
        if (blk != it->b)
            fiter_enter(it, blk);
        it->off = idx % PS_POST_BLOCK;
        it->i = idx;
        return iter_settle(it);
    }
    uint32_t b, off;
    ps_post_locate(idx, &b, &off);
    iter_enter_bucket(it, b, off);
    return iter_settle(it);
}

uint32_t ps_post_iter_count(const ps_post_iter *it) {
    if (it->n == 0 || it->fdata != NULL)
        return it->n;  /* a file list is all below its segment's limit */
    uint32_t b, off;
    ps_post_locate(it->n - 1, &b, &off);
    if (it->dir[b].docs[off] < it->limit)
        return it->n;
    /* Some entries belong to documents not yet committed: find the first
     * entry >= limit through the skip list. */
    uint32_t lo = 0, hi = it->nbuckets;
    while (lo + 1 < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (it->dir[mid].first_doc < it->limit)
            lo = mid;
        else
            hi = mid;
    }
    if (it->dir[lo].first_doc >= it->limit)
        return 0;
    uint32_t start = bucket_start(lo), cap = ps_post_bucket_cap(lo);
    uint32_t in_bucket = it->n - start < cap ? it->n - start : cap;
    return start + lower_bound(it->dir[lo].docs, 0, in_bucket, it->limit);
}

int ps_post_iter_bounds(const ps_post_iter *it, uint64_t end, ps_bounds *bd) {
    if (it->doc == PS_DOC_END)
        return 1;
    if (it->fdata != NULL) {
        if (it->fskip == NULL)
            return 0;
        for (uint32_t b = it->b; b < it->nbuckets; b++) {
            fold_block(&it->fskip[b].meta, it->fdlc != NULL ? &it->fdlc[b] : NULL, bd);
            if (it->fskip[b].last_doc >= end)
                break;
        }
        return 1;
    }
    uint32_t b = it->b, blk = it->off / PS_POST_BLOCK;
    for (;;) {
        const uint32_t *docs = it->dir[b].docs;
        const ps_block_meta *meta = ps_bucket_meta(docs, b);
        if (meta == NULL)
            return 0;
        const ps_block_dl *dlc = ps_bucket_dl(docs, b);
        uint32_t start = bucket_start(b), cap = ps_post_bucket_cap(b);
        uint32_t in_bucket = it->n - start < cap ? it->n - start : cap;
        uint32_t nblk = (in_bucket + PS_POST_BLOCK - 1) / PS_POST_BLOCK;
        for (; blk < nblk; blk++) {
            fold_block(&meta[blk], &dlc[blk], bd);
            uint32_t last = (blk + 1) * PS_POST_BLOCK;
            if (docs[(last < in_bucket ? last : in_bucket) - 1] >= end)
                return 1;
        }
        if (++b >= it->nbuckets)
            return 1;
        blk = 0;
    }
}
