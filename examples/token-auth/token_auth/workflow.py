"""The durable workflow: an approved payout, paid once, and finance told what happened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from resonate.context import Context
from resonate.retry import Exponential

from token_auth.steps import Payout, ProviderUnavailableError, Refused, notify_finance, send_payout

# A provider that is down (a deploy, a burst of 503s or 429s) gets 4 more attempts, 2, 4, 8 and
# 16 s apart: about 30 s, enough to ride out a restart. Longer is not better for a payout: finance
# wants to hear "outcome unknown" within a minute, not after an hour of silent retries. Delays are
# whole seconds: the SDK's policies take `int`.
RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=16)

Status = Literal["paid", "refused", "unknown"]


@dataclass(frozen=True)
class PayoutResult:
    status: Status
    payout_id: str | None = None  # paid: the provider's id
    reason: str | None = None  # refused: the provider's answer; unknown: what failed
    # unknown: the payout call's Idempotency-Key. It kept failing or timing out, so the provider
    # may have paid; finance asks the provider about this key before paying by hand.
    payout_key: str | None = None
    notification: str | None = None  # the message finance got (None if that failed too)


async def payout(
    ctx: Context, payee: str, amount_cents: int, currency: str, invoice: str
) -> PayoutResult:
    if amount_cents <= 0:  # before any durable call: the execution fails, nothing is paid
        raise ValueError(f"amount_cents must be a positive number of cents, got {amount_cents}")
    steps = ctx.options(retry_policy=RETRIES)
    request = Payout(payee, amount_cents, currency, invoice)
    amount = f"{amount_cents / 100:.2f} {currency} to {payee} for {invoice}"
    result: PayoutResult
    try:
        paid = await steps.run(send_payout, request)
    except ProviderUnavailableError as exc:  # out of retries: it may have paid all the same
        result = PayoutResult("unknown", reason=exc.message, payout_key=exc.idempotency_key)
        text = f"payout of {amount}: outcome unknown, ask the provider about {exc.idempotency_key}"
    else:
        if isinstance(paid, Refused):
            result = PayoutResult("refused", reason=paid.reason)
            text = f"payout of {amount} refused: {paid.reason}"
        else:
            result = PayoutResult("paid", payout_id=paid)
            text = f"paid {amount} ({paid})"
    try:
        sent = await steps.run(notify_finance, text)
    except ProviderUnavailableError:  # the payout stands; the result still says what happened
        return result
    return PayoutResult(
        result.status,
        result.payout_id,
        result.reason,
        result.payout_key,
        None if isinstance(sent, Refused) else sent,
    )
