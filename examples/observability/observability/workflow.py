"""The durable workflow: charge an order, tell the warehouse, email a receipt, text the customer.

Each `ctx.run` is a checkpoint; a replay skips finished steps. The workflow knows nothing about
telemetry beyond `@traced`: the spans and metrics come from the worker's `DurableTelemetry`.
"""

from __future__ import annotations

from collections.abc import Awaitable

from resonate.context import Context
from resonate.retry import Constant

from observability.steps import (
    Order,
    Outcome,
    ProviderUnavailableError,
    charge_card,
    email_receipt,
    notify_warehouse,
    text_customer,
)
from observability.telemetry import traced

# A provider that answers 5xx/408/429 or not at all is asked again 1 s later, up to 5 more
# times: a blip (a restart, a burst of 503s) passes in seconds, and a step that is still failing
# after ~5 s is an outage the caller should hear about rather than wait on. Each retry is an
# event on the step's span and counts in resonate.steps.retried. A refusal is never retried.
STEP_RETRIES = Constant(delay=1, max_retries=5)


@traced
async def place_order(ctx: Context, order: Order) -> dict[str, Outcome]:
    step = ctx.options(retry_policy=STEP_RETRIES)
    # Out of retries, the charge fails the order: it may have gone through, and a person looks
    # up its key (the step's promise id) with the provider before anything is sent.
    charge = await step.run(charge_card, order)
    if charge.refusal is not None:
        return {"charge": charge}  # nothing to pick, receipt or announce for an unpaid order
    warehouse = await _told(step.run(notify_warehouse, order))
    receipt = await _told(step.run(email_receipt, order))
    sms = await _told(step.run(text_customer, order))
    return {"charge": charge, "warehouse": warehouse, "receipt": receipt, "sms": sms}


async def _told(message: Awaitable[Outcome]) -> Outcome:
    """Await a message sent after the charge: its outcome, or, out of retries, `unconfirmed`.

    The card is charged, and that must stay in the order's result: failing the order would lose
    the charge's id and send nothing. So it ends as it would have, the message marked unconfirmed
    (its last call may have gone out). The warehouse's message too, though the order does not
    ship without it: a failed execution would not send it either, and whoever tells the
    warehouse needs the charge. The telemetry makes it loud: the step's span ends in ERROR under
    the order's OK span, and resonate.steps.completed counts it as rejected, by function: the
    count to alert on.
    """
    try:
        return await message
    except ProviderUnavailableError as unknown:
        return Outcome(unconfirmed=f"may not have been sent: {unknown}")
