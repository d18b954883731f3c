/*
 * conn.c - one client connection: reading commands, reading values,
 * queueing and writing responses.
 *
 * HOW A CONNECTION RUNS. Sockets are registered edge-triggered
 * (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET) once, at accept. Edge triggering
 * means "you will not hear about this again until something new
 * happens", so conn_run() always drives a connection until it is blocked
 * on the kernel (read or write returns EAGAIN), closed, or out of its
 * per-wakeup budget (settings.reqs_per_event commands). In the last case
 * the conn goes on the worker's ready list and is run again on the next
 * loop turn without waiting for an event: that is how one busy pipelining
 * client cannot starve the others on its worker.
 *
 * One turn of conn_run():
 *   1. feed buffered bytes to a value being read (conn_read_value) or
 *      to a swallow;
 *   2. parse complete lines from the read buffer and hand each to the
 *      protocol (proto_process_line), which appends responses;
 *   3. write the response queue with one sendmsg() per batch
 *      (pipelined answers share a syscall); if the socket is full, stop
 *      parsing: the next EPOLLOUT edge resumes us. This bounds what one
 *      client can make us buffer;
 *   4. read more input, straight into the item for a large value, else
 *      into the read buffer.
 *
 * BUFFERS. Read buffers (settings.read_buf_size) come from a per-worker
 * pool and go back to it whenever the conn is idle with nothing
 * buffered, so ten thousand idle connections cost no read buffers. A line
 * with no '\n' after settings.max_line_len bytes closes the connection,
 * unless it is a "get"/"gets" (multi-get lines are unbounded in
 * memcached's protocol); those may grow the buffer up to
 * max(item_size_max, 1 MiB), and are closed beyond that.
 *
 * RESPONSES. See conn.h. A resp's bytes are text, then the item's value,
 * then the heap buffer. resp_head_sent counts what of the head resp is
 * already on the wire, so a partial write resumes mid-resp. Items
 * referenced by resps are released when the resp is freed: after its
 * last byte is written, or at close.
 *
 * TRANSPORT. All socket I/O goes through c->tr (conn.h): plain TCP now,
 * TLS next, with the same EAGAIN contract, so the state machine above
 * does not change when the transport does.
 *
 * THREADS. Everything here runs on the conn's owning worker thread. The
 * only cross-thread reads are "stats conns" (state, last_cmd_time:
 * relaxed atomics, walked under the owner's conns_lock).
 */
#include "conn.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "settings.h"
#include "stats.h"
#include "worker.h"

#define IOV_BATCH 128            /* iovecs gathered per sendmsg */
#define RESP_FLUSH_AT 128        /* write out once this many resps queue */
#define VALUE_DIRECT_READ 8192   /* read larger remainders straight into the item */

static inline uint32_t now_rel(void) {
    return atomic_load_explicit(&current_time, memory_order_relaxed);
}

/* -vv traces commands and status lines on stderr, as memcached does. */
static inline bool tracing(void) {
    return atomic_load_explicit(&settings.verbose, memory_order_relaxed) > 1;
}

static inline void set_state(conn *c, enum conn_state s) {
    atomic_store_explicit(&c->state, s, memory_order_relaxed);
}

/* ------------------------------------------------------------------ */
/* the plain TCP transport */

static ssize_t tcp_recv(conn *c, void *buf, size_t len) {
    return recv(c->sfd, buf, len, 0);
}

static ssize_t tcp_readv(conn *c, const struct iovec *iov, int iovcnt) {
    return readv(c->sfd, iov, iovcnt);
}

static ssize_t tcp_writev(conn *c, const struct iovec *iov, int iovcnt) {
    struct msghdr msg = {0};
    msg.msg_iov = (struct iovec *)iov;
    msg.msg_iovlen = (size_t)iovcnt;
    return sendmsg(c->sfd, &msg, MSG_NOSIGNAL);   /* no SIGPIPE on a dead peer */
}

static void tcp_close(conn *c) {
    close(c->sfd);
}

const conn_transport conn_transport_tcp = {
    .recv = tcp_recv,
    .readv = tcp_readv,
    .writev = tcp_writev,
    .close = tcp_close,
};

/* ------------------------------------------------------------------ */
/* read buffers */

static size_t line_buf_cap(void) {
    size_t cap = settings.item_size_max;
    return cap < (1 << 20) ? (1 << 20) : cap;
}

static bool rbuf_acquire(conn *c) {
    if (c->rbuf)
        return true;
    worker *w = c->worker;
    if (w->rbuf_pool_len > 0) {
        c->rbuf = w->rbuf_pool[--w->rbuf_pool_len];
    } else {
        c->rbuf = malloc(settings.read_buf_size);
        if (!c->rbuf) {
            STATS_INCR(read_buf_oom);
            return false;
        }
    }
    c->rbuf_pooled = true;
    c->rsize = settings.read_buf_size;
    c->rcurr = c->rbuf;
    c->rbytes = 0;
    return true;
}

/* Give the read buffer back when nothing is buffered. */
static void rbuf_release(conn *c) {
    if (!c->rbuf)
        return;
    worker *w = c->worker;
    if (c->rbuf_pooled && w->rbuf_pool_len < WORKER_RBUF_POOL_MAX)
        w->rbuf_pool[w->rbuf_pool_len++] = c->rbuf;
    else
        free(c->rbuf);
    c->rbuf = c->rcurr = NULL;
    c->rbytes = c->rsize = 0;
    c->rbuf_pooled = false;
}

/* Make room at the end of the read buffer: compact, or grow up to cap.
 * Returns false when the buffer is full and may not grow. */
static bool rbuf_make_room(conn *c, size_t cap) {
    if (c->rcurr != c->rbuf) {
        if (c->rbytes)
            memmove(c->rbuf, c->rcurr, c->rbytes);
        c->rcurr = c->rbuf;
    }
    if (c->rbytes < c->rsize)
        return true;
    if (c->rsize >= cap)
        return false;
    size_t nsize = c->rsize * 2 > cap ? cap : c->rsize * 2;
    char *nb;
    if (c->rbuf_pooled) {
        nb = malloc(nsize);
        if (nb) {
            memcpy(nb, c->rbuf, c->rbytes);
            worker *w = c->worker;
            if (w->rbuf_pool_len < WORKER_RBUF_POOL_MAX)
                w->rbuf_pool[w->rbuf_pool_len++] = c->rbuf;
            else
                free(c->rbuf);
        }
    } else {
        nb = realloc(c->rbuf, nsize);
    }
    if (!nb) {
        STATS_INCR(read_buf_oom);
        return false;
    }
    c->rbuf = c->rcurr = nb;
    c->rsize = nsize;
    c->rbuf_pooled = false;
    return true;
}

/* ------------------------------------------------------------------ */
/* responses */

static size_t resp_total(const mc_resp *r) {
    if (r->skip)
        return 0;
    return r->text_len + (r->item ? r->item->nbytes : 0) + r->heap_len;
}

static void resp_free(conn *c, mc_resp *r) {
    if (r->item) {
        item_release(r->item);
        r->item = NULL;
    }
    free(r->heap);
    r->heap = NULL;
    worker *w = c->worker;
    if (w->resp_pool_len < WORKER_RESP_POOL_MAX) {
        r->next = w->resp_pool;
        w->resp_pool = r;
        w->resp_pool_len++;
    } else {
        free(r);
        STATS_ADD(response_obj_count, (uint64_t)-1);
    }
}

mc_resp *resp_new(conn *c) {
    worker *w = c->worker;
    mc_resp *r = w->resp_pool;
    if (r) {
        w->resp_pool = r->next;
        w->resp_pool_len--;
    } else {
        r = malloc(sizeof(*r));
        if (!r) {
            STATS_INCR(response_obj_oom);
            return NULL;
        }
        STATS_INCR(response_obj_count);
    }
    r->next = NULL;
    r->item = NULL;
    r->heap = NULL;
    r->heap_len = 0;
    r->text_len = 0;
    r->skip = false;
    r->pending = false;
    if (c->resp_tail)
        c->resp_tail->next = r;
    else
        c->resp_head = r;
    c->resp_tail = r;
    c->nresp++;
    return r;
}

bool resp_add_text(mc_resp *r, const char *s, size_t len) {
    if (r->text_len + len > RESP_TEXT_MAX)
        return false;
    memcpy(r->text + r->text_len, s, len);
    r->text_len += (uint32_t)len;
    return true;
}

bool resp_printf(mc_resp *r, const char *fmt, ...) {
    size_t room = RESP_TEXT_MAX - r->text_len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->text + r->text_len, room, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= room)
        return false;
    r->text_len += (uint32_t)n;
    return true;
}

void resp_set_item(mc_resp *r, item *it) {
    r->item = it;
}

void resp_set_heap(mc_resp *r, char *buf, size_t len) {
    r->heap = buf;
    r->heap_len = (uint32_t)len;
}

static void out_common(conn *c, const char *str, bool skip) {
    if (tracing())
        fprintf(stderr, ">%d %s\n", c->sfd, str);
    mc_resp *r = resp_new(c);
    if (!r) {
        c->close_now = true;
        return;
    }
    size_t len = strlen(str);
    if (!resp_add_text(r, str, len) || !resp_add_text(r, "\r\n", 2)) {
        r->text_len = 0;
        resp_add_text(r, "SERVER_ERROR output line too long\r\n", 35);
    }
    r->skip = skip;
}

void out_string(conn *c, const char *str) {
    bool skip = c->noreply;
    c->noreply = false;
    out_common(c, str, skip);
}

void out_errstring(conn *c, const char *str) {
    c->noreply = false;
    out_common(c, str, false);
}

void conn_resp_ready(conn *c, mc_resp *r) {
    r->pending = false;
    worker *w = c->worker;
    if (!c->in_ready && !c->closed) {
        c->in_ready = true;
        c->next_ready = w->ready;
        w->ready = c;
    }
}

/* Gather a value's segments, growing to the heap for huge chunked items. */
static int value_iov(item *it, struct iovec *stack, int nstack, struct iovec **heap) {
    *heap = NULL;
    int n = item_value_iov(it, stack, nstack);
    if (n >= 0)
        return n;
    for (int cap = 256; cap <= (1 << 22); cap *= 4) {
        struct iovec *v = malloc(sizeof(*v) * (size_t)cap);
        if (!v)
            return -1;
        n = item_value_iov(it, v, cap);
        if (n >= 0) {
            *heap = v;
            return n;
        }
        free(v);
    }
    return -1;
}

/* Append r's segments (text, value, heap) to iov[*n..max). Returns false,
 * leaving *n unchanged, if they do not fit. */
static bool resp_iov(mc_resp *r, struct iovec *iov, int *n, int max) {
    int k = *n;
    if (r->text_len) {
        if (k >= max)
            return false;
        iov[k++] = (struct iovec){r->text, r->text_len};
    }
    if (r->item) {
        int got = max - k > 0 ? item_value_iov(r->item, iov + k, max - k) : -1;
        if (got < 0)
            return false;
        k += got;
    }
    if (r->heap_len) {
        if (k >= max)
            return false;
        iov[k++] = (struct iovec){r->heap, r->heap_len};
    }
    *n = k;
    return true;
}

/* Free resps at the head that have nothing to send (skipped). */
static void drop_skipped_head(conn *c) {
    while (c->resp_head && !c->resp_head->pending && c->resp_head->skip) {
        mc_resp *h = c->resp_head;
        c->resp_head = h->next;
        if (!c->resp_head)
            c->resp_tail = NULL;
        c->nresp--;
        resp_free(c, h);
    }
}

/* Write as much of the queue as the socket takes, one sendmsg() per batch
 * of whole resps. Returns 0 when the queue is empty (or stopped at a
 * pending resp), 1 when the socket is full, -1 on error. */
