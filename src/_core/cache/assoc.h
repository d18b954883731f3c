/*
 * assoc.h - the hash table from key to item, with incremental expansion.
 * Implemented in assoc.c. (Contract written by the lead.)
 *
 * Chained buckets, 2^hashpower of them. When items exceed 1.5x buckets,
 * the expansion thread allocates a table twice the size and moves one old
 * bucket at a time, holding the item lock that covers that bucket (item
 * locks are never more numerous than buckets, so one item lock covers a
 * whole old bucket). A lookup during expansion picks the old or the new
 * table by comparing its old-bucket index with expand_bucket, which only
 * moves forward while that bucket's item lock is held: every caller holds
 * item_lock(hv), so it always sees a settled answer. No stop-the-world
 * rehash: workers keep serving throughout.
 */
#ifndef PS_CACHE_ASSOC_H
#define PS_CACHE_ASSOC_H

#include <stddef.h>
#include <stdint.h>
#include "items.h"

int assoc_init(int hashpower_init);
void assoc_cleanup(void);
/* All three require item_lock(hv). */
item *assoc_find(const char *key, size_t nkey, uint32_t hv);
int assoc_insert(item *it, uint32_t hv);
void assoc_delete(const char *key, size_t nkey, uint32_t hv);

int assoc_threads_start(void);
void assoc_threads_stop(void);
/* hash_power_level, hash_bytes, hash_is_expanding for "stats" */
void assoc_stats(add_stat_fn add, void *ctx);

#endif
