/*
 * proto_text.c - the memcached text protocol (get/set/delete/incr/...,
 * stats and the admin commands) and the entry point that also routes the
 * meta commands to proto_meta.c. The reference is memcached 1.6.18: every
 * answer, error string and edge case here is meant to be byte-identical to
 * what it sends (tests/test_proto_text.py and tests/test_bad_input.py run
 * the same scripts against both servers). Deliberate differences are
 * listed at the end of this comment.
 *
 * TOKENISATION. conn.c hands us one line at a time, without "\r\n", as a
 * pointer into its read buffer. We cut it at the first NUL byte (memcached
 * works on C strings), then split words on ' ' only (a tab is part of a
 * word, as in memcached). Words are (pointer, length) pairs into the read
 * buffer: nothing is copied and nothing is allocated to parse a command.
 * At most PROTO_MAX_WORDS words are split out; the get family walks the
 * rest of the line itself, so a multiget may have any number of keys.
 * Numbers are parsed with memcached's strto*-based rules (proto.h).
 *
 * A PIPELINED BATCH. conn.c calls proto_process_line() once per complete
 * line in its buffer, in order. Each command appends its answer to the
 * conn's response queue (resp_new/out_string) and returns; conn.c gathers
 * the whole queue into one writev() when the batch is parsed, so a
 * pipeline of N gets costs one write. A storage command (set, ms, ...)
 * validates its line, allocates the item and calls conn_read_value() as its
 * very last action; conn.c fills the value from the buffer and the socket
 * and then calls our callback (possibly before conn_read_value() returns),
 * which checks the "\r\n", stores, and appends the answer. What the
 * callback needs from the command line is kept in c->proto_state, because
 * the line itself is gone by then. A refused storage command (bad length
 * aside) still has its value bytes on the wire: conn_swallow() discards
 * exactly those, as memcached does.
 *
 * NOREPLY. c->noreply is cleared at the start of every line and set by the
 * commands that honour it. Like memcached, out_string() then suppresses
 * every answer of that command, errors included ("set k 0 0 x noreply"
 * answers nothing); only the meta commands force errors out
 * (out_errstring).
 *
 * ITEM REFERENCES. item_get()/item_touch()/do_item_get() return a
 * referenced item. A reference either moves into a resp (resp_set_item:
 * the resp releases it once written, or when dropped as skip) or is
 * released here with item_release(), always after any item lock we hold
 * has been dropped. An item from item_alloc() belongs to conn_read_value()
 * and then to our callback, which releases it after item_store() (the
 * store takes its own references for the hash table).
 *
 * STATS this file counts (the engine counts the rest: see "WHO COUNTS
 * WHAT" in items.h):
 *   get/gets/bget   per key: get_cmds; hit: get_hits of the item's class;
 *                   miss: get_misses.
 *   gat/gats        per key: touch_cmds; hit: touch_hits of the class;
 *                   miss: touch_misses. (memcached counts no get_* here.)
 *   touch           touch_cmds; touch_hits of the class / touch_misses.
 *   delete          delete_misses (item_delete counts delete_hits).
 *   incr/decr       incr_misses / decr_misses (hits: engine).
 *   set family      store_too_large / store_no_memory when the item cannot
 *                   be allocated; set_cmds of the class when the value
 *                   arrives without its "\r\n" (item_store is not reached
 *                   then, and memcached still counts the set).
 *   flush_all       flush_cmds, even when flush_all is refused (-F).
 *   meta commands   see proto_meta.c.
 *
 * DELIBERATE DIFFERENCES FROM MEMCACHED 1.6.18.
 *   - A get that hits a key longer than 250 bytes answers only
 *     "CLIENT_ERROR bad command line format" (its earlier VALUE lines are
 *     dropped, as memcached does), but memcached also drops the unsent
 *     answers of *earlier pipelined commands* in the same read batch, which
 *     desynchronises a pipelining client and depends on packet timing; we
 *     keep those answers.
 *   - "watch", "stats sizes_enable|sizes_disable", "stats extstore",
 *     "extstore", "refresh_certs" and the binary protocol are not served
 *     ("ERROR").
 *   - "lru tune" rejects percentages whose sum exceeds 80 even when the
 *     32-bit sum would wrap (memcached accepts "lru tune 4294967295 2 ...").
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hash.h"
#include "proto.h"
#include "conn.h"
#include "items.h"
#include "assoc.h"
#include "slabs.h"
#include "stats.h"
#include "settings.h"
#include "server.h"

/* ====================================================================== */
/* tokeniser                                                              */
/* ====================================================================== */

void proto_tokenize(char *line, size_t len, proto_tokens *t) {
    char *p = line;
    char *end = line + len;
    size_t n = 0;

    t->more = false;
    t->line_end = end;
    while (p < end) {
        if (*p == ' ') {
            p++;
            continue;
        }
        if (n == PROTO_MAX_WORDS) {
            t->more = true;
            break;
        }
        char *word = p;
        char *space = memchr(p, ' ', (size_t)(end - p));
        p = space ? space : end;
        t->tok[n].value = word;
        t->tok[n].length = (size_t)(p - word);
        n++;
    }
    t->nwords = n;
}

/* Next space-separated word in [*pos, end); false when none is left. */
static bool next_word(char **pos, char *end, char **word, size_t *wlen) {
    char *p = *pos;
    while (p < end && *p == ' ')
        p++;
    if (p == end) {
        *pos = p;
        return false;
    }
    char *space = memchr(p, ' ', (size_t)(end - p));
    char *stop = space ? space : end;
    *word = p;
    *wlen = (size_t)(stop - p);
    *pos = stop;
    return true;
}

/* ====================================================================== */
/* numbers                                                                */
/* ====================================================================== */

/* isspace() in the C locale, without the locale lookup. */
static inline bool c_isspace(unsigned char ch) {
    return ch == ' ' || (ch >= '\t' && ch <= '\r');
}

/* The part every strto* variant shares: optional leading whitespace and
 * sign, base-10 digits, then the token must end or go on with whitespace.
 * `mag` is the magnitude; `wide` is set when it does not fit 64 bits.
 * Returns false when there is no digit or the trailer is not whitespace. */
