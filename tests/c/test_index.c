/*
 * test_index.c - the realtime segment's C core under concurrent readers
 * and writers, built three ways by the Makefile: optimised, ASan+UBSan,
 * and ThreadSanitizer (which checks the release/acquire protocol of
 * posting sizes, the commit watermark, the generation handler and the
 * term tables).
 *
 * Unit tests first (posting buckets across every capacity boundary, skip
 * list advance, parser), then the stress test: one writer thread indexes
 * batches (term-sharded over 3 writer shards) and single documents,
 * updates and deletes, while four reader threads query for STRESS_SECONDS
 * and check what a reader must never see:
 *   - part of a document: every document i carries the terms d<i>, all,
 *     m<i%13>; a reader that finds d<i> must find it again through
 *     and(d<i>, all, m<i%13>) (visibility only grows);
 *   - a doc id at or past the committed watermark it read afterwards;
 *   - count(all) going down while only adds happen (phase 1);
 *   - two hits with one key (phase 2: updates).
 * Then the same across segments (test_views): keys written to a segment
 * that is sealed and flushed to a segment file, then updated in an active
 * segment that deletes their old versions in the file (ps_older_fn) while
 * readers query the view [file, active]: every key must count exactly
 * once, always (the deletion stamp in the file is stored before the
 * release of the active segment's watermark).
 * Ends with "N passed, N failed"; exit status 1 on any failure.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "posting.h"
#include "query.h"
#include "segfile.h"
#include "segment.h"

#ifndef STRESS_SECONDS
#define STRESS_SECONDS 2.0
#endif

static int passed, failed;
static _Atomic int reader_errors;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
            return 1;                                                       \
        }                                                                   \
    } while (0)

#define RCHECK(cond, ...)                                                   \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "reader: %s: ", #cond);                         \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
            atomic_fetch_add(&reader_errors, 1);                            \
        }                                                                   \
    } while (0)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- documents ---------------------------------------------------------- */

typedef struct docbuf {
    char key[32];
    char t0[32], t1[32], t2[32];
    const char *terms[3];
    uint32_t lens[3];
    char text[64];
} docbuf;

static void make_doc(docbuf *b, ps_doc_in *d, uint32_t i, const char *key, int64_t version) {
    snprintf(b->key, sizeof(b->key), "%s", key);
    snprintf(b->t0, sizeof(b->t0), "d%u", i);
    snprintf(b->t1, sizeof(b->t1), "all");
    snprintf(b->t2, sizeof(b->t2), "m%u", i % 13);
    snprintf(b->text, sizeof(b->text), "Word%u shared Words v%lld", i % 97, (long long)version);
    b->terms[0] = b->t0;
    b->terms[1] = b->t1;
    b->terms[2] = b->t2;
    for (int k = 0; k < 3; k++)
        b->lens[k] = (uint32_t)strlen(b->terms[k]);
    memset(d, 0, sizeof(*d));
    d->key = b->key;
    d->key_len = (uint32_t)strlen(b->key);
    d->version = version;
    d->text = b->text;
    d->text_len = strlen(b->text);
    d->terms = b->terms;
    d->term_lens = b->lens;
    d->nterms = 3;
    d->score = (double)(i % 1000);
    d->blob = b->key;
    d->blob_len = d->key_len;
}

static ps_qnode *term(const char *t) {
    return ps_q_term(t, (uint32_t)strlen(t));
}

static ps_qnode *and3(const char *a, const char *b, const char *c) {
    ps_qnode *q = ps_q_op(PS_Q_AND, 3);
    q->child[0] = term(a);
    q->child[1] = term(b);
    q->child[2] = term(c);
    return q;
}

static uint64_t count_of(ps_segment *s, ps_qnode *q) {
    uint64_t n = 0;
    if (ps_q_count(s, q, &n) != 0)
        abort();
    ps_q_free(q);
    return n;
}

/* ---- unit tests ------------------------------------------------------------ */

static int test_posting_boundaries(void) {
    ps_arena arena;
    ps_gen gen;
    ps_posting p;
    ps_arena_init(&arena);
    ps_gen_init(&gen);
    ps_post_init(&p);
    const uint32_t n = 20000;  /* past the doubling buckets (8188) */
    for (uint32_t i = 0; i < n; i++)
        CHECK(ps_post_append(&p, i * 3, i % 300, (double)(i % 1000), i % 50, &arena, &gen) == 0, "append %u", i);
    ps_post_iter it;
    ps_post_iter_open(&it, &p, UINT32_MAX - 1);
    uint32_t seen = 0;
    for (uint32_t d = it.doc; d != PS_DOC_END; d = ps_post_iter_next(&it)) {
        CHECK(d == seen * 3, "entry %u is %u", seen, d);
        CHECK(ps_post_iter_tf(&it) == seen % 300, "tf of %u", seen);
        seen++;
    }
    CHECK(seen == n, "walked %u of %u", seen, n);
    /* advance to every kind of target: present, absent, across buckets */
    for (uint32_t t = 0; t < n * 3; t += 7) {
        ps_post_iter_open(&it, &p, UINT32_MAX - 1);
        uint32_t d = ps_post_iter_advance(&it, t);
        uint32_t want = (t + 2) / 3 * 3;
        CHECK(d == (want < n * 3 ? want : PS_DOC_END), "advance(%u) = %u", t, d);
    }
    /* the watermark cuts the snapshot, and the count agrees */
    ps_post_iter_open(&it, &p, 3000);
    CHECK(ps_post_iter_count(&it) == 1000, "count below 3000: %u", ps_post_iter_count(&it));
    CHECK(ps_post_iter_advance(&it, 2999) == PS_DOC_END, "past the watermark");
    ps_post_free_dir(&p);
    ps_gen_destroy(&gen);
    ps_arena_free(&arena);
    return 0;
}

static int test_parser(void) {
    static const char *good[] = {"cat", "cat AND (dog OR bird) -fish", "-fish", "NOT NOT a",
                                 "\"a b\\\"c\"", "*", "a OR b c", "((a))"};
    static const char *bad[] = {"", "   ", "(", "a)", "AND a", "a OR", "\"open", "()", "-"};
    char err[200];
    for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++) {
        ps_qnode *q = NULL;
        CHECK(ps_q_parse(good[i], strlen(good[i]), &q, err, sizeof(err)) == 0, "%s: %s", good[i], err);
        CHECK(ps_q_check(q, err, sizeof(err)) == 0, "%s: %s", good[i], err);
        ps_q_free(q);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        ps_qnode *q = NULL;
        err[0] = 0;
        CHECK(ps_q_parse(bad[i], strlen(bad[i]), &q, err, sizeof(err)) != 0, "'%s' parsed", bad[i]);
        CHECK(q == NULL && strstr(err, "query") != NULL, "'%s': %s", bad[i], err);
    }
    return 0;
}

/* ---- stress ------------------------------------------------------------- */

typedef struct stress {
    ps_segment *seg;
    _Atomic int phase;  /* 1: adds only; 2: updates and deletes; 3: stop */
    _Atomic uint32_t docs_written;
} stress;

static void *reader_main(void *arg) {
    stress *st = arg;
    unsigned seed = (unsigned)(uintptr_t)&seed;
    uint64_t last_all = 0;
    ps_hit hits[64];
    char d[32], m[32];
    while (atomic_load(&st->phase) != 3) {
        int phase = atomic_load(&st->phase);
        ps_qnode *all = term("all");
        uint64_t n_all = count_of(st->seg, all);
        if (phase == 1) {
            RCHECK(n_all >= last_all, "count(all) went from %llu to %llu",
                   (unsigned long long)last_all, (unsigned long long)n_all);
            last_all = n_all;
        }
        uint32_t written = atomic_load(&st->docs_written);
        if (written > 0) {
            uint32_t i = (uint32_t)rand_r(&seed) % written;
            snprintf(d, sizeof(d), "d%u", i);
            snprintf(m, sizeof(m), "m%u", i % 13);
            uint64_t one = count_of(st->seg, term(d));
            if (one > 0) {
                uint64_t whole = count_of(st->seg, and3(d, "all", m));
                RCHECK(whole >= 1, "doc %s visible by one term, not by all of them", d);
            }
        }
        /* top hits: below the watermark, one per key */
        ps_qnode *q = ps_q_op(PS_Q_OR, 2);
        q->child[0] = term("shared");
        q->child[1] = term("all");
        uint32_t nout = 0;
        int order = rand_r(&seed) % 3;
        if (ps_q_search(st->seg, q, 64, order, hits, &nout) != 0)
            abort();
        ps_q_free(q);
        uint32_t committed = ps_seg_committed(st->seg);
        for (uint32_t a = 0; a < nout; a++) {
            RCHECK(hits[a].doc < committed, "hit %u beyond committed %u", hits[a].doc, committed);
            const ps_docrec *ra = ps_seg_doc(st->seg, hits[a].doc);
            for (uint32_t b = a + 1; b < nout; b++) {
                const ps_docrec *rb = ps_seg_doc(st->seg, hits[b].doc);
                RCHECK(!(ra->key_len == rb->key_len && memcmp(ra->key, rb->key, ra->key_len) == 0),
                       "two hits for key %.*s", (int)ra->key_len, ra->key);
            }
        }
        ps_seg_stats_get(st->seg, &(ps_seg_stats){0});
    }
    return NULL;
}

static int write_batch(stress *st, uint32_t first, uint32_t n, int64_t version, bool threaded) {
    docbuf *bufs = calloc(n, sizeof(*bufs));
    ps_doc_in *docs = calloc(n, sizeof(*docs));
    char key[32], err[200];
    for (uint32_t k = 0; k < n; k++) {
        snprintf(key, sizeof(key), "key%u", first + k);
        make_doc(&bufs[k], &docs[k], first + k, key, version);
    }
    uint32_t added = 0;
    int rc = ps_seg_add_batch(st->seg, docs, n, threaded, NULL, NULL, &added, err, sizeof(err));
    free(bufs);
    free(docs);
    CHECK(rc == PS_OK, "add_batch: %s", err);
    CHECK(added == n, "added %u of %u", added, n);
    return 0;
}

static int test_stress(void) {
    char err[200];
    stress st = {0};
    st.seg = ps_seg_new(3, 1u << 22, 1.2, 0.75, 0, err, sizeof(err));
    CHECK(st.seg != NULL, "%s", err);
    atomic_store(&st.phase, 1);
    pthread_t readers[4];
    for (int r = 0; r < 4; r++)
        pthread_create(&readers[r], NULL, reader_main, &st);
    double t0 = now();
    uint32_t next = 0;
    /* phase 1: adds, as batches (term-sharded) and single documents */
    while (now() - t0 < STRESS_SECONDS / 2) {
        if (write_batch(&st, next, 200, 1, true))
            return 1;
        next += 200;
        atomic_store(&st.docs_written, next);
        for (int k = 0; k < 20; k++, next++) {
            if (write_batch(&st, next, 1, 1, false))
                return 1;
            atomic_store(&st.docs_written, next + 1);
        }
    }
    /* phase 2: updates (same keys, newer versions) and deletes */
    atomic_store(&st.phase, 2);
    int64_t version = 2;
    while (now() - t0 < STRESS_SECONDS) {
        uint32_t first = (uint32_t)(version * 37) % (next > 300 ? next - 300 : 1);
        /* re-adds docs first..first+199 under their original doc numbers'
         * keys; their d<i> terms stay, so the partial-doc check still holds */
        if (write_batch(&st, first, 200, version, true))
            return 1;
        char key[32];
        snprintf(key, sizeof(key), "key%u", first + 250);
        int deleted;
        CHECK(ps_seg_delete(st.seg, key, (uint32_t)strlen(key), true, version, NULL, &deleted, err,
                            sizeof(err)) == PS_OK, "%s", err);
        version++;
    }
    ps_seg_seal(st.seg);  /* readers keep going across the seal */
    atomic_store(&st.phase, 3);
    for (int r = 0; r < 4; r++)
        pthread_join(readers[r], NULL);
    CHECK(atomic_load(&reader_errors) == 0, "%d reader errors", atomic_load(&reader_errors));
    ps_seg_stats stats;
    ps_seg_stats_get(st.seg, &stats);
    CHECK(stats.docs_committed > 0 && stats.postings > 0, "stats");
    fprintf(stderr, "  stress: %llu docs committed, %llu live, %llu versions %lld\n",
            (unsigned long long)stats.docs_committed, (unsigned long long)stats.docs_live,
            (unsigned long long)stats.reclaimed, (long long)version);
    ps_seg_free(st.seg);
    return 0;
}

/* ---- views across segments -------------------------------------------- */

#define VIEW_KEYS 2000u

typedef struct vstress {
    ps_src src[2];  /* file, active */
    _Atomic int stop;
} vstress;

static void *view_reader_main(void *arg) {
    vstress *st = arg;
    ps_hit *hits = malloc(VIEW_KEYS * sizeof(*hits));
    unsigned seed = (unsigned)(uintptr_t)&seed;
    while (!atomic_load(&st->stop)) {
        ps_qnode *all = term("all");
        uint64_t n = 0;
        if (ps_q_count_view(st->src, 2, all, &n) != 0)
            abort();
        RCHECK(n == VIEW_KEYS, "count(all) over the view is %llu, not %u", (unsigned long long)n,
               VIEW_KEYS);
        uint32_t nout = 0;
        if (ps_q_search_view(st->src, 2, all, VIEW_KEYS, rand_r(&seed) % 3, hits, &nout) != 0)
            abort();
        RCHECK(nout == VIEW_KEYS, "search over the view found %u, not %u", nout, VIEW_KEYS);
        ps_q_free(all);
    }
    free(hits);
    return NULL;
}

static int add_keys(ps_segment *seg, uint32_t first, uint32_t n, int64_t version,
                    const ps_older *older) {
    docbuf *bufs = calloc(n, sizeof(*bufs));
    ps_doc_in *docs = calloc(n, sizeof(*docs));
    char key[32], err[200];
    for (uint32_t k = 0; k < n; k++) {
        snprintf(key, sizeof(key), "key%u", (first + k) % VIEW_KEYS);
        make_doc(&bufs[k], &docs[k], first + k, key, version);
    }
    uint32_t added = 0;
    int rc = ps_seg_add_batch(seg, docs, n, true, older, NULL, &added, err, sizeof(err));
    free(bufs);
    free(docs);
    CHECK(rc == PS_OK, "add_batch: %s", err);
    return 0;
}

static int test_views(void) {
    char err[200], path[64];
    ps_segment *first = ps_seg_new(2, 1u << 20, 1.2, 0.75, 1, err, sizeof(err));
    CHECK(first != NULL, "%s", err);
    if (add_keys(first, 0, VIEW_KEYS, 1, NULL))
        return 1;
    ps_seg_seal(first);
    snprintf(path, sizeof(path), "/tmp/test_index_%d.pss", (int)getpid());
    ps_src in = {.rt = first};
    ps_sf_write_stats ws;
    CHECK(ps_sf_write(path, &in, 1, ps_seg_snap(first, ps_seg_committed(first)), 0, NULL, &ws, err,
                      sizeof(err)) == 0, "%s", err);
    ps_fseg *f = ps_fseg_open(path, err, sizeof(err));
    CHECK(f != NULL, "%s", err);
    CHECK(f->ndocs == VIEW_KEYS, "file has %u docs", f->ndocs);
    uint64_t base = ps_seg_snap(first, ps_seg_committed(first));
    ps_seg_free(first);
    ps_segment *active = ps_seg_new(2, 1u << 22, 1.2, 0.75, base, err, sizeof(err));
    CHECK(active != NULL, "%s", err);
    vstress st = {.src = {{.f = f}, {.rt = active}}};
    ps_src older_src[1] = {{.f = f}};
    ps_src_list older_list = {older_src, 1};
    ps_older older = {ps_src_older_lookup, &older_list};
    pthread_t readers[3];
    for (int r = 0; r < 3; r++)
        pthread_create(&readers[r], NULL, view_reader_main, &st);
    double t0 = now();
    uint32_t next = 0;
    int64_t version = 2;
    while (now() - t0 < STRESS_SECONDS / 2 && next < (1u << 21)) {
        if (add_keys(active, next, 97, version++, &older))
            return 1;
        next += 97;
    }
    atomic_store(&st.stop, 1);
    for (int r = 0; r < 3; r++)
        pthread_join(readers[r], NULL);
    CHECK(atomic_load(&reader_errors) == 0, "%d reader errors", atomic_load(&reader_errors));
    CHECK(atomic_load(&f->deleted_count) == (next < VIEW_KEYS ? next : VIEW_KEYS),
          "file deletes %u after %u updates", atomic_load(&f->deleted_count), next);
    ps_seg_free(active);
    ps_fseg_close(f);
    unlink(path);
    return 0;
}

int main(void) {
    struct {
        const char *name;
        int (*fn)(void);
    } tests[] = {
        {"posting_boundaries", test_posting_boundaries},
        {"parser", test_parser},
        {"stress", test_stress},
        {"views", test_views},
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(*tests); i++) {
        int r = tests[i].fn();
        printf("%s %s\n", r ? "FAIL" : "ok  ", tests[i].name);
        r ? failed++ : passed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
