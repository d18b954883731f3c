/*
 * proto_meta.c - memcached's meta commands, as memcached 1.6.18 answers
 * them:
 *     mg <key> <flags>*            get    -> VA <len> <flags> / HD <flags> / EN
 *     ms <key> <datalen> <flags>*  set    -> HD / NS / EX / NF
 *     md <key> <flags>*            delete -> HD / NF / EX
 *     ma <key> <flags>*            arithmetic -> HD / VA / NF / NS / EX
 *     mn                           no-op  -> MN (marks the end of a pipeline)
 *     me <key> [b]                 debug  -> ME <key> exp= la= cas= fetch= cls= size= / EN
 * proto_text.c tokenises the line and calls proto_meta_dispatch(); the
 * tokeniser, number parsers and base64 live there (proto.h).
 *
 * FLAGS. Every word after the key (after the data length for ms) is a
 * flag: its first byte names it, the rest is its argument ("T30", "Oabc",
 * "MA"); extra bytes after an argument-less flag are ignored ("vv" is
 * "v"). meta_preparse() validates them all first, exactly like memcached:
 * an unknown or repeated flag stops at once ("CLIENT_ERROR invalid flag" /
 * "duplicate flag"); a bad argument is remembered and parsing goes on, so
 * the error of the last bad argument is the one reported. md and ma report
 * every preparse failure as "CLIENT_ERROR invalid or duplicate flag". Then
 * the command walks the words again, in request order, to build the
 * answer: returned flags come back in the order they were asked.
 *
 * QUIET MODE (q). What memcached 1.6.18 suppresses, and we with it (by
 * marking the resp skip): mg: EN; ms: HD; md: HD; ma: HD/VA of a delta
 * applied to an existing item. Everything else is still sent (an mg hit, a
 * ma miss "NF", every error).
 *
 * STALE-WHILE-REVALIDATE. "md <key> I" marks the item stale (ITEM_STALE),
 * gives it a new CAS, clears ITEM_TOKEN_SENT and optionally sets a TTL
 * (T) instead of deleting it. A later mg of a stale item answers X, and W
 * to the first client (it sets ITEM_TOKEN_SENT); later ones get Z. "ms ...
 * C<cas> I" stores over a stale item with a CAS older than the current one,
 * keeping the item stale (the winner's own refresh). mg N<ttl> creates an
 * empty item on a miss and answers W (the client should fill it); mg
 * R<ttl> answers W when the item's remaining TTL is below the threshold
 * and no token was handed out yet.
 *
 * LOCKING AND REFERENCES. mg, md, ma and the stale store take the item
 * lock of the key themselves (item_lock(item_hash(key))) and use the do_
 * calls, so that reading the item, changing its flags/TTL/CAS and creating
 * it on a miss happen as one step. memcached locks mg only for N T R l h;
 * we always do, because any stale hit sets ITEM_TOKEN_SENT, and the cost
 * is the lock item_get() takes anyway. The LRU bump still happens where
 * memcached does it: inside the lookup, or after the answer is built when
 * one of N T R l h is given (so h and l report the state before the read).
 * References from do_item_get()/item_alloc() are dropped with
 * item_release() only after item_unlock(); an mg that returns the value
 * hands its reference to the resp instead (resp_set_item). ms follows the
 * text set path: the item belongs to conn_read_value() and then to
 * meta_value_done(), which releases it after storing.
 *
 * STATS this file counts: mg hit: get_cmds and the class's get_hits, or
 * with T: touch_cmds and the class's touch_hits; mg miss: get_cmds and
 * get_misses (an autovivified miss counts as a hit); ms: store_too_large /
 * store_no_memory on allocation failure, set_cmds of the class for a value
 * without "\r\n"; md: the class's delete_hits (not for I) / delete_misses
 * (miss or CAS mismatch); ma: incr_misses or decr_misses on a miss without
 * N; me: meta_cmds (memcached 1.6.18 counts no other meta command in
 * cmd_meta). The engine counts the rest (items.h, "WHO COUNTS WHAT"); an
 * item created by mg N / ma N is linked directly, so it is not a cmd_set,
 * as in memcached.
 *
 * DELIBERATE DIFFERENCES FROM MEMCACHED 1.6.18.
 *   - An item created by mg N or ma N for a base64 key ("b") is marked
 *     ITEM_KEY_BINARY, so a later "k" returns it encoded; memcached returns
 *     the raw key bytes for those, which can break the response line.
 *   - ma T<ttl> sets the TTL of the item that holds the new value;
 *     memcached sets it on the old item when the delta had to reallocate
 *     (e.g. 9 -> 10), so the TTL is silently lost there.
 *   - The E, S and x flags of later memcached versions are unknown to
 *     1.6.18 and answered "CLIENT_ERROR invalid flag" here too.
 */
