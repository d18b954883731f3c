"""pinstack: memcached-compatible caching (and, later, realtime search) on a C core."""

from ._version import __version__

__all__ = ["__version__"]
