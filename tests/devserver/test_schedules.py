"""Schedules fire: each cron tick creates its promise once, across worker and server crashes."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cookbook.devserver.state import DurableState
from cookbook.testing.fixtures import DevServerFactory, ProcessFactory, RunningDevServer
from resonate.error import ServerError
from resonate.resonate import Resonate

WORKER = "tests.devserver.workflows"
TARGET = "devserver-tests"
MINUTE_MS = 60_000


def _client(url: str) -> Resonate:
    return Resonate(url=url, group="devserver-tests-client").options(target=TARGET)


def _create_every_minute(url: str, schedule_id: str) -> None:
    async def go() -> None:
        client = _client(url)
        try:
            await client.schedule(schedule_id, "* * * * *", "tick", args=(schedule_id,))
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


def _tick_promises(server: RunningDevServer, schedule_id: str) -> list[dict[str, Any]]:
    snapshot: Any = server.state()
    return [p for p in snapshot["promises"] if p["tags"].get("resonate:schedule") == schedule_id]


def _resolved_ticks(server: RunningDevServer, schedule_id: str) -> list[dict[str, Any]]:
    return [p for p in _tick_promises(server, schedule_id) if p["state"] == "resolved"]


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    # The ticks' ids are not known in advance (they carry the skipped-to time), so there is
    # no single promise to long-poll the journal for: poll the state instead.
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def test_five_ticks_each_run_once_across_a_worker_and_a_server_crash(
    start_devserver: DevServerFactory, start_worker: ProcessFactory, tmp_path: Path
) -> None:
    server = start_devserver(skip_time=True)
    runs = tmp_path / "runs.log"
    env = {"RESONATE_URL": server.url, "STEP_LOG": str(runs), "RESONATE_TTL_SECONDS": "1"}
    first_worker = start_worker(WORKER, env)
    schedule_id = f"every-minute-{secrets.token_hex(3)}"
    _create_every_minute(server.url, schedule_id)

    _wait_until(lambda: len(_resolved_ticks(server, schedule_id)) >= 2, "2 ticks")
    first_worker.kill()  # SIGKILL: a tick it had taken runs again elsewhere when its lease lapses
    start_worker(WORKER, env)
    _wait_until(lambda: len(_resolved_ticks(server, schedule_id)) >= 3, "3 ticks")
    server.kill()
    server.process.wait(10)
    server.restart()
    _wait_until(lambda: len(_resolved_ticks(server, schedule_id)) >= 5, "5 ticks")
    _delete(server.url, schedule_id)

    # The deletion may come while the last tick fired still runs: it finishes, no other fires.
    _wait_until(
        lambda: all(p["state"] == "resolved" for p in _tick_promises(server, schedule_id)),
        "the last tick to finish",
    )
    ticks = _tick_promises(server, schedule_id)
    assert len(ticks) >= 5
    ids = [p["id"] for p in ticks]
    # One promise per tick, each at its own time (a tick fired twice would share an id).
    assert len({int(i.removeprefix(f"{schedule_id}-")) for i in ids}) == len(ids)
    for promise in ticks:
        assert promise["tags"]["resonate:target"].endswith(f"@{TARGET}")
        assert promise["tags"]["resonate:origin"] == promise["id"]

    # Every tick ran, and only a tick the killed worker had started ran a second time.
    lines = [line.split() for line in runs.read_text().splitlines()]
    started = Counter(line[2] for line in lines)
    assert set(started) == set(ids), "a tick was lost, or something else ran"
    killed = {line[2] for line in lines if line[0] == str(first_worker.pid)}
    repeated = {i for i, n in started.items() if n > 1}
    assert repeated <= killed, started
    assert len(repeated) <= 1, started


def test_deleting_a_schedule_stops_it(
    start_devserver: DevServerFactory, start_worker: ProcessFactory
) -> None:
    server = start_devserver(skip_time=True)
    start_worker(WORKER, {"RESONATE_URL": server.url})
    schedule_id = f"stopped-{secrets.token_hex(3)}"
    _create_every_minute(server.url, schedule_id)
    _wait_until(lambda: len(_resolved_ticks(server, schedule_id)) >= 1, "a first tick")

    _delete(server.url, schedule_id)
    _wait_until(
        lambda: all(p["state"] == "resolved" for p in _tick_promises(server, schedule_id)),
        "the tick in flight to finish",
    )
    fired = len(_tick_promises(server, schedule_id))
    # No event marks "a tick that should not come did not come": with time skipping on, one
    # would be due within a tick loop turn (100 ms) of the last one finishing.
    time.sleep(0.5)
    assert len(_tick_promises(server, schedule_id)) == fired


@pytest.mark.parametrize(
    ("cron", "reason"),
    [("61 * * * *", "Bad minute"), ("*/5 * * *", "5 fields"), ("0 0 * * * *", "5 fields")],
)
def test_a_bad_cron_expression_is_refused_naming_the_field(
    devserver: RunningDevServer, cron: str, reason: str
) -> None:
    async def go() -> None:
        client = _client(devserver.url)
        try:
            await client.schedule(f"bad-{secrets.token_hex(3)}", cron, "tick")
        finally:
            await client.stop()

    with pytest.raises(ServerError) as refused:
        asyncio.run(go())
    assert refused.value.code == 400
    assert "'cron'" in str(refused.value)
    assert reason in str(refused.value)

    async def stored() -> list[str]:
        client = _client(devserver.url)
        try:
            return [s.id for s in (await client.schedules.search(None, None, None)).schedules]
        finally:
            await client.stop()

    assert asyncio.run(stored()) == []


def _create_request(schedule_id: str) -> dict[str, Any]:
    return {
        "kind": "schedule.create",
        "corrId": "test",
        "id": schedule_id,
        "cron": "* * * * *",
        "promiseId": "{{.id}}-{{.timestamp}}",
        "promiseTimeout": MINUTE_MS,
        "promiseParam": {"headers": {}, "data": None},
        "promiseTags": {"resonate:target": TARGET},
    }


def test_ticks_missed_while_the_server_was_down_fire_once_the_latest(tmp_path: Path) -> None:
    clock = [10 * MINUTE_MS + 30_000]  # 00:10:30
    state = DurableState(tmp_path, fsync=False, clock=lambda: clock[0])
    state.open()
    state.apply(_create_request("nightly"))
    state.close()

    clock[0] = 13 * MINUTE_MS + 30_000  # down over the 00:11, 00:12 and 00:13 ticks
    restarted = DurableState(tmp_path, fsync=False, clock=lambda: clock[0])
    restarted.open()
    fired = restarted.fire_due_schedules()
    assert [a.response["promise"]["id"] for a in fired] == [f"nightly-{13 * MINUTE_MS}"]
    assert fired[0].outgoing, "the tick's task is dispatched to its target"
    assert restarted.fire_due_schedules() == []
    restarted.close()

    # Replayed, the fired tick is not due again; the next one is.
    again = DurableState(tmp_path, fsync=False, clock=lambda: clock[0])
    again.open()
    assert again.fire_due_schedules() == []
    clock[0] = 14 * MINUTE_MS
    assert [a.response["promise"]["id"] for a in again.fire_due_schedules()] == [
        f"nightly-{14 * MINUTE_MS}"
    ]
    again.close()