#include <limits.h>
#include <stdatomic.h>
#include <string.h>

#include "proto.h"
#include "conn.h"
#include "items.h"
#include "assoc.h"
#include "stats.h"
#include "settings.h"

/* ====================================================================== */
/* flag preparse                                                          */
/* ====================================================================== */

typedef struct {
    bool has_error;          /* a flag argument was bad (errstr says which) */
    bool no_update;          /* u: do not bump the LRU / mark fetched */
    bool late_bump;          /* N T R l h: bump after answering (memcached's
                                "locked"), so h/l show the state before */
    bool vivify;             /* N: create on miss */
    bool value;              /* v: return the value */
    bool set_stale;          /* I: invalidate (md) / store stale (ms) */
    bool no_reply;           /* q */
    bool has_cas;            /* C given */
    bool new_ttl;            /* T given */
    bool key_binary;         /* b: key was base64, now decoded in place */
    char mode;               /* M<c>: ms/ma mode switch, 0 if not given */
    rel_time_t exptime;      /* T */
    rel_time_t autoviv_exptime; /* N */
    rel_time_t recache_time; /* R */
    uint32_t client_flags;   /* F */
    uint64_t req_cas;        /* C */
    uint64_t delta;          /* D (ma) */
    uint64_t initial;        /* J (ma) */
} meta_flags;

#define ERR_FORMAT "CLIENT_ERROR bad command line format"
#define ERR_TOKEN  "CLIENT_ERROR bad token in command line format"

/* Parse the argument of a time flag (T, N, R) into a relative time. */
static bool flag_time(const proto_token *w, rel_time_t *out) {
    int32_t secs;
    if (!proto_strtol(w->value + 1, w->length - 1, &secs))
        return false;
    *out = realtime(secs);
    return true;
}

/* memcached's _meta_flag_preparse(): see the comment at the top. Returns
 * false on error with *errstr set. Decodes a base64 key in place. */
static bool meta_preparse(proto_tokens *t, size_t start, meta_flags *of,
                          const char **errstr) {
    bool seen[128] = {false};

    for (size_t i = start; i < t->nwords; i++) {
        proto_token *w = &t->tok[i];
        unsigned char flag = (unsigned char)w->value[0];
        if (flag >= 127 || seen[flag]) {
            *errstr = "CLIENT_ERROR duplicate flag";
            return false;
        }
        seen[flag] = true;
        switch (flag) {
        case 'b': {
            proto_token *key = &t->tok[1];
            key->length = proto_base64_decode(key->value, key->length, key->value);
            if (key->length == 0) {
                *errstr = "CLIENT_ERROR error decoding key";
                of->has_error = true;
            }
            of->key_binary = true;
            break;
        }
        case 'N':
            of->vivify = true;
            of->late_bump = true;
            if (!flag_time(w, &of->autoviv_exptime)) {
                *errstr = ERR_TOKEN;
                of->has_error = true;
            }
            break;
        case 'T':
            of->late_bump = true;
            if (!flag_time(w, &of->exptime)) {
                *errstr = ERR_TOKEN;
                of->has_error = true;
            } else {
                of->new_ttl = true;
            }
            break;
        case 'R':
            of->late_bump = true;
            if (!flag_time(w, &of->recache_time)) {
                *errstr = ERR_TOKEN;
                of->has_error = true;
            }
            break;
        case 'l': case 'h':
            of->late_bump = true;
            break;
        case 'O': case 'P': case 'L':
        case 'k': case 's': case 't': case 'c': case 'f':
            break;
        case 'v':
            of->value = true;
            break;
        case 'u':
            of->no_update = true;
            break;
        case 'q':
            of->no_reply = true;
            break;
        case 'F':
            /* memcached keeps the generic message for a bad F */
            if (!proto_strtoul(w->value + 1, w->length - 1, &of->client_flags))
                of->has_error = true;
            break;
        case 'C':
            if (!proto_strtoull(w->value + 1, w->length - 1, &of->req_cas)) {
                *errstr = ERR_TOKEN;
                of->has_error = true;
            } else {
                of->has_cas = true;
            }
            break;
        case 'M':
            if (w->length != 2) {
                *errstr = "CLIENT_ERROR incorrect length for M token";
                of->has_error = true;
            } else {
                of->mode = w->value[1];
            }
            break;
        case 'J':
            if (!proto_strtoull(w->value + 1, w->length - 1, &of->initial)) {
                *errstr = "CLIENT_ERROR invalid numeric initial value";
                of->has_error = true;
            }
            break;
        case 'D':
            if (!proto_strtoull(w->value + 1, w->length - 1, &of->delta)) {
                *errstr = "CLIENT_ERROR invalid numeric delta value";
                of->has_error = true;
            }
            break;
        case 'I':
            of->set_stale = true;
            break;
        default:
            *errstr = "CLIENT_ERROR invalid flag";
            return false;
        }
    }
    return !of->has_error;
}

static inline rel_time_t now(void) {
    return atomic_load_explicit(&current_time, memory_order_relaxed);
}

/* " t<remaining seconds>", or " t-1" for an item that never expires */
static void pl_ttl(proto_line *l, const item *it) {
    pl_add(l, " t", 2);
    rel_time_t exptime = proto_exptime(it);
    if (exptime == 0)
        pl_add(l, "-1", 2);
    else
        pl_u64(l, (uint32_t)(exptime - now()));
}

/* " <opaque>" - false when the opaque is too long */
static bool pl_opaque(proto_line *l, const proto_token *w) {
    if (w->length > PROTO_META_MAX_OPAQUE)
        return false;
    pl_char(l, ' ');
    pl_add(l, w->value, w->length);
    return true;
}

static void emit_line(conn *c, proto_line *l, bool skip) {
    pl_add(l, "\r\n", 2);
    mc_resp *r = proto_emit(c, l);
    if (r != NULL && skip)
        r->skip = true;
}

/* ====================================================================== */
/* mg                                                                     */
/* ====================================================================== */

static void process_mget(conn *c, proto_tokens *t) {
    const char *errstr = ERR_FORMAT;
    meta_flags of = {0};

    if (proto_ntokens(t) < 3) {
        out_string(c, "ERROR");
        return;
    }
    if (t->tok[1].length > PS_KEY_MAX_LENGTH) {
        out_errstring(c, ERR_FORMAT);
        return;
    }
    if (proto_ntokens(t) > PROTO_META_MAX_TOKENS) {
        out_errstring(c, "CLIENT_ERROR options flags are too long");
        return;
    }
    if (!meta_preparse(t, 2, &of, &errstr)) {
        out_errstring(c, errstr);
        return;
    }
    c->noreply = of.no_reply;

    const char *key = t->tok[1].value;
    size_t nkey = t->tok[1].length;
    uint32_t hv = item_hash(key, nkey);
    proto_line l;
    pl_init(&l);

    item_lock(hv);
    /* the common case refreshes the item during the lookup, as memcached's
     * mg does; with late_bump the bump waits until the answer is built */
    item *it = do_item_get(key, nkey, hv, !of.late_bump && !of.no_update);
    bool created = false;
    if (it == NULL && of.vivify) {
        alloc_result why;
        it = item_alloc(key, nkey, 0, 0, 2, &why);
        if (it != NULL) {
            struct iovec iov[1];
            if (item_value_iov(it, iov, 1) == 1)
                memcpy(iov[0].iov_base, "\r\n", 2);
            if (of.key_binary)
                item_flags_set(it, ITEM_KEY_BINARY);
            do_item_link(it, hv);
            created = true;
        }
    }

    if (it == NULL) {
        item_unlock(hv);
        proto_count_get_miss();
        pl_add(&l, "EN", 2);
        for (size_t i = 2; i < t->nwords; i++) {
            const proto_token *w = &t->tok[i];
            if (w->value[0] == 'O' && !pl_opaque(&l, w)) {
                out_errstring(c, "CLIENT_ERROR opaque token too long");
                return;
            }
            if (w->value[0] == 'k')
                pl_meta_key(&l, key, nkey, of.key_binary);
        }
        emit_line(c, &l, c->noreply);
        return;
    }

    bool won = false, ttl_set = false;
    if (of.value) {
        pl_add(&l, "VA ", 3);
        pl_u64(&l, it->nbytes - 2);
    } else {
        pl_add(&l, "HD", 2);
    }
    for (size_t i = 2; i < t->nwords; i++) {
        const proto_token *w = &t->tok[i];
        switch (w->value[0]) {
        case 'T':
            ttl_set = true;
            proto_set_exptime(it, of.exptime);
            break;
        case 'N':
            if (created) {
                proto_set_exptime(it, of.autoviv_exptime);
                won = true;
            }
            break;
        case 'R':
            /* recache: win when the TTL fell under the threshold */
            if ((item_flags(it) & ITEM_TOKEN_SENT) == 0 && !created &&
                proto_exptime(it) != 0 && proto_exptime(it) < of.recache_time)
                won = true;
            break;
        case 's':
            pl_add(&l, " s", 2);
            pl_u64(&l, it->nbytes - 2);
            break;
        case 't':
            pl_ttl(&l, it);
            break;
        case 'c':
            pl_add(&l, " c", 2);
            pl_u64(&l, it->cas);
            break;
        case 'f':
            pl_add(&l, " f", 2);
            pl_u64(&l, it->client_flags);
            break;
        case 'l':
            pl_add(&l, " l", 2);
            pl_u64(&l, (uint32_t)(now() - item_time(it)));
            break;
        case 'h':
            pl_add(&l, (item_flags(it) & ITEM_FETCHED) ? " h1" : " h0", 3);
            break;
        case 'O':
            if (!pl_opaque(&l, w)) {
                item_unlock(hv);
                item_release(it);
                out_errstring(c, "CLIENT_ERROR opaque token too long");
                return;
            }
            break;
        case 'k':
            pl_meta_key(&l, ITEM_key(it), it->nkey,
                        (item_flags(it) & ITEM_KEY_BINARY) != 0);
            break;
        }
    }
    /* Z before X, and never W with Z: a token went out already */
    uint16_t fl = item_flags(it);
    if (fl & ITEM_TOKEN_SENT)
        pl_add(&l, " Z", 2);
    if (fl & ITEM_STALE) {
        pl_add(&l, " X", 2);
        if ((fl & ITEM_TOKEN_SENT) == 0)
            won = true;
    }
    if (won) {
        pl_add(&l, " W", 2);
        item_flags_set(it, ITEM_TOKEN_SENT);
    }
    if (of.late_bump && !of.no_update)
        do_item_bump(it, hv);
    item_unlock(hv);

    if (ttl_set) {
        STATS_INCR(touch_cmds);
        SLAB_STATS_INCR(ITEM_CLSID(it), touch_hits);
    } else {
        proto_count_get_hit(it);
    }

    pl_add(&l, "\r\n", 2);
    mc_resp *r = proto_emit(c, &l);
    if (r != NULL && of.value)
        resp_set_item(r, it);           /* the resp owns the reference now */
    else
        item_release(it);
}

