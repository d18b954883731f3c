/*
 * stats.h - counters an operator reads with "stats", and how they are kept.
 *
 * DESIGN. Every thread that serves requests (the workers; the listener and
 * maintainer too, for the few counters they touch) owns one thread_stats
 * block and is its only writer. A counter is an _Atomic uint64_t bumped with
 * a relaxed load + relaxed store (no lock prefix, no lost update: there is
 * one writer). The "stats" command sums every registered block with relaxed
 * loads: each value is a recent value of its counter, which is all memcached
 * promises too (its per-thread mutexes buy nothing more for a reader that
 * sums several threads).
 *
 * "stats reset" cannot zero another thread's counters without racing the
 * writer, so reset records the current sums as a baseline (under
 * stats_lock) and later reports subtract it.
 *
 * Who uses it: the protocols and items.c increment through the STATS_*
 * macros, which reach the calling thread's block through a thread-local
 * pointer set by stats_thread_register(). A thread with no block (a
 * background thread that never registered) increments a shared fallback
 * block under a mutex-free relaxed fetch_add.
 */
#ifndef PS_CACHE_STATS_H
#define PS_CACHE_STATS_H

#include <stdatomic.h>
#include <stdint.h>
#include "items.h"
#include "settings.h"

/* Per-slab-class counters (memcached's "stats slabs" per-class lines). */
#define SLAB_STATS_FIELDS(X) \
    X(set_cmds) X(get_hits) X(touch_hits) X(delete_hits) X(cas_hits) \
    X(cas_badval) X(incr_hits) X(decr_hits) \
    X(hits_hot) X(hits_warm) X(hits_cold) X(hits_temp)

/* Per-thread counters that appear in "stats". */
#define THREAD_STATS_FIELDS(X) \
    X(get_cmds) X(get_misses) X(get_expired) X(get_flushed) \
    X(touch_cmds) X(touch_misses) X(delete_misses) X(incr_misses) \
    X(decr_misses) X(cas_misses) X(meta_cmds) X(bytes_read) \
    X(bytes_written) X(flush_cmds) X(conn_yields) X(auth_cmds) \
    X(auth_errors) X(idle_kicks) X(response_obj_oom) X(response_obj_count) \
    X(read_buf_oom) X(store_too_large) X(store_no_memory)

#define STATS_DECLARE(name) _Atomic uint64_t name;

typedef struct slab_stats {
    SLAB_STATS_FIELDS(STATS_DECLARE)
} slab_stats;

typedef struct thread_stats {
    THREAD_STATS_FIELDS(STATS_DECLARE)
    slab_stats slab[PS_MAX_SLAB_CLASSES];
    struct thread_stats *next_registered;  /* list of all blocks */
} thread_stats;

extern __thread thread_stats *stats_tls;

/* Single-writer increment of a counter in the calling thread's block. */
static inline void stats_add_(_Atomic uint64_t *c, uint64_t n) {
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}
thread_stats *stats_fallback(void);
#define STATS_BLOCK() (stats_tls ? stats_tls : stats_fallback())
#define STATS_ADD(field, n) do { if (stats_tls) stats_add_(&stats_tls->field, (n)); \
    else atomic_fetch_add_explicit(&stats_fallback()->field, (n), memory_order_relaxed); } while (0)
#define STATS_INCR(field) STATS_ADD(field, 1)
#define SLAB_STATS_INCR(clsid, field) STATS_INCR(slab[CLEAR_LRU(clsid)].field)

/* Register the calling thread's block (allocated and zeroed); idempotent. */
thread_stats *stats_thread_register(void);

/* Process-wide gauges/counters not owned by one thread. */
typedef struct global_stats {
    _Atomic uint64_t curr_conns;        /* open client connections */
    _Atomic uint64_t total_conns;       /* accepted since start */
    _Atomic uint64_t rejected_conns;    /* refused over -c */
    _Atomic uint64_t conn_structures;
    _Atomic uint64_t listen_disabled_num;
    _Atomic uint64_t malloc_fails;
    _Atomic uint64_t reserved_fds;
} global_stats;
extern global_stats gstats;

/* "stats detail on|off": set by the protocol (which keeps the per-prefix
 * counters), shown by "stats settings". A relaxed flag: a hint. */
extern atomic_bool stats_detail_enabled;

int stats_init(void);
void stats_cleanup(void);             /* after every server thread exited */
void stats_reset(void);

/* Writers for the "stats" family. Each calls add() per line. */
void stats_general(add_stat_fn add, void *ctx);   /* "stats" */
void stats_settings(add_stat_fn add, void *ctx);  /* "stats settings" */
/* Sum a per-thread counter over all threads, minus the reset baseline;
 * offset is offsetof(thread_stats, field). */
uint64_t stats_sum(size_t offset);
#define STATS_SUM(field) stats_sum(offsetof(thread_stats, field))
/* The same for one slab class's counter (a field of slab_stats). */
uint64_t stats_slab_sum(unsigned int cls, size_t field_offset);
#define SLAB_STATS_SUM(cls, field) stats_slab_sum((cls), offsetof(slab_stats, field))

/* Helper for add_stat callers: printf-style value. */
void stats_appendf(add_stat_fn add, void *ctx, const char *key,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
