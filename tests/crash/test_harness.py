"""The crash harness on a workflow with every kind of checkpoint, including a latent promise."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cookbook.catalog import Example, Scenario
from cookbook.crash.harness import CrashHarness, Golden, Outcome
from cookbook.stack import Stack
from resonate.types import PromiseRecord, Value

ROOT = Path(__file__).parents[2]
APPROVAL = Scenario("approve", "approval", [5], signals=[{"verdict": "approved"}])
EXAMPLE = Example(
    name="harness-selftest",
    path=Path(__file__).parent,
    worker="tests.devserver.workflows",
    group="devserver-tests",
    demo=None,
    gateway=None,
    services=(),
    scenarios=(APPROVAL,),
)


@pytest.fixture(scope="module")
def harness() -> Iterator[CrashHarness]:
    # The harness runs workers in a directory of their own: say where the test workflows are.
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    with (
        Stack(sandbox=False, fast_recovery=True, environ=environ) as stack,
        CrashHarness(EXAMPLE, stack) as harness,
    ):
        yield harness


@pytest.fixture(scope="module")
def golden(harness: CrashHarness) -> Golden:
    return harness.golden(APPROVAL)


def test_the_golden_run_finds_every_kind_of_checkpoint(golden: Golden) -> None:
    assert golden.outcome.value == "'approved 5'"
    assert [(c.kind, c.suspended_on) for c in golden.checkpoints] == [
        ("step", False),
        ("promise", True),
        ("sleep", True),
        ("step", False),
    ]
    assert [p.id for p in golden.points] == [
        "approve:step#1/before",
        "approve:step#1/after-effect",
        "approve:step#1/server-kill",
        "approve:promise/suspended",
        "approve:promise/server-kill",
        "approve:sleep/suspended",
        "approve:sleep/server-kill",
        "approve:step#2/before",
        "approve:step#2/after-effect",
        "approve:step#2/server-kill",
        "approve:step#1/stall",
        "approve:step#2/stall",
    ]


@pytest.mark.parametrize("phase", ["approve:promise/suspended", "approve:sleep/server-kill"])
def test_recovers_while_suspended(harness: CrashHarness, golden: Golden, phase: str) -> None:
    point = next(p for p in golden.points if p.id == phase)
    result = harness.run(golden, point)
    assert result.passed, result.problems


def test_a_golden_run_survives_the_trip_through_json(golden: Golden) -> None:
    # Parallel test processes share golden runs as JSON (cookbook.testing.matrix).
    with_effects = replace(golden, effects=Counter({(":1", "sms", "send"): 1}))
    shared = json.loads(json.dumps(with_effects.to_json()))
    assert Golden.from_json(shared, EXAMPLE) == with_effects


def test_the_worker_that_took_over_starts_the_next_run(
    harness: CrashHarness, golden: Golden
) -> None:
    points = {p.id: p for p in golden.points}
    worker_kill = harness.run(golden, points["approve:step#2/after-effect"])
    server_kill = harness.run(golden, points["approve:step#1/server-kill"])
    after = harness.run(golden, points["approve:step#1/before"])

    assert all(run.passed for run in (worker_kill, server_kill, after))
    killed, took_over = worker_kill.worker_pids
    assert server_kill.worker_pids == [took_over]  # kept running; the server died instead
    assert after.worker_pids[0] == took_over
    assert killed not in after.worker_pids


def test_a_signal_whose_delivery_fails_is_delivered_again(harness: CrashHarness) -> None:
    # A server-kill crash point kills the dev server while the harness may be answering a latent
    # promise; the signal must still arrive once the server is back, not be dropped with the
    # failed call (the workflow would then wait for it forever).
    async def run() -> Outcome:
        client = harness._client()
        resolve = client.promises.resolve
        failures = [ConnectionError("the dev server is restarting")]

        async def flaky_resolve(id: str, value: Value) -> PromiseRecord:
            if failures:
                raise failures.pop()
            return await resolve(id, value)

        # No hook in the SDK for this: the method is replaced, on this client only.
        client.promises.resolve = flaky_resolve  # type: ignore[method-assign]
        try:
            worker = harness._first_worker()
            execution_id = harness._new_id(APPROVAL, "flaky-signal")
            handle = await harness._start(client, APPROVAL, execution_id)
            async with harness._signalling(client, APPROVAL, execution_id):
                outcome = await asyncio.wait_for(Outcome.of(handle), 30)
            harness._keep_for_next_run(worker)
            assert not failures, "the failing delivery was never tried"
            return outcome
        finally:
            await client.stop()

    assert asyncio.run(run()) == Outcome("resolved", "'approved 5'")


def test_on_a_server_that_skips_time_each_signal_arrives_before_time_skips() -> None:
    # The moment the workflow suspends on the decision, nothing is leased: a server that skips
    # time fires the decision's timeout (its workflow's, a day) at its next tick, unless the
    # harness holds time while a signal is owed. A delivery slowed down as on a loaded machine
    # makes the race visible; the 200 ms sleep after the decision is still skipped.
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    skipping = replace(EXAMPLE, skip_time=True)

    async def run(harness: CrashHarness) -> Outcome:
        client = harness._client()
        resolve = client.promises.resolve

        async def slow_resolve(id: str, value: Value) -> PromiseRecord:
            await asyncio.sleep(0.5)  # five dev-server ticks
            return await resolve(id, value)

        # No hook in the SDK for this: the method is replaced, on this client only.
        client.promises.resolve = slow_resolve  # type: ignore[method-assign]
        try:
            worker = harness._first_worker()
            execution_id = harness._new_id(APPROVAL, "skipping")
            handle = await harness._start(client, APPROVAL, execution_id)
            async with harness._signalling(client, APPROVAL, execution_id):
                outcome = await asyncio.wait_for(Outcome.of(handle), 30)
            harness._keep_for_next_run(worker)
            return outcome
        finally:
            await client.stop()

    with (
        Stack(sandbox=False, fast_recovery=True, environ=environ, skip_time=True) as stack,
        CrashHarness(skipping, stack) as harness,
    ):
        assert asyncio.run(run(harness)) == Outcome("resolved", "'approved 5'")


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_the_worker_that_takes_over_is_forked_from_the_zygote(
    harness: CrashHarness, golden: Golden
) -> None:
    # A fresh process all the same: forked after the kill, by a zygote that has run nothing.
    points = {p.id: p for p in golden.points}
    result = harness.run(golden, points["approve:step#1/before"])
    assert result.passed, result.problems
    killed, took_over = result.worker_pids
    assert not Path(f"/proc/{killed}").exists()
    parent = _parent_of(took_over)
    assert parent != os.getpid()
    command = Path(f"/proc/{parent}/cmdline").read_text().split("\0")
    assert command[1:4] == ["-m", "cookbook.crash.zygote", harness.example.worker]
