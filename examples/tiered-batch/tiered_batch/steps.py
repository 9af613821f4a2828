"""The leaf step: run one job, which here means one call to the provider's API.

The call carries an Idempotency-Key taken from the step's durable id, which is stable across
retries and crashes: if this process dies after the provider acted but before the step's result
was checkpointed, the step runs again on another worker and the provider answers with its
original response instead of doing the job twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from resonate.context import Context


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the provider API, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Job:
    id: str
    priority: str  # critical | high | normal | low (checked by the workflow before anything runs)
    task: str


async def run_job(ctx: Context, job: Job) -> str:
    print(f"{job.priority:<8} {job.id}: running ...", flush=True)
    providers = ctx.get_dependency(Providers)
    response = await providers.client.post(
        "/api/call",
        json={"job": job.id, "priority": job.priority, "task": job.task},
        headers={"Idempotency-Key": ctx.info.id},
    )
    if response.is_error:
        print(f"{job.priority:<8} {job.id}: provider answered {response.status_code}", flush=True)
    response.raise_for_status()  # raises, and the SDK retries the step with backoff
    receipt: str = response.json()["id"]
    return receipt
