"""The workflow's rounds, run in-process against fakes of the web, the providers and the model.

Portable: these import only the SDK (`resonate.testing`: its own server in memory, no worker, no
network), this package and its libraries, so they run in a copy of the folder outside the
cookbook. The web and the email and chat providers are an `httpx.MockTransport`; the model is the
official `openai` client over an `httpx2.MockTransport` (the transport library that client is
built on), answering like the Chat Completions API. Each fake records what it was asked.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import httpx2
import openai
import pytest
from resonate.dependencies import DependencyMap
from resonate.resonate import Resonate
from resonate.testing import FakeClock, local_resonate, root_context
from resonate.types import Value
from summarize_approve.steps import Model, Page, Providers, ProviderUnavailableError, publish
from summarize_approve.workflow import (
    MAX_ROUNDS,
    REVIEW_WITHIN,
    Ended,
    problems,
    summarize_and_approve,
)

PAGE = "Resonate is a durable execution framework. " * 20
REVIEWER = "usr_8d2f41c7"  # a staff user id: the email provider resolves it


@dataclass
class Web:
    """The web, the email provider and the chat provider, recording every request."""

    page_status: int = 200
    fetches: list[str] = field(default_factory=list)
    emails: list[dict[str, Any]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    # The reviewer's inbox: each review email as it is sent.
    inbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.fetches.append(request.url.path)
            return httpx.Response(self.page_status, text=PAGE)
        body = json.loads(request.content)
        sent = self.emails if request.url.path == "/email/send" else self.posts
        sent.append(body)
        if sent is self.emails:
            self.inbox.put_nowait(body)
        return httpx.Response(200, json={"id": f"msg_{len(sent)}", **body})


@dataclass
class FakeModel:
    """A Chat Completions API: a numbered summary per call, or the failures it is told to give."""

    failures: list[int] = field(default_factory=list)  # statuses to answer first, in order
    requests: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        self.keys.append(request.headers.get("Idempotency-Key"))
        if self.failures:
            status = self.failures.pop(0)
            error = {"message": f"failure {status}", "type": "test", "param": None, "code": None}
            return httpx2.Response(status, json={"error": error})
        text = f"summary {len(self.requests)}"
        return httpx2.Response(
            200,
            json={
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 2, "total_tokens": 102},
            },
        )


@dataclass
class Harness:
    resonate: Resonate
    web: Web
    model: FakeModel

    def start(self, url: str = "/articles/resonate") -> tuple[str, asyncio.Task[Ended]]:
        execution_id = f"summary-{secrets.token_hex(4)}"
        handle = self.resonate.run(execution_id, summarize_and_approve, url, REVIEWER)
        return execution_id, asyncio.create_task(handle.result())

    async def review(self, round_number: int, decision: Any) -> None:
        """Answer the review email of that round, once it was sent."""
        mail = await self.web.inbox.get()
        assert mail["round"] == round_number
        await self.resonate.promises.resolve(mail["decision_id"], Value(data=decision))


type Scenario = Callable[[Harness], Awaitable[None]]


def run(
    scenario: Scenario,
    web: Web | None = None,
    model: FakeModel | None = None,
    clock: FakeClock | None = None,
) -> Harness:
    """Run the scenario against a fresh in-memory Resonate and fresh fakes; return the fakes."""

    async def go() -> Harness:
        resonate = local_resonate() if clock is None else local_resonate(clock=clock)
        harness = Harness(resonate, web or Web(), model or FakeModel())
        async with httpx.AsyncClient(
            base_url="http://sandbox.test", transport=httpx.MockTransport(harness.web.handle)
        ) as client:
            model_client = openai.AsyncOpenAI(
                base_url="http://model.test/v1",
                api_key="test-key",
                max_retries=0,
                http_client=httpx2.AsyncClient(
                    transport=httpx2.MockTransport(harness.model.handle)
                ),
            )
            resonate.with_dependency(Providers(client))
            resonate.with_dependency(Model(model_client, "test-model"))
            resonate.register(summarize_and_approve)
            try:
                async with asyncio.timeout(20):
                    await scenario(harness)
            finally:
                await resonate.stop()
                await model_client.close()
        return harness

    return asyncio.run(go())


def outcome(
    *decisions: Any,
    url: str = "/articles/resonate",
    web: Web | None = None,
    model: FakeModel | None = None,
) -> tuple[Ended, Harness]:
    """Start one execution, answer its review rounds with the decisions, and return how it ended."""
    ended: list[Ended] = []

    async def scenario(harness: Harness) -> None:
        _, result = harness.start(url)
        for round_number, decision in enumerate(decisions, start=1):
            await harness.review(round_number, decision)
        ended.append(await result)

    harness = run(scenario, web, model)
    return ended[0], harness


def test_a_rejection_with_feedback_is_revised_and_the_approved_summary_posted() -> None:
    ended, harness = outcome(
        {"approve": False, "feedback": "Say who it is for."}, {"approve": True}
    )

    assert ended == Ended("approved", 2, "summary 2", ["Say who it is for."], posted="msg_1")
    assert harness.web.fetches == ["/articles/resonate"]  # once, for both rounds
    first, second = harness.model.requests
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][:2] == first["messages"]
    assert second["messages"][2]["content"] == "summary 1"
    assert "Say who it is for." in second["messages"][3]["content"]
    assert PAGE in first["messages"][1]["content"]
    assert harness.web.posts == [
        {"channel": "#reading-list", "text": "/articles/resonate\nsummary 2"}
    ]
    # The reviewer's id goes to the email provider as it is: the provider resolves it.
    assert [mail["to"] for mail in harness.web.emails] == [REVIEWER, REVIEWER]


def test_each_summary_is_one_completion_under_its_own_key() -> None:
    _, harness = outcome({"approve": False, "feedback": "Shorter."}, {"approve": True})

    keys = harness.model.keys
    assert len(keys) == 2
    assert len(set(keys)) == 2
    assert all(key and key.startswith("summary-") for key in keys)


def test_three_rejections_end_it_without_a_fourth_summary() -> None:
    ended, harness = outcome(
        *({"approve": False, "feedback": said} for said in ["Shorter.", "", "Still long."])
    )

    assert ended.state == "rejected"
    assert (ended.rounds, ended.summary) == (3, "summary 3")
    assert ended.feedback == ["Shorter.", "(no reason given)", "Still long."]
    assert len(harness.model.requests) == 3
    assert len(harness.web.emails) == 3
    assert harness.web.posts == []


def test_every_round_gets_its_whole_review_window_within_the_execution_deadline() -> None:
    # Started without a timeout, as everywhere here: the execution's deadline is the SDK's
    # default, and every review promise's is capped by it. Each rejection comes a minute before
    # its window closes; the last reviewer never answers. The last window must still be whole,
    # so the execution ends with its own outcome rather than being timed out by the server.
    clock = FakeClock(start=time.time_ns() // 1_000_000)
    nearly = (REVIEW_WITHIN - timedelta(minutes=1)).total_seconds()
    ended: list[Ended] = []

    async def scenario(harness: Harness) -> None:
        _, result = harness.start()
        for _ in range(MAX_ROUNDS - 1):
            mail = await harness.web.inbox.get()
            clock.advance(seconds=nearly)
            reject = {"approve": False, "feedback": "Again."}
            await harness.resonate.promises.resolve(mail["decision_id"], Value(data=reject))
        last = await harness.web.inbox.get()
        clock.advance(seconds=(REVIEW_WITHIN + timedelta(minutes=1)).total_seconds())
        # The in-memory server times a latent promise out when it is next read.
        await harness.resonate.promises.get(last["decision_id"])
        ended.append(await asyncio.wait_for(result, 10))

    run(scenario, clock=clock)

    assert (ended[0].state, ended[0].rounds) == ("no-decision", MAX_ROUNDS)
    assert ended[0].reason == "no answer in time"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_transient_model_failure_is_retried_under_the_same_key(status: int) -> None:
    ended, harness = outcome({"approve": True}, model=FakeModel(failures=[status]))

    assert ended.state == "approved"
    first, second = harness.model.keys
    assert first == second


@pytest.mark.parametrize("status", [400, 401, 404, 409])
def test_a_model_refusal_is_a_value_and_is_not_retried(status: int) -> None:
    ended, harness = outcome(model=FakeModel(failures=[status]))

    assert ended.state == "model-refused"
    assert ended.reason is not None
    assert f"refused: {status}" in ended.reason
    assert len(harness.model.requests) == 1
    assert harness.web.emails == []


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
def test_a_post_answered_without_its_id_may_have_landed(
    answer: Callable[[httpx.Request], httpx.Response], reason: str
) -> None:
    # A 2xx that is not the chat provider's answer says nothing of whether it posted: not a bug
    # in the step, but a call to retry under the same key, like a timeout.
    async def go() -> None:
        transport = httpx.MockTransport(answer)
        async with httpx.AsyncClient(base_url="http://sandbox.test", transport=transport) as client:
            deps = DependencyMap()
            deps.insert(Providers(client))
            await publish(root_context(id="summary-1", deps=deps), Page("/a", PAGE), "summary")

    with pytest.raises(ProviderUnavailableError, match=reason):
        asyncio.run(go())


def test_a_page_that_is_not_there_ends_it_before_any_completion() -> None:
    ended, harness = outcome(url="/articles/gone", web=Web(page_status=404))

    assert ended == Ended("unfetchable", 0, reason="GET /articles/gone answered 404")
    assert harness.model.requests == []


@pytest.mark.parametrize("decision", [{"approve": "yes"}, {"feedback": "ok"}, "approve", None])
def test_a_decision_that_cannot_be_read_publishes_nothing(decision: Any) -> None:
    ended, harness = outcome(decision)

    assert ended.state == "no-decision"
    assert ended.reason == "the decision could not be read"
    assert harness.web.posts == []


@pytest.mark.parametrize(
    ("url", "reviewer", "reason"),
    [
        ("ftp://example.com/a", REVIEWER, "url: "),
        ("articles/no-slash", REVIEWER, "url: "),
        ("https://", REVIEWER, "url: "),
        ("/has space", REVIEWER, "url: "),
        ("/" + "a" * 2000, REVIEWER, "url: "),
        # The reviewer is a staff user id: an address or a name would sit in the server.
        ("/articles/resonate", "ada@example.com", "reviewer: must be a reviewer id like usr_"),
        ("/articles/resonate", "Ada Lovelace", "reviewer: "),
        ("/articles/resonate", "usr_ada@example.com", "reviewer: "),
        ("/articles/resonate", "usr_abc", "reviewer: "),  # too short
        ("/articles/resonate", "usr_" + "a" * 33, "reviewer: "),  # too long
        ("/articles/resonate", "usr_abcd\n", "reviewer: "),
        ("/articles/resonate", "", "reviewer: "),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument_and_nothing_is_done(
    url: str, reviewer: str, reason: str
) -> None:
    ended: list[Ended] = []

    async def scenario(harness: Harness) -> None:
        handle = harness.resonate.run(
            f"summary-{secrets.token_hex(4)}", summarize_and_approve, url, reviewer
        )
        ended.append(await handle.result())

    harness = run(scenario)

    assert ended[0].state == "invalid"
    assert ended[0].reason is not None
    assert ended[0].reason.startswith(reason)
    assert (harness.web.fetches, harness.model.requests, harness.web.emails) == ([], [], [])


@pytest.mark.parametrize("reviewer", ["usr_8d2f", "usr_" + "A1" * 16])
def test_a_reviewer_id_of_4_to_32_letters_or_digits_is_accepted(reviewer: str) -> None:
    assert problems("/articles/resonate", reviewer) == []


@pytest.mark.parametrize("url", ["/openapi.json", "https://example.com", "http://a.b/c?d=e#f"])
def test_a_path_or_an_http_url_is_accepted(url: str) -> None:
    ended, harness = outcome({"approve": True}, url=url)

    assert ended.state == "approved"
    assert len(harness.web.fetches) == 1
