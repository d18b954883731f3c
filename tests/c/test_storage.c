/*
 * test_storage.c - tests of the storage engine (slabs.c, assoc.c, items.c)
 * without the network: the calls the protocols make, driven directly.
 *
 * Every test builds a fresh engine (settings -> slabs -> assoc -> items,
 * optionally the background threads) and tears it down completely, so
 * the sanitizers also check that start/stop/cleanup leaves nothing behind
 * and that a server can be restarted in one process.
 *
 * Build and run: make -C tests/c        (plain -O2, ASan+UBSan, TSan)
 * Output ends with "N passed, N failed".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "assoc.h"
#include "items.h"
#include "settings.h"
#include "slabs.h"
#include "stats.h"

void stats_cleanup(void);   /* stats.c, not in stats.h */

static int failures_in_test;
static int tests_passed, tests_failed;

#define CHECK(cond) do { if (!(cond)) { \
    fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    failures_in_test++; } } while (0)
#define CHECK_EQ(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); \
    if (a_ != b_) { fprintf(stderr, "  FAIL %s:%d: %s == %s (%lld vs %lld)\n", \
    __FILE__, __LINE__, #a, #b, a_, b_); failures_in_test++; } } while (0)

/* ------------------------------------------------------------------ */
/* engine setup */

typedef struct {
    size_t maxbytes;
    size_t item_size_max;
    int hashpower;
    bool threads;          /* start items/assoc/slabs threads */
    bool evict;
    int automove;
    int automove_window;
    bool segmented;
    bool maintainer;
} engine_opts;

static engine_opts defaults(void) {
    engine_opts o = {64u << 20, 1u << 20, 16, false, true, 0, 30, true, true};
    return o;
}

static bool threads_running;

static void engine_start(engine_opts o) {
    settings_init_defaults(&settings);
    settings.maxbytes = o.maxbytes;
    settings.item_size_max = o.item_size_max;
    settings.hashpower_init = o.hashpower;
    settings.evict_to_free = o.evict;
    settings.slab_automove = o.automove;
    settings.slab_automove_window = o.automove_window;
    settings.lru_segmented = o.segmented;
    settings.lru_maintainer = o.maintainer;
    settings.num_threads = 4;
    stats_init();
    stats_thread_register();
    if (slabs_init() != 0 || assoc_init(o.hashpower) != 0 || items_init() != 0) {
        fprintf(stderr, "engine init failed\n");
        exit(2);
    }
    threads_running = o.threads;
    if (o.threads && (items_threads_start() != 0 || assoc_threads_start() != 0 ||
                      slabs_threads_start() != 0)) {
        fprintf(stderr, "engine threads failed\n");
        exit(2);
    }
}

static void engine_stop(void) {
    slabs_threads_stop();
    assoc_threads_stop();
    items_threads_stop();
    items_cleanup();
    assoc_cleanup();
    slabs_cleanup();
    stats_cleanup();
    threads_running = false;
}

/* ------------------------------------------------------------------ */
/* helpers: what a protocol does */

static void fill_value(item *it, const char *val, size_t len) {
    struct iovec iov[4096];
    int n = item_value_iov(it, iov, 4096);
    size_t pos = 0;   /* position in value + "\r\n" */
    for (int i = 0; i < n; i++) {
        char *dst = iov[i].iov_base;
        for (size_t j = 0; j < iov[i].iov_len; j++, pos++) {
            if (pos < len) {
                size_t run = iov[i].iov_len - j < len - pos ? iov[i].iov_len - j : len - pos;
                memcpy(dst + j, val + pos, run);
                j += run - 1;
                pos += run - 1;
            } else {
                dst[j] = pos == len ? '\r' : '\n';
            }
        }
    }
}

static store_result store_full(store_op op, const char *key, const char *val, size_t vlen,
                               uint32_t flags, rel_time_t exp, uint64_t cas_in,
                               uint64_t *cas_out, alloc_result *why_out) {
    alloc_result why;
    item *it = item_alloc(key, strlen(key), flags, exp, vlen + 2, &why);
    if (why_out)
        *why_out = why;
    if (!it)
        return NO_MEMORY;
    fill_value(it, val, vlen);
    it->cas = cas_in;
    store_result r = item_store(it, op, cas_out);
    item_release(it);
    return r;
}

static store_result store(store_op op, const char *key, const char *val) {
    return store_full(op, key, val, strlen(val), 0, 0, 0, NULL, NULL);
}

/* Read a value (without "\r\n") into a malloc'd buffer; NULL on miss. */
static char *get_value(const char *key, size_t *len, uint64_t *cas) {
    item *it = item_get(key, strlen(key), true);
    if (!it)
        return NULL;
    struct iovec iov[4096];
    int n = item_value_iov(it, iov, 4096);
    size_t total = it->nbytes;
    char *buf = malloc(total + 1);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        memcpy(buf + off, iov[i].iov_base, iov[i].iov_len);
        off += iov[i].iov_len;
    }
    if (off != total || total < 2 || buf[total - 2] != '\r' || buf[total - 1] != '\n') {
        fprintf(stderr, "  bad value framing for %s\n", key);
        failures_in_test++;
    }
    buf[total - 2] = '\0';
    if (len)
        *len = total - 2;
    if (cas)
        *cas = it->cas;
    item_release(it);
    return buf;
}

static bool value_is(const char *key, const char *expect) {
    char *v = get_value(key, NULL, NULL);
    bool ok = v && strcmp(v, expect) == 0;
    if (!ok)
        fprintf(stderr, "  %s = \"%s\", expected \"%s\"\n", key, v ? v : "(miss)", expect);
    free(v);
    return ok;
}

/* collect one stat from a stats writer */
typedef struct {
    const char *want;
    char val[128];
    bool found;
} stat_probe;

static void probe_add(const char *key, size_t klen, const char *val, size_t vlen, void *ctx) {
    stat_probe *p = ctx;
    if (key && strlen(p->want) == klen && memcmp(key, p->want, klen) == 0) {
        size_t n = vlen < sizeof(p->val) - 1 ? vlen : sizeof(p->val) - 1;
        memcpy(p->val, val, n);
        p->val[n] = '\0';
        p->found = true;
    }
}

static long long stat_of(void (*fn)(add_stat_fn, void *), const char *name) {
    stat_probe p = {name, "", false};
    fn(probe_add, &p);
    return p.found ? atoll(p.val) : -1;
}

static void stats_all(add_stat_fn add, void *ctx) {
    assoc_stats(add, ctx);
    slabs_stats_totals(add, ctx);
    items_stats_totals(add, ctx);
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ */
/* tests */

static void test_set_get_replace_add(void) {
    engine_start(defaults());
    CHECK_EQ(store(STORE_SET, "k", "v1"), STORED);
    CHECK(value_is("k", "v1"));
    CHECK_EQ(store(STORE_ADD, "k", "v2"), NOT_STORED);
    CHECK(value_is("k", "v1"));
    CHECK_EQ(store(STORE_ADD, "k2", "a"), STORED);
    CHECK(value_is("k2", "a"));
    CHECK_EQ(store(STORE_REPLACE, "missing", "x"), NOT_STORED);
    CHECK(get_value("missing", NULL, NULL) == NULL);
    CHECK_EQ(store(STORE_REPLACE, "k", "v3"), STORED);
    CHECK(value_is("k", "v3"));
    CHECK_EQ(store(STORE_SET, "empty", ""), STORED);
    CHECK(value_is("empty", ""));
    /* client flags survive */
    uint64_t cas = 0;
    CHECK_EQ(store_full(STORE_SET, "fl", "x", 1, 0xdeadbeef, 0, 0, &cas, NULL), STORED);
    item *it = item_get("fl", 2, false);
    CHECK(it && it->client_flags == 0xdeadbeef && it->cas == cas && cas != 0);
    if (it)
        item_release(it);
    CHECK_EQ(stat_of(stats_all, "curr_items"), 4);
    engine_stop();
}

static void test_cas(void) {
    engine_start(defaults());
    uint64_t c1 = 0, c2 = 0;
    CHECK_EQ(store_full(STORE_CAS, "k", "x", 1, 0, 0, 12345, NULL, NULL), NOT_FOUND);
    CHECK_EQ(store_full(STORE_SET, "k", "v1", 2, 0, 0, 0, &c1, NULL), STORED);
    uint64_t got;
    free(get_value("k", NULL, &got));
    CHECK_EQ(got, c1);
    CHECK_EQ(store_full(STORE_CAS, "k", "v2", 2, 0, 0, c1 + 1000, NULL, NULL), EXISTS);
    CHECK(value_is("k", "v1"));
    CHECK_EQ(store_full(STORE_CAS, "k", "v2", 2, 0, 0, c1, &c2, NULL), STORED);
    CHECK(c2 != c1);
    CHECK(value_is("k", "v2"));
    CHECK_EQ(store_full(STORE_CAS, "k", "v3", 2, 0, 0, c1, NULL, NULL), EXISTS);
    CHECK_EQ(STATS_SUM(cas_misses), 1);
    engine_stop();
}

static void test_append_prepend(void) {
    engine_start(defaults());
    CHECK_EQ(store(STORE_APPEND, "k", "x"), NOT_STORED);
    CHECK_EQ(store(STORE_PREPEND, "k", "x"), NOT_STORED);
    CHECK_EQ(store_full(STORE_SET, "k", "mid", 3, 7, 0, 0, NULL, NULL), STORED);
    CHECK_EQ(store(STORE_APPEND, "k", "_end"), STORED);
    CHECK_EQ(store(STORE_PREPEND, "k", "start_"), STORED);
    CHECK(value_is("k", "start_mid_end"));
    item *it = item_get("k", 1, false);
    CHECK(it && it->client_flags == 7);   /* flags of the old item kept */
    if (it)
        item_release(it);
    /* append with a CAS that does not match */
    CHECK_EQ(store_full(STORE_APPEND, "k", "z", 1, 0, 0, 999999, NULL, NULL), EXISTS);
    /* append that would exceed item_size_max */
    size_t big = 1000 * 1000;
    char *v = malloc(big);
    memset(v, 'a', big);
    CHECK_EQ(store_full(STORE_SET, "big", v, big, 0, 0, 0, NULL, NULL), STORED);
    CHECK_EQ(store_full(STORE_APPEND, "big", v, 100 * 1000, 0, 0, 0, NULL, NULL), TOO_LARGE);
    free(v);
    engine_stop();
}

static void test_incr_decr(void) {
    engine_start(defaults());
    char buf[32];
    uint64_t cas = 0;
    CHECK_EQ(item_add_delta("n", 1, true, 1, 0, buf, &cas), DELTA_MISS);
    CHECK_EQ(store(STORE_SET, "n", "10"), STORED);
    CHECK_EQ(item_add_delta("n", 1, true, 5, 0, buf, &cas), DELTA_OK);
    CHECK(strcmp(buf, "15") == 0);
    CHECK(value_is("n", "15"));
    CHECK_EQ(item_add_delta("n", 1, false, 6, 0, buf, NULL), DELTA_OK);
    CHECK(strcmp(buf, "9") == 0);
    CHECK(value_is("n", "9 "));            /* memcached pads in place */
    CHECK_EQ(item_add_delta("n", 1, false, 100, 0, buf, NULL), DELTA_OK);
    CHECK(strcmp(buf, "0") == 0);          /* decr floors at 0 */
    CHECK_EQ(item_add_delta("n", 1, true, 123456, 0, buf, NULL), DELTA_OK);
    CHECK(value_is("n", "123456"));        /* longer: a new item */
    CHECK_EQ(store(STORE_SET, "w", "18446744073709551615"), STORED);
    CHECK_EQ(item_add_delta("w", 1, true, 2, 0, buf, NULL), DELTA_OK);
    CHECK(strcmp(buf, "1") == 0);          /* wraps at 2^64 */
    CHECK_EQ(store(STORE_SET, "s", "abc"), STORED);
    CHECK_EQ(item_add_delta("s", 1, true, 1, 0, buf, NULL), DELTA_NON_NUMERIC);
    CHECK_EQ(store(STORE_SET, "neg", "-1"), STORED);
    CHECK_EQ(item_add_delta("neg", 3, true, 1, 0, buf, NULL), DELTA_NON_NUMERIC);
    CHECK_EQ(store(STORE_SET, "e", ""), STORED);
    CHECK_EQ(item_add_delta("e", 1, true, 1, 0, buf, NULL), DELTA_NON_NUMERIC);
    CHECK_EQ(store(STORE_SET, "long", "123456789012345678901234567890"), STORED);
    CHECK_EQ(item_add_delta("long", 4, true, 1, 0, buf, NULL), DELTA_NON_NUMERIC);
    /* cas compare */
    uint64_t c;
    free(get_value("n", NULL, &c));
    CHECK_EQ(item_add_delta("n", 1, true, 1, c + 1, buf, NULL), DELTA_EXISTS);
    uint64_t c2;
    CHECK_EQ(item_add_delta("n", 1, true, 1, c, buf, &c2), DELTA_OK);
    CHECK(c2 != c);
    /* a held reference forces a new item instead of writing in place */
    item *held = item_get("n", 1, false);
    CHECK_EQ(item_add_delta("n", 1, false, 1, 0, buf, NULL), DELTA_OK);
    CHECK(held && strncmp(item_value_ptr(held), "123457", 6) == 0);
    if (held)
        item_release(held);
    CHECK(value_is("n", "123456"));
    engine_stop();
}

static void test_delete_touch(void) {
    engine_start(defaults());
    bool mismatch;
    CHECK_EQ(item_delete("k", 1, 0, &mismatch), 0);
    CHECK_EQ(store(STORE_SET, "k", "v"), STORED);
    uint64_t c;
    free(get_value("k", NULL, &c));
    CHECK_EQ(item_delete("k", 1, c + 1, &mismatch), 0);
    CHECK(mismatch);
    CHECK_EQ(item_delete("k", 1, c, &mismatch), 1);
    CHECK(!mismatch);
    CHECK(get_value("k", NULL, NULL) == NULL);
    /* touch changes the expiry */
    CHECK_EQ(store_full(STORE_SET, "t", "v", 1, 0, realtime(5), 0, NULL, NULL), STORED);
    item *it = item_touch("t", 1, realtime(100));
    CHECK(it != NULL);
    if (it) {
        CHECK(item_ttl_remaining(it) >= 99);
        item_release(it);
    }
    items_test_advance_clock(10);
    CHECK(value_is("t", "v"));
    CHECK(item_touch("nope", 4, 0) == NULL);
    engine_stop();
}

static void test_expiry_and_flush(void) {
    engine_start(defaults());
    CHECK_EQ(store_full(STORE_SET, "short", "v", 1, 0, realtime(10), 0, NULL, NULL), STORED);
    CHECK_EQ(store_full(STORE_SET, "abs", "v", 1, 0, realtime(time(NULL) + 20), 0, NULL, NULL), STORED);
    CHECK_EQ(store_full(STORE_SET, "past", "v", 1, 0, realtime(-1), 0, NULL, NULL), STORED);
    CHECK_EQ(store_full(STORE_SET, "forever", "v", 1, 0, 0, 0, NULL, NULL), STORED);
    CHECK(get_value("past", NULL, NULL) == NULL);
    CHECK(value_is("short", "v"));
    items_test_advance_clock(11);
    CHECK(get_value("short", NULL, NULL) == NULL);
    CHECK(value_is("abs", "v"));
    items_test_advance_clock(10);
    CHECK(get_value("abs", NULL, NULL) == NULL);
    CHECK(value_is("forever", "v"));
    CHECK_EQ(STATS_SUM(get_expired), 3);
    /* an absolute time in the past is expired */
    CHECK_EQ(realtime(60 * 60 * 24 * 31), 1);

    /* flush_all now */
    item_flush_all(0);
    CHECK(get_value("forever", NULL, NULL) == NULL);
    CHECK_EQ(STATS_SUM(get_flushed), 1);
    CHECK_EQ(store(STORE_SET, "after", "v"), STORED);   /* same second */
    CHECK(value_is("after", "v"));

    /* flush_all with a delay: items live until then */
    CHECK_EQ(store(STORE_SET, "d", "v"), STORED);
    item_flush_all(realtime(5));
    CHECK(value_is("d", "v"));
    items_test_advance_clock(6);
    CHECK(get_value("d", NULL, NULL) == NULL);
    CHECK(get_value("after", NULL, NULL) == NULL);
    CHECK_EQ(store(STORE_SET, "new", "v"), STORED);
    items_test_advance_clock(2);
    CHECK(value_is("new", "v"));
    engine_stop();
}

static void test_eviction(void) {
    engine_opts o = defaults();
    o.maxbytes = 8u << 20;
    o.threads = true;
    engine_start(o);
    char val[1000];
    memset(val, 'x', sizeof(val));
    char key[32];
    int fails = 0;
    int n = 80 * 1000;    /* ~10x the memory limit */
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "key:%d", i);
        snprintf(val, sizeof(val), "%d", i);
        val[strlen(val)] = 'x';
        if (store_full(STORE_SET, key, val, sizeof(val), 0, 0, 0, NULL, NULL) != STORED)
            fails++;
    }
    CHECK_EQ(fails, 0);
    long long ev = stat_of(stats_all, "evictions");
    CHECK(ev > n / 2);
    CHECK(slabs_total_malloced() <= (8u << 20) + (2u << 20));
    /* the most recent keys are there, the first ones are gone */
    snprintf(key, sizeof(key), "key:%d", n - 1);
    char *v = get_value(key, NULL, NULL);
    CHECK(v && atoi(v) == n - 1);
    free(v);
    CHECK(get_value("key:0", NULL, NULL) == NULL);
    engine_stop();

    /* -M: out of memory instead of evicting */
    o.evict = false;
    o.threads = false;
    engine_start(o);
    alloc_result why = ALLOC_OK;
    int stored = 0;
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "key:%d", i);
        if (store_full(STORE_SET, key, val, sizeof(val), 0, 0, 0, NULL, &why) != STORED)
            break;
        stored++;
    }
    CHECK(stored > 1000 && stored < n);
    CHECK_EQ(why, ALLOC_NO_MEMORY);
    char *first = get_value("key:0", NULL, NULL);   /* nothing was evicted */
    CHECK(first != NULL);
    free(first);
    CHECK_EQ(stat_of(stats_all, "evictions"), 0);
    engine_stop();
}

