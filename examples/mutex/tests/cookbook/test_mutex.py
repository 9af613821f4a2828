"""mutex end to end: a real dev server, worker processes, the report generator's own records.

Mutual exclusion is judged by the resource, not by the workflows: every use it accepted has a
start and an end in its SQLite file, and no two of them overlap in time.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cookbook.processes import ManagedProcess
from cookbook.testing.fixtures import DevServerFactory, ProcessFactory, RunningDevServer
from mutex.workflow import contend
from resonate.resonate import Resonate
from resonate.retry import Never
from resonate.testing import local_resonate

TIMEOUT_S = 60


def start(url: str, execution_id: str, *args: Any) -> Any:
    """Start `contend` and return its result (or raise its error)."""

    async def go() -> Any:
        client = Resonate(url=url, group="mutex-tests")
        try:
            handle = client.options(target="mutex").rpc(execution_id, "contend", *args)
            return await asyncio.wait_for(handle.result(), TIMEOUT_S)
        finally:
            await client.stop()

    return asyncio.run(go())


def uses(db: Path, mutex: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(db)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM uses WHERE mutex = ? ORDER BY turn", (mutex,))
        return [dict(row) for row in rows]


def assert_no_overlap(accepted: list[dict[str, Any]]) -> None:
    by_start = sorted(accepted, key=lambda u: u["started_at"])
    for earlier, later in itertools.pairwise(by_start):
        assert earlier["finished_at"] <= later["started_at"], (earlier, later)


def workers(
    start_worker: ProcessFactory, devserver: RunningDevServer, db: Path, ttl: float = 30
) -> list[ManagedProcess]:
    env = {"RESONATE_URL": devserver.url, "MUTEX_DB": str(db), "RESONATE_TTL_SECONDS": str(ttl)}
    return [start_worker("mutex.worker", env, name=f"worker-{i}") for i in (1, 2)]


def test_concurrent_waiters_use_the_resource_one_at_a_time(
    devserver: RunningDevServer, start_worker: ProcessFactory, tmp_path: Path
) -> None:
    db = tmp_path / "reports.db"
    workers(start_worker, devserver, db)
    holders = ["ada", "grace", "linus", "barbara"]

    result = start(devserver.url, f"mutex-test-{secrets.token_hex(4)}", holders, 60, 0.3)

    assert result["uses"] == sorted(f"{h}: done" for h in holders)
    recorded = uses(db, result["mutex"])
    assert sorted(u["holder"] for u in recorded) == sorted(holders)
    assert [u["turn"] for u in recorded] == [1, 2, 3, 4]
    assert {u["status"] for u in recorded} == {"done"}
    assert_no_overlap(recorded)


def test_a_holder_killed_while_holding_is_fenced_and_the_others_finish(
    start_devserver: DevServerFactory, start_worker: ProcessFactory, tmp_path: Path
) -> None:
    # Without fast recovery, the killed holder's task waits for its lease (ttl 10 s) to lapse:
    # longer than the hold limit, so the coordinator has moved on when it comes back.
    devserver = start_devserver(fast_recovery=False)
    db = tmp_path / "reports.db"
    processes = workers(start_worker, devserver, db, ttl=10)
    holders = ["ada", "grace", "linus"]
    hold_limit_s, work_s = 3.0, 1.0
    execution_id = f"mutex-test-{secrets.token_hex(4)}"
    mutex = f"reports.{execution_id}"

    async def scenario() -> Any:
        client = Resonate(url=devserver.url, group="mutex-tests")
        try:
            handle = client.options(target="mutex").rpc(
                execution_id, "contend", holders, hold_limit_s, work_s
            )
            first = await _first_use(db, mutex)
            holding = next(p for p in processes if p.pid == first["pid"])
            holding.kill()  # SIGKILL, mid-report: it never releases
            return first, await asyncio.wait_for(handle.result(), TIMEOUT_S)
        finally:
            await client.stop()

    killed, result = asyncio.run(scenario())

    victim = killed["holder"]
    others = [h for h in holders if h != victim]
    assert result["uses"] == sorted([f"{victim}: fenced"] + [f"{h}: done" for h in others])
    recorded = uses(db, mutex)
    assert [(u["turn"], u["status"]) for u in recorded] == [(1, "fenced"), (2, "done"), (3, "done")]
    accepted = [u for u in recorded if u["status"] == "done"]
    assert_no_overlap(accepted)
    # The next holder got the resource once the hold limit had passed, not before. The limit
    # runs from the release promise, created just before the grant; the killed use started a
    # moment after the grant (up to a second under load).
    assert accepted[0]["started_at"] >= killed["started_at"] + hold_limit_s - 1.0


async def _first_use(db: Path, mutex: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        recorded = uses(db, mutex)  # the workers created the table as they started
        if recorded:
            return recorded[0]
        await asyncio.sleep(0.05)
    pytest.fail("no holder started using the resource")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((["ada", "ada"],), "holders"),
        (([],), "holders"),
        ((["ada"], 0), "hold_limit_seconds"),
    ],
)
def test_bad_input_is_refused_before_anything_is_queued(args: tuple[Any, ...], field: str) -> None:
    async def go() -> None:
        resonate = local_resonate()
        resonate.register(contend, retry_policy=Never())
        try:
            handle = resonate.run(f"bad-{secrets.token_hex(4)}", contend, *args)
            with pytest.raises(ValueError, match=field):
                await asyncio.wait_for(handle.result(), TIMEOUT_S)
        finally:
            await resonate.stop()

    asyncio.run(go())
