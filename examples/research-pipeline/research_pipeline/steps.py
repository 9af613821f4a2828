"""The steps: three agents, each one call to a chat model, and the delivery of the report.

Each agent step sends one Chat Completions request with an Idempotency-Key made from its durable
id (`ctx.info.id`), which is the same on every attempt and after every crash. A model server
that honours the key (the cookbook's stand-in, or a caching proxy in front of a real provider)
answers a repeated request from its record instead of computing, and billing, it again. The real
OpenAI API ignores the header: there, only the window between its answer and the checkpoint is
exposed, and a crash in it pays for that one completion again (the README says how to close it).

Every step tells the answers apart as the rest of the cookbook does. A refusal (400, 401, 403,
404, 409, 422: a bad request, a wrong key, an unknown model) would be the same on every attempt,
so it is returned as a value and never retried. An overloaded or failing model (429, 408, a
5xx, a timeout, a dropped connection) may answer the next attempt, so the step raises and the
workflow's retry policy asks again, under the same key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionMessageParam,
    ChatCompletionToolChoiceOptionParam,
    ChatCompletionToolParam,
)
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})

RESEARCHER = (
    "You are the researcher of a small research team. List the facts a short report on the"
    " topic needs, as terse bullet points, each with where it comes from."
)
WRITER = (
    "You are the writer of a small research team. Write a short report on the topic from the"
    " researcher's notes. When the reviewer's feedback is given, revise your previous draft to"
    " address it, and change nothing else."
)
REVIEWER = (
    "You are the reviewer of a small research team. Read the draft report and call"
    " submit_review: approve it, or ask for a revision with concrete feedback."
)
SUBMIT_REVIEW: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "submit_review",
        "description": "Approve the draft, or send it back to the writer with feedback.",
        "parameters": {
            "type": "object",
            "properties": {
                "verdict": {"type": "string", "enum": ["approve", "revise"]},
                "feedback": {"type": "string", "description": "what to change; empty to approve"},
            },
            "required": ["verdict", "feedback"],
            "additionalProperties": False,
        },
    },
}
SUBMIT_REVIEW_REQUIRED: ChatCompletionToolChoiceOptionParam = {
    "type": "function",
    "function": {"name": "submit_review"},
}


@dataclass(frozen=True)
class Agents:
    """The model every agent talks to: an OpenAI-compatible client and a model name.

    A worker dependency. The client is built with `max_retries=0`: Resonate's retry policy owns
    retries, and the client's own would multiply them, each a request that may be billed.
    """

    client: openai.AsyncOpenAI
    model: str


@dataclass(frozen=True)
class Receiver:
    """Where the finished report goes: a chat channel, through the provider's HTTP API."""

    client: httpx.AsyncClient
    channel: str


@dataclass(frozen=True)
class Written:
    """What an agent wrote, or why the model refused to answer (then `text` is empty)."""

    text: str = ""
    refusal: str | None = None


@dataclass(frozen=True)
class Review:
    """The reviewer's verdict, or why the model refused to give one."""

    approved: bool = False
    feedback: str = ""
    refusal: str | None = None


@dataclass(frozen=True)
class Delivered:
    """The receiver's id for the delivered message, or why it refused it."""

    message_id: str | None = None
    refusal: str | None = None


class ModelUnavailableError(Exception):
    """The model did not answer now (overloaded, failing, silent); another attempt may."""


class ReceiverUnavailableError(Exception):
    """The receiver did not take the report now; another attempt may."""


async def research(ctx: Context, topic: str) -> Written:
    answer = await _complete(ctx, "researcher", [_system(RESEARCHER), _user(f"Topic: {topic}")])
    if isinstance(answer, str):
        return Written(refusal=answer)
    return Written(text=answer.choices[0].message.content or "")


async def write(ctx: Context, topic: str, notes: str, draft: str, feedback: str) -> Written:
    """A first draft from the notes; or, given a draft and the reviewer's feedback, a revision."""
    prompt = f"Topic: {topic}\n\nResearch notes:\n{notes}"
    if feedback:
        prompt += f"\n\nYour previous draft:\n{draft}\n\nReviewer feedback:\n{feedback}"
    answer = await _complete(ctx, "writer", [_system(WRITER), _user(prompt)])
    if isinstance(answer, str):
        return Written(refusal=answer)
    return Written(text=answer.choices[0].message.content or "")