static bool scan_decimal(const char *s, size_t len, uint64_t *mag, bool *neg,
                         bool *wide) {
    const char *p = s, *end = s + len;
    while (p < end && c_isspace((unsigned char)*p))
        p++;
    *neg = false;
    if (p < end && (*p == '+' || *p == '-')) {
        *neg = (*p == '-');
        p++;
    }
    const char *digits = p;
    uint64_t v = 0;
    *wide = false;
    while (p < end && *p >= '0' && *p <= '9') {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            *wide = true;
        v = v * 10 + d;
        p++;
    }
    if (p == digits)
        return false;
    if (p != end && !c_isspace((unsigned char)*p))
        return false;
    *mag = v;
    return true;
}

bool proto_strtoull(const char *s, size_t len, uint64_t *out) {
    uint64_t mag;
    bool neg, wide;
    if (!scan_decimal(s, len, &mag, &neg, &wide) || wide)
        return false;
    uint64_t v = neg ? (uint64_t)0 - mag : mag;
    /* strtoull negates; memcached then refuses results that look negative
     * as signed when the text holds a '-' anywhere */
    if ((int64_t)v < 0 && memchr(s, '-', len) != NULL)
        return false;
    *out = v;
    return true;
}

bool proto_strtoul(const char *s, size_t len, uint32_t *out) {
    uint64_t v;
    if (!proto_strtoull(s, len, &v))
        return false;
    *out = (uint32_t)v;                 /* memcached narrows unsigned long */
    return true;
}

bool proto_strtol(const char *s, size_t len, int32_t *out) {
    uint64_t mag;
    bool neg, wide;
    if (!scan_decimal(s, len, &mag, &neg, &wide) || wide)
        return false;
    int64_t v;
    if (neg) {
        if (mag > (uint64_t)INT64_MAX + 1)
            return false;               /* strtol: ERANGE */
        v = (mag == (uint64_t)INT64_MAX + 1) ? INT64_MIN : -(int64_t)mag;
    } else {
        if (mag > (uint64_t)INT64_MAX)
            return false;
        v = (int64_t)mag;
    }
    *out = (int32_t)(uint32_t)(uint64_t)v;  /* memcached narrows long */
    return true;
}

bool proto_strtod(const char *s, size_t len, double *out) {
    char small[128];
    char *buf = small;
    if (len >= sizeof(small)) {
        buf = malloc(len + 1);
        if (buf == NULL)
            return false;
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *endp;
    errno = 0;
    double d = strtod(buf, &endp);
    bool ok = errno != ERANGE && endp != buf &&
              (*endp == '\0' || c_isspace((unsigned char)*endp));
    if (buf != small)
        free(buf);
    if (ok)
        *out = d;
    return ok;
}

char *proto_u64toa(uint64_t v, char *dst) {
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *dst++ = tmp[--n];
    return dst;
}

char *proto_i32toa(int32_t v, char *dst) {
    if (v < 0) {
        *dst++ = '-';
        return proto_u64toa((uint64_t)0 - (uint64_t)(int64_t)v, dst);
    }
    return proto_u64toa((uint64_t)v, dst);
}

/* ====================================================================== */
/* base64                                                                 */
/* ====================================================================== */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* 0..63 for the alphabet, 0 for '=', -1 for anything else */
static int b64_value(unsigned char ch) {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    if (ch == '=') return 0;
    return -1;
}

size_t proto_base64_decode(const char *src, size_t len, char *dst) {
    size_t symbols = 0;
    for (size_t i = 0; i < len; i++)
        if (b64_value((unsigned char)src[i]) >= 0)
            symbols++;
    if (symbols == 0 || symbols % 4 != 0)
        return 0;

    unsigned char block[4];
    size_t in_block = 0, out = 0;
    int pad = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)src[i]);
        if (v < 0)
            continue;
        if (src[i] == '=')
            pad++;
        block[in_block++] = (unsigned char)v;
        if (in_block < 4)
            continue;
        /* out <= i - 3 here, so decoding in place never overtakes reading */
        dst[out++] = (char)((block[0] << 2) | (block[1] >> 4));
        dst[out++] = (char)((block[1] << 4) | (block[2] >> 2));
        dst[out++] = (char)((block[2] << 6) | block[3]);
        in_block = 0;
        if (pad) {
            if (pad > 2)
                return 0;
            out -= (size_t)pad;
            break;
        }
    }
    return out;
}

size_t proto_base64_encode(const char *src, size_t len, char *dst, size_t dstlen) {
    size_t need = (len + 2) / 3 * 4;
    if (need > dstlen)
        return 0;
    const unsigned char *in = (const unsigned char *)src;
    char *p = dst;
    while (len >= 3) {
        *p++ = b64_alphabet[in[0] >> 2];
        *p++ = b64_alphabet[((in[0] & 0x03) << 4) | (in[1] >> 4)];
        *p++ = b64_alphabet[((in[1] & 0x0f) << 2) | (in[2] >> 6)];
        *p++ = b64_alphabet[in[2] & 0x3f];
        in += 3;
        len -= 3;
    }
    if (len > 0) {
        *p++ = b64_alphabet[in[0] >> 2];
        if (len == 1) {
            *p++ = b64_alphabet[(in[0] & 0x03) << 4];
            *p++ = '=';
        } else {
            *p++ = b64_alphabet[((in[0] & 0x03) << 4) | (in[1] >> 4)];
            *p++ = b64_alphabet[(in[1] & 0x0f) << 2];
        }
        *p++ = '=';
    }
    return (size_t)(p - dst);
}

/* ====================================================================== */
/* shared helpers                                                         */
/* ====================================================================== */

void pl_meta_key(proto_line *l, const char *key, size_t nkey, bool binary) {
    pl_add(l, " k", 2);
    if (!binary) {
        pl_add(l, key, nkey);
        return;
    }
    char enc[((PS_KEY_MAX_LENGTH + 2) / 3) * 4];
    size_t n = proto_base64_encode(key, nkey, enc, sizeof(enc));
    pl_add(l, enc, n);
    pl_add(l, " b", 2);
}

mc_resp *proto_emit(conn *c, const proto_line *l) {
    mc_resp *r = resp_new(c);
    if (r == NULL)
        return NULL;
    if (l->overflow || !resp_add_text(r, l->buf, l->len)) {
        /* cannot happen with lines we build; answer rather than cut */
        r->text_len = 0;
        resp_add_text(r, "SERVER_ERROR output line too long\r\n", 35);
    }
    return r;
}

