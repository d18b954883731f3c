/*
 * rng.c - generator and distributions for pinstack-bench (see rng.h).
 *
 * GENERATOR: xoshiro256** (Blackman & Vigna): 256 bits of state, a handful
 * of shifts and rotates per draw, passes BigCrush. Seeded with splitmix64 so
 * that seeds 0, 1, 2 ... give unrelated streams.
 *
 * ZIPF BY REJECTION-INVERSION
 *
 * We want k in 1..n with probability proportional to h(k) = k^-s. Take the
 * continuous hat h(x) = x^-s and its integral
 *
 *     H(x) = (x^(1-s) - 1) / (1 - s)        (log x when s == 1)
 *
 * Each integer k owns the interval [k - 1/2, k + 1/2] under the hat, with
 * area H(k + 1/2) - H(k - 1/2) >= h(k) because h is convex. Draw u uniformly
 * in [H(1.5) - 1, H(n + 0.5)] (rank 1 is given area exactly h(1) = 1), invert
 * x = H^-1(u), round to k, and accept when u falls in the part of k's strip
 * that h(k) covers: u >= H(k + 1/2) - h(k). Acceptance is high (well over 90%
 * for usual skews) and a quick "squeeze" test accepts most draws without
 * evaluating H again.
 *
 * (x^(1-s) - 1)/(1-s) loses all precision when s is close to 1, so H and
 * H^-1 are written with expm1/log1p through the two helpers below, which
 * tend smoothly to the s == 1 case.
 *
 * Threads: none.
 */
#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

void rng_seed(bench_rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * UINT64_C(0xD1B54A32D192ED03));
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
    if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0)
        r->s[0] = 1;
    r->has_spare = 0;
    r->spare_normal = 0.0;
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t rng_next(bench_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double rng_double(bench_rng *r)
{
    return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

uint64_t rng_below(bench_rng *r, uint64_t n)
{
    /* Lemire's multiply-and-reject: the high half of x * n is uniform in
     * [0, n) once the few low-half values that would bias it are refused. */
    __uint128_t m = (__uint128_t)rng_next(r) * n;
    uint64_t low = (uint64_t)m;
    if (low < n) {
        uint64_t threshold = -n % n;
        while (low < threshold) {
            m = (__uint128_t)rng_next(r) * n;
            low = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

double rng_normal(bench_rng *r)
{
    /* Marsaglia's polar method: two normals per accepted point. */
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare_normal;
    }
    double u, v, q;
    do {
        u = 2.0 * rng_double(r) - 1.0;
        v = 2.0 * rng_double(r) - 1.0;
        q = u * u + v * v;
    } while (q >= 1.0 || q == 0.0);
    double f = sqrt(-2.0 * log(q) / q);
    r->spare_normal = v * f;
    r->has_spare = 1;
    return u * f;
}

/* log1p(x) / x, continuous at 0. */
static double log1p_over_x(double x)
{
    if (fabs(x) > 1e-8)
        return log1p(x) / x;
    return 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x));
}

/* expm1(x) / x, continuous at 0. */
static double expm1_over_x(double x)
{
    if (fabs(x) > 1e-8)
        return expm1(x) / x;
    return 1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x));
}

static double zipf_h(double skew, double x)
{
    return exp(-skew * log(x));
}

static double zipf_h_integral(double skew, double x)
{
    double log_x = log(x);
    return expm1_over_x((1.0 - skew) * log_x) * log_x;
}

static double zipf_h_integral_inverse(double skew, double y)
{
    double t = y * (1.0 - skew);
    if (t < -1.0)
        t = -1.0; /* only reachable through rounding at the far end */
    return exp(log1p_over_x(t) * y);
}

void zipf_init(bench_zipf *z, uint64_t n, double skew)
{
    z->n = n;
    z->skew = skew;
    z->h_integral_x1 = zipf_h_integral(skew, 1.5) - 1.0;
    z->h_integral_n = zipf_h_integral(skew, (double)n + 0.5);
    z->squeeze = 2.0 - zipf_h_integral_inverse(
                           skew, zipf_h_integral(skew, 2.5) - zipf_h(skew, 2.0));
}

uint64_t zipf_sample(const bench_zipf *z, bench_rng *r)
{
    for (;;) {
        double u = z->h_integral_n + rng_double(r) * (z->h_integral_x1 - z->h_integral_n);
        double x = zipf_h_integral_inverse(z->skew, u);
        double k = floor(x + 0.5);
        if (k < 1.0)
            k = 1.0;
        else if (k > (double)z->n)
            k = (double)z->n;
        if (k - x <= z->squeeze ||
            u >= zipf_h_integral(z->skew, k + 0.5) - zipf_h(z->skew, k))
            return (uint64_t)k;
    }
}
