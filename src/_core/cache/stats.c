/*
 * stats.c - per-thread counters, their sums, and the "stats" /
 * "stats settings" writers.
 *
 * THREADS. Each serving thread calls stats_thread_register() once; its
 * block is linked onto `registered` under stats_lock and is never freed
 * before stats_cleanup() (blocks of exited threads keep counting toward
 * the totals, as memcached's do). The owner is the only writer of its
 * block (relaxed load + store, see stats.h); readers sum with relaxed
 * loads while holding stats_lock only to walk the list.
 *
 * RESET. stats_reset() snapshots every per-thread sum into `baseline`
 * under stats_lock; stats_sum() subtracts it. The counters themselves are
 * never written by anyone but their owner, so a reset never loses or
 * tears a concurrent increment.
 */
#include "stats.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "assoc.h"
#include "conn.h"
#include "server.h"
#include "slabs.h"

__thread thread_stats *stats_tls;
global_stats gstats;
atomic_bool stats_detail_enabled;

static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;
static thread_stats *registered;       /* all blocks, under stats_lock */
static thread_stats fallback_block;    /* threads that never registered */
static thread_stats baseline;          /* sums at the last "stats reset" */
static bool fallback_linked;

#define N_COUNTERS (offsetof(thread_stats, next_registered) / sizeof(_Atomic uint64_t))

thread_stats *stats_fallback(void) {
    return &fallback_block;
}

int stats_init(void) {
    pthread_mutex_lock(&stats_lock);
    if (!fallback_linked) {
        fallback_block.next_registered = registered;
        registered = &fallback_block;
        fallback_linked = true;
    }
    pthread_mutex_unlock(&stats_lock);
    return 0;
}

thread_stats *stats_thread_register(void) {
    if (stats_tls)
        return stats_tls;
    thread_stats *ts = calloc(1, sizeof(*ts));
    if (!ts)
        return NULL;
    pthread_mutex_lock(&stats_lock);
    ts->next_registered = registered;
    registered = ts;
    pthread_mutex_unlock(&stats_lock);
    stats_tls = ts;
    return ts;
}

/* Free every block except the fallback; only once no server thread runs. */
void stats_cleanup(void) {
    pthread_mutex_lock(&stats_lock);
    thread_stats *ts = registered;
    while (ts) {
        thread_stats *next = ts->next_registered;
        if (ts != &fallback_block)
            free(ts);
        ts = next;
    }
    registered = NULL;
    fallback_linked = false;
    memset(&fallback_block, 0, sizeof(fallback_block));
    memset(&baseline, 0, sizeof(baseline));
    pthread_mutex_unlock(&stats_lock);
    atomic_store_explicit(&stats_detail_enabled, false, memory_order_relaxed);
    stats_tls = NULL;
}

static uint64_t load_counter(thread_stats *ts, size_t offset) {
    _Atomic uint64_t *c = (_Atomic uint64_t *)((char *)ts + offset);
    return atomic_load_explicit(c, memory_order_relaxed);
}

static uint64_t raw_sum_locked(size_t offset) {
    uint64_t total = 0;
    for (thread_stats *ts = registered; ts; ts = ts->next_registered)
        total += load_counter(ts, offset);
    return total;
}

uint64_t stats_sum(size_t offset) {
    pthread_mutex_lock(&stats_lock);
    uint64_t total = raw_sum_locked(offset) - load_counter(&baseline, offset);
    pthread_mutex_unlock(&stats_lock);
    return total;
}

void stats_reset(void) {
    pthread_mutex_lock(&stats_lock);
    for (size_t i = 0; i < N_COUNTERS; i++) {
        size_t off = i * sizeof(_Atomic uint64_t);
        _Atomic uint64_t *b = (_Atomic uint64_t *)((char *)&baseline + off);
        atomic_store_explicit(b, raw_sum_locked(off), memory_order_relaxed);
    }
    pthread_mutex_unlock(&stats_lock);
    atomic_store_explicit(&gstats.total_conns, 0, memory_order_relaxed);
    atomic_store_explicit(&gstats.rejected_conns, 0, memory_order_relaxed);
    atomic_store_explicit(&gstats.listen_disabled_num, 0, memory_order_relaxed);
    items_stats_reset();
}

