/*
 * msgbatch.c - leaf messages in bulk: an HTTP body to framed log records,
 * and log records to index and delete ops in a realtime segment, with no
 * Python object per message.
 *
 * WHY
 *
 * The leaf's write and ingest paths used to handle every message in Python:
 * split the body, parse (C), build an Op tuple, hash the key for its
 * partition, frame the record (struct + zlib), then on the ingest thread
 * slice each record out of the read buffer, wrap it in a Record, parse it
 * again into an Op, and turn the Op into add_batch's tuple, which
 * _index.pyx turned back into a ps_doc_in. That was most of the server's
 * CPU per document, all of it under the GIL. A batch here is one array of
 * spans into memory the caller already has (the request body, the log's
 * read buffers); the per-message work is one pass in C, GIL released.
 *
 * HOW IT IS USED
 *
 *   write   mb_add_lines(body) -> mb_parse -> mb_route(partitions) ->
 *           per partition, under the log's append lock: mb_frame at the
 *           partition's next offset and file position -> one write(2).
 *           A bad message anywhere rejects the batch before anything is
 *           framed (the caller lists every error from res[]).
 *   ingest  per polled batch: mb_add_records per checked run of records
 *           (or mb_add per Kafka message) -> mb_parse -> mb_apply in
 *           slices the engine picks (segment rotation), with the older
 *           segments' lookup.
 *
 * HANDING A PARSE OVER
 *
 * A message written through the leaf is parsed by the writer (to refuse a
 * bad batch) and read back by the ingest thread a moment later. mb_attach
 * lets the ingest side take the writer's verdict instead of parsing the
 * same bytes again: the writer's batch, kept alive by the caller, framed
 * its partition-p messages at consecutive offsets from first_offset, so the
 * record at offset o is its (o - first_offset)-th message of p. The bytes
 * are compared before the verdict is taken; an attach that does not fit
 * (a write that failed and whose offsets were reused) only costs a parse.
 *
 * Rules live elsewhere, once: message rules in msgparse.c, the record
 * format in logrec.c, versions and deletes in segment.c. This file only
 * strings them together; mb_apply_docs is the one place that turns a run
 * of ops into segment calls (RealtimeSegment.apply uses it for Op tuples).
 *
 * THREADS AND MEMORY
 *
 * A batch belongs to one thread at a time (the writer thread that built it,
 * then the log appenders one partition each under their append locks,
 * which only read it: mb_frame is const; or the ingest thread). A write
 * batch that the ingest thread attached is read by both at once: nothing
 * writes to it after mb_route, and the hand-over to the ingest thread goes
 * through a lock in the caller (happens-before). The parser
 * is shared read-only. The batch points into caller memory that must stay
 * alive and unchanged; its own outputs (keys, text, terms) live in its
 * mp_work, whose area may move while mb_parse runs, so pointers into it are
 * taken only afterwards (mb_apply, mb_frame). No atomics, no locks.
 */
#include "msgbatch.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

mb_batch *mb_new(void) {
    mb_batch *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->work = mp_work_new();
    if (b->work == NULL) {
        free(b);
        return NULL;
    }
    b->first_bad = MB_NONE;
    return b;
}

void mb_free(mb_batch *b) {
    if (b == NULL)
        return;
    mp_work_free(b->work);
    free(b->msgs);
    free(b->res);
    free(b->ops);
    free(b->docs);
    free(b->is_delete);
    free(b->term_ptrs);
    free(b->term_lens);
    free(b);
}

static int reserve(mb_batch *b, uint32_t more) {
    if ((uint64_t)b->n + more <= b->cap)
        return 0;
    uint64_t cap = b->cap ? b->cap : 64;
    while (cap < (uint64_t)b->n + more)
        cap *= 2;
    if (cap > UINT32_MAX - 1)
        return -1;
    mb_msg *m = realloc(b->msgs, cap * sizeof(*m));
    if (m == NULL)
        return -1;
    b->msgs = m;
    mp_result *r = realloc(b->res, cap * sizeof(*r));
    if (r == NULL)
        return -1;
    b->res = r;
    uint32_t *o = realloc(b->ops, cap * sizeof(*o));
    if (o == NULL)
        return -1;
    b->ops = o;
    b->cap = (uint32_t)cap;
    return 0;
}

int mb_add(mb_batch *b, const char *raw, size_t len, int32_t partition, int64_t where) {
    if (reserve(b, 1) != 0)
        return -1;
    mb_msg *m = &b->msgs[b->n++];
    m->raw = raw;
    m->len = len;
    m->partition = partition;
    m->where = where;
    m->from = NULL;
    m->from_index = 0;
    return 0;
}

