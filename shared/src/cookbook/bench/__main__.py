"""`python -m cookbook.bench`: a benchmark child process."""

import sys

from cookbook.bench.child import child_main

child_main(sys.argv[1:])
