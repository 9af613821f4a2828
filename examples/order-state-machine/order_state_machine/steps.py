"""The transitions: each one acts on the outside world once and returns the state it reached.

Each call carries an Idempotency-Key derived from the step's durable id, which is stable across
retries and crashes. If this process dies after a provider acted but before the step's result
was checkpointed, the step runs again on another worker, sends the same key, and the provider
answers with its original response instead of charging, refunding or notifying twice.

The card is charged when the order ships, as most shops capture a payment at dispatch: cancelling
before that costs the customer nothing, and cancelling after it is a refund.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx
from resonate.context import Context

if TYPE_CHECKING:  # the workflow module imports this one; steps only annotate with its models
    from order_state_machine.workflow import Cancel, Order, Ship

State = Literal["created", "confirmed", "shipped", "delivered", "cancelled", "refunded"]


@dataclass(frozen=True)
class Transition:
    """A step's result, kept in the journal: the state reached, and the provider's id for the
    effect that made it so (an email, a charge, a refund, a push notification)."""

    state: State
    receipt: str


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


async def confirm(ctx: Context, order: Order) -> Transition:
    print(f"confirming {order.order_id}: confirmation email (step {ctx.info.id})", flush=True)
    email = await _post(
        ctx,
        "/email/send",
        {
            "to": order.customer.email,
            "subject": f"Order {order.order_id} confirmed",
            "text": f"{len(order.items)} item(s), {_money(order)}, charged when it ships.",
        },
    )
    return Transition("confirmed", email)


async def charge(ctx: Context, order: Order, ship: Ship) -> Transition:
    print(f"shipping {order.order_id}: charging {_money(order)} (step {ctx.info.id})", flush=True)
    charge_id = await _post(
        ctx,
        "/payment/charge",
        {
            "customer": order.customer.email,
            "amount_cents": order.total_cents,
            "currency": order.currency,
            "description": f"order {order.order_id}, shipped by {ship.carrier} "
            f"{ship.tracking_number}",
        },
    )
    return Transition("shipped", charge_id)


async def notify_delivered(ctx: Context, order: Order) -> Transition:
    print(f"delivering {order.order_id}: push notification (step {ctx.info.id})", flush=True)
    push = await _post(
        ctx,
        "/push/send",
        {"to": order.customer.email, "text": f"Order {order.order_id} was delivered."},
    )
    return Transition("delivered", push)


async def notify_cancelled(ctx: Context, order: Order, cancel: Cancel) -> Transition:
    print(f"cancelling {order.order_id}: nothing to refund (step {ctx.info.id})", flush=True)
    email = await _post(
        ctx,
        "/email/send",
        {
            "to": order.customer.email,
            "subject": f"Order {order.order_id} cancelled",
            "text": f"Cancelled ({cancel.reason}). Your card was not charged.",
        },
    )
    return Transition("cancelled", email)


async def refund(ctx: Context, order: Order, charge_id: str, cancel: Cancel) -> Transition:
    print(f"cancelling {order.order_id}: refunding {charge_id} (step {ctx.info.id})", flush=True)
    refund_id = await _post(
        ctx, "/payment/refund", {"charge_id": charge_id, "reason": cancel.reason}
    )
    return Transition("refunded", refund_id)


async def _post(ctx: Context, path: str, body: dict[str, Any]) -> str:
    providers = ctx.get_dependency(Providers)
    response = await providers.client.post(
        path, json=body, headers={"Idempotency-Key": ctx.info.id}
    )
    response.raise_for_status()  # any failure raises, and the step is retried with backoff
    receipt: str = response.json()["id"]
    return receipt


def _money(order: Order) -> str:
    return f"{order.total_cents / 100:.2f} {order.currency}"
