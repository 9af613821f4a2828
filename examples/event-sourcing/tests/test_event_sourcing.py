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

import httpx
from cookbook.processes import ManagedProcess
from cookbook.testing.fixtures import ProcessFactory, RunningDevServer, RunningSandbox
from event_sourcing.account import Account, Event, fold
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


def _as_json(account: Account) -> object:
    """What a client that did not register the workflow receives: the projection as JSON."""
    return json.loads(json.dumps(asdict(account)))


async def _project(devserver: RunningDevServer, execution_id: str) -> object:
    client = Resonate(url=devserver.url, group="event-sourcing-tests")
    try:
        handle = client.options(target="event-sourcing").rpc(
            execution_id, "project_account", EVENTS
        )
        return await asyncio.wait_for(handle.result(), TIMEOUT_S)
    finally:
        await client.stop()


def test_projects_the_stream_and_records_each_event_once(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    _worker(start_worker, devserver, sandbox.url)
    execution_id = f"event-sourcing-test-{secrets.token_hex(4)}"

    projection = asyncio.run(_project(devserver, execution_id))

    assert projection == _as_json(fold(EVENTS))
    assert projection == {
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
    httpx.post(
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
    # Every request the statement service received, per event (a replayed one included).
    sent = Counter(
        int(r.idempotency_key.rsplit(":", 1)[1])
        for r in sandbox.records.requests(key_prefix=execution_id + ":")
        if r.idempotency_key is not None
    )
    # Events before k came back from the journal: applied once, never sent again. Event k was
    # sent again by the new worker and answered from the idempotency store.
    assert sent == {n: 2 if n == k else 1 for n in range(1, len(EVENTS) + 1)}
    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert [e.body["sequence"] for e in effects] == list(range(1, len(EVENTS) + 1))
