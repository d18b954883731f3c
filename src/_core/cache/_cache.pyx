# cython: language_level=3
"""
_cache.pyx - the thin Python face of the pinstack-cache engine.

Wraps server.h and settings.h and nothing else: the engine owns all server
logic, this file only translates.

  default_settings()  the engine's defaults (settings_init_defaults) as a dict
  validate(settings)  the engine's checks (settings_validate), nothing started
  run(settings)       dict -> ps_settings, cache_server_start(), then wait for
                      the stop with the GIL released, running Python signal
                      handlers between waits, then cache_server_cleanup()
  stop()              cache_server_stop(): safe from a signal handler or any
                      thread
  port(), version()   the bound port, PS_CACHE_VERSION
  microbench_*()      microbench.h: the engine's hot paths in a C loop, for
                      tests/test_microbench.py; open/close build and free a
                      thread-less engine in this process

Settings dict keys are the ps_settings field names. listen_addr is a list of
strings (num_listen follows from its length); everything else is a number or
a bool. Unknown keys and bad values raise ValueError, naming the key.

Threads: run() is called from the main thread (Python runs signal handlers
only there). It holds the GIL only between 200 ms waits, so stop() from a
signal handler takes effect within one wait.

The engine's state is global: one server or one microbench engine per
process at a time. _running and _microbench_open (flags read and written
under the GIL) refuse the other while one is up. The microbench loops keep
the GIL: they are short, and no run() can start meanwhile.
"""

from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset, strlen


cdef extern from "settings.h":
    enum:
        PS_MAX_LISTEN

    # Layout lives in settings.h; Cython needs only the names and types.
    # `verbose` is `_Atomic int` in C: plain reads and writes of it are
    # seq_cst atomic accesses, which is what we want.
    ctypedef struct ps_settings:
        int port
        int udpport
        char listen_addr[16][64]
        int num_listen
        int backlog
        int maxconns
        int num_threads
        int reqs_per_event
        int idle_timeout
        size_t read_buf_size
        size_t max_line_len
        size_t maxbytes
        size_t item_size_max
        double factor
        int chunk_size
        size_t slab_page_size
        size_t slab_chunk_max
        bint lock_memory
        bint evict_to_free
        bint use_cas
        bint flush_enabled
        int hashpower_init
        bint slab_reassign
        int slab_automove
        double slab_automove_ratio
        int slab_automove_window
        bint lru_maintainer
        bint lru_segmented
        int hot_lru_pct
        int warm_lru_pct
        double hot_max_factor
        double warm_max_factor
        bint temp_lru
        int temporary_ttl
        int tail_repair_time
        bint lru_crawler
        int lru_crawler_sleep
        uint32_t lru_crawler_tocrawl
        int verbose

    void settings_init_defaults(ps_settings *s) nogil


cdef extern from "server.h":
    const char *PS_CACHE_VERSION

    int settings_validate(const ps_settings *s, char *err, size_t errlen) nogil
    int cache_server_start(const ps_settings *s, char *err, size_t errlen) nogil
    int cache_server_wait(int timeout_ms) nogil
    void cache_server_stop() nogil
    void cache_server_cleanup() nogil
    int cache_server_port() nogil


cdef extern from "microbench.h":
    int mb_open(uint32_t keys, uint32_t value_size, size_t memory_mb)
    int mb_close()
    int64_t mb_item_alloc_free(size_t value_size, uint64_t n)
    int64_t mb_hash_lookup(bint hit, uint64_t n)
    int64_t mb_proto_get(bint hit, uint64_t n)
    int64_t mb_proto_set(uint64_t n)
    const char *mb_error()


# The array sizes declared above must match settings.h; checked by the C
# compiler, so a change to the header cannot silently truncate addresses.
cdef extern from *:
    """
    _Static_assert(sizeof(((ps_settings *)0)->listen_addr)
                       == PS_MAX_LISTEN * 64,
                   "_cache.pyx: listen_addr declaration out of date");
    """


cdef enum:
    # How long one GIL-free wait lasts: the worst-case delay between a signal
    # and its Python handler running.
    WAIT_SLICE_MS = 200
    # Bytes of an address in listen_addr, including the terminating NUL.
    LISTEN_ADDR_SIZE = 64

cdef bint _running = False
cdef bint _microbench_open = False


cdef dict _settings_to_dict(const ps_settings *s):
    return {
        "port": s.port,
        "udpport": s.udpport,
        "listen_addr": [
            (<bytes>s.listen_addr[i]).decode("utf-8", "surrogateescape")
            for i in range(s.num_listen)
        ],
        "backlog": s.backlog,
        "maxconns": s.maxconns,
        "num_threads": s.num_threads,
        "reqs_per_event": s.reqs_per_event,
        "idle_timeout": s.idle_timeout,
        "read_buf_size": s.read_buf_size,
        "max_line_len": s.max_line_len,
        "maxbytes": s.maxbytes,
        "item_size_max": s.item_size_max,
        "factor": s.factor,
        "chunk_size": s.chunk_size,
        "slab_page_size": s.slab_page_size,
        "slab_chunk_max": s.slab_chunk_max,
        "lock_memory": s.lock_memory,
        "evict_to_free": s.evict_to_free,
        "use_cas": s.use_cas,
        "flush_enabled": s.flush_enabled,
        "hashpower_init": s.hashpower_init,
        "slab_reassign": s.slab_reassign,
        "slab_automove": s.slab_automove,
        "slab_automove_ratio": s.slab_automove_ratio,
        "slab_automove_window": s.slab_automove_window,
        "lru_maintainer": s.lru_maintainer,
        "lru_segmented": s.lru_segmented,
        "hot_lru_pct": s.hot_lru_pct,
        "warm_lru_pct": s.warm_lru_pct,
        "hot_max_factor": s.hot_max_factor,
        "warm_max_factor": s.warm_max_factor,
        "temp_lru": s.temp_lru,
        "temporary_ttl": s.temporary_ttl,
        "tail_repair_time": s.tail_repair_time,
        "lru_crawler": s.lru_crawler,
        "lru_crawler_sleep": s.lru_crawler_sleep,
        "lru_crawler_tocrawl": s.lru_crawler_tocrawl,
        "verbose": s.verbose,
    }


cdef int _as_bool(object value) except -1:
    # Strict: a typo like "no" or "0" must not turn a feature on.
    if value is True or value is False or (type(value) is int and value in (0, 1)):
        return 1 if value else 0
    raise TypeError(f"expected a bool, got {value!r}")


cdef int _set_listen(ps_settings *s, object addrs) except -1:
    cdef bytes encoded
    if isinstance(addrs, (str, bytes)) or not isinstance(addrs, (list, tuple)):
        raise TypeError(f"expected a list of address strings, got {addrs!r}")
    if len(addrs) > PS_MAX_LISTEN:
        raise ValueError(f"at most {PS_MAX_LISTEN} listen addresses, got {len(addrs)}")
    memset(s.listen_addr, 0, sizeof(s.listen_addr))
    for i, addr in enumerate(addrs):
        if not isinstance(addr, str):
            raise TypeError(f"expected an address string, got {addr!r}")
        encoded = addr.encode("utf-8")
        if not encoded or b"\0" in encoded or len(encoded) >= LISTEN_ADDR_SIZE:
            raise ValueError(
                f"listen address {addr!r} must be 1..{LISTEN_ADDR_SIZE - 1} bytes"
            )
        memcpy(s.listen_addr[i], <const char *>encoded, len(encoded))  # NUL from memset
    s.num_listen = len(addrs)
    return 0


cdef int _set_field(ps_settings *s, str key, object value) except -1:
    if key == "port": s.port = value
    elif key == "udpport": s.udpport = value
    elif key == "listen_addr": _set_listen(s, value)
    elif key == "backlog": s.backlog = value
    elif key == "maxconns": s.maxconns = value
    elif key == "num_threads": s.num_threads = value
    elif key == "reqs_per_event": s.reqs_per_event = value
    elif key == "idle_timeout": s.idle_timeout = value
    elif key == "read_buf_size": s.read_buf_size = value
    elif key == "max_line_len": s.max_line_len = value
    elif key == "maxbytes": s.maxbytes = value
    elif key == "item_size_max": s.item_size_max = value
    elif key == "factor": s.factor = value
    elif key == "chunk_size": s.chunk_size = value
    elif key == "slab_page_size": s.slab_page_size = value
    elif key == "slab_chunk_max": s.slab_chunk_max = value
    elif key == "lock_memory": s.lock_memory = _as_bool(value)
    elif key == "evict_to_free": s.evict_to_free = _as_bool(value)
    elif key == "use_cas": s.use_cas = _as_bool(value)
    elif key == "flush_enabled": s.flush_enabled = _as_bool(value)
    elif key == "hashpower_init": s.hashpower_init = value
    elif key == "slab_reassign": s.slab_reassign = _as_bool(value)
    elif key == "slab_automove": s.slab_automove = value
    elif key == "slab_automove_ratio": s.slab_automove_ratio = value
    elif key == "slab_automove_window": s.slab_automove_window = value
    elif key == "lru_maintainer": s.lru_maintainer = _as_bool(value)
    elif key == "lru_segmented": s.lru_segmented = _as_bool(value)
    elif key == "hot_lru_pct": s.hot_lru_pct = value
    elif key == "warm_lru_pct": s.warm_lru_pct = value
    elif key == "hot_max_factor": s.hot_max_factor = value
    elif key == "warm_max_factor": s.warm_max_factor = value
    elif key == "temp_lru": s.temp_lru = _as_bool(value)
    elif key == "temporary_ttl": s.temporary_ttl = value
    elif key == "tail_repair_time": s.tail_repair_time = value
    elif key == "lru_crawler": s.lru_crawler = _as_bool(value)
    elif key == "lru_crawler_sleep": s.lru_crawler_sleep = value
    elif key == "lru_crawler_tocrawl": s.lru_crawler_tocrawl = value
    elif key == "verbose": s.verbose = value
    else:
        raise ValueError(f"unknown setting {key!r}")
    return 0


