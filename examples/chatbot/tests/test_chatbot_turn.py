"""A chat turn against a model faked in process: what the model is sent, retried and refused.

Portable: only `resonate`, the `chatbot` package, its own dependencies and pytest. The model is
the official `openai` client over an `httpx2.MockTransport` (httpx2: the HTTP client openai is
built on and installs, the one the worker's client uses), so the client's own mapping of status
codes and transport errors to exceptions is what the step sees.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
import pytest
from chatbot.steps import SYSTEM_PROMPT, Message, Model, ModelUnavailableError, Reply
from chatbot.workflow import MODEL_RETRIES, Turn, chat_turn, history_after, turn_id
from resonate.testing import RecordingSleeper, local_resonate


def completion(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "fake-1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def error(status: int, message: str) -> httpx2.Response:
    return httpx2.Response(
        status, json={"error": {"message": message, "type": "x", "param": None, "code": None}}
    )


@dataclass
class FakeModel:
    """The model, in process: answers `failures` in order, then `reply`; notes every request."""

    failures: list[Callable[[httpx2.Request], httpx2.Response]] = field(default_factory=list)
    reply: str = "Hello, Ada."
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def answer(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append((request.headers["Idempotency-Key"], json.loads(request.content)))
        if self.failures:
            return self.failures.pop(0)(request)
        return httpx2.Response(200, json=completion(self.reply))

    def model(self) -> Model:
        client = openai.AsyncOpenAI(
            base_url="http://model/v1",
            api_key="test-key",
            max_retries=0,
            http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(self.answer)),
        )
        return Model(client, "fake-1")


def answered_with(status: int) -> Callable[[httpx2.Request], httpx2.Response]:
    return lambda _: error(status, f"answered {status}")


def timed_out(request: httpx2.Request) -> httpx2.Response:
    raise httpx2.ReadTimeout("the model was silent", request=request)


def refused_connection(request: httpx2.Request) -> httpx2.Response:
    raise httpx2.ConnectError("connection refused", request=request)


TURN_2 = Turn(
    chat_id="c-1",
    number=2,
    history=[
        Message(role="user", content="Hi, I'm Ada."),
        Message(role="assistant", content="Welcome, Ada."),
    ],
    message="What was my name?",
)


def run_turn(model: FakeModel, turn: Turn, sleeper: RecordingSleeper | None = None) -> Reply:
    async def go() -> Reply:
        resonate = local_resonate(sleeper=sleeper or RecordingSleeper())
        try:
            resonate.with_dependency(model.model())
            resonate.register(chat_turn)
            handle = resonate.run(turn_id(turn.chat_id, turn.number), chat_turn, turn)
            return await asyncio.wait_for(handle.result(), 10)
        finally:
            await resonate.stop()

    return asyncio.run(go())


def test_a_turn_sends_the_conversation_so_far_and_returns_the_reply() -> None:
    model = FakeModel()

    reply = run_turn(model, TURN_2)

    assert reply == Reply(content="Hello, Ada.")
    [(key, body)] = model.requests
    assert key.startswith("chat.c-1.turn.2:")  # the step's durable id: the same on every retry
    assert body["model"] == "fake-1"
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Hi, I'm Ada."},
        {"role": "assistant", "content": "Welcome, Ada."},
        {"role": "user", "content": "What was my name?"},
    ]


@pytest.mark.parametrize(
    "failure",
    [
        answered_with(429),
        answered_with(500),
        answered_with(503),
        answered_with(408),
        timed_out,
        refused_connection,
    ],
    ids=["429", "500", "503", "408", "timeout", "connection refused"],
)
def test_a_transient_failure_asks_again_with_the_same_key_and_messages(
    failure: Callable[[httpx2.Request], httpx2.Response],
) -> None:
    model = FakeModel(failures=[failure, failure])
    sleeper = RecordingSleeper()

    reply = run_turn(model, TURN_2, sleeper)

    assert reply == Reply(content="Hello, Ada.")
    assert len(model.requests) == 3
    assert len({key for key, _ in model.requests}) == 1
    assert all(body == model.requests[0][1] for _, body in model.requests)
    assert [d for d in sleeper.delays if d > 0][:2] == [2, 4]


@pytest.mark.parametrize(
    ("status", "refusal"),
    [
        (400, "BadRequestError"),
        (401, "AuthenticationError"),
        (403, "PermissionDeniedError"),
        (404, "NotFoundError"),
        (422, "UnprocessableEntityError"),
    ],
)
def test_a_refusal_is_the_turns_answer_and_is_not_retried(status: int, refusal: str) -> None:
    model = FakeModel(failures=[answered_with(status)])

    reply = run_turn(model, TURN_2)

    assert reply == Reply(refusal=f"{status} {refusal}")
    assert len(model.requests) == 1


def test_a_model_down_through_every_retry_fails_the_turn_saying_why() -> None:
    retries = MODEL_RETRIES.max_retries
    model = FakeModel(failures=[answered_with(503)] * (retries + 1))

    with pytest.raises(ModelUnavailableError, match="the model answered 503"):
        run_turn(model, TURN_2)

    assert len(model.requests) == retries + 1


def test_the_next_turn_carries_an_answered_turn_but_not_a_refused_or_failed_one() -> None:
    answered = history_after(TURN_2, Reply(content="Ada."))
    assert answered == [
        *TURN_2.history,
        Message(role="user", content="What was my name?"),
        Message(role="assistant", content="Ada."),
    ]
    assert history_after(TURN_2, Reply(refusal="400 no")) == TURN_2.history
    assert history_after(TURN_2, None) == TURN_2.history


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("chat_id", "a:b"),
        ("chat_id", "a.b"),
        ("number", 0),
        ("number", 51),
        ("message", ""),
        ("message", "   "),
        ("message", "nul\x00byte"),
        ("message", "x" * 4001),
    ],
)
def test_a_bad_turn_is_refused_naming_the_field(field: str, value: object) -> None:
    fields = {**TURN_2.model_dump(), field: value}

    with pytest.raises(ValueError, match=field):
        Turn.model_validate(fields)
