/*
 * conn.h - a client connection, its response queue, and the API the
 * protocol modules (proto_text.c, proto_meta.c) use to answer.
 * Implemented in conn.c (state machine, reads, writes) and thread.c
 * (listener, workers, lifecycle).
 *
 * OWNERSHIP. A conn belongs to exactly one worker thread from accept to
 * close; only that thread touches it (the listener hands the fd over
 * through the worker's queue). Nothing here is shared, so nothing here is
 * atomic; "stats conns" reads a per-worker snapshot under the worker's
 * conns_lock, which the owner takes only to add/remove a conn.
 *
 * RESPONSES. Every command appends one or more mc_resp to the conn's
 * queue, in request order. A resp carries: text (a status line, a VALUE
 * header...), then optionally the value of a referenced item, then
 * optionally a malloc'd buffer (big "stats" output). Writes gather the
 * queue into one writev() (batched across pipelined requests) and free
 * resps as they are fully written, releasing their item references.
 * A resp marked `skip` (noreply, meta quiet mode) is dropped in order
 * without sending. A resp marked `pending` is waiting for an asynchronous
 * read (the upcoming flash tier): writing stops in front of it, the
 * worker goes on serving other connections and later requests of this
 * one keep queueing behind it, and conn_resp_ready() resumes it.
 *
 * READING A VALUE. A storage command parses its line, allocates the item,
 * then calls conn_read_value(): the conn copies what is already buffered
 * and reads the rest straight into the item's value segments; when all
 * nbytes (value + "\r\n") are in, it calls the protocol's callback, which
 * checks the terminator, stores, answers, and releases the item.
 */
#ifndef PS_CACHE_CONN_H
#define PS_CACHE_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include "items.h"

#define RESP_TEXT_MAX 1024       /* room for any header line we produce */
#define CONN_PROTO_STATE 640     /* scratch bytes a protocol owns per conn */

typedef struct mc_resp {
    struct mc_resp *next;
    item *item;                  /* value sent after text (ref owned), or NULL */
    char *heap;                  /* malloc'd bytes sent after item, or NULL */
    uint32_t heap_len;
    uint32_t text_len;
    bool skip;                   /* suppressed: freed in order, never sent */
    bool pending;                /* waiting for async I/O: writes stop here */
    char text[RESP_TEXT_MAX];
} mc_resp;

typedef struct conn conn;
struct worker;

/* How bytes move for a conn. Plain TCP is the one implementation today;
 * TLS (OpenSSL, later kTLS) plugs in here without touching the state
 * machine: each call behaves like its syscall (bytes moved, 0 at EOF for
 * reads, -1 with errno, EAGAIN meaning "wait for the socket"). */
typedef struct conn_transport {
    ssize_t (*recv)(conn *c, void *buf, size_t len);
    ssize_t (*readv)(conn *c, const struct iovec *iov, int iovcnt);
    ssize_t (*writev)(conn *c, const struct iovec *iov, int iovcnt);
    void (*close)(conn *c);
} conn_transport;
extern const conn_transport conn_transport_tcp;

/* Called when conn_read_value() has read every byte. `ok` is true when
 * the value ends with "\r\n". The callback owns the item reference. */
typedef void (*conn_value_cb)(conn *c, item *it, bool ok);

/* What a conn is doing, for "stats conns" (memcached's state names). */
enum conn_state {
    conn_new_cmd = 0, conn_parse_cmd, conn_nread, conn_swallow_state,
    conn_mwrite, conn_closing, conn_waiting,
};

struct conn {
    int sfd;
    struct worker *worker;       /* owning worker thread */
    const conn_transport *tr;    /* how bytes move (plain TCP for now) */
    /* read side */
    char *rbuf;                  /* buffer start */
    char *rcurr;                 /* next unparsed byte */
    size_t rbytes;               /* unparsed bytes at rcurr */
    size_t rsize;                /* allocated size of rbuf */
    /* value being read by conn_read_value */
    item *ritem;
    conn_value_cb rcb;
    size_t rvalue_off;           /* bytes of the value read so far */
    size_t swallow;              /* bytes to discard (value of a refused set) */
    /* write side */
    mc_resp *resp_head, *resp_tail;
    size_t resp_head_sent;       /* bytes of resp_head already written */
    int nresp;
    /* per-command flags the protocol sets while parsing */
    bool noreply;                /* text "noreply" */
    bool close_after_write;      /* close once the queue drains (quit, fatal) */
    bool close_now;              /* close without flushing (protocol abuse) */
    /* bookkeeping (owner writes; "stats conns" reads them relaxed from
     * another worker under the owner's conns_lock) */
    _Atomic int state;           /* conn_state, for "stats conns" */
    _Atomic uint32_t last_cmd_time; /* rel time of the last command */
    bool closed;                 /* closed; memory freed at end of loop turn */
    bool in_ready;               /* on the worker's ready list */
    bool rbuf_pooled;            /* rbuf came from the worker's pool */
    conn *next_ready;
    conn *next_in_worker, *prev_in_worker;
    char peer[64];               /* "tcp:ip:port" for stats conns */
    char local[64];              /* "tcp:ip:port" of the listener */
    /* scratch owned by the protocol for the command in flight; 8-aligned */
    _Alignas(8) unsigned char proto_state[CONN_PROTO_STATE];
};

/* ---- responses (protocol side) ---- */
/* Append an empty resp to the queue. NULL when out of memory: the caller
 * stops processing; the conn reports "SERVER_ERROR out of memory" and
 * closes. */
mc_resp *resp_new(conn *c);
/* Append bytes to r->text. Returns false if they do not fit. */
bool resp_add_text(mc_resp *r, const char *s, size_t len);
bool resp_printf(mc_resp *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Attach a referenced item whose whole value (with "\r\n") is sent after
 * the text; the resp takes over the caller's reference. */
void resp_set_item(mc_resp *r, item *it);
/* Attach a malloc'd buffer sent after text and item; the resp frees it. */
void resp_set_heap(mc_resp *r, char *buf, size_t len);
/* Shorthands: a resp holding str + "\r\n". out_string honours c->noreply
 * (the resp is marked skip); out_errstring always sends (memcached sends
 * errors even for noreply commands, and clears noreply). */
void out_string(conn *c, const char *str);
void out_errstring(conn *c, const char *str);

/* ---- reading values (protocol side) ---- */
/* Read it->nbytes bytes of value into `it`, then call cb. The conn owns the
 * reference until cb is called, and hands it to cb. */
void conn_read_value(conn *c, item *it, conn_value_cb cb);
/* Discard the next n bytes of input (value of a refused storage command). */
void conn_swallow(conn *c, size_t n);

/* ---- async completion (flash tier, later) ---- */
void conn_resp_ready(conn *c, mc_resp *r);

/* ---- stats ---- */
void conns_stats(add_stat_fn add, void *ctx);   /* "stats conns" */
/* thread-level counts for "stats": curr_connections etc. live in gstats */

/* ---- the protocol entry point conn.c calls ---- */
/* Process one command line (without its "\n" and any "\r" before it).
 * `line` points into the read buffer and stays valid until return; the
 * protocol may modify its bytes (tokenising). Implemented in proto_text.c,
 * which hands meta commands to proto_meta.c. */
void proto_process_line(conn *c, char *line, size_t len);

#endif
