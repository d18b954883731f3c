"""pinstack-cache: a drop-in memcached server whose engine is C (see cli.py)."""
