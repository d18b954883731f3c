/*
 * bench.h - pinstack-bench's C core, the public face: a configuration goes
 * in, a load run happens on its own threads, merged results come out.
 *
 * The Cython wrapper (_bench.pyx) fills a bench_config, calls bench_start,
 * polls bench_wait with the GIL released (re-taking it only between polls
 * to let Ctrl-C through), and turns the bench_results into a dict.
 *
 * Threads: bench_start spawns config.threads workers (worker.c), each with
 * its own epoll loop and connections; nothing they touch while generating
 * load is shared. bench_wait/bench_stop/bench_results/bench_free belong to
 * the one thread that called bench_start.
 */
#ifndef PS_BENCH_H
#define PS_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "hist.h"

enum bench_protocol {
    BENCH_PROTO_TEXT = 0, /* get / set                                    */
    BENCH_PROTO_META = 1, /* mg <key> v / ms <key> <size>; multi-get as mg q ... mn */
};

enum bench_key_pattern {
    BENCH_KEYS_SEQUENTIAL = 0, /* each connection walks its own slice of the range  */
    BENCH_KEYS_UNIFORM = 1,    /* uniform random over [key_min, key_max]            */
    BENCH_KEYS_GAUSSIAN = 2,   /* normal around key_median, key_stddev wide         */
    BENCH_KEYS_ZIPF = 3,       /* rank r = key - key_min + 1 drawn with P ~ r^-skew */
};

enum bench_size_mode {
    BENCH_SIZE_FIXED = 0, /* every value is data_size_min bytes     */
    BENCH_SIZE_RANGE = 1, /* uniform in [data_size_min, data_size_max] */
    BENCH_SIZE_LIST = 2,  /* size_list[i] with weight size_weights[i] */
};

enum bench_on_error {
    BENCH_ON_ERROR_STOP = 0,     /* first error ends the run with its message  */
    BENCH_ON_ERROR_CONTINUE = 1, /* count it, reset the connection if needed, go on */
};

#define BENCH_HOST_MAX 255
#define BENCH_PORT_MAX 15
#define BENCH_KEY_PREFIX_MAX 200
#define BENCH_KEY_MAX 250         /* memcached's key length limit */
#define BENCH_SIZE_LIST_MAX 64
#define BENCH_MAX_THREADS 256
#define BENCH_MAX_CLIENTS 10000   /* per thread */
#define BENCH_MAX_PIPELINE 4096
#define BENCH_MAX_MULTIGET 1024
#define BENCH_MAX_DATA_SIZE (64u << 20)
#define BENCH_ERROR_MAX 512

typedef struct bench_config {
    char host[BENCH_HOST_MAX + 1];  /* name or address, resolved once at start */
    char port[BENCH_PORT_MAX + 1];
    uint32_t threads;               /* worker threads                           */
    uint32_t clients;               /* connections per thread                   */
    uint32_t pipeline;              /* requests in flight per connection        */
    uint64_t requests;              /* total, split across connections; 0: timed */
    double test_time_s;             /* run length when requests == 0           */
    uint32_t ratio_set, ratio_get;  /* sets and gets per cycle, e.g. 1:10       */
    uint32_t multiget;              /* keys per get                             */
    char key_prefix[BENCH_KEY_PREFIX_MAX + 1];
    uint64_t key_min, key_max;      /* inclusive                                */
    int key_pattern_set;            /* enum bench_key_pattern for sets          */
    int key_pattern_get;            /* ... and for gets                         */
    double zipf_skew;               /* > 0                                      */
    double key_median;              /* gaussian centre; < 0: middle of range    */
    double key_stddev;              /* gaussian width; <= 0: range / 6          */
    int size_mode;                  /* enum bench_size_mode                     */
    uint32_t data_size_min, data_size_max;
    uint32_t size_list[BENCH_SIZE_LIST_MAX];
    uint32_t size_weights[BENCH_SIZE_LIST_MAX];
    uint32_t size_list_len;
    uint32_t expiry_min, expiry_max; /* seconds, uniform; 0-0: never expire   */
    int protocol;                   /* enum bench_protocol                      */
    double rate;                    /* total requests/s (open loop); 0: closed  */
    uint64_t reconnect_interval;    /* reconnect every N requests; 0: never     */
    int on_error;                   /* enum bench_on_error                      */
    double timeout_s;               /* a request unanswered this long times out; 0: never */
    double connect_timeout_s;       /* a connect not done this long fails       */
    int progress;                   /* print a line per second to stderr        */
    double timeline_interval_s;     /* width of one timeline slot               */
    uint64_t seed;
} bench_config;

