/*
 * items.h - the item: layout, life cycle, and the storage operations the
 * protocols call. Implemented in items.c (item life cycle, store semantics,
 * segmented LRU, LRU maintainer thread, LRU crawler thread).
 *
 * LAYOUT. An item lives in one slab chunk:
 *     [struct item header][key bytes][NUL][value bytes, ending in "\r\n"]
 * `nbytes` counts the value including its trailing "\r\n" (as memcached).
 * A value too big for the largest slab class is CHUNKED: the header chunk
 * holds the key and, where the value would start, an item_chunk pointer; the
 * value is spread over a doubly linked list of item_chunk taken from the
 * largest classes. Protocol code never looks inside: it uses
 * item_value_iov() to read or fill the value, and item_value_ptr() when it
 * knows the item is small (incr/decr).
 *
 * LOCKING (who owns what).
 *   - item locks: a power-of-two array of mutexes; item_lock(hv) guards every
 *     item whose key hashes to hv: its hash-chain membership, it_flags, cas,
 *     exptime, and the hash bucket(s) that hold it. The lock count is never
 *     larger than the bucket count, so the lock for hv covers whole buckets,
 *     which is what lets the assoc expander move a bucket under one lock.
 *   - LRU locks: one mutex per (slab class, LRU segment) guarding that
 *     list's links, sizes and per-LRU stats. Order: item lock, then LRU
 *     lock, then slabs lock. A thread holding an LRU lock only ever
 *     *try*-locks an item lock (eviction, maintainer), never blocks on one.
 *   - refcount: C11 atomic. 1 for the hash table's link, +1 for every
 *     worker that holds the item (a get being written to a socket, a set
 *     being filled). The memory returns to the slab only when the count
 *     reaches 0 and the item is unlinked. A reference holder may read the
 *     key and value without any lock: they are immutable once linked
 *     (append/prepend/incr of a shared item make a new item and replace).
 *   - "do_" functions require the caller to hold item_lock(hv); the plain
 *     names take and release it themselves.
 *
 * TIME. rel_time_t counts seconds since process_started (server start minus
 * a little slack, as memcached). `current_time` is advanced once a second by
 * the clock in the LRU maintainer; readers load it relaxed: it is a hint
 * whose only consumers compare it against item times. Read an item's
 * expiry with item_ttl_remaining() and its access time with item_time():
 * both fields are written with relaxed atomics by other threads (touch,
 * the LRU maintainer) while reference holders may read them.
 */
#ifndef PS_CACHE_ITEMS_H
#define PS_CACHE_ITEMS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <time.h>

typedef uint32_t rel_time_t;

/* it_flags bits (guarded by the item lock, except where noted) */
#define ITEM_LINKED     (1u << 0)  /* in the hash table and an LRU */
#define ITEM_CAS        (1u << 1)  /* has a CAS value (always on unless -C) */
#define ITEM_SLABBED    (1u << 2)  /* free chunk on a slab free list */
#define ITEM_FETCHED    (1u << 3)  /* read at least once since stored */
#define ITEM_ACTIVE     (1u << 4)  /* read again since last LRU bump */
#define ITEM_CHUNKED    (1u << 5)  /* value lives in an item_chunk list */
#define ITEM_CHUNK      (1u << 6)  /* this is an item_chunk, not an item */
#define ITEM_TOKEN_SENT (1u << 7)  /* meta: a recache/win token was handed out */
#define ITEM_STALE      (1u << 8)  /* meta: marked stale by md/mg invalidation */
#define ITEM_HDR        (1u << 9)  /* reserved for extstore: value is on flash */
#define ITEM_KEY_BINARY (1u << 10) /* meta: key was given base64 ("b"); set before link */
/* bit 15 is used privately by items.c (LRU walk markers) */

/* LRU segment is kept in the top two bits of slabs_clsid */
#define HOT_LRU   0
#define WARM_LRU  64
#define COLD_LRU  128
#define TEMP_LRU  192
#define CLEAR_LRU(id) ((id) & ~TEMP_LRU)
/* slabs_clsid's LRU bits change when the maintainer moves an item between
 * segments (under item lock + LRU lock) while reference holders without the
 * lock may read the class: always read it through these relaxed atomics. */
#define ITEM_CLSID_RAW(it) __atomic_load_n(&(it)->slabs_clsid, __ATOMIC_RELAXED)
#define ITEM_CLSID(it) CLEAR_LRU(ITEM_CLSID_RAW(it))

typedef struct item {
    struct item *next;          /* LRU links: under the LRU lock */
    struct item *prev;
    struct item *h_next;        /* hash chain: under the item lock */
    rel_time_t time;            /* last access; relaxed, a hint */
    rel_time_t exptime;         /* 0 = never; else rel time of death */
    uint32_t nbytes;            /* value length including "\r\n" */
    uint32_t client_flags;      /* opaque 32 bits from the client */
    _Atomic uint16_t refcount;
    uint16_t it_flags;
    uint8_t slabs_clsid;        /* class id | LRU segment bits */
    uint8_t nkey;               /* key length, without the NUL */
    uint8_t pad_[2];
    uint64_t cas;
    char data[];                /* key, NUL, value (or item_chunk* when chunked) */
} item;

/* An item_chunk shares the offsets of next/prev/refcount/it_flags/
 * slabs_clsid with struct item (checked by static asserts in items.c): the
 * slab free lists and the page mover look at a chunk of memory through
 * those fields without knowing yet whether it holds an item or a chunk. */
typedef struct item_chunk {
    struct item_chunk *next;
    struct item_chunk *prev;
    struct item *head;          /* the header item that owns the chain */
    uint32_t size;              /* usable bytes in data[] */
    uint32_t used;              /* bytes of value written in data[] */
    uint32_t pad0_[2];          /* keeps the fields below at item's offsets */
    _Atomic uint16_t refcount;  /* unused (0); chunks live and die with head */
    uint16_t it_flags;          /* ITEM_CHUNK | ITEM_SLABBED when free */
    uint8_t slabs_clsid;
    uint8_t orig_clsid;
    uint8_t pad_[2];
    char data[];
} item_chunk;

#define ITEM_key(it) ((it)->data)
#define ITEM_ntotal_small(nkey, nbytes) (sizeof(item) + (nkey) + 1 + (nbytes))

/* it_flags and time are read by threads that do not hold the item lock
 * (the page mover under the slabs lock, the LRU maintainer reading tail
 * ages), so every access goes through these atomics. Setting ITEM_LINKED is
 * a release and reading flags an acquire: whoever sees LINKED also sees the
 * key and value written before the link. Protocol code that sets meta
 * flags (ITEM_TOKEN_SENT, ITEM_STALE) must use item_flags_set/clear too. */
static inline uint16_t item_flags(const item *it) {
    return __atomic_load_n(&it->it_flags, __ATOMIC_ACQUIRE);
}
static inline void item_flags_set(item *it, uint16_t f) {
    __atomic_fetch_or(&it->it_flags, f, __ATOMIC_RELEASE);
}
static inline void item_flags_clear(item *it, uint16_t f) {
    __atomic_fetch_and(&it->it_flags, (uint16_t)~f, __ATOMIC_RELEASE);
}
static inline rel_time_t item_time(const item *it) {
    return __atomic_load_n(&it->time, __ATOMIC_RELAXED);
}
static inline void item_set_time(item *it, rel_time_t t) {
    __atomic_store_n(&it->time, t, __ATOMIC_RELAXED);
}
/* Bytes of slab memory the item's header+key+value would take if stored
 * contiguously (what "mem_requested" counts). */
size_t item_ntotal(const item *it);

/* ------------------------------------------------------------------ */
/* clock */
extern _Atomic rel_time_t current_time;
extern time_t process_started;
/* memcached's exptime rule: 0 = never; < 0 = already expired; > 30 days =
 * absolute unix time; else seconds from now. */
rel_time_t realtime(int64_t exptime);
/* Remaining TTL in seconds for "mg t"/"me": -1 = never expires. */
int64_t item_ttl_remaining(const item *it);

/* ------------------------------------------------------------------ */
/* hashing and locks */
uint32_t item_hash(const char *key, size_t nkey);
void item_lock(uint32_t hv);
void item_unlock(uint32_t hv);
int item_trylock(uint32_t hv);     /* 0 on success */

/* ------------------------------------------------------------------ */
/* life cycle */
int items_init(void);              /* after slabs_init/assoc_init; 0 ok */
int items_threads_start(void);     /* LRU maintainer + crawler (+ clock) */
void items_threads_stop(void);     /* joins them */
void items_cleanup(void);          /* after items_threads_stop; idempotent */

/* Test hook: move the clock forward by `seconds` (tests only; the clock
 * thread keeps adding real time on top). */
void items_test_advance_clock(rel_time_t seconds);
/* Run one LRU maintainer pass / one synchronous crawl of every class now
 * (tests; the threads do the same work on their own schedule). */
void items_test_maintain_once(void);

/* Why an allocation failed (for the protocol's error text). */
typedef enum {
    ALLOC_OK = 0,
    ALLOC_TOO_LARGE,   /* "SERVER_ERROR object too large for cache" */
    ALLOC_NO_MEMORY,   /* "SERVER_ERROR out of memory storing object" */
} alloc_result;

/* Allocate an unlinked item with refcount 1 for key/nkey and a value of
 * nbytes (including "\r\n"). May evict from the COLD tail. Never blocks on
 * an item lock. The value bytes are uninitialised. */
item *item_alloc(const char *key, size_t nkey, uint32_t client_flags,
                 rel_time_t exptime, size_t nbytes, alloc_result *why);

/* Would an item of this size fit in the cache at all? (for -I checks) */
bool item_size_ok(size_t nkey, uint32_t client_flags, size_t nbytes);

/* Drop one reference; frees the memory when it was the last and the item
 * is unlinked. */
void item_release(item *it);

/* Value access. Fill iov with up to max (ptr,len) segments covering the
 * value (including "\r\n"); returns the number used, or -1 if max is too
 * small. A small item yields exactly one segment. */
int item_value_iov(item *it, struct iovec *iov, int max);
/* Pointer to the contiguous value of an unchunked item; NULL if chunked. */
char *item_value_ptr(item *it);
/* Copy the whole value of src into dst starting at byte offset off of
 * dst's value (both may be chunked); used by append/prepend. */
void item_value_copy(item *dst, size_t off, item *src, size_t len);

/* Look up a key. Returns a referenced item (caller must item_release) or
 * NULL. Expired and flushed items are unlinked lazily here. With
 * do_update, the item's access time is refreshed and it is marked
 * FETCHED/ACTIVE for the segmented LRU. do_item_get takes hv =
 * item_hash(key) and requires the caller to hold item_lock(hv). */
item *item_get(const char *key, size_t nkey, bool do_update);
item *do_item_get(const char *key, size_t nkey, uint32_t hv, bool do_update);
/* get-and-touch: set a new exptime on hit */
item *item_touch(const char *key, size_t nkey, rel_time_t exptime);

/* store operations */
typedef enum {
    STORE_SET = 1, STORE_ADD, STORE_REPLACE, STORE_APPEND, STORE_PREPEND,
    STORE_CAS,
} store_op;

typedef enum {
    STORED = 1,   /* "STORED" */
    NOT_STORED,   /* "NOT_STORED" */
    EXISTS,       /* "EXISTS" (cas mismatch) */
    NOT_FOUND,    /* "NOT_FOUND" (cas/replace target missing) */
    TOO_LARGE,    /* append/prepend result too large */
    NO_MEMORY,    /* append/prepend could not allocate */
} store_result;

