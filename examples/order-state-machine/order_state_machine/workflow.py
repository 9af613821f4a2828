"""The durable workflow: one order's whole life, created -> confirmed -> shipped -> delivered.

There is no state column anywhere. Where the workflow is in its code *is* the order's state: it
confirms the order, then waits for a ship or cancel event, then for a deliver or cancel event.
Each transition is a checkpointed step with one external effect; each wait is a latent durable
promise (`ctx.promise()`) that the gateway resolves with the event, however long that takes. A
crash anywhere resumes at the same place: a worker that picks the order up replays the workflow
from the top, gets finished transitions and received events from the journal, and applies no
transition twice.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from resonate.context import Context
from resonate.retry import Exponential

from order_state_machine.steps import (
    Transition,
    charge,
    confirm,
    notify_cancelled,
    notify_delivered,
    refund,
)

# -- the order, and the events that move it: checked by the gateway, again by the workflow ------

# Visible text: no control or format characters, no leading or trailing whitespace.
Text = Annotated[
    str,
    StringConstraints(max_length=100, pattern=r"^[^\p{C}\s](?:[^\p{C}]*[^\p{C}\s])?$"),
]
# The order id becomes the execution id, and Resonate ids may not contain ':' (it names steps).
OrderId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Email = Annotated[
    str, StringConstraints(max_length=254, pattern=r"^[^@\s\p{C}]+@[^@\s\p{C}]+\.[^@\s\p{C}]+$")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Customer(_Strict):
    name: Text
    email: Email


class Item(_Strict):
    sku: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9-]{0,31}$")]
    quantity: Annotated[int, Field(ge=1, le=100)]
    unit_price_cents: Annotated[int, Field(ge=1, le=1_000_000)]


class Order(_Strict):
    order_id: OrderId
    customer: Customer
    items: Annotated[list[Item], Field(min_length=1, max_length=50)]
    currency: Literal["EUR", "GBP", "USD"]

    @property
    def total_cents(self) -> int:
        return sum(item.quantity * item.unit_price_cents for item in self.items)


class Ship(_Strict):
    type: Literal["ship"] = "ship"
    carrier: Text
    tracking_number: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{4,40}$")]
    # Set by the gateway, unique per request: how it tells which of two racing events won.
    event_id: str | None = None


class Deliver(_Strict):
    type: Literal["deliver"] = "deliver"
    event_id: str | None = None


class Cancel(_Strict):
    type: Literal["cancel"] = "cancel"
    reason: Text
    event_id: str | None = None


Event = Annotated[Ship | Deliver | Cancel, Field(discriminator="type")]
EVENT: TypeAdapter[Ship | Deliver | Cancel] = TypeAdapter(Event)

# The two states the workflow waits in, and the events each accepts (see `order_lifecycle`).
ACCEPTS: dict[str, tuple[str, ...]] = {
    "confirmed": ("ship", "cancel"),
    "shipped": ("deliver", "cancel"),
}

# -- the workflow ------------------------------------------------------------------------------

# A provider that is down is retried after 0.2, 0.4, 0.8, ... s, for about a minute; then the
# order fails and needs a human (see the README).
STEP_RETRIES = Exponential(delay=0.1, factor=2, max_retries=10, max_delay=10)  # type: ignore[arg-type]


async def order_lifecycle(ctx: Context, order: Order) -> Transition:
    step = ctx.options(retry_policy=STEP_RETRIES)
    await step.run(confirm, order)  # created -> confirmed
    ship_or_cancel = await next_event(ctx, Ship)
    if isinstance(ship_or_cancel, Cancel):
        return await step.run(notify_cancelled, order, ship_or_cancel)  # confirmed -> cancelled
    shipped = await step.run(charge, order, ship_or_cancel)  # confirmed -> shipped
    deliver_or_cancel = await next_event(ctx, Deliver)
    if isinstance(deliver_or_cancel, Cancel):
        return await step.run(refund, order, shipped.receipt, deliver_or_cancel)  # -> refunded
    return await step.run(notify_delivered, order)  # shipped -> delivered


async def next_event[E: (Ship, Deliver)](ctx: Context, expected: type[E]) -> E | Cancel:
    """Wait for the next event: `expected`, or a cancel (accepted in every state that waits).

    Each wait is a new latent promise, resolved from outside. One that carries anything else is
    ignored, and the order waits on a fresh promise: the gateway never sends such an event, but
    anyone who can reach the Resonate server can resolve a promise.
    """
    while True:
        try:
            event = EVENT.validate_python(await ctx.promise())
        except ValidationError:
            continue
        if isinstance(event, (expected, Cancel)):
            return event