void proto_count_get_hit(const item *it) {
    STATS_INCR(get_cmds);
    SLAB_STATS_INCR(ITEM_CLSID(it), get_hits);
}

void proto_count_get_miss(void) {
    STATS_INCR(get_cmds);
    STATS_INCR(get_misses);
}

/* memcached's set_noreply_maybe(): the last word decides. */
static bool set_noreply_maybe(conn *c, const proto_tokens *t) {
    if (t->nwords > 0 && proto_tok_eq(&t->tok[t->nwords - 1], "noreply"))
        c->noreply = true;
    return c->noreply;
}

/* Copy a word into a NUL-terminated malloc'd string (rare admin commands
 * whose engine calls take C strings). */
static char *word_dup(const proto_token *w) {
    char *s = malloc(w->length + 1);
    if (s != NULL) {
        memcpy(s, w->value, w->length);
        s[w->length] = '\0';
    }
    return s;
}

/* ====================================================================== */
/* "stats detail": per key-prefix counters                                */
/* ====================================================================== */
/*
 * memcached keeps, while "stats detail on", counters per key prefix (the
 * bytes before the first ':'): gets, hits, sets, deletes. They are recorded
 * by the classic get family, set family and delete only (not by the meta
 * commands), kept across "stats detail off", and cleared by "stats reset".
 *
 * Layout matches memcached so "stats detail dump" lists prefixes in the
 * same order: 256 buckets by murmur3(prefix) (memcached's default hash,
 * seed 0), each a list with the newest prefix first; at most 65536
 * prefixes are tracked. One mutex guards the table; it is taken only while
 * detail is on (or to dump/clear), so the normal get/set path pays one
 * relaxed atomic load.
 */
#define PREFIX_BUCKETS 256
#define PREFIX_MAX_COUNT 65536
#define PREFIX_DELIMITER ':'

typedef struct prefix_stats {
    struct prefix_stats *next;
    uint64_t gets, hits, sets, deletes;
    size_t len;
    char name[];
} prefix_stats;

static pthread_mutex_t prefix_lock = PTHREAD_MUTEX_INITIALIZER;
static prefix_stats *prefix_table[PREFIX_BUCKETS];
static size_t prefix_count;
static size_t prefix_name_bytes;
static inline bool detail_on(void) {
    return atomic_load_explicit(&stats_detail_enabled, memory_order_relaxed);
}


/* Caller holds prefix_lock. NULL when the key has no prefix, the table is
 * full, or memory ran out (the event is then simply not counted). */
static prefix_stats *prefix_find(const char *key, size_t nkey) {
    const char *delim = memchr(key, PREFIX_DELIMITER, nkey);
    if (delim == NULL)
        return NULL;
    size_t len = (size_t)(delim - key);
    uint32_t bucket = ps_murmur3_32(key, len, 0) % PREFIX_BUCKETS;
    for (prefix_stats *ps = prefix_table[bucket]; ps != NULL; ps = ps->next)
        if (ps->len == len && memcmp(ps->name, key, len) == 0)
            return ps;
    if (prefix_count >= PREFIX_MAX_COUNT)
        return NULL;
    prefix_stats *ps = calloc(1, sizeof(*ps) + len + 1);
    if (ps == NULL)
        return NULL;
    memcpy(ps->name, key, len);
    ps->len = len;
    ps->next = prefix_table[bucket];
    prefix_table[bucket] = ps;
    prefix_count++;
    prefix_name_bytes += len;
    return ps;
}

enum prefix_event { PREFIX_GET_MISS, PREFIX_GET_HIT, PREFIX_SET, PREFIX_DELETE };

static void prefix_record(const char *key, size_t nkey, enum prefix_event ev) {
    pthread_mutex_lock(&prefix_lock);
    prefix_stats *ps = prefix_find(key, nkey);
    if (ps != NULL) {
        switch (ev) {
        case PREFIX_GET_HIT:  ps->hits++; /* fall through */
        case PREFIX_GET_MISS: ps->gets++; break;
        case PREFIX_SET:      ps->sets++; break;
        case PREFIX_DELETE:   ps->deletes++; break;
        }
    }
    pthread_mutex_unlock(&prefix_lock);
}

static void prefix_clear(void) {
    pthread_mutex_lock(&prefix_lock);
    for (int i = 0; i < PREFIX_BUCKETS; i++) {
        prefix_stats *ps = prefix_table[i];
        while (ps != NULL) {
            prefix_stats *next = ps->next;
            free(ps);
            ps = next;
        }
        prefix_table[i] = NULL;
    }
    prefix_count = 0;
    prefix_name_bytes = 0;
    pthread_mutex_unlock(&prefix_lock);
}

/* "PREFIX <p> get N hit N set N del N\r\n" per prefix, then "END\r\n". */
static char *prefix_dump(size_t *len) {
    static const char line_fmt[] = "PREFIX %s get %llu hit %llu set %llu del %llu\r\n";
    pthread_mutex_lock(&prefix_lock);
    size_t cap = prefix_name_bytes + prefix_count * (sizeof(line_fmt) + 4 * 20) + 6;
    char *buf = malloc(cap);
    if (buf == NULL) {
        pthread_mutex_unlock(&prefix_lock);
        return NULL;
    }
    size_t pos = 0;
    for (int i = 0; i < PREFIX_BUCKETS; i++) {
        for (prefix_stats *ps = prefix_table[i]; ps != NULL; ps = ps->next) {
            int n = snprintf(buf + pos, cap - pos, line_fmt, ps->name,
                             (unsigned long long)ps->gets, (unsigned long long)ps->hits,
                             (unsigned long long)ps->sets, (unsigned long long)ps->deletes);
            if (n > 0 && (size_t)n < cap - pos)     /* always: cap is generous */
                pos += (size_t)n;
        }
    }
    pthread_mutex_unlock(&prefix_lock);
    memcpy(buf + pos, "END\r\n", 5);
    *len = pos + 5;
    return buf;
}

/* ====================================================================== */
/* stats output                                                           */
/* ====================================================================== */

/* The add_stat callback target: "STAT <key> <value>\r\n" lines collected
 * in a malloc'd buffer that doubles as needed, then "END\r\n". */
typedef struct {
    char *buf;
    size_t len, cap;
    bool oom;
} stats_buf;

static bool stats_buf_reserve(stats_buf *sb, size_t more) {
    if (sb->oom)
        return false;
    if (sb->len + more <= sb->cap)
        return true;
    size_t cap = sb->cap ? sb->cap : 4096;
    while (cap < sb->len + more)
        cap *= 2;
    char *nb = realloc(sb->buf, cap);
    if (nb == NULL) {
        sb->oom = true;
        return false;
    }
    sb->buf = nb;
    sb->cap = cap;
    return true;
}

static void stats_buf_append(stats_buf *sb, const char *s, size_t n) {
    if (!stats_buf_reserve(sb, n))
        return;
    memcpy(sb->buf + sb->len, s, n);
    sb->len += n;
}

static void stats_add(const char *key, size_t klen, const char *val, size_t vlen,
                      void *ctx) {
    stats_buf *sb = ctx;
    if (klen == 0 && vlen == 0)
        return;                         /* we add the END ourselves */
    if (!stats_buf_reserve(sb, 5 + klen + 1 + vlen + 2))
        return;
    stats_buf_append(sb, "STAT ", 5);
    stats_buf_append(sb, key, klen);
    if (vlen > 0) {
        stats_buf_append(sb, " ", 1);
        stats_buf_append(sb, val, vlen);
    }
    stats_buf_append(sb, "\r\n", 2);
}

/* Queue a malloc'd buffer as the answer (the resp frees it), or the
 * memcached out-of-memory answer when buf is NULL. */
static void send_heap(conn *c, char *buf, size_t len, const char *oom_msg) {
    if (buf == NULL) {
        out_string(c, oom_msg);
        return;
    }
    mc_resp *r = resp_new(c);
    if (r == NULL) {
        free(buf);
        return;
    }
    resp_set_heap(r, buf, len);
}

static void send_stats(conn *c, stats_buf *sb) {
    stats_buf_append(sb, "END\r\n", 5);
    if (sb->oom) {
        free(sb->buf);
        sb->buf = NULL;
    }
    send_heap(c, sb->buf, sb->len, "SERVER_ERROR out of memory writing stats");
}

static void process_stats_detail(conn *c, const proto_tokens *t) {
    const proto_token *arg = t->nwords >= 3 ? &t->tok[2] : NULL;
    if (arg != NULL && proto_tok_eq(arg, "on")) {
        atomic_store_explicit(&stats_detail_enabled, true, memory_order_relaxed);
        out_string(c, "OK");
    } else if (arg != NULL && proto_tok_eq(arg, "off")) {
        atomic_store_explicit(&stats_detail_enabled, false, memory_order_relaxed);
        out_string(c, "OK");
    } else if (arg != NULL && proto_tok_eq(arg, "dump")) {
        size_t len = 0;
        char *buf = prefix_dump(&len);
        send_heap(c, buf, len, "SERVER_ERROR out of memory writing stats");
    } else {
        out_string(c, "CLIENT_ERROR usage: stats detail on|off|dump");
    }
}

static void process_stats_cachedump(conn *c, const proto_tokens *t) {
    uint32_t clsid, limit;
    if (t->nwords < 4) {
        out_string(c, "CLIENT_ERROR bad command line");
        return;
    }
    if (!proto_strtoul(t->tok[2].value, t->tok[2].length, &clsid) ||
        !proto_strtoul(t->tok[3].value, t->tok[3].length, &limit)) {
        out_string(c, "CLIENT_ERROR bad command line format");
        return;
    }
    if (clsid >= PS_MAX_SLAB_CLASSES) {
        out_string(c, "CLIENT_ERROR Illegal slab id");
        return;
    }
    size_t len = 0;
    char *buf = item_cachedump(clsid, limit, &len);
    send_heap(c, buf, len, "SERVER_ERROR out of memory writing stats");
}

static void process_stats(conn *c, const proto_tokens *t) {
    stats_buf sb = {0};

    if (t->nwords == 1) {
        stats_general(stats_add, &sb);
        send_stats(c, &sb);
        return;
    }
    const proto_token *sub = &t->tok[1];
    if (proto_tok_eq(sub, "reset")) {
        stats_reset();                  /* items' counters too */
        prefix_clear();
        out_string(c, "RESET");
    } else if (proto_tok_eq(sub, "detail")) {
        process_stats_detail(c, t);
    } else if (proto_tok_eq(sub, "settings")) {
        stats_settings(stats_add, &sb);
        send_stats(c, &sb);
    } else if (proto_tok_eq(sub, "cachedump")) {
        process_stats_cachedump(c, t);
    } else if (proto_tok_eq(sub, "conns")) {
        conns_stats(stats_add, &sb);
        send_stats(c, &sb);
    } else if (proto_tok_eq(sub, "items")) {
        items_stats(stats_add, &sb);
        send_stats(c, &sb);
    } else if (proto_tok_eq(sub, "slabs")) {
        slabs_stats(stats_add, &sb);
        send_stats(c, &sb);
    } else if (proto_tok_eq(sub, "sizes")) {
        items_stats_sizes(stats_add, &sb);
        send_stats(c, &sb);
    } else {
        out_string(c, "ERROR");
    }
}

/* ====================================================================== */
/* get, gets, gat, gats, bget                                             */
/* ====================================================================== */

/* "VALUE <key> <flags> <bytes>[ <cas>]\r\n" */
static void value_header(proto_line *l, const item *it, bool return_cas) {
    pl_init(l);
    pl_add(l, "VALUE ", 6);
    pl_add(l, ITEM_key(it), it->nkey);
    pl_char(l, ' ');
    pl_u64(l, it->client_flags);
    pl_char(l, ' ');
    pl_u64(l, it->nbytes - 2);
    if (return_cas) {
        pl_char(l, ' ');
        pl_u64(l, it->cas);     /* aligned 64-bit load: never torn on LP64 */
    }
    pl_add(l, "\r\n", 2);
}

