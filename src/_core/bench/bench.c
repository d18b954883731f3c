/*
 * bench.c - a pinstack-bench run: check the configuration, resolve the
 * server, start the workers, print progress while they work, merge their
 * results when they are done (API in bench.h).
 *
 * Threads: everything here runs on the thread that called bench_start (the
 * "owner"; from Python, the caller of run() with the GIL released). It
 * talks to the workers only through bench_shared (stop flag, start line,
 * finished count, first error: see worker.h) and the per-worker progress
 * snapshots. Worker results are read only after pthread_join, which orders
 * all their writes before our reads.
 *
 * Merging is exact: counters add, histograms add bucket by bucket, timeline
 * slots add by index (every worker's slot 0 starts at its own t0, the
 * moment it crossed the common start line, so they line up to within
 * microseconds).
 */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "net.h"
#include "worker.h"
#include "workload.h"

#define PROGRESS_NS UINT64_C(1000000000)

struct bench_run {
    bench_config cfg;           /* our copy; workers point at it           */
    bench_workload workload;
    bench_addr addr;
    bench_shared shared;
    bench_worker *workers;
    uint32_t nworkers;          /* workers allocated (and initialised)     */
    uint32_t started;           /* threads actually created                */
    int joined;
    int shared_ready;           /* mutex and condvar initialised           */
    int workload_ready;
    bench_results results;      /* merged, once joined                     */
    uint64_t start_ns;
    uint64_t next_progress_ns;
    uint64_t last_progress_ops;
    uint64_t last_progress_ns;
    bench_hist progress_latency;
};

/* ---- configuration check ------------------------------------------------ */

static int key_pattern_ok(int p)
{
    return p >= BENCH_KEYS_SEQUENTIAL && p <= BENCH_KEYS_ZIPF;
}

#define CHECK(cond, ...)                         \
    do {                                         \
        if (!(cond)) {                           \
            snprintf(err, errlen, __VA_ARGS__);  \
            return -1;                           \
        }                                        \
    } while (0)

int bench_config_check(const bench_config *cfg, char *err, size_t errlen)
{
    CHECK(cfg->host[0] != '\0' && cfg->port[0] != '\0', "--server: expected HOST:PORT");
    CHECK(cfg->threads >= 1 && cfg->threads <= BENCH_MAX_THREADS,
          "--threads: must be 1..%d", BENCH_MAX_THREADS);
    CHECK(cfg->clients >= 1 && cfg->clients <= BENCH_MAX_CLIENTS,
          "--clients: must be 1..%d", BENCH_MAX_CLIENTS);
    CHECK(cfg->pipeline >= 1 && cfg->pipeline <= BENCH_MAX_PIPELINE,
          "--pipeline: must be 1..%d", BENCH_MAX_PIPELINE);
    CHECK(cfg->requests > 0 || (isfinite(cfg->test_time_s) && cfg->test_time_s > 0 &&
                                cfg->test_time_s <= 1e7),
          "give --requests N (N >= 1) or --test-time SECONDS (> 0)");
    CHECK(cfg->ratio_set + (uint64_t)cfg->ratio_get > 0 &&
              cfg->ratio_set + (uint64_t)cfg->ratio_get <= 1000000,
          "--ratio: SET:GET must not be 0:0 and must sum to at most 1000000");
    CHECK(cfg->multiget >= 1 && cfg->multiget <= BENCH_MAX_MULTIGET,
          "--multiget: must be 1..%d", BENCH_MAX_MULTIGET);
    size_t prefix_len = strnlen(cfg->key_prefix, sizeof(cfg->key_prefix));
    CHECK(prefix_len <= BENCH_KEY_PREFIX_MAX, "--key-prefix: at most %d bytes",
          BENCH_KEY_PREFIX_MAX);
    for (size_t i = 0; i < prefix_len; i++) {
        unsigned char ch = (unsigned char)cfg->key_prefix[i];
        CHECK(ch > 0x20 && ch != 0x7f, "--key-prefix: no spaces or control characters");
    }
    CHECK(cfg->key_min <= cfg->key_max, "--key-minimum must not exceed --key-maximum");
    CHECK(cfg->key_max < (UINT64_C(1) << 62), "--key-maximum: at most 2^62 - 1");
    CHECK(key_pattern_ok(cfg->key_pattern_set) && key_pattern_ok(cfg->key_pattern_get),
          "--key-pattern: S, R, G or Z (or SET:GET, e.g. S:R)");
    if (cfg->key_pattern_set == BENCH_KEYS_ZIPF || cfg->key_pattern_get == BENCH_KEYS_ZIPF)
        CHECK(isfinite(cfg->zipf_skew) && cfg->zipf_skew > 0 && cfg->zipf_skew <= 10,
              "--zipf-skew: must be in (0, 10]");
    if (cfg->key_pattern_set == BENCH_KEYS_GAUSSIAN || cfg->key_pattern_get == BENCH_KEYS_GAUSSIAN) {
        CHECK(cfg->key_median < 0 ||
                  (cfg->key_median >= (double)cfg->key_min && cfg->key_median <= (double)cfg->key_max),
              "--key-median: must lie within --key-minimum..--key-maximum");
        CHECK(isfinite(cfg->key_stddev), "--key-stddev: must be a number");
    }
    switch (cfg->size_mode) {
    case BENCH_SIZE_FIXED:
        CHECK(cfg->data_size_min <= BENCH_MAX_DATA_SIZE, "--data-size: at most %u bytes",
              BENCH_MAX_DATA_SIZE);
        break;
    case BENCH_SIZE_RANGE:
        CHECK(cfg->data_size_min <= cfg->data_size_max && cfg->data_size_max <= BENCH_MAX_DATA_SIZE,
              "--data-size-range: MIN-MAX with MIN <= MAX <= %u", BENCH_MAX_DATA_SIZE);
        break;
    case BENCH_SIZE_LIST: {
        CHECK(cfg->size_list_len >= 1 && cfg->size_list_len <= BENCH_SIZE_LIST_MAX,
              "--data-size-list: 1 to %d SIZE:WEIGHT entries", BENCH_SIZE_LIST_MAX);
        uint64_t weights = 0;
        for (uint32_t i = 0; i < cfg->size_list_len; i++) {
            CHECK(cfg->size_list[i] <= BENCH_MAX_DATA_SIZE, "--data-size-list: sizes at most %u",
                  BENCH_MAX_DATA_SIZE);
            weights += cfg->size_weights[i];
        }
        CHECK(weights > 0, "--data-size-list: the weights must not all be 0");
        break;
    }
    default:
        CHECK(0, "data size: unknown mode %d", cfg->size_mode);
    }
    CHECK(cfg->expiry_min <= cfg->expiry_max, "--expiry-range: MIN-MAX with MIN <= MAX");
    CHECK(cfg->protocol == BENCH_PROTO_TEXT || cfg->protocol == BENCH_PROTO_META,
          "--protocol: text or meta");
    CHECK(isfinite(cfg->rate) && cfg->rate >= 0 && cfg->rate <= 1e9,
          "--rate: requests per second, 0 (closed loop) to 1e9");
    CHECK(cfg->on_error == BENCH_ON_ERROR_STOP || cfg->on_error == BENCH_ON_ERROR_CONTINUE,
          "--on-error: stop or continue");
    CHECK(isfinite(cfg->timeout_s) && cfg->timeout_s >= 0 && cfg->timeout_s <= 1e6,
          "--timeout: seconds, 0 (never) or more");
    CHECK(isfinite(cfg->connect_timeout_s) && cfg->connect_timeout_s > 0 &&
              cfg->connect_timeout_s <= 1e6,
          "--connect-timeout: seconds, more than 0");
    CHECK(isfinite(cfg->timeline_interval_s) && cfg->timeline_interval_s >= 0.001 &&
              cfg->timeline_interval_s <= 1e6,
          "--timeline-interval: seconds, at least 0.001");

    uint64_t connections = (uint64_t)cfg->threads * cfg->clients;
    struct rlimit lim;
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY)
        CHECK(connections + 64 <= lim.rlim_cur,
              "%llu connections need more file descriptors than the limit of %llu "
              "(raise it with ulimit -n)",
              (unsigned long long)connections, (unsigned long long)lim.rlim_cur);
    return 0;
}

/* ---- start -------------------------------------------------------------- */

static void run_destroy(bench_run *run);

bench_run *bench_start(const bench_config *config, char *err, size_t errlen, int *err_kind)
{
    *err_kind = BENCH_ERR_CONFIG;
    if (bench_config_check(config, err, errlen) != 0)
        return NULL;
    *err_kind = BENCH_ERR_SYSTEM;
    bench_run *run = calloc(1, sizeof(*run));
    if (run == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    run->cfg = *config;
    const bench_config *cfg = &run->cfg;

    if (net_resolve(cfg->host, cfg->port, &run->addr, err, errlen) != 0) {
        *err_kind = BENCH_ERR_CONNECT;
        free(run);
        return NULL;
    }
    if (workload_init(&run->workload, cfg) != 0) {
        snprintf(err, errlen, "out of memory for %u-byte values", run->workload.value_max);
        workload_free(&run->workload);
        free(run);
        return NULL;
    }
    run->workload_ready = 1;

    bench_shared *sh = &run->shared;
    sh->cfg = cfg;
    sh->workload = &run->workload;
    sh->addr = &run->addr;
    sh->connections = (uint64_t)cfg->threads * cfg->clients;
    atomic_init(&sh->stop, 0);
    pthread_mutex_init(&sh->mu, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&sh->changed, &attr);
    pthread_condattr_destroy(&attr);
    run->shared_ready = 1;

    run->workers = calloc(cfg->threads, sizeof(*run->workers));
    if (run->workers == NULL || (cfg->progress && hist_init(&run->progress_latency) != 0)) {
        snprintf(err, errlen, "out of memory");
        run_destroy(run);
        return NULL;
    }
    for (uint32_t i = 0; i < cfg->threads; i++) {
        run->nworkers++;
        if (worker_init(&run->workers[i], i, sh, cfg->progress) != 0) {
            snprintf(err, errlen, "out of memory for the latency histograms");
            run_destroy(run);
            return NULL;
        }
    }

    sh->workers = cfg->threads;
    run->start_ns = bench_now_ns();
    run->next_progress_ns = run->start_ns + PROGRESS_NS;
    run->last_progress_ns = run->start_ns;
    for (uint32_t i = 0; i < cfg->threads; i++) {
        int rc = pthread_create(&run->workers[i].thread, NULL, worker_main, &run->workers[i]);
        if (rc != 0) {
            /* The ones already started see `stop` at the start line. */
            shared_fail(sh, BENCH_ERR_SYSTEM, "cannot start worker thread %u: %s", i, strerror(rc));
            break;
        }
        run->workers[i].thread_started = 1;
        run->started++;
    }
    if (run->started == 0) {
        snprintf(err, errlen, "%s", sh->error);
        run_destroy(run);
        return NULL;
    }
    *err_kind = BENCH_ERR_NONE;
    return run;
}

/* ---- progress ----------------------------------------------------------- */

static void print_progress(bench_run *run, uint64_t now)
{
    const bench_config *cfg = &run->cfg;
    uint64_t ops = 0, bytes = 0, errors = 0;
    hist_reset(&run->progress_latency);
    for (uint32_t i = 0; i < run->started; i++) {
        bench_worker *w = &run->workers[i];
        pthread_mutex_lock(&w->pub_mu);
        ops += w->pub_ops;
        bytes += w->pub_bytes;
        errors += w->pub_errors;
        hist_add(&run->progress_latency, &w->pub_latency);
        pthread_mutex_unlock(&w->pub_mu);
    }
    double elapsed = (double)(now - run->start_ns) / 1e9;
    double window = (double)(now - run->last_progress_ns) / 1e9;
    double rate = window > 0 ? (double)(ops - run->last_progress_ops) / window : 0;
    double avg = elapsed > 0 ? (double)ops / elapsed : 0;
    double done = cfg->requests ? 100.0 * (double)ops / (double)cfg->requests
                                : 100.0 * elapsed / cfg->test_time_s;
    if (done > 100.0)
        done = 100.0;
    fprintf(stderr,
            "[pinstack-bench %3.0f%%, %4.0f secs] %12llu ops, %9.0f (avg: %9.0f) ops/sec, "
            "%.2fKB/sec (avg), p99 %.3f msec, %llu errors\n",
            done, elapsed, (unsigned long long)ops, rate, avg,
            elapsed > 0 ? (double)bytes / 1024.0 / elapsed : 0.0,
            (double)hist_percentile_us(&run->progress_latency, 99.0) / 1000.0,
            (unsigned long long)errors);
    fflush(stderr);
    run->last_progress_ops = ops;
    run->last_progress_ns = now;
}

/* ---- merge -------------------------------------------------------------- */

static void op_stats_add(bench_op_stats *dst, const bench_op_stats *src)
{
    dst->ops += src->ops;
    dst->keys += src->keys;
    dst->hits += src->hits;
    dst->misses += src->misses;
    dst->stored += src->stored;
    dst->not_stored += src->not_stored;
    dst->errors += src->errors;
    dst->bytes_out += src->bytes_out;
    dst->bytes_in += src->bytes_in;
    hist_add(&dst->latency, &src->latency);
}

static int merge(bench_run *run)
{
    bench_results *out = &run->results;
    memset(out, 0, sizeof(*out));
    if (hist_init(&out->get.latency) != 0 || hist_init(&out->set.latency) != 0 ||
        hist_init(&out->total_latency) != 0 || hist_init(&out->connect) != 0)
        return -1;
    uint64_t first_start = UINT64_MAX, last_reply = 0;
    size_t slots = 0;
    for (uint32_t i = 0; i < run->started; i++) {
        const bench_results *r = &run->workers[i].res;
        if (r->timeline_len > slots)
            slots = r->timeline_len;
    }
    if (slots > 0) {
        out->timeline = calloc(slots, sizeof(*out->timeline));
        if (out->timeline == NULL)
            return -1;
    }
    for (uint32_t i = 0; i < run->started; i++) {
        const bench_worker *w = &run->workers[i];
        const bench_results *r = &w->res;
        op_stats_add(&out->get, &r->get);
        op_stats_add(&out->set, &r->set);
        hist_add(&out->connect, &r->connect);
        out->protocol_errors += r->protocol_errors;
        out->timeouts += r->timeouts;
        out->disconnects += r->disconnects;
        out->connect_errors += r->connect_errors;
        out->reconnects += r->reconnects;
        out->lost += r->lost;
        out->bytes_out += r->bytes_out;
        out->bytes_in += r->bytes_in;
        for (size_t s = 0; s < r->timeline_len; s++) {
            bench_slot *d = &out->timeline[s];
            d->ops += r->timeline[s].ops;
            d->latency_sum_ns += r->timeline[s].latency_sum_ns;
            if (r->timeline[s].latency_max_ns > d->latency_max_ns)
                d->latency_max_ns = r->timeline[s].latency_max_ns;
        }
        if (w->t0_ns != 0 && w->t0_ns < first_start)
            first_start = w->t0_ns;
        if (w->t_last_ns > last_reply)
            last_reply = w->t_last_ns;
    }
    /* Trailing empty slots come from doubling growth: trim them. */
    while (slots > 0 && out->timeline[slots - 1].ops == 0)
        slots--;
    out->timeline_len = slots;
    out->timeline_interval_s = run->cfg.timeline_interval_s;
    hist_add(&out->total_latency, &out->get.latency);
    hist_add(&out->total_latency, &out->set.latency);
    out->elapsed_s = first_start != UINT64_MAX && last_reply > first_start
                         ? (double)(last_reply - first_start) / 1e9
                         : 0.0;
    out->connections = run->cfg.threads * run->cfg.clients;
    pthread_mutex_lock(&run->shared.mu);
    out->error_kind = run->shared.error_kind;
    snprintf(out->error, sizeof(out->error), "%s", run->shared.error);
    pthread_mutex_unlock(&run->shared.mu);
    return 0;
}

static void join_all(bench_run *run)
{
    if (run->joined)
        return;
    for (uint32_t i = 0; i < run->started; i++)
        pthread_join(run->workers[i].thread, NULL);
    run->joined = 1;
    if (merge(run) != 0) {
        run->results.error_kind = BENCH_ERR_SYSTEM;
        snprintf(run->results.error, sizeof(run->results.error),
                 "out of memory merging the results");
    }
}

/* ---- wait / stop / free ------------------------------------------------- */

int bench_wait(bench_run *run, uint32_t timeout_ms)
{
    if (run->joined)
        return 1;
    bench_shared *sh = &run->shared;
    uint64_t now = bench_now_ns();
    uint64_t until = now + (uint64_t)timeout_ms * 1000000u;
    if (run->cfg.progress && run->next_progress_ns < until)
        until = run->next_progress_ns;
    struct timespec ts = {.tv_sec = (time_t)(until / 1000000000u),
                          .tv_nsec = (long)(until % 1000000000u)};
    pthread_mutex_lock(&sh->mu);
    while (sh->finished < run->started) {
        if (pthread_cond_timedwait(&sh->changed, &sh->mu, &ts) == ETIMEDOUT)
            break;
    }
    int all_done = sh->finished >= run->started;
    pthread_mutex_unlock(&sh->mu);

    now = bench_now_ns();
    if (run->cfg.progress && (now >= run->next_progress_ns || all_done)) {
        print_progress(run, now);
        while (run->next_progress_ns <= now)
            run->next_progress_ns += PROGRESS_NS;
    }
    if (!all_done)
        return 0;
    join_all(run);
    return 1;
}

void bench_stop(bench_run *run)
{
    bench_shared *sh = &run->shared;
    pthread_mutex_lock(&sh->mu);
    if (sh->error_kind == BENCH_ERR_NONE) {
        sh->error_kind = BENCH_ERR_STOPPED;
        snprintf(sh->error, sizeof(sh->error), "stopped before the end");
    }
    atomic_store(&sh->stop, 1);
    pthread_cond_broadcast(&sh->changed);
    pthread_mutex_unlock(&sh->mu);
}

const bench_results *bench_results_get(bench_run *run)
{
    return run->joined ? &run->results : NULL;
}

static void results_free(bench_results *r)
{
    hist_free(&r->get.latency);
    hist_free(&r->set.latency);
    hist_free(&r->total_latency);
    hist_free(&r->connect);
    free(r->timeline);
    r->timeline = NULL;
}

static void run_destroy(bench_run *run)
{
    for (uint32_t i = 0; i < run->nworkers; i++)
        worker_free(&run->workers[i]);
    free(run->workers);
    results_free(&run->results);
    hist_free(&run->progress_latency);
    if (run->workload_ready)
        workload_free(&run->workload);
    if (run->shared_ready) {
        pthread_cond_destroy(&run->shared.changed);
        pthread_mutex_destroy(&run->shared.mu);
    }
    free(run);
}

void bench_free(bench_run *run)
{
    if (run == NULL)
        return;
    if (!run->joined) {
        bench_stop(run);
        join_all(run);
    }
    run_destroy(run);
}
