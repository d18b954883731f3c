/*
 * gen.h - generation counting: when may memory that readers might still be
 * looking at be freed?
 *
 * The realtime segment's readers take no locks. When a writer replaces a
 * shared structure (a term table that grew, a posting list's bucket
 * directory that grew), it publishes the new one with a release store and
 * *retires* the old one here instead of freeing it: a reader that loaded
 * the old pointer a moment ago may still be reading it. The old memory is
 * freed once every reader that could have loaded it has finished.
 *
 * HOW IT WORKS (two-parity grace periods, the idea of Vespa's
 * GenerationHandler and of userspace RCU with a counter flip)
 *
 *   gen          the current generation, only ever increases.
 *   active[2]    readers inside a read section, counted by the parity of
 *                the generation they entered under.
 *
 *   reader enter: g = gen; active[g&1]++; if gen != g: undo and retry.
 *   reader exit:  active[g&1]--.
 *   reclaim (writers, under `lock`, never blocking):
 *     - objects retired since the last flip wait in `pending`;
 *     - a flip moves `pending` to `waiting`, remembers f = gen, then gen++;
 *     - once active[f&1] reads 0, no reader that could have seen a waiting
 *       object is left: free `waiting`, the flip is over, the next may start.
 *
 * Why it is safe: an object is unlinked (release store of its replacement)
 * before it is retired, and retired before the flip that will free it. A
 * reader that enters after the flip read gen == f+1 with a seq_cst load that
 * reads from the flip's seq_cst store, so it sees the replacement, never the
 * old object. A reader that entered under f counts in active[f&1] until it
 * exits. A reader of f-1 (the other parity) cannot still be inside: the
 * previous flip ended only when active[(f-1)&1] was 0, and a reader that
 * loads a stale gen re-checks gen after counting itself and backs out
 * before touching anything. The increment/re-check of the reader and the
 * store/check of the writer are seq_cst, so (as in Dekker's algorithm) at
 * least one side sees the other.
 *
 * Threads: enter/exit from any thread, any number at once (two atomic
 * RMWs on a shared counter per read section: a query, not a posting).
 * retire/reclaim from any writer thread (serialized by `lock`).
 * ps_gen_destroy() only when no reader and no writer can run.
 */
#ifndef PS_INDEX_GEN_H
#define PS_INDEX_GEN_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ps_retired {
    struct ps_retired *next;
    void *ptr;  /* freed with free() */
    size_t bytes;
} ps_retired;

typedef struct ps_gen {
    _Atomic uint64_t gen;
    char pad0[56];
    _Atomic uint64_t active[2];
    char pad1[48];
    pthread_mutex_t lock;  /* guards everything below */
    ps_retired *pending;   /* retired since the current flip started */
    ps_retired *waiting;   /* retired before it; freed when it ends */
    uint64_t flip_gen;
    bool flipping;
    _Atomic size_t pending_bytes;  /* pending + waiting, for stats */
    _Atomic uint64_t reclaimed;    /* objects freed so far */
} ps_gen;

void ps_gen_init(ps_gen *g);
uint64_t ps_gen_enter(ps_gen *g);
void ps_gen_exit(ps_gen *g, uint64_t entered);
/* Hand `ptr` (from malloc, `bytes` long) over for freeing when no reader
 * can hold it; then try to make progress. Returns -1 (and frees nothing)
 * only if the bookkeeping node cannot be allocated, in which case the
 * caller must keep `ptr` alive itself. */
int ps_gen_retire(ps_gen *g, void *ptr, size_t bytes);
/* Free what can be freed now; start a flip if objects are pending. */
void ps_gen_reclaim(ps_gen *g);
/* No readers, no writers: free everything still retired. */
void ps_gen_destroy(ps_gen *g);

#endif
