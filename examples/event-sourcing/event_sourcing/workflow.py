"""The durable workflow: project a stream of account events, one checkpoint per event.

It is the pure `fold` of event_sourcing/account.py with each `apply` made a durable step. After
a crash at event k the workflow replays from the top: the account after events 1 to k-1 comes
back from the journal, those events are not applied (nor published) again, and work resumes at
event k.
"""

from __future__ import annotations

from resonate.context import Context
from resonate.retry import Exponential

from event_sourcing.account import Event
from event_sourcing.steps import Projection, apply_event

# Only the publish call can fail for a while (the statement service is down); applying is pure.
# The stream cannot skip an event, so the step waits out a restart of the service: 6 retries,
# 2 s doubling to 30 s (about 90 s in all). Longer is an outage: the execution fails, naming
# the event. A rejected event, or a record the service refuses, is a value, never retried.
RETRY = Exponential(delay=1, factor=2, max_retries=6, max_delay=30)


async def project_account(ctx: Context, events: list[Event]) -> Projection:
    projection = Projection()
    for sequence, event in enumerate(events, start=1):
        projection = await ctx.options(retry_policy=RETRY).run(
            apply_event, projection, sequence, event
        )
    return projection