static int conn_flush(conn *c) {
    for (;;) {
        drop_skipped_head(c);
        if (!c->resp_head || c->resp_head->pending)
            return 0;

        struct iovec stack[IOV_BATCH];
        struct iovec *vec = stack;
        int n = 0;
        for (mc_resp *r = c->resp_head; r && !r->pending; r = r->next) {
            if (r->skip)
                continue;
            if (!resp_iov(r, stack, &n, IOV_BATCH))
                break;
        }
        if (n == 0) {
            /* the head resp alone has more segments than a batch holds
             * (a huge chunked value): give it a vector of its own */
            mc_resp *r = c->resp_head;
            struct iovec *vals = NULL;
            int nv = value_iov(r->item, stack, 0, &vals);
            if (nv < 0)
                return -1;
            vec = malloc(sizeof(*vec) * (size_t)(nv + 2));
            if (!vec) {
                free(vals);
                return -1;
            }
            if (r->text_len)
                vec[n++] = (struct iovec){r->text, r->text_len};
            memcpy(vec + n, vals, sizeof(*vec) * (size_t)nv);
            n += nv;
            free(vals);
            if (r->heap_len)
                vec[n++] = (struct iovec){r->heap, r->heap_len};
        }

        /* skip what is already on the wire of the head resp */
        size_t skip = c->resp_head_sent;
        int first = 0;
        while (first < n && skip >= vec[first].iov_len) {
            skip -= vec[first].iov_len;
            first++;
        }
        if (first < n && skip) {
            vec[first].iov_base = (char *)vec[first].iov_base + skip;
            vec[first].iov_len -= skip;
        }
        size_t sendable = 0;
        for (int i = first; i < n; i++)
            sendable += vec[i].iov_len;

        ssize_t w = sendable ? c->tr->writev(c, vec + first, n - first) : 0;
        int err = errno;
        if (vec != stack)
            free(vec);
        if (w < 0) {
            if (err == EINTR)
                continue;
            if (err == EAGAIN || err == EWOULDBLOCK)
                return 1;
            return -1;
        }
        STATS_ADD(bytes_written, (uint64_t)w);

        /* free the resps now fully written */
        size_t done = (size_t)w + c->resp_head_sent;
        while (c->resp_head && !c->resp_head->pending) {
            mc_resp *h = c->resp_head;
            size_t t = resp_total(h);
            if (done < t)
                break;
            done -= t;
            c->resp_head = h->next;
            if (!c->resp_head)
                c->resp_tail = NULL;
            c->nresp--;
            resp_free(c, h);
        }
        c->resp_head_sent = done;
        if ((size_t)w < sendable)
            return 1;           /* short write: the socket is full */
    }
}

/* ------------------------------------------------------------------ */
/* values and swallows */

void conn_read_value(conn *c, item *it, conn_value_cb cb) {
    c->ritem = it;
    c->rcb = cb;
    c->rvalue_off = 0;
    set_state(c, conn_nread);
}

void conn_swallow(conn *c, size_t n) {
    c->swallow = n;
    if (n)
        set_state(c, conn_swallow_state);
}

/* Copy len bytes from src into the value of it at byte offset off. */
static void value_copy_in(item *it, size_t off, const char *src, size_t len) {
    char *p = item_value_ptr(it);
    if (p) {
        memcpy(p + off, src, len);
        return;
    }
    struct iovec stack[16], *big = NULL;
    int n = value_iov(it, stack, 16, &big);
    struct iovec *v = big ? big : stack;
    for (int i = 0; i < n && len; i++) {
        if (off >= v[i].iov_len) {
            off -= v[i].iov_len;
            continue;
        }
        size_t take = v[i].iov_len - off;
        if (take > len)
            take = len;
        memcpy((char *)v[i].iov_base + off, src, take);
        src += take;
        len -= take;
        off = 0;
    }
    free(big);
}

static bool value_ends_crlf(item *it) {
    char *p = item_value_ptr(it);
    if (p)
        return it->nbytes >= 2 && p[it->nbytes - 2] == '\r' && p[it->nbytes - 1] == '\n';
    struct iovec stack[16], *big = NULL;
    int n = value_iov(it, stack, 16, &big);
    struct iovec *v = big ? big : stack;
    char tail[2];
    int got = 0;
    for (int i = n - 1; i >= 0 && got < 2; i--) {
        for (size_t j = v[i].iov_len; j > 0 && got < 2; j--)
            tail[1 - got++] = ((char *)v[i].iov_base)[j - 1];
    }
    free(big);
    return got == 2 && tail[0] == '\r' && tail[1] == '\n';
}

static void value_complete(conn *c) {
    item *it = c->ritem;
    conn_value_cb cb = c->rcb;
    c->ritem = NULL;
    c->rcb = NULL;
    set_state(c, conn_new_cmd);
    cb(c, it, value_ends_crlf(it));
}

/* Feed buffered bytes to a value or swallow. */
static void feed_buffered(conn *c) {
    if (c->swallow && c->rbytes) {
        size_t take = c->swallow < c->rbytes ? c->swallow : c->rbytes;
        c->rcurr += take;
        c->rbytes -= take;
        c->swallow -= take;
        if (!c->swallow)
            set_state(c, conn_new_cmd);
    }
    if (c->ritem) {
        size_t need = c->ritem->nbytes - c->rvalue_off;
        size_t take = need < c->rbytes ? need : c->rbytes;
        if (take) {
            value_copy_in(c->ritem, c->rvalue_off, c->rcurr, take);
            c->rcurr += take;
            c->rbytes -= take;
            c->rvalue_off += take;
        }
        if (c->rvalue_off == c->ritem->nbytes)
            value_complete(c);
    }
}

/* Read the rest of a large value straight into the item.
 * Returns >0 bytes read, 0 on EOF, -1 on EAGAIN, -2 on error. */
static ssize_t read_value_direct(conn *c) {
    struct iovec stack[16], *big = NULL;
    int n = value_iov(c->ritem, stack, 16, &big);
    if (n < 0)
        return -2;
    struct iovec *v = big ? big : stack;
    size_t off = c->rvalue_off;
    int first = 0;
    while (first < n && off >= v[first].iov_len) {
        off -= v[first].iov_len;
        first++;
    }
    v[first].iov_base = (char *)v[first].iov_base + off;
    v[first].iov_len -= off;
    int cnt = n - first;
    if (cnt > 1024)
        cnt = 1024;
    ssize_t r;
    do {
        r = c->tr->readv(c, v + first, cnt);
    } while (r < 0 && errno == EINTR);
    free(big);
    if (r < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? -1 : -2;
    if (r > 0) {
        c->rvalue_off += (size_t)r;
        STATS_ADD(bytes_read, (uint64_t)r);
        if (c->rvalue_off == c->ritem->nbytes)
            value_complete(c);
    }
    return r;
}

/* ------------------------------------------------------------------ */
/* the state machine */

/* A line without '\n' is too long: allowed to grow only for get/gets. */
static bool long_line_allowed(const conn *c) {
    const char *p = c->rcurr;
    size_t i = 0;
    while (i < c->rbytes && i <= 100 && p[i] == ' ')
        i++;
    if (i > 100)
        return false;
    size_t rest = c->rbytes - i;
    return (rest >= 4 && memcmp(p + i, "get ", 4) == 0) ||
           (rest >= 5 && memcmp(p + i, "gets ", 5) == 0);
}

static void schedule_ready(conn *c) {
    if (c->in_ready || c->closed)
        return;
    worker *w = c->worker;
    c->in_ready = true;
    c->next_ready = w->ready;
    w->ready = c;
}

/* Parse and execute buffered commands until blocked, out of budget, or
 * something else needs doing. Returns false if the conn must close. */
static bool process_commands(conn *c, int *budget) {
    while (*budget > 0 && c->rbytes && !c->ritem && !c->swallow && !c->close_now
           && !c->close_after_write) {
        char *nl = memchr(c->rcurr, '\n', c->rbytes);
        if (!nl) {
            if (c->rbytes > settings.max_line_len && !long_line_allowed(c))
                return false;
            break;
        }
        char *line = c->rcurr;
        size_t len = (size_t)(nl - line);
        c->rcurr = nl + 1;
        c->rbytes -= len + 1;
        if (len && line[len - 1] == '\r')
            len--;
        line[len] = '\0';
        set_state(c, conn_parse_cmd);
        if (tracing())
            fprintf(stderr, "<%d %.*s\n", c->sfd, (int)(len > 1024 ? 1024 : len), line);
        atomic_store_explicit(&c->last_cmd_time, now_rel(), memory_order_relaxed);
        c->noreply = false;
        proto_process_line(c, line, len);
        (*budget)--;
        if (c->ritem || c->swallow)
            feed_buffered(c);
        if (c->nresp >= RESP_FLUSH_AT)
            break;
    }
    return true;
}

void conn_run(conn *c) {
    int budget = settings.reqs_per_event;
    if (c->closed)
        return;
    for (;;) {
        if (c->close_now)
            goto close;
        feed_buffered(c);
        if (!process_commands(c, &budget))
            goto close;
        if (c->close_now)
            goto close;

        set_state(c, conn_mwrite);
        int wr = conn_flush(c);
        if (wr < 0)
            goto close;
        if (wr == 1) {
            set_state(c, conn_mwrite);
            return;                 /* EPOLLOUT edge resumes us */
        }
        if (c->close_after_write && !c->resp_head)
            goto close;
        if (c->resp_head && c->resp_head->pending)
            return;                 /* conn_resp_ready resumes us */

        if (budget <= 0) {
            STATS_INCR(conn_yields);
            schedule_ready(c);
            return;
        }
        /* a complete line is still buffered: keep going */
        if (c->rbytes && !c->ritem && !c->swallow && memchr(c->rcurr, '\n', c->rbytes))
            continue;

        /* need more input */
        ssize_t n;
        if (c->ritem && c->rbytes == 0 && c->ritem->nbytes - c->rvalue_off >= VALUE_DIRECT_READ) {
            n = read_value_direct(c);
            if (n == -1)
                return;
            if (n <= 0)
                goto close;
            continue;
        }
        if (!rbuf_acquire(c))
            goto close;
        size_t cap = (c->ritem || c->swallow) ? c->rsize : line_buf_cap();
        if (!rbuf_make_room(c, cap))
            goto close;             /* a line longer than we will hold */
        do {
            n = c->tr->recv(c, c->rbuf + c->rbytes, c->rsize - c->rbytes);
        } while (n < 0 && errno == EINTR);
        if (n > 0) {
            c->rbytes += (size_t)n;
            STATS_ADD(bytes_read, (uint64_t)n);
            continue;
        }
        if (n == 0)
            goto close;             /* peer closed */
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (c->rbytes == 0)
                rbuf_release(c);
            set_state(c, c->ritem ? conn_nread : c->swallow ? conn_swallow_state : conn_waiting);
            return;
        }
        goto close;
    }
close:
    conn_close(c);
}

