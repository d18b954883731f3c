/*
 * assoc.c - the hash table from key to item, grown in the background.
 *
 * LAYOUT. 2^hashpower buckets of singly linked chains through
 * item->h_next. The bucket of a key is hv & (2^hashpower - 1), hv being
 * item_hash(key). Item locks stripe the same hash with fewer bits
 * (items.c keeps their count <= the initial bucket count), so one item
 * lock always covers whole buckets, old or new.
 *
 * EXPANSION WITHOUT STOPPING THE WORLD. When the table holds more than
 * 1.5 items per bucket, assoc_insert wakes the expansion thread. It
 * allocates a table twice the size, then publishes a new table *view*:
 *     { primary = new table, old = current table, hashpower + 1,
 *       expand_bucket = 0 }
 * and moves the old buckets one at a time: for old bucket b it takes the
 * item lock covering b (item_lock(b): b's low bits are the lock's bits),
 * relinks every item of b into the new table, and advances the view's
 * expand_bucket past b. Once every bucket has moved, the old table is
 * freed. Workers keep serving throughout; each waits at most for the move
 * of the one bucket its lock covers.
 *
 * WHY A READER ALWAYS SEES A SETTLED ANSWER. Every reader (find, insert,
 * delete) holds item_lock(hv) and loads the current view *after* taking
 * it. For the reader's old bucket b, "b < view->expand_bucket" can only
 * change while the expander holds that same lock, so the reader picks the
 * right table for its key. A reader can hold a stale view (published
 * before the expander started the next expansion) only if it took its lock
 * before the expander reached its bucket; then its bucket has not been
 * moved by the newer expansion and the stale view's tables are still where
 * its key lives. Views are never freed (there are at most 33, one per
 * hashpower, kept in a static array), and a view's `old` table is freed only
 * once its expand_bucket has passed every bucket, after which no reader of
 * that view dereferences `old`.
 *
 * MEMORY ORDERING. `cur_view` is published with release and loaded with
 * acquire (a reader sees the view's fields). expand_bucket is read and
 * written relaxed: its comparison with the reader's bucket is stable under
 * the reader's lock, and the bucket contents are ordered by that lock.
 * hash_items is a relaxed counter (a hint for when to expand).
 *
 * THREADS. The expansion thread sleeps on expand_cond (timed waits of
 * 100 ms so a stop is prompt). expand_lock guards the wake-up flag and the
 * stop flag; it is a leaf lock taken briefly by inserters that hold an item
 * lock (order: item lock -> expand_lock). The expander holds no other lock
 * while it takes an item lock.
 */
#define _GNU_SOURCE
#include "assoc.h"
#include "common/ps_thread.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "stats.h"

#define HASHPOWER_MAX 32

typedef struct assoc_view {
    item **primary;                 /* 2^hashpower buckets */
    item **old;                     /* 2^(hashpower-1) buckets, or NULL */
    unsigned int hashpower;
    _Atomic uint64_t expand_bucket; /* old buckets below this have moved */
} assoc_view;

static assoc_view views[HASHPOWER_MAX + 1];
static _Atomic(assoc_view *) cur_view;
static _Atomic uint64_t hash_items;
static _Atomic bool expanding;

static pthread_mutex_t expand_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t expand_cond;
static bool expand_wanted;      /* expand_lock */
static bool expand_stop;        /* expand_lock */
static bool expander_started;
static pthread_t expander_tid;

#define HASHSIZE(p) ((uint64_t)1 << (p))
#define HASHMASK(p) (HASHSIZE(p) - 1)

int assoc_init(int hashpower_init) {
    if (hashpower_init < 1 || hashpower_init > HASHPOWER_MAX - 1)
        return -1;
    memset(views, 0, sizeof(views));
    assoc_view *v = &views[hashpower_init];
    v->primary = calloc(HASHSIZE(hashpower_init), sizeof(item *));
    if (!v->primary)
        return -1;
    v->old = NULL;
    v->hashpower = (unsigned)hashpower_init;
    atomic_store_explicit(&v->expand_bucket, 0, memory_order_relaxed);
    atomic_store_explicit(&hash_items, 0, memory_order_relaxed);
    atomic_store_explicit(&expanding, false, memory_order_relaxed);
    atomic_store_explicit(&cur_view, v, memory_order_release);
    expand_wanted = false;
    return 0;
}

void assoc_cleanup(void) {
    /* Only after assoc_threads_stop(). Items themselves live in slab
     * pages and are freed with them. */
    for (int i = 0; i <= HASHPOWER_MAX; i++) {
        free(views[i].primary);
        views[i].primary = NULL;
        views[i].old = NULL;   /* an old table is some lower view's primary */
    }
    atomic_store_explicit(&cur_view, NULL, memory_order_release);
}

/* The bucket head pointer that holds hv (caller holds item_lock(hv)). */
static item **bucket_for(uint32_t hv) {
    assoc_view *v = atomic_load_explicit(&cur_view, memory_order_acquire);
    if (v->old) {
        uint64_t ob = hv & HASHMASK(v->hashpower - 1);
        if (ob >= atomic_load_explicit(&v->expand_bucket, memory_order_relaxed))
            return &v->old[ob];
    }
    return &v->primary[hv & HASHMASK(v->hashpower)];
}

