/*
 * hist.h - a log-linear latency histogram in the spirit of HdrHistogram.
 *
 * Unit: one microsecond. Values 0..2047 us each have their own bucket (exact);
 * above that every power of two [2^k, 2^(k+1)) is cut into 1024 equal
 * buckets, so a recorded value is known to within 1/1024 of itself (three
 * significant digits) all the way up to 2^32 - 1 us (about 71 minutes).
 * Larger values land in the last bucket; the exact maximum is kept on the
 * side, so `max` is always true.
 *
 * Threads: none. A histogram belongs to one thread while it records; the
 * owner hands it over (thread join, or a mutex-protected snapshot) before
 * anyone else reads it. Merging is plain addition, so per-thread histograms
 * merged at the end give exactly the histogram one thread would have built.
 */
#ifndef PS_BENCH_HIST_H
#define PS_BENCH_HIST_H

#include <stddef.h>
#include <stdint.h>

#define HIST_SUB_BITS 11u                     /* 2048 unit-resolution buckets */
#define HIST_SUB_COUNT (1u << HIST_SUB_BITS)  /* values below this are exact */
#define HIST_HALF_COUNT (HIST_SUB_COUNT / 2u) /* buckets per power of two above */
#define HIST_MAX_BITS 32u                     /* trackable: < 2^32 us */
#define HIST_BUCKETS (HIST_SUB_COUNT + (HIST_MAX_BITS - HIST_SUB_BITS) * HIST_HALF_COUNT)
#define HIST_TRACKABLE_MAX_US ((UINT64_C(1) << HIST_MAX_BITS) - 1u)

typedef struct bench_hist {
    uint64_t *counts;    /* HIST_BUCKETS counters, heap-allocated */
    uint64_t total;      /* number of values recorded */
    uint64_t sum_ns;     /* exact sum of the recorded values, for the mean */
    uint64_t min_ns;     /* exact smallest value (UINT64_MAX when empty) */
    uint64_t max_ns;     /* exact largest value (0 when empty) */
} bench_hist;

/* 0 on success, -1 when out of memory. */
int hist_init(bench_hist *h);
void hist_free(bench_hist *h);
void hist_reset(bench_hist *h);

/* Record one latency given in nanoseconds; it is bucketed as the nearest
 * whole microsecond. */
void hist_record_ns(bench_hist *h, uint64_t ns);

/* dst += src. */
void hist_add(bench_hist *dst, const bench_hist *src);

/* The value (us) at percentile `pct` (0..100): the highest value of the
 * bucket holding the ceil(pct% * total)-th smallest value, capped at the true
 * maximum (HdrHistogram's "highest equivalent value" rule). 0 when empty. */
uint64_t hist_percentile_us(const bench_hist *h, double pct);

double hist_mean_us(const bench_hist *h);

/* Bucket geometry, exposed for export and tests. */
uint32_t hist_bucket_index(uint64_t value_us);
uint64_t hist_bucket_lowest_us(uint32_t index);
uint64_t hist_bucket_highest_us(uint32_t index);

/* The value (us) under which bucket `index` is reported: its highest value,
 * capped at the histogram's true maximum. */
uint64_t hist_bucket_report_us(const bench_hist *h, uint32_t index);

#endif
