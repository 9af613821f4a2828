"""The leaf of the workflow: apply one event to the account and publish the outcome downstream.

The publish call carries an Idempotency-Key derived from the step's durable id, which is stable
across retries and crashes. If this process dies after the statement service recorded the event
but before the step's result was checkpointed, the step runs again on another worker, computes
the same outcome from the same journaled state, sends the same key, and the service answers with
its original response instead of recording the event twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
from resonate.context import Context

from event_sourcing.account import Account, Event, apply


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the statement service, shared by every step (a worker dependency)."""

    client: httpx.AsyncClient


async def apply_event(ctx: Context, account: Account, sequence: int, event: Event) -> Account:
    updated = apply(account, sequence, event)
    record: dict[str, object] = {"sequence": sequence, "event": event}
    if updated.applied > account.applied:
        record |= {"verdict": "applied", "balance": updated.balance}
        print(f"event {sequence} {json.dumps(event)}: applied, balance {updated.balance}")
    else:
        record |= {"verdict": "rejected", "reason": updated.rejections[-1].reason}
        print(f"event {sequence} {json.dumps(event)}: rejected, {record['reason']}")
    providers = ctx.get_dependency(Providers)
    response = await providers.client.post(
        "/api/call", json=record, headers={"Idempotency-Key": ctx.info.id}
    )
    response.raise_for_status()  # a 5xx raises, and the SDK retries the step with backoff
    return updated
