"""The steps: calls to the shop's inventory, payment and email providers, and opening the window.

Each provider call carries an Idempotency-Key derived from the step's durable id, which is stable
across retries and crashes. If this process dies after a provider acted (reserved the stock,
charged the card, sent the email) but before the step's result was checkpointed, the step runs
again on another worker, sends the same key, and the provider answers with what it did the first
time instead of acting twice.

A provider can fail in two ways, and the steps keep them apart:
  transient  a 5xx, 408, 429, a timeout, a dropped connection, or a 2xx whose body is not the
             answer (a proxy's HTML page, a cut-off or garbled body): it may pass, and the call
             may have landed. The step raises `ProviderUnavailableError`, and the SDK runs it
             again after a backoff (the retry policy the workflow passes with the call), under
             the same key.
  refusal    any other 4xx: asking again gets the same answer. The step returns `Refused`
             instead of raising (SDK 0.8.1 retries every exception a step raises), so it is
             checkpointed once and never retried: out of stock, a declined card (402).

The charge and the emails name the buyer by reference (`purchase.customer_id`, `cus_...`), never
by name or email address: the providers resolve it to a card and an address, and the purchase,
which the Resonate server stores in plain text as the execution's argument, holds no personal
data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from resonate.context import Context
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import Value

if TYPE_CHECKING:  # the workflow module imports this one; steps only annotate with its models
    from checkout_window.workflow import Purchase

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Server:
    """The worker's own Resonate client, for the window record the gateway reads (a dependency)."""

    resonate: Resonate


@dataclass(frozen=True)
class Refused:
    """The provider said no (a 4xx other than 408 and 429): asking again gets the same answer."""

    status: int
    reason: str


class ProviderUnavailableError(Exception):
    """The provider did not answer now; another attempt may succeed.

    Carries the Idempotency-Key the step sent: once the retries ran out, a call that timed out
    may still have acted, and the key is how to find (or void) what it did.
    """

    def __init__(self, message: str, idempotency_key: str) -> None:
        super().__init__(message, idempotency_key)  # what pickle rebuilds the error from
        self.idempotency_key = idempotency_key

    def __str__(self) -> str:
        return str(self.args[0])


def window_id(purchase_id: str) -> str:
    """The id of a purchase's window record. Purchase ids have no '.', so no purchase takes it."""
    return f"{purchase_id}.window"


async def reserve_stock(ctx: Context, purchase: Purchase) -> str | Refused:
    print(f"{purchase.purchase_id}: reserving {_items(purchase)} (step {ctx.info.id})", flush=True)
    body = {
        "purchase_id": purchase.purchase_id,
        "items": [item.model_dump() for item in purchase.items],
    }
    return await _call(ctx, "/inventory/reserve", body)


async def release_stock(
    ctx: Context, reservation_id: str | None, reservation_key: str | None = None
) -> str | Refused:
    """Release a reservation by its id, or by the key a reservation call that may have landed
    was sent with (the inventory then voids that key if the call never arrived)."""
    target = reservation_id or f"the reservation sent as {reservation_key}"
    print(f"releasing {target} (step {ctx.info.id})", flush=True)
    body = (
        {"reservation_id": reservation_id}
        if reservation_id is not None
        else {"reservation_key": reservation_key}
    )
    return await _call(ctx, "/inventory/cancel", body)


async def charge(ctx: Context, purchase: Purchase) -> str | Refused:
    amount = _money(purchase)
    print(f"{purchase.purchase_id}: charging {amount} (step {ctx.info.id})", flush=True)
    body = {
        "customer": purchase.customer_id,
        "amount_cents": purchase.total_cents,
        "currency": purchase.currency,
        "description": f"purchase {purchase.purchase_id}",
    }
    return await _call(ctx, "/payment/charge", body)


async def notify(ctx: Context, purchase: Purchase, subject: str, text: str) -> str | Refused:
    print(f"{purchase.purchase_id}: emailing {subject!r} (step {ctx.info.id})", flush=True)
    body = {"to": purchase.customer_id, "subject": subject, "text": text}
    return await _call(ctx, "/email/send", body)


async def open_window(ctx: Context, purchase_id: str, cancel_id: str) -> None:
    """Record, under an id the example chooses, which promise a cancellation goes into.

    The promise's own id is the SDK's to choose; the gateway learns it from here, never by
    guessing. The record is created settled, so it holds no deadline of its own; run again after
    a crash, it finds the record there already and changes nothing.
    """
    resonate = ctx.get_dependency(Server).resonate
    record = window_id(purchase_id)
    await resonate.promises.create(record, ctx.info.timeout_at, Value(), {})
    try:
        await resonate.promises.resolve(record, Value(data={"cancel": cancel_id}))
    except ServerError as exc:
        # Servers may refuse to settle a settled promise instead of returning it as it is.
        if exc.code not in (403, 409):
            raise


async def _call(ctx: Context, path: str, body: dict[str, Any]) -> str | Refused:
    """The provider's id for what it did, or its refusal as a value; a transient failure raises."""
    providers = ctx.get_dependency(Providers)
    key = ctx.info.id
    try:
        response = await providers.client.post(path, json=body, headers={"Idempotency-Key": key})
    # No answer, or one that cannot be decoded: it may have acted; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}", key) from exc
    status = response.status_code
    if status >= 500 or status in RETRYABLE_CLIENT_ERRORS:
        print(f"{path} answered {status}; the step will be retried", flush=True)
        raise ProviderUnavailableError(f"{path}: answered {status}", key)
    if response.is_error:
        return Refused(status, f"{path} refused: {status} {_error(response)}")
    try:
        resource_id: str = response.json()["id"]
    # A 2xx without its id (a proxy's page) does not say what the provider did: it may have acted.
    except (ValueError, LookupError, TypeError) as exc:
        raise ProviderUnavailableError(
            f"{path}: answered {status} without a readable 'id'", key
        ) from exc
    return resource_id


def _error(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    return str(error) if error else response.reason_phrase


def _items(purchase: Purchase) -> str:
    return ", ".join(f"{item.quantity} x {item.sku}" for item in purchase.items)


def _money(purchase: Purchase) -> str:
    return f"{purchase.total_cents / 100:.2f} {purchase.currency}"
