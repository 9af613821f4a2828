"""The leaf step: run one job, which here means one call to the provider's API.

The call carries an Idempotency-Key taken from the step's durable id, which is stable across
retries and crashes: if this process dies after the provider acted but before the step's result
was checkpointed, the step runs again on another worker and the provider answers with its
original response instead of doing the job twice.

The step tells the provider's answers apart. A provider that is down, overloaded or silent (a
5xx, a 408 or 429, a timeout, a refused connection, a 2xx whose body is not its answer) may do
the job on the next attempt: the step raises, and the workflow's retry policy tries again, with
the same key. A provider that refuses the job (any other 4xx) would refuse it again: the refusal
is the job's result, never retried.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the provider API, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Job:
    id: str
    priority: str  # critical | high | normal | low (checked by the workflow before anything runs)
    task: str


@dataclass(frozen=True)
class JobResult:
    """What the provider did with one job: ran it (its receipt) or refused it (why)."""

    receipt: str | None = None
    refusal: str | None = None


class ProviderUnavailableError(Exception):
    """The provider did not take the job now; another attempt may succeed."""


async def run_job(ctx: Context, job: Job) -> JobResult:
    print(f"{job.priority:<8} {job.id}: running ...", flush=True)
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            "/api/call",
            json={"job": job.id, "priority": job.priority, "task": job.task},
            headers={"Idempotency-Key": ctx.info.id},
        )
    # Timed out, reset, or an answer that could not be decoded: it may have run the job, and the
    # key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{job.id}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        print(f"{job.priority:<8} {job.id}: provider answered {response.status_code}", flush=True)
        raise ProviderUnavailableError(f"{job.id}: answered {response.status_code}")
    if response.is_client_error:
        print(f"{job.priority:<8} {job.id}: refused ({response.status_code})", flush=True)
        return JobResult(refusal=f"{response.status_code} {_reason(response)}")
    try:
        return JobResult(receipt=str(response.json()["id"]))
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx without its id (a proxy's HTML page, a cut-off body) says nothing of what the
        # provider did: like a timeout, it may have run the job; the retry's key gets the answer.
        raise ProviderUnavailableError(
            f"{job.id}: HTTP {response.status_code} without a readable 'id'"
        ) from exc


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase
