"""The crash points, for the Flask and Django apps' processes too.

The crash harness kills "the worker" at every checkpoint of a scenario, and here the worker is a
web process: `[tool.cookbook] worker` names the FastAPI app's, whose matrix tests/test_crash_matrix
runs over every scenario. This module hands the same harness the same table with the Flask app's
module, then the Django app's, and runs the booked scenario's crash points on each: a SIGKILL
before a step and after its effect, the Resonate server killed after a checkpoint, and a process
stalled (SIGSTOP) mid-step. Each time, another process of the same app finishes the booking,
with one hold and one email in the sandbox.

`make test` runs one point of each phase per app (each costs a process start-up, seconds on a
busy machine); the rest of the scenario's points are `slow` (`make test-slow` runs them all).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from cookbook import catalog
from cookbook.crash import pins
from cookbook.crash.harness import CrashHarness, Golden, harness_stack

APPS = {"flask": "webservers.flask_app", "django": "webservers.django_app"}
SCENARIO = "booked"
PINNED = pins.parse(pins.pin_path(catalog.example("webservers")).read_text())[SCENARIO]
IN_MAKE_TEST = {
    "booked:inventory.reserve/after-effect",
    "booked:email.send/before",
    "booked:email.send/server-kill",
    "booked:inventory.reserve/stall",
}


@dataclasses.dataclass(frozen=True)
class AppMatrix:
    harness: CrashHarness
    golden: Golden


@pytest.fixture(scope="module", params=list(APPS))
def matrix(request: pytest.FixtureRequest) -> Iterator[AppMatrix]:
    example = dataclasses.replace(catalog.example("webservers"), worker=APPS[request.param])
    scenario = next(s for s in example.scenarios if s.name == SCENARIO)
    with harness_stack(example) as stack, CrashHarness(example, stack) as harness:
        yield AppMatrix(harness, harness.golden(scenario))


def test_the_golden_run_finds_the_pinned_crash_points(matrix: AppMatrix) -> None:
    assert [point.id for point in matrix.golden.points] == PINNED


@pytest.mark.parametrize(
    "point_id",
    [pytest.param(p, marks=() if p in IN_MAKE_TEST else pytest.mark.slow) for p in PINNED],
)
def test_recovers_from_crash(matrix: AppMatrix, point_id: str) -> None:
    point = next(p for p in matrix.golden.points if p.id == point_id)

    result = matrix.harness.run(matrix.golden, point)

    assert result.passed, "\n".join(result.problems)
