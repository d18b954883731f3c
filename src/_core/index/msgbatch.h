/*
 * msgbatch.h - a batch of leaf messages on their way from an HTTP body to
 * the log, or from the log to the realtime segment, without a Python
 * object per message (see msgbatch.c for the design).
 *
 *   write side   mb_add_lines (an NDJSON body) or mb_add (one message at a
 *                time), mb_parse (every rule of msgparse.c), mb_route (the
 *                partition of each key), mb_frame (a partition's records in
 *                the log's format, under the log's append lock).
 *   read side    mb_add_records (records the log reader checked), or mb_add
 *                (a Kafka message), mb_parse, mb_apply (index and delete
 *                ops into a segment, in stream order).
 *
 * A batch points into memory it does not own (the body, the log's read
 * buffers): the caller keeps that alive and unchanged while the batch lives.
 */
#ifndef PS_INDEX_MSGBATCH_H
#define PS_INDEX_MSGBATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "logrec.h"
#include "msgparse.h"
#include "segment.h"

#define MB_NONE UINT32_MAX

struct mb_batch;

typedef struct mb_msg {
    const char *raw;    /* the message's bytes (caller-owned) */
    size_t len;
    int32_t partition;  /* read side: the stream's; write side: mb_route's (-1 before) */
    int64_t where;      /* read side: the stream offset; write side: the NDJSON line (1-based) or -1 */
    /* read side: the write batch that parsed these very bytes already
     * (mb_attach), and the message's index there; NULL: parse it here */
    const struct mb_batch *from;
    uint32_t from_index;
} mb_msg;

typedef struct mb_batch {
    mb_msg *msgs;
    uint32_t n, cap;
    mp_result *res;       /* res[0..nparsed): each message's verdict */
    uint32_t nparsed;
    uint32_t *ops;        /* indexes of the good messages, in order */
    uint32_t nops;
    uint32_t ndeletes;    /* delete ops among them */
    uint32_t nbad;
    uint32_t first_bad;   /* index of the first bad message, MB_NONE if none */
    int nomem;            /* mb_parse ran out of memory: the verdicts are incomplete */
    mp_work *work;        /* every message's outputs (keys, text, terms, blobs, errors) */
    /* mb_apply's scratch */
    ps_doc_in *docs;
    uint8_t *is_delete;
    uint32_t docs_cap;
    const char **term_ptrs;
    uint32_t *term_lens;
    size_t terms_cap;
} mb_batch;

/* What applying ops did (the same meaning as message.ApplyResult). */
typedef struct mb_counts {
    uint64_t added;   /* index ops that went in */
    uint64_t stale;   /* index ops dropped: the key holds a newer version */
    uint64_t deleted; /* delete ops that removed a live document */
    uint64_t deletes; /* delete ops applied (deleted or not) */
} mb_counts;

mb_batch *mb_new(void);
void mb_free(mb_batch *b);

/* Add one message; 0, or -1 out of memory. */
int mb_add(mb_batch *b, const char *raw, size_t len, int32_t partition, int64_t where);
/* Add the non-blank lines of an NDJSON body (a line is split at "\n",
 * loses its trailing "\r"s, and is blank if it holds only ASCII
 * whitespace), each with its line number. 0, or -1 out of memory. */
int mb_add_lines(mb_batch *b, const char *body, size_t len);
/* Add the payloads of `count` records framed back to back at buf + pos
 * (which lr_decode checked), offsets first_offset, first_offset + 1, ...
 * 0, or -1 out of memory. */
int mb_add_records(mb_batch *b, const char *buf, size_t pos, uint32_t count, int32_t partition,
                   uint64_t first_offset);

/* Read side: the messages of partition p at offsets first_offset ..
 * first_offset + (src's messages routed to p) - 1 are the records src
 * (a parsed, routed write batch) appended there: take src's verdicts for
 * them instead of parsing them again. Before mb_parse; src must stay alive
 * and parsed while b lives. Returns the messages attached; -1 out of memory. */
int64_t mb_attach(mb_batch *b, const mb_batch *src, int32_t p, uint64_t first_offset);

/* Parse the messages not parsed yet (attached ones copy their verdict).
 * halt: stop after the first bad one.
 * Fills res, ops, nbad, first_bad. MP_OK, or MP_NOMEM (b->nomem set). */
int mb_parse(mb_batch *b, const mp_parser *p, bool halt);

/* Write side: each good message's partition, crc32(key) % nparts (the
 * key's UTF-8, as Leaf.partition_of); counts[p] += messages of p. */
void mb_route(mb_batch *b, uint32_t nparts, uint32_t *counts);

/* Write side: the good messages of partition p, in batch order, framed as
 * log records (logrec.h) from first_offset at file position start_pos.
 * mb_framed_size says how many bytes out needs; idx has room for that
 * partition's message count; *longest is the longest payload (a record
 * holds at most LR_MAX_RECORD_BYTES: the caller refuses longer ones).
 * Returns the bytes written. */
size_t mb_framed_size(const mb_batch *b, int32_t p, uint32_t *count, size_t *longest);
size_t mb_frame(const mb_batch *b, int32_t p, uint64_t first_offset, uint64_t start_pos,
                uint64_t *last_index_pos, char *out, lr_index *idx);

/* Read side: apply ops[op_from..op_to) to the segment in stream order (each
 * run of index ops one ps_seg_add_batch, each delete a versioned
 * ps_seg_delete). PS_OK or the segment's error (ops before the failing run
 * stay applied, as their counts say). */
int mb_apply(mb_batch *b, ps_segment *s, const ps_older *older, uint32_t op_from,
             uint32_t op_to, mb_counts *counts, char *err, size_t errlen);

/* The same for documents already in ps_doc_in form (is_delete[i]: docs[i]
 * is a delete of docs[i].key at docs[i].version). */
int mb_apply_docs(ps_segment *s, const ps_doc_in *docs, const uint8_t *is_delete, uint32_t n,
                  const ps_older *older, mb_counts *counts, char *err, size_t errlen);

#endif
