"""The crash matrix as pytest parameters: one test per crash point (`hello[greet:sms.send/before]`).

Crash points come from golden runs, so they are found while pytest collects: one stack (dev
server + sandbox) per example is started then, reused by that example's tests, and stopped when
the session ends.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import pytest

from cookbook import catalog
from cookbook.crash.harness import CrashHarness, Golden
from cookbook.crash.plan import CrashPoint
from cookbook.stack import Stack, stack_for


@dataclass(frozen=True)
class MatrixCase:
    harness: CrashHarness
    golden: Golden
    point: CrashPoint


_stacks: list[Stack] = []


def _stop_stacks() -> None:
    while _stacks:
        _stacks.pop().stop()


atexit.register(_stop_stacks)


def crash_matrix(example_names: list[str] | None = None) -> list[object]:
    """pytest params for every crash point of the given examples (default: all of them)."""
    params: list[object] = []
    environ = {k: v for k, v in os.environ.items() if k != "RESONATE_URL"}
    for example in catalog.examples():
        if example_names is not None and example.name not in example_names:
            continue
        if not example.scenarios:
            continue
        stack = stack_for(example.services, fast_recovery=True, environ=environ)
        _stacks.append(stack.start())
        harness = CrashHarness(example, stack)
        for scenario in example.scenarios:
            golden = harness.golden(scenario)
            for point in golden.points:
                params.append(
                    pytest.param(
                        MatrixCase(harness, golden, point), id=f"{example.name}[{point.id}]"
                    )
                )
    return params


def stop_all() -> None:
    _stop_stacks()
