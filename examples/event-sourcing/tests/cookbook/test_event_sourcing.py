"""event-sourcing end to end: a real dev server, worker processes, the provider sandbox.

The statement service (the sandbox) is the receiving system: it must hold exactly one record per
event, in stream order, whatever crashed in between.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from dataclasses import asdict
from typing import Any

import pytest
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from event_sourcing.account import Account, Event, fold
from resonate.error import ApplicationError
from resonate.resonate import Resonate

EVENTS: list[Event] = [
    {"type": "opened", "owner": "Ada"},
    {"type": "deposited", "amount": 100},
    {"type": "withdrew", "amount": 250},
    {"type": "deposited", "amount": -5},
    {"type": "withdrew", "amount": 40},
    {"type": "frozen"},
    {"type": "closed"},
    {"type": "deposited", "amount": 10},
]
TIMEOUT_S = 30


def _worker(start_worker: ProcessFactory, devserver: RunningDevServer, url: str) -> ManagedProcess:
    env = {"RESONATE_URL": devserver.url, "PROVIDER_API_URL": url, "PATH": "/usr/bin:/bin"}
    return start_worker("event_sourcing.worker", env)


def _as_json(account: Account) -> dict[str, Any]:
    """What a client that did not register the workflow receives: the projection as JSON."""
    return {"account": json.loads(json.dumps(asdict(account))), "unrecorded": []}


async def _project(devserver: RunningDevServer, execution_id: str, *args: Any) -> Any:
    client = Resonate(url=devserver.url, group="event-sourcing-tests")
    try:
        handle = client.options(target="event-sourcing").rpc(execution_id, "project_account", *args)
        return await asyncio.wait_for(handle.result(), TIMEOUT_S)
    finally:
        await client.stop()


def _add_fault(sandbox: RunningSandbox, key_prefix: str, **spec: Any) -> None:
    response = clients.post(
        f"{sandbox.url}/_admin/faults", json={"provider": "api", "key_prefix": key_prefix, **spec}
    )
    response.raise_for_status()


def _requests_per_event(sandbox: RunningSandbox, execution_id: str) -> Counter[int]:
    """Every request the statement service received, per event (a replayed one included)."""
    return Counter(
        int(r.idempotency_key.rsplit(":", 1)[1])
        for r in sandbox.records.requests(key_prefix=execution_id + ":")
        if r.idempotency_key is not None
    )


def test_projects_the_stream_and_records_each_event_once(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    _worker(start_worker, devserver, sandbox.url)
    execution_id = f"event-sourcing-test-{secrets.token_hex(4)}"

    projection = asyncio.run(_project(devserver, execution_id, EVENTS))

    assert projection == _as_json(fold(EVENTS))
    assert projection["account"] == {
        "status": "closed",
        "owner": "Ada",
        "balance": 60,
        "applied": 4,
        "rejections": [
            {"sequence": 3, "reason": "withdrawing 250 exceeds the balance of 100"},
            {"sequence": 4, "reason": "amount -5 is not a positive whole number"},
            {"sequence": 6, "reason": "unknown event type 'frozen'"},
            {"sequence": 8, "reason": "the account is closed"},
        ],
    }
    records = [e.body for e in sandbox.records.effects(key_prefix=execution_id + ":")]
    assert [r["sequence"] for r in records] == list(range(1, len(EVENTS) + 1))
    assert [r["event"] for r in records] == EVENTS
    rejected = {3, 4, 6, 8}
    assert [r["verdict"] for r in records] == [
        "rejected" if n in rejected else "applied" for n in range(1, len(EVENTS) + 1)
    ]
    assert records[4]["balance"] == 60
    assert records[2]["reason"] == "withdrawing 250 exceeds the balance of 100"


def test_a_crash_at_event_k_resumes_at_event_k(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    first = _worker(start_worker, devserver, sandbox.url)
    execution_id = f"event-sourcing-test-{secrets.token_hex(4)}"
    k = 5
    # SIGKILL the worker once event k was published but before its step checkpointed (a tripwire
    # on the dev server: it fires as the worker asks to store the step's result).
    wire = {"operation": "settle", "promise_id": f"{execution_id}:{k}", "when": "before"}
    clients.post(
        f"{devserver.url}/_cookbook/tripwires", json={**wire, "victim": "worker", "pid": first.pid}
    ).raise_for_status()

    async def crash_and_recover() -> object:
        client = Resonate(url=devserver.url, group="event-sourcing-tests")
        try:
            handle = client.options(target="event-sourcing").rpc(
                execution_id, "project_account", EVENTS
            )
            assert await asyncio.to_thread(first.wait, TIMEOUT_S) == -9
            await asyncio.to_thread(_worker, start_worker, devserver, sandbox.url)
            return await asyncio.wait_for(handle.result(), TIMEOUT_S)
        finally:
            await client.stop()

    projection = asyncio.run(crash_and_recover())

    assert projection == _as_json(fold(EVENTS))
    sent = _requests_per_event(sandbox, execution_id)
    # Events before k came back from the journal: applied once, never sent again. Event k was
    # sent again by the new worker and answered from the idempotency store.
    assert sent == {n: 2 if n == k else 1 for n in range(1, len(EVENTS) + 1)}
    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert [e.body["sequence"] for e in effects] == list(range(1, len(EVENTS) + 1))


@pytest.mark.parametrize("status", [400, 409, 422])
def test_a_record_the_statement_service_refuses_is_kept_once_and_the_stream_goes_on(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory, status: int
) -> None:
    _worker(start_worker, devserver, sandbox.url)
    execution_id = f"event-sourcing-test-{secrets.token_hex(4)}"
    _add_fault(sandbox, f"{execution_id}:3", mode="fail_always", status=status)

    projection = asyncio.run(_project(devserver, execution_id, EVENTS))

    assert projection["account"] == _as_json(fold(EVENTS))["account"]
    assert projection["unrecorded"] == [{"sequence": 3, "reason": f"{status} injected failure"}]
    assert _requests_per_event(sandbox, execution_id) == dict.fromkeys(range(1, 9), 1)
    recorded = [e.body["sequence"] for e in sandbox.records.effects(key_prefix=execution_id + ":")]
    assert recorded == [1, 2, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("status", [503, 429, 408])
def test_a_statement_service_that_is_not_answering_now_is_asked_again(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory, status: int
) -> None:
    _worker(start_worker, devserver, sandbox.url)
    execution_id = f"event-sourcing-test-{secrets.token_hex(4)}"
    _add_fault(sandbox, f"{execution_id}:2", mode="fail_times", times=1, status=status)

    projection = asyncio.run(_project(devserver, execution_id, EVENTS))

    assert projection == _as_json(fold(EVENTS))
    assert _requests_per_event(sandbox, execution_id) == {
        n: 2 if n == 2 else 1 for n in range(1, 9)
    }
    recorded = [e.body["sequence"] for e in sandbox.records.effects(key_prefix=execution_id + ":")]
    assert recorded == list(range(1, len(EVENTS) + 1))


def test_a_call_that_cannot_start_fails_at_once_instead_of_being_retried(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    # No events: the body fails before its first step, the same way on every attempt. Under the
    # SDK's default policy it would be retried (2 s, 4 s, 8 s, ...) and outlive the timeout.
    _worker(start_worker, devserver, sandbox.url)
    execution_id = f"event-sourcing-test-{secrets.token_hex(4)}"

    with pytest.raises(ApplicationError, match="missing a required argument: 'events'"):
        asyncio.run(_project(devserver, execution_id))

    assert _requests_per_event(sandbox, execution_id) == {}
