/*
 * net.c - address resolution and non-blocking connect (see net.h).
 *
 * Every socket is non-blocking from creation (SOCK_NONBLOCK), close-on-exec,
 * and has Nagle off: a load generator writes small requests and must not
 * have the kernel hold them back waiting for more.
 *
 * Threads: see net.h.
 */
#include "net.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int net_resolve(const char *host, const char *port, bench_addr *out, char *err, size_t errlen)
{
    struct addrinfo hints, *found = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    int rc = getaddrinfo(host, port, &hints, &found);
    if (rc != 0 || found == NULL) {
        snprintf(err, errlen, "cannot resolve %s:%s: %s", host, port,
                 rc != 0 ? gai_strerror(rc) : "no address");
        return -1;
    }
    memset(out, 0, sizeof(*out));
    memcpy(&out->sa, found->ai_addr, found->ai_addrlen);
    out->len = found->ai_addrlen;
    if (strchr(host, ':') != NULL) /* IPv6 literal */
        snprintf(out->display, sizeof(out->display), "[%s]:%s", host, port);
    else
        snprintf(out->display, sizeof(out->display), "%s:%s", host, port);
    freeaddrinfo(found);
    return 0;
}

int net_connect_start(const bench_addr *a, int *connected)
{
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0)
        return -1;
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)&a->sa, a->len) == 0) {
        *connected = 1;
        return fd;
    }
    if (errno == EINPROGRESS || errno == EINTR) {
        *connected = 0;
        return fd;
    }
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

int net_connect_result(int fd)
{
    int so_error = 0;
    socklen_t len = sizeof(so_error);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len) != 0)
        return errno;
    return so_error;
}
