"""`nightly_report` and `create_nightly_schedule` in process: the SDK's `resonate.testing`.

Each tick's run is started here by hand, as the server starts it at a tick (a fresh execution
whose id is the tick's own); the providers are fakes on `httpx.MockTransport`. These tests need
only the SDK, this package and pytest: they run in a copy of this folder outside the cookbook
(`uv sync` then `uv run pytest tests`). The tests that drive a real dev server, its scheduler,
worker processes and the provider sandbox are in tests/cookbook/ and run in the cookbook.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from resonate.dependencies import DependencyMap
from resonate.retry import Never
from resonate.testing import local_resonate, resolved_promise, root_context
from schedule.steps import Providers, ProviderUnavailableError, gather_figures
from schedule.workflow import (
    DISTRIBUTION_LIST,
    GROUP,
    NIGHTLY,
    SCHEDULE_ID,
    Report,
    ScheduleRefusedError,
    create_nightly_schedule,
    nightly_report,
)


def answers(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": ("export-" if path == "/api/call" else "msg-") + str(attempt)}


@dataclass
class FakeProviders:
    """The figures API (/api/call) and the mailer (/email/send), answering by rule."""

    answer: Callable[[str, int], tuple[int, dict[str, Any]]] = answers
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append((path, request.headers["Idempotency-Key"], json.loads(request.content)))
        status, body = self.answer(path, len(self.to(path)))
        return httpx.Response(status, json=body)

    def to(self, path: str) -> list[tuple[str, dict[str, Any]]]:
        return [(key, body) for called, key, body in self.calls if called == path]


def run_ticks(providers: FakeProviders, *ticks: str) -> list[Report]:
    """Each tick's `nightly_report`, run as the server starts it: an execution with its id."""

    async def go() -> list[Report]:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(providers.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                resonate.with_dependency(Providers(client))
                resonate.register(nightly_report, retry_policy=Never())
                reports: list[Report] = []
                for tick in ticks:
                    handle = resonate.run(tick, nightly_report, DISTRIBUTION_LIST)
                    reports.append(await asyncio.wait_for(handle.result(), 30))
                return reports
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_a_tick_gathers_the_figures_once_and_mails_them_once_as_of_one_moment() -> None:
    providers = FakeProviders()

    [report] = run_ticks(providers, "nightly-report.1")

    assert report.status == "sent"
    assert (report.figures, report.message_id) == ("export-1", "msg-1")
    [(_, asked)] = providers.to("/api/call")
    [(_, mail)] = providers.to("/email/send")
    assert mail["to"] == DISTRIBUTION_LIST
    assert mail["report"] == "nightly-report.1"
    assert mail["figures"] == "export-1"
    assert asked["as_of"] == report.as_of
    assert mail["subject"].endswith(report.as_of)


def test_every_tick_is_a_new_report_with_keys_of_its_own() -> None:
    providers = FakeProviders()

    reports = run_ticks(providers, "nightly-report.1", "nightly-report.2")

    assert [r.report_id for r in reports] == ["nightly-report.1", "nightly-report.2"]
    assert len({key for _, key, _ in providers.calls}) == 4


def test_refused_figures_still_send_a_notice_and_a_refused_mail_is_undelivered() -> None:
    no_figures = FakeProviders(
        lambda path, n: (403, {"error": "quota"}) if path == "/api/call" else answers(path, n)
    )
    [report] = run_ticks(no_figures, "nightly-report.1")
    assert (report.status, report.reason) == ("sent-without-figures", "403 quota")
    assert len(no_figures.to("/api/call")) == 1
    assert no_figures.to("/email/send")[0][1]["notice"] == "no figures tonight: 403 quota"

    no_mail = FakeProviders(
        lambda path, n: (
            (422, {"error": "no such list"}) if path == "/email/send" else answers(path, n)
        )
    )
    [report] = run_ticks(no_mail, "nightly-report.1")
    assert (report.status, report.reason) == ("undelivered", "422 no such list")
    assert len(no_mail.to("/email/send")) == 1


def test_a_provider_that_is_down_is_asked_again_with_the_same_key_and_the_same_body() -> None:
    providers = FakeProviders(
        lambda path, n: (503, {}) if path == "/api/call" and n < 3 else answers(path, n)
    )

    [report] = run_ticks(providers, "nightly-report.1")

    asked = providers.to("/api/call")
    assert report.figures == "export-3"
    assert len({key for key, _ in asked}) == 1
    assert len({json.dumps(body) for _, body in asked}) == 1  # the clock was read once


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (lambda _: httpx.Response(200, html="<html>Bad Gateway</html>"), "without a readable"),
        (lambda _: httpx.Response(200, json={"ok": True}), "HTTP 200 without a readable 'id'"),
        (  # httpx decodes the body as it builds the response, and raises DecodingError
            lambda _: httpx.Response(200, content=b"garbled", headers={"Content-Encoding": "gzip"}),
            "DecodingError",
        ),
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_figures_answered_without_their_id_are_asked_for_again(
    answer: Callable[[httpx.Request], httpx.Response], reason: str
) -> None:
    # A 2xx that is not the API's answer says nothing of what it did: not a bug in the step, but
    # a call that may have landed, retried under the same key like a timeout.
    async def go() -> None:
        transport = httpx.MockTransport(answer)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            await gather_figures(root_context(id="tick-1", deps=deps), "2025-01-01T00:00:00+00:00")

    with pytest.raises(ProviderUnavailableError, match=reason):
        asyncio.run(go())


def test_a_replay_mails_the_figures_the_journal_holds_without_asking_again() -> None:
    providers = FakeProviders()
    journal = [
        resolved_promise("nightly-report.1:1", "2030-01-01T00:00:00+00:00"),
        resolved_promise("nightly-report.1:2", "export-journal"),
    ]

    async def replay() -> Report:
        transport = httpx.MockTransport(providers.handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            ctx = root_context(id="nightly-report.1", preload=journal, deps=deps)
            return await nightly_report(ctx, DISTRIBUTION_LIST)

    report = asyncio.run(replay())

    assert report.figures == "export-journal"
    assert report.as_of == "2030-01-01T00:00:00+00:00"
    assert [path for path, _, _ in providers.calls] == ["/email/send"]


@pytest.mark.parametrize("distribution_list", ["ada@example.com", "Finance", ""])
def test_a_schedule_for_anything_but_a_list_name_is_refused(distribution_list: str) -> None:
    async def go() -> None:
        resonate = local_resonate()
        try:
            await create_nightly_schedule(resonate, NIGHTLY, distribution_list=distribution_list)
        finally:
            await resonate.stop()

    with pytest.raises(ScheduleRefusedError, match="invalid field 'distribution_list'"):
        asyncio.run(go())


def test_the_schedule_is_created_once_and_a_different_cron_or_list_for_it_is_refused() -> None:
    async def go() -> None:
        resonate = local_resonate()
        try:
            first = await create_nightly_schedule(resonate)
            again = await create_nightly_schedule(resonate)
            assert again.name == first.name == SCHEDULE_ID
            with pytest.raises(ScheduleRefusedError, match="delete it first"):
                await create_nightly_schedule(resonate, "*/5 * * * *")
            with pytest.raises(
                ScheduleRefusedError, match=r"args \['finance-team'\], not \['ops-team'\]"
            ):
                await create_nightly_schedule(resonate, distribution_list="ops-team")
            stored = await resonate.schedules.get(SCHEDULE_ID)  # unchanged
            assert stored.cron == NIGHTLY
            assert resonate.schedules.codec.decode(stored.promise_param)["args"] == [
                DISTRIBUTION_LIST
            ]
        finally:
            await resonate.stop()

    asyncio.run(go())


def test_a_schedule_there_with_another_promise_timeout_is_refused() -> None:
    async def go() -> None:
        resonate = local_resonate()
        try:
            await resonate.options(target=GROUP).schedule(
                SCHEDULE_ID,
                NIGHTLY,
                "nightly_report",
                args=(DISTRIBUTION_LIST,),
                promise_timeout=timedelta(hours=1),
            )
            with pytest.raises(ScheduleRefusedError, match=r"promise timeout \(ms\) 3600000"):
                await create_nightly_schedule(resonate)
        finally:
            await resonate.stop()

    asyncio.run(go())
