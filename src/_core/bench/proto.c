/*
 * proto.c - memcached request encoders and the incremental reply parser
 * (contract in proto.h).
 *
 * WHAT EACH REQUEST MAY BE ANSWERED WITH
 *
 *   text get k1..kn   (VALUE <key> <flags> <bytes> [<cas>]\r\n<data>\r\n)* END\r\n
 *                     at most n VALUE blocks
 *   text set          STORED | NOT_STORED | EXISTS | NOT_FOUND
 *   meta get, 1 key   mg <key> v     -> VA <bytes> <flags>*\r\n<data>\r\n | EN | HD
 *   meta get, n keys  (mg <key> v q)* mn
 *                     -> (VA ...\r\n<data>\r\n | HD)* MN    (q hides the misses)
 *   meta set          ms <key> <bytes> [T<ttl>] -> HD | NS | EX | NF
 *   any               ERROR | CLIENT_ERROR <msg> | SERVER_ERROR <msg>
 *
 * Everything else is garbage (PROTO_BAD): a line not in the table, a line
 * not ended by \r\n or longer than PROTO_LINE_MAX, a value block not
 * followed by \r\n, more values than keys asked for, a malformed number.
 *
 * An error line inside a meta multi-get (before MN) is one key's error and
 * parsing goes on to MN, except a bare ERROR: that is how a server without
 * meta commands answers every line, and then no MN will come, so the reply
 * ends there marked desync (the connection must be reset).
 *
 * STATE KEPT BETWEEN CALLS: whether we are inside a value block and how many
 * of its bytes (data plus CRLF) are still to come, the values seen so far in
 * this reply, and the reply's byte count. Lines are only ever parsed whole:
 * an incomplete line stays in the caller's buffer until its \n arrives.
 *
 * Threads: none.
 */
#include "proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workload.h" /* enum bench_op */

int buf_reserve(bench_buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    if (b->off > 0) { /* reclaim the consumed front first */
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->len + extra <= b->cap)
            return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL)
        return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

void buf_free(bench_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->off = b->cap = 0;
}

void proto_parser_reset(proto_parser *p)
{
    p->in_value = 0;
    p->done_after_value = 0;
    p->saw_error = 0;
    p->value_left = 0;
    p->hits = 0;
    p->bytes = 0;
    p->why[0] = '\0';
}

/* ---- parsing helpers ---------------------------------------------------- */

/* line[0..n) starts with the literal `word` followed by the end or a space. */
static int is_word(const char *line, size_t n, const char *word, size_t wlen)
{
    return n >= wlen && memcmp(line, word, wlen) == 0 && (n == wlen || line[wlen] == ' ');
}
#define IS_WORD(line, n, lit) is_word((line), (n), (lit), sizeof(lit) - 1)

static int is_error_line(const char *line, size_t n)
{
    return IS_WORD(line, n, "ERROR") || IS_WORD(line, n, "CLIENT_ERROR") ||
           IS_WORD(line, n, "SERVER_ERROR");
}

/* Next space-separated token of line[*pos..n); 0 when there is none. */
static int next_token(const char *line, size_t n, size_t *pos, const char **tok, size_t *tok_len)
{
    size_t i = *pos;
    if (i >= n)
        return 0;
    if (line[i] != ' ')
        return 0;
    i++; /* exactly one separator, as memcached writes */
    size_t start = i;
    while (i < n && line[i] != ' ')
        i++;
    if (i == start)
        return 0;
    *tok = line + start;
    *tok_len = i - start;
    *pos = i;
    return 1;
}

static int parse_u64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 20)
        return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

/* "VALUE <key> <flags> <bytes> [<cas>]" -> bytes */
static int parse_value_line(const char *line, size_t n, uint64_t *bytes)
{
    size_t pos = 5; /* after "VALUE" */
    const char *tok;
    size_t tok_len;
    uint64_t number;
    if (!next_token(line, n, &pos, &tok, &tok_len) || tok_len > 250) /* key */
        return 0;
    if (!next_token(line, n, &pos, &tok, &tok_len) || !parse_u64(tok, tok_len, &number) ||
        number > UINT32_MAX) /* flags */
        return 0;
    if (!next_token(line, n, &pos, &tok, &tok_len) || !parse_u64(tok, tok_len, bytes)) /* bytes */
        return 0;
    if (next_token(line, n, &pos, &tok, &tok_len) && !parse_u64(tok, tok_len, &number)) /* cas */
        return 0;
    return pos == n;
}

/* "VA <bytes> <flags>*" -> bytes */
static int parse_va_line(const char *line, size_t n, uint64_t *bytes)
{
    size_t pos = 2;
    const char *tok;
    size_t tok_len;
    if (!next_token(line, n, &pos, &tok, &tok_len) || !parse_u64(tok, tok_len, bytes))
        return 0;
    while (next_token(line, n, &pos, &tok, &tok_len))
        ; /* meta flags: whatever was asked for */
    return pos == n;
}

static const char *op_name(const proto_expect *exp)
{
    return exp->op == BENCH_OP_SET ? "set" : "get";
}

void proto_quote(char *out, size_t outlen, const char *line, size_t n)
{
    size_t o = 0;
    if (outlen < 8)
        return;
    out[o++] = '"';
    for (size_t i = 0; i < n && i < 60 && o + 6 < outlen; i++) {
        unsigned char ch = (unsigned char)line[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') {
            out[o++] = (char)ch;
        } else {
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", ch);
        }
    }
    if (n > 60 && o + 4 < outlen) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = '\0';
}

static void bad(proto_parser *p, const char *what, const proto_expect *exp, const char *line,
                size_t n)
{
    char quoted[100];
    proto_quote(quoted, sizeof(quoted), line, n);
    snprintf(p->why, sizeof(p->why), "%s to a %s%s: %s", what, exp->meta ? "meta " : "",
             op_name(exp), quoted);
}

static void remember_error(proto_parser *p, const char *line, size_t n)
{
    if (n >= sizeof(p->why))
        n = sizeof(p->why) - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)line[i];
        p->why[i] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    p->why[n] = '\0';
}

/* ---- the reply state machine ------------------------------------------- */

enum line_result { LINE_CONTINUE, LINE_DONE, LINE_BAD };

static int reject(proto_parser *p, const char *what, const proto_expect *exp, const char *line,
                  size_t n)
{
    bad(p, what, exp, line, n);
    return LINE_BAD;
}

static int finish(proto_parser *p, proto_reply *reply, int outcome, int desync)
{
    reply->hits = p->hits;
    reply->outcome = (uint8_t)outcome;
    reply->desync = (uint8_t)desync;
    return LINE_DONE;
}

static int start_value(proto_parser *p, const proto_expect *exp, uint64_t bytes,
                       const char *line, size_t n, int done_after)
{
    if (bytes > PROTO_VALUE_MAX)
        return reject(p, "value length out of range in reply", exp, line, n);
    if (++p->hits > exp->nkeys)
        return reject(p, "more values than keys asked for in reply", exp, line, n);
    p->in_value = 1;
    p->value_left = bytes + 2;
    p->done_after_value = (uint8_t)done_after;
    return LINE_CONTINUE;
}

static int text_get_line(proto_parser *p, const proto_expect *exp, const char *line, size_t n,
                         proto_reply *reply)
{
    uint64_t bytes;
    if (IS_WORD(line, n, "VALUE")) {
        if (!parse_value_line(line, n, &bytes))
            return reject(p, "malformed VALUE line in reply", exp, line, n);
        return start_value(p, exp, bytes, line, n, 0);
    }
    if (n == 3 && memcmp(line, "END", 3) == 0)
        return finish(p, reply, PROTO_OK, 0);
    if (is_error_line(line, n)) {
        remember_error(p, line, n);
        return finish(p, reply, PROTO_ERROR, 0);
    }
    return reject(p, "unexpected reply", exp, line, n);
}

static int text_set_line(proto_parser *p, const proto_expect *exp, const char *line, size_t n,
                         proto_reply *reply)
{
    if (n == 6 && memcmp(line, "STORED", 6) == 0)
        return finish(p, reply, PROTO_OK, 0);
    if ((n == 10 && memcmp(line, "NOT_STORED", 10) == 0) ||
        (n == 6 && memcmp(line, "EXISTS", 6) == 0) ||
        (n == 9 && memcmp(line, "NOT_FOUND", 9) == 0))
        return finish(p, reply, PROTO_NOT_STORED, 0);
    if (is_error_line(line, n)) {
        remember_error(p, line, n);
        return finish(p, reply, PROTO_ERROR, 0);
    }
    return reject(p, "unexpected reply", exp, line, n);
}

static int meta_get_line(proto_parser *p, const proto_expect *exp, const char *line, size_t n,
                         proto_reply *reply)
{
    int single = exp->nkeys == 1;
    uint64_t bytes;
    if (IS_WORD(line, n, "VA")) {
        if (!parse_va_line(line, n, &bytes))
            return reject(p, "malformed VA line in reply", exp, line, n);
        return start_value(p, exp, bytes, line, n, single);
    }
    if (IS_WORD(line, n, "HD")) { /* a hit without a value */
        if (++p->hits > exp->nkeys)
            return reject(p, "more values than keys asked for in reply", exp, line, n);
        return single ? finish(p, reply, PROTO_OK, 0) : LINE_CONTINUE;
    }
    if (IS_WORD(line, n, "EN"))
        return single ? finish(p, reply, PROTO_OK, 0) : LINE_CONTINUE;
    if (!single && IS_WORD(line, n, "MN"))
        return finish(p, reply, p->saw_error ? PROTO_ERROR : PROTO_OK, 0);
    if (is_error_line(line, n)) {
        remember_error(p, line, n);
        if (single)
            return finish(p, reply, PROTO_ERROR, 0);
        if (IS_WORD(line, n, "ERROR")) /* no meta commands here: no MN will come */
            return finish(p, reply, PROTO_ERROR, 1);
        p->saw_error = 1;
        return LINE_CONTINUE;
    }
    return reject(p, "unexpected reply", exp, line, n);
}

static int meta_set_line(proto_parser *p, const proto_expect *exp, const char *line, size_t n,
                         proto_reply *reply)
{
    if (IS_WORD(line, n, "HD"))
        return finish(p, reply, PROTO_OK, 0);
    if (IS_WORD(line, n, "NS") || IS_WORD(line, n, "EX") || IS_WORD(line, n, "NF"))
        return finish(p, reply, PROTO_NOT_STORED, 0);
    if (is_error_line(line, n)) {
        remember_error(p, line, n);
        return finish(p, reply, PROTO_ERROR, 0);
    }
    return reject(p, "unexpected reply", exp, line, n);
}

static int handle_line(proto_parser *p, const proto_expect *exp, const char *line, size_t n,
                       proto_reply *reply)
{
    if (exp->meta)
        return exp->op == BENCH_OP_SET ? meta_set_line(p, exp, line, n, reply)
                                       : meta_get_line(p, exp, line, n, reply);
    return exp->op == BENCH_OP_SET ? text_set_line(p, exp, line, n, reply)
                                   : text_get_line(p, exp, line, n, reply);
}

static void reset_for_next_reply(proto_parser *p)
{
    p->in_value = 0;
    p->done_after_value = 0;
    p->saw_error = 0;
    p->value_left = 0;
    p->hits = 0;
    p->bytes = 0;
}

