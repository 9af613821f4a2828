"""The steps: verify a customer's identity, send them a welcome email.

Each calls a third-party API with an Idempotency-Key from its durable id (the execution id plus
the step's place in it: no personal data in it, see the README). The key is stable across
retries and crashes, so a step that runs again (after a crash, or after a timeout whose request
did land) gets the provider's original answer instead of acting twice. A refusal (a 4xx other
than 408 and 429) would be the same on every attempt, so it is returned as a value and never
retried; a provider that is down, overloaded or silent (a 5xx, 408, 429, a timeout, a refused
connection), or whose 2xx body is not the answer (a proxy's HTML page, a cut-off or garbled body),
may answer the next attempt and may have acted, so the step raises and its retry policy tries
again with the same key.

The providers do see the personal data: they need it. What never holds it in plaintext is the
Resonate server, which stores the arguments and the result of each step (see crypto.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Customer:
    """Everything here is personal data: it reaches the server only sealed."""

    name: str
    email: str
    address: str
    card_fingerprint: str  # the payment provider's fingerprint of the card, not its number


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Answer:
    """What the provider did: acted (its receipt) or refused (why)."""

    receipt: str | None = None
    refusal: str | None = None


class ProviderUnavailableError(Exception):
    """The provider did not act now; another attempt may succeed."""


async def verify_identity(ctx: Context, customer: Customer) -> Answer:
    return await _call(
        ctx,
        "/api/call",
        {
            "check": "identity",
            "name": customer.name,
            "address": customer.address,
            "card_fingerprint": customer.card_fingerprint,
        },
    )


async def send_welcome_email(ctx: Context, customer: Customer) -> Answer:
    first_name = customer.name.split()[0]
    return await _call(
        ctx,
        "/email/send",
        {
            "to": customer.email,
            "subject": "Welcome aboard",
            "text": f"Hello {first_name}, your account is ready.",
        },
    )


async def _call(ctx: Context, path: str, body: dict[str, str]) -> Answer:
    # The step's id names the execution, never the customer: it is safe to print and to log.
    print(f"{ctx.info.id}: POST {path}", flush=True)
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            path, json=body, headers={"Idempotency-Key": ctx.info.id}
        )
    # No answer, or one that cannot be decoded: it may have acted; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ProviderUnavailableError(f"{path}: answered {response.status_code}")
    if response.is_client_error:
        return Answer(refusal=f"{response.status_code} {_reason(response)}")
    try:
        receipt: str = response.json()["id"]
    # A 2xx without its id (a proxy's page) does not say what the provider did: it may have acted.
    except (ValueError, LookupError, TypeError) as exc:
        unread = f"answered {response.status_code} without a readable 'id'"
        raise ProviderUnavailableError(f"{path}: {unread}") from exc
    return Answer(receipt=receipt)


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase
