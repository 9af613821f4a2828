"""Every verdict of the crash matrix fails on a worker broken in the way it guards against.

The workers are in tests/crash/broken_workers.py: a correct two-step workflow (an email, then an
SMS, through the provider sandbox) and four broken variants of it. The correct one runs at every
crash point; each broken one at every point where a worker dies (a server kill leaves the worker
running and replays nothing), so the test shows in which phases each check catches it, and that
it passes where the bug cannot show (before a step completed there is nothing to run again).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cookbook.catalog import Example, Scenario
from cookbook.crash import pins
from cookbook.crash.harness import CrashHarness, Golden
from cookbook.stack import Stack

ROOT = Path(__file__).parents[2]
WORKFLOWS = ("correct", "forgetful", "double_keyed", "dropped", "different")
BROKEN = Example(
    name="broken-workers",
    path=Path(__file__).parent,
    worker="tests.crash.broken_workers",
    group="broken-workers",
    demo=None,
    gateway=None,
    services=("sandbox",),
    scenarios=tuple(Scenario(name, name, []) for name in WORKFLOWS),
)

# The phases whose verdicts this module shows failing; other phases have their own tests.
KILL_PHASES = ("before", "after-effect", "server-kill")
RAN_AGAIN = "checkpoints completed before the kill ran again: email.send (:1)"
EFFECT_TWICE = (
    "effects differ from the golden run: missing {}, extra {(':1.again', 'email', 'send'): 1}"
)
RESULT = "'email': '<effect:1>', 'sms': '<effect:2>', 'steps run by this worker'"
DIFFERENT_RESULT = (
    f"the outcome differs from the golden run's: resolved {{{RESULT}: 1}}, "
    f"not resolved {{{RESULT}: 2}}"
)

# Per workflow, the crash points it must fail and the problem each reports (among others, if
# another check sees the same bug); every other crash point of the workflow must pass.
EXPECTED_FAILURES: dict[str, dict[str, str]] = {
    "correct": {},
    # A re-run shows only once a step completed before the kill: killed as the worker asks to
    # create the SMS step (its request never reaches the journal) or to store its result.
    "forgetful": {
        "forgetful:sms.send/before": RAN_AGAIN,
        "forgetful:sms.send/after-effect": RAN_AGAIN,
    },
    # The email is sent again only when its step runs again after it was sent.
    "double_keyed": {"double_keyed:email.send/after-effect": EFFECT_TWICE},
    # The result differs only when the recovering worker got the email from the journal.
    "different": {
        "different:sms.send/before": DIFFERENT_RESULT,
        "different:sms.send/after-effect": DIFFERENT_RESULT,
    },
    # A dropped step passes every crash point it has left: only the pins catch it (below).
    "dropped": {},
}


@pytest.fixture(scope="module")
def harness() -> Iterator[CrashHarness]:
    # The harness runs workers in a directory of their own: say where the test workers are.
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    with (
        Stack(sandbox=True, fast_recovery=True, environ=environ) as stack,
        CrashHarness(BROKEN, stack) as harness,
    ):
        yield harness


@pytest.fixture(scope="module")
def goldens(harness: CrashHarness) -> dict[str, Golden]:
    return {s.name: harness.golden(s) for s in BROKEN.scenarios}


@pytest.mark.parametrize("workflow", [w for w in WORKFLOWS if w != "dropped"])
def test_the_matrix_fails_each_broken_worker_where_its_bug_shows(
    harness: CrashHarness, goldens: dict[str, Golden], workflow: str
) -> None:
    golden = goldens[workflow]
    points = [p for p in golden.points if p.phase in KILL_PHASES]
    assert [p.id.removeprefix(f"{workflow}:") for p in points] == [
        f"{step}/{phase}"
        for step in ("email.send", "sms.send")
        for phase in ("before", "after-effect", "server-kill")
    ]

    failures = {}
    for point in points:
        if workflow != "correct" and point.phase == "server-kill":
            continue  # keeps the module near a minute; the correct worker shows this phase
        result = harness.run(golden, point)
        if not result.passed:
            failures[point.id] = result.problems

    expected = EXPECTED_FAILURES[workflow]
    assert sorted(failures) == sorted(expected)
    for point_id, problem in expected.items():
        assert problem in failures[point_id], f"{point_id}: {failures[point_id]}"


def test_a_dropped_step_passes_its_matrix_and_fails_its_pins(
    harness: CrashHarness, goldens: dict[str, Golden], tmp_path: Path
) -> None:
    golden = goldens["dropped"]
    worker_kills = [p for p in golden.points if p.phase in ("before", "after-effect")]
    assert all(harness.run(golden, point).passed for point in worker_kills)
    # What the pin file says the workflow had before its SMS step was dropped.
    pinned = [
        f"dropped:{step}/{phase}"
        for step in ("email.send", "sms.send")
        for phase in ("before", "after-effect", "server-kill")
    ]
    pin_file = tmp_path / "broken-workers.txt"
    pin_file.write_text(pins.render(BROKEN, {"dropped": pinned}))

    found = [p.id for p in golden.points if p.phase in KILL_PHASES]
    problems = pins.drift(BROKEN, {"dropped": found}, pin_file)

    assert problems[0].splitlines() == [
        f"{pin_file}: the crash points of 'dropped' differ:",
        "--- pinned [dropped]",
        "+++ golden run [dropped]",
        "@@ -1,6 +1,3 @@",
        " dropped:email.send/before",
        " dropped:email.send/after-effect",
        " dropped:email.send/server-kill",
        "-dropped:sms.send/before",
        "-dropped:sms.send/after-effect",
        "-dropped:sms.send/server-kill",
        "if the change is deliberate, run `make pin EXAMPLE=broken-workers` and commit it",
    ]
