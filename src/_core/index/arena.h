/*
 * arena.h - append-only bump allocator for the realtime segment.
 *
 * Everything a segment stores that is never freed before the segment
 * itself (posting buckets, term entries, keys, blobs) is carved out of
 * arenas: no per-object malloc header, no fragmentation, and nothing to
 * reclaim while readers run. An arena is a list of chunks; an allocation
 * that does not fit the current chunk starts a new one (the rest of the old
 * chunk is wasted, at most one allocation's worth); an allocation bigger
 * than a quarter chunk gets a chunk of its own.
 *
 * Threads: an arena has exactly one writer (the thread that owns it, see
 * segment.c). Memory handed out is never moved or freed until
 * ps_arena_free(), so readers may hold pointers into it for as long as the
 * segment lives. The byte counters are written by the owner and may be read
 * racily for stats (relaxed atomics).
 */
#ifndef PS_INDEX_ARENA_H
#define PS_INDEX_ARENA_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define PS_ARENA_CHUNK (256u * 1024u)

typedef struct ps_arena_chunk {
    struct ps_arena_chunk *next;
    size_t size;  /* usable bytes after the header */
} ps_arena_chunk;

typedef struct ps_arena {
    ps_arena_chunk *chunks;  /* newest first */
    char *cur;               /* next free byte in the newest chunk */
    char *end;               /* end of the newest chunk */
    _Atomic size_t used;     /* bytes handed out */
    _Atomic size_t reserved; /* bytes obtained from malloc */
} ps_arena;

void ps_arena_init(ps_arena *a);
/* `size` bytes aligned to `align` (a power of two <= 16); NULL when out of
 * memory. */
void *ps_arena_alloc(ps_arena *a, size_t size, size_t align);
/* Copy of `len` bytes (not NUL-terminated); NULL when out of memory. */
char *ps_arena_dup(ps_arena *a, const void *src, size_t len);
void ps_arena_free(ps_arena *a);

#endif
