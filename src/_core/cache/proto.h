/*
 * proto.h - internals shared by the two protocol files: proto_text.c (the
 * classic memcached text protocol and the dispatcher) and proto_meta.c (the
 * meta commands mg/ms/md/ma/mn/me). Nothing outside those two files
 * includes this header; the rest of the server sees only
 * proto_process_line() in conn.h.
 *
 * What lives here:
 *   - the tokeniser (memcached's rules: words are separated by ' ' only,
 *     at most PROTO_MAX_WORDS are split out, the remainder stays unsplit);
 *   - number parsers with memcached's exact acceptance rules (its
 *     safe_strtoul/safe_strtoull/safe_strtol/safe_strtod, including the
 *     quirks clients can observe: see the comment above the parsers);
 *   - base64 for binary meta keys (the "b" flag), accepting exactly what
 *     memcached 1.6.18 accepts;
 *   - small helpers for building response lines and counting stats that
 *     both files need.
 *
 * Threads: everything here is a pure function of its arguments except
 * proto_count_get_hit()/proto_count_get_miss(), which bump the calling
 * worker's own stats block (single writer, see stats.h).
 */
#ifndef PS_CACHE_PROTO_H
#define PS_CACHE_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "conn.h"
#include "items.h"
#include "settings.h"

/* ---- tokens ---------------------------------------------------------- */

/* memcached splits at most 23 words out of a line (MAX_TOKENS 24 minus its
 * terminal token); the rest is left as one unsplit remainder. Only the get
 * family reads past that point. Keeping the same limit keeps the same
 * error for over-long non-get lines ("ERROR", "options flags too long"). */
#define PROTO_MAX_WORDS 23

/* Meta commands refuse lines of more than this many memcached tokens
 * (words + 1), and opaque tokens ("O...") longer than this many bytes. */
#define PROTO_META_MAX_TOKENS 20
#define PROTO_META_MAX_OPAQUE 32

typedef struct {
    char *value;                 /* into the read buffer; not NUL terminated */
    size_t length;
} proto_token;

typedef struct {
    proto_token tok[PROTO_MAX_WORDS];
    size_t nwords;               /* words split out, 0..PROTO_MAX_WORDS */
    bool more;                   /* more text follows tok[PROTO_MAX_WORDS-1] */
    char *line_end;              /* one past the last byte of the line */
} proto_tokens;

/* memcached counts its terminal token: ntokens = words + 1. Conditions
 * copied from memcached's behaviour are easier to audit in its terms. */
static inline size_t proto_ntokens(const proto_tokens *t) { return t->nwords + 1; }

/* Split line[0..len) into words (see PROTO_MAX_WORDS). Does not modify the
 * line. */
void proto_tokenize(char *line, size_t len, proto_tokens *t);

static inline bool proto_tok_eq(const proto_token *t, const char *lit) {
    size_t n = strlen(lit);
    return t->length == n && memcmp(t->value, lit, n) == 0;
}

/* ---- numbers ----------------------------------------------------------
 * memcached parses every numeric token with strtoul/strtoull/strtol/strtod
 * on LP64 and then narrows, and clients can see the consequences:
 *   - leading whitespace (\t \v \f \r) and a leading '+' are accepted;
 *   - after the digits, the token must end or continue with whitespace
 *     ("5\tjunk" parses as 5: memcached stops at the first isspace());
 *   - unsigned parsers reject a '-' only when the result would be negative
 *     as a signed 64-bit value ("-0" is 0);
 *   - 32-bit results are the low 32 bits of the 64-bit parse: flags
 *     "4294967296" store as 0, a length of "4294967297" reads 1 byte;
 *   - out of range for the 64-bit parse is an error.
 * All four return false on error and leave *out unspecified. */
bool proto_strtoull(const char *s, size_t len, uint64_t *out);
bool proto_strtoul(const char *s, size_t len, uint32_t *out);
bool proto_strtol(const char *s, size_t len, int32_t *out);
bool proto_strtod(const char *s, size_t len, double *out);

/* Decimal rendering; returns the end of what was written (no NUL). dst
 * needs 20 bytes (u64) / 11 bytes (i32). */
char *proto_u64toa(uint64_t v, char *dst);
char *proto_i32toa(int32_t v, char *dst);

/* ---- base64 (meta "b" flag) -------------------------------------------
 * Decoding follows memcached 1.6.18: bytes outside the alphabet are
 * skipped, the number of alphabet bytes (with '=') must be a positive
 * multiple of 4, decoding stops after the first block that holds padding,
 * and more than two '=' in that block is an error. Returns the decoded
 * length, 0 on error. dst may equal src (decoding in place). */
size_t proto_base64_decode(const char *src, size_t len, char *dst);
/* Standard padded encoding; returns the length written (no NUL), 0 if dst
 * is too small. */
size_t proto_base64_encode(const char *src, size_t len, char *dst, size_t dstlen);

/* ---- response lines -----------------------------------------------------
 * A bounded builder for one response line, filled on the stack and copied
 * into a resp with one resp_add_text(). Lines we build are far shorter
 * than RESP_TEXT_MAX by construction (a key of 250 bytes is 336 in
 * base64); `overflow` is a guard, never expected. */
typedef struct {
    char buf[RESP_TEXT_MAX];
    size_t len;
    bool overflow;
} proto_line;

static inline void pl_init(proto_line *l) { l->len = 0; l->overflow = false; }
static inline void pl_add(proto_line *l, const char *s, size_t n) {
    if (n > sizeof(l->buf) - l->len) { l->overflow = true; return; }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}
static inline void pl_str(proto_line *l, const char *s) { pl_add(l, s, strlen(s)); }
static inline void pl_char(proto_line *l, char ch) { pl_add(l, &ch, 1); }
static inline void pl_u64(proto_line *l, uint64_t v) {
    char tmp[24];
    pl_add(l, tmp, (size_t)(proto_u64toa(v, tmp) - tmp));
}
static inline void pl_i32(proto_line *l, int32_t v) {
    char tmp[16];
    pl_add(l, tmp, (size_t)(proto_i32toa(v, tmp) - tmp));
}
/* " k<key>": the meta "k" return flag. A binary key (given with "b") is
 * sent base64-encoded and followed by " b", as memcached renders it. */
void pl_meta_key(proto_line *l, const char *key, size_t nkey, bool binary);

/* Queue `l` as a new resp. Returns the resp (so the caller can attach an
 * item or mark it skip), or NULL when out of memory (the conn then reports
 * and closes; the caller just stops). */
mc_resp *proto_emit(conn *c, const proto_line *l);

/* ---- item fields read or written outside items.c ----------------------
 * items.c reads exptime without the item lock (the LRU maintainer, tail
 * ages), so every access is a relaxed atomic, as there; it_flags go through
 * item_flags()/item_flags_set()/item_flags_clear() and time through
 * item_time() (items.h). Writes happen under the item lock or on an item
 * nobody else can see yet. */
static inline rel_time_t proto_exptime(const item *it) {
    return __atomic_load_n(&it->exptime, __ATOMIC_RELAXED);
}
static inline void proto_set_exptime(item *it, rel_time_t e) {
    __atomic_store_n(&it->exptime, e, __ATOMIC_RELAXED);
}

/* ---- stats shared by get, gat and mg ----------------------------------- */
/* A fetch hit: get_cmds and the class's get_hits (the engine counts
 * the per-segment hits itself on lookups with do_update, see items.h). */
void proto_count_get_hit(const item *it);
void proto_count_get_miss(void);

/* Unlink whatever is stored under key (memcached drops the old value when
 * a set for the key cannot be allocated, so no stale value stays
 * readable). Takes and drops the item lock itself. */
void proto_unlink_key(const char *key, size_t nkey);

/* ---- meta commands (proto_meta.c) ------------------------------------- */
/* t->tok[0] is a two-letter word starting with 'm'. */
void proto_meta_dispatch(conn *c, proto_tokens *t);

#endif
