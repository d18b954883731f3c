/*
 * ps_thread.h - condition variables on the monotonic clock.
 *
 * Every background thread (LRU maintainer, crawler, clock, hash expander,
 * slab mover) sleeps on a condition variable with a timeout so it can be
 * woken to stop at once. The timeouts are measured on CLOCK_MONOTONIC so
 * that a wall-clock jump neither stalls a thread nor makes it spin.
 * Header-only: static inline, no state.
 */
#ifndef PS_COMMON_THREAD_H
#define PS_COMMON_THREAD_H

#include <pthread.h>
#include <time.h>

/* Initialise c to time its waits on CLOCK_MONOTONIC. */
static inline void ps_cond_init_monotonic(pthread_cond_t *c) {
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(c, &attr);
    pthread_condattr_destroy(&attr);
}

/* Wait on c (m held, as pthread_cond_timedwait requires) for at most usec
 * microseconds; returns pthread_cond_timedwait's result. */
static inline int ps_cond_wait_us(pthread_cond_t *c, pthread_mutex_t *m, long usec) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += usec / 1000000;
    ts.tv_nsec += (usec % 1000000) * 1000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return pthread_cond_timedwait(c, m, &ts);
}

#endif
