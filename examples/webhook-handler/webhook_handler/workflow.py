"""The durable workflow: one execution per payment event, whose id is the event's id.

The gateway starts `handle_payment_event` under the event id, so a re-delivery of the event
attaches to the execution the first delivery started instead of starting another. Inside, each
effect is a checkpointed step: the order book decides (see steps.py), then the warehouse ships or
cancels and the customer is emailed, each call with the step's durable id as its Idempotency-Key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from resonate.context import Context
from resonate.retry import Exponential, Never

from webhook_handler.steps import (
    Applied,
    Cancellation,
    Fulfilment,
    ProviderUnavailableError,
    apply_refund,
    cancel_fulfilment,
    fulfil_order,
    send_refund_notice,
)

# The event id becomes the execution id: Resonate ids may not contain ':' (it names steps).
EventId = Annotated[str, StringConstraints(pattern=r"^evt_[A-Za-z0-9._-]{1,128}$")]
OrderId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
ChargeId = Annotated[str, StringConstraints(pattern=r"^ch_[A-Za-z0-9]{1,64}$")]
# Minor units (cents): a float cannot hold 0.10 exactly. Up to 1,000,000.00.
Amount = Annotated[int, Field(ge=1, le=100_000_000)]
Currency = Annotated[str, StringConstraints(pattern=r"^[a-z]{3}$")]

type HandledType = Literal["payment_succeeded", "charge_refunded"]
HANDLED_TYPES: tuple[HandledType, ...] = ("payment_succeeded", "charge_refunded")


class Charge(BaseModel):
    """The event's object: the charge, and the shop's order it paid for."""

    # A provider adds fields to its events without notice; refusing them would turn every
    # delivery into a failure it retries for days. They are dropped, not passed on.
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    order_id: OrderId
    charge_id: ChargeId
    amount: Amount
    currency: Currency


class PaymentEvent(BaseModel):
    """A payments-provider event this shop acts on, as the gateway verified and parsed it."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    id: EventId
    type: HandledType
    created: Annotated[int, Field(ge=0, le=10**11)]  # unix seconds, when it happened
    data: Charge


type Action = Literal[
    "fulfilled",  # payment: shipped
    "not_shipped",  # payment: the order book said no (refunded first, or shipped already)
    "shipment_voided",  # payment: the refund cancelled the shipment before its call arrived
    "shipment_refused",  # payment: the warehouse said no
    "shipment_unconfirmed",  # payment: the warehouse never answered; it may have shipped
    "refunded",  # refund: the shipment stopped (or none was made) and the customer told
    "cancellation_unconfirmed",  # refund: the warehouse never answered the cancel; customer told
    "refund_already_handled",  # refund: another refund event of this order did it
    "duplicate",  # this event was handled by another execution
]


class EventOutcome(BaseModel):
    event_id: str
    type: HandledType
    order_id: str
    action: Action
    detail: str | None = None  # the order book's decision, the warehouse's reason, ...
    shipment_id: str | None = None
    cancellation: Literal["cancelled", "voided", "refused", "unconfirmed", "none"] | None = None
    fulfilment_key: str | None = None  # refund: the key of the shipment it cancels
    unsent: str | None = None  # refund: why the customer's email may not have been sent


# The warehouse and the email provider are retried on a 5xx, 408, 429, a timeout or a dropped
# connection: 4 more attempts, 2, 4, 8 and 8 s apart (about 22 s), which rides out a restart or a
# burst of 503s. The provider was answered 2xx long ago, so nobody waits on this but the order.
# A refusal (any other 4xx) is returned by the step and never retried.
PROVIDER_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=8)
# The order book is a local SQLite file: it fails only briefly (a lock held past its 30 s busy
# timeout, a full disk being cleared). 5 more attempts, 2, 4, 8, 16 and 16 s apart (about 46 s).
BOOK_RETRIES = Exponential(delay=1, factor=2, max_retries=5, max_delay=16)
# The workflow itself calls nothing: what fails before its first step (an argument that does not
# decode, a bug) fails the same way every time, so it is never retried.
WORKFLOW_RETRIES = Never()


async def handle_payment_event(ctx: Context, event: PaymentEvent) -> EventOutcome:
    charge = event.data
    provider = ctx.options(retry_policy=PROVIDER_RETRIES)
    outcome = EventOutcome(
        event_id=event.id, type=event.type, order_id=charge.order_id, action="duplicate"
    )
    if event.type == "payment_succeeded":
        try:
            shipped: Fulfilment = await provider.run(
                fulfil_order, event.id, charge.order_id, charge.amount, charge.currency
            )
        except ProviderUnavailableError as exc:
            # The warehouse may have shipped: the claim stays in the order book with its key, so
            # a refund still cancels it, and a person can retry the call with the same key.
            return outcome.model_copy(update={"action": "shipment_unconfirmed", "detail": str(exc)})
        action: Action = {
            "fulfilled": "fulfilled",
            "voided": "shipment_voided",
            "refused": "shipment_refused",
            "skipped": "duplicate" if shipped.decision == "duplicate" else "not_shipped",
        }[shipped.status]
        return outcome.model_copy(
            update={
                "action": action,
                "detail": shipped.reason or (None if action == "fulfilled" else shipped.decision),
                "shipment_id": shipped.shipment_id,
            }
        )

    refund: Applied = await ctx.options(retry_policy=BOOK_RETRIES).run(
        apply_refund, event.id, charge.order_id
    )
    if refund.decision == "duplicate":
        return outcome
    if refund.decision == "already_refunded_by_other":
        return outcome.model_copy(update={"action": "refund_already_handled"})
    action, cancellation = "refunded", "none"
    detail: str = refund.decision
    if refund.fulfilment_key is not None:
        try:
            cancelled: Cancellation = await provider.run(
                cancel_fulfilment, charge.order_id, refund.fulfilment_key
            )
            cancellation = cancelled.status
        except ProviderUnavailableError as exc:
            # Raising would end nothing better: the order book has the refund for good, so a
            # re-delivery attaches to this failed execution and another execution of the event
            # is a duplicate; neither cancels. End with the shipment's key, for a person to
            # cancel by; the money is returned all the same, so the customer is still told.
            action, detail, cancellation = "cancellation_unconfirmed", str(exc), "unconfirmed"
    notice = provider.run(send_refund_notice, charge.order_id, charge.amount, charge.currency)
    unsent = await _unsent(notice)
    return outcome.model_copy(
        update={
            "action": action,
            "detail": detail,
            "cancellation": cancellation,
            "fulfilment_key": refund.fulfilment_key,
            "unsent": unsent,
        }
    )


async def _unsent(email: Awaitable[str]) -> str | None:
    """Await the email step: None once it is sent; refused, or out of retries, what went wrong.

    An email is not worth failing the refund's execution for: what came before it (the refund in
    the order book, the shipment's cancel) has landed, and a failed execution would hide that from
    its outcome. Failing would not get the email sent either: a re-delivery of the event attaches
    to the failed execution. It ends as it would have, saying the email may be missing (its last
    attempt may have gone out).
    """
    try:
        sent = await email
    except ProviderUnavailableError as unknown:
        return f"the email may not have been sent: {unknown}"
    if sent.startswith("refused: "):  # a final no (say, no address on file): a person must know
        return f"the email was not sent: {sent}"
    return None


# -- for the crash harness and the tests: one order's events, in an order chosen ---------------


async def deliver_in_order(ctx: Context, types: list[HandledType]) -> list[EventOutcome]:
    """Hand the events of one order to `handle_payment_event`, one after the other, as a provider
    that delivered them in this order would: e.g. a refund before its payment.

    The order is this execution's own, and so are the event ids (`evt_<n>.<this execution>`): run
    again under another id, it is a new order. A type named twice is the same event twice (the
    same id), as a provider's duplicate delivery; here it is a second execution, which the order
    book recognises.
    """
    order_id = f"order.{ctx.info.id}"
    charge_id = "ch_" + hashlib.sha256(ctx.info.id.encode()).hexdigest()[:24]
    charge = Charge(order_id=order_id, charge_id=charge_id, amount=4_200, currency="eur")
    outcomes = []
    for event_type in types:
        event_id = f"evt_{HANDLED_TYPES.index(event_type) + 1}.{ctx.info.id}"
        event = PaymentEvent(id=event_id, type=event_type, created=0, data=charge)
        handled = await ctx.rpc("handle_payment_event", event.model_dump())
        outcomes.append(EventOutcome.model_validate(handled))
    return outcomes