static void fill_random(char *p, size_t n, unsigned int seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (char)(seed >> 16);
    }
}

static void test_large_values(void) {
    engine_opts o = defaults();
    o.item_size_max = 8u << 20;
    engine_start(o);
    size_t sizes[] = {600 * 1000, 900 * 1000, 1024 * 1024, 5 * 1000 * 1000, 8 * 1000 * 1000};
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        size_t sz = sizes[s];
        char *v = malloc(sz);
        fill_random(v, sz, (unsigned)sz);
        char key[32];
        snprintf(key, sizeof(key), "large:%zu", sz);
        CHECK(item_size_ok(strlen(key), 0, sz + 2));
        CHECK_EQ(store_full(STORE_SET, key, v, sz, 0, 0, 0, NULL, NULL), STORED);
        size_t got_len = 0;
        char *got = get_value(key, &got_len, NULL);
        CHECK(got && got_len == sz && memcmp(got, v, sz) == 0);
        free(got);
        free(v);
    }
    /* too large */
    alloc_result why;
    CHECK(item_alloc("x", 1, 0, 0, (8u << 20), &why) == NULL);
    CHECK_EQ(why, ALLOC_TOO_LARGE);
    CHECK(!item_size_ok(1, 0, 8u << 20));
    /* append and prepend across chunk boundaries */
    size_t a = 700 * 1000, b = 300 * 1000;
    char *va = malloc(a), *vb = malloc(b), *both = malloc(a + b);
    fill_random(va, a, 1);
    fill_random(vb, b, 2);
    CHECK_EQ(store_full(STORE_SET, "ap", va, a, 0, 0, 0, NULL, NULL), STORED);
    CHECK_EQ(store_full(STORE_APPEND, "ap", vb, b, 0, 0, 0, NULL, NULL), STORED);
    memcpy(both, va, a);
    memcpy(both + a, vb, b);
    size_t got_len;
    char *got = get_value("ap", &got_len, NULL);
    CHECK(got && got_len == a + b && memcmp(got, both, a + b) == 0);
    free(got);
    CHECK_EQ(store_full(STORE_PREPEND, "ap", vb, b, 0, 0, 0, NULL, NULL), STORED);
    got = get_value("ap", &got_len, NULL);
    CHECK(got && got_len == a + 2 * b && memcmp(got, vb, b) == 0 &&
          memcmp(got + b, both, a + b) == 0);
    free(got);
    /* small value appended to a large one and vice versa */
    CHECK_EQ(store(STORE_SET, "sm", "hello"), STORED);
    CHECK_EQ(store_full(STORE_APPEND, "sm", va, a, 0, 0, 0, NULL, NULL), STORED);
    got = get_value("sm", &got_len, NULL);
    CHECK(got && got_len == a + 5 && memcmp(got, "hello", 5) == 0 && memcmp(got + 5, va, a) == 0);
    free(got);
    free(va);
    free(vb);
    free(both);
    /* incr on a chunked item is non-numeric */
    char buf[32];
    CHECK_EQ(item_add_delta("ap", 2, true, 1, 0, buf, NULL), DELTA_NON_NUMERIC);
    bool mm;
    CHECK_EQ(item_delete("ap", 2, 0, &mm), 1);
    engine_stop();

    /* chunked values under eviction pressure: memory is reused */
    o.maxbytes = 16u << 20;
    engine_start(o);
    char *v = malloc(3 << 20);
    int fails = 0;
    for (int i = 0; i < 60; i++) {
        char key[32];
        snprintf(key, sizeof(key), "big:%d", i);
        fill_random(v, 3 << 20, (unsigned)i);
        if (store_full(STORE_SET, key, v, 3 << 20, 0, 0, 0, NULL, NULL) != STORED)
            fails++;
    }
    CHECK_EQ(fails, 0);
    size_t gl;
    char *g = get_value("big:59", &gl, NULL);
    fill_random(v, 3 << 20, 59);
    CHECK(g && gl == (3u << 20) && memcmp(g, v, gl) == 0);
    free(g);
    free(v);
    CHECK(slabs_total_malloced() <= (16u << 20) + (4u << 20));
    engine_stop();
}

