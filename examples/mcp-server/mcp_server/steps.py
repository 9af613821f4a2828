"""The steps: a weather API, the model, an email to the approver, a payment to the vendor.

Each call carries an Idempotency-Key: the step's durable id (`ctx.info.id`), stable across retries
and crashes. A step that runs again after a crash sends the same key, and the provider answers
with its first answer instead of acting (or billing) twice.

A provider can answer in three ways, and the steps keep them apart:
  yes        2xx: what it did.
  no         any 4xx but 408 and 429 (the model's 400 "bad request", a payment declined):
             asking again cannot help. The step returns a `Refused` value instead of raising,
             because SDK 0.8.1 retries every exception a step raises, and a value is
             checkpointed: after a crash the workflow sees the same refusal without asking again.
  not now    5xx, 408, 429, a timeout, a dropped connection, a 2xx whose body is not the answer
             (a proxy's HTML page, a cut-off body): it may pass, and the call may have landed.
             The step raises `ProviderUnavailableError`, and the SDK runs it again under the
             retry policy the workflow gives with the call, under the same key.

The model is called through the official `openai` client, built with `max_retries=0`: its own
retries would happen inside one step, invisible to the journal and on top of Resonate's policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import openai
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})

# What a model call may fail with that another attempt can cure: a rate limit, the provider's
# 5xx, no answer in time, no connection. Everything else the client raises for a status (400,
# 401, 403, 404, 422) is a refusal.
TRANSIENT_MODEL_ERRORS = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
)


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Model:
    """The model client and the model's name (a worker dependency, from the environment)."""

    client: openai.AsyncOpenAI
    name: str


@dataclass(frozen=True)
class Approver:
    """Who decides on invoices (a worker dependency, from the environment).

    The deployment's policy, never a tool's argument: an AI client that could name the approver,
    or a prompt injection in what it read, could send the request to an address it controls and
    approve its own invoice. Looked up by the step, so no address is in the stored invoice.
    """

    email: str


@dataclass(frozen=True)
class Refused:
    """A provider's final no."""

    provider: str
    reason: str


class ProviderUnavailableError(Exception):
    """A call failed in a way that may pass; the step is retried under the same key."""

    def __init__(self, message: str, idempotency_key: str) -> None:
        super().__init__(message, idempotency_key)  # what pickle rebuilds the error from
        self.message = message
        self.idempotency_key = idempotency_key

    def __str__(self) -> str:
        return self.message


async def _post(ctx: Context, provider: str, path: str, body: dict[str, object]) -> httpx.Response:
    key = ctx.info.id
    try:
        response = await ctx.get_dependency(Providers).client.post(
            path, json=body, headers={"Idempotency-Key": key}
        )
    # No answer, or one that could not be decoded: it may have acted; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{provider}: {type(exc).__name__}", key) from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ProviderUnavailableError(f"{provider}: answered {response.status_code}", key)
    return response


def _id(ctx: Context, provider: str, response: httpx.Response) -> str:
    """The provider's id for what it did, from a 2xx's JSON body."""
    try:
        provider_id: str = response.json()["id"]
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx that is not the provider's answer (a proxy's HTML page, a cut-off body) says
        # nothing about what it did: not a bug, but a call that may have acted, asked again.
        raise ProviderUnavailableError(
            f"{provider}: answered {response.status_code} without its id", ctx.info.id
        ) from exc
    return provider_id


def _refusal(provider: str, response: httpx.Response) -> Refused:
    try:
        reason = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        reason = response.reason_phrase
    return Refused(provider, f"{response.status_code} {reason}")


# -- the weather report ------------------------------------------------------------------------


async def observe_weather(ctx: Context, city: str, date: str) -> str | Refused:
    """Ask the weather API for the day's observation of the city; its id, or its refusal."""
    print(f"weather API: observation for {city} on {date}", flush=True)
    response = await _post(
        ctx, "weather", "/api/call", {"what": "weather.observation", "city": city, "date": date}
    )
    if response.is_client_error:
        return _refusal("weather", response)
    return _id(ctx, "weather", response)


REPORTER = (
    "You are a weather reporter. Write a two-sentence weather report for the city and day the "
    "user names, from the observation they cite. Plain text, no markdown."
)


async def write_report(ctx: Context, city: str, date: str, observation_id: str) -> str | Refused:
    """One completion: the report's text, or the model's refusal. One billed call per step."""
    model = ctx.get_dependency(Model)
    key = ctx.info.id
    print(f"model: report for {city} (key {key})", flush=True)
    try:
        completion = await model.client.chat.completions.create(
            model=model.name,
            messages=[
                {"role": "system", "content": REPORTER},
                {
                    "role": "user",
                    "content": f"Weather report for {city} on {date}, "
                    f"from observation {observation_id}.",
                },
            ],
            # The stand-in bills a key once and replays its answer; the real API ignores it.
            extra_headers={"Idempotency-Key": key},
        )
    except TRANSIENT_MODEL_ERRORS as exc:
        raise ProviderUnavailableError(f"model: {type(exc).__name__}", key) from exc
    except openai.APIStatusError as exc:
        return Refused("model", exc.message)  # "Error code: 400 - <why>"
    text = completion.choices[0].message.content
    if not text:
        return Refused(
            "model", f"no text in the answer (finish: {completion.choices[0].finish_reason})"
        )
    return text.strip()


# -- the invoice approval ----------------------------------------------------------------------


async def ask_approver(
    ctx: Context, summary: str, decision_promise: str, decide_within_seconds: int
) -> str | Refused:
    """Email the configured approver what to decide and the promise that takes the decision."""
    to = ctx.get_dependency(Approver).email
    print(f"email: ask {to} to decide on {summary}", flush=True)
    text = (
        f"Please approve or reject {summary}. You have {decide_within_seconds} s.\n"
        f"Decide with: python -m mcp_server.decide {decision_promise} approve|reject "
        '--note "..."\n'
    )
    response = await _post(
        ctx,
        "email",
        "/email/send",
        {
            "to": to,
            "subject": f"Approve {summary}?",
            "text": text,
            "decision_promise": decision_promise,
        },
    )
    if response.is_client_error:
        return _refusal("email", response)
    return _id(ctx, "email", response)


async def pay_vendor(ctx: Context, vendor: str, amount_cents: int, currency: str) -> str | Refused:
    """Pay the approved invoice; the payment's id, or the provider's refusal."""
    print(f"payment: {amount_cents / 100:,.2f} {currency} to {vendor}", flush=True)
    response = await _post(
        ctx,
        "payment",
        "/payment/charge",
        {"payee": vendor, "amount_cents": amount_cents, "currency": currency},
    )
    if response.is_client_error:
        return _refusal("payment", response)
    return _id(ctx, "payment", response)
