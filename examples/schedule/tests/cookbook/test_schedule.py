"""schedule end to end: a real dev server (skipping time, so every-minute ticks come at once),
worker processes, and the provider sandbox, whose records are the evidence: one report per tick.

The ticks' ids carry the time they fired at, which time skipping makes unpredictable, so the
tests find them as the demo does, by the `resonate:schedule` tag the server puts on each, and
wait by polling the server's state: there is no single promise to wait for.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
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
from resonate.error import ServerError
from resonate.resonate import Resonate
from schedule.workflow import GROUP, ScheduleRefusedError, create_nightly_schedule

EVERY_MINUTE = "* * * * *"
TIMEOUT_S = 30


def _client(url: str) -> Resonate:
    return Resonate(url=url, group="schedule-tests")


def _create(
    url: str, schedule_id: str, cron: str = EVERY_MINUTE, distribution_list: str = "finance-team"
) -> None:
    async def go() -> None:
        client = _client(url)
        try:
            await create_nightly_schedule(client, cron, schedule_id, distribution_list)
        finally:
            await client.stop()

    asyncio.run(go())


def _delete(url: str, schedule_id: str) -> None:
    async def go() -> None:
        client = _client(url)
        try:
            await client.schedules.delete(schedule_id)
        finally:
            await client.stop()

    asyncio.run(go())


def _stored_schedules(url: str) -> list[str]:
    async def go() -> list[str]:
        client = _client(url)
        try:
            return [s.id for s in (await client.schedules.search(None, None, None)).schedules]
        finally:
            await client.stop()

    return asyncio.run(go())


def _ticks(server: RunningDevServer, schedule_id: str) -> list[dict[str, Any]]:
    """The executions the schedule started, oldest first."""
    promises: Any = server.state()["promises"]
    ticks = [p for p in promises if p["tags"].get("resonate:schedule") == schedule_id]
    return sorted(ticks, key=lambda p: (p["createdAt"], p["id"]))


def _resolved(server: RunningDevServer, schedule_id: str) -> int:
    return sum(p["state"] == "resolved" for p in _ticks(server, schedule_id))


def _all_settled(server: RunningDevServer, schedule_id: str) -> bool:
    return all(p["state"] != "pending" for p in _ticks(server, schedule_id))


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def _worker(
    start_worker: ProcessFactory, server: RunningDevServer, sandbox: RunningSandbox
) -> ManagedProcess:
    env = {
        "RESONATE_URL": server.url,
        "PROVIDER_API_URL": sandbox.url,
        "RESONATE_TTL_SECONDS": "5",
    }
    return start_worker("schedule.worker", env)


def _kill_after_email(sandbox: RunningSandbox, pid: int, nth: int = 1) -> None:
    """SIGKILL `pid` right after the mailer sent its nth next email, before it answers."""
    switch = {"provider": "email", "action": "send", "pid": pid, "nth": nth}
    clients.post(f"{sandbox.url}/_admin/kill-switches", json=switch).raise_for_status()


def _assert_one_report_per_tick(
    sandbox: RunningSandbox, schedule_id: str, ticks: list[dict[str, Any]]
) -> None:
    """From the mailer's and the figures API's own records: each tick, one of each, no other."""
    for tick in ticks:
        effects = sandbox.records.effects(key_prefix=tick["id"] + ":")
        assert sorted(e.provider for e in effects) == ["api", "email"], tick["id"]
        (email,) = (e for e in effects if e.provider == "email")
        assert email.body["report"] == tick["id"]
    everything = sandbox.records.effects(key_prefix=schedule_id + "-")
    assert len(everything) == 2 * len(ticks), "an effect outside the ticks' executions"


def test_each_tick_sends_one_report_across_a_worker_and_a_server_kill(
    start_devserver: DevServerFactory, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    server = start_devserver(skip_time=True)
    first = _worker(start_worker, server, sandbox)
    schedule_id = f"nightly-{secrets.token_hex(3)}"
    # The worker dies right after the mailer sent the second tick's report: the step's result is
    # never checkpointed, so another worker runs that step again, under the same key.
    _kill_after_email(sandbox, first.pid, nth=2)
    _create(server.url, schedule_id)

    assert first.wait(TIMEOUT_S) == -9
    _worker(start_worker, server, sandbox)
    _wait_until(lambda: _resolved(server, schedule_id) >= 3, "3 ticks")
    # Then the server dies right after the mailer sent a report, before the worker could record
    # it; it restarts from its log, and the worker's settle goes through once it is back.
    _kill_after_email(sandbox, server.process.pid)
    assert server.process.wait(TIMEOUT_S) == -9
    server.restart()
    resolved_at_restart = _resolved(server, schedule_id)
    _wait_until(lambda: _resolved(server, schedule_id) >= resolved_at_restart + 2, "2 more ticks")
    _delete(server.url, schedule_id)
    _wait_until(lambda: _all_settled(server, schedule_id), "the tick in flight to finish")

    ticks = _ticks(server, schedule_id)
    assert len(ticks) >= 5
    assert all(t["state"] == "resolved" for t in ticks)
    _assert_one_report_per_tick(sandbox, schedule_id, ticks)
    # The kill did land mid-step: the second email was requested again, and answered from its
    # key. (Others may be too: on a loaded machine a lease can lapse and a step run again.)
    emails = [
        e for e in sandbox.records.effects(key_prefix=schedule_id + "-") if e.provider == "email"
    ]
    killed = sandbox.records.requests(key_prefix=emails[1].idempotency_key)
    assert not killed[0].replayed
    assert killed[1].replayed


def test_a_tick_whose_report_fails_transiently_is_retried_not_lost(
    start_devserver: DevServerFactory, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    server = start_devserver(skip_time=True)
    _worker(start_worker, server, sandbox)
    schedule_id = f"nightly-{secrets.token_hex(3)}"
    # The figures API is down (503) for the first tick's first request only.
    fault = {"provider": "api", "key_prefix": schedule_id, "mode": "fail_times", "times": 1}
    clients.post(f"{sandbox.url}/_admin/faults", json=fault | {"status": 503}).raise_for_status()
    _create(server.url, schedule_id)

    _wait_until(lambda: _resolved(server, schedule_id) >= 2, "2 ticks")
    _delete(server.url, schedule_id)
    _wait_until(lambda: _all_settled(server, schedule_id), "the tick in flight to finish")

    ticks = _ticks(server, schedule_id)
    assert all(t["state"] == "resolved" for t in ticks)
    _assert_one_report_per_tick(sandbox, schedule_id, ticks)
    first_tick_api = [
        r.status_code
        for r in sandbox.records.requests(key_prefix=ticks[0]["id"] + ":")
        if r.provider == "api"
    ]
    assert first_tick_api == [503, 200]


def test_deleting_the_schedule_stops_it(
    start_devserver: DevServerFactory, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    server = start_devserver(skip_time=True)
    _worker(start_worker, server, sandbox)
    schedule_id = f"nightly-{secrets.token_hex(3)}"
    _create(server.url, schedule_id)
    _wait_until(lambda: _resolved(server, schedule_id) >= 1, "a first tick")

    _delete(server.url, schedule_id)
    _wait_until(lambda: _all_settled(server, schedule_id), "the tick in flight to finish")
    fired = len(_ticks(server, schedule_id))
    # No event marks "a tick that should not come did not come": with time skipping on, the next
    # one would be due within a turn of the dev server's tick loop (100 ms) after the last ends.
    time.sleep(1)

    assert len(_ticks(server, schedule_id)) == fired
    assert len(sandbox.records.effects(key_prefix=schedule_id + "-")) == 2 * fired
    assert schedule_id not in _stored_schedules(server.url)


@pytest.mark.parametrize(
    ("cron", "reason"),
    [
        ("61 * * * *", "Bad minute"),
        ("*/10 * * * * *", "must have 5 fields"),  # seconds: finer than the dialect
        ("every night", "must have 5 fields"),
        ("0 0 31 2 *", "Bad day-of-month"),  # the 31st of February
    ],
)
def test_a_bad_cron_expression_is_refused_naming_the_field(
    devserver: RunningDevServer, cron: str, reason: str
) -> None:
    schedule_id = f"bad-{secrets.token_hex(3)}"

    with pytest.raises(ScheduleRefusedError) as refused:
        _create(devserver.url, schedule_id, cron)

    message = str(refused.value)
    assert message.startswith(f"schedule {schedule_id!r}: invalid field 'cron': {cron!r}")
    assert reason in message
    assert isinstance(refused.value.__cause__, ServerError)
    assert refused.value.__cause__.code == 400
    assert schedule_id not in _stored_schedules(devserver.url)


@pytest.mark.parametrize("distribution_list", ["ada@example.com", "", "Finance Team", "x" * 64])
def test_a_distribution_list_that_is_not_a_list_name_is_refused_before_anything_is_stored(
    devserver: RunningDevServer, distribution_list: str
) -> None:
    schedule_id = f"nightly-{secrets.token_hex(3)}"

    async def go() -> None:
        client = _client(devserver.url)
        try:
            await create_nightly_schedule(client, EVERY_MINUTE, schedule_id, distribution_list)
        finally:
            await client.stop()

    with pytest.raises(ScheduleRefusedError, match="invalid field 'distribution_list'"):
        asyncio.run(go())
    assert schedule_id not in _stored_schedules(devserver.url)


def test_creating_it_again_is_harmless_but_another_cron_or_list_is_refused(
    devserver: RunningDevServer,
) -> None:
    schedule_id = f"nightly-{secrets.token_hex(3)}"
    _create(devserver.url, schedule_id, "0 0 * * *")
    _create(devserver.url, schedule_id, "0 0 * * *")

    with pytest.raises(ScheduleRefusedError, match="exists with cron '0 0 \\* \\* \\*'"):
        _create(devserver.url, schedule_id, "0 6 * * *")
    with pytest.raises(ScheduleRefusedError, match="exists with args \\['finance-team'\\]"):
        _create(devserver.url, schedule_id, "0 0 * * *", "ops-team")
    assert _stored_schedules(devserver.url).count(schedule_id) == 1


def _report_now(server: RunningDevServer, execution_id: str) -> dict[str, Any]:
    """Run one report directly, as a tick would, and return it as JSON."""

    async def go() -> dict[str, Any]:
        client = _client(server.url)
        try:
            handle = client.options(target=GROUP).rpc(
                execution_id, "nightly_report", "finance-team"
            )
            report: dict[str, Any] = await asyncio.wait_for(handle.result(), TIMEOUT_S)
            return report
        finally:
            await client.stop()

    return asyncio.run(go())


def _refuse(sandbox: RunningSandbox, provider: str, key_prefix: str, status: int) -> None:
    fault = {"provider": provider, "key_prefix": key_prefix, "status": status}
    clients.post(f"{sandbox.url}/_admin/faults", json=fault).raise_for_status()


def test_refused_figures_send_a_notice_instead_asked_once(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    _worker(start_worker, devserver, sandbox)
    execution_id = f"nightly-test-{secrets.token_hex(4)}"
    _refuse(sandbox, "api", execution_id, 404)

    report = _report_now(devserver, execution_id)

    assert report["status"] == "sent-without-figures"
    assert report["reason"] == "404 injected failure"
    calls = sandbox.records.requests(key_prefix=execution_id + ":")
    assert [(c.provider, c.status_code) for c in calls] == [("api", 404), ("email", 200)]
    (email,) = sandbox.records.effects(key_prefix=execution_id + ":")
    assert email.resource_id == report["message_id"]
    assert email.body["figures"] is None
    assert email.body["notice"] == "no figures tonight: 404 injected failure"


def test_a_report_the_mailer_refuses_is_undelivered_asked_once(
    devserver: RunningDevServer, sandbox: RunningSandbox, start_worker: ProcessFactory
) -> None:
    _worker(start_worker, devserver, sandbox)
    execution_id = f"nightly-test-{secrets.token_hex(4)}"
    _refuse(sandbox, "email", execution_id, 422)

    report = _report_now(devserver, execution_id)

    assert report["status"] == "undelivered"
    assert report["reason"] == "422 injected failure"
    emails = [
        c for c in sandbox.records.requests(key_prefix=execution_id + ":") if c.provider == "email"
    ]
    assert [c.status_code for c in emails] == [422]
