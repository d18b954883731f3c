/*
 * slabs.h - the slab allocator: memory for items in size classes.
 * Implemented in slabs.c. (Contract written by the lead; the implementer
 * may add functions, but keep these.)
 *
 * Classes 1..N have chunk sizes growing by settings.factor from
 * settings.chunk_size + sizeof(item), up to settings.slab_chunk_max; the
 * last class has chunk size slab_chunk_max exactly. Memory is taken from
 * malloc one page (settings.slab_page_size) at a time until
 * settings.maxbytes is reached; after that a class must evict to get
 * space (items.c does that) or get a page moved to it by the rebalancer.
 *
 * Threads and locks: one slabs_lock (mutex) guards free lists, page lists
 * and per-class counters. Callers never hold it across an item lock wait.
 * The rebalancer thread (slab_reassign / automove) moves a page from one
 * class to another: it evicts or rescues every live item in the page,
 * taking item locks with trylock only, and retries busy items later.
 */
#ifndef PS_CACHE_SLABS_H
#define PS_CACHE_SLABS_H

#include <stdbool.h>
#include <stddef.h>
#include "items.h"

int slabs_init(void);                      /* reads settings; 0 ok */
void slabs_cleanup(void);
unsigned int slabs_clsid(size_t size);     /* 0 if too big for any class */
unsigned int slabs_largest_clsid(void);
size_t slabs_chunk_size(unsigned int id);
/* Allocate a chunk for `size` bytes from class id; NULL if the class has
 * no free chunk and no page can be added (caller evicts and retries). */
void *slabs_alloc(size_t size, unsigned int id);
void slabs_free(void *ptr, size_t size, unsigned int id);
/* Adjust the per-class "requested" bytes counter, etc. */
void slabs_adjust_mem_requested(unsigned int id, size_t old, size_t ntotal);

/* "stats slabs" and the slab part of "stats" */
void slabs_stats(add_stat_fn add, void *ctx);
void slabs_stats_totals(add_stat_fn add, void *ctx);

/* "slabs reassign <src> <dst>" */
typedef enum {
    REASSIGN_OK = 0,        /* "OK" */
    REASSIGN_RUNNING,       /* "BUSY currently processing reassign request" */
    REASSIGN_BADCLASS,      /* "BADCLASS invalid src or dst class id" */
    REASSIGN_NOSPARE,       /* "NOSPARE source class has no spare pages" */
    REASSIGN_SRC_DST_SAME,  /* "SAME src and dst class are identical" */
} reassign_result;
reassign_result slabs_reassign(int src, int dst);
/* "slabs automove <0|1|2>" */
void slabs_set_automove(int mode);
/* "slabs automove ratio <float>": used by the automover from now on */
void slabs_set_automove_ratio(double ratio);
/* "cache_memlimit <MiB>": 0 ok, -1 if smaller than what is in use and
 * cannot shrink */
int slabs_set_memlimit(size_t bytes);

int slabs_threads_start(void);             /* rebalancer + automover */
void slabs_threads_stop(void);

/* Hold the slabs lock around the few item fields the page mover reads
 * under it (chunk headers linked by items.c). Leaf lock: take nothing
 * while holding it. */
void slabs_mlock(void);
void slabs_munlock(void);
/* Allocate a chunk without evicting and without adding a page (returns
 * NULL if the class has no free chunk). */
void *slabs_alloc_nonew(size_t size, unsigned int id);
/* Per-class numbers for the automover and tests (id 1..largest). */
typedef struct slabs_class_info {
    size_t chunk_size;
    unsigned int perslab;
    unsigned int total_pages;
    unsigned int free_chunks;
} slabs_class_info;
void slabs_class_stats(unsigned int id, slabs_class_info *out);
unsigned int slabs_global_pool_pages(void);
size_t slabs_total_malloced(void);
/* Is a page move in progress (tests: wait for one to finish)? */
bool slabs_reassign_busy(void);

#endif
