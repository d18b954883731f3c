/*
 * items.c - the life of an item: allocation (with eviction), linking into
 * the hash table and the segmented LRU, the store/incr/delete/touch/flush
 * semantics of memcached, the clock, the LRU maintainer and the LRU
 * crawler.
 *
 * ITEMS AND CHUNKS. An item whose header + key + value fits the largest
 * slab class lives in one chunk: [item][key][NUL][value "\r\n"]. A bigger
 * one is CHUNKED (ITEM_CHUNKED): its header, key and a chunk_ref (first
 * chunk, header class) live in a small chunk of whatever class fits them,
 * and the value is spread over item_chunks taken from the largest class
 * (the last, partial chunk from the best-fitting class when that class can
 * give one without evicting). All chunks are taken when the item is
 * allocated, so the protocol can read a value straight into them. A
 * chunked item is linked into the LRU of the LARGEST class (that is where
 * its memory is: evicting from that LRU frees largest-class chunks), and
 * its stats count there.
 *
 * REFERENCES. refcount counts the hash table's link (1) plus every holder.
 * Increments happen under the item lock (lookups) or by a thread that
 * already holds a reference; the decrement that may free is acq_rel so the
 * freeing thread sees every write of every previous holder. Memory goes
 * back to the slabs when the count reaches 0, which can only happen once
 * the item is unlinked.
 *
 * LOCKS (order: item lock -> LRU lock -> slabs lock; never the reverse,
 * except with trylock):
 *   item_locks[hv & mask]  hash chains, it_flags changes, exptime, cas,
 *                          LRU segment changes of the items it covers.
 *   lru_locks[id]          one per (class | segment): list links, sizes,
 *                          bytes and the per-LRU stats (itemstats).
 *   slabs lock (slabs.c)   free lists; also the item_chunk headers, which
 *                          the page mover reads under it.
 * Threads holding an LRU lock (eviction, maintainer, crawler) only *try*
 * item locks, and skip items whose lock is taken.
 *
 * SEGMENTED LRU (memcached's): every class has HOT, WARM, COLD (and TEMP
 * when temporary_ttl is set: short-TTL items live there and are only ever
 * reclaimed). New items enter HOT. Reads only flip bits: the first marks
 * FETCHED, a second ACTIVE. The maintainer thread pulls from the tails:
 * HOT items flow to WARM if ACTIVE, else to COLD once HOT is over
 * hot_lru_pct of the class's bytes or older than hot_max_factor x the COLD
 * age; WARM recycles ACTIVE items within WARM and spills to COLD over
 * warm_lru_pct / warm_max_factor; ACTIVE items at the COLD tail go back to
 * WARM. A read of an item already in COLD moves it to WARM right away if
 * the COLD lock can be *try*-locked, else leaves it ACTIVE for the
 * maintainer. Allocation evicts from the COLD tail, and when COLD has
 * nothing to give forces a HOT item down to COLD and retries (at most 10
 * times). Expired and flushed items met at any tail are reclaimed first.
 *
 * TIME. current_time counts seconds since process_started (= wall clock
 * at start - 2). It is advanced by the clock thread from CLOCK_MONOTONIC,
 * so a wall-clock jump cannot expire (or revive) the cache; absolute
 * exptimes (> 30 days) are converted against process_started. Readers load
 * it relaxed: it is a monotonic hint compared against item times.
 * it->time and it->exptime are accessed with relaxed atomics (the
 * maintainer reads tail ages without item locks; protocol threads read
 * TTLs of items they hold while another thread may touch them).
 *
 * THREADS started by items_threads_start(): the clock, the LRU maintainer
 * (when settings.lru_maintainer) and the LRU crawler (when
 * settings.lru_crawler). Each waits on its own condition variable with a
 * timeout (clock: 100 ms; maintainer: adaptive up to 1 s; crawler: 100 ms)
 * and is woken by items_threads_stop(), which joins them.
 *
 * CRAWLER. Walks an LRU from tail to head by moving a marker item (never
 * counted, never in the hash table; recognised by ITEM_MARKER) one step at
 * a time under the LRU lock, so it holds no lock for longer than one item.
 * It reclaims dead items (crawler_reclaimed) and counts what it looked at
 * (crawler_items_checked). It runs on demand (lru_crawler crawl) and by
 * itself every CRAWL_AUTO_INTERVAL seconds. lru_crawler_metadump walks the
 * same way with its own markers, in the calling thread.
 */
#define _GNU_SOURCE
#include "items.h"
#include "common/ps_thread.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/hash.h"
#include "assoc.h"
#include "settings.h"
#include "slabs.h"
#include "stats.h"

_Static_assert(offsetof(item, next) == offsetof(item_chunk, next), "chunk layout");
_Static_assert(offsetof(item, prev) == offsetof(item_chunk, prev), "chunk layout");
_Static_assert(offsetof(item, refcount) == offsetof(item_chunk, refcount), "chunk layout");
_Static_assert(offsetof(item, it_flags) == offsetof(item_chunk, it_flags), "chunk layout");
_Static_assert(offsetof(item, slabs_clsid) == offsetof(item_chunk, slabs_clsid), "chunk layout");

#define ITEM_MARKER (1u << 15)        /* crawler/metadump position marker */
#define REALTIME_MAXDELTA (60 * 60 * 24 * 30)
#define ITEM_UPDATE_INTERVAL 60
#define LRU_IDS 256                   /* class id | segment bits */
#define LRU_PULL_EVICT 1
#define PULL_TRIES 5
#define JUGGLE_MAX 500
#define MAINT_MIN_SLEEP_US 1000
#define MAINT_MAX_SLEEP_US 1000000
#define CRAWL_AUTO_INTERVAL 60
#define CRAWL_ITEMS_PER_SLEEP 1000
#define REFCOUNT_LIMIT 60000          /* lookups fail rather than overflow */

static const unsigned int lru_segments[4] = {HOT_LRU, WARM_LRU, COLD_LRU, TEMP_LRU};

/* value reference stored in a chunked item where the value would start */
typedef struct chunk_ref {
    item_chunk *first;
    uint32_t hdr_clsid;     /* class the header chunk came from */
    uint32_t pad_;
} chunk_ref;

typedef struct {
    uint64_t evicted, evicted_nonzero, reclaimed, outofmemory, tailrepairs;
    uint64_t expired_unfetched, evicted_unfetched, evicted_active;
    uint64_t crawler_reclaimed, crawler_items_checked, lrutail_reflocked;
    uint64_t moves_to_cold, moves_to_warm, moves_within_lru, direct_reclaims;
    rel_time_t evicted_time;
} itemstats_t;

/* ---- clock ---- */
_Atomic rel_time_t current_time;
time_t process_started;
_Atomic rel_time_t settings_oldest_live;
_Atomic uint64_t settings_oldest_cas;
static struct timespec mono_start;
static _Atomic rel_time_t clock_skew;      /* test hook offset */

/* ---- item locks ---- */
static pthread_mutex_t *item_locks;
static uint32_t item_lock_mask;

/* ---- LRUs (lru_locks[id]) ---- */
static pthread_mutex_t lru_locks[LRU_IDS];
static item *heads[LRU_IDS];
static item *tails[LRU_IDS];
static uint32_t lru_sizes[LRU_IDS];
static uint64_t lru_bytes[LRU_IDS];
static itemstats_t itemstats[LRU_IDS];

/* ---- global counts ---- */
static _Atomic uint64_t cas_id;
static _Atomic uint64_t curr_items, total_items, curr_bytes;
static _Atomic uint64_t maintainer_juggles, crawler_starts;
static _Atomic bool crawler_running;

/* ---- run-time knobs (protocol commands change them) ---- */
static _Atomic bool rt_segmented;
static _Atomic bool rt_temp_lru;
static _Atomic int rt_temp_ttl;
static _Atomic int rt_crawler_sleep;
static _Atomic uint32_t rt_crawler_tocrawl;
static _Atomic int rt_hot_pct, rt_warm_pct;
static _Atomic double rt_hot_factor, rt_warm_factor;

/* ---- threads ---- */
static pthread_mutex_t threads_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t clock_cond, maint_cond, crawler_cond;
static bool stop_clock, stop_maint, stop_crawler;     /* threads_lock */
static bool clock_started, maint_started, crawler_started;
static pthread_t clock_tid, maint_tid, crawler_tid;
static uint64_t crawl_request_mask;                    /* threads_lock; bit per class */
static bool items_ready;

static void do_item_unlink_nolock(item *it, uint32_t hv);
static void do_item_remove(item *it);
static void do_item_update(item *it);

/* ------------------------------------------------------------------ */
/* small helpers */

static inline rel_time_t now_rel(void) {
    return atomic_load_explicit(&current_time, memory_order_relaxed);
}
static inline rel_time_t exp_get(const item *it) {
    return __atomic_load_n(&it->exptime, __ATOMIC_RELAXED);
}
static inline void exp_set(item *it, rel_time_t e) {
    __atomic_store_n(&it->exptime, e, __ATOMIC_RELAXED);
}
static inline void clsid_set(item *it, unsigned int id) {
    __atomic_store_n(&it->slabs_clsid, (uint8_t)id, __ATOMIC_RELAXED);
}
static inline bool is_marker(const item *it) {
    return (item_flags(it) & ITEM_MARKER) != 0;
}
static inline size_t key_pad(size_t nkey) {
    return (nkey + 1 + 7) & ~(size_t)7;
}
static inline chunk_ref *item_chunk_ref(item *it) {
    return (chunk_ref *)(it->data + key_pad(it->nkey));
}
static inline size_t hdr_total(size_t nkey) {
    return sizeof(item) + key_pad(nkey) + sizeof(chunk_ref);
}
static inline unsigned int seg_index(unsigned int lru) {
    return lru >> 6;   /* HOT 0, WARM 1, COLD 2, TEMP 3 */
}

size_t item_ntotal(const item *it) {
    return sizeof(item) + it->nkey + 1 + it->nbytes;
}

/* ------------------------------------------------------------------ */
/* clock */

static void clock_update(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    rel_time_t t = (rel_time_t)(ts.tv_sec - mono_start.tv_sec) + 2 +
                   atomic_load_explicit(&clock_skew, memory_order_relaxed);
    /* the clock thread and the test hook may both write: only ever move
     * forward */
    rel_time_t cur = now_rel();
    while (t > cur && !atomic_compare_exchange_weak_explicit(
                          &current_time, &cur, t, memory_order_relaxed, memory_order_relaxed))
        ;
}

void items_test_advance_clock(rel_time_t seconds) {
    atomic_fetch_add_explicit(&clock_skew, seconds, memory_order_relaxed);
    clock_update();
}

rel_time_t realtime(int64_t exptime) {
    if (exptime == 0)
        return 0;
    if (exptime < 0)
        return 1;          /* already expired: any time before now */
    if (exptime > REALTIME_MAXDELTA) {
        if (exptime <= (int64_t)process_started)
            return 1;
        int64_t rel = exptime - (int64_t)process_started;
        return rel > UINT32_MAX ? UINT32_MAX : (rel_time_t)rel;
    }
    return (rel_time_t)(exptime + now_rel());
}

int64_t item_ttl_remaining(const item *it) {
    rel_time_t e = exp_get(it);
    if (e == 0)
        return -1;
    rel_time_t now = now_rel();
    return e > now ? (int64_t)(e - now) : 0;
}

/* ------------------------------------------------------------------ */
/* hashing and item locks */

uint32_t item_hash(const char *key, size_t nkey) {
    return ps_murmur3_32(key, nkey, 0);
}

void item_lock(uint32_t hv) {
    pthread_mutex_lock(&item_locks[hv & item_lock_mask]);
}

void item_unlock(uint32_t hv) {
    pthread_mutex_unlock(&item_locks[hv & item_lock_mask]);
}

int item_trylock(uint32_t hv) {
    return pthread_mutex_trylock(&item_locks[hv & item_lock_mask]);
}

uint64_t item_next_cas(void) {
    return atomic_fetch_add_explicit(&cas_id, 1, memory_order_relaxed) + 1;
}

/* ------------------------------------------------------------------ */
/* init / cleanup */

int items_init(void) {
    /* memcached sizes the lock table by thread count; never more locks
     * than initial buckets, so one lock covers whole buckets */
    int power = settings.num_threads < 3 ? 10 : settings.num_threads < 4 ? 11 :
                settings.num_threads < 5 ? 12 : 13;
    if (power > settings.hashpower_init)
        power = settings.hashpower_init;
    if (power < 0)
        power = 0;
    uint32_t n = 1u << power;
    item_locks = calloc(n, sizeof(pthread_mutex_t));
    if (!item_locks)
        return -1;
    for (uint32_t i = 0; i < n; i++)
        pthread_mutex_init(&item_locks[i], NULL);
    item_lock_mask = n - 1;

    static bool lru_locks_ready;     /* mutexes outlive a server restart */
    if (!lru_locks_ready) {
        for (int i = 0; i < LRU_IDS; i++)
            pthread_mutex_init(&lru_locks[i], NULL);
        ps_cond_init_monotonic(&clock_cond);
        ps_cond_init_monotonic(&maint_cond);
        ps_cond_init_monotonic(&crawler_cond);
        lru_locks_ready = true;
    }
    memset(heads, 0, sizeof(heads));
    memset(tails, 0, sizeof(tails));
    memset(lru_sizes, 0, sizeof(lru_sizes));
    memset(lru_bytes, 0, sizeof(lru_bytes));
    memset(itemstats, 0, sizeof(itemstats));

    clock_gettime(CLOCK_MONOTONIC, &mono_start);
    process_started = time(NULL) - 2;
    atomic_store_explicit(&clock_skew, 0, memory_order_relaxed);
    atomic_store_explicit(&current_time, 2, memory_order_relaxed);
    atomic_store_explicit(&settings_oldest_live, 0, memory_order_relaxed);
    atomic_store_explicit(&settings_oldest_cas, 0, memory_order_relaxed);
    atomic_store_explicit(&cas_id, 0, memory_order_relaxed);
    atomic_store_explicit(&curr_items, 0, memory_order_relaxed);
    atomic_store_explicit(&total_items, 0, memory_order_relaxed);
    atomic_store_explicit(&curr_bytes, 0, memory_order_relaxed);
    atomic_store_explicit(&maintainer_juggles, 0, memory_order_relaxed);
    atomic_store_explicit(&crawler_starts, 0, memory_order_relaxed);
    atomic_store_explicit(&crawler_running, false, memory_order_relaxed);

    atomic_store_explicit(&rt_segmented, settings.lru_segmented && settings.lru_maintainer,
                          memory_order_relaxed);
    atomic_store_explicit(&rt_temp_lru, settings.temp_lru, memory_order_relaxed);
    atomic_store_explicit(&rt_temp_ttl, settings.temporary_ttl, memory_order_relaxed);
    atomic_store_explicit(&rt_crawler_sleep, settings.lru_crawler_sleep, memory_order_relaxed);
    atomic_store_explicit(&rt_crawler_tocrawl, settings.lru_crawler_tocrawl, memory_order_relaxed);
    atomic_store_explicit(&rt_hot_pct, settings.hot_lru_pct, memory_order_relaxed);
    atomic_store_explicit(&rt_warm_pct, settings.warm_lru_pct, memory_order_relaxed);
    atomic_store_explicit(&rt_hot_factor, settings.hot_max_factor, memory_order_relaxed);
    atomic_store_explicit(&rt_warm_factor, settings.warm_max_factor, memory_order_relaxed);
    crawl_request_mask = 0;
    items_ready = true;
    return 0;
}

void items_cleanup(void) {
    /* Items live in slab pages, freed by slabs_cleanup(); nothing here
     * holds memory but the lock table. */
    if (item_locks) {
        for (uint32_t i = 0; i <= item_lock_mask; i++)
            pthread_mutex_destroy(&item_locks[i]);
        free(item_locks);
        item_locks = NULL;
    }
    memset(heads, 0, sizeof(heads));
    memset(tails, 0, sizeof(tails));
    items_ready = false;
}

/* ------------------------------------------------------------------ */
/* LRU lists (caller holds lru_locks[id]) */

static void do_item_link_q(item *it) {
    unsigned int id = ITEM_CLSID_RAW(it);
    it->prev = NULL;
    it->next = heads[id];
    if (it->next)
        it->next->prev = it;
    heads[id] = it;
    if (!tails[id])
        tails[id] = it;
    lru_sizes[id]++;
    lru_bytes[id] += item_ntotal(it);
}

static void do_item_unlink_q(item *it) {
    unsigned int id = ITEM_CLSID_RAW(it);
    if (heads[id] == it)
        heads[id] = it->next;
    if (tails[id] == it)
        tails[id] = it->prev;
    if (it->next)
        it->next->prev = it->prev;
    if (it->prev)
        it->prev->next = it->next;
    it->next = it->prev = NULL;
    lru_sizes[id]--;
    lru_bytes[id] -= item_ntotal(it);
}

static void item_link_q(item *it) {
    unsigned int id = ITEM_CLSID_RAW(it);
    pthread_mutex_lock(&lru_locks[id]);
    do_item_link_q(it);
    pthread_mutex_unlock(&lru_locks[id]);
}

static void item_unlink_q(item *it) {
    unsigned int id = ITEM_CLSID_RAW(it);
    pthread_mutex_lock(&lru_locks[id]);
    do_item_unlink_q(it);
    pthread_mutex_unlock(&lru_locks[id]);
}

/* The last real item of an LRU (markers skipped); lru lock held. */
static item *lru_tail_item(unsigned int id) {
    item *t = tails[id];
    while (t && is_marker(t))
        t = t->prev;
    return t;
}

/* ------------------------------------------------------------------ */
/* freeing */

void item_free(item *it) {
    uint16_t fl = item_flags(it);
    if (fl & ITEM_CHUNKED) {
        chunk_ref *ref = item_chunk_ref(it);
        item_chunk *ch = ref->first;
        while (ch) {
            item_chunk *next = ch->next;
            unsigned int cid = ch->slabs_clsid;
            slabs_free(ch, slabs_chunk_size(cid), cid);
            ch = next;
        }
        slabs_free(it, hdr_total(it->nkey), ref->hdr_clsid);
    } else {
        slabs_free(it, item_ntotal(it), ITEM_CLSID(it));
    }
}

static void do_item_remove(item *it) {
    if (atomic_fetch_sub_explicit(&it->refcount, 1, memory_order_acq_rel) == 1)
        item_free(it);
}

void item_release(item *it) {
    do_item_remove(it);
}

/* ------------------------------------------------------------------ */
/* the flush and dead checks */

static bool item_is_flushed(const item *it) {
    rel_time_t oldest_live = atomic_load_explicit(&settings_oldest_live, memory_order_relaxed);
    if (oldest_live == 0 || oldest_live > now_rel())
        return false;
    uint64_t oldest_cas = atomic_load_explicit(&settings_oldest_cas, memory_order_relaxed);
    return item_time(it) <= oldest_live ||
           (oldest_cas != 0 && it->cas != 0 && it->cas < oldest_cas);
}

bool item_is_dead(const item *it) {
    rel_time_t e = exp_get(it);
    return (e != 0 && e <= now_rel()) || item_is_flushed(it);
}

void item_flush_all(rel_time_t when) {
    rel_time_t now = now_rel();
    if (when == 0)
        when = now;
    if (settings.use_cas) {
        rel_time_t oldest = when - 1;
        atomic_store_explicit(&settings_oldest_live, oldest, memory_order_relaxed);
        if (oldest <= now)
            atomic_store_explicit(&settings_oldest_cas, item_next_cas(), memory_order_relaxed);
    } else {
        atomic_store_explicit(&settings_oldest_live, when, memory_order_relaxed);
    }
}

/* ------------------------------------------------------------------ */
/* pulling from LRU tails */

/*
 * Look at up to PULL_TRIES items at the tail of LRU (orig_id | cur_lru):
 * reclaim dead ones, move HOT/WARM items on when over their share or age,
 * send ACTIVE COLD items back to WARM, and with LRU_PULL_EVICT evict the
 * COLD tail. Returns how many items it removed or moved.
 */
static int lru_pull_tail(unsigned int orig_id, unsigned int cur_lru,
                         uint64_t total_bytes, int flags, rel_time_t max_age) {
    unsigned int id = orig_id | cur_lru;
    int removed = 0;
    int tries = PULL_TRIES;
    item *moved = NULL;
    uint32_t moved_hv = 0;
    unsigned int move_to = 0;
    uint64_t limit = 0;
    rel_time_t now = now_rel();

    pthread_mutex_lock(&lru_locks[id]);
    item *search = tails[id];
    for (; tries > 0 && search; tries--) {
        item *next_it = search->prev;
        if (is_marker(search)) {
            tries++;
            search = next_it;
            continue;
        }
        uint32_t hv = item_hash(ITEM_key(search), search->nkey);
        if (item_trylock(hv) != 0) {
            search = next_it;
            continue;
        }
        if (atomic_fetch_add_explicit(&search->refcount, 1, memory_order_relaxed) + 1 != 2) {
            itemstats[id].lrutail_reflocked++;
            if (settings.tail_repair_time &&
                item_time(search) + (rel_time_t)settings.tail_repair_time < now) {
                /* a reference leaked: forcibly free (memcached's tail repair) */
                itemstats[id].tailrepairs++;
                atomic_store_explicit(&search->refcount, 1, memory_order_relaxed);
                do_item_unlink_nolock(search, hv);
                item_unlock(hv);
                search = next_it;
                continue;
            }
        }
        rel_time_t e = exp_get(search);
        uint16_t fl = item_flags(search);
        if ((e != 0 && e < now) || item_is_flushed(search)) {
            itemstats[id].reclaimed++;
            if (!(fl & ITEM_FETCHED))
                itemstats[id].expired_unfetched++;
            do_item_unlink_nolock(search, hv);   /* link ref */
            do_item_remove(search);              /* our pin: may free */
            item_unlock(hv);
            removed++;
            search = next_it;
            continue;
        }

        bool stop_here = true;
        switch (cur_lru) {
        case HOT_LRU:
            limit = total_bytes *
                    (uint64_t)atomic_load_explicit(&rt_hot_pct, memory_order_relaxed) / 100;
            /* fall through */
        case WARM_LRU:
            if (limit == 0)
                limit = total_bytes *
                        (uint64_t)atomic_load_explicit(&rt_warm_pct, memory_order_relaxed) / 100;
            if (fl & ITEM_ACTIVE) {
                item_flags_clear(search, ITEM_ACTIVE);
                removed++;
                if (cur_lru == WARM_LRU) {
                    itemstats[id].moves_within_lru++;
                    do_item_unlink_q(search);
                    do_item_link_q(search);
                    do_item_remove(search);
                    item_unlock(hv);
                    stop_here = false;    /* memcached keeps looking */
                } else {
                    itemstats[id].moves_to_warm++;
                    move_to = WARM_LRU;
                    do_item_unlink_q(search);
                    moved = search;
                    moved_hv = hv;
                }
            } else if (lru_bytes[id] > limit || now - item_time(search) > max_age) {
                itemstats[id].moves_to_cold++;
                move_to = COLD_LRU;
                do_item_unlink_q(search);
                moved = search;
                moved_hv = hv;
                removed++;
            } else {
                moved = search;   /* not moving: just release below */
                moved_hv = hv;
            }
            break;
        case COLD_LRU:
            moved = search;
            moved_hv = hv;
            if (flags & LRU_PULL_EVICT) {
                if (!settings.evict_to_free)
                    break;
                itemstats[id].evicted++;
                itemstats[id].evicted_time = now - item_time(search);
                if (e != 0)
                    itemstats[id].evicted_nonzero++;
                if (!(fl & ITEM_FETCHED))
                    itemstats[id].evicted_unfetched++;
                if (fl & ITEM_ACTIVE)
                    itemstats[id].evicted_active++;
                do_item_unlink_nolock(search, hv);
                removed++;
            } else if ((fl & ITEM_ACTIVE) &&
                       atomic_load_explicit(&rt_segmented, memory_order_relaxed)) {
                itemstats[id].moves_to_warm++;
                item_flags_clear(search, ITEM_ACTIVE);
                move_to = WARM_LRU;
                do_item_unlink_q(search);
                removed++;
            }
            break;
        case TEMP_LRU:
            moved = search;  /* only reclaims matter here */
            moved_hv = hv;
            break;
        }
        if (stop_here)
            break;
        search = next_it;
    }
    pthread_mutex_unlock(&lru_locks[id]);

    if (moved) {
        if (move_to) {
            clsid_set(moved, ITEM_CLSID(moved) | move_to);
            if (move_to == WARM_LRU)
                item_set_time(moved, now);
            item_link_q(moved);
        }
        do_item_remove(moved);    /* our pin; frees an evicted item */
        item_unlock(moved_hv);
    }
    return removed;
}

/* Allocate a chunk of class id, evicting from that class as needed. */
static void *alloc_pull(size_t ntotal, unsigned int id) {
    void *p = NULL;
    int i;
    bool segmented = atomic_load_explicit(&rt_segmented, memory_order_relaxed);
    for (i = 0; i < 10; i++) {
        if (!segmented)
            lru_pull_tail(id, COLD_LRU, 0, 0, 0);   /* reclaim first */
        p = slabs_alloc(ntotal, id);
        if (p)
            break;
        if (lru_pull_tail(id, COLD_LRU, 0, LRU_PULL_EVICT, 0) <= 0) {
            if (segmented)
                lru_pull_tail(id, HOT_LRU, 0, 0, 0);
            else
                break;
        }
    }
    if (i > 0) {
        pthread_mutex_lock(&lru_locks[id]);
        itemstats[id].direct_reclaims += (uint64_t)i;
        pthread_mutex_unlock(&lru_locks[id]);
    }
    return p;
}

/* ------------------------------------------------------------------ */
/* allocation */

bool item_size_ok(size_t nkey, uint32_t client_flags, size_t nbytes) {
    (void)client_flags;
    if (nbytes < 2 || nkey > PS_KEY_MAX_LENGTH)
        return false;
    size_t ntotal = ITEM_ntotal_small(nkey, nbytes);
    if (ntotal > settings.item_size_max)
        return false;
    if (slabs_clsid(ntotal) != 0)
        return true;
    return slabs_clsid(hdr_total(nkey)) != 0;
}

static void count_oom(unsigned int id) {
    pthread_mutex_lock(&lru_locks[id]);
    itemstats[id].outofmemory++;
    pthread_mutex_unlock(&lru_locks[id]);
}

/* Take the value chunks of a chunked item; false (nothing kept) on OOM. */
static bool alloc_chunks(item *it, size_t nbytes) {
    unsigned int largest = slabs_largest_clsid();
    size_t cmax = slabs_chunk_size(largest);
    size_t remaining = nbytes;
    item_chunk *first = NULL, *last = NULL;
    while (remaining > 0) {
        size_t want = remaining + sizeof(item_chunk);
        unsigned int cid = largest;
        item_chunk *ch = NULL;
        if (want < cmax) {
            unsigned int tid = slabs_clsid(want);
            if (tid && tid != largest) {
                ch = slabs_alloc(slabs_chunk_size(tid), tid);
                if (ch)
                    cid = tid;
            }
        }
        if (!ch)
            ch = alloc_pull(cmax, largest);
        if (!ch)
            break;
        size_t cap = slabs_chunk_size(cid) - sizeof(item_chunk);
        size_t used = remaining < cap ? remaining : cap;
        slabs_mlock();   /* the page mover reads chunk headers under it */
        ch->head = it;
        ch->next = NULL;
        ch->prev = last;
        ch->size = (uint32_t)cap;
        ch->used = (uint32_t)used;
        atomic_store_explicit(&ch->refcount, 0, memory_order_relaxed);
        ch->slabs_clsid = (uint8_t)cid;
        ch->orig_clsid = (uint8_t)cid;
        __atomic_store_n(&ch->it_flags, ITEM_CHUNK, __ATOMIC_RELEASE);
        if (last)
            last->next = ch;
        else
            first = ch;
        slabs_munlock();
        last = ch;
        remaining -= used;
    }
    item_chunk_ref(it)->first = first;
    if (remaining == 0)
        return true;
    while (first) {
        item_chunk *next = first->next;
        unsigned int cid = first->slabs_clsid;
        slabs_free(first, slabs_chunk_size(cid), cid);
        first = next;
    }
    item_chunk_ref(it)->first = NULL;
    return false;
}

item *item_alloc(const char *key, size_t nkey, uint32_t client_flags,
                 rel_time_t exptime, size_t nbytes, alloc_result *why) {
    alloc_result dummy;
    if (!why)
        why = &dummy;
    if (nbytes < 2 || nkey > PS_KEY_MAX_LENGTH || nbytes > UINT32_MAX) {
        *why = ALLOC_TOO_LARGE;
        return NULL;
    }
    size_t ntotal = ITEM_ntotal_small(nkey, nbytes);
    if (ntotal > settings.item_size_max) {
        *why = ALLOC_TOO_LARGE;
        return NULL;
    }
    unsigned int id = slabs_clsid(ntotal);
    bool chunked = id == 0;
    unsigned int hdr_id = 0;
    item *it;
    if (chunked) {
        id = slabs_largest_clsid();
        hdr_id = slabs_clsid(hdr_total(nkey));
        if (hdr_id == 0) {
            *why = ALLOC_TOO_LARGE;
            return NULL;
        }
        it = alloc_pull(hdr_total(nkey), hdr_id);
    } else {
        it = alloc_pull(ntotal, id);
    }
    if (!it) {
        count_oom(id);
        *why = ALLOC_NO_MEMORY;
        return NULL;
    }

    it->next = it->prev = it->h_next = NULL;
    atomic_store_explicit(&it->refcount, 1, memory_order_relaxed);
    it->nkey = (uint8_t)nkey;
    it->nbytes = (uint32_t)nbytes;
    it->client_flags = client_flags;
    it->cas = 0;
    exp_set(it, exptime);
    item_set_time(it, now_rel());
    memcpy(ITEM_key(it), key, nkey);
    ITEM_key(it)[nkey] = '\0';

    rel_time_t now = now_rel();
    unsigned int lru;
    if (atomic_load_explicit(&rt_temp_lru, memory_order_relaxed) &&
        (rel_time_t)(exptime - now) <= (rel_time_t)atomic_load_explicit(&rt_temp_ttl, memory_order_relaxed))
        lru = TEMP_LRU;
    else if (atomic_load_explicit(&rt_segmented, memory_order_relaxed))
        lru = HOT_LRU;
    else
        lru = COLD_LRU;
    clsid_set(it, id | lru);

    uint16_t fl = settings.use_cas ? ITEM_CAS : 0;
    if (chunked) {
        fl |= ITEM_CHUNKED;
        chunk_ref *ref = item_chunk_ref(it);
        ref->first = NULL;
        ref->hdr_clsid = hdr_id;
        ref->pad_ = 0;
    }
    __atomic_store_n(&it->it_flags, fl, __ATOMIC_RELEASE);

    if (chunked && !alloc_chunks(it, nbytes)) {
        atomic_store_explicit(&it->refcount, 0, memory_order_relaxed);
        item_free(it);
        count_oom(id);
        *why = ALLOC_NO_MEMORY;
        return NULL;
    }
    *why = ALLOC_OK;
    return it;
}

/* ------------------------------------------------------------------ */
/* value access */

int item_value_iov(item *it, struct iovec *iov, int max) {
    if (!(item_flags(it) & ITEM_CHUNKED)) {
        if (max < 1)
            return -1;
        iov[0].iov_base = ITEM_key(it) + it->nkey + 1;
        iov[0].iov_len = it->nbytes;
        return 1;
    }
    int n = 0;
    for (item_chunk *ch = item_chunk_ref(it)->first; ch; ch = ch->next) {
        if (n >= max)
            return -1;
        iov[n].iov_base = ch->data;
        iov[n].iov_len = ch->used;
        n++;
    }
    return n;
}

char *item_value_ptr(item *it) {
    if (item_flags(it) & ITEM_CHUNKED)
        return NULL;
    return ITEM_key(it) + it->nkey + 1;
}

/* A position inside an item's value, for copying between items. */
typedef struct {
    item_chunk *ch;     /* NULL for an unchunked item */
    char *p;
    size_t left;        /* bytes left in the current segment */
} value_cursor;

static void cursor_init(value_cursor *c, item *it) {
    if (item_flags(it) & ITEM_CHUNKED) {
        c->ch = item_chunk_ref(it)->first;
        c->p = c->ch ? c->ch->data : NULL;
        c->left = c->ch ? c->ch->used : 0;
    } else {
        c->ch = NULL;
        c->p = ITEM_key(it) + it->nkey + 1;
        c->left = it->nbytes;
    }
}

static void cursor_skip(value_cursor *c, size_t n) {
    while (n > 0) {
        if (c->left == 0) {
            c->ch = c->ch ? c->ch->next : NULL;
            if (!c->ch)
                return;
            c->p = c->ch->data;
            c->left = c->ch->used;
            continue;
        }
        size_t k = n < c->left ? n : c->left;
        c->p += k;
        c->left -= k;
        n -= k;
    }
}

/* Next contiguous span of at most n bytes; 0 at the end. */
static size_t cursor_span(value_cursor *c, size_t n, char **out) {
    while (c->left == 0) {
        c->ch = c->ch ? c->ch->next : NULL;
        if (!c->ch)
            return 0;
        c->p = c->ch->data;
        c->left = c->ch->used;
    }
    size_t k = n < c->left ? n : c->left;
    *out = c->p;
    c->p += k;
    c->left -= k;
    return k;
}

void item_value_copy(item *dst, size_t off, item *src, size_t len) {
    value_cursor d, s;
    cursor_init(&d, dst);
    cursor_skip(&d, off);
    cursor_init(&s, src);
    while (len > 0) {
        char *sp, *dp;
        size_t k = cursor_span(&s, len, &sp);
        if (k == 0)
            return;
        size_t done = 0;
        while (done < k) {
            size_t m = cursor_span(&d, k - done, &dp);
            if (m == 0)
                return;
            memcpy(dp, sp + done, m);
            done += m;
        }
        len -= k;
    }
}

/* ------------------------------------------------------------------ */
/* link / unlink */

static void link_internal(item *it, uint32_t hv, uint64_t cas, rel_time_t time) {
    item_flags_set(it, ITEM_LINKED);
    item_set_time(it, time);
    it->cas = cas;
    atomic_fetch_add_explicit(&curr_items, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&total_items, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&curr_bytes, item_ntotal(it), memory_order_relaxed);
    atomic_fetch_add_explicit(&it->refcount, 1, memory_order_relaxed);
    assoc_insert(it, hv);
    item_link_q(it);
}

int do_item_link(item *it, uint32_t hv) {
    link_internal(it, hv, settings.use_cas ? item_next_cas() : 0, now_rel());
    return 1;
}

static void unlink_common(item *it, uint32_t hv) {
    item_flags_clear(it, ITEM_LINKED);
    atomic_fetch_sub_explicit(&curr_items, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&curr_bytes, item_ntotal(it), memory_order_relaxed);
    assoc_delete(ITEM_key(it), it->nkey, hv);
}

void do_item_unlink(item *it, uint32_t hv) {
    if (item_flags(it) & ITEM_LINKED) {
        unlink_common(it, hv);
        item_unlink_q(it);
        do_item_remove(it);
    }
}

/* Same, with the item's LRU lock already held. */
static void do_item_unlink_nolock(item *it, uint32_t hv) {
    if (item_flags(it) & ITEM_LINKED) {
        unlink_common(it, hv);
        do_item_unlink_q(it);
        do_item_remove(it);
    }
}

void item_unlink(item *it) {
    uint32_t hv = item_hash(ITEM_key(it), it->nkey);
    item_lock(hv);
    do_item_unlink(it, hv);
    item_unlock(hv);
}

int do_item_replace(item *old_it, item *new_it, uint32_t hv) {
    do_item_unlink(old_it, hv);
    return do_item_link(new_it, hv);
}

void do_item_relink_copy(item *old_it, item *new_it, uint32_t hv) {
    uint64_t cas = old_it->cas;
    rel_time_t t = item_time(old_it);
    do_item_unlink(old_it, hv);
    link_internal(new_it, hv, cas, t);
}

/* ------------------------------------------------------------------ */
/* lookups */

static void do_item_update(item *it) {
    rel_time_t now = now_rel();
    if (now > ITEM_UPDATE_INTERVAL && item_time(it) < now - ITEM_UPDATE_INTERVAL &&
        (item_flags(it) & ITEM_LINKED)) {
        item_set_time(it, now);
        if (!atomic_load_explicit(&rt_segmented, memory_order_relaxed)) {
            item_unlink_q(it);
            item_link_q(it);
        }
    }
}

void do_item_bump(item *it, uint32_t hv) {
    (void)hv;   /* the caller holds item_lock(hv) */
    if (!atomic_load_explicit(&rt_segmented, memory_order_relaxed)) {
        item_flags_set(it, ITEM_FETCHED);
        do_item_update(it);
        return;
    }
    uint16_t fl = item_flags(it);
    if (fl & ITEM_ACTIVE)
        return;
    if (!(fl & ITEM_FETCHED)) {
        item_flags_set(it, ITEM_FETCHED);
        return;
    }
    item_flags_set(it, ITEM_ACTIVE);
    unsigned int raw = ITEM_CLSID_RAW(it);
    if ((raw & TEMP_LRU) != COLD_LRU) {
        item_set_time(it, now_rel());
        return;
    }
    /* In COLD: move to WARM now if nobody is busy on the COLD list, else
     * the maintainer does it when the item reaches the COLD tail. */
    if (!(fl & ITEM_LINKED) || pthread_mutex_trylock(&lru_locks[raw]) != 0)
        return;
    do_item_unlink_q(it);
    pthread_mutex_unlock(&lru_locks[raw]);
    unsigned int warm = CLEAR_LRU(raw) | WARM_LRU;
    clsid_set(it, warm);
    item_flags_clear(it, ITEM_ACTIVE);
    item_set_time(it, now_rel());
    pthread_mutex_lock(&lru_locks[warm]);
    do_item_link_q(it);
    itemstats[warm].moves_to_warm++;
    pthread_mutex_unlock(&lru_locks[warm]);
}

static void count_lru_hit(const item *it) {
    unsigned int raw = ITEM_CLSID_RAW(it);
    /* the calling worker's own block: no shared cache line on a hit */
    switch (raw & TEMP_LRU) {
    case HOT_LRU: SLAB_STATS_INCR(raw, hits_hot); break;
    case WARM_LRU: SLAB_STATS_INCR(raw, hits_warm); break;
    case COLD_LRU: SLAB_STATS_INCR(raw, hits_cold); break;
    default: SLAB_STATS_INCR(raw, hits_temp); break;
    }
}

item *do_item_get(const char *key, size_t nkey, uint32_t hv, bool do_update) {
    item *it = assoc_find(key, nkey, hv);
    if (!it)
        return NULL;
    if (atomic_load_explicit(&it->refcount, memory_order_relaxed) >= REFCOUNT_LIMIT)
        return NULL;
    atomic_fetch_add_explicit(&it->refcount, 1, memory_order_relaxed);
    if (item_is_flushed(it)) {
        do_item_unlink(it, hv);
        do_item_remove(it);
        STATS_INCR(get_flushed);
        return NULL;
    }
    rel_time_t e = exp_get(it);
    if (e != 0 && e <= now_rel()) {
        do_item_unlink(it, hv);
        do_item_remove(it);
        STATS_INCR(get_expired);
        return NULL;
    }
    if (do_update) {
        count_lru_hit(it);
        do_item_bump(it, hv);
    }
    return it;
}

item *item_get(const char *key, size_t nkey, bool do_update) {
    uint32_t hv = item_hash(key, nkey);
    item_lock(hv);
    item *it = do_item_get(key, nkey, hv, do_update);
    item_unlock(hv);
    return it;
}

item *item_touch(const char *key, size_t nkey, rel_time_t exptime) {
    uint32_t hv = item_hash(key, nkey);
    item_lock(hv);
    item *it = do_item_get(key, nkey, hv, true);
    if (it)
        exp_set(it, exptime);
    item_unlock(hv);
    return it;
}

/* ------------------------------------------------------------------ */
/* store */

store_result do_item_store(item *it, store_op op, uint32_t hv, uint64_t *cas_out) {
    item *old = do_item_get(ITEM_key(it), it->nkey, hv, false);
    store_result res = NOT_STORED;
    item *new_it = NULL;
    bool do_store = false;
    uint64_t want_cas = it->cas;

    SLAB_STATS_INCR(ITEM_CLSID(it), set_cmds);
    if (old) {
        bool cas_match = want_cas != 0 && want_cas == old->cas;
        switch (op) {
        case STORE_ADD:
            /* add only adds a missing item, but refreshes the existing one */
            do_item_update(old);
            break;
        case STORE_CAS:
            if (cas_match) {
                SLAB_STATS_INCR(ITEM_CLSID(old), cas_hits);
                do_store = true;
            } else {
                SLAB_STATS_INCR(ITEM_CLSID(old), cas_badval);
                res = EXISTS;
            }
            break;
        case STORE_APPEND:
        case STORE_PREPEND: {
            if (want_cas != 0 && !cas_match) {
                res = EXISTS;
                break;
            }
            size_t nbytes = (size_t)it->nbytes + old->nbytes - 2;
            if (!item_size_ok(old->nkey, old->client_flags, nbytes)) {
                res = TOO_LARGE;
                break;
            }
            alloc_result why;
            new_it = item_alloc(ITEM_key(old), old->nkey, old->client_flags,
                                exp_get(old), nbytes, &why);
            if (!new_it) {
                res = why == ALLOC_TOO_LARGE ? TOO_LARGE : NO_MEMORY;
                break;
            }
            if (op == STORE_APPEND) {
                item_value_copy(new_it, 0, old, old->nbytes - 2);
                item_value_copy(new_it, old->nbytes - 2, it, it->nbytes);
            } else {
                item_value_copy(new_it, 0, it, it->nbytes - 2);
                item_value_copy(new_it, it->nbytes - 2, old, old->nbytes);
            }
            it = new_it;
            do_store = true;
            break;
        }
        case STORE_SET:
        case STORE_REPLACE:
            do_store = true;
            break;
        }
        if (do_store) {
            do_item_replace(old, it, hv);
            res = STORED;
        }
        do_item_remove(old);
    } else {
        switch (op) {
        case STORE_ADD:
        case STORE_SET:
            do_store = true;
            break;
        case STORE_CAS:
            res = NOT_FOUND;
            STATS_INCR(cas_misses);
            break;
        default:
            break;   /* replace/append/prepend need an existing item */
        }
        if (do_store) {
            do_item_link(it, hv);
            res = STORED;
        }
    }
    if (res == STORED && cas_out)
        *cas_out = it->cas;
    if (new_it)
        do_item_remove(new_it);   /* the hash table holds it now */
    return res;
}

store_result item_store(item *it, store_op op, uint64_t *cas_out) {
    uint32_t hv = item_hash(ITEM_key(it), it->nkey);
    item_lock(hv);
    store_result r = do_item_store(it, op, hv, cas_out);
    item_unlock(hv);
    return r;
}

/* ------------------------------------------------------------------ */
/* incr / decr */

/* memcached's safe_strtoull: decimal, trailing space/NUL only, no sign
 * tricks ("-1" is not 2^64-1). */
static bool parse_u64(const char *s, uint64_t *out) {
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno == ERANGE || end == s)
        return false;
    if (!(isspace((unsigned char)*end) || *end == '\0'))
        return false;
    if ((long long)v < 0 && memchr(s, '-', (size_t)(end - s)))
        return false;
    *out = v;
    return true;
}

#define INCR_MAX_STORAGE_LEN 24

int do_item_add_delta(item *it, bool incr, uint64_t delta, uint32_t hv,
                      uint64_t cas_in, char *buf, uint64_t *cas) {
    uint16_t fl = item_flags(it);
    if (it->nbytes <= 2 || (fl & ITEM_CHUNKED))
        return DELTA_NON_NUMERIC;
    if (cas_in != 0 && it->cas != cas_in)
        return DELTA_EXISTS;
    size_t vlen = it->nbytes - 2;
    if (vlen >= INCR_MAX_STORAGE_LEN)
        return DELTA_NON_NUMERIC;
    char tmp[INCR_MAX_STORAGE_LEN];
    memcpy(tmp, item_value_ptr(it), vlen);
    tmp[vlen] = '\0';
    uint64_t value;
    if (!parse_u64(tmp, &value))
        return DELTA_NON_NUMERIC;
    if (incr) {
        value += delta;
        SLAB_STATS_INCR(ITEM_CLSID(it), incr_hits);
    } else {
        value = delta > value ? 0 : value - delta;
        SLAB_STATS_INCR(ITEM_CLSID(it), decr_hits);
    }
    int res = snprintf(buf, INCR_MAX_STORAGE_LEN, "%llu", (unsigned long long)value);
    unsigned int refs = atomic_load_explicit(&it->refcount, memory_order_relaxed);
    if ((size_t)res + 2 <= it->nbytes && refs <= 2) {
        /* Only the hash table and our caller hold it, and we hold its
         * lock: nobody can be reading the value. Overwrite, pad with
         * spaces as memcached does. */
        char *v = item_value_ptr(it);
        memcpy(v, buf, (size_t)res);
        memset(v + res, ' ', vlen - (size_t)res);
        it->cas = settings.use_cas ? item_next_cas() : 0;
        do_item_update(it);
    } else if (fl & ITEM_LINKED) {
        alloc_result why;
        item *n = item_alloc(ITEM_key(it), it->nkey, it->client_flags, exp_get(it),
                             (size_t)res + 2, &why);
        if (!n)
            return DELTA_EOM;
        char *v = item_value_ptr(n);
        memcpy(v, buf, (size_t)res);
        memcpy(v + res, "\r\n", 2);
        do_item_replace(it, n, hv);
        if (cas)
            *cas = n->cas;
        do_item_remove(n);
        return DELTA_OK;
    } else {
        return DELTA_MISS;
    }
    if (cas)
        *cas = it->cas;
    return DELTA_OK;
}

int item_add_delta(const char *key, size_t nkey, bool incr, uint64_t delta,
                   uint64_t cas_in, char *buf, uint64_t *cas) {
    uint32_t hv = item_hash(key, nkey);
    item_lock(hv);
    item *it = do_item_get(key, nkey, hv, false);
    int r = DELTA_MISS;
    if (it) {
        r = do_item_add_delta(it, incr, delta, hv, cas_in, buf, cas);
        do_item_remove(it);
    }
    item_unlock(hv);
    return r;
}

/* ------------------------------------------------------------------ */
/* delete */

int item_delete(const char *key, size_t nkey, uint64_t cas_in, bool *cas_mismatch) {
    uint32_t hv = item_hash(key, nkey);
    int r = 0;
    if (cas_mismatch)
        *cas_mismatch = false;
    item_lock(hv);
    item *it = do_item_get(key, nkey, hv, false);
    if (it) {
        if (cas_in != 0 && cas_in != it->cas) {
            if (cas_mismatch)
                *cas_mismatch = true;
        } else {
            SLAB_STATS_INCR(ITEM_CLSID(it), delete_hits);
            do_item_unlink(it, hv);
            r = 1;
        }
        do_item_remove(it);
    }
    item_unlock(hv);
    return r;
}

/* ------------------------------------------------------------------ */
/* the LRU maintainer */

