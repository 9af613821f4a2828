"""The leaves of the workflow: each one calls a third-party API and changes something there.

Each call carries an Idempotency-Key derived from the step's durable id, which is stable across
retries and crashes. If this process dies after the provider acted but before the step's result
was checkpointed, the step runs again on another worker, sends the same key, and the provider
answers with its original response instead of acting twice.

A step tells the provider's answers apart. A refusal (a 4xx such as an invalid address) would be
the same on every attempt: it is returned as a value, and never retried. A provider that is down,
overloaded or silent (a 5xx, 408, 429, a timeout, a refused connection, a 2xx whose body is not
its answer) may answer the next attempt: the step raises, and the workflow's retry policy tries
it again, with the same key.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Delivery:
    """What the provider did with one message: sent it (its receipt) or refused it (why)."""

    receipt: str | None = None
    refusal: str | None = None


class ProviderUnavailableError(Exception):
    """The provider did not take the message now; another attempt may succeed."""


async def _call(ctx: Context, path: str, body: dict[str, str]) -> Delivery:
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            path, json=body, headers={"Idempotency-Key": ctx.info.id}
        )
    # No answer, or one that could not be decoded: it may have acted; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ProviderUnavailableError(f"{path}: answered {response.status_code}")
    if response.is_client_error:
        return Delivery(refusal=f"{response.status_code} {_reason(response)}")
    try:
        return Delivery(receipt=response.json()["id"])
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx that is not the provider's answer (a proxy's HTML page, a cut-off body) says
        # nothing about what it did: not a bug, but a call that may have acted, asked again.
        raise ProviderUnavailableError(
            f"{path}: answered {response.status_code} without its id"
        ) from exc


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase


async def send_email(ctx: Context, to: str, text: str) -> Delivery:
    return await _call(ctx, "/email/send", {"to": to, "text": text})


async def send_sms(ctx: Context, to: str, text: str) -> Delivery:
    return await _call(ctx, "/sms/send", {"to": to, "text": text})
