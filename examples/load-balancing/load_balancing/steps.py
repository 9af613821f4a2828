"""The steps of a job: note it with the sandbox's `api` provider, and do some work in between.

Each note carries the pid of the worker that sends it, so the sandbox's records say which
worker ran what. Its Idempotency-Key is the step's durable id, stable across retries and
crashes: a note is recorded once however often the step runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass

import httpx
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


def work_seconds() -> float:
    """How long a job's work takes (JOB_WORK_SECONDS, 1 s by default): long enough that a worker
    killed mid-run holds jobs in flight. Read as the work starts, like all configuration."""
    return float(os.environ.get("JOB_WORK_SECONDS", "1.0"))


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the sandbox, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


class ProviderUnavailableError(Exception):
    """The provider did not act now; another attempt may succeed."""


async def note_job(ctx: Context, job_number: int, phase: str) -> str:
    """Note a phase of a job; "noted", or why the provider refused (a value, never retried)."""
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            "/api/call",
            json={"job": job_number, "phase": phase, "worker_pid": os.getpid()},
            headers={"Idempotency-Key": ctx.info.id},
        )
    # No answer, or one that could not be decoded: it may have acted; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"note {phase}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ProviderUnavailableError(f"note {phase}: answered {response.status_code}")
    if response.status_code == 409:
        # The key holds a note whose body differs from this one only by `worker_pid`: an
        # earlier attempt of this very step, on a worker that died before it could checkpoint,
        # landed. The note is there, once, naming the worker that sent it; nothing to redo.
        return "noted"
    if response.is_client_error:  # the same answer on every attempt: reported, not retried
        return f"refused: {response.status_code} {_reason(response)}"
    return "noted"


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase


async def crunch(ctx: Context, job_number: int) -> str:
    """The job's work: a stand-in for anything that takes a while (here, hashing and waiting)."""
    await asyncio.sleep(work_seconds())
    return hashlib.sha256(f"job-{job_number}".encode()).hexdigest()[:12]
