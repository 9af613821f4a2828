"""The durable workflows: a coordinator that hands one resource to one waiter at a time.

No lock table, no lease: the coordinator's loop *is* the lock. Each turn it opens an inbox (a
latent promise), waits for the claim of the waiter whose turn it is, grants it the resource by
resolving that waiter's grant promise, and waits for the release promise, at most
`hold_limit_seconds`: a holder that died (or hangs) holds the resource no longer than that.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from resonate.context import Context
from resonate.error import ApplicationError
from resonate.retry import Exponential

from mutex.steps import enqueue, generate_report, grant, open_turn, release

# The steps talk to the Resonate server and to a local SQLite file; both fail only briefly (a
# server restart, a busy database). 4 more attempts, 2, 4, 8 and 16 s apart (about 30 s) ride
# that out; after that the workflow fails, naming the step. Whole seconds: the SDK takes `int`.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=16)

# How long a waiter waits for its turn before giving up, and a coordinator for the next claim.
WAIT_LIMIT = timedelta(hours=1)
IDLE_LIMIT = timedelta(days=1)


async def coordinator(ctx: Context, mutex: str, uses: int, hold_limit_seconds: float) -> list[str]:
    """Serve `uses` turns of `mutex`, in the order the waiters claimed them."""
    step = ctx.options(retry_policy=STEP_RETRIES)
    served: list[str] = []
    for turn in range(1, uses + 1):
        inbox = ctx.promise(timeout=IDLE_LIMIT)
        await step.run(open_turn, mutex, turn, await inbox.id())
        claim: dict[str, Any] = await inbox
        holder = str(claim["holder"])
        returned = ctx.promise(timeout=timedelta(seconds=hold_limit_seconds))
        release_id = await returned.id()
        if not await step.run(grant, str(claim["grant_id"]), turn, release_id):
            served.append(f"turn {turn}: {holder} had stopped waiting")
            continue
        try:
            await returned
            served.append(f"turn {turn}: {holder} released it")
        except ApplicationError:  # the hold limit passed: presumed dead, fenced by its turn
            served.append(f"turn {turn}: {holder} held it too long; taken back")
    return served


async def use_resource(ctx: Context, mutex: str, holder: str, work_seconds: float) -> str:
    """Wait for the turn, generate the report, release. Returns how the use ended."""
    step = ctx.options(retry_policy=STEP_RETRIES)
    granted_to_me = ctx.promise(timeout=WAIT_LIMIT)
    await step.run(enqueue, mutex, holder, await granted_to_me.id())
    try:
        granted: dict[str, Any] = await granted_to_me
    except ApplicationError:
        return f"{holder}: gave up waiting"
    turn = int(granted["turn"])
    status = await step.run(generate_report, mutex, holder, turn, work_seconds)
    await step.run(release, str(granted["release_id"]))
    return f"{holder}: {status}"


async def contend(
    ctx: Context, holders: list[str], hold_limit_seconds: float = 600, work_seconds: float = 0.2
) -> dict[str, Any]:
    """One coordinator and one waiter per holder, all at once, on a mutex of this run."""
    if not holders or len(set(holders)) != len(holders):
        raise ValueError("holders: give at least one name, each once")
    if hold_limit_seconds <= 0 or work_seconds < 0:
        raise ValueError("hold_limit_seconds must be > 0 and work_seconds >= 0")
    mutex = f"reports.{ctx.info.id}"
    coordinating = ctx.rpc("coordinator", mutex, len(holders), hold_limit_seconds)
    using = [ctx.rpc("use_resource", mutex, holder, work_seconds) for holder in holders]
    uses = sorted([str(await use) for use in using])
    turns: list[str] = await coordinating
    return {"mutex": mutex, "uses": uses, "turns": len(turns)}
