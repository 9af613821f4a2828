"""The steps: ask the model, book a flight, post a question to a person. Each is one checkpoint.

Every call carries an Idempotency-Key: the step's durable id, stable across retries and crashes.
A step that runs again (after a crash, or after a timeout whose request did land) sends the same
key, so the provider answers with what it already did instead of doing it twice, and the model
stand-in replays the completion it already billed.

Each call can end three ways, and the steps keep them apart:
  yes      the answer (a completion, a reservation id, the message id).
  no       a refusal (a 4xx but 408 and 429: a bad request, a wrong key, no seats): asking again
           cannot help, and SDK 0.8.1 retries every exception a step raises, so the step returns
           the refusal as a value. It is checkpointed too: a replay sees the same refusal.
  not now  a 5xx, 408, 429, a timeout, a dropped connection, a 2xx whose body is not the answer
           (a proxy's HTML page): the step raises, and the retry policy the workflow gives with
           the call sends the same request under the same key.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam
from resonate.context import Context

from tool_agent.tools import TOOLS

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Model:
    """The model client and which model to ask (a worker dependency).

    The client is built with `max_retries=0`: the step's retry policy owns retries. The client's
    own retries would hide a failure from the policy and stretch one attempt past the lease.
    """

    client: openai.AsyncOpenAI
    name: str


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the flight provider and the chat service (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class ToolCall:
    """One tool the model asked for: its call id, the tool's name, its arguments as sent (JSON)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ModelReply:
    """What one model call came to: an answer, tool calls, or the provider's refusal."""

    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: str | None = None  # a 4xx from the model's API: the request itself is wrong
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Booked:
    """The flight provider's answer: the reservation id, or why it said no."""

    reservation_id: str | None = None
    refusal: str | None = None


class ModelUnavailableError(Exception):
    """The model's API did not answer now (429, 5xx, a timeout); the step is retried."""


class ProviderUnavailableError(Exception):
    """A provider did not act now; the step is retried under the same key."""


async def ask_model(ctx: Context, messages: list[ChatCompletionMessageParam]) -> ModelReply:
    """One Chat Completions call with the tools offered: billed once per step, however often run."""
    model = ctx.get_dependency(Model)
    try:
        completion = await model.client.chat.completions.create(
            model=model.name,
            messages=messages,
            tools=TOOLS,
            extra_headers={"Idempotency-Key": ctx.info.id},
        )
    except openai.APIConnectionError as exc:  # a timeout too: it may have answered (and billed)
        print(f"model: {type(exc).__name__} (transient, retried)", flush=True)
        raise ModelUnavailableError(f"model: {type(exc).__name__}: {exc}") from exc
    except openai.APIStatusError as exc:
        # By status, not by the client's exception classes: a 408 has no class of its own. The
        # key makes the retry safe with the stand-in, which may have answered (and billed).
        if exc.status_code >= 500 or exc.status_code in RETRYABLE_CLIENT_ERRORS:
            print(f"model: {exc.status_code} (transient, retried)", flush=True)
            raise ModelUnavailableError(f"model: answered {exc.status_code}: {exc}") from exc
        # 400, 401, 403, 404, 409, 422: asking again cannot help
        print(f"model refused: {exc.status_code}", flush=True)
        return ModelReply(refusal=f"{exc.status_code}: {_model_error(exc)}")
    message = completion.choices[0].message
    calls = [
        ToolCall(call.id, call.function.name, call.function.arguments)
        for call in message.tool_calls or ()
        if call.type == "function"
    ]
    usage = completion.usage
    return ModelReply(
        content=message.content,
        tool_calls=calls or None,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
    )


async def book_flight(ctx: Context, booking: dict[str, str]) -> Booked:
    """Reserve a seat with the flight provider: once per step, however often it runs."""
    response = await _post(ctx, "/flight/reserve", booking)
    if response.is_client_error:
        return Booked(refusal=f"{response.status_code} {_reason(response)}")
    try:
        return Booked(reservation_id=str(response.json()["id"]))
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx without its id (a proxy's HTML page, a cut-off body) says nothing of what the
        # provider did: like a timeout, it may have booked, and the retry's key gets the answer.
        print(f"/flight/reserve: {response.status_code} without its id (transient)", flush=True)
        raise ProviderUnavailableError(
            f"/flight/reserve: HTTP {response.status_code} without a readable 'id'"
        ) from exc


async def post_question(ctx: Context, question_id: str, question: str, channel: str) -> str:
    """Post the agent's question to a person in chat, with the id an answer must name.

    The answer comes back through the gateway (`POST /questions/{id}/answer`), which resolves the
    promise the workflow waits on. A chat service that refuses the message (a 4xx) is not fatal:
    the refusal is returned, and the workflow tells the model nobody could be asked.
    """
    text = f"The travel agent asks: {question}\nAnswer with question id {question_id}."
    response = await _post(
        ctx, "/slack/send", {"channel": channel, "text": text, "question_id": question_id}
    )
    if response.is_client_error:
        return f"refused: {response.status_code} {_reason(response)}"
    return "posted"


async def _post(ctx: Context, path: str, body: dict[str, str]) -> httpx.Response:
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            path, json=body, headers={"Idempotency-Key": ctx.info.id}
        )
    # Timed out, reset, or an answer that could not be decoded: it may have acted, and the key
    # makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        print(f"{path}: {type(exc).__name__} (transient, retried)", flush=True)
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        print(f"{path}: {response.status_code} (transient, retried)", flush=True)
        raise ProviderUnavailableError(f"{path}: answered {response.status_code}")
    return response


def _model_error(exc: openai.APIStatusError) -> str:
    # The client hands over the body's `error` object, OpenAI-style: its message says what is wrong.
    if isinstance(exc.body, dict) and isinstance(exc.body.get("message"), str):
        return str(exc.body["message"])
    return exc.message


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase
