"""The agent's loop in-process: a fake model and fake providers behind `httpx.MockTransport`.

Portable: these tests import only resonate, this package, its libraries and pytest, so they run in
a copy of this folder outside the cookbook. The fakes answer as the real services do: the model
fake speaks Chat Completions and bills each Idempotency-Key once (as the cookbook's stand-in does),
the provider fake books a seat once per key. Tests through real processes, the dev server and the
provider sandbox are in tests/cookbook/.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import httpx2
import openai
import pytest
from resonate.dependencies import DependencyMap
from resonate.error import Suspended
from resonate.resonate import Resonate
from resonate.testing import local_resonate, resolved_promise, root_context
from resonate.types import Value
from tool_agent.steps import (
    Model,
    ModelReply,
    Providers,
    ProviderUnavailableError,
    ToolCall,
    book_flight,
)
from tool_agent.workflow import (
    HUMAN_DEADLINE,
    MAX_QUESTIONS,
    WORKFLOW_RETRIES,
    AgentEnded,
    AgentRequest,
    agent,
)

# -- fakes ---------------------------------------------------------------------------------------

type Reply = dict[str, Any]  # {"content": str} or {"tool_calls": [(name, arguments), ...]}
type Script = Callable[[list[dict[str, Any]]], Reply]


def says(content: str) -> Reply:
    return {"content": content}


def calls(name: str, arguments: Any) -> Reply:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"tool_calls": [(name, text)]}


@dataclass
class FakeModel:
    """Chat Completions over MockTransport: answers from `script`, bills each key once."""

    script: Script
    fail_first: list[int] = field(default_factory=list)  # status codes for the first requests
    requests: list[tuple[str | None, list[dict[str, Any]]]] = field(default_factory=list)
    billed: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> completion

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        key = request.headers.get("Idempotency-Key")
        self.requests.append((key, body["messages"]))
        if self.fail_first:
            status = self.fail_first.pop(0)
            error = {"message": f"injected {status}", "type": "error", "param": None, "code": None}
            return httpx2.Response(status, json={"error": error})
        if key is not None and key in self.billed:
            return httpx2.Response(200, json=self.billed[key])
        completion = self._complete(body["messages"], len(self.requests))
        if key is not None:
            self.billed[key] = completion
        return httpx2.Response(200, json=completion)

    def _complete(self, messages: list[dict[str, Any]], n: int) -> dict[str, Any]:
        reply = self.script(messages)
        message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
        if "tool_calls" in reply:
            message["tool_calls"] = [
                {"id": f"call_{n}_{i}", "type": "function",
                 "function": {"name": name, "arguments": arguments}}
                for i, (name, arguments) in enumerate(reply["tool_calls"])
            ]  # fmt: skip
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": 0,
            "model": "fake",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if "tool_calls" in reply else "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    def keys(self) -> list[str | None]:
        return [key for key, _ in self.requests]


@dataclass
class FakeProviders:
    """The flight provider and the chat service: one effect per Idempotency-Key."""

    refuse_bookings: bool = False
    requests: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> the answer given
    posted: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        key = request.headers["Idempotency-Key"]
        self.requests.append((request.url.path, key, body))
        if key in self.answers:
            return httpx.Response(200, json=self.answers[key])
        if request.url.path == "/flight/reserve" and self.refuse_bookings:
            return httpx.Response(409, json={"error": "no seats left"})
        kind = "flight" if request.url.path == "/flight/reserve" else "slack"
        answer = {"id": f"{kind}_{next(self._ids)}", **body}
        self.answers[key] = answer
        if kind == "slack":
            self.posted.put_nowait(body)
        return httpx.Response(200, json=answer)

    def reservations(self) -> list[str]:
        return [a["id"] for a in self.answers.values() if a["id"].startswith("flight_")]


def dependencies(model: FakeModel, providers: FakeProviders) -> tuple[Model, Providers]:
    client = openai.AsyncOpenAI(
        base_url="http://model.test/v1",
        api_key="test-key",
        max_retries=0,
        # The client's own HTTP library (httpx2, a fork of httpx), with the fake as its transport.
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(model.handle)),
    )
    http = httpx.AsyncClient(
        base_url="http://providers.test", transport=httpx.MockTransport(providers.handle)
    )
    return Model(client, "fake-1"), Providers(http)


# -- the model's side of the story ---------------------------------------------------------------

TRIP = {"origin": "LHR", "destination": "LIS", "departs": "2030-05-01", "passenger": "Ada Lovelace"}


def last_tool_result(messages: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(messages[-1]["content"])
    return result


def travel_agent(messages: list[dict[str, Any]]) -> Reply:
    """Ask the manager, book if they approve, then report: what the stand-in's script does."""
    turns = sum(1 for m in messages if m["role"] == "assistant")
    if turns == 0:
        return calls("ask_human", {"question": "May Ada fly LHR to LIS on 1 May 2030?"})
    if turns == 1:
        if "approved" in last_tool_result(messages).get("answer", ""):
            return calls("book_flight", TRIP)
        return says("Your manager did not approve, so I booked nothing.")
    return says(f"Booked: {last_tool_result(messages)['reservation_id']}.")


def books_at_once(messages: list[dict[str, Any]]) -> Reply:
    """Book straight away, then report."""
    if messages[-1]["role"] == "user":
        return calls("book_flight", TRIP)
    return says(f"Done: {messages[-1]['content']}")


# -- running the workflow in-process -------------------------------------------------------------


def run_agent(
    model: FakeModel,
    providers: FakeProviders,
    run_id: str,
    manager_answers: str | None = None,
    **request: Any,
) -> AgentEnded:
    """Run the agent on an in-process Resonate; with `manager_answers`, be the manager too."""

    async def go() -> AgentEnded:
        resonate = local_resonate()
        resonate.register(agent, retry_policy=WORKFLOW_RETRIES)
        for dependency in dependencies(model, providers):
            resonate.with_dependency(dependency)
        manager: asyncio.Task[None] | None = None  # the manager, answering every question
        try:
            task = AgentRequest(run_id=run_id, task="Book Ada's flight to Lisbon.", **request)
            handle = resonate.run(run_id, agent, task)
            if manager_answers is not None:
                manager = asyncio.create_task(
                    answer_every_question(resonate, providers, manager_answers)
                )
            return await asyncio.wait_for(handle.result(), 5)
        finally:
            if manager is not None:
                manager.cancel()
            await resonate.stop()

    return asyncio.run(go())


async def answer_every_question(resonate: Resonate, providers: FakeProviders, answer: str) -> None:
    """Read each question from chat as it is posted, and answer it (as the gateway would)."""
    while True:
        message = await providers.posted.get()
        await resonate.promises.resolve(message["question_id"], Value(data={"answer": answer}))


def test_books_once_after_the_manager_approves() -> None:
    model, providers = FakeModel(travel_agent), FakeProviders()

    ended = run_agent(model, providers, "run-approved", manager_answers="approved, economy")

    [reservation] = providers.reservations()
    assert ended == AgentEnded(
        "answered", answer=f"Booked: {reservation}.", bookings=[reservation], model_calls=3
    )
    # Three model calls, each its own step and key, each billed once.
    assert len(set(model.keys())) == len(model.keys()) == len(model.billed) == 3
    # The model saw the manager's answer and the booking as tool results.
    [*_, (_, last_conversation)] = model.requests
    tool_results = [m["content"] for m in last_conversation if m["role"] == "tool"]
    assert tool_results == [
        json.dumps({"answer": "approved, economy"}),
        json.dumps({"reservation_id": reservation, "status": "reserved"}),
    ]


def test_books_nothing_when_the_manager_declines() -> None:
    model, providers = FakeModel(travel_agent), FakeProviders()

    ended = run_agent(model, providers, "run-declined", manager_answers="declined: too dear")

    assert ended.state == "answered"
    assert ended.bookings == [] == providers.reservations()
    assert ended.model_calls == 2


def test_a_run_asks_no_more_questions_than_its_deadline_can_wait_for() -> None:
    # Every question a run may ask can wait its HUMAN_DEADLINE out within the run's deadline (the
    # SDK's default, a day), with hours to spare for the model calls; or a run that nobody
    # answers would be timed out whole, and the model never told.
    spare = timedelta(days=1) - MAX_QUESTIONS * HUMAN_DEADLINE
    assert spare >= timedelta(hours=2)

    def keeps_asking(messages: list[dict[str, Any]]) -> Reply:
        if messages[-1]["role"] == "tool" and "error" in last_tool_result(messages):
            return says("I could not get an approval, so I booked nothing.")
        return calls("ask_human", {"question": f"Question {len(messages)}: may Ada fly?"})

    model, providers = FakeModel(keeps_asking), FakeProviders()

    ended = run_agent(model, providers, "run-questions", manager_answers="ask me later")

    posted = [body for path, _, body in providers.requests if path == "/slack/send"]
    assert len(posted) == MAX_QUESTIONS
    assert ended.state == "answered"
    assert ended.model_calls == MAX_QUESTIONS + 2  # the asking calls, the one refused, the answer
    [*_, (_, conversation)] = model.requests
    assert last_tool_result(conversation) == {
        "error": f"not asked: a run may ask {MAX_QUESTIONS} questions at most"
    }


def test_an_unknown_tool_and_bad_arguments_are_told_to_the_model() -> None:
    mistakes = iter(
        [
            calls("teleport", {"to": "LIS"}),
            calls("book_flight", "{not json"),
            calls("book_flight", {**TRIP, "departs": "next tuesday", "origin": "lhr"}),
            calls("book_flight", {**TRIP, "seat": "1A"}),
        ]
    )
    model, providers = (
        FakeModel(lambda _: next(mistakes, says("I could not book it."))),
        FakeProviders(),
    )

    ended = run_agent(model, providers, "run-mistakes")

    assert ended == AgentEnded("answered", answer="I could not book it.", model_calls=5)
    assert providers.requests == []  # nothing reached the provider
    [*_, (_, conversation)] = model.requests
    errors = [json.loads(m["content"])["error"] for m in conversation if m["role"] == "tool"]
    assert errors[0] == "unknown tool 'teleport'; the tools are book_flight, ask_human"
    assert errors[1].startswith("book_flight: the arguments are not JSON")
    assert "origin: String should match pattern" in errors[2]
    assert "departs: Input should be a valid date" in errors[2]
    assert errors[3] == "book_flight: seat: Extra inputs are not permitted"


def test_the_loop_ends_after_max_model_calls() -> None:
    # A model that never answers (it would, after 10 calls, to end an unbounded loop).
    def never_answers(messages: list[dict[str, Any]]) -> Reply:
        return calls("teleport", {}) if len(messages) < 22 else says("finally")

    model, providers = FakeModel(never_answers), FakeProviders()

    ended = run_agent(model, providers, "run-bounded", max_model_calls=3)

    assert ended.state == "gave-up"
    assert ended.reason == "no answer within 3 model calls"
    assert len(model.requests) == 3


def test_a_refusal_from_the_model_is_a_value_and_is_not_retried() -> None:
    model, providers = FakeModel(travel_agent, fail_first=[400]), FakeProviders()

    ended = run_agent(model, providers, "run-400")

    assert ended.state == "refused"
    assert ended.reason == "400: injected 400"
    assert len(model.requests) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_a_model_that_is_down_is_asked_again_under_the_same_key(status: int) -> None:
    model, providers = FakeModel(books_at_once, fail_first=[status, status]), FakeProviders()

    ended = run_agent(model, providers, f"run-{status}")

    assert ended.state == "answered"
    first_call_keys = model.keys()[:3]
    assert len(set(first_call_keys)) == 1  # the same step, the same key, three times
    assert len(model.billed) == 2  # the first call once, the answer once


def test_a_refused_booking_is_told_to_the_model() -> None:
    model, providers = FakeModel(books_at_once), FakeProviders(refuse_bookings=True)

    ended = run_agent(model, providers, "run-refused")

    assert ended.bookings == []
    assert ended.answer == 'Done: {"error": "the airline refused: 409 no seats left"}'


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
def test_a_booking_answered_without_its_id_may_have_landed(
    answer: Callable[[httpx.Request], httpx.Response], reason: str
) -> None:
    # A 2xx that is not the airline's answer says nothing of whether it booked: not a bug in the
    # step, but a booking to retry under the same key, like a timeout.
    async def go() -> None:
        transport = httpx.MockTransport(answer)
        async with httpx.AsyncClient(base_url="http://providers.test", transport=transport) as c:
            deps = DependencyMap()
            deps.insert(Providers(c))
            await book_flight(root_context(id="run-1:2", deps=deps), TRIP)

    with pytest.raises(ProviderUnavailableError, match=reason):
        asyncio.run(go())


# -- replay: a crash between the model's tool request and the tool's result ----------------------


async def replay(
    run_id: str, model: FakeModel, providers: FakeProviders, *checkpoints: Any
) -> AgentEnded:
    """The workflow body on a context whose journal holds `checkpoints` (what a replay reads)."""
    deps = DependencyMap()
    for dependency in dependencies(model, providers):
        deps.insert(dependency)
    ctx = root_context(id=run_id, preload=list(checkpoints), deps=deps)
    return await agent(ctx, AgentRequest(run_id=run_id, task="Book Ada's flight to Lisbon."))


BOOK = ModelReply(tool_calls=[ToolCall("call_0", "book_flight", json.dumps(TRIP))])


def test_after_a_crash_before_the_booking_the_model_is_not_asked_again() -> None:
    # The worker died after the model's reply was checkpointed (step 1), before the booking.
    model, providers = FakeModel(books_at_once), FakeProviders()

    ended = asyncio.run(
        replay("crashed-1", model, providers, resolved_promise("crashed-1:1", BOOK))
    )

    assert model.keys() == ["crashed-1:3"]  # only the final answer: step 1 came from the journal
    assert providers.reservations() == ended.bookings
    assert len(ended.bookings) == 1


def test_after_a_crash_after_the_booking_landed_it_is_not_booked_again() -> None:
    # The booking reached the provider (under the step's key) but its result was never
    # checkpointed: the replay sends it again under the same key and gets the same seat.
    model, providers = FakeModel(books_at_once), FakeProviders()
    landed = {"id": "flight_landed", **TRIP}
    providers.answers["crashed-2:2"] = landed

    ended = asyncio.run(
        replay("crashed-2", model, providers, resolved_promise("crashed-2:1", BOOK))
    )

    assert ended.bookings == ["flight_landed"] == providers.reservations()
    assert [key for _, key, _ in providers.requests] == ["crashed-2:2"]
    assert model.keys() == ["crashed-2:3"]


def test_a_run_waiting_for_the_manager_suspends_and_holds_nothing() -> None:
    model, providers = FakeModel(travel_agent), FakeProviders()
    ask = ModelReply(tool_calls=[ToolCall("call_0", "ask_human", '{"question": "May Ada fly?"}')])

    with pytest.raises(Suspended):
        asyncio.run(replay("waiting", model, providers, resolved_promise("waiting:1", ask)))

    assert model.requests == []  # the model is not asked while the question is open
    [(path, _, body)] = providers.requests
    assert path == "/slack/send"
    assert "May Ada fly?" in body["text"]
