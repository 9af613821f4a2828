"""The steps of the nightly report: read the clock, gather the figures, email the report.

Each provider call carries an Idempotency-Key from the step's durable id (`ctx.info.id`). That id
is the tick's execution id plus the step's number, so it is the same on every attempt of the step
in that tick, and different in every other tick: a step that runs again after a crash is answered
from the provider's idempotency store, and the next night's report is a new one.

A step tells the provider's answers apart. A refusal (a 4xx other than 408 and 429) would be the
same on every attempt: it is returned as a value and never retried. A provider that is down,
overloaded or silent (a 5xx, 408, 429, a timeout, a refused connection, a 2xx whose body is not
its answer) may answer the next attempt: the step raises `ProviderUnavailableError`, and the
workflow's retry policy tries again with the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the figures API and the mailer, shared by every step."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Refused:
    """A provider's final no: asked once, never retried."""

    reason: str


class ProviderUnavailableError(Exception):
    """The provider did not answer now; another attempt may succeed."""


def read_clock(ctx: Context) -> str:
    """When this report's figures are taken (UTC, to the second).

    A step of its own, so that the time is journaled once: a replay, a retried figures request
    and the email all see the same moment, and a retried request carries the same body as the
    first (a provider refuses a key sent again with a different body).
    """
    return datetime.now(UTC).isoformat(timespec="seconds")


async def gather_figures(ctx: Context, as_of: str) -> str | Refused:
    """Ask the figures API for the day's export: its id, or its refusal."""
    print(f"gathering figures as of {as_of} (step {ctx.info.id})", flush=True)
    response = await _post(ctx, "/api/call", {"query": "daily-figures", "as_of": as_of})
    if response.is_error:
        refusal = Refused(_describe(response))
        print(f"the figures API refused: {refusal.reason}", flush=True)
        return refusal
    return _id(response)


async def send_report(
    ctx: Context, report_id: str, to: str, as_of: str, figures: str | Refused
) -> str | Refused:
    """Email the report (or, without figures, a notice saying why): the message id, or the
    mailer's refusal."""
    message: dict[str, object] = {
        "to": to,
        "subject": f"Nightly report, as of {as_of}",
        "report": report_id,
        "figures": figures if isinstance(figures, str) else None,
    }
    if isinstance(figures, Refused):
        message["notice"] = f"no figures tonight: {figures.reason}"
    print(f"emailing the report to {to} (step {ctx.info.id})", flush=True)
    response = await _post(ctx, "/email/send", message)
    if response.is_error:
        refusal = Refused(_describe(response))
        print(f"the mailer refused: {refusal.reason}", flush=True)
        return refusal
    return _id(response)


async def _post(ctx: Context, path: str, body: dict[str, object]) -> httpx.Response:
    """One provider call under the step's key; raises for an answer worth asking again for."""
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            path, json=body, headers={"Idempotency-Key": ctx.info.id}
        )
    # Timed out, reset, or an answer that could not be decoded: it may have acted, and the key
    # makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ProviderUnavailableError(f"{path}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        print(f"{path} answered {response.status_code}: will try again", flush=True)
        raise ProviderUnavailableError(f"{path}: answered {response.status_code}")
    return response


def _id(response: httpx.Response) -> str:
    """The provider's id for what it did, from a 2xx's JSON body.

    A 2xx without it (a proxy's HTML page, a cut-off body) says nothing of what the provider did,
    and it may have acted: it is transient, like a timeout, and the retry's key gets the answer.
    """
    try:
        return str(response.json()["id"])
    except (ValueError, LookupError, TypeError) as exc:
        path = response.request.url.path
        print(f"{path} answered {response.status_code} without its id: will try again", flush=True)
        raise ProviderUnavailableError(
            f"{path}: HTTP {response.status_code} without a readable 'id'"
        ) from exc


def _describe(response: httpx.Response) -> str:
    try:
        reason = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        reason = response.reason_phrase
    return f"{response.status_code} {reason}"