/* ---- hash expansion while readers look keys up ---- */

typedef struct {
    _Atomic int inserted;     /* keys 0..inserted-1 are stored */
    _Atomic bool done;
    _Atomic long misses;
    _Atomic long lookups;
} expand_ctx;

static void *expand_reader(void *arg) {
    expand_ctx *c = arg;
    stats_thread_register();
    unsigned int seed = 7;
    char key[32];
    while (!atomic_load(&c->done)) {
        int n = atomic_load(&c->inserted);
        if (n == 0)
            continue;
        seed = seed * 1103515245u + 12345u;
        int k = (int)((seed >> 8) % (unsigned)n);
        snprintf(key, sizeof(key), "exp:%d", k);
        item *it = item_get(key, strlen(key), false);
        atomic_fetch_add(&c->lookups, 1);
        if (!it)
            atomic_fetch_add(&c->misses, 1);
        else
            item_release(it);
    }
    return NULL;
}

static void test_hash_expansion(void) {
    engine_opts o = defaults();
    o.hashpower = 10;
    o.maxbytes = 256u << 20;
    o.threads = true;
    engine_start(o);
    expand_ctx c;
    memset(&c, 0, sizeof(c));
    pthread_t r[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&r[i], NULL, expand_reader, &c);
    char key[32];
    int n = 200 * 1000;
    bool saw_expanding = false;
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "exp:%d", i);
        if (store(STORE_SET, key, "v") != STORED) {
            failures_in_test++;
            break;
        }
        atomic_store(&c.inserted, i + 1);
        if ((i & 1023) == 0 && stat_of(assoc_stats, "hash_is_expanding") == 1)
            saw_expanding = true;
    }
    /* wait for the last expansion to finish */
    for (int i = 0; i < 200 && stat_of(assoc_stats, "hash_is_expanding") == 1; i++)
        sleep_ms(10);
    atomic_store(&c.done, true);
    for (int i = 0; i < 2; i++)
        pthread_join(r[i], NULL);
    CHECK_EQ(atomic_load(&c.misses), 0);
    CHECK(atomic_load(&c.lookups) > 1000);
    int missing = 0;
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "exp:%d", i);
        item *it = item_get(key, strlen(key), false);
        if (!it)
            missing++;
        else
            item_release(it);
    }
    CHECK_EQ(missing, 0);
    long long hp = stat_of(assoc_stats, "hash_power_level");
    CHECK(hp >= 17);
    if (!saw_expanding)
        fprintf(stderr, "  (note: never sampled hash_is_expanding=1)\n");
    engine_stop();
}

