/*
 * worker.h - internal: what bench.c (the run) and worker.c (the load
 * loops) share. Not part of the public API (bench.h).
 *
 * Threads and ownership:
 *   bench_shared  one per run. cfg, workload and addr are read-only while
 *                 workers run. `stop` is the only atomic: written once by
 *                 whoever ends the run, read (relaxed) once per loop turn.
 *                 Everything else in it is under `mu`.
 *   bench_worker  one per thread. Its `res` (counters, histograms,
 *                 timeline) is written only by its thread and read by the
 *                 owner of the run after pthread_join. The pub_* snapshot
 *                 for the progress line is the one part read while the run
 *                 goes on, under pub_mu.
 */
#ifndef PS_BENCH_WORKER_H
#define PS_BENCH_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "bench.h"
#include "net.h"
#include "workload.h"

typedef struct bench_shared {
    const bench_config *cfg;
    const bench_workload *workload;
    const bench_addr *addr;
    uint64_t connections;        /* threads * clients                        */
    atomic_int stop;             /* 1: stop issuing, leave the loop          */
    pthread_mutex_t mu;          /* guards everything below                  */
    pthread_cond_t changed;      /* a worker arrived at the start line or finished */
    uint32_t workers;            /* workers started                          */
    uint32_t ready;              /* workers done with their initial connects */
    uint32_t finished;           /* workers that left their loop             */
    int error_kind;              /* enum bench_error_kind; first error wins  */
    char error[BENCH_ERROR_MAX];
} bench_shared;

typedef struct bench_conn bench_conn;

typedef struct bench_worker {
    uint32_t index;
    bench_shared *shared;
    pthread_t thread;
    int thread_started;
    bench_results res;           /* this thread's share of the results       */
    uint64_t t0_ns;              /* load start (after every connect)         */
    uint64_t t_last_ns;          /* last reply                               */
    pthread_mutex_t pub_mu;      /* guards pub_*                             */
    uint64_t pub_ops;            /* progress snapshot: requests answered     */
    uint64_t pub_bytes;          /* bytes in + out                           */
    uint64_t pub_errors;         /* error replies + protocol errors + timeouts + disconnects */
    bench_hist pub_latency;      /* get + set latency so far                 */
} bench_worker;

/* Records the first fatal error of the run and sets stop. printf-style. */
void shared_fail(bench_shared *s, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Allocates a worker's histograms; 0 or -1 (out of memory). */
int worker_init(bench_worker *w, uint32_t index, bench_shared *shared, int progress);
void worker_free(bench_worker *w);

/* The thread body (pthread_create's start routine). */
void *worker_main(void *arg);

uint64_t bench_now_ns(void);

#endif
