"""faas-router end to end: a real dev server, the provider sandbox, and the production topology:
a router process (FAAS_ROLE=router) and executor processes (FAAS_ROLE=executor) apart."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest
from cookbook import clients
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from resonate.resonate import Resonate

# Short leases: a killed process's calls are handed to another within about this many seconds.
TTL_SECONDS = "2"


class Pool:
    def __init__(
        self, devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
    ) -> None:
        self.devserver = devserver
        self.start_worker = start_worker
        self.env = {
            "RESONATE_URL": devserver.url,
            "PROVIDER_API_URL": sandbox.url,
            "RESONATE_TTL_SECONDS": TTL_SECONDS,
        }

    def start(self, role: str, name: str) -> Any:
        return self.start_worker("faas_router.worker", {**self.env, "FAAS_ROLE": role}, name=name)


@pytest.fixture
def pool(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> Pool:
    return Pool(devserver, sandbox, start_worker)


def new_job() -> str:
    return f"video-job-{secrets.token_hex(4)}"


def start(url: str, job: str, audit: bool = True) -> None:
    async def go() -> None:
        client = Resonate(url=url, group="faas-router-tests")
        try:
            await (
                client.options(target="faas-router").rpc(job, "process_video", "a.mp4", audit).id()
            )
        finally:
            await client.stop()

    asyncio.run(go())


def result(url: str, promise_id: str) -> Any:
    async def go() -> Any:
        client = Resonate(url=url, group="faas-router-tests")
        try:
            return await asyncio.wait_for((await client.get(promise_id)).result(), 30)
        finally:
            await client.stop()

    return asyncio.run(go())


def promise_state(url: str, promise_id: str) -> str:
    async def go() -> str:
        client = Resonate(url=url, group="faas-router-tests")
        try:
            return str((await client.promises.get(promise_id)).state)
        finally:
            await client.stop()

    return asyncio.run(go())


def add_fault(sandbox: RunningSandbox, key_prefix: str, **spec: Any) -> None:
    response = clients.post(
        f"{sandbox.url}/_admin/faults", json={"provider": "api", "key_prefix": key_prefix, **spec}
    )
    response.raise_for_status()


def test_each_shape_acts_once_and_the_detached_id_finds_its_record(
    pool: Pool, sandbox: RunningSandbox
) -> None:
    pool.start("router", "router")
    pool.start("executor", "executor")
    job = new_job()

    start(pool.devserver.url, job)
    outcome = result(pool.devserver.url, job)

    audit_id = outcome["audit_id"]
    audit = result(pool.devserver.url, audit_id)  # looked up later, by the id the router kept
    assert promise_state(pool.devserver.url, audit_id) == "resolved"
    effects = {e.idempotency_key: e.resource_id for e in sandbox.records.effects(job + ":")}
    assert outcome["thumbnail"]["receipt"] == effects[f"{job}:3"]
    assert outcome["rendition"]["receipt"] == effects[f"{job}:2"]
    assert audit["receipt"] == effects[audit_id]
    assert len(effects) == 3


def test_a_started_call_runs_while_the_router_awaits_another(
    pool: Pool, sandbox: RunningSandbox
) -> None:
    # Every provider call of the job takes a second. A transcode started before the thumbnail
    # is awaited must reach its provider while the thumbnail is still being made: SDK 0.8.1
    # starts `ctx.rpc` when it is called, not when it is awaited. Were it lazy, the transcode
    # would start only after the thumbnail returned. The calls are told apart by what they do,
    # not by their ids (which follow the order the workflow makes its calls in).
    pool.start("router", "router")
    pool.start("executor", "executor")
    job = new_job()
    add_fault(sandbox, f"{job}:", mode="latency", latency_ms=1000)

    start(pool.devserver.url, job)
    result(pool.devserver.url, job)

    calls = {c.body["what"]: c for c in sandbox.records.requests(f"{job}:")}
    transcode, thumbnail = calls["transcode"], calls["thumbnail"]
    assert thumbnail.finished_at - thumbnail.started_at >= 1.0
    assert transcode.started_at < thumbnail.finished_at


def test_an_executor_killed_mid_call_is_replaced_and_the_router_waits(
    pool: Pool, sandbox: RunningSandbox
) -> None:
    # The executor dies after the provider transcoded but before the result was recorded: a
    # fresh executor runs the call again under the same key, and the provider answers from it.
    router = pool.start("router", "router")
    doomed = pool.start("executor", "executor-1")
    job = new_job()
    pool.devserver.kill_at("settle", f"{job}:2", pid=doomed.pid)

    start(pool.devserver.url, job)
    doomed.wait(timeout=20)
    pool.start("executor", "executor-2")
    outcome = result(pool.devserver.url, job)

    assert router.alive()  # the router never noticed more than a slow call
    assert len(sandbox.records.requests(f"{job}:2")) == 2
    (transcoded,) = sandbox.records.effects(f"{job}:2")
    assert outcome["rendition"]["receipt"] == transcoded.resource_id


def test_the_detached_call_finishes_while_the_router_is_dead(
    pool: Pool, sandbox: RunningSandbox
) -> None:
    # The router dies right after it started the detached audit (as it creates the transcode's
    # promise). The audit runs on the executors anyway; a new router resumes the job, finds the
    # audit's promise under the same id, and does not start it again.
    doomed = pool.start("router", "router-1")
    pool.start("executor", "executor")
    job = new_job()
    pool.devserver.kill_at("create", f"{job}:2", pid=doomed.pid)

    start(pool.devserver.url, job)
    doomed.wait(timeout=20)
    audit_promises = [p for p in promise_ids(pool.devserver, job) if ":d" in p]
    assert len(audit_promises) == 1
    audit = result(pool.devserver.url, audit_promises[0])  # done with no router alive
    restarted_at = time.time()
    pool.start("router", "router-2")
    outcome = result(pool.devserver.url, job)

    assert outcome["audit_id"] == audit_promises[0]
    (audited,) = sandbox.records.effects(audit_promises[0])
    assert audit["receipt"] == audited.resource_id
    assert audited.finished_at < restarted_at


def promise_ids(devserver: RunningDevServer, job: str) -> list[str]:
    state = devserver.state(job)
    promises: Any = state["promises"]
    return [p["id"] for p in promises]


def test_a_refusal_is_a_value_and_is_not_retried(pool: Pool, sandbox: RunningSandbox) -> None:
    pool.start("all", "worker")
    job = new_job()
    add_fault(sandbox, f"{job}:3", mode="fail_always", status=422)

    start(pool.devserver.url, job)
    outcome = result(pool.devserver.url, job)

    assert outcome["thumbnail"] == {"receipt": None, "refusal": "422 injected failure"}
    assert len(sandbox.records.requests(f"{job}:3")) == 1


def test_an_executor_call_whose_provider_is_down_is_asked_again(
    pool: Pool, sandbox: RunningSandbox
) -> None:
    pool.start("all", "worker")
    job = new_job()
    add_fault(sandbox, f"{job}:2", mode="fail_times", times=1, status=503)

    start(pool.devserver.url, job)
    outcome = result(pool.devserver.url, job)

    calls = sandbox.records.requests(f"{job}:2")
    assert [c.status_code for c in calls] == [503, 200]
    (transcoded,) = sandbox.records.effects(f"{job}:2")
    assert outcome["rendition"]["receipt"] == transcoded.resource_id
