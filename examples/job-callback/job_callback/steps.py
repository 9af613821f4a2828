"""The steps: check the deadline, submit a job to the jobs service, cancel one, and release an
unused callback.

Each call to the jobs service carries an Idempotency-Key from the step's durable id, so a step run
again after a crash gets the service's first answer instead of submitting (or cancelling) a second
time.

A refusal (a 4xx other than 408 and 429) would be the same on every attempt: it is returned as a
value and never retried. A service that is down, overloaded or silent (a 5xx, 408, 429, a timeout,
a refused connection, a 2xx whose body is not its answer) may answer the next attempt: the step
raises, and the workflow's retry policy tries again with the same key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from resonate.context import Context
from resonate.resonate import Resonate
from resonate.types import Value

from job_callback.job import Job

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Services:
    """A worker dependency: the jobs service's HTTP client, and where jobs must call back.

    `resonate_url` is the Resonate server this worker uses (RESONATE_URL): the jobs service
    learns it only from each job's callback, so it settles the promise on the same server.
    """

    jobs: httpx.AsyncClient
    resonate_url: str


@dataclass(frozen=True)
class CallbackServer:
    """A worker dependency: the worker's own Resonate client, to settle a callback no job holds."""

    resonate: Resonate


@dataclass(frozen=True)
class JobState:
    """The jobs service's answer: the job's id and status, or why it refused."""

    job_id: str | None
    status: str  # running | succeeded | failed | cancelled | refused
    refusal: str | None = None


class JobsUnavailableError(Exception):
    """The jobs service did not answer now; another attempt (same key) may."""


async def still_in_time(ctx: Context, start_by: int) -> bool:
    """Whether it is not yet `start_by` (ms since the epoch): may this attempt submit its job?

    A step of its own, before the submission, so the decision is checkpointed once: a replay
    gets it from the journal, and the submission's retries never see the clock. A retry past
    `start_by` that refused would strand a job that an earlier, timed-out POST did start: no
    wait, no cancel, and the job running on.
    """
    return time.time() * 1000 <= start_by


async def submit_job(ctx: Context, job: Job, attempt: int, callback_id: str) -> JobState:
    """Start the job; when it ends, the service settles promise `callback_id` with its outcome."""
    print(f"{job.name}: submitting attempt {attempt} (key {ctx.info.id})", flush=True)
    services = ctx.get_dependency(Services)
    body = {
        "spec": {**job.params, "task": job.name, "attempt": attempt},
        "duration_seconds": job.duration_seconds,
        "callback": {"url": services.resonate_url, "promise_id": callback_id},
        "simulate": job.simulate,
    }
    return await _call(ctx, "/jobs/submit", body)


async def cancel_job(ctx: Context, job_id: str) -> JobState:
    """Stop the job if it still runs, and learn how it ended.

    Cancelling is safe whatever the job did: a running job is cancelled (it will never call
    back); one that already ended is left as it is, and the answer says how it ended.
    """
    print(f"cancelling {job_id} (key {ctx.info.id})", flush=True)
    return await _call(ctx, f"/jobs/{job_id}/cancel", {})


async def release_callback(ctx: Context, callback_id: str, why: str) -> None:
    """Reject the callback promise of a job that was never started: no one else ever will.

    Run again after a crash (or by a worker that stalled while another finished the workflow),
    it finds the promise settled and writes nothing: a settle is not fenced by the task's lease.
    """
    server = ctx.get_dependency(CallbackServer)
    if (await server.resonate.promises.get(callback_id)).state != "pending":
        return
    print(f"releasing callback {callback_id}: {why} (key {ctx.info.id})", flush=True)
    await server.resonate.promises.reject(callback_id, Value(data=JobNotStartedError(why)))


class JobNotStartedError(Exception):
    """Why a callback promise was rejected by the workflow itself: its job never started."""


async def _call(ctx: Context, path: str, body: dict[str, Any]) -> JobState:
    services = ctx.get_dependency(Services)
    try:
        response = await services.jobs.post(
            path, json=body, headers={"Idempotency-Key": ctx.info.id}
        )
    # No answer, or one that could not be decoded: it may have acted; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise JobsUnavailableError(f"{path}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise JobsUnavailableError(f"{path}: answered {response.status_code}")
    try:
        reply = response.json()
    except ValueError:  # not JSON (a proxy's HTML page, a cut-off body): told apart below
        reply = None
    if response.status_code == 409 and isinstance(reply, dict) and "status" in reply:
        # Cancelling a job that already ended: not an error, the answer is how it ended.
        return JobState(reply["id"], reply["status"])
    if response.is_client_error:  # a refusal, even if its body is a page: never retried
        reason = reply.get("error") if isinstance(reply, dict) else None
        return JobState(None, "refused", f"{response.status_code} {reason or response.text[:200]}")
    try:
        return JobState(reply["id"], reply["status"])
    except (LookupError, TypeError) as exc:
        # A 2xx that is not the service's answer says nothing about what it did: not a bug, but
        # a call that may have acted (a job started), asked again under the same key.
        raise JobsUnavailableError(
            f"{path}: answered {response.status_code} without its id and status"
        ) from exc