static void process_get(conn *c, const proto_tokens *t, bool return_cas, bool touch) {
    rel_time_t exptime = 0;
    size_t first_key = 1;

    if (touch) {
        int32_t exptime_int;
        if (!proto_strtol(t->tok[1].value, t->tok[1].length, &exptime_int)) {
            out_string(c, "CLIENT_ERROR invalid exptime argument");
            return;
        }
        exptime = realtime(exptime_int);
        first_key = 2;
    }

    /* Keys: from the first key word to the end of the line, however many
     * there are (the tokeniser's word limit does not apply here). */
    char *pos = first_key < t->nwords ? t->tok[first_key].value : t->line_end;
    char *key;
    size_t nkey;
    mc_resp *first_resp = NULL;
    bool detail = detail_on();
    proto_line l;

    while (next_word(&pos, t->line_end, &key, &nkey)) {
        if (nkey > PS_KEY_MAX_LENGTH) {
            /* memcached answers the error alone: drop this command's
             * VALUE lines (their items are released as the resps go) */
            for (mc_resp *r = first_resp; r != NULL; r = r->next)
                r->skip = true;
            out_string(c, "CLIENT_ERROR bad command line format");
            return;
        }
        item *it = touch ? item_touch(key, nkey, exptime) : item_get(key, nkey, true);
        if (detail)
            prefix_record(key, nkey, it ? PREFIX_GET_HIT : PREFIX_GET_MISS);
        if (it == NULL) {
            if (touch) {
                STATS_INCR(touch_cmds);
                STATS_INCR(touch_misses);
            } else {
                proto_count_get_miss();
            }
            continue;
        }
        if (touch) {
            STATS_INCR(touch_cmds);
            SLAB_STATS_INCR(ITEM_CLSID(it), touch_hits);
        } else {
            proto_count_get_hit(it);
        }
        value_header(&l, it, return_cas);
        mc_resp *r = proto_emit(c, &l);
        if (r == NULL) {
            item_release(it);
            return;
        }
        resp_set_item(r, it);
        if (first_resp == NULL)
            first_resp = r;
    }

    pl_init(&l);
    pl_add(&l, "END\r\n", 5);
    proto_emit(c, &l);
}

/* ====================================================================== */
/* set, add, replace, append, prepend, cas                                */
/* ====================================================================== */

/* What the value callback needs once the command line is gone. */
typedef struct {
    uint8_t op;                  /* store_op */
    bool noreply;
} text_store_state;

_Static_assert(sizeof(text_store_state) <= CONN_PROTO_STATE, "proto_state too small");

void proto_unlink_key(const char *key, size_t nkey) {
    uint32_t hv = item_hash(key, nkey);
    item_lock(hv);
    item *old = do_item_get(key, nkey, hv, false);
    if (old != NULL)
        do_item_unlink(old, hv);
    item_unlock(hv);
    if (old != NULL)
        item_release(old);
}

static void text_value_done(conn *c, item *it, bool ok) {
    const text_store_state *st = (const text_store_state *)c->proto_state;
    c->noreply = st->noreply;
    if (!ok) {
        SLAB_STATS_INCR(ITEM_CLSID(it), set_cmds);
        out_string(c, "CLIENT_ERROR bad data chunk");
    } else {
        switch (item_store(it, (store_op)st->op, NULL)) {
        case STORED:    out_string(c, "STORED"); break;
        case EXISTS:    out_string(c, "EXISTS"); break;
        case NOT_FOUND: out_string(c, "NOT_FOUND"); break;
        case NOT_STORED:
        case TOO_LARGE:             /* append/prepend result did not fit: */
        case NO_MEMORY:             /* memcached 1.6.18 says NOT_STORED */
            out_string(c, "NOT_STORED");
            break;
        default:
            out_string(c, "SERVER_ERROR Unhandled storage type.");
            break;
        }
    }
    item_release(it);
    c->noreply = false;
}

static void process_update(conn *c, const proto_tokens *t, store_op op, bool handle_cas) {
    uint32_t flags;
    int32_t exptime_int, vlen;
    uint64_t req_cas = 0;

    set_noreply_maybe(c, t);

    const char *key = t->tok[1].value;
    size_t nkey = t->tok[1].length;
    if (nkey > PS_KEY_MAX_LENGTH) {
        out_string(c, "CLIENT_ERROR bad command line format");
        return;
    }
    if (!(proto_strtoul(t->tok[2].value, t->tok[2].length, &flags) &&
          proto_strtol(t->tok[3].value, t->tok[3].length, &exptime_int) &&
          proto_strtol(t->tok[4].value, t->tok[4].length, &vlen))) {
        out_string(c, "CLIENT_ERROR bad command line format");
        return;
    }
    rel_time_t exptime = realtime(exptime_int);
    if (handle_cas && !proto_strtoull(t->tok[5].value, t->tok[5].length, &req_cas)) {
        out_string(c, "CLIENT_ERROR bad command line format");
        return;
    }
    if (vlen < 0 || vlen > INT_MAX - 2) {
        out_string(c, "CLIENT_ERROR bad command line format");
        return;
    }
    size_t nbytes = (size_t)vlen + 2;

    if (detail_on())
        prefix_record(key, nkey, PREFIX_SET);

    alloc_result why = ALLOC_OK;
    item *it = item_alloc(key, nkey, flags, exptime, nbytes, &why);
    if (it == NULL) {
        if (why == ALLOC_TOO_LARGE) {
            out_string(c, "SERVER_ERROR object too large for cache");
            STATS_INCR(store_too_large);
        } else {
            out_string(c, "SERVER_ERROR out of memory storing object");
            STATS_INCR(store_no_memory);
        }
        conn_swallow(c, nbytes);
        if (op == STORE_SET)
            proto_unlink_key(key, nkey);
        return;
    }
    it->cas = req_cas;              /* compare value for cas (0: none) */

    text_store_state *st = (text_store_state *)c->proto_state;
    st->op = (uint8_t)op;
    st->noreply = c->noreply;
    conn_read_value(c, it, text_value_done);    /* last action: may call back now */
}

/* ====================================================================== */
/* delete, incr/decr, touch                                               */
/* ====================================================================== */

static void process_delete(conn *c, const proto_tokens *t) {
    if (t->nwords > 2) {
        /* "delete <key> 0" is a pre-1.4 form memcached still accepts */
        bool hold_is_zero = proto_tok_eq(&t->tok[2], "0");
        bool sets_noreply = set_noreply_maybe(c, t);
        bool valid = (t->nwords == 3 && (hold_is_zero || sets_noreply)) ||
                     (t->nwords == 4 && hold_is_zero && sets_noreply);
        if (!valid) {
            out_string(c, "CLIENT_ERROR bad command line format.  "
                          "Usage: delete <key> [noreply]");
            return;
        }
    }
    const char *key = t->tok[1].value;
    size_t nkey = t->tok[1].length;
    if (nkey > PS_KEY_MAX_LENGTH) {
        out_string(c, "CLIENT_ERROR bad command line format");
        return;
    }
    if (detail_on())
        prefix_record(key, nkey, PREFIX_DELETE);

    if (item_delete(key, nkey, 0, NULL)) {        /* counts delete_hits */
        out_string(c, "DELETED");
    } else {
        STATS_INCR(delete_misses);
        out_string(c, "NOT_FOUND");
    }
}

static void process_arithmetic(conn *c, const proto_tokens *t, bool incr) {
    uint64_t delta;
    char buf[32];

    set_noreply_maybe(c, t);
    const char *key = t->tok[1].value;
    size_t nkey = t->tok[1].length;
    if (nkey > PS_KEY_MAX_LENGTH) {
        out_string(c, "CLIENT_ERROR bad command line format");
        return;
    }
    if (!proto_strtoull(t->tok[2].value, t->tok[2].length, &delta)) {
        out_string(c, "CLIENT_ERROR invalid numeric delta argument");
        return;
    }
    switch (item_add_delta(key, nkey, incr, delta, 0, buf, NULL)) {
    case DELTA_OK:
        out_string(c, buf);
        break;
    case DELTA_NON_NUMERIC:
        out_string(c, "CLIENT_ERROR cannot increment or decrement non-numeric value");
        break;
    case DELTA_EOM:
        out_string(c, "SERVER_ERROR out of memory");
        break;
    case DELTA_MISS:
        if (incr)
            STATS_INCR(incr_misses);
        else
            STATS_INCR(decr_misses);
        out_string(c, "NOT_FOUND");
        break;
    default:                        /* DELTA_EXISTS: no cas given */
        out_string(c, "SERVER_ERROR Unhandled delta result");
        break;
    }
}

static void process_touch(conn *c, const proto_tokens *t) {
    int32_t exptime_int;

    set_noreply_maybe(c, t);
    const char *key = t->tok[1].value;
    size_t nkey = t->tok[1].length;
    if (nkey > PS_KEY_MAX_LENGTH) {
        out_string(c, "CLIENT_ERROR bad command line format");
        return;
    }
    if (!proto_strtol(t->tok[2].value, t->tok[2].length, &exptime_int)) {
        out_string(c, "CLIENT_ERROR invalid exptime argument");
        return;
    }
    item *it = item_touch(key, nkey, realtime(exptime_int));
    STATS_INCR(touch_cmds);
    if (it != NULL) {
        SLAB_STATS_INCR(ITEM_CLSID(it), touch_hits);
        item_release(it);
        out_string(c, "TOUCHED");
    } else {
        STATS_INCR(touch_misses);
        out_string(c, "NOT_FOUND");
    }
}

/* ====================================================================== */
/* admin commands                                                         */
/* ====================================================================== */

static void process_flush_all(conn *c, const proto_tokens *t) {
    int32_t delay = 0;

    set_noreply_maybe(c, t);
    STATS_INCR(flush_cmds);
    if (!settings.flush_enabled) {
        out_string(c, "CLIENT_ERROR flush_all not allowed");
        return;
    }
    if (proto_ntokens(t) != (c->noreply ? 3u : 2u) &&
        !proto_strtol(t->tok[1].value, t->tok[1].length, &delay)) {
        out_string(c, "CLIENT_ERROR invalid exptime argument");
        return;
    }
    /* a delay of 0 (or less) flushes everything stored up to now */
    rel_time_t when = delay > 0
        ? realtime(delay)
        : atomic_load_explicit(&current_time, memory_order_relaxed);
    item_flush_all(when);
    out_string(c, "OK");
}

static void process_verbosity(conn *c, const proto_tokens *t) {
    uint32_t level;

    set_noreply_maybe(c, t);
    if (!proto_strtoul(t->tok[1].value, t->tok[1].length, &level)) {
        out_string(c, "CLIENT_ERROR bad command line format");
        return;
    }
    atomic_store_explicit(&settings.verbose, level > 2 ? 2 : (int)level,
                          memory_order_relaxed);
    out_string(c, "OK");
}

static void process_memlimit(conn *c, const proto_tokens *t) {
    uint32_t megabytes;

    set_noreply_maybe(c, t);
    if (!proto_strtoul(t->tok[1].value, t->tok[1].length, &megabytes)) {
        out_string(c, "ERROR");
    } else if (megabytes < 8) {
        out_string(c, "MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m");
    } else if (megabytes > 1000000000) {
        out_string(c, "MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes");
    } else if (slabs_set_memlimit((size_t)megabytes * 1024 * 1024) == 0) {
        out_string(c, "OK");
    } else {
        out_string(c, "MEMLIMIT_ADJUST_FAILED out of bounds or unable to adjust");
    }
}

static void process_slabs_automove(conn *c, const proto_tokens *t) {
    set_noreply_maybe(c, t);
    if (proto_tok_eq(&t->tok[2], "ratio")) {
        double ratio;
        if (t->nwords < 4 || !proto_strtod(t->tok[3].value, t->tok[3].length, &ratio)) {
            out_string(c, "ERROR");
            return;
        }
        slabs_set_automove_ratio(ratio);
    } else {
        uint32_t level;
        if (!proto_strtoul(t->tok[2].value, t->tok[2].length, &level)) {
            out_string(c, "CLIENT_ERROR bad command line format");
            return;
        }
        if (level > 2) {
            out_string(c, "ERROR");
            return;
        }
        slabs_set_automove((int)level);
    }
    out_string(c, "OK");
}

static void process_slabs(conn *c, const proto_tokens *t) {
    if (t->nwords == 4 && proto_tok_eq(&t->tok[1], "reassign")) {
        int32_t src, dst;
        if (!settings.slab_reassign) {
            out_string(c, "CLIENT_ERROR slab reassignment disabled");
            return;
        }
        if (!(proto_strtol(t->tok[2].value, t->tok[2].length, &src) &&
              proto_strtol(t->tok[3].value, t->tok[3].length, &dst))) {
            out_string(c, "CLIENT_ERROR bad command line format");
            return;
        }
        const char *answer;
        switch (slabs_reassign(src, dst)) {
        case REASSIGN_OK:           answer = "OK"; break;
        case REASSIGN_RUNNING:      answer = "BUSY currently processing reassign request"; break;
        case REASSIGN_BADCLASS:     answer = "BADCLASS invalid src or dst class id"; break;
        case REASSIGN_NOSPARE:      answer = "NOSPARE source class has no spare pages"; break;
        case REASSIGN_SRC_DST_SAME: answer = "SAME src and dst class are identical"; break;
        default:                    answer = "ERROR"; break;
        }
        out_string(c, answer);
    } else if (t->nwords >= 3 && proto_tok_eq(&t->tok[1], "automove")) {
        process_slabs_automove(c, t);
    } else {
        out_string(c, "ERROR");
    }
}

/* The crawler can be switched at run time; the protocol is the only switch,
 * so it tracks the state itself (-1: not yet read from settings). */
static atomic_int crawler_enabled = -1;

static bool crawler_is_enabled(void) {
    int on = atomic_load_explicit(&crawler_enabled, memory_order_relaxed);
    return on < 0 ? settings.lru_crawler : on != 0;
}

static void crawler_answer(conn *c, crawler_result rv) {
    switch (rv) {
    case CRAWLER_OK:         out_string(c, "OK"); break;
    case CRAWLER_RUNNING:    out_string(c, "BUSY currently processing crawler request"); break;
    case CRAWLER_BADCLASS:   out_string(c, "BADCLASS invalid class id"); break;
    case CRAWLER_NOTSTARTED: out_string(c, "NOTSTARTED no items to crawl"); break;
    default:                 out_string(c, "ERROR an unknown error happened"); break;
    }
}

static void process_lru_crawler(conn *c, const proto_tokens *t) {
    const proto_token *sub = t->nwords >= 2 ? &t->tok[1] : NULL;

    if (t->nwords == 3 && proto_tok_eq(sub, "crawl")) {
        if (!crawler_is_enabled()) {
            out_string(c, "CLIENT_ERROR lru crawler disabled");
            return;
        }
        char *classes = word_dup(&t->tok[2]);
        if (classes == NULL) {
            out_string(c, "SERVER_ERROR out of memory");
            return;
        }
        crawler_answer(c, lru_crawler_crawl(classes));
        free(classes);
    } else if (t->nwords == 3 && proto_tok_eq(sub, "metadump")) {
        if (!crawler_is_enabled()) {
            out_string(c, "CLIENT_ERROR lru crawler disabled");
            return;
        }
        /* memcached streams the dump from the crawler thread and refuses
         * when answers of earlier commands are still queued */
        if (c->resp_head != NULL) {
            out_string(c, "ERROR cannot pipeline other commands before metadump");
            return;
        }
        char *classes = word_dup(&t->tok[2]);
        if (classes == NULL) {
            out_string(c, "SERVER_ERROR out of memory");
            return;
        }
        size_t len = 0;
        crawler_result rv = CRAWLER_ERROR;
        char *dump = lru_crawler_metadump(classes, &len, &rv);
        free(classes);
        if (dump != NULL)
            send_heap(c, dump, len, NULL);
        else
            crawler_answer(c, rv == CRAWLER_OK ? CRAWLER_ERROR : rv);
    } else if (t->nwords == 3 && proto_tok_eq(sub, "tocrawl")) {
        uint32_t tocrawl;
        if (!proto_strtoul(t->tok[2].value, t->tok[2].length, &tocrawl)) {
            out_string(c, "CLIENT_ERROR bad command line format");
            return;
        }
        lru_crawler_set_tocrawl(tocrawl);
        out_string(c, "OK");
    } else if (t->nwords == 3 && proto_tok_eq(sub, "sleep")) {
        uint32_t usecs;
        if (!proto_strtoul(t->tok[2].value, t->tok[2].length, &usecs)) {
            out_string(c, "CLIENT_ERROR bad command line format");
            return;
        }
        if (usecs > 1000000) {
            out_string(c, "CLIENT_ERROR sleep must be one second or less");
            return;
        }
        lru_crawler_set_sleep((int)usecs);
        out_string(c, "OK");
    } else if (t->nwords == 2) {
        if (proto_tok_eq(sub, "enable")) {
            if (lru_crawler_enable(true) == 0) {
                atomic_store_explicit(&crawler_enabled, 1, memory_order_relaxed);
                out_string(c, "OK");
            } else {
                out_string(c, "ERROR failed to start lru crawler thread");
            }
        } else if (proto_tok_eq(sub, "disable")) {
            if (lru_crawler_enable(false) == 0) {
                atomic_store_explicit(&crawler_enabled, 0, memory_order_relaxed);
                out_string(c, "OK");
            } else {
                out_string(c, "ERROR failed to stop lru crawler thread");
            }
        } else {
            out_string(c, "ERROR");
        }
    } else {
        out_string(c, "ERROR");
    }
}

static void process_lru(conn *c, const proto_tokens *t) {
    const proto_token *sub = &t->tok[1];

    set_noreply_maybe(c, t);
    if (proto_tok_eq(sub, "tune") && t->nwords >= 6) {
        uint32_t hot_pct, warm_pct;
        double hot_factor, warm_factor;
        if (!proto_strtoul(t->tok[2].value, t->tok[2].length, &hot_pct) ||
            !proto_strtoul(t->tok[3].value, t->tok[3].length, &warm_pct) ||
            !proto_strtod(t->tok[4].value, t->tok[4].length, &hot_factor) ||
            !proto_strtod(t->tok[5].value, t->tok[5].length, &warm_factor)) {
            out_string(c, "ERROR");
        } else if ((uint64_t)hot_pct + warm_pct > 80) {
            out_string(c, "ERROR hot and warm pcts must not exceed 80");
        } else if (warm_factor <= 0 || hot_factor <= 0) {
            out_string(c, "ERROR hot/warm age factors must be greater than 0");
        } else {
            lru_set_tune(hot_pct, warm_pct, hot_factor, warm_factor);
            out_string(c, "OK");
        }
    } else if (proto_tok_eq(sub, "mode") && t->nwords >= 3 && settings.lru_maintainer) {
        if (proto_tok_eq(&t->tok[2], "flat") && lru_set_mode(false) == 0)
            out_string(c, "OK");
        else if (proto_tok_eq(&t->tok[2], "segmented") && lru_set_mode(true) == 0)
            out_string(c, "OK");
        else
            out_string(c, "ERROR");
    } else if (proto_tok_eq(sub, "temp_ttl") && t->nwords >= 3 && settings.lru_maintainer) {
        int32_t ttl;
        if (!proto_strtol(t->tok[2].value, t->tok[2].length, &ttl)) {
            out_string(c, "ERROR");
        } else {
            lru_set_temp_ttl(ttl);          /* < 0 turns the TEMP LRU off */
            out_string(c, "OK");
        }
    } else {
        out_string(c, "ERROR");
    }
}

/* ====================================================================== */
/* dispatch                                                               */
/* ====================================================================== */

/* memcached's checks on the number of memcached tokens (words + 1). */
static bool want_tokens(conn *c, const proto_tokens *t, size_t min, size_t max) {
    size_t n = proto_ntokens(t);
    if (n < min || n > max) {
        out_string(c, "ERROR");
        return false;
    }
    return true;
}

static bool want_tokens_or(conn *c, const proto_tokens *t, size_t a, size_t b) {
    size_t n = proto_ntokens(t);
    if (n != a && n != b) {
        out_string(c, "ERROR");
        return false;
    }
    return true;
}

void proto_process_line(conn *c, char *line, size_t len) {
    proto_tokens t;

    c->noreply = false;
    /* memcached parses C strings: a NUL ends the command */
    const char *nul = memchr(line, '\0', len);
    if (nul != NULL)
        len = (size_t)(nul - line);

    proto_tokenize(line, len, &t);
    if (t.nwords == 0 || t.tok[0].length < 2) {
        out_string(c, "ERROR");
        return;
    }

    const proto_token *cmd = &t.tok[0];
    const char first = cmd->value[0];

    if (first == 'm' && cmd->length == 2) {
        proto_meta_dispatch(c, &t);
    } else if (first == 'g') {
        /* the common case first */
        if (!want_tokens(c, &t, 3, SIZE_MAX))
            return;
        if (proto_tok_eq(cmd, "get"))
            process_get(c, &t, false, false);
        else if (proto_tok_eq(cmd, "gets"))
            process_get(c, &t, true, false);
        else if (proto_tok_eq(cmd, "gat"))
            process_get(c, &t, false, true);
        else if (proto_tok_eq(cmd, "gats"))
            process_get(c, &t, true, true);
        else
            out_string(c, "ERROR");
    } else if (first == 's') {
        if (proto_tok_eq(cmd, "set")) {
            if (want_tokens_or(c, &t, 6, 7))
                process_update(c, &t, STORE_SET, false);
        } else if (proto_tok_eq(cmd, "stats")) {
            process_stats(c, &t);
        } else if (proto_tok_eq(cmd, "shutdown")) {
            /* pinstack-cache has no -A: as memcached without it */
            out_string(c, "ERROR: shutdown not enabled");
        } else if (proto_tok_eq(cmd, "slabs")) {
            process_slabs(c, &t);
        } else {
            out_string(c, "ERROR");
        }
    } else if (first == 'a') {
        if (proto_tok_eq(cmd, "add")) {
            if (want_tokens_or(c, &t, 6, 7))
                process_update(c, &t, STORE_ADD, false);
        } else if (proto_tok_eq(cmd, "append")) {
            if (want_tokens_or(c, &t, 6, 7))
                process_update(c, &t, STORE_APPEND, false);
        } else {
            out_string(c, "ERROR");
        }
    } else if (first == 'c') {
        if (proto_tok_eq(cmd, "cas")) {
            if (want_tokens_or(c, &t, 7, 8))
                process_update(c, &t, STORE_CAS, true);
        } else if (proto_tok_eq(cmd, "cache_memlimit")) {
            if (want_tokens_or(c, &t, 3, 4))
                process_memlimit(c, &t);
        } else {
            out_string(c, "ERROR");
        }
    } else if (first == 'i') {
        if (proto_tok_eq(cmd, "incr")) {
            if (want_tokens_or(c, &t, 4, 5))
                process_arithmetic(c, &t, true);
        } else {
            out_string(c, "ERROR");
        }
    } else if (first == 'd') {
        if (proto_tok_eq(cmd, "delete")) {
            if (want_tokens(c, &t, 3, 5))
                process_delete(c, &t);
        } else if (proto_tok_eq(cmd, "decr")) {
            if (want_tokens_or(c, &t, 4, 5))
                process_arithmetic(c, &t, false);
        } else {
            out_string(c, "ERROR");
        }
    } else if (first == 't') {
        if (proto_tok_eq(cmd, "touch")) {
            if (want_tokens_or(c, &t, 4, 5))
                process_touch(c, &t);
        } else {
            out_string(c, "ERROR");
        }
    } else if (proto_tok_eq(cmd, "replace")) {
        if (want_tokens_or(c, &t, 6, 7))
            process_update(c, &t, STORE_REPLACE, false);
    } else if (proto_tok_eq(cmd, "prepend")) {
        if (want_tokens_or(c, &t, 6, 7))
            process_update(c, &t, STORE_PREPEND, false);
    } else if (proto_tok_eq(cmd, "bget")) {
        /* an ancient alias of get that memcached still answers */
        if (want_tokens(c, &t, 3, SIZE_MAX))
            process_get(c, &t, false, false);
    } else if (proto_tok_eq(cmd, "flush_all")) {
        if (want_tokens(c, &t, 2, 4))
            process_flush_all(c, &t);
    } else if (proto_tok_eq(cmd, "version")) {
        out_string(c, "VERSION " PS_CACHE_VERSION);
    } else if (proto_tok_eq(cmd, "quit")) {
        /* answers already queued still go out; nothing after this line is
         * parsed */
        c->close_after_write = true;
    } else if (proto_tok_eq(cmd, "lru_crawler")) {
        process_lru_crawler(c, &t);
    } else if (proto_tok_eq(cmd, "verbosity")) {
        if (want_tokens_or(c, &t, 3, 4))
            process_verbosity(c, &t);
    } else if (proto_tok_eq(cmd, "lru")) {
        if (want_tokens(c, &t, 3, SIZE_MAX))
            process_lru(c, &t);
    } else {
        /* an HTTP request line: not a memcached client, hang up as
         * memcached does */
        const proto_token *last = &t.tok[t.nwords - 1];
        if (last->length >= 5 && memcmp(last->value, "HTTP/", 5) == 0)
            c->close_now = true;
        else
            out_string(c, "ERROR");
    }
}
