"""`delete_user_data` in process: the SDK's own `resonate.testing`, the example's SQLite store in a
temporary directory, and the report service faked on `httpx.MockTransport`.

No Kafka here: the consumer only starts one execution per record, under the record's id; these
tests run that execution. They need only the SDK, this package and pytest: they run in a copy of
this folder outside the cookbook (`make copy-out-kafka-worker`). The tests that drive a real
Kafka broker, dev server and workers are in tests/cookbook/ and run in the cookbook only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka_worker.steps import BATCH_SIZE, Batch, DeletionPlan, Providers
from kafka_worker.store import SAMPLE_ROWS, UserData
from kafka_worker.workflow import STEP_RETRY, WORKFLOW_RETRY, delete_user_data
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.testing import local_resonate, resolved_promise, root_context

RECORD = "record-1"  # the Kafka record's id: the execution id the consumer starts
USER = "user-7"


@dataclass
class FakeReports:
    """The service told about deletions: `answer(attempt) -> (status, JSON body)` or a whole
    response."""

    answer: Callable[[int], tuple[int, dict[str, Any]] | httpx.Response]
    keys: list[str] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.keys.append(request.headers["Idempotency-Key"])
        answer = self.answer(len(self.keys))
        if isinstance(answer, httpx.Response):
            return answer
        status, body = answer
        return httpx.Response(status, json=body)


def accepted(attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": f"rcpt_{attempt}"}


@pytest.fixture
def store(tmp_path: Path) -> UserData:
    return UserData(tmp_path / "data")


def run(store: UserData, reports: FakeReports) -> dict[str, Any]:
    """The record's execution on an in-process Resonate registered as the worker does."""

    async def go() -> dict[str, Any]:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(reports.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://reports") as c:
                resonate.with_dependency(Providers(c))
                resonate.with_dependency(store)
                resonate.register(delete_user_data, retry_policy=WORKFLOW_RETRY)
                handle = resonate.run(RECORD, delete_user_data, USER)
                result: dict[str, Any] = await asyncio.wait_for(handle.result(), 30)
                return result
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_the_rows_go_in_planned_batches_each_deleted_once_then_reported_once(
    store: UserData,
) -> None:
    reports = FakeReports(accepted)

    result = run(store, reports)

    assert result == {
        "user_id": USER,
        "rows_deleted": SAMPLE_ROWS,
        "batches": 2,
        "receipt": "rcpt_1",
        "report_refused": None,
    }
    assert store.rows_left(USER) == 0
    erasures = store.erasures(RECORD)
    assert [e.rows for e in erasures] == [BATCH_SIZE, SAMPLE_ROWS - BATCH_SIZE]
    assert len({e.step_id for e in erasures}) == 2
    assert len(reports.keys) == 1


def test_a_refused_report_is_stated_in_the_result_and_not_asked_again(store: UserData) -> None:
    reports = FakeReports(lambda attempt: (422, {"error": "unknown user"}))

    result = run(store, reports)

    assert result["receipt"] is None
    assert result["report_refused"] is not None
    assert result["report_refused"].startswith("422 Unprocessable Entity")
    assert len(reports.keys) == 1
    assert store.rows_left(USER) == 0  # the rows are deleted all the same


def test_a_report_service_that_is_down_is_asked_again_under_the_same_key(store: UserData) -> None:
    reports = FakeReports(lambda attempt: (503, {}) if attempt <= 2 else accepted(attempt))

    result = run(store, reports)

    assert result["receipt"] == "rcpt_3"
    assert len(reports.keys) == 3
    assert set(reports.keys) == {reports.keys[0]}
    assert STEP_RETRY.max_retries >= 2


@pytest.mark.parametrize(
    "answer",
    [
        lambda: httpx.Response(200, html="<html><body>Welcome to the gateway</body></html>"),
        lambda: httpx.Response(200, json={"status": "ok"}),
        # httpx decodes the body as it builds the response, and raises DecodingError
        lambda: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_report_answered_without_its_answer_may_have_landed_and_is_asked_again(
    store: UserData, answer: Callable[[], httpx.Response]
) -> None:
    # Not a bug in the step: the report may have landed. It fails as an HTTP error, like a 5xx,
    # after the policy's retries, all under one key; the rows are deleted all the same.
    reports = FakeReports(lambda attempt: answer())

    with pytest.raises(httpx.HTTPError):
        run(store, reports)

    assert len(reports.keys) == 1 + STEP_RETRY.max_retries
    assert set(reports.keys) == {reports.keys[0]}
    assert store.rows_left(USER) == 0


def planned(store: UserData) -> DeletionPlan:
    """The plan the first step made (the user's sample rows, in batches)."""
    ids = store.row_ids(USER)
    chunks = [ids[i : i + BATCH_SIZE] for i in range(0, len(ids), BATCH_SIZE)]
    return DeletionPlan(len(ids), [Batch(c[0], c[-1], len(c)) for c in chunks])


def replay(
    store: UserData, reports: FakeReports, plan: DeletionPlan, journal_batches_done: int
) -> dict[str, Any]:
    """The body over a journal: the plan, and the first `journal_batches_done` batches done."""
    journal = [resolved_promise(f"{RECORD}:1", asdict(plan))]
    journal += [
        resolved_promise(f"{RECORD}:{n + 2}", plan.batches[n].rows)
        for n in range(journal_batches_done)
    ]

    async def go() -> dict[str, Any]:
        transport = httpx.MockTransport(reports.handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://reports") as c:
            deps = DependencyMap()
            deps.insert(Providers(c))
            deps.insert(store)
            ctx: Context = root_context(id=RECORD, preload=journal, deps=deps)
            return await delete_user_data(ctx, USER)

    return asyncio.run(go())


def test_a_replay_carries_on_with_the_first_batch_the_journal_has_no_result_for(
    store: UserData,
) -> None:
    reports = FakeReports(accepted)

    result = replay(store, reports, planned(store), journal_batches_done=1)

    assert result["rows_deleted"] == SAMPLE_ROWS  # the plan's count, from the journal
    assert [e.rows for e in store.erasures(RECORD)] == [SAMPLE_ROWS - BATCH_SIZE]  # batch 2 only


def test_a_batch_run_again_after_it_deleted_deletes_nothing_more(store: UserData) -> None:
    """A crash after the first batch deleted its rows but before it was checkpointed."""
    plan = planned(store)
    first = plan.batches[0]
    store.delete_range("earlier-attempt", "earlier-step", USER, first.first_id, first.last_id)

    result = replay(store, FakeReports(accepted), plan, journal_batches_done=0)

    assert result["rows_deleted"] == SAMPLE_ROWS
    [second] = store.erasures(RECORD)  # the rerun of the first batch deleted nothing
    assert (second.first_id, second.rows) == (plan.batches[1].first_id, SAMPLE_ROWS - BATCH_SIZE)
    assert store.rows_left(USER) == 0
