"""The steps of a report export: each acts once on a third-party API, keyed by its durable id.

Which system does what (all three are the cookbook's provider sandbox here):
  warehouse  `/api/call` with `operation: query`: runs the report's query; its id names the
             result set
  storage    `/api/call` with `operation: put`: stores the rendered file under the job's name
  email      `/email/send`: mails the user who asked for the report the download link

Each call carries an Idempotency-Key: the step's durable id, stable across retries and crashes.
A step that runs again (after a crash, or after a timeout whose request did land) gets the
system's original answer instead of querying, storing or mailing twice.

The mail names its recipient by reference (the request's `user_id`, `usr_...`), never by email
address: the mail system resolves it, and the request, which the Resonate server stores in
plaintext as the execution's argument, holds no personal data.

A system answers in three ways, and the steps keep them apart:
  yes      2xx: the system's id for what it did (a result set, a stored object, a message).
  no       any 4xx but 408 and 429: no permission to export this report, a quota exceeded, a
           recipient the mail system refuses. Asking again cannot change it: the step returns
           it as a value (`Refused`), which is checkpointed, and never retried (SDK 0.8.1
           retries every exception a step raises, so a refusal must not be one).
  not now  5xx, 408, 429, a timeout, a dropped connection, or a 2xx whose body is not the
           answer (a proxy's HTML page, a cut-off or garbled body): it may pass, and the call
           may have landed. The step raises `SystemUnavailableError`, and the SDK runs it again
           under the retry policy the workflow gives with the call, under the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Systems:
    """The HTTP client for the warehouse, storage and mail APIs (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Refused:
    """A system's final no: which system, and what it said."""

    system: str
    reason: str


class SystemUnavailableError(Exception):
    """A system did not act now (5xx, 408, 429, no answer); another attempt may succeed."""


async def run_query(ctx: Context, report: str, period: dict[str, str]) -> str | Refused:
    """Run the report's query in the warehouse: the result set's id, or the warehouse's no."""
    print(f"querying the warehouse: {report} report {period} (step {ctx.info.id})", flush=True)
    body = {"system": "warehouse", "operation": "query", "report": report, **period}
    return await _call(ctx, "warehouse", "/api/call", body)


async def store_file(ctx: Context, name: str, result_set: str) -> str | Refused:
    """Render the result set and store it as `name`: the stored object's id, or storage's no."""
    print(f"storing {name} (step {ctx.info.id})", flush=True)
    body = {"system": "storage", "operation": "put", "object": name, "result_set": result_set}
    return await _call(ctx, "storage", "/api/call", body)


async def email_link(ctx: Context, to: str, report: str, link: str) -> str | Refused:
    """Mail user `to` (a reference) the download link: the message id, or the mail system's no."""
    print(f"emailing {to} the link (step {ctx.info.id})", flush=True)
    body = {"to": to, "subject": f"Your {report} report is ready", "link": link}
    return await _call(ctx, "email", "/email/send", body)


async def _call(ctx: Context, system: str, path: str, body: dict[str, Any]) -> str | Refused:
    client = ctx.get_dependency(Systems).client
    try:
        response = await client.post(path, json=body, headers={"Idempotency-Key": ctx.info.id})
    # No answer, or one that cannot be decoded: it may have acted; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        print(f"{system}: {type(exc).__name__} (transient: retried)", flush=True)
        raise SystemUnavailableError(f"{system}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        print(f"{system} answered {response.status_code} (transient: retried)", flush=True)
        raise SystemUnavailableError(f"{system}: {_describe(response)}")
    if response.is_error:
        refusal = Refused(system, _describe(response))
        print(f"{system} refused: {refusal.reason} (final: not retried)", flush=True)
        return refusal
    try:
        receipt: str = response.json()["id"]
    # A 2xx without its id (a proxy's page) does not say what the system did: it may have acted.
    except (ValueError, LookupError, TypeError) as exc:
        print(f"{system} answered {response.status_code} without its id (transient)", flush=True)
        unread = f"HTTP {response.status_code} without a readable 'id'"
        raise SystemUnavailableError(f"{system}: {unread}") from exc
    return receipt


def _describe(response: httpx.Response) -> str:
    try:
        detail = str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        detail = response.text[:200]
    return f"HTTP {response.status_code} {response.reason_phrase}: {detail}"
