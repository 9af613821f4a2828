"""The step: one push notification, sent through a push service.

The request carries an Idempotency-Key derived from the step's durable id, which is stable across
retries and crashes. If this process dies after the push service acted but before the step's
result was checkpointed, the step runs again on another worker, sends the same key, and the
service answers with its original response instead of notifying the subscriber twice.

A service that is down, overloaded or silent (a 5xx, a 408, a 429, a timeout, a refused
connection) may take the notification on the next attempt: the step raises, and the retry policy
tries again with the same key. So does a 2xx whose body is not the answer (a proxy's HTML page, a
cut-off or garbled body): the service may have sent the notification, and the key tells. A
refusal (any other 4xx: an unknown device, a malformed message) would be the same on every
attempt: it is the notification's result, never retried.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the push service, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Notification:
    """One notification: what it said, and what the push service did with it."""

    position: int
    message: str
    receipt: str | None = None
    refusal: str | None = None


class PushUnavailableError(Exception):
    """The push service did not take the notification now; another attempt may succeed."""


def format_duration(seconds: int) -> str:
    """`3h`, `1h30m`, `45s`: the largest units that add up to exactly `seconds`."""
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


async def send_push(
    ctx: Context, subscriber: str, position: int, count: int, remaining_seconds: int
) -> Notification:
    message = f"{format_duration(remaining_seconds)} to go" if remaining_seconds else "time's up"
    print(f"[{position}/{count}] push to {subscriber}: {message}", flush=True)
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            "/push/send",
            json={"to": subscriber, "position": position, "of": count, "message": message},
            headers={"Idempotency-Key": ctx.info.id},
        )
    # No answer, or one that cannot be decoded: it may have acted; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise PushUnavailableError(f"notification {position}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        print(f"[{position}/{count}] the push service answered {response.status_code}", flush=True)
        raise PushUnavailableError(f"notification {position}: answered {response.status_code}")
    if response.is_client_error:
        print(f"[{position}/{count}] refused ({response.status_code})", flush=True)
        return Notification(
            position, message, refusal=f"{response.status_code} {_reason(response)}"
        )
    try:
        receipt: str = response.json()["id"]
    # A 2xx without its id (a proxy's page) does not say what the service did: it may have acted.
    except (ValueError, LookupError, TypeError) as exc:
        unread = f"answered {response.status_code} without a readable 'id'"
        raise PushUnavailableError(f"notification {position}: {unread}") from exc
    return Notification(position, message, receipt=receipt)


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase
