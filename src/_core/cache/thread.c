/*
 * thread.c - the server's threads: one listener, N workers, and the
 * start / wait / stop life cycle declared in server.h.
 *
 * THREADS.
 *   listener  accepts on every listen socket (epoll), enforces -c (over
 *             the cap it answers "ERROR Too many open connections" and
 *             closes, as memcached does with maxconns_fast), sets
 *             TCP_NODELAY, and hands the fd to the next worker round-robin
 *             through that worker's queue + eventfd.
 *   worker i  owns its epoll set and every connection handed to it, from
 *             accept to close (conn.c). It never blocks on another
 *             worker. Once a second it closes idle connections
 *             (-o idle_timeout).
 *   background threads of the storage engine (LRU maintainer, crawler,
 *             hash expander, slab mover) are started and joined through
 *             their modules' *_threads_start/stop.
 *
 * STOPPING. stop_efd is one eventfd registered level-triggered in the
 * listener's and every worker's epoll set. cache_server_stop() writes it
 * (a single write(2): async-signal-safe, callable from any thread) and
 * never reads it, so it stays readable and every loop sees it. Whoever
 * calls cache_server_wait() then joins the threads in order: listener
 * (no new conns), workers (each closes its conns), background threads.
 *
 * ORDERING. The listener -> worker handoff goes through the worker's
 * queue_lock, which orders the fd and its peer strings before the
 * worker reads them. `stopping` is a relaxed flag checked only as a hint;
 * the eventfd wakeup is what threads act on.
 */
#define _GNU_SOURCE
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "assoc.h"
#include "conn.h"
#include "items.h"
#include "slabs.h"
#include "stats.h"
#include "worker.h"

worker *workers;
int num_workers;

static int listen_fds[PS_MAX_LISTEN * 2];
static char listen_names[PS_MAX_LISTEN * 2][64];
static int nlisten;
static int stop_efd = -1;
static pthread_t listener_tid;
static bool listener_started;
static int bound_port;
static bool running;        /* between a successful start and cleanup */
static bool joined;         /* wait() has joined every thread */
static bool engine_threads_started;

/* epoll data.ptr sentinels that are not conns */
static int stop_sentinel, notify_sentinel;

/* ------------------------------------------------------------------ */
/* settings validation */

int settings_validate(const ps_settings *s, char *err, size_t errlen) {
#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)
    if (s->udpport != 0)
        FAIL("UDP is not supported (-U must be 0)");
    if (s->port < 0 || s->port > 65535)
        FAIL("invalid TCP port %d", s->port);
    if (s->num_threads < 1 || s->num_threads > 256)
        FAIL("number of threads must be between 1 and 256, not %d", s->num_threads);
    if (s->maxconns < 1)
        FAIL("maximum connections must be at least 1");
    if (s->backlog < 1)
        FAIL("listen backlog must be at least 1");
    if (s->reqs_per_event < 1)
        FAIL("max requests per event must be at least 1");
    if (s->factor <= 1.0)
        FAIL("factor must be greater than 1");
    if (s->chunk_size < 1)
        FAIL("chunk size must be at least 1");
    if (s->item_size_max < 1024)
        FAIL("item max size cannot be less than 1024 bytes");
    if (s->item_size_max > (size_t)1024 * 1024 * 1024)
        FAIL("cannot set item size limit higher than 1 gigabyte");
    if (s->slab_page_size != PS_SLAB_PAGE_SIZE)
        FAIL("slab page size must be %d", PS_SLAB_PAGE_SIZE);
    if (s->slab_chunk_max > s->slab_page_size / 2 || s->slab_chunk_max < 1024)
        FAIL("slab_chunk_max must be between 1024 and half the slab page size (%zu)",
             s->slab_page_size / 2);
    if (s->maxbytes / s->slab_page_size < 1)
        FAIL("memory limit must be at least one slab page (1 MiB)");
    if (s->item_size_max > s->maxbytes / 2)
        FAIL("Cannot set item size limit higher than 1/2 of memory max.");
    if (s->slab_chunk_max > s->item_size_max)
        FAIL("slab_chunk_max (bytes: %zu) cannot be larger than -I (item_size_max %zu)",
             s->slab_chunk_max, s->item_size_max);
    if (s->item_size_max % s->slab_chunk_max != 0)
        FAIL("-I (item_size_max: %zu) must be evenly divisible by slab_chunk_max (bytes: %zu)",
             s->item_size_max, s->slab_chunk_max);
    if (s->slab_page_size % s->slab_chunk_max != 0)
        FAIL("slab_chunk_max (bytes: %zu) must divide evenly into %zu (slab_page_size)",
             s->slab_chunk_max, s->slab_page_size);
    if (s->temp_lru && !s->lru_maintainer)
        FAIL("temporary_ttl requires lru_maintainer to be enabled");
    if (s->temporary_ttl < 0)
        FAIL("temporary_ttl must be >= 0");
    if (s->tail_repair_time != 0 && s->tail_repair_time < 10)
        FAIL("Cannot set tail_repair_time to less than 10 seconds");
    if (s->lru_crawler_sleep < 0 || s->lru_crawler_sleep > 1000000)
        FAIL("LRU crawler sleep must be between 0 and 1 second");
    if (s->slab_automove_ratio < 0.0 || s->slab_automove_ratio > 1.0)
        FAIL("slab_automove_ratio must be between 0 and 1");
    if (s->slab_automove_window < 1)
        FAIL("slab_automove_window must be at least 1");
    if (s->hashpower_init < 12 || s->hashpower_init > 32)
        FAIL("hashpower must be between 12 and 32");
    if (s->hot_lru_pct < 1 || s->hot_lru_pct >= 80)
        FAIL("hot_lru_pct must be > 1 and < 80");
    if (s->warm_lru_pct < 1 || s->warm_lru_pct >= 80)
        FAIL("warm_lru_pct must be > 1 and < 80");
    if (s->hot_lru_pct + s->warm_lru_pct > 80)
        FAIL("hot_lru_pct + warm_lru_pct cannot be more than 80%% combined");
    if (s->hot_max_factor <= 0 || s->warm_max_factor <= 0)
        FAIL("hot_max_factor and warm_max_factor must be greater than 0");
    if (s->slab_automove < 0 || s->slab_automove > 2)
        FAIL("slab_automove must be 0, 1 or 2");
    if (s->idle_timeout < 0)
        FAIL("idle_timeout must be >= 0");
    if (s->num_listen < 0 || s->num_listen > PS_MAX_LISTEN)
        FAIL("at most %d listen addresses", PS_MAX_LISTEN);
    if (s->read_buf_size < s->max_line_len * 2)
        FAIL("read buffer must hold at least two maximal command lines");
    return 0;
#undef FAIL
}

/* ------------------------------------------------------------------ */
/* listening */

static void addr_string(const struct sockaddr *sa, char *out, size_t outlen) {
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
        snprintf(out, outlen, "tcp:%s:%d", host, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
        snprintf(out, outlen, "tcp6:[%s]:%d", host, port);
    } else {
        snprintf(out, outlen, "unknown");
    }
}

static int bind_one(const char *host, char *err, size_t errlen) {
    char portstr[16];
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_flags = AI_PASSIVE | AI_ADDRCONFIG;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* with -p 0, every family shares the first ephemeral port we get */
    snprintf(portstr, sizeof(portstr), "%d", bound_port ? bound_port : settings.port);
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "getaddrinfo(%s): %s", host ? host : "*", gai_strerror(rc));
        return -1;
    }
    int bound_here = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (nlisten >= (int)(sizeof(listen_fds) / sizeof(listen_fds[0])))
            break;
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            if (errno == EAFNOSUPPORT)
                continue;
            snprintf(err, errlen, "socket(): %s", strerror(errno));
            freeaddrinfo(res);
            return -1;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bound_port && ai->ai_family == AF_INET6)
            ((struct sockaddr_in6 *)ai->ai_addr)->sin6_port = htons((uint16_t)bound_port);
        else if (bound_port && ai->ai_family == AF_INET)
            ((struct sockaddr_in *)ai->ai_addr)->sin_port = htons((uint16_t)bound_port);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            int e = errno;
            close(fd);
            if (e == EADDRNOTAVAIL && !host)
                continue;   /* e.g. no IPv6 on this host */
            snprintf(err, errlen, "failed to listen on TCP port %d: %s",
                     bound_port ? bound_port : settings.port, strerror(e));
            freeaddrinfo(res);
            return -1;
        }
        if (listen(fd, settings.backlog) != 0) {
            snprintf(err, errlen, "listen(): %s", strerror(errno));
            close(fd);
            freeaddrinfo(res);
            return -1;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
            addr_string((struct sockaddr *)&ss, listen_names[nlisten], sizeof(listen_names[0]));
            if (!bound_port)
                bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                            : ((struct sockaddr_in *)&ss)->sin_port);
        }
        listen_fds[nlisten++] = fd;
        bound_here++;
    }
    freeaddrinfo(res);
    if (!bound_here) {
        snprintf(err, errlen, "failed to listen on %s port %d: no usable address",
                 host ? host : "*", settings.port);
        return -1;
    }
    return 0;
}

