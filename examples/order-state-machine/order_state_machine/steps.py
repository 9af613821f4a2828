"""The steps: each transition acts on the outside world once and returns the state it reached.

Each call carries an Idempotency-Key derived from the step's durable id, which is stable across
retries and crashes. If this process dies after a provider acted but before the step's result
was checkpointed, the step runs again on another worker, sends the same key, and the provider
answers with its original response instead of charging, refunding or notifying twice.

A provider can fail in two ways, and the steps keep them apart:
  transient  5xx, 408, 429, a timeout, a dropped connection, or a 2xx whose body is not the
             answer (a proxy's HTML page, a cut-off or garbled body): it may pass. The step raises
             `ProviderUnavailableError`, and the SDK runs it again after a backoff (the retry
             policy the workflow passes with the call). None of these is a no: the charge or
             refund may have gone through. The retry sends the same Idempotency-Key, so the
             provider answers with what it did instead of doing it twice.
  permanent  any other 4xx: asking again cannot help. The step returns a `Transition` that says
             so instead of raising, because SDK 0.8.1 retries every exception a step raises (it
             has no non-retryable error), and a value is also checkpointed: after a crash, the
             workflow sees the same answer without asking the provider again. A 4xx on the
             charge is the card being declined, an outcome of the order like any other.

The card is charged when the order ships, as most shops capture a payment at dispatch: cancelling
before that costs the customer nothing, and cancelling after it is a refund.

Every call names the customer by reference (`order.customer_id`, `cus_...`), never by name or
email address: the providers resolve it to an address and a card, and the order, which the
Resonate server stores in plain text as the execution's argument, holds no personal data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import httpx
from resonate.context import Context
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import Value

if TYPE_CHECKING:  # the workflow module imports this one; steps only annotate with its models
    from order_state_machine.workflow import Cancel, Order, OrderStatus, Ship

# `failed`: a provider refused an action it should not refuse (a 4xx other than a decline).
State = Literal[
    "created", "confirmed", "shipped", "delivered", "cancelled", "refunded", "declined", "failed"
]


@dataclass(frozen=True)
class Transition:
    """A step's result, kept in the journal: the state reached, the provider's id for the effect
    that made it so (an email, a charge, a refund, a push notification), and when."""

    state: State
    at: datetime
    receipt: str | None = None
    reason: str | None = None  # why the card was declined, or the provider refused


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class StatusBoard:
    """Where the workflow publishes the order's status: the Resonate server's promises, through
    the worker's own client."""

    resonate: Resonate


class ProviderUnavailableError(Exception):
    """A provider call failed in a way that may pass; the step is retried."""


async def confirm(ctx: Context, order: Order) -> Transition:
    print(f"confirming {order.order_id}: confirmation email (step {ctx.info.id})", flush=True)
    body = {
        "to": order.customer_id,
        "subject": f"Order {order.order_id} confirmed",
        "text": f"{len(order.items)} item(s), {_money(order)}, charged when it ships.",
    }
    return await _act(ctx, "/email/send", body, "confirmed")


async def charge(ctx: Context, order: Order, ship: Ship) -> Transition:
    print(f"shipping {order.order_id}: charging {_money(order)} (step {ctx.info.id})", flush=True)
    body = {
        "customer": order.customer_id,
        "amount_cents": order.total_cents,
        "currency": order.currency,
        "description": f"order {order.order_id}, shipped by {ship.carrier} {ship.tracking_number}",
    }
    shipped = await _act(ctx, "/payment/charge", body, "shipped")
    if shipped.state == "failed":  # the payment provider said no: the card was declined
        print(f"{order.order_id}: card declined ({shipped.reason})", flush=True)
        return Transition("declined", shipped.at, reason=shipped.reason)
    return shipped


async def notify_declined(ctx: Context, order: Order, declined: Transition) -> Transition:
    print(f"declining {order.order_id}: telling the customer (step {ctx.info.id})", flush=True)
    body = {
        "to": order.customer_id,
        "subject": f"Order {order.order_id}: payment declined",
        "text": f"Your card was declined ({declined.reason}); the order was not shipped.",
    }
    told = await _act(ctx, "/email/send", body, "declined")
    return Transition(told.state, told.at, told.receipt, told.reason or declined.reason)


