/*
 * termdict.c - the shard term dictionary of termdict.h: single-writer
 * insert with publish-after-fill, lock-free lookup, growth by copy +
 * publish + retire.
 */
#include "termdict.h"

#include <stdlib.h>
#include <string.h>

static ps_dict_table *table_new(uint64_t slots) {
    ps_dict_table *t = calloc(1, sizeof(*t) + slots * sizeof(t->slot[0]));
    if (t != NULL)
        t->mask = slots - 1;
    return t;
}

int ps_dict_init(ps_dict *d, uint32_t initial_slots) {
    uint64_t slots = 16;
    while (slots < initial_slots)
        slots <<= 1;
    ps_dict_table *t = table_new(slots);
    if (t == NULL)
        return -1;
    atomic_init(&d->table, t);
    d->count = 0;
    atomic_init(&d->terms, 0);
    atomic_init(&d->table_bytes, sizeof(*t) + slots * sizeof(t->slot[0]));
    return 0;
}

static inline int term_eq(const ps_term *t, const char *term, uint32_t len, uint64_t hash) {
    return t->hash == hash && t->len == len && memcmp(t->bytes, term, len) == 0;
}

ps_term *ps_dict_find(ps_dict *d, const char *term, uint32_t len, uint64_t hash) {
    ps_dict_table *t = atomic_load_explicit(&d->table, memory_order_acquire);
    for (uint64_t i = hash & t->mask;; i = (i + 1) & t->mask) {
        ps_term *e = atomic_load_explicit(&t->slot[i], memory_order_acquire);
        if (e == NULL)
            return NULL;
        if (term_eq(e, term, len, hash))
            return e;
    }
}

static int dict_grow(ps_dict *d, ps_dict_table *old, ps_gen *gen) {
    uint64_t slots = (old->mask + 1) * 2;
    ps_dict_table *t = table_new(slots);
    if (t == NULL)
        return -1;
    for (uint64_t i = 0; i <= old->mask; i++) {
        ps_term *e = atomic_load_explicit(&old->slot[i], memory_order_relaxed);
        if (e == NULL)
            continue;
        uint64_t j = e->hash & t->mask;
        while (atomic_load_explicit(&t->slot[j], memory_order_relaxed) != NULL)
            j = (j + 1) & t->mask;
        atomic_store_explicit(&t->slot[j], e, memory_order_relaxed);
    }
    /* The release store publishes the filled table (and, transitively,
     * every entry it points to). */
    atomic_store_explicit(&d->table, t, memory_order_release);
    size_t old_bytes = sizeof(*old) + (old->mask + 1) * sizeof(old->slot[0]);
    atomic_store_explicit(&d->table_bytes, sizeof(*t) + slots * sizeof(t->slot[0]),
                          memory_order_relaxed);
    if (ps_gen_retire(gen, old, old_bytes) != 0) {
        /* Untracked: leak rather than free under a reader. */
    }
    return 0;
}

ps_term *ps_dict_get_or_add(ps_dict *d, const char *term, uint32_t len, uint64_t hash,
                            ps_arena *arena, ps_gen *gen) {
    ps_dict_table *t = atomic_load_explicit(&d->table, memory_order_relaxed);
    uint64_t i = hash & t->mask;
    for (;; i = (i + 1) & t->mask) {
        ps_term *e = atomic_load_explicit(&t->slot[i], memory_order_relaxed);
        if (e == NULL)
            break;
        if (term_eq(e, term, len, hash))
            return e;
    }
    if ((d->count + 1) * 2 > t->mask + 1) {
        if (dict_grow(d, t, gen) != 0)
            return NULL;
        t = atomic_load_explicit(&d->table, memory_order_relaxed);
        i = hash & t->mask;
        while (atomic_load_explicit(&t->slot[i], memory_order_relaxed) != NULL)
            i = (i + 1) & t->mask;
    }
    ps_term *e = ps_arena_alloc(arena, sizeof(ps_term) + len, 8);
    if (e == NULL)
        return NULL;
    e->hash = hash;
    e->len = (uint16_t)len;
    memcpy(e->bytes, term, len);
    ps_post_init(&e->post);
    atomic_store_explicit(&t->slot[i], e, memory_order_release);
    d->count++;
    atomic_store_explicit(&d->terms, d->count, memory_order_relaxed);
    return e;
}

void ps_dict_visit(ps_dict *d, ps_dict_visit_fn fn, void *arg) {
    ps_dict_table *t = atomic_load_explicit(&d->table, memory_order_acquire);
    for (uint64_t i = 0; i <= t->mask; i++) {
        ps_term *e = atomic_load_explicit(&t->slot[i], memory_order_acquire);
        if (e != NULL)
            fn(e, arg);
    }
}

static void free_dir(ps_term *t, void *arg) {
    (void)arg;
    ps_post_free_dir(&t->post);
}

void ps_dict_free(ps_dict *d) {
    ps_dict_table *t = atomic_load_explicit(&d->table, memory_order_relaxed);
    if (t == NULL)
        return;
    ps_dict_visit(d, free_dir, NULL);
    free(t);
    atomic_store_explicit(&d->table, NULL, memory_order_relaxed);
}