static int bind_listeners(char *err, size_t errlen) {
    nlisten = 0;
    bound_port = 0;
    if (settings.port == 0 && settings.num_listen == 0)
        return bind_one("127.0.0.1", err, errlen); /* ephemeral: loopback only */
    if (settings.num_listen == 0)
        return bind_one(NULL, err, errlen);
    for (int i = 0; i < settings.num_listen; i++) {
        char host[64];
        snprintf(host, sizeof(host), "%s", settings.listen_addr[i]);
        size_t hl = strlen(host);
        char *h = host;
        if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
            host[hl - 1] = '\0';
            h = host + 1;
        }
        if (bind_one(h, err, errlen) != 0)
            return -1;
    }
    return 0;
}

static void close_listeners(void) {
    for (int i = 0; i < nlisten; i++)
        close(listen_fds[i]);
    nlisten = 0;
}

int cache_server_port(void) {
    return bound_port;
}

/* ------------------------------------------------------------------ */
/* listener */

static void reject_conn(int fd) {
    static const char msg[] = "ERROR Too many open connections\r\n";
    ssize_t w = send(fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)w;
    close(fd);
    atomic_fetch_add_explicit(&gstats.rejected_conns, 1, memory_order_relaxed);
}

static void dispatch_conn(int fd, int listen_idx, const struct sockaddr *peer) {
    static unsigned rr;     /* listener thread only */
    worker *w = &workers[rr++ % (unsigned)num_workers];
    pending_fd p;
    p.fd = fd;
    addr_string(peer, p.peer, sizeof(p.peer));
    snprintf(p.local, sizeof(p.local), "%s", listen_names[listen_idx]);

    pthread_mutex_lock(&w->queue_lock);
    if (w->newq_len == w->newq_cap) {
        size_t ncap = w->newq_cap ? w->newq_cap * 2 : 64;
        pending_fd *nq = realloc(w->newq, ncap * sizeof(*nq));
        if (!nq) {
            pthread_mutex_unlock(&w->queue_lock);
            close(fd);
            atomic_fetch_add_explicit(&gstats.malloc_fails, 1, memory_order_relaxed);
            return;
        }
        w->newq = nq;
        w->newq_cap = ncap;
    }
    w->newq[w->newq_len++] = p;
    pthread_mutex_unlock(&w->queue_lock);
    atomic_fetch_add_explicit(&gstats.curr_conns, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&gstats.total_conns, 1, memory_order_relaxed);
    uint64_t one = 1;
    ssize_t wr = write(w->notify_fd, &one, sizeof(one));
    (void)wr;
}

static void *listener_main(void *arg) {
    (void)arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return NULL;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &stop_sentinel};
    epoll_ctl(ep, EPOLL_CTL_ADD, stop_efd, &ev);
    for (int i = 0; i < nlisten; i++) {
        ev.events = EPOLLIN;
        ev.data.u64 = (uint64_t)i;
        epoll_ctl(ep, EPOLL_CTL_ADD, listen_fds[i], &ev);
    }
    /* u64 0..nlisten-1 are listeners; the stop sentinel is a pointer and
     * so never collides with a small index. */
    int backoff_ms = -1;
    for (;;) {
        struct epoll_event evs[16];
        int n = epoll_wait(ep, evs, 16, backoff_ms);
        if (n < 0 && errno != EINTR)
            break;
        backoff_ms = -1;
        bool stop = false;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &stop_sentinel) {
                stop = true;
                break;
            }
            int li = (int)evs[i].data.u64;
            for (;;) {
                struct sockaddr_storage ss;
                socklen_t sl = sizeof(ss);
                int fd = accept4(listen_fds[li], (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                    if (errno == EINTR)
                        continue;
                    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                        /* out of descriptors: let the queue wait a bit */
                        atomic_fetch_add_explicit(&gstats.listen_disabled_num, 1, memory_order_relaxed);
                        backoff_ms = 10;
                    }
                    break;
                }
                if (atomic_load_explicit(&gstats.curr_conns, memory_order_relaxed) >= (uint64_t)settings.maxconns) {
                    reject_conn(fd);
                    continue;
                }
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                dispatch_conn(fd, li, (struct sockaddr *)&ss);
            }
        }
        if (stop)
            break;
    }
    close(ep);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* workers */

