"""`job` in process: the SDK's own `resonate.testing`, the sandbox's `api` provider faked on
`httpx.MockTransport`.

What the example is about, the spread over a group and a killed worker's jobs moving, needs real
worker processes: that is tests/cookbook/ (cookbook only). These cover the job each worker runs,
and need only the SDK, this package and pytest: they run in a copy of this folder outside the
cookbook (`make copy-out-load-balancing`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from load_balancing.steps import Providers, ProviderUnavailableError
from load_balancing.workflow import STEP_RETRIES, job
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.retry import Never
from resonate.testing import local_resonate, resolved_promise, root_context


@pytest.fixture(autouse=True)
def no_work_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's work waits `JOB_WORK_SECONDS` (1 s) to hold jobs in flight; not here."""
    monkeypatch.setenv("JOB_WORK_SECONDS", "0")


@dataclass
class FakeSandbox:
    """Answers each note by rule: `answer(phase, attempt) -> (status, JSON body)` or a whole
    response."""

    answer: Callable[[str, int], tuple[int, dict[str, Any]] | httpx.Response]
    notes: list[tuple[str, str]] = field(default_factory=list)  # (phase, idempotency key)

    def handle(self, request: httpx.Request) -> httpx.Response:
        phase = json.loads(request.content)["phase"]
        self.notes.append((phase, request.headers["Idempotency-Key"]))
        answer = self.answer(phase, [p for p, _ in self.notes].count(phase))
        if isinstance(answer, httpx.Response):
            return answer
        status, body = answer
        return httpx.Response(status, json=body)

    def phases(self) -> list[str]:
        return [phase for phase, _ in self.notes]


def ok(phase: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": f"note_{phase}"}


DIGEST_7 = hashlib.sha256(b"job-7").hexdigest()[:12]


def run_job(sandbox: FakeSandbox) -> dict[str, Any]:
    """Job 7 on an in-process Resonate registered as the worker does."""

    async def go() -> dict[str, Any]:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(sandbox.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as c:
                resonate.with_dependency(Providers(c))
                resonate.register(job, retry_policy=Never())
                result: dict[str, Any] = await asyncio.wait_for(
                    resonate.run("job-7", job, 7).result(), 30
                )
                return result
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_a_job_notes_its_start_and_end_once_each_under_its_own_key() -> None:
    sandbox = FakeSandbox(ok)

    result = run_job(sandbox)

    assert result == {"job": 7, "digest": DIGEST_7, "started": "noted", "finished": "noted"}
    assert sandbox.phases() == ["started", "finished"]
    assert len({key for _, key in sandbox.notes}) == 2


def test_a_note_an_earlier_attempt_landed_from_another_worker_is_done() -> None:
    """409: the key holds a note differing only by the dead worker's pid."""
    sandbox = FakeSandbox(lambda phase, attempt: (409, {"error": "key reused"}))

    result = run_job(sandbox)

    assert result["started"] == "noted"
    assert sandbox.phases() == ["started", "finished"]  # not retried


def test_a_refusal_is_reported_in_the_result_and_not_retried() -> None:
    def answer(phase: str, attempt: int) -> tuple[int, dict[str, Any]]:
        return (403, {"error": "quota exceeded"}) if phase == "started" else ok(phase, attempt)

    sandbox = FakeSandbox(answer)

    result = run_job(sandbox)

    assert result["started"] == "refused: 403 quota exceeded"
    assert result["finished"] == "noted"
    assert sandbox.phases() == ["started", "finished"]


def test_a_sandbox_that_is_down_is_asked_again_under_the_same_key() -> None:
    def answer(phase: str, attempt: int) -> tuple[int, dict[str, Any]]:
        return (503, {}) if phase == "finished" and attempt <= 2 else ok(phase, attempt)

    sandbox = FakeSandbox(answer)

    result = run_job(sandbox)

    assert result["finished"] == "noted"
    finished_keys = [key for phase, key in sandbox.notes if phase == "finished"]
    assert len(finished_keys) == 3
    assert set(finished_keys) == {finished_keys[0]}
    assert STEP_RETRIES.max_retries >= 2


def test_an_answer_that_cannot_be_decoded_may_have_landed_and_is_asked_again() -> None:
    # httpx decodes the body as it builds the response, and raises DecodingError: the note may
    # have landed, so it is asked again under its key, as for a 503, not failed as a bug.
    sandbox = FakeSandbox(
        lambda phase, attempt: httpx.Response(
            200, content=b"garbled", headers={"Content-Encoding": "gzip"}
        )
    )

    with pytest.raises(ProviderUnavailableError, match="note started: DecodingError"):
        run_job(sandbox)

    assert len(sandbox.notes) == 1 + STEP_RETRIES.max_retries
    assert {key for _, key in sandbox.notes} == {sandbox.notes[0][1]}


def test_the_worker_that_takes_a_job_over_runs_only_the_step_in_flight() -> None:
    """The dead worker noted the start and did the work: the journal has both."""
    sandbox = FakeSandbox(ok)
    journal = [resolved_promise("job-7:1", "noted"), resolved_promise("job-7:2", "d1gest")]

    async def replay() -> dict[str, Any]:
        transport = httpx.MockTransport(sandbox.handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as c:
            deps = DependencyMap()
            deps.insert(Providers(c))
            ctx: Context = root_context(id="job-7", preload=journal, deps=deps)
            return await job(ctx, 7)

    result = asyncio.run(replay())

    assert result["digest"] == "d1gest"  # the work's result from the journal, not redone
    assert sandbox.phases() == ["finished"]