/* ------------------------------------------------------------------ */
/* creation, close, housekeeping */

conn *conn_new(worker *w, const pending_fd *pfd) {
    conn *c = calloc(1, sizeof(*c));
    if (!c) {
        atomic_fetch_add_explicit(&gstats.malloc_fails, 1, memory_order_relaxed);
        return NULL;
    }
    c->sfd = pfd->fd;
    c->worker = w;
    c->tr = &conn_transport_tcp;
    snprintf(c->peer, sizeof(c->peer), "%s", pfd->peer);
    snprintf(c->local, sizeof(c->local), "%s", pfd->local);
    atomic_store_explicit(&c->last_cmd_time, now_rel(), memory_order_relaxed);
    set_state(c, conn_new_cmd);
    if (tracing())
        fprintf(stderr, "<%d new client connection from %s\n", c->sfd, c->peer);

    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->sfd, &ev) != 0) {
        free(c);
        return NULL;
    }
    pthread_mutex_lock(&w->conns_lock);
    c->next_in_worker = w->conns;
    if (w->conns)
        w->conns->prev_in_worker = c;
    w->conns = c;
    pthread_mutex_unlock(&w->conns_lock);
    atomic_fetch_add_explicit(&gstats.conn_structures, 1, memory_order_relaxed);
    return c;
}

