/*
 * segment.c - the realtime segment's writer side: validation, doc ids, the
 * forward index, the key map, tokenizing, term sharding, posting appends
 * and the document-level commit. The design, the thread roles and the
 * memory-ordering rules are in segment.h; queries are in query.c.
 *
 * Commit step (commit_range, key_lock held): add the documents' text
 * lengths to dl_committed; for each newly committed document n, point its
 * key at it and give the document it replaces, in this segment or in an
 * older one (found through ps_older_fn when the key first came here),
 * deleted_at = base + n + 1 (relaxed); then release-store the new
 * `committed`. See segment.h for why a reader then
 * sees exactly one version of a key being updated.
 *
 * In batch mode each shard publishes `progress` (release) as it passes a
 * document boundary; whoever finds min(progress) above `committed` takes
 * key_lock and commits up to that minimum (acquire loads of progress), so
 * a document becomes visible as soon as its slowest shard is done with it,
 * not at the end of the batch.
 */
#include "segment.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"

void ps_errf(char *err, size_t errlen, const char *fmt, ...) {
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- tokenizer ---------------------------------------------------------
 * Token bytes: ASCII letters (lowercased), ASCII digits, and every byte
 * >= 0x80 (so UTF-8 encoded letters stay inside tokens). Anything else
 * separates tokens. Tokens longer than PS_TERM_MAX are skipped. */

static inline int token_byte(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || c >= 0x80;
}

/* Next token of text[*pos, len), lowercased into buf at the same offsets.
 * Returns 1 with *start and *tlen set, 0 at the end. */
static inline int next_token(const char *text, size_t len, size_t *pos, char *buf,
                             size_t *start, uint32_t *tlen) {
    size_t i = *pos;
    for (;;) {
        while (i < len && !token_byte((unsigned char)text[i]))
            i++;
        if (i >= len) {
            *pos = i;
            return 0;
        }
        size_t s = i;
        while (i < len && token_byte((unsigned char)text[i])) {
            unsigned char c = (unsigned char)text[i];
            buf[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            i++;
        }
        if (i - s <= PS_TERM_MAX) {
            *pos = i;
            *start = s;
            *tlen = (uint32_t)(i - s);
            return 1;
        }
    }
}

void ps_tokenize(const char *text, size_t text_len, char *buf, ps_token_fn fn, void *arg) {
    size_t pos = 0, start;
    uint32_t tlen;
    while (next_token(text, text_len, &pos, buf, &start, &tlen))
        fn(buf + start, tlen, arg);
}

/* ---- shard threads and commit ------------------------------------------ */

/* Stamp a deletion slot (of this segment, or of an older one through
 * ps_older_hit) unless already stamped. Doc counts as deleted for queries
 * whose snapshot is >= at. Callers hold key_lock, and the leaf has one
 * writing segment at a time, so a slot has one writer. */
static void stamp_deleted(_Atomic uint64_t *slot, _Atomic uint32_t *count, uint64_t at) {
    if (atomic_load_explicit(slot, memory_order_relaxed) != 0)
        return;
    atomic_store_explicit(slot, at, memory_order_relaxed);
    atomic_fetch_add_explicit(count, 1, memory_order_relaxed);
}

static void mark_deleted(ps_segment *s, uint32_t doc, uint64_t at) {
    stamp_deleted(&s->chunks[doc / PS_DOCS_PER_CHUNK]->deleted_at[doc % PS_DOCS_PER_CHUNK],
                  &s->deleted_count, at);
}

/* key_lock held. Make docs [from, to) visible, each replacing (deleting)
 * its key's previous document in the same step. */
static void commit_range(ps_segment *s, uint32_t from, uint32_t to) {
    uint64_t dl = 0;
    for (uint32_t d = from; d < to; d++) {
        dl += ps_seg_dl(s, d);
        ps_keyent *e = s->batch_keyent[d - s->batch_base];
        uint32_t old = e->doc;
        e->doc = d;
        if (old != PS_DOC_NONE) {
            mark_deleted(s, old, s->base + d + 1);
        } else {
            ps_older_hit *o = &s->batch_older[d - s->batch_base];
            if (o->slot != NULL)
                stamp_deleted(o->slot, o->deleted_count, s->base + d + 1);
        }
    }
    atomic_fetch_add_explicit(&s->dl_committed, dl, memory_order_relaxed);
    atomic_store_explicit(&s->committed, to, memory_order_release);
}

static uint32_t min_progress(ps_segment *s) {
    uint32_t w = UINT32_MAX;
    for (uint32_t i = 0; i < s->nshards; i++) {
        uint32_t p = atomic_load_explicit(&s->shards[i].progress, memory_order_acquire);
        if (p < w)
            w = p;
    }
    return w;
}

static void try_commit(ps_segment *s) {
    uint32_t w = min_progress(s);
    if (w <= atomic_load_explicit(&s->committed, memory_order_relaxed))
        return;
    pthread_mutex_lock(&s->key_lock);
    uint32_t c = atomic_load_explicit(&s->committed, memory_order_relaxed);
    w = min_progress(s);
    if (w > c)
        commit_range(s, c, w);
    pthread_mutex_unlock(&s->key_lock);
}

/* Append one occurrence; -1 when out of memory. */
static inline int shard_append(ps_shard *sh, const ps_work *w) {
    ps_term *t = ps_dict_get_or_add(&sh->dict, w->term, w->len, w->hash, &sh->arena, &sh->seg->gen);
    if (t == NULL)
        return -1;
    /* The owner wrote the document's forward data before handing it over. */
    const ps_segment *s = sh->seg;
    return ps_post_append(&t->post, w->doc, w->tf, ps_seg_score(s, w->doc), ps_seg_dl(s, w->doc),
                          &sh->arena, &sh->seg->gen);
}

/* A shard's part of a batch: its occurrences in doc order, publishing
 * progress at every document boundary. Returns the number of failed
 * appends (out of memory). */
static uint32_t shard_run(ps_shard *sh) {
    ps_segment *s = sh->seg;
    uint32_t failed = 0;
    uint32_t cur = s->batch_base;
    for (size_t i = 0; i < sh->nwork; i++) {
        const ps_work *w = &sh->work[i];
        if (w->doc != cur) {
            cur = w->doc;
            atomic_store_explicit(&sh->progress, cur, memory_order_release);
            try_commit(s);
        }
        if (shard_append(sh, w) != 0)
            failed++;
    }
    atomic_fetch_add_explicit(&sh->postings, sh->nwork - failed, memory_order_relaxed);
    atomic_store_explicit(&sh->progress, s->batch_end, memory_order_release);
    try_commit(s);
    return failed;
}

static void *shard_main(void *arg) {
    ps_shard *sh = arg;
    ps_segment *s = sh->seg;
    pthread_mutex_lock(&s->pool_lock);
    uint64_t seen = 0;  /* every batch has seq >= 1: a thread that starts late still takes the first */
    for (;;) {
        while (!s->stopping && s->batch_seq == seen)
            pthread_cond_wait(&s->pool_cond, &s->pool_lock);
        if (s->stopping)
            break;
        seen = s->batch_seq;
        pthread_mutex_unlock(&s->pool_lock);
        uint32_t failed = shard_run(sh);
        pthread_mutex_lock(&s->pool_lock);
        if (failed)
            s->batch_failed += failed;
        if (--s->batch_running == 0)
            pthread_cond_signal(&s->done_cond);
    }
    pthread_mutex_unlock(&s->pool_lock);
    return NULL;
}

static void stop_threads(ps_segment *s) {
    pthread_mutex_lock(&s->pool_lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->pool_cond);
    pthread_mutex_unlock(&s->pool_lock);
    for (uint32_t i = 0; i < s->nshards; i++) {
        if (s->shards[i].has_thread) {
            pthread_join(s->shards[i].thread, NULL);
            s->shards[i].has_thread = false;
        }
    }
}

/* ---- construction ------------------------------------------------------ */

ps_segment *ps_seg_new(uint32_t nshards, uint32_t max_docs, double k1, double b,
                       uint64_t base, char *err, size_t errlen) {
    if (nshards < 1 || nshards > PS_MAX_SHARDS) {
        ps_errf(err, errlen, "writer_threads must be 1..%d (got %u)", PS_MAX_SHARDS, nshards);
        return NULL;
    }
    if (max_docs < 1 || max_docs > (1u << 31)) {
        ps_errf(err, errlen, "max_docs must be 1..%u (got %u)", 1u << 31, max_docs);
        return NULL;
    }
    if (!(k1 >= 0 && k1 <= 100) || !(b >= 0 && b <= 1)) {
        ps_errf(err, errlen, "BM25 needs 0 <= k1 <= 100 and 0 <= b <= 1");
        return NULL;
    }
    ps_segment *s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto nomem;
    s->max_docs = max_docs;
    s->nshards = nshards;
    s->k1 = k1;
    s->b = b;
    s->base = base;
    ps_gen_init(&s->gen);
    s->nchunks = (max_docs + PS_DOCS_PER_CHUNK - 1) / PS_DOCS_PER_CHUNK;
    s->chunks = calloc(s->nchunks, sizeof(*s->chunks));
    ps_arena_init(&s->fwd_arena);
    pthread_mutex_init(&s->key_lock, NULL);
    pthread_mutex_init(&s->write_lock, NULL);
    pthread_mutex_init(&s->pool_lock, NULL);
    pthread_cond_init(&s->pool_cond, NULL);
    pthread_cond_init(&s->done_cond, NULL);
    s->key_mask = 1023;
    s->keys = calloc(s->key_mask + 1, sizeof(*s->keys));
    s->shards = calloc(nshards, sizeof(*s->shards));
    if (s->chunks == NULL || s->keys == NULL || s->shards == NULL)
        goto nomem_free;
    for (uint32_t i = 0; i < nshards; i++) {
        ps_shard *sh = &s->shards[i];
        sh->seg = s;
        sh->index = i;
        ps_arena_init(&sh->arena);
        if (ps_dict_init(&sh->dict, 1024) != 0)
            goto nomem_free;
    }
    for (uint32_t i = 1; i < nshards; i++) {
        if (pthread_create(&s->shards[i].thread, NULL, shard_main, &s->shards[i]) != 0) {
            ps_errf(err, errlen, "cannot start writer thread %u", i);
            ps_seg_free(s);
            return NULL;
        }
        s->shards[i].has_thread = true;
    }
    return s;
nomem_free:
    ps_seg_free(s);
nomem:
    ps_errf(err, errlen, "out of memory");
    return NULL;
}

void ps_seg_free(ps_segment *s) {
    if (s == NULL)
        return;
    if (s->shards != NULL) {
        stop_threads(s);
        for (uint32_t i = 0; i < s->nshards; i++) {
            ps_dict_free(&s->shards[i].dict);
            ps_arena_free(&s->shards[i].arena);
            free(s->shards[i].work);
        }
        free(s->shards);
    }
    if (s->chunks != NULL) {
        for (uint32_t i = 0; i < s->nchunks; i++)
            free(s->chunks[i]);
        free(s->chunks);
    }
    free(s->keys);
    ps_arena_free(&s->fwd_arena);
    free(s->batch_keyent);
    free(s->batch_older);
    free(s->lower);
    free(s->doc_terms);
    free(s->doc_slots);
    ps_gen_destroy(&s->gen);
    pthread_mutex_destroy(&s->key_lock);
    pthread_mutex_destroy(&s->write_lock);
    pthread_mutex_destroy(&s->pool_lock);
    pthread_cond_destroy(&s->pool_cond);
    pthread_cond_destroy(&s->done_cond);
    free(s);
}

/* ---- key map (key_lock held for every change and every reader lookup) -- */

/* Slot holding the key, or the empty slot where it would go. */
static ps_keyent **keymap_slot(ps_keyent **keys, uint64_t mask, const char *key, uint32_t len,
                               uint64_t hash) {
    for (uint64_t i = hash & mask;; i = (i + 1) & mask) {
        ps_keyent *e = keys[i];
        if (e == NULL || (e->hash == hash && e->key_len == len && memcmp(e->key, key, len) == 0))
            return &keys[i];
    }
}

static int keymap_grow(ps_segment *s) {
    uint64_t slots = (s->key_mask + 1) * 2;
    ps_keyent **fresh = calloc(slots, sizeof(*fresh));
    if (fresh == NULL)
        return -1;
    ps_keyent **old = s->keys;
    for (uint64_t i = 0; i <= s->key_mask; i++) {
        if (old[i] == NULL)
            continue;
        uint64_t j = old[i]->hash & (slots - 1);
        while (fresh[j] != NULL)
            j = (j + 1) & (slots - 1);
        fresh[j] = old[i];
    }
    free(old);
    s->keys = fresh;
    s->key_mask = slots - 1;
    return 0;
}

/* The key's entry, created (doc NONE, version INT64_MIN) if absent. */
static ps_keyent *keymap_get_or_add(ps_segment *s, const char *key, uint32_t len, uint64_t hash,
                                    ps_older_hit *older_out) {
    ps_keyent **slot = keymap_slot(s->keys, s->key_mask, key, len, hash);
    if (*slot != NULL) {
        /* Known here, but with no document of this segment (deleted, or a
         * stale add's leftover): an older segment may still hold a live
         * one for the caller to delete. Its versions are not news. */
        ps_keyent *e = *slot;
        if (e->doc == PS_DOC_NONE && s->older != NULL && s->older->fn != NULL) {
            s->older->fn(s->older->arg, key, len, hash, older_out);
        }
        return e;
    }
    if ((s->key_count + 1) * 2 > s->key_mask + 1) {
        if (keymap_grow(s) != 0)
            return NULL;
        slot = keymap_slot(s->keys, s->key_mask, key, len, hash);
    }
    ps_keyent *e = ps_arena_alloc(&s->fwd_arena, sizeof(*e), 8);
    char *copy = ps_arena_dup(&s->fwd_arena, key, len);
    if (e == NULL || copy == NULL)
        return NULL;
    e->hash = hash;
    e->key = copy;
    e->key_len = len;
    e->doc = PS_DOC_NONE;
    e->version = INT64_MIN;
    e->tomb = INT64_MIN;
    e->floor = INT64_MIN;
    *slot = e;
    s->key_count++;
    /* A key new to this segment: what do the older segments know? Their
     * versions join the stale checks; their live document is returned for
     * the caller to delete. */
    if (s->older != NULL && s->older->fn != NULL) {
        s->older->fn(s->older->arg, key, len, hash, older_out);
        if (older_out->found)
            e->floor = older_out->version > older_out->tomb ? older_out->version : older_out->tomb;
    }
    return e;
}

static ps_keyent *keymap_find(ps_segment *s, const char *key, uint32_t len, uint64_t hash) {
    return *keymap_slot(s->keys, s->key_mask, key, len, hash);
}

/* ---- the owner's per-document work -------------------------------------- */

/*
 * How many of docs[0..n) would be added, not dropped as stale, given the
 * key map and the documents before each in the batch. Only asked when the
 * batch might not fit, so that a batch whose stale documents make room is
 * accepted. write_lock held (the key map cannot change meanwhile).
 */
static uint32_t count_fresh(ps_segment *s, const ps_doc_in *docs, uint32_t n) {
    uint32_t slots = 16;
    while (slots < 2 * n)
        slots <<= 1;
    /* newest version seen so far in the batch, per key */
    struct seen { const ps_doc_in *doc; int64_t version; } *seen = calloc(slots, sizeof(*seen));
    if (seen == NULL)
        return n;  /* cannot tell: assume all fresh (refuse, nothing lost) */
    uint32_t fresh = 0;
    pthread_mutex_lock(&s->key_lock);
    for (uint32_t i = 0; i < n; i++) {
        const ps_doc_in *d = &docs[i];
        uint64_t h = ps_hash64(d->key, d->key_len);
        uint32_t j = (uint32_t)h & (slots - 1);
        while (seen[j].doc != NULL &&
               !(seen[j].doc->key_len == d->key_len &&
                 memcmp(seen[j].doc->key, d->key, d->key_len) == 0))
            j = (j + 1) & (slots - 1);
        int64_t newest;
        if (seen[j].doc != NULL) {
            newest = seen[j].version;
        } else {
            ps_keyent *e = keymap_find(s, d->key, d->key_len, h);
            newest = INT64_MIN;
            if (e != NULL) {
                newest = e->version > e->tomb ? e->version : e->tomb;
                newest = newest > e->floor ? newest : e->floor;
            }
            seen[j].doc = d;
        }
        if (newest > d->version) {
            seen[j].version = newest;
            continue;
        }
        seen[j].version = d->version;
        fresh++;
    }
    pthread_mutex_unlock(&s->key_lock);
    free(seen);
    return fresh;
}

static int validate_docs(const ps_doc_in *docs, uint32_t n, size_t *text_total, char *err,
                         size_t errlen) {
    size_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        const ps_doc_in *d = &docs[i];
        if (d->key_len < 1 || d->key_len > PS_KEY_MAX) {
            ps_errf(err, errlen, "document %u: key must be 1..%d bytes (got %u)", i, PS_KEY_MAX,
                    d->key_len);
            return PS_ERR_INVALID;
        }
        for (uint32_t t = 0; t < d->nterms; t++) {
            if (d->term_lens[t] < 1 || d->term_lens[t] > PS_TERM_MAX) {
                ps_errf(err, errlen, "document %u: term %u must be 1..%d bytes (got %u)", i, t,
                        PS_TERM_MAX, d->term_lens[t]);
                return PS_ERR_INVALID;
            }
        }
        if (isnan(d->score)) {
            ps_errf(err, errlen, "document %u: score is NaN", i);
            return PS_ERR_INVALID;
        }
        if (d->text_len > UINT32_MAX || d->blob_len > UINT32_MAX) {
            ps_errf(err, errlen, "document %u: text and blob must be under 4 GiB", i);
            return PS_ERR_INVALID;
        }
        total += d->text_len;
    }
    *text_total = total;
    return PS_OK;
}

static int ensure_scratch(ps_segment *s, size_t text_total, uint32_t n) {
    if (text_total > s->lower_cap) {
        char *p = realloc(s->lower, text_total);
        if (p == NULL)
            return -1;
        s->lower = p;
        s->lower_cap = text_total;
    }
    if (n > s->batch_cap) {
        ps_keyent **p = realloc(s->batch_keyent, n * sizeof(*p));
        if (p == NULL)
            return -1;
        s->batch_keyent = p;
        ps_older_hit *o = realloc(s->batch_older, n * sizeof(*o));
        if (o == NULL)
            return -1;
        s->batch_older = o;
        s->batch_cap = n;
    }
    return 0;
}

/* Record one occurrence of a term in the current document's distinct-term
 * table (doc_terms + doc_slots, sized by the caller). */
static inline void doc_term_add(ps_segment *s, uint32_t *nterms, uint32_t slot_mask,
                                const char *term, uint32_t len) {
    uint64_t h = ps_hash64(term, len);
    for (uint32_t i = (uint32_t)h & slot_mask;; i = (i + 1) & slot_mask) {
        uint32_t idx = s->doc_slots[i];
        if (idx == 0) {
            ps_work *w = &s->doc_terms[(*nterms)++];
            w->hash = h;
            w->term = term;
            w->len = len;
            w->tf = 1;
            s->doc_slots[i] = *nterms;
            return;
        }
        ps_work *w = &s->doc_terms[idx - 1];
        if (w->hash == h && w->len == len && memcmp(w->term, term, len) == 0) {
            w->tf++;
            return;
        }
    }
}

static int ensure_doc_tables(ps_segment *s, uint32_t bound) {
    if (bound > s->doc_terms_cap) {
        ps_work *p = realloc(s->doc_terms, bound * sizeof(*p));
        if (p == NULL)
            return -1;
        s->doc_terms = p;
        s->doc_terms_cap = bound;
    }
    uint32_t slots = 16;
    while (slots < bound * 2)
        slots <<= 1;
    if (slots > s->doc_slots_cap) {
        uint32_t *p = realloc(s->doc_slots, slots * sizeof(*p));
        if (p == NULL)
            return -1;
        s->doc_slots = p;
        s->doc_slots_cap = slots;
    }
    return 0;
}

static int shard_push(ps_shard *sh, const ps_work *w) {
    if (sh->nwork == sh->work_cap) {
        size_t cap = sh->work_cap ? sh->work_cap * 2 : 4096;
        ps_work *p = realloc(sh->work, cap * sizeof(*p));
        if (p == NULL)
            return -1;
        sh->work = p;
        sh->work_cap = cap;
    }
    sh->work[sh->nwork++] = *w;
    return 0;
}

/*
 * Prepare docs[i] as doc id s->next_doc: key map, forward record,
 * distinct terms. Inline mode (threaded == false): append its postings
 * and commit it. Batch mode: push its terms to the shards' work lists.
 * Returns 1 if added, 0 if dropped as stale, -1 when out of memory.
 */
static int add_one(ps_segment *s, const ps_doc_in *in, size_t lower_off, bool threaded) {
    uint64_t khash = ps_hash64(in->key, in->key_len);
    ps_older_hit older = {.version = INT64_MIN, .tomb = INT64_MIN};
    pthread_mutex_lock(&s->key_lock);
    ps_keyent *e = keymap_get_or_add(s, in->key, in->key_len, khash, &older);
    if (e == NULL) {
        pthread_mutex_unlock(&s->key_lock);
        return -1;
    }
    if (e->version > in->version || e->tomb > in->version || e->floor > in->version) {
        pthread_mutex_unlock(&s->key_lock);
        atomic_fetch_add_explicit(&s->stale_dropped, 1, memory_order_relaxed);
        return 0;
    }
    e->version = in->version;
    pthread_mutex_unlock(&s->key_lock);

    uint32_t doc = s->next_doc;
    uint32_t ci = doc / PS_DOCS_PER_CHUNK;
    if (s->chunks[ci] == NULL) {
        /* Published to readers by the commit of its first document. */
        s->chunks[ci] = calloc(1, sizeof(ps_docchunk));
        if (s->chunks[ci] == NULL)
            return -1;
        atomic_fetch_add_explicit(&s->chunks_used, 1, memory_order_relaxed);
    }
    ps_docrec *r = &s->chunks[ci]->rec[doc % PS_DOCS_PER_CHUNK];
    r->key = e->key;
    r->key_len = in->key_len;
    r->version = in->version;
    s->chunks[ci]->score[doc % PS_DOCS_PER_CHUNK] = in->score;
    r->blob_len = (uint32_t)in->blob_len;
    r->blob = in->blob_len ? ps_arena_dup(&s->fwd_arena, in->blob, in->blob_len) : "";
    if (r->blob == NULL)
        return -1;

    /* Distinct terms of the document with their frequencies. */
    uint32_t bound = (uint32_t)(in->text_len / 2 + 1) + in->nterms;
    if (ensure_doc_tables(s, bound) != 0)
        return -1;
    uint32_t slot_mask = 16;
    while (slot_mask < bound * 2)
        slot_mask <<= 1;
    memset(s->doc_slots, 0, slot_mask * sizeof(uint32_t));
    slot_mask--;
    uint32_t nterms = 0, dl = 0;
    if (in->text != NULL) {
        char *buf = s->lower + lower_off;
        size_t pos = 0, start;
        uint32_t tlen;
        while (next_token(in->text, in->text_len, &pos, buf, &start, &tlen)) {
            doc_term_add(s, &nterms, slot_mask, buf + start, tlen);
            dl++;
        }
    }
    for (uint32_t t = 0; t < in->nterms; t++)
        doc_term_add(s, &nterms, slot_mask, in->terms[t], in->term_lens[t]);
    s->chunks[ci]->dl[doc % PS_DOCS_PER_CHUNK] = dl;

    s->batch_keyent[doc - s->batch_base] = e;
    s->batch_older[doc - s->batch_base] = older;
    s->next_doc = doc + 1;
    for (uint32_t t = 0; t < nterms; t++) {
        ps_work *w = &s->doc_terms[t];
        w->doc = doc;
        ps_shard *sh = &s->shards[ps_seg_shard_of(s, w->hash)];
        if (threaded) {
            if (shard_push(sh, w) != 0)
                return -1;
        } else {
            if (shard_append(sh, w) != 0)
                return -1;
            atomic_fetch_add_explicit(&sh->postings, 1, memory_order_relaxed);
        }
    }
    if (!threaded) {
        pthread_mutex_lock(&s->key_lock);
        commit_range(s, doc, doc + 1);
        pthread_mutex_unlock(&s->key_lock);
    }
    return 1;
}

int ps_seg_add_batch(ps_segment *s, const ps_doc_in *docs, uint32_t n, bool threaded,
                     const ps_older *older, int64_t *ids, uint32_t *added, char *err,
                     size_t errlen) {
    *added = 0;
    size_t text_total;
    int rc = validate_docs(docs, n, &text_total, err, errlen);
    if (rc != PS_OK)
        return rc;
    pthread_mutex_lock(&s->write_lock);
    if (atomic_load(&s->sealed)) {
        pthread_mutex_unlock(&s->write_lock);
        ps_errf(err, errlen, "the segment is sealed");
        return PS_ERR_SEALED;
    }
    if ((uint64_t)s->next_doc + n > s->max_docs &&
        (uint64_t)s->next_doc + count_fresh(s, docs, n) > s->max_docs) {
        pthread_mutex_unlock(&s->write_lock);
        ps_errf(err, errlen, "segment full: %u documents of max_docs %u, %u more asked",
                s->next_doc, s->max_docs, n);
        return PS_ERR_FULL;
    }
    if (ensure_scratch(s, text_total, n) != 0) {
        pthread_mutex_unlock(&s->write_lock);
        ps_errf(err, errlen, "out of memory");
        return PS_ERR_NOMEM;
    }
    threaded = threaded && s->nshards > 1 && n > 1;
    s->batch_base = s->next_doc;
    s->older = older;
    uint64_t input = 0;
    size_t lower_off = 0;
    if (threaded) {
        for (uint32_t i = 0; i < s->nshards; i++) {
            s->shards[i].nwork = 0;
            atomic_store_explicit(&s->shards[i].progress, s->batch_base, memory_order_relaxed);
        }
    }
    rc = PS_OK;
    for (uint32_t i = 0; i < n; i++) {
        const ps_doc_in *d = &docs[i];
        input += d->key_len + d->text_len + d->blob_len;
        for (uint32_t t = 0; t < d->nterms; t++)
            input += d->term_lens[t];
        uint32_t doc = s->next_doc;
        int r = add_one(s, d, lower_off, threaded);
        lower_off += d->text_len;
        if (r < 0) {
            rc = PS_ERR_NOMEM;
            ps_errf(err, errlen, "out of memory at document %u", i);
            break;
        }
        if (ids != NULL)
            ids[i] = r ? (int64_t)doc : -1;
        *added += (uint32_t)r;
    }
    atomic_fetch_add_explicit(&s->input_bytes, input, memory_order_relaxed);
    if (threaded && s->next_doc > s->batch_base) {
        s->batch_end = s->next_doc;
        pthread_mutex_lock(&s->pool_lock);
        s->batch_seq++;
        s->batch_running = s->nshards - 1;
        s->batch_failed = 0;
        pthread_cond_broadcast(&s->pool_cond);
        pthread_mutex_unlock(&s->pool_lock);
        uint32_t failed = shard_run(&s->shards[0]);
        pthread_mutex_lock(&s->pool_lock);
        while (s->batch_running > 0)
            pthread_cond_wait(&s->done_cond, &s->pool_lock);
        failed += s->batch_failed;
        pthread_mutex_unlock(&s->pool_lock);
        try_commit(s);
        if (failed && rc == PS_OK) {
            rc = PS_ERR_NOMEM;
            ps_errf(err, errlen, "out of memory: %u postings lost", failed);
        }
    } else if (threaded) {
        /* Nothing added: no hand-off. */
    }
    s->older = NULL;  /* its slots are not to be used after this call */
    ps_gen_reclaim(&s->gen);
    pthread_mutex_unlock(&s->write_lock);
    return rc;
}

int ps_seg_delete(ps_segment *s, const char *key, uint32_t key_len, bool has_version,
                  int64_t version, const ps_older *older, int *deleted, char *err,
                  size_t errlen) {
    *deleted = 0;
    if (key_len < 1 || key_len > PS_KEY_MAX) {
        ps_errf(err, errlen, "key must be 1..%d bytes (got %u)", PS_KEY_MAX, key_len);
        return PS_ERR_INVALID;
    }
    pthread_mutex_lock(&s->write_lock);
    if (atomic_load(&s->sealed)) {
        pthread_mutex_unlock(&s->write_lock);
        ps_errf(err, errlen, "the segment is sealed");
        return PS_ERR_SEALED;
    }
    uint64_t h = ps_hash64(key, key_len);
    int rc = PS_OK;
    ps_older_hit o = {.version = INT64_MIN, .tomb = INT64_MIN};
    const uint64_t now = s->base + atomic_load_explicit(&s->committed, memory_order_relaxed);
    pthread_mutex_lock(&s->key_lock);
    s->older = older;
    ps_keyent *e = has_version ? keymap_get_or_add(s, key, key_len, h, &o)
                               : keymap_find(s, key, key_len, h);
    if (e == NULL) {
        if (has_version) {
            rc = PS_ERR_NOMEM;
            ps_errf(err, errlen, "out of memory");
        } else if (older != NULL && older->fn != NULL) {
            /* A plain delete of a key this segment has never seen. */
            older->fn(older->arg, key, key_len, h, &o);
            if (o.slot != NULL) {
                stamp_deleted(o.slot, o.deleted_count, now);
                *deleted = 1;
            }
        }
    } else if (!has_version ||
               (e->doc != PS_DOC_NONE ? e->version : o.slot != NULL ? o.version : INT64_MIN) <=
                   version) {
        if (e->doc != PS_DOC_NONE) {
            mark_deleted(s, e->doc, now);
            e->doc = PS_DOC_NONE;
            *deleted = 1;
        } else {
            if (!has_version && older != NULL && older->fn != NULL)
                older->fn(older->arg, key, key_len, h, &o);  /* keymap_find does not */
            if (o.slot != NULL) {
                stamp_deleted(o.slot, o.deleted_count, now);
                *deleted = 1;
            }
        }
        /* A versioned delete leaves a tombstone of its version; a plain
         * one keeps whatever tombstone there is, and nothing more. */
        e->version = INT64_MIN;
        if (has_version && version > e->tomb)
            e->tomb = version;
    }
    s->older = NULL;
    pthread_mutex_unlock(&s->key_lock);
    pthread_mutex_unlock(&s->write_lock);
    return rc;
}

int64_t ps_seg_get(ps_segment *s, const char *key, uint32_t key_len) {
    if (key_len < 1 || key_len > PS_KEY_MAX)
        return -1;
    uint64_t h = ps_hash64(key, key_len);
    int64_t doc = -1;
    pthread_mutex_lock(&s->key_lock);
    ps_keyent *e = keymap_find(s, key, key_len, h);
    if (e != NULL && e->doc != PS_DOC_NONE)
        doc = e->doc;
    pthread_mutex_unlock(&s->key_lock);
    return doc;
}

void ps_seg_lookup(ps_segment *s, const char *key, uint32_t len, uint64_t hash,
                   ps_older_hit *out) {
    memset(out, 0, sizeof(*out));
    out->version = out->tomb = INT64_MIN;
    pthread_mutex_lock(&s->key_lock);
    ps_keyent *e = keymap_find(s, key, len, hash);
    /* An entry with neither a document nor a tombstone only repeats what
     * an older segment knows (or is a plain delete's leftover): look on. */
    if (e != NULL && (e->doc != PS_DOC_NONE || e->tomb != INT64_MIN)) {
        out->found = 1;
        /* The older segments' versions are part of what this one knows:
         * a tombstone here may be older than one it shadows. */
        out->tomb = e->tomb > e->floor ? e->tomb : e->floor;
        if (e->doc != PS_DOC_NONE) {
            out->version = e->version;
            ps_docchunk *c = s->chunks[e->doc / PS_DOCS_PER_CHUNK];
            _Atomic uint64_t *slot = &c->deleted_at[e->doc % PS_DOCS_PER_CHUNK];
            if (atomic_load_explicit(slot, memory_order_relaxed) == 0) {
                out->slot = slot;
                out->deleted_count = &s->deleted_count;
            }
        }
    }
    pthread_mutex_unlock(&s->key_lock);
}

void ps_seg_seal(ps_segment *s) {
    pthread_mutex_lock(&s->write_lock);
    if (!atomic_load(&s->sealed)) {
        atomic_store(&s->sealed, 1);
        stop_threads(s);
        for (uint32_t i = 0; i < s->nshards; i++) {
            free(s->shards[i].work);
            s->shards[i].work = NULL;
            s->shards[i].nwork = s->shards[i].work_cap = 0;
        }
        free(s->lower);
        s->lower = NULL;
        s->lower_cap = 0;
        ps_gen_reclaim(&s->gen);
    }
    pthread_mutex_unlock(&s->write_lock);
}

static void count_entry_bytes(ps_term *t, void *arg) {
    *(uint64_t *)arg += sizeof(ps_term) + t->len;
}

void ps_seg_stats_get(ps_segment *s, ps_seg_stats *o) {
    memset(o, 0, sizeof(*o));
    uint32_t committed = ps_seg_committed(s);
    o->docs_committed = committed;
    o->docs_added = committed;
    o->docs_deleted = atomic_load_explicit(&s->deleted_count, memory_order_relaxed);
    o->docs_live = ps_seg_live(s);
    o->stale_dropped = atomic_load_explicit(&s->stale_dropped, memory_order_relaxed);
    uint64_t shard_bytes = 0, entry_bytes = 0, table_bytes = 0;
    for (uint32_t i = 0; i < s->nshards; i++) {
        ps_shard *sh = &s->shards[i];
        o->terms += atomic_load_explicit(&sh->dict.terms, memory_order_relaxed);
        o->postings += atomic_load_explicit(&sh->postings, memory_order_relaxed);
        shard_bytes += atomic_load_explicit(&sh->arena.reserved, memory_order_relaxed);
        table_bytes += atomic_load_explicit(&sh->dict.table_bytes, memory_order_relaxed);
    }
    /* Term entries sit in the shard arenas beside the buckets; walking the
     * terms to split them needs a read section. */
    uint64_t g = ps_gen_enter(&s->gen);
    for (uint32_t i = 0; i < s->nshards; i++)
        ps_dict_visit(&s->shards[i].dict, count_entry_bytes, &entry_bytes);
    ps_gen_exit(&s->gen, g);
    o->bytes_dictionary = table_bytes + entry_bytes;
    o->bytes_postings = shard_bytes > entry_bytes ? shard_bytes - entry_bytes : 0;
    o->bytes_forward = (uint64_t)atomic_load_explicit(&s->chunks_used, memory_order_relaxed) *
                           sizeof(ps_docchunk) +
                       (uint64_t)s->nchunks * sizeof(void *);
    o->bytes_arena = atomic_load_explicit(&s->fwd_arena.reserved, memory_order_relaxed);
    pthread_mutex_lock(&s->key_lock);
    o->keys = s->key_count;
    o->bytes_forward += (s->key_mask + 1) * sizeof(void *);
    pthread_mutex_unlock(&s->key_lock);
    o->retired_pending = atomic_load_explicit(&s->gen.pending_bytes, memory_order_relaxed);
    o->bytes_total = o->bytes_dictionary + o->bytes_postings + o->bytes_forward + o->bytes_arena +
                     o->retired_pending;
    o->input_bytes = atomic_load_explicit(&s->input_bytes, memory_order_relaxed);
    o->generation = atomic_load(&s->gen.gen);
    o->reclaimed = atomic_load_explicit(&s->gen.reclaimed, memory_order_relaxed);
}
