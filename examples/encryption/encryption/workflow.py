"""The durable workflow: onboard a customer. Each `ctx.run` is a checkpoint; a replay skips
finished steps. Nothing here knows about encryption: the SDK seals every value it stores with
the worker's encryptor (see worker.py and crypto.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from resonate.context import Context
from resonate.retry import Exponential

from encryption.steps import Customer, send_welcome_email, verify_identity

# A provider that is down gets 4 more attempts, 2, 4, 8 and 16 s apart (about 30 s, enough to
# ride out a provider's restart or a burst of 503s/429s); after that the execution fails, naming
# the step. Delays are whole seconds: the SDK's policies take `int`. A refusal is never retried:
# the step returns it.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=16)


class InvalidCustomerError(ValueError):
    """The customer record cannot be onboarded as it is."""


@dataclass(frozen=True)
class Onboarding:
    status: Literal["onboarded", "refused"]
    customer: Customer
    verification: str | None = None  # the identity provider's receipt
    welcome_email: str | None = None  # the email provider's message id
    reason: str | None = None  # why not, when refused


async def onboard(ctx: Context, customer: Customer, welcome_delay_seconds: int) -> Onboarding:
    if "@" not in customer.email.strip("@"):
        # Quoting the value, as error messages so often do: an error is personal data too, and
        # the encryptor seals it like a result.
        raise InvalidCustomerError(f"email: {customer.email!r} is not an email address")
    step = ctx.options(retry_policy=STEP_RETRIES)
    verified = await step.run(verify_identity, customer)
    if verified.receipt is None:
        return Onboarding("refused", customer, reason=f"identity not verified: {verified.refusal}")
    # The welcome email goes out a while after sign-up (an hour in production). Meanwhile the
    # execution is suspended on the server, its arguments and results sealed there.
    await ctx.sleep(timedelta(seconds=welcome_delay_seconds))
    welcomed = await step.run(send_welcome_email, customer)
    return Onboarding(
        "onboarded",
        customer,
        verification=verified.receipt,
        welcome_email=welcomed.receipt,
        reason=None if welcomed.receipt else f"welcome email refused: {welcomed.refusal}",
    )
