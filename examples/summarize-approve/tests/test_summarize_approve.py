"""summarize-approve end to end: a real dev server, a worker process, the provider sandbox."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import pytest
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from resonate.resonate import Resonate


@pytest.fixture
def resonate_url(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> str:
    start_worker(
        "summarize_approve.worker", {"RESONATE_URL": devserver.url, "PROVIDER_API_URL": sandbox.url}
    )
    return devserver.url


def run(url: str, execution_id: str) -> Any:
    async def go() -> Any:
        client = Resonate(url=url, group="summarize-approve-tests")
        try:
            handle = client.options(target="summarize-approve").rpc(execution_id, "run", "x")
            return await asyncio.wait_for(handle.result(), 30)
        finally:
            await client.stop()

    return asyncio.run(go())


def add_fault(sandbox: RunningSandbox, key_prefix: str, **spec: Any) -> None:
    response = httpx.post(
        f"{sandbox.url}/_admin/faults", json={"provider": "api", "key_prefix": key_prefix, **spec}
    )
    response.raise_for_status()


def test_each_step_acts_once(resonate_url: str, sandbox: RunningSandbox) -> None:
    execution_id = f"summarize-approve-test-{secrets.token_hex(4)}"

    result = run(resonate_url, execution_id)

    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert result == {
        "first": {"receipt": effects[0].resource_id, "refusal": None},
        "second": {"receipt": effects[1].resource_id, "refusal": None},
    }


def test_a_refusal_is_a_value_and_is_not_retried(
    resonate_url: str, sandbox: RunningSandbox
) -> None:
    execution_id = f"summarize-approve-test-{secrets.token_hex(4)}"
    add_fault(sandbox, execution_id + ":", mode="fail_always", status=422)

    result = run(resonate_url, execution_id)

    assert result["first"] == {"receipt": None, "refusal": "422 injected failure"}
    assert len(sandbox.records.requests(key_prefix=f"{execution_id}:1")) == 1


def test_a_provider_that_is_down_is_asked_again(resonate_url: str, sandbox: RunningSandbox) -> None:
    execution_id = f"summarize-approve-test-{secrets.token_hex(4)}"
    add_fault(sandbox, execution_id + ":", mode="fail_times", times=1, status=503)

    result = run(resonate_url, execution_id)

    calls = sandbox.records.requests(key_prefix=f"{execution_id}:1")
    assert [c.status_code for c in calls] == [503, 200]
    effects = sandbox.records.effects(key_prefix=f"{execution_id}:1")
    assert result["first"] == {"receipt": effects[0].resource_id, "refusal": None}
