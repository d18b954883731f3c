"""`python -m pinstack.cache` runs the same command line as `pinstack-cache`."""

import sys

from .cli import main

sys.exit(main())
