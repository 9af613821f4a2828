"""`process_batch` in process: the SDK's `resonate.testing` and a fake provider.

These tests need only the SDK, this package and pytest: they run in a copy of this folder
outside the cookbook (`uv sync` then `uv run pytest tests`). The tests that drive a real dev
server, worker processes and the provider sandbox are in tests/cookbook/ and run in the cookbook.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import pytest
from resonate.dependencies import DependencyMap
from resonate.retry import Never
from resonate.testing import local_resonate, resolved_promise, root_context
from tiered_batch.steps import Job, JobResult, Providers, ProviderUnavailableError, run_job
from tiered_batch.workflow import (
    MAX_IN_FLIGHT,
    RETRY,
    TIERS,
    BatchResult,
    InvalidBatchError,
    process_batch,
)

JOBS = [
    Job("a", "low", "t"),
    Job("b", "critical", "t"),
    Job("c", "normal", "t"),
    Job("d", "critical", "t"),
    Job("e", "critical", "t"),
    Job("f", "high", "t"),
]


def runs(job: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": f"{job}-{attempt}"}


@dataclass
class FakeProvider:
    """Answers by rule, `answer(job, attempt at it)`, after a short while (so jobs overlap).

    Records every request, how many were in flight at most, and which jobs had answered
    when each one started.
    """

    answer: Callable[[str, int], tuple[int, dict[str, Any]]] = runs
    calls: list[tuple[str, str]] = field(default_factory=list)
    answered_before: dict[str, set[str]] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    in_flight: int = 0
    most_in_flight: int = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        job = json.loads(request.content)["job"]
        self.calls.append((job, request.headers["Idempotency-Key"]))
        self.answered_before.setdefault(job, set(self.answered))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.05)
        self.in_flight -= 1
        self.answered.add(job)
        status, body = self.answer(job, sum(1 for called, _ in self.calls if called == job))
        return httpx.Response(status, json=body)

    def jobs(self) -> list[str]:
        return [job for job, _ in self.calls]


def run_batch(provider: FakeProvider, jobs: list[Job] = JOBS) -> BatchResult:
    """`process_batch` on an in-process Resonate (no server, no worker); retries take no time."""

    async def go() -> BatchResult:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(provider.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                resonate.with_dependency(Providers(client))
                resonate.register(process_batch, retry_policy=Never())
                handle = resonate.run("batch-1", process_batch, jobs)
                result: BatchResult = await asyncio.wait_for(handle.result(), 30)
                return result
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_tiers_run_highest_first_each_done_before_the_next_two_jobs_at_a_time() -> None:
    provider = FakeProvider()

    result = run_batch(provider)

    assert provider.jobs() == ["b", "d", "e", "f", "c", "a"]
    assert provider.most_in_flight == MAX_IN_FLIGHT
    tier_of = {job.id: job.priority for job in JOBS}
    for job, answered in provider.answered_before.items():
        higher = {j.id for j in JOBS if TIERS.index(j.priority) < TIERS.index(tier_of[job])}
        assert higher <= answered, f"{job} started before {higher - answered} had answered"
    assert result.receipts == {job.id: f"{job.id}-1" for job in JOBS}
    assert len({key for _, key in provider.calls}) == len(JOBS)


def test_a_refused_job_is_its_result_asked_once_and_the_batch_goes_on() -> None:
    provider = FakeProvider(
        lambda job, attempt: (409, {"error": "already done"}) if job == "d" else runs(job, attempt)
    )

    result = run_batch(provider)

    assert result.refused == {"d": "409 already done"}
    assert provider.jobs().count("d") == 1
    assert len(result.receipts) == len(JOBS) - 1


def test_a_provider_that_is_down_for_a_moment_is_asked_again_with_the_same_key() -> None:
    provider = FakeProvider(
        lambda job, attempt: (429, {}) if job == "f" and attempt == 1 else runs(job, attempt)
    )

    result = run_batch(provider)

    assert result.receipts["f"] == "f-2"
    assert len({key for job, key in provider.calls if job == "f"}) == 1


def test_a_job_down_past_its_retries_fails_the_batch_and_no_lower_tier_starts() -> None:
    provider = FakeProvider(lambda job, attempt: (503, {}) if job == "f" else runs(job, attempt))

    with pytest.raises(ProviderUnavailableError, match="f: answered 503"):
        run_batch(provider)

    assert provider.jobs().count("f") == 1 + RETRY.max_retries
    assert "c" not in provider.jobs()
    assert "a" not in provider.jobs()


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (lambda _: httpx.Response(200, html="<html>Bad Gateway</html>"), "without a readable"),
        (lambda _: httpx.Response(200, json={"ok": True}), "HTTP 200 without a readable 'id'"),
        (  # httpx decodes the body as it builds the response, and raises DecodingError
            lambda _: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
            "DecodingError",
        ),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_job_answered_without_its_receipt_may_have_run(
    answer: Callable[[httpx.Request], httpx.Response], reason: str
) -> None:
    # A 2xx that is not the provider's answer says nothing of whether it ran the job: not a bug
    # in the step, but a call to retry under the same key, like a timeout.
    async def go() -> JobResult:
        transport = httpx.MockTransport(answer)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            return await run_job(root_context(id="batch-1.1", deps=deps), Job("a", "high", "t"))

    with pytest.raises(ProviderUnavailableError, match=reason):
        asyncio.run(go())


@pytest.mark.parametrize(
    ("jobs", "reason"),
    [
        ([], "the batch is empty"),
        ([Job("a", "urgent", "t")], "unknown priority"),
        ([Job("a", "low", "t"), Job("a", "high", "t")], "duplicate job id 'a'"),
    ],
)
def test_a_batch_it_cannot_run_is_refused_before_any_job(jobs: list[Job], reason: str) -> None:
    provider = FakeProvider()

    with pytest.raises(InvalidBatchError, match=reason):
        run_batch(provider, jobs)
    assert provider.calls == []


def test_a_replay_runs_only_the_jobs_the_journal_has_no_result_for() -> None:
    """After a crash with the first two critical jobs checkpointed."""
    provider = FakeProvider()
    journal = [
        resolved_promise("batch-1:1", asdict(JobResult(receipt="b-journal"))),
        resolved_promise("batch-1:2", asdict(JobResult(receipt="d-journal"))),
    ]

    async def replay() -> BatchResult:
        transport = httpx.MockTransport(provider.handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            ctx = root_context(id="batch-1", preload=journal, deps=deps)
            return await process_batch(ctx, JOBS)

    result = asyncio.run(replay())

    assert provider.jobs() == ["e", "f", "c", "a"]
    assert result.receipts["b"] == "b-journal"
    assert result.receipts["d"] == "d-journal"