item *assoc_find(const char *key, size_t nkey, uint32_t hv) {
    item *it = *bucket_for(hv);
    while (it) {
        if (it->nkey == nkey && memcmp(ITEM_key(it), key, nkey) == 0)
            return it;
        it = it->h_next;
    }
    return NULL;
}

static void maybe_start_expand(void) {
    assoc_view *v = atomic_load_explicit(&cur_view, memory_order_acquire);
    uint64_t n = atomic_load_explicit(&hash_items, memory_order_relaxed);
    if (n <= HASHSIZE(v->hashpower) * 3 / 2 || v->hashpower >= HASHPOWER_MAX ||
        atomic_load_explicit(&expanding, memory_order_relaxed))
        return;
    /* Never block an item-lock holder on the expander: trylock. */
    if (pthread_mutex_trylock(&expand_lock) == 0) {
        if (!expand_wanted) {
            expand_wanted = true;
            pthread_cond_signal(&expand_cond);
        }
        pthread_mutex_unlock(&expand_lock);
    }
}

int assoc_insert(item *it, uint32_t hv) {
    item **b = bucket_for(hv);
    it->h_next = *b;
    *b = it;
    atomic_fetch_add_explicit(&hash_items, 1, memory_order_relaxed);
    maybe_start_expand();
    return 1;
}

void assoc_delete(const char *key, size_t nkey, uint32_t hv) {
    item **pos = bucket_for(hv);
    while (*pos) {
        item *it = *pos;
        if (it->nkey == nkey && memcmp(ITEM_key(it), key, nkey) == 0) {
            *pos = it->h_next;
            it->h_next = NULL;
            atomic_fetch_sub_explicit(&hash_items, 1, memory_order_relaxed);
            return;
        }
        pos = &it->h_next;
    }
}

/* Grow by one power, moving bucket by bucket. Returns false if asked to
 * stop part way (the table stays consistent: lookups use both tables). */
static bool expand_once(void) {
    assoc_view *v = atomic_load_explicit(&cur_view, memory_order_acquire);
    unsigned int np = v->hashpower + 1;
    item **table = calloc(HASHSIZE(np), sizeof(item *));
    if (!table)
        return true;            /* try again at the next trigger */
    assoc_view *nv = &views[np];
    nv->primary = table;
    nv->old = v->primary;
    nv->hashpower = np;
    atomic_store_explicit(&nv->expand_bucket, 0, memory_order_relaxed);
    atomic_store_explicit(&expanding, true, memory_order_relaxed);
    atomic_store_explicit(&cur_view, nv, memory_order_release);

    uint64_t nold = HASHSIZE(np - 1);
    for (uint64_t b = 0; b < nold; b++) {
        if ((b & 1023) == 0) {
            pthread_mutex_lock(&expand_lock);
            bool stop = expand_stop;
            pthread_mutex_unlock(&expand_lock);
            if (stop)
                return false;
        }
        item_lock((uint32_t)b);
        item *it = nv->old[b];
        while (it) {
            item *next = it->h_next;
            uint32_t hv = item_hash(ITEM_key(it), it->nkey);
            item **nb = &table[hv & HASHMASK(np)];
            it->h_next = *nb;
            *nb = it;
            it = next;
        }
        nv->old[b] = NULL;
        atomic_store_explicit(&nv->expand_bucket, b + 1, memory_order_relaxed);
        item_unlock((uint32_t)b);
    }
    /* every reader of nv now takes the primary: old is unreachable */
    free(nv->old);
    views[np - 1].primary = NULL;    /* same array, now freed */
    atomic_store_explicit(&expanding, false, memory_order_relaxed);
    return true;
}

static void *expander_main(void *arg) {
    (void)arg;
    stats_thread_register();
    pthread_mutex_lock(&expand_lock);
    while (!expand_stop) {
        if (!expand_wanted) {
            ps_cond_wait_us(&expand_cond, &expand_lock, 100 * 1000);
            continue;
        }
        pthread_mutex_unlock(&expand_lock);
        bool done = expand_once();
        pthread_mutex_lock(&expand_lock);
        expand_wanted = false;
        if (!done)
            break;
    }
    pthread_mutex_unlock(&expand_lock);
    return NULL;
}

int assoc_threads_start(void) {
    ps_cond_init_monotonic(&expand_cond);
    pthread_mutex_lock(&expand_lock);
    expand_stop = false;
    pthread_mutex_unlock(&expand_lock);
    if (pthread_create(&expander_tid, NULL, expander_main, NULL) != 0)
        return -1;
    expander_started = true;
    return 0;
}

void assoc_threads_stop(void) {
    pthread_mutex_lock(&expand_lock);
    expand_stop = true;
    pthread_cond_broadcast(&expand_cond);
    pthread_mutex_unlock(&expand_lock);
    if (expander_started)
        pthread_join(expander_tid, NULL);
    expander_started = false;
}

void assoc_stats(add_stat_fn add, void *ctx) {
    assoc_view *v = atomic_load_explicit(&cur_view, memory_order_acquire);
    unsigned int hp = v ? v->hashpower : 0;
    stats_appendf(add, ctx, "hash_power_level", "%u", hp);
    stats_appendf(add, ctx, "hash_bytes", "%llu",
                  (unsigned long long)(v ? HASHSIZE(hp) * sizeof(item *) : 0));
    stats_appendf(add, ctx, "hash_is_expanding", "%u",
                  atomic_load_explicit(&expanding, memory_order_relaxed) ? 1u : 0u);
}