/* ---- page moves ---- */

static unsigned int class_for(size_t vlen) {
    return slabs_clsid(ITEM_ntotal_small(10, vlen + 2));
}

static bool wait_reassign(int ms) {
    for (int i = 0; i < ms / 10; i++) {
        if (!slabs_reassign_busy())
            return true;
        sleep_ms(10);
    }
    return false;
}

static void test_page_move_manual(void) {
    engine_opts o = defaults();
    o.maxbytes = 16u << 20;
    o.threads = true;
    engine_start(o);
    unsigned int small = class_for(100), large = class_for(5000);
    CHECK(small != large && small && large);
    char val[5000];
    memset(val, 's', sizeof(val));
    char key[32];
    /* fill small items: a few pages, half of them later deleted so a
     * move can rescue live items into free space */
    int n = 40000;
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "sm:%07d", i);
        store_full(STORE_SET, key, val, 100, 0, 0, 0, NULL, NULL);
    }
    for (int i = 0; i < n; i += 2) {
        snprintf(key, sizeof(key), "sm:%07d", i);
        bool mm;
        item_delete(key, strlen(key), 0, &mm);
    }
    slabs_class_info before_s, before_l, after_s, after_l;
    slabs_class_stats(small, &before_s);
    slabs_class_stats(large, &before_l);
    CHECK(before_s.total_pages >= 3);
    CHECK_EQ(slabs_reassign((int)small, (int)small), REASSIGN_SRC_DST_SAME);
    CHECK_EQ(slabs_reassign(70, (int)small), REASSIGN_BADCLASS);
    CHECK_EQ(slabs_reassign((int)large, (int)small), REASSIGN_NOSPARE);
    CHECK_EQ(slabs_reassign((int)small, (int)large), REASSIGN_OK);
    CHECK(wait_reassign(10000));
    slabs_class_stats(small, &after_s);
    slabs_class_stats(large, &after_l);
    CHECK_EQ(after_s.total_pages, before_s.total_pages - 1);
    CHECK_EQ(after_l.total_pages, before_l.total_pages + 1);
    CHECK(stat_of(stats_all, "slabs_moved") == 1);
    CHECK(stat_of(stats_all, "slab_reassign_rescues") > 0);
    /* every odd key is still readable and intact (rescued, not evicted,
     * since there was free space in the class) */
    int missing = 0;
    for (int i = 1; i < n; i += 2) {
        snprintf(key, sizeof(key), "sm:%07d", i);
        size_t len;
        char *v = get_value(key, &len, NULL);
        if (!v || len != 100 || v[0] != 's' || v[99] != 's')
            missing++;
        free(v);
    }
    CHECK_EQ(missing, 0);
    /* to the global pool and back */
    CHECK_EQ(slabs_reassign((int)small, 0), REASSIGN_OK);
    CHECK(wait_reassign(10000));
    CHECK_EQ(slabs_global_pool_pages(), 1);
    CHECK_EQ(slabs_reassign(0, (int)large), REASSIGN_OK);
    CHECK(wait_reassign(10000));
    CHECK_EQ(slabs_global_pool_pages(), 0);
    slabs_class_stats(large, &after_l);
    CHECK_EQ(after_l.total_pages, before_l.total_pages + 2);
    engine_stop();
}

