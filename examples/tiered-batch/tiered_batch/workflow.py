"""The durable workflow: run a batch of jobs tier by tier, at most two at a time within a tier.

Every job is a durable step. A job that fails is retried on its own; once a job's result is
stored, no retry or crash makes it run again: a worker that picks the batch up after a crash
replays it from the top, gets finished jobs from the journal, and carries on where it stopped.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Awaitable

from resonate.context import Context
from resonate.retry import Exponential

from tiered_batch.steps import Job, run_job

TIERS = ("critical", "high", "normal", "low")  # highest first
MAX_IN_FLIGHT = 2

# 5 retries, 0.2 s apart at first and doubling up to 2 s: about 5 s before a job is given up and
# the batch fails. (The SDK annotates delays as whole seconds but sleeps for any number;
# sub-second delays keep demos and tests fast.)
RETRY = Exponential(delay=0.1, factor=2, max_retries=5, max_delay=2)  # type: ignore[arg-type]


class InvalidBatchError(ValueError):
    """The batch cannot be run as given; none of its jobs was started."""


def validate(jobs: list[Job]) -> None:
    problems = []
    if not jobs:
        problems.append("the batch is empty")
    unknown = [f"{job.id!r} has {job.priority!r}" for job in jobs if job.priority not in TIERS]
    if unknown:
        problems.append(f"unknown priority ({'; '.join(unknown)}); known: {', '.join(TIERS)}")
    repeated = [job_id for job_id, count in Counter(job.id for job in jobs).items() if count > 1]
    if repeated:
        problems.append(f"duplicate job id {', '.join(map(repr, repeated))}")
    if problems:
        raise InvalidBatchError("invalid batch: " + "; ".join(problems))


async def process_batch(ctx: Context, jobs: list[Job]) -> dict[str, str]:
    validate(jobs)  # before the first step, so a bad batch runs nothing
    receipts: dict[str, str] = {}
    for tier in TIERS:
        # A window of at most MAX_IN_FLIGHT running jobs: the next job starts when the oldest
        # one finishes. Awaiting the oldest (not whichever finishes first) keeps the order of
        # the ctx.run calls, which numbers the steps, the same on every replay.
        window: deque[tuple[str, Awaitable[str]]] = deque()
        for job in [job for job in jobs if job.priority == tier]:
            if len(window) == MAX_IN_FLIGHT:
                job_id, running = window.popleft()
                receipts[job_id] = await running
            window.append((job.id, ctx.options(retry_policy=RETRY).run(run_job, job)))
        for job_id, running in window:
            receipts[job_id] = await running
    return receipts
