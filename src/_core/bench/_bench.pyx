# cython: language_level=3
"""pinstack._core._bench: the C load generator behind pinstack.bench.

A thin wrapper over src/_core/bench/bench.h. run() takes the normalised
options dict built by pinstack.bench.run(), copies it into a bench_config,
and drives the C run with the GIL released: the workers never need it, and
this thread only re-takes it between 100 ms waits to let Ctrl-C through
(KeyboardInterrupt stops the workers, then propagates).

Every C failure reaches Python through one translator, _raise_for(): a
BenchError carrying a `kind` ("config", "connect", "run", "system",
"stopped") and, when the load ran at all, the partial `result`.
"""

from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset


cdef extern from "hist.h" nogil:
    enum:
        HIST_BUCKETS

    ctypedef struct bench_hist:
        uint64_t *counts
        uint64_t total
        uint64_t sum_ns
        uint64_t min_ns
        uint64_t max_ns

    int hist_init(bench_hist *h)
    void hist_free(bench_hist *h)
    void hist_record_ns(bench_hist *h, uint64_t ns)
    uint64_t hist_percentile_us(const bench_hist *h, double pct)
    double hist_mean_us(const bench_hist *h)
    uint64_t hist_bucket_report_us(const bench_hist *h, uint32_t index)


cdef extern from "bench.h" nogil:
    enum:
        BENCH_PROTO_TEXT
        BENCH_PROTO_META
        BENCH_KEYS_SEQUENTIAL
        BENCH_KEYS_UNIFORM
        BENCH_KEYS_GAUSSIAN
        BENCH_KEYS_ZIPF
        BENCH_SIZE_FIXED
        BENCH_SIZE_RANGE
        BENCH_SIZE_LIST
        BENCH_ON_ERROR_STOP
        BENCH_ON_ERROR_CONTINUE
        BENCH_HOST_MAX
        BENCH_PORT_MAX
        BENCH_KEY_PREFIX_MAX
        BENCH_SIZE_LIST_MAX
        BENCH_ERROR_MAX
        BENCH_ERR_NONE
        BENCH_ERR_CONFIG
        BENCH_ERR_CONNECT
        BENCH_ERR_RUN
        BENCH_ERR_SYSTEM
        BENCH_ERR_STOPPED

    # Array sizes below only need to be large enough for Cython's type
    # checks; the C compiler sees bench.h's real definitions.
    ctypedef struct bench_config:
        char host[256]
        char port[16]
        uint32_t threads
        uint32_t clients
        uint32_t pipeline
        uint64_t requests
        double test_time_s
        uint32_t ratio_set
        uint32_t ratio_get
        uint32_t multiget
        char key_prefix[201]
        uint64_t key_min
        uint64_t key_max
        int key_pattern_set
        int key_pattern_get
        double zipf_skew
        double key_median
        double key_stddev
        int size_mode
        uint32_t data_size_min
        uint32_t data_size_max
        uint32_t size_list[64]
        uint32_t size_weights[64]
        uint32_t size_list_len
        uint32_t expiry_min
        uint32_t expiry_max
        int protocol
        double rate
        uint64_t reconnect_interval
        int on_error
        double timeout_s
        double connect_timeout_s
        int progress
        double timeline_interval_s
        uint64_t seed

    ctypedef struct bench_op_stats:
        uint64_t ops
        uint64_t keys
        uint64_t hits
        uint64_t misses
        uint64_t stored
        uint64_t not_stored
        uint64_t errors
        uint64_t bytes_out
        uint64_t bytes_in
        bench_hist latency

    ctypedef struct bench_slot:
        uint64_t ops
        uint64_t latency_sum_ns
        uint64_t latency_max_ns

    ctypedef struct bench_results:
        bench_op_stats get
        bench_op_stats set
        bench_hist total_latency
        bench_hist connect
        uint64_t protocol_errors
        uint64_t timeouts
        uint64_t disconnects
        uint64_t connect_errors
        uint64_t reconnects
        uint64_t lost
        uint64_t bytes_out
        uint64_t bytes_in
        double elapsed_s
        uint32_t connections
        bench_slot *timeline
        size_t timeline_len
        double timeline_interval_s
        int error_kind
        char error[512]

    ctypedef struct bench_run:
        pass

    bench_run *bench_start(const bench_config *cfg, char *err, size_t errlen, int *err_kind)
    int bench_wait(bench_run *run, uint32_t timeout_ms)
    void bench_stop(bench_run *run)
    const bench_results *bench_results_get(bench_run *run)
    void bench_free(bench_run *run)


class BenchError(RuntimeError):
    """A run that could not start or was cut short.

    kind:   "config"  the options were refused
            "connect" the server could not be resolved or connected to
            "run"     --on-error stop ended the run on its first error
            "system"  out of memory, threads or sockets exhausted
            "stopped" interrupted
    result: what was measured before the end (the dict run() returns), or
            None when no load ran.
    """

    def __init__(self, message, kind="run", result=None):
        super().__init__(message)
        self.kind = kind
        self.result = result


_ERROR_KINDS = {
    BENCH_ERR_CONFIG: "config",
    BENCH_ERR_CONNECT: "connect",
    BENCH_ERR_RUN: "run",
    BENCH_ERR_SYSTEM: "system",
    BENCH_ERR_STOPPED: "stopped",
}

_PROTOCOLS = {"text": BENCH_PROTO_TEXT, "meta": BENCH_PROTO_META}
_KEY_PATTERNS = {
    "S": BENCH_KEYS_SEQUENTIAL,
    "R": BENCH_KEYS_UNIFORM,
    "G": BENCH_KEYS_GAUSSIAN,
    "Z": BENCH_KEYS_ZIPF,
}
_ON_ERROR = {"stop": BENCH_ON_ERROR_STOP, "continue": BENCH_ON_ERROR_CONTINUE}

#: Percentiles reported for every histogram, as (key, percent).
PERCENTILES = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
)

#: Buckets of one latency histogram (exposed for tests and docs).
HISTOGRAM_BUCKETS = HIST_BUCKETS


def _raise_for(kind, message, result=None):
    """The one place a C error becomes a Python exception."""
    raise BenchError(message, _ERROR_KINDS.get(kind, "system"), result)


cdef void _copy_str(char *dst, Py_ssize_t cap, object value, str what) except *:
    cdef bytes raw = str(value).encode("utf-8")
    if len(raw) >= cap:
        _raise_for(BENCH_ERR_CONFIG, f"{what}: at most {cap - 1} bytes")
    if b"\0" in raw:
        _raise_for(BENCH_ERR_CONFIG, f"{what}: no NUL bytes")
    memcpy(dst, <const char *>raw, len(raw))
    dst[len(raw)] = 0


cdef int _lookup(dict table, object value, str what) except -1:
    try:
        return table[value]
    except (KeyError, TypeError):
        _raise_for(BENCH_ERR_CONFIG, f"{what}: expected one of {', '.join(table)}, got {value!r}")


cdef void _fill_config(bench_config *cfg, dict o) except *:
    memset(cfg, 0, sizeof(bench_config))
    try:
        _copy_str(cfg.host, BENCH_HOST_MAX + 1, o["host"], "--server host")
        _copy_str(cfg.port, BENCH_PORT_MAX + 1, o["port"], "--server port")
        cfg.threads = o["threads"]
        cfg.clients = o["clients"]
        cfg.pipeline = o["pipeline"]
        cfg.requests = o["requests"]
        cfg.test_time_s = o["test_time"]
        cfg.ratio_set = o["ratio_set"]
        cfg.ratio_get = o["ratio_get"]
        cfg.multiget = o["multiget"]
        _copy_str(cfg.key_prefix, BENCH_KEY_PREFIX_MAX + 1, o["key_prefix"], "--key-prefix")
        cfg.key_min = o["key_minimum"]
        cfg.key_max = o["key_maximum"]
        cfg.key_pattern_set = _lookup(_KEY_PATTERNS, o["key_pattern_set"], "--key-pattern")
        cfg.key_pattern_get = _lookup(_KEY_PATTERNS, o["key_pattern_get"], "--key-pattern")
        cfg.zipf_skew = o["zipf_skew"]
        cfg.key_median = o["key_median"]
        cfg.key_stddev = o["key_stddev"]
        sizes = o["data_size_list"]
        if sizes:
            if len(sizes) > BENCH_SIZE_LIST_MAX:
                _raise_for(BENCH_ERR_CONFIG,
                           f"--data-size-list: at most {BENCH_SIZE_LIST_MAX} entries")
            cfg.size_mode = BENCH_SIZE_LIST
            for i, (size, weight) in enumerate(sizes):
                cfg.size_list[i] = size
                cfg.size_weights[i] = weight
            cfg.size_list_len = len(sizes)
        elif o["data_size_range"] is not None:
            cfg.size_mode = BENCH_SIZE_RANGE
            cfg.data_size_min, cfg.data_size_max = o["data_size_range"]
        else:
            cfg.size_mode = BENCH_SIZE_FIXED
            cfg.data_size_min = cfg.data_size_max = o["data_size"]
        cfg.expiry_min, cfg.expiry_max = o["expiry_range"]
        cfg.protocol = _lookup(_PROTOCOLS, o["protocol"], "--protocol")
        cfg.rate = o["rate"]
        cfg.reconnect_interval = o["reconnect_interval"]
        cfg.on_error = _lookup(_ON_ERROR, o["on_error"], "--on-error")
        cfg.timeout_s = o["timeout"]
        cfg.connect_timeout_s = o["connect_timeout"]
        cfg.progress = 1 if o["progress"] else 0
        cfg.timeline_interval_s = o["timeline_interval"]
        cfg.seed = o["seed"]
    except OverflowError as exc:
        _raise_for(BENCH_ERR_CONFIG, f"option out of range: {exc}")
    except KeyError as exc:
        raise TypeError(f"_bench.run: missing option {exc}") from None


