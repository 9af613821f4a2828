"""The durable workflow: send a batch of API calls, at most one per interval.

Between two calls the workflow sleeps durably: the sleep is a promise on the Resonate server whose
deadline is fixed when the sleep starts. Nothing waits in memory, so a worker that dies mid-batch
loses nothing; the next worker replays the finished calls from the journal, waits for the same
deadline, and carries on with the next call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from resonate.context import Context
from resonate.retry import Exponential, RetryPolicy

from paced_calls.steps import CallResult, call_api

# A call the API could not take now (a 5xx, a 429, no answer) is retried on its own, the calls
# before it being journaled: 5 retries, 2 s doubling to 30 s (about 1 minute), which outlasts a
# typical 429 window. `send_batch` makes each wait at least one interval, so at a pace of 30 s or
# slower they take five intervals (5 minutes at one call a minute). A record the API refuses is
# the call's result, never retried.
RETRY = Exponential(delay=1, factor=2, max_retries=5, max_delay=30)


@dataclass(frozen=True)
class AtLeast:
    """A retry policy: `policy`'s delays, but never less than `seconds` before a retry."""

    policy: RetryPolicy
    seconds: int

    def next(self, attempt: int) -> int | None:
        delay = self.policy.next(attempt)
        return None if delay is None else max(delay, self.seconds)


async def send_batch(ctx: Context, records: list[str], interval_ms: int) -> list[CallResult]:
    # A retry is a request the API counts too, so it waits at least one interval after the attempt
    # that failed: RETRY alone waits 2 s first, which breaks any pace slower than that. (Whole
    # seconds, rounded up: the SDK's policies count in them.)
    retried = ctx.options(retry_policy=AtLeast(RETRY, math.ceil(interval_ms / 1000)))
    results: list[CallResult] = []
    for position, record in enumerate(records, start=1):
        if position > 1:
            await ctx.sleep(timedelta(milliseconds=interval_ms))
        result = await retried.run(call_api, record, position, len(records))
        results.append(result)
    return results