async def notify_delivered(ctx: Context, order: Order) -> Transition:
    print(f"delivering {order.order_id}: push notification (step {ctx.info.id})", flush=True)
    body = {"to": order.customer_id, "text": f"Order {order.order_id} was delivered."}
    return await _act(ctx, "/push/send", body, "delivered")


async def notify_cancelled(ctx: Context, order: Order, cancel: Cancel) -> Transition:
    print(f"cancelling {order.order_id}: nothing to refund (step {ctx.info.id})", flush=True)
    body = {
        "to": order.customer_id,
        "subject": f"Order {order.order_id} cancelled",
        "text": f"Cancelled ({cancel.reason}). Your card was not charged.",
    }
    return await _act(ctx, "/email/send", body, "cancelled")


async def refund(ctx: Context, order: Order, charge_id: str, cancel: Cancel) -> Transition:
    print(f"cancelling {order.order_id}: refunding {charge_id} (step {ctx.info.id})", flush=True)
    body = {"charge_id": charge_id, "reason": cancel.reason}
    return await _act(ctx, "/payment/refund", body, "refunded")


async def publish(ctx: Context, status_id: str, status: OrderStatus) -> None:
    """Publish the order's status as a resolved promise, under an id the workflow chose.

    Run again after a crash, it finds the promise there already and changes nothing: creating a
    promise that exists returns it, and a settled promise keeps its first value.
    """
    board = ctx.get_dependency(StatusBoard)
    tags = {STATUS_OF: status.order_id}
    await board.resonate.promises.create(status_id, ctx.info.timeout_at, Value(data=None), tags)
    try:
        await board.resonate.promises.resolve(status_id, Value(data=status.model_dump(mode="json")))
    except ServerError as exc:
        # Servers may refuse to settle a settled promise instead of returning it as it is.
        if exc.code not in (403, 409):
            raise


# The tag that marks a promise as one of an order's published statuses (the gateway searches it).
STATUS_OF = "order-state-machine:status-of"


async def _act(ctx: Context, path: str, body: dict[str, Any], reached: State) -> Transition:
    """Call a provider: `reached` with its receipt, or `failed` with the provider's reason."""
    response = await _post(ctx, path, body)
    at = datetime.now(UTC)
    if response.is_error:  # a 4xx: the provider's final answer
        return Transition("failed", at, reason=_describe(response))
    return Transition(reached, at, _receipt(response))


async def _post(ctx: Context, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST with the step's idempotency key; a transient failure raises, to be retried."""
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            path, json=body, headers={"Idempotency-Key": ctx.info.id}
        )
    except (httpx.TransportError, httpx.DecodingError) as exc:
        # Timed out, refused, reset, or an answer that could not be decoded: the call may have
        # landed. Retrying is safe, and is how we find out: the same Idempotency-Key gets the
        # provider's original answer if it acted.
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in (408, 429):
        print(f"{path} answered {response.status_code}; the step will be retried", flush=True)
        raise ProviderUnavailableError(f"{path}: {_describe(response)}")
    return response


def _receipt(response: httpx.Response) -> str:
    """The provider's id for what it did, from a 2xx's JSON body.

    A 2xx whose body does not hold it (an HTML page from a proxy, a cut-off answer) says nothing
    about what the provider did, and the call may have landed: it is transient, like a timeout,
    and the retry with the same key gets the provider's answer. Raised as anything else (a
    JSONDecodeError, a KeyError), the order would fail as if the step had a bug, not as a charge
    or refund that may have gone through.
    """
    try:
        receipt: str = response.json()["id"]
    except (ValueError, LookupError, TypeError) as exc:
        path = response.request.url.path
        print(f"{path} answered {response.status_code} without its id (transient)", flush=True)
        raise ProviderUnavailableError(
            f"{path}: HTTP {response.status_code} without a readable 'id'"
        ) from exc
    return receipt


def _describe(response: httpx.Response) -> str:
    try:
        detail = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        detail = response.text[:200]
    return f"HTTP {response.status_code} {response.reason_phrase}: {detail}"


def _money(order: Order) -> str:
    return f"{order.total_cents / 100:.2f} {order.currency}"
