"""The steps: each calls a third-party API with an Idempotency-Key from its durable id.

The key is stable across retries and crashes, so a step that runs again (after a crash, or
after a timeout whose request did land) gets the provider's original answer instead of acting
twice. A step tells the answers apart: a refusal (a 4xx other than 408 and 429) would be the
same on every attempt, so it is returned as a value and never retried; a provider that is down,
overloaded or silent (a 5xx, 408, 429, a timeout, a refused connection) may answer the next
attempt, so the step raises and the workflow's retry policy tries again.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party APIs, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Outcome:
    """What the provider did: acted (its receipt) or refused (why)."""

    receipt: str | None = None
    refusal: str | None = None


class ProviderUnavailableError(Exception):
    """The provider did not act now; another attempt may succeed."""


async def call_provider(ctx: Context, what: str, subject: str) -> Outcome:
    print(f"{what} for {subject}", flush=True)
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            "/api/call",
            json={"what": what, "subject": subject},
            headers={"Idempotency-Key": ctx.info.id},
        )
    except httpx.TransportError as exc:  # it may have acted: the key makes a retry safe
        raise ProviderUnavailableError(f"{what}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ProviderUnavailableError(f"{what}: answered {response.status_code}")
    if response.is_client_error:
        return Outcome(refusal=f"{response.status_code} {_reason(response)}")
    return Outcome(receipt=response.json()["id"])


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase
