/*
 * worker.c - one load-generating thread: an epoll loop driving `clients`
 * non-blocking connections to the server.
 *
 * LIFE OF A WORKER
 *
 *   1. connect every connection (non-blocking; a failure here ends the run
 *      with "cannot connect to host:port: <reason>", no retries);
 *   2. wait at the start line until every worker is connected;
 *   3. t0 = now; issue the first requests; loop:
 *        epoll_pwait2 (nanosecond timeout) -> read, parse, record, issue,
 *        write; every so often (the "scan") fire the timers: open-loop
 *        sends that became due, request and connect timeouts, reconnect
 *        back-offs, the end of a timed run;
 *   4. leave when every connection is finished (or `stop` is set), close
 *      everything, report finished.
 *
 * CLOSED AND OPEN LOOP
 *
 * Closed loop (no --rate): a connection keeps `pipeline` requests in flight;
 * each reply makes room for the next request. Latency = reply time - send
 * time.
 *
 * Open loop (--rate R): request k of connection g is *scheduled* at
 * t0 + (g + k * C) / R (C = all connections), which spaces the whole run's
 * requests 1/R apart. A request is sent once it is due and the connection
 * has fewer than `pipeline` in flight; its latency is measured from its
 * scheduled time, not from when it could finally be sent. A server that
 * falls behind therefore shows its queueing delay in the latencies (no
 * coordinated omission) instead of quietly slowing the load down.
 *
 * MEMORY PER CONNECTION
 *
 * Replies are read into one 64 KiB buffer per worker and parsed at once;
 * values stream through the parser without being kept. All a connection
 * carries from one read to the next is an incomplete reply line (at most
 * PROTO_LINE_MAX bytes, usually none), its unsent requests and its ring of
 * `pipeline` in-flight records - so ten thousand connections cost tens of
 * megabytes, not gigabytes.
 *
 * INVARIANTS
 *   - q_count <= pipeline; queue[q_head] is the oldest request in flight and
 *     the one the parser is reading the reply to (memcached answers in order).
 *   - A connection's fd and gen change together; epoll events carry
 *     (gen << 32 | slot), so an event for a socket closed earlier in the same
 *     batch is recognised and dropped.
 *   - Every request issued is, exactly once, either answered (counted in
 *     get/set ops), answered with garbage (protocol_errors), timed out
 *     (timeouts), or lost with its connection (lost) -- or still in flight
 *     when a stop cut the run short.
 *   - A connection is FINISHED when it has nothing left to issue and nothing
 *     in flight; the worker leaves when all are.
 *
 * Threads: the worker touches only its own connections and results; see
 * worker.h for the shared parts (stop flag, start line, progress snapshot).
 */
#define _GNU_SOURCE
#include "worker.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "proto.h"

#define NS_PER_SEC UINT64_C(1000000000)
#define NS_PER_MS UINT64_C(1000000)
#define IN_CAP (64u * 1024u)          /* per-worker read buffer; > 2 * PROTO_LINE_MAX */
#define MAX_EVENTS 256
#define SCAN_MAX_NS (100 * NS_PER_MS) /* timers and the stop flag: at least 10/s */
#define PUBLISH_NS (100 * NS_PER_MS)  /* progress snapshot period               */
#define RETRY_FIRST_NS (100 * NS_PER_MS) /* reconnect back-off: 100ms, 200ms, ... */
#define RECONNECT_ATTEMPTS 5          /* failed reconnects in a row that end the run */
#define DRAIN_MAX_NS (10 * NS_PER_SEC) /* a timed run waits this long for late replies */
#define TIMELINE_MAX_SLOTS (1u << 20)

enum conn_state {
    CONN_IDLE = 0,       /* no socket; reconnect at retry_at_ns              */
    CONN_CONNECTING = 1, /* connect in progress                              */
    CONN_READY = 2,      /* connected, issuing / reading                     */
    CONN_FINISHED = 3,   /* done for the run                                 */
};

typedef struct bench_req {
    uint64_t intended_ns; /* latency origin: schedule (open loop) or send time */
    uint64_t sent_ns;     /* when it was written: timeout origin              */
    uint32_t bytes_out;
    uint16_t nkeys;
    uint8_t op;           /* enum bench_op                                    */
} bench_req;

struct bench_conn {
    uint32_t slot;           /* index in the worker's array                  */
    uint32_t gen;            /* bumped with every new socket                 */
    uint64_t global_index;   /* 0 .. connections-1 over all workers          */
    int fd;                  /* -1 when there is no socket                   */
    int state;               /* enum conn_state                              */
    uint32_t events;         /* epoll mask registered for fd                 */
    bench_buf out;           /* encoded requests not yet written             */
    char *carry;             /* an incomplete reply line kept between reads  */
    size_t carry_len, carry_cap; /* carry_len <= PROTO_LINE_MAX                */
    proto_parser parser;
    bench_req *queue;        /* ring of `pipeline` requests in flight        */
    uint32_t q_head, q_count;
    uint64_t to_issue;       /* requests left to issue; UINT64_MAX when timed */
    uint64_t since_connect;  /* requests issued on the current socket        */
    uint64_t scheduled;      /* open loop: requests scheduled so far         */
    uint64_t connect_start_ns;
    uint64_t retry_at_ns;
    uint32_t connect_failures; /* failed reconnects in a row                 */
    bench_cursor cursor;
};

typedef struct worker_loop {
    bench_worker *w;
    bench_results *res;          /* == &w->res                              */
    const bench_config *cfg;
    const bench_workload *wl;
    bench_shared *sh;
    int epfd;
    bench_conn *conns;
    uint32_t nconns;
    uint32_t active;             /* connections not FINISHED                */
    int running;                 /* past the start line                     */
    int stopping;                /* timed run over: issue nothing more      */
    int open_loop;
    uint64_t t0_ns;
    uint64_t deadline_ns;        /* timed runs: when to stop issuing; else 0 */
    uint64_t drain_until_ns;     /* timed runs: when to give up on replies   */
    uint64_t next_scan_ns;
    uint64_t next_publish_ns;    /* UINT64_MAX without --progress          */
    uint64_t timeout_ns;         /* 0: requests never time out              */
    uint64_t connect_timeout_ns;
    uint64_t timeline_slot_ns;
    double open_interval_ns;     /* open loop: per-connection spacing       */
    double open_phase_ns;        /* open loop: offset between connections   */
    char *in;                    /* IN_CAP bytes: a connection's carry, then what recv brings */
    char *keys;                  /* multiget * BENCH_KEY_MAX scratch        */
    const char **key_ptrs;
    size_t *key_lens;
} worker_loop;

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

void shared_fail(bench_shared *s, int kind, const char *fmt, ...)
{
    pthread_mutex_lock(&s->mu);
    if (s->error_kind == BENCH_ERR_NONE) {
        s->error_kind = kind;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s->error, sizeof(s->error), fmt, ap);
        va_end(ap);
    }
    atomic_store(&s->stop, 1);
    pthread_cond_broadcast(&s->changed);
    pthread_mutex_unlock(&s->mu);
}

static void op_stats_free(bench_op_stats *s)
{
    hist_free(&s->latency);
}

int worker_init(bench_worker *w, uint32_t index, bench_shared *shared, int progress)
{
    memset(w, 0, sizeof(*w));
    w->index = index;
    w->shared = shared;
    pthread_mutex_init(&w->pub_mu, NULL); /* first: worker_free destroys it */
    if (hist_init(&w->res.get.latency) != 0 || hist_init(&w->res.set.latency) != 0 ||
        hist_init(&w->res.connect) != 0)
        return -1;
    if (progress && hist_init(&w->pub_latency) != 0)
        return -1;
    return 0;
}

void worker_free(bench_worker *w)
{
    op_stats_free(&w->res.get);
    op_stats_free(&w->res.set);
    hist_free(&w->res.connect);
    hist_free(&w->pub_latency);
    free(w->res.timeline);
    w->res.timeline = NULL;
    pthread_mutex_destroy(&w->pub_mu);
}

/* ---- small helpers ------------------------------------------------------ */

static void wake_at(worker_loop *L, uint64_t t)
{
    if (t < L->next_scan_ns)
        L->next_scan_ns = t;
}

static int conn_watch(worker_loop *L, bench_conn *c, uint32_t events, int op)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = events;
    ev.data.u64 = ((uint64_t)c->gen << 32) | c->slot;
    if (epoll_ctl(L->epfd, op, c->fd, &ev) != 0)
        return -1;
    c->events = events;
    return 0;
}

static const char *server_name(worker_loop *L)
{
    return L->sh->addr->display;
}

static int conn_done(worker_loop *L, bench_conn *c)
{
    return (c->to_issue == 0 || L->stopping) && c->q_count == 0;
}

/* Drops the socket and everything tied to it; state becomes IDLE. */
static void conn_close(bench_conn *c)
{
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    c->events = 0;
    c->out.len = c->out.off = 0;
    c->carry_len = 0;
    proto_parser_reset(&c->parser);
    c->q_head = c->q_count = 0;
    c->state = CONN_IDLE;
}

static void conn_finish(worker_loop *L, bench_conn *c)
{
    if (c->state == CONN_FINISHED)
        return;
    conn_close(c);
    c->state = CONN_FINISHED;
    L->active--;
}

static void timeline_add(worker_loop *L, uint64_t now, uint64_t latency_ns)
{
    bench_results *res = L->res;
    uint64_t idx = (now - L->t0_ns) / L->timeline_slot_ns;
    if (idx >= TIMELINE_MAX_SLOTS)
        return;
    if (idx >= res->timeline_len) {
        size_t want = res->timeline_len ? res->timeline_len : 16;
        while (want <= idx)
            want *= 2;
        bench_slot *grown = realloc(res->timeline, want * sizeof(*grown));
        if (grown == NULL)
            return; /* a hole in the timeline beats aborting the run */
        memset(grown + res->timeline_len, 0, (want - res->timeline_len) * sizeof(*grown));
        res->timeline = grown;
        res->timeline_len = want;
    }
    bench_slot *s = &res->timeline[idx];
    s->ops++;
    s->latency_sum_ns += latency_ns;
    if (latency_ns > s->latency_max_ns)
        s->latency_max_ns = latency_ns;
}

static void publish(worker_loop *L)
{
    bench_worker *w = L->w;
    bench_results *res = L->res;
    pthread_mutex_lock(&w->pub_mu);
    w->pub_ops = res->get.ops + res->set.ops;
    w->pub_bytes = res->bytes_in + res->bytes_out;
    w->pub_errors = res->get.errors + res->set.errors + res->protocol_errors + res->timeouts +
                    res->disconnects;
    hist_reset(&w->pub_latency);
    hist_add(&w->pub_latency, &res->get.latency);
    hist_add(&w->pub_latency, &res->set.latency);
    pthread_mutex_unlock(&w->pub_mu);
}

/* ---- connection life cycle ---------------------------------------------- */

static void conn_issue(worker_loop *L, bench_conn *c, uint64_t now);
static void conn_connect(worker_loop *L, bench_conn *c, uint64_t now);

/*
 * An established connection failed (garbage, drop, timeout). The caller has
 * counted the failure and what happened to the requests in flight. Stop:
 * the run ends with `why`. Continue: reconnect, unless nothing is left to do.
 */
static void conn_reset(worker_loop *L, bench_conn *c, uint64_t now, const char *why)
{
    conn_close(c);
    if (L->cfg->on_error == BENCH_ON_ERROR_STOP) {
        shared_fail(L->sh, BENCH_ERR_RUN, "%s", why);
        conn_finish(L, c);
        return;
    }
    if (conn_done(L, c)) {
        conn_finish(L, c);
        return;
    }
    conn_connect(L, c, now);
}

/* The server closed the connection (err == 0) or the socket failed. */
static void conn_lost(worker_loop *L, bench_conn *c, int err, uint64_t now)
{
    char why[BENCH_ERROR_MAX];
    if (err == 0)
        snprintf(why, sizeof(why),
                 "connection to %s closed by the server mid-run (%u requests in flight)",
                 server_name(L), c->q_count);
    else
        snprintf(why, sizeof(why), "connection to %s failed mid-run: %s", server_name(L),
                 strerror(err));
    L->res->disconnects++;
    L->res->lost += c->q_count;
    conn_reset(L, c, now, why);
}

static void conn_connect_failed(worker_loop *L, bench_conn *c, int err, uint64_t now)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->events = 0;
    c->state = CONN_IDLE;
    if (!L->running) {
        shared_fail(L->sh, BENCH_ERR_CONNECT, "cannot connect to %s: %s", server_name(L),
                    strerror(err));
        conn_finish(L, c);
        return;
    }
    L->res->connect_errors++;
    c->connect_failures++;
    if (L->cfg->on_error == BENCH_ON_ERROR_STOP || c->connect_failures >= RECONNECT_ATTEMPTS) {
        shared_fail(L->sh, BENCH_ERR_RUN, "cannot reconnect to %s: %s (%u attempts)",
                    server_name(L), strerror(err), c->connect_failures);
        conn_finish(L, c);
        return;
    }
    c->retry_at_ns = now + (RETRY_FIRST_NS << (c->connect_failures - 1));
    wake_at(L, c->retry_at_ns);
}

/* issue_now: 0 when called from inside conn_connect, which may itself run
 * under conn_issue -> conn_flush -> conn_lost; the next scan issues instead,
 * so a server that keeps resetting connections cannot recurse us deep. */
static void conn_connected(worker_loop *L, bench_conn *c, uint64_t now, int issue_now)
{
    hist_record_ns(&L->res->connect, now - c->connect_start_ns);
    c->state = CONN_READY;
    c->connect_failures = 0;
    c->since_connect = 0;
    if (c->events != EPOLLIN && conn_watch(L, c, EPOLLIN, EPOLL_CTL_MOD) != 0) {
        conn_connect_failed(L, c, errno, now);
        return;
    }
    if (!L->running)
        return;
    if (issue_now)
        conn_issue(L, c, now);
    else
        wake_at(L, now);
}

static void conn_connect(worker_loop *L, bench_conn *c, uint64_t now)
{
    int connected = 0;
    c->connect_start_ns = now;
    int fd = net_connect_start(L->sh->addr, &connected);
    if (fd < 0) {
        conn_connect_failed(L, c, errno, now);
        return;
    }
    c->fd = fd;
    c->gen++;
    c->state = CONN_CONNECTING;
    if (conn_watch(L, c, connected ? EPOLLIN : EPOLLOUT, EPOLL_CTL_ADD) != 0) {
        conn_connect_failed(L, c, errno, now);
        return;
    }
    if (connected)
        conn_connected(L, c, bench_now_ns(), 0);
    else
        wake_at(L, now + L->connect_timeout_ns);
}

/* ---- writing ------------------------------------------------------------ */

/* Writes what the kernel takes; watches for writability when it stalls.
 * 0, or -1 when the connection was lost (and reset). */
static int conn_flush(worker_loop *L, bench_conn *c, uint64_t now)
{
    while (c->out.off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out.off, c->out.len - c->out.off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out.off += (size_t)n;
            L->res->bytes_out += (uint64_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!(c->events & EPOLLOUT) && conn_watch(L, c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD) != 0) {
                conn_lost(L, c, errno, now);
                return -1;
            }
            return 0;
        }
        conn_lost(L, c, n < 0 ? errno : EPIPE, now);
        return -1;
    }
    c->out.off = c->out.len = 0;
    if ((c->events & EPOLLOUT) && conn_watch(L, c, EPOLLIN, EPOLL_CTL_MOD) != 0) {
        conn_lost(L, c, errno, now);
        return -1;
    }
    return 0;
}

/* Encodes the connection's next request into its output buffer. */
static int conn_encode_one(worker_loop *L, bench_conn *c, uint64_t intended, uint64_t now)
{
    const bench_workload *wl = L->wl;
    int meta = L->cfg->protocol == BENCH_PROTO_META;
    int op = workload_next_op(wl, &c->cursor);
    bench_req *r = &c->queue[(c->q_head + c->q_count) % L->cfg->pipeline];
    size_t n;
    if (op == BENCH_OP_SET) {
        uint64_t key = workload_next_key(wl, &c->cursor, BENCH_OP_SET);
        size_t key_len = workload_format_key(wl, key, L->keys);
        uint32_t size = workload_next_size(wl, &c->cursor);
        uint32_t expiry = workload_next_expiry(wl, &c->cursor);
        n = proto_encode_set(&c->out, meta, L->keys, key_len, wl->value, size, expiry);
        r->nkeys = 1;
    } else {
        uint32_t nkeys = L->cfg->multiget;
        for (uint32_t i = 0; i < nkeys; i++) {
            char *slot = L->keys + (size_t)i * BENCH_KEY_MAX;
            uint64_t key = workload_next_key(wl, &c->cursor, BENCH_OP_GET);
            L->key_lens[i] = workload_format_key(wl, key, slot);
            L->key_ptrs[i] = slot;
        }
        n = proto_encode_get(&c->out, meta, L->key_ptrs, L->key_lens, nkeys);
        r->nkeys = (uint16_t)nkeys;
    }
    if (n == 0)
        return -1;
    r->op = (uint8_t)op;
    r->intended_ns = intended;
    r->sent_ns = now;
    r->bytes_out = (uint32_t)n;
    c->q_count++;
    return 0;
}

/* Issues as many requests as the pipeline, the budget and (open loop) the
 * schedule allow, then writes them. */
static void conn_issue(worker_loop *L, bench_conn *c, uint64_t now)
{
    const bench_config *cfg = L->cfg;
    uint32_t issued = 0;
    if (c->state != CONN_READY)
        return;
    while (c->q_count < cfg->pipeline && c->to_issue > 0 && !L->stopping) {
        if (cfg->reconnect_interval != 0 && c->since_connect >= cfg->reconnect_interval)
            break;
        uint64_t intended = now;
        if (L->open_loop) {
            uint64_t due = L->t0_ns + (uint64_t)(L->open_phase_ns * (double)c->global_index +
                                                 L->open_interval_ns * (double)c->scheduled);
            if (due > now) {
                wake_at(L, due);
                break;
            }
            intended = due;
            c->scheduled++;
        }
        if (conn_encode_one(L, c, intended, now) != 0) {
            shared_fail(L->sh, BENCH_ERR_SYSTEM, "out of memory encoding a request");
            return;
        }
        c->to_issue--;
        c->since_connect++;
        issued++;
    }
    if (issued)
        conn_flush(L, c, now);
}

/* ---- reading ------------------------------------------------------------ */

static void record(worker_loop *L, const bench_req *r, const proto_reply *rep, uint64_t now)
{
    bench_results *res = L->res;
    uint64_t latency = now > r->intended_ns ? now - r->intended_ns : 0;
    bench_op_stats *s = r->op == BENCH_OP_SET ? &res->set : &res->get;
    s->ops++;
    s->keys += r->nkeys;
    s->bytes_out += r->bytes_out;
    s->bytes_in += rep->bytes;
    hist_record_ns(&s->latency, latency);
    if (rep->outcome == PROTO_ERROR)
        s->errors++;
    if (r->op == BENCH_OP_GET) {
        s->hits += rep->hits;
        if (rep->outcome != PROTO_ERROR)
            s->misses += r->nkeys - rep->hits;
    } else if (rep->outcome == PROTO_OK) {
        s->stored++;
    } else if (rep->outcome == PROTO_NOT_STORED) {
        s->not_stored++;
    }
    timeline_add(L, now, latency);
    L->w->t_last_ns = now;
}

/* Parses every complete reply in buf[0..len) and keeps an incomplete last
 * line in the connection's carry. 0, or -1 when the connection was reset or
 * finished on the way (the rest of buf is then dropped with it). */
static int conn_parse(worker_loop *L, bench_conn *c, const char *buf, size_t len, uint64_t now)
{
    const bench_config *cfg = L->cfg;
    char why[BENCH_ERROR_MAX];
    size_t off = 0;
    while (off < len) {
        if (c->q_count == 0) {
            char quoted[100];
            proto_quote(quoted, sizeof(quoted), buf + off, len - off);
            snprintf(why, sizeof(why), "protocol error from %s: data with no request in flight: %s",
                     server_name(L), quoted);
            L->res->protocol_errors++;
            conn_reset(L, c, now, why);
            return -1;
        }
        bench_req *r = &c->queue[c->q_head];
        proto_expect exp = {.op = r->op, .meta = cfg->protocol == BENCH_PROTO_META,
                            .nkeys = r->nkeys};
        size_t used = 0;
        proto_reply rep;
        int status = proto_parse(&c->parser, &exp, buf + off, len - off, &used, &rep);
        off += used;
        if (status == PROTO_MORE)
            break;
        c->q_head = (c->q_head + 1) % cfg->pipeline;
        c->q_count--;
        if (status == PROTO_BAD) {
            snprintf(why, sizeof(why), "protocol error from %s: %s", server_name(L),
                     c->parser.why);
            L->res->protocol_errors++;
            L->res->lost += c->q_count;
            conn_reset(L, c, now, why);
            return -1;
        }
        record(L, r, &rep, now);
        if (rep.outcome == PROTO_ERROR) {
            const char *op = r->op == BENCH_OP_SET ? "set" : "get";
            if (cfg->on_error == BENCH_ON_ERROR_STOP) {
                shared_fail(L->sh, BENCH_ERR_RUN, "%s replied \"%s\" to a %s", server_name(L),
                            c->parser.why, op);
                conn_finish(L, c);
                return -1;
            }
            if (rep.desync) {
                snprintf(why, sizeof(why), "%s replied \"%s\" to a meta multi-get: resetting",
                         server_name(L), c->parser.why);
                L->res->lost += c->q_count;
                conn_reset(L, c, now, why);
                return -1;
            }
        }
    }
    /* What is left is one incomplete line, at most PROTO_LINE_MAX bytes (the
     * parser refuses longer ones): keep it for the next read. */
    size_t rest = len - off;
    if (rest > c->carry_cap) {
        char *grown = realloc(c->carry, rest);
        if (grown == NULL) {
            shared_fail(L->sh, BENCH_ERR_SYSTEM, "out of memory reading a reply");
            conn_finish(L, c);
            return -1;
        }
        c->carry = grown;
        c->carry_cap = rest;
    }
    if (rest > 0) /* carry is NULL until first needed; memcpy(NULL, .., 0) is UB */
        memcpy(c->carry, buf + off, rest);
    c->carry_len = rest;
    return 0;
}

static void conn_readable(worker_loop *L, bench_conn *c)
{
    /* The worker's one read buffer: this connection's carried-over partial
     * line first, then whatever the socket has. */
    size_t len = c->carry_len;
    if (len > 0)
        memcpy(L->in, c->carry, len);
    ssize_t n;
    do
        n = recv(c->fd, L->in + len, IN_CAP - len, 0);
    while (n < 0 && errno == EINTR);
    uint64_t now = bench_now_ns();
    if (n == 0) {
        conn_lost(L, c, 0, now);
        return;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            conn_lost(L, c, errno, now);
        return;
    }
    L->res->bytes_in += (uint64_t)n;
    if (conn_parse(L, c, L->in, len + (size_t)n, now) != 0)
        return;
    if (conn_done(L, c)) {
        conn_finish(L, c);
        return;
    }
    const bench_config *cfg = L->cfg;
    if (cfg->reconnect_interval != 0 && c->since_connect >= cfg->reconnect_interval &&
        c->q_count == 0) {
        L->res->reconnects++;
        conn_close(c);
        conn_connect(L, c, now);
        return;
    }
    conn_issue(L, c, now);
}

/* ---- timers ------------------------------------------------------------- */

static void scan(worker_loop *L, uint64_t now)
{
    bench_results *res = L->res;
    char why[BENCH_ERROR_MAX];
    if (L->deadline_ns != 0 && !L->stopping && now >= L->deadline_ns)
        L->stopping = 1;
    L->next_scan_ns = now + SCAN_MAX_NS;
    if (L->deadline_ns != 0 && !L->stopping)
        wake_at(L, L->deadline_ns);
    int give_up = L->stopping && now >= L->drain_until_ns;

    for (uint32_t i = 0; i < L->nconns; i++) {
        bench_conn *c = &L->conns[i];
        switch (c->state) {
        case CONN_IDLE:
            if (L->stopping || c->to_issue == 0)
                conn_finish(L, c);
            else if (now >= c->retry_at_ns)
                conn_connect(L, c, now);
            else
                wake_at(L, c->retry_at_ns);
            break;
        case CONN_CONNECTING:
            if (L->stopping)
                conn_finish(L, c);
            else if (now - c->connect_start_ns >= L->connect_timeout_ns)
                conn_connect_failed(L, c, ETIMEDOUT, now);
            else
                wake_at(L, c->connect_start_ns + L->connect_timeout_ns);
            break;
        case CONN_READY:
            if (c->q_count > 0 && L->timeout_ns != 0) {
                const bench_req *oldest = &c->queue[c->q_head];
                if (now - oldest->sent_ns >= L->timeout_ns) {
                    snprintf(why, sizeof(why), "no reply from %s within %.3f s (%u requests in flight)",
                             server_name(L), (double)L->timeout_ns / 1e9, c->q_count);
                    res->timeouts += c->q_count;
                    c->q_count = 0;
                    conn_reset(L, c, now, why);
                    break;
                }
                wake_at(L, oldest->sent_ns + L->timeout_ns);
            }
            if (give_up && c->q_count > 0) {
                res->lost += c->q_count;
                conn_finish(L, c);
                break;
            }
            if (conn_done(L, c)) {
                conn_finish(L, c);
                break;
            }
            /* open loop: sends that became due; both: a fresh connection */
            conn_issue(L, c, now);
            break;
        default:
            break;
        }
    }
    if (L->stopping && L->active > 0)
        wake_at(L, L->drain_until_ns);
}

/* ---- the loop ----------------------------------------------------------- */

static int wait_events(worker_loop *L, struct epoll_event *events, uint64_t wait_ns)
{
    static atomic_int no_pwait2; /* set once if the kernel lacks epoll_pwait2 */
    int n;
    if (!atomic_load_explicit(&no_pwait2, memory_order_relaxed)) {
        struct timespec ts = {.tv_sec = (time_t)(wait_ns / NS_PER_SEC),
                              .tv_nsec = (long)(wait_ns % NS_PER_SEC)};
        n = epoll_pwait2(L->epfd, events, MAX_EVENTS, &ts, NULL);
        if (n >= 0 || errno != ENOSYS)
            return n < 0 ? 0 : n;
        atomic_store_explicit(&no_pwait2, 1, memory_order_relaxed);
    }
    int ms = (int)((wait_ns + NS_PER_MS - 1) / NS_PER_MS);
    n = epoll_wait(L->epfd, events, MAX_EVENTS, ms);
    return n < 0 ? 0 : n;
}

static void dispatch(worker_loop *L, const struct epoll_event *ev)
{
    uint32_t slot = (uint32_t)ev->data.u64;
    uint32_t gen = (uint32_t)(ev->data.u64 >> 32);
    if (slot >= L->nconns)
        return;
    bench_conn *c = &L->conns[slot];
    if (c->fd < 0 || c->gen != gen)
        return; /* a socket closed earlier in this batch */
    if (c->state == CONN_CONNECTING) {
        int err = net_connect_result(c->fd);
        uint64_t now = bench_now_ns();
        if (err == 0)
            conn_connected(L, c, now, 1);
        else
            conn_connect_failed(L, c, err, now);
        return;
    }
    if (ev->events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        conn_readable(L, c);
        if (c->fd < 0 || c->gen != gen)
            return;
    }
    if (ev->events & EPOLLOUT)
        conn_flush(L, c, bench_now_ns());
}

static int stop_requested(worker_loop *L)
{
    return atomic_load_explicit(&L->sh->stop, memory_order_relaxed) != 0;
}

/* Connects every connection; 0 when all are up. */
static int connect_all(worker_loop *L, struct epoll_event *events)
{
    uint64_t now = bench_now_ns();
    for (uint32_t i = 0; i < L->nconns && !stop_requested(L); i++)
        conn_connect(L, &L->conns[i], now);
    for (;;) {
        uint32_t ready = 0;
        for (uint32_t i = 0; i < L->nconns; i++)
            ready += L->conns[i].state == CONN_READY;
        if (ready == L->nconns)
            return 0;
        if (stop_requested(L))
            return -1;
        now = bench_now_ns();
        for (uint32_t i = 0; i < L->nconns; i++) {
            bench_conn *c = &L->conns[i];
            if (c->state == CONN_CONNECTING && now - c->connect_start_ns >= L->connect_timeout_ns)
                conn_connect_failed(L, c, ETIMEDOUT, now);
        }
        int n = wait_events(L, events, 10 * NS_PER_MS);
        for (int i = 0; i < n; i++)
            dispatch(L, &events[i]);
    }
}

/* Waits at the start line for the other workers. 0 to go, -1 to give up. */
static int start_line(worker_loop *L)
{
    bench_shared *sh = L->sh;
    pthread_mutex_lock(&sh->mu);
    sh->ready++;
    pthread_cond_broadcast(&sh->changed);
    while (sh->ready < sh->workers && !atomic_load(&sh->stop))
        pthread_cond_wait(&sh->changed, &sh->mu);
    pthread_mutex_unlock(&sh->mu);
    return atomic_load(&sh->stop) ? -1 : 0;
}

static int loop_init(worker_loop *L, bench_worker *w)
{
    bench_shared *sh = w->shared;
    const bench_config *cfg = sh->cfg;
    memset(L, 0, sizeof(*L));
    L->w = w;
    L->res = &w->res;
    L->cfg = cfg;
    L->wl = sh->workload;
    L->sh = sh;
    L->epfd = epoll_create1(EPOLL_CLOEXEC);
    L->conns = calloc(cfg->clients, sizeof(*L->conns));
    L->nconns = L->conns != NULL ? cfg->clients : 0;
    for (uint32_t i = 0; i < L->nconns; i++)
        L->conns[i].fd = -1; /* before anything can fail: loop_free closes fds */
    L->in = malloc(IN_CAP);
    L->keys = malloc((size_t)cfg->multiget * BENCH_KEY_MAX);
    L->key_ptrs = calloc(cfg->multiget, sizeof(*L->key_ptrs));
    L->key_lens = calloc(cfg->multiget, sizeof(*L->key_lens));
    if (L->epfd < 0 || L->conns == NULL || L->in == NULL || L->keys == NULL || L->key_ptrs == NULL ||
        L->key_lens == NULL)
        return -1;
    L->timeout_ns = (uint64_t)(cfg->timeout_s * 1e9);
    L->connect_timeout_ns = (uint64_t)(cfg->connect_timeout_s * 1e9);
    L->timeline_slot_ns = (uint64_t)(cfg->timeline_interval_s * 1e9);
    if (L->timeline_slot_ns == 0)
        L->timeline_slot_ns = NS_PER_SEC;
    L->open_loop = cfg->rate > 0;
    if (L->open_loop) {
        L->open_phase_ns = 1e9 / cfg->rate;
        L->open_interval_ns = L->open_phase_ns * (double)sh->connections;
    }
    L->next_publish_ns = cfg->progress ? 0 : UINT64_MAX;

    uint64_t connections = sh->connections;
    for (uint32_t i = 0; i < L->nconns; i++) {
        bench_conn *c = &L->conns[i];
        c->slot = i;
        c->global_index = (uint64_t)w->index * cfg->clients + i;
        c->queue = calloc(cfg->pipeline, sizeof(*c->queue));
        if (c->queue == NULL)
            return -1;
        proto_parser_reset(&c->parser);
        uint64_t seq_start;
        if (cfg->requests != 0) {
            /* An exact split: the first requests % connections get one more. */
            uint64_t g = c->global_index;
            uint64_t base = cfg->requests / connections, extra = cfg->requests % connections;
            c->to_issue = base + (g < extra ? 1 : 0);
            seq_start = g * base + (g < extra ? g : extra); /* requests before this one */
        } else {
            c->to_issue = UINT64_MAX;
            seq_start = (uint64_t)((double)c->global_index * (double)L->wl->key_range /
                                   (double)connections);
        }
        cursor_init(&c->cursor, L->wl, c->global_index, seq_start);
    }
    L->active = L->nconns;
    return 0;
}

static void loop_free(worker_loop *L)
{
    if (L->conns != NULL) {
        for (uint32_t i = 0; i < L->nconns; i++) {
            bench_conn *c = &L->conns[i];
            if (c->fd >= 0)
                close(c->fd);
            buf_free(&c->out);
            free(c->carry);
            free(c->queue);
        }
    }
    free(L->conns);
    free(L->in);
    free(L->keys);
    free(L->key_ptrs);
    free(L->key_lens);
    if (L->epfd >= 0)
        close(L->epfd);
}

static void run_loop(worker_loop *L, struct epoll_event *events)
{
    bench_worker *w = L->w;
    const bench_config *cfg = L->cfg;
    uint64_t now = bench_now_ns();
    L->running = 1;
    L->t0_ns = now;
    w->t0_ns = now;
    w->t_last_ns = now;
    if (cfg->requests == 0) {
        L->deadline_ns = now + (uint64_t)(cfg->test_time_s * 1e9);
        L->drain_until_ns = L->deadline_ns + (L->timeout_ns ? L->timeout_ns : DRAIN_MAX_NS);
    }
    L->next_scan_ns = now + SCAN_MAX_NS;
    if (L->deadline_ns)
        wake_at(L, L->deadline_ns);
    for (uint32_t i = 0; i < L->nconns; i++) {
        bench_conn *c = &L->conns[i];
        if (conn_done(L, c))
            conn_finish(L, c);
        else
            conn_issue(L, c, now);
    }

    while (L->active > 0 && !stop_requested(L)) {
        now = bench_now_ns();
        if (now >= L->next_scan_ns) {
            scan(L, now);
            if (L->active == 0)
                break;
        }
        if (now >= L->next_publish_ns) {
            publish(L);
            L->next_publish_ns = now + PUBLISH_NS;
        }
        uint64_t wake = L->next_scan_ns < L->next_publish_ns ? L->next_scan_ns : L->next_publish_ns;
        int n = wait_events(L, events, wake > now ? wake - now : 0);
        for (int i = 0; i < n; i++)
            dispatch(L, &events[i]);
    }
}

void *worker_main(void *arg)
{
    bench_worker *w = arg;
    bench_shared *sh = w->shared;
    worker_loop L;
    struct epoll_event events[MAX_EVENTS];

    /* Timers fire when asked: the default 50 us of slack would make every
     * open-loop send up to 50 us late, and that lateness is latency. */
    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    if (loop_init(&L, w) != 0) {
        shared_fail(sh, BENCH_ERR_SYSTEM, "worker %u: cannot set up: %s", w->index,
                    strerror(errno ? errno : ENOMEM));
        start_line(&L); /* stop is set: returns at once, but counts us */
    } else if (connect_all(&L, events) != 0 || start_line(&L) != 0) {
        /* the run is off; shared.error says why */
    } else {
        run_loop(&L, events);
    }
    if (sh->cfg->progress)
        publish(&L);
    loop_free(&L);

    pthread_mutex_lock(&sh->mu);
    sh->finished++;
    pthread_cond_broadcast(&sh->changed);
    pthread_mutex_unlock(&sh->mu);
    return NULL;
}
