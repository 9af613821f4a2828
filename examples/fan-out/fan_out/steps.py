"""The leaf step: hand one message to one channel's provider (email, SMS, Slack or push).

The call carries an Idempotency-Key taken from the step's durable id, which is stable across
retries and crashes, so a step that runs again after a crash gets the provider's original answer
instead of sending the message twice.

The step tells two kinds of failure apart. A provider that is down, overloaded or silent (a 5xx,
a 408 or 429, a timeout, a refused connection), or whose 2xx body is not the answer (a proxy's
HTML page, a cut-off or garbled body), may work on the next attempt, and may have sent the
message already: the step raises and its retry policy tries again, with the same key. A provider
that refuses the message (any other 4xx: a bad address, an unsubscribed device) will refuse it
again: the step returns the refusal as its result, so it is not retried.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the channel providers, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Delivery:
    """What one channel's provider did with the message."""

    channel: str
    receipt: str | None = None  # the provider's message id, when it accepted the message
    failure: str | None = None  # why not, when the provider refused it


class ChannelUnavailableError(Exception):
    """The provider could not take the message now; worth another attempt."""


async def send(ctx: Context, channel: str, to: str, text: str) -> Delivery:
    print(f"{channel}: sending to {to} ...", flush=True)
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            f"/{channel}/send",
            # To the recipient by reference (`notify`'s argument, which the Resonate server
            # stores): the provider resolves it to the address, number or device it holds.
            json={"to": to, "text": text},
            headers={"Idempotency-Key": ctx.info.id},
        )
    # No answer, or one that cannot be decoded: it may have sent it; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ChannelUnavailableError(f"unavailable: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        print(f"{channel}: provider answered {response.status_code}", flush=True)
        raise ChannelUnavailableError(f"unavailable: answered {response.status_code}")
    if response.is_client_error:
        reason = _reason(response)
        print(f"{channel}: provider refused it ({response.status_code})", flush=True)
        return Delivery(channel, failure=f"refused: {response.status_code} {reason}")
    try:
        receipt: str = response.json()["id"]
    # A 2xx without its id (a proxy's page) does not say what the provider did: it may have sent it.
    except (ValueError, LookupError, TypeError) as exc:
        unread = f"answered {response.status_code} without a readable 'id'"
        raise ChannelUnavailableError(f"unavailable: {unread}") from exc
    return Delivery(channel, receipt=receipt)


def _reason(response: httpx.Response) -> str:
    """The provider's own words for a refusal, or the status's if its body is not that JSON."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase
