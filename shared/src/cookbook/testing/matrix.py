"""The crash matrix as pytest parameters: one test per crash point (`hello[greet:sms.send/before]`).

Crash points come from golden runs, so they are found while pytest collects. Under pytest-xdist
every test process collects, and all of them must collect the same tests: the golden runs are
therefore made once per session, each example's by whichever process gets to it first, and shared
through a directory the controller hands out (see `share_goldens_through`). Each process starts an
example's stack (dev server + sandbox + ...) when it first needs it and stops it at the end.
"""

from __future__ import annotations

import atexit
import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cookbook import catalog
from cookbook.crash.harness import CrashHarness, CrashResult, Golden, harness_stack
from cookbook.crash.plan import CrashPoint


@dataclass(frozen=True)
class MatrixCase:
    example: catalog.Example
    golden: Golden
    point: CrashPoint

    def run(self) -> CrashResult:
        return _harness(self.example).run(self.golden, self.point)


_harnesses: dict[str, CrashHarness] = {}
# Golden runs by example, then scenario: for the crash matrix and for the README promise-tree
# check (tests/test_examples.py), whichever asks first.
_goldens: dict[str, dict[str, Golden]] = {}
_shared_dir: Path | None = None
_rotation = 0


def share_goldens_through(directory: Path, worker_index: int) -> None:
    """Share golden runs with the session's other test processes through `directory`.

    `worker_index` staggers where each process starts, so that they make different examples'
    golden runs at the same time rather than queueing for the same one.
    """
    global _shared_dir, _rotation
    _shared_dir = directory
    _rotation = worker_index


def stop_all() -> None:
    while _harnesses:
        harness = _harnesses.popitem()[1]
        harness.close()
        harness.stack.stop()


atexit.register(stop_all)


def crash_matrix(example_names: list[str] | None = None) -> list[object]:
    """pytest params for every crash point of the given examples (default: all of them)."""
    examples = [
        e
        for e in catalog.examples()
        if e.scenarios and (example_names is None or e.name in example_names)
    ]
    _make_goldens(examples)
    return [
        pytest.param(
            MatrixCase(example, golden, point),
            id=f"{example.name}[{point.id}]",
            marks=pytest.mark.xdist_group(example.name),
        )
        for example in examples
        for golden in goldens_of(example).values()
        for point in golden.points
    ]


def golden_run(example_name: str, scenario_name: str) -> Golden:
    """The session's golden run of one scenario (made now if no test process has made it)."""
    goldens = goldens_of(catalog.example(example_name))
    if scenario_name not in goldens:
        raise catalog.CatalogError(f"{example_name} has no scenario {scenario_name!r}")
    return goldens[scenario_name]


def goldens_of(example: catalog.Example) -> dict[str, Golden]:
    if example.name not in _goldens:
        if _shared_dir is None:
            _goldens[example.name] = _record(example)
        else:
            with _locked(example, wait=True):
                _load_or_record(example)
    return _goldens[example.name]


def _make_goldens(examples: list[catalog.Example]) -> None:
    """Make the golden runs nobody has made yet, then wait for those others are making."""
    if _shared_dir is not None and examples:
        start = _rotation % len(examples)
        for example in examples[start:] + examples[:start]:
            if example.name in _goldens:
                continue
            with _locked(example, wait=False) as mine:
                if mine:
                    _load_or_record(example)
    for example in examples:
        goldens_of(example)


def _harness(example: catalog.Example) -> CrashHarness:
    if example.name not in _harnesses:
        _harnesses[example.name] = CrashHarness(example, harness_stack(example).start())
    return _harnesses[example.name]


def _record(example: catalog.Example) -> dict[str, Golden]:
    harness = _harness(example)
    return {scenario.name: harness.golden(scenario) for scenario in example.scenarios}


def _load_or_record(example: catalog.Example) -> None:
    """With the lock held: load the example's golden runs if shared already, else make, share."""
    assert _shared_dir is not None
    path = _shared_dir / f"{example.name}.json"
    if path.exists():
        shared = (Golden.from_json(data, example) for data in json.loads(path.read_text()))
        _goldens[example.name] = {golden.scenario.name: golden for golden in shared}
        return
    _goldens[example.name] = _record(example)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps([g.to_json() for g in _goldens[example.name].values()]))
    partial.replace(path)  # readers see the whole file or none


@contextmanager
def _locked(example: catalog.Example, *, wait: bool) -> Iterator[bool]:
    """Hold the example's lock (yields True), or, if `wait` is false and it is taken, False."""
    assert _shared_dir is not None
    with open(_shared_dir / f"{example.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
