"""`countdown` in process: the SDK's `resonate.testing` and a fake push service.

The durable sleeps are promises the test settles itself (`root_context(preload=[...])`): a sleep
whose promise is resolved is over, one whose promise is pending suspends the workflow. These
tests need only the SDK, this package and pytest: they run in a copy of this folder outside the
cookbook (`uv sync` then `uv run pytest tests`). The tests that drive a real dev server, worker
processes and the provider sandbox are in tests/cookbook/ and run in the cookbook.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from countdown.steps import Notification, Providers, PushUnavailableError
from countdown.workflow import PUSH_RETRIES, InvalidCountdownError, countdown
from resonate.dependencies import DependencyMap
from resonate.error import Suspended
from resonate.testing import (
    instant_sleeper,
    pending_promise,
    resolved_promise,
    root_context,
)
from resonate.types import PromiseRecord

HOUR = 3600


type Reply = dict[str, Any] | str | bytes


@dataclass
class FakePushService:
    """Answers by rule: `answer(attempt) -> (status, body)`; records every request.

    A dict is answered as JSON, a str as an HTML page, and bytes as they are under
    `Content-Encoding: gzip`: a garbled body that cannot even be decoded."""

    answer: Callable[[int], tuple[int, Reply]] = lambda attempt: (200, {"id": "p"})
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.headers["Idempotency-Key"], json.loads(request.content)))
        status, body = self.answer(len(self.calls))
        if isinstance(body, str):
            return httpx.Response(status, html=body)
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers={"Content-Encoding": "gzip"})
        return httpx.Response(status, json=body)


def run_body(
    service: FakePushService,
    journal: list[PromiseRecord],
    count: int = 3,
    subscriber: str = "ada",
    interval: int = HOUR,
) -> list[Notification]:
    """The workflow body over a journal: `countdown-1:<n>` are its sleeps and pushes, in order."""

    async def go() -> list[Notification]:
        transport = httpx.MockTransport(service.handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://push") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            ctx = root_context(
                id="countdown-1", preload=journal, deps=deps, sleeper=instant_sleeper
            )
            return await countdown(ctx, subscriber, count, interval)

    return asyncio.run(go())


def slept(*positions: int) -> list[PromiseRecord]:
    """Sleeps 1, 2, ... over: the sleep before notification p is the promise `2p - 1`."""
    return [resolved_promise(f"countdown-1:{2 * p - 1}") for p in positions]


def test_each_interval_ends_in_one_push_with_its_own_key_saying_what_is_left() -> None:
    service = FakePushService(lambda attempt: (200, {"id": f"push-{attempt}"}))

    notifications = run_body(service, slept(1, 2, 3))

    assert [n.message for n in notifications] == ["2h to go", "1h to go", "time's up"]
    assert [n.receipt for n in notifications] == ["push-1", "push-2", "push-3"]
    assert [body["position"] for _, body in service.calls] == [1, 2, 3]
    assert len({key for key, _ in service.calls}) == 3


def test_nothing_is_sent_before_the_sleep_is_over() -> None:
    """A sleep whose deadline has not come suspends the workflow: no push, no worker held."""
    service = FakePushService()

    with pytest.raises(Suspended):
        run_body(service, [*slept(1), pending_promise("countdown-1:3")])

    assert len(service.calls) == 1  # the first notification only; the second waits on its sleep


def test_a_replay_skips_the_notifications_the_journal_says_were_sent() -> None:
    service = FakePushService(lambda attempt: (200, {"id": "push-live"}))
    first_sent = resolved_promise(
        "countdown-1:2", {"position": 1, "message": "1h to go", "receipt": "push-journal"}
    )

    notifications = run_body(service, [*slept(1, 2), first_sent], count=2)

    assert [n.receipt for n in notifications] == ["push-journal", "push-live"]
    assert [body["position"] for _, body in service.calls] == [2]


def test_a_refusal_is_the_notifications_result_and_the_countdown_goes_on() -> None:
    service = FakePushService(
        lambda attempt: (
            (410, {"error": "device unregistered"}) if attempt == 1 else (200, {"id": "p"})
        )
    )

    notifications = run_body(service, slept(1, 2), count=2)

    assert notifications[0].refusal == "410 device unregistered"
    assert notifications[1].receipt == "p"
    assert len(service.calls) == 2  # the refusal was not asked again


def test_a_push_service_that_is_down_is_asked_again_with_the_same_key() -> None:
    service = FakePushService(lambda attempt: (503, {}) if attempt < 3 else (200, {"id": "p"}))

    notifications = run_body(service, slept(1), count=1)

    assert notifications[0].receipt == "p"
    assert len(service.calls) == 3
    assert len({key for key, _ in service.calls}) == 1


def test_a_push_service_down_past_the_retry_policy_fails_the_countdown_naming_the_step() -> None:
    service = FakePushService(lambda attempt: (503, {"error": "down"}))

    with pytest.raises(PushUnavailableError, match="notification 1: answered 503"):
        run_body(service, slept(1), count=1)
    assert len(service.calls) == 1 + PUSH_RETRIES.max_retries


PROXY_PAGE = "<html><body>Welcome to the gateway</body></html>"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (PROXY_PAGE, "answered 200 without a readable 'id'"),
        ({"status": "queued"}, "answered 200 without a readable 'id'"),
        (b"garbled", "DecodingError"),  # httpx cannot decode it: it raises as it reads the body
    ],
    ids=["an HTML page", "JSON without the id", "a body that cannot be decoded"],
)
def test_a_push_answered_without_its_answer_may_have_been_sent(reply: Reply, reason: str) -> None:
    # A 200 that is not the service's answer says nothing about what it did: not a bug, but a
    # notification that may have gone out, retried under its key like an outage.
    service = FakePushService(lambda attempt: (200, reply))

    with pytest.raises(PushUnavailableError, match=f"notification 1: {reason}"):
        run_body(service, slept(1), count=1)
    assert len(service.calls) == 1 + PUSH_RETRIES.max_retries
    assert len({key for key, _ in service.calls}) == 1


def test_a_refusal_with_a_page_instead_of_json_is_still_the_notifications_result() -> None:
    service = FakePushService(lambda attempt: (410, PROXY_PAGE))

    notifications = run_body(service, slept(1), count=1)

    assert notifications[0].refusal == "410 Gone"
    assert len(service.calls) == 1


@pytest.mark.parametrize(
    ("subscriber", "count", "interval", "named"),
    [("", 3, HOUR, "subscriber"), ("ada", 0, HOUR, "count"), ("ada", 3, 0, "interval_seconds")],
)
def test_arguments_it_cannot_count_down_fail_before_anything_is_sent(
    subscriber: str, count: int, interval: int, named: str
) -> None:
    service = FakePushService()

    with pytest.raises(InvalidCountdownError, match=f"^{named}:"):
        run_body(service, slept(1, 2, 3), count, subscriber, interval)
    assert service.calls == []
