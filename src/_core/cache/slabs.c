/*
 * slabs.c - the slab allocator: item memory in size classes, the page
 * mover that gives a page of one class to another, and the automover that
 * decides when to do so.
 *
 * CLASSES. Class 1 holds chunks of sizeof(item) + settings.chunk_size
 * bytes, rounded up to 8; each next class is the previous size times
 * settings.factor (rounded up to 8) until the next step would pass
 * settings.slab_chunk_max / factor; the last class (the "largest") has
 * chunks of exactly slab_chunk_max. Values that do not fit the largest
 * class are chunked by items.c out of largest-class chunks. Class 0 is not
 * a class: it is the GLOBAL PAGE POOL, where the mover parks pages taken
 * from a class that had too much free memory, for any class to pick up.
 *
 * PAGES. Memory is malloc'd one page (settings.slab_page_size) at a time,
 * when a class has no free chunk. A class may not take a new page once
 * total_malloced + page > maxbytes, except (memcached's rule) a class that
 * has no page at all always gets its first one, so a tiny -m cannot make a
 * class unusable. A class prefers a page from the global pool to malloc.
 * Each page is cut into chunks that go onto the class's free list.
 *
 * FREE LISTS. Doubly linked through the first two pointers of every chunk
 * (item and item_chunk share next/prev/refcount/it_flags/slabs_clsid
 * offsets), so the page mover can cut a chunk out of the middle. A free
 * chunk has it_flags == ITEM_SLABBED and refcount 0. A chunk that the mover
 * has cleared (taken off the free list for the page it is emptying) has
 * it_flags == ITEM_SLABBED|ITEM_FETCHED.
 *
 * LOCKS. One mutex, slabs_lock, guards every class (free lists, page
 * lists, counters), the pool and total_malloced. It is the innermost lock:
 * order is item lock -> LRU lock -> slabs_lock. The mover holds slabs_lock
 * while it classifies a chunk and may then only *try* an item lock; before
 * it unlinks or copies an item it drops slabs_lock (unlinking takes the LRU
 * lock, which ranks above it).
 *
 * THE PAGE MOVER (one thread). slabs_reassign() only records a request and
 * wakes the mover. The mover picks the first page of the source class and
 * walks its chunks, a few at a time under slabs_lock:
 *   - free chunk: cut from the free list, mark cleared;
 *   - live, linked item: try its item lock (busy if taken); with the lock,
 *     pin it (refcount+1). If nobody else holds it, copy it into a free
 *     chunk of the same class outside the page ("rescue", CAS and time
 *     kept) or, without free space or if it is dead anyway, unlink it
 *     ("evictions_nomem"), then mark the chunk cleared. If other threads
 *     hold references it is busy and retried on the next pass; after many
 *     passes it is unlinked anyway ("busy_deletes") and its memory returns
 *     to the free list when the last holder lets go, where a later pass
 *     cuts it;
 *   - chunked items (a header anywhere, or a chunk of one in this page) are
 *     unlinked as a whole rather than rescued;
 *   - anything else (being filled by a worker, or unlinked but still
 *     referenced) is busy: retried next pass.
 * When a pass finds nothing busy the page is wiped and given to the
 * destination class (cut into its free list) or to the global pool (or
 * free()d, if total_malloced is over the limit after "cache_memlimit").
 * Chunks of the page that workers allocate while the mover walks it are
 * simply live items by the time the mover reaches them.
 *
 * THE AUTOMOVER (one thread, settings.slab_automove). Once a second it
 * records per class: evictions and out-of-memory failures since the last
 * second, pages gained, free chunks, and the age of the COLD tail, in a
 * window of slab_automove_window seconds. It then asks for a move when
 *   - a class has more than 2.5 pages of free chunks and has not evicted,
 *     failed or grown in the whole window: one page to the global pool;
 *   - the class with the youngest tail evicts in more than half the window
 *     (or takes over a quarter of all evictions), and its age is below
 *     slab_automove_ratio times the age of the class with the oldest tail
 *     (which must have more than 2 pages): a page oldest -> youngest.
 * Mode 2 additionally moves a page to any class that evicted in the last
 * second, from any class with a spare page.
 *
 * MEMORY ORDERING. The mover looks at chunks it does not own. Under
 * slabs_lock no chunk can be allocated or freed, so "free" (ITEM_SLABBED)
 * is settled. For anything else it reads it_flags with an acquire load
 * (items.c sets ITEM_LINKED with a release after writing key and value),
 * so seeing LINKED makes the key safe to hash; the item cannot be freed
 * (or its key rewritten) while slabs_lock is held. It then takes the item
 * lock with trylock and re-checks LINKED under it before touching
 * anything else. item_chunk headers (head, links, ITEM_CHUNK) are written
 * by items.c under slabs_lock, so the mover reads them consistently.
 *
 * THREAD SAFETY OF THE COUNTERS. Everything in `classes`, `pool` and
 * `rebal_stats` is guarded by slabs_lock. The mover's request slot is
 * guarded by rebal_lock; `stop_threads` too (the threads wait on condition
 * variables with timeouts of at most 100 ms, so a stop is seen promptly).
 */
