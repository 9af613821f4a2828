"""One subscription renewal, in two versions that run side by side.

Version 1 sends a renewal notice, sleeps until the renewal falls due, charges the card and emails
a receipt. Version 2 adds a fraud check before the charge. Both are registered under the one name
`renewal`, version 1 and version 2: a renewal records the version it started on, and every
replay, on any worker, runs that version's body, however long it slept in between. So a body,
once it has executions in flight, is never edited: a change is a new version (see the README for
what an edit in place does), and the old one is removed only once no renewal runs on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from resonate.context import Context
from resonate.retry import Exponential, Never

from versioning.steps import (
    Subscription,
    charge_card,
    check_fraud,
    mark_version,
    send_email,
    unmark_version,
)

NAME = "renewal"
# The version new renewals start on. A by-name start is not "the latest": the SDK dispatches
# version 1 unless told otherwise, so starters pass this explicitly.
CURRENT_VERSION = 2

# Payment, fraud and email providers that are down, overloaded or slow are tried again after 2,
# 4, 8, 16, 30 and 30 s: most outages of such an API pass within a minute or two; after that the
# renewal fails, naming the step, and needs a human. Each retry sends the same Idempotency-Key,
# so a charge that timed out but went through is not taken twice. Whole seconds: the SDK's
# policies count in seconds.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=6, max_delay=30)
# The workflow itself is never retried: once it has made a durable call the SDK would not retry
# it anyway, and before that the only thing that can fail is decoding its argument, which no
# retry fixes. The SDK's default (30 retries, doubling) would hold the lease for hours.
WORKFLOW_RETRIES = Never()


@dataclass(frozen=True)
class Renewal:
    version: int  # the body that ran it
    outcome: Literal["renewed", "declined", "held"]
    charge: str | None = None  # the payment provider's charge id
    reason: str | None = None  # why it was declined or held


async def renewal_v1(ctx: Context, subscription: Subscription) -> Renewal:
    step = ctx.options(retry_policy=STEP_RETRIES)
    renewal_id = ctx.info.id
    await step.run(mark_version, renewal_id, 1, ctx.info.timeout_at)
    await step.run(send_email, subscription, "renewal-notice")
    await ctx.sleep(timedelta(seconds=subscription.renews_in_seconds))
    charged = await step.run(charge_card, subscription)
    if charged.refusal is not None:  # a business outcome, not an error: no retry
        await step.run(send_email, subscription, "card-declined")
        await step.run(unmark_version, renewal_id)
        return Renewal(1, "declined", reason=charged.refusal)
    await step.run(send_email, subscription, "receipt")
    await step.run(unmark_version, renewal_id)
    return Renewal(1, "renewed", charge=charged.receipt)


async def renewal_v2(ctx: Context, subscription: Subscription) -> Renewal:
    step = ctx.options(retry_policy=STEP_RETRIES)
    renewal_id = ctx.info.id
    await step.run(mark_version, renewal_id, 2, ctx.info.timeout_at)
    await step.run(send_email, subscription, "renewal-notice")
    await ctx.sleep(timedelta(seconds=subscription.renews_in_seconds))
    cleared = await step.run(check_fraud, subscription)  # new in version 2
    if cleared.refusal is not None:  # the fraud service's hold: no charge, the customer is told
        await step.run(send_email, subscription, "renewal-on-hold")
        await step.run(unmark_version, renewal_id)
        return Renewal(2, "held", reason=cleared.refusal)
    charged = await step.run(charge_card, subscription)
    if charged.refusal is not None:
        await step.run(send_email, subscription, "card-declined")
        await step.run(unmark_version, renewal_id)
        return Renewal(2, "declined", reason=charged.refusal)
    await step.run(send_email, subscription, "receipt")
    await step.run(unmark_version, renewal_id)
    return Renewal(2, "renewed", charge=charged.receipt)


# Every version this code base still has: a worker registers the ones its deploy runs.
VERSIONS = {1: renewal_v1, 2: renewal_v2}
