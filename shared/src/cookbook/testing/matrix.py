"""The crash matrix as pytest parameters: one test per crash point (`hello[greet:sms.send/before]`).

The crash points are collected from each example's pin file (tests/crash/points/<example>.txt,
cookbook.crash.pins): collecting starts no process, and `-k hello` makes hello's golden runs
only. An example's golden runs are made when the first of its crash points (or its pin test)
runs, and each point runs against them. The pin test fails when the golden runs find other
crash points than the pinned ones; a pinned point they do not have fails, saying so.

Under pytest-xdist, an example's crash points and its pin test run in one test process (the
scheduler groups them: cookbook.testing.fixtures), which starts that example's stack (dev server
+ sandbox + ...) once and stops it at the end; an example whose runs mostly wait gets up to three
stacks, each running one point at a time (`Lanes`). Another test that needs a golden run (a README's
promise tree, tests/test_examples.py) may run in another process: golden runs are shared through
a directory the controller hands out (`share_goldens_through`), so each is made once a session.

A scenario whose golden run fails fails each of its crash points, saying which scenario and why;
an example whose `[tool.cookbook]` or pin file cannot be read is one failing test of its own.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    """A pinned crash point: run against the session's golden run of its scenario."""

    example: catalog.Example
    scenario: str
    point_id: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.example.name, self.scenario, self.point_id

    def run(self, alongside: Sequence[MatrixCase] = ()) -> CrashResult:
        """Run the crash point; with the cases this test process runs `alongside` it, on lanes.

        An example whose runs take long (its golden runs' time, summed over its points: retry
        delays, slow providers) runs its points on `lanes_for` lanes: stacks of their own, each
        running its points one at a time, so a point waiting out a delay does not hold up the
        next. The first case asks the lanes to run every case of its example in `alongside`
        (in order); each case then takes its own result.
        """
        name = self.example.name
        if name not in _lanes:
            siblings = [case for case in alongside if case.example.name == name]
            if self.key not in {case.key for case in siblings}:
                return self.run_here()
            lanes = lanes_for(sum(case.expected_seconds() for case in siblings))
            _lanes[name] = Lanes(self.example, lanes, siblings) if lanes > 1 else None
        lanes_of_example = _lanes[name]
        if lanes_of_example is None:
            return self.run_here()
        return lanes_of_example.result(self)

    def expected_seconds(self) -> float:
        """How long its run takes at least: its golden run's time (0 if that failed)."""
        golden = goldens_of(self.example).get(self.scenario)
        return golden.seconds if isinstance(golden, Golden) else 0.0

    def golden_and_point(self) -> tuple[Golden, CrashPoint]:
        golden = goldens_of(self.example).get(self.scenario)
        fix = f"if the change is deliberate, run `make pin EXAMPLE={self.example.name}`"
        if golden is None:
            raise AssertionError(
                f"{self.example.name}: scenario {self.scenario!r} is pinned, but the example "
                f"has no such scenario; {fix}"
            )
        if isinstance(golden, GoldenFailure):
            raise AssertionError(_failed(self.example.name, golden))
        point = next((p for p in golden.points if p.id == self.point_id), None)
        if point is None:
            raise AssertionError(
                f"{self.example.name}: crash point {self.point_id!r} is pinned, but the golden "
                f"run of {self.scenario!r} has no such point (its pin test shows the diff); {fix}"
            )
        return golden, point

    def run_here(self) -> CrashResult:
        """Run the crash point now, on the example's stack in this test process."""
        golden, point = self.golden_and_point()  # its errors first: they start nothing
        return _harness(self.example).run(golden, point)


# A lane costs a stack (a dev server, the services, a worker zygote: 1-3 CPU-seconds), and on
# two cores more runs at once cost more CPU each: lanes only for the matrices that mostly wait
# (retry delays, slow providers), at one per this many seconds of their golden runs' time.
SECONDS_PER_LANE = 30.0
MAX_LANES = 3


def lanes_for(expected_seconds: float) -> int:
    return max(1, min(MAX_LANES, 1 + int(expected_seconds // SECONDS_PER_LANE)))


class Lanes:
    """An example's crash points run on several stacks at once, each one's points in turn.

    Every lane is a CrashHarness on a stack of its own (dev server, sandbox, services, worker
    files), so each run is still alone on its stack: a server kill stops no other run, and what
    a receiving system recorded between a run's start and its verdict is that run's. The first
    lane is the stack the golden runs were made on, when this process made them.
    """

    def __init__(self, example: catalog.Example, lanes: int, cases: Sequence[MatrixCase]) -> None:
        self.example = example
        self._harnesses: list[CrashHarness] = []
        self._lock = threading.Lock()
        # A lane is a thread of the pool and the harness it made: it runs one point at a time.
        self._lane = threading.local()
        self._pool = ThreadPoolExecutor(lanes, thread_name_prefix=f"{example.name}-lane")
        self._results = {case.key: self._pool.submit(self._run, case) for case in cases}

    def result(self, case: MatrixCase) -> CrashResult:
        if case.key not in self._results:  # not among those asked for: queued now, not run here
            self._results[case.key] = self._pool.submit(self._run, case)
        return self._results[case.key].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for harness in self._harnesses:
            if harness is not _harnesses.get(self.example.name):
                harness.close()
                harness.stack.stop()

    def _run(self, case: MatrixCase) -> CrashResult:
        golden, point = case.golden_and_point()
        if not hasattr(self._lane, "harness"):
            self._lane.harness = self._new_lane()
        harness: CrashHarness = self._lane.harness
        return harness.run(golden, point)

    def _new_lane(self) -> CrashHarness:
        """The golden runs' harness for the first lane, if this process made them; else a new
        harness on a stack of its own."""
        with self._lock:
            first = _harnesses.get(self.example.name)
            if first is not None and first not in self._harnesses:
                self._harnesses.append(first)
                return first
        harness = CrashHarness(self.example, harness_stack(self.example).start())
        with self._lock:
            self._harnesses.append(harness)
        return harness


@dataclass(frozen=True)
class BrokenExample:
    """An example whose `[tool.cookbook]` cannot be read: one failing test instead of its matrix."""

    name: str
    reason: str

    def run(self, alongside: Sequence[object] = ()) -> CrashResult:
        raise AssertionError(self.reason)


def _failed(example_name: str, golden: Golden | GoldenFailure) -> str:
    assert isinstance(golden, GoldenFailure)
    return (
        f"{example_name}: the golden run of scenario {golden.scenario!r} failed, so its crash "
        f"points are unknown: {golden.reason}"
    )


_harnesses: dict[str, CrashHarness] = {}
# By example: its lanes, or None where its points run in place (cases decide once, in order).
_lanes: dict[str, Lanes | None] = {}
# Golden runs by example, then scenario: for the crash matrix and for the README promise-tree
# check (tests/test_examples.py), whichever asks first.
_goldens: dict[str, dict[str, Golden | GoldenFailure]] = {}
_shared_dir: Path | None = None


def share_goldens_through(directory: Path) -> None:
    """Share golden runs with the session's other test processes through `directory`."""
    global _shared_dir
    _shared_dir = directory


def stop_all() -> None:
    while _lanes:
        lanes = _lanes.pop(next(iter(_lanes)))
        if lanes is not None:
            lanes.close()
    while _harnesses:
        _stop(next(iter(_harnesses)))


def _stop(example_name: str) -> None:
    harness = _harnesses.pop(example_name)
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


def crash_matrix(example_names: list[str] | None = None) -> list[pytest.ParameterSet]:
    """pytest params for every pinned crash point of the given examples (default: all of them)."""
    params: list[pytest.ParameterSet] = []
    for example in _declared(example_names):
        if isinstance(example, BrokenExample):
            params.append(pytest.param(example, id=f"{example.name}[pyproject.toml]"))
            continue
        if not example.scenarios:
            continue
        try:
            pinned = pins.read(example)
        except (OSError, ValueError) as exc:
            reason = f"{example.name}: its pin file cannot be read ({exc}); run `make pin`"
            params.append(
                pytest.param(BrokenExample(example.name, reason), id=f"{example.name}[pins]")
            )
            continue
        params += [
            pytest.param(MatrixCase(example, scenario, point_id), id=f"{example.name}[{point_id}]")
            for scenario, point_ids in pinned.items()
            for point_id in point_ids
        ]
    return params


def pin_cases(example_names: list[str] | None = None) -> list[pytest.ParameterSet]:
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
    """The session's golden run of one scenario (made now if no test process has made it).

    A stack started here only to make the golden runs is stopped once they are made: its
    caller wants the runs, and an example's crash points may run in another test process.
    """
    started_here = example_name not in _harnesses
    goldens = goldens_of(catalog.example(example_name))
    if started_here and example_name in _harnesses:
        _stop(example_name)
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
            with _locked(example):
                _load_or_record(example)
    return _goldens[example.name]


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


def _from_json(data: dict[str, Any], example: catalog.Example) -> Golden | GoldenFailure:
    if data.get("failed"):
        return GoldenFailure(data["scenario"], data["reason"])
    return Golden.from_json(data, example)


def _scenario_of(golden: Golden | GoldenFailure) -> str:
    return golden.scenario if isinstance(golden, GoldenFailure) else golden.scenario.name


@contextmanager
def _locked(example: catalog.Example) -> Iterator[None]:
    """Hold the example's lock: one process makes its golden runs while the others wait."""
    assert _shared_dir is not None
    with open(_shared_dir / f"{example.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
