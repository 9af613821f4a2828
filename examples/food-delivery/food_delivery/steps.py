"""The steps: each acts once on a third-party API, with an Idempotency-Key from its durable id.

The key is stable across retries and crashes, so a step that runs again (after a crash, or after
a timeout whose request did land) gets the provider's original answer instead of charging,
dispatching or notifying twice. Which provider does what:
  payment  charge the customer; refund them
  slack    the restaurant's order channel: the kitchen ticket, and "stop, cancelled"
  api      the delivery platform's dispatch API: assign a driver, confirm pick-up and drop-off
  push     tell the customer the order arrived
  sms      tell the customer the order was cancelled

A provider answers in three ways, and the steps keep them apart:
  yes      2xx: the provider's id for what it did (a charge, a message, an assignment).
  no       any 4xx but 408 and 429: a declined card, a restaurant that is closed, no driver
           available (the dispatch API's 409). Asking again cannot change it. The step returns
           it as a value (`Outcome.refusal`), because SDK 0.8.1 retries every exception a step
           raises, and a value is checkpointed: after a crash the workflow sees the same no
           without asking again.
  not now  5xx, 408, 429, a timeout, a dropped connection, or a 2xx whose body is not the
           answer (a proxy's HTML page, a cut-off or garbled body): it may pass, and the call may
           have landed. The step raises `ProviderUnavailableError` (with the call's key), and
           the SDK runs it again under the retry policy the workflow gives with the call.

Before it acts, each step also marks the order's progress on the Resonate server: a promise with
an id the example chooses (`<order id>~<stage>`), which the gateway reads for `GET /orders/{id}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import httpx
from resonate.context import Context
from resonate.error import ServerError
from resonate.resonate import Resonate
from resonate.types import Value

if TYPE_CHECKING:  # the workflow module imports this one; steps only annotate with its model
    from food_delivery.workflow import Order

Stage = Literal[
    "charge",
    "prepare",
    "assign_driver",
    "pick_up",
    "deliver",
    "complete",
    "refund",
    "release_driver",
    "tell_restaurant",
    "notify_customer",
]
# Every stage an order can go through, in the order it can go through them: the six steps of a
# delivery, then the compensations of a cancelled order. An order's stages always start in this
# order, whichever path it takes, so the latest stage an order reached is the one furthest on.
PIPELINE: Final[tuple[Stage, ...]] = (
    "charge",
    "prepare",
    "assign_driver",
    "pick_up",
    "deliver",
    "complete",
)
COMPENSATIONS: Final[tuple[Stage, ...]] = (
    "refund",
    "release_driver",
    "tell_restaurant",
    "notify_customer",
)
STAGES: Final[tuple[Stage, ...]] = PIPELINE + COMPENSATIONS

# The tag that marks a promise as one of an order's progress marks (the gateway searches it).
PROGRESS_OF: Final = "food-delivery:progress-of"


def progress_id(order_id: str, stage: Stage) -> str:
    """The id of the mark an order's step sets when it starts. `~` cannot occur in an order id,
    so no order's id is ever another order's mark."""
    return f"{order_id}~{stage}"


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class ProgressBoard:
    """Where steps mark an order's progress: the Resonate server, through the worker's client."""

    resonate: Resonate


@dataclass(frozen=True)
class Outcome:
    """What the provider did: acted (its id for what it did), or refused (why)."""

    receipt: str | None = None
    refusal: str | None = None


class ProviderUnavailableError(Exception):
    """A provider call failed in a way that may pass; the step is retried.

    `idempotency_key` is the call's key: when the retries run out the call may still have
    landed, and the provider can be asked to undo whatever that key did.
    """

    def __init__(self, message: str, idempotency_key: str) -> None:
        super().__init__(message, idempotency_key)  # what pickle rebuilds the error from
        self.message = message
        self.idempotency_key = idempotency_key

    def __str__(self) -> str:
        return self.message


# -- the six steps of a delivery ---------------------------------------------------------------


async def charge(ctx: Context, order: Order) -> Outcome:
    body = {
        "customer": order.customer_id,
        "amount_cents": order.total_cents,
        "currency": order.currency,
        "description": f"order {order.order_id}",
    }
    return await _act(ctx, order, "charge", "/payment/charge", body)


async def prepare(ctx: Context, order: Order) -> Outcome:
    body = {
        "to": order.restaurant_id,
        "text": f"New order {order.order_id}: "
        + ", ".join(f"{item.quantity}x {item.name}" for item in order.items),
    }
    return await _act(ctx, order, "prepare", "/slack/send", body)


async def assign_driver(ctx: Context, order: Order) -> Outcome:
    body = {
        "op": "assign_driver",
        "order": order.order_id,
        "pickup": order.restaurant_id,
        "dropoff": order.address_id,
    }
    return await _act(ctx, order, "assign_driver", "/api/call", body)


async def pick_up(ctx: Context, order: Order, assignment: str) -> Outcome:
    body = {"op": "confirm_pickup", "assignment": assignment, "order": order.order_id}
    return await _act(ctx, order, "pick_up", "/api/call", body)


async def deliver(ctx: Context, order: Order, assignment: str) -> Outcome:
    body = {"op": "confirm_dropoff", "assignment": assignment, "order": order.order_id}
    return await _act(ctx, order, "deliver", "/api/call", body)


async def complete(ctx: Context, order: Order) -> Outcome:
    body = {"to": order.customer_id, "text": f"Your order {order.order_id} was delivered."}
    return await _act(ctx, order, "complete", "/push/send", body)


# -- the compensations of a cancelled order ----------------------------------------------------


async def release_driver(ctx: Context, order: Order, assignment_key: str) -> Outcome:
    """Release whatever driver the assignment call with this key may have booked: the dispatch
    call kept failing, so whether it assigned someone is unknown."""
    body = {"op": "release_driver", "assignment_key": assignment_key, "order": order.order_id}
    return await _act(ctx, order, "release_driver", "/api/call", body)


async def refund(ctx: Context, order: Order, charge_id: str) -> Outcome:
    body = {"charge_id": charge_id, "reason": f"order {order.order_id} cancelled"}
    return await _act(ctx, order, "refund", "/payment/refund", body)


async def tell_restaurant(ctx: Context, order: Order, reason: str) -> Outcome:
    body = {
        "to": order.restaurant_id,
        "text": f"Order {order.order_id} is cancelled ({reason}): please stop preparing it.",
    }
    return await _act(ctx, order, "tell_restaurant", "/slack/send", body)


# What became of a cancelled order's money, as the customer is told it.
type Money = Literal["not charged", "refunded", "refund pending"]
MONEY_TOLD: Final[dict[Money, str]] = {
    "not charged": "You were not charged.",
    "refunded": "You have been refunded.",
    "refund pending": "Your refund has not gone through yet: we will contact you about it.",
}


async def notify_customer(ctx: Context, order: Order, reason: str, money: Money) -> Outcome:
    body = {
        "to": order.customer_id,
        "text": f"Sorry, your order {order.order_id} was cancelled: {reason}. {MONEY_TOLD[money]}",
    }
    return await _act(ctx, order, "notify_customer", "/sms/send", body)


# -- calling a provider ------------------------------------------------------------------------


async def _act(
    ctx: Context, order: Order, stage: Stage, path: str, body: dict[str, Any]
) -> Outcome:
    """Mark the order as at `stage`, then call the provider: its receipt, or its refusal."""
    await _mark(ctx, order.order_id, stage)
    print(f"{order.order_id}: {stage} (step {ctx.info.id})", flush=True)
    response = await _post(ctx, path, body)
    if response.is_error:  # a 4xx: the provider's final answer
        refusal = _describe(response)
        print(f"{order.order_id}: {stage} refused: {refusal}", flush=True)
        return Outcome(refusal=refusal)
    try:
        receipt: str = response.json()["id"]
    # A 2xx without its id (a proxy's page) does not say what the provider did: it may have acted.
    except (ValueError, LookupError, TypeError) as exc:
        print(f"{path} answered {response.status_code} without its id (transient)", flush=True)
        unread = f"HTTP {response.status_code} without a readable 'id'"
        raise ProviderUnavailableError(f"{path}: {unread}", ctx.info.id) from exc
    return Outcome(receipt=receipt)


async def _mark(ctx: Context, order_id: str, stage: Stage) -> None:
    """Record on the Resonate server that the order reached `stage`.

    Run again (a retry, a crash), it changes nothing: creating a promise that exists returns it,
    and a settled promise keeps its first value.
    """
    board = ctx.get_dependency(ProgressBoard)
    mark_id = progress_id(order_id, stage)
    tags = {PROGRESS_OF: order_id}
    await board.resonate.promises.create(mark_id, ctx.info.timeout_at, Value(data=None), tags)
    try:
        await board.resonate.promises.resolve(mark_id, Value(data={"stage": stage}))
    except ServerError as exc:
        # Servers may refuse to settle a settled promise instead of returning it as it is.
        if exc.code not in (403, 409):
            raise


async def _post(ctx: Context, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST with the step's idempotency key; a transient failure raises, to be retried."""
    providers = ctx.get_dependency(Providers)
    key = ctx.info.id
    try:
        response = await providers.client.post(path, json=body, headers={"Idempotency-Key": key})
    # Timed out, refused, reset, or an answer that could not be decoded: the call may have landed.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        print(f"{path}: {type(exc).__name__} (transient: will retry)", flush=True)
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}", key) from exc
    if response.is_server_error or response.status_code in (408, 429):
        print(f"{path} answered {response.status_code} (transient: will retry)", flush=True)
        raise ProviderUnavailableError(f"{path}: {_describe(response)}", key)
    return response


def _describe(response: httpx.Response) -> str:
    try:
        detail = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        detail = response.text[:200]
    return f"HTTP {response.status_code} {response.reason_phrase}: {detail}"
