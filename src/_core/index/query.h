/*
 * query.h - queries over a view of segments (realtime segments and segment
 * files, segfile.h): the query tree, its parser, and count / top-K
 * execution.
 *
 * A query is a tree of ps_qnode: TERM (exact bytes), AND, OR (one or more
 * children), ANDNOT (include, exclude), ALL (every document). The tree is
 * built by the parser (ps_q_parse, the human syntax documented in
 * pinstack/_core/_index.pyi) or node by node (the structured form, built by
 * the Cython layer); it owns its term bytes and is freed with ps_q_free.
 *
 * Execution (query.c) compiles the tree into iterators over posting
 * snapshots, source by source: TERM walks one posting list (a realtime
 * bucket list or a file's blocks) and leaps with its skip list; AND
 * leapfrogs its children, rarest first; OR merges; ANDNOT skips what the
 * exclude side reaches. The whole query sees one snapshot: the newest
 * realtime segment's committed watermark, loaded once (acquire) at the
 * start, as the global sequence base + W (segment.h): documents are either
 * entirely in or entirely out, and a key being updated shows one version.
 * Deleted documents are filtered by the collector (count, top-K) against
 * that snapshot. BM25 statistics (N, avgdl, df) are the whole view's, and
 * one top-K heap is shared by all sources.
 *
 * Threads: any number of queries at once, on any threads, concurrently
 * with the writers; each runs inside a generation read section and takes
 * no lock. Call without the GIL.
 */
#ifndef PS_INDEX_QUERY_H
#define PS_INDEX_QUERY_H

#include <stddef.h>
#include <stdint.h>

#include "segfile.h"
#include "segment.h"

enum { PS_Q_TERM = 1, PS_Q_AND, PS_Q_OR, PS_Q_ANDNOT, PS_Q_ALL };
enum { PS_ORDER_SCORE = 0, PS_ORDER_BM25, PS_ORDER_RECENT };

#define PS_Q_MAX_DEPTH 64
#define PS_Q_MAX_NODES 4096
#define PS_K_MAX 10000

typedef struct ps_qnode {
    int kind;
    uint32_t nchild;
    struct ps_qnode **child;
    char *term;       /* TERM: owned copy */
    uint32_t len;
} ps_qnode;

/* Builders; NULL when out of memory. An op node starts with nchild NULL
 * children for the caller to fill. */
ps_qnode *ps_q_term(const char *term, uint32_t len);
ps_qnode *ps_q_op(int kind, uint32_t nchild);
void ps_q_free(ps_qnode *q);
/* Shape checks (arity, term length, depth, size); 0 or -1 with err. */
int ps_q_check(const ps_qnode *q, char *err, size_t errlen);
/* Parse the human syntax; 0 with *out, or -1 with err naming the
 * position. */
int ps_q_parse(const char *text, size_t len, ps_qnode **out, char *err, size_t errlen);

typedef struct ps_hit {
    uint32_t src;   /* index of the source in the view (0 for one segment) */
    uint32_t doc;
    double score;
} ps_hit;

/* BM25 parameters of segment files (the realtime segment has its own). */
#define PS_Q_K1 1.2
#define PS_Q_B 0.75


/* Number of live documents matching q. 0, or -1 when out of memory. */
int ps_q_count(ps_segment *s, const ps_qnode *q, uint64_t *count);
/* Best k (1..PS_K_MAX) live matches, best first (one version per key, by
 * construction: see segment.h). 0, or -1 when out of memory. */
int ps_q_search(ps_segment *s, const ps_qnode *q, uint32_t k, int order, ps_hit *out,
                uint32_t *nout);

/* The same over a view: src[0..n), oldest first, the newest realtime
 * segment (if any) being the one that gives the snapshot. Ties and
 * order="recent" rank newer sources' documents first; BM25 statistics
 * are the view's (query.c). */
int ps_q_count_view(const ps_src *src, uint32_t n, const ps_qnode *q, uint64_t *count);
int ps_q_search_view(const ps_src *src, uint32_t n, const ps_qnode *q, uint32_t k, int order,
                     ps_hit *out, uint32_t *nout);

#endif
