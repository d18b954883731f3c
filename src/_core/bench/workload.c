/*
 * workload.c - request contents: op kind, keys, value sizes, expiries.
 *
 * Key patterns (per op kind, so "S:R" fills sequentially and reads at
 * random):
 *   S  each connection walks the key range in order, starting at its own
 *      offset (with --requests equal to the range size, the connections'
 *      walks partition it exactly), wrapping at the end;
 *   R  uniform over [key_min, key_max];
 *   G  normal around key_median with key_stddev, redrawn when it falls
 *      outside the range (so the range is never exceeded);
 *   Z  zipfian: rank r = key - key_min + 1 has probability ~ r^-skew, so
 *      key_min is the hottest key.
 *
 * Threads: the workload is read-only once built; cursors are per
 * connection (see workload.h).
 */
#include "workload.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int workload_init(bench_workload *w, const bench_config *cfg)
{
    memset(w, 0, sizeof(*w));
    w->cfg = cfg;
    w->key_range = cfg->key_max - cfg->key_min + 1;
    w->key_prefix_len = strlen(cfg->key_prefix);
    zipf_init(&w->zipf, w->key_range, cfg->zipf_skew > 0 ? cfg->zipf_skew : 1.0);
    w->key_median = cfg->key_median >= 0
                        ? cfg->key_median
                        : ((double)cfg->key_min + (double)cfg->key_max) / 2.0;
    w->key_stddev = cfg->key_stddev > 0 ? cfg->key_stddev : (double)(w->key_range - 1) / 6.0;

    uint32_t max_size = cfg->data_size_min;
    if (cfg->size_mode == BENCH_SIZE_RANGE) {
        max_size = cfg->data_size_max;
    } else if (cfg->size_mode == BENCH_SIZE_LIST) {
        uint64_t running = 0;
        for (uint32_t i = 0; i < cfg->size_list_len; i++) {
            running += cfg->size_weights[i];
            w->size_cumulative[i] = running;
            if (cfg->size_list[i] > max_size)
                max_size = cfg->size_list[i];
        }
        w->size_weight_total = running;
    }
    w->value_max = max_size;
    w->value = malloc((size_t)max_size + 1);
    if (w->value == NULL)
        return -1;
    /* Printable filler; memcached does not care, a human reading a
     * packet capture does. */
    static const char filler[] = "pinstack-bench-value-0123456789-";
    for (uint32_t i = 0; i < max_size; i++)
        w->value[i] = filler[i % (sizeof(filler) - 1)];
    return 0;
}

void workload_free(bench_workload *w)
{
    free(w->value);
    w->value = NULL;
}

void cursor_init(bench_cursor *c, const bench_workload *w, uint64_t conn_index, uint64_t seq_start)
{
    rng_seed(&c->rng, w->cfg->seed, conn_index);
    c->seq_next[BENCH_OP_GET] = seq_start % w->key_range;
    c->seq_next[BENCH_OP_SET] = seq_start % w->key_range;
    c->cycle_pos = 0;
}

int workload_next_op(const bench_workload *w, bench_cursor *c)
{
    const bench_config *cfg = w->cfg;
    uint64_t cycle = (uint64_t)cfg->ratio_set + cfg->ratio_get;
    int op = c->cycle_pos < cfg->ratio_set ? BENCH_OP_SET : BENCH_OP_GET;
    if (++c->cycle_pos >= cycle)
        c->cycle_pos = 0;
    return op;
}

uint64_t workload_sets_in(const bench_config *cfg, uint64_t requests)
{
    uint64_t cycle = (uint64_t)cfg->ratio_set + cfg->ratio_get;
    uint64_t rest = requests % cycle;
    return requests / cycle * cfg->ratio_set + (rest < cfg->ratio_set ? rest : cfg->ratio_set);
}

uint64_t workload_next_key(const bench_workload *w, bench_cursor *c, int op)
{
    const bench_config *cfg = w->cfg;
    int pattern = op == BENCH_OP_SET ? cfg->key_pattern_set : cfg->key_pattern_get;
    switch (pattern) {
    case BENCH_KEYS_SEQUENTIAL: {
        uint64_t offset = c->seq_next[op];
        c->seq_next[op] = offset + 1 == w->key_range ? 0 : offset + 1;
        return cfg->key_min + offset;
    }
    case BENCH_KEYS_GAUSSIAN:
        for (;;) {
            double k = floor(w->key_median + w->key_stddev * rng_normal(&c->rng) + 0.5);
            if (k >= (double)cfg->key_min && k <= (double)cfg->key_max)
                return (uint64_t)k;
        }
    case BENCH_KEYS_ZIPF:
        return cfg->key_min + zipf_sample(&w->zipf, &c->rng) - 1;
    case BENCH_KEYS_UNIFORM:
    default:
        return cfg->key_min + rng_below(&c->rng, w->key_range);
    }
}

uint32_t workload_next_size(const bench_workload *w, bench_cursor *c)
{
    const bench_config *cfg = w->cfg;
    switch (cfg->size_mode) {
    case BENCH_SIZE_RANGE:
        return cfg->data_size_min +
               (uint32_t)rng_below(&c->rng, (uint64_t)cfg->data_size_max - cfg->data_size_min + 1);
    case BENCH_SIZE_LIST: {
        uint64_t pick = rng_below(&c->rng, w->size_weight_total);
        for (uint32_t i = 0; i < cfg->size_list_len; i++)
            if (pick < w->size_cumulative[i])
                return cfg->size_list[i];
        return cfg->size_list[cfg->size_list_len - 1];
    }
    case BENCH_SIZE_FIXED:
    default:
        return cfg->data_size_min;
    }
}

uint32_t workload_next_expiry(const bench_workload *w, bench_cursor *c)
{
    const bench_config *cfg = w->cfg;
    if (cfg->expiry_max == cfg->expiry_min)
        return cfg->expiry_min;
    return cfg->expiry_min +
           (uint32_t)rng_below(&c->rng, (uint64_t)cfg->expiry_max - cfg->expiry_min + 1);
}

size_t workload_format_key(const bench_workload *w, uint64_t key, char *out)
{
    memcpy(out, w->cfg->key_prefix, w->key_prefix_len);
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + key % 10);
        key /= 10;
    } while (key != 0);
    size_t len = w->key_prefix_len;
    while (n > 0)
        out[len++] = digits[--n];
    return len;
}
