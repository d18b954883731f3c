/*
 * query.c - query trees, the human-syntax parser, and execution (count,
 * top-K by static score / BM25 / recency) over a view: realtime segments
 * and segment files, oldest first (one segment is a view of one). The
 * concurrency contract is in query.h: one snapshot per query, taken from
 * the newest realtime segment's watermark (acquire) before any posting
 * list is opened; each realtime source is read inside its generation read
 * section; deletion stamps are read relaxed against the snapshot; nothing
 * here writes shared memory.
 *
 * Top-K runs newest first (search_one): sources newest first, one-term
 * queries block by block backward, other trees in descending doc-id
 * ranges, each stretch skipped when its bound cannot beat the heap's
 * worst hit (ties rank the newer document first, so an equal bound
 * cannot either). BM25 over an OR of terms runs MaxScore; an AND of terms
 * that is not scored takes its matches in batches from
 * ps_post_intersect2.
 */
#include "query.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "segfile.h"

/* ---- trees ---------------------------------------------------------------- */

ps_qnode *ps_q_term(const char *term, uint32_t len) {
    ps_qnode *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->kind = PS_Q_TERM;
    q->term = malloc(len ? len : 1);
    if (q->term == NULL) {
        free(q);
        return NULL;
    }
    memcpy(q->term, term, len);
    q->len = len;
    return q;
}

ps_qnode *ps_q_op(int kind, uint32_t nchild) {
    ps_qnode *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->kind = kind;
    q->nchild = nchild;
    if (nchild > 0) {
        q->child = calloc(nchild, sizeof(*q->child));
        if (q->child == NULL) {
            free(q);
            return NULL;
        }
    }
    return q;
}

void ps_q_free(ps_qnode *q) {
    if (q == NULL)
        return;
    for (uint32_t i = 0; i < q->nchild; i++)
        ps_q_free(q->child[i]);
    free(q->child);
    free(q->term);
    free(q);
}

static int check_rec(const ps_qnode *q, int depth, uint32_t *nodes, char *err, size_t errlen) {
    if (q == NULL) {
        ps_errf(err, errlen, "query: missing node");
        return -1;
    }
    if (depth > PS_Q_MAX_DEPTH) {
        ps_errf(err, errlen, "query: nested deeper than %d", PS_Q_MAX_DEPTH);
        return -1;
    }
    if (++*nodes > PS_Q_MAX_NODES) {
        ps_errf(err, errlen, "query: more than %d nodes", PS_Q_MAX_NODES);
        return -1;
    }
    switch (q->kind) {
    case PS_Q_TERM:
        if (q->len < 1 || q->len > PS_TERM_MAX) {
            ps_errf(err, errlen, "query: a term must be 1..%d bytes (got %u)", PS_TERM_MAX, q->len);
            return -1;
        }
        return 0;
    case PS_Q_ALL:
        return 0;
    case PS_Q_AND:
    case PS_Q_OR:
        if (q->nchild < 1) {
            ps_errf(err, errlen, "query: %s needs at least one operand",
                  q->kind == PS_Q_AND ? "and" : "or");
            return -1;
        }
        break;
    case PS_Q_ANDNOT:
        if (q->nchild != 2) {
            ps_errf(err, errlen, "query: andnot needs exactly two operands (include, exclude)");
            return -1;
        }
        break;
    default:
        ps_errf(err, errlen, "query: unknown node kind %d", q->kind);
        return -1;
    }
    for (uint32_t i = 0; i < q->nchild; i++)
        if (check_rec(q->child[i], depth + 1, nodes, err, errlen) != 0)
            return -1;
    return 0;
}

int ps_q_check(const ps_qnode *q, char *err, size_t errlen) {
    uint32_t nodes = 0;
    return check_rec(q, 1, &nodes, err, errlen);
}

/* ---- parser ----------------------------------------------------------------
 *   query    := or_expr END
 *   or_expr  := and_expr ("OR" and_expr)*
 *   and_expr := unary (["AND"] unary)*        adjacent operands are ANDed
 *   unary    := ("NOT" | "-") unary | primary
 *   primary  := "(" or_expr ")" | "*" | QUOTED | WORD
 * Negated operands of an and_expr become its exclude side:
 *   a b -c -d  ->  andnot(and(a, b), or(c, d));  -c alone -> andnot(all, c).
 */

enum { T_END, T_WORD, T_LPAREN, T_RPAREN, T_AND, T_OR, T_NOT, T_MINUS, T_STAR };

typedef struct parser {
    const char *s;
    size_t len, pos;
    int tok;          /* current token */
    size_t tok_pos;
    char *word;       /* T_WORD: unescaped bytes (owned) */
    uint32_t word_len;
    int depth;
    uint32_t terms;   /* terms read so far */
    char *err;
    size_t errlen;
    int failed;
} parser;

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int lex(parser *p) {
    free(p->word);
    p->word = NULL;
    while (p->pos < p->len && is_space(p->s[p->pos]))
        p->pos++;
    p->tok_pos = p->pos;
    if (p->pos >= p->len)
        return p->tok = T_END;
    char c = p->s[p->pos];
    if (c == '(') {
        p->pos++;
        return p->tok = T_LPAREN;
    }
    if (c == ')') {
        p->pos++;
        return p->tok = T_RPAREN;
    }
    if (c == '-') {
        p->pos++;
        return p->tok = T_MINUS;
    }
    if (c == '"') {
        size_t i = p->pos + 1;
        p->word = malloc(p->len - p->pos + 1);
        if (p->word == NULL) {
            ps_errf(p->err, p->errlen, "out of memory");
            p->failed = 1;
            return p->tok = T_END;
        }
        uint32_t n = 0;
        while (i < p->len && p->s[i] != '"') {
            if (p->s[i] == '\\' && i + 1 < p->len)
                i++;
            p->word[n++] = p->s[i++];
        }
        if (i >= p->len) {
            ps_errf(p->err, p->errlen, "query: unterminated quote at position %zu", p->tok_pos);
            p->failed = 1;
            return p->tok = T_END;
        }
        p->pos = i + 1;
        p->word_len = n;
        return p->tok = T_WORD;
    }
    size_t start = p->pos;
    while (p->pos < p->len && !is_space(p->s[p->pos]) && p->s[p->pos] != '(' &&
           p->s[p->pos] != ')' && p->s[p->pos] != '"')
        p->pos++;
    size_t n = p->pos - start;
    const char *w = p->s + start;
    if (n == 3 && memcmp(w, "AND", 3) == 0)
        return p->tok = T_AND;
    if (n == 2 && memcmp(w, "OR", 2) == 0)
        return p->tok = T_OR;
    if (n == 3 && memcmp(w, "NOT", 3) == 0)
        return p->tok = T_NOT;
    if (n == 1 && w[0] == '*')
        return p->tok = T_STAR;
    p->word = malloc(n);
    if (p->word == NULL) {
        ps_errf(p->err, p->errlen, "out of memory");
        p->failed = 1;
        return p->tok = T_END;
    }
    memcpy(p->word, w, n);
    p->word_len = (uint32_t)n;
    return p->tok = T_WORD;
}

static ps_qnode *parse_or(parser *p);

static ps_qnode *fail(parser *p, const char *what) {
    if (!p->failed) {
        if (p->tok == T_END)
            ps_errf(p->err, p->errlen, "query: %s at position %zu (end of query)", what, p->tok_pos);
        else
            ps_errf(p->err, p->errlen, "query: %s at position %zu", what, p->tok_pos);
        p->failed = 1;
    }
    return NULL;
}

static ps_qnode *nomem(parser *p) {
    ps_errf(p->err, p->errlen, "out of memory");
    p->failed = 1;
    return NULL;
}

