"""The leaf of the workflow: one call to a rate-limited third-party API.

The call carries an Idempotency-Key derived from the step's durable id, which is stable across
retries and crashes. If this process dies after the API acted but before the step's result was
checkpointed, the step runs again on another worker, sends the same key, and the API answers with
its original response instead of acting twice.

The step tells the API's answers apart. An API that is down, overloaded or silent (a 5xx, a 408,
a 429 "too many requests", a timeout, a refused connection, a 2xx whose body is not its answer)
may take the call on the next attempt: the step raises, and the workflow's retry policy tries
again, later, with the same key.
An API that refuses the record (any other 4xx) would refuse it again: the refusal is the call's
result, never retried, and the batch goes on with the next record.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from resonate.context import Context

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the third-party API, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class CallResult:
    """What the API did with one record: took it (its receipt) or refused it (why)."""

    record: str
    receipt: str | None = None
    refusal: str | None = None


class ApiUnavailableError(Exception):
    """The API did not take the call now; another attempt may succeed."""


async def call_api(ctx: Context, record: str, position: int, total: int) -> CallResult:
    print(f"call {position}/{total}: syncing {record} ...", flush=True)
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            "/api/call",
            json={"record": record, "position": position},
            headers={"Idempotency-Key": ctx.info.id},
        )
    # No answer, or one that could not be decoded: it may have acted; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise ApiUnavailableError(f"call {position}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        print(f"call {position}/{total}: the API answered {response.status_code}", flush=True)
        raise ApiUnavailableError(f"call {position}: answered {response.status_code}")
    if response.is_client_error:
        print(f"call {position}/{total}: refused ({response.status_code})", flush=True)
        return CallResult(record, refusal=f"{response.status_code} {_reason(response)}")
    try:
        return CallResult(record, receipt=response.json()["id"])
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx that is not the API's answer (a proxy's HTML page, a cut-off body) says nothing
        # about what it did: not a bug, but a call that may have acted, asked again.
        raise ApiUnavailableError(
            f"call {position}: answered {response.status_code} without its id"
        ) from exc


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase
