"""countdown end to end: a real dev server, worker processes, the provider sandbox.

Most tests run a realistic countdown (notifications an hour apart) on a dev server that skips
time. Skipping moves every pending deadline earlier instead of moving the clock, the workflow's
own deadline included, so how far that deadline moved is the waiting that was skipped: ten hourly
sleeps must add up to ten hours, no less (a sleep cut short) and no more (a sleep started again).
One test runs in real time, because only there can a sleep's deadline be read while it is still
pending and compared with the same promise after the crash and with the next push's arrival.

Exactly-once is counted where it lands: the sandbox's records of each push, keyed by step id.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from cookbook import clients
from cookbook.processes import ManagedProcess
from cookbook.testing.fixtures import (
    DevServerFactory,
    ProcessFactory,
    RunningDevServer,
    RunningSandbox,
)
from countdown.demo import Plan, parse_plan
from countdown.workflow import MAX_NOTIFICATIONS, countdown_problem
from resonate.resonate import Resonate
from resonate.types import PromiseRecord

HOUR = 3600
TIMEOUT = timedelta(days=2)  # the execution's own deadline, longer than any countdown here
TIMEOUT_S = 60


def _worker(
    start_worker: ProcessFactory, server: RunningDevServer, sandbox_url: str
) -> ManagedProcess:
    env = {"RESONATE_URL": server.url, "PROVIDER_API_URL": sandbox_url}
    return start_worker("countdown.worker", env)


def _countdown(
    server: RunningDevServer,
    execution_id: str,
    count: int,
    interval_seconds: int,
    while_running: Callable[[], Awaitable[None]] | None = None,
) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        client = Resonate(url=server.url, group="countdown-tests")
        try:
            handle = client.options(target="countdown", timeout=TIMEOUT).rpc(
                execution_id, "countdown", "subscriber-42", count, interval_seconds
            )
            if while_running is not None:
                await while_running()
            result: list[dict[str, Any]] = await asyncio.wait_for(handle.result(), TIMEOUT_S)
            return result
        finally:
            await client.stop()

    return asyncio.run(go())


def _promise(server: RunningDevServer, promise_id: str) -> PromiseRecord:
    """A promise as the server stores it, read through the SDK's public API."""

    async def get() -> PromiseRecord:
        client = Resonate(url=server.url, group="countdown-tests")
        try:
            return await client.promises.get(promise_id)
        finally:
            await client.stop()

    return asyncio.run(get())


def _promise_ids(server: RunningDevServer, execution_id: str) -> list[str]:
    promises = server.state(execution_id)["promises"]
    assert isinstance(promises, list)
    return sorted((p["id"] for p in promises), key=lambda i: int(i.partition(":")[2] or 0))


def _skipped_ms(server: RunningDevServer, execution_id: str) -> int:
    """How far time skipping moved the workflow's deadline: the waiting that was skipped."""
    root = _promise(server, execution_id)
    return root.created_at + int(TIMEOUT.total_seconds() * 1000) - root.timeout_at


