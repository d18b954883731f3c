/*
 * worker.h - a worker thread's private state (shared by conn.c, which
 * runs connections, and thread.c, which creates workers and hands them
 * connections). Not for the protocol modules.
 *
 * Ownership: everything in a worker belongs to its thread, except
 *   - newq/newq_len, written by the listener and drained by the worker,
 *     both under queue_lock; the listener then writes notify_fd (an
 *     eventfd) to wake the worker, and the mutex is the happens-before
 *     edge for the fds handed over;
 *   - the conns list, whose membership changes under conns_lock so that
 *     "stats conns", run by another worker, can walk it.
 */
#ifndef PS_CACHE_WORKER_H
#define PS_CACHE_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include "conn.h"
#include "stats.h"

#define WORKER_RBUF_POOL_MAX 64      /* idle read buffers kept per worker */
#define WORKER_RESP_POOL_MAX 512     /* idle resp objects kept per worker */

typedef struct pending_fd {
    int fd;
    char peer[64];
    char local[64];
} pending_fd;

typedef struct worker {
    pthread_t tid;
    int id;
    int epfd;
    int notify_fd;               /* eventfd: new fds queued */
    pthread_mutex_t queue_lock;  /* guards newq */
    pending_fd *newq;
    size_t newq_len, newq_cap;
    pthread_mutex_t conns_lock;  /* guards conns list membership */
    conn *conns;
    conn *ready;                 /* conns to run again without an event */
    conn *zombies;               /* closed conns, freed at end of a turn */
    char *rbuf_pool[WORKER_RBUF_POOL_MAX];
    int rbuf_pool_len;
    mc_resp *resp_pool;
    int resp_pool_len;
    thread_stats *stats;
} worker;

/* conn.c */
conn *conn_new(worker *w, const pending_fd *pfd);
void conn_run(conn *c);                 /* drive as far as it can go */
void conn_close(conn *c);               /* close now; freed by worker_reap */
void worker_reap(worker *w);            /* free zombies */
void worker_run_ready(worker *w);       /* run conns that yielded */
void worker_check_idle(worker *w, uint32_t now);
void worker_close_all(worker *w);
void worker_free_pools(worker *w);
/* thread.c */
extern worker *workers;
extern int num_workers;

#endif
