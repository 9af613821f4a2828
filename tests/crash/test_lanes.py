"""An example's crash points on lanes: several stacks at once, each running one point at a time."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from cookbook import catalog
from cookbook.crash.harness import CrashResult, Golden, Outcome
from cookbook.crash.plan import Checkpoint, CrashPoint
from cookbook.testing import matrix

HELLO = catalog.example("hello")
STEPS = [Checkpoint(f":{n}", "step", f"sms.send#{n}", suspended_on=False) for n in range(1, 4)]
LANES = 3


class FakeStack:
    def start(self) -> FakeStack:
        return self

    def stop(self) -> None:
        pass


class Harnesses:
    """Stands in for CrashHarness: records which harness ran which point, and how many at once."""

    def __init__(self, lanes: int) -> None:
        self.made: list[Any] = []
        self.problems: list[str] = []
        self._lock = threading.Lock()
        # The first `lanes` runs wait for each other: they pass only if they run at once.
        self._together = threading.Barrier(lanes, timeout=10)
        self._runs = 0

    def __call__(self, example: catalog.Example, stack: FakeStack) -> Any:
        harnesses = self
        running = [0]

        class Harness:
            stack = FakeStack()

            def run(self, golden: Golden, point: CrashPoint) -> CrashResult:
                with harnesses._lock:
                    running[0] += 1
                    if running[0] > 1:
                        harnesses.problems.append(f"two runs at once on one stack ({point.id})")
                    harnesses._runs += 1
                    first_round = harnesses._runs <= LANES
                try:
                    if first_round:
                        harnesses._together.wait()
                    return CrashResult(point, worker_pids=[harnesses.made.index(self)])
                finally:
                    with harnesses._lock:
                        running[0] -= 1

            def close(self) -> None:
                pass

        harness = Harness()
        self.made.append(harness)
        return harness


@pytest.fixture
def cases(monkeypatch: pytest.MonkeyPatch) -> list[matrix.MatrixCase]:
    """Hello's points (of a golden run with three steps), each a case; no stack is started."""
    scenario = HELLO.scenarios[0]
    golden = Golden(scenario, "golden-id", Outcome("resolved", "'sent'"), STEPS, Counter(), 0.5)
    monkeypatch.setattr(matrix, "_goldens", {"hello": {scenario.name: golden}})
    monkeypatch.setattr(matrix, "_harnesses", {})
    monkeypatch.setattr(matrix, "_lanes", {})
    monkeypatch.setattr(matrix, "harness_stack", lambda example: FakeStack())
    return [matrix.MatrixCase(HELLO, scenario.name, point.id) for point in golden.points]


def test_each_case_gets_its_own_points_result_from_lanes_that_run_at_once(
    cases: list[matrix.MatrixCase], monkeypatch: pytest.MonkeyPatch
) -> None:
    harnesses = Harnesses(LANES)
    monkeypatch.setattr(matrix, "CrashHarness", harnesses)
    monkeypatch.setattr(
        matrix, "SECONDS_PER_LANE", sum(c.expected_seconds() for c in cases) / LANES
    )
    try:
        results = [case.run(cases) for case in cases]
    finally:
        matrix.stop_all()

    assert [r.point.id for r in results] == [case.point_id for case in cases]
    assert len(harnesses.made) == LANES, "one stack per lane"
    assert set(Counter(r.worker_pids[0] for r in results)) == set(range(LANES)), "a lane idled"
    assert harnesses.problems == []


def test_a_case_whose_point_the_golden_run_lacks_fails_alone(
    cases: list[matrix.MatrixCase], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(matrix, "CrashHarness", Harnesses(LANES))
    monkeypatch.setattr(matrix, "SECONDS_PER_LANE", 0.5)
    missing = matrix.MatrixCase(HELLO, cases[0].scenario, "greet:no-such-step/before")
    alongside = [missing, *cases]
    try:
        with pytest.raises(AssertionError, match="has no such point"):
            missing.run(alongside)
        assert [case.run(alongside).point.id for case in cases] == [c.point_id for c in cases]
    finally:
        matrix.stop_all()


def test_a_case_run_alone_or_among_few_runs_in_place(
    cases: list[matrix.MatrixCase], monkeypatch: pytest.MonkeyPatch
) -> None:
    harnesses = Harnesses(1)
    monkeypatch.setattr(matrix, "CrashHarness", harnesses)
    monkeypatch.setattr(matrix, "SECONDS_PER_LANE", 1_000.0)  # all of them make one lane
    try:
        assert cases[0].run(cases).point.id == cases[0].point_id
        assert cases[1].run().point.id == cases[1].point_id
        assert matrix._lanes == {"hello": None}  # decided once: no lanes
        assert len(harnesses.made) == 1
    finally:
        matrix.stop_all()


def test_lanes_grow_with_the_time_the_runs_take_up_to_a_limit() -> None:
    assert matrix.lanes_for(matrix.SECONDS_PER_LANE - 1) == 1
    assert matrix.lanes_for(matrix.SECONDS_PER_LANE) == 2
    assert matrix.lanes_for(10_000) == matrix.MAX_LANES
