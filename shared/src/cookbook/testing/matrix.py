"""The crash matrix as pytest parameters: one test per crash point (`hello[greet:sms.send/before]`).

Crash points come from golden runs, so they are found while pytest collects. Under pytest-xdist
every test process collects, and all of them must collect the same tests: the golden runs are
therefore made once per session, each example's by whichever process gets to it first, and shared
through a directory the controller hands out (see `share_goldens_through`). Each process starts an
example's stack (dev server + sandbox + ...) when it first needs it and stops it at the end. The
process that made an example's golden runs has its stack running already: the scheduler gives it
that example's crash points when it can (`recorded_by`, cookbook.testing.fixtures).

A scenario whose golden run fails (or an example whose `[tool.cookbook]` is wrong) becomes one
failing test of that example, saying which scenario and why; every other example's crash points are
collected as usual. Each example's crash points are also compared with its pinned list (see
cookbook.crash.pins): `pin_cases` gives one test per example for that.
"""

from __future__ import annotations

import atexit
import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from cookbook import catalog
from cookbook.crash import pins
from cookbook.crash.harness import CrashHarness, CrashResult, Golden, harness_stack
from cookbook.crash.plan import CrashPoint


@dataclass(frozen=True)
class GoldenFailure:
    """A scenario whose golden run failed: its crash points are unknown."""

    scenario: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "failed": True}


@dataclass(frozen=True)
class MatrixCase:
    example: catalog.Example
    golden: Golden | GoldenFailure
    point: CrashPoint | None  # None when the golden run failed

    def run(self) -> CrashResult:
        if isinstance(self.golden, GoldenFailure) or self.point is None:
            raise AssertionError(_failed(self.example.name, self.golden))
        return _harness(self.example).run(self.golden, self.point)


@dataclass(frozen=True)
class BrokenExample:
    """An example whose `[tool.cookbook]` cannot be read: one failing test instead of its matrix."""

    name: str
    reason: str

    def run(self) -> CrashResult:
        raise AssertionError(self.reason)


def _failed(example_name: str, golden: Golden | GoldenFailure) -> str:
    assert isinstance(golden, GoldenFailure)
    return (
        f"{example_name}: the golden run of scenario {golden.scenario!r} failed, so its crash "
        f"points are unknown: {golden.reason}"
    )


_harnesses: dict[str, CrashHarness] = {}
# Golden runs by example, then scenario: for the crash matrix and for the README promise-tree
# check (tests/test_examples.py), whichever asks first.
_goldens: dict[str, dict[str, Golden | GoldenFailure]] = {}
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


def recorded_by(directory: Path, example_name: str) -> int | None:
    """The index of the test process that made the example's golden runs (None: not shared)."""
    owner = directory / f"{example_name}.owner"
    return int(owner.read_text()) if owner.is_file() else None


def stop_all() -> None:
    while _harnesses:
        harness = _harnesses.popitem()[1]
        harness.close()
        harness.stack.stop()


atexit.register(stop_all)


def _declared(example_names: list[str] | None) -> list[catalog.Example | BrokenExample]:
    """The examples to test, each one loaded on its own: one bad table breaks only its own."""
    found: list[catalog.Example | BrokenExample] = []
    for path in sorted((catalog.repo_root() / "examples").iterdir()):
        if not catalog.declares_example(path):
            continue
        if example_names is not None and path.name not in example_names:
            continue
        try:
            found.append(catalog.load_example(path))
        except catalog.CatalogError as exc:
            found.append(BrokenExample(path.name, str(exc)))
    return found


def crash_matrix(example_names: list[str] | None = None) -> list[object]:
    """pytest params for every crash point of the given examples (default: all of them)."""
    declared = _declared(example_names)
    examples = [e for e in declared if isinstance(e, catalog.Example) and e.scenarios]
    _make_goldens(examples)
    params: list[object] = [
        pytest.param(broken, id=f"{broken.name}[pyproject.toml]")
        for broken in declared
        if isinstance(broken, BrokenExample)
    ]
    for example in examples:
        group = pytest.mark.xdist_group(example.name)
        for name, golden in goldens_of(example).items():
            if isinstance(golden, GoldenFailure):
                case = MatrixCase(example, golden, None)
                params.append(pytest.param(case, id=f"{example.name}[{name}/golden-run]"))
                continue
            params += [
                pytest.param(
                    MatrixCase(example, golden, point),
                    id=f"{example.name}[{point.id}]",
                    marks=group,
                )
                for point in golden.points
            ]
    return params


def pin_cases(example_names: list[str] | None = None) -> list[object]:
    """pytest params, one per example with scenarios, for the comparison with its pinned points."""
    return [
        pytest.param(e, id=e.name)
        for e in _declared(example_names)
        if isinstance(e, catalog.Example) and e.scenarios
    ]


def pin_drift(example: catalog.Example) -> list[str]:
    """How the crash points of the session's golden runs differ from the example's pin file."""
    found = {
        name: None if isinstance(golden, GoldenFailure) else [p.id for p in golden.points]
        for name, golden in goldens_of(example).items()
    }
    return pins.drift(example, found)


def golden_run(example_name: str, scenario_name: str) -> Golden:
    """The session's golden run of one scenario (made now if no test process has made it)."""
    goldens = goldens_of(catalog.example(example_name))
    if scenario_name not in goldens:
        raise catalog.CatalogError(f"{example_name} has no scenario {scenario_name!r}")
    golden = goldens[scenario_name]
    if isinstance(golden, GoldenFailure):
        raise AssertionError(_failed(example_name, golden))
    return golden


def goldens_of(example: catalog.Example) -> dict[str, Golden | GoldenFailure]:
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


def _record(example: catalog.Example) -> dict[str, Golden | GoldenFailure]:
    """The example's golden runs; one that fails is kept as the reason why, not raised."""
    found: dict[str, Golden | GoldenFailure] = {}
    for scenario in example.scenarios:
        try:
            found[scenario.name] = _harness(example).golden(scenario)
        except Exception as exc:
            found[scenario.name] = GoldenFailure(scenario.name, f"{type(exc).__name__}: {exc}")
    return found


def _load_or_record(example: catalog.Example) -> None:
    """With the lock held: load the example's golden runs if shared already, else make, share."""
    assert _shared_dir is not None
    path = _shared_dir / f"{example.name}.json"
    if path.exists():
        shared = [_from_json(data, example) for data in json.loads(path.read_text())]
        _goldens[example.name] = {_scenario_of(golden): golden for golden in shared}
        return
    _goldens[example.name] = _record(example)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps([g.to_json() for g in _goldens[example.name].values()]))
    partial.replace(path)  # readers see the whole file or none
    (_shared_dir / f"{example.name}.owner").write_text(str(_rotation))


def _from_json(data: dict[str, Any], example: catalog.Example) -> Golden | GoldenFailure:
    if data.get("failed"):
        return GoldenFailure(data["scenario"], data["reason"])
    return Golden.from_json(data, example)


def _scenario_of(golden: Golden | GoldenFailure) -> str:
    return golden.scenario if isinstance(golden, GoldenFailure) else golden.scenario.name


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