static int lru_maintainer_juggle(unsigned int cls) {
    int did_moves = 0;
    bool segmented = atomic_load_explicit(&rt_segmented, memory_order_relaxed);
    if (atomic_load_explicit(&rt_temp_lru, memory_order_relaxed)) {
        for (int i = 0; i < JUGGLE_MAX; i++) {
            if (lru_pull_tail(cls, TEMP_LRU, 0, 0, 0) <= 0)
                break;
            did_moves++;
        }
    }
    rel_time_t hot_age = 0, warm_age = 0;
    uint64_t total_bytes = 0;
    if (segmented) {
        rel_time_t cold_age = 0;
        rel_time_t now = now_rel();
        for (int s = 0; s < 3; s++) {
            unsigned int id = cls | lru_segments[s];
            pthread_mutex_lock(&lru_locks[id]);
            if (lru_segments[s] == COLD_LRU) {
                item *t = lru_tail_item(id);
                if (t)
                    cold_age = now - item_time(t);
            }
            total_bytes += lru_bytes[id];
            pthread_mutex_unlock(&lru_locks[id]);
        }
        hot_age = (rel_time_t)(cold_age * atomic_load_explicit(&rt_hot_factor, memory_order_relaxed));
        warm_age = (rel_time_t)(cold_age * atomic_load_explicit(&rt_warm_factor, memory_order_relaxed));
    }
    for (int i = 0; i < JUGGLE_MAX; i++) {
        int more = 0;
        if (lru_pull_tail(cls, HOT_LRU, total_bytes, 0, hot_age) ||
            lru_pull_tail(cls, WARM_LRU, total_bytes, 0, warm_age))
            more++;
        if (segmented)
            more += lru_pull_tail(cls, COLD_LRU, 0, 0, 0);
        if (more == 0)
            break;
        did_moves++;
    }
    return did_moves;
}

static void maintain_pass(void) {
    unsigned int largest = slabs_largest_clsid();
    for (unsigned int c = 1; c <= largest; c++)
        lru_maintainer_juggle(c);
    atomic_fetch_add_explicit(&maintainer_juggles, 1, memory_order_relaxed);
}

void items_test_maintain_once(void) {
    maintain_pass();
}

/* timed wait on cond (threads_lock held) for usec microseconds */
static void timed_wait(pthread_cond_t *cond, long usec) {
    ps_cond_wait_us(cond, &threads_lock, usec);
}

static void *maintainer_main(void *arg) {
    (void)arg;
    stats_thread_register();
    long sleep_us = MAINT_MIN_SLEEP_US;
    unsigned int largest = slabs_largest_clsid();
    pthread_mutex_lock(&threads_lock);
    while (!stop_maint) {
        timed_wait(&maint_cond, sleep_us);
        if (stop_maint)
            break;
        pthread_mutex_unlock(&threads_lock);
        int moves = 0;
        for (unsigned int c = 1; c <= largest; c++)
            moves += lru_maintainer_juggle(c);
        atomic_fetch_add_explicit(&maintainer_juggles, 1, memory_order_relaxed);
        /* back off while idle, hurry while there is work */
        if (moves == 0) {
            sleep_us += sleep_us / 8 + 1;
            if (sleep_us > MAINT_MAX_SLEEP_US)
                sleep_us = MAINT_MAX_SLEEP_US;
        } else {
            sleep_us /= 2;
            if (sleep_us < MAINT_MIN_SLEEP_US)
                sleep_us = MAINT_MIN_SLEEP_US;
        }
        pthread_mutex_lock(&threads_lock);
    }
    pthread_mutex_unlock(&threads_lock);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* the clock thread */

static void *clock_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&threads_lock);
    while (!stop_clock) {
        timed_wait(&clock_cond, 100000);
        clock_update();
    }
    pthread_mutex_unlock(&threads_lock);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* LRU walks with a marker (crawler and metadump) */

/* Put marker m at the tail of LRU id (lru lock held). */
static void marker_insert_tail(item *m, unsigned int id) {
    m->next = NULL;
    m->prev = tails[id];
    if (m->prev)
        m->prev->next = m;
    tails[id] = m;
    if (!heads[id])
        heads[id] = m;
}

static void marker_remove(item *m, unsigned int id) {
    if (heads[id] == m)
        heads[id] = m->next;
    if (tails[id] == m)
        tails[id] = m->prev;
    if (m->next)
        m->next->prev = m->prev;
    if (m->prev)
        m->prev->next = m->next;
    m->next = m->prev = NULL;
}

/* Step marker m past the item before it (towards the head). Returns that
 * item, or NULL when the marker reached the head (it is then removed).
 * lru lock held. */
static item *marker_step(item *m, unsigned int id) {
    item *it = m->prev;
    if (!it) {
        marker_remove(m, id);
        return NULL;
    }
    /* swap m and it: ... p it m n ...  ->  ... p m it n ... */
    item *p = it->prev, *n = m->next;
    if (p)
        p->next = m;
    else
        heads[id] = m;
    m->prev = p;
    m->next = it;
    it->prev = m;
    it->next = n;
    if (n)
        n->prev = it;
    else
        tails[id] = it;
    return it;
}

typedef void (*walk_fn)(item *it, uint32_t hv, unsigned int id, void *ctx);

/* Walk LRU id from tail to head, calling fn for every live, unreferenced
 * item with its item lock and lru lock held and a pin on it. Stops early
 * when *stop becomes true or after `limit` items (0 = no limit). */
static void lru_walk(unsigned int id, walk_fn fn, void *ctx, const bool *stop_flag,
                     uint32_t limit, bool sleepy) {
    item marker;
    memset(&marker, 0, sizeof(marker));
    __atomic_store_n(&marker.it_flags, ITEM_MARKER, __ATOMIC_RELAXED);
    pthread_mutex_lock(&lru_locks[id]);
    marker_insert_tail(&marker, id);
    pthread_mutex_unlock(&lru_locks[id]);
    uint32_t seen = 0;
    for (;;) {
        bool stop = false;
        if (stop_flag) {
            pthread_mutex_lock(&threads_lock);
            stop = *stop_flag;
            pthread_mutex_unlock(&threads_lock);
        }
        pthread_mutex_lock(&lru_locks[id]);
        if (stop || (limit && seen >= limit)) {
            marker_remove(&marker, id);
            pthread_mutex_unlock(&lru_locks[id]);
            break;
        }
        item *it = marker_step(&marker, id);
        if (!it) {
            pthread_mutex_unlock(&lru_locks[id]);
            break;
        }
        if (is_marker(it)) {
            pthread_mutex_unlock(&lru_locks[id]);
            continue;
        }
        uint32_t hv = item_hash(ITEM_key(it), it->nkey);
        if (item_trylock(hv) != 0) {
            pthread_mutex_unlock(&lru_locks[id]);
            continue;
        }
        if (atomic_fetch_add_explicit(&it->refcount, 1, memory_order_relaxed) != 1) {
            /* someone holds it: leave it alone this time */
            do_item_remove(it);
            item_unlock(hv);
            pthread_mutex_unlock(&lru_locks[id]);
            continue;
        }
        seen++;
        fn(it, hv, id, ctx);
        do_item_remove(it);       /* our pin (frees a reclaimed item) */
        item_unlock(hv);
        pthread_mutex_unlock(&lru_locks[id]);
        if (sleepy && seen % CRAWL_ITEMS_PER_SLEEP == 0) {
            int us = atomic_load_explicit(&rt_crawler_sleep, memory_order_relaxed);
            if (us > 0)
                usleep((useconds_t)(us > 100000 ? 100000 : us));
        }
    }
}

static void crawl_eval(item *it, uint32_t hv, unsigned int id, void *ctx) {
    (void)ctx;
    itemstats[id].crawler_items_checked++;
    if (item_is_dead(it)) {
        itemstats[id].crawler_reclaimed++;
        if (!(item_flags(it) & ITEM_FETCHED))
            itemstats[id].expired_unfetched++;
        do_item_unlink_nolock(it, hv);
    }
}

static void crawl_classes(uint64_t mask) {
    unsigned int largest = slabs_largest_clsid();
    atomic_store_explicit(&crawler_running, true, memory_order_relaxed);
    atomic_fetch_add_explicit(&crawler_starts, 1, memory_order_relaxed);
    uint32_t tocrawl = atomic_load_explicit(&rt_crawler_tocrawl, memory_order_relaxed);
    for (unsigned int c = 1; c <= largest; c++) {
        if (!(mask & ((uint64_t)1 << c)))
            continue;
        for (int s = 0; s < 4; s++)
            lru_walk(c | lru_segments[s], crawl_eval, NULL, &stop_crawler, tocrawl, true);
    }
    atomic_store_explicit(&crawler_running, false, memory_order_relaxed);
}

static void *crawler_main(void *arg) {
    (void)arg;
    stats_thread_register();
    rel_time_t last_auto = now_rel();
    pthread_mutex_lock(&threads_lock);
    while (!stop_crawler) {
        if (crawl_request_mask == 0) {
            timed_wait(&crawler_cond, 100000);
            if (now_rel() - last_auto >= CRAWL_AUTO_INTERVAL &&
                atomic_load_explicit(&curr_items, memory_order_relaxed) > 0) {
                crawl_request_mask = ~(uint64_t)0;
            }
            continue;
        }
        uint64_t mask = crawl_request_mask;
        pthread_mutex_unlock(&threads_lock);
        crawl_classes(mask);
        last_auto = now_rel();
        pthread_mutex_lock(&threads_lock);
        crawl_request_mask = 0;
    }
    pthread_mutex_unlock(&threads_lock);
    return NULL;
}

/* "all" or "1,2,3" -> bit mask of class ids; 0 on a bad list */
static uint64_t parse_classes(const char *classes, bool *bad) {
    *bad = false;
    unsigned int largest = slabs_largest_clsid();
    if (!classes || strcmp(classes, "all") == 0) {
        uint64_t m = 0;
        for (unsigned int c = 1; c <= largest; c++)
            m |= (uint64_t)1 << c;
        return m;
    }
    uint64_t m = 0;
    const char *p = classes;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 1 || v > (long)largest) {
            *bad = true;
            return 0;
        }
        m |= (uint64_t)1 << v;
        p = end;
        if (*p == ',')
            p++;
        else if (*p != '\0') {
            *bad = true;
            return 0;
        }
    }
    return m;
}