void stats_appendf(add_stat_fn add, void *ctx, const char *key,
                   const char *fmt, ...) {
    char val[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(val, sizeof(val), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(val))
        n = sizeof(val) - 1;
    add(key, strlen(key), val, (size_t)n, ctx);
}

uint64_t stats_slab_sum(unsigned int cls, size_t field_offset) {
    return stats_sum(offsetof(thread_stats, slab) + cls * sizeof(slab_stats) + field_offset);
}

/* Sum one per-class counter over every class. */
static uint64_t slab_total(size_t field_offset) {
    uint64_t total = 0;
    for (unsigned int cls = 0; cls < PS_MAX_SLAB_CLASSES; cls++)
        total += stats_slab_sum(cls, field_offset);
    return total;
}
#define SLAB_SUM(field) slab_total(offsetof(slab_stats, field))
#define LOADG(f) ((unsigned long long)atomic_load_explicit(&gstats.f, memory_order_relaxed))
#define U(x) ((unsigned long long)(x))

void stats_general(add_stat_fn add, void *ctx) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    rel_time_t now = atomic_load_explicit(&current_time, memory_order_relaxed);

    stats_appendf(add, ctx, "pid", "%ld", (long)getpid());
    stats_appendf(add, ctx, "uptime", "%u", now);
    stats_appendf(add, ctx, "time", "%ld", (long)(process_started + now));
    stats_appendf(add, ctx, "version", "%s", PS_CACHE_VERSION);
    stats_appendf(add, ctx, "libevent", "%s", "none (epoll)");
    stats_appendf(add, ctx, "pointer_size", "%d", (int)(8 * sizeof(void *)));
    stats_appendf(add, ctx, "rusage_user", "%ld.%06ld", (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec);
    stats_appendf(add, ctx, "rusage_system", "%ld.%06ld", (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec);
    stats_appendf(add, ctx, "max_connections", "%d", settings.maxconns);
    stats_appendf(add, ctx, "curr_connections", "%llu", LOADG(curr_conns));
    stats_appendf(add, ctx, "total_connections", "%llu", LOADG(total_conns));
    stats_appendf(add, ctx, "rejected_connections", "%llu", LOADG(rejected_conns));
    stats_appendf(add, ctx, "connection_structures", "%llu", LOADG(conn_structures));
    stats_appendf(add, ctx, "response_obj_oom", "%llu", U(STATS_SUM(response_obj_oom)));
    stats_appendf(add, ctx, "response_obj_count", "%llu", U(STATS_SUM(response_obj_count)));
    stats_appendf(add, ctx, "response_obj_bytes", "%llu", U(STATS_SUM(response_obj_count) * sizeof(mc_resp)));
    stats_appendf(add, ctx, "read_buf_oom", "%llu", U(STATS_SUM(read_buf_oom)));
    stats_appendf(add, ctx, "reserved_fds", "%llu", LOADG(reserved_fds));
    stats_appendf(add, ctx, "cmd_get", "%llu", U(STATS_SUM(get_cmds)));
    stats_appendf(add, ctx, "cmd_set", "%llu", U(SLAB_SUM(set_cmds)));
    stats_appendf(add, ctx, "cmd_flush", "%llu", U(STATS_SUM(flush_cmds)));
    stats_appendf(add, ctx, "cmd_touch", "%llu", U(STATS_SUM(touch_cmds)));
    stats_appendf(add, ctx, "cmd_meta", "%llu", U(STATS_SUM(meta_cmds)));
    stats_appendf(add, ctx, "get_hits", "%llu", U(SLAB_SUM(get_hits)));
    stats_appendf(add, ctx, "get_misses", "%llu", U(STATS_SUM(get_misses)));
    stats_appendf(add, ctx, "get_expired", "%llu", U(STATS_SUM(get_expired)));
    stats_appendf(add, ctx, "get_flushed", "%llu", U(STATS_SUM(get_flushed)));
    stats_appendf(add, ctx, "delete_misses", "%llu", U(STATS_SUM(delete_misses)));
    stats_appendf(add, ctx, "delete_hits", "%llu", U(SLAB_SUM(delete_hits)));
    stats_appendf(add, ctx, "incr_misses", "%llu", U(STATS_SUM(incr_misses)));
    stats_appendf(add, ctx, "incr_hits", "%llu", U(SLAB_SUM(incr_hits)));
    stats_appendf(add, ctx, "decr_misses", "%llu", U(STATS_SUM(decr_misses)));
    stats_appendf(add, ctx, "decr_hits", "%llu", U(SLAB_SUM(decr_hits)));
    stats_appendf(add, ctx, "cas_misses", "%llu", U(STATS_SUM(cas_misses)));
    stats_appendf(add, ctx, "cas_hits", "%llu", U(SLAB_SUM(cas_hits)));
    stats_appendf(add, ctx, "cas_badval", "%llu", U(SLAB_SUM(cas_badval)));
    stats_appendf(add, ctx, "touch_hits", "%llu", U(SLAB_SUM(touch_hits)));
    stats_appendf(add, ctx, "touch_misses", "%llu", U(STATS_SUM(touch_misses)));
    stats_appendf(add, ctx, "store_too_large", "%llu", U(STATS_SUM(store_too_large)));
    stats_appendf(add, ctx, "store_no_memory", "%llu", U(STATS_SUM(store_no_memory)));
    stats_appendf(add, ctx, "auth_cmds", "%llu", U(STATS_SUM(auth_cmds)));
    stats_appendf(add, ctx, "auth_errors", "%llu", U(STATS_SUM(auth_errors)));
    stats_appendf(add, ctx, "bytes_read", "%llu", U(STATS_SUM(bytes_read)));
    stats_appendf(add, ctx, "bytes_written", "%llu", U(STATS_SUM(bytes_written)));
    stats_appendf(add, ctx, "limit_maxbytes", "%llu", U(settings.maxbytes));
    stats_appendf(add, ctx, "accepting_conns", "%d", 1);
    stats_appendf(add, ctx, "listen_disabled_num", "%llu", LOADG(listen_disabled_num));
    stats_appendf(add, ctx, "time_in_listen_disabled_us", "%d", 0);
    stats_appendf(add, ctx, "threads", "%d", settings.num_threads);
    stats_appendf(add, ctx, "conn_yields", "%llu", U(STATS_SUM(conn_yields)));
    assoc_stats(add, ctx);
    slabs_stats_totals(add, ctx);
    stats_appendf(add, ctx, "malloc_fails", "%llu", LOADG(malloc_fails));
    stats_appendf(add, ctx, "idle_kicks", "%llu", U(STATS_SUM(idle_kicks)));
    items_stats_totals(add, ctx);
}

void stats_settings(add_stat_fn add, void *ctx) {
    const ps_settings *s = &settings;
    stats_appendf(add, ctx, "maxbytes", "%llu", U(s->maxbytes));
    stats_appendf(add, ctx, "maxconns", "%d", s->maxconns);
    stats_appendf(add, ctx, "tcpport", "%d", s->port);
    stats_appendf(add, ctx, "udpport", "%d", s->udpport);
    stats_appendf(add, ctx, "inter", "%s", s->num_listen ? s->listen_addr[0] : "NULL");
    stats_appendf(add, ctx, "verbosity", "%d", atomic_load_explicit(&settings.verbose, memory_order_relaxed));
    stats_appendf(add, ctx, "oldest", "%lu", (unsigned long)atomic_load_explicit(&settings_oldest_live, memory_order_relaxed));
    stats_appendf(add, ctx, "evictions", "%s", s->evict_to_free ? "on" : "off");
    stats_appendf(add, ctx, "domain_socket", "%s", "NULL");
    stats_appendf(add, ctx, "umask", "%o", 0700);
    stats_appendf(add, ctx, "shutdown_command", "%s", "no");
    stats_appendf(add, ctx, "growth_factor", "%.2f", s->factor);
    stats_appendf(add, ctx, "chunk_size", "%d", s->chunk_size);
    stats_appendf(add, ctx, "num_threads", "%d", s->num_threads);
    stats_appendf(add, ctx, "num_threads_per_udp", "%d", s->num_threads);
    stats_appendf(add, ctx, "stat_key_prefix", "%c", ':');
    stats_appendf(add, ctx, "detail_enabled", "%s", atomic_load_explicit(&stats_detail_enabled, memory_order_relaxed) ? "yes" : "no");
    stats_appendf(add, ctx, "reqs_per_event", "%d", s->reqs_per_event);
    stats_appendf(add, ctx, "cas_enabled", "%s", s->use_cas ? "yes" : "no");
    stats_appendf(add, ctx, "tcp_backlog", "%d", s->backlog);
    stats_appendf(add, ctx, "binding_protocol", "%s", "ascii");
    stats_appendf(add, ctx, "auth_enabled_sasl", "%s", "no");
    stats_appendf(add, ctx, "auth_enabled_ascii", "%s", "no");
    stats_appendf(add, ctx, "item_size_max", "%llu", U(s->item_size_max));
    stats_appendf(add, ctx, "maxconns_fast", "%s", "yes");
    stats_appendf(add, ctx, "hashpower_init", "%d", s->hashpower_init);
    stats_appendf(add, ctx, "slab_reassign", "%s", s->slab_reassign ? "yes" : "no");
    stats_appendf(add, ctx, "slab_automove", "%d", s->slab_automove);
    stats_appendf(add, ctx, "slab_automove_ratio", "%.2f", s->slab_automove_ratio);
    stats_appendf(add, ctx, "slab_automove_window", "%d", s->slab_automove_window);
    stats_appendf(add, ctx, "slab_chunk_max", "%llu", U(s->slab_chunk_max));
    stats_appendf(add, ctx, "lru_crawler", "%s", s->lru_crawler ? "yes" : "no");
    stats_appendf(add, ctx, "lru_crawler_sleep", "%d", s->lru_crawler_sleep);
    stats_appendf(add, ctx, "lru_crawler_tocrawl", "%u", s->lru_crawler_tocrawl);
    stats_appendf(add, ctx, "tail_repair_time", "%d", s->tail_repair_time);
    stats_appendf(add, ctx, "flush_enabled", "%s", s->flush_enabled ? "yes" : "no");
    stats_appendf(add, ctx, "dump_enabled", "%s", "yes");
    stats_appendf(add, ctx, "hash_algorithm", "%s", "murmur3");
    stats_appendf(add, ctx, "lru_maintainer_thread", "%s", s->lru_maintainer ? "yes" : "no");
    stats_appendf(add, ctx, "lru_segmented", "%s", s->lru_segmented ? "yes" : "no");
    stats_appendf(add, ctx, "hot_lru_pct", "%d", s->hot_lru_pct);
    stats_appendf(add, ctx, "warm_lru_pct", "%d", s->warm_lru_pct);
    stats_appendf(add, ctx, "hot_max_factor", "%.2f", s->hot_max_factor);
    stats_appendf(add, ctx, "warm_max_factor", "%.2f", s->warm_max_factor);
    stats_appendf(add, ctx, "temp_lru", "%s", s->temp_lru ? "yes" : "no");
    stats_appendf(add, ctx, "temporary_ttl", "%d", s->temporary_ttl);
    stats_appendf(add, ctx, "idle_timeout", "%d", s->idle_timeout);
    stats_appendf(add, ctx, "watcher_logbuf_size", "%d", 262144);
    stats_appendf(add, ctx, "worker_logbuf_size", "%d", 65536);
    stats_appendf(add, ctx, "read_buf_mem_limit", "%d", 0);
    stats_appendf(add, ctx, "track_sizes", "%s", "no");
    stats_appendf(add, ctx, "inline_ascii_response", "%s", "no");
    stats_appendf(add, ctx, "ssl_enabled", "%s", "no");
    stats_appendf(add, ctx, "num_napi_ids", "%s", "(null)");
    stats_appendf(add, ctx, "memory_file", "%s", "(null)");
}
