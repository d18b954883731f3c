"""The package version: the single source of truth.

setup.py reads this file (it does not import the package) and passes the
value to the C core as -DPS_PACKAGE_VERSION, so the server's "version"
command and `pinstack-cache --version` always agree with the wheel.
"""

__version__ = "0.1.0"
