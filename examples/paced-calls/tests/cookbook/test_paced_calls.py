"""paced-calls end to end: a real dev server, worker processes, the provider sandbox.

The spacing is measured where it matters, on the receiving side: the sandbox's own timestamp of
each call it acted on.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.sandbox.store import EffectRecord
from cookbook.testing.fixtures import (
    DevServerFactory,
    ProcessFactory,
    RunningDevServer,
    RunningSandbox,
)
from resonate.error import ApplicationError
from resonate.resonate import Resonate

RECORDS = ["contact-1", "contact-2", "contact-3", "contact-4"]
INTERVAL_MS = 300  # three dev-server timer ticks (100 ms): a gap that is clearly a sleep
# The timer's deadline is stored in whole milliseconds and both timestamps come from the same
# clock, so a call can arrive at most 1 ms short of the interval after the previous one. A burst
# would show gaps of a few milliseconds.
TOLERANCE_S = 0.005
TIMEOUT_S = 30
# A strict partner's pace, for the test on a dev server that skips time.
ONE_A_MINUTE_MS = 60_000


def _worker(start_worker: ProcessFactory, devserver: RunningDevServer, url: str) -> ManagedProcess:
    env = {"RESONATE_URL": devserver.url, "PROVIDER_API_URL": url, "PATH": "/usr/bin:/bin"}
    return start_worker("paced_calls.worker", env)


async def _send_batch(
    devserver: RunningDevServer,
    execution_id: str,
    while_running: Callable[[], Awaitable[None]] | None = None,
    args: tuple[object, ...] = (RECORDS, INTERVAL_MS),
) -> list[str | None]:
    """The receipt of each call, in order (None for a call the API refused)."""
    client = Resonate(url=devserver.url, group="paced-calls-tests")
    try:
        handle = client.options(target="paced-calls").rpc(execution_id, "send_batch", *args)
        if while_running is not None:
            await while_running()
        results: list[dict[str, Any]] = await asyncio.wait_for(handle.result(), TIMEOUT_S)
        assert [r["record"] for r in results] == RECORDS
        return [r["receipt"] for r in results]
    finally:
        await client.stop()


def _add_fault(sandbox: RunningSandbox, key_prefix: str, **spec: Any) -> None:
    response = clients.post(
        f"{sandbox.url}/_admin/faults", json={"provider": "api", "key_prefix": key_prefix, **spec}
    )
    response.raise_for_status()


def _kill_at(
    devserver: RunningDevServer, worker: ManagedProcess, operation: str, promise_id: str, when: str
) -> None:
    """Arm the dev server to SIGKILL `worker` at an exact protocol boundary (a tripwire)."""
    wire = {"operation": operation, "promise_id": promise_id, "when": when}
    response = clients.post(
        f"{devserver.url}/_cookbook/tripwires", json={**wire, "victim": "worker", "pid": worker.pid}
    )
    response.raise_for_status()


def _wait_until_resolved(devserver: RunningDevServer, promise_id: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        promises = devserver.state(promise_id.split(":")[0])["promises"]
        assert isinstance(promises, list)
        if any(p["id"] == promise_id and p["state"] == "resolved" for p in promises):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{promise_id} was not resolved within {TIMEOUT_S}s")


def _assert_each_call_once_and_spaced(effects: list[EffectRecord], execution_id: str) -> None:
    assert [e.body for e in effects] == [
        {"record": record, "position": position} for position, record in enumerate(RECORDS, 1)
    ]
    # Calls and sleeps alternate, so the calls are the odd-numbered steps.
    assert [e.idempotency_key for e in effects] == [f"{execution_id}:{n}" for n in (1, 3, 5, 7)]
    gaps = [b.started_at - a.started_at for a, b in itertools.pairwise(effects)]
    assert all(gap >= INTERVAL_MS / 1000 - TOLERANCE_S for gap in gaps), gaps


def test_calls_arrive_one_interval_apart(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    _worker(start_worker, devserver, sandbox.url)
    execution_id = f"paced-calls-test-{secrets.token_hex(4)}"

    receipts = asyncio.run(_send_batch(devserver, execution_id))

    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    _assert_each_call_once_and_spaced(effects, execution_id)
    assert receipts == [e.resource_id for e in effects]


def test_at_one_call_a_minute_the_sleeps_are_skipped_and_the_calls_are_the_same(
    start_devserver: DevServerFactory, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    # The spacing itself can only be seen in real time (the other tests); on a dev server that
    # skips time, a realistic pace runs unchanged: three minutes of sleeps in a few seconds.
    server = start_devserver(skip_time=True)
    _worker(start_worker, server, sandbox.url)
    execution_id = f"paced-calls-test-{secrets.token_hex(4)}"

    started = time.monotonic()
    receipts = asyncio.run(_send_batch(server, execution_id, args=(RECORDS, ONE_A_MINUTE_MS)))
    took = time.monotonic() - started

    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert [e.body for e in effects] == [
        {"record": record, "position": position} for position, record in enumerate(RECORDS, 1)
    ]
    assert [e.idempotency_key for e in effects] == [f"{execution_id}:{n}" for n in (1, 3, 5, 7)]
    assert receipts == [e.resource_id for e in effects]
    promises = server.state(execution_id)["promises"]
    assert isinstance(promises, list)
    sleeps = {p["id"]: p["state"] for p in promises if p["tags"].get("resonate:timer") == "true"}
    assert sleeps == {f"{execution_id}:{n}": "resolved" for n in (2, 4, 6)}
    assert took < 3 * ONE_A_MINUTE_MS / 1000 / 10, f"took {took:.1f}s"


def test_a_worker_killed_while_sleeping_resumes_at_the_next_call_without_a_burst(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    first = _worker(start_worker, devserver, sandbox.url)
    execution_id = f"paced-calls-test-{secrets.token_hex(4)}"
    # Dies right after call 1, once the workflow is suspended on its first sleep (`:2`).
    _kill_at(devserver, first, "suspend", f"{execution_id}:2", "after")
    restarted_at = 0.0

    async def outage() -> None:
        nonlocal restarted_at
        assert await asyncio.to_thread(first.wait, TIMEOUT_S) == -9
        # No worker is alive when the sleep ends: calls 2 to 4 are all "due" by now, which is
        # exactly when a naive limiter (a schedule of absolute times, say) would fire them at once.
        await asyncio.to_thread(_wait_until_resolved, devserver, f"{execution_id}:2")
        restarted_at = time.time()
        await asyncio.to_thread(_worker, start_worker, devserver, sandbox.url)

    receipts = asyncio.run(_send_batch(devserver, execution_id, outage))

    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    _assert_each_call_once_and_spaced(effects, execution_id)
    assert receipts == [e.resource_id for e in effects]
    assert effects[0].started_at < restarted_at < effects[1].started_at  # the new worker did 2-4


def test_a_call_whose_result_was_lost_is_not_repeated_and_the_rate_holds(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    first = _worker(start_worker, devserver, sandbox.url)
    execution_id = f"paced-calls-test-{secrets.token_hex(4)}"
    # Dies after the API acted on call 2 (`:3`), before the step could checkpoint its result.
    _kill_at(devserver, first, "settle", f"{execution_id}:3", "before")

    async def crash() -> None:
        assert await asyncio.to_thread(first.wait, TIMEOUT_S) == -9
        await asyncio.to_thread(_worker, start_worker, devserver, sandbox.url)

    receipts = asyncio.run(_send_batch(devserver, execution_id, crash))

    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    _assert_each_call_once_and_spaced(effects, execution_id)
    assert receipts == [e.resource_id for e in effects]
    # Call 2 was sent again by the new worker, and the API answered from its idempotency store.
    again = sandbox.records.requests(key_prefix=f"{execution_id}:3")
    assert [r.replayed for r in again] == [False, True]


@pytest.mark.parametrize("status", [400, 409, 422])
def test_a_refused_record_is_a_result_sent_once_and_the_batch_goes_on_at_the_rate(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory, status: int
) -> None:
    _worker(start_worker, devserver, sandbox.url)
    execution_id = f"paced-calls-test-{secrets.token_hex(4)}"
    _add_fault(sandbox, f"{execution_id}:3", mode="fail_always", status=status)  # call 2

    async def send() -> Any:
        client = Resonate(url=devserver.url, group="paced-calls-tests")
        try:
            handle = client.options(target="paced-calls").rpc(
                execution_id, "send_batch", RECORDS, INTERVAL_MS
            )
            return await asyncio.wait_for(handle.result(), TIMEOUT_S)
        finally:
            await client.stop()

    results = asyncio.run(send())

    assert results[1] == {
        "record": "contact-2",
        "receipt": None,
        "refusal": f"{status} injected failure",
    }
    assert [r.idempotency_key for r in sandbox.records.requests(key_prefix=execution_id + ":")] == [
        f"{execution_id}:{n}" for n in (1, 3, 5, 7)
    ]
    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert [r["receipt"] for r in results] == [
        effects[0].resource_id,
        None,
        effects[1].resource_id,
        effects[2].resource_id,
    ]


@pytest.mark.parametrize("status", [503, 429, 408])
def test_a_call_the_api_cannot_take_now_is_retried_and_only_lengthens_its_gap(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory, status: int
) -> None:
    _worker(start_worker, devserver, sandbox.url)
    execution_id = f"paced-calls-test-{secrets.token_hex(4)}"
    _add_fault(sandbox, f"{execution_id}:3", mode="fail_times", times=1, status=status)

    receipts = asyncio.run(_send_batch(devserver, execution_id))

    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    _assert_each_call_once_and_spaced(effects, execution_id)
    assert receipts == [e.resource_id for e in effects]
    again = sandbox.records.requests(key_prefix=f"{execution_id}:3")
    assert [r.status_code for r in again] == [status, 200]


def test_at_a_pace_slower_than_the_first_retry_every_request_still_keeps_it(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    # The API counts every request against the rate, the one it answered 429 included. At 2.5 s
    # apart, the retry policy's own first delay (2 s) would send the retry early.
    _worker(start_worker, devserver, sandbox.url)
    execution_id = f"paced-calls-test-{secrets.token_hex(4)}"
    _add_fault(sandbox, f"{execution_id}:3", mode="fail_times", times=1, status=429)  # call 2
    slow_interval_ms = 2_500

    async def send() -> Any:
        client = Resonate(url=devserver.url, group="paced-calls-tests")
        try:
            handle = client.options(target="paced-calls").rpc(
                execution_id, "send_batch", RECORDS[:2], slow_interval_ms
            )
            return await asyncio.wait_for(handle.result(), TIMEOUT_S)
        finally:
            await client.stop()

    results = asyncio.run(send())

    assert [r["receipt"] is not None for r in results] == [True, True]
    requests = sandbox.records.requests(key_prefix=execution_id + ":")
    assert [(r.idempotency_key, r.status_code) for r in requests] == [
        (f"{execution_id}:1", 200),
        (f"{execution_id}:3", 429),
        (f"{execution_id}:3", 200),
    ]
    gaps = [b.started_at - a.started_at for a, b in itertools.pairwise(requests)]
    assert all(gap >= slow_interval_ms / 1000 - TOLERANCE_S for gap in gaps), gaps


def test_a_call_that_cannot_start_fails_at_once_instead_of_being_retried(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    # No interval: the body fails before its first step, the same way on every attempt. Under the
    # SDK's default policy it would be retried (2 s, 4 s, 8 s, ...) and outlive the timeout.
    _worker(start_worker, devserver, sandbox.url)
    execution_id = f"paced-calls-test-{secrets.token_hex(4)}"

    with pytest.raises(ApplicationError, match="missing a required argument: 'interval_ms'"):
        asyncio.run(_send_batch(devserver, execution_id, args=(RECORDS,)))

    assert sandbox.records.requests(key_prefix=execution_id + ":") == []
