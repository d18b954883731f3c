/*
 * hist.c - log-linear latency histogram (see hist.h for the contract).
 *
 * HOW THE BUCKETS ARE LAID OUT
 *
 *   index 0 .. 2047          value == index                (1 us wide)
 *   index 2048 .. 3071       [2048, 4096)                  (2 us wide)
 *   index 3072 .. 4095       [4096, 8192)                  (4 us wide)
 *   ...                      [2^k, 2^(k+1)), 1024 buckets  (2^(k-10) us wide)
 *
 * For v >= 2048 with most significant bit k (k >= 11), shift = k - 10 and
 * v >> shift lies in [1024, 2048): that is the position inside the power of
 * two. A bucket's width is 2^shift and its lowest value at least 1024 *
 * 2^shift, so the relative error of any recorded value is below 2^-10.
 *
 * Threads: none; see hist.h.
 */
#include "hist.h"

#include <stdlib.h>
#include <string.h>

int hist_init(bench_hist *h)
{
    h->counts = calloc(HIST_BUCKETS, sizeof(*h->counts));
    if (h->counts == NULL)
        return -1;
    h->total = 0;
    h->sum_ns = 0;
    h->min_ns = UINT64_MAX;
    h->max_ns = 0;
    return 0;
}

void hist_free(bench_hist *h)
{
    free(h->counts);
    h->counts = NULL;
}

void hist_reset(bench_hist *h)
{
    memset(h->counts, 0, HIST_BUCKETS * sizeof(*h->counts));
    h->total = 0;
    h->sum_ns = 0;
    h->min_ns = UINT64_MAX;
    h->max_ns = 0;
}

uint32_t hist_bucket_index(uint64_t value_us)
{
    if (value_us > HIST_TRACKABLE_MAX_US)
        value_us = HIST_TRACKABLE_MAX_US;
    if (value_us < HIST_SUB_COUNT)
        return (uint32_t)value_us;
    unsigned msb = 63u - (unsigned)__builtin_clzll(value_us);
    unsigned shift = msb - (HIST_SUB_BITS - 1u);
    return HIST_SUB_COUNT + (shift - 1u) * HIST_HALF_COUNT +
           (uint32_t)((value_us >> shift) - HIST_HALF_COUNT);
}

uint64_t hist_bucket_lowest_us(uint32_t index)
{
    if (index < HIST_SUB_COUNT)
        return index;
    uint32_t above = index - HIST_SUB_COUNT;
    unsigned shift = above / HIST_HALF_COUNT + 1u;
    uint64_t sub = above % HIST_HALF_COUNT + HIST_HALF_COUNT;
    return sub << shift;
}

uint64_t hist_bucket_highest_us(uint32_t index)
{
    if (index < HIST_SUB_COUNT)
        return index;
    unsigned shift = (index - HIST_SUB_COUNT) / HIST_HALF_COUNT + 1u;
    return hist_bucket_lowest_us(index) + (UINT64_C(1) << shift) - 1u;
}

static uint64_t ns_to_us(uint64_t ns)
{
    return ns / 1000u + (ns % 1000u >= 500u);
}

void hist_record_ns(bench_hist *h, uint64_t ns)
{
    h->counts[hist_bucket_index(ns_to_us(ns))]++;
    h->total++;
    h->sum_ns += ns;
    if (ns < h->min_ns)
        h->min_ns = ns;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

void hist_add(bench_hist *dst, const bench_hist *src)
{
    if (src->total == 0)
        return;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    dst->sum_ns += src->sum_ns;
    if (src->min_ns < dst->min_ns)
        dst->min_ns = src->min_ns;
    if (src->max_ns > dst->max_ns)
        dst->max_ns = src->max_ns;
}

uint64_t hist_bucket_report_us(const bench_hist *h, uint32_t index)
{
    uint64_t highest = hist_bucket_highest_us(index);
    uint64_t max_us = ns_to_us(h->max_ns);
    return highest < max_us ? highest : max_us;
}

uint64_t hist_percentile_us(const bench_hist *h, double pct)
{
    if (h->total == 0)
        return 0;
    if (pct <= 0.0)
        return ns_to_us(h->min_ns);
    if (pct > 100.0)
        pct = 100.0;
    /* Nearest rank: the ceil(pct% * total)-th value. The relative nudge
     * keeps 99.9% of 1000 at 999 although 0.999 * 1000 is 999.0000000000001
     * in binary floating point. */
    double want = pct / 100.0 * (double)h->total;
    want -= want * 1e-12;
    uint64_t rank = (uint64_t)want;
    if ((double)rank < want)
        rank++; /* ceil */
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank)
            return hist_bucket_report_us(h, i);
    }
    return ns_to_us(h->max_ns);
}

double hist_mean_us(const bench_hist *h)
{
    if (h->total == 0)
        return 0.0;
    return (double)h->sum_ns / (double)h->total / 1000.0;
}
