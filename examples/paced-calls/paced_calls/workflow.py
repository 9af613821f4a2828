"""The durable workflow: send a batch of API calls, at most one per interval.

Between two calls the workflow sleeps durably: the sleep is a promise on the Resonate server whose
deadline is fixed when the sleep starts. Nothing waits in memory, so a worker that dies mid-batch
loses nothing; the next worker replays the finished calls from the journal, waits for the same
deadline, and carries on with the next call.
"""

from __future__ import annotations

from datetime import timedelta

from resonate.context import Context
from resonate.retry import Exponential

from paced_calls.steps import call_api

# A failing call is retried on its own (the calls before it are already journaled); a retry only
# ever lengthens the gap before the next call, so it cannot break the rate.
RETRY = Exponential(delay=1, factor=2, max_retries=5, max_delay=30)


async def send_batch(ctx: Context, records: list[str], interval_ms: int) -> list[str]:
    receipts: list[str] = []
    for position, record in enumerate(records, start=1):
        if position > 1:
            await ctx.sleep(timedelta(milliseconds=interval_ms))
        receipt = await ctx.options(retry_policy=RETRY).run(
            call_api, record, position, len(records)
        )
        receipts.append(receipt)
    return receipts
