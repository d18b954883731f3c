"""Type stub for pinstack._core._cache (built from src/_core/cache/_cache.pyx).

It lives here, beside where the compiled module is installed, because type
checkers look for a stub next to the module, not next to its .pyx source.
"""

from typing import Any

def default_settings() -> dict[str, Any]:
    """The engine's defaults, keyed by ps_settings field name.

    Values are int, float or bool, except "listen_addr": list[str].
    """

def validate(settings: dict[str, Any]) -> None:
    """The engine's checks (settings_validate), starting nothing.

    Raises ValueError with the engine's message for unacceptable settings.
    """

def run(settings: dict[str, Any]) -> None:
    """Start a server with `settings`, serve until stop(), then clean up.

    Raises ValueError for an unknown key or a bad value, RuntimeError with the
    engine's message when the server cannot start.
    """

def stop() -> None:
    """Ask the running server to stop (safe from a signal handler). Idempotent."""

def port() -> int:
    """The bound TCP port of the first listener."""

def version() -> str:
    """The engine's version, e.g. "1.6.18-pinstack-0.1.0"."""

# ---- microbenchmarks (src/_core/cache/microbench.c) ------------------------
# The engine's hot paths run n times in a C loop. One engine per process:
# open refuses while a server runs here, run() refuses while one is open.
# Every call must come from the thread that opened it. Failures raise
# RuntimeError with the engine's message.

def microbench_open(keys: int = 100_000, value_size: int = 100, memory_mb: int = 1024) -> None:
    """Build a thread-less engine holding `keys` keys of `value_size` bytes."""

def microbench_close() -> None:
    """Free it; a server may be started in this process afterwards."""

def microbench_item_alloc_free(value_size: int, n: int) -> int:
    """item_alloc + item_release of a `value_size`-byte value, n times; returns n."""

def microbench_hash_lookup(hit: bool, n: int) -> int:
    """n hash-table lookups of present (hit) or absent keys; returns the keys found."""

def microbench_proto_get(hit: bool, n: int) -> int:
    """n "get <key>" commands through an in-memory connection; returns the reply bytes."""

def microbench_proto_set(n: int) -> int:
    """n "set <key> 0 0 <value_size>" commands replacing stored keys; returns the reply bytes."""