/* primary, with *neg toggled by each NOT / '-' in front of it */
static ps_qnode *parse_unary(parser *p, int *neg) {
    *neg = 0;
    while (p->tok == T_NOT || p->tok == T_MINUS) {
        *neg ^= 1;
        lex(p);
    }
    if (p->failed)
        return NULL;
    switch (p->tok) {
    case T_WORD: {
        if (p->word_len < 1)
            return fail(p, "empty term");
        /* The same limit as a structured query's (ps_q_check), counted as
         * terms are read so that a huge query is refused before it is
         * built. */
        if (++p->terms > PS_Q_MAX_NODES)
            return fail(p, "more than 4096 terms");
        _Static_assert(PS_Q_MAX_NODES == 4096, "the message above names the limit");
        if (p->word_len > PS_TERM_MAX)
            return fail(p, "term longer than 255 bytes");
        ps_qnode *q = ps_q_term(p->word, p->word_len);
        if (q == NULL)
            return nomem(p);
        lex(p);
        return q;
    }
    case T_STAR: {
        ps_qnode *q = ps_q_op(PS_Q_ALL, 0);
        if (q == NULL)
            return nomem(p);
        lex(p);
        return q;
    }
    case T_LPAREN: {
        size_t open_at = p->tok_pos;
        if (++p->depth > PS_Q_MAX_DEPTH)
            return fail(p, "parentheses nested too deep");
        lex(p);
        ps_qnode *q = parse_or(p);
        if (q == NULL)
            return NULL;
        if (p->tok != T_RPAREN) {
            ps_q_free(q);
            if (!p->failed) {
                ps_errf(p->err, p->errlen, "query: missing ')' for '(' at position %zu", open_at);
                p->failed = 1;
            }
            return NULL;
        }
        p->depth--;
        lex(p);
        return q;
    }
    case T_RPAREN:
        return fail(p, "unexpected ')'");
    default:
        return fail(p, "expected a term");
    }
}

/* Node of `kind` over list[0..n), or list[0] itself when n == 1. */
static ps_qnode *group(parser *p, int kind, ps_qnode **list, uint32_t n) {
    if (n == 1)
        return list[0];
    ps_qnode *q = ps_q_op(kind, n);
    if (q == NULL)
        return nomem(p);
    memcpy(q->child, list, n * sizeof(*list));
    return q;
}

static int push(ps_qnode ***list, uint32_t *n, uint32_t *cap, ps_qnode *q) {
    if (*n == *cap) {
        uint32_t c = *cap ? *cap * 2 : 4;
        ps_qnode **l = realloc(*list, c * sizeof(*l));
        if (l == NULL)
            return -1;
        *list = l;
        *cap = c;
    }
    (*list)[(*n)++] = q;
    return 0;
}

static ps_qnode *parse_and(parser *p) {
    ps_qnode **pos = NULL, **neg = NULL;
    uint32_t npos = 0, nneg = 0, cpos = 0, cneg = 0;
    ps_qnode *result = NULL;
    for (;;) {
        int negated;
        ps_qnode *q = parse_unary(p, &negated);
        if (q == NULL)
            goto out;
        if (negated ? push(&neg, &nneg, &cneg, q) : push(&pos, &npos, &cpos, q)) {
            ps_q_free(q);
            nomem(p);
            goto out;
        }
        if (p->tok == T_AND) {
            lex(p);
            continue;
        }
        if (p->tok == T_END || p->tok == T_OR || p->tok == T_RPAREN)
            break;
    }
    ps_qnode *include;
    if (npos == 0)
        include = ps_q_op(PS_Q_ALL, 0);
    else
        include = group(p, PS_Q_AND, pos, npos);
    if (include == NULL)
        goto out;
    npos = 0;  /* owned by include now */
    if (nneg == 0) {
        result = include;
        goto out;
    }
    ps_qnode *exclude = group(p, PS_Q_OR, neg, nneg);
    if (exclude == NULL) {
        ps_q_free(include);
        goto out;
    }
    nneg = 0;
    result = ps_q_op(PS_Q_ANDNOT, 2);
    if (result == NULL) {
        ps_q_free(include);
        ps_q_free(exclude);
        nomem(p);
        goto out;
    }
    result->child[0] = include;
    result->child[1] = exclude;
out:
    for (uint32_t i = 0; i < npos; i++)
        ps_q_free(pos[i]);
    for (uint32_t i = 0; i < nneg; i++)
        ps_q_free(neg[i]);
    free(pos);
    free(neg);
    return result;
}

static ps_qnode *parse_or(parser *p) {
    ps_qnode **list = NULL;
    uint32_t n = 0, cap = 0;
    ps_qnode *result = NULL;
    for (;;) {
        ps_qnode *q = parse_and(p);
        if (q == NULL)
            goto out;
        if (push(&list, &n, &cap, q)) {
            ps_q_free(q);
            nomem(p);
            goto out;
        }
        if (p->tok != T_OR)
            break;
        lex(p);
    }
    result = group(p, PS_Q_OR, list, n);
    if (result != NULL)
        n = 0;
out:
    for (uint32_t i = 0; i < n; i++)
        ps_q_free(list[i]);
    free(list);
    return result;
}

int ps_q_parse(const char *text, size_t len, ps_qnode **out, char *err, size_t errlen) {
    parser p = {.s = text, .len = len, .err = err, .errlen = errlen};
    *out = NULL;
    lex(&p);
    if (p.tok == T_END && !p.failed) {
        ps_errf(err, errlen, "query: empty");
        return -1;
    }
    ps_qnode *q = parse_or(&p);
    if (q != NULL && p.failed) {  /* a lexer error after the last operand */
        ps_q_free(q);
        q = NULL;
    }
    if (q != NULL && p.tok != T_END) {
        ps_q_free(q);
        q = fail(&p, p.tok == T_RPAREN ? "unbalanced ')'" : "unexpected token");
    }
    free(p.word);
    if (q == NULL)
        return -1;
    *out = q;
    return 0;
}

/* ---- iterators -------------------------------------------------------------- */

enum { IT_EMPTY = 0 };

/*
 * Windows. OR over two or more operands runs window by window, as
 * tantivy's union does: every operand drains its matches in
 * [base, base + OR_WINDOW) into a bitmap (and, when scoring, adds its BM25
 * contribution into acc[]), then the window is read back in doc order.
 * That replaces a min-scan per document with one bit set per posting and
 * a word scan. AND whose rarest operand is dense (at least one document in
 * AND_DENSE) does the same with one bitmap per operand, intersected word by
 * word, instead of leapfrogging with a skip per document; sparse ANDs keep
 * leapfrogging. Invariant: after a fill, every operand drained into the
 * window is positioned at or beyond its end.
 */
#define OR_WINDOW 4096u
#define AND_DENSE 8u

typedef struct or_window {
    uint32_t base;
    uint32_t words;   /* 64-doc words in use: the window's span / 64 */
    uint64_t bits[OR_WINDOW / 64];
    uint64_t touched[OR_WINDOW / 64];  /* where acc[] may be non-zero */
    double acc[OR_WINDOW];  /* scoring only; zero outside `touched` */
} or_window;

struct qexec;

typedef struct qit {
    int kind;           /* PS_Q_* or IT_EMPTY */
    uint32_t doc;       /* current doc, PS_DOC_END when exhausted */
    uint32_t n;
    struct qit **c;
    uint64_t cost;      /* estimated matches, to order AND children */
    double idf;
    uint32_t limit;
    const struct qexec *ex;
    or_window *win;     /* OR with n >= 2 */
    bool terms_only;    /* AND: every operand is a TERM with postings */
    uint32_t *batch;    /* AND of terms, not scored: matches ahead (AND_BATCH) */
    uint32_t bpos, blen;  /* batch[bpos] is doc */
    ps_post_iter post;
} qit;

#define NORM_TABLE 256

typedef struct qexec {
    ps_segment *s;      /* the source being searched: a realtime segment, */
    const ps_fseg *f;   /* or a segment file */
    uint32_t limit;     /* its documents in this query's snapshot */
    uint64_t snap;      /* the snapshot (segment.h): deleted_at <= snap is deleted */
    const double *idfs; /* per TERM node (preorder), from the whole view */
    uint32_t term_seq;  /* it_build's preorder TERM counter */
    double k1, b, avgdl;
    bool scoring;       /* BM25 wanted: OR windows accumulate scores */
    bool lazy;          /* it_build leaves AND/OR/AND-NOT unpositioned: the
                         * caller's it_reset positions them (top-K ranges) */
    int order;          /* PS_ORDER_* of a search; -1 for count */
    const struct qit *root;
    bool have_threshold;  /* the top-K heap is full: ... */
    const struct ps_hit *worst;  /* ... and this is its worst hit (heap root) */
    uint32_t src_index;   /* this source's place in the view (ties: newer first) */
    double k1p1;        /* k1 + 1 */
    double norm[NORM_TABLE];  /* k1 * (1 - b + b * dl / avgdl) for small dl */
} qexec;

static void it_free(qit *it) {
    if (it == NULL)
        return;
    for (uint32_t i = 0; i < it->n; i++)
        it_free(it->c[i]);
    free(it->c);
    free(it->win);
    free(it->batch);
    free(it);
}

static double it_score(const qit *it, uint32_t doc, double norm);

/* BM25's length normalisation of a document of dl tokens. */
static inline double dl_norm(const qexec *ex, uint32_t dl) {
    if (dl < NORM_TABLE)
        return ex->norm[dl];
    return ex->k1 * (1.0 - ex->b + ex->b * dl / ex->avgdl);
}

static inline uint32_t doc_dl(const qexec *ex, uint32_t doc) {
    return ex->f != NULL ? ex->f->dl[doc] : ps_seg_dl(ex->s, doc);
}

static inline double doc_score(const qexec *ex, uint32_t doc) {
    return ex->f != NULL ? ex->f->score[doc] : ps_seg_score(ex->s, doc);
}

static inline bool doc_deleted(const qexec *ex, uint32_t doc) {
    return ex->f != NULL ? ps_fseg_is_deleted(ex->f, doc, ex->snap)
                         : ps_seg_is_deleted(ex->s, doc, ex->snap);
}

static inline double doc_norm(const qexec *ex, uint32_t doc) {
    return dl_norm(ex, doc_dl(ex, doc));
}

/* One term's BM25 contribution. */
static inline double bm25(const qexec *ex, double idf, uint32_t tf, double norm) {
    return idf * tf * ex->k1p1 / (tf + norm);
}

/* The best BM25 one term can give a document within folded bounds: the
 * best over the tf classes of bm25(the class's tf, its shortest length)
 * (posting.h). */
static inline double bm25_bound(const qexec *ex, double idf, const ps_bounds *b) {
    double best = 0.0;
    for (uint32_t c = 0; c < PS_TF_CLASSES; c++) {
        if (b->min_dl[c] == UINT32_MAX)
            continue;
        uint32_t tf = c + 1 < PS_TF_CLASSES && c + 1 < b->max_tf ? c + 1 : b->max_tf;
        double s = bm25(ex, idf, tf, dl_norm(ex, b->min_dl[c]));
        if (s > best)
            best = s;
    }
    return best;
}

static uint32_t it_next(qit *it);
static uint32_t it_advance(qit *it, uint32_t target);

/*
 * Batched AND: an AND of terms whose matches are not scored (count, and
 * top-K by static score or recency) takes them AND_BATCH at a time from
 * ps_post_intersect2 (the two rarest, on their bucket arrays), filtered by
 * any further operand; it_next and it_advance then read the batch.
 * BM25 needs each operand standing on the document for its tf, so a
 * scored AND leapfrogs (and_align_terms).
 */
#define AND_BATCH 256u

static uint32_t batch_fill(qit *it) {
    uint32_t kept = 0, got;
    do {
        got = ps_post_intersect2(&it->c[0]->post, &it->c[1]->post, it->batch, AND_BATCH);
        kept = 0;
        for (uint32_t j = 0; j < got; j++) {
            const uint32_t d = it->batch[j];
            uint32_t c = 2;
            while (c < it->n && ps_post_iter_advance(&it->c[c]->post, d) == d)
                c++;
            if (c == it->n)
                it->batch[kept++] = d;
        }
    } while (kept == 0 && got == AND_BATCH);
    for (uint32_t i = 0; i < it->n; i++)
        it->c[i]->doc = it->c[i]->post.doc;
    it->bpos = 0;
    it->blen = kept;
    return it->doc = kept > 0 ? it->batch[0] : PS_DOC_END;
}

static uint32_t batch_next(qit *it) {
    if (++it->bpos < it->blen)
        return it->doc = it->batch[it->bpos];
    return batch_fill(it);  /* PS_DOC_END once the operands are used up */
}

static uint32_t batch_advance(qit *it, uint32_t target) {
    while (it->bpos < it->blen && it->batch[it->bpos] < target)
        it->bpos++;
    if (it->bpos < it->blen)
        return it->doc = it->batch[it->bpos];
    /* past the batch: the operands leap to target first */
    if (ps_post_iter_advance(&it->c[0]->post, target) == PS_DOC_END)
        return it->doc = PS_DOC_END;
    return batch_fill(it);
}

/* and_align for an AND of terms only (the common case): the same
 * leapfrog straight on the posting iterators, without the per-step
 * dispatch of it_advance; the children's doc fields follow at the end. */
static uint32_t and_align_terms(qit *it) {
    ps_post_iter *lead = &it->c[0]->post;
    uint32_t t = lead->doc;
    while (t != PS_DOC_END) {
        uint32_t i;
        for (i = 1; i < it->n; i++) {
            uint32_t d = ps_post_iter_advance(&it->c[i]->post, t);
            if (d != t) {
                t = ps_post_iter_advance(lead, d);
                break;
            }
        }
        if (i == it->n)
            break;
    }
    for (uint32_t i = 0; i < it->n; i++)
        it->c[i]->doc = it->c[i]->post.doc;
    return it->doc = t;
}

static uint32_t and_align(qit *it) {
    if (it->terms_only)
        return and_align_terms(it);
    uint32_t t = it->c[0]->doc;
    while (t != PS_DOC_END) {
        uint32_t i;
        for (i = 1; i < it->n; i++) {
            uint32_t d = it_advance(it->c[i], t);
            if (d != t) {
                t = it_advance(it->c[0], d);
                break;
            }
        }
        if (i == it->n)
            break;
    }
    return it->doc = t;
}

static uint32_t or_min(qit *it) {
    uint32_t m = PS_DOC_END;
    for (uint32_t i = 0; i < it->n; i++)
        if (it->c[i]->doc < m)
            m = it->c[i]->doc;
    return it->doc = m;
}

static uint32_t andnot_align(qit *it) {
    qit *inc = it->c[0], *exc = it->c[1];
    for (;;) {
        uint32_t d = inc->doc;
        if (d == PS_DOC_END)
            break;
        if (it_advance(exc, d) != d)
            break;
        it_next(inc);
    }
    return it->doc = inc->doc;
}

/* First set bit of the window at or after offset `from`, as a doc id. */
static uint32_t win_scan(qit *it, uint32_t from) {
    or_window *w = it->win;
    uint32_t wi = from / 64;
    if (wi >= w->words)
        return PS_DOC_END;
    uint64_t word = w->bits[wi] & (~0ull << (from % 64));
    for (;;) {
        if (word != 0)
            return w->base + wi * 64 + (uint32_t)__builtin_ctzll(word);
        if (++wi == w->words)
            return PS_DOC_END;
        word = w->bits[wi];
    }
}

/* Drain operand c's matches below `end` into bits (and, if `score`, its
 * BM25 contributions into acc). */
static void win_drain(qit *it, qit *c, uint64_t *bits, uint32_t base, uint64_t end, bool score) {
    or_window *w = it->win;
    const qexec *ex = it->ex;
    if (c->kind == PS_Q_TERM) {
        ps_post_iter *p = &c->post;
        if (score) {
            for (uint32_t d = c->doc; d < end; d = ps_post_iter_next(p)) {
                uint32_t o = d - base;
                bits[o / 64] |= 1ull << (o % 64);
                w->acc[o] += bm25(ex, c->idf, ps_post_iter_tf(p), doc_norm(ex, d));
            }
        } else {
            for (uint32_t d = c->doc; d < end; d = ps_post_iter_next(p)) {
                uint32_t o = d - base;
                bits[o / 64] |= 1ull << (o % 64);
            }
        }
        c->doc = p->doc;
        return;
    }
    for (uint32_t d = c->doc; d < end; d = it_next(c)) {
        uint32_t o = d - base;
        bits[o / 64] |= 1ull << (o % 64);
        if (score)
            w->acc[o] += it_score(c, d, doc_norm(ex, d));
    }
}

