"""The durable workflow: start a job elsewhere, suspend until it calls back, retry or cancel.

The workflow creates a latent promise (`ctx.promise`, with a timeout) and hands its id to the
jobs service as the job's callback. Then it suspends: no worker holds anything while the job
runs, for seconds or hours. When the job ends, the jobs service itself settles the promise
through the Resonate server's HTTP API (resolved with the output, or rejected with the reason),
which wakes the workflow on any worker.

The promise settles once. A second callback (services deliver at least once) finds it settled
and changes nothing; a callback after the timeout finds it timed out. So every replay takes the
same branch.

When the promise is rejected or times out, the workflow asks the jobs service, the system of
record, how the job ended, by cancelling it: a job still running is stopped (it timed out and
will never call back), a job that already ended is left alone and the answer says how. A failed
job is submitted once more, as a new job under a new key; a second failure, a timeout or a
refusal is the workflow's result, a value, not an error.

A job the service refused (or that could not be submitted at all) will never call back, so the
workflow rejects that callback promise itself before it returns (or fails): an execution that
ends with a promise still pending would otherwise stay suspended until the promise timed out.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from resonate.context import Context, ResonateFuture
from resonate.error import ApplicationError
from resonate.retry import Exponential, Never

from job_callback.job import Job
from job_callback.steps import (
    JobNotStartedError,
    cancel_job,
    release_callback,
    still_in_time,
    submit_job,
)

# A jobs service that is down or overloaded gets 4 more attempts, 2, 4, 8 and 16 s apart (about
# 30 s, long enough for a restart or a burst of 503s); then the execution fails, naming the step.
# Every attempt sends the same Idempotency-Key, so a submission that timed out but landed is not
# made twice. Whole seconds: the SDK's policies take `int`.
STEP_RETRIES = Exponential(delay=1, factor=2, max_retries=4, max_delay=16)
# The workflow itself is never retried: once it made a durable call the SDK would not anyway,
# and before that only decoding its argument can fail, which no retry fixes.
WORKFLOW_RETRIES = Never()
# A failed job is run once more (a new job, a new key): a lost executor or a spot instance taken
# back is worth a second try, a job that fails twice needs a person.
ATTEMPTS = 2
# Each wait for a callback ends at the execution's deadline at the latest: SDK 0.8.1 caps a
# promise's timeout at its parent's. An execution that reaches its deadline ends there, timed
# out, with no step left to cancel the job, which runs on. So run_job is started with a deadline
# that holds every attempt's wait and the cancel after it, `run_timeout(job)` (a start without
# `timeout=` gets a day); and an attempt whose waits no longer fit before the deadline, with
# CANCEL_MARGIN to spare, is refused, not sent.
CANCEL_MARGIN = timedelta(minutes=5)  # the submission's retries, and the cancel after the last wait
DEADLINE_MARGIN = timedelta(hours=1)  # what run_timeout adds: that, and a while without workers
# Why an attempt started too late is refused: the result's reason, and the released callback's.
TOO_LATE = (
    "not submitted: the execution's deadline is too near to wait for the callback"
    " (start run_job with timeout=run_timeout(job))"
)

type Status = Literal["succeeded", "failed", "timed-out", "refused"]


@dataclass(frozen=True)
class JobEnded:
    """What the workflow returns: how the job ended, every job id it ran as, and why."""

    status: Status
    job_ids: list[str] = field(default_factory=list)
    output: dict[str, Any] | None = None  # none if the job's callback came after the deadline
    reason: str | None = None


def run_timeout(job: Job) -> timedelta:
    """The deadline to start `run_job` with: every attempt's wait for its callback, and a margin."""
    return ATTEMPTS * timedelta(seconds=job.callback_timeout_seconds) + DEADLINE_MARGIN


async def run_job(ctx: Context, job: Job) -> JobEnded:
    step = ctx.options(retry_policy=STEP_RETRIES)
    job_ids: list[str] = []
    failures: list[str] = []
    for attempt in range(1, ATTEMPTS + 1):
        # The job's callback: the jobs service settles it; the server times it out if it doesn't.
        # It exists before the submission, so a job that ends at once finds it there.
        callback = ctx.promise(timeout=timedelta(seconds=job.callback_timeout_seconds))
        callback_id = await callback.id()
        # The latest moment this attempt may start: its wait and the later attempts' still fit.
        waits = (ATTEMPTS - attempt + 1) * timedelta(seconds=job.callback_timeout_seconds)
        start_by = ctx.info.timeout_at - (waits + CANCEL_MARGIN) // timedelta(milliseconds=1)
        # Decided in a step of its own: a retry of the submission (whose POST may have started
        # the job) sends again under its key however late it is, and never strands a job.
        if not await step.run(still_in_time, start_by):
            await release(ctx, callback, callback_id, f"refused: {TOO_LATE}")
            return JobEnded("refused", job_ids, reason=TOO_LATE)
        try:
            submitted = await step.run(submit_job, job, attempt, callback_id)
        except Exception as unavailable:  # out of retries: the execution fails, naming the step
            # (if the submission landed after all, its job's callback finds the promise settled)
            await release(ctx, callback, callback_id, f"not submitted: {unavailable}")
            raise
        if submitted.job_id is None:  # refused (a bad spec, say): the same on every attempt
            await release(ctx, callback, callback_id, f"refused: {submitted.refusal}")
            return JobEnded("refused", job_ids, reason=submitted.refusal)
        job_ids.append(submitted.job_id)
        try:
            result = await callback
            return JobEnded("succeeded", job_ids, output=result["output"])
        except ApplicationError as rejected:  # rejected by the job, or timed out by the server
            reason = str(rejected)
        ended = await step.run(cancel_job, submitted.job_id)
        if ended.status == "cancelled":  # still running at the deadline: it never called back
            return JobEnded(
                "timed-out",
                job_ids,
                reason=f"no callback from {submitted.job_id} within"
                f" {job.callback_timeout_seconds}s; the job was cancelled",
            )
        if ended.status == "succeeded":  # it ended in time, its callback lost the race
            # Its output came in that callback, which the server refused (the promise had timed
            # out), and the jobs service's API does not give it: the result says it is missing.
            return JobEnded(
                "succeeded",
                job_ids,
                reason="its callback came after the deadline, and its output with it",
            )
        failures.append(reason)
    return JobEnded("failed", job_ids, reason=f"failed {ATTEMPTS} times: " + "; ".join(failures))


async def release(ctx: Context, callback: ResonateFuture[Any], callback_id: str, why: str) -> None:
    """Settle, then await, the callback of a job that never started, so it is pending no more.

    SDK 0.8.1 treats an execution that ends while a promise it created is still pending as
    suspended: it would finish only when that promise timed out, days later. Rejecting it from a
    step (no job will) and awaiting it costs one round trip, and the execution ends at once.
    """
    await ctx.options(retry_policy=STEP_RETRIES).run(release_callback, callback_id, why)
    # Rejected just now by the step above: its error comes back as itself, or as an
    # ApplicationError where it cannot be unpickled.
    with suppress(JobNotStartedError, ApplicationError):
        await callback
