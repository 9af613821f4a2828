"""The leaf of the workflow: apply one event to the account and publish the outcome downstream.

The publish call carries an Idempotency-Key derived from the step's durable id, which is stable
across retries and crashes. If this process dies after the statement service recorded the event
but before the step's result was checkpointed, the step runs again on another worker, computes
the same outcome from the same journaled state, sends the same key, and the service answers with
its original response instead of recording the event twice.

The step tells the service's answers apart. A service that is down, overloaded or silent (a 5xx,
a 408 or 429, a timeout, a refused connection, an answer that cannot be decoded) may record the
event on the next attempt, and may have recorded it already: the step raises, and the workflow's
retry policy tries again, with the same key. A service that refuses the record (any other 4xx)
would refuse it again: the refusal is kept in the projection, next to the account, and the stream
goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import httpx
from resonate.context import Context

from event_sourcing.account import Account, Event, Rejection, apply

# Client errors that say "not now" rather than "no": Request Timeout and Too Many Requests.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the statement service, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


@dataclass(frozen=True)
class Projection:
    """The account, and the events the statement service refused to record, with its answer."""

    account: Account = field(default_factory=Account)
    unrecorded: tuple[Rejection, ...] = ()


class StatementServiceUnavailableError(Exception):
    """The statement service did not record the event now; another attempt may."""


async def apply_event(
    ctx: Context, projection: Projection, sequence: int, event: Event
) -> Projection:
    account = projection.account
    updated = apply(account, sequence, event)
    record: dict[str, object] = {"sequence": sequence, "event": event}
    if updated.applied > account.applied:
        record |= {"verdict": "applied", "balance": updated.balance}
        print(f"event {sequence} {json.dumps(event)}: applied, balance {updated.balance}")
    else:
        record |= {"verdict": "rejected", "reason": updated.rejections[-1].reason}
        print(f"event {sequence} {json.dumps(event)}: rejected, {record['reason']}")
    providers = ctx.get_dependency(Providers)
    try:
        response = await providers.client.post(
            "/api/call", json=record, headers={"Idempotency-Key": ctx.info.id}
        )
    # No answer, or one that cannot be decoded: it may have recorded it; the key makes a retry safe.
    except (httpx.TransportError, httpx.DecodingError) as exc:
        raise StatementServiceUnavailableError(f"event {sequence}: {type(exc).__name__}") from exc
    if response.is_server_error or response.status_code in RETRYABLE_CLIENT_ERRORS:
        raise StatementServiceUnavailableError(f"event {sequence}: answered {response.status_code}")
    if response.is_client_error:
        refusal = Rejection(sequence, f"{response.status_code} {_reason(response)}")
        print(f"event {sequence}: the statement service refused it ({refusal.reason})")
        return Projection(updated, (*projection.unrecorded, refusal))
    return replace(projection, account=updated)


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.reason_phrase