static void worker_take_new(worker *w) {
    uint64_t cnt;
    ssize_t r = read(w->notify_fd, &cnt, sizeof(cnt));
    (void)r;
    pthread_mutex_lock(&w->queue_lock);
    size_t n = w->newq_len;
    pending_fd local[64];
    pending_fd *batch = n <= 64 ? local : malloc(n * sizeof(*batch));
    if (batch)
        memcpy(batch, w->newq, n * sizeof(*batch));
    w->newq_len = 0;
    pthread_mutex_unlock(&w->queue_lock);
    if (!batch) {
        /* cannot even copy the queue: drop these connections cleanly */
        return;
    }
    for (size_t i = 0; i < n; i++) {
        conn *c = conn_new(w, &batch[i]);
        if (!c) {
            close(batch[i].fd);
            atomic_fetch_sub_explicit(&gstats.curr_conns, 1, memory_order_relaxed);
            continue;
        }
        conn_run(c);    /* the client may have written already */
    }
    if (batch != local)
        free(batch);
}

static void *worker_main(void *arg) {
    worker *w = arg;
    w->stats = stats_thread_register();
    struct epoll_event evs[256];
    uint32_t last_idle_check = atomic_load_explicit(&current_time, memory_order_relaxed);
    bool stop = false;
    while (!stop) {
        int timeout = w->ready ? 0 : 1000;
        int n = epoll_wait(w->epfd, evs, 256, timeout);
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == &stop_sentinel) {
                stop = true;
            } else if (p == &notify_sentinel) {
                worker_take_new(w);
            } else {
                conn *c = p;
                if (!c->closed)
                    conn_run(c);
            }
        }
        worker_run_ready(w);
        uint32_t now = atomic_load_explicit(&current_time, memory_order_relaxed);
        if (now != last_idle_check) {
            last_idle_check = now;
            worker_check_idle(w, now);
        }
        worker_reap(w);
    }
    /* take whatever the listener queued before it stopped, then close all */
    pthread_mutex_lock(&w->queue_lock);
    for (size_t i = 0; i < w->newq_len; i++) {
        close(w->newq[i].fd);
        atomic_fetch_sub_explicit(&gstats.curr_conns, 1, memory_order_relaxed);
    }
    w->newq_len = 0;
    pthread_mutex_unlock(&w->queue_lock);
    worker_close_all(w);
    worker_free_pools(w);
    return NULL;
}

static int workers_create(char *err, size_t errlen) {
    num_workers = settings.num_threads;
    workers = calloc((size_t)num_workers, sizeof(*workers));
    if (!workers) {
        snprintf(err, errlen, "out of memory allocating workers");
        return -1;
    }
    for (int i = 0; i < num_workers; i++) {
        worker *w = &workers[i];
        w->id = i;
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        w->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        pthread_mutex_init(&w->queue_lock, NULL);
        pthread_mutex_init(&w->conns_lock, NULL);
        if (w->epfd < 0 || w->notify_fd < 0) {
            snprintf(err, errlen, "epoll/eventfd: %s", strerror(errno));
            return -1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &notify_sentinel};
        epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->notify_fd, &ev);
        ev.data.ptr = &stop_sentinel;
        epoll_ctl(w->epfd, EPOLL_CTL_ADD, stop_efd, &ev);
    }
    return 0;
}

static void workers_destroy(void) {
    if (!workers)
        return;
    for (int i = 0; i < num_workers; i++) {
        worker *w = &workers[i];
        if (w->epfd >= 0)
            close(w->epfd);
        if (w->notify_fd >= 0)
            close(w->notify_fd);
        pthread_mutex_destroy(&w->queue_lock);
        pthread_mutex_destroy(&w->conns_lock);
        free(w->newq);
    }
    free(workers);
    workers = NULL;
    num_workers = 0;
}

/* ------------------------------------------------------------------ */
/* life cycle */

/* Raise RLIMIT_NOFILE so -c connections fit, as memcached does. */
static int raise_nofile(char *err, size_t errlen) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    rlim_t need = (rlim_t)settings.maxconns + 64 + (rlim_t)settings.num_threads * 4;
    if (rl.rlim_cur >= need)
        return 0;
    rl.rlim_cur = need;
    if (rl.rlim_max < need)
        rl.rlim_max = need;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        snprintf(err, errlen, "failed to set rlimit for open files to %llu: %s. "
                 "Try starting as root or requesting a smaller maxconns value.",
                 (unsigned long long)need, strerror(errno));
        return -1;
    }
    return 0;
}

