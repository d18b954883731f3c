/*
 * microbench.h - the cache engine's hot paths in a C loop, for
 * microbenchmarks (tests/test_microbench.py, through _cache.pyx).
 * Implemented in microbench.c, which explains what each loop covers.
 *
 * Life cycle: mb_open() builds a storage engine in the calling thread's
 * process, without threads or sockets, and preloads it; the mb_* loops
 * run against it; mb_close() tears it all down. Only one engine exists in
 * a process (the engine's state is global, as memcached's): the caller
 * must not open a microbench while a server runs, nor start a server
 * while one is open (the Python wrapper enforces both).
 *
 * Errors: functions return -1 and leave a message for mb_error().
 */
#ifndef PS_CACHE_MICROBENCH_H
#define PS_CACHE_MICROBENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MB_MAX_KEYS 10000000u      /* keys are "key:%08u" */
#define MB_MAX_VALUE_SIZE (64u << 20)

/* Build the engine with `memory_mb` MiB of item memory (-m) and store
 * `keys` keys of `value_size` bytes. 0, or -1 (already open, bad sizes,
 * out of memory). The calling thread becomes the owner: every later call
 * must come from it. */
int mb_open(uint32_t keys, uint32_t value_size, size_t memory_mb);
/* Tear down everything mb_open() made. 0, or -1 (not open, not owner). */
int mb_close(void);
bool mb_is_open(void);

/* Each runs its operation n times and returns a count that shows the work
 * was done (see microbench.c), or -1. */
int64_t mb_item_alloc_free(size_t value_size, uint64_t n);   /* allocations made */
int64_t mb_hash_lookup(bool hit, uint64_t n);                /* keys found */
int64_t mb_proto_get(bool hit, uint64_t n);                  /* reply bytes */
int64_t mb_proto_set(uint64_t n);                            /* reply bytes */

/* The message of the last failure (static storage; "" if none). */
const char *mb_error(void);

#endif
