"""A percentile and a millisecond figure, as every table shows them."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: with 20 samples, p95 is the 19th smallest."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def ms(seconds: float) -> str:
    # Plain Python's steps take nanoseconds: those get two significant digits.
    millis = seconds * 1000
    return f"{millis:.3f}" if millis >= 0.01 else f"{millis:.2g}"
