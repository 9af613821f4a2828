"""The durable workflow: project a stream of account events, one checkpoint per event.

It is the pure `fold` of event_sourcing/account.py with each `apply` made a durable step. After
a crash at event k the workflow replays from the top: the account after events 1 to k-1 comes
back from the journal, those events are not applied (nor published) again, and work resumes at
event k.
"""

from __future__ import annotations

from resonate.context import Context
from resonate.retry import Exponential

from event_sourcing.account import Account, Event
from event_sourcing.steps import apply_event

# Only the publish call can fail (the statement service is down); applying is pure. A rejected
# event is a value in the projection, not an error, so it is never retried.
RETRY = Exponential(delay=1, factor=2, max_retries=5, max_delay=30)


async def project_account(ctx: Context, events: list[Event]) -> Account:
    account = Account()
    for sequence, event in enumerate(events, start=1):
        account = await ctx.options(retry_policy=RETRY).run(apply_event, account, sequence, event)
    return account