def _messages(count: int, interval_seconds: int) -> list[str]:
    hours = [(count - n) * interval_seconds // HOUR for n in range(1, count + 1)]
    return [f"{h}h to go" if h else "time's up" for h in hours]


def _assert_each_push_once(
    sandbox: RunningSandbox, execution_id: str, count: int, interval_seconds: int
) -> list[str]:
    """Every notification exactly once, in order, keyed by its step id; returns the receipts."""
    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    # Sleeps and pushes alternate, so the pushes are the even-numbered steps.
    keys = [f"{execution_id}:{2 * n}" for n in range(1, count + 1)]
    assert [e.idempotency_key for e in effects] == keys
    assert [e.body["position"] for e in effects] == list(range(1, count + 1))
    assert [e.body["message"] for e in effects] == _messages(count, interval_seconds)
    return [e.resource_id for e in effects]


@pytest.fixture
def skipping(start_devserver: DevServerFactory) -> RunningDevServer:
    return start_devserver(skip_time=True)


def test_ten_hourly_notifications_each_once_in_a_second_with_ten_hours_slept(
    skipping: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    _worker(start_worker, skipping, sandbox.url)
    execution_id = f"countdown-test-{secrets.token_hex(4)}"

    started = time.monotonic()
    results = _countdown(skipping, execution_id, 10, HOUR)
    wall = time.monotonic() - started

    receipts = _assert_each_push_once(sandbox, execution_id, 10, HOUR)
    assert [r["receipt"] for r in results] == receipts
    assert len(sandbox.records.requests(key_prefix=execution_id + ":")) == 10  # none sent again
    for n in range(1, 11):
        sleep = _promise(skipping, f"{execution_id}:{2 * n - 1}")
        assert (sleep.state, sleep.tags.get("resonate:timer")) == ("resolved", "true")
    # Each skip fires a sleep at once, minus the moment the worker took to get to it.
    assert 10 * HOUR * 1000 - 10_000 < _skipped_ms(skipping, execution_id) <= 10 * HOUR * 1000
    assert wall < 15, wall


def test_a_worker_killed_mid_countdown_resumes_with_no_push_again_and_every_hour_slept(
    skipping: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    first = _worker(start_worker, skipping, sandbox.url)
    execution_id = f"countdown-test-{secrets.token_hex(4)}"
    # Dies once the workflow is suspended on its fifth sleep (`:9`), four pushes in.
    skipping.kill_at("suspend", f"{execution_id}:9", when="after", pid=first.pid)

    async def outage() -> None:
        assert await asyncio.to_thread(first.wait, TIMEOUT_S) == -9
        await asyncio.to_thread(_worker, start_worker, skipping, sandbox.url)

    results = _countdown(skipping, execution_id, 10, HOUR, outage)

    receipts = _assert_each_push_once(sandbox, execution_id, 10, HOUR)
    assert [r["receipt"] for r in results] == receipts
    assert len(sandbox.records.requests(key_prefix=execution_id + ":")) == 10  # none sent again
    # No sleep was created twice (ten sleeps, ten pushes), and together they slept ten hours.
    assert _promise_ids(skipping, execution_id) == [execution_id] + [
        f"{execution_id}:{n}" for n in range(1, 21)
    ]
    assert 10 * HOUR * 1000 - 10_000 < _skipped_ms(skipping, execution_id) <= 10 * HOUR * 1000


def test_a_worker_killed_while_sleeping_wakes_at_the_same_deadline_in_real_time(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    interval_s = 3
    first = _worker(start_worker, devserver, sandbox.url)
    execution_id = f"countdown-test-{secrets.token_hex(4)}"
    sleep_id = f"{execution_id}:3"  # the second sleep, after push 1
    devserver.kill_at("suspend", sleep_id, when="after", pid=first.pid)
    before: list[PromiseRecord] = []
    replaced_at: list[float] = []

    async def outage() -> None:
        assert await asyncio.to_thread(first.wait, TIMEOUT_S) == -9
        client = Resonate(url=devserver.url, group="countdown-tests")
        try:
            before.append(await client.promises.get(sleep_id))
        finally:
            await client.stop()
        await asyncio.to_thread(_worker, start_worker, devserver, sandbox.url)
        replaced_at.append(time.time())

    _countdown(devserver, execution_id, 2, interval_s, outage)

    after = _promise(devserver, sleep_id)
    (pending,) = before
    assert pending.state == "pending"
    assert after.state == "resolved"
    # The same timer, not a new one, with the same deadline: not shortened, not restarted.
    assert (after.created_at, after.timeout_at) == (pending.created_at, pending.timeout_at)
    # The worker takes the deadline, then the server stamps the promise: on a loaded machine a
    # moment later, so a second of room; a timer cut to half the interval would still fail.
    assert interval_s * 1000 - 1000 <= pending.timeout_at - pending.created_at <= interval_s * 1000
    assert after.settled_at is not None
    assert after.settled_at >= pending.timeout_at
    effects = sandbox.records.effects(key_prefix=execution_id + ":")
    assert [e.idempotency_key for e in effects] == [f"{execution_id}:2", f"{execution_id}:4"]
    assert len(sandbox.records.requests(key_prefix=f"{execution_id}:2")) == 1  # not sent again
    # Push 2 went out at the deadline (in ms, as stored), not before it, and soon after it (or
    # after the new worker was up, if starting it took longer than the rest of the sleep).
    assert effects[1].started_at * 1000 >= pending.timeout_at - 1
    # (Two seconds of room for a loaded machine: a timer restarted by the new worker would fire
    # three seconds after it came up.)
    assert effects[1].started_at < max(pending.timeout_at / 1000, replaced_at[0]) + 2


def test_a_push_whose_result_was_lost_is_answered_from_its_key_not_sent_twice(
    skipping: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    first = _worker(start_worker, skipping, sandbox.url)
    execution_id = f"countdown-test-{secrets.token_hex(4)}"
    # Dies after the push service acted on push 2 (`:4`), before its result was checkpointed.
    skipping.kill_at("settle", f"{execution_id}:4", when="before", pid=first.pid)

    async def crash() -> None:
        assert await asyncio.to_thread(first.wait, TIMEOUT_S) == -9
        await asyncio.to_thread(_worker, start_worker, skipping, sandbox.url)

    results = _countdown(skipping, execution_id, 3, HOUR, crash)

    receipts = _assert_each_push_once(sandbox, execution_id, 3, HOUR)
    assert [r["receipt"] for r in results] == receipts
    again = sandbox.records.requests(key_prefix=f"{execution_id}:4")
    assert [r.replayed for r in again] == [False, True]


def _add_fault(sandbox: RunningSandbox, key_prefix: str, **spec: Any) -> None:
    response = clients.post(
        f"{sandbox.url}/_admin/faults", json={"provider": "push", "key_prefix": key_prefix, **spec}
    )
    response.raise_for_status()


@pytest.mark.parametrize("status", [400, 404])
def test_a_refused_push_is_a_result_sent_once_and_the_countdown_goes_on(
    skipping: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory, status: int
) -> None:
    _worker(start_worker, skipping, sandbox.url)
    execution_id = f"countdown-test-{secrets.token_hex(4)}"
    _add_fault(sandbox, f"{execution_id}:4", mode="fail_always", status=status)  # push 2

    results = _countdown(skipping, execution_id, 3, HOUR)

    assert results[1] == {
        "position": 2,
        "message": "1h to go",
        "receipt": None,
        "refusal": f"{status} injected failure",
    }
    requests = sandbox.records.requests(key_prefix=execution_id + ":")
    assert [r.idempotency_key for r in requests] == [f"{execution_id}:{n}" for n in (2, 4, 6)]
    assert [r["receipt"] is not None for r in results] == [True, False, True]


@pytest.mark.parametrize("status", [503, 429])
def test_a_push_the_service_cannot_take_now_is_sent_again_with_the_same_key(
    skipping: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory, status: int
) -> None:
    _worker(start_worker, skipping, sandbox.url)
    execution_id = f"countdown-test-{secrets.token_hex(4)}"
    _add_fault(sandbox, f"{execution_id}:4", mode="fail_times", times=1, status=status)

    results = _countdown(skipping, execution_id, 3, HOUR)

    receipts = _assert_each_push_once(sandbox, execution_id, 3, HOUR)
    assert [r["receipt"] for r in results] == receipts
    again = sandbox.records.requests(key_prefix=f"{execution_id}:4")
    assert [r.status_code for r in again] == [status, 200]


@pytest.mark.parametrize(
    ("count", "interval_seconds", "named"),
    [(0, HOUR, "count: must be between 1"), (3, 0, "interval_seconds: must be between 1")],
)
def test_a_countdown_with_bad_arguments_is_refused_before_it_sleeps_or_sends(
    skipping: RunningDevServer,
    sandbox: RunningSandbox,
    start_worker: ProcessFactory,
    count: int,
    interval_seconds: int,
    named: str,
) -> None:
    # Started directly, past the demo's own check: the workflow refuses before its first sleep.
    _worker(start_worker, skipping, sandbox.url)
    execution_id = f"countdown-test-{secrets.token_hex(4)}"

    with pytest.raises(ValueError, match=named):
        _countdown(skipping, execution_id, count, interval_seconds)

    assert _promise_ids(skipping, execution_id) == [execution_id]  # no sleep, no push
    assert sandbox.records.requests(key_prefix=execution_id + ":") == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("ada", 0, 60), "count: must be between 1 and 1000 notifications, got 0"),
        (("ada", -3, 60), "count: must be between 1 and 1000 notifications, got -3"),
        (("ada", MAX_NOTIFICATIONS + 1, 60), "count: must be between 1 and 1000"),
        (("ada", 2.5, 60), "count: must be a whole number of notifications, got 2.5"),
        (("ada", True, 60), "count: must be a whole number of notifications, got True"),
        (("ada", 3, 0), "interval_seconds: must be between 1 and 2592000 (30 days), got 0"),
        (("ada", 3, -60), "interval_seconds: must be between 1 and 2592000 (30 days), got -60"),
        (("ada", 3, 31 * 86400), "interval_seconds: must be between 1 and 2592000"),
        (("ada", 3, "60"), "interval_seconds: must be a whole number of seconds, got '60'"),
        (("ada", 1000, 30 * 86400), "count x interval_seconds: the countdown would run"),
        (("", 3, 60), "subscriber: must be a non-empty string"),
        (("x" * 101, 3, 60), "subscriber: must be a non-empty string of at most 100"),
    ],
)
def test_bad_arguments_are_named_with_the_reason(args: tuple[Any, ...], named: str) -> None:
    assert (countdown_problem(*args) or "").startswith(named), countdown_problem(*args)


@pytest.mark.parametrize("args", [("ada", 1, 1), ("ada", 1000, 60), ("ada", 12, 30 * 86400)])
def test_good_arguments_pass(args: tuple[Any, ...]) -> None:
    assert countdown_problem(*args) is None


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, Plan(4, 2)),
        ([], {"SKIP_TIME": "1"}, Plan(10, HOUR)),
        ([], {"COUNT": "3", "EVERY": "5s"}, Plan(3, 5)),
        (["6", "90m"], {"SKIP_TIME": "1"}, Plan(6, 90 * 60)),
        (["2", "1d"], {}, Plan(2, 86400)),
        (["7", "45"], {}, Plan(7, 45)),
    ],
)
def test_the_demo_reads_its_countdown(
    argv: list[str], environ: dict[str, str], expected: Plan
) -> None:
    assert parse_plan(argv, environ) == expected


@pytest.mark.parametrize(
    ("argv", "refusal"),
    [
        (["0", "1h"], "countdown refused: count: must be between 1 and 1000 notifications, got 0"),
        (["-2", "1h"], "countdown refused: COUNT must be a whole number, got '-2'"),
        (["3", "0s"], "countdown refused: interval_seconds: must be between 1 and 2592000"),
        (["3", "-1h"], "countdown refused: EVERY must be a duration like 2s, 90m, 1h or 1d"),
        (["3", "soon"], "countdown refused: EVERY must be a duration like 2s, 90m, 1h or 1d"),
        (["99999", "1h"], "countdown refused: count: must be between 1 and 1000"),
        (["3"], "usage: python -m countdown.demo [COUNT EVERY]"),
    ],
)
def test_the_demo_refuses_a_bad_countdown_before_starting_it(argv: list[str], refusal: str) -> None:
    with pytest.raises(SystemExit) as refused:
        parse_plan(argv, {})
    assert str(refused.value.code).startswith(refusal), refused.value.code
