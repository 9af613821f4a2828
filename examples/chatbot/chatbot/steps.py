"""The step: one call to the model, through the official `openai` client.

The client is configured only from the environment (`OPENAI_BASE_URL`, `OPENAI_API_KEY`,
`OPENAI_MODEL`), so the same code talks to the cookbook's stand-in model, to OpenAI, or to any
compatible server (vLLM, Ollama, LiteLLM). It is built with `max_retries=0`: the turn's retry
policy owns retries, so that every attempt is a step attempt Resonate knows about.

Each call carries an `Idempotency-Key` made from the step's durable id, the same on every retry
and after a crash. The stand-in model bills a key once and replays its completion for a repeated
key; the real OpenAI API ignores the header (see the README for what that means, and how to close
the gap with a caching proxy).

The failure model: a 429, a 408, a 5xx, a timeout or a connection error says "not now": the step
raises `ModelUnavailableError` and the retry policy asks again. Any other 4xx (a bad request, a
key the provider refuses, a model it does not have) would be the same on every attempt: it is
returned as the turn's refusal, never retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import openai
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, ConfigDict
from resonate.context import Context

SYSTEM_PROMPT = (
    "You are the assistant of a small bookshop. Answer in one or two sentences, "
    "and remember what the customer told you earlier in the chat."
)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["user", "assistant"]
    content: str


class Reply(BaseModel):
    """The model's answer to a turn: its text, or why it would not answer."""

    model_config = ConfigDict(frozen=True)

    content: str | None = None
    refusal: str | None = None


@dataclass(frozen=True)
class Model:
    """The model every turn asks (a worker dependency): the client and the model's name."""

    client: openai.AsyncOpenAI
    name: str


class ModelUnavailableError(Exception):
    """The model did not answer now (overloaded, down, silent); another attempt may."""


async def complete(ctx: Context, conversation: list[Message]) -> Reply:
    model = ctx.get_dependency(Model)
    messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for message in conversation:
        if message.role == "user":
            messages.append({"role": "user", "content": message.content})
        else:
            messages.append({"role": "assistant", "content": message.content})
    try:
        completion = await model.client.chat.completions.create(
            model=model.name,
            messages=messages,
            extra_headers={"Idempotency-Key": ctx.info.id},
        )
    except (openai.APITimeoutError, openai.APIConnectionError) as exc:
        # It may have answered (and billed): the same key on the next attempt makes that safe.
        raise _unavailable(ctx, f"the model did not answer: {type(exc).__name__}") from None
    except openai.APIStatusError as exc:
        if exc.status_code in (408, 429) or exc.status_code >= 500:
            raise _unavailable(ctx, f"the model answered {exc.status_code}") from None
        # The kind of refusal, not the provider's wording: that may differ each time it is asked
        # (a crash after the refusal, before its checkpoint, asks again), and the turn's answer
        # must not.
        return Reply(refusal=f"{exc.status_code} {type(exc).__name__}")
    answer = completion.choices[0].message
    if answer.refusal:
        return Reply(refusal=answer.refusal)
    return Reply(content=answer.content or "")


def _unavailable(ctx: Context, why: str) -> ModelUnavailableError:
    print(f"{ctx.info.id}: {why}; the turn's retry policy will ask again", flush=True)
    return ModelUnavailableError(why)
