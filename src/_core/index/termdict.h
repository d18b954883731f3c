/*
 * termdict.h - one writer shard's term dictionary: term -> posting list.
 *
 * An open-addressing hash table (linear probing, power-of-two size, at
 * most half full) of pointers to term entries. A term entry holds the
 * term's bytes, its 64-bit hash and its posting list; it is allocated from
 * the shard's arena, filled completely, and only then published into its
 * slot with a release store. Slots go from NULL to an entry once and never
 * change again within a table. Entries are never removed or moved.
 *
 * Growth: the writer builds a table twice the size holding the same entry
 * pointers, publishes it with a release store of `table`, and retires the
 * old table to the generation handler; a reader still probing the old one
 * finds every term that was in it (the entries themselves are shared).
 *
 * Readers: load `table` with acquire inside a generation read section,
 * probe with acquire loads of the slots; a NULL slot ends the probe. A term
 * published after the reader loaded the table may be missed: it belongs to
 * a document the reader's snapshot does not include anyway (the term is
 * published before the document's commit, see segment.c).
 *
 * Threads: ps_dict_get_or_add: the shard's single writer thread.
 * ps_dict_find: any thread.
 */
#ifndef PS_INDEX_TERMDICT_H
#define PS_INDEX_TERMDICT_H

#include <stdatomic.h>
#include <stdint.h>

#include "arena.h"
#include "gen.h"
#include "posting.h"

#define PS_TERM_MAX 255

typedef struct ps_term {
    uint64_t hash;
    ps_posting post;
    uint16_t len;
    char bytes[];
} ps_term;

typedef struct ps_dict_table {
    uint64_t mask;
    _Atomic(ps_term *) slot[];
} ps_dict_table;

typedef struct ps_dict {
    _Atomic(ps_dict_table *) table;
    uint64_t count;          /* writer only */
    _Atomic uint64_t terms;  /* count, readable by stats */
    _Atomic size_t table_bytes;
} ps_dict;

int ps_dict_init(ps_dict *d, uint32_t initial_slots);
/* The entry for the term, created (with an empty posting list) if absent.
 * NULL when out of memory. */
ps_term *ps_dict_get_or_add(ps_dict *d, const char *term, uint32_t len, uint64_t hash,
                            ps_arena *arena, ps_gen *gen);
/* Reader lookup; caller is in a generation read section. */
ps_term *ps_dict_find(ps_dict *d, const char *term, uint32_t len, uint64_t hash);
/* Teardown: free the table and every posting directory. */
void ps_dict_free(ps_dict *d);

/* Visit every term (teardown, stats, flush of a sealed segment). */
typedef void (*ps_dict_visit_fn)(ps_term *t, void *arg);
void ps_dict_visit(ps_dict *d, ps_dict_visit_fn fn, void *arg);

#endif
