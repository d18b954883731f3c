/*
 * net.h - the few socket operations pinstack-bench needs: resolve the
 * server once, open non-blocking TCP connections to it.
 *
 * Threads: net_resolve runs once, before the workers start; the bench_addr
 * it fills is read-only afterwards. net_connect_* are called by workers on
 * their own sockets.
 */
#ifndef PS_BENCH_NET_H
#define PS_BENCH_NET_H

#include <stddef.h>
#include <sys/socket.h>

typedef struct bench_addr {
    struct sockaddr_storage sa;
    socklen_t len;
    char display[300];  /* "host:port" as given, for messages */
} bench_addr;

/* 0, or -1 with a message ("cannot resolve ...") in err. */
int net_resolve(const char *host, const char *port, bench_addr *out, char *err, size_t errlen);

/*
 * Opens a non-blocking TCP socket (TCP_NODELAY) and starts connecting.
 * Returns the fd, with *connected = 1 if the connection is already up and 0
 * if it is in progress (wait for writability, then net_connect_result).
 * Returns -1 with errno set when it failed at once (e.g. ECONNREFUSED).
 */
int net_connect_start(const bench_addr *a, int *connected);

/* After writability: 0 when connected, else the errno of the failure. */
int net_connect_result(int fd);

#endif
