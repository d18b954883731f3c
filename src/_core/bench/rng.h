/*
 * rng.h - the random numbers pinstack-bench draws: a small fast generator
 * and the distributions the key patterns need (uniform, gaussian, zipfian).
 *
 * Threads: none. Every connection owns one bench_rng seeded from
 * (--seed, connection index), so a run with a fixed --requests count picks
 * the same keys, sizes and expiries whatever the thread scheduling.
 * A bench_zipf is read-only after zipf_init and may be shared freely.
 */
#ifndef PS_BENCH_RNG_H
#define PS_BENCH_RNG_H

#include <stdint.h>

typedef struct bench_rng {
    uint64_t s[4];        /* xoshiro256** state, never all zero */
    double spare_normal;  /* second value of the last polar-method pair */
    int has_spare;        /* spare_normal is valid */
} bench_rng;

/* Seeds the state from `seed` and `stream` through splitmix64, so
 * neighbouring streams are unrelated. */
void rng_seed(bench_rng *r, uint64_t seed, uint64_t stream);

uint64_t rng_next(bench_rng *r);

/* Uniform in [0, 1), 53 random bits. */
double rng_double(bench_rng *r);

/* Uniform in [0, n), unbiased; n > 0. */
uint64_t rng_below(bench_rng *r, uint64_t n);

/* Standard normal (mean 0, deviation 1). */
double rng_normal(bench_rng *r);

/*
 * Zipf over ranks 1..n: P(k) proportional to 1 / k^skew, skew > 0.
 * Sampled by rejection-inversion (Hormann & Derflinger, 1996): O(1) per
 * draw, no table, any n and any positive skew (1.0 included).
 */
typedef struct bench_zipf {
    uint64_t n;
    double skew;
    double h_integral_x1;  /* H(1.5) - 1 */
    double h_integral_n;   /* H(n + 0.5) */
    double squeeze;        /* 2 - H^-1(H(2.5) - h(2)): quick-accept bound */
} bench_zipf;

void zipf_init(bench_zipf *z, uint64_t n, double skew);
uint64_t zipf_sample(const bench_zipf *z, bench_rng *r);

#endif