int proto_parse(proto_parser *p, const proto_expect *exp, const char *buf, size_t len,
                size_t *consumed, proto_reply *reply)
{
    size_t pos = 0;
    for (;;) {
        if (p->in_value) {
            /* Skip the value's data, then insist on its CRLF. */
            if (p->value_left > 2) {
                size_t avail = len - pos;
                uint64_t data_left = p->value_left - 2;
                size_t skip = avail < data_left ? avail : (size_t)data_left;
                pos += skip;
                p->value_left -= skip;
            }
            while (p->value_left > 0 && p->value_left <= 2 && pos < len) {
                char want = p->value_left == 2 ? '\r' : '\n';
                if (buf[pos] != want) {
                    bad(p, "value not followed by \\r\\n in reply", exp, buf + pos,
                        len - pos < 16 ? len - pos : 16);
                    *consumed = pos;
                    return PROTO_BAD;
                }
                pos++;
                p->value_left--;
            }
            if (p->value_left > 0) {
                p->bytes += pos;
                *consumed = pos;
                return PROTO_MORE;
            }
            p->in_value = 0;
            if (p->done_after_value) {
                finish(p, reply, PROTO_OK, 0);
                reply->bytes = p->bytes + pos;
                reset_for_next_reply(p);
                *consumed = pos;
                return PROTO_DONE;
            }
            continue;
        }

        const char *line = buf + pos;
        size_t avail = len - pos;
        const char *nl = memchr(line, '\n', avail);
        if (nl == NULL) {
            if (avail > PROTO_LINE_MAX) {
                bad(p, "reply line too long", exp, line, avail);
                *consumed = pos;
                return PROTO_BAD;
            }
            p->bytes += pos;
            *consumed = pos;
            return PROTO_MORE;
        }
        size_t n = (size_t)(nl - line); /* without the \n */
        if (n == 0 || line[n - 1] != '\r') {
            bad(p, "reply line not ended by \\r\\n", exp, line, n);
            *consumed = pos;
            return PROTO_BAD;
        }
        n--; /* without the \r */
        if (n > PROTO_LINE_MAX) {
            bad(p, "reply line too long", exp, line, n);
            *consumed = pos;
            return PROTO_BAD;
        }
        pos += n + 2;
        int r = handle_line(p, exp, line, n, reply);
        if (r == LINE_BAD) {
            *consumed = pos;
            return PROTO_BAD;
        }
        if (r == LINE_DONE) {
            reply->bytes = p->bytes + pos;
            reset_for_next_reply(p);
            *consumed = pos;
            return PROTO_DONE;
        }
    }
}

/* ---- encoders ----------------------------------------------------------- */

static size_t put_u32(char *out, uint32_t v)
{
    char digits[10];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = digits[n - 1 - i];
    return n;
}

#define PUT_LIT(p, lit)                      \
    do {                                     \
        memcpy((p), (lit), sizeof(lit) - 1); \
        (p) += sizeof(lit) - 1;              \
    } while (0)

size_t proto_encode_set(bench_buf *b, int meta, const char *key, size_t key_len,
                        const char *value, uint32_t value_len, uint32_t expiry)
{
    /* "set " key " 0 " exp " " len "\r\n" value "\r\n" is the longer form */
    if (buf_reserve(b, key_len + value_len + 48) != 0)
        return 0;
    char *start = b->data + b->len;
    char *o = start;
    if (meta) {
        PUT_LIT(o, "ms ");
        memcpy(o, key, key_len);
        o += key_len;
        *o++ = ' ';
        o += put_u32(o, value_len);
        if (expiry != 0) {
            PUT_LIT(o, " T");
            o += put_u32(o, expiry);
        }
    } else {
        PUT_LIT(o, "set ");
        memcpy(o, key, key_len);
        o += key_len;
        PUT_LIT(o, " 0 ");
        o += put_u32(o, expiry);
        *o++ = ' ';
        o += put_u32(o, value_len);
    }
    PUT_LIT(o, "\r\n");
    memcpy(o, value, value_len);
    o += value_len;
    PUT_LIT(o, "\r\n");
    size_t n = (size_t)(o - start);
    b->len += n;
    return n;
}

size_t proto_encode_get(bench_buf *b, int meta, const char *const *keys,
                        const size_t *key_lens, uint32_t nkeys)
{
    size_t need = 8;
    for (uint32_t i = 0; i < nkeys; i++)
        need += key_lens[i] + 12;
    if (buf_reserve(b, need) != 0)
        return 0;
    char *start = b->data + b->len;
    char *o = start;
    if (meta && nkeys == 1) {
        PUT_LIT(o, "mg ");
        memcpy(o, keys[0], key_lens[0]);
        o += key_lens[0];
        PUT_LIT(o, " v\r\n");
    } else if (meta) {
        for (uint32_t i = 0; i < nkeys; i++) {
            PUT_LIT(o, "mg ");
            memcpy(o, keys[i], key_lens[i]);
            o += key_lens[i];
            PUT_LIT(o, " v q\r\n");
        }
        PUT_LIT(o, "mn\r\n");
    } else {
        PUT_LIT(o, "get");
        for (uint32_t i = 0; i < nkeys; i++) {
            *o++ = ' ';
            memcpy(o, keys[i], key_lens[i]);
            o += key_lens[i];
        }
        PUT_LIT(o, "\r\n");
    }
    size_t n = (size_t)(o - start);
    b->len += n;
    return n;
}
