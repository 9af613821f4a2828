"""The steps: send the payout through the payment provider, then tell finance.

Each call carries an Idempotency-Key: the step's durable id, stable across retries and crashes.
If this worker dies after the provider paid but before the step's result was checkpointed, the
step runs again on another worker, sends the same key, and the provider answers with the original
payout instead of paying twice.

A provider answers in three ways, and the steps keep them apart:
  yes      2xx: the payout's (or the message's) id.
  no       any 4xx but 408 and 429 (an unknown payee, a closed account): asking again cannot
           help, so the step returns a `Refused` value, checkpointed like any result.
  not now  5xx, 408, 429, a timeout, a dropped connection, or a 2xx whose body is not the
           answer (a proxy's HTML page): it may pass, and the call may have landed. The step
           raises `ProviderUnavailableError`, carrying the call's key, and the retry policy the
           workflow gives it sends the same request again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Payout:
    """What finance approved: who gets how much, for which invoice."""

    payee: str
    amount_cents: int
    currency: str
    invoice: str


@dataclass(frozen=True)
class Refused:
    """A provider's final no."""

    reason: str


class ProviderUnavailableError(Exception):
    """A call failed in a way that may pass; the step is retried.

    `idempotency_key` is the call's key: when the retries run out the call may still have
    landed, and the key is how to ask the provider what it did.
    """

    def __init__(self, message: str, idempotency_key: str) -> None:
        super().__init__(message, idempotency_key)  # what pickle rebuilds the error from
        self.message = message
        self.idempotency_key = idempotency_key

    def __str__(self) -> str:
        return self.message


async def send_payout(ctx: Context, payout: Payout) -> str | Refused:
    """Pay the payee: the provider's payout id, or its refusal."""
    print(
        f"paying {payout.amount_cents / 100:.2f} {payout.currency} to {payout.payee} "
        f"for {payout.invoice} (step {ctx.info.id})",
        flush=True,
    )
    body = {
        "payee": payout.payee,
        "amount_cents": payout.amount_cents,
        "currency": payout.currency,
        "invoice": payout.invoice,
    }
    # The sandbox's payment provider calls a payout a charge; a real payouts API has its own name.
    return await _post(ctx, "/payment/charge", body)


async def notify_finance(ctx: Context, text: str) -> str | Refused:
    """Post to finance's channel: the message id, or the refusal."""
    print(f"telling finance: {text} (step {ctx.info.id})", flush=True)
    return await _post(ctx, "/slack/send", {"channel": "#finance-payouts", "text": text})


async def _post(ctx: Context, path: str, body: dict[str, Any]) -> str | Refused:
    providers = ctx.get_dependency(Providers)
    key = ctx.info.id
    try:
        response = await providers.client.post(path, json=body, headers={"Idempotency-Key": key})
    # Timed out, reset, or an answer that could not be decoded: it may have acted, and the key
    # makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}", key) from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ProviderUnavailableError(f"{path}: answered {response.status_code}", key)
    if response.is_client_error:
        return Refused(f"{response.status_code} {_reason(response)}")
    try:
        resource_id: str = response.json()["id"]
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx without its id (a proxy's HTML page, a cut-off body) says nothing of what the
        # provider did: like a timeout, it may have landed, and the retry's key gets the answer.
        raise ProviderUnavailableError(
            f"{path}: HTTP {response.status_code} without a readable 'id'", key
        ) from exc
    return resource_id


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase
