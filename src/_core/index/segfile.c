/*
 * segfile.c - writing, verifying and reading immutable segment files. The
 * format, the deletion stamps and the thread rules are in segfile.h.
 *
 * Writer: one pass over the inputs' documents decides which survive
 * (not deleted at the snapshot) and gives them new ids in order; the
 * inputs' terms are gathered, sorted, and each distinct term's postings
 * are concatenated input by input through the id map (a doc id map is
 * monotonic, so the merged list stays sorted). Everything is written
 * sequentially through one buffered stream that also computes the CRC,
 * into a temporary file that is fsynced and renamed into place.
 *
 * Reader: mmap, checksum, bounds of every section and of every term's
 * postings and every key slot, then pointers into the mapping. Lookups are
 * a binary search over the sorted terms and a probe of the key table.
 */
#define _GNU_SOURCE
#include "segfile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <lz4.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "common/hash.h"

#define HEADER_SIZE 16u
#define TRAILER_SIZE 16u /* u32 format, u32 crc, magic */

static inline uint64_t bits_of(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

/* ---- buffered, checksummed output ---------------------------------------- */

typedef struct wout {
    int fd;
    uint64_t rate;          /* bytes per second, 0: unthrottled */
    struct timespec start;
    uint8_t *buf;
    size_t len, cap;
    uint64_t pos;   /* bytes written so far (file offset of the next byte) */
    uLong crc;
    int failed;     /* errno of the first failure */
} wout;

static double since(const struct timespec *t0) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Throttle: after each buffer, sleep until the average rate since the
 * start is back under w->rate (so compaction leaves the disk to ingestion
 * and queries). */
static void w_throttle(wout *w) {
    if (w->rate == 0)
        return;
    double ahead = (double)w->pos / (double)w->rate - since(&w->start);
    if (ahead > 0.0005) {
        struct timespec ts = {(time_t)ahead, (long)((ahead - (double)(time_t)ahead) * 1e9)};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
}

static void w_flush(wout *w) {
    size_t off = 0;
    while (off < w->len && !w->failed) {
        ssize_t r = write(w->fd, w->buf + off, w->len - off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            w->failed = errno;
            break;
        }
        off += (size_t)r;
    }
    w->len = 0;
    w_throttle(w);
}

static void w_bytes(wout *w, const void *p, size_t n) {
    if (w->failed || n == 0)
        return;
    w->crc = crc32_z(w->crc, p, n);
    w->pos += n;
    if (n >= w->cap) {
        w_flush(w);
        w->len = n;  /* write straight from p */
        uint8_t *save = w->buf;
        w->buf = (uint8_t *)p;
        w_flush(w);
        w->buf = save;
        return;
    }
    if (w->len + n > w->cap)
        w_flush(w);
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}

static void w_align8(wout *w) {
    static const uint8_t zero[8];
    if (w->pos % 8)
        w_bytes(w, zero, 8 - w->pos % 8);
}

/* ---- growable scratch ------------------------------------------------------ */

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (q == NULL)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

/* ---- inputs ---------------------------------------------------------------- */

uint32_t ps_src_docs(const ps_src *in) {
    return in->rt != NULL ? ps_seg_committed(in->rt) : in->f->ndocs;
}

static bool in_deleted(const ps_src *in, uint32_t d, uint64_t snap) {
    return in->rt != NULL ? ps_seg_is_deleted(in->rt, d, snap) : ps_fseg_is_deleted(in->f, d, snap);
}

/* One input's view of a document's stored fields. blob may point into
 * `scratch` (a decompressed file block), valid until the next call. */
typedef struct in_doc {
    const char *key, *blob;
    uint32_t key_len, blob_len;
    int64_t version;
    double score;
    uint32_t dl;
} in_doc;

typedef struct blob_cache {
    char *buf;
    int64_t block;  /* block held in buf, -1: none */
    size_t cap;
} blob_cache;

static int in_get(const ps_src *in, uint32_t d, in_doc *o, blob_cache *bc) {
    if (in->rt != NULL) {
        const ps_docrec *r = ps_seg_doc(in->rt, d);
        o->key = r->key;
        o->key_len = r->key_len;
        o->blob = r->blob;
        o->blob_len = r->blob_len;
        o->version = r->version;
        o->score = ps_seg_score(in->rt, d);
        o->dl = ps_seg_dl(in->rt, d);
        return 0;
    }
    const ps_fseg *f = in->f;
    o->key = ps_fseg_key(f, d, &o->key_len);
    o->version = f->version[d];
    o->score = f->score[d];
    o->dl = f->dl[d];
    if (grow((void **)&bc->buf, &bc->cap, f->max_store_raw + 1, 1) != 0)
        return -1;
    int64_t blk = d / PS_SF_STORE_BLOCK;
    const char *blob;
    int64_t n;
    if (bc->block != blk) {
        bc->block = -1;
        n = ps_fseg_blob(f, d, bc->buf, &blob);
        if (n >= 0 && blob == bc->buf)
            bc->block = blk;
    } else {
        /* The block is in buf already: find the document in it. */
        const uint32_t *lens = (const uint32_t *)bc->buf;
        uint32_t first = (uint32_t)blk * PS_SF_STORE_BLOCK;
        uint32_t nb = f->ndocs - first < PS_SF_STORE_BLOCK ? f->ndocs - first : PS_SF_STORE_BLOCK;
        size_t off = nb * sizeof(uint32_t);
        for (uint32_t i = first; i < d; i++)
            off += lens[i - first];
        blob = bc->buf + off;
        n = lens[d - first];
    }
    if (n < 0)
        return -1;
    o->blob = blob;
    o->blob_len = (uint32_t)n;
    return 0;
}

/* ---- terms to merge ------------------------------------------------------------ */

typedef struct tsrc {
    const char *bytes;
    uint32_t len;
    uint32_t input;
    const ps_posting *post;  /* realtime */
    uint64_t term;           /* file: term index */
} tsrc;

typedef struct tcollect {
    tsrc *v;
    size_t n, cap;
    uint32_t input;
    int failed;
} tcollect;

static void collect_rt_term(ps_term *t, void *arg) {
    tcollect *c = arg;
    if (c->failed)
        return;
    if (grow((void **)&c->v, &c->cap, c->n + 1, sizeof(tsrc)) != 0) {
        c->failed = 1;
        return;
    }
    c->v[c->n++] = (tsrc){.bytes = t->bytes, .len = t->len, .input = c->input, .post = &t->post};
}

static int cmp_bytes(const char *a, uint32_t al, const char *b, uint32_t bl) {
    int r = memcmp(a, b, al < bl ? al : bl);
    if (r != 0)
        return r;
    return al < bl ? -1 : al > bl;
}

static int cmp_tsrc(const void *x, const void *y) {
    const tsrc *a = x, *b = y;
    int r = cmp_bytes(a->bytes, a->len, b->bytes, b->len);
    if (r != 0)
        return r;
    return a->input < b->input ? -1 : a->input > b->input;
}

/* Open an iterator over term t's postings: the skip table (more than one
 * block), then the blocks. */
static void open_term(const ps_fseg *f, uint64_t t, ps_post_iter *it) {
    const ps_sf_termrec *tr = &f->terms[t];
    uint32_t nb = (tr->df + PS_POST_BLOCK - 1) / PS_POST_BLOCK;
    const uint8_t *p = f->post + tr->off;
    const ps_sf_skip *sk = NULL;
    const ps_block_dl *dlc = NULL;
    if (nb > 1) {
        sk = (const ps_sf_skip *)p;
        p += nb * sizeof(ps_sf_skip);
        if (f->format >= 2) {
            dlc = (const ps_block_dl *)p;
            p += nb * sizeof(ps_block_dl);
        }
    }
    ps_post_iter_open_file(it, p, sk, dlc, tr->df, f->ndocs);
}

/* ---- bit packing ------------------------------------------------------------ */

static inline uint32_t bits_for(uint32_t v) {
    return v == 0 ? 0 : 32u - (uint32_t)__builtin_clz(v);
}

/* Pack n values of `bits` bits, LSB first, into out (zeroed by caller);
 * returns bytes used. */
static size_t pack(uint8_t *out, const uint32_t *v, uint32_t n, uint32_t bits) {
    if (bits == 0)
        return 0;
    uint64_t pos = 0;
    for (uint32_t i = 0; i < n; i++, pos += bits) {
        uint64_t x = (uint64_t)v[i] << (pos % 8);
        uint8_t *p = out + pos / 8;
        for (uint32_t k = 0; k < 8 && x; k++, x >>= 8)
            p[k] |= (uint8_t)x;
    }
    return ((size_t)n * bits + 7) / 8;
}

/* ---- the writer ---------------------------------------------------------------- */

typedef struct keyslot_src {
    const char *key;
    uint32_t len;
} keyslot_src;

/* Find or place key in an open-addressing table under construction.
 * Returns the slot index; *found says whether it was there. */
static uint64_t slot_probe(const uint64_t *slots, uint64_t mask, const char *key, uint32_t len,
                           uint64_t h, const keyslot_src *refs, int *found) {
    uint64_t i = h & mask, tag = (h >> 32) << 32;
    for (;;) {
        uint64_t v = slots[i];
        if (v == 0) {
            *found = 0;
            return i;
        }
        uint32_t ref = (uint32_t)(v & 0xffffffffu) - 1;
        if ((v & ~0xffffffffull) == tag && refs[ref].len == len &&
            memcmp(refs[ref].key, key, len) == 0) {
            *found = 1;
            return i;
        }
        i = (i + 1) & mask;
    }
}

int ps_sf_write(const char *path, const ps_src *in, uint32_t n, uint64_t snap,
                uint64_t max_bytes_per_sec, uint32_t **remap, ps_sf_write_stats *st, char *err,
                size_t errlen) {
    int rc = -1;
    char *tmp = NULL;
    wout w = {.fd = -1, .rate = max_bytes_per_sec};
    clock_gettime(CLOCK_MONOTONIC, &w.start);
    uint32_t **map = calloc(n ? n : 1, sizeof(*map));
    uint32_t *lim = calloc(n ? n : 1, sizeof(*lim));
    double *score = NULL;
    uint32_t *dl = NULL;
    int64_t *version = NULL;
    keyslot_src *refs = NULL;
    int64_t *tombver = NULL;
    uint64_t *slots = NULL, *key_off = NULL, *store_off = NULL, *term_off = NULL;
    ps_sf_termrec *terms = NULL;
    tcollect tc = {0};
    blob_cache bc = {.block = -1};
    uint32_t *pdocs = NULL;
    uint16_t *ptfs = NULL;
    size_t pcap = 0, pcap2 = 0;
    uint8_t *raw = NULL, *comp = NULL;
    size_t raw_cap = 0, comp_cap = 0;
    ps_sf_skip *skip = NULL;
    size_t skip_cap = 0;
    ps_block_dl *skipdl = NULL;
    size_t skipdl_cap = 0;
    uint32_t *tmpv = NULL;
    size_t tmpv_cap = 0;
    memset(st, 0, sizeof(*st));
    if (map == NULL || lim == NULL)
        goto nomem;

    /* 1. Which documents survive, and their new ids. */
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        lim[i] = ps_src_docs(&in[i]);
        map[i] = malloc((lim[i] ? lim[i] : 1) * sizeof(uint32_t));
        if (map[i] == NULL)
            goto nomem;
        for (uint32_t d = 0; d < lim[i]; d++) {
            if (in_deleted(&in[i], d, snap)) {
                map[i][d] = PS_DOC_NONE;
                st->dropped++;
            } else {
                map[i][d] = (uint32_t)total++;
            }
        }
    }
    if (total >= (1u << 31)) {
        ps_errf(err, errlen, "segment file: %llu documents is more than one file holds",
                (unsigned long long)total);
        goto out;
    }
    const uint32_t N = (uint32_t)total;
    score = malloc((N + 1) * sizeof(*score));
    dl = malloc((N + 1) * sizeof(*dl));
    version = malloc((N + 1) * sizeof(*version));
    refs = malloc((N + 1) * sizeof(*refs));
    if (!score || !dl || !version || !refs)
        goto nomem;
    uint64_t total_dl = 0;
    for (uint32_t i = 0; i < n; i++) {
        for (uint32_t d = 0; d < lim[i]; d++) {
            uint32_t nd = map[i][d];
            if (nd == PS_DOC_NONE)
                continue;
            /* key, version, score, dl (blobs are read while writing the store) */
            in_doc o;
            if (in[i].rt != NULL) {
                const ps_docrec *r = ps_seg_doc(in[i].rt, d);
                o.key = r->key;
                o.key_len = r->key_len;
                o.version = r->version;
                o.score = ps_seg_score(in[i].rt, d);
                o.dl = ps_seg_dl(in[i].rt, d);
            } else {
                o.key = ps_fseg_key(in[i].f, d, &o.key_len);
                o.version = in[i].f->version[d];
                o.score = in[i].f->score[d];
                o.dl = in[i].f->dl[d];
            }
            score[nd] = o.score;
            dl[nd] = o.dl;
            version[nd] = o.version;
            refs[nd] = (keyslot_src){o.key, o.key_len};
            total_dl += o.dl;
        }
    }

    /* 2. The key table: documents, then tombstones of keys with none. */
    uint64_t ntomb_cap = 0;
    for (uint32_t i = 0; i < n; i++)
        ntomb_cap += in[i].rt != NULL ? in[i].rt->key_count : in[i].f->ntombs;
    uint64_t nslots = 16;
    while (nslots < 2 * ((uint64_t)N + ntomb_cap))
        nslots <<= 1;
    slots = calloc(nslots, sizeof(*slots));
    refs = realloc(refs, (N + ntomb_cap + 1) * sizeof(*refs));
    tombver = malloc((ntomb_cap + 1) * sizeof(*tombver));
    if (slots == NULL || refs == NULL || tombver == NULL)
        goto nomem;
    for (uint32_t d = 0; d < N; d++) {
        int found;
        uint64_t h = ps_hash64(refs[d].key, refs[d].len);
        uint64_t s = slot_probe(slots, nslots - 1, refs[d].key, refs[d].len, h, refs, &found);
        if (found) {
            ps_errf(err, errlen, "segment file: key %.*s has two live documents",
                    (int)(refs[d].len > 64 ? 64 : refs[d].len), refs[d].key);
            goto out;
        }
        slots[s] = ((h >> 32) << 32) | ((uint64_t)d + 1);
    }
    uint32_t T = 0;
    for (uint32_t ii = n; ii-- > 0;) {  /* newest input first: its tombstone wins */
        const ps_src *x = &in[ii];
        uint64_t count = x->rt != NULL ? x->rt->key_mask + 1 : x->f->ntombs;
        for (uint64_t j = 0; j < count; j++) {
            const char *key;
            uint32_t len;
            int64_t tv;
            if (x->rt != NULL) {
                const ps_keyent *e = x->rt->keys[j];
                if (e == NULL || e->tomb == INT64_MIN)
                    continue;
                key = e->key;
                len = e->key_len;
                tv = e->tomb > e->floor ? e->tomb : e->floor;  /* see ps_seg_lookup */
            } else {
                key = ps_fseg_key(x->f, x->f->ndocs + (uint32_t)j, &len);
                tv = x->f->tomb_version[j];
            }
            int found;
            uint64_t h = ps_hash64(key, len);
            uint64_t s = slot_probe(slots, nslots - 1, key, len, h, refs, &found);
            if (found) {
                uint32_t ref = (uint32_t)(slots[s] & 0xffffffffu) - 1;
                if (ref >= N && tv > tombver[ref - N])
                    tombver[ref - N] = tv;
                continue;
            }
            refs[N + T] = (keyslot_src){key, len};
            tombver[T] = tv;
            slots[s] = ((h >> 32) << 32) | ((uint64_t)N + T + 1);
            T++;
        }
    }
    st->docs = N;
    st->tombs = T;

    /* 3. Open the temporary file. */
    size_t plen = strlen(path);
    tmp = malloc(plen + 5);
    if (tmp == NULL)
        goto nomem;
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    w.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w.fd < 0) {
        ps_errf(err, errlen, "segment file: cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    w.cap = 1 << 20;
    w.buf = malloc(w.cap);
    if (w.buf == NULL)
        goto nomem;
    w.crc = crc32_z(0L, Z_NULL, 0);

    ps_sf_footer ft = {0};
    ft.ndocs = N;
    ft.ntombs = T;
    ft.nslots = nslots;
    ft.total_dl = total_dl;
    uint32_t hdr[2] = {PS_SF_FORMAT, 0};
    w_bytes(&w, PS_SF_MAGIC, 8);
    w_bytes(&w, hdr, sizeof(hdr));

    /* docs */
    ft.off_score = w.pos;
    w_bytes(&w, score, (size_t)N * sizeof(*score));
    w_align8(&w);
    ft.off_dl = w.pos;
    w_bytes(&w, dl, (size_t)N * sizeof(*dl));
    w_align8(&w);
    ft.off_version = w.pos;
    w_bytes(&w, version, (size_t)N * sizeof(*version));

    /* keys */
    key_off = malloc(((size_t)N + T + 1) * sizeof(*key_off));
    if (key_off == NULL)
        goto nomem;
    key_off[0] = 0;
    for (uint32_t r = 0; r < N + T; r++)
        key_off[r + 1] = key_off[r] + refs[r].len;
    w_align8(&w);
    ft.off_keyoff = w.pos;
    w_bytes(&w, key_off, ((size_t)N + T + 1) * sizeof(*key_off));
    ft.off_keybytes = w.pos;
    for (uint32_t r = 0; r < N + T; r++)
        w_bytes(&w, refs[r].key, refs[r].len);
    w_align8(&w);
    ft.off_tombver = w.pos;
    w_bytes(&w, tombver, (size_t)T * sizeof(*tombver));
    w_align8(&w);
    ft.off_slots = w.pos;
    w_bytes(&w, slots, nslots * sizeof(*slots));

    /* store: blocks of PS_SF_STORE_BLOCK documents, in new id order */
    uint64_t nstore = ((uint64_t)N + PS_SF_STORE_BLOCK - 1) / PS_SF_STORE_BLOCK;
    store_off = malloc((nstore + 1) * sizeof(*store_off));
    if (store_off == NULL)
        goto nomem;
    w_align8(&w);
    ft.off_store = w.pos;
    {
        uint32_t i = 0, d = 0, nd = 0;
        for (uint64_t b = 0; b < nstore; b++) {
            uint32_t nb = N - nd < PS_SF_STORE_BLOCK ? N - nd : PS_SF_STORE_BLOCK;
            size_t rawlen = nb * sizeof(uint32_t);
            /* gather the block's documents (blobs of file inputs are read
             * one block at a time, so each source block is decoded once) */
            for (uint32_t k = 0; k < nb; k++) {
                while (i < n && (d >= lim[i] || map[i][d] == PS_DOC_NONE)) {
                    if (d >= lim[i]) {
                        i++;
                        d = 0;
                    } else {
                        d++;
                    }
                }
                if (grow((void **)&raw, &raw_cap, rawlen + 1, 1) != 0)
                    goto nomem;
                in_doc o;
                if (in_get(&in[i], d, &o, &bc) != 0) {
                    ps_errf(err, errlen, "segment file: a stored block of an input does not decode");
                    goto out;
                }
                if (grow((void **)&raw, &raw_cap, rawlen + o.blob_len + 1, 1) != 0)
                    goto nomem;
                ((uint32_t *)raw)[k] = o.blob_len;  /* raw is malloc'd: aligned */
                memcpy(raw + rawlen, o.blob, o.blob_len);
                rawlen += o.blob_len;
                d++;
                nd++;
            }
            if (rawlen > 0x7fffffffu) {
                ps_errf(err, errlen, "segment file: a block of %u documents holds more than 2 GB",
                        nb);
                goto out;
            }
            int bound = LZ4_compressBound((int)rawlen);
            if (grow((void **)&comp, &comp_cap, (size_t)bound + 1, 1) != 0)
                goto nomem;
            int clen = LZ4_compress_default((const char *)raw, (char *)comp, (int)rawlen, bound);
            uint32_t head[2] = {(uint32_t)rawlen, 0};
            store_off[b] = w.pos - ft.off_store;
            if (clen > 0 && (size_t)clen < rawlen) {
                head[1] = (uint32_t)clen;
                w_bytes(&w, head, sizeof(head));
                w_bytes(&w, comp, (size_t)clen);
            } else {
                w_bytes(&w, head, sizeof(head));
                w_bytes(&w, raw, rawlen);
            }
        }
        store_off[nstore] = w.pos - ft.off_store;
    }
    w_align8(&w);
    ft.off_storeoff = w.pos;
    ft.nstore = nstore;
    w_bytes(&w, store_off, (nstore + 1) * sizeof(*store_off));

    /* postings: gather every input's terms, sort, merge */
    for (uint32_t i = 0; i < n; i++) {
        tc.input = i;
        if (in[i].rt != NULL) {
            for (uint32_t sh = 0; sh < in[i].rt->nshards; sh++)
                ps_dict_visit(&in[i].rt->shards[sh].dict, collect_rt_term, &tc);
        } else {
            const ps_fseg *f = in[i].f;
            if (grow((void **)&tc.v, &tc.cap, tc.n + f->nterms, sizeof(tsrc)) != 0)
                goto nomem;
            for (uint64_t t = 0; t < f->nterms; t++)
                tc.v[tc.n++] = (tsrc){.bytes = f->term_bytes + f->term_off[t],
                                      .len = (uint32_t)(f->term_off[t + 1] - f->term_off[t]),
                                      .input = i, .term = t};
        }
        if (tc.failed)
            goto nomem;
    }
    if (tc.n > 1)  /* qsort(NULL, 0, ...) is undefined */
        qsort(tc.v, tc.n, sizeof(tsrc), cmp_tsrc);
    w_align8(&w);
    ft.off_post = w.pos;
    uint64_t nterms = 0, postings = 0;
    size_t terms_cap = 0;
    ps_post_iter it;
    for (size_t a = 0; a < tc.n;) {
        size_t z = a + 1;
        while (z < tc.n && cmp_bytes(tc.v[z].bytes, tc.v[z].len, tc.v[a].bytes, tc.v[a].len) == 0)
            z++;
        /* concatenate the inputs' postings through their id maps */
        uint32_t df = 0;
        for (size_t k = a; k < z; k++) {
            const tsrc *t = &tc.v[k];
            if (t->post != NULL) {
                ps_post_iter_open(&it, t->post, lim[t->input]);
            } else {
                open_term(in[t->input].f, t->term, &it);
            }
            const uint32_t *m = map[t->input];
            for (uint32_t d = it.doc; d != PS_DOC_END; d = ps_post_iter_next(&it)) {
                uint32_t nd = m[d];
                if (nd == PS_DOC_NONE)
                    continue;
                if (grow((void **)&pdocs, &pcap, (size_t)df + 1, sizeof(*pdocs)) != 0 ||
                    grow((void **)&ptfs, &pcap2, (size_t)df + 1, sizeof(*ptfs)) != 0)
                    goto nomem;
                pdocs[df] = nd;
                ptfs[df] = (uint16_t)ps_post_iter_tf(&it);
                df++;
            }
        }
        if (df > 0) {
            if (grow((void **)&terms, &terms_cap, nterms + 1, sizeof(*terms)) != 0)
                goto nomem;
            w_align8(&w);
            terms[nterms] = (ps_sf_termrec){.off = w.pos - ft.off_post, .df = df};
            uint32_t nb = (df + PS_POST_BLOCK - 1) / PS_POST_BLOCK;
            if (grow((void **)&skip, &skip_cap, nb, sizeof(*skip)) != 0 ||
                grow((void **)&skipdl, &skipdl_cap, nb, sizeof(*skipdl)) != 0 ||
                grow((void **)&tmpv, &tmpv_cap, 2 * PS_POST_BLOCK, sizeof(*tmpv)) != 0 ||
                grow((void **)&comp, &comp_cap, 2 + 2 * PS_POST_BLOCK * 4 + 16, 1) != 0)
                goto nomem;
            /* encode the blocks into `raw` first: the skip table precedes them */
            size_t blen = 0;
            uint32_t prev = UINT32_MAX;
            for (uint32_t b = 0; b < nb; b++) {
                uint32_t s0 = b * PS_POST_BLOCK, cnt = df - s0 < PS_POST_BLOCK ? df - s0 : PS_POST_BLOCK;
                uint32_t maxgap = 0, maxtf = 0, mindl = UINT32_MAX;
                uint32_t cls[PS_TF_CLASSES] = {UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX};
                double maxsc = -INFINITY;
                for (uint32_t k = 0; k < cnt; k++) {
                    uint32_t doc = pdocs[s0 + k];
                    uint32_t gap = doc - prev - 1;  /* prev UINT32_MAX: doc */
                    prev = doc;
                    tmpv[k] = gap;
                    if (gap > maxgap)
                        maxgap = gap;
                    uint32_t tf = ptfs[s0 + k];
                    tmpv[PS_POST_BLOCK + k] = tf - 1;
                    if (tf > maxtf)
                        maxtf = tf;
                    if (dl[doc] < mindl)
                        mindl = dl[doc];
                    if (dl[doc] < cls[ps_tf_class(tf)])
                        cls[ps_tf_class(tf)] = dl[doc];
                    if (score[doc] > maxsc)
                        maxsc = score[doc];
                }
                uint32_t dbits = bits_for(maxgap), tbits = bits_for(maxtf - 1);
                size_t need = 2 + ((size_t)cnt * dbits + 7) / 8 + ((size_t)cnt * tbits + 7) / 8;
                if (grow((void **)&raw, &raw_cap, blen + need + 8, 1) != 0)
                    goto nomem;
                uint8_t *o = raw + blen;
                memset(o, 0, need);
                o[0] = (uint8_t)dbits;
                o[1] = (uint8_t)tbits;
                size_t used = 2 + pack(o + 2, tmpv, cnt, dbits);
                used += pack(o + used, tmpv + PS_POST_BLOCK, cnt, tbits);
                skip[b].off = (uint32_t)blen;
                skip[b].last_doc = prev;
                atomic_init(&skip[b].meta.max_score, bits_of(maxsc));
                atomic_init(&skip[b].meta.min_dl, mindl);
                atomic_init(&skip[b].meta.max_tf, maxtf);
                for (uint32_t c = 0; c < PS_TF_CLASSES; c++)
                    atomic_init(&skipdl[b].min_dl[c], cls[c]);
                blen += used;
            }
            if (nb > 1) {
                w_bytes(&w, skip, nb * sizeof(*skip));
                w_bytes(&w, skipdl, nb * sizeof(*skipdl));
            }
            w_bytes(&w, raw, blen);
            nterms++;
            postings += df;
            /* keep the term in tc.v[0..nterms): nterms - 1 <= a, a slot
             * already consumed */
            tc.v[nterms - 1] = tc.v[a];
        }
        a = z;
    }
    {
        static const uint8_t pad[8];
        w_bytes(&w, pad, sizeof(pad));
    }
    ft.len_post = w.pos - ft.off_post;
    ft.nterms = nterms;
    ft.postings = postings;
    st->terms = nterms;
    st->postings = postings;

    /* terms: the dictionary (tc.v[0..nterms) now holds the kept terms in order) */
    free(term_off);
    term_off = malloc((nterms + 1) * sizeof(*term_off));
    if (term_off == NULL)
        goto nomem;
    term_off[0] = 0;
    for (uint64_t t = 0; t < nterms; t++)
        term_off[t + 1] = term_off[t] + tc.v[t].len;
    w_align8(&w);
    ft.off_termoff = w.pos;
    w_bytes(&w, term_off, (nterms + 1) * sizeof(*term_off));
    ft.off_termbytes = w.pos;
    for (uint64_t t = 0; t < nterms; t++)
        w_bytes(&w, tc.v[t].bytes, tc.v[t].len);
    w_align8(&w);
    ft.off_termrec = w.pos;
    w_bytes(&w, terms, nterms * sizeof(*terms));

    /* footer and trailer */
    w_align8(&w);
    w_bytes(&w, &ft, sizeof(ft));
    uint32_t trailer[2] = {PS_SF_FORMAT, (uint32_t)w.crc};
    w_bytes(&w, trailer, sizeof(trailer));
    w_bytes(&w, PS_SF_MAGIC, 8);
    w_flush(&w);
    st->bytes = w.pos;
    if (w.failed) {
        ps_errf(err, errlen, "segment file: writing %s: %s", tmp, strerror(w.failed));
        goto out;
    }
    if (fsync(w.fd) != 0) {
        ps_errf(err, errlen, "segment file: fsync %s: %s", tmp, strerror(errno));
        goto out;
    }
    close(w.fd);
    w.fd = -1;
    if (rename(tmp, path) != 0) {
        ps_errf(err, errlen, "segment file: rename %s: %s", tmp, strerror(errno));
        goto out;
    }
    {
        char *dcopy = strdup(path);
        if (dcopy != NULL) {
            int dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                fsync(dfd);
                close(dfd);
            }
            free(dcopy);
        }
    }
    if (remap != NULL) {
        for (uint32_t i = 0; i < n; i++) {
            remap[i] = map[i];
            map[i] = NULL;
        }
    }
    rc = 0;
    goto out;
nomem:
    ps_errf(err, errlen, "segment file: out of memory");
out:
    if (w.fd >= 0) {
        close(w.fd);
        unlink(tmp);
    } else if (rc != 0 && tmp != NULL) {
        unlink(tmp);
    }
    free(w.buf);
    free(tmp);
    for (uint32_t i = 0; map != NULL && i < n; i++)
        free(map[i]);
    free(map);
    free(lim);
    free(score);
    free(dl);
    free(version);
    free(refs);
    free(tombver);
    free(slots);
    free(key_off);
    free(store_off);
    free(term_off);
    free(terms);
    free(tc.v);
    free(bc.buf);
    free(pdocs);
    free(ptfs);
    free(raw);
    free(comp);
    free(skip);
    free(skipdl);
    free(tmpv);
    return rc;
}

/* ---- the reader ------------------------------------------------------------------ */

static int bad(char *err, size_t errlen, const char *path, const char *what) {
    ps_errf(err, errlen, "segment file %s is damaged: %s", path, what);
    return -1;
}

/* Is [off, off + len) inside [lo, hi), 8-aligned at off? */
static bool span_ok(uint64_t off, uint64_t len, uint64_t lo, uint64_t hi) {
    return off % 8 == 0 && off >= lo && off <= hi && len <= hi - off;
}

static int verify(ps_fseg *f, char *err, size_t errlen) {
    const char *p = f->path;
    const uint8_t *m = f->map;
    size_t size = f->size;
    if (size < HEADER_SIZE + sizeof(ps_sf_footer) + TRAILER_SIZE)
        return bad(err, errlen, p, "too short to be a segment file (truncated?)");
    if (memcmp(m, PS_SF_MAGIC, 8) != 0)
        return bad(err, errlen, p, "not a segment file (bad magic at the start)");
    if (memcmp(m + size - 8, PS_SF_MAGIC, 8) != 0)
        return bad(err, errlen, p, "no end marker (truncated?)");
    uint32_t trailer[2];
    memcpy(trailer, m + size - TRAILER_SIZE, sizeof(trailer));
    uint32_t hdr_format;
    memcpy(&hdr_format, m + 8, sizeof(hdr_format));
    if (trailer[0] != hdr_format || hdr_format < PS_SF_FORMAT_MIN || hdr_format > PS_SF_FORMAT) {
        ps_errf(err, errlen, "segment file %s has format %u; this build reads formats %u to %u",
                p, trailer[0], PS_SF_FORMAT_MIN, PS_SF_FORMAT);
        return -1;
    }
    f->format = hdr_format;
    /* the checksum covers every byte before the trailer */
    uint32_t crc = (uint32_t)crc32_z(crc32_z(0L, Z_NULL, 0), m, size - TRAILER_SIZE);
    if (crc != trailer[1]) {
        ps_errf(err, errlen, "segment file %s is damaged: checksum %08x, expected %08x", p, crc,
                trailer[1]);
        return -1;
    }
    return 0;
}

ps_fseg *ps_fseg_open(const char *path, char *err, size_t errlen) {
    ps_fseg *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        ps_errf(err, errlen, "out of memory");
        return NULL;
    }
    f->fd = -1;
    f->path = strdup(path);
    if (f->path == NULL) {
        ps_errf(err, errlen, "out of memory");
        goto fail;
    }
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        ps_errf(err, errlen, "segment file %s: %s", path, strerror(errno));
        goto fail;
    }
    struct stat sb;
    if (fstat(f->fd, &sb) != 0) {
        ps_errf(err, errlen, "segment file %s: %s", path, strerror(errno));
        goto fail;
    }
    f->size = (size_t)sb.st_size;
    if (f->size < HEADER_SIZE + sizeof(ps_sf_footer) + TRAILER_SIZE) {
        bad(err, errlen, path, "too short to be a segment file (truncated?)");
        goto fail;
    }
    void *m = mmap(NULL, f->size, PROT_READ, MAP_SHARED, f->fd, 0);
    if (m == MAP_FAILED) {
        ps_errf(err, errlen, "segment file %s: mmap: %s", path, strerror(errno));
        goto fail;
    }
    f->map = m;
    if (verify(f, err, errlen) != 0)
        goto fail;
    const uint8_t *b = f->map;
    const size_t size = f->size;
    ps_sf_footer ft;
    const uint64_t fpos = size - TRAILER_SIZE - sizeof(ft);
    memcpy(&ft, b + fpos, sizeof(ft));
    /* every section inside the file, in order, 8-aligned */
    const uint64_t N = ft.ndocs, T = ft.ntombs;
    if (N >= (1u << 31) || T >= (1u << 31) || N + T >= (1u << 31) ||
        ft.nslots == 0 || (ft.nslots & (ft.nslots - 1)) != 0 || ft.nslots < N + T ||
        ft.nstore != (N + PS_SF_STORE_BLOCK - 1) / PS_SF_STORE_BLOCK ||
        !span_ok(ft.off_score, N * 8, HEADER_SIZE, fpos) ||
        !span_ok(ft.off_dl, N * 4, HEADER_SIZE, fpos) ||
        !span_ok(ft.off_version, N * 8, HEADER_SIZE, fpos) ||
        !span_ok(ft.off_keyoff, (N + T + 1) * 8, HEADER_SIZE, fpos) ||
        !span_ok(ft.off_tombver, T * 8, HEADER_SIZE, fpos) ||
        ft.nslots > fpos / 8 || !span_ok(ft.off_slots, ft.nslots * 8, HEADER_SIZE, fpos) ||
        ft.nstore > fpos / 8 || !span_ok(ft.off_storeoff, (ft.nstore + 1) * 8, HEADER_SIZE, fpos) ||
        !span_ok(ft.off_store, 0, HEADER_SIZE, fpos) ||
        !span_ok(ft.off_post, ft.len_post, HEADER_SIZE, fpos) || ft.len_post < 8 ||
        ft.nterms > fpos / 8 ||
        !span_ok(ft.off_termoff, (ft.nterms + 1) * 8, HEADER_SIZE, fpos) ||
        !span_ok(ft.off_termrec, ft.nterms * sizeof(ps_sf_termrec), HEADER_SIZE, fpos) ||
        ft.off_keybytes > fpos || ft.off_termbytes > fpos) {
        bad(err, errlen, path, "a section lies outside the file");
        goto fail;
    }
    f->ndocs = (uint32_t)N;
    f->ntombs = (uint32_t)T;
    f->nterms = ft.nterms;
    f->nslots = ft.nslots;
    f->nstore = ft.nstore;
    f->postings = ft.postings;
    f->total_dl = ft.total_dl;
    f->score = (const double *)(b + ft.off_score);
    f->dl = (const uint32_t *)(b + ft.off_dl);
    f->version = (const int64_t *)(b + ft.off_version);
    f->key_off = (const uint64_t *)(b + ft.off_keyoff);
    f->key_bytes = (const char *)(b + ft.off_keybytes);
    f->tomb_version = (const int64_t *)(b + ft.off_tombver);
    f->slots = (const uint64_t *)(b + ft.off_slots);
    f->store = b + ft.off_store;
    f->store_off = (const uint64_t *)(b + ft.off_storeoff);
    f->post = b + ft.off_post;
    f->term_off = (const uint64_t *)(b + ft.off_termoff);
    f->term_bytes = (const char *)(b + ft.off_termbytes);
    f->terms = (const ps_sf_termrec *)(b + ft.off_termrec);
    /* keys, slots, store blocks, terms and their postings: in bounds */
    const uint64_t key_room = fpos - ft.off_keybytes;
    for (uint64_t r = 0; r < N + T; r++)
        if (f->key_off[r + 1] < f->key_off[r] || f->key_off[r + 1] > key_room ||
            f->key_off[r + 1] - f->key_off[r] > PS_KEY_MAX) {
            bad(err, errlen, path, "a key lies outside the file");
            goto fail;
        }
    for (uint64_t s = 0; s < ft.nslots; s++) {
        uint64_t v = f->slots[s];
        if (v != 0 && ((v & 0xffffffffu) == 0 || (v & 0xffffffffu) > N + T)) {
            bad(err, errlen, path, "a key slot points nowhere");
            goto fail;
        }
    }
    const uint64_t store_room = fpos - ft.off_store;
    for (uint64_t s = 0; s < ft.nstore; s++) {
        uint64_t a = f->store_off[s], z = f->store_off[s + 1];
        uint32_t head[2];
        if (z < a || z > store_room || z - a < 8) {
            bad(err, errlen, path, "a store block lies outside the file");
            goto fail;
        }
        memcpy(head, f->store + a, sizeof(head));
        uint64_t body = z - a - 8;
        uint32_t nb = (uint32_t)(N - s * PS_SF_STORE_BLOCK < PS_SF_STORE_BLOCK
                                     ? N - s * PS_SF_STORE_BLOCK : PS_SF_STORE_BLOCK);
        if ((head[1] == 0 ? body != head[0] : body != head[1]) || head[0] < nb * 4u) {
            bad(err, errlen, path, "a store block has the wrong size");
            goto fail;
        }
        if (head[0] > f->max_store_raw)
            f->max_store_raw = head[0];
    }
    const uint64_t term_room = fpos - ft.off_termbytes;
    uint64_t post_total = 0;
    for (uint64_t t = 0; t < ft.nterms; t++) {
        uint64_t a = f->term_off[t], z = f->term_off[t + 1];
        const ps_sf_termrec *tr = &f->terms[t];
        if (z < a || z > term_room || z - a == 0 || z - a > PS_TERM_MAX) {
            bad(err, errlen, path, "a term lies outside the file");
            goto fail;
        }
        uint64_t nb = ((uint64_t)tr->df + PS_POST_BLOCK - 1) / PS_POST_BLOCK;
        /* the smallest possible encoding: 2 bytes a block */
        const uint64_t skip_bytes =
            nb > 1 ? nb * (sizeof(ps_sf_skip) + (f->format >= 2 ? sizeof(ps_block_dl) : 0)) : 0;
        uint64_t least = skip_bytes + 2 * nb;
        if (tr->df == 0 || tr->df > N || tr->off % 8 != 0 || tr->off > ft.len_post - 8 ||
            least > ft.len_post - 8 - tr->off) {
            bad(err, errlen, path, "a posting list lies outside the file");
            goto fail;
        }
        if (nb > 1) {
            const ps_sf_skip *sk = (const ps_sf_skip *)(f->post + tr->off);
            uint64_t room = ft.len_post - 8 - tr->off - skip_bytes;
            for (uint64_t k = 0; k < nb; k++)
                if (sk[k].off > room || sk[k].last_doc >= N) {
                    bad(err, errlen, path, "a posting block lies outside the file");
                    goto fail;
                }
        }
        post_total += tr->df;
    }
    if (post_total != ft.postings) {
        bad(err, errlen, path, "posting counts disagree");
        goto fail;
    }
    if (f->max_store_raw == 0)
        f->max_store_raw = 4;
    f->deleted = calloc(N ? N : 1, sizeof(*f->deleted));
    if (f->deleted == NULL) {
        ps_errf(err, errlen, "out of memory");
        goto fail;
    }
    return f;
fail:
    ps_fseg_close(f);
    return NULL;
}

void ps_fseg_close(ps_fseg *f) {
    if (f == NULL)
        return;
    if (f->map != NULL)
        munmap((void *)f->map, f->size);
    if (f->fd >= 0)
        close(f->fd);
    free(f->deleted);
    free(f->path);
    free(f);
}

/* Index of the term, or -1. */
static int64_t find_term(const ps_fseg *f, const char *term, uint32_t len) {
    uint64_t lo = 0, hi = f->nterms;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        const char *t = f->term_bytes + f->term_off[mid];
        uint32_t tl = (uint32_t)(f->term_off[mid + 1] - f->term_off[mid]);
        int c = cmp_bytes(t, tl, term, len);
        if (c == 0)
            return (int64_t)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

int ps_fseg_postings(const ps_fseg *f, const char *term, uint32_t len, ps_post_iter *it) {
    int64_t t = find_term(f, term, len);
    if (t < 0)
        return -1;
    open_term(f, (uint64_t)t, it);
    return 0;
}

uint32_t ps_fseg_df(const ps_fseg *f, const char *term, uint32_t len) {
    int64_t t = find_term(f, term, len);
    return t < 0 ? 0 : f->terms[t].df;
}

int64_t ps_fseg_blob(const ps_fseg *f, uint32_t doc, char *buf, const char **blob) {
    uint64_t blk = doc / PS_SF_STORE_BLOCK;
    const uint8_t *p = f->store + f->store_off[blk];
    uint32_t head[2];
    memcpy(head, p, sizeof(head));
    const char *raw;
    if (head[1] == 0) {
        raw = (const char *)p + 8;
    } else {
        int got = LZ4_decompress_safe((const char *)p + 8, buf, (int)head[1], (int)head[0]);
        if (got != (int)head[0])
            return -1;
        raw = buf;
    }
    uint32_t first = (uint32_t)blk * PS_SF_STORE_BLOCK;
    uint32_t nb = f->ndocs - first < PS_SF_STORE_BLOCK ? f->ndocs - first : PS_SF_STORE_BLOCK;
    uint64_t off = (uint64_t)nb * 4;
    uint32_t lens[PS_SF_STORE_BLOCK];
    memcpy(lens, raw, nb * sizeof(uint32_t));
    for (uint32_t i = first; i < doc; i++)
        off += lens[i - first];
    if (off + lens[doc - first] > head[0])
        return -1;
    *blob = raw + off;
    return lens[doc - first];
}

/* The key's ref (doc or N + tomb), or -1. */
static int64_t find_key(const ps_fseg *f, const char *key, uint32_t len, uint64_t h) {
    uint64_t mask = f->nslots - 1, i = h & mask, tag = (h >> 32) << 32;
    for (uint64_t probes = 0; probes <= mask; probes++) {
        uint64_t v = f->slots[i];
        if (v == 0)
            return -1;
        if ((v & ~0xffffffffull) == tag) {
            uint32_t ref = (uint32_t)(v & 0xffffffffu) - 1, kl;
            const char *k = ps_fseg_key(f, ref, &kl);
            if (kl == len && memcmp(k, key, len) == 0)
                return ref;
        }
        i = (i + 1) & mask;
    }
    return -1;
}

void ps_fseg_lookup(ps_fseg *f, const char *key, uint32_t len, uint64_t hash,
                    ps_older_hit *out) {
    memset(out, 0, sizeof(*out));
    out->version = out->tomb = INT64_MIN;
    int64_t ref = find_key(f, key, len, hash);
    if (ref < 0)
        return;
    out->found = 1;
    if (ref >= f->ndocs) {
        out->tomb = f->tomb_version[ref - f->ndocs];
        return;
    }
    out->version = f->version[ref];
    if (atomic_load_explicit(&f->deleted[ref], memory_order_relaxed) == 0) {
        out->slot = &f->deleted[ref];
        out->deleted_count = &f->deleted_count;
    }
}

int64_t ps_fseg_get(ps_fseg *f, const char *key, uint32_t len, uint64_t snap) {
    int64_t ref = find_key(f, key, len, ps_hash64(key, len));
    if (ref < 0 || ref >= f->ndocs || ps_fseg_is_deleted(f, (uint32_t)ref, snap))
        return -1;
    return ref;
}

uint64_t ps_sf_shadow(ps_fseg *const *segs, uint32_t n) {
    uint64_t deleted = 0;
    for (uint32_t i = n; i-- > 1;) {
        const ps_fseg *nf = segs[i];
        for (uint64_t s = 0; s < nf->nslots; s++) {
            uint64_t v = nf->slots[s];
            if (v == 0)
                continue;
            uint32_t len;
            const char *key = ps_fseg_key(nf, (uint32_t)(v & 0xffffffffu) - 1, &len);
            uint64_t h = ps_hash64(key, len);
            for (uint32_t j = i; j-- > 0;) {
                int64_t ref = find_key(segs[j], key, len, h);
                if (ref < 0)
                    continue;
                if (ref < segs[j]->ndocs &&
                    atomic_load_explicit(&segs[j]->deleted[ref], memory_order_relaxed) == 0) {
                    atomic_store_explicit(&segs[j]->deleted[ref], 1, memory_order_relaxed);
                    atomic_fetch_add_explicit(&segs[j]->deleted_count, 1, memory_order_relaxed);
                    deleted++;
                }
                break;
            }
        }
    }
    return deleted;
}

uint64_t ps_sf_carry_deletes(const ps_src *in, uint32_t n, uint32_t *const *remap,
                             ps_fseg *out) {
    uint64_t carried = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t lim = ps_src_docs(&in[i]);
        for (uint32_t d = 0; d < lim; d++) {
            uint32_t nd = remap[i][d];
            if (nd == PS_DOC_NONE || nd >= out->ndocs)
                continue;
            uint64_t at;
            if (in[i].rt != NULL) {
                ps_docchunk *c = in[i].rt->chunks[d / PS_DOCS_PER_CHUNK];
                at = atomic_load_explicit(&c->deleted_at[d % PS_DOCS_PER_CHUNK],
                                          memory_order_relaxed);
            } else {
                at = atomic_load_explicit(&in[i].f->deleted[d], memory_order_relaxed);
            }
            if (at != 0 && atomic_load_explicit(&out->deleted[nd], memory_order_relaxed) == 0) {
                atomic_store_explicit(&out->deleted[nd], at, memory_order_relaxed);
                atomic_fetch_add_explicit(&out->deleted_count, 1, memory_order_relaxed);
                carried++;
            }
        }
    }
    return carried;
}