#define _GNU_SOURCE
#include "slabs.h"
#include "common/ps_thread.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "settings.h"
#include "stats.h"

#define POOL_ID 0
#define CHUNK_ALIGN 8
/* chunks examined per hold of slabs_lock by the mover */
#define MOVER_BATCH 16
/* passes over a page before busy items are unlinked regardless */
#define MOVER_MAX_BUSY_LOOPS 200
/* free chunks, in pages, above which an idle class gives a page away */
#define AUTOMOVE_FREE_PAGES 2.5
#define AUTOMOVE_MIN_SOURCE_PAGES 2

typedef struct {
    unsigned int size;          /* chunk size in bytes */
    unsigned int perslab;       /* chunks per page */
    item *free_head;            /* free list (doubly linked) */
    unsigned int free_count;
    unsigned int npages;
    unsigned int pages_cap;
    char **pages;               /* pages owned by this class */
    size_t requested;           /* bytes asked of slabs_alloc and not freed */
} slabclass;

static slabclass classes[PS_MAX_SLAB_CLASSES];
static unsigned int largest_id;
static size_t mem_limit;
static size_t mem_malloced;
static bool slabs_ready;
static pthread_mutex_t slabs_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- mover state: the page in flight (slabs_lock) ---- */
static struct {
    bool active;                /* a page is being emptied */
    unsigned int src, dst;
    char *page;                 /* the page being emptied */
    char *page_end;
    unsigned int pos;           /* next chunk index within the page */
    unsigned int busy_this_pass;
    unsigned int busy_loops;
} mv;

/* totals for "stats" (slabs_lock) */
static struct {
    uint64_t rescues, chunk_rescues, evictions_nomem, inline_reclaim;
    uint64_t busy_items, busy_deletes, slabs_moved;
} rebal_stats;

/* ---- request slot and thread control (rebal_lock) ---- */
static pthread_mutex_t rebal_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t rebal_cond;      /* mover waits for a request */
static pthread_cond_t automove_cond;   /* automover's 1 s tick */
static bool rebal_requested;
static int req_src, req_dst;
static bool stop_threads;
static bool mover_started, automover_started;
static pthread_t mover_tid, automover_tid;
static _Atomic int automove_mode;
static _Atomic double automove_ratio;
static _Atomic bool reassign_running;  /* request pending or page in flight */

static int do_slabs_newslab(unsigned int id);

/* ------------------------------------------------------------------ */
/* helpers */

static inline item *chunk_at(const slabclass *p, char *page, unsigned int i) {
    return (item *)(page + (size_t)i * p->size);
}

static void freelist_push(slabclass *p, item *it) {
    it->prev = NULL;
    it->next = p->free_head;
    if (it->next)
        it->next->prev = it;
    p->free_head = it;
    p->free_count++;
}

static void freelist_cut(slabclass *p, item *it) {
    if (it->prev)
        it->prev->next = it->next;
    else
        p->free_head = it->next;
    if (it->next)
        it->next->prev = it->prev;
    it->next = it->prev = NULL;
    p->free_count--;
}

/* Mark a chunk of the page in flight as emptied for the move. */
static void mark_cleared(item *it) {
    atomic_store_explicit(&it->refcount, 0, memory_order_relaxed);
    __atomic_store_n(&it->slabs_clsid, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&it->it_flags, ITEM_SLABBED | ITEM_FETCHED, __ATOMIC_RELEASE);
}

static void do_slabs_free(void *ptr, size_t size, unsigned int id) {
    slabclass *p = &classes[id];
    item *it = ptr;
    atomic_store_explicit(&it->refcount, 0, memory_order_relaxed);
    __atomic_store_n(&it->slabs_clsid, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&it->it_flags, ITEM_SLABBED, __ATOMIC_RELEASE);
    freelist_push(p, it);
    p->requested -= size;
}

static void split_page(char *page, unsigned int id) {
    slabclass *p = &classes[id];
    for (unsigned int i = 0; i < p->perslab; i++)
        do_slabs_free(chunk_at(p, page, i), 0, id);
}

static int grow_page_list(slabclass *p) {
    if (p->npages < p->pages_cap)
        return 1;
    unsigned int ncap = p->pages_cap ? p->pages_cap * 2 : 16;
    char **n = realloc(p->pages, ncap * sizeof(char *));
    if (!n)
        return 0;
    p->pages = n;
    p->pages_cap = ncap;
    return 1;
}

/* Take a page for class id, from the pool if it has one, else malloc. */
static int do_slabs_newslab(unsigned int id) {
    slabclass *p = &classes[id];
    slabclass *pool = &classes[POOL_ID];
    size_t len = settings.slab_page_size;
    if (mem_limit && mem_malloced + len > mem_limit && p->npages > 0 &&
        pool->npages == 0)
        return 0;
    if (!grow_page_list(p))
        return 0;
    char *page;
    if (pool->npages > 0) {
        page = pool->pages[--pool->npages];
    } else {
        page = malloc(len);
        if (!page) {
            atomic_fetch_add_explicit(&gstats.malloc_fails, 1, memory_order_relaxed);
            return 0;
        }
        mem_malloced += len;
    }
    memset(page, 0, len);
    split_page(page, id);
    p->pages[p->npages++] = page;
    return 1;
}

static void *do_slabs_alloc(size_t size, unsigned int id, bool may_grow) {
    slabclass *p = &classes[id];
    if (p->free_count == 0 && (!may_grow || !do_slabs_newslab(id)))
        return NULL;
    item *it = p->free_head;
    freelist_cut(p, it);
    __atomic_store_n(&it->it_flags, 0, __ATOMIC_RELAXED);
    p->requested += size;
    return it;
}

/* ------------------------------------------------------------------ */
/* public allocator */

int slabs_init(void) {
    pthread_mutex_lock(&slabs_lock);
    memset(classes, 0, sizeof(classes));
    memset(&mv, 0, sizeof(mv));
    memset(&rebal_stats, 0, sizeof(rebal_stats));
    mem_limit = settings.maxbytes;
    mem_malloced = 0;

    size_t page = settings.slab_page_size;
    size_t cmax = settings.slab_chunk_max;
    double factor = settings.factor;
    if (page == 0 || cmax == 0 || cmax > page || factor <= 1.0 ||
        cmax % CHUNK_ALIGN != 0 || cmax < sizeof(item) + 16) {
        pthread_mutex_unlock(&slabs_lock);
        return -1;
    }
    unsigned int i = 0;
    unsigned int size = (unsigned int)(sizeof(item) + (size_t)settings.chunk_size);
    while (++i < PS_MAX_SLAB_CLASSES - 1) {
        if ((double)size >= (double)cmax / factor)
            break;
        if (size % CHUNK_ALIGN)
            size += CHUNK_ALIGN - (size % CHUNK_ALIGN);
        classes[i].size = size;
        classes[i].perslab = (unsigned int)(page / size);
        unsigned int next = (unsigned int)(size * factor);
        size = next > size ? next : size + CHUNK_ALIGN;
    }
    largest_id = i;
    classes[i].size = (unsigned int)cmax;
    classes[i].perslab = (unsigned int)(page / cmax);
    slabs_ready = true;
    pthread_mutex_unlock(&slabs_lock);
    atomic_store_explicit(&automove_mode, settings.slab_automove, memory_order_relaxed);
    atomic_store_explicit(&automove_ratio, settings.slab_automove_ratio, memory_order_relaxed);
    atomic_store_explicit(&reassign_running, false, memory_order_relaxed);
    return 0;
}

void slabs_cleanup(void) {
    pthread_mutex_lock(&slabs_lock);
    for (unsigned int i = 0; i < PS_MAX_SLAB_CLASSES; i++) {
        slabclass *p = &classes[i];
        for (unsigned int j = 0; j < p->npages; j++)
            free(p->pages[j]);
        free(p->pages);
    }
    /* a page still in flight was removed from nothing yet: it is in the
     * source class's list and freed above */
    memset(classes, 0, sizeof(classes));
    memset(&mv, 0, sizeof(mv));
    mem_malloced = 0;
    largest_id = 0;
    slabs_ready = false;
    pthread_mutex_unlock(&slabs_lock);
}

