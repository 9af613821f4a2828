"""`export_report` in process: the SDK's own `resonate.testing`, fake systems on MockTransport.

These tests need only the SDK, this package and pytest: they run in a copy of this folder outside
the cookbook (`make copy-out-async-http-api`). The tests that drive a real dev server, workers,
gateways and the provider sandbox are in tests/cookbook/ and run in the cookbook only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from async_http_api.steps import Systems
from async_http_api.workflow import (
    DOWNLOADS,
    EMAIL_RETRIES,
    STEP_RETRIES,
    WORKFLOW_RETRIES,
    ExportRequest,
    ExportResult,
    export_report,
)
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.testing import local_resonate, resolved_promise, root_context

JOB = "job-1"
REQUEST = ExportRequest.model_validate(
    {
        "report": "sales",
        "period_start": "2026-11-01",
        "period_end": "2026-11-30",
        "format": "csv",
        "user_id": "usr_3f9a0c1d",
    }
)


type Reply = dict[str, Any] | str | bytes


@dataclass
class FakeSystems:
    """Warehouse, storage and mail, answering by rule: `answer(system, attempt) -> (status, body)`.

    `attempt` counts the calls that system has had so far (1 for its first); every call is recorded
    as (system, idempotency key). A dict is answered as JSON, a str as an HTML page, and bytes as
    they are under `Content-Encoding: gzip`: a garbled body that cannot even be decoded.
    """

    answer: Callable[[str, int], tuple[int, Reply]]
    calls: list[tuple[str, str]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        system = "email" if request.url.path == "/email/send" else body["system"]
        self.calls.append((system, request.headers["Idempotency-Key"]))
        attempt = sum(1 for called, _ in self.calls if called == system)
        status, reply = self.answer(system, attempt)
        if isinstance(reply, str):
            return httpx.Response(status, html=reply)
        if isinstance(reply, bytes):
            return httpx.Response(status, content=reply, headers={"Content-Encoding": "gzip"})
        return httpx.Response(status, json=reply)

    def systems(self) -> list[str]:
        return [system for system, _ in self.calls]


def all_yes(system: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": {"warehouse": "rs_1", "storage": "obj_1", "email": "msg_1"}[system]}


def export(systems: FakeSystems) -> ExportResult:
    """`export_report` on an in-process Resonate registered as the worker does; no retry waits."""

    async def go() -> ExportResult:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(systems.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://systems") as client:
                resonate.with_dependency(Systems(client))
                resonate.register(export_report, retry_policy=WORKFLOW_RETRIES)
                handle = resonate.run(JOB, export_report, REQUEST)
                result: ExportResult = await asyncio.wait_for(handle.result(), 30)
                return result
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_each_step_acts_once_under_its_own_key_and_the_job_names_its_file() -> None:
    systems = FakeSystems(all_yes)

    result = export(systems)

    assert result == ExportResult(
        outcome="exported",
        file=f"reports/{JOB}.csv",
        link=f"{DOWNLOADS}/obj_1",
        emailed="msg_1",
    )
    assert systems.systems() == ["warehouse", "storage", "email"]
    assert len({key for _, key in systems.calls}) == 3


def test_a_warehouse_refusal_ends_the_job_as_a_value_asked_once_nothing_stored() -> None:
    systems = FakeSystems(lambda system, attempt: (403, {"error": "no permission"}))

    result = export(systems)

    assert result.outcome == "refused"
    assert result.refused_by == "warehouse"
    assert result.reason == "HTTP 403 Forbidden: no permission"
    assert systems.systems() == ["warehouse"]  # not retried; nothing stored or mailed


def test_a_warehouse_that_is_down_once_is_asked_again_under_the_same_key() -> None:
    def answer(system: str, attempt: int) -> tuple[int, dict[str, Any]]:
        if system == "warehouse" and attempt == 1:
            return 503, {"error": "restarting"}
        return all_yes(system, attempt)

    systems = FakeSystems(answer)

    result = export(systems)

    assert result.outcome == "exported"
    assert systems.systems() == ["warehouse", "warehouse", "storage", "email"]
    assert systems.calls[0][1] == systems.calls[1][1]


def test_a_warehouse_that_stays_down_fails_the_job_naming_it_after_the_policys_attempts() -> None:
    systems = FakeSystems(lambda system, attempt: (503, {"error": "down"}))

    with pytest.raises(Exception, match="warehouse"):
        export(systems)

    assert systems.systems() == ["warehouse"] * (1 + STEP_RETRIES.max_retries)


def test_a_refused_mail_still_exports_the_file_with_the_reason() -> None:
    def answer(system: str, attempt: int) -> tuple[int, dict[str, Any]]:
        if system == "email":
            return 422, {"error": "mailbox does not exist"}
        return all_yes(system, attempt)

    systems = FakeSystems(answer)

    result = export(systems)

    assert result.outcome == "exported"
    assert result.file == f"reports/{JOB}.csv"
    assert result.emailed is None
    assert result.reason == "not emailed: HTTP 422 Unprocessable Entity: mailbox does not exist"
    assert systems.systems() == ["warehouse", "storage", "email"]


def test_a_mail_system_down_past_every_retry_still_exports_the_file_with_its_link() -> None:
    # The file is stored: the job is done, its link in the result, the mail reported as maybe
    # unsent, rather than a failed job whose resubmission would query and store again.
    def answer(system: str, attempt: int) -> tuple[int, dict[str, Any]]:
        if system == "email":
            return 503, {"error": "down"}
        return all_yes(system, attempt)

    systems = FakeSystems(answer)

    result = export(systems)

    assert result == ExportResult(
        outcome="exported",
        file=f"reports/{JOB}.csv",
        link=f"{DOWNLOADS}/obj_1",
        reason="may not have been emailed: email: HTTP 503 Service Unavailable: down",
    )
    assert systems.systems() == ["warehouse", "storage"] + ["email"] * (
        1 + EMAIL_RETRIES.max_retries
    )


PROXY_PAGE = "<html><body>Welcome to the gateway</body></html>"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (PROXY_PAGE, "HTTP 200 without a readable 'id'"),
        ({"status": "queued"}, "HTTP 200 without a readable 'id'"),
        (b"garbled", "DecodingError"),  # httpx cannot decode it: it raises as it reads the body
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_mail_answered_without_its_answer_may_have_been_sent(reply: Reply, reason: str) -> None:
    # A 200 that is not the mail system's answer says nothing about what it did: not a bug that
    # fails the job, but a mail that may have gone out, retried under its key like an outage.
    def answer(system: str, attempt: int) -> tuple[int, Reply]:
        return (200, reply) if system == "email" else all_yes(system, attempt)

    systems = FakeSystems(answer)

    result = export(systems)

    assert (result.outcome, result.link) == ("exported", f"{DOWNLOADS}/obj_1")
    assert result.reason == f"may not have been emailed: email: {reason}"
    emails = [key for system, key in systems.calls if system == "email"]
    assert len(emails) == 1 + EMAIL_RETRIES.max_retries
    assert len(set(emails)) == 1


def test_a_refusal_with_a_page_instead_of_json_is_still_a_refusal_asked_once() -> None:
    systems = FakeSystems(lambda system, attempt: (403, PROXY_PAGE))

    result = export(systems)

    assert (result.outcome, result.refused_by) == ("refused", "warehouse")
    assert result.reason == f"HTTP 403 Forbidden: {PROXY_PAGE}"
    assert systems.systems() == ["warehouse"]


def test_a_replay_after_a_crash_reads_the_query_and_the_file_from_the_journal() -> None:
    """What the next worker does after a crash before the mail: only the mail goes out."""
    systems = FakeSystems(all_yes)
    journal = [resolved_promise(f"{JOB}:1", "rs_1"), resolved_promise(f"{JOB}:2", "obj_1")]

    async def replay() -> ExportResult:
        transport = httpx.MockTransport(systems.handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://systems") as client:
            deps = DependencyMap()
            deps.insert(Systems(client))
            ctx: Context = root_context(id=JOB, preload=journal, deps=deps)
            return await export_report(ctx, REQUEST)

    result = asyncio.run(replay())

    assert result.emailed == "msg_1"
    assert result.link == f"{DOWNLOADS}/obj_1"
    assert systems.systems() == ["email"]