/* ====================================================================== */
/* ms                                                                     */
/* ====================================================================== */

/* What meta_value_done() needs once the command line is gone. */
typedef struct {
    uint8_t op;                  /* store_op */
    bool noreply;                /* q */
    bool stale;                  /* I with a CAS: may store over a newer CAS */
    uint8_t nret;                /* return flags asked, in order */
    char ret[3];                 /* of 'O', 'k', 'c' (each at most once) */
    uint8_t opaque_len;
    char opaque[PROTO_META_MAX_OPAQUE];
} meta_store_state;

_Static_assert(sizeof(meta_store_state) <= CONN_PROTO_STATE, "proto_state too small");

/* ms ... C<cas> I: a CAS compare that also accepts a nonzero CAS *older*
 * than the stored one; the new value then keeps the old TTL, is marked
 * stale and keeps the old item's token-sent mark (memcached's set_stale
 * store; C0 compares as "no CAS", which a CAS store answers EX). */
static store_result store_stale_cas(item *it, uint64_t *cas_out) {
    uint32_t hv = item_hash(ITEM_key(it), it->nkey);
    item_lock(hv);
    item *old = do_item_get(ITEM_key(it), it->nkey, hv, false);
    if (old != NULL && it->cas != 0 && it->cas < old->cas) {
        proto_set_exptime(it, proto_exptime(old));
        item_flags_set(it, (uint16_t)(ITEM_STALE | (item_flags(old) & ITEM_TOKEN_SENT)));
        it->cas = old->cas;              /* so the compare succeeds */
    }
    store_result ret = do_item_store(it, STORE_CAS, hv, cas_out);
    item_unlock(hv);
    if (old != NULL)
        item_release(old);
    return ret;
}

