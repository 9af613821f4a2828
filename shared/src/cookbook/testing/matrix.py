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
# Golden runs by (example, scenario): made once per session, for the crash matrix and for the
# README promise-tree check (tests/test_examples.py), whichever asks first.
_goldens: dict[tuple[str, str], Golden] = {}


def _stop_stacks() -> None:
    while _stacks:
        _stacks.pop().stop()


atexit.register(_stop_stacks)


def crash_matrix(example_names: list[str] | None = None) -> list[object]:
    """pytest params for every crash point of the given examples (default: all of them)."""
    params: list[object] = []
    for example in catalog.examples():
        if example_names is not None and example.name not in example_names:
            continue
        if not example.scenarios:
            continue
        harness = _harness(example)
        for scenario in example.scenarios:
            golden = _golden(harness, scenario)
            for point in golden.points:
                params.append(
                    pytest.param(
                        MatrixCase(harness, golden, point), id=f"{example.name}[{point.id}]"
                    )
                )
    return params


def _harness(example: catalog.Example) -> CrashHarness:
    environ = {k: v for k, v in os.environ.items() if k != "RESONATE_URL"}
    stack = stack_for(example.services, fast_recovery=True, environ=environ)
    _stacks.append(stack.start())
    return CrashHarness(example, stack)


def _golden(harness: CrashHarness, scenario: catalog.Scenario) -> Golden:
    key = (harness.example.name, scenario.name)
    if key not in _goldens:
        _goldens[key] = harness.golden(scenario)
    return _goldens[key]


def golden_run(example_name: str, scenario_name: str) -> Golden:
    """The session's golden run of one scenario (made now, on a stack of its own, if need be)."""
    key = (example_name, scenario_name)
    if key not in _goldens:
        example = catalog.example(example_name)
        scenario = next((s for s in example.scenarios if s.name == scenario_name), None)
        if scenario is None:
            raise catalog.CatalogError(f"{example_name} has no scenario {scenario_name!r}")
        harness = _harness(example)
        try:
            _golden(harness, scenario)
        finally:
            _stacks.remove(harness.stack)
            harness.stack.stop()
    return _goldens[key]


def stop_all() -> None:
    _stop_stacks()