cdef dict _hist_dict(const bench_hist *h, bint with_buckets=True):
    cdef uint32_t i
    cdef uint32_t nbuckets = HIST_BUCKETS
    out = {
        "count": h.total,
        "mean_us": hist_mean_us(h),
        "min_us": h.min_ns / 1000.0 if h.total else 0.0,
        "max_us": h.max_ns / 1000.0,
    }
    for name, pct in PERCENTILES:
        out[name + "_us"] = hist_percentile_us(h, pct)
    if with_buckets:
        buckets = []
        if h.total:
            for i in range(nbuckets):
                if h.counts[i]:
                    buckets.append([hist_bucket_report_us(h, i), h.counts[i]])
        out["histogram"] = buckets
    return out


cdef double _per_sec(double n, double elapsed):
    return n / elapsed if elapsed > 0 else 0.0


cdef dict _op_dict(const bench_op_stats *s, double elapsed, bint is_get):
    out = {
        "ops": s.ops,
        "keys": s.keys,
        "errors": s.errors,
        "bytes_out": s.bytes_out,
        "bytes_in": s.bytes_in,
        "ops_per_sec": _per_sec(s.ops, elapsed),
        "kb_per_sec": _per_sec((s.bytes_in + s.bytes_out) / 1024.0, elapsed),
        "latency": _hist_dict(&s.latency),
    }
    if is_get:
        out["hits"] = s.hits
        out["misses"] = s.misses
        out["hits_per_sec"] = _per_sec(s.hits, elapsed)
        out["misses_per_sec"] = _per_sec(s.misses, elapsed)
    else:
        out["stored"] = s.stored
        out["not_stored"] = s.not_stored
    return out


cdef dict _results_dict(const bench_results *r):
    cdef double elapsed = r.elapsed_s
    cdef size_t i
    get = _op_dict(&r.get, elapsed, True)
    set_ = _op_dict(&r.set, elapsed, False)
    total_ops = r.get.ops + r.set.ops
    timeline = []
    for i in range(r.timeline_len):
        slot = r.timeline[i]
        timeline.append({
            "t": i * r.timeline_interval_s,
            "ops": slot.ops,
            "mean_us": slot.latency_sum_ns / slot.ops / 1000.0 if slot.ops else 0.0,
            "max_us": slot.latency_max_ns / 1000.0,
        })
    return {
        "elapsed_s": elapsed,
        "connections": r.connections,
        "get": get,
        "set": set_,
        "total": {
            "ops": total_ops,
            "ops_per_sec": _per_sec(total_ops, elapsed),
            "kb_per_sec": _per_sec(
                (r.get.bytes_in + r.get.bytes_out + r.set.bytes_in + r.set.bytes_out) / 1024.0,
                elapsed),
            "latency": _hist_dict(&r.total_latency),
        },
        "connect": _hist_dict(&r.connect),
        "errors": {
            "error_replies": r.get.errors + r.set.errors,
            "protocol": r.protocol_errors,
            "timeouts": r.timeouts,
            "disconnects": r.disconnects,
            "connect_failures": r.connect_errors,
            "lost": r.lost,
        },
        "reconnects": r.reconnects,
        "bytes_out": r.bytes_out,
        "bytes_in": r.bytes_in,
        "timeline": {"interval_s": r.timeline_interval_s, "slots": timeline},
    }


def run(dict options):
    """Runs the load described by `options` (pinstack.bench.run builds it).

    Returns the results dict; raises BenchError when the run could not start
    or ended early (with the partial results in .result when load ran).
    """
    cdef bench_config cfg
    cdef char err[512]
    cdef int err_kind = 0
    cdef int done = 0
    cdef bench_run *handle
    cdef const bench_results *res

    _fill_config(&cfg, options)
    err[0] = 0
    with nogil:
        handle = bench_start(&cfg, err, sizeof(err), &err_kind)
    if handle == NULL:
        _raise_for(err_kind, err.decode("utf-8", "replace"))
    try:
        while not done:
            with nogil:
                done = bench_wait(handle, 100)
            if not done:
                PyErr_CheckSignals()
    except BaseException:
        bench_stop(handle)
        with nogil:
            while bench_wait(handle, 100) == 0:
                pass
            bench_free(handle)
        raise
    try:
        res = bench_results_get(handle)
        result = _results_dict(res)
        kind = res.error_kind
        message = (<char *>res.error).decode("utf-8", "replace")
    finally:
        with nogil:
            bench_free(handle)
    if kind != BENCH_ERR_NONE:
        ran = kind not in (BENCH_ERR_CONNECT, BENCH_ERR_CONFIG)
        _raise_for(kind, message, result if ran else None)
    return result


def histogram(values_us):
    """Records `values_us` (microseconds) in a C histogram and returns its
    summary, exactly as run() reports latencies. For tests and for checking
    what a reported percentile means."""
    cdef bench_hist h
    if hist_init(&h) != 0:
        raise MemoryError()
    try:
        for v in values_us:
            us = float(v)
            if not us >= 0:
                raise ValueError(f"a latency is a number >= 0, got {v!r}")
            hist_record_ns(&h, <uint64_t>(us * 1000.0 + 0.5))
        return _hist_dict(&h)
    finally:
        hist_free(&h)