void conn_close(conn *c) {
    if (c->closed)
        return;
    worker *w = c->worker;
    c->closed = true;
    set_state(c, conn_closing);
    if (tracing())
        fprintf(stderr, "<%d connection closed.\n", c->sfd);
    c->tr->close(c);
    if (c->ritem) {
        item_release(c->ritem);
        c->ritem = NULL;
    }
    while (c->resp_head) {
        mc_resp *r = c->resp_head;
        c->resp_head = r->next;
        resp_free(c, r);
    }
    c->resp_tail = NULL;
    c->nresp = 0;
    rbuf_release(c);

    pthread_mutex_lock(&w->conns_lock);
    if (c->prev_in_worker)
        c->prev_in_worker->next_in_worker = c->next_in_worker;
    else
        w->conns = c->next_in_worker;
    if (c->next_in_worker)
        c->next_in_worker->prev_in_worker = c->prev_in_worker;
    pthread_mutex_unlock(&w->conns_lock);

    /* freed at the end of this loop turn: events or the ready list of
     * this turn may still name it */
    c->next_in_worker = w->zombies;
    w->zombies = c;
    atomic_fetch_sub_explicit(&gstats.curr_conns, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&gstats.conn_structures, 1, memory_order_relaxed);
}

void worker_reap(worker *w) {
    while (w->zombies) {
        conn *c = w->zombies;
        w->zombies = c->next_in_worker;
        free(c);
    }
}

void worker_run_ready(worker *w) {
    conn *list = w->ready;
    w->ready = NULL;
    while (list) {
        conn *c = list;
        list = c->next_ready;
        c->in_ready = false;
        c->next_ready = NULL;
        if (!c->closed)
            conn_run(c);
    }
}

void worker_check_idle(worker *w, uint32_t now) {
    if (settings.idle_timeout <= 0)
        return;
    conn *c = w->conns;
    while (c) {
        conn *next = c->next_in_worker;
        int st = atomic_load_explicit(&c->state, memory_order_relaxed);
        uint32_t last = atomic_load_explicit(&c->last_cmd_time, memory_order_relaxed);
        if ((st == conn_waiting || st == conn_new_cmd) && !c->resp_head && !c->ritem
            && now - last > (uint32_t)settings.idle_timeout) {
            STATS_INCR(idle_kicks);
            conn_close(c);
        }
        c = next;
    }
}

void worker_close_all(worker *w) {
    while (w->conns)
        conn_close(w->conns);
    worker_reap(w);
}

void worker_free_pools(worker *w) {
    while (w->rbuf_pool_len > 0)
        free(w->rbuf_pool[--w->rbuf_pool_len]);
    while (w->resp_pool) {
        mc_resp *r = w->resp_pool;
        w->resp_pool = r->next;
        free(r);
    }
    w->resp_pool_len = 0;
}

/* ------------------------------------------------------------------ */
/* stats conns */

static const char *state_name(int st) {
    switch (st) {
    case conn_new_cmd: return "conn_new_cmd";
    case conn_parse_cmd: return "conn_parse_cmd";
    case conn_nread: return "conn_nread";
    case conn_swallow_state: return "conn_swallow";
    case conn_mwrite: return "conn_mwrite";
    case conn_closing: return "conn_closing";
    default: return "conn_waiting";
    }
}

void conns_stats(add_stat_fn add, void *ctx) {
    uint32_t now = now_rel();
    char key[64];
    for (int i = 0; i < num_workers; i++) {
        worker *w = &workers[i];
        pthread_mutex_lock(&w->conns_lock);
        for (conn *c = w->conns; c; c = c->next_in_worker) {
            snprintf(key, sizeof(key), "%d:addr", c->sfd);
            add(key, strlen(key), c->peer, strlen(c->peer), ctx);
            snprintf(key, sizeof(key), "%d:listen_addr", c->sfd);
            add(key, strlen(key), c->local, strlen(c->local), ctx);
            snprintf(key, sizeof(key), "%d:state", c->sfd);
            const char *sn = state_name(atomic_load_explicit(&c->state, memory_order_relaxed));
            add(key, strlen(key), sn, strlen(sn), ctx);
            snprintf(key, sizeof(key), "%d:secs_since_last_cmd", c->sfd);
            uint32_t last = atomic_load_explicit(&c->last_cmd_time, memory_order_relaxed);
            stats_appendf(add, ctx, key, "%u", now - last);
        }
        pthread_mutex_unlock(&w->conns_lock);
    }
}