/* bytes.strip()'s whitespace, minus "\n" (a line has none). */
static inline int blank_byte(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

int mb_add_lines(mb_batch *b, const char *body, size_t len) {
    const char *p = body, *end = body + len;
    int64_t line = 0;
    for (;;) {
        line++;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        const char *e = stop;
        while (e > p && e[-1] == '\r')
            e--;
        const char *q = p;
        while (q < e && blank_byte((unsigned char)*q))
            q++;
        if (q < e && mb_add(b, p, (size_t)(e - p), -1, line) != 0)
            return -1;
        if (nl == NULL)
            return 0;
        p = nl + 1;
    }
}

int mb_add_records(mb_batch *b, const char *buf, size_t pos, uint32_t count, int32_t partition,
                   uint64_t first_offset) {
    if (reserve(b, count) != 0)
        return -1;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t n = lr_payload_len(buf, pos);
        mb_msg *m = &b->msgs[b->n++];
        m->raw = buf + pos + LR_HEADER_SIZE;
        m->len = n;
        m->partition = partition;
        m->where = (int64_t)(first_offset + i);
        m->from = NULL;
        m->from_index = 0;
        pos += LR_HEADER_SIZE + n;
    }
    return 0;
}

int64_t mb_attach(mb_batch *b, const mb_batch *src, int32_t p, uint64_t first_offset) {
    /* src's messages of partition p, in the order they were framed */
    uint32_t count = 0;
    for (uint32_t k = 0; k < src->nops; k++)
        count += src->msgs[src->ops[k]].partition == p;
    if (count == 0)
        return 0;
    uint32_t *mine = malloc((size_t)count * sizeof(*mine));
    if (mine == NULL)
        return -1;
    count = 0;
    for (uint32_t k = 0; k < src->nops; k++)
        if (src->msgs[src->ops[k]].partition == p)
            mine[count++] = src->ops[k];
    int64_t attached = 0;
    for (uint32_t i = b->nparsed; i < b->n; i++) {
        mb_msg *m = &b->msgs[i];
        if (m->partition != p || m->where < (int64_t)first_offset ||
            (uint64_t)m->where - first_offset >= count)
            continue;
        const mb_msg *s = &src->msgs[mine[(uint64_t)m->where - first_offset]];
        if (s->len != m->len || memcmp(s->raw, m->raw, m->len) != 0)
            continue;  /* not the bytes src parsed (cannot happen; never trust it) */
        m->from = src;
        m->from_index = mine[(uint64_t)m->where - first_offset];
        attached++;
    }
    free(mine);
    return attached;
}

int mb_parse(mb_batch *b, const mp_parser *p, bool halt) {
    while (b->nparsed < b->n) {
        uint32_t i = b->nparsed;
        const mb_msg *m = &b->msgs[i];
        int rc;
        if (m->from != NULL) {
            b->res[i] = m->from->res[m->from_index];  /* spans into m->from's work */
            rc = b->res[i].status;
        } else {
            rc = mp_parse(p, b->work, m->raw, m->len, &b->res[i]);
        }
        b->nparsed++;
        if (rc == MP_OK) {
            b->ops[b->nops++] = i;
            if (b->res[i].kind == MP_OP_DELETE)
                b->ndeletes++;
            continue;
        }
        if (rc == MP_NOMEM) {
            b->nomem = 1;
            return MP_NOMEM;
        }
        b->nbad++;
        if (b->first_bad == MB_NONE)
            b->first_bad = i;
        if (halt)
            break;
    }
    return MP_OK;
}

void mb_route(mb_batch *b, uint32_t nparts, uint32_t *counts) {
    const char *out = mp_work_out(b->work);
    for (uint32_t k = 0; k < b->nops; k++) {
        uint32_t i = b->ops[k];
        const mp_result *r = &b->res[i];
        uLong crc = crc32_z(0L, (const Bytef *)out + r->key.off, r->key.len);
        uint32_t part = (uint32_t)(crc % nparts);
        b->msgs[i].partition = (int32_t)part;
        counts[part]++;
    }
}

size_t mb_framed_size(const mb_batch *b, int32_t p, uint32_t *count, size_t *longest) {
    size_t total = 0, max = 0;
    uint32_t c = 0;
    for (uint32_t k = 0; k < b->nops; k++) {
        const mb_msg *m = &b->msgs[b->ops[k]];
        if (m->partition == p) {
            total += LR_HEADER_SIZE + m->len;
            if (m->len > max)
                max = m->len;
            c++;
        }
    }
    *count = c;
    *longest = max;
    return total;
}

