"""The durable workflow: one click buys, and the buyer has a window to change their mind.

The purchase is one execution, keyed by the purchase id. It reserves the stock at once, then
waits for a cancellation: a latent promise whose timeout is the end of the window (30 minutes
by default). The gateway resolves that promise when the buyer cancels; when the window ends the
server times it out by itself, which wakes the workflow. Then the workflow charges the card and
confirms by email, or, if the buyer cancelled, releases the reservation and confirms that.

Nothing lives in the worker's memory during the window: a worker that dies while the buyer
thinks loses nothing, and the server keeps the deadline, stored with the promise when the window
opened. The promise settles once, one way: cancelled in time, or timed out at the deadline (a
late cancel finds it timed out). So every replay takes the same branch, and a cancel after the
deadline is refused while the purchase goes through.

A refusal by a provider is a state, never retried: out of stock ends the purchase before the
window opens; a declined card (402) releases the stock and tells the buyer.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from resonate.context import Context
from resonate.error import ApplicationError
from resonate.retry import Exponential, Never

from checkout_window.steps import (
    ProviderUnavailableError,
    Refused,
    charge,
    notify,
    open_window,
    release_stock,
    reserve_stock,
)

# -- the purchase: checked by the gateway, and again whenever a worker decodes it --------------

# The purchase id becomes the execution id. Resonate ids may not contain ':' (it names steps),
# and '.' is kept out too: the example names a purchase's window record `<purchase id>.window`.
PurchaseId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
# The purchase names its buyer by reference, never by name or email address: the Resonate server
# stores the purchase as the execution's argument, readable by anyone who can read the server.
# The payment and email providers resolve the reference. A name or an email here is refused.
CustomerId = Annotated[str, StringConstraints(pattern=r"^cus_[A-Za-z0-9]{4,32}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Item(_Strict):
    sku: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9][A-Z0-9-]{0,31}$")]
    quantity: Annotated[int, Field(ge=1, le=100)]
    unit_price_cents: Annotated[int, Field(ge=1, le=1_000_000)]


class Purchase(_Strict):
    purchase_id: PurchaseId
    customer_id: CustomerId
    items: Annotated[list[Item], Field(min_length=1, max_length=50)]
    currency: Literal["EUR", "GBP", "USD"]

    @property
    def total_cents(self) -> int:
        return sum(item.quantity * item.unit_price_cents for item in self.items)


# -- what a purchase ends as -----------------------------------------------------------------

type State = Literal["confirmed", "cancelled", "declined", "out-of-stock", "inventory-unavailable"]


@dataclass(frozen=True)
class PurchaseEnded:
    """What a finished purchase returns: also what `GET /purchases/{id}` shows once it ended."""

    state: State
    reservation_id: str | None = None  # the inventory's id for the stock held (and released)
    charge_id: str | None = None  # the payment provider's id, if the card was charged
    reason: str | None = None  # what a provider refused, or why it could not be reached


# -- the workflow ------------------------------------------------------------------------------

# A provider call that fails transiently (5xx, 408, 429, a timeout, a lost connection) is retried
# after 2, 4, 8, 16 and 30 s, then every 30 s: eight retries in about three minutes, long enough
# for a provider's restart or a rate limit to pass. Each retry sends the same Idempotency-Key, so
# a charge that timed out but went through is not made twice. A refusal is never retried: the
# steps return it as a value. Whole seconds: the SDK's policies count in seconds.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=8, max_delay=30)
# Releasing stock is what a cancel promised the buyer, and held stock cannot be sold: it keeps
# trying for about half an hour (up to 5 minutes apart) before the purchase fails for a human.
RELEASE_RETRIES = Exponential(delay=1, factor=2, max_retries=12, max_delay=300)
# The workflow itself is never retried: once it made a durable call the SDK would not retry it
# anyway, and before that the only thing that can fail is decoding its argument, which no retry
# fixes. The SDK's default (30 retries, doubling) would hold the purchase's lease for hours.
WORKFLOW_RETRIES = Never()


async def checkout(ctx: Context, purchase: Purchase, window_seconds: int) -> PurchaseEnded:
    step = ctx.options(retry_policy=STEP_RETRIES)
    releasing = ctx.options(retry_policy=RELEASE_RETRIES)
    try:
        reserved = await step.run(reserve_stock, purchase)
    except ProviderUnavailableError as unknown:
        # Out of retries, and a call that timed out may have reserved: release whatever the
        # reservation's key names (the inventory voids the key if the call never arrived).
        await releasing.run(release_stock, None, unknown.idempotency_key)
        return PurchaseEnded("inventory-unavailable", reason=str(unknown))
    if isinstance(reserved, Refused):
        text = f"We could not reserve your items ({reserved.reason}). Nothing was charged."
        subject = f"Purchase {purchase.purchase_id}: out of stock"
        unsent = await _unsent(step.run(notify, purchase, subject, text))
        return PurchaseEnded("out-of-stock", reason=_reasons(reserved.reason, unsent))

    # The buyer's cancellation, put here by the gateway, with the window's end as its timeout.
    cancellation = ctx.promise(timeout=timedelta(seconds=window_seconds))
    # Tell the gateway where a cancellation goes, under a record id of the example's own.
    await step.run(open_window, ctx.info.id, await cancellation.id())
    try:
        await cancellation  # whatever it holds: only the gateway resolves it, with a cancel
        cancelled = True
    except ApplicationError:  # timed out at the window's end (nothing else rejects it)
        cancelled = False

    if cancelled:
        released = await releasing.run(release_stock, reserved)
        text = "Your purchase was cancelled within its window. Nothing was charged."
        subject = f"Purchase {purchase.purchase_id} cancelled"
        unsent = await _unsent(step.run(notify, purchase, subject, text))
        return PurchaseEnded("cancelled", reserved, reason=_reasons(_refusal(released), unsent))

    # Out of retries here, the purchase fails and the stock stays held: the charge may have
    # gone through, and a person must look at the payment provider's records for its key.
    charged = await step.run(charge, purchase)
    if isinstance(charged, Refused):  # the card was declined (402): a state, not a retry
        released = await releasing.run(release_stock, reserved)
        text = f"Your card was declined ({charged.reason}). The items were released."
        subject = f"Purchase {purchase.purchase_id}: card declined"
        unsent = await _unsent(step.run(notify, purchase, subject, text))
        reason = _reasons(charged.reason, _refusal(released), unsent)
        return PurchaseEnded("declined", reserved, reason=reason)
    total = f"{purchase.total_cents / 100:.2f} {purchase.currency}"
    text = f"Charged {total}. Your items are on their way."
    subject = f"Purchase {purchase.purchase_id} confirmed"
    unsent = await _unsent(step.run(notify, purchase, subject, text))
    return PurchaseEnded("confirmed", reserved, charged, reason=unsent)


async def _unsent(email: Awaitable[str | Refused]) -> str | None:
    """Await an email step: None once it is sent; refused, or out of retries, what went wrong.

    An email is not worth failing the purchase for: what came before it (a charge, a release)
    has landed, and a failed purchase would hide that from its status. The purchase ends as it
    would have, saying the email is missing (refused: say, an address the provider rejects) or
    may be missing (out of retries: its last attempt may have gone out).
    """
    try:
        sent = await email
    except ProviderUnavailableError as unknown:
        return f"the email may not have been sent: {unknown}"
    if isinstance(sent, Refused):  # a final no: the buyer was not told, and a person must know
        return f"the email was not sent: {sent.reason}"
    return None


def _reasons(*reasons: str | None) -> str | None:
    return "; ".join(r for r in reasons if r) or None


def _refusal(outcome: str | Refused) -> str | None:
    """What a provider refused, if it did: a release the inventory refuses (it no longer knows the
    reservation) does not stop the purchase, but it is reported for a person to look at."""
    return outcome.reason if isinstance(outcome, Refused) else None