static void meta_value_done(conn *c, item *it, bool ok) {
    const meta_store_state *st = (const meta_store_state *)c->proto_state;
    proto_line l;
    uint64_t cas = 0;
    bool skip = false;

    c->noreply = false;
    if (!ok) {
        SLAB_STATS_INCR(ITEM_CLSID(it), set_cmds);
        out_errstring(c, "CLIENT_ERROR bad data chunk");
        item_release(it);
        return;
    }

    store_result ret = st->stale ? store_stale_cas(it, &cas)
                                 : item_store(it, (store_op)st->op, &cas);
    pl_init(&l);
    switch (ret) {
    case STORED:
        pl_add(&l, "HD", 2);
        skip = st->noreply;
        break;
    case EXISTS:
        pl_add(&l, "EX", 2);
        break;
    case NOT_FOUND:
        pl_add(&l, "NF", 2);
        break;
    case NOT_STORED:
    case TOO_LARGE:
    case NO_MEMORY:
        pl_add(&l, "NS", 2);
        break;
    default:
        out_errstring(c, "SERVER_ERROR Unhandled storage type.");
        item_release(it);
        return;
    }
    if (ret != STORED)
        cas = 0;                        /* memcached reports c0 then */
    for (unsigned i = 0; i < st->nret; i++) {
        switch (st->ret[i]) {
        case 'O':
            pl_char(&l, ' ');
            pl_add(&l, st->opaque, st->opaque_len);
            break;
        case 'k':
            pl_meta_key(&l, ITEM_key(it), it->nkey,
                        (item_flags(it) & ITEM_KEY_BINARY) != 0);
            break;
        case 'c':
            pl_add(&l, " c", 2);
            pl_u64(&l, cas);
            break;
        }
    }
    emit_line(c, &l, skip);
    item_release(it);
}

