"""The executor functions: each calls a third-party API with an Idempotency-Key from its durable id.

The key is stable across retries and crashes, so a step that runs again (after a crash, or
after a timeout whose request did land) gets the provider's original answer instead of acting
twice. A step tells the answers apart: a refusal (a 4xx other than 408 and 429) would be the
same on every attempt, so it is returned as a value and never retried; a provider that is down,
overloaded or silent (a 5xx, 408, 429, a timeout, a refused connection), or whose 2xx body is not
the answer (a proxy's HTML page, a cut-off or garbled body), may answer the next attempt and may
have acted, so the function raises and its registered retry policy tries again, with the same key.
"""

from __future__ import annotations

import os
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


async def thumbnail(ctx: Context, video: str) -> Outcome:
    """Executor function: render the video's thumbnail."""
    return await call_provider(ctx, "thumbnail", video)


async def transcode(ctx: Context, video: str) -> Outcome:
    """Executor function: transcode the video to its streaming rendition."""
    return await call_provider(ctx, "transcode", video)


async def record_audit(ctx: Context, video: str) -> Outcome:
    """Executor function: write the job's audit record (started detached: nobody awaits it)."""
    return await call_provider(ctx, "audit", video)


async def call_provider(ctx: Context, what: str, subject: str) -> Outcome:
    print(f"executor {os.getpid()}: {what} for {subject}", flush=True)
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            "/api/call",
            json={"what": what, "subject": subject},
            headers={"Idempotency-Key": ctx.info.id},
        )
    # No answer, or one that cannot be decoded: it may have acted; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{what}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise ProviderUnavailableError(f"{what}: answered {response.status_code}")
    if response.is_client_error:
        return Outcome(refusal=f"{response.status_code} {_reason(response)}")
    try:
        receipt: str = response.json()["id"]
    # A 2xx without its id (a proxy's page) does not say what the provider did: it may have acted.
    except (ValueError, LookupError, TypeError) as exc:
        unread = f"answered {response.status_code} without a readable 'id'"
        raise ProviderUnavailableError(f"{what}: {unread}") from exc
    return Outcome(receipt=receipt)


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase
