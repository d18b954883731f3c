/*
 * msgparse.h - the leaf's message parser: strict JSON plus the message rules
 * of docs/leaf-stream.md, checked against a schema (see msgparse.c for the
 * design, and what is accepted and refused).
 *
 * Standalone C: no Python, no other header of the index. Two objects:
 *
 *   mp_parser  the schema (text and keyword field names, store policy,
 *              limits), immutable once built: any number of threads may
 *              parse with one parser at the same time.
 *   mp_work    a caller's scratch and output area, used by one thread at a
 *              time. mp_parse appends each message's outputs (key, text,
 *              terms, payload blob, or the error's sentence) to it, so a
 *              batch of messages can be parsed in one go and read after;
 *              mp_work_clear forgets them. Offsets, not pointers, are
 *              returned: the area grows (moves) while a batch is parsed.
 */
#ifndef PS_MSGPARSE_H
#define PS_MSGPARSE_H

#include <stddef.h>
#include <stdint.h>

#define MP_KEY_MAX 1024      /* key bytes (the segment's PS_KEY_MAX) */
#define MP_TERM_MAX 255      /* keyword term bytes (the segment's term limit) */
#define MP_DEPTH_MAX 900     /* nesting of arrays and objects, the message itself is 1 */

/* mp_parse's result: MP_OK or the rule broken (mp_code() names it). */
enum {
    MP_OK = 0,
    MP_TOO_LARGE,     /* over max_message_bytes */
    MP_ENCODING,      /* not UTF-8, or a lone surrogate escape where text is kept */
    MP_JSON,          /* not strict JSON */
    MP_NOT_OBJECT,    /* JSON, but not an object */
    MP_UNKNOWN_KEY,   /* a key other than the six; a delete with more than three */
    MP_MISSING,       /* no op, key or version */
    MP_TYPE,          /* a value of the wrong type */
    MP_RANGE,         /* key length, version range, score or payload number, term length */
    MP_UNKNOWN_FIELD, /* a field the schema does not name */
    MP_EMPTY,         /* an empty keyword value */
    MP_LIMIT,         /* over max_terms */
    MP_NOMEM          /* out of memory (not a verdict on the message) */
};

enum { MP_STORE_SOURCE = 0, MP_STORE_PAYLOAD = 1, MP_STORE_NONE = 2 };
enum { MP_OP_INDEX = 1, MP_OP_DELETE = 2 };
enum { MP_BLOB_EMPTY = 0, MP_BLOB_SOURCE = 1, MP_BLOB_OUT = 2 };
enum { MP_PART_TEXT = 0, MP_PART_REPR = 1 };

/* One schema field. name: UTF-8 bytes (a lone surrogate as its 3-byte
 * generalized UTF-8 form, as Python's "surrogatepass" writes it). */
typedef struct {
    const char *name;
    size_t len;
    int text;           /* 1: a text field; 0: a keyword field */
} mp_field_def;

typedef struct {
    const mp_field_def *fields;
    uint32_t nfields;
    int store;                    /* MP_STORE_* */
    uint32_t max_message_bytes;   /* 64..2^30 */
    uint32_t max_terms;           /* 0..2^30 */
    uint32_t int_max_digits;      /* longest integer literal (Python's 4300); 0: none */
} mp_schema_def;

typedef struct mp_parser mp_parser;
typedef struct mp_work mp_work;

typedef struct {
    size_t off, len;              /* bytes at mp_work_out(w) + off */
} mp_span;

/* A piece of an error's sentence: TEXT is UTF-8 to show as it is, REPR a
 * string from the message to show quoted the way the caller's language
 * quotes strings (Python: repr()). Either may hold a lone surrogate in its
 * generalized UTF-8 form. */
typedef struct {
    int kind;                     /* MP_PART_* */
    size_t off, len;
} mp_part;

typedef struct {
    int status;                   /* MP_OK or the rule broken */
    /* MP_OK: the op */
    int kind;                     /* MP_OP_INDEX / MP_OP_DELETE */
    int64_t version;
    double score;                 /* finite; 0.0 when absent */
    mp_span key;                  /* valid UTF-8, 1..MP_KEY_MAX bytes */
    int has_text;                 /* 0: no text field given (None) */
    mp_span text;                 /* valid UTF-8: the text fields joined with "\n" */
    size_t term0;                 /* terms: mp_work_terms(w)[term0 .. term0 + nterms) */
    uint32_t nterms;              /* each valid UTF-8 "name:value", 1..MP_TERM_MAX bytes */
    int blob;                     /* MP_BLOB_*: b"", the message itself, or blob_span */
    mp_span blob_span;
    /* otherwise: the sentence, mp_work_parts(w)[part0 .. part0 + nparts) */
    size_t part0;
    uint32_t nparts;
} mp_result;

/* A parser for a schema; NULL with a reason in err when the definition is
 * unusable (a name twice, an unknown store) or memory runs out. */
mp_parser *mp_parser_new(const mp_schema_def *def, char *err, size_t errlen);
void mp_parser_free(mp_parser *p);

mp_work *mp_work_new(void);
void mp_work_free(mp_work *w);
/* Forget every result: outputs start again at offset 0. */
void mp_work_clear(mp_work *w);
/* Give back memory beyond about keep bytes (after a huge message). */
void mp_work_trim(mp_work *w, size_t keep);

/* Check one message (raw, len bytes) and fill *res. Returns res->status.
 * Never reads outside raw[0, len); raw need not be NUL-terminated. */
int mp_parse(const mp_parser *p, mp_work *w, const char *raw, size_t len, mp_result *res);

const char *mp_work_out(const mp_work *w);
const mp_span *mp_work_terms(const mp_work *w);
const mp_part *mp_work_parts(const mp_work *w);

/* "too_large", "encoding", ... for an MP_* status; "" for MP_OK. */
const char *mp_code(int status);

#endif
