"""job-callback end to end: a real dev server, a worker process, the jobs service (the sandbox).

Exactly-once is judged by the jobs service's own records: the jobs it was asked to submit and
cancel (the sandbox's effects, by Idempotency-Key) and the callbacks it sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from typing import Any

import pytest
from cookbook import clients
from cookbook.devserver.state import log_generations, log_path
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from resonate.resonate import Resonate


@pytest.fixture
def resonate_url(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> str:
    start_worker(
        "job_callback.worker", {"RESONATE_URL": devserver.url, "PROVIDER_API_URL": sandbox.url}
    )
    return devserver.url


def job(simulate: str, timeout: int = 30) -> dict[str, Any]:
    return {
        "name": "nightly-revenue",
        "params": {"day": "2026-12-05"},
        "duration_seconds": 0.2,
        "callback_timeout_seconds": timeout,
        "simulate": simulate,
    }


def run(url: str, execution_id: str, request: dict[str, Any]) -> Any:
    async def go() -> Any:
        client = Resonate(url=url, group="job-callback-tests")
        try:
            handle = client.options(target="job-callback").rpc(execution_id, "run_job", request)
            return await asyncio.wait_for(handle.result(), 30)
        finally:
            await client.stop()

    return asyncio.run(go())


def promise_value(url: str, promise_id: str) -> Any:
    async def go() -> Any:
        client = Resonate(url=url, group="job-callback-tests")
        try:
            return (await client.promises.get(promise_id)).value.data
        finally:
            await client.stop()

    return asyncio.run(go())


def callbacks(sandbox: RunningSandbox, execution_id: str) -> list[dict[str, Any]]:
    response = clients.get(
        f"{sandbox.url}/_admin/jobs/callbacks", params={"key_prefix": execution_id + ":"}
    )
    response.raise_for_status()
    records: list[dict[str, Any]] = response.json()
    return records


def answered(sandbox: RunningSandbox, execution_id: str, count: int) -> list[dict[str, Any]]:
    """The execution's callbacks once `count` of them have the server's answer recorded."""
    for _ in range(100):
        records = callbacks(sandbox, execution_id)
        if sum(r["http_status"] is not None for r in records) >= count:
            return records
        clients.get(f"{sandbox.url}/health")  # a round trip, not a sleep: the answer is in flight
    raise AssertionError(f"callbacks not answered: {callbacks(sandbox, execution_id)}")


def effects(sandbox: RunningSandbox, execution_id: str, action: str) -> list[str]:
    return [
        e.idempotency_key or ""
        for e in sandbox.records.effects(key_prefix=execution_id + ":")
        if (e.provider, e.action) == ("jobs", action)
    ]


def new_id(case: str) -> str:
    return f"job-callback-test-{case}-{secrets.token_hex(3)}"


def test_a_job_that_succeeds_resumes_the_workflow_with_its_output(
    resonate_url: str, sandbox: RunningSandbox
) -> None:
    execution_id = new_id("ok")

    result = run(resonate_url, execution_id, job("succeed"))

    [submitted] = sandbox.records.effects(key_prefix=execution_id + ":")
    assert result == {
        "status": "succeeded",
        "job_ids": [submitted.resource_id],
        "output": {"task": "nightly-revenue", "attempt": 1, "day": "2026-12-05"},
        "reason": None,
    }
    [callback] = answered(sandbox, execution_id, 1)
    assert (callback["state"], callback["http_status"], callback["promise_state"]) == (
        "resolved",
        200,
        "resolved",
    )


def test_a_failed_job_is_retried_once_as_a_new_job_then_the_failure_is_a_value(
    resonate_url: str, sandbox: RunningSandbox
) -> None:
    execution_id = new_id("fail")

    result = run(resonate_url, execution_id, job("fail"))

    submits = effects(sandbox, execution_id, "submit")
    assert len(set(submits)) == len(submits) == 2  # two jobs, two keys
    assert effects(sandbox, execution_id, "cancel") == []  # a failed job is not cancelled
    assert result["status"] == "failed"
    assert len(set(result["job_ids"])) == 2
    assert "failed 2 times" in result["reason"]
    assert f"job {result['job_ids'][1]} failed: executor lost" in result["reason"]
    records = answered(sandbox, execution_id, 2)
    assert [(r["state"], r["promise_state"]) for r in records] == [("rejected", "rejected")] * 2


def test_a_job_that_never_calls_back_is_cancelled_once_at_the_deadline(
    resonate_url: str, sandbox: RunningSandbox
) -> None:
    execution_id = new_id("hang")

    result = run(resonate_url, execution_id, job("never_call_back", timeout=1))

    [job_id] = result["job_ids"]
    assert result["status"] == "timed-out"
    assert len(effects(sandbox, execution_id, "cancel")) == 1
    assert len(effects(sandbox, execution_id, "submit")) == 1
    assert clients.get(f"{sandbox.url}/jobs/{job_id}").json()["status"] == "cancelled"
    assert callbacks(sandbox, execution_id) == []


def settle_values(devserver: RunningDevServer, promise_id: str) -> list[Any]:
    """The values the server was asked to settle `promise_id` with, in the order it took them.

    Read from its write-ahead log, where every state-changing request is a record, in the order
    it was applied, before it is answered: the first settle is the one that settled the promise.
    """
    values = []
    for generation in log_generations(devserver.data_dir):
        for line in log_path(devserver.data_dir, generation).read_bytes().splitlines():
            request = json.loads(line).get("req") or {}
            if (request.get("kind"), request.get("id")) == ("promise.settle", promise_id):
                values.append(json.loads(base64.b64decode(request["value"]["data"])))
    return values


def test_a_second_callback_changes_nothing(
    resonate_url: str, sandbox: RunningSandbox, devserver: RunningDevServer
) -> None:
    execution_id = new_id("twice")

    result = run(resonate_url, execution_id, job("call_back_twice"))

    first, second = answered(sandbox, execution_id, 2)
    assert first["promise_id"] == second["promise_id"]
    # The server took both settles without error; the later one found the promise settled.
    assert [(c["http_status"], c["promise_state"]) for c in (first, second)] == [
        (200, "resolved")
    ] * 2
    # Both are sent at once, so either may reach the server first; the repeat is marked
    # ("delivery": "repeated"), so the two values differ and the server's log tells which won.
    applied, later = settle_values(devserver, first["promise_id"])
    assert applied != later
    assert {json.dumps(v, sort_keys=True) for v in (applied, later)} == {
        json.dumps(c["value"], sort_keys=True) for c in (first, second)
    }
    held = promise_value(resonate_url, first["promise_id"])
    assert held == applied  # the later settle did not overwrite it
    assert result["output"] == held["output"]
    assert len(effects(sandbox, execution_id, "submit")) == 1


def pending_and_callbacks(url: str, execution_id: str) -> tuple[list[str], dict[str, str]]:
    """The execution's promises still pending, and each callback promise's state, by id.

    Read from the server: a callback is the workflow's latent promise, the one tagged external.
    """

    async def search(client: Resonate, state: str | None, tags: dict[str, str]) -> list[Any]:
        found: list[Any] = []
        cursor: str | None = None
        while True:
            page = await client.promises.search(state, tags, 100, cursor)
            found += page.promises
            cursor = page.cursor
            if cursor is None:
                return found

    async def go() -> tuple[list[str], dict[str, str]]:
        client = Resonate(url=url, group="job-callback-tests")
        try:
            origin = {"resonate:origin": execution_id}
            pending = await search(client, "pending", origin)
            external = await search(client, None, origin | {"resonate:external": "true"})
            states: dict[str, str] = {
                p.id: (await client.promises.get(p.id)).state for p in external
            }
            return [p.id for p in pending], states
        finally:
            await client.stop()

    return asyncio.run(go())


@pytest.mark.parametrize("status", [409, 422])
def test_a_refused_job_ends_the_workflow_at_once_and_leaves_no_promise_pending(
    resonate_url: str, sandbox: RunningSandbox, status: int
) -> None:
    execution_id = new_id(f"refused-{status}")
    clients.post(
        f"{sandbox.url}/_admin/faults",
        json={"provider": "jobs", "action": "submit", "status": status}
        | {"key_prefix": execution_id + ":"},
    ).raise_for_status()

    # The callback's deadline is an hour: a workflow that waited for it would not end in time.
    result = run(resonate_url, execution_id, job("succeed", timeout=3600))

    assert result == {
        "status": "refused",
        "job_ids": [],
        "output": None,
        "reason": f"{status} injected failure",
    }
    pending, callback_states = pending_and_callbacks(resonate_url, execution_id)
    assert pending == []
    assert list(callback_states.values()) == ["rejected"]  # released by the workflow itself
    assert effects(sandbox, execution_id, "submit") == []


def test_a_job_never_submitted_fails_the_workflow_once_out_of_retries_not_days_later(
    resonate_url: str, sandbox: RunningSandbox
) -> None:
    execution_id = new_id("down")
    clients.post(
        f"{sandbox.url}/_admin/faults",
        json={"provider": "jobs", "action": "submit", "status": 503}
        | {"key_prefix": execution_id + ":"},
    ).raise_for_status()

    async def go() -> None:
        client = Resonate(url=resonate_url, group="job-callback-tests")
        try:
            request = job("succeed", timeout=3600)
            handle = client.options(target="job-callback").rpc(execution_id, "run_job", request)
            # The step's retries take about 31 s; the callback's deadline is an hour away.
            await asyncio.wait_for(handle.result(), 90)
        finally:
            await client.stop()

    # The execution's own error (a TimeoutError here would mean it waited for the callback).
    with pytest.raises(Exception, match="/jobs/submit: answered 503"):
        asyncio.run(go())

    pending, callback_states = pending_and_callbacks(resonate_url, execution_id)
    assert pending == []
    assert list(callback_states.values()) == ["rejected"]
    assert effects(sandbox, execution_id, "submit") == []
