"""Promises time out by themselves, as on the official server: nobody has to touch them."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import timedelta
from typing import Any

import pytest
from cookbook.devserver.machine import IndexedServerState
from cookbook.testing.fixtures import DevServerFactory, ProcessFactory, RunningDevServer
from resonate.error import ResonateTimeoutError
from resonate.resonate import Resonate

WORKER = "tests.devserver.workflows"
DECISION_TIMEOUT_MS = 1500


def _awaited_by_a_suspended_workflow(timeout_at: int) -> IndexedServerState:
    """A machine where workflow `w` is suspended on `w:1`, a promise without a target."""
    machine = IndexedServerState()
    workflow = {"id": "w", "timeoutAt": 10**12, "param": {}, "tags": {"resonate:target": "t"}}
    machine.apply(
        0,
        {
            "kind": "task.create",
            "corrId": "c",
            "pid": "p",
            "ttl": 10**6,
            "action": {"kind": "promise.create", "data": workflow},
        },
    )
    machine.apply(
        0,
        {
            "kind": "promise.create",
            "corrId": "c",
            "id": "w:1",
            "timeoutAt": timeout_at,
            "param": {},
            "tags": {},
        },
    )
    machine.apply(
        0,
        {
            "kind": "promise.register_listener",
            "corrId": "c",
            "awaited": "w:1",
            "address": "poll://client",
        },
    )
    suspended = machine.apply(
        0,
        {
            "kind": "task.suspend",
            "corrId": "c",
            "id": "w",
            "version": 0,
            "actions": [
                {"kind": "promise.register_callback", "data": {"awaited": "w:1", "awaiter": "w"}}
            ],
        },
    )
    assert suspended["status"] == 200, suspended
    return machine


def test_expiring_a_latent_promise_is_what_touching_it_after_its_deadline_does() -> None:
    expired, touched = _awaited_by_a_suspended_workflow(50), _awaited_by_a_suspended_workflow(50)

    assert expired.next_latent_deadline() == 50
    assert expired.expire_latent(49) == []
    assert expired.expire_latent(60) == ["w:1"]
    touched.apply(60, {"kind": "promise.get", "corrId": "c", "id": "w:1"})

    def stored(machine: IndexedServerState) -> Any:
        return (
            [(p.to_record(), sorted(p.awaiters)) for p in machine.promises.values()],
            [t.to_record() for t in machine.tasks.values()],
        )

    assert stored(expired) == stored(touched)
    assert expired.promises["w:1"].state == "rejected_timedout"
    assert expired.tasks["w"].state == "pending"  # resumed: an execute goes out
    assert expired.next_latent_deadline() is None


def test_the_push_telling_of_a_timeout_carries_a_value_object() -> None:
    machine = _awaited_by_a_suspended_workflow(50)
    machine.outgoing.clear()
    machine.expire_latent(60)

    unblocks = [m.message for m in machine.outgoing if m.message["kind"] == "unblock"]
    assert [u["data"]["promise"]["value"] for u in unblocks] == [{}]
    assert machine.promises["w:1"].value is None  # stored as ServerState stores it


def test_the_deadline_heap_forgets_settled_steps() -> None:
    # Every ctx.run step is a promise without a target: a long history of settled steps must
    # not keep an entry each.
    machine = IndexedServerState()
    for i in range(10_000):
        step = {"id": f"s{i}", "timeoutAt": 10**12, "param": {}, "tags": {}}
        machine.apply(i, {"kind": "promise.create", "corrId": "c", **step})
        machine.apply(
            i,
            {
                "kind": "promise.settle",
                "corrId": "c",
                "id": f"s{i}",
                "state": "resolved",
                "value": {},
            },
        )
    assert len(machine.promises.latent_deadlines) <= 2 * IndexedServerState().promises.COMPACT_FLOOR


def _start(url: str, execution_id: str, func: str, *args: Any, timeout: timedelta) -> None:
    async def go() -> None:
        client = Resonate(url=url, group="devserver-tests-client")
        try:
            await (
                client.options(target="devserver-tests", timeout=timeout)
                .rpc(execution_id, func, *args)
                .id()
            )
        finally:
            await client.stop()

    asyncio.run(go())


def _result(url: str, execution_id: str, within: float) -> Any:
    """Await an execution's result as a client does: a listener, then the server's push."""

    async def go() -> Any:
        client = Resonate(url=url, group="devserver-tests-client")
        try:
            handle = await client.get(execution_id)
            return await asyncio.wait_for(handle.result(), within)
        finally:
            await client.stop()

    return asyncio.run(go())


def _promise(server: RunningDevServer, promise_id: str) -> dict[str, Any]:
    snapshot: Any = server.state(promise_id.split(":", 1)[0])
    found: dict[str, Any] = next(p for p in snapshot["promises"] if p["id"] == promise_id)
    return found


def _await_a_decision(server: RunningDevServer, execution_id: str) -> float:
    """Start `deadline(...)` and return once it is suspended on its decision (monotonic time)."""
    _start(server.url, execution_id, "deadline", DECISION_TIMEOUT_MS, timeout=timedelta(minutes=5))
    server.wait_for("suspend", f"{execution_id}:1")
    return time.monotonic()


def test_a_workflow_awaiting_a_latent_promise_resumes_at_its_timeout(
    devserver: RunningDevServer, start_worker: ProcessFactory
) -> None:
    start_worker(WORKER, {"RESONATE_URL": devserver.url})
    execution_id = f"deadline-{secrets.token_hex(3)}"
    suspended_at = _await_a_decision(devserver, execution_id)

    # Only the workflow's own promise is listened to: nothing touches the decision's.
    assert _result(devserver.url, execution_id, within=10) == "no decision in time"
    waited = time.monotonic() - suspended_at
    decision = _promise(devserver, f"{execution_id}:1")
    assert decision["state"] == "rejected_timedout"
    assert decision["settledAt"] == decision["timeoutAt"]
    assert waited < DECISION_TIMEOUT_MS / 1000 + 3, f"resumed {waited:.2f}s after suspending"


def test_a_replayed_log_rebuilds_the_same_state_after_a_timeout(
    devserver: RunningDevServer, start_worker: ProcessFactory
) -> None:
    start_worker(WORKER, {"RESONATE_URL": devserver.url})
    execution_id = f"deadline-{secrets.token_hex(3)}"
    _await_a_decision(devserver, execution_id)
    assert _result(devserver.url, execution_id, within=10) == "no decision in time"
    before = devserver.state()

    devserver.kill()
    devserver.process.wait(10)
    devserver.restart()

    assert devserver.state() == before


def test_a_timeout_due_while_the_server_was_down_fires_after_its_restart(
    devserver: RunningDevServer, start_worker: ProcessFactory
) -> None:
    start_worker(WORKER, {"RESONATE_URL": devserver.url})
    execution_id = f"deadline-{secrets.token_hex(3)}"
    _await_a_decision(devserver, execution_id)

    devserver.kill()
    devserver.process.wait(10)
    time.sleep(DECISION_TIMEOUT_MS / 1000)  # the deadline passes while no server runs
    devserver.restart()

    assert _result(devserver.url, execution_id, within=15) == "no decision in time"
    assert _promise(devserver, f"{execution_id}:1")["state"] == "rejected_timedout"


def test_a_client_awaiting_a_timed_out_workflow_is_told(
    devserver: RunningDevServer, start_worker: ProcessFactory
) -> None:
    # The workflow waits for a decision longer than its own deadline: its promise times out
    # in the tick and the server pushes the news to the listening client (once, not on a poll).
    start_worker(WORKER, {"RESONATE_URL": devserver.url})
    execution_id = f"late-{secrets.token_hex(3)}"
    _start(devserver.url, execution_id, "approval", 10, timeout=timedelta(seconds=2))

    with pytest.raises(ResonateTimeoutError):
        _result(devserver.url, execution_id, within=10)


def test_skipping_time_reaches_a_latent_promise_timeout(
    start_devserver: DevServerFactory, start_worker: ProcessFactory
) -> None:
    server = start_devserver(skip_time=True)
    start_worker(WORKER, {"RESONATE_URL": server.url})
    execution_id = f"deadline-{secrets.token_hex(3)}"
    thirty_days_ms = 30 * 24 * 3600 * 1000
    started = time.monotonic()
    _start(server.url, execution_id, "deadline", thirty_days_ms, timeout=timedelta(days=31))

    assert _result(server.url, execution_id, within=10) == "no decision in time"
    assert time.monotonic() - started < 5