async def review(ctx: Context, topic: str, draft: str) -> Review:
    prompt = f"Topic: {topic}\n\nDraft report:\n{draft}"
    answer = await _complete(
        ctx,
        "reviewer",
        [_system(REVIEWER), _user(prompt)],
        tools=[SUBMIT_REVIEW],
        tool_choice=SUBMIT_REVIEW_REQUIRED,
    )
    if isinstance(answer, str):
        return Review(refusal=answer)
    return _verdict(answer)


async def deliver(ctx: Context, topic: str, report: str, note: str) -> Delivered:
    """Post the report to the receiver's channel, once: the key makes a repeat a no-op."""
    receiver = ctx.get_dependency(Receiver)
    print(f"delivering the report to {receiver.channel}", flush=True)
    message = {"channel": receiver.channel, "text": f"*{topic}* ({note})\n\n{report}"}
    try:
        response = await receiver.client.post(
            "/slack/send", json=message, headers={"Idempotency-Key": ctx.info.id}
        )
    # Timed out, reset, or an answer that could not be decoded: it may have landed, and the key
    # makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ReceiverUnavailableError(f"slack: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ReceiverUnavailableError(f"slack: answered {response.status_code}")
    if response.is_client_error:
        return Delivered(refusal=f"slack refused: HTTP {response.status_code}")
    try:
        return Delivered(message_id=str(response.json()["id"]))
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx without its id (a proxy's HTML page, a cut-off body) says nothing of what the
        # receiver did: like a timeout, it may have landed, and the retry's key gets the answer.
        raise ReceiverUnavailableError(
            f"slack: HTTP {response.status_code} without a readable 'id'"
        ) from exc


async def _complete(
    ctx: Context,
    agent: str,
    messages: list[ChatCompletionMessageParam],
    tools: list[ChatCompletionToolParam] | openai.Omit = openai.omit,
    tool_choice: ChatCompletionToolChoiceOptionParam | openai.Omit = openai.omit,
) -> ChatCompletion | str:
    """One completion, keyed by this step's durable id; a refusal comes back as its reason."""
    agents = ctx.get_dependency(Agents)
    print(f"{agent}: asking the model (Idempotency-Key {ctx.info.id})", flush=True)
    try:
        return await agents.client.chat.completions.create(
            model=agents.model,
            messages=messages,
            tools=tools,
            tool_choice=tool_choice,
            extra_headers={"Idempotency-Key": ctx.info.id},
        )
    except openai.APIStatusError as exc:
        if exc.status_code >= 500 or exc.status_code in RETRYABLE_CLIENT_ERRORS:
            raise ModelUnavailableError(f"{agent}: the model answered {exc.status_code}") from None
        # The provider's message goes to the log; the result keeps only what is stable (the
        # status and the error's code): the message may differ from one attempt to the next.
        print(f"{agent}: the model refused: {exc.message}", flush=True)
        code = f", {exc.code}" if exc.code else ""
        return f"{agent}: the model refused (HTTP {exc.status_code}{code})"
    except openai.APIConnectionError as exc:  # includes a timeout: it may have been billed
        raise ModelUnavailableError(f"{agent}: {type(exc).__name__}") from None


def _verdict(answer: ChatCompletion) -> Review:
    """The review from the reviewer's `submit_review` call; an answer without one is a refusal."""
    for call in answer.choices[0].message.tool_calls or []:
        if call.type != "function" or call.function.name != "submit_review":
            continue
        try:
            arguments = json.loads(call.function.arguments)
            verdict, feedback = arguments["verdict"], arguments.get("feedback", "")
        except (ValueError, KeyError, TypeError):
            break
        if verdict in ("approve", "revise") and isinstance(feedback, str):
            return Review(approved=verdict == "approve", feedback=feedback)
        break
    # The model answered, so this is its answer, not a failure to answer: asking again under
    # the same key would be answered from the record, the same.
    return Review(refusal="reviewer: the model answered without a usable submit_review call")


def _system(content: str) -> ChatCompletionMessageParam:
    return {"role": "system", "content": content}


def _user(content: str) -> ChatCompletionMessageParam:
    return {"role": "user", "content": content}
