"""`python -m pinstack.leaf` runs the same command line as `pinstack-leaf`."""

import sys

from .cli import main

sys.exit(main())