/* Store a filled item. `it` keeps its caller's reference (release it
 * after). For STORE_CAS the item's `cas` field holds the compare value on
 * entry; for append/prepend a non-zero `cas` is compared too (EXISTS on
 * mismatch); item_alloc leaves it 0. On STORED, *cas_out (if not NULL)
 * receives the new CAS.
 *
 * WHO COUNTS WHAT. The storage layer bumps the counters that need the
 * item or the outcome: set_cmds (per class of `it`, every store op),
 * cas_hits / cas_badval (per class of the old item), cas_misses,
 * incr_hits / decr_hits, delete_hits, get_expired, get_flushed, and the
 * per-class hits_hot/warm/cold/temp ("hits_to_*" in "stats items") on
 * every lookup with do_update, in the caller's thread_stats block. The
 * protocol counts commands and misses: get_cmds, get_hits (per class via
 * ITEM_CLSID), get_misses, touch_cmds, touch_hits, touch_misses,
 * delete_misses, incr_misses, decr_misses. */
store_result item_store(item *it, store_op op, uint64_t *cas_out);
store_result do_item_store(item *it, store_op op, uint32_t hv, uint64_t *cas_out);

/* Link/unlink/replace under the item lock (meta protocol needs them). */
int do_item_link(item *it, uint32_t hv);
void do_item_unlink(item *it, uint32_t hv);
void item_unlink(item *it);                 /* takes the lock itself */
int do_item_replace(item *old_it, item *new_it, uint32_t hv);
/* Move an item to the head of its LRU / mark it active (segmented). */
void do_item_bump(item *it, uint32_t hv);
uint64_t item_next_cas(void);

/* incr/decr */
typedef enum {
    DELTA_OK = 1,        /* applied */
    DELTA_NON_NUMERIC,   /* "CLIENT_ERROR cannot increment or decrement non-numeric value" */
    DELTA_EOM,           /* "SERVER_ERROR out of memory" */
    DELTA_MISS,          /* "NOT_FOUND" */
    DELTA_EXISTS,        /* cas_in given and different: "EXISTS" (meta) */
} delta_result;
/* Applies the delta (decr floors at 0, incr wraps at 2^64). On DELTA_OK the
 * new value is written to buf (NUL terminated, at least 24 bytes) and the
 * new CAS to *cas (if not NULL). cas_in = 0 means no compare. As memcached:
 * the value must parse as an unsigned decimal of under 24 bytes (leading
 * blanks and trailing spaces allowed); a result no longer than the old
 * value is written in place, padded with spaces, when nobody else holds
 * the item; otherwise a new item replaces it. do_item_add_delta does not
 * consume the caller's reference on `it`. */
int item_add_delta(const char *key, size_t nkey, bool incr, uint64_t delta,
                   uint64_t cas_in, char *buf, uint64_t *cas);
int do_item_add_delta(item *it, bool incr, uint64_t delta, uint32_t hv,
                      uint64_t cas_in, char *buf, uint64_t *cas);

/* delete by key: 1 deleted, 0 not found */
int item_delete(const char *key, size_t nkey, uint64_t cas_in, bool *cas_mismatch);

/* flush_all: items stored at or before `when` (rel time; current_time
 * when no delay) are treated as gone from then on. */
void item_flush_all(rel_time_t when);
extern _Atomic rel_time_t settings_oldest_live;
extern _Atomic uint64_t settings_oldest_cas;

/* Is this item dead (expired or flushed) as of now? Caller holds its lock
 * or a reference. */
bool item_is_dead(const item *it);

/* ------------------------------------------------------------------ */
/* stats output: memcached's "stats items" and the item part of "stats" */
typedef void (*add_stat_fn)(const char *key, size_t klen, const char *val,
                            size_t vlen, void *ctx);
void items_stats(add_stat_fn add, void *ctx);           /* stats items */
void items_stats_sizes(add_stat_fn add, void *ctx);     /* stats sizes */
/* totals for "stats": curr_items, total_items, evictions, reclaimed,
 * expired_unfetched, evicted_unfetched, evicted_active, crawler_reclaimed,
 * crawler_items_checked, lrutail_reflocked, moves_to_cold, moves_to_warm,
 * moves_within_lru, direct_reclaims, lru_bumps_dropped, ... */
