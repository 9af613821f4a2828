"""A dependency of tests.crash.zygote_probe: remembers which process imported it."""

import os

IMPORTED_BY = os.getpid()
