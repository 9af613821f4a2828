"""The leaves of the workflow: each one calls a third-party API and changes something there.

Each call carries an Idempotency-Key derived from the step's durable id, which is stable across
retries and crashes. If this process dies after the provider acted but before the step's result
was checkpointed, the step runs again on another worker, sends the same key, and the provider
answers with its original response instead of acting twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from resonate.context import Context


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


async def _call(ctx: Context, path: str, body: dict[str, str]) -> str:
    providers = ctx.get_dependency(Providers)
    response = await providers.client.post(
        path, json=body, headers={"Idempotency-Key": ctx.info.id}
    )
    response.raise_for_status()  # a 5xx raises, and the SDK retries the step with backoff
    receipt: str = response.json()["id"]
    return receipt


async def send_email(ctx: Context, to: str, text: str) -> str:
    return await _call(ctx, "/email/send", {"to": to, "text": text})


async def send_sms(ctx: Context, to: str, text: str) -> str:
    return await _call(ctx, "/sms/send", {"to": to, "text": text})