size_t mb_frame(const mb_batch *b, int32_t p, uint64_t first_offset, uint64_t start_pos,
                uint64_t *last_index_pos, char *out, lr_index *idx) {
    /* lr_encode one message at a time: no pointer arrays to build. */
    size_t written = 0;
    uint64_t offset = first_offset;
    for (uint32_t k = 0; k < b->nops; k++) {
        const mb_msg *m = &b->msgs[b->ops[k]];
        if (m->partition != p)
            continue;
        const char *raw = m->raw;
        size_t len = m->len;
        written += lr_encode(&raw, &len, 1, offset++, start_pos + written, last_index_pos,
                             out + written, idx);
    }
    return written;
}

static int ensure_scratch(mb_batch *b, uint32_t ndocs, size_t nterms) {
    if (ndocs > b->docs_cap) {
        ps_doc_in *d = realloc(b->docs, (size_t)ndocs * sizeof(*d));
        if (d == NULL)
            return -1;
        b->docs = d;
        uint8_t *del = realloc(b->is_delete, ndocs);
        if (del == NULL)
            return -1;
        b->is_delete = del;
        b->docs_cap = ndocs;
    }
    if (nterms > b->terms_cap) {
        const char **tp = realloc(b->term_ptrs, nterms * sizeof(*tp));
        if (tp == NULL)
            return -1;
        b->term_ptrs = tp;
        uint32_t *tl = realloc(b->term_lens, nterms * sizeof(*tl));
        if (tl == NULL)
            return -1;
        b->term_lens = tl;
        b->terms_cap = nterms;
    }
    return 0;
}

int mb_apply(mb_batch *b, ps_segment *s, const ps_older *older, uint32_t op_from,
             uint32_t op_to, mb_counts *counts, char *err, size_t errlen) {
    if (op_to > b->nops)
        op_to = b->nops;
    if (op_from >= op_to)
        return PS_OK;
    uint32_t n = op_to - op_from;
    size_t nterms = 0;
    for (uint32_t k = op_from; k < op_to; k++)
        nterms += b->res[b->ops[k]].nterms;
    if (ensure_scratch(b, n, nterms + 1) != 0) {
        ps_errf(err, errlen, "out of memory");
        return PS_ERR_NOMEM;
    }
    const char *own_out = mp_work_out(b->work);
    const mp_span *own_terms = mp_work_terms(b->work);
    size_t t = 0;
    for (uint32_t k = 0; k < n; k++) {
        const mb_msg *m = &b->msgs[b->ops[op_from + k]];
        const mp_result *r = &b->res[b->ops[op_from + k]];
        const char *out = m->from ? mp_work_out(m->from->work) : own_out;
        const mp_span *terms = m->from ? mp_work_terms(m->from->work) : own_terms;
        ps_doc_in *d = &b->docs[k];
        memset(d, 0, sizeof(*d));
        d->key = out + r->key.off;
        d->key_len = (uint32_t)r->key.len;
        d->version = r->version;
        b->is_delete[k] = r->kind == MP_OP_DELETE;
        if (r->kind == MP_OP_DELETE)
            continue;
        if (r->has_text) {
            d->text = out + r->text.off;
            d->text_len = r->text.len;
        }
        d->terms = &b->term_ptrs[t];
        d->term_lens = &b->term_lens[t];
        d->nterms = r->nterms;
        for (uint32_t j = 0; j < r->nterms; j++, t++) {
            b->term_ptrs[t] = out + terms[r->term0 + j].off;
            b->term_lens[t] = (uint32_t)terms[r->term0 + j].len;
        }
        d->score = r->score;
        if (r->blob == MP_BLOB_SOURCE) {
            d->blob = m->raw;
            d->blob_len = m->len;
        } else if (r->blob == MP_BLOB_OUT) {
            d->blob = out + r->blob_span.off;
            d->blob_len = r->blob_span.len;
        } else {
            d->blob = "";
            d->blob_len = 0;
        }
    }
    return mb_apply_docs(s, b->docs, b->is_delete, n, older, counts, err, errlen);
}

int mb_apply_docs(ps_segment *s, const ps_doc_in *docs, const uint8_t *is_delete, uint32_t n,
                  const ps_older *older, mb_counts *counts, char *err, size_t errlen) {
    uint32_t i = 0;
    while (i < n) {
        if (is_delete[i]) {
            int deleted = 0;
            int rc = ps_seg_delete(s, docs[i].key, docs[i].key_len, true, docs[i].version,
                                   older, &deleted, err, errlen);
            if (rc != PS_OK)
                return rc;
            counts->deletes++;
            counts->deleted += (uint64_t)(deleted != 0);
            i++;
            continue;
        }
        uint32_t j = i;
        while (j < n && !is_delete[j])
            j++;
        uint32_t added = 0;
        int rc = ps_seg_add_batch(s, docs + i, j - i, true, older, NULL, &added, err, errlen);
        if (rc != PS_OK)
            return rc;
        counts->added += added;
        counts->stale += (j - i) - added;
        i = j;
    }
    return PS_OK;
}
