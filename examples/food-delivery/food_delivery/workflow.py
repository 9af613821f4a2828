"""The durable workflow: one food order, from the charge to the delivered push notification.

Six steps, each a checkpoint with one effect on a provider: charge the customer, send the
kitchen ticket to the restaurant, assign a driver, confirm the pick-up, confirm the drop-off,
tell the customer it arrived. A provider that is down is retried in place, under the retry policy
given with the call. A provider that says no is a business outcome: when no driver is available,
the customer is refunded, the restaurant is told to stop, and the customer is told why, each a
checkpoint too, and the order ends `cancelled` with the reason `no driver`: a value the workflow
returns, not an error. A crash anywhere resumes where it stopped: a worker that picks the order
up replays the workflow from the top and gets every finished step from the journal.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from resonate.context import Context
from resonate.retry import Exponential, Linear, Never

from food_delivery.steps import (
    Money,
    Outcome,
    ProviderUnavailableError,
    assign_driver,
    charge,
    complete,
    deliver,
    notify_customer,
    pick_up,
    prepare,
    refund,
    release_driver,
    tell_restaurant,
)

# -- the order: checked by the gateway, and again whenever a worker decodes it -----------------

# The order id becomes the execution id: Resonate ids may not contain ':' (it names steps), and
# the example keeps '~' for the progress marks it names after the order (`<order id>~<stage>`).
OrderId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
# The order carries references, never a name, a phone number or an address: the Resonate server
# stores the order as the execution's argument, readable by anyone who can read the server.
CustomerId = Annotated[str, StringConstraints(pattern=r"^cus_[A-Za-z0-9]{4,32}$")]
RestaurantId = Annotated[str, StringConstraints(pattern=r"^rst_[A-Za-z0-9]{4,32}$")]
AddressId = Annotated[str, StringConstraints(pattern=r"^adr_[A-Za-z0-9]{4,32}$")]
# Visible text: no control or format characters, no leading or trailing whitespace.
Text = Annotated[
    str,
    StringConstraints(max_length=80, pattern=r"^[^\p{C}\s](?:[^\p{C}]*[^\p{C}\s])?$"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Item(_Strict):
    name: Text
    quantity: Annotated[int, Field(ge=1, le=20)]
    unit_price_cents: Annotated[int, Field(ge=1, le=100_000)]


class Order(_Strict):
    """A food order: what `POST /orders` accepts, and what `deliver_order` delivers."""

    order_id: OrderId
    customer_id: CustomerId
    restaurant_id: RestaurantId
    address_id: AddressId  # the customer's saved delivery address, by reference
    items: Annotated[list[Item], Field(min_length=1, max_length=30)]
    currency: Literal["EUR", "GBP", "USD"]

    @property
    def total_cents(self) -> int:
        return sum(item.quantity * item.unit_price_cents for item in self.items)


# -- what an order comes to --------------------------------------------------------------------


@dataclass(frozen=True)
class Compensation:
    """One compensation of a cancelled order: done (the provider's id), or not, and why."""

    stage: str  # release_driver, refund, tell_restaurant, notify_customer
    receipt: str | None = None
    problem: str | None = None  # the provider refused, or kept failing: a person must see to it


@dataclass(frozen=True)
class Delivery:
    """The workflow's result: delivered, or cancelled with the reason and what was undone."""

    status: Literal["delivered", "cancelled"]
    reason: str | None = None  # cancelled: "no driver", "payment declined", ...
    charge_id: str | None = None
    driver_assignment: str | None = None
    compensations: list[Compensation] = field(default_factory=list)


class OrderFailedError(Exception):
    """A provider refused, or kept failing at, a step after the food left the restaurant (a
    pick-up or drop-off the dispatch API will not confirm, a notification it will not send),
    or failed to take the card at all: the order needs a person."""


# -- the workflow ------------------------------------------------------------------------------

# The SDK takes retry delays in whole seconds: `Linear` waits 1, 2, 3 and 4 s before the retries.
# The food is cooking while a step retries: a provider's restart or a burst of 503s (about 10 s)
# is worth waiting out; one that is down for longer is an outage, and the order is settled
# (cancelled, or handed to a person) rather than left to go cold while the worker waits.
STEP_RETRIES = Linear(delay=1, max_retries=4)
# A compensation gives up much later (2, 4, 8 ... 64 s, then 120 s four times: 606 s, about ten
# minutes): until the refund goes through, the customer has paid for food they will not get. One
# that still fails is reported in the result, and the other compensations still run.
COMPENSATION_RETRIES = Exponential(delay=1, factor=2, max_retries=10, max_delay=120)
# The workflow itself calls no provider: what fails before its first step (an order that does not
# decode, or a bug) fails the same way every time. The SDK default would retry it 30 times with
# doubling delays while holding the lease; the worker registers it with this instead.
WORKFLOW_RETRIES = Never()


async def deliver_order(ctx: Context, order: Order) -> Delivery:
    step = ctx.options(retry_policy=STEP_RETRIES)
    charged = await step.run(charge, order)  # failing after every retry: the order fails
    if charged.refusal is not None:  # the card was declined: nothing to undo but to say so
        return await cancel(ctx, order, "payment declined")
    assert charged.receipt is not None
    try:
        prepared = await step.run(prepare, order)
    except ProviderUnavailableError:  # the ticket may have arrived: tell the restaurant to stop
        return await cancel(
            ctx, order, "restaurant unreachable", charged.receipt, tell_the_restaurant=True
        )
    if prepared.refusal is not None:  # the restaurant will not take it (closed, sold out)
        return await cancel(ctx, order, "restaurant refused", charged.receipt)
    try:
        assigned = await step.run(assign_driver, order)
    except ProviderUnavailableError as unknown:  # failing after every retry: it may have landed
        return await cancel(
            ctx,
            order,
            "dispatch unavailable",
            charged.receipt,
            tell_the_restaurant=True,
            driver_request_key=unknown.idempotency_key,
        )
    if assigned.refusal is not None:  # "no driver available": an answer, not an outage
        return await cancel(ctx, order, "no driver", charged.receipt, tell_the_restaurant=True)
    assert assigned.receipt is not None
    _required(await step.run(pick_up, order, assigned.receipt), "pick_up")
    _required(await step.run(deliver, order, assigned.receipt), "deliver")
    _required(await step.run(complete, order), "complete")
    return Delivery("delivered", charge_id=charged.receipt, driver_assignment=assigned.receipt)


async def cancel(
    ctx: Context,
    order: Order,
    reason: str,
    charge_id: str | None = None,
    tell_the_restaurant: bool = False,
    driver_request_key: str | None = None,
) -> Delivery:
    """Undo what the order did so far, each undo a checkpoint; one that fails does not stop the
    rest. The order ends cancelled, with the reason and what became of each compensation."""
    undoing = ctx.options(retry_policy=COMPENSATION_RETRIES)
    compensations: list[Compensation] = []

    async def attempt(stage: str, outcome: Awaitable[Outcome]) -> None:
        try:
            done = await outcome
        except ProviderUnavailableError as failing:  # after every retry: report it, and go on
            compensations.append(Compensation(stage, problem=str(failing)))
            return
        compensations.append(Compensation(stage, done.receipt, done.refusal))

    # What the customer is told about their money must be true: a refund that was refused or
    # kept failing has not given it back, and a person follows it up (it is in the result).
    money: Money = "not charged"
    if charge_id is not None:
        await attempt("refund", undoing.run(refund, order, charge_id))
        refunded = compensations[-1].problem is None
        money = "refunded" if refunded else "refund pending"
    # The refund goes first: the driver's release goes to the dispatch API that just failed, and
    # may fail through all its retries (ten minutes) while the customer waits for their money.
    if driver_request_key is not None:
        await attempt("release_driver", undoing.run(release_driver, order, driver_request_key))
    if tell_the_restaurant:
        await attempt("tell_restaurant", undoing.run(tell_restaurant, order, reason))
    await attempt("notify_customer", undoing.run(notify_customer, order, reason, money))
    return Delivery("cancelled", reason, charge_id, compensations=compensations)


def _required(outcome: Outcome, stage: str) -> None:
    """A no after the food left the restaurant has no business meaning here: a person must look."""
    if outcome.refusal is not None:
        raise OrderFailedError(f"{stage} refused: {outcome.refusal}")
