"""`greet` in process: the SDK's `resonate.testing` and a fake provider on `httpx.MockTransport`.

These tests need only the SDK, this package and pytest: they run in a copy of this folder
outside the cookbook (`uv sync` then `uv run pytest tests`). The tests that drive a real dev
server, a worker process and the provider sandbox are in tests/cookbook/ and run in the cookbook.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hello.steps import Delivery, Providers, ProviderUnavailableError
from hello.workflow import STEP_RETRIES, greet
from resonate.context import Context
from resonate.dependencies import DependencyMap
from resonate.retry import Never
from resonate.testing import local_resonate, resolved_promise, root_context

Answer = Callable[[str, int], tuple[int, dict[str, Any]] | httpx.Response]


@dataclass
class FakeProvider:
    """Answers by rule: `answer(path, attempt at that path) -> (status, JSON body)` or a whole
    response; records calls."""

    answer: Answer
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append((path, request.headers["Idempotency-Key"], json.loads(request.content)))
        attempt = sum(1 for called, _, _ in self.calls if called == path)
        answer = self.answer(path, attempt)
        return (
            answer
            if isinstance(answer, httpx.Response)
            else httpx.Response(answer[0], json=answer[1])
        )

    def keys(self, path: str) -> list[str]:
        return [key for called, key, _ in self.calls if called == path]


def sends(path: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": f"{path.split('/')[1]}-{attempt}"}


def greet_in_process(provider: FakeProvider, name: str = "Ada") -> dict[str, Delivery]:
    """`greet` on an in-process Resonate (no server, no worker); retries take no time."""

    async def go() -> dict[str, Delivery]:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(provider.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                resonate.with_dependency(Providers(client))
                resonate.register(greet, retry_policy=Never())
                handle = resonate.run("greet-1", greet, name)
                result: dict[str, Delivery] = await asyncio.wait_for(handle.result(), 30)
                return result
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_each_step_calls_its_provider_once_with_its_own_key() -> None:
    provider = FakeProvider(sends)

    result = greet_in_process(provider)

    assert result == {"email": Delivery(receipt="email-1"), "sms": Delivery(receipt="sms-1")}
    assert [path for path, _, _ in provider.calls] == ["/email/send", "/sms/send"]
    assert provider.calls[0][2] == {"to": "Ada", "text": "Hello, Ada!"}
    assert len({key for _, key, _ in provider.calls}) == 2  # two steps, two keys


@pytest.mark.parametrize("status", [400, 404, 422])
def test_a_refused_email_is_a_value_asked_once_and_no_sms_follows(status: int) -> None:
    provider = FakeProvider(
        lambda path, attempt: (
            (status, {"error": "no such mailbox"}) if "email" in path else sends(path, attempt)
        )
    )

    result = greet_in_process(provider)

    assert result == {"email": Delivery(refusal=f"{status} no such mailbox")}
    assert [path for path, _, _ in provider.calls] == ["/email/send"]


@pytest.mark.parametrize("status", [503, 429, 408])
def test_a_provider_that_is_not_taking_messages_is_asked_again_with_the_same_key(
    status: int,
) -> None:
    provider = FakeProvider(
        lambda path, attempt: (
            (status, {}) if "sms" in path and attempt == 1 else sends(path, attempt)
        )
    )

    result = greet_in_process(provider)

    assert result["sms"] == Delivery(receipt="sms-2")
    sms_keys = provider.keys("/sms/send")
    assert len(sms_keys) == 2
    assert sms_keys[0] == sms_keys[1]  # the same request, safe to repeat


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
def test_an_sms_answered_without_its_answer_may_have_been_sent_and_is_asked_again(
    answer: Callable[[], httpx.Response],
) -> None:
    # A 2xx that is not the provider's answer says nothing about what it did: not a bug, but a
    # call that may have landed, asked again with the same key until the retries run out.
    provider = FakeProvider(
        lambda path, attempt: answer() if "sms" in path else sends(path, attempt)
    )

    with pytest.raises(ProviderUnavailableError, match="/sms/send"):
        greet_in_process(provider)

    sms_keys = provider.keys("/sms/send")
    assert len(sms_keys) == 1 + STEP_RETRIES.max_retries
    assert len(set(sms_keys)) == 1


def test_a_refusal_whose_body_is_a_page_is_still_a_refusal_asked_once() -> None:
    provider = FakeProvider(lambda path, attempt: httpx.Response(403, html="<h1>Forbidden</h1>"))

    result = greet_in_process(provider)

    assert result == {"email": Delivery(refusal="403 Forbidden")}
    assert [path for path, _, _ in provider.calls] == ["/email/send"]


def test_a_replay_takes_the_sent_email_from_the_journal_and_sends_only_the_sms() -> None:
    """What a worker does after a crash between the two steps."""
    provider = FakeProvider(sends)
    email_sent = resolved_promise("greet-1:1", {"receipt": "email-from-journal", "refusal": None})

    async def replay() -> dict[str, Delivery]:
        transport = httpx.MockTransport(provider.handle)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            ctx: Context = root_context(id="greet-1", preload=[email_sent], deps=deps)
            return await greet(ctx, "Ada")

    result = asyncio.run(replay())

    assert result["email"] == Delivery(receipt="email-from-journal")
    assert [path for path, _, _ in provider.calls] == ["/sms/send"]
