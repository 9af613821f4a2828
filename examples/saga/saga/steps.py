"""The steps: reserve or cancel with the flight, hotel and car providers (third-party APIs).

Each call carries an Idempotency-Key derived from the step's durable id, which is stable across
retries and crashes. If this process dies after a provider booked but before the step's result was
checkpointed, the step runs again on another worker, sends the same key, and the provider answers
with the original booking instead of booking twice.

A provider can fail in two ways, and the steps keep them apart:
  transient  5xx, 408, 429, a timeout, a dropped connection: it may pass. The step raises
             `ProviderUnavailableError`, and the SDK runs it again after a short backoff (the
             retry policy the workflow passes with the call).
  permanent  any other 4xx, e.g. "no availability": asking again cannot help. `reserve` returns a
             `Refused` value instead of raising, because SDK 0.8.1 retries every exception a step
             raises (it has no non-retryable error), and a value is also checkpointed: after a
             crash, the workflow sees the same refusal without asking the provider again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from resonate.context import Context


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Refused:
    """A provider's final no to a reservation."""

    provider: str
    reason: str


class ProviderUnavailableError(Exception):
    """A provider call failed in a way that may pass; the step is retried."""


async def reserve(ctx: Context, provider: str, request: dict[str, Any]) -> str | Refused:
    """Book with one provider: its reservation id, or its refusal."""
    print(f"reserving {provider} (step {ctx.info.id})", flush=True)
    response = await _post(ctx, f"/{provider}/reserve", request)
    if response.is_error:
        refusal = Refused(provider, _describe(response))
        print(f"{provider} refused: {refusal.reason}", flush=True)
        return refusal
    reservation_id: str = response.json()["id"]
    return reservation_id


async def cancel(ctx: Context, provider: str, reservation_id: str) -> None:
    """Undo one reservation. Cancelling an already cancelled reservation succeeds."""
    print(f"cancelling {provider} {reservation_id} (step {ctx.info.id})", flush=True)
    response = await _post(ctx, f"/{provider}/cancel", {"reservation_id": reservation_id})
    if response.is_error:
        # Not a business outcome: a provider that will not cancel its own reservation needs a
        # human. Raising retries it (harmlessly) and then fails the workflow with this message.
        raise RuntimeError(f"{provider} refused to cancel {reservation_id}: {_describe(response)}")


async def _post(ctx: Context, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST with the step's idempotency key; a transient failure raises, to be retried."""
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            path, json=body, headers={"Idempotency-Key": ctx.info.id}
        )
    except httpx.TransportError as exc:  # timed out, refused, reset: the call may have landed
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in (408, 429):
        print(f"{path} answered {response.status_code}; the step will be retried", flush=True)
        raise ProviderUnavailableError(f"{path}: {_describe(response)}")
    return response


def _describe(response: httpx.Response) -> str:
    try:
        detail = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        detail = response.text[:200]
    return f"HTTP {response.status_code} {response.reason_phrase}: {detail}"