crawler_result lru_crawler_crawl(const char *classes) {
    bool bad;
    uint64_t mask = parse_classes(classes, &bad);
    if (bad)
        return CRAWLER_BADCLASS;
    pthread_mutex_lock(&threads_lock);
    if (!crawler_started) {
        pthread_mutex_unlock(&threads_lock);
        return CRAWLER_NOTSTARTED;
    }
    if (crawl_request_mask != 0 || atomic_load_explicit(&crawler_running, memory_order_relaxed)) {
        pthread_mutex_unlock(&threads_lock);
        return CRAWLER_RUNNING;
    }
    crawl_request_mask = mask;
    pthread_cond_signal(&crawler_cond);
    pthread_mutex_unlock(&threads_lock);
    return CRAWLER_OK;
}

/* ---- metadump ---- */

typedef struct {
    char *buf;
    size_t len, cap;
    bool oom;
} dump_buf;

static void dump_append(dump_buf *d, const char *s, size_t n) {
    if (d->oom)
        return;
    if (d->len + n + 1 > d->cap) {
        size_t ncap = d->cap ? d->cap * 2 : 65536;
        while (ncap < d->len + n + 1)
            ncap *= 2;
        char *nb = realloc(d->buf, ncap);
        if (!nb) {
            d->oom = true;
            return;
        }
        d->buf = nb;
        d->cap = ncap;
    }
    memcpy(d->buf + d->len, s, n);
    d->len += n;
}

static void dump_eval(item *it, uint32_t hv, unsigned int id, void *ctx) {
    (void)hv;
    (void)id;
    if (item_is_dead(it))
        return;
    static const char hex[] = "0123456789ABCDEF";
    char key[PS_KEY_MAX_LENGTH * 3 + 1];
    size_t k = 0;
    for (size_t i = 0; i < it->nkey; i++) {
        unsigned char ch = (unsigned char)ITEM_key(it)[i];
        if (isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~') {
            key[k++] = (char)ch;
        } else {
            key[k++] = '%';
            key[k++] = hex[ch >> 4];
            key[k++] = hex[ch & 15];
        }
    }
    key[k] = '\0';
    char line[PS_KEY_MAX_LENGTH * 3 + 200];
    rel_time_t e = exp_get(it);
    int n = snprintf(line, sizeof(line),
                     "key=%s exp=%lld la=%llu cas=%llu fetch=%s cls=%u size=%llu\n",
                     key, e == 0 ? -1LL : (long long)(e + process_started),
                     (unsigned long long)(item_time(it) + process_started),
                     (unsigned long long)it->cas,
                     (item_flags(it) & ITEM_FETCHED) ? "yes" : "no",
                     ITEM_CLSID(it), (unsigned long long)item_ntotal(it));
    if (n > 0)
        dump_append(ctx, line, (size_t)n);
}

char *lru_crawler_metadump(const char *classes, size_t *len, crawler_result *res) {
    bool bad;
    uint64_t mask = parse_classes(classes, &bad);
    if (bad) {
        *res = CRAWLER_BADCLASS;
        return NULL;
    }
    dump_buf d = {0};
    unsigned int largest = slabs_largest_clsid();
    for (unsigned int c = 1; c <= largest; c++) {
        if (!(mask & ((uint64_t)1 << c)))
            continue;
        for (int s = 0; s < 4; s++)
            lru_walk(c | lru_segments[s], dump_eval, &d, NULL, 0, false);
    }
    dump_append(&d, "END\r\n", 5);
    if (d.oom) {
        free(d.buf);
        *res = CRAWLER_ERROR;
        return NULL;
    }
    *len = d.len;
    *res = CRAWLER_OK;
    return d.buf;
}

void lru_crawler_set_sleep(int usecs) {
    if (usecs < 0)
        usecs = 0;
    if (usecs > 1000000)
        usecs = 1000000;
    atomic_store_explicit(&rt_crawler_sleep, usecs, memory_order_relaxed);
}

void lru_crawler_set_tocrawl(uint32_t n) {
    atomic_store_explicit(&rt_crawler_tocrawl, n, memory_order_relaxed);
}

static int crawler_thread_start(void) {
    if (crawler_started)
        return -1;
    stop_crawler = false;
    if (pthread_create(&crawler_tid, NULL, crawler_main, NULL) != 0)
        return -1;
    crawler_started = true;
    return 0;
}

static void crawler_thread_stop(void) {
    pthread_mutex_lock(&threads_lock);
    bool started = crawler_started;
    stop_crawler = true;
    pthread_cond_broadcast(&crawler_cond);
    pthread_mutex_unlock(&threads_lock);
    if (started)
        pthread_join(crawler_tid, NULL);
    pthread_mutex_lock(&threads_lock);
    crawler_started = false;
    crawl_request_mask = 0;
    pthread_mutex_unlock(&threads_lock);
}

/* 0 ok; -1 if already in that state or the thread could not start */
int lru_crawler_enable(bool on) {
    if (on) {
        pthread_mutex_lock(&threads_lock);
        int r = crawler_thread_start();
        pthread_mutex_unlock(&threads_lock);
        return r;
    }
    pthread_mutex_lock(&threads_lock);
    bool started = crawler_started;
    pthread_mutex_unlock(&threads_lock);
    if (!started)
        return -1;
    crawler_thread_stop();
    return 0;
}

int lru_set_mode(bool segmented) {
    if (segmented && !settings.lru_maintainer)
        return -1;     /* HOT/WARM would never drain without the maintainer */
    atomic_store_explicit(&rt_segmented, segmented, memory_order_relaxed);
    return 0;
}

void lru_set_temp_ttl(int ttl) {
    if (ttl < 0) {
        atomic_store_explicit(&rt_temp_lru, false, memory_order_relaxed);
    } else {
        atomic_store_explicit(&rt_temp_ttl, ttl, memory_order_relaxed);
        atomic_store_explicit(&rt_temp_lru, true, memory_order_relaxed);
    }
}

void lru_set_tune(uint32_t hot_pct, uint32_t warm_pct, double hot_max_factor,
                  double warm_max_factor) {
    atomic_store_explicit(&rt_hot_pct, (int)hot_pct, memory_order_relaxed);
    atomic_store_explicit(&rt_warm_pct, (int)warm_pct, memory_order_relaxed);
    atomic_store_explicit(&rt_hot_factor, hot_max_factor, memory_order_relaxed);
    atomic_store_explicit(&rt_warm_factor, warm_max_factor, memory_order_relaxed);
}

/* ---- cachedump ---- */

#define CACHEDUMP_MAX (2 * 1024 * 1024)

char *item_cachedump(unsigned int clsid, unsigned int limit, size_t *len) {
    char *buf = malloc(CACHEDUMP_MAX);
    if (!buf)
        return NULL;
    size_t used = 0;
    unsigned int shown = 0;
    bool full = false;
    if (clsid >= 1 && clsid <= slabs_largest_clsid()) {
        for (int s = 0; s < 4 && !full; s++) {
            unsigned int id = clsid | lru_segments[s];
            /* bounded: at most 2 MiB of lines under one LRU lock */
            pthread_mutex_lock(&lru_locks[id]);
            for (item *it = heads[id]; it && (limit == 0 || shown < limit); it = it->next) {
                if (is_marker(it) || (item_flags(it) & ITEM_KEY_BINARY))
                    continue;
                char line[PS_KEY_MAX_LENGTH + 96];
                rel_time_t e = exp_get(it);
                int n = snprintf(line, sizeof(line), "ITEM %.*s [%u b; %llu s]\r\n",
                                 (int)it->nkey, ITEM_key(it), it->nbytes - 2,
                                 e == 0 ? 0ULL : (unsigned long long)(e + process_started));
                if (n < 0)
                    continue;
                if (used + (size_t)n + 5 > CACHEDUMP_MAX) {
                    full = true;
                    break;
                }
                memcpy(buf + used, line, (size_t)n);
                used += (size_t)n;
                shown++;
            }
            pthread_mutex_unlock(&lru_locks[id]);
        }
    }
    memcpy(buf + used, "END\r\n", 5);
    *len = used + 5;
    return buf;
}

/* ------------------------------------------------------------------ */
/* threads */

int items_threads_start(void) {
    pthread_mutex_lock(&threads_lock);
    stop_clock = stop_maint = false;
    int r = 0;
    if (pthread_create(&clock_tid, NULL, clock_main, NULL) == 0)
        clock_started = true;
    else
        r = -1;
    if (r == 0 && settings.lru_maintainer) {
        if (pthread_create(&maint_tid, NULL, maintainer_main, NULL) == 0)
            maint_started = true;
        else
            r = -1;
    }
    if (r == 0 && settings.lru_crawler)
        r = crawler_thread_start();
    pthread_mutex_unlock(&threads_lock);
    return r;
}

void items_threads_stop(void) {
    crawler_thread_stop();
    pthread_mutex_lock(&threads_lock);
    stop_clock = stop_maint = true;
    pthread_cond_broadcast(&clock_cond);
    pthread_cond_broadcast(&maint_cond);
    pthread_mutex_unlock(&threads_lock);
    if (maint_started)
        pthread_join(maint_tid, NULL);
    if (clock_started)
        pthread_join(clock_tid, NULL);
    maint_started = clock_started = false;
}

/* ------------------------------------------------------------------ */
/* stats */

#define U(x) ((unsigned long long)(x))

