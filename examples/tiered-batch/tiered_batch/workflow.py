"""The durable workflow: run a batch of jobs tier by tier, at most two at a time within a tier.

Every job is a durable step. A job that fails is retried on its own; once a job's result is
stored, no retry or crash makes it run again: a worker that picks the batch up after a crash
replays it from the top, gets finished jobs from the journal, and carries on where it stopped.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Awaitable
from dataclasses import dataclass, field

from resonate.context import Context
from resonate.retry import Constant

from tiered_batch.steps import Job, JobResult, run_job

TIERS = ("critical", "high", "normal", "low")  # highest first
MAX_IN_FLIGHT = 2

# A job whose provider is down gets 3 more attempts, 1 s apart. Every lower tier waits behind
# it, so it is given up after about 3 s, failing the batch, rather than stalling the rest behind
# a long backoff. (Delays are whole seconds: the SDK's policies take `int`.) A job the provider
# refuses is not retried at all: the refusal is its result.
RETRY = Constant(delay=1, max_retries=3)


@dataclass
class BatchResult:
    """The provider's receipt per job it ran, and its answer per job it refused, in run order."""

    receipts: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def add(self, job_id: str, result: JobResult) -> None:
        if result.receipt is not None:
            self.receipts[job_id] = result.receipt
        else:
            self.refused[job_id] = result.refusal or "refused"


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


async def process_batch(ctx: Context, jobs: list[Job]) -> BatchResult:
    validate(jobs)  # before the first step, so a bad batch runs nothing
    result = BatchResult()
    for tier in TIERS:
        # A window of at most MAX_IN_FLIGHT running jobs: the next job starts when the oldest
        # one finishes. Awaiting the oldest (not whichever finishes first) keeps the order of
        # the ctx.run calls, which numbers the steps, the same on every replay.
        window: deque[tuple[str, Awaitable[JobResult]]] = deque()
        for job in [job for job in jobs if job.priority == tier]:
            if len(window) == MAX_IN_FLIGHT:
                job_id, running = window.popleft()
                result.add(job_id, await running)
            window.append((job.id, ctx.options(retry_policy=RETRY).run(run_job, job)))
        for job_id, running in window:
            result.add(job_id, await running)
    return result
