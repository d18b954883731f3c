/*
 * segment.h - the realtime segment: the one mutable piece of a
 * pinstack-leaf index (Manas "active realtime segment").
 *
 * WHAT IT HOLDS
 *   inverted index  term -> posting list, split into `nshards` term shards
 *                   (a term's shard is fixed by its hash); each shard has
 *                   its own dictionary (termdict.h) and arena, and exactly
 *                   one writer thread at a time.
 *   forward index   doc id -> key, version, static score, text length, blob
 *                   (ps_docrec, in chunks of 4096 records that never move);
 *                   keys and blobs in the owner's arena.
 *   deletes         per doc id, the stamp from which it counts as deleted
 *                   (deleted_at; 0: live), set once, never cleared. Stamps
 *                   are global sequence numbers (below), so that a leaf's
 *                   newer segment can delete a document of an older one.
 *   key map         key -> newest live doc id, its version, and the largest
 *                   version of a versioned delete (a tombstone, which a
 *                   plain delete leaves in place). An add older than either
 *                   is dropped as stale.
 *
 * DOCUMENT-LEVEL COMMIT
 *   Doc ids are handed out in order. `committed` is the watermark: every
 *   doc below it has all its terms in every posting list and its forward
 *   record written; readers load it once per query (acquire) and never
 *   look at a doc at or above it. A reader therefore never sees part of a
 *   document. The writer that advances `committed` does so with a release
 *   store after every shard has reported (release store of its `progress`,
 *   read with acquire) that it is done with those documents.
 *
 *   Deletes are versioned by the same watermark, so that a query sees one
 *   consistent moment. The segment's doc n has the global sequence number
 *   base + n + 1 (`base`: documents of the leaf's earlier segments; 0 for a
 *   segment on its own), and a query's snapshot is S = base + W for the
 *   watermark W it loaded. A document is deleted for that query when its
 *   deleted_at is non-zero and <= S. An update is add-new then delete-old:
 *   when new doc n commits, the old one (in this segment, or in an older
 *   segment of the leaf: ps_older_fn) gets deleted_at = base + n + 1,
 *   stored (relaxed) BEFORE the release store that makes `committed`
 *   n + 1. A query with W <= n sees the old version only; a query with
 *   W > n loaded `committed` with acquire and so sees deleted_at too: the
 *   new version only. A key being updated never vanishes from results and
 *   never shows twice. A plain delete takes effect at the current
 *   snapshot (queries already running may or may not see it).
 *
 * THREADS AND LOCKS
 *   owner       the caller of add/add_batch/delete/seal, one at a time
 *               (write_lock). It validates, assigns doc ids, writes the
 *               forward index, tokenizes, and splits each document's terms
 *               by shard. Alone (writer_threads == 1, or add()), it also
 *               appends every posting and commits each document itself.
 *   shard k     in add_batch with writer_threads > 1: the owner works as
 *               shard 0; threads 1..n-1 append their shards' postings for
 *               the batch, each publishing `progress` (docs of the batch it
 *               has finished) and trying to advance the commit.
 *   readers     any number of threads: search/count/get. No locks except
 *               get(), which takes key_lock for the key map lookup.
 *   key_lock    guards the key map and the commit step (advancing
 *               `committed`, applying superseding deletes). Short.
 *   Lock order: write_lock, then key_lock.
 *
 * Freed memory: only directories and dictionary tables that grew, retired
 * through the generation handler (gen.h). Everything else lives until
 * ps_seg_free, which the caller must call only when no reader or writer is
 * inside the segment (the Python object guarantees it by reference).
 */
#ifndef PS_INDEX_SEGMENT_H
#define PS_INDEX_SEGMENT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "gen.h"
#include "termdict.h"

#define PS_KEY_MAX 1024
#define PS_MAX_SHARDS 64
#define PS_DOCS_PER_CHUNK 4096u
#define PS_DOC_NONE UINT32_MAX

/* Status codes of the writer API; err text says more. */
enum {
    PS_OK = 0,
    PS_ERR_INVALID = 1, /* a malformed document or argument */
    PS_ERR_FULL = 2,    /* max_docs reached */
    PS_ERR_SEALED = 3,  /* write to a sealed segment */
    PS_ERR_NOMEM = 4,
};

/* One document handed to the writer. Pointers are the caller's and need
 * only stay valid for the duration of the call. */
typedef struct ps_doc_in {
    const char *key;
    uint32_t key_len;
    int64_t version;
    const char *text;  /* NULL: no text field */
    size_t text_len;
    const char *const *terms;
    const uint32_t *term_lens;
    uint32_t nterms;
    double score;
    const char *blob;
    size_t blob_len;
} ps_doc_in;

typedef struct ps_docrec {
    const char *key;
    const char *blob;
    uint32_t key_len;
    uint32_t blob_len;
    int64_t version;
} ps_docrec;

