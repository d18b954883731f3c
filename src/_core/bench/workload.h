/*
 * workload.h - what each request is: get or set, which keys, how big a
 * value, which expiry. Pure functions of the configuration and a
 * per-connection cursor; no I/O.
 *
 * Threads: a bench_workload is built once before the workers start and is
 * read-only afterwards (shared by all). A bench_cursor belongs to one
 * connection, hence to one worker thread.
 *
 * Determinism: a connection's cursor is seeded from (seed, connection
 * index) and walks the SET:GET ratio as a fixed cycle (the sets first), so
 * with --requests the sequence of requests each connection sends is fixed
 * by the configuration alone.
 */
#ifndef PS_BENCH_WORKLOAD_H
#define PS_BENCH_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "bench.h"
#include "rng.h"

enum bench_op { BENCH_OP_GET = 0, BENCH_OP_SET = 1 };

typedef struct bench_workload {
    const bench_config *cfg;
    uint64_t key_range;                      /* key_max - key_min + 1           */
    size_t key_prefix_len;
    bench_zipf zipf;                         /* ranks 1..key_range              */
    double key_median, key_stddev;           /* resolved gaussian parameters    */
    uint64_t size_cumulative[BENCH_SIZE_LIST_MAX]; /* running sum of weights    */
    uint64_t size_weight_total;
    char *value;                             /* max value size bytes of filler  */
    uint32_t value_max;
} bench_workload;

typedef struct bench_cursor {
    bench_rng rng;
    uint64_t seq_next[2];  /* per bench_op: offset in the range of the next sequential key */
    uint64_t cycle_pos;    /* position in the SET:GET cycle */
} bench_cursor;

/* 0, or -1 when out of memory. */
int workload_init(bench_workload *w, const bench_config *cfg);
void workload_free(bench_workload *w);

/* seq_start: where this connection's sequential walk begins (an offset
 * into the key range). */
void cursor_init(bench_cursor *c, const bench_workload *w, uint64_t conn_index, uint64_t seq_start);

int workload_next_op(const bench_workload *w, bench_cursor *c);
uint64_t workload_next_key(const bench_workload *w, bench_cursor *c, int op);
uint32_t workload_next_size(const bench_workload *w, bench_cursor *c);
uint32_t workload_next_expiry(const bench_workload *w, bench_cursor *c);

/* Writes prefix + decimal key number to out (at least BENCH_KEY_MAX bytes,
 * not NUL-terminated); returns the length. */
size_t workload_format_key(const bench_workload *w, uint64_t key, char *out);

/* Sets in the first `requests` steps of the SET:GET cycle. */
uint64_t workload_sets_in(const bench_config *cfg, uint64_t requests);

#endif
