"""`contend`, `coordinator` and `use_resource` in process: the SDK's `resonate.testing`.

One in-process Resonate runs the coordinator and every waiter, and is the hub the hand-off steps
create and settle promises with; the report store is a temporary SQLite file. These tests need
only the SDK, this package and pytest: they run in a copy of this folder outside the cookbook
(`uv sync` then `uv run pytest tests`). The tests that drive a real dev server and worker
processes are in tests/cookbook/ and run in the cookbook.
"""

from __future__ import annotations

import asyncio
import itertools
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from mutex.steps import Hub, ReportStore, enqueue, generate_report
from mutex.workflow import contend, coordinator, use_resource
from resonate.dependencies import DependencyMap
from resonate.error import ServerError
from resonate.retry import Never
from resonate.testing import local_resonate, root_context
from resonate.types import PromiseRecord


def contend_in_process(store: ReportStore, holders: list[str], **options: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        resonate = local_resonate()
        try:
            resonate.with_dependency(Hub(resonate))
            resonate.with_dependency(store)
            for workflow in (contend, coordinator, use_resource):
                resonate.register(workflow, retry_policy=Never())
            handle = resonate.run("run-1", contend, holders, **options)
            result: dict[str, Any] = await asyncio.wait_for(handle.result(), 30)
            return result
        finally:
            await resonate.stop()

    return asyncio.run(go())


def uses(store: ReportStore) -> list[tuple[int, str, float, float | None, str]]:
    with closing(store.connect()) as db:
        rows = db.execute(
            "SELECT turn, holder, started_at, finished_at, status FROM uses ORDER BY turn"
        ).fetchall()
    return [(int(t), str(h), float(s), f, str(st)) for t, h, s, f, st in rows]


def test_every_waiter_gets_one_turn_and_no_two_uses_overlap(tmp_path: Path) -> None:
    store = ReportStore(tmp_path / "reports.db")

    result = contend_in_process(store, ["ada", "bob", "cy"], work_seconds=0.05)

    assert result == {
        "mutex": "reports.run-1",
        "uses": ["ada: done", "bob: done", "cy: done"],
        "turns": 3,
    }
    recorded = uses(store)
    assert [turn for turn, *_ in recorded] == [1, 2, 3]
    assert sorted(holder for _, holder, *_ in recorded) == ["ada", "bob", "cy"]
    for (_, _, _, finished, _), (_, _, started, _, _) in itertools.pairwise(recorded):
        assert finished is not None
        assert finished <= started  # the next use started after the previous one ended


def test_a_use_whose_turn_was_overtaken_is_fenced_and_not_published(tmp_path: Path) -> None:
    """A holder presumed dead (its hold limit passed) comes back after turn 2 started."""
    store = ReportStore(tmp_path / "reports.db")
    deps = DependencyMap()
    deps.insert(store)

    async def both() -> tuple[str, str]:
        later = await generate_report(root_context(id="b", deps=deps), "m", "bob", 2, 0)
        late = await generate_report(root_context(id="a", deps=deps), "m", "ada", 1, 0)
        return later, late

    assert asyncio.run(both()) == ("done", "fenced")
    assert [(turn, status) for turn, _, _, _, status in uses(store)] == [(1, "fenced"), (2, "done")]


@pytest.mark.parametrize(
    ("holders", "options"),
    [([], {}), (["ada", "ada"], {}), (["ada"], {"hold_limit_seconds": 0})],
)
def test_a_contention_it_cannot_run_is_refused_before_anything_starts(
    tmp_path: Path, holders: list[str], options: dict[str, Any]
) -> None:
    store = ReportStore(tmp_path / "reports.db")

    with pytest.raises(Exception, match=r"^(holders|hold_limit_seconds)"):
        contend_in_process(store, holders, **options)
    assert not (tmp_path / "reports.db").exists()


def test_a_failed_look_for_the_inbox_fails_the_claim_so_it_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only "not found" means the coordinator has not opened the inbox yet; a 503 must raise.

    Taken for "not open yet", the claim would return with the inbox left pending, and this
    waiter and every later one would wait for a turn nobody hands over.
    """

    async def claim() -> int:
        resonate = local_resonate()
        try:
            real_get = resonate.promises.get

            async def unavailable_for_inboxes(promise_id: str) -> PromiseRecord:
                if ".inbox." in promise_id:
                    raise ServerError(503, "the server is restarting")
                return await real_get(promise_id)

            monkeypatch.setattr(resonate.promises, "get", unavailable_for_inboxes)
            deps = DependencyMap()
            deps.insert(Hub(resonate))
            return await enqueue(root_context(id="w", deps=deps), "m", "ada", "grant-ada")
        finally:
            await resonate.stop()

    with pytest.raises(ServerError, match="503"):
        asyncio.run(claim())
