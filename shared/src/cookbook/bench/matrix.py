"""Crash-matrix throughput: crash points per minute over one example's matrix."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cookbook import catalog


@dataclass
class MatrixFigures:
    example: str
    points: int
    passed: int
    seconds: float

    @property
    def per_minute(self) -> float:
        return self.points * 60 / self.seconds if self.seconds > 0 else 0.0


def measure_crash_matrix(example_name: str, say: Callable[[str], None]) -> MatrixFigures:
    """The example's whole matrix, golden runs included, exactly as `cookbook crash` runs it."""
    from cookbook.crash.harness import CrashHarness, harness_stack

    example = catalog.example(example_name)
    points = passed = 0
    started = time.perf_counter()
    with harness_stack(example) as stack, CrashHarness(example, stack) as harness:
        for scenario in example.scenarios:
            golden = harness.golden(scenario)
            for point in golden.points:
                result = harness.run(golden, point)
                points += 1
                passed += result.passed
    seconds = time.perf_counter() - started
    say(f"  {example_name}: {points} crash points ({passed} passed) in {seconds:.1f}s")
    return MatrixFigures(example_name, points, passed, seconds)
