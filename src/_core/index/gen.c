/*
 * gen.c - generation counting for lock-free readers; the algorithm and its
 * safety argument are in gen.h. All operations on gen and active[] are
 * seq_cst: the argument needs a single total order of the reader's
 * increment-then-recheck and the writer's flip-then-check.
 */
#include "gen.h"

#include <stdlib.h>
#include <string.h>

void ps_gen_init(ps_gen *g) {
    memset(g, 0, sizeof(*g));
    pthread_mutex_init(&g->lock, NULL);
}

uint64_t ps_gen_enter(ps_gen *g) {
    for (;;) {
        uint64_t cur = atomic_load(&g->gen);
        atomic_fetch_add(&g->active[cur & 1], 1);
        if (atomic_load(&g->gen) == cur)
            return cur;
        atomic_fetch_sub(&g->active[cur & 1], 1);
    }
}

void ps_gen_exit(ps_gen *g, uint64_t entered) {
    atomic_fetch_sub(&g->active[entered & 1], 1);
}

static void free_list(ps_gen *g, ps_retired *r) {
    while (r != NULL) {
        ps_retired *next = r->next;
        atomic_fetch_sub_explicit(&g->pending_bytes, r->bytes, memory_order_relaxed);
        atomic_fetch_add_explicit(&g->reclaimed, 1, memory_order_relaxed);
        free(r->ptr);
        free(r);
        r = next;
    }
}

/* lock held */
static void do_reclaim(ps_gen *g) {
    if (g->flipping) {
        if (atomic_load(&g->active[g->flip_gen & 1]) != 0)
            return;
        free_list(g, g->waiting);
        g->waiting = NULL;
        g->flipping = false;
    }
    if (g->pending == NULL)
        return;
    g->waiting = g->pending;
    g->pending = NULL;
    g->flip_gen = atomic_load(&g->gen);
    g->flipping = true;
    atomic_store(&g->gen, g->flip_gen + 1);
    if (atomic_load(&g->active[g->flip_gen & 1]) == 0) {
        free_list(g, g->waiting);
        g->waiting = NULL;
        g->flipping = false;
    }
}

int ps_gen_retire(ps_gen *g, void *ptr, size_t bytes) {
    ps_retired *r = malloc(sizeof(*r));
    if (r == NULL)
        return -1;
    r->ptr = ptr;
    r->bytes = bytes;
    atomic_fetch_add_explicit(&g->pending_bytes, bytes, memory_order_relaxed);
    pthread_mutex_lock(&g->lock);
    r->next = g->pending;
    g->pending = r;
    do_reclaim(g);
    pthread_mutex_unlock(&g->lock);
    return 0;
}

void ps_gen_reclaim(ps_gen *g) {
    pthread_mutex_lock(&g->lock);
    do_reclaim(g);
    pthread_mutex_unlock(&g->lock);
}

void ps_gen_destroy(ps_gen *g) {
    free_list(g, g->waiting);
    free_list(g, g->pending);
    g->waiting = g->pending = NULL;
    pthread_mutex_destroy(&g->lock);
}
