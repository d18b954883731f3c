/*
 * settings.h - the configuration of one pinstack-cache server.
 *
 * One ps_settings struct describes a whole server. Python (the CLI in
 * src/pinstack/cache/cli.py) parses memcached's command line, fills a copy
 * through settings_init_defaults() plus field assignments, and hands it to
 * cache_server_start(), which copies it into the global `settings`.
 *
 * Threads: `settings` is written once, by the starting thread, before any
 * server thread exists (thread creation is the release/acquire edge), and is
 * read-only afterwards. The only exceptions are the few fields that the
 * protocol may change at run time (`verbose`, via "verbosity"); those are
 * C11 atomics read with relaxed ordering: they are hints, not invariants.
 *
 * Every default below matches memcached 1.6 unless the comment says why not.
 */
#ifndef PS_CACHE_SETTINGS_H
#define PS_CACHE_SETTINGS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PS_MAX_LISTEN 16          /* listen addresses accepted by -l */
#define PS_KEY_MAX_LENGTH 250     /* protocol limit on key length */
#define PS_SLAB_PAGE_SIZE (1024 * 1024) /* bytes in a slab page */
#define PS_MAX_SLAB_CLASSES 64    /* class ids 1..63; 0 is "no class" */

typedef struct ps_settings {
    /* ---- network ---- */
    int port;                    /* -p: TCP port; 0 = an ephemeral port on 127.0.0.1 (tests) */
    int udpport;                 /* -U: accepted for compatibility; UDP is not served, must be 0 */
    char listen_addr[PS_MAX_LISTEN][64]; /* -l: addresses (no port); empty = all (0.0.0.0 + ::) */
    int num_listen;              /* how many listen_addr entries are set */
    int backlog;                 /* -b: listen(2) backlog, default 1024 */
    int maxconns;                /* -c: max simultaneous connections, default 1024 */
    int num_threads;             /* -t: worker threads, default 4 */
    int reqs_per_event;          /* -R: requests served per connection per wakeup, default 20 */
    int idle_timeout;            /* -o idle_timeout=S: close idle conns after S seconds, 0 = never */
    size_t read_buf_size;        /* bytes of a pooled read buffer (not a flag), default 16 KiB */
    size_t max_line_len;         /* a line without "\n" longer than this closes the conn (get/gets excepted), 2048 */

    /* ---- memory ---- */
    size_t maxbytes;             /* -m: memory limit for item storage in bytes, default 64 MiB */
    size_t item_size_max;        /* -I: largest value+key+header, default 1 MiB */
    double factor;               /* -f: slab growth factor, default 1.25 */
    int chunk_size;              /* -n: minimum space for key+value+flags, default 48 */
    size_t slab_page_size;       /* bytes per slab page, default 1 MiB (PS_SLAB_PAGE_SIZE) */
    size_t slab_chunk_max;       /* -o slab_chunk_max: largest chunk, default page/2 */
    bool lock_memory;            /* -k: mlockall */
    bool evict_to_free;          /* cleared by -M: return errors instead of evicting */
    bool use_cas;                /* cleared by -C */
    bool flush_enabled;          /* cleared by -F */
    int hashpower_init;          /* -o hashpower=N: initial table size 2^N, default 16 */

    /* ---- slab page mover ---- */
    bool slab_reassign;          /* -o slab_reassign (default on) */
    int slab_automove;           /* -o slab_automove=0|1|2, default 1 */
    double slab_automove_ratio;  /* -o slab_automove_ratio, default 0.8 */
    int slab_automove_window;    /* -o slab_automove_window, default 30 */

    /* ---- LRU ---- */
    bool lru_maintainer;         /* -o lru_maintainer / no_lru_maintainer, default on */
    bool lru_segmented;          /* segmented HOT/WARM/COLD, default on */
    int hot_lru_pct;             /* -o hot_lru_pct, default 20 */
    int warm_lru_pct;            /* -o warm_lru_pct, default 40 */
    double hot_max_factor;       /* -o hot_max_factor, default 0.2 */
    double warm_max_factor;      /* -o warm_max_factor, default 2.0 */
    bool temp_lru;               /* -o temporary_ttl=N enables TEMP_LRU */
    int temporary_ttl;           /* items with ttl <= this go to TEMP, default 61 */
    int tail_repair_time;        /* -o tail_repair_time, 0 = off */

    /* ---- crawler ---- */
    bool lru_crawler;            /* -o lru_crawler / no_lru_crawler, default on */
    int lru_crawler_sleep;       /* -o lru_crawler_sleep (microseconds between items), default 100 */
    uint32_t lru_crawler_tocrawl;/* -o lru_crawler_tocrawl, default 0 = unlimited */

    /* ---- run time ---- */
    _Atomic int verbose;         /* -v / -vv / -vvv; "verbosity" changes it */
} ps_settings;

/* Fill `s` with memcached's defaults. */
void settings_init_defaults(ps_settings *s);

/* The running server's settings (valid after cache_server_start()). */
extern ps_settings settings;

#endif
