"""tiered-batch end to end: a real dev server, a worker process, the provider sandbox.

Order and concurrency are asserted on the provider's own clock: the start and end time the sandbox
recorded for every call it received, failed attempts included.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections import Counter
from typing import Any

import pytest
from cookbook import clients
from cookbook.sandbox.store import RequestRecord
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from resonate.resonate import Resonate
from tiered_batch.workflow import MAX_IN_FLIGHT, TIERS, InvalidBatchError

TIMEOUT = 30


@pytest.fixture
def resonate_url(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> str:
    start_worker(
        "tiered_batch.worker",
        {"RESONATE_URL": devserver.url, "PROVIDER_API_URL": sandbox.url, "PATH": "/usr/bin:/bin"},
    )
    return devserver.url


def new_execution_id() -> str:
    return f"tiered-batch-test-{secrets.token_hex(4)}"


def job(job_id: str, priority: str) -> dict[str, str]:
    return {"id": job_id, "priority": priority, "task": f"do {job_id}"}


def add_fault(sandbox: RunningSandbox, key_prefix: str, **spec: Any) -> None:
    response = clients.post(
        f"{sandbox.url}/_admin/faults", json={"provider": "api", "key_prefix": key_prefix, **spec}
    )
    response.raise_for_status()


def process_batch(url: str, execution_id: str, jobs: list[dict[str, str]]) -> Any:
    async def run() -> Any:
        client = Resonate(url=url, group="tiered-batch-tests")
        try:
            handle = client.options(target="tiered-batch").rpc(execution_id, "process_batch", jobs)
            return await asyncio.wait_for(handle.result(), TIMEOUT)
        finally:
            await client.stop()

    return asyncio.run(run())


def receipts_recorded(sandbox: RunningSandbox, execution_id: str) -> dict[str, str]:
    """The provider's id for each job it ran for this execution; no job ran twice."""
    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    jobs = [e.body["job"] for e in effects]
    assert len(jobs) == len(set(jobs)), f"a job ran twice: {jobs}"
    return {e.body["job"]: e.resource_id for e in effects}


def most_in_flight(calls: list[RequestRecord]) -> int:
    # +1 at each start, -1 at each finish; a finish sorts before a start at the same instant.
    events = sorted([(c.started_at, 1) for c in calls] + [(c.finished_at, -1) for c in calls])
    level = peak = 0
    for _, change in events:
        level += change
        peak = max(peak, level)
    return peak


def test_tiers_run_strictly_in_order_at_most_two_at_a_time(
    resonate_url: str, sandbox: RunningSandbox
) -> None:
    execution_id = new_execution_id()
    jobs = [
        job("low-1", "low"),
        job("high-1", "high"),
        job("critical-1", "critical"),
        job("normal-1", "normal"),
        job("critical-2", "critical"),
        job("high-2", "high"),
        job("low-2", "low"),
        job("critical-3", "critical"),
        job("high-3", "high"),
        job("low-3", "low"),
    ]
    add_fault(sandbox, execution_id + ":", mode="latency", latency_ms=150)

    result = process_batch(resonate_url, execution_id, jobs)

    receipts = result["receipts"]
    assert result == {"receipts": receipts_recorded(sandbox, execution_id), "refused": {}}
    # Tier by tier, and in the order given within a tier.
    assert list(receipts) == [j["id"] for tier in TIERS for j in jobs if j["priority"] == tier]
    calls = sandbox.records.requests(key_prefix=execution_id + ":")
    rank = {tier: TIERS.index(tier) for tier in TIERS}
    for higher, lower in itertools.product(calls, calls):
        if rank[higher.body["priority"]] < rank[lower.body["priority"]]:
            assert higher.finished_at < lower.started_at, (
                f"{lower.body} started before {higher.body}"
            )
    # The window, on the providers' clock: never more than two at once. (Whether it fills to two
    # here depends on how busy the machine is: the in-process tests prove it does.)
    assert 1 <= most_in_flight(calls) <= MAX_IN_FLIGHT == 2


@pytest.mark.parametrize("status", [503, 429, 408])
def test_a_failing_job_retries_without_rerunning_completed_jobs(
    resonate_url: str, sandbox: RunningSandbox, status: int
) -> None:
    execution_id = new_execution_id()
    jobs = [job("a", "critical"), job("b", "high"), job("c", "high"), job("d", "normal")]
    # Steps are numbered in the order the jobs start: c is step 3, running alongside b.
    add_fault(sandbox, f"{execution_id}:3", mode="fail_times", times=2, status=status)

    result = process_batch(resonate_url, execution_id, jobs)

    assert result == {"receipts": receipts_recorded(sandbox, execution_id), "refused": {}}
    assert list(result["receipts"]) == ["a", "b", "c", "d"]
    calls = sandbox.records.requests(key_prefix=execution_id + ":")
    assert Counter(c.body["job"] for c in calls) == {"a": 1, "b": 1, "c": 3, "d": 1}
    assert [c.status_code for c in calls if c.body["job"] == "c"] == [status, status, 200]
    # The next tier waited for the retried job.
    [d] = [c for c in calls if c.body["job"] == "d"]
    assert d.started_at > max(c.finished_at for c in calls if c.body["job"] == "c")


@pytest.mark.parametrize("status", [400, 403, 422])
def test_a_refused_job_is_a_result_asked_once_and_the_next_tier_goes_on(
    resonate_url: str, sandbox: RunningSandbox, status: int
) -> None:
    execution_id = new_execution_id()
    jobs = [job("a", "critical"), job("b", "high"), job("c", "high"), job("d", "normal")]
    add_fault(sandbox, f"{execution_id}:3", mode="fail_always", status=status)  # job c

    result = process_batch(resonate_url, execution_id, jobs)

    assert result == {
        "receipts": receipts_recorded(sandbox, execution_id),
        "refused": {"c": f"{status} injected failure"},
    }
    assert list(result["receipts"]) == ["a", "b", "d"]
    calls = sandbox.records.requests(key_prefix=execution_id + ":")
    assert Counter(c.body["job"] for c in calls) == {"a": 1, "b": 1, "c": 1, "d": 1}


@pytest.mark.parametrize(
    ("jobs", "problem"),
    [
        ([], "the batch is empty"),
        (
            [job("a", "critical"), job("b", "urgent")],
            "unknown priority ('b' has 'urgent'); known: critical, high, normal, low",
        ),
        ([job("a", "critical"), job("b", "high"), job("a", "low")], "duplicate job id 'a'"),
    ],
    ids=["empty", "unknown-priority", "duplicate-id"],
)
def test_an_invalid_batch_is_rejected_before_any_job_runs(
    resonate_url: str,
    devserver: RunningDevServer,
    sandbox: RunningSandbox,
    jobs: list[dict[str, str]],
    problem: str,
) -> None:
    execution_id = new_execution_id()

    with pytest.raises(InvalidBatchError) as rejected:
        process_batch(resonate_url, execution_id, jobs)

    assert str(rejected.value) == f"invalid batch: {problem}"
    assert sandbox.records.requests(key_prefix=execution_id + ":") == []
    # Not one step was created: the journal holds the execution's own promise only.
    assert {e["promise_id"] for e in devserver.journal(execution_id)} == {execution_id}
