/*
 * arena.c - the bump allocator of arena.h. Single writer per arena; see
 * arena.h for the lifetime rule (nothing is freed before the whole arena).
 */
#include "arena.h"

#include <stdlib.h>
#include <string.h>

void ps_arena_init(ps_arena *a) {
    memset(a, 0, sizeof(*a));
}

static int arena_new_chunk(ps_arena *a, size_t need) {
    size_t size = need > PS_ARENA_CHUNK / 4 ? need : PS_ARENA_CHUNK;
    ps_arena_chunk *c = malloc(sizeof(*c) + size + 16);
    if (c == NULL)
        return -1;
    c->size = size;
    atomic_fetch_add_explicit(&a->reserved, sizeof(*c) + size + 16, memory_order_relaxed);
    char *base = (char *)(c + 1);
    base = (char *)(((uintptr_t)base + 15) & ~(uintptr_t)15);
    if (need > PS_ARENA_CHUNK / 4 && a->chunks != NULL) {
        /* A big allocation gets a chunk of its own, linked behind the
         * current one so the current chunk keeps serving small ones. */
        c->next = a->chunks->next;
        a->chunks->next = c;
        return 1;  /* the caller hands out the whole chunk */
    }
    c->next = a->chunks;
    a->chunks = c;
    a->cur = base;
    a->end = base + size;
    return 0;
}

void *ps_arena_alloc(ps_arena *a, size_t size, size_t align) {
    if (size == 0)
        size = 1;
    char *p = (char *)(((uintptr_t)a->cur + (align - 1)) & ~(uintptr_t)(align - 1));
    if (a->cur == NULL || p + size > a->end) {
        int r = arena_new_chunk(a, size);
        if (r < 0)
            return NULL;
        if (r == 1) {
            ps_arena_chunk *c = a->chunks->next;
            p = (char *)(((uintptr_t)(c + 1) + 15) & ~(uintptr_t)15);
            atomic_fetch_add_explicit(&a->used, size, memory_order_relaxed);
            return p;
        }
        p = (char *)(((uintptr_t)a->cur + (align - 1)) & ~(uintptr_t)(align - 1));
    }
    a->cur = p + size;
    atomic_fetch_add_explicit(&a->used, size, memory_order_relaxed);
    return p;
}

char *ps_arena_dup(ps_arena *a, const void *src, size_t len) {
    char *p = ps_arena_alloc(a, len, 1);
    if (p != NULL && len > 0)
        memcpy(p, src, len);
    return p;
}

void ps_arena_free(ps_arena *a) {
    ps_arena_chunk *c = a->chunks;
    while (c != NULL) {
        ps_arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    memset(a, 0, sizeof(*a));
}
