/*
 * microbench.c - the engine's hot paths run n times in a C loop, so a
 * microbenchmark measures them and not the Python call around them.
 * Driven by tests/test_microbench.py (pytest-benchmark) through _cache.pyx.
 *
 * WHAT EACH LOOP COVERS (one iteration = one operation):
 *   mb_item_alloc_free(size, n)  item_alloc() of an unlinked item with a
 *       value of `size` bytes, then item_release(), which frees it: the
 *       slab class lookup, a chunk off the class free list and back under
 *       the slabs lock, the header set-up. Above slab_chunk_max the item is
 *       chunked (a header chunk plus value chunks). Returns n.
 *   mb_hash_lookup(hit, n)  item_hash() (murmur3) + item_lock() +
 *       assoc_find() + item_unlock(): the hash table part of every get,
 *       without the reference count and LRU bump. Keys are visited in a
 *       scattered order over the whole preloaded set (hit) or over as many
 *       absent keys (miss), each call going on where the last one stopped,
 *       so that short calls sweep the whole table rather than warming the
 *       cache on the same few keys. Returns the number found (n or 0).
 *   mb_proto_get(hit, n)  a "get <key>\r\n" served from bytes already
 *       received to the reply handed to the socket layer: conn_run()'s
 *       line splitting, proto_process_line() (tokenise, dispatch, item_get
 *       with its LRU bump and stats, the VALUE line), the response queue,
 *       its gathering into one iovec list, and the responses freed. What is
 *       left out is the kernel: recv() and sendmsg() are replaced by an
 *       in-memory transport (below). Returns the reply bytes.
 *   mb_proto_set(n)  the same for "set <key> 0 0 <size>\r\n<value>\r\n":
 *       parse, item_alloc, the value copied from the read buffer,
 *       item_store replacing the preloaded key (unlink, free of the old
 *       item), "STORED". Returns the reply bytes.
 *
 * THE ENGINE. The cache engine keeps global state (settings, slabs, hash
 * table, item locks, stats blocks), built by cache_server_start(). mb_open()
 * builds the same storage engine with the same calls in the same order
 * (settings -> stats -> slabs -> assoc -> items), but starts no thread and
 * opens no socket, then stores `keys` keys "key:%08u". mb_close() tears it
 * down with the cleanup calls cache_server_cleanup() makes, so a server
 * started later in the same process finds the engine as after a server
 * stop (tests/test_microbench.py starts one to check). Without background
 * threads the clock stands still (nothing expires: no key has a TTL), the
 * LRU maintainer does not move items, and the hash table does not expand:
 * mb_open() gives it the size a server would have grown to for `keys`
 * items (the smallest power >= 16 holding them at <= 1.5 per bucket).
 * Evictions are off (-M): a preload that does not fit in memory_mb fails
 * with a message instead of silently evicting keys the loops look for.
 *
 * THE CONNECTION. One conn on one worker struct that no thread runs: the
 * calling thread plays the worker, calling conn_run() and, when the conn
 * yields after settings.reqs_per_event commands, worker_run_ready(), as
 * worker_main() does. The conn's transport is an in-memory one: recv()
 * and readv() replay a script of identical-length commands (up to 16384
 * distinct keys, cycled, each call going on where the last one stopped),
 * exactly n commands per call, then say EAGAIN; writev() counts the bytes and reports them all written. A call
 * ends with the conn idle (nothing buffered, no response queued), as a
 * worker leaves a conn between two bursts.
 *
 * THREADS. Everything runs in the thread that called mb_open() (its stats
 * block is thread-local; stats_cleanup() forgets it in that thread). Calls
 * from any other thread fail. Not reentrant, and not to be mixed with a
 * running server (see microbench.h).
 */
#define _GNU_SOURCE
#include "microbench.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "assoc.h"
#include "conn.h"
#include "items.h"
#include "server.h"
#include "settings.h"
#include "slabs.h"
#include "stats.h"
#include "worker.h"

#define MB_KEY_LEN 12                  /* "key:%08u" and "mis:%08u" */
#define MB_SCRIPT_CMDS 16384           /* distinct commands in a script */
#define MB_SCRIPT_BYTES (64u << 20)    /* ... unless that is more bytes */
#define MB_HASHPOWER_MIN 16            /* the server's default */
/* Visit keys with this stride (mod the key count), so that neighbours in
 * the visit order are far apart in memory. A prime: the step (stride mod
 * keys) visits every key when it is coprime to the key count, and mb_open()
 * falls back to 1 when it is not. */
#define MB_STRIDE 7919u

/* A script: `count` commands of `cmd_len` bytes each, back to back. */
typedef struct mb_script {
    char *bytes;
    size_t cmd_len;
    size_t count;
} mb_script;

static struct {
    bool open;
    pthread_t owner;
    uint32_t keys;
    uint32_t value_size;
    uint32_t stride;                   /* visit order step, coprime to keys */
    uint32_t lookup_next[2];           /* next key to look up: [miss, hit] */
    char *key_table;                   /* keys * MB_KEY_LEN: "key:%08u", no NULs */
    char *miss_table;                  /* the same with "mis:": never stored */
    mb_script get_hit, get_miss, set;
    worker w;
    conn *c;
} mb;

/* What the in-memory transport is replaying now. */
static struct {
    const mb_script *script;
    size_t pos;                        /* next byte of script->bytes */
    uint64_t remaining;                /* bytes left to deliver in this call */
    uint64_t written;                  /* bytes "sent" in this call */
} feed;

static char mb_err[256];

const char *mb_error(void) {
    return mb_err;
}

__attribute__((format(printf, 1, 2)))
static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(mb_err, sizeof(mb_err), fmt, ap);
    va_end(ap);
    return -1;
}

static bool owner_ok(void) {
    if (!mb.open) {
        fail("microbench engine is not open");
        return false;
    }
    if (!pthread_equal(pthread_self(), mb.owner)) {
        fail("microbench engine used from a thread other than its opener");
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* the in-memory transport */

static size_t feed_take(char *dst, size_t len) {
    const mb_script *s = feed.script;
    size_t total = s->cmd_len * s->count;
    size_t done = 0;
    while (done < len && feed.remaining > 0) {
        size_t run = total - feed.pos;
        if (run > len - done)
            run = len - done;
        if (run > feed.remaining)
            run = (size_t)feed.remaining;
        memcpy(dst + done, s->bytes + feed.pos, run);
        feed.pos = (feed.pos + run) % total;
        feed.remaining -= run;
        done += run;
    }
    return done;
}

static ssize_t mb_recv(conn *c, void *buf, size_t len) {
    (void)c;
    if (feed.remaining == 0) {
        errno = EAGAIN;
        return -1;
    }
    return (ssize_t)feed_take(buf, len);
}

static ssize_t mb_readv(conn *c, const struct iovec *iov, int iovcnt) {
    (void)c;
    if (feed.remaining == 0) {
        errno = EAGAIN;
        return -1;
    }
    size_t got = 0;
    for (int i = 0; i < iovcnt && feed.remaining > 0; i++)
        got += feed_take(iov[i].iov_base, iov[i].iov_len);
    return (ssize_t)got;
}

static ssize_t mb_writev(conn *c, const struct iovec *iov, int iovcnt) {
    (void)c;
    size_t sent = 0;
    for (int i = 0; i < iovcnt; i++)
        sent += iov[i].iov_len;
    feed.written += sent;
    return (ssize_t)sent;
}

static void mb_tr_close(conn *c) {
    (void)c;
}

static const conn_transport mb_transport = {
    .recv = mb_recv,
    .readv = mb_readv,
    .writev = mb_writev,
    .close = mb_tr_close,
};

/* ------------------------------------------------------------------ */
/* keys, values, scripts */

static const char *key_at(uint32_t i) {
    return mb.key_table + (size_t)i * MB_KEY_LEN;
}

/* The i-th key of the scattered visit order. */
static uint32_t visit(uint64_t i) {
    return (uint32_t)((i * mb.stride) % mb.keys);
}

static uint32_t gcd(uint32_t a, uint32_t b) {
    while (b) {
        uint32_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static void fill_value(item *it, uint32_t key_index) {
    struct iovec stack[64], *iov = stack;
    int n = item_value_iov(it, stack, 64);
    if (n < 0) {
        /* a value spread over more chunks than the stack holds */
        size_t cap = it->nbytes / 1024 + 2;
        iov = malloc(cap * sizeof(*iov));
        n = iov ? item_value_iov(it, iov, (int)cap) : -1;
    }
    size_t value_len = it->nbytes - 2, pos = 0;
    for (int i = 0; i < n; i++) {
        char *dst = iov[i].iov_base;
        for (size_t j = 0; j < iov[i].iov_len; j++, pos++)
            dst[j] = pos < value_len ? (char)('a' + (pos + key_index) % 26)
                                     : (pos == value_len ? '\r' : '\n');
    }
    if (iov != stack)
        free(iov);
}

/* `count` commands over keys in visit order: "get key:%08u\r\n" (hits),
 * "get mis:%08u\r\n" (misses, absent keys of the same length), or
 * "set key:%08u 0 0 <size>\r\n<value>\r\n". Every command of a script has
 * the same length, so a run of n commands always ends on a boundary. */
static int build_script(mb_script *s, bool is_set, bool miss) {
    char head[64];
    int hl = is_set ? snprintf(head, sizeof(head), "set key:00000000 0 0 %u\r\n", mb.value_size)
                    : snprintf(head, sizeof(head), "get key:00000000\r\n");
    size_t cmd_len = (size_t)hl + (is_set ? (size_t)mb.value_size + 2 : 0);
    size_t count = mb.keys < MB_SCRIPT_CMDS ? mb.keys : MB_SCRIPT_CMDS;
    if (count * cmd_len > MB_SCRIPT_BYTES)
        count = MB_SCRIPT_BYTES / cmd_len ? MB_SCRIPT_BYTES / cmd_len : 1;
    s->bytes = malloc(count * cmd_len);
    if (!s->bytes)
        return fail("out of memory for a %zu-byte script", count * cmd_len);
    s->cmd_len = cmd_len;
    s->count = count;
    for (size_t i = 0; i < count; i++) {
        char *p = s->bytes + i * cmd_len;
        uint32_t k = visit(i);
        int n = is_set ? snprintf(head, sizeof(head), "set key:%08u 0 0 %u\r\n", k, mb.value_size)
                       : snprintf(head, sizeof(head), "get %s:%08u\r\n", miss ? "mis" : "key", k);
        memcpy(p, head, (size_t)n);
        if (is_set) {
            for (uint32_t j = 0; j < mb.value_size; j++)
                p[n + j] = (char)('A' + (j + k) % 26);
            memcpy(p + n + mb.value_size, "\r\n", 2);
        }
    }
    return 0;
}

static void free_scripts(void) {
    free(mb.get_hit.bytes);
    free(mb.get_miss.bytes);
    free(mb.set.bytes);
    memset(&mb.get_hit, 0, sizeof(mb.get_hit));
    memset(&mb.get_miss, 0, sizeof(mb.get_miss));
    memset(&mb.set, 0, sizeof(mb.set));
}

static void free_keys(void) {
    free(mb.key_table);
    free(mb.miss_table);
    mb.key_table = mb.miss_table = NULL;
}

/* ------------------------------------------------------------------ */
/* open / close */

/* The conn as conn_new() makes it, minus the socket and epoll. */
static int conn_setup(void) {
    memset(&mb.w, 0, sizeof(mb.w));
    mb.w.epfd = mb.w.notify_fd = -1;
    pthread_mutex_init(&mb.w.queue_lock, NULL);
    pthread_mutex_init(&mb.w.conns_lock, NULL);
    mb.w.stats = stats_tls;
    conn *c = calloc(1, sizeof(*c));
    if (!c)
        return fail("out of memory for the connection");
    c->sfd = -1;
    c->worker = &mb.w;
    c->tr = &mb_transport;
    snprintf(c->peer, sizeof(c->peer), "microbench");
    snprintf(c->local, sizeof(c->local), "microbench");
    atomic_store_explicit(&c->state, conn_new_cmd, memory_order_relaxed);
    mb.w.conns = c;
    mb.c = c;
    /* what the listener and conn_new() count, so a conn_close() balances */
    atomic_fetch_add_explicit(&gstats.curr_conns, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&gstats.conn_structures, 1, memory_order_relaxed);
    return 0;
}

static void conn_teardown(void) {
    if (mb.c) {
        conn_close(mb.c);           /* a no-op if the protocol closed it */
        mb.c = NULL;
    }
    worker_reap(&mb.w);
    worker_free_pools(&mb.w);
    pthread_mutex_destroy(&mb.w.queue_lock);
    pthread_mutex_destroy(&mb.w.conns_lock);
    memset(&mb.w, 0, sizeof(mb.w));
}

static void engine_teardown(void) {
    items_cleanup();
    assoc_cleanup();
    slabs_cleanup();
    stats_cleanup();
    memset(&gstats, 0, sizeof(gstats));
}

static int preload(void) {
    for (uint32_t i = 0; i < mb.keys; i++) {
        alloc_result why;
        item *it = item_alloc(key_at(i), MB_KEY_LEN, 0, 0, (size_t)mb.value_size + 2, &why);
        if (!it)
            return fail("preload: cannot allocate key %u of %u (%s): raise memory_mb", i,
                        mb.keys, why == ALLOC_TOO_LARGE ? "value too large" : "out of memory");
        fill_value(it, i);
        store_result r = item_store(it, STORE_SET, NULL);
        item_release(it);
        if (r != STORED)
            return fail("preload: key %u not stored", i);
    }
    return 0;
}

int mb_open(uint32_t keys, uint32_t value_size, size_t memory_mb) {
    if (mb.open)
        return fail("microbench engine already open");
    if (keys < 1 || keys > MB_MAX_KEYS)
        return fail("keys must be 1..%u", MB_MAX_KEYS);
    if (value_size > MB_MAX_VALUE_SIZE)
        return fail("value_size must be at most %u", MB_MAX_VALUE_SIZE);

    ps_settings s;
    settings_init_defaults(&s);
    s.maxbytes = memory_mb << 20;
    s.evict_to_free = false;    /* a preload that does not fit fails loudly */
    s.hashpower_init = MB_HASHPOWER_MIN;
    while ((double)keys > 1.5 * (double)((uint64_t)1 << s.hashpower_init))
        s.hashpower_init++;
    char err[200];
    if (settings_validate(&s, err, sizeof(err)) != 0)
        return fail("settings: %s", err);
    settings = s;

    memset(&mb, 0, sizeof(mb));
    mb.keys = keys;
    mb.value_size = value_size;
    mb.owner = pthread_self();
    mb.stride = MB_STRIDE % keys;
    if (gcd(mb.stride, keys) != 1)
        mb.stride = 1;
    memset(&feed, 0, sizeof(feed));
    mb.key_table = malloc((size_t)keys * MB_KEY_LEN);
    mb.miss_table = malloc((size_t)keys * MB_KEY_LEN);
    if (!mb.key_table || !mb.miss_table) {
        free_keys();
        return fail("out of memory for %u keys", keys);
    }
    for (uint32_t i = 0; i < keys; i++) {
        char k[MB_KEY_LEN + 1];
        snprintf(k, sizeof(k), "key:%08u", i);
        memcpy(mb.key_table + (size_t)i * MB_KEY_LEN, k, MB_KEY_LEN);
        snprintf(k, sizeof(k), "mis:%08u", i);
        memcpy(mb.miss_table + (size_t)i * MB_KEY_LEN, k, MB_KEY_LEN);
    }

    memset(&gstats, 0, sizeof(gstats));
    stats_init();
    if (!stats_thread_register() || slabs_init() != 0 ||
        assoc_init(settings.hashpower_init) != 0 || items_init() != 0) {
        engine_teardown();
        free_keys();
        return fail("engine initialisation failed");
    }
    if (preload() != 0 || build_script(&mb.get_hit, false, false) != 0 ||
        build_script(&mb.get_miss, false, true) != 0 ||
        build_script(&mb.set, true, false) != 0 || conn_setup() != 0) {
        conn_teardown();
        free_scripts();
        engine_teardown();
        free_keys();
        return -1;                  /* message set by the failing step */
    }
    mb.open = true;
    mb_err[0] = '\0';
    return 0;
}

int mb_close(void) {
    if (!owner_ok())
        return -1;
    conn_teardown();
    free_scripts();
    engine_teardown();
    free_keys();
    memset(&mb, 0, sizeof(mb));
    memset(&feed, 0, sizeof(feed));
    return 0;
}

bool mb_is_open(void) {
    return mb.open;
}

/* ------------------------------------------------------------------ */
/* the loops */

int64_t mb_item_alloc_free(size_t value_size, uint64_t n) {
    if (!owner_ok())
        return -1;
    if (value_size > MB_MAX_VALUE_SIZE)
        return fail("value_size must be at most %u", MB_MAX_VALUE_SIZE);
    static const char key[] = "mb:alloc0000";     /* MB_KEY_LEN bytes + NUL */
    for (uint64_t i = 0; i < n; i++) {
        alloc_result why;
        item *it = item_alloc(key, MB_KEY_LEN, 0, 0, value_size + 2, &why);
        if (!it)
            return fail("item_alloc(%zu bytes) failed: %s", value_size,
                        why == ALLOC_TOO_LARGE ? "too large" : "out of memory");
        item_release(it);
    }
    return (int64_t)n;
}

int64_t mb_hash_lookup(bool hit, uint64_t n) {
    if (!owner_ok())
        return -1;
    const char *table = hit ? mb.key_table : mb.miss_table;
    int64_t found = 0;
    uint32_t k = mb.lookup_next[hit];   /* go on where the last call stopped */
    for (uint64_t i = 0; i < n; i++) {
        const char *key = table + (size_t)k * MB_KEY_LEN;
        uint32_t hv = item_hash(key, MB_KEY_LEN);
        item_lock(hv);
        found += assoc_find(key, MB_KEY_LEN, hv) != NULL;
        item_unlock(hv);
        k += mb.stride;             /* the visit order, without a division */
        if (k >= mb.keys)
            k -= mb.keys;
    }
    mb.lookup_next[hit] = k;
    return found;
}

/* Feed n commands of `script` through the conn, as a worker would. */
static int64_t run_script(const mb_script *script, uint64_t n) {
    if (!owner_ok())
        return -1;
    conn *c = mb.c;
    if (!c || c->closed)
        return fail("the microbench connection was closed by an earlier error");
    feed.script = script;
    feed.pos %= script->cmd_len * script->count;
    feed.pos -= feed.pos % script->cmd_len;     /* start on a command */
    feed.remaining = n * script->cmd_len;
    feed.written = 0;
    conn_run(c);
    while (mb.w.ready)
        worker_run_ready(&mb.w);
    if (c->closed)
        return fail("the server closed the microbench connection");
    if (feed.remaining || c->rbytes || c->resp_head || c->ritem || c->swallow)
        return fail("connection not idle after the run (%llu bytes unread)",
                    (unsigned long long)feed.remaining);
    return (int64_t)feed.written;
}

int64_t mb_proto_get(bool hit, uint64_t n) {
    return run_script(hit ? &mb.get_hit : &mb.get_miss, n);
}

int64_t mb_proto_set(uint64_t n) {
    return run_script(&mb.set, n);
}