/* Counters for one command type. All per-key counts are per key of a
 * multi-get, which is what memcached's cmd_get / get_hits count too. */
typedef struct bench_op_stats {
    uint64_t ops;        /* requests answered (a multi-get is one)          */
    uint64_t keys;       /* keys in those requests                          */
    uint64_t hits;       /* gets: keys answered with a value                */
    uint64_t misses;     /* gets: keys answered without one                 */
    uint64_t stored;     /* sets: STORED / HD                               */
    uint64_t not_stored; /* sets: NOT_STORED EXISTS NOT_FOUND / NS EX NF    */
    uint64_t errors;     /* requests answered ERROR/CLIENT_ERROR/SERVER_ERROR */
    uint64_t bytes_out;  /* request bytes                                   */
    uint64_t bytes_in;   /* reply bytes                                     */
    bench_hist latency;  /* from (intended) send to complete reply          */
} bench_op_stats;

/* One slot of the timeline: requests completed in
 * [t0 + i * interval, t0 + (i + 1) * interval). */
typedef struct bench_slot {
    uint64_t ops;
    uint64_t latency_sum_ns;
    uint64_t latency_max_ns;
} bench_slot;

enum bench_error_kind {
    BENCH_ERR_NONE = 0,
    BENCH_ERR_CONFIG = 1,   /* the configuration was refused                */
    BENCH_ERR_CONNECT = 2,  /* could not resolve or connect at start        */
    BENCH_ERR_RUN = 3,      /* --on-error stop ended the run                */
    BENCH_ERR_SYSTEM = 4,   /* out of memory, thread or epoll creation      */
    BENCH_ERR_STOPPED = 5,  /* bench_stop was called (Ctrl-C)               */
};

typedef struct bench_results {
    bench_op_stats get;
    bench_op_stats set;
    bench_hist total_latency;  /* get + set                                  */
    bench_hist connect;        /* TCP connect times, initial and reconnects  */
    uint64_t protocol_errors;  /* replies that were not memcached protocol   */
    uint64_t timeouts;         /* requests unanswered within timeout_s       */
    uint64_t disconnects;      /* connections the server closed mid-run      */
    uint64_t connect_errors;   /* reconnect attempts that failed             */
    uint64_t reconnects;       /* planned (--reconnect-interval) reconnects  */
    uint64_t lost;             /* requests in flight on a connection that was reset */
    uint64_t bytes_out;        /* all bytes written                          */
    uint64_t bytes_in;         /* all bytes read                             */
    double elapsed_s;          /* first request issued .. last reply        */
    uint32_t connections;      /* threads * clients                          */
    bench_slot *timeline;      /* timeline_len slots                         */
    size_t timeline_len;
    double timeline_interval_s;
    int error_kind;            /* enum bench_error_kind                      */
    char error[BENCH_ERROR_MAX]; /* why the run ended early; "" otherwise   */
} bench_results;

typedef struct bench_run bench_run;

/* 0 when the configuration is usable; otherwise -1 and a one-line reason. */
int bench_config_check(const bench_config *cfg, char *err, size_t errlen);

/* Checks the config, resolves the server and starts the workers. NULL if
 * nothing started, with a message in err and its enum bench_error_kind
 * (CONFIG, CONNECT for a name that does not resolve, SYSTEM) in *err_kind. */
bench_run *bench_start(const bench_config *cfg, char *err, size_t errlen, int *err_kind);

/* Waits up to timeout_ms for the run to end, printing the progress line
 * when one is due. 1 when every worker has finished, else 0. */
int bench_wait(bench_run *run, uint32_t timeout_ms);

/* Asks the workers to stop soon (async-signal-unsafe; call from the owner). */
void bench_stop(bench_run *run);

/* The merged results; valid once bench_wait returned 1, until bench_free. */
const bench_results *bench_results_get(bench_run *run);

/* Stops and joins the workers if still running, frees everything. */
void bench_free(bench_run *run);

#endif