/*
 * Window-level block-max pruning (MaxScore over windows) for a top-K whose
 * root is an OR of terms: the best score any document of the window
 * [.., end) could reach is bounded by the operands' block maxima (BM25:
 * the sum of each term's bound; static score: the largest block maximum).
 * When that is below the heap's worst kept score, the window is skipped
 * without draining a posting.
 */
#define PRUNE_WINDOW 512u

static inline int better(const ps_hit *a, const ps_hit *b);

static inline bool window_pruning_on(const qit *it) {
    const qexec *ex = it->ex;
    return it == ex->root && ex->have_threshold && ex->order != PS_ORDER_RECENT;
}

static bool window_prunable(const qit *it, uint64_t end) {
    const qexec *ex = it->ex;
    if (!window_pruning_on(it))
        return false;
    double bound = 0.0, best_static = -INFINITY;
    for (uint32_t i = 0; i < it->n; i++) {
        const qit *c = it->c[i];
        if (c->doc == PS_DOC_END || c->doc >= end)
            continue;
        if (c->kind != PS_Q_TERM)
            return false;
        ps_bounds bd;
        ps_bounds_init(&bd);
        if (!ps_post_iter_bounds(&c->post, end, &bd))
            return false;
        if (bd.max_score > best_static)
            best_static = bd.max_score;
        bound += bm25_bound(ex, c->idf, &bd);
    }
    /* The best a document of the window could be: the bound, at its
     * newest doc id. */
    uint64_t last = end < it->limit ? end : it->limit;
    ps_hit best = {.score = ex->order == PS_ORDER_SCORE ? best_static : bound,
                   .src = ex->src_index, .doc = (uint32_t)(last - 1)};
    return !better(&best, ex->worst);
}

/* Start the next window and fill it: for OR at the lowest operand doc,
 * for AND at the highest (no match can come before it). */
static uint32_t win_fill(qit *it) {
    or_window *w = it->win;
    if (it->ex->scoring) {
        for (uint32_t wi = 0; wi < w->words; wi++)
            for (uint64_t b = w->touched[wi]; b; b &= b - 1)
                w->acc[wi * 64 + (uint32_t)__builtin_ctzll(b)] = 0.0;
    }
    memset(w->bits, 0, w->words * sizeof(uint64_t));
    w->words = OR_WINDOW / 64;
    if (it->kind == PS_Q_OR) {
        uint32_t base;
        uint64_t span;
        for (;;) {
            base = PS_DOC_END;
            for (uint32_t i = 0; i < it->n; i++)
                if (it->c[i]->doc < base)
                    base = it->c[i]->doc;
            if (base == PS_DOC_END)
                return it->doc = PS_DOC_END;
            /* Once pruning is possible, narrower windows give tighter
             * bounds: fewer postings per bound, more windows skipped. */
            span = window_pruning_on(it) ? PRUNE_WINDOW : OR_WINDOW;
            uint64_t end = (uint64_t)base + span;
            if (!window_prunable(it, end))
                break;
            /* No document of this window can enter the top K: leap. */
            for (uint32_t i = 0; i < it->n; i++)
                it_advance(it->c[i], end >= PS_DOC_END ? PS_DOC_END : (uint32_t)end);
        }
        w->base = base;
        w->words = (uint32_t)(span / 64);
        for (uint32_t i = 0; i < it->n; i++)
            win_drain(it, it->c[i], w->bits, base, (uint64_t)base + span, it->ex->scoring);
        memcpy(w->touched, w->bits, w->words * sizeof(uint64_t));
        return it->doc = win_scan(it, 0);
    }
    /* AND: intersect the operands' windows; ANDNOT: the include side's
     * window minus the exclude side's. Move on while empty. */
    const bool andnot = it->kind == PS_Q_ANDNOT;
    for (;;) {
        uint32_t base = 0;
        for (uint32_t i = 0; i < (andnot ? 1 : it->n); i++)
            if (it->c[i]->doc > base)
                base = it->c[i]->doc;
        if (base == PS_DOC_END)
            return it->doc = PS_DOC_END;
        w->base = base;
        uint64_t end = (uint64_t)base + OR_WINDOW;
        uint64_t one[OR_WINDOW / 64];
        uint64_t any = 0;
        memset(w->touched, 0, sizeof(w->touched));
        for (uint32_t i = 0; i < it->n; i++) {
            qit *c = it->c[i];
            it_advance(c, base);
            memset(one, 0, sizeof(one));
            const bool negated = andnot && i == 1;
            win_drain(it, c, one, base, end, it->ex->scoring && !negated);
            any = 0;
            for (uint32_t wi = 0; wi < OR_WINDOW / 64; wi++) {
                if (!negated)
                    w->touched[wi] |= one[wi];
                w->bits[wi] = i == 0 ? one[wi] : negated ? (w->bits[wi] & ~one[wi])
                                                         : (w->bits[wi] & one[wi]);
                any |= w->bits[wi];
            }
            if (!any)
                break;  /* nothing here: the rest need not drain this window */
        }
        if (any)
            return it->doc = win_scan(it, 0);
        if (it->ex->scoring) {
            for (uint32_t wi = 0; wi < OR_WINDOW / 64; wi++)
                for (uint64_t b = w->touched[wi]; b; b &= b - 1)
                    w->acc[wi * 64 + (uint32_t)__builtin_ctzll(b)] = 0.0;
            memset(w->touched, 0, sizeof(w->touched));
        }
        /* operands that did not drain may sit inside the old window */
        for (uint32_t i = 0; i < it->n; i++)
            if (it->c[i]->doc < end)
                it_advance(it->c[i], end > PS_DOC_END ? PS_DOC_END : (uint32_t)end);
    }
}

static uint32_t win_next(qit *it) {
    uint32_t d = win_scan(it, it->doc - it->win->base + 1);
    return d != PS_DOC_END ? (it->doc = d) : win_fill(it);
}

static uint32_t win_advance(qit *it, uint32_t target) {
    or_window *w = it->win;
    if ((uint64_t)target < (uint64_t)w->base + OR_WINDOW) {
        uint32_t d = win_scan(it, target - w->base);
        if (d != PS_DOC_END)
            return it->doc = d;
    } else {
        for (uint32_t i = 0; i < it->n; i++)
            if (it->c[i]->doc < target)
                it_advance(it->c[i], target);
    }
    return win_fill(it);
}

static uint32_t it_next(qit *it) {
    if (it->doc == PS_DOC_END)
        return PS_DOC_END;
    switch (it->kind) {
    case PS_Q_TERM:
        return it->doc = ps_post_iter_next(&it->post);
    case PS_Q_ALL:
        return it->doc = it->doc + 1 < it->limit ? it->doc + 1 : PS_DOC_END;
    case PS_Q_AND:
        if (it->win != NULL)
            return win_next(it);
        if (it->batch != NULL)
            return batch_next(it);
        it_next(it->c[0]);
        return and_align(it);
    case PS_Q_OR: {
        if (it->win != NULL)
            return win_next(it);
        uint32_t d = it->doc;
        for (uint32_t i = 0; i < it->n; i++)
            if (it->c[i]->doc == d)
                it_next(it->c[i]);
        return or_min(it);
    }
    case PS_Q_ANDNOT:
        if (it->win != NULL)
            return win_next(it);
        it_next(it->c[0]);
        return andnot_align(it);
    default:
        return it->doc = PS_DOC_END;
    }
}

