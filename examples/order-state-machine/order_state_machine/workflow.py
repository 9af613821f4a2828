"""The durable workflow: one order's whole life, created -> confirmed -> shipped -> delivered.

There is no state column anywhere. Where the workflow is in its code *is* the order's state: it
confirms the order, then waits for a ship or cancel event, then for a deliver or cancel event.
Each transition is a checkpointed step with one external effect; each wait is a latent durable
promise (`ctx.promise()`) that the gateway resolves with the event, however long that takes
within the order's deadline. A crash anywhere resumes at the same place: a worker that picks the
order up replays the workflow from the top, gets finished transitions and received events from
the journal, and applies no transition twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError
from resonate.context import Context
from resonate.retry import Exponential, Never

from order_state_machine.steps import (
    State,
    Transition,
    charge,
    confirm,
    notify_cancelled,
    notify_declined,
    notify_delivered,
    publish,
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
# The order names its customer by reference, never by name or email address: the Resonate server
# stores the order as the execution's argument, readable by anyone who can read the server. The
# providers resolve the reference to an address and a card. A name or an email here is refused.
CustomerId = Annotated[str, StringConstraints(pattern=r"^cus_[A-Za-z0-9]{4,32}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Item(_Strict):
    sku: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9-]{0,31}$")]
    quantity: Annotated[int, Field(ge=1, le=100)]
    unit_price_cents: Annotated[int, Field(ge=1, le=1_000_000)]


class Order(_Strict):
    order_id: OrderId
    customer_id: CustomerId
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
EventType = Literal["ship", "deliver", "cancel"]

# -- the status the workflow publishes, and the gateway reads ----------------------------------


class HistoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: State
    at: datetime
    receipt: str | None = None  # the provider's id for the transition's effect
    event: Event | None = None  # the event that caused it
    reason: str | None = None  # why the card was declined


class OrderStatus(BaseModel):
    """The order as the workflow last published it: what happened, and what it waits for."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    seq: int  # 1, 2, 3...: a newer status has a higher one
    history: list[HistoryEntry]  # every transition so far, oldest first
    waiting_on: str | None = None  # the promise to resolve with the next event, if it waits
    accepts: list[EventType] = []  # the events it takes in that wait


def status_id(order_id: str, seq: int) -> str:
    """The id of an order's `seq`th published status. `~` cannot occur in an order id, so no
    order's id is ever another order's status id."""
    return f"{order_id}~status-{seq}"


# -- the workflow ------------------------------------------------------------------------------

# An order's execution must end within this (the gateway starts it with this timeout); one still
# open then is rejected, and shows failed. Every promise under it is capped by it.
ORDER_DEADLINE = timedelta(days=30)

# Only transient provider failures reach a retry (a 4xx comes back as a value, see steps.py): a
# provider that is down, overloaded or slow is tried again after 2, 4, 8, 16, 30 and 30 s. Most
# outages of a payment or email API pass within a minute or two; after that the order fails and
# needs a human (see the README). Each retry sends the same Idempotency-Key, so retrying a charge
# that timed out but went through does not charge twice. Whole seconds: the SDK's policies
# count in seconds.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=6, max_delay=30)
# The workflow itself is never retried: once it has made a durable call the SDK would not retry
# it anyway, and before that the only thing that can fail is decoding its argument, which no
# retry fixes. The SDK's default (30 retries with doubling delays) would hold the order's lease
# for hours, retrying a bug.
WORKFLOW_RETRIES = Never()


class OrderFailedError(Exception):
    """A provider refused an action it should not refuse; the order needs a human."""


async def order_lifecycle(ctx: Context, order: Order) -> State:
    step = ctx.options(retry_policy=STEP_RETRIES)
    log = StatusLog(ctx, order.order_id)
    log.record(await step.run(confirm, order))  # created -> confirmed
    ship_or_cancel = await next_event(log, Ship)
    if isinstance(ship_or_cancel, Cancel):
        cancelled = await step.run(notify_cancelled, order, ship_or_cancel)  # -> cancelled
        return await log.end(cancelled, ship_or_cancel)
    shipped = await step.run(charge, order, ship_or_cancel)  # confirmed -> shipped
    if shipped.state == "declined":  # a business outcome, not an error: no retry, no refund
        declined = await step.run(notify_declined, order, shipped)  # confirmed -> declined
        return await log.end(declined, ship_or_cancel)
    log.record(shipped, ship_or_cancel)
    deliver_or_cancel = await next_event(log, Deliver)
    if isinstance(deliver_or_cancel, Cancel):
        assert shipped.receipt is not None  # a charge that went through has an id
        refunded = await step.run(refund, order, shipped.receipt, deliver_or_cancel)
        return await log.end(refunded, deliver_or_cancel)  # shipped -> refunded
    delivered = await step.run(notify_delivered, order)  # shipped -> delivered
    return await log.end(delivered, deliver_or_cancel)


async def next_event[E: (Ship, Deliver)](log: StatusLog, expected: type[E]) -> E | Cancel:
    """Wait for the next event: `expected`, or a cancel (accepted in every state that waits).

    Each wait is a new latent promise, resolved from outside; the workflow publishes its id
    before it waits. One that carries anything else is ignored, and the order waits on a fresh
    promise: the gateway never sends such an event, but anyone who can reach the Resonate server
    can resolve a promise.
    """
    accepts: list[EventType] = ["ship" if expected is Ship else "deliver", "cancel"]
    while True:
        # The wait lasts as long as the order may: a promise given no timeout gets one day from
        # the SDK, and the order would fail by itself a day after it last moved. (No child
        # outlives its parent, so this ends at the order's own deadline, not 30 days from now.)
        wait = log.ctx.promise(timeout=ORDER_DEADLINE)
        await log.publish(waiting_on=await wait.id(), accepts=accepts)
        try:
            event = EVENT.validate_python(await wait)
        except ValidationError:
            continue
        if isinstance(event, (expected, Cancel)):
            return event


@dataclass
class StatusLog:
    """The order's history, built up as the workflow runs (again on every replay: each entry
    comes from a step's journaled result) and published as a status whenever it changes."""

    ctx: Context
    order_id: str
    history: list[HistoryEntry] = field(default_factory=list)
    published: int = 0

    def record(self, transition: Transition, event: Ship | Deliver | Cancel | None = None) -> None:
        if transition.state == "failed":
            raise OrderFailedError(f"{self.order_id}: {transition.reason}")
        self.history.append(
            HistoryEntry(
                state=transition.state,
                at=transition.at,
                receipt=transition.receipt,
                event=event,
                reason=transition.reason,
            )
        )

    async def publish(
        self, waiting_on: str | None = None, accepts: list[EventType] | None = None
    ) -> None:
        self.published += 1
        status = OrderStatus(
            order_id=self.order_id,
            seq=self.published,
            history=self.history,
            waiting_on=waiting_on,
            accepts=accepts or [],
        )
        step = self.ctx.options(retry_policy=STEP_RETRIES)
        await step.run(publish, status_id(self.order_id, self.published), status)

    async def end(self, transition: Transition, event: Ship | Deliver | Cancel) -> State:
        """Record the final transition, publish it, and return the state the order ended in."""
        self.record(transition, event)
        await self.publish()
        return transition.state
