"""In a copy of this folder outside the cookbook there is no harness: the tests that need it
(tests/cookbook/) are not collected there, and the portable ones run."""

from importlib.util import find_spec

# This folder's own tests/cookbook/ is importable as a namespace package named `cookbook` (no
# file of its own, so no origin); the harness is a regular package.
_harness = find_spec("cookbook")
collect_ignore = [] if _harness is not None and _harness.origin is not None else ["cookbook"]