unsigned int slabs_clsid(size_t size) {
    /* classes[] sizes never change after init: no lock needed */
    if (size == 0 || largest_id == 0)
        return 0;
    if (size > classes[largest_id].size)
        return 0;
    /* binary search over the increasing sizes 1..largest */
    unsigned int lo = 1, hi = largest_id;
    while (lo < hi) {
        unsigned int mid = (lo + hi) / 2;
        if (classes[mid].size >= size)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

unsigned int slabs_largest_clsid(void) {
    return largest_id;
}

size_t slabs_chunk_size(unsigned int id) {
    if (id < 1 || id > largest_id)
        return 0;
    return classes[id].size;
}

void *slabs_alloc(size_t size, unsigned int id) {
    if (id < 1 || id > largest_id)
        return NULL;
    pthread_mutex_lock(&slabs_lock);
    void *r = do_slabs_alloc(size, id, true);
    pthread_mutex_unlock(&slabs_lock);
    return r;
}

void *slabs_alloc_nonew(size_t size, unsigned int id) {
    if (id < 1 || id > largest_id)
        return NULL;
    pthread_mutex_lock(&slabs_lock);
    void *r = do_slabs_alloc(size, id, false);
    pthread_mutex_unlock(&slabs_lock);
    return r;
}

void slabs_free(void *ptr, size_t size, unsigned int id) {
    if (id < 1 || id > largest_id)
        return;
    pthread_mutex_lock(&slabs_lock);
    do_slabs_free(ptr, size, id);
    pthread_mutex_unlock(&slabs_lock);
}

void slabs_adjust_mem_requested(unsigned int id, size_t old, size_t ntotal) {
    if (id < 1 || id > largest_id)
        return;
    pthread_mutex_lock(&slabs_lock);
    classes[id].requested = classes[id].requested - old + ntotal;
    pthread_mutex_unlock(&slabs_lock);
}

void slabs_mlock(void) {
    pthread_mutex_lock(&slabs_lock);
}

void slabs_munlock(void) {
    pthread_mutex_unlock(&slabs_lock);
}

void slabs_class_stats(unsigned int id, slabs_class_info *out) {
    memset(out, 0, sizeof(*out));
    if (id > largest_id)
        return;
    pthread_mutex_lock(&slabs_lock);
    out->chunk_size = classes[id].size;
    out->perslab = classes[id].perslab;
    out->total_pages = classes[id].npages;
    out->free_chunks = classes[id].free_count;
    pthread_mutex_unlock(&slabs_lock);
}

unsigned int slabs_global_pool_pages(void) {
    pthread_mutex_lock(&slabs_lock);
    unsigned int n = classes[POOL_ID].npages;
    pthread_mutex_unlock(&slabs_lock);
    return n;
}

size_t slabs_total_malloced(void) {
    pthread_mutex_lock(&slabs_lock);
    size_t n = mem_malloced;
    pthread_mutex_unlock(&slabs_lock);
    return n;
}

bool slabs_reassign_busy(void) {
    return atomic_load_explicit(&reassign_running, memory_order_acquire);
}

/* Give pool pages back to the OS while over the limit (slabs_lock held). */
static void do_pool_trim(void) {
    slabclass *pool = &classes[POOL_ID];
    while (pool->npages > 0 && mem_limit && mem_malloced > mem_limit) {
        free(pool->pages[--pool->npages]);
        mem_malloced -= settings.slab_page_size;
    }
}

int slabs_set_memlimit(size_t bytes) {
    if (bytes < settings.slab_page_size)
        return -1;
    pthread_mutex_lock(&slabs_lock);
    mem_limit = bytes;
    do_pool_trim();
    pthread_mutex_unlock(&slabs_lock);
    /* Pages above the new limit are handed back as the automover (or an
     * operator's "slabs reassign N 0") frees them into the pool. */
    return 0;
}

/* ------------------------------------------------------------------ */
/* stats */

#define U(x) ((unsigned long long)(x))

static void class_stat(add_stat_fn add, void *ctx, unsigned int id,
                       const char *name, unsigned long long v) {
    char key[64];
    snprintf(key, sizeof(key), "%u:%s", id, name);
    stats_appendf(add, ctx, key, "%llu", v);
}

void slabs_stats(add_stat_fn add, void *ctx) {
    /* Copy under the lock, print without it (add() may be slow). */
    slabclass snap[PS_MAX_SLAB_CLASSES];
    unsigned int largest;
    size_t malloced;
    pthread_mutex_lock(&slabs_lock);
    memcpy(snap, classes, sizeof(snap));
    largest = largest_id;
    malloced = mem_malloced;
    pthread_mutex_unlock(&slabs_lock);

    int active = 0;
    for (unsigned int i = 1; i <= largest; i++) {
        slabclass *p = &snap[i];
        if (p->npages == 0)
            continue;
        active++;
        class_stat(add, ctx, i, "chunk_size", p->size);
        class_stat(add, ctx, i, "chunks_per_page", p->perslab);
        class_stat(add, ctx, i, "total_pages", p->npages);
        class_stat(add, ctx, i, "total_chunks", (unsigned long long)p->npages * p->perslab);
        class_stat(add, ctx, i, "used_chunks",
                   (unsigned long long)p->npages * p->perslab - p->free_count);
        class_stat(add, ctx, i, "free_chunks", p->free_count);
        class_stat(add, ctx, i, "free_chunks_end", 0);
        class_stat(add, ctx, i, "get_hits", SLAB_STATS_SUM(i, get_hits));
        class_stat(add, ctx, i, "cmd_set", SLAB_STATS_SUM(i, set_cmds));
        class_stat(add, ctx, i, "delete_hits", SLAB_STATS_SUM(i, delete_hits));
        class_stat(add, ctx, i, "incr_hits", SLAB_STATS_SUM(i, incr_hits));
        class_stat(add, ctx, i, "decr_hits", SLAB_STATS_SUM(i, decr_hits));
        class_stat(add, ctx, i, "cas_hits", SLAB_STATS_SUM(i, cas_hits));
        class_stat(add, ctx, i, "cas_badval", SLAB_STATS_SUM(i, cas_badval));
        class_stat(add, ctx, i, "touch_hits", SLAB_STATS_SUM(i, touch_hits));
    }
    stats_appendf(add, ctx, "active_slabs", "%d", active);
    stats_appendf(add, ctx, "total_malloced", "%llu", U(malloced));
}

void slabs_stats_totals(add_stat_fn add, void *ctx) {
    typeof(rebal_stats) rs;
    pthread_mutex_lock(&slabs_lock);
    rs = rebal_stats;
    pthread_mutex_unlock(&slabs_lock);
    if (settings.slab_reassign) {
        stats_appendf(add, ctx, "slab_reassign_rescues", "%llu", U(rs.rescues));
        stats_appendf(add, ctx, "slab_reassign_chunk_rescues", "%llu", U(rs.chunk_rescues));
        stats_appendf(add, ctx, "slab_reassign_evictions_nomem", "%llu", U(rs.evictions_nomem));
        stats_appendf(add, ctx, "slab_reassign_inline_reclaim", "%llu", U(rs.inline_reclaim));
        stats_appendf(add, ctx, "slab_reassign_busy_items", "%llu", U(rs.busy_items));
        stats_appendf(add, ctx, "slab_reassign_busy_deletes", "%llu", U(rs.busy_deletes));
        stats_appendf(add, ctx, "slab_reassign_running", "%u",
                      atomic_load_explicit(&reassign_running, memory_order_relaxed) ? 1u : 0u);
        stats_appendf(add, ctx, "slabs_moved", "%llu", U(rs.slabs_moved));
    }
    items_stats_background(add, ctx);
}

/* ------------------------------------------------------------------ */
/* reassign requests */

static int pick_any_source(unsigned int dst) {
    /* slabs_lock held. Round-robin over classes with a spare page. */
    static unsigned int cursor;
    for (unsigned int n = 0; n < largest_id; n++) {
        cursor = cursor % largest_id + 1;
        if (cursor != dst && classes[cursor].npages > 1)
            return (int)cursor;
    }
    return -1;
}

reassign_result slabs_reassign(int src, int dst) {
    if (!settings.slab_reassign)
        return REASSIGN_BADCLASS;
    pthread_mutex_lock(&rebal_lock);
    if (rebal_requested || atomic_load_explicit(&reassign_running, memory_order_relaxed)) {
        pthread_mutex_unlock(&rebal_lock);
        return REASSIGN_RUNNING;
    }
    if (src == dst) {
        pthread_mutex_unlock(&rebal_lock);
        return REASSIGN_SRC_DST_SAME;
    }
    pthread_mutex_lock(&slabs_lock);
    if (src == -1)
        src = dst >= 0 && (unsigned)dst <= largest_id ? pick_any_source((unsigned)dst) : -1;
    if (src < POOL_ID || src > (int)largest_id || dst < POOL_ID || dst > (int)largest_id) {
        pthread_mutex_unlock(&slabs_lock);
        pthread_mutex_unlock(&rebal_lock);
        return REASSIGN_BADCLASS;
    }
    /* a class keeps at least one page; the pool may give its last */
    bool nospare = src == POOL_ID ? classes[POOL_ID].npages < 1 : classes[src].npages < 2;
    pthread_mutex_unlock(&slabs_lock);
    if (nospare) {
        pthread_mutex_unlock(&rebal_lock);
        return REASSIGN_NOSPARE;
    }
    req_src = src;
    req_dst = dst;
    rebal_requested = true;
    atomic_store_explicit(&reassign_running, true, memory_order_release);
    pthread_cond_signal(&rebal_cond);
    pthread_mutex_unlock(&rebal_lock);
    return REASSIGN_OK;
}

void slabs_set_automove(int mode) {
    if (mode < 0 || mode > 2)
        return;
    atomic_store_explicit(&automove_mode, mode, memory_order_relaxed);
}

void slabs_set_automove_ratio(double ratio) {
    atomic_store_explicit(&automove_ratio, ratio, memory_order_relaxed);
}

/* ------------------------------------------------------------------ */
/* the page mover */

/* Pop a free chunk of class id that is not in the page in flight; chunks
 * of that page met on the way are cleared for the move (slabs_lock). */
static item *mover_alloc(size_t size, unsigned int id) {
    slabclass *p = &classes[id];
    while (p->free_count > 0) {
        item *it = do_slabs_alloc(size, id, false);
        if ((char *)it >= mv.page && (char *)it < mv.page_end) {
            p->requested -= size;
            mark_cleared(it);
            rebal_stats.inline_reclaim++;
            continue;
        }
        return it;
    }
    return NULL;
}

/* Start emptying the first page of src (slabs_lock held). 0 ok. */
static int mover_start(unsigned int src, unsigned int dst) {
    slabclass *s = &classes[src];
    if (src == POOL_ID) {
        /* pool pages hold nothing: hand one over directly */
        if (s->npages == 0 || !grow_page_list(&classes[dst]))
            return -1;
        char *page = s->pages[--s->npages];
        memset(page, 0, settings.slab_page_size);
        split_page(page, dst);
        classes[dst].pages[classes[dst].npages++] = page;
        rebal_stats.slabs_moved++;
        return 1;
    }
    if (s->npages < 2 || (dst != POOL_ID && !grow_page_list(&classes[dst])))
        return -1;
    mv.active = true;
    mv.src = src;
    mv.dst = dst;
    mv.page = s->pages[0];
    mv.page_end = mv.page + (size_t)s->perslab * s->size;
    mv.pos = 0;
    mv.busy_this_pass = 0;
    mv.busy_loops = 0;
    return 0;
}

/* Deal with one live item of the page (slabs_lock held on entry and on
 * return; dropped in between). `hv` is its hash, its item lock is held
 * and we pinned it (refcount was `refs_before` before our pin).
 * `in_page` is the chunk of the page we are clearing: the item itself, or
 * a chunk of the chunked item `it`. */
static void mover_evict_or_rescue(item *it, uint32_t hv, unsigned int refs_before,
                                  item *in_page) {
    slabclass *s = &classes[mv.src];
    uint16_t fl = item_flags(it);
    bool chunked = (fl & ITEM_CHUNKED) != 0;
    bool is_chunk_of = in_page != it;

    if (refs_before > 1) {
        /* someone is sending or filling it: retry later, or give up on
         * waiting and unlink it so the last holder frees it */
        mv.busy_this_pass++;
        rebal_stats.busy_items++;
        if (mv.busy_loops >= MOVER_MAX_BUSY_LOOPS) {
            rebal_stats.busy_deletes++;
            pthread_mutex_unlock(&slabs_lock);
            do_item_unlink(it, hv);
            item_release(it);
            item_unlock(hv);
            pthread_mutex_lock(&slabs_lock);
            return;
        }
        pthread_mutex_unlock(&slabs_lock);
        item_release(it);  /* cannot free: it is linked */
        item_unlock(hv);
        pthread_mutex_lock(&slabs_lock);
        return;
    }

    if (chunked || is_chunk_of || item_is_dead(it)) {
        /* Not worth (or not possible) to copy: unlink; for chunked items
         * the memory goes back through the free lists and a later pass
         * clears it. */
        if (!item_is_dead(it))
            rebal_stats.evictions_nomem++;
        if (chunked || is_chunk_of) {
            mv.busy_this_pass++;   /* come back to clear the freed chunk */
            pthread_mutex_unlock(&slabs_lock);
            do_item_unlink(it, hv);
            item_release(it);      /* last reference: frees header + chunks */
            item_unlock(hv);
            pthread_mutex_lock(&slabs_lock);
            return;
        }
        size_t ntotal = item_ntotal(it);
        pthread_mutex_unlock(&slabs_lock);
        do_item_unlink(it, hv);    /* refcount 2 -> 1: only our pin */
        item_unlock(hv);
        pthread_mutex_lock(&slabs_lock);
        s->requested -= ntotal;
        mark_cleared(it);
        return;
    }

    size_t ntotal = item_ntotal(it);
    item *copy = mover_alloc(ntotal, mv.src);
    pthread_mutex_unlock(&slabs_lock);
    if (copy) {
        /* header fields one by one (refcount is atomic), then the rest */
        copy->next = copy->prev = copy->h_next = NULL;
        copy->time = item_time(it);
        copy->exptime = it->exptime;
        copy->nbytes = it->nbytes;
        copy->client_flags = it->client_flags;
        atomic_store_explicit(&copy->refcount, 0, memory_order_relaxed);
        copy->it_flags = (uint16_t)(fl & ~ITEM_LINKED);
        copy->slabs_clsid = ITEM_CLSID_RAW(it);
        copy->nkey = it->nkey;
        copy->cas = it->cas;
        memcpy(copy->data, it->data, ntotal - sizeof(item));
        do_item_relink_copy(it, copy, hv);   /* old: refcount 2 -> 1 */
        item_unlock(hv);
        pthread_mutex_lock(&slabs_lock);
        rebal_stats.rescues++;
    } else {
        rebal_stats.evictions_nomem++;
        do_item_unlink(it, hv);
        item_unlock(hv);
        pthread_mutex_lock(&slabs_lock);
    }
    s->requested -= ntotal;
    mark_cleared(it);
}

/* Examine the chunk at mv.pos (slabs_lock held). */
static void mover_step(void) {
    slabclass *s = &classes[mv.src];
    item *it = chunk_at(s, mv.page, mv.pos);
    uint16_t fl = item_flags(it);

    if (fl == (ITEM_SLABBED | ITEM_FETCHED))
        return;                              /* already cleared */
    if (fl & ITEM_SLABBED) {
        freelist_cut(s, it);
        mark_cleared(it);
        return;
    }
    item *owner = it;
    if (fl & ITEM_CHUNK) {
        /* chunk fields are written under slabs_lock by items.c */
        owner = ((item_chunk *)it)->head;
        if (!owner) {
            mv.busy_this_pass++;
            return;
        }
    }
    uint16_t ofl = item_flags(owner);
    if (!(ofl & ITEM_LINKED)) {
        /* being filled, or unlinked and waiting for its last holder */
        mv.busy_this_pass++;
        rebal_stats.busy_items++;
        return;
    }
    /* LINKED was set (release) after the key was written and cannot be
     * freed while we hold slabs_lock, so the key is stable to read. */
    uint32_t hv = item_hash(ITEM_key(owner), owner->nkey);
    if (item_trylock(hv) != 0) {
        mv.busy_this_pass++;
        rebal_stats.busy_items++;
        return;
    }
    if (!(item_flags(owner) & ITEM_LINKED)) {
        item_unlock(hv);
        mv.busy_this_pass++;
        return;
    }
    unsigned int before = atomic_fetch_add_explicit(&owner->refcount, 1, memory_order_acq_rel);
    mover_evict_or_rescue(owner, hv, before, it);
}

/* The page has nothing live left: hand it over (slabs_lock held). */
static void mover_finish(void) {
    slabclass *s = &classes[mv.src];
    /* drop the page from the source list */
    for (unsigned int i = 0; i < s->npages; i++) {
        if (s->pages[i] == mv.page) {
            memmove(&s->pages[i], &s->pages[i + 1], (s->npages - i - 1) * sizeof(char *));
            s->npages--;
            break;
        }
    }
    char *page = mv.page;
    memset(page, 0, settings.slab_page_size);
    if (mv.dst == POOL_ID) {
        slabclass *pool = &classes[POOL_ID];
        if (grow_page_list(pool)) {
            pool->pages[pool->npages++] = page;
            do_pool_trim();
        } else {
            free(page);
            mem_malloced -= settings.slab_page_size;
        }
    } else if (grow_page_list(&classes[mv.dst])) {
        split_page(page, mv.dst);
        classes[mv.dst].pages[classes[mv.dst].npages++] = page;
    } else {
        free(page);
        mem_malloced -= settings.slab_page_size;
    }
    rebal_stats.slabs_moved++;
    mv.active = false;
    mv.page = mv.page_end = NULL;
}

/* Wait up to ms milliseconds on cond (rebal_lock held); false if stopping. */
static bool rebal_wait(pthread_cond_t *cond, long ms) {
    if (!stop_threads)
        ps_cond_wait_us(cond, &rebal_lock, ms * 1000);
    return !stop_threads;
}

static void *mover_main(void *arg) {
    (void)arg;
    stats_thread_register();
    pthread_mutex_lock(&rebal_lock);
    while (!stop_threads) {
        if (!rebal_requested) {
            rebal_wait(&rebal_cond, 100);
            continue;
        }
        int src = req_src, dst = req_dst;
        rebal_requested = false;
        pthread_mutex_unlock(&rebal_lock);

        pthread_mutex_lock(&slabs_lock);
        int started = mover_start((unsigned)src, (unsigned)dst);
        pthread_mutex_unlock(&slabs_lock);

        bool stopping = false;
        while (started == 0 && !stopping) {
            pthread_mutex_lock(&slabs_lock);
            slabclass *s = &classes[mv.src];
            for (int n = 0; n < MOVER_BATCH && mv.pos < s->perslab; n++, mv.pos++)
                mover_step();
            bool pass_done = mv.pos >= s->perslab;
            bool finished = false;
            if (pass_done) {
                if (mv.busy_this_pass == 0) {
                    mover_finish();
                    finished = true;
                } else {
                    mv.pos = 0;
                    mv.busy_this_pass = 0;
                    mv.busy_loops++;
                }
            }
            pthread_mutex_unlock(&slabs_lock);
            if (finished)
                break;
            pthread_mutex_lock(&rebal_lock);
            if (pass_done)
                rebal_wait(&rebal_cond, 1);   /* let busy holders finish */
            stopping = stop_threads;
            pthread_mutex_unlock(&rebal_lock);
        }
        if (stopping) {
            /* shutting down: the arena is freed wholesale by slabs_cleanup */
            pthread_mutex_lock(&slabs_lock);
            mv.active = false;
            pthread_mutex_unlock(&slabs_lock);
        }
        pthread_mutex_lock(&rebal_lock);
        atomic_store_explicit(&reassign_running, rebal_requested, memory_order_release);
    }
    pthread_mutex_unlock(&rebal_lock);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* the automover */

typedef struct {
    uint8_t dirty;          /* evicted, failed or grew this second */
    uint8_t evicted_seen;
    double evicted_ratio;   /* share of all evictions this second */
    uint32_t age;
} am_slot;

typedef struct {
    int window;
    uint64_t tick;
    am_slot *slots;                         /* [class][window] */
    uint64_t ev_before[PS_MAX_SLAB_CLASSES];
    uint64_t oom_before[PS_MAX_SLAB_CLASSES];
    unsigned int pages_before[PS_MAX_SLAB_CLASSES];
} automover;

/* One decision; returns true with *src and *dst set when a move is wanted. */
static bool automove_decide(automover *a, int mode, int *src, int *dst) {
    uint64_t ev[PS_MAX_SLAB_CLASSES], oom[PS_MAX_SLAB_CLASSES];
    uint32_t age[PS_MAX_SLAB_CLASSES];
    slabs_class_info info[PS_MAX_SLAB_CLASSES];
    items_automove_snapshot(ev, oom, age);
    for (unsigned int i = 1; i <= largest_id; i++)
        slabs_class_stats(i, &info[i]);

    uint64_t ev_total = 0;
    for (unsigned int i = 1; i <= largest_id; i++)
        ev_total += ev[i] - a->ev_before[i];
    a->tick++;

    int oldest = -1, youngest = -1;
    uint64_t oldest_age = 0, youngest_age = UINT64_MAX;
    bool youngest_evicting = false;
    int reclaim_src = -1, eager_dst = -1;
    for (unsigned int n = 1; n <= largest_id; n++) {
        am_slot *row = &a->slots[(size_t)n * a->window];
        am_slot *cur = &row[a->tick % a->window];
        memset(cur, 0, sizeof(*cur));
        uint64_t evd = ev[n] - a->ev_before[n];
        if (evd > 0) {
            cur->evicted_ratio = ev_total ? (double)evd / (double)ev_total : 0;
            cur->evicted_seen = 1;
            cur->dirty = 1;
            if (eager_dst < 0)
                eager_dst = (int)n;
        }
        if (oom[n] != a->oom_before[n] || info[n].total_pages > a->pages_before[n])
            cur->dirty = 1;
        cur->age = age[n];
        a->ev_before[n] = ev[n];
        a->oom_before[n] = oom[n];
        a->pages_before[n] = info[n].total_pages;

        unsigned int dirty = 0, seen = 0;
        double ratio = 0;
        uint64_t age_sum = 0;
        for (int w = 0; w < a->window; w++) {
            dirty += row[w].dirty;
            seen += row[w].evicted_seen;
            ratio += row[w].evicted_ratio;
            age_sum += row[w].age;
        }
        uint64_t avg_age = age_sum / (uint64_t)a->window;

        if (reclaim_src < 0 && a->tick > (uint64_t)a->window && dirty == 0 &&
            info[n].total_pages > 1 &&
            info[n].free_chunks > info[n].perslab * AUTOMOVE_FREE_PAGES)
            reclaim_src = (int)n;
        if (avg_age > oldest_age && info[n].total_pages > AUTOMOVE_MIN_SOURCE_PAGES) {
            oldest = (int)n;
            oldest_age = avg_age;
        }
        if (avg_age < youngest_age &&
            (seen > (unsigned)a->window / 2 || ratio / a->window > 0.25)) {
            youngest = (int)n;
            youngest_age = avg_age;
            youngest_evicting = cur->evicted_seen != 0;
        }
    }
    if (reclaim_src > 0) {
        *src = reclaim_src;
        *dst = POOL_ID;
        return true;
    }
    if (youngest > 0 && oldest > 0 && youngest != oldest &&
        a->tick > (uint64_t)a->window && youngest_evicting &&
        (double)youngest_age <
            (double)oldest_age * atomic_load_explicit(&automove_ratio, memory_order_relaxed)) {
        *src = oldest;
        *dst = youngest;
        return true;
    }
    if (mode == 2 && eager_dst > 0) {
        *src = -1;
        *dst = eager_dst;
        return true;
    }
    return false;
}

static void *automover_main(void *arg) {
    (void)arg;
    stats_thread_register();
    automover a;
    memset(&a, 0, sizeof(a));
    a.window = settings.slab_automove_window > 0 ? settings.slab_automove_window : 30;
    a.slots = calloc((size_t)PS_MAX_SLAB_CLASSES * (size_t)a.window, sizeof(am_slot));
    pthread_mutex_lock(&rebal_lock);
    while (!stop_threads && a.slots) {
        /* one tick a second, waking every 100 ms to notice a stop */
        for (int i = 0; i < 10 && !stop_threads; i++)
            rebal_wait(&automove_cond, 100);
        if (stop_threads)
            break;
        int mode = atomic_load_explicit(&automove_mode, memory_order_relaxed);
        pthread_mutex_unlock(&rebal_lock);
        int src, dst;
        if (mode > 0 && automove_decide(&a, mode, &src, &dst))
            slabs_reassign(src, dst);
        pthread_mutex_lock(&rebal_lock);
    }
    pthread_mutex_unlock(&rebal_lock);
    free(a.slots);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* thread control */

int slabs_threads_start(void) {
    ps_cond_init_monotonic(&rebal_cond);
    ps_cond_init_monotonic(&automove_cond);
    pthread_mutex_lock(&rebal_lock);
    stop_threads = false;
    rebal_requested = false;
    pthread_mutex_unlock(&rebal_lock);
    if (!settings.slab_reassign)
        return 0;
    if (pthread_create(&mover_tid, NULL, mover_main, NULL) != 0)
        return -1;
    mover_started = true;
    if (pthread_create(&automover_tid, NULL, automover_main, NULL) != 0)
        return -1;
    automover_started = true;
    return 0;
}

void slabs_threads_stop(void) {
    pthread_mutex_lock(&rebal_lock);
    stop_threads = true;
    pthread_cond_broadcast(&rebal_cond);
    pthread_cond_broadcast(&automove_cond);
    pthread_mutex_unlock(&rebal_lock);
    if (mover_started)
        pthread_join(mover_tid, NULL);
    if (automover_started)
        pthread_join(automover_tid, NULL);
    mover_started = automover_started = false;
    atomic_store_explicit(&reassign_running, false, memory_order_relaxed);
}
