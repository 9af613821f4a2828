"""The steps: each calls a third-party API with an Idempotency-Key from its durable id.

The key is stable across retries and crashes, so a step that runs again (after a crash, or
after a timeout whose request did land) gets the provider's original answer instead of acting
twice. A step tells the answers apart: a refusal (a 4xx other than 408 and 429) would be the
same on every attempt, so it is returned as a value and never retried; a provider that is down,
overloaded or silent (a 5xx, 408, 429, a timeout, a refused connection, a 2xx whose body is not
its answer) may answer the next attempt, so the step raises and the workflow's retry policy tries
again.

Each step is `@traced`: its attempts become one span, with a retry or a recovery as an event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from resonate.context import Context

from observability.telemetry import traced

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Order:
    """What the workflow needs to know. No personal data: the server stores every argument."""

    order_id: str
    customer_id: str
    amount_cents: int


@dataclass(frozen=True)
class Outcome:
    """What the provider did: acted (its receipt), refused (why), or, unconfirmed, not known."""

    receipt: str | None = None
    refusal: str | None = None
    # Set by the workflow, never by a step: why a message is out of retries, its last call
    # perhaps acted. Its span (`resonate.promise.id`, the Idempotency-Key) holds each attempt.
    unconfirmed: str | None = None


class ProviderUnavailableError(Exception):
    """The provider did not act now; another attempt may succeed."""


@traced
async def charge_card(ctx: Context, order: Order) -> Outcome:
    return await _call(
        ctx, "/payment/charge", {"customer": order.customer_id, "amount": order.amount_cents}
    )


@traced
async def notify_warehouse(ctx: Context, order: Order) -> Outcome:
    return await _call(
        ctx, "/slack/send", {"channel": "#warehouse", "text": f"pick {order.order_id}"}
    )


@traced
async def email_receipt(ctx: Context, order: Order) -> Outcome:
    return await _call(
        ctx, "/email/send", {"to": order.customer_id, "text": f"receipt {order.order_id}"}
    )


@traced
async def text_customer(ctx: Context, order: Order) -> Outcome:
    return await _call(
        ctx, "/sms/send", {"to": order.customer_id, "text": f"{order.order_id} ships today"}
    )


async def _call(ctx: Context, path: str, body: dict[str, Any]) -> Outcome:
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
        return Outcome(refusal=f"{response.status_code} {_reason(response)}")
    try:
        return Outcome(receipt=response.json()["id"])
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
