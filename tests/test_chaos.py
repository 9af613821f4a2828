"""Random-timing chaos runs (`cookbook chaos`): a short seeded run of every driven example, and
the checker shown catching what it must catch (a duplicate effect, a changed outcome, a lost
execution), each on a broken variant."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest
from cookbook import catalog, chaos
from cookbook.crash import receivers

DRIVEN = [e for e in catalog.examples() if e.chaos is not None]
# Fixed, so a failure here is replayed with `cookbook chaos <example> --seed 2026 --executions 12
# --kills 3 --seconds 3`.
SEED = 2026


def test_the_examples_the_issue_names_are_driven() -> None:
    assert {"saga", "kafka-worker", "order-state-machine", "session"} <= {e.name for e in DRIVEN}


@pytest.mark.parametrize("example", DRIVEN, ids=[e.name for e in DRIVEN])
def test_a_short_seeded_chaos_run_passes(example: catalog.Example) -> None:
    lines: list[str] = []
    report = chaos.run(example, seed=SEED, executions=12, kills=3, seconds=3, say=lines.append)
    output = "\n".join(lines)
    assert report.failed == 0, output
    assert report.passed == 12, output
    # It was chaos: three SIGKILLs, the dev server's among them, while executions ran.
    assert len(report.kills) == 3, output
    assert any("dev server" in kill for kill in report.kills), output
    assert lines[0].startswith(f"chaos {example.name}: seed {SEED} ")
    assert lines[-1] == "12 passed, 0 failed"


def test_the_seed_fixes_the_plans_and_the_kill_schedule() -> None:
    victims = ["server", "worker", "kafka_worker.consumer"]
    first = chaos.schedule(random.Random(7), 5, 6.0, victims)
    assert first == chaos.schedule(random.Random(7), 5, 6.0, victims)
    assert first != chaos.schedule(random.Random(8), 5, 6.0, victims)
    for seed in range(50):  # whatever the seed, the server is among the victims
        assert "server" in [k.victim for k in chaos.schedule(random.Random(seed), 2, 6.0, victims)]
    assert [k.at for k in first] == sorted(k.at for k in first)
    assert all(0.6 <= k.at <= 6.0 for k in first)
    driver = chaos.load_driver(catalog.example("saga"))
    plans = [driver.plan(i, random.Random(f"7/{i}")) for i in range(20)]
    assert plans == [driver.plan(i, random.Random(f"7/{i}")) for i in range(20)]
    assert {p.kind for p in plans} == {"booked", "transient", "rolled-back"}


# -- the checker, on record sets with one thing wrong ----------------------------------------

BOOKED = {"flight.reserve": 1, "hotel.reserve": 1, "car.reserve": 1}
PLANS = [chaos.Execution(f"trip-{i}", "booked", "booked", BOOKED) for i in range(3)]


def effect(execution_id: str | None, what: str, step: int) -> dict[str, Any]:
    provider, action = what.split(".")
    key = None if execution_id is None else f"{execution_id}:{step}"
    return {"provider": provider, "action": action, "idempotency_key": key}


def sandbox(extra: Sequence[dict[str, Any]] = (), drop: str | None = None) -> receivers.Recorded:
    """What the sandbox records when every trip is booked once, plus `extra`, less `drop`."""
    records = [
        effect(p.id, what, n)
        for p in PLANS
        for n, what in enumerate(BOOKED, start=1)
        if f"{p.id}/{what}" != drop
    ]
    return {"sandbox": [*records, *extra]}


ALL_BOOKED: Mapping[str, str | None] = {p.id: "booked" for p in PLANS}


def test_a_correct_run_passes() -> None:
    verdicts, unowned = chaos.judge(PLANS, ALL_BOOKED, sandbox())
    assert [v.problems for v in verdicts] == [[], [], []]
    assert unowned == []


def test_an_effect_recorded_twice_is_reported_against_its_execution() -> None:
    # A step whose idempotency key changed between attempts (or was dropped for one that still
    # names the execution): the provider applied the booking twice.
    verdicts, _ = chaos.judge(PLANS, ALL_BOOKED, sandbox([effect("trip-1", "hotel.reserve", 9)]))
    assert [v.problems for v in verdicts] == [
        [],
        ["sandbox recorded hotel.reserve 2x: expected 1x"],
        [],
    ]


def test_an_effect_missing_is_reported() -> None:
    verdicts, _ = chaos.judge(PLANS, ALL_BOOKED, sandbox(drop="trip-2/car.reserve"))
    assert verdicts[2].problems == ["sandbox recorded car.reserve 0x: expected 1x"]


def test_an_effect_without_a_key_or_of_no_execution_is_reported() -> None:
    stray = [effect(None, "car.reserve", 0), effect("trip-9", "flight.reserve", 1)]
    verdicts, unowned = chaos.judge(PLANS, ALL_BOOKED, sandbox(stray))
    assert all(v.passed for v in verdicts)
    assert unowned == [
        "sandbox effect car.reserve with key None belongs to no execution",
        "sandbox effect flight.reserve with key 'trip-9:1' belongs to no execution",
    ]


def test_a_changed_outcome_is_reported() -> None:
    verdicts, _ = chaos.judge(PLANS, {**ALL_BOOKED, "trip-0": "rolled_back"}, sandbox())
    assert verdicts[0].problems == ["ended rolled_back: expected booked"]


def test_a_lost_execution_is_reported() -> None:
    verdicts, _ = chaos.judge(PLANS, {**ALL_BOOKED, "trip-2": None}, sandbox())
    assert verdicts[2].problems == ["did not finish: expected booked"]


def test_what_the_driver_learned_decides_the_effects_when_it_says_so() -> None:
    learned = {"trip-0": {"flight.reserve": 1}}
    verdicts, _ = chaos.judge(PLANS, ALL_BOOKED, sandbox(), learned)
    assert verdicts[0].problems == [
        "sandbox recorded car.reserve 1x: expected 0x",
        "sandbox recorded hotel.reserve 1x: expected 0x",
    ]


# -- a whole run with a broken variant of the saga's driver ------------------------------------


class BrokenSaga(chaos.Driver):
    """The saga's driver, with two things broken on purpose, one per trip: trip-000's car
    provider refuses it (its outcome changes: rolled back, not booked); trip-001's flight is
    booked a second time under another key of the trip (a step whose key changed on a retry).
    trip-002 is left alone.

    A lost execution is the third thing the checker must catch; it is shown on `settle` below,
    because a run can only call an execution lost after waiting out its whole settle window."""

    def __init__(self) -> None:
        self.saga = chaos.load_driver(catalog.example("saga"))

    def plan(self, i: int, rng: random.Random) -> chaos.Execution:
        return chaos.Execution(f"trip-{i:03d}", "booked", "booked", BOOKED)

    async def prepare(self, entry: chaos.Entry, plans: Sequence[chaos.Execution]) -> None:
        refuse = {"provider": "car", "action": "reserve", "status": 409, "key_prefix": "trip-000:"}
        response = await entry.http.post(f"{entry.stack.provider_url}/_admin/faults", json=refuse)
        response.raise_for_status()

    async def drive(self, entry: chaos.Entry, plan: chaos.Execution) -> None:
        await self.saga.drive(entry, plan)
        if plan.id == "trip-001":
            again = await entry.http.post(
                f"{entry.stack.provider_url}/flight/reserve",
                json={"traveller": "cus_7f3a9c21"},
                headers={"Idempotency-Key": "trip-001:retried-without-its-key"},
            )
            again.raise_for_status()

    async def outcome(self, entry: chaos.Entry, plan: chaos.Execution) -> str | None:
        return await self.saga.outcome(entry, plan)


def test_a_run_with_broken_executions_reports_each_and_fails() -> None:
    lines: list[str] = []
    report = chaos.run(
        catalog.example("saga"),
        seed=1,
        executions=3,
        kills=1,
        seconds=2,
        say=lines.append,
        driver=BrokenSaga(),
    )
    output = "\n".join(lines)
    problems = {v.execution.id: v.problems for v in report.verdicts}
    # Each with what it left in the sandbox too: a rolled-back trip cancelled its bookings.
    assert problems == {
        "trip-000": [
            "ended rolled_back: expected booked",
            "sandbox recorded car.reserve 0x: expected 1x",
            "sandbox recorded flight.cancel 1x: expected 0x",
            "sandbox recorded hotel.cancel 1x: expected 0x",
        ],
        "trip-001": ["sandbox recorded flight.reserve 2x: expected 1x"],
        "trip-002": [],
    }, output
    assert lines[-1] == "1 passed, 2 failed", output
    assert "  FAIL trip-001 (booked): booked" in lines, output


class FinishesOnItsThirdRead(chaos.Driver):
    """Outcomes as a slow run shows them: trip-0 is known at once, trip-1 on the third time it is
    asked, trip-2 never (lost)."""

    def __init__(self) -> None:
        self.reads: Counter[str] = Counter()

    async def outcome(self, entry: chaos.Entry, plan: chaos.Execution) -> str | None:
        self.reads[plan.id] += 1
        known_after = {"trip-0": 1, "trip-1": 3}.get(plan.id)
        return "booked" if known_after and self.reads[plan.id] >= known_after else None


def test_settling_waits_out_a_slow_execution_and_gives_up_on_a_lost_one() -> None:
    driver = FinishesOnItsThirdRead()
    entry = cast(chaos.Entry, None)  # this driver's outcomes need no running example
    began = time.monotonic()
    # Two seconds of reads every 0.25 s: more than the three this test needs, on a busy machine.
    settling = chaos.settle(entry, driver, PLANS, settle_seconds=2)
    outcomes = asyncio.run(asyncio.wait_for(settling, 15))
    assert outcomes == {"trip-0": "booked", "trip-1": "booked", "trip-2": None}
    # A known outcome is not asked for again; the lost one is asked until the window closes.
    assert driver.reads["trip-0"] == 1
    assert driver.reads["trip-1"] == 3
    assert driver.reads["trip-2"] > 3
    assert 2 <= time.monotonic() - began < 10


class SagaOnAKeylessWorker(BrokenSaga):
    """The saga's own plans and driving, on a worker whose steps send no idempotency key."""

    env: Mapping[str, str] = {"PYTHONPATH": str(catalog.repo_root())}

    def plan(self, i: int, rng: random.Random) -> chaos.Execution:
        return chaos.Execution(f"trip-{i:03d}", "booked", "booked", BOOKED)

    async def prepare(self, entry: chaos.Entry, plans: Sequence[chaos.Execution]) -> None:
        pass

    async def drive(self, entry: chaos.Entry, plan: chaos.Execution) -> None:
        await self.saga.drive(entry, plan)


def test_a_worker_whose_steps_send_no_idempotency_key_fails_the_run() -> None:
    saga = catalog.example("saga")
    keyless = dataclasses.replace(saga, worker="tests.chaos_mutant_workers")
    lines: list[str] = []
    report = chaos.run(
        keyless,
        seed=3,
        executions=3,
        kills=1,
        seconds=2,
        say=lines.append,
        driver=SagaOnAKeylessWorker(),
    )
    output = "\n".join(lines)
    # Every trip is booked, as far as the gateway can tell ...
    assert [v.outcome for v in report.verdicts] == ["booked"] * 3, output
    # ... but the provider holds bookings no trip can be matched with, and, by key, none of the
    # trips' own: at least one per booking, more if a kill made a step book again.
    stray = [p for p in report.problems if p.endswith("with key None belongs to no execution")]
    assert len(stray) >= 9, output
    assert len(stray) == len(report.problems), output
    assert all(
        "sandbox recorded flight.reserve 0x: expected 1x" in v.problems for v in report.verdicts
    ), output
    assert lines[-1] == f"0 passed, {3 + len(stray)} failed", output


@pytest.mark.parametrize(
    ("outcome", "unowned", "code"),
    [("booked", [], 0), ("rolled_back", [], 1), ("booked", ["a stray effect"], 1)],
)
def test_the_command_exits_non_zero_on_any_failure(
    monkeypatch: pytest.MonkeyPatch, outcome: str, unowned: list[str], code: int
) -> None:
    from cookbook import cli

    def run(example: catalog.Example, **_: Any) -> chaos.Report:
        verdicts, _unowned = chaos.judge(PLANS, {p.id: outcome for p in PLANS}, sandbox())
        return chaos.Report(1, verdicts, unowned, [], 0.0)

    monkeypatch.setattr(chaos, "run", run)
    assert cli.chaos_example("saga", 1, None, None, None) == code