static void sum_stats(itemstats_t *t, const itemstats_t *s) {
    t->evicted += s->evicted;
    t->evicted_nonzero += s->evicted_nonzero;
    t->reclaimed += s->reclaimed;
    t->outofmemory += s->outofmemory;
    t->tailrepairs += s->tailrepairs;
    t->expired_unfetched += s->expired_unfetched;
    t->evicted_unfetched += s->evicted_unfetched;
    t->evicted_active += s->evicted_active;
    t->crawler_reclaimed += s->crawler_reclaimed;
    t->crawler_items_checked += s->crawler_items_checked;
    t->lrutail_reflocked += s->lrutail_reflocked;
    t->moves_to_cold += s->moves_to_cold;
    t->moves_to_warm += s->moves_to_warm;
    t->moves_within_lru += s->moves_within_lru;
    t->direct_reclaims += s->direct_reclaims;
    if (s->evicted_time > t->evicted_time)
        t->evicted_time = s->evicted_time;
}

static void item_class_stat(add_stat_fn add, void *ctx, unsigned int c, const char *name,
                            unsigned long long v) {
    char key[64];
    snprintf(key, sizeof(key), "items:%u:%s", c, name);
    stats_appendf(add, ctx, key, "%llu", v);
}

void items_stats(add_stat_fn add, void *ctx) {
    unsigned int largest = slabs_largest_clsid();
    bool segmented = atomic_load_explicit(&rt_segmented, memory_order_relaxed);
    bool temp = atomic_load_explicit(&rt_temp_lru, memory_order_relaxed);
    rel_time_t now = now_rel();
    for (unsigned int c = 1; c <= largest; c++) {
        itemstats_t tot;
        memset(&tot, 0, sizeof(tot));
        uint32_t num[4] = {0};
        rel_time_t age[4] = {0};
        uint64_t bytes = 0, hits[4];
        for (int s = 0; s < 4; s++) {
            unsigned int id = c | lru_segments[s];
            pthread_mutex_lock(&lru_locks[id]);
            sum_stats(&tot, &itemstats[id]);
            num[s] = lru_sizes[id];
            bytes += lru_bytes[id];
            item *t = lru_tail_item(id);
            if (t)
                age[s] = now - item_time(t);
            pthread_mutex_unlock(&lru_locks[id]);
        }
        hits[0] = SLAB_STATS_SUM(c, hits_hot);
        hits[1] = SLAB_STATS_SUM(c, hits_warm);
        hits[2] = SLAB_STATS_SUM(c, hits_cold);
        hits[3] = SLAB_STATS_SUM(c, hits_temp);
        uint64_t total = (uint64_t)num[0] + num[1] + num[2] + num[3];
        if (total == 0)
            continue;
        item_class_stat(add, ctx, c, "number", total);
        if (segmented) {
            item_class_stat(add, ctx, c, "number_hot", num[0]);
            item_class_stat(add, ctx, c, "number_warm", num[1]);
            item_class_stat(add, ctx, c, "number_cold", num[2]);
            if (temp)
                item_class_stat(add, ctx, c, "number_temp", num[3]);
            item_class_stat(add, ctx, c, "age_hot", age[0]);
            item_class_stat(add, ctx, c, "age_warm", age[1]);
        }
        item_class_stat(add, ctx, c, "age", age[2]);
        item_class_stat(add, ctx, c, "mem_requested", bytes);
        item_class_stat(add, ctx, c, "evicted", tot.evicted);
        item_class_stat(add, ctx, c, "evicted_nonzero", tot.evicted_nonzero);
        item_class_stat(add, ctx, c, "evicted_time", tot.evicted_time);
        item_class_stat(add, ctx, c, "outofmemory", tot.outofmemory);
        item_class_stat(add, ctx, c, "tailrepairs", tot.tailrepairs);
        item_class_stat(add, ctx, c, "reclaimed", tot.reclaimed);
        item_class_stat(add, ctx, c, "expired_unfetched", tot.expired_unfetched);
        item_class_stat(add, ctx, c, "evicted_unfetched", tot.evicted_unfetched);
        item_class_stat(add, ctx, c, "evicted_active", tot.evicted_active);
        item_class_stat(add, ctx, c, "crawler_reclaimed", tot.crawler_reclaimed);
        item_class_stat(add, ctx, c, "crawler_items_checked", tot.crawler_items_checked);
        item_class_stat(add, ctx, c, "lrutail_reflocked", tot.lrutail_reflocked);
        item_class_stat(add, ctx, c, "moves_to_cold", tot.moves_to_cold);
        item_class_stat(add, ctx, c, "moves_to_warm", tot.moves_to_warm);
        item_class_stat(add, ctx, c, "moves_within_lru", tot.moves_within_lru);
        item_class_stat(add, ctx, c, "direct_reclaims", tot.direct_reclaims);
        item_class_stat(add, ctx, c, "hits_to_hot", hits[0]);
        item_class_stat(add, ctx, c, "hits_to_warm", hits[1]);
        item_class_stat(add, ctx, c, "hits_to_cold", hits[2]);
        item_class_stat(add, ctx, c, "hits_to_temp", hits[3]);
    }
}

void items_stats_sizes(add_stat_fn add, void *ctx) {
    stats_appendf(add, ctx, "sizes_status", "%s", "disabled");
}

void items_counts(uint64_t *bytes, uint64_t *items, uint64_t *total) {
    if (bytes)
        *bytes = atomic_load_explicit(&curr_bytes, memory_order_relaxed);
    if (items)
        *items = atomic_load_explicit(&curr_items, memory_order_relaxed);
    if (total)
        *total = atomic_load_explicit(&total_items, memory_order_relaxed);
}

void items_stats_totals(add_stat_fn add, void *ctx) {
    itemstats_t tot;
    memset(&tot, 0, sizeof(tot));
    for (int id = 0; id < LRU_IDS; id++) {
        pthread_mutex_lock(&lru_locks[id]);
        sum_stats(&tot, &itemstats[id]);
        pthread_mutex_unlock(&lru_locks[id]);
    }
    uint64_t b, n, t;
    items_counts(&b, &n, &t);
    stats_appendf(add, ctx, "bytes", "%llu", U(b));
    stats_appendf(add, ctx, "curr_items", "%llu", U(n));
    stats_appendf(add, ctx, "total_items", "%llu", U(t));
    stats_appendf(add, ctx, "slab_global_page_pool", "%u", slabs_global_pool_pages());
    stats_appendf(add, ctx, "expired_unfetched", "%llu", U(tot.expired_unfetched));
    stats_appendf(add, ctx, "evicted_unfetched", "%llu", U(tot.evicted_unfetched));
    if (settings.lru_maintainer)
        stats_appendf(add, ctx, "evicted_active", "%llu", U(tot.evicted_active));
    stats_appendf(add, ctx, "evictions", "%llu", U(tot.evicted));
    stats_appendf(add, ctx, "reclaimed", "%llu", U(tot.reclaimed));
    stats_appendf(add, ctx, "crawler_reclaimed", "%llu", U(tot.crawler_reclaimed));
    stats_appendf(add, ctx, "crawler_items_checked", "%llu", U(tot.crawler_items_checked));
    stats_appendf(add, ctx, "lrutail_reflocked", "%llu", U(tot.lrutail_reflocked));
    if (settings.lru_maintainer) {
        stats_appendf(add, ctx, "moves_to_cold", "%llu", U(tot.moves_to_cold));
        stats_appendf(add, ctx, "moves_to_warm", "%llu", U(tot.moves_to_warm));
        stats_appendf(add, ctx, "moves_within_lru", "%llu", U(tot.moves_within_lru));
        stats_appendf(add, ctx, "direct_reclaims", "%llu", U(tot.direct_reclaims));
        stats_appendf(add, ctx, "lru_bumps_dropped", "%llu", 0ULL);
    }
}

void items_stats_background(add_stat_fn add, void *ctx) {
    if (settings.lru_crawler) {
        stats_appendf(add, ctx, "lru_crawler_running", "%u",
                      atomic_load_explicit(&crawler_running, memory_order_relaxed) ? 1u : 0u);
        stats_appendf(add, ctx, "lru_crawler_starts", "%llu",
                      U(atomic_load_explicit(&crawler_starts, memory_order_relaxed)));
    }
    if (settings.lru_maintainer)
        stats_appendf(add, ctx, "lru_maintainer_juggles", "%llu",
                      U(atomic_load_explicit(&maintainer_juggles, memory_order_relaxed)));
}

void items_stats_reset(void) {
    for (int id = 0; id < LRU_IDS; id++) {
        pthread_mutex_lock(&lru_locks[id]);
        memset(&itemstats[id], 0, sizeof(itemstats_t));
        pthread_mutex_unlock(&lru_locks[id]);
    }
    atomic_store_explicit(&total_items, 0, memory_order_relaxed);
}

void items_automove_snapshot(uint64_t *evicted, uint64_t *outofmemory, uint32_t *age) {
    unsigned int largest = slabs_largest_clsid();
    rel_time_t now = now_rel();
    memset(evicted, 0, sizeof(uint64_t) * PS_MAX_SLAB_CLASSES);
    memset(outofmemory, 0, sizeof(uint64_t) * PS_MAX_SLAB_CLASSES);
    memset(age, 0, sizeof(uint32_t) * PS_MAX_SLAB_CLASSES);
    for (unsigned int c = 1; c <= largest && c < PS_MAX_SLAB_CLASSES; c++) {
        for (int s = 0; s < 4; s++) {
            unsigned int id = c | lru_segments[s];
            pthread_mutex_lock(&lru_locks[id]);
            evicted[c] += itemstats[id].evicted;
            outofmemory[c] += itemstats[id].outofmemory;
            if (lru_segments[s] == COLD_LRU) {
                item *t = lru_tail_item(id);
                if (t)
                    age[c] = now - item_time(t);
            }
            pthread_mutex_unlock(&lru_locks[id]);
        }
    }
}
