"""The pipeline's logic, in-process: the SDK's local server, a fake model, a fake chat API.

Portable: these tests import only `resonate`, this package, its own libraries and pytest, so
they run in a copy of this folder outside the cookbook. The model is an `httpx2.MockTransport`
(httpx2 is the HTTP library `openai` 3 is built on) behind the real `openai` client: it answers
as an OpenAI-compatible server does, and bills each Idempotency-Key once (a repeated key is
answered from its record), as the cookbook's stand-in model does.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import openai
import pytest
from research_pipeline.steps import (
    REVIEWER,
    WRITER,
    Agents,
    Receiver,
    ReceiverUnavailableError,
    deliver,
)
from research_pipeline.workflow import ResearchReport, ResearchRequest, research_topic
from resonate.dependencies import DependencyMap
from resonate.resonate import Resonate
from resonate.testing import cache_of, local_resonate, resolved_promise, root_context
from resonate.types import PromiseRecord

TOPIC = "tidal power in Scotland"


def agent_of(body: dict[str, Any]) -> str:
    system: str = body["messages"][0]["content"]
    return "writer" if system == WRITER else "reviewer" if system == REVIEWER else "researcher"


@dataclass
class FakeModel:
    """An OpenAI-compatible model: the reviewer's verdicts in order, errors on demand."""

    verdicts: list[tuple[str, str]] = field(default_factory=lambda: [("approve", "")])
    failures: dict[str, list[int]] = field(default_factory=dict)  # agent -> statuses, in order
    reviewer_arguments: str | None = None  # raw arguments of the reviewer's call, to break it
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    billed: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> completion

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        agent, key = agent_of(body), request.headers["Idempotency-Key"]
        self.requests.append((agent, key, body))
        if self.failures.get(agent):
            status = self.failures[agent].pop(0)
            code = None if status >= 429 else "invalid_request"
            error = {"message": f"injected {status}", "type": "test", "param": None, "code": code}
            return httpx2.Response(status, json={"error": error})
        if key not in self.billed:
            self.billed[key] = self.complete(agent, body)
        return httpx2.Response(200, json=self.billed[key])

    def complete(self, agent: str, body: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if agent == "reviewer":
            verdict, feedback = self.verdicts.pop(0) if len(self.verdicts) > 1 else self.verdicts[0]
            arguments = json.dumps({"verdict": verdict, "feedback": feedback})
            message["tool_calls"] = [
                {
                    "id": f"call_{len(self.billed)}",
                    "type": "function",
                    "function": {
                        "name": "submit_review",
                        "arguments": self.reviewer_arguments or arguments,
                    },
                }
            ]
        else:
            message["content"] = f"{agent} text {draft_number(body)}"
        return {
            "id": f"chatcmpl-{len(self.billed)}",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if agent == "reviewer" else "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    def asked(self) -> list[str]:
        return [agent for agent, _, _ in self.requests]


def draft_number(body: dict[str, Any]) -> int:
    """1 for a first draft; a revision of "writer text k" is k + 1: replies are deterministic."""
    previous = re.search(r"Your previous draft:\nwriter text (\d+)", body["messages"][1]["content"])
    return int(previous.group(1)) + 1 if previous else 1


@dataclass
class FakeChat:
    """The chat API the report is posted to: one message per Idempotency-Key."""

    status: int = 200
    posts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.status != 200:
            return httpx.Response(self.status, json={"error": "no"})
        self.posts.setdefault(request.headers["Idempotency-Key"], json.loads(request.content))
        return httpx.Response(200, json={"id": f"slack_{len(self.posts)}"})


def wired(model: FakeModel, chat: FakeChat) -> tuple[Agents, Receiver]:
    client = openai.AsyncOpenAI(
        base_url="http://model.test/v1",
        api_key="test",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(model)),
    )
    receiver = httpx.AsyncClient(base_url="http://chat.test", transport=httpx.MockTransport(chat))
    return Agents(client, "test-model"), Receiver(receiver, "#research")


def run(model: FakeModel, chat: FakeChat, execution_id: str = "rp-1") -> ResearchReport:
    async def go() -> ResearchReport:
        resonate: Resonate = local_resonate()
        agents, receiver = wired(model, chat)
        resonate.with_dependency(agents)
        resonate.with_dependency(receiver)
        resonate.register(research_topic)
        try:
            handle = resonate.run(execution_id, research_topic, ResearchRequest(topic=TOPIC))
            return await asyncio.wait_for(handle.result(), 10)
        finally:
            await resonate.stop()

    return asyncio.run(go())


@pytest.fixture
def chat() -> FakeChat:
    return FakeChat()


def test_the_reviewer_sends_it_back_once_then_approves_and_it_is_delivered_once(
    chat: FakeChat,
) -> None:
    model = FakeModel(verdicts=[("revise", "Cite the 2024 figures."), ("approve", "")])

    report = run(model, chat)

    assert model.asked() == ["researcher", "writer", "reviewer", "writer", "reviewer"]
    revision_prompt = model.requests[3][2]["messages"][1]["content"]
    assert "researcher text 1" in revision_prompt  # the notes
    assert "Your previous draft:\nwriter text 1" in revision_prompt
    assert "Reviewer feedback:\nCite the 2024 figures." in revision_prompt
    assert [post["text"] for post in chat.posts.values()] == [
        f"*{TOPIC}* (approved by the reviewer)\n\nwriter text 2"
    ]
    assert report == ResearchReport(
        outcome="delivered",
        topic=TOPIC,
        revisions=1,
        approved=True,
        report="writer text 2",
        message_id="slack_1",
    )


def test_the_reviewer_sends_the_draft_back_at_most_twice(chat: FakeChat) -> None:
    model = FakeModel(verdicts=[("revise", "Still too vague.")])  # never satisfied

    report = run(model, chat)

    assert model.asked() == ["researcher", "writer", "reviewer"] + ["writer", "reviewer"] * 2
    assert report.outcome == "delivered"
    assert (report.revisions, report.approved, report.report) == (2, False, "writer text 3")
    assert report.reviewer_notes == "Still too vague."
    (post,) = chat.posts.values()
    assert post["text"].startswith(f"*{TOPIC}* (not approved after 2 revisions)")


def test_each_model_call_has_its_own_key_and_a_retry_reuses_it(chat: FakeChat) -> None:
    # The writer is rate-limited, then the model fails, then it answers: asked three times.
    model = FakeModel(failures={"writer": [429, 503]})

    report = run(model, chat)

    assert report.outcome == "delivered"
    assert model.asked() == ["researcher", "writer", "writer", "writer", "reviewer"]
    keys = [key for _, key, _ in model.requests]
    assert keys[1] == keys[2] == keys[3]  # one writer call, asked three times under one key
    assert len({keys[0], keys[1], keys[4]}) == 3
    assert len(model.billed) == 3  # researcher, writer, reviewer: each billed once


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_a_refusal_is_a_value_asked_once_and_nothing_is_delivered(
    chat: FakeChat, status: int
) -> None:
    model = FakeModel(failures={"writer": [status] * 10})

    report = run(model, chat)

    assert model.asked() == ["researcher", "writer"]
    assert report == ResearchReport(
        outcome="refused",
        topic=TOPIC,
        refused_by="writer",
        reason=f"writer: the model refused (HTTP {status}, invalid_request)",
    )
    assert chat.posts == {}


def test_a_model_down_past_every_retry_fails_the_run_naming_the_agent(
    monkeypatch: pytest.MonkeyPatch, chat: FakeChat
) -> None:
    model = FakeModel(failures={"researcher": [503] * 10})

    with pytest.raises(Exception, match="researcher: the model answered 503"):
        run(model, chat)

    assert model.asked() == ["researcher"] * 6  # the first attempt and 5 retries
    assert chat.posts == {}


def test_a_review_without_a_usable_verdict_is_a_refusal(chat: FakeChat) -> None:
    model = FakeModel(reviewer_arguments='{"verdict": "maybe"}')

    report = run(model, chat)

    assert (report.outcome, report.refused_by) == ("refused", "reviewer")
    assert report.reason == "reviewer: the model answered without a usable submit_review call"
    assert chat.posts == {}


def test_a_receiver_refusal_is_a_value(chat: FakeChat) -> None:
    chat.status = 403

    report = run(FakeModel(), chat)

    assert (report.outcome, report.refused_by, report.reason) == (
        "refused",
        "receiver",
        "slack refused: HTTP 403",
    )


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
def test_a_delivery_answered_without_its_answer_may_have_landed(
    answer: Callable[[httpx.Request], httpx.Response], reason: str
) -> None:
    # A 2xx that is not the chat API's answer says nothing of whether the report was posted: not
    # a bug in the step, but a delivery to retry under the same key.
    async def go() -> None:
        transport = httpx.MockTransport(answer)
        async with httpx.AsyncClient(base_url="http://chat.test", transport=transport) as client:
            dependencies = DependencyMap()
            dependencies.insert(Receiver(client, "#research"))
            await deliver(root_context(id="rp-3", deps=dependencies), TOPIC, "report", "approved")

    with pytest.raises(ReceiverUnavailableError, match=reason):
        asyncio.run(go())


def test_a_run_resumed_after_the_writer_finished_never_asks_the_writer_again(
    chat: FakeChat,
) -> None:
    """A crash after the writer's checkpoint: a replay finds its draft in the journal."""
    verdicts = [("revise", "Cite the 2024 figures."), ("approve", "")]
    first = FakeModel(verdicts=list(verdicts))

    async def whole_run() -> dict[str, PromiseRecord]:
        ctx = root_context(id="rp-2", deps=deps(first, chat))
        await research_topic(ctx, ResearchRequest(topic=TOPIC))
        return cache_of(ctx)

    journal = asyncio.run(whole_run())
    researcher_key, writer_key = (key for _, key, _ in first.requests[:2])
    # What the server holds when the worker dies right after the writer's checkpoint.
    checkpointed = [
        resolved_promise(k, journal[k].value.data) for k in (researcher_key, writer_key)
    ]
    resumed = FakeModel(verdicts=list(verdicts))

    async def replay() -> ResearchReport:
        ctx = root_context(id="rp-2", preload=checkpointed, deps=deps(resumed, FakeChat()))
        return await research_topic(ctx, ResearchRequest(topic=TOPIC))

    report = asyncio.run(replay())

    assert resumed.asked() == ["reviewer", "writer", "reviewer"]
    assert writer_key not in {key for _, key, _ in resumed.requests}
    assert report.report == "writer text 2"  # the revision of the journal's draft
    assert "Your previous draft:\nwriter text 1" in resumed.requests[1][2]["messages"][1]["content"]


def deps(model: FakeModel, chat: FakeChat) -> DependencyMap:
    agents, receiver = wired(model, chat)
    dependencies = DependencyMap()
    dependencies.insert(agents)
    dependencies.insert(receiver)
    return dependencies