cdef int _settings_from_dict(ps_settings *s, dict values) except -1:
    """Defaults, then every entry of `values`: the one error translator."""
    memset(s, 0, sizeof(ps_settings))
    settings_init_defaults(s)
    for key, value in values.items():
        if not isinstance(key, str):
            raise ValueError(f"setting names are strings, got {key!r}")
        try:
            _set_field(s, key, value)
        except (TypeError, OverflowError) as exc:
            raise ValueError(f"setting {key!r}: bad value {value!r} ({exc})") from None
    return 0


def default_settings():
    """The engine's defaults (memcached's, unless settings.h says why not)."""
    cdef ps_settings s
    memset(&s, 0, sizeof(s))
    settings_init_defaults(&s)
    return _settings_to_dict(&s)


def validate(dict settings not None):
    """Check `settings` as cache_server_start() will, starting nothing.

    Raises ValueError with the engine's message if they are not acceptable.
    """
    cdef ps_settings s
    cdef char err[512]
    _settings_from_dict(&s, settings)
    err[0] = 0
    if settings_validate(&s, err, sizeof(err)) != 0:
        message = err[:strlen(err)].decode("utf-8", "replace")
        raise ValueError(message or "invalid settings")


def run(dict settings not None):
    """Start a server with `settings`, serve until stop(), then clean up.

    Raises ValueError for a bad settings dict and RuntimeError with the
    engine's message if the server cannot start (e.g. the port is in use).
    An exception raised by a signal handler stops the server before it
    propagates.
    """
    global _running
    cdef ps_settings s
    cdef char err[512]
    cdef int rc

    _settings_from_dict(&s, settings)
    if _running:
        raise RuntimeError("a pinstack-cache server is already running in this process")
    if _microbench_open:
        raise RuntimeError("a microbench engine is open in this process: microbench_close() first")
    _running = True     # before the GIL is dropped: no second run() meanwhile
    err[0] = 0
    with nogil:
        rc = cache_server_start(&s, err, sizeof(err))
    if rc != 0:
        _running = False
        message = err[:strlen(err)].decode("utf-8", "replace")
        raise RuntimeError(message or "cache_server_start failed")

    try:
        while True:
            with nogil:
                rc = cache_server_wait(WAIT_SLICE_MS)
            if rc:
                break
            PyErr_CheckSignals()  # runs handlers; raises what they raise
    except BaseException:
        cache_server_stop()
        with nogil:
            while cache_server_wait(WAIT_SLICE_MS) == 0:
                pass
        raise
    finally:
        cache_server_cleanup()
        _running = False


def stop():
    """Ask the running server to stop; run() returns once it has. Idempotent."""
    cache_server_stop()


def port():
    """The bound TCP port of the first listener (meaningful while running)."""
    return cache_server_port()


def version():
    """The engine's version string, e.g. "1.6.18-pinstack-0.1.0"."""
    return (<bytes>PS_CACHE_VERSION).decode("ascii")


# ---- microbenchmarks (microbench.h) -------------------------------------

cdef int64_t _mb_check(int64_t rc) except -1:
    """The one translator of microbench failures."""
    if rc < 0:
        raise RuntimeError((<bytes>mb_error()).decode("utf-8", "replace") or "microbench failed")
    return rc


def microbench_open(uint32_t keys=100_000, uint32_t value_size=100, size_t memory_mb=1024):
    """Build a thread-less engine with `keys` keys of `value_size` bytes.

    Raises RuntimeError if a server runs in this process, if one is already
    open, or if the engine cannot be built (the message says why).
    """
    global _microbench_open
    if _running:
        raise RuntimeError("a pinstack-cache server is running in this process")
    _mb_check(mb_open(keys, value_size, memory_mb))
    _microbench_open = True


def microbench_close():
    """Free the microbench engine (from the thread that opened it)."""
    global _microbench_open
    _mb_check(mb_close())
    _microbench_open = False


def microbench_item_alloc_free(size_t value_size, uint64_t n):
    """item_alloc + item_release of a `value_size`-byte value, n times; returns n."""
    return _mb_check(mb_item_alloc_free(value_size, n))


def microbench_hash_lookup(bint hit, uint64_t n):
    """n hash-table lookups of present (hit) or absent keys; returns keys found."""
    return _mb_check(mb_hash_lookup(hit, n))


def microbench_proto_get(bint hit, uint64_t n):
    """n "get <key>" commands through a connection; returns the reply bytes."""
    return _mb_check(mb_proto_get(hit, n))


def microbench_proto_set(uint64_t n):
    """n "set <key> 0 0 <value_size>" commands; returns the reply bytes."""
    return _mb_check(mb_proto_set(n))