static void process_mset(conn *c, proto_tokens *t) {
    const char *errstr = ERR_FORMAT;
    meta_flags of = {0};
    int32_t vlen;

    if (proto_ntokens(t) < 3) {
        out_string(c, "ERROR");
        return;
    }
    if (t->tok[1].length > PS_KEY_MAX_LENGTH || proto_ntokens(t) == 3) {
        out_errstring(c, ERR_FORMAT);
        return;
    }
    if (proto_ntokens(t) > PROTO_META_MAX_TOKENS) {
        out_errstring(c, "CLIENT_ERROR options flags too long");
        return;
    }
    /* Errors before the length is known leave the value on the wire, to be
     * parsed as commands (memcached does the same). */
    if (!proto_strtol(t->tok[2].value, t->tok[2].length, &vlen) ||
        vlen < 0 || vlen > INT_MAX - 2) {
        out_errstring(c, ERR_FORMAT);
        return;
    }
    size_t nbytes = (size_t)vlen + 2;

    meta_store_state *st = (meta_store_state *)c->proto_state;
    bool has_error = false;
    store_op op = STORE_SET;
    alloc_result why = ALLOC_OK;
    const char *key;
    size_t nkey;
    item *it;

    if (!meta_preparse(t, 3, &of, &errstr))
        goto error;

    st->nret = 0;
    st->opaque_len = 0;
    for (size_t i = 2; i < t->nwords; i++) {
        const proto_token *w = &t->tok[i];
        switch (w->value[0]) {
        case 'O':
            if (w->length > PROTO_META_MAX_OPAQUE) {
                errstr = "CLIENT_ERROR opaque token too long";
                has_error = true;
                break;
            }
            memcpy(st->opaque, w->value, w->length);
            st->opaque_len = (uint8_t)w->length;
            st->ret[st->nret++] = 'O';
            break;
        case 'k':
        case 'c':
            st->ret[st->nret++] = w->value[0];
            break;
        }
    }

    switch (of.mode) {
    case 0:
    case 'S': op = STORE_SET; break;
    case 'E': op = STORE_ADD; break;
    case 'A': op = STORE_APPEND; break;
    case 'P': op = STORE_PREPEND; break;
    case 'R': op = STORE_REPLACE; break;
    default:
        errstr = "CLIENT_ERROR invalid mode for ms M token";
        goto error;
    }
    /* a CAS turns set and replace into a compare-and-swap */
    if (of.has_cas && (op == STORE_SET || op == STORE_REPLACE))
        op = STORE_CAS;
    if (has_error)
        goto error;

    key = t->tok[1].value;               /* decoded by preparse if "b" */
    nkey = t->tok[1].length;
    it = item_alloc(key, nkey, of.client_flags, of.exptime, nbytes, &why);
    if (it == NULL) {
        if (why == ALLOC_TOO_LARGE) {
            errstr = "SERVER_ERROR object too large for cache";
            STATS_INCR(store_too_large);
        } else {
            errstr = "SERVER_ERROR out of memory storing object";
            STATS_INCR(store_no_memory);
        }
        proto_unlink_key(key, nkey);    /* memcached does, whatever the mode */
        goto error;
    }
    it->cas = of.req_cas;               /* compare value (0: none) */
    if (of.key_binary)
        item_flags_set(it, ITEM_KEY_BINARY);

    st->op = (uint8_t)op;
    st->noreply = of.no_reply;
    st->stale = of.set_stale && op == STORE_CAS;
    conn_read_value(c, it, meta_value_done);    /* last action: may call back now */
    return;

error:
    out_errstring(c, errstr);
    conn_swallow(c, nbytes);
}

/* ====================================================================== */
/* md                                                                     */
/* ====================================================================== */

/* The opening checks md and ma share, in memcached's words for both (mg
 * and ms word and order theirs differently). Parses the flags into *of;
 * false when the command was already answered. */
static bool meta_open_md_ma(conn *c, proto_tokens *t, meta_flags *of) {
    const char *errstr = ERR_FORMAT;
    if (proto_ntokens(t) < 3) {
        out_string(c, "ERROR");
        return false;
    }
    if (t->tok[1].length > PS_KEY_MAX_LENGTH) {
        out_string(c, ERR_FORMAT);
        return false;
    }
    if (proto_ntokens(t) > PROTO_META_MAX_TOKENS) {
        out_string(c, "CLIENT_ERROR options flags too long");
        return false;
    }
    if (!meta_preparse(t, 2, of, &errstr)) {
        out_errstring(c, "CLIENT_ERROR invalid or duplicate flag");
        return false;
    }
    c->noreply = of->no_reply;
    return true;
}

static void process_mdelete(conn *c, proto_tokens *t) {
    meta_flags of = {0};

    if (!meta_open_md_ma(c, t, &of))
        return;

    const char *key = t->tok[1].value;
    size_t nkey = t->tok[1].length;

    /* the returned flags do not depend on the outcome: build them first */
    proto_line flags;
    pl_init(&flags);
    for (size_t i = 2; i < t->nwords; i++) {
        const proto_token *w = &t->tok[i];
        if (w->value[0] == 'O' && !pl_opaque(&flags, w)) {
            out_errstring(c, "CLIENT_ERROR opaque token too long");
            return;
        }
        if (w->value[0] == 'k')
            pl_meta_key(&flags, key, nkey, of.key_binary);
    }

    const char *code;
    bool skip = false;
    uint32_t hv = item_hash(key, nkey);
    item_lock(hv);
    item *it = do_item_get(key, nkey, hv, false);
    if (it == NULL) {
        STATS_INCR(delete_misses);
        code = "NF";
    } else if (of.has_cas && it->cas != of.req_cas) {
        STATS_INCR(delete_misses);
        code = "EX";
    } else if (of.set_stale) {
        /* invalidate: keep the item, stale, with a fresh CAS */
        if (of.new_ttl)
            proto_set_exptime(it, of.exptime);
        item_flags_set(it, ITEM_STALE);
        item_flags_clear(it, ITEM_TOKEN_SENT);
        it->cas = settings.use_cas ? item_next_cas() : 0;
        code = "HD";
        skip = c->noreply;
    } else {
        SLAB_STATS_INCR(ITEM_CLSID(it), delete_hits);
        do_item_unlink(it, hv);
        code = "HD";
        skip = c->noreply;
    }
    item_unlock(hv);
    if (it != NULL)
        item_release(it);

    proto_line l;
    pl_init(&l);
    pl_add(&l, code, 2);
    pl_add(&l, flags.buf, flags.len);
    emit_line(c, &l, skip);
}

/* ====================================================================== */
/* ma                                                                     */
/* ====================================================================== */

static void process_marithmetic(conn *c, proto_tokens *t) {
    meta_flags of = {0};
    bool incr = true;

    of.delta = 1;                        /* no D: by one */
    if (!meta_open_md_ma(c, t, &of))
        return;

    switch (of.mode) {
    case 0: case 'I': case '+': incr = true; break;
    case 'D': case '-':         incr = false; break;
    default:
        out_errstring(c, "CLIENT_ERROR invalid mode for ma M token");
        return;
    }

    const char *key = t->tok[1].value;
    size_t nkey = t->tok[1].length;
    char value[32];                      /* the new number, as text */
    uint64_t cas = 0;
    const char *code = NULL;             /* an answer without an item */
    item *cur = NULL;                    /* the linked item holding the value */
    bool created = false, skip = false;
    const char *error = NULL;

    uint32_t hv = item_hash(key, nkey);
    item_lock(hv);
    item *it = do_item_get(key, nkey, hv, false);
    if (it != NULL) {
        switch (do_item_add_delta(it, incr, of.delta, hv, of.req_cas, value, &cas)) {
        case DELTA_OK:
            skip = c->noreply;
            /* the delta may have replaced the item: find the live one */
            cur = assoc_find(key, nkey, hv);
            if (cur == NULL)
                cur = it;
            break;
        case DELTA_NON_NUMERIC:
            error = "CLIENT_ERROR cannot increment or decrement non-numeric value";
            break;
        case DELTA_EOM:
            error = "SERVER_ERROR out of memory";
            break;
        case DELTA_EXISTS:
            code = "EX";
            break;
        default:
            code = "NF";
            break;
        }
    } else if (of.vivify) {
        char *end = proto_u64toa(of.initial, value);
        size_t vlen = (size_t)(end - value);
        *end = '\0';
        alloc_result why;
        item *fresh = item_alloc(key, nkey, 0, 0, vlen + 2, &why);
        if (fresh == NULL) {
            error = "SERVER_ERROR Out of memory allocating new item";
        } else {
            struct iovec iov[2];
            int n = item_value_iov(fresh, iov, 2);
            if (n == 1) {
                memcpy(iov[0].iov_base, value, vlen);
                memcpy((char *)iov[0].iov_base + vlen, "\r\n", 2);
            }
            if (of.key_binary)
                item_flags_set(fresh, ITEM_KEY_BINARY);
            if (n == 1) {
                /* the lookup above missed under this same lock, so this is
                 * an add; linking directly also keeps it out of cmd_set, as
                 * in memcached */
                do_item_link(fresh, hv);
                cas = fresh->cas;
                created = true;
                cur = fresh;
            } else {
                code = "NS";             /* cannot happen: 22 bytes at most */
            }
            it = fresh;                  /* our reference, released below */
        }
    } else {
        if (incr)
            STATS_INCR(incr_misses);
        else
            STATS_INCR(decr_misses);
        code = "NF";
    }

    proto_line l;
    pl_init(&l);
    if (error == NULL && cur != NULL) {
        size_t vlen = strlen(value);
        if (of.value) {
            pl_add(&l, "VA ", 3);
            pl_u64(&l, vlen);
        } else {
            pl_add(&l, "HD", 2);
        }
    } else if (error == NULL) {
        pl_add(&l, code, 2);
    }
    for (size_t i = 2; error == NULL && i < t->nwords; i++) {
        const proto_token *w = &t->tok[i];
        char flag = w->value[0];
        if (flag == 'O') {
            if (!pl_opaque(&l, w))
                error = "CLIENT_ERROR opaque token too long";
        } else if (flag == 'k') {
            pl_meta_key(&l, key, nkey, of.key_binary);
        } else if (cur == NULL) {
            continue;                    /* the rest only describe an item */
        } else if (flag == 'c') {
            pl_add(&l, " c", 2);
            pl_u64(&l, cas);
        } else if (flag == 't') {
            pl_ttl(&l, cur);
        } else if (flag == 'T') {
            proto_set_exptime(cur, of.exptime);
        } else if (flag == 'N' && created) {
            proto_set_exptime(cur, of.autoviv_exptime);
        }
    }
    item_unlock(hv);
    if (it != NULL)
        item_release(it);

    if (error != NULL) {
        out_errstring(c, error);
        return;
    }
    if (cur != NULL && of.value) {
        pl_add(&l, "\r\n", 2);
        pl_add(&l, value, strlen(value));
    }
    emit_line(c, &l, skip);
}

