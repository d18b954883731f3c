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
