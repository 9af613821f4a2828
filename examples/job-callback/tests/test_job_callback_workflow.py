"""`run_job` in process: the SDK's own `resonate.testing`, a fake jobs service on MockTransport.

The fake jobs service calls back as the real one does, with the SDK's own request
(`resonate.promises.resolve(id, Value(data=...))`, or `.reject`), on the in-process server.
The deadline and the refusal are replayed over a journal instead (`root_context`): the SDK's
in-process server never times out a promise without a target (the callback), and its Core holds
a workflow that returns while a promise it made is pending as suspended.
These tests need only the SDK, this package and pytest: they run in a copy of this folder outside
the cookbook (`make copy-out-job-callback`). The tests that drive a real dev server, worker and
the provider sandbox's jobs service are in tests/cookbook/ and run in the cookbook only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import httpx
import pytest
from job_callback.job import Job
from job_callback.steps import CallbackServer, JobState, JobsUnavailableError, Services, submit_job
from job_callback.workflow import WORKFLOW_RETRIES, JobEnded, run_job, run_timeout
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.resonate import Resonate
from resonate.testing import local_resonate, resolved_promise, root_context
from resonate.types import PromiseRecord, Value

type Ending = Literal["succeed", "fail", "silent", "refuse", "down-once", "answer-lost-once"]


@dataclass
class FakeJobs:
    """The jobs service: each submitted job ends as `ending(attempt)` says, by calling back.

    `cancel_answer` is what cancelling a job finds: "cancelled" (it was still running) or how
    it had already ended (answered 409, as the real service does). A submission under a key
    that already started a job is answered with that job, as the real service does.
    `answer_lost` runs when a job started but its answer is lost ("answer-lost-once").
    """

    ending: Callable[[int], Ending]
    cancel_answer: str = "failed"
    answer_lost: Callable[[], None] = lambda: None
    resonate: Resonate | None = None
    submits: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (key, body)
    cancels: list[tuple[str, str]] = field(default_factory=list)  # (key, job id)
    started: dict[str, str] = field(default_factory=dict)  # key -> job id
    callbacks: set[asyncio.Task[Any]] = field(default_factory=set)

    def handle(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["Idempotency-Key"]
        if request.url.path.endswith("/cancel"):
            job_id = request.url.path.split("/")[2]
            self.cancels.append((key, job_id))
            if self.cancel_answer == "cancelled":
                return httpx.Response(200, json={"id": job_id, "status": "cancelled"})
            return httpx.Response(409, json={"id": job_id, "status": self.cancel_answer})
        body = json.loads(request.content)
        self.submits.append((key, body))
        ending = self.ending(body["spec"]["attempt"])
        if ending == "refuse":
            return httpx.Response(422, json={"error": "unknown task"})
        if ending == "down-once" and len(self.submits) == 1:
            return httpx.Response(503, json={"error": "restarting"})
        if key in self.started:  # asked again: the first answer, not a second job
            return httpx.Response(202, json={"id": self.started[key], "status": "running"})
        job_id = self.started[key] = f"job_{len(self.submits)}"
        if ending != "silent":
            self.callbacks.add(asyncio.create_task(self.call_back(body, job_id, ending)))
        if ending == "answer-lost-once":  # the job started; the client sees a timeout
            self.answer_lost()
            raise httpx.ReadTimeout("no answer", request=request)
        return httpx.Response(202, json={"id": job_id, "status": "running"})

    async def call_back(self, body: dict[str, Any], job_id: str, ending: Ending) -> None:
        assert self.resonate is not None
        promise_id = body["callback"]["promise_id"]
        if ending == "fail":
            # What the jobs service sends: an error value, which the workflow sees as the reason.
            error = {"__type": "error", "message": f"{job_id}: out of memory"}
            await self.resonate.promises.reject(promise_id, Value(data=error))
        else:
            await self.resonate.promises.resolve(promise_id, Value(data={"output": {"rows": 7}}))


def job(timeout_seconds: int = 30) -> Job:
    return Job(name="nightly-export", duration_seconds=1, callback_timeout_seconds=timeout_seconds)


def run(jobs: FakeJobs, spec: Job | None = None, timeout: timedelta | None = None) -> JobEnded:
    """`run_job` on an in-process Resonate registered as the worker does.

    `timeout`: the execution's deadline (none: the SDK's default, a day).
    """

    async def go() -> JobEnded:
        resonate = local_resonate()
        jobs.resonate = resonate
        try:
            transport = httpx.MockTransport(jobs.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://jobs") as client:
                resonate.with_dependency(Services(client, "http://resonate.invalid"))
                resonate.with_dependency(CallbackServer(resonate))
                resonate.register(run_job, retry_policy=WORKFLOW_RETRIES)
                handle = resonate.options(timeout=timeout).run("run-1", run_job, spec or job())
                ended: JobEnded = await asyncio.wait_for(handle.result(), 30)
                return ended
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_the_job_calls_back_on_the_promise_it_was_given_and_the_workflow_wakes() -> None:
    jobs = FakeJobs(lambda attempt: "succeed")

    ended = run(jobs)

    assert ended == JobEnded("succeeded", ["job_1"], output={"rows": 7})
    [(_, body)] = jobs.submits
    assert body["callback"] == {"url": "http://resonate.invalid", "promise_id": "run-1:1"}
    assert jobs.cancels == []


def test_a_failed_job_is_submitted_once_more_as_a_new_job_under_a_new_key() -> None:
    jobs = FakeJobs(lambda attempt: "fail" if attempt == 1 else "succeed")

    ended = run(jobs)

    assert ended == JobEnded("succeeded", ["job_1", "job_2"], output={"rows": 7})
    (first_key, first), (second_key, second) = jobs.submits
    assert first_key != second_key
    assert first["callback"]["promise_id"] != second["callback"]["promise_id"]
    assert [job_id for _, job_id in jobs.cancels] == ["job_1"]  # asked how it ended


def test_a_job_that_fails_twice_is_the_workflows_result_with_both_reasons() -> None:
    jobs = FakeJobs(lambda attempt: "fail")

    ended = run(jobs)

    assert ended.status == "failed"
    assert ended.job_ids == ["job_1", "job_2"]
    assert ended.reason == "failed 2 times: job_1: out of memory; job_2: out of memory"


def timed_out(promise_id: str) -> PromiseRecord:
    """The callback as the server leaves it at its deadline: timed out, no value."""
    return PromiseRecord(id=promise_id, state="rejected_timedout", timeout_at=1, settled_at=1)


def replay(jobs: FakeJobs, journal: list[PromiseRecord]) -> JobEnded:
    """The workflow body over `journal` (what a worker does when it wakes), no server."""

    async def go() -> JobEnded:
        transport = httpx.MockTransport(jobs.handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://jobs") as client:
            deps = DependencyMap()
            deps.insert(Services(client, "http://resonate.invalid"))
            ctx: Context = root_context(id="run-1", preload=journal, deps=deps)
            return await run_job(ctx, job())

    return asyncio.run(go())


IN_TIME = resolved_promise("run-1:2", True)
SUBMITTED = resolved_promise("run-1:3", {"job_id": "job_1", "status": "running", "refusal": None})


def test_a_job_still_running_at_the_callbacks_deadline_is_cancelled_and_not_run_again() -> None:
    jobs = FakeJobs(lambda attempt: "silent", cancel_answer="cancelled")

    ended = replay(jobs, [timed_out("run-1:1"), IN_TIME, SUBMITTED])

    assert ended.status == "timed-out"
    assert ended.reason == "no callback from job_1 within 30s; the job was cancelled"
    assert jobs.cancels == [("run-1:4", "job_1")]
    assert jobs.submits == []  # a job that timed out is not run again


def test_a_job_that_ended_but_whose_callback_lost_the_race_is_a_success() -> None:
    jobs = FakeJobs(lambda attempt: "silent", cancel_answer="succeeded")

    ended = replay(jobs, [timed_out("run-1:1"), IN_TIME, SUBMITTED])

    assert ended == JobEnded(
        "succeeded",
        ["job_1"],
        reason="its callback came after the deadline, and its output with it",
    )
    assert ended.output is None


def test_a_refusal_is_a_value_and_a_service_that_is_down_is_asked_again_with_the_same_key() -> None:
    refused = FakeJobs(lambda attempt: "refuse")
    flaky = FakeJobs(lambda attempt: "down-once")

    assert run(refused) == JobEnded("refused", [], reason="422 unknown task")
    assert len(refused.submits) == 1
    assert run(flaky).status == "succeeded"
    (first_key, first), (second_key, second) = flaky.submits
    assert first_key == second_key
    assert first == second  # the same callback: the retry is the same request


def submit_answered(answer: Callable[[], httpx.Response]) -> tuple[JobState, int]:
    """`submit_job` alone, on a bare context, answered by `answer`: its state, and requests."""
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answer()

    async def go() -> JobState:
        transport = httpx.MockTransport(handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://jobs") as client:
            deps = DependencyMap()
            deps.insert(Services(client, "http://resonate.invalid"))
            ctx = root_context(id="run-1:3", deps=deps)
            return await submit_job(ctx, job(), 1, "run-1:1")

    return asyncio.run(go()), len(requests)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            lambda: httpx.Response(202, html="<html><body>Welcome to the gateway</body></html>"),
            "answered 202 without its id and status",
        ),
        (lambda: httpx.Response(202, json={"ok": True}), "answered 202 without its id and status"),
        (  # httpx decodes the body as it builds the response, and raises DecodingError
            lambda: httpx.Response(202, content=b"garbled", headers={"Content-Encoding": "gzip"}),
            "DecodingError",
        ),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_submission_answered_without_its_answer_may_have_started_the_job(
    answer: Callable[[], httpx.Response], reason: str
) -> None:
    # Not a bug in the step: the job may be running. Raised as the service being unavailable,
    # the step is retried under the same key and the service answers from it.
    with pytest.raises(JobsUnavailableError, match=reason):
        submit_answered(answer)


def test_a_refusal_whose_body_is_a_page_is_still_a_refusal_asked_once() -> None:
    page = "<html><body><h1>403 Forbidden</h1></body></html>"

    state, requests = submit_answered(lambda: httpx.Response(403, html=page))

    assert (state, requests) == (JobState(None, "refused", f"403 {page}"), 1)


def test_a_job_whose_waits_would_outlive_the_executions_deadline_is_refused_not_submitted() -> None:
    """Callbacks of up to a day, twice, in an execution started with the default day.

    Submitted, the job would outlive its execution: the wait for its callback would end with
    the execution, timed out, and nothing would be left to cancel the job.
    """
    jobs = FakeJobs(lambda attempt: "silent")

    ended = run(jobs, job(timeout_seconds=86_400))

    assert ended.status == "refused"
    assert ended.reason is not None
    assert "timeout=run_timeout(job)" in ended.reason
    assert jobs.submits == []


def test_a_job_started_with_its_run_timeout_is_submitted() -> None:
    jobs = FakeJobs(lambda attempt: "succeed")
    spec = job(timeout_seconds=86_400)

    ended = run(jobs, spec, timeout=run_timeout(spec))

    assert ended == JobEnded("succeeded", ["job_1"], output={"rows": 7})


def test_a_submission_that_started_the_job_is_retried_under_its_key_even_past_start_by(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first POST starts the job but its answer is lost; the retry comes after `start_by`.

    The retry must send again (its key gets the job back), not refuse: a refusal would release
    the callback and end the workflow, with the job running and no one left to cancel it.
    """
    # The steps' clock, not the server's (it reads time_ns): no promise times out.
    real_time = time.time
    late = timedelta(0)

    def an_hour_passes() -> None:  # start_by is 55 minutes away: the retry comes after it
        nonlocal late
        late = timedelta(hours=1)

    monkeypatch.setattr(time, "time", lambda: real_time() + late.total_seconds())
    jobs = FakeJobs(lambda attempt: "answer-lost-once", answer_lost=an_hour_passes)
    spec = job()

    ended = run(jobs, spec, timeout=run_timeout(spec))

    assert ended == JobEnded("succeeded", ["job_1"], output={"rows": 7})
    first, second = jobs.submits
    assert first == second  # the same request under the same key
    assert jobs.started == {first[0]: "job_1"}  # one job, the one the workflow waited for


def test_a_replay_after_the_callback_landed_submits_nothing_again() -> None:
    """A worker that died while the job ran: the next replays over the journal and wakes."""
    jobs = FakeJobs(lambda attempt: "succeed")
    callback = resolved_promise("run-1:1", {"output": {"rows": 7}})

    assert replay(jobs, [callback, IN_TIME, SUBMITTED]) == JobEnded(
        "succeeded", ["job_1"], output={"rows": 7}
    )
    assert jobs.submits == []