/* Free what cache_server_start() allocated; no server thread may run. */
static void release_resources(void) {
    workers_destroy();
    close_listeners();
    if (stop_efd >= 0) {
        close(stop_efd);
        stop_efd = -1;
    }
    items_cleanup();
    assoc_cleanup();
    slabs_cleanup();
    stats_cleanup();
}

/* Join the storage engine's background threads, if they were started. */
static void stop_engine_threads(void) {
    if (!engine_threads_started)
        return;
    slabs_threads_stop();
    assoc_threads_stop();
    items_threads_stop();
    engine_threads_started = false;
}

/* A start that failed half way: stop what runs, free what was made. */
static void undo_start(void) {
    stop_engine_threads();
    release_resources();
}

int cache_server_start(const ps_settings *s, char *err, size_t errlen) {
    err[0] = '\0';
    if (running) {
        snprintf(err, errlen, "a cache server is already running in this process");
        return -1;
    }
    if (settings_validate(s, err, errlen) != 0)
        return -1;
    settings = *s;
    atomic_store_explicit(&settings.verbose, atomic_load_explicit(&s->verbose, memory_order_relaxed),
                          memory_order_relaxed);
    memset(&gstats, 0, sizeof(gstats));
    joined = false;
    listener_started = false;
    engine_threads_started = false;

    if (raise_nofile(err, errlen) != 0)
        return -1;
    if (settings.lock_memory && mlockall(MCL_CURRENT | MCL_FUTURE) != 0) {
        snprintf(err, errlen, "mlockall failed: %s", strerror(errno));
        return -1;
    }
    stats_init();
    if (slabs_init() != 0) {
        snprintf(err, errlen, "failed to initialise the slab allocator");
        undo_start();
        return -1;
    }
    if (assoc_init(settings.hashpower_init) != 0) {
        snprintf(err, errlen, "failed to allocate the hash table");
        undo_start();
        return -1;
    }
    if (items_init() != 0) {
        snprintf(err, errlen, "failed to initialise items");
        undo_start();
        return -1;
    }
    if (bind_listeners(err, errlen) != 0) {
        undo_start();
        return -1;
    }
    stop_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (stop_efd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        undo_start();
        return -1;
    }
    if (workers_create(err, errlen) != 0) {
        undo_start();
        return -1;
    }
    if (items_threads_start() != 0 || assoc_threads_start() != 0 || slabs_threads_start() != 0) {
        engine_threads_started = true;
        snprintf(err, errlen, "failed to start background threads");
        undo_start();
        return -1;
    }
    engine_threads_started = true;
    for (int i = 0; i < num_workers; i++) {
        if (pthread_create(&workers[i].tid, NULL, worker_main, &workers[i]) != 0) {
            snprintf(err, errlen, "failed to start worker thread");
            cache_server_stop();
            for (int j = 0; j < i; j++)
                pthread_join(workers[j].tid, NULL);
            undo_start();
            return -1;
        }
    }
    if (pthread_create(&listener_tid, NULL, listener_main, NULL) != 0) {
        snprintf(err, errlen, "failed to start listener thread");
        cache_server_stop();
        for (int j = 0; j < num_workers; j++)
            pthread_join(workers[j].tid, NULL);
        undo_start();
        return -1;
    }
    listener_started = true;
    running = true;
    if (atomic_load_explicit(&settings.verbose, memory_order_relaxed) > 0) {
        for (int i = 0; i < nlisten; i++)
            fprintf(stderr, "pinstack-cache %s listening on %s\n", PS_CACHE_VERSION, listen_names[i]);
    }
    return 0;
}

void cache_server_stop(void) {
    if (stop_efd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(stop_efd, &one, sizeof(one));
        (void)w;
    }
}

int cache_server_wait(int timeout_ms) {
    if (!running || joined)
        return 1;
    struct pollfd pfd = {.fd = stop_efd, .events = POLLIN};
    int r = poll(&pfd, 1, timeout_ms);
    if (r <= 0)
        return 0;
    if (listener_started) {
        pthread_join(listener_tid, NULL);
        listener_started = false;
    }
    for (int i = 0; i < num_workers; i++)
        pthread_join(workers[i].tid, NULL);
    stop_engine_threads();
    close_listeners();
    joined = true;
    return 1;
}

void cache_server_cleanup(void) {
    if (!running)
        return;
    if (!joined) {
        cache_server_stop();
        while (!cache_server_wait(1000)) {
        }
    }
    release_resources();
    running = false;
}