void ps_src_older_lookup(void *arg, const char *key, uint32_t len, uint64_t hash,
                         ps_older_hit *out) {
    const ps_src_list *l = arg;
    memset(out, 0, sizeof(*out));
    out->version = out->tomb = INT64_MIN;
    for (uint32_t i = 0; i < l->n; i++) {
        if (l->src[i].rt != NULL)
            ps_seg_lookup(l->src[i].rt, key, len, hash, out);
        else
            ps_fseg_lookup(l->src[i].f, key, len, hash, out);
        if (out->found)
            return;
    }
}

int ps_src_get(const ps_src *src, uint32_t n, const char *key, uint32_t len, uint64_t snap,
               uint32_t *which, uint32_t *doc) {
    uint64_t h = ps_hash64(key, len);
    for (uint32_t i = n; i-- > 0;) {
        if (src[i].rt != NULL) {
            ps_older_hit o;
            ps_seg_lookup(src[i].rt, key, len, h, &o);
            if (!o.found)
                continue;
            int64_t d = ps_seg_get(src[i].rt, key, len);
            if (d < 0 || ps_seg_is_deleted(src[i].rt, (uint32_t)d, snap))
                return -1;
            *which = i;
            *doc = (uint32_t)d;
            return 0;
        }
        int64_t ref = find_key(src[i].f, key, len, h);
        if (ref < 0)
            continue;
        if (ref >= src[i].f->ndocs || ps_fseg_is_deleted(src[i].f, (uint32_t)ref, snap))
            return -1;
        *which = i;
        *doc = (uint32_t)ref;
        return 0;
    }
    return -1;
}