/* ====================================================================== */
/* me                                                                     */
/* ====================================================================== */

static void process_meta_debug(conn *c, proto_tokens *t) {
    if (proto_ntokens(t) < 3 || t->tok[1].length > PS_KEY_MAX_LENGTH) {
        out_string(c, ERR_FORMAT);
        return;
    }
    char *key = t->tok[1].value;
    size_t nkey = t->tok[1].length;
    if (t->nwords >= 3 && proto_tok_eq(&t->tok[2], "b")) {
        nkey = proto_base64_decode(key, nkey, key);
        if (nkey == 0) {
            out_string(c, ERR_FORMAT);
            return;
        }
    }

    STATS_INCR(meta_cmds);
    item *it = item_get(key, nkey, false);
    if (it == NULL) {
        out_string(c, "EN");
        return;
    }

    proto_line l;
    pl_init(&l);
    pl_add(&l, "ME ", 3);
    uint16_t fl = item_flags(it);
    if (fl & ITEM_KEY_BINARY) {
        char enc[((PS_KEY_MAX_LENGTH + 2) / 3) * 4];
        pl_add(&l, enc, proto_base64_encode(ITEM_key(it), it->nkey, enc, sizeof(enc)));
    } else {
        pl_add(&l, ITEM_key(it), it->nkey);
    }
    rel_time_t t_now = now();
    /* memcached prints now - exptime: the remaining TTL, negated */
    pl_add(&l, " exp=", 5);
    rel_time_t exptime = proto_exptime(it);
    pl_i32(&l, exptime == 0 ? -1 : (int32_t)(uint32_t)(t_now - exptime));
    pl_add(&l, " la=", 4);
    pl_u64(&l, (uint32_t)(t_now - item_time(it)));
    pl_add(&l, " cas=", 5);
    pl_u64(&l, it->cas);
    pl_str(&l, (fl & ITEM_FETCHED) ? " fetch=yes" : " fetch=no");
    pl_add(&l, " cls=", 5);
    pl_u64(&l, ITEM_CLSID(it));
    pl_add(&l, " size=", 6);
    pl_u64(&l, item_ntotal(it));
    item_release(it);
    emit_line(c, &l, false);
}

/* ====================================================================== */
/* dispatch                                                               */
/* ====================================================================== */

void proto_meta_dispatch(conn *c, proto_tokens *t) {
    switch (t->tok[0].value[1]) {
    case 'g': process_mget(c, t); break;
    case 's': process_mset(c, t); break;
    case 'd': process_mdelete(c, t); break;
    case 'a': process_marithmetic(c, t); break;
    case 'e': process_meta_debug(c, t); break;
    case 'n': out_string(c, "MN"); break;
    default:  out_string(c, "ERROR"); break;
    }
}
