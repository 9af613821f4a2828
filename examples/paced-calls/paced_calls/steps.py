"""The leaf of the workflow: one call to a rate-limited third-party API.

The call carries an Idempotency-Key derived from the step's durable id, which is stable across
retries and crashes. If this process dies after the API acted but before the step's result was
checkpointed, the step runs again on another worker, sends the same key, and the API answers with
its original response instead of acting twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from resonate.context import Context


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party API, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


async def call_api(ctx: Context, record: str, position: int, total: int) -> str:
    print(f"call {position}/{total}: syncing {record} ...", flush=True)
    providers = ctx.get_dependency(Providers)
    response = await providers.client.post(
        "/api/call",
        json={"record": record, "position": position},
        headers={"Idempotency-Key": ctx.info.id},
    )
    response.raise_for_status()  # a 5xx or a 429 raises, and the step is retried with backoff
    receipt: str = response.json()["id"]
    return receipt