static uint32_t it_advance(qit *it, uint32_t target) {
    if (it->doc >= target)
        return it->doc;
    switch (it->kind) {
    case PS_Q_TERM:
        return it->doc = ps_post_iter_advance(&it->post, target);
    case PS_Q_ALL:
        return it->doc = target < it->limit ? target : PS_DOC_END;
    case PS_Q_AND:
        if (it->win != NULL)
            return win_advance(it, target);
        if (it->batch != NULL)
            return batch_advance(it, target);
        it_advance(it->c[0], target);
        return and_align(it);
    case PS_Q_OR:
        if (it->win != NULL)
            return win_advance(it, target);
        for (uint32_t i = 0; i < it->n; i++)
            if (it->c[i]->doc < target)
                it_advance(it->c[i], target);
        return or_min(it);
    case PS_Q_ANDNOT:
        if (it->win != NULL)
            return win_advance(it, target);
        it_advance(it->c[0], target);
        return andnot_align(it);
    default:
        return it->doc = PS_DOC_END;
    }
}

static int cmp_cost(const void *a, const void *b) {
    const qit *x = *(qit *const *)a, *y = *(qit *const *)b;
    return x->cost < y->cost ? -1 : x->cost > y->cost;
}

/* Give `it` a window and fill the first one; on failure free `it` (the
 * caller returns NULL). */
static int win_open(qit *it) {
    it->win = calloc(1, sizeof(or_window));
    if (it->win == NULL) {
        it_free(it);
        return -1;
    }
    if (!it->ex->lazy)
        win_fill(it);
    return 0;
}

/* Open the TERM node's postings in a source (snapshot cut at limit);
 * false when the term is not there. Realtime: inside a generation read
 * section. */
static bool source_postings(ps_segment *s, const ps_fseg *f, const ps_qnode *q, uint32_t limit,
                            ps_post_iter *it) {
    if (f != NULL)
        return ps_fseg_postings(f, q->term, q->len, it) == 0;
    uint64_t h = ps_hash64(q->term, q->len);
    ps_shard *sh = &s->shards[ps_seg_shard_of(s, h)];
    ps_term *t = ps_dict_find(&sh->dict, q->term, q->len, h);
    if (t == NULL)
        return false;
    ps_post_iter_open(it, &t->post, limit);
    return true;
}

/* Compile q into an iterator positioned on its first match. */
static qit *it_build(qexec *ex, const ps_qnode *q) {
    qit *it = calloc(1, sizeof(*it));
    if (it == NULL)
        return NULL;
    it->kind = q->kind;
    it->limit = ex->limit;
    it->ex = ex;
    if (q->nchild > 0) {
        it->c = calloc(q->nchild, sizeof(*it->c));
        if (it->c == NULL) {
            free(it);
            return NULL;
        }
        it->n = q->nchild;
        for (uint32_t i = 0; i < q->nchild; i++) {
            it->c[i] = it_build(ex, q->child[i]);
            if (it->c[i] == NULL) {
                it_free(it);
                return NULL;
            }
        }
    }
    switch (q->kind) {
    case PS_Q_TERM: {
        it->idf = ex->idfs[ex->term_seq++];
        if (!source_postings(ex->s, ex->f, q, ex->limit, &it->post)) {
            it->kind = IT_EMPTY;
            it->doc = PS_DOC_END;
            break;
        }
        it->doc = it->post.doc;
        it->cost = it->post.n;
        break;
    }
    case PS_Q_ALL:
        it->doc = ex->limit > 0 ? 0 : PS_DOC_END;
        it->cost = ex->limit;
        break;
    case PS_Q_AND:
        /* Rarest first: it leads, the others only leap. */
        qsort(it->c, it->n, sizeof(*it->c), cmp_cost);
        it->terms_only = true;
        for (uint32_t i = 0; i < it->n; i++)
            if (it->c[i]->kind != PS_Q_TERM)
                it->terms_only = false;
        it->cost = it->c[0]->cost;
        if (it->n >= 2 && it->c[0]->cost * AND_DENSE >= ex->limit && ex->limit > 0) {
            if (win_open(it) != 0)
                return NULL;
        } else if (it->terms_only && it->n >= 2 && !ex->scoring) {
            it->batch = malloc(AND_BATCH * sizeof(*it->batch));
            if (it->batch == NULL) {
                it_free(it);
                return NULL;
            }
            if (!ex->lazy)
                batch_fill(it);
        } else if (!ex->lazy) {
            and_align(it);
        }
        break;
    case PS_Q_OR:
        for (uint32_t i = 0; i < it->n; i++)
            it->cost += it->c[i]->cost;
        if (it->n >= 2) {
            if (win_open(it) != 0)
                return NULL;
        } else {
            or_min(it);
        }
        break;
    case PS_Q_ANDNOT:
        it->cost = it->c[0]->cost;
        if (it->c[0]->cost * AND_DENSE >= ex->limit && ex->limit > 0 && it->c[1]->cost > 0) {
            if (win_open(it) != 0)
                return NULL;
        } else {
            andnot_align(it);
        }
        break;
    }
    return it;
}

/* BM25 contribution of the positive terms sitting on `doc`. */
static double it_score(const qit *it, uint32_t doc, double norm) {
    if (it->doc != doc)
        return 0.0;
    switch (it->kind) {
    case PS_Q_TERM:
        return bm25(it->ex, it->idf, ps_post_iter_tf(&it->post), norm);
    case PS_Q_OR:
    case PS_Q_AND: {
        if (it->win != NULL)
            return it->win->acc[doc - it->win->base];
        double sum = 0.0;
        for (uint32_t i = 0; i < it->n; i++)
            sum += it_score(it->c[i], doc, norm);
        return sum;
    }
    case PS_Q_ANDNOT:
        if (it->win != NULL)
            return it->win->acc[doc - it->win->base];
        return it_score(it->c[0], doc, norm);
    default:
        return 0.0;
    }
}

/*
 * Ranges. Top-K by score or BM25 walks a source's doc ids in descending
 * ranges [lo, hi), each range forward, all into one heap. Ties rank the
 * newer document first (better() below), so once the heap is full, a
 * range whose best possible score is at most the worst kept one cannot
 * place a document: everything kept already is newer than all of the
 * range. Walking forward instead, an equal score would still enter (a
 * later doc wins the tie), and a term whose documents mostly share the
 * top score (a tag, whose BM25 depends on the length alone) could prune
 * nothing. it_reset positions a compiled tree at the first match >= lo
 * with every iterator ending at hi; it_bound folds the block maxima of the
 * range into a bound on any document's score there.
 */
static void it_reset(qit *it, uint32_t lo, uint32_t hi) {
    it->limit = hi;
    switch (it->kind) {
    case PS_Q_TERM:
        it->doc = ps_post_iter_seek(&it->post, lo, hi);
        return;
    case PS_Q_ALL:
        it->doc = lo < hi ? lo : PS_DOC_END;
        return;
    case IT_EMPTY:
        return;
    default:
        break;
    }
    for (uint32_t i = 0; i < it->n; i++)
        it_reset(it->c[i], lo, hi);
    if (it->win != NULL) {
        win_fill(it);
        return;
    }
    if (it->batch != NULL) {
        batch_fill(it);
        return;
    }
    switch (it->kind) {
    case PS_Q_AND:
        and_align(it);
        break;
    case PS_Q_OR:
        or_min(it);
        break;
    case PS_Q_ANDNOT:
        andnot_align(it);
        break;
    }
}

/* An upper bound on the score (BM25, or static score) of any match of `it`
 * in [lo, hi), into *ub (INFINITY when some posting block keeps no
 * maxima). false when nothing in the range can match (a TERM without
 * postings there, an AND with such an operand). Leaves TERM iterators
 * seeked to lo, ending at hi: it_reset follows before any matching. */
static bool it_bound(qit *it, uint32_t lo, uint32_t hi, double *ub) {
    const qexec *ex = it->ex;
    const bool bm = ex->order == PS_ORDER_BM25;
    switch (it->kind) {
    case PS_Q_TERM: {
        if (ps_post_iter_seek(&it->post, lo, hi) == PS_DOC_END)
            return false;
        ps_bounds bd;
        ps_bounds_init(&bd);
        if (!ps_post_iter_bounds(&it->post, hi, &bd))
            *ub = INFINITY;
        else
            *ub = bm ? bm25_bound(ex, it->idf, &bd) : bd.max_score;
        return true;
    }
    case PS_Q_ALL:
        *ub = bm ? 0.0 : INFINITY;  /* `*` adds nothing to BM25 */
        return lo < hi;
    case PS_Q_AND: {
        double acc = bm ? 0.0 : INFINITY;
        for (uint32_t i = 0; i < it->n; i++) {
            double c;
            if (!it_bound(it->c[i], lo, hi, &c))
                return false;
            acc = bm ? acc + c : (c < acc ? c : acc);
        }
        *ub = acc;
        return true;
    }
    case PS_Q_OR: {
        double acc = bm ? 0.0 : -INFINITY;
        bool any = false;
        for (uint32_t i = 0; i < it->n; i++) {
            double c;
            if (!it_bound(it->c[i], lo, hi, &c))
                continue;
            any = true;
            acc = bm ? acc + c : (c > acc ? c : acc);
        }
        *ub = acc;
        return any;
    }
    case PS_Q_ANDNOT:
        return it_bound(it->c[0], lo, hi, ub);
    default:
        return false;
    }
}

/*
 * A view: the sources one query runs over, oldest first, and what they
 * share. The snapshot is taken once, before anything else: the newest
 * realtime source's committed watermark (acquire) gives snap = base + W;
 * older realtime sources are sealed (their counts final). BM25's
 * statistics are the view's: N and avgdl over every source's documents in
 * the snapshot, df summed over the sources, so that scores from different
 * segments compare.
 */
typedef struct view {
    const ps_src *src;
    uint32_t n;
    uint32_t *limit;     /* per source */
    uint64_t *gen;       /* per source: generation section entered */
    uint64_t snap;
    double k1, b;        /* BM25: the newest realtime source's, or PS_Q_K1/PS_Q_B */
    double avgdl;
    double *idfs;        /* per TERM node, preorder */
    uint32_t nterms;
} view;

static uint32_t count_terms(const ps_qnode *q) {
    if (q->kind == PS_Q_TERM)
        return 1;
    uint32_t n = 0;
    for (uint32_t i = 0; i < q->nchild; i++)
        n += count_terms(q->child[i]);
    return n;
}

static void collect_terms(const ps_qnode *q, const ps_qnode **out, uint32_t *n) {
    if (q->kind == PS_Q_TERM) {
        out[(*n)++] = q;
        return;
    }
    for (uint32_t i = 0; i < q->nchild; i++)
        collect_terms(q->child[i], out, n);
}

static void view_close(view *v) {
    for (uint32_t i = 0; i < v->n; i++)
        if (v->src[i].rt != NULL && v->gen != NULL)
            ps_gen_exit(&v->src[i].rt->gen, v->gen[i]);
    free(v->limit);
    free(v->gen);
    free(v->idfs);
}

/* Open a view for q; with `bm25`, also the terms' idfs (a dictionary
 * look-up per term and source: counts and other orders skip it). */
static int view_open(view *v, const ps_src *src, uint32_t n, const ps_qnode *q, bool bm25) {
    memset(v, 0, sizeof(*v));
    v->src = src;
    v->n = n;
    v->limit = calloc(n ? n : 1, sizeof(*v->limit));
    v->gen = calloc(n ? n : 1, sizeof(*v->gen));
    const uint32_t nterms = count_terms(q);  /* the parser's trees have no node limit */
    const ps_qnode **terms = malloc((nterms + 1) * sizeof(*terms));
    v->idfs = malloc((nterms + 1) * sizeof(*v->idfs));
    if (v->limit == NULL || v->gen == NULL || terms == NULL || v->idfs == NULL) {
        free(terms);
        free(v->limit);
        free(v->gen);
        free(v->idfs);
        return -1;
    }
    v->snap = UINT64_MAX;  /* no realtime source: every stamp is in the past */
    v->k1 = PS_Q_K1;
    v->b = PS_Q_B;
    bool have_snap = false;
    for (uint32_t i = n; i-- > 0;) {
        if (src[i].rt != NULL) {
            ps_segment *s = src[i].rt;
            v->limit[i] = ps_seg_committed(s);
            if (!have_snap) {
                v->snap = ps_seg_snap(s, v->limit[i]);
                v->k1 = s->k1;
                v->b = s->b;
                have_snap = true;
            }
        } else {
            v->limit[i] = src[i].f->ndocs;
        }
    }
    uint64_t docs = 0, dl = 0;
    for (uint32_t i = 0; i < n; i++) {
        docs += v->limit[i];
        if (src[i].rt != NULL) {
            v->gen[i] = ps_gen_enter(&src[i].rt->gen);
            dl += atomic_load_explicit(&src[i].rt->dl_committed, memory_order_relaxed);
        } else {
            dl += src[i].f->total_dl;
        }
    }
    v->avgdl = docs > 0 && dl > 0 ? (double)dl / (double)docs : 1.0;
    collect_terms(q, terms, &v->nterms);
    for (uint32_t t = 0; t < v->nterms; t++) {
        uint64_t df = 0;
        for (uint32_t i = 0; i < n && bm25; i++) {
            ps_post_iter it;
            if (source_postings(src[i].rt, src[i].f, terms[t], v->limit[i], &it))
                df += ps_post_iter_count(&it);
        }
        double N = (double)docs, d = (double)df;
        v->idfs[t] = log(1.0 + (N - d + 0.5) / (d + 0.5));
    }
    free(terms);
    return 0;
}

/* Compile q for source i of the view. */
static qit *exec_open(qexec *ex, const view *v, uint32_t i, const ps_qnode *q, bool scoring,
                      bool lazy) {
    const ps_src *src = &v->src[i];
    ex->s = src->rt;
    ex->f = src->f;
    ex->scoring = scoring;
    ex->lazy = lazy;
    ex->order = -1;
    ex->root = NULL;
    ex->have_threshold = false;
    ex->worst = NULL;
    ex->src_index = i;
    ex->limit = v->limit[i];
    ex->snap = v->snap;
    ex->idfs = v->idfs;
    ex->term_seq = 0;
    ex->k1 = v->k1;
    ex->b = v->b;
    ex->avgdl = v->avgdl;
    ex->k1p1 = ex->k1 + 1.0;
    if (scoring)
        for (uint32_t j = 0; j < NORM_TABLE; j++)
            ex->norm[j] = ex->k1 * (1.0 - ex->b + ex->b * j / ex->avgdl);
    return it_build(ex, q);
}

/* Set bits of a word. Baseline x86-64 has no popcount instruction, and
 * __builtin_popcountll then calls libgcc's table loop: SWAR instead. */
static inline uint64_t popcount64(uint64_t x) {
#if defined(__POPCNT__) || !defined(__x86_64__)
    return (uint64_t)__builtin_popcountll(x);
#else
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (x * 0x0101010101010101ull) >> 56;
#endif
}

static bool source_has_deletes(const ps_src *src) {
    const _Atomic uint32_t *c = src->rt != NULL ? &src->rt->deleted_count
                                                : &src->f->deleted_count;
    return atomic_load_explicit(c, memory_order_relaxed) != 0;
}

static int count_one(const view *v, uint32_t i, const ps_qnode *q, uint64_t *count) {
    /* Deletes that land while the query runs may or may not be seen; if
     * there were none when it started, skip the deletion check entirely. */
    const bool check_deleted = source_has_deletes(&v->src[i]);
    qexec ex;
    qit *it = exec_open(&ex, v, i, q, false, false);
    if (it == NULL)
        return -1;
    uint64_t n = 0;
    if (!check_deleted && it->kind == PS_Q_TERM) {
        n = ps_post_iter_count(&it->post);  /* no walk: the snapshot's size */
    } else if (!check_deleted && it->kind == PS_Q_ALL) {
        n = ex.limit;
    } else if (!check_deleted && it->win != NULL) {
        /* A windowed root (OR, dense AND, AND-NOT): every set bit of a
         * filled window is a match; count them a word at a time. */
        while (it->doc != PS_DOC_END) {
            for (uint32_t wi = 0; wi < it->win->words; wi++)
                n += popcount64(it->win->bits[wi]);
            win_fill(it);
        }
    } else if (it->batch != NULL) {
        /* A batched AND: whole batches at once. */
        while (it->doc != PS_DOC_END) {
            if (!check_deleted) {
                n += it->blen;
            } else {
                for (uint32_t j = 0; j < it->blen; j++)
                    n += !doc_deleted(&ex, it->batch[j]);
            }
            batch_fill(it);
        }
    } else if (!check_deleted) {
        for (uint32_t d = it->doc; d != PS_DOC_END; d = it_next(it))
            n++;
    } else {
        for (uint32_t d = it->doc; d != PS_DOC_END; d = it_next(it))
            n += !doc_deleted(&ex, d);
    }
    it_free(it);
    *count += n;
    return 0;
}

int ps_q_count_view(const ps_src *src, uint32_t n, const ps_qnode *q, uint64_t *count) {
    view v;
    *count = 0;
    if (view_open(&v, src, n, q, false) != 0)
        return -1;
    int rc = 0;
    for (uint32_t i = 0; i < n && rc == 0; i++)
        rc = count_one(&v, i, q, count);
    view_close(&v);
    return rc;
}

int ps_q_count(ps_segment *s, const ps_qnode *q, uint64_t *count) {
    ps_src src = {.rt = s};
    return ps_q_count_view(&src, 1, q, count);
}

/* ---- top-K: a min-heap, the worst kept hit at the root ------------------- */

static inline int better(const ps_hit *a, const ps_hit *b) {
    if (a->score != b->score)
        return a->score > b->score;
    return a->src != b->src ? a->src > b->src : a->doc > b->doc;
}

static void sift_down(ps_hit *h, uint32_t n, uint32_t i) {
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && better(&h[m], &h[l]))
            m = l;
        if (r < n && better(&h[m], &h[r]))
            m = r;
        if (m == i)
            return;
        ps_hit t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void sift_up(ps_hit *h, uint32_t i) {
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!better(&h[p], &h[i]))
            return;
        ps_hit t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}


static int cmp_best_first(const void *a, const void *b) {
    const ps_hit *x = a, *y = b;
    return better(x, y) ? -1 : better(y, x) ? 1 : 0;
}

/* Offer one match to the heap out[0..*n) of capacity k. */
static inline void heap_offer(ps_hit *out, uint32_t *np, uint32_t k, const ps_hit *cand) {
    uint32_t n = *np;
    if (n < k) {
        out[n] = *cand;
        sift_up(out, n);
        *np = n + 1;
    } else if (better(cand, &out[0])) {
        out[0] = *cand;
        sift_down(out, n, 0);
    }
}

/* A match's score in the order asked. */
static inline double match_score(const qexec *ex, const qit *it, uint32_t doc, uint64_t doc_base) {
    switch (ex->order) {
    case PS_ORDER_SCORE:
        return doc_score(ex, doc);
    case PS_ORDER_RECENT:
        return (double)(doc_base + doc);
    default:
        if (it->kind == PS_Q_TERM)
            return bm25(ex, it->idf, ps_post_iter_tf(&it->post), doc_norm(ex, doc));
        return it_score(it, doc, doc_norm(ex, doc));
    }
}

/* The heap is full: remember its worst hit for pruning. */
static inline void note_heap(qexec *ex, const ps_hit *out, uint32_t n, uint32_t k) {
    if (n == k) {
        ex->have_threshold = true;
        ex->worst = &out[0];
    }
}

/*
 * Top-K of a one-term query over one source: its posting blocks from the
 * last to the first, each forward. Before a block is read, the best hit it
 * could give (its maxima's bound, at its last doc id) is compared with
 * the worst kept one; if it would not be better, the block is skipped
 * without touching its entries (block-max pruning), and for order=recent
 * the walk ends there.
 */
static void search_term(qexec *ex, qit *it, uint64_t doc_base, bool check_deleted,
                        ps_hit *out, uint32_t *np, uint32_t k) {
    ps_post_iter *p = &it->post;
    const uint32_t nb = ps_post_iter_nblocks(p);
    uint32_t n = *np;
    for (uint32_t m = nb; m-- > 0;) {
        uint32_t first, end, last;
        ps_bounds bd;
        ps_bounds_init(&bd);
        const int has_bounds = ps_post_iter_block_info(p, m, &first, &end, &last, &bd);
        if (n == k) {
            ps_hit best = {.src = ex->src_index, .doc = last < ex->limit ? last : ex->limit - 1};
            if (ex->order == PS_ORDER_RECENT) {
                best.score = (double)(doc_base + best.doc);
                if (!better(&best, &out[0]))
                    break;  /* older blocks only score lower */
            } else if (has_bounds) {
                best.score = ex->order == PS_ORDER_SCORE ? bd.max_score
                                                         : bm25_bound(ex, it->idf, &bd);
                if (!better(&best, &out[0]))
                    continue;
            }
        }
        uint32_t d = ps_post_iter_goto(p, first);
        for (uint32_t j = first; d != PS_DOC_END;) {
            if (!check_deleted || !doc_deleted(ex, d)) {
                /* No deduplication by key is needed: deletes are versioned
                 * by the snapshot (segment.h), so this query sees one
                 * version per key. */
                ps_hit cand = {.src = ex->src_index, .doc = d,
                               .score = match_score(ex, it, d, doc_base)};
                heap_offer(out, &n, k, &cand);
            }
            if (++j == end)
                break;
            d = ps_post_iter_next(p);  /* crosses a bucket only in realtime block 0 */
        }
        note_heap(ex, out, n, k);
    }
    *np = n;
}

/*
 * MaxScore, for BM25 top-K over an OR of terms, range by range. The
 * operands are sorted by their bound over the range (block maxima); the
 * weakest ones whose bounds together cannot beat the heap's worst hit are
 * "non-essential": a document matching only them cannot enter, so
 * candidates come from the essential operands alone, and a non-essential
 * one is only advanced to a candidate (strongest first, and not at all once
 * the candidate's score so far plus what is left cannot enter). When the
 * rare term of "common OR rare" is all that is essential, the common
 * term's postings are leapt over, not read. A candidate's score is summed
 * in the query's operand order, as everywhere else, so equal documents
 * score bit for bit alike; the pruning tests, whose sums come in another
 * order, allow MS_SLACK for rounding.
 */
#define MS_MAX_TERMS 64u
#define MS_SLACK (1.0 + 1e-9)

static inline bool ms_can_enter(const qexec *ex, double ub, uint32_t doc) {
    if (!ex->have_threshold)
        return true;
    ps_hit best = {.score = ub * MS_SLACK, .src = ex->src_index, .doc = doc};
    return better(&best, ex->worst);
}

static bool maxscore_applies(const qit *it) {
    if (it->kind != PS_Q_OR || it->n < 2 || it->n > MS_MAX_TERMS ||
        it->ex->order != PS_ORDER_BM25)
        return false;
    for (uint32_t i = 0; i < it->n; i++)
        if (it->c[i]->kind != PS_Q_TERM && it->c[i]->kind != IT_EMPTY)
            return false;
    return true;
}

