"""The durable workflow. Each `ctx.run` is a checkpoint; a replay skips finished steps."""

from __future__ import annotations

from resonate.context import Context
from resonate.retry import Exponential

from summarize_approve.steps import Outcome, call_provider

# TODO choose these numbers for your provider, and say why here. As scaffolded: a provider that
# is down gets 4 more attempts, 2, 4, 8 and 16 s apart (about 30 s, enough to ride out a restart
# or a burst of 503s/429s); after that the execution fails, naming the step. Delays are whole
# seconds: the SDK's policies take `int`. A refusal is never retried: the step returns it.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=16)


async def run(ctx: Context, subject: str) -> dict[str, Outcome]:
    step = ctx.options(retry_policy=STEP_RETRIES)
    first = await step.run(call_provider, "first step", subject)
    second = await step.run(call_provider, "second step", subject)
    return {"first": first, "second": second}
