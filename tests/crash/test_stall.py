"""The `stall` phase: a worker stopped mid-step, its lease lapsed, the run finished by another
worker, then the stopped worker continued: its late writes are refused, its late effect deduped."""

from __future__ import annotations

from typing import Any

import pytest
from cookbook import clients
from cookbook.crash.harness import CrashHarness, accepted_late_writes
from cookbook.devserver.tripwires import TripwireError, Tripwires

from tests.crash.conftest import BOOK, WITHOUT_KEY, run_at


def stalled_execution(harness: CrashHarness) -> tuple[str, list[dict[str, Any]]]:
    """The last execution the dev server stalled a worker in, and its journal."""
    journal = clients.get(harness.stack.resonate_url + "/_cookbook/journal").json()["entries"]
    (execution_id, *_) = [
        e["promise_id"] for e in reversed(journal) if e["corr_id"] == "devserver-stall"
    ]
    return execution_id, [e for e in journal if e["promise_id"].startswith(execution_id)]


@pytest.mark.parametrize("step", [1, 2])
def test_a_stalled_worker_is_fenced_off_when_it_comes_back(
    mutants_harness: CrashHarness, step: int
) -> None:
    result = run_at(mutants_harness, mutants_harness.golden(BOOK), step, "stall")

    assert result.passed, result.problems
    assert len(result.worker_pids) == 2
    execution_id, journal = stalled_execution(mutants_harness)
    lapsed = next(e["seq"] for e in journal if e["corr_id"] == "devserver-stall")
    # After its lease lapsed, the run was finished by the other worker; the stalled worker then
    # tried to store its step's result and gave the task up: both refused.
    late = [(e["kind"], e["promise_id"], e["status"]) for e in journal if e["status"] >= 400]
    assert late == [
        ("task.fence", f"{execution_id}:{step}", 409),
        ("task.release", execution_id, 409),
    ]
    assert all(e["seq"] > lapsed for e in journal if e["status"] >= 400)


def test_a_stalled_step_without_a_key_books_twice_and_the_matrix_says_so(
    mutants_harness: CrashHarness,
) -> None:
    # The stalled worker's late call and the new worker's call are two bookings at the provider.
    result = run_at(mutants_harness, mutants_harness.golden(WITHOUT_KEY), 1, "stall")

    assert not result.passed
    assert any(
        p.startswith("receiving system 'sandbox'")
        and 'extra 1x {"action": "reserve", "idempotency_key": null, "provider": "flight"}' in p
        for p in result.problems
    ), result.problems


def test_late_writes_the_server_accepted_are_reported() -> None:
    journal = [
        {"seq": 7, "operation": "settle", "promise_id": "x", "status": 200},  # the run's end
        {"seq": 8, "operation": "settle", "promise_id": "x:1", "status": 409},  # fenced off
        {"seq": 9, "operation": "release", "promise_id": "x", "status": 200},
        {"seq": 10, "operation": "settle", "promise_id": "x:2", "status": 200},  # not fenced
    ]

    assert accepted_late_writes(journal, 7, "x") == ["settle :2 (200)"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"action": "pause"}, "action: must be 'kill' or 'stall'"),
        ({"action": "stall", "victim": "server"}, "action: only a worker can be stalled"),
    ],
)
def test_a_stall_wire_is_validated(spec: dict[str, object], message: str) -> None:
    wire = {"operation": "create", "promise_id": "x:1", "pid": 12345, **spec}

    with pytest.raises(TripwireError, match=message):
        Tripwires().arm(wire)