static void test_automove_after_size_shift(void) {
    engine_opts o = defaults();
    o.maxbytes = 16u << 20;
    o.threads = true;
    o.automove = 1;
    o.automove_window = 3;
    engine_start(o);
    unsigned int small = class_for(200), large = class_for(4000);
    char val[4000];
    memset(val, 'v', sizeof(val));
    char key[32];
    /* phase 1: small values take all the memory */
    for (int i = 0; i < 120000; i++) {
        snprintf(key, sizeof(key), "a:%d", i);
        store_full(STORE_SET, key, val, 200, 0, 0, 0, NULL, NULL);
    }
    slabs_class_info s0, l0;
    slabs_class_stats(small, &s0);
    slabs_class_stats(large, &l0);
    items_test_advance_clock(3600);   /* the small items are now old */
    /* phase 2: traffic shifts to large values; the large class evicts
     * young items while the small class sits on old ones */
    slabs_class_info s1, l1;
    int i = 0;
    for (int sec = 0; sec < 20; sec++) {
        for (int k = 0; k < 2000; k++, i++) {
            snprintf(key, sizeof(key), "b:%d", i);
            store_full(STORE_SET, key, val, 4000, 0, 0, 0, NULL, NULL);
        }
        sleep_ms(500);
        slabs_class_stats(large, &l1);
        if (l1.total_pages >= l0.total_pages + 3)
            break;
    }
    wait_reassign(5000);
    slabs_class_stats(small, &s1);
    slabs_class_stats(large, &l1);
    fprintf(stderr, "  small class %u: %u -> %u pages; large class %u: %u -> %u pages\n",
            small, s0.total_pages, s1.total_pages, large, l0.total_pages, l1.total_pages);
    CHECK(l1.total_pages >= l0.total_pages + 3);
    CHECK(s1.total_pages < s0.total_pages);
    engine_stop();
}

/* ---- segmented LRU and crawler ---- */

static long long items_stat(unsigned int cls, const char *name) {
    char full[64];
    snprintf(full, sizeof(full), "items:%u:%s", cls, name);
    return stat_of(items_stats, full);
}

static void test_segmented_lru(void) {
    engine_start(defaults());
    unsigned int cls = class_for(10);
    char key[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "l:%d", i);
        store(STORE_SET, key, "0123456789");
    }
    CHECK_EQ(items_stat(cls, "number_hot"), 1000);
    /* the maintainer drains HOT down to its share */
    items_test_advance_clock(5);
    items_test_maintain_once();
    long long hot = items_stat(cls, "number_hot");
    long long cold = items_stat(cls, "number_cold");
    CHECK(hot < 1000 && cold > 0);
    CHECK(items_stat(cls, "moves_to_cold") > 0);
    /* two hits make a COLD item ACTIVE and bring it to WARM */
    item *tail = NULL;
    for (int i = 0; i < 1000 && !tail; i++) {
        snprintf(key, sizeof(key), "l:%d", i);
        item *it = item_get(key, strlen(key), false);
        if (it && (ITEM_CLSID_RAW(it) & TEMP_LRU) == COLD_LRU)
            tail = it;
        else if (it)
            item_release(it);
    }
    CHECK(tail != NULL);
    if (tail) {
        char k[64];
        memcpy(k, ITEM_key(tail), tail->nkey);
        k[tail->nkey] = '\0';
        item_release(tail);
        free(get_value(k, NULL, NULL));
        free(get_value(k, NULL, NULL));
        item *it = item_get(k, strlen(k), false);
        CHECK(it && (ITEM_CLSID_RAW(it) & TEMP_LRU) == WARM_LRU);
        if (it)
            item_release(it);
        CHECK(items_stat(cls, "moves_to_warm") >= 1);
        CHECK(items_stat(cls, "hits_to_cold") >= 1);
    }
    /* expired items are reclaimed by the maintainer from the tails */
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "ttl:%d", i);
        store_full(STORE_SET, key, "x", 1, 0, realtime(2), 0, NULL, NULL);
    }
    items_test_advance_clock(5);
    for (int i = 0; i < 5; i++)
        items_test_maintain_once();
    CHECK(stat_of(stats_all, "reclaimed") > 0);
    engine_stop();
}

static void test_crawler_and_metadump(void) {
    engine_opts o = defaults();
    o.threads = true;
    o.maintainer = false;   /* it would reclaim expired tails itself */
    engine_start(o);
    char key[32];
    for (int i = 0; i < 500; i++) {
        snprintf(key, sizeof(key), "c:%d", i);
        store_full(STORE_SET, key, "x", 1, 0, i < 300 ? realtime(5) : 0, 0, NULL, NULL);
    }
    CHECK_EQ(store(STORE_SET, "needs escape%", "v"), STORED);
    items_test_advance_clock(10);
    CHECK_EQ(lru_crawler_crawl("0"), CRAWLER_BADCLASS);
    CHECK_EQ(lru_crawler_crawl("1,x"), CRAWLER_BADCLASS);
    CHECK_EQ(lru_crawler_crawl("all"), CRAWLER_OK);
    long long rec = 0;
    for (int i = 0; i < 300 && rec < 300; i++) {
        sleep_ms(10);
        rec = stat_of(stats_all, "crawler_reclaimed");
    }
    CHECK_EQ(rec, 300);
    CHECK_EQ(stat_of(stats_all, "curr_items"), 201);
    CHECK(stat_of(stats_all, "lru_crawler_starts") >= 1);
    size_t len;
    crawler_result res;
    char *dump = lru_crawler_metadump("all", &len, &res);
    CHECK(dump && res == CRAWLER_OK);
    if (dump) {
        int lines = 0;
        for (size_t i = 0; i < len; i++)
            lines += dump[i] == '\n';
        CHECK_EQ(lines, 202);   /* 201 items + END */
        CHECK(memmem(dump, len, "key=needs%20escape%25 exp=-1 ", 29) != NULL);
        CHECK(memmem(dump, len, "END\r\n", 5) == dump + len - 5);
        free(dump);
    }
    CHECK_EQ(lru_crawler_enable(true), -1);   /* already running */
    CHECK_EQ(lru_crawler_enable(false), 0);
    CHECK_EQ(lru_crawler_crawl("all"), CRAWLER_NOTSTARTED);
    CHECK_EQ(lru_crawler_enable(true), 0);
    engine_stop();
}

static void test_stats_output(void) {
    engine_start(defaults());
    store(STORE_SET, "a", "1");
    free(get_value("a", NULL, NULL));
    CHECK_EQ(stat_of(items_stats_sizes, "sizes_status"), 0);
    stat_probe p = {"sizes_status", "", false};
    items_stats_sizes(probe_add, &p);
    CHECK(p.found && strcmp(p.val, "disabled") == 0);
    unsigned int cls = class_for(1);
    char name[64];
    snprintf(name, sizeof(name), "%u:chunk_size", cls);
    CHECK_EQ(stat_of(slabs_stats, name), (long long)slabs_chunk_size(cls));
    snprintf(name, sizeof(name), "%u:used_chunks", cls);
    CHECK_EQ(stat_of(slabs_stats, name), 1);
    CHECK_EQ(stat_of(slabs_stats, "active_slabs"), 1);
    CHECK_EQ(stat_of(slabs_stats, "total_malloced"), (long long)settings.slab_page_size);
    CHECK_EQ(items_stat(cls, "number"), 1);
    size_t dl;
    char *cd = item_cachedump(cls, 0, &dl);
    CHECK(cd && dl == 19 + 5 && memcmp(cd, "ITEM a [1 b; 0 s]\r\nEND\r\n", dl) == 0);
    free(cd);
    cd = item_cachedump(cls + 1, 0, &dl);
    CHECK(cd && dl == 5);
    free(cd);
    lru_set_tune(10, 50, 0.1, 1.5);
    slabs_set_automove_ratio(0.5);
    CHECK(items_stat(cls, "mem_requested") > 0);
    CHECK_EQ(stat_of(stats_all, "total_items"), 1);
    CHECK_EQ(stat_of(assoc_stats, "hash_power_level"), 16);
    CHECK_EQ(stat_of(assoc_stats, "hash_bytes"), 65536 * 8);
    /* chunk sizes: 8-aligned, growing, last == slab_chunk_max */
    unsigned int largest = slabs_largest_clsid();
    CHECK_EQ(slabs_chunk_size(largest), settings.slab_chunk_max);
    CHECK_EQ(slabs_chunk_size(1), 104);
    for (unsigned int i = 1; i < largest; i++) {
        CHECK(slabs_chunk_size(i) % 8 == 0);
        CHECK(slabs_chunk_size(i) < slabs_chunk_size(i + 1));
    }
    engine_stop();
}

/* ---- many threads at once ---- */

typedef struct {
    int id;
    _Atomic bool *stop;
    long ops, corrupt;
} hammer_ctx;

#define HAMMER_KEYS 2000

/* A value names its key and repeats one byte, so a torn or misplaced
 * value is detected by any reader. */
static size_t make_value(char *buf, int k, unsigned int r) {
    size_t len = 16 + (r % 3000);
    if (r % 97 == 0)
        len = 600 * 1000 + (r % 100000);   /* sometimes chunked */
    int n = snprintf(buf, 16, "%06d:", k);
    memset(buf + n, 'a' + (char)(r % 26), len - (size_t)n);
    return len;
}

static bool check_value(const char *v, size_t len, int k) {
    char head[16];
    int n = snprintf(head, sizeof(head), "%06d:", k);
    if (len < (size_t)n || memcmp(v, head, (size_t)n) != 0)
        return false;
    /* counters written by incr are digits only */
    for (size_t i = (size_t)n + 1; i < len; i++)
        if (v[i] != v[n])
            return false;
    return true;
}

static void *hammer(void *arg) {
    hammer_ctx *c = arg;
    stats_thread_register();
    char *buf = malloc(800 * 1000);
    unsigned int r = (unsigned)c->id * 7919u + 1;
    char key[32], nbuf[32];
    while (!atomic_load_explicit(c->stop, memory_order_relaxed)) {
        r = r * 1103515245u + 12345u;
        int k = (int)((r >> 8) % HAMMER_KEYS);
        snprintf(key, sizeof(key), "h:%d", k);
        unsigned int op = (r >> 4) % 16;
        if (op < 6) {
            size_t len = make_value(buf, k, r);
            store_full(STORE_SET, key, buf, len, 0, (r % 5 == 0) ? realtime(1) : 0, 0, NULL, NULL);
        } else if (op < 12) {
            size_t len;
            item *it = item_get(key, strlen(key), true);
            if (it) {
                struct iovec iov[64];
                int n = item_value_iov(it, iov, 64);
                len = it->nbytes - 2;
                size_t off = 0;
                for (int i = 0; i < n; i++) {
                    memcpy(buf + off, iov[i].iov_base, iov[i].iov_len);
                    off += iov[i].iov_len;
                }
                if (off != len + 2 || !check_value(buf, len, k))
                    c->corrupt++;
                item_release(it);
            }
        } else if (op < 13) {
            bool mm;
            item_delete(key, strlen(key), 0, &mm);
        } else if (op < 14) {
            size_t len = make_value(buf, k, r);
            (void)len;
            /* append bytes equal to the value's fill byte */
            item *it = item_get(key, strlen(key), false);
            if (it) {
                char fill[64];
                struct iovec iov[64];
                int n = item_value_iov(it, iov, 64);
                char b = n > 0 && iov[0].iov_len > 8 ? ((char *)iov[0].iov_base)[7] : 'z';
                uint64_t cas = it->cas;   /* append only onto what we read */
                item_release(it);
                memset(fill, b, sizeof(fill));
                store_full(STORE_APPEND, key, fill, sizeof(fill), 0, 0, cas, NULL, NULL);
            }
        } else if (op < 15) {
            snprintf(key, sizeof(key), "ctr:%d", k % 10);
            if (item_add_delta(key, strlen(key), true, 1, 0, nbuf, NULL) == DELTA_MISS)
                store(STORE_ADD, key, "0");
        } else {
            item *it = item_touch(key, strlen(key), 0);
            if (it)
                item_release(it);
        }
        c->ops++;
    }
    free(buf);
    return NULL;
}

static void test_threads_hammer(void) {
    engine_opts o = defaults();
    o.maxbytes = 32u << 20;
    o.hashpower = 10;
    o.threads = true;
    o.automove = 1;
    o.automove_window = 2;
    o.item_size_max = 2u << 20;
    engine_start(o);
    _Atomic bool stop = false;
    enum { NT = 4 };
    pthread_t t[NT];
    hammer_ctx c[NT];
    for (int i = 0; i < NT; i++) {
        c[i] = (hammer_ctx){i, &stop, 0, 0};
        pthread_create(&t[i], NULL, hammer, &c[i]);
    }
    /* meanwhile: page moves, crawls, clock jumps, flushes, stats */
    unsigned int largest = slabs_largest_clsid();
    for (int i = 0; i < 30; i++) {
        sleep_ms(100);
        slabs_reassign(-1, (int)(1 + (unsigned)i % largest));
        lru_crawler_crawl("all");
        if (i % 10 == 5)
            items_test_advance_clock(2);
        if (i == 20)
            item_flush_all(0);
        char *d;
        size_t len;
        crawler_result res;
        if (i % 10 == 0 && (d = lru_crawler_metadump("all", &len, &res)))
            free(d);
        stat_of(items_stats, "items:1:number");
        stat_of(slabs_stats, "1:chunk_size");
    }
    atomic_store(&stop, true);
    long ops = 0, corrupt = 0;
    for (int i = 0; i < NT; i++) {
        pthread_join(t[i], NULL);
        ops += c[i].ops;
        corrupt += c[i].corrupt;
    }
    fprintf(stderr, "  %ld ops, %lld pages moved, %lld rescues\n", ops,
            stat_of(stats_all, "slabs_moved"), stat_of(stats_all, "slab_reassign_rescues"));
    CHECK_EQ(corrupt, 0);
    CHECK(ops > 1000);
    /* every linked item is reachable and the counts agree */
    long long curr = stat_of(stats_all, "curr_items");
    CHECK(curr >= 0 && curr <= HAMMER_KEYS + 10);
    engine_stop();
}

static void test_restart_cycles(void) {
    engine_opts o = defaults();
    o.threads = true;
    for (int i = 0; i < 3; i++) {
        engine_start(o);
        CHECK_EQ(store(STORE_SET, "k", "v"), STORED);
        CHECK(value_is("k", "v"));
        engine_stop();
    }
}

/* ------------------------------------------------------------------ */

typedef struct {
    const char *name;
    void (*fn)(void);
} test_case;

int main(int argc, char **argv) {
    test_case tests[] = {
        {"set_get_replace_add", test_set_get_replace_add},
        {"cas", test_cas},
        {"append_prepend", test_append_prepend},
        {"incr_decr", test_incr_decr},
        {"delete_touch", test_delete_touch},
        {"expiry_and_flush", test_expiry_and_flush},
        {"stats_output", test_stats_output},
        {"segmented_lru", test_segmented_lru},
        {"eviction", test_eviction},
        {"large_values", test_large_values},
        {"hash_expansion", test_hash_expansion},
        {"page_move_manual", test_page_move_manual},
        {"automove_after_size_shift", test_automove_after_size_shift},
        {"crawler_and_metadump", test_crawler_and_metadump},
        {"threads_hammer", test_threads_hammer},
        {"restart_cycles", test_restart_cycles},
    };
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        if (argc > 1 && !strstr(tests[i].name, argv[1]))
            continue;
        failures_in_test = 0;
        fprintf(stderr, "test %s\n", tests[i].name);
        tests[i].fn();
        if (failures_in_test) {
            tests_failed++;
            fprintf(stderr, "FAILED %s\n", tests[i].name);
        } else {
            tests_passed++;
            fprintf(stderr, "ok %s\n", tests[i].name);
        }
    }
    printf("%d passed, %d failed\n", tests_passed, tests_failed);
    return tests_failed ? 1 : 0;
}
