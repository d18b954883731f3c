/*
 * proto.h - memcached wire protocol for the load generator: request
 * encoders (text and meta) and an incremental reply parser.
 *
 * The parser is fed whatever bytes have arrived, in any split. It keeps its
 * position across calls (inside a reply line, or n bytes into a value), so
 * values of any size stream through without being buffered whole. It knows
 * which request the reply answers (the head of the connection's in-flight
 * queue) and accepts only the replies that request can get; anything else is
 * PROTO_BAD with a printable reason.
 *
 * Threads: none; a parser belongs to one connection.
 */
#ifndef PS_BENCH_PROTO_H
#define PS_BENCH_PROTO_H

#include <stddef.h>
#include <stdint.h>

/* Longest reply line accepted (a VALUE line with a 250-byte key and a CAS is
 * under 300 bytes; meta lines carry a few flags). */
#define PROTO_LINE_MAX 4096
/* Largest value length accepted in a VALUE/VA line. */
#define PROTO_VALUE_MAX (UINT64_C(1) << 31)

/* A growable byte buffer: data[off..len) is pending. */
typedef struct bench_buf {
    char *data;
    size_t len;  /* bytes written into data                */
    size_t off;  /* bytes already consumed (sent / parsed) */
    size_t cap;
} bench_buf;

int buf_reserve(bench_buf *b, size_t extra); /* 0, or -1 when out of memory */
void buf_free(bench_buf *b);

/* What the reply being parsed must answer. */
typedef struct proto_expect {
    uint8_t op;         /* enum bench_op                                   */
    uint8_t meta;       /* meta protocol                                   */
    uint16_t nkeys;     /* keys asked for (gets)                           */
} proto_expect;

enum proto_status {
    PROTO_MORE = 0, /* every byte handed in was consumed; feed more      */
    PROTO_DONE = 1, /* a complete reply: see proto_reply                 */
    PROTO_BAD = 2,  /* not a reply this request can get: see p->why      */
};

enum proto_outcome {
    PROTO_OK = 0,         /* get answered / set stored                       */
    PROTO_NOT_STORED = 1, /* NOT_STORED EXISTS NOT_FOUND / NS EX NF          */
    PROTO_ERROR = 2,      /* ERROR, CLIENT_ERROR, SERVER_ERROR               */
};

typedef struct proto_reply {
    uint32_t hits;     /* values returned (gets)                          */
    uint8_t outcome;   /* enum proto_outcome                              */
    uint8_t desync;    /* the stream position is uncertain: reset the connection */
    uint64_t bytes;    /* reply length on the wire                        */
} proto_reply;

typedef struct proto_parser {
    uint8_t in_value;       /* inside a value block                        */
    uint8_t done_after_value; /* meta single get: the value ends the reply */
    uint8_t saw_error;      /* an error line arrived inside a multi reply  */
    uint64_t value_left;    /* value bytes + CRLF still to come            */
    uint32_t hits;          /* values so far in this reply                 */
    uint64_t bytes;         /* bytes of this reply so far                  */
    char why[160];          /* reason for PROTO_BAD / the error line text  */
} proto_parser;

void proto_parser_reset(proto_parser *p);

/*
 * Parses buf[0..len) as the continuation of the reply to `exp`.
 * *consumed is set to the bytes the parser is finished with; an incomplete
 * line is left unconsumed (the caller keeps it and appends more).
 * On PROTO_DONE the reply is in *reply and the parser is ready for the next
 * reply; the bytes after *consumed belong to it.
 */
int proto_parse(proto_parser *p, const proto_expect *exp, const char *buf, size_t len,
                size_t *consumed, proto_reply *reply);

/* Encoders append one request to b; they return the bytes appended, or 0
 * when out of memory. keys are laid out back to back with their lengths. */
size_t proto_encode_set(bench_buf *b, int meta, const char *key, size_t key_len,
                        const char *value, uint32_t value_len, uint32_t expiry);
size_t proto_encode_get(bench_buf *b, int meta, const char *const *keys,
                        const size_t *key_lens, uint32_t nkeys);

/* Up to 60 bytes of s as a quoted, escaped, printable string (for messages);
 * outlen >= 8. */
void proto_quote(char *out, size_t outlen, const char *s, size_t n);

#endif
