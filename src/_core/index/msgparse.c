/*
 * msgparse.c - the leaf's message parser: strict JSON (RFC 8259) and the
 * message rules of docs/leaf-stream.md, against a schema, in C.
 *
 * WHAT IT DOES
 *
 * One stream record in, one verdict out: either an op (index or delete:
 * key, version, text, keyword terms, score, blob) that RealtimeSegment's
 * add_batch is sure to accept, or the rule the record breaks (its code:
 * too_large, encoding, json, not_object, unknown_key, missing, type,
 * range, unknown_field, empty, limit) and a sentence a person can act on.
 * This is the contract pinstack.leaf.message.parse_message documents; the
 * Python there is only glue (_index.pyx turns results into Op tuples and
 * MessageErrors). The rules and the sentences were those of the earlier
 * Python implementation (json.loads, then checks), and they are kept to the
 * letter, down to which error wins when a record breaks several rules, and
 * the wording of Python 3.11's JSON and UTF-8 errors (positions counted in
 * characters, as Python counts them).
 *
 * HOW IT WORKS
 *
 * 1. The size limit.
 * 2. A recursive-descent parse into a flat tree of nodes (mp_node, 24
 *    bytes): children follow their parent, `end` skips a subtree. String
 *    contents are scanned eight bytes at a time, and their non-ASCII
 *    sequences checked as UTF-8 on the way (outside strings only ASCII can
 *    parse, so a record that parses is valid UTF-8). A record that does not
 *    parse is checked whole: its first bad byte, if any, is the error
 *    (Python decoded before parsing), reported as Python's UTF-8 decoder
 *    reports it ("invalid continuation byte"...); else the JSON error.
 *    Strings without escapes are not copied: the node points into the record.
 *    Strings with escapes are decoded into w->sbuf. Numbers keep their
 *    literal (a span of the record); they are converted only where a value
 *    is needed (version, score, keyword terms, the payload's re-encoding).
 * 3. The rules, in the order the Python implementation applied them, over
 *    the tree. Outputs are copied into w->out.
 *
 * Objects behave like Python dicts built by json.loads: a key given twice
 * keeps its first position and its last value. The message's own keys go
 * to six slots (last wins); "fields" is walked in first-position order
 * with each field's last value (a per-schema-field stamp array); payload
 * objects are deduplicated when re-encoded (obj_members: naive compare for
 * small objects, a hash table for big ones, so hostile input stays linear).
 *
 * WHAT IS ACCEPTED AND REFUSED
 *
 * JSON: RFC 8259 exactly: no NaN/Infinity (refused with Python's "NaN is
 * not valid JSON"), no trailing commas, no comments, no single quotes, no
 * leading zeros, no control characters inside strings, whitespace only
 * " \t\n\r", nothing after the value. \uXXXX escapes are decoded, an escaped
 * surrogate pair into its code point; a lone surrogate escape is kept in
 * the generalized UTF-8 form (3 bytes, flagged F_LONE) and refused
 * ("encoding") only where a string is kept: the key, a text field, a
 * keyword value, and the payload when it is stored (store "payload", or
 * "source": the record is the blob then). Elsewhere it is harmless and
 * accepted, as json.loads accepts it. Integer literals longer than
 * int_max_digits (Python's int_max_str_digits, 4300) are refused as json,
 * as json.loads refuses them; nesting deeper than MP_DEPTH_MAX (900:
 * below Python's default recursion limit of 1000, so json.loads of an
 * accepted record works from any ordinary stack depth; the Python limit
 * depended on the caller's stack) as well.
 *
 * Values: version an integer literal within int64 (2.0 is a "type" error
 * "with a fraction"; booleans are not numbers); score a number whose double
 * is finite (1e999 and 10**400 are "range"; an integer score becomes the
 * correctly rounded double, -0 becoming 0.0); key 1..1024 bytes; a keyword
 * value a non-empty string or an integer (decimal, as Python prints it), or
 * an array of them, each term "name:value" at most 255 bytes; a text value
 * a string or an array of strings, all joined with "\n" in message order.
 *
 * store "payload" re-encodes the payload as Python's
 * json.dumps(payload, ensure_ascii=False, separators=(",", ":")) would,
 * byte for byte: floats in repr()'s shortest round-trip form, integers in
 * decimal, strings with only '"', '\\' and control characters escaped
 * ("\n", "\u001f"), duplicate keys resolved. One difference: a payload
 * number that overflows a double (1e999) is a "range" error, where the
 * Python encoder raised a bare ValueError that no caller handled (with
 * store "source" such a payload is accepted, whatever else the record
 * holds: the Python raised the same ValueError there when the record also
 * had a \u escape).
 *
 * THREADS AND MEMORY
 *
 * An mp_parser is read-only after mp_parser_new. An mp_work belongs to
 * one thread at a time. Nothing else is shared; no locks, no globals (the
 * "C" locale for strtod_l lives in the parser). Every allocation can fail:
 * mp_parse then returns MP_NOMEM and the work stays usable.
 */
#define _GNU_SOURCE
#include "msgparse.h"

#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the tree ---------------------------------------------------------- */

enum { T_NULL, T_FALSE, T_TRUE, T_INT, T_FLOAT, T_STR, T_ARR, T_OBJ };

#define F_ESC 1   /* string: decoded into w->sbuf (else its bytes are in the record) */
#define F_LONE 2  /* string: holds a lone surrogate (from a \u escape) */
#define F_SUB 4   /* array/object: some string below (key or value) has F_LONE */

typedef struct {
    uint8_t type;   /* T_* */
    uint8_t flags;  /* F_* */
    uint16_t unused;
    uint32_t count; /* array: values; object: members (a key node, then its value) */
    uint32_t end;   /* index of the first node after this subtree */
    uint32_t pos;   /* offset in the record of the first byte (quote, digit, bracket) */
    uint32_t len;   /* number: literal bytes; string: decoded bytes */
    uint32_t str;   /* string: offset of the decoded bytes (record, or w->sbuf if F_ESC) */
} mp_node;

typedef struct {
    char *p;
    size_t n, cap;
} mp_buf;

struct mp_work {
    /* per message */
    mp_node *nodes;
    size_t nnodes, cap_nodes;
    mp_buf sbuf;          /* decoded strings */
    uint32_t *u;          /* a stack of uint32 scratch (fields order, dedupe tables) */
    size_t nu, cap_u;
    uint32_t *fstamp;     /* per schema field: the message that saw it (gen) */
    uint32_t *fval;       /* per schema field: its last value's node */
    size_t cap_f;
    uint32_t gen;
    /* per batch: what results point at */
    mp_buf out;
    mp_span *terms;
    size_t nterms, cap_terms;
    mp_part *parts;
    size_t nparts, cap_parts;
};

typedef struct {
    char *name;
    uint32_t len;
    int text;
} mp_field;

struct mp_parser {
    mp_field *fields;
    uint32_t nfields;
    uint32_t *table;      /* open addressing over field names: index + 1, 0 = empty */
    uint32_t mask;
    char *names;          /* "a, b, c" (sorted) or "none", for unknown_field */
    size_t names_len;
    int store;
    uint32_t max_message_bytes, max_terms, int_max_digits;
    locale_t cloc;        /* "C", for strtod_l */
};

typedef struct {
    const mp_parser *p;
    mp_work *w;
    const unsigned char *s;
    size_t n;
    /* a JSON error: Python's message, and the byte offset it names (if any) */
    const char *jmsg;
    size_t jpos;
    int jhaspos;
    int nomem;
    size_t part0;   /* this message's first part: earlier ones belong to earlier results */
    int badutf8;    /* the parse met bad UTF-8 */
    char jbuf[192];
} mp_ctx;

static const char *const CODES[] = {
    "", "too_large", "encoding", "json", "not_object", "unknown_key", "missing", "type",
    "range", "unknown_field", "empty", "limit", "nomem",
};

const char *mp_code(int status)
{
    if (status < 0 || status > MP_NOMEM)
        return "";
    return CODES[status];
}

/* ---- growable memory --------------------------------------------------- */

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 4 / size)
            return -1;
        c *= 2;
    }
    void *q = realloc(*p, c * size);
    if (q == NULL)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int buf_put(mp_buf *b, const void *src, size_t n)
{
    if (n == 0)
        return 0;
    if (grow((void **)&b->p, &b->cap, b->n + n, 1))
        return -1;
    memcpy(b->p + b->n, src, n);
    b->n += n;
    return 0;
}

static inline int buf_byte(mp_buf *b, char c)
{
    if (b->n == b->cap && grow((void **)&b->p, &b->cap, b->n + 1, 1))
        return -1;
    b->p[b->n++] = c;
    return 0;
}

static int nomem(mp_ctx *c)
{
    c->nomem = 1;
    return -1;
}

/* push k uint32 on the scratch stack; returns the base index or -1 */
static int64_t u_push(mp_ctx *c, size_t k)
{
    mp_work *w = c->w;
    if (grow((void **)&w->u, &w->cap_u, w->nu + k, sizeof(uint32_t)))
        return nomem(c);
    size_t base = w->nu;
    w->nu += k;
    return (int64_t)base;
}

/* ---- outputs and error sentences --------------------------------------- */

static int out_put(mp_ctx *c, const void *p, size_t n)
{
    if (buf_put(&c->w->out, p, n))
        return nomem(c);
    return 0;
}

/* Append a part; adjacent TEXT parts of this message that touch in w->out
 * are merged. */
static void part_add(mp_ctx *c, int kind, const void *p, size_t n)
{
    mp_work *w = c->w;
    size_t off = w->out.n;
    if (out_put(c, p, n))
        return;
    if (kind == MP_PART_TEXT && w->nparts > c->part0) {
        mp_part *last = &w->parts[w->nparts - 1];
        if (last->kind == MP_PART_TEXT && last->off + last->len == off) {
            last->len += n;
            return;
        }
    }
    if (grow((void **)&w->parts, &w->cap_parts, w->nparts + 1, sizeof(mp_part))) {
        nomem(c);
        return;
    }
    w->parts[w->nparts].kind = kind;
    w->parts[w->nparts].off = off;
    w->parts[w->nparts].len = n;
    w->nparts++;
}

static void text(mp_ctx *c, const char *s)
{
    part_add(c, MP_PART_TEXT, s, strlen(s));
}

static void textn(mp_ctx *c, const void *s, size_t n)
{
    part_add(c, MP_PART_TEXT, s, n);
}

__attribute__((format(printf, 2, 3)))
static void textf(mp_ctx *c, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (k < 0)
        return;
    part_add(c, MP_PART_TEXT, buf, (size_t)k < sizeof buf ? (size_t)k : sizeof buf - 1);
}

static void repr(mp_ctx *c, const void *s, size_t n)
{
    part_add(c, MP_PART_REPR, s, n);
}

/* ---- strings, numbers -------------------------------------------------- */

static inline const char *sbytes(const mp_ctx *c, const mp_node *nd)
{
    return (nd->flags & F_ESC) ? c->w->sbuf.p + nd->str : (const char *)c->s + nd->str;
}

static inline const char *lit(const mp_ctx *c, const mp_node *nd)
{
    return (const char *)c->s + nd->pos;
}

static int str_eq(const mp_ctx *c, const mp_node *a, const mp_node *b)
{
    return a->len == b->len && memcmp(sbytes(c, a), sbytes(c, b), a->len) == 0;
}

static int str_is(const mp_ctx *c, const mp_node *nd, const char *s)
{
    size_t n = strlen(s);
    return nd->type == T_STR && nd->len == n && memcmp(sbytes(c, nd), s, n) == 0;
}

/* Code points in UTF-8 (or generalized UTF-8) bytes. */
static size_t u8_chars(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* Bytes of the first `chars` code points. */
static size_t u8_prefix(const char *s, size_t n, size_t chars)
{
    size_t i = 0;
    while (i < n) {
        if (((unsigned char)s[i] & 0xC0) != 0x80) {
            if (chars == 0)
                break;
            chars--;
        }
        i++;
    }
    return i;
}

static const char *type_name(int t)
{
    switch (t) {
    case T_NULL: return "null";
    case T_FALSE: case T_TRUE: return "boolean";
    case T_INT: case T_FLOAT: return "number";
    case T_STR: return "string";
    case T_ARR: return "array";
    default: return "object";
    }
}

/* An integer literal as Python prints the int: only "-0" changes. */
static void int_text(const mp_ctx *c, const mp_node *nd, const char **p, size_t *n)
{
    *p = lit(c, nd);
    *n = nd->len;
    if (nd->len == 2 && (*p)[0] == '-' && (*p)[1] == '0') {
        *p += 1;
        *n = 1;
    }
}

static int parse_i64(const char *p, size_t n, int64_t *out)
{
    int neg = n > 0 && p[0] == '-';
    uint64_t v = 0;
    for (size_t i = (size_t)neg; i < n; i++) {
        unsigned d = (unsigned)(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1)
            return -1;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX)
            return -1;
        *out = (int64_t)v;
    }
    return 0;
}

static const double POW10[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* The correctly rounded double of a JSON number literal, as Python's
 * float() gives it (inf when it overflows). Exact fast path (Clinger) for
 * at most 15 digits and a power of ten up to 22; strtod_l otherwise. Out
 * of memory: 0.0 and c->nomem (mp_parse then returns MP_NOMEM). */
static double to_double(mp_ctx *c, const char *p, size_t n)
{
    size_t i = 0;
    int neg = p[0] == '-';
    uint64_t m = 0;
    int digits = 0, frac = 0;
    long exp = 0;
    i = (size_t)neg;
    for (; i < n && p[i] >= '0' && p[i] <= '9'; i++, digits++)
        m = m * 10 + (uint64_t)(p[i] - '0');
    if (i < n && p[i] == '.') {
        for (i++; i < n && p[i] >= '0' && p[i] <= '9'; i++, digits++, frac++)
            m = m * 10 + (uint64_t)(p[i] - '0');
    }
    if (digits <= 15) {
        if (i < n) { /* exponent */
            int eneg = 0;
            i++;
            if (p[i] == '-' || p[i] == '+')
                eneg = p[i++] == '-';
            for (; i < n && exp < 1000; i++)
                exp = exp * 10 + (p[i] - '0');
            if (i < n)
                goto slow; /* a long exponent: strtod saturates it */
            if (eneg)
                exp = -exp;
        }
        long e10 = exp - frac;
        if (e10 >= -22 && e10 <= 22) {
            double v = (double)m;
            v = e10 < 0 ? v / POW10[-e10] : v * POW10[e10];
            return neg ? -v : v;
        }
    }
slow:;
    char small[64];
    char *z = n < sizeof small ? small : malloc(n + 1);
    if (z == NULL) {
        nomem(c);
        return 0.0;
    }
    memcpy(z, p, n);
    z[n] = 0;
    double v = strtod_l(z, NULL, c->p->cloc);
    if (z != small)
        free(z);
    return v;
}

/* ---- repr() of a double: the shortest digits that read back the same --- */

/* digits and exponent of x (> 0, finite) printed with prec significant
 * digits; returns the digit count. */
static int sig_digits(double x, int prec, char *dig, int *exp10)
{
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%.*e", prec - 1, x);
    int nd = 0;
    const char *q = tmp;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9')
            dig[nd++] = *q; /* skips the decimal point, whatever the locale's */
    *exp10 = *q == 'e' ? atoi(q + 1) : 0;
    return nd;
}

static int reads_back(const mp_ctx *c, const char *dig, int nd, int exp10, double x)
{
    char z[64];
    int k = 0;
    z[k++] = dig[0];
    z[k++] = '.';
    for (int i = 1; i < nd; i++)
        z[k++] = dig[i];
    snprintf(z + k, sizeof z - (size_t)k, "e%d", exp10);
    return strtod_l(z, NULL, c->p->cloc) == x;
}

/* Python's float repr (the 'r' format): shortest round-trip digits, then
 * fixed notation for 1e-4 <= |x| < 1e16, exponent notation otherwise. */
static size_t repr_double(const mp_ctx *c, double x, char *out)
{
    size_t k = 0;
    if (signbit(x)) {
        out[k++] = '-';
        x = -x;
    }
    if (isinf(x)) {
        memcpy(out + k, "inf", 3);
        return k + 3;
    }
    if (x == 0) {
        memcpy(out + k, "0.0", 3);
        return k + 3;
    }
    char dig[32];
    int nd = 0, e10 = 0;
    int fm;
    int normal = x >= 2.2250738585072014e-308;
    for (int prec = normal ? 15 : 1; prec <= 17; prec++) {
        nd = sig_digits(x, prec, dig, &e10);
        if (reads_back(c, dig, nd, e10, x))
            break;
        if (prec == 16 && frexp(x, &fm) == 0.5) {
            /* x is a power of two: the gap below it is half the gap above,
             * so the nearest 16 digits may miss while the next up reads back */
            char up[32];
            int ue = e10, i = nd - 1;
            memcpy(up, dig, (size_t)nd);
            while (i >= 0 && up[i] == '9')
                up[i--] = '0';
            if (i >= 0) {
                up[i]++;
            } else {
                up[0] = '1';
                ue++;
            }
            if (reads_back(c, up, nd, ue, x)) {
                memcpy(dig, up, (size_t)nd);
                e10 = ue;
                break;
            }
        }
    }
    while (nd > 1 && dig[nd - 1] == '0')
        nd--;
    int decpt = e10 + 1;
    if (decpt <= -4 || decpt > 16) {
        out[k++] = dig[0];
        if (nd > 1) {
            out[k++] = '.';
            memcpy(out + k, dig + 1, (size_t)nd - 1);
            k += (size_t)nd - 1;
        }
        k += (size_t)snprintf(out + k, 8, "e%+03d", decpt - 1);
    } else if (decpt <= 0) {
        out[k++] = '0';
        out[k++] = '.';
        for (int i = 0; i < -decpt; i++)
            out[k++] = '0';
        memcpy(out + k, dig, (size_t)nd);
        k += (size_t)nd;
    } else if (decpt >= nd) {
        memcpy(out + k, dig, (size_t)nd);
        k += (size_t)nd;
        for (int i = nd; i < decpt; i++)
            out[k++] = '0';
        out[k++] = '.';
        out[k++] = '0';
    } else {
        memcpy(out + k, dig, (size_t)decpt);
        k += (size_t)decpt;
        out[k++] = '.';
        memcpy(out + k, dig + decpt, (size_t)(nd - decpt));
        k += (size_t)(nd - decpt);
    }
    return k;
}

/* ---- UTF-8 validation, with Python's error ----------------------------- */

static inline int cont(unsigned char b)
{
    return (b & 0xC0) == 0x80;
}

/* 0 if valid; else the bad range [*start, *end) and the reason, exactly as
 * CPython's UTF-8 decoder reports its first error. */
static int utf8_check(const unsigned char *s, size_t n, size_t *start, size_t *end,
                      const char **why)
{
    size_t i = 0;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if (v & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        unsigned char ch = s[i];
        if (ch < 0x80) {
            i++;
            continue;
        }
        size_t left = n - i;
        int bad = 0; /* 1 invalid start, 2..4 invalid continuation at +1..+3, -1 end */
        if (ch < 0xC2) {
            bad = 1;
        } else if (ch < 0xE0) {
            if (left < 2)
                bad = -1;
            else if (!cont(s[i + 1]))
                bad = 2;
            else
                i += 2;
        } else if (ch < 0xF0) {
            if (left < 3) {
                if (left < 2)
                    bad = -1;
                else if (!cont(s[i + 1]) || (s[i + 1] < 0xA0 ? ch == 0xE0 : ch == 0xED))
                    bad = 2;
                else
                    bad = -1;
            } else if (!cont(s[i + 1]) || (ch == 0xE0 && s[i + 1] < 0xA0) ||
                       (ch == 0xED && s[i + 1] >= 0xA0)) {
                bad = 2;
            } else if (!cont(s[i + 2])) {
                bad = 3;
            } else {
                i += 3;
            }
        } else if (ch < 0xF5) {
            if (left < 4) {
                if (left < 2)
                    bad = -1;
                else if (!cont(s[i + 1]) || (s[i + 1] < 0x90 ? ch == 0xF0 : ch == 0xF4))
                    bad = 2;
                else if (left < 3)
                    bad = -1;
                else if (!cont(s[i + 2]))
                    bad = 3;
                else
                    bad = -1;
            } else if (!cont(s[i + 1]) || (ch == 0xF0 && s[i + 1] < 0x90) ||
                       (ch == 0xF4 && s[i + 1] >= 0x90)) {
                bad = 2;
            } else if (!cont(s[i + 2])) {
                bad = 3;
            } else if (!cont(s[i + 3])) {
                bad = 4;
            } else {
                i += 4;
            }
        } else {
            bad = 1;
        }
        if (bad) {
            *start = i;
            if (bad == -1) {
                *end = n;
                *why = "unexpected end of data";
            } else if (bad == 1) {
                *end = i + 1;
                *why = "invalid start byte";
            } else {
                *end = i + (size_t)bad - 1;
                *why = "invalid continuation byte";
            }
            return -1;
        }
    }
    return 0;
}

/* The length of the valid UTF-8 sequence at s (s[0] >= 0x80), 0 if none. */
static inline size_t utf8_seq(const unsigned char *s, size_t left)
{
    unsigned char ch = s[0];
    if (ch < 0xC2)
        return 0;
    if (ch < 0xE0)
        return left >= 2 && cont(s[1]) ? 2 : 0;
    if (ch < 0xF0) {
        if (left < 3 || !cont(s[1]) || !cont(s[2]) || (ch == 0xE0 && s[1] < 0xA0) ||
            (ch == 0xED && s[1] >= 0xA0))
            return 0;
        return 3;
    }
    if (ch < 0xF5) {
        if (left < 4 || !cont(s[1]) || !cont(s[2]) || !cont(s[3]) ||
            (ch == 0xF0 && s[1] < 0x90) || (ch == 0xF4 && s[1] >= 0x90))
            return 0;
        return 4;
    }
    return 0;
}

/* ---- JSON parsing (the behaviour of CPython 3.11's json scanner) ------- */

/* Bad UTF-8 inside a string: the parse stops; mp_parse then reports the
 * first bad byte of the whole record, as Python's decoder would. */
static int utf8_bad(mp_ctx *c)
{
    c->badutf8 = 1;
    return -1;
}

static int jerr(mp_ctx *c, const char *msg, size_t pos)
{
    c->jmsg = msg;
    c->jpos = pos;
    c->jhaspos = 1;
    return -1;
}

static int jerr_nopos(mp_ctx *c, const char *msg)
{
    c->jmsg = msg;
    c->jhaspos = 0;
    return -1;
}

static inline size_t skip_ws(const mp_ctx *c, size_t i)
{
    while (i < c->n) {
        unsigned char b = c->s[i];
        if (b != ' ' && b != '\t' && b != '\n' && b != '\r')
            break;
        i++;
    }
    return i;
}

static inline int isdig(unsigned char b)
{
    return b >= '0' && b <= '9';
}

static int new_node(mp_ctx *c, int type, size_t pos, uint32_t *idx)
{
    mp_work *w = c->w;
    if (w->nnodes == w->cap_nodes &&
        grow((void **)&w->nodes, &w->cap_nodes, w->nnodes + 1, sizeof(mp_node)))
        return nomem(c);
    mp_node *nd = &w->nodes[w->nnodes];
    memset(nd, 0, sizeof *nd);
    nd->type = (uint8_t)type;
    nd->pos = (uint32_t)pos;
    *idx = (uint32_t)w->nnodes++;
    nd->end = (uint32_t)w->nnodes;
    return 0;
}

static int hex4(const unsigned char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char h = p[i];
        int d;
        if (h >= '0' && h <= '9')
            d = h - '0';
        else if (h >= 'a' && h <= 'f')
            d = h - 'a' + 10;
        else if (h >= 'A' && h <= 'F')
            d = h - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static int put_cp(mp_buf *b, unsigned cp)
{
    char u[4];
    size_t k;
    if (cp < 0x80) {
        u[0] = (char)cp;
        k = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        k = 2;
    } else if (cp < 0x10000) { /* surrogates too: generalized UTF-8 */
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        k = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        k = 4;
    }
    return buf_put(b, u, k);
}

/* The first i' >= i where s[i'] may be '"', '\\', a control byte or a
 * non-ASCII one, or where fewer than 8 bytes are left: eight bytes at a
 * time (SWAR). */
static inline size_t skip_plain(const unsigned char *s, size_t i, size_t n)
{
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    while (i + 8 <= n) {
        uint64_t v;
        memcpy(&v, s + i, 8);
        uint64_t q = v ^ (ones * '"'), b = v ^ (ones * '\\');
        if ((((q - ones) & ~q) | ((b - ones) & ~b) | ((v - ones * 0x20) & ~v) | v) & high)
            break;
        i += 8;
    }
    return i;
}

/* A string whose opening quote is at q. */
static int parse_string(mp_ctx *c, size_t q, size_t *next, uint32_t *idx)
{
    const unsigned char *s = c->s;
    size_t n = c->n, end = q + 1, i;
    mp_buf *sb = &c->w->sbuf;
    int esc = 0;
    uint8_t flags = 0;
    size_t sstart = 0;
    for (;;) {
        for (i = skip_plain(s, end, n); i < n; i++) {
            unsigned char d = s[i];
            if (d == '"' || d == '\\')
                break;
            if (d <= 0x1f)
                return jerr(c, "Invalid control character at", i);
            if (d >= 0x80) {
                size_t k = utf8_seq(s + i, n - i);
                if (k == 0)
                    return utf8_bad(c);
                i += k - 1;
            }
        }
        if (i >= n)
            return jerr(c, "Unterminated string starting at", q);
        if (!esc) {
            if (s[i] == '"') {
                if (new_node(c, T_STR, q, idx))
                    return -1;
                mp_node *nd = &c->w->nodes[*idx];
                nd->str = (uint32_t)(q + 1);
                nd->len = (uint32_t)(i - q - 1);
                *next = i + 1;
                return 0;
            }
            esc = 1;
            sstart = sb->n;
        }
        if (buf_put(sb, s + end, i - end))
            return nomem(c);
        if (s[i] == '"') {
            end = i + 1;
            break;
        }
        i++; /* past the backslash */
        if (i == n)
            return jerr(c, "Unterminated string starting at", q);
        unsigned char e = s[i];
        if (e != 'u') {
            char o;
            end = i + 1;
            switch (e) {
            case '"': o = '"'; break;
            case '\\': o = '\\'; break;
            case '/': o = '/'; break;
            case 'b': o = '\b'; break;
            case 'f': o = '\f'; break;
            case 'n': o = '\n'; break;
            case 'r': o = '\r'; break;
            case 't': o = '\t'; break;
            default: return jerr(c, "Invalid \\escape", end - 2);
            }
            if (buf_byte(sb, o))
                return nomem(c);
            continue;
        }
        i++; /* the first hex digit */
        end = i + 4;
        if (end >= n)
            return jerr(c, "Invalid \\uXXXX escape", i - 1);
        int cp = hex4(s + i);
        if (cp < 0)
            return jerr(c, "Invalid \\uXXXX escape", i - 1);
        if (cp >= 0xD800 && cp <= 0xDBFF && end + 6 < n && s[end] == '\\' && s[end + 1] == 'u') {
            int lo = hex4(s + end + 2);
            if (lo < 0)
                return jerr(c, "Invalid \\uXXXX escape", end + 1);
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                end += 6;
            }
        }
        if (cp >= 0xD800 && cp <= 0xDFFF)
            flags |= F_LONE;
        if (put_cp(sb, (unsigned)cp))
            return nomem(c);
    }
    if (new_node(c, T_STR, q, idx))
        return -1;
    mp_node *nd = &c->w->nodes[*idx];
    nd->flags = (uint8_t)(F_ESC | flags);
    nd->str = (uint32_t)sstart;
    nd->len = (uint32_t)(sb->n - sstart);
    *next = end;
    return 0;
}

static int parse_number(mp_ctx *c, size_t start, size_t *next)
{
    const unsigned char *s = c->s;
    size_t last = c->n - 1, i = start;
    int is_float = 0;
    if (s[i] == '-') {
        i++;
        if (i > last)
            return jerr(c, "Expecting value", start);
    }
    if (s[i] >= '1' && s[i] <= '9') {
        i++;
        while (i <= last && isdig(s[i]))
            i++;
    } else if (s[i] == '0') {
        i++;
    } else {
        return jerr(c, "Expecting value", start);
    }
    if (i < last && s[i] == '.' && isdig(s[i + 1])) {
        is_float = 1;
        i += 2;
        while (i <= last && isdig(s[i]))
            i++;
    }
    if (i < last && (s[i] == 'e' || s[i] == 'E')) {
        size_t e = i++;
        if (i < last && (s[i] == '-' || s[i] == '+'))
            i++;
        while (i <= last && isdig(s[i]))
            i++;
        if (isdig(s[i - 1]))
            is_float = 1;
        else
            i = e;
    }
    if (!is_float) {
        size_t digits = i - start - (s[start] == '-');
        uint32_t lim = c->p->int_max_digits;
        if (lim && digits > lim) {
            snprintf(c->jbuf, sizeof c->jbuf,
                     "Exceeds the limit (%u digits) for integer string conversion: value has "
                     "%zu digits; use sys.set_int_max_str_digits() to increase the limit",
                     lim, digits);
            return jerr_nopos(c, c->jbuf);
        }
    }
    uint32_t k;
    if (new_node(c, is_float ? T_FLOAT : T_INT, start, &k))
        return -1;
    c->w->nodes[k].len = (uint32_t)(i - start);
    *next = i;
    return 0;
}

static int parse_value(mp_ctx *c, size_t i, unsigned depth, size_t *next);

static int parse_container(mp_ctx *c, size_t i, unsigned depth, size_t *next, int obj)
{
    const unsigned char *s = c->s;
    size_t n = c->n;
    mp_work *w = c->w;
    uint32_t k, count = 0;
    uint8_t fl = 0;
    unsigned char close = obj ? '}' : ']';
    if (depth > MP_DEPTH_MAX)
        return jerr_nopos(c, obj ? "maximum recursion depth exceeded while decoding a JSON "
                                   "object from a unicode string"
                                 : "maximum recursion depth exceeded while decoding a JSON "
                                   "array from a unicode string");
    if (new_node(c, obj ? T_OBJ : T_ARR, i, &k))
        return -1;
    i = skip_ws(c, i + 1);
    if (i >= n || s[i] != close) {
        for (;;) {
            if (obj) {
                uint32_t key;
                if (i >= n || s[i] != '"')
                    return jerr(c, "Expecting property name enclosed in double quotes", i);
                if (parse_string(c, i, &i, &key))
                    return -1;
                fl |= w->nodes[key].flags;
                i = skip_ws(c, i);
                if (i >= n || s[i] != ':')
                    return jerr(c, "Expecting ':' delimiter", i);
                i = skip_ws(c, i + 1);
            }
            size_t v = w->nnodes;
            if (parse_value(c, i, depth, &i))
                return -1;
            fl |= w->nodes[v].flags;
            count++;
            i = skip_ws(c, i);
            if (i < n && s[i] == close)
                break;
            if (i >= n || s[i] != ',')
                return jerr(c, "Expecting ',' delimiter", i);
            i = skip_ws(c, i + 1);
        }
    }
    mp_node *nd = &w->nodes[k];
    nd->count = count;
    nd->end = (uint32_t)w->nnodes;
    nd->flags = (fl & (F_LONE | F_SUB)) ? F_SUB : 0;
    *next = i + 1;
    return 0;
}

static int parse_value(mp_ctx *c, size_t i, unsigned depth, size_t *next)
{
    const unsigned char *s = c->s;
    size_t n = c->n;
    uint32_t k;
    if (i >= n)
        return jerr(c, "Expecting value", i);
    switch (s[i]) {
    case '"':
        return parse_string(c, i, next, &k);
    case '{':
        return parse_container(c, i, depth + 1, next, 1);
    case '[':
        return parse_container(c, i, depth + 1, next, 0);
    case 'n':
        if (i + 3 < n && memcmp(s + i + 1, "ull", 3) == 0) {
            *next = i + 4;
            return new_node(c, T_NULL, i, &k);
        }
        break;
    case 't':
        if (i + 3 < n && memcmp(s + i + 1, "rue", 3) == 0) {
            *next = i + 4;
            return new_node(c, T_TRUE, i, &k);
        }
        break;
    case 'f':
        if (i + 4 < n && memcmp(s + i + 1, "alse", 4) == 0) {
            *next = i + 5;
            return new_node(c, T_FALSE, i, &k);
        }
        break;
    case 'N':
        if (i + 2 < n && memcmp(s + i + 1, "aN", 2) == 0)
            return jerr_nopos(c, "NaN is not valid JSON");
        break;
    case 'I':
        if (i + 7 < n && memcmp(s + i + 1, "nfinity", 7) == 0)
            return jerr_nopos(c, "Infinity is not valid JSON");
        break;
    case '-':
        if (i + 8 < n && memcmp(s + i + 1, "Infinity", 8) == 0)
            return jerr_nopos(c, "-Infinity is not valid JSON");
        break;
    }
    return parse_number(c, i, next);
}

/* The JSON error as Python's JSONDecodeError prints it: positions in
 * characters, line and column from 1. */
static int json_error(mp_ctx *c)
{
    text(c, "message is not valid JSON: ");
    text(c, c->jmsg);
    if (c->jhaspos) {
        size_t chars = 0, line = 1, nl_chars = 0;
        int seen_nl = 0;
        for (size_t i = 0; i < c->jpos && i < c->n; i++) {
            unsigned char b = c->s[i];
            if ((b & 0xC0) == 0x80)
                continue;
            if (b == '\n') {
                line++;
                nl_chars = chars;
                seen_nl = 1;
            }
            chars++;
        }
        size_t col = seen_nl ? chars - nl_chars : chars + 1;
        textf(c, ": line %zu column %zu (char %zu)", line, col, chars);
    }
    return MP_JSON;
}

/* ---- objects as dicts -------------------------------------------------- */

static uint64_t hash_bytes(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

/* The members of object node o as a dict: pushes 3 arrays of m uint32 on
 * the scratch stack at base: key node of each member, rep (the member
 * whose key came first), last (for a first member: the last member with
 * its key). Member j is a dict entry iff rep[j] == j, and its value is
 * last[j]'s. Pop with w->nu = base. */
static int64_t obj_members(mp_ctx *c, uint32_t o)
{
    mp_work *w = c->w;
    uint32_t m = w->nodes[o].count;
    size_t tsize = 0;
    if (m > 16) {
        tsize = 2;
        while (tsize < 2 * (size_t)m)
            tsize *= 2;
    }
    int64_t base = u_push(c, 3 * (size_t)m + tsize);
    if (base < 0)
        return -1;
    uint32_t *keys = w->u + base, *rep = keys + m, *last = rep + m, *table = last + m;
    const mp_node *N = w->nodes;
    uint32_t at = o + 1;
    for (uint32_t j = 0; j < m; j++) {
        keys[j] = at;
        at = N[at + 1].end;
    }
    if (m <= 16) {
        for (uint32_t j = 0; j < m; j++) {
            rep[j] = j;
            for (uint32_t i = 0; i < j; i++)
                if (rep[i] == i && str_eq(c, &N[keys[i]], &N[keys[j]])) {
                    rep[j] = i;
                    break;
                }
            last[rep[j]] = j;
        }
        return base;
    }
    memset(table, 0, tsize * sizeof(uint32_t));
    for (uint32_t j = 0; j < m; j++) {
        const mp_node *kj = &N[keys[j]];
        size_t slot = hash_bytes(sbytes(c, kj), kj->len) & (tsize - 1);
        rep[j] = j;
        while (table[slot]) {
            uint32_t i = table[slot] - 1;
            if (str_eq(c, &N[keys[i]], kj)) {
                rep[j] = i;
                break;
            }
            slot = (slot + 1) & (tsize - 1);
        }
        if (rep[j] == j)
            table[slot] = j + 1;
        last[rep[j]] = j;
    }
    return base;
}

/* ---- the payload: re-encoding, and the lone-surrogate check ------------ */

typedef struct {
    int lone;           /* a kept string holds a lone surrogate */
    int inf;            /* a number overflows a double */
    uint32_t inf_node;  /* the first one */
} emit_state;

static int emit_string(mp_ctx *c, const mp_node *nd)
{
    static const char hex[] = "0123456789abcdef";
    mp_buf *o = &c->w->out;
    const unsigned char *p = (const unsigned char *)sbytes(c, nd);
    size_t n = nd->len, run = 0;
    if (buf_byte(o, '"'))
        return nomem(c);
    for (size_t i = 0; i < n; i++) {
        unsigned char b = p[i];
        if (b >= 0x20 && b != '"' && b != '\\')
            continue;
        if (buf_put(o, p + run, i - run))
            return nomem(c);
        run = i + 1;
        char e[6] = {'\\', 0, 0, 0, 0, 0};
        size_t k = 2;
        switch (b) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        case '\b': e[1] = 'b'; break;
        case '\f': e[1] = 'f'; break;
        default:
            e[1] = 'u';
            e[2] = '0';
            e[3] = '0';
            e[4] = hex[b >> 4];
            e[5] = hex[b & 15];
            k = 6;
        }
        if (buf_put(o, e, k))
            return nomem(c);
    }
    if (buf_put(o, p + run, n - run) || buf_byte(o, '"'))
        return nomem(c);
    return 0;
}

/* json.dumps(value, ensure_ascii=False, separators=(",", ":")) into w->out */
static int emit_value(mp_ctx *c, uint32_t v, emit_state *st)
{
    mp_work *w = c->w;
    mp_node nd = w->nodes[v];
    const char *p;
    size_t n;
    switch (nd.type) {
    case T_NULL: return out_put(c, "null", 4);
    case T_TRUE: return out_put(c, "true", 4);
    case T_FALSE: return out_put(c, "false", 5);
    case T_INT:
        int_text(c, &nd, &p, &n);
        return out_put(c, p, n);
    case T_FLOAT: {
        double d = to_double(c, lit(c, &nd), nd.len);
        if (isinf(d)) {
            if (!st->inf)
                st->inf_node = v;
            st->inf = 1;
            return 0;
        }
        char buf[40];
        return out_put(c, buf, repr_double(c, d, buf));
    }
    case T_STR:
        if (nd.flags & F_LONE)
            st->lone = 1;
        return emit_string(c, &nd);
    case T_ARR: {
        if (out_put(c, "[", 1))
            return -1;
        uint32_t at = v + 1;
        for (uint32_t j = 0; j < nd.count; j++) {
            if (j && out_put(c, ",", 1))
                return -1;
            if (emit_value(c, at, st))
                return -1;
            at = w->nodes[at].end;
        }
        return out_put(c, "]", 1);
    }
    default: {
        int64_t base = obj_members(c, v);
        if (base < 0)
            return -1;
        uint32_t m = nd.count;
        int first = 1;
        if (out_put(c, "{", 1))
            return -1;
        for (uint32_t j = 0; j < m; j++) {
            const uint32_t *keys = w->u + base, *rep = keys + m, *last = rep + m;
            if (rep[j] != j)
                continue;
            uint32_t key = keys[j], val = keys[last[j]] + 1;
            if (!first && out_put(c, ",", 1))
                return -1;
            first = 0;
            if (w->nodes[key].flags & F_LONE)
                st->lone = 1;
            if (emit_string(c, &w->nodes[key]) || out_put(c, ":", 1) || emit_value(c, val, st))
                return -1;
        }
        w->nu = (size_t)base;
        return out_put(c, "}", 1);
    }
    }
}

/* Does the payload, as a dict would keep it, hold a lone surrogate?
 * 1 yes, 0 no, -1 out of memory. */
static int live_lone(mp_ctx *c, uint32_t v)
{
    mp_work *w = c->w;
    mp_node nd = w->nodes[v];
    if (nd.type == T_STR)
        return (nd.flags & F_LONE) != 0;
    if (!(nd.flags & F_SUB))
        return 0;
    if (nd.type == T_ARR) {
        uint32_t at = v + 1;
        for (uint32_t j = 0; j < nd.count; j++) {
            int r = live_lone(c, at);
            if (r)
                return r;
            at = w->nodes[at].end;
        }
        return 0;
    }
    int64_t base = obj_members(c, v);
    if (base < 0)
        return -1;
    uint32_t m = nd.count;
    int r = 0;
    for (uint32_t j = 0; j < m && !r; j++) {
        const uint32_t *keys = w->u + base, *rep = keys + m, *last = rep + m;
        if (rep[j] != j)
            continue;
        if (w->nodes[keys[j]].flags & F_LONE)
            r = 1;
        else
            r = live_lone(c, keys[last[j]] + 1);
    }
    w->nu = (size_t)base;
    return r;
}

/* ---- repr() of a JSON value, for "op" errors --------------------------- */

static int repr_value(mp_ctx *c, uint32_t v)
{
    mp_work *w = c->w;
    mp_node nd = w->nodes[v];
    const char *p;
    size_t n;
    switch (nd.type) {
    case T_NULL: text(c, "None"); return 0;
    case T_TRUE: text(c, "True"); return 0;
    case T_FALSE: text(c, "False"); return 0;
    case T_INT:
        int_text(c, &nd, &p, &n);
        textn(c, p, n);
        return 0;
    case T_FLOAT: {
        char buf[40];
        textn(c, buf, repr_double(c, to_double(c, lit(c, &nd), nd.len), buf));
        return 0;
    }
    case T_STR:
        repr(c, sbytes(c, &nd), nd.len);
        return 0;
    case T_ARR: {
        text(c, "[");
        uint32_t at = v + 1;
        for (uint32_t j = 0; j < nd.count; j++) {
            if (j)
                text(c, ", ");
            if (repr_value(c, at))
                return -1;
            at = w->nodes[at].end;
        }
        text(c, "]");
        return 0;
    }
    default: {
        int64_t base = obj_members(c, v);
        if (base < 0)
            return -1;
        uint32_t m = nd.count;
        int first = 1;
        text(c, "{");
        for (uint32_t j = 0; j < m; j++) {
            const uint32_t *keys = w->u + base, *rep = keys + m, *last = rep + m;
            if (rep[j] != j)
                continue;
            uint32_t key = keys[j], val = keys[last[j]] + 1;
            if (!first)
                text(c, ", ");
            first = 0;
            repr(c, sbytes(c, &w->nodes[key]), w->nodes[key].len);
            text(c, ": ");
            if (repr_value(c, val))
                return -1;
        }
        w->nu = (size_t)base;
        text(c, "}");
        return 0;
    }
    }
}

/* ---- the message rules ------------------------------------------------- */

enum { K_OP, K_KEY, K_VERSION, K_FIELDS, K_SCORE, K_PAYLOAD, K_N };
static const char *const KEYS[K_N] = {"op", "key", "version", "fields", "score", "payload"};

static const uint8_t KEY_LENS[K_N] = {2, 3, 7, 6, 5, 7};

static int known_key(const mp_ctx *c, const mp_node *nd)
{
    const char *p = sbytes(c, nd);
    for (int k = 0; k < K_N; k++)
        if (nd->len == KEY_LENS[k] && memcmp(p, KEYS[k], nd->len) == 0)
            return k;
    return -1;
}

static int lookup_field(const mp_parser *p, const char *s, size_t n)
{
    if (p->nfields == 0)
        return -1;
    size_t slot = hash_bytes(s, n) & p->mask;
    while (p->table[slot]) {
        const mp_field *f = &p->fields[p->table[slot] - 1];
        if (f->len == n && memcmp(f->name, s, n) == 0)
            return (int)(p->table[slot] - 1);
        slot = (slot + 1) & p->mask;
    }
    return -1;
}

static int cmp_keys(const void *a, const void *b, void *arg)
{
    const mp_ctx *c = arg;
    const mp_node *x = &c->w->nodes[*(const uint32_t *)a], *y = &c->w->nodes[*(const uint32_t *)b];
    size_t n = x->len < y->len ? x->len : y->len;
    int r = memcmp(sbytes(c, x), sbytes(c, y), n);
    if (r)
        return r;
    return (x->len > y->len) - (x->len < y->len);
}

static int unknown_keys(mp_ctx *c, uint32_t root)
{
    mp_work *w = c->w;
    uint32_t m = w->nodes[root].count, k = 0;
    int64_t base = u_push(c, m);
    if (base < 0)
        return MP_NOMEM;
    uint32_t *list = w->u + base, at = root + 1;
    for (uint32_t j = 0; j < m; j++) {
        if (known_key(c, &w->nodes[at]) < 0)
            list[k++] = at;
        at = w->nodes[at + 1].end;
    }
    qsort_r(list, k, sizeof *list, cmp_keys, c);
    text(c, "unknown key(s) ");
    for (uint32_t j = 0; j < k; j++) {
        if (j && str_eq(c, &w->nodes[list[j]], &w->nodes[list[j - 1]]))
            continue;
        if (j)
            text(c, ", ");
        repr(c, sbytes(c, &w->nodes[list[j]]), w->nodes[list[j]].len);
    }
    text(c, " (a message has op, key, version, fields, score, payload)");
    w->nu = (size_t)base;
    return MP_UNKNOWN_KEY;
}

static int not_encodable(mp_ctx *c, const char *what, const mp_field *f)
{
    if (f) {
        text(c, what);
        repr(c, f->name, f->len);
    } else {
        text(c, what);
    }
    text(c, " is not encodable as UTF-8 (a lone surrogate escape?)");
    return MP_ENCODING;
}

/* Append the term "name:value" of a keyword value (a non-empty string or
 * an integer), checked. */
static int add_term(mp_ctx *c, const mp_field *f, const mp_node *v)
{
    mp_work *w = c->w;
    const char *p;
    size_t n;
    if (v->type == T_STR) {
        if (v->flags & F_LONE)
            return not_encodable(c, "keyword field ", f);
        p = sbytes(c, v);
        n = v->len;
    } else {
        int_text(c, v, &p, &n);
    }
    size_t off = w->out.n, len = f->len + 1 + n;
    if (out_put(c, f->name, f->len) || out_put(c, ":", 1) || out_put(c, p, n))
        return MP_NOMEM;
    if (len > MP_TERM_MAX) {
        text(c, "keyword field ");
        repr(c, f->name, f->len);
        text(c, ": the term ");
        /* w->out may move while the sentence grows: copy the prefix first */
        size_t pre = u8_prefix(w->out.p + off, len, 40);
        char *tmp = malloc(pre ? pre : 1);
        if (tmp == NULL)
            return MP_NOMEM;
        memcpy(tmp, w->out.p + off, pre);
        repr(c, tmp, pre);
        free(tmp);
        textf(c, "... is %zu bytes; a term is at most %d", len, MP_TERM_MAX);
        return MP_RANGE;
    }
    if (grow((void **)&w->terms, &w->cap_terms, w->nterms + 1, sizeof(mp_span)))
        return MP_NOMEM;
    w->terms[w->nterms].off = off;
    w->terms[w->nterms].len = len;
    w->nterms++;
    return MP_OK;
}

static int bad_keyword(mp_ctx *c, const mp_field *f, const mp_node *v, int in_array)
{
    text(c, "keyword field ");
    repr(c, f->name, f->len);
    if (v->type == T_STR) {
        text(c, " has an empty value");
        return MP_EMPTY;
    }
    textf(c, " takes strings, integers or an array of them, not %s%s", type_name(v->type),
          in_array ? " in an array" : "");
    return MP_TYPE;
}

static int keyword_value(mp_ctx *c, const mp_field *f, uint32_t v)
{
    mp_work *w = c->w;
    mp_node nd = w->nodes[v];
    if ((nd.type == T_STR && nd.len > 0) || nd.type == T_INT)
        return add_term(c, f, &nd);
    if (nd.type != T_ARR)
        return bad_keyword(c, f, &nd, 0);
    uint32_t at = v + 1;
    for (uint32_t j = 0; j < nd.count; j++) {
        mp_node e = w->nodes[at];
        int rc = ((e.type == T_STR && e.len > 0) || e.type == T_INT) ? add_term(c, f, &e)
                                                                      : bad_keyword(c, f, &e, 1);
        if (rc)
            return rc;
        at = e.end;
    }
    return MP_OK;
}

/* Text pieces are node indices pushed on the scratch stack at *pieces. */
static int text_value(mp_ctx *c, const mp_field *f, uint32_t v, size_t *npieces)
{
    mp_work *w = c->w;
    mp_node nd = w->nodes[v];
    if (nd.type == T_STR) {
        int64_t at = u_push(c, 1);
        if (at < 0)
            return MP_NOMEM;
        w->u[at] = v;
        (*npieces)++;
        return MP_OK;
    }
    if (nd.type == T_ARR) {
        uint32_t at = v + 1;
        int all = 1;
        for (uint32_t j = 0; j < nd.count && all; j++, at = w->nodes[at].end)
            all = w->nodes[at].type == T_STR;
        if (all) {
            int64_t base = u_push(c, nd.count);
            if (base < 0)
                return MP_NOMEM;
            at = v + 1;
            for (uint32_t j = 0; j < nd.count; j++, at = w->nodes[at].end)
                w->u[base + j] = at;
            *npieces += nd.count;
            return MP_OK;
        }
    }
    text(c, "text field ");
    repr(c, f->name, f->len);
    textf(c, " must be a string or an array of strings, not %s", type_name(nd.type));
    return MP_TYPE;
}

/* "fields": each field in first-position order, with its last value. */
static int do_fields(mp_ctx *c, uint32_t fo, mp_result *res)
{
    const mp_parser *p = c->p;
    mp_work *w = c->w;
    uint32_t m = w->nodes[fo].count;
    if (p->nfields > w->cap_f) { /* zeroed: no stamp matches a generation >= 1 */
        uint32_t *stamp = calloc(p->nfields, sizeof *stamp), *val = calloc(p->nfields, sizeof *val);
        if (stamp == NULL || val == NULL) {
            free(stamp);
            free(val);
            return MP_NOMEM;
        }
        free(w->fstamp);
        free(w->fval);
        w->fstamp = stamp;
        w->fval = val;
        w->cap_f = p->nfields;
        w->gen = 0;
    }
    if (++w->gen == 0) { /* wrapped: stamps from 2^32 messages ago would match */
        memset(w->fstamp, 0, w->cap_f * sizeof(uint32_t));
        w->gen = 1;
    }
    /* order: schema field index, or UINT32_MAX - key node for the first unknown */
    int64_t obase = u_push(c, m);
    if (obase < 0)
        return MP_NOMEM;
    size_t norder = 0;
    int unknown = 0;
    uint32_t at = fo + 1;
    for (uint32_t j = 0; j < m; j++) {
        const mp_node *key = &w->nodes[at];
        int fi = lookup_field(p, sbytes(c, key), key->len); /* a name may hold a lone one too */
        if (fi >= 0) {
            if (w->fstamp[fi] != w->gen) {
                w->fstamp[fi] = w->gen;
                if (!unknown)
                    w->u[obase + norder++] = (uint32_t)fi;
            }
            w->fval[fi] = at + 1;
        } else if (!unknown) {
            unknown = 1;
            w->u[obase + norder++] = UINT32_MAX - at;
        }
        at = w->nodes[at + 1].end;
    }
    size_t pbase = w->nu, npieces = 0;
    int rc;
    for (size_t j = 0; j < norder; j++) {
        uint32_t o = w->u[obase + j];
        if (o >= p->nfields) { /* the first unknown field */
            const mp_node *key = &w->nodes[UINT32_MAX - o];
            text(c, "unknown field ");
            repr(c, sbytes(c, key), key->len);
            text(c, " (the schema names: ");
            textn(c, p->names, p->names_len);
            text(c, ")");
            return MP_UNKNOWN_FIELD;
        }
        const mp_field *f = &p->fields[o];
        rc = f->text ? text_value(c, f, w->fval[o], &npieces) : keyword_value(c, f, w->fval[o]);
        if (rc)
            return rc;
    }
    if (w->nterms - res->term0 > p->max_terms) {
        textf(c, "%zu keyword terms, over the limit of %u", w->nterms - res->term0, p->max_terms);
        return MP_LIMIT;
    }
    if (npieces) {
        int lone = 0;
        for (size_t j = 0; j < npieces; j++)
            lone |= w->nodes[w->u[pbase + j]].flags & F_LONE;
        if (lone)
            return not_encodable(c, "a text field", NULL);
        res->has_text = 1;
        res->text.off = w->out.n;
        for (size_t j = 0; j < npieces; j++) {
            const mp_node *t = &w->nodes[w->u[pbase + j]];
            if ((j && out_put(c, "\n", 1)) || out_put(c, sbytes(c, t), t->len))
                return MP_NOMEM;
        }
        res->text.len = w->out.n - res->text.off;
    }
    return MP_OK;
}

static int validate(mp_ctx *c, mp_result *res)
{
    const mp_parser *p = c->p;
    mp_work *w = c->w;
    const mp_node *N = w->nodes;
    const mp_node *root = &N[0];
    if (root->type != T_OBJ) {
        textf(c, "message must be a JSON object, not %s", type_name(root->type));
        return MP_NOT_OBJECT;
    }
    uint32_t slot[K_N] = {0}; /* value node + 1 */
    int unknown = 0, present = 0;
    uint32_t at = 1;
    for (uint32_t j = 0; j < root->count; j++) {
        int k = known_key(c, &N[at]);
        if (k < 0)
            unknown = 1;
        else
            slot[k] = at + 2;
        at = N[at + 1].end;
    }
    if (unknown)
        return unknown_keys(c, 0);
    for (int k = 0; k < K_N; k++)
        present += slot[k] != 0;

    const mp_node *key = slot[K_KEY] ? &N[slot[K_KEY] - 1] : NULL;
    const mp_node *ver = slot[K_VERSION] ? &N[slot[K_VERSION] - 1] : NULL;
    if (!key || key->type != T_STR) {
        if (!key) {
            text(c, "missing \"key\"");
            return MP_MISSING;
        }
        textf(c, "\"key\" must be a string, not %s", type_name(key->type));
        return MP_TYPE;
    }
    if (!ver || ver->type != T_INT) {
        if (!ver) {
            text(c, "missing \"version\"");
            return MP_MISSING;
        }
        textf(c, "\"version\" must be an integer, not %s%s", type_name(ver->type),
              ver->type == T_FLOAT ? " with a fraction" : "");
        return MP_TYPE;
    }
    /* Python: `not key or (len(key) > 256 and utf8_len(key) > 1024)`, where
     * utf8_len fails on a lone surrogate: so a long key with one is an
     * encoding error here, a short one only after the version's range */
    const char *kb = sbytes(c, key);
    int too_long = key->len == 0;
    if (key->len > 256 && u8_chars(kb, key->len) > 256) {
        if (key->flags & F_LONE)
            return not_encodable(c, "\"key\"", NULL);
        too_long = key->len > MP_KEY_MAX;
    }
    if (too_long) {
        textf(c, "\"key\" must be 1..%d bytes of UTF-8 (got %u)", MP_KEY_MAX, key->len);
        return MP_RANGE;
    }
    if (parse_i64(lit(c, ver), ver->len, &res->version)) {
        text(c, "\"version\" ");
        textn(c, lit(c, ver), ver->len);
        text(c, " does not fit in a signed 64-bit integer");
        return MP_RANGE;
    }
    if (key->flags & F_LONE)
        return not_encodable(c, "\"key\"", NULL);
    res->key.off = w->out.n;
    res->key.len = key->len;
    if (out_put(c, kb, key->len))
        return MP_NOMEM;

    const mp_node *op = slot[K_OP] ? &N[slot[K_OP] - 1] : NULL;
    if (!op || !str_is(c, op, "index")) {
        if (op && str_is(c, op, "delete")) {
            if (present != 3) {
                static const int extra[] = {K_FIELDS, K_PAYLOAD, K_SCORE}; /* sorted */
                int first = 1;
                text(c, "a delete has only op, key and version (got ");
                for (int e = 0; e < 3; e++) {
                    int k = extra[e];
                    if (!slot[k])
                        continue;
                    if (!first)
                        text(c, ", ");
                    first = 0;
                    repr(c, KEYS[k], strlen(KEYS[k]));
                }
                text(c, ")");
                return MP_UNKNOWN_KEY;
            }
            res->kind = MP_OP_DELETE;
            return MP_OK;
        }
        if (!op) {
            text(c, "missing \"op\" (\"index\" or \"delete\")");
            return MP_MISSING;
        }
        text(c, "\"op\" must be \"index\" or \"delete\" (got ");
        if (repr_value(c, slot[K_OP] - 1))
            return MP_NOMEM;
        text(c, ")");
        return MP_TYPE;
    }
    res->kind = MP_OP_INDEX;

    if (slot[K_SCORE]) {
        const mp_node *sc = &N[slot[K_SCORE] - 1];
        if (sc->type == T_FLOAT) {
            double d = to_double(c, lit(c, sc), sc->len);
            if (isinf(d)) {
                textf(c, "\"score\" must be finite (got %s)", d > 0 ? "inf" : "-inf");
                return MP_RANGE;
            }
            res->score = d;
        } else if (sc->type == T_INT) {
            double d = to_double(c, lit(c, sc), sc->len);
            if (isinf(d)) {
                text(c, "\"score\" ");
                textn(c, lit(c, sc), sc->len);
                text(c, " is too large");
                return MP_RANGE;
            }
            res->score = d == 0 ? 0.0 : d; /* int -0 is 0 */
        } else {
            textf(c, "\"score\" must be a number, not %s", type_name(sc->type));
            return MP_TYPE;
        }
    }

    if (p->store == MP_STORE_SOURCE) {
        res->blob = MP_BLOB_SOURCE;
        if (slot[K_PAYLOAD]) {
            int r = live_lone(c, slot[K_PAYLOAD] - 1);
            if (r < 0)
                return MP_NOMEM;
            if (r)
                return not_encodable(c, "\"payload\"", NULL);
        }
    } else if (p->store == MP_STORE_PAYLOAD && slot[K_PAYLOAD]) {
        emit_state st = {0, 0, 0};
        res->blob = MP_BLOB_OUT;
        res->blob_span.off = w->out.n;
        if (emit_value(c, slot[K_PAYLOAD] - 1, &st))
            return MP_NOMEM;
        res->blob_span.len = w->out.n - res->blob_span.off;
        if (st.inf) {
            const mp_node *nd = &w->nodes[st.inf_node];
            text(c, "\"payload\" holds a number out of the range of a double (");
            textn(c, lit(c, nd), nd->len);
            text(c, ")");
            return MP_RANGE;
        }
        if (st.lone)
            return not_encodable(c, "\"payload\"", NULL);
    }

    if (slot[K_FIELDS]) {
        const mp_node *fo = &N[slot[K_FIELDS] - 1];
        if (fo->type != T_OBJ) {
            textf(c, "\"fields\" must be an object, not %s", type_name(fo->type));
            return MP_TYPE;
        }
        return do_fields(c, slot[K_FIELDS] - 1, res);
    }
    return MP_OK;
}

/* ---- the entry point --------------------------------------------------- */

int mp_parse(const mp_parser *p, mp_work *w, const char *raw, size_t len, mp_result *res)
{
    mp_ctx c;
    int rc;
    /* (field by field: a memset of the struct costs a `rep stos`) */
    res->status = res->kind = res->has_text = res->blob = 0;
    res->version = 0;
    res->score = 0.0;
    res->key.off = res->key.len = res->text.off = res->text.len = 0;
    res->blob_span.off = res->blob_span.len = 0;
    res->nterms = res->nparts = 0;
    c.p = p;
    c.w = w;
    c.s = (const unsigned char *)raw;
    c.n = len;
    c.jmsg = NULL;
    c.jpos = 0;
    c.jhaspos = 0;
    c.nomem = 0;
    c.badutf8 = 0;
    c.part0 = w->nparts;
    w->nnodes = 0;
    w->sbuf.n = 0;
    w->nu = 0;
    res->term0 = w->nterms;
    res->part0 = w->nparts;
    size_t out_mark = w->out.n;

    if (len > p->max_message_bytes) {
        textf(&c, "message is %zu bytes, over the limit of %u", len, p->max_message_bytes);
        rc = MP_TOO_LARGE;
        goto done;
    }
    /* A record that parses is valid UTF-8: outside strings only ASCII can
     * parse, and the string scan checks every non-ASCII sequence. One that
     * does not is checked whole first: Python decoded before parsing, so a
     * bad byte anywhere wins over a JSON error. */
    size_t i = skip_ws(&c, 0);
    if (parse_value(&c, i, 0, &i) == 0) {
        i = skip_ws(&c, i);
        if (i != len)
            jerr(&c, "Extra data", i);
    }
    if (c.nomem) {
        rc = MP_NOMEM;
        goto done;
    }
    if (c.jmsg || c.badutf8) {
        size_t bs, be;
        const char *why;
        if (utf8_check(c.s, len, &bs, &be, &why)) {
            if (be == bs + 1)
                textf(&c, "message is not UTF-8: 'utf-8' codec can't decode byte 0x%02x in "
                          "position %zu: %s", c.s[bs], bs, why);
            else
                textf(&c, "message is not UTF-8: 'utf-8' codec can't decode bytes in "
                          "position %zu-%zu: %s", bs, be - 1, why);
            rc = MP_ENCODING;
        } else if (c.jmsg) {
            rc = json_error(&c);
        } else { /* cannot happen: the two checks agree on what UTF-8 is */
            text(&c, "message is not UTF-8");
            rc = MP_ENCODING;
        }
        goto done;
    }
    rc = validate(&c, res);

done:
    if (c.nomem)
        rc = MP_NOMEM;
    res->status = rc;
    if (rc != MP_OK) {
        /* drop what the op had put out; keep the sentence */
        w->nterms = res->term0;
        res->nparts = (uint32_t)(w->nparts - res->part0);
        res->nterms = 0;
        if (rc == MP_NOMEM) {
            w->nparts = res->part0;
            res->nparts = 0;
            w->out.n = out_mark;
        }
    } else {
        res->nterms = (uint32_t)(w->nterms - res->term0);
        w->nparts = res->part0;
    }
    return rc;
}

/* ---- parser and work objects ------------------------------------------- */

static int cmp_fields(const void *a, const void *b, void *arg)
{
    const mp_field *f = arg;
    const mp_field *x = &f[*(const uint32_t *)a], *y = &f[*(const uint32_t *)b];
    size_t n = x->len < y->len ? x->len : y->len;
    int r = memcmp(x->name, y->name, n);
    if (r)
        return r;
    return (x->len > y->len) - (x->len < y->len);
}

mp_parser *mp_parser_new(const mp_schema_def *def, char *err, size_t errlen)
{
    mp_parser *p = calloc(1, sizeof *p);
    uint32_t *order = NULL;
    if (p == NULL)
        goto oom;
    p->cloc = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (p->cloc == (locale_t)0)
        goto oom;
    if (def->store != MP_STORE_SOURCE && def->store != MP_STORE_PAYLOAD &&
        def->store != MP_STORE_NONE) {
        snprintf(err, errlen, "unknown store %d", def->store);
        goto fail;
    }
    if (def->max_message_bytes > (1u << 30)) { /* offsets in mp_node are 32-bit */
        snprintf(err, errlen, "max_message_bytes over 2^30");
        goto fail;
    }
    p->store = def->store;
    p->max_message_bytes = def->max_message_bytes;
    p->max_terms = def->max_terms;
    p->int_max_digits = def->int_max_digits;
    p->nfields = def->nfields;
    p->fields = calloc(def->nfields + 1, sizeof *p->fields);
    size_t tsize = 4;
    while (tsize < 2 * (size_t)def->nfields)
        tsize *= 2;
    p->table = calloc(tsize, sizeof *p->table);
    p->mask = (uint32_t)(tsize - 1);
    order = calloc(def->nfields + 1, sizeof *order);
    if (p->fields == NULL || p->table == NULL || order == NULL)
        goto oom;
    size_t names_len = 4;
    for (uint32_t i = 0; i < def->nfields; i++) {
        const mp_field_def *d = &def->fields[i];
        if (d->len == 0 || d->len > UINT32_MAX / 2) {
            snprintf(err, errlen, "field %u: a name is 1.. bytes", i);
            goto fail;
        }
        if (lookup_field(p, d->name, d->len) >= 0) {
            snprintf(err, errlen, "field %u is named twice", i);
            goto fail;
        }
        p->fields[i].name = malloc(d->len);
        if (p->fields[i].name == NULL)
            goto oom;
        memcpy(p->fields[i].name, d->name, d->len);
        p->fields[i].len = (uint32_t)d->len;
        p->fields[i].text = d->text != 0;
        size_t slot = hash_bytes(d->name, d->len) & p->mask;
        while (p->table[slot])
            slot = (slot + 1) & p->mask;
        p->table[slot] = i + 1;
        order[i] = i;
        names_len += d->len + 2;
    }
    p->names = malloc(names_len);
    if (p->names == NULL)
        goto oom;
    if (def->nfields == 0) {
        memcpy(p->names, "none", 4);
        p->names_len = 4;
    } else {
        qsort_r(order, def->nfields, sizeof *order, cmp_fields, p->fields);
        for (uint32_t i = 0; i < def->nfields; i++) {
            const mp_field *f = &p->fields[order[i]];
            if (i) {
                memcpy(p->names + p->names_len, ", ", 2);
                p->names_len += 2;
            }
            memcpy(p->names + p->names_len, f->name, f->len);
            p->names_len += f->len;
        }
    }
    free(order);
    return p;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    free(order);
    mp_parser_free(p);
    return NULL;
}

void mp_parser_free(mp_parser *p)
{
    if (p == NULL)
        return;
    if (p->fields)
        for (uint32_t i = 0; i < p->nfields; i++)
            free(p->fields[i].name);
    free(p->fields);
    free(p->table);
    free(p->names);
    if (p->cloc != (locale_t)0)
        freelocale(p->cloc);
    free(p);
}

mp_work *mp_work_new(void)
{
    return calloc(1, sizeof(mp_work));
}

void mp_work_free(mp_work *w)
{
    if (w == NULL)
        return;
    free(w->nodes);
    free(w->sbuf.p);
    free(w->u);
    free(w->fstamp);
    free(w->fval);
    free(w->out.p);
    free(w->terms);
    free(w->parts);
    free(w);
}

void mp_work_clear(mp_work *w)
{
    w->out.n = 0;
    w->nterms = 0;
    w->nparts = 0;
}

void mp_work_trim(mp_work *w, size_t keep)
{
    /* everything is per message or per batch: free what is big, it regrows */
    if (w->cap_nodes * sizeof(mp_node) > keep) {
        free(w->nodes);
        w->nodes = NULL;
        w->cap_nodes = w->nnodes = 0;
    }
    if (w->sbuf.cap > keep) {
        free(w->sbuf.p);
        w->sbuf.p = NULL;
        w->sbuf.cap = w->sbuf.n = 0;
    }
    if (w->cap_u * sizeof(uint32_t) > keep) {
        free(w->u);
        w->u = NULL;
        w->cap_u = w->nu = 0;
    }
    if (w->out.cap > keep && w->out.n == 0) {
        free(w->out.p);
        w->out.p = NULL;
        w->out.cap = 0;
    }
    if (w->cap_terms * sizeof(mp_span) > keep && w->nterms == 0) {
        free(w->terms);
        w->terms = NULL;
        w->cap_terms = 0;
    }
    if (w->cap_parts * sizeof(mp_part) > keep && w->nparts == 0) {
        free(w->parts);
        w->parts = NULL;
        w->cap_parts = 0;
    }
}

const char *mp_work_out(const mp_work *w)
{
    return w->out.p;
}

const mp_span *mp_work_terms(const mp_work *w)
{
    return w->terms;
}

const mp_part *mp_work_parts(const mp_work *w)
{
    return w->parts;
}