/* 4096 documents' forward data. What every matching document of a query
 * touches (static score, text length, deletion) sits in dense arrays,
 * apart from the records read only for the hits returned. */
typedef struct ps_docchunk {
    double score[PS_DOCS_PER_CHUNK];
    uint32_t dl[PS_DOCS_PER_CHUNK];  /* text tokens, for BM25 */
    _Atomic uint64_t deleted_at[PS_DOCS_PER_CHUNK];  /* stamp; 0: live */
    ps_docrec rec[PS_DOCS_PER_CHUNK];
} ps_docchunk;

/* One term occurrence for a shard to append: (doc, term, tf). */
typedef struct ps_work {
    uint64_t hash;
    const char *term;
    uint32_t len;
    uint32_t doc;
    uint32_t tf;
} ps_work;

/*
 * Keys that live in older segments. A leaf's active segment is not alone:
 * a key it has never seen may have a live document (or a tombstone) in an
 * older segment. The caller may pass an ps_older_fn that looks the key up
 * there, newest segment first; the segment calls it (under key_lock, from
 * the owner thread) the first time it meets a key, to drop stale adds and
 * to delete the older document when the new one commits (or at once, for
 * a delete). slot and deleted_count point into the older segment and are
 * used only during the call that looked them up.
 */
typedef struct ps_older_hit {
    int found;                      /* the key has a document or tombstone there */
    int64_t version;                /* of the live document; INT64_MIN: none */
    int64_t tomb;                   /* largest tombstone version; INT64_MIN: none */
    _Atomic uint64_t *slot;         /* the live document's deletion stamp, or NULL */
    _Atomic uint32_t *deleted_count;/* its segment's deleted counter */
} ps_older_hit;
typedef void (*ps_older_fn)(void *arg, const char *key, uint32_t len, uint64_t hash,
                            ps_older_hit *out);
typedef struct ps_older {
    ps_older_fn fn;
    void *arg;
} ps_older;

typedef struct ps_keyent {
    uint64_t hash;
    const char *key;  /* in the owner's arena */
    uint32_t key_len;
    uint32_t doc;     /* live doc id, or PS_DOC_NONE */
    int64_t version;  /* version of the live (or pending) doc; INT64_MIN: none */
    int64_t tomb;     /* largest version of a versioned delete; INT64_MIN: none */
    int64_t floor;    /* newest version the older segments knew of when the key
                       * first came here (ps_older_fn); INT64_MIN: none */
} ps_keyent;

struct ps_segment;

typedef struct ps_shard {
    struct ps_segment *seg;
    uint32_t index;
    ps_dict dict;
    ps_arena arena;            /* term entries and posting buckets */
    ps_work *work;             /* this batch's occurrences, in doc order */
    size_t nwork, work_cap;
    _Atomic uint32_t progress; /* docs below this are done (batch mode) */
    _Atomic uint64_t postings;
    pthread_t thread;
    bool has_thread;
    char pad[64];
} ps_shard;

typedef struct ps_segment {
    uint32_t max_docs;
    uint32_t nshards;
    double k1, b;
    uint64_t base;                  /* global sequence of doc 0, minus 1 */
    ps_gen gen;

    /* commit */
    _Atomic uint32_t committed;
    _Atomic uint64_t dl_committed;  /* sum of dl over committed docs */
    _Atomic uint32_t deleted_count;
    uint32_t next_doc;              /* owner: next id to hand out */

    /* forward index */
    ps_docchunk **chunks;           /* [ceil(max_docs / 4096)], filled lazily */
    uint32_t nchunks;
    _Atomic uint32_t chunks_used;
    ps_arena fwd_arena;             /* keys and blobs (owner) */

    /* key map (key_lock) */
    pthread_mutex_t key_lock;
    ps_keyent **keys;               /* open addressing, entries in fwd_arena */
    uint64_t key_mask, key_count;

    /* writers */
    pthread_mutex_t write_lock;
    ps_shard *shards;
    /* batch hand-off to shard threads (pool_lock) */
    pthread_mutex_t pool_lock;
    pthread_cond_t pool_cond;       /* shard threads wait for a batch */
    pthread_cond_t done_cond;       /* the owner waits for them */
    uint64_t batch_seq;
    uint32_t batch_running;         /* shard threads still working */
    uint32_t batch_failed;          /* appends that ran out of memory */
    bool stopping;
    /* the batch in flight (written by the owner before hand-off) */
    uint32_t batch_base, batch_end;
    ps_keyent **batch_keyent;       /* key map entry per doc of the batch */
    ps_older_hit *batch_older;      /* per doc: the older document it replaces */
    const ps_older *older;          /* this call's lookup into older segments */
    size_t batch_cap;

    /* owner scratch for tokenizing one document */
    char *lower;                    /* lowercased text */
    size_t lower_cap;
    ps_work *doc_terms;             /* this document's distinct terms */
    uint32_t doc_terms_cap;
    uint32_t *doc_slots;            /* open-addressing index into doc_terms */
    uint32_t doc_slots_cap;

    _Atomic int sealed;
    _Atomic uint64_t stale_dropped;
    _Atomic uint64_t input_bytes;
} ps_segment;

