"""hello end to end: a real dev server, a worker process, the provider sandbox."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from cookbook import clients
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from resonate.error import ApplicationError
from resonate.resonate import Resonate

TIMEOUT_S = 30


@pytest.fixture
def resonate_url(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> str:
    start_worker(
        "hello.worker",
        {"RESONATE_URL": devserver.url, "PROVIDER_API_URL": sandbox.url, "PATH": "/usr/bin:/bin"},
    )
    return devserver.url


def new_execution_id() -> str:
    return f"hello-test-{secrets.token_hex(4)}"


def add_fault(sandbox: RunningSandbox, execution_id: str, **spec: Any) -> None:
    response = clients.post(
        f"{sandbox.url}/_admin/faults", json={**spec, "key_prefix": execution_id + ":"}
    )
    response.raise_for_status()


async def _greet(url: str, execution_id: str, *args: Any, times: int = 1) -> list[Any]:
    client = Resonate(url=url, group="hello-tests")
    try:
        handles = [
            client.options(target="hello").rpc(execution_id, "greet", *args) for _ in range(times)
        ]
        return await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), TIMEOUT_S)
    finally:
        await client.stop()


def requests_per_provider(sandbox: RunningSandbox, execution_id: str) -> dict[str, int]:
    calls: dict[str, int] = {}
    for request in sandbox.records.requests(key_prefix=execution_id + ":"):
        calls[request.provider] = calls.get(request.provider, 0) + 1
    return calls


def test_greets_once_per_channel_even_when_started_twice(
    resonate_url: str, sandbox: RunningSandbox
) -> None:
    execution_id = new_execution_id()

    first, second = asyncio.run(_greet(resonate_url, execution_id, "Ada", times=2))

    assert first == second
    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert [(e.provider, e.action) for e in effects] == [("email", "send"), ("sms", "send")]
    assert first == {
        "email": {"receipt": effects[0].resource_id, "refusal": None},
        "sms": {"receipt": effects[1].resource_id, "refusal": None},
    }
    assert effects[0].body == {"to": "Ada", "text": "Hello, Ada!"}


@pytest.mark.parametrize("status", [400, 404, 422])
def test_a_refused_email_is_returned_once_not_retried_and_no_sms_follows_it(
    resonate_url: str, sandbox: RunningSandbox, status: int
) -> None:
    execution_id = new_execution_id()
    add_fault(sandbox, execution_id, provider="email", mode="fail_always", status=status)

    [greeting] = asyncio.run(_greet(resonate_url, execution_id, "Ada"))

    assert greeting == {"email": {"receipt": None, "refusal": f"{status} injected failure"}}
    assert requests_per_provider(sandbox, execution_id) == {"email": 1}


@pytest.mark.parametrize("status", [503, 429, 408])
def test_a_provider_that_is_not_answering_now_is_asked_again_with_the_same_key(
    resonate_url: str, sandbox: RunningSandbox, status: int
) -> None:
    execution_id = new_execution_id()
    add_fault(sandbox, execution_id, provider="sms", mode="fail_times", times=1, status=status)

    [greeting] = asyncio.run(_greet(resonate_url, execution_id, "Ada"))

    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert greeting["sms"] == {"receipt": effects[1].resource_id, "refusal": None}
    sms_calls = sandbox.records.requests(key_prefix=f"{execution_id}:2")
    assert [r.status_code for r in sms_calls] == [status, 200]
    assert requests_per_provider(sandbox, execution_id) == {"email": 1, "sms": 2}


def test_a_call_that_cannot_start_fails_at_once_instead_of_being_retried(
    resonate_url: str, sandbox: RunningSandbox
) -> None:
    # No name: the body fails before its first step, the same way on every attempt. Under the
    # SDK's default policy it would be retried (2 s, 4 s, 8 s, ...) and outlive the timeout.
    execution_id = new_execution_id()

    with pytest.raises(ApplicationError, match="missing a required argument: 'name'"):
        asyncio.run(_greet(resonate_url, execution_id))

    assert requests_per_provider(sandbox, execution_id) == {}