static void maxscore_range(qexec *ex, qit *it, uint32_t lo, uint32_t hi, bool check_deleted,
                           ps_hit *out, uint32_t *np, uint32_t k) {
    uint32_t ord[MS_MAX_TERMS];   /* operand indexes, by bound ascending */
    double ub[MS_MAX_TERMS];      /* per operand index */
    double prefix[MS_MAX_TERMS + 1];  /* prefix[j]: bounds of ord[0..j) */
    double contrib[MS_MAX_TERMS];
    uint32_t m = 0;
    for (uint32_t i = 0; i < it->n; i++) {
        qit *c = it->c[i];
        if (c->kind != PS_Q_TERM || ps_post_iter_seek(&c->post, lo, hi) == PS_DOC_END) {
            c->doc = PS_DOC_END;
            continue;
        }
        c->doc = c->post.doc;
        ps_bounds bd;
        ps_bounds_init(&bd);
        ub[i] = ps_post_iter_bounds(&c->post, hi, &bd) ? bm25_bound(ex, c->idf, &bd) : INFINITY;
        uint32_t j = m++;
        while (j > 0 && ub[ord[j - 1]] > ub[i]) {
            ord[j] = ord[j - 1];
            j--;
        }
        ord[j] = i;
    }
    prefix[0] = 0.0;
    for (uint32_t j = 0; j < m; j++)
        prefix[j + 1] = prefix[j] + ub[ord[j]];
    /* ord[0..ne) are non-essential: together they cannot place a document
     * (judged at the range's newest doc id, the most a tie could ask). */
    uint32_t ne = 0;
    while (ne < m && !ms_can_enter(ex, prefix[ne + 1], hi - 1))
        ne++;
    uint32_t n = *np;
    while (ne < m) {
        uint32_t d = PS_DOC_END;
        for (uint32_t j = ne; j < m; j++)
            if (it->c[ord[j]]->doc < d)
                d = it->c[ord[j]]->doc;
        if (d == PS_DOC_END)
            break;
        const double norm = doc_norm(ex, d);
        double partial = 0.0;
        for (uint32_t i = 0; i < it->n; i++)
            contrib[i] = 0.0;
        for (uint32_t j = ne; j < m; j++) {
            qit *c = it->c[ord[j]];
            if (c->doc == d) {
                contrib[ord[j]] = bm25(ex, c->idf, ps_post_iter_tf(&c->post), norm);
                partial += contrib[ord[j]];
                c->doc = ps_post_iter_next(&c->post);
            }
        }
        bool possible = true;
        for (uint32_t j = ne; j-- > 0;) {
            if (!ms_can_enter(ex, partial + prefix[j + 1], d)) {
                possible = false;
                break;
            }
            qit *c = it->c[ord[j]];
            if (c->doc < d)
                c->doc = ps_post_iter_advance(&c->post, d);
            if (c->doc == d) {
                contrib[ord[j]] = bm25(ex, c->idf, ps_post_iter_tf(&c->post), norm);
                partial += contrib[ord[j]];
            }
        }
        if (!possible || (check_deleted && doc_deleted(ex, d)))
            continue;
        ps_hit cand = {.src = ex->src_index, .doc = d, .score = 0.0};
        for (uint32_t i = 0; i < it->n; i++)
            cand.score += contrib[i];  /* operand order: as it_score sums */
        heap_offer(out, &n, k, &cand);
        note_heap(ex, out, n, k);
        while (ne < m && !ms_can_enter(ex, prefix[ne + 1], hi - 1))
            ne++;
    }
    *np = n;
}

/* Width of the doc-id ranges of a multi-term top-K: small enough that a
 * range's bound (the operands' block maxima folded over it) can fall below
 * the heap, wide enough that seeking every operand per range stays cheap;
 * inside a range, OR windows prune at PRUNE_WINDOW. Lists of a few blocks
 * get one range. */
#define RANGE_MIN 4096u
#define RANGE_BLOCKS 8u

static uint32_t range_width(const qit *it, uint32_t limit) {
    uint64_t cost = it->cost;  /* estimated matches: AND its rarest, OR the sum */
    if (cost <= 4 * PS_POST_BLOCK || limit <= RANGE_MIN)
        return limit > 0 ? limit : 1;
    uint64_t w = (uint64_t)RANGE_BLOCKS * PS_POST_BLOCK * limit / cost;
    return w < RANGE_MIN ? RANGE_MIN : w > limit ? limit : (uint32_t)w;
}

/*
 * Search source i of the view into the shared heap out[0..*n), newest
 * documents first: one-term queries block by block backward
 * (search_term), others in descending doc-id ranges (it_reset), each
 * range forward. Sources are searched newest first too
 * (ps_q_search_view), so whatever the heap holds is newer than every
 * document still to come, and ties rank the newer document first
 * (better()): a block or range whose bound does not beat the worst kept
 * hit cannot place a document, even at an equal score, and is skipped.
 * (Walking forward, an equal score would still enter, and a term whose
 * documents mostly share the top score, a tag, whose BM25 depends on the
 * length alone, could prune nothing.) For order=recent the first k
 * matches are the answer.
 */
static int search_one(const view *v, uint32_t i, const ps_qnode *q, uint32_t k, int order,
                      uint64_t doc_base, ps_hit *out, uint32_t *np) {
    qexec ex;
    /* Lazy: every multi-term walk below starts with it_reset (ranges), and
     * a one-term one positions itself block by block. */
    qit *it = exec_open(&ex, v, i, q, order == PS_ORDER_BM25, true);
    if (it == NULL)
        return -1;
    uint32_t n = *np;
    ex.order = order;
    ex.root = it;
    note_heap(&ex, out, n, k);
    const bool check_deleted = source_has_deletes(&v->src[i]);
    if (it->kind == PS_Q_TERM) {
        search_term(&ex, it, doc_base, check_deleted, out, &n, k);
        it_free(it);
        *np = n;
        return 0;
    }
    const uint32_t width = range_width(it, ex.limit);
    const bool maxscore = maxscore_applies(it);
    for (uint32_t hi = ex.limit; hi > 0 && it->kind != IT_EMPTY;) {
        const uint32_t lo = hi > width ? hi - width : 0;
        if (n == k) {
            /* The best any document of the range could be: the bound,
             * at the range's newest doc id. */
            ps_hit best = {.src = i, .doc = hi - 1};
            if (order == PS_ORDER_RECENT)
                best.score = (double)(doc_base + hi - 1);
            else if (!it_bound(it, lo, hi, &best.score))
                goto next_range;
            if (!better(&best, &out[0])) {
                if (order == PS_ORDER_RECENT)
                    break;  /* older ranges only score lower */
                goto next_range;
            }
        }
        if (maxscore) {
            maxscore_range(&ex, it, lo, hi, check_deleted, out, &n, k);
            goto next_range;
        }
        it_reset(it, lo, hi);
        for (uint32_t d = it->doc; d != PS_DOC_END; d = it_next(it)) {
            if (check_deleted && doc_deleted(&ex, d))
                continue;
            ps_hit cand = {.src = i, .doc = d, .score = match_score(&ex, it, d, doc_base)};
            heap_offer(out, &n, k, &cand);
            note_heap(&ex, out, n, k);
        }
    next_range:
        hi = lo;
    }
    it_free(it);
    *np = n;
    return 0;
}

int ps_q_search_view(const ps_src *src, uint32_t nsrc, const ps_qnode *q, uint32_t k, int order,
                     ps_hit *out, uint32_t *nout) {
    *nout = 0;
    view v;
    if (view_open(&v, src, nsrc, q, order == PS_ORDER_BM25) != 0)
        return -1;
    uint32_t n = 0;
    uint64_t doc_base = 0;
    int rc = 0;
    /* Newest first: for order=recent (and in general, as recent documents
     * tend to score) the heap fills with what wins, so the older sources
     * start pruned. */
    uint64_t *bases = malloc((nsrc ? nsrc : 1) * sizeof(*bases));
    if (bases == NULL) {
        view_close(&v);
        return -1;
    }
    for (uint32_t i = 0; i < nsrc; i++) {
        bases[i] = doc_base;
        doc_base += v.limit[i];
    }
    for (uint32_t i = nsrc; i-- > 0 && rc == 0;)
        rc = search_one(&v, i, q, k, order, bases[i], out, &n);
    free(bases);
    view_close(&v);
    if (rc != 0)
        return -1;
    qsort(out, n, sizeof(*out), cmp_best_first);
    *nout = n;
    return 0;
}

int ps_q_search(ps_segment *s, const ps_qnode *q, uint32_t k, int order, ps_hit *out,
                uint32_t *nout) {
    ps_src src = {.rt = s};
    return ps_q_search_view(&src, 1, q, k, order, out, nout);
}