void items_stats_totals(add_stat_fn add, void *ctx);
void items_stats_reset(void);
/* lru_crawler_running, lru_crawler_starts, lru_maintainer_juggles (memcached
 * prints them right after slabs_moved; slabs_stats_totals calls this) */
void items_stats_background(add_stat_fn add, void *ctx);
/* bytes / curr_items / total_items as numbers */
void items_counts(uint64_t *curr_bytes, uint64_t *curr_items, uint64_t *total_items);

/* For the slab automover: per class (index = class id, arrays of
 * PS_MAX_SLAB_CLASSES) evictions and out-of-memory failures since start,
 * and the age in seconds of the oldest item of the COLD LRU (0 if empty). */
void items_automove_snapshot(uint64_t *evicted, uint64_t *outofmemory, uint32_t *age);

/* For the slab page mover (slabs.c), caller holds item_lock(hv) and a
 * reference on old_it: link new_it (an unlinked copy) in place of old_it,
 * keeping the CAS and access time. */
void do_item_relink_copy(item *old_it, item *new_it, uint32_t hv);
/* Free an unlinked, unreferenced item (and its chunks). */
void item_free(item *it);

/* ------------------------------------------------------------------ */
/* LRU crawler control ("lru_crawler ..." commands) */
typedef enum {
    CRAWLER_OK = 0,      /* "OK" */
    CRAWLER_RUNNING,     /* "BUSY currently processing crawler request" */
    CRAWLER_BADCLASS,    /* "BADCLASS invalid class id" */
    CRAWLER_NOTSTARTED,  /* "NOTSTARTED lru crawler not running" */
    CRAWLER_ERROR,       /* "ERROR" */
} crawler_result;
/* classes: "all" or comma-separated class ids */
crawler_result lru_crawler_crawl(const char *classes);
/* "lru_crawler metadump all|ids": one line per live item in memcached's
 * format ("key=<urlencoded> exp=<unix or -1> la=<unix> cas=N fetch=yes|no
 * cls=N size=N\n" -- memcached ends these lines with a bare "\n"), then
 * "END\r\n"; returns a malloc'd buffer or NULL with *res set. Runs in the
 * calling thread; it walks each LRU with a marker, holding an LRU lock for
 * one item at a time, but its total work is proportional to the cache. */
char *lru_crawler_metadump(const char *classes, size_t *len, crawler_result *res);
void lru_crawler_set_sleep(int usecs);
void lru_crawler_set_tocrawl(uint32_t n);
/* "lru_crawler enable|disable": 0 ok; -1 if it already is in that state
 * (memcached answers "ERROR ..." then) or the thread failed to start */
int lru_crawler_enable(bool on);
/* "lru mode flat|segmented", "lru temp_ttl N": 0 ok, -1 bad (segmented
 * needs the LRU maintainer). temp_ttl < 0 turns the TEMP LRU off. */
int lru_set_mode(bool segmented);
void lru_set_temp_ttl(int ttl);
/* "lru tune <hot_pct> <warm_pct> <hot_max_factor> <warm_max_factor>"
 * (validated by the protocol): the maintainer uses them from now on. */
void lru_set_tune(uint32_t hot_pct, uint32_t warm_pct, double hot_max_factor,
                  double warm_max_factor);
/* "stats cachedump <class> <limit>": up to `limit` items (0: as many as fit
 * in 2 MiB) of class clsid from the head of its HOT, WARM, COLD and TEMP
 * LRUs, one "ITEM <key> [<bytes> b; <unix exptime or 0> s]\r\n" each, then
 * "END\r\n". Binary (base64) keys are skipped. malloc'd; NULL on OOM. */
char *item_cachedump(unsigned int clsid, unsigned int limit, size_t *len);

#endif
