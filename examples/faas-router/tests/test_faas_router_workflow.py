"""`process_video` and its executors in process: the SDK's own `resonate.testing`, a fake provider.

One in-process Resonate registers the router's workflow and the executors' functions as the
worker does (its `EXECUTOR_RETRIES`), with the provider faked on `httpx.MockTransport`; retries
take no time. These tests need only the SDK, this package and pytest: they run in a copy of this
folder outside the cookbook (`make copy-out-faas-router`). The tests that kill real router and
executor processes are in tests/cookbook/ and run in the cookbook only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from faas_router.steps import (
    Providers,
    ProviderUnavailableError,
    record_audit,
    thumbnail,
    transcode,
)
from faas_router.worker import EXECUTOR_RETRIES
from faas_router.workflow import process_video
from resonate.context import Context
from resonate.error import Suspended
from resonate.resonate import Resonate
from resonate.retry import Never
from resonate.testing import local_resonate, resolved_promise, root_context

JOB = "video-1"
type Reply = dict[str, Any] | str | bytes
Answer = Callable[[str, int], Awaitable[tuple[int, Reply]]]


@dataclass
class FakeProvider:
    """Answers by rule: `answer(what, attempt)`, `attempt` counting that operation's calls.

    A dict is answered as JSON, a str as an HTML page, and bytes as they are under
    `Content-Encoding: gzip`: a garbled body that cannot even be decoded."""

    answer: Answer
    calls: list[tuple[str, str]] = field(default_factory=list)  # (what, idempotency key)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        what = json.loads(request.content)["what"]
        self.calls.append((what, request.headers["Idempotency-Key"]))
        status, body = await self.answer(what, self.operations().count(what))
        if isinstance(body, str):
            return httpx.Response(status, html=body)
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers={"Content-Encoding": "gzip"})
        return httpx.Response(status, json=body)

    def operations(self) -> list[str]:
        return [what for what, _ in self.calls]


async def acted(what: str, attempt: int) -> tuple[int, dict[str, Any]]:
    return 200, {"id": f"{what}_{attempt}"}


def route(
    provider: FakeProvider,
    audit: bool = True,
    then: Callable[[Resonate, dict[str, Any]], Awaitable[Any]] | None = None,
) -> tuple[dict[str, Any], Any]:
    """Run the job on an in-process router and executor pool; `then` looks at the result after."""

    async def go() -> tuple[dict[str, Any], Any]:
        resonate = local_resonate()
        try:
            transport = httpx.MockTransport(provider.handle)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                resonate.with_dependency(Providers(client))
                resonate.register(process_video, retry_policy=Never())
                for function in (thumbnail, transcode, record_audit):
                    resonate.register(function, retry_policy=EXECUTOR_RETRIES)
                handle = resonate.run(JOB, process_video, "intro.mp4", audit)
                result: dict[str, Any] = await asyncio.wait_for(handle.result(), 30)
                looked_up = await then(resonate, result) if then else None
                return result, looked_up
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_each_call_runs_once_under_its_own_key_and_the_audit_is_found_by_its_id() -> None:
    provider = FakeProvider(acted)

    async def audit_record(resonate: Resonate, result: dict[str, Any]) -> Any:
        return await asyncio.wait_for((await resonate.get(result["audit_id"])).result(), 10)

    result, audit = route(provider, then=audit_record)

    assert result["thumbnail"] == {"receipt": "thumbnail_1", "refusal": None}
    assert result["rendition"] == {"receipt": "transcode_1", "refusal": None}
    assert audit == {"receipt": "audit_1", "refusal": None}
    assert sorted(provider.operations()) == ["audit", "thumbnail", "transcode"]
    assert len({key for _, key in provider.calls}) == 3
    assert result["audit_id"] in {key for _, key in provider.calls}  # the record's own id


def test_the_transcode_started_before_the_thumbnail_runs_while_it_is_made() -> None:
    """The thumbnail is only made once the transcode has begun: awaiting it first would hang."""
    transcode_began = asyncio.Event()

    async def answer(what: str, attempt: int) -> tuple[int, dict[str, Any]]:
        if what == "transcode":
            transcode_began.set()
        if what == "thumbnail":
            await asyncio.wait_for(transcode_began.wait(), 2)
        return await acted(what, attempt)

    result, _ = route(FakeProvider(answer), audit=False)

    assert result["rendition"] == {"receipt": "transcode_1", "refusal": None}


def test_a_refusal_is_a_value_in_the_result_and_not_asked_again() -> None:
    async def answer(what: str, attempt: int) -> tuple[int, dict[str, Any]]:
        if what == "thumbnail":
            return 422, {"error": "not a video"}
        return await acted(what, attempt)

    provider = FakeProvider(answer)

    result, _ = route(provider, audit=False)

    assert result["thumbnail"] == {"receipt": None, "refusal": "422 not a video"}
    assert provider.operations().count("thumbnail") == 1


def test_a_provider_that_is_down_is_asked_again_by_the_executor_under_the_same_key() -> None:
    async def answer(what: str, attempt: int) -> tuple[int, dict[str, Any]]:
        if what == "transcode" and attempt <= 2:
            return 503, {"error": "overloaded"}
        return await acted(what, attempt)

    provider = FakeProvider(answer)

    result, _ = route(provider, audit=False)

    assert result["rendition"] == {"receipt": "transcode_3", "refusal": None}
    transcode_keys = [key for what, key in provider.calls if what == "transcode"]
    assert len(transcode_keys) == 3
    assert len(set(transcode_keys)) == 1
    assert "audit" not in provider.operations()  # audit=False: no record, no id


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
def test_a_call_answered_without_its_answer_may_have_acted(reply: Reply, reason: str) -> None:
    # A 200 that is not the provider's answer says nothing about what it did: not a bug, but a
    # call that may have landed, retried by the executor under its key like an outage.
    async def answer(what: str, attempt: int) -> tuple[int, Reply]:
        return (200, reply) if what == "thumbnail" else await acted(what, attempt)

    provider = FakeProvider(answer)

    with pytest.raises(ProviderUnavailableError, match=f"^thumbnail: {reason}"):
        route(provider, audit=False)
    thumbnail_keys = [key for what, key in provider.calls if what == "thumbnail"]
    assert len(thumbnail_keys) == 1 + EXECUTOR_RETRIES.max_retries
    assert len(set(thumbnail_keys)) == 1


def test_a_refusal_with_a_page_instead_of_json_is_still_a_value_asked_once() -> None:
    async def answer(what: str, attempt: int) -> tuple[int, Reply]:
        return (422, PROXY_PAGE) if what == "thumbnail" else await acted(what, attempt)

    provider = FakeProvider(answer)

    result, _ = route(provider, audit=False)

    assert result["thumbnail"] == {"receipt": None, "refusal": "422 Unprocessable Entity"}
    assert provider.operations().count("thumbnail") == 1


def test_a_router_replay_sends_only_the_calls_its_journal_does_not_hold() -> None:
    """After a router crash: the transcode's result is in the journal, the thumbnail is not."""
    transcoded = resolved_promise(f"{JOB}:1", {"receipt": "transcode_1", "refusal": None})

    async def replay() -> list[str]:
        ctx: Context = root_context(id=JOB, preload=[transcoded])
        try:
            await process_video(ctx, "intro.mp4", False)
        except Suspended:
            await ctx.flush_local_work()
            return ctx.take_remote_todos()
        raise AssertionError("the router went on without the thumbnail")

    assert asyncio.run(replay()) == [f"{JOB}:2"]  # the thumbnail call only