/* printf into the caller's error buffer (err may be NULL); the index's one
 * way of reporting what went wrong. */
void ps_errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Create; NULL with err filled on failure. */
ps_segment *ps_seg_new(uint32_t nshards, uint32_t max_docs, double k1, double b,
                       uint64_t base, char *err, size_t errlen);
void ps_seg_free(ps_segment *s);

/* Index docs[0..n) in order. threaded: hand postings to the shard threads
 * (only matters when nshards > 1). ids (may be NULL): per doc, its doc id
 * or -1 if dropped as stale. *added: documents added. Everything is
 * validated before anything is indexed: on PS_ERR_INVALID/FULL/SEALED
 * nothing changed. Blocks until every added document is committed. */
int ps_seg_add_batch(ps_segment *s, const ps_doc_in *docs, uint32_t n, bool threaded,
                     const ps_older *older, int64_t *ids, uint32_t *added, char *err,
                     size_t errlen);
/* Delete by key; has_version: only if the live doc is not newer, leaving a
 * tombstone. *deleted: 1 if a live document was deleted. */
int ps_seg_delete(ps_segment *s, const char *key, uint32_t key_len, bool has_version,
                  int64_t version, const ps_older *older, int *deleted, char *err,
                  size_t errlen);
/* What this segment knows of a key, as an ps_older_fn would report it
 * (for the leaf's lookup across segments; sealed segments only need no
 * lock, but key_lock is taken anyway). */
void ps_seg_lookup(ps_segment *s, const char *key, uint32_t len, uint64_t hash,
                   ps_older_hit *out);
/* The key's live doc id, or -1. */
int64_t ps_seg_get(ps_segment *s, const char *key, uint32_t key_len);
/* Freeze; stops the shard threads. */
void ps_seg_seal(ps_segment *s);

static inline uint32_t ps_seg_committed(ps_segment *s) {
    return atomic_load_explicit(&s->committed, memory_order_acquire);
}
/* Forward record of a doc below the committed watermark. */
static inline const ps_docrec *ps_seg_doc(const ps_segment *s, uint32_t doc) {
    return &s->chunks[doc / PS_DOCS_PER_CHUNK]->rec[doc % PS_DOCS_PER_CHUNK];
}
static inline double ps_seg_score(const ps_segment *s, uint32_t doc) {
    return s->chunks[doc / PS_DOCS_PER_CHUNK]->score[doc % PS_DOCS_PER_CHUNK];
}
static inline uint32_t ps_seg_dl(const ps_segment *s, uint32_t doc) {
    return s->chunks[doc / PS_DOCS_PER_CHUNK]->dl[doc % PS_DOCS_PER_CHUNK];
}
/* Is doc deleted for a query whose snapshot (global sequence) is snap? */
static inline bool ps_seg_is_deleted(const ps_segment *s, uint32_t doc, uint64_t snap) {
    ps_docchunk *c = s->chunks[doc / PS_DOCS_PER_CHUNK];
    uint64_t at = atomic_load_explicit(&c->deleted_at[doc % PS_DOCS_PER_CHUNK],
                                       memory_order_relaxed);
    return at != 0 && at <= snap;
}
/* The snapshot of a query that loaded watermark w. */
static inline uint64_t ps_seg_snap(const ps_segment *s, uint32_t w) {
    return s->base + w;
}
static inline uint32_t ps_seg_shard_of(const ps_segment *s, uint64_t hash) {
    return (uint32_t)((hash >> 40) % s->nshards);
}

/* Live documents: committed minus deleted (cheap; stats walks the terms). */
static inline uint32_t ps_seg_live(ps_segment *s) {
    uint32_t c = ps_seg_committed(s);
    uint32_t d = atomic_load_explicit(&s->deleted_count, memory_order_relaxed);
    return c >= d ? c - d : 0;
}

typedef struct ps_seg_stats {
    uint64_t docs_added, docs_committed, docs_live, docs_deleted, stale_dropped;
    uint64_t terms, postings, keys;
    uint64_t bytes_postings, bytes_dictionary, bytes_forward, bytes_arena, bytes_total;
    uint64_t input_bytes, generation, retired_pending, reclaimed;
} ps_seg_stats;
void ps_seg_stats_get(ps_segment *s, ps_seg_stats *out);

/* Tokenizer of the text field, exposed for tests and the flush: calls
 * fn(token, len, arg) for every token (already lowercased into `buf`,
 * which must hold text_len bytes). */
typedef void (*ps_token_fn)(const char *tok, uint32_t len, void *arg);
void ps_tokenize(const char *text, size_t text_len, char *buf, ps_token_fn fn, void *arg);

#endif
