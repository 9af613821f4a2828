"""The leaves of the workflow: plan the deletion, delete one batch, report that it is done.

Every step is safe to run again, which is what a crash between "did it" and "checkpointed it"
makes it do: the plan reads the same rows (nothing is deleted before the plan is checkpointed),
a batch deletes an id range fixed by the plan (rows already gone are simply not there), and the
report carries an Idempotency-Key derived from the step's durable id, so the receiving service
answers a repeat with its original response instead of recording the deletion twice.

Failures are told apart by what retrying could change. A step raises, and is retried, only on
what may pass next time: a dropped connection, a timeout, a 5xx, a 408, a 429, or a 2xx whose body
is not the answer (a proxy's HTML page). A refusal (any
other 4xx) would be refused again, so it is returned as a value and never retried.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from resonate.context import Context

from kafka_worker.store import UserData

BATCH_SIZE = 50


@dataclass(frozen=True)
class Batch:
    first_id: int
    last_id: int
    rows: int


@dataclass(frozen=True)
class DeletionPlan:
    rows: int
    batches: list[Batch]


@dataclass(frozen=True)
class Report:
    """How the service told about the deletion answered."""

    receipt: str | None  # its id for the report; None if it refused the report
    refused: str | None = None  # why it refused (a 4xx other than 408 and 429), else None


# Answers that say "not now" rather than "no": the step is retried. Every other 4xx is final.
TRANSIENT = frozenset({408, 429})


@dataclass(frozen=True)
class Providers:
    """The HTTP client for the service told about completed deletions (a worker dependency)."""

    client: httpx.AsyncClient


async def plan_deletion(ctx: Context, user_id: str) -> DeletionPlan:
    store = ctx.get_dependency(UserData)
    ids = await asyncio.to_thread(store.row_ids, user_id)
    chunks = [ids[i : i + BATCH_SIZE] for i in range(0, len(ids), BATCH_SIZE)]
    plan = DeletionPlan(len(ids), [Batch(c[0], c[-1], len(c)) for c in chunks])
    print(f"{user_id}: {plan.rows} rows to delete in {len(plan.batches)} batches", flush=True)
    return plan


async def delete_batch(ctx: Context, user_id: str, batch: Batch, label: str) -> int:
    store = ctx.get_dependency(UserData)
    # Logged under the execution's id, the record's (origin_id: the top of this execution's
    # tree), and the step's own durable id.
    deleted = await asyncio.to_thread(
        store.delete_range,
        ctx.info.origin_id,
        ctx.info.id,
        user_id,
        batch.first_id,
        batch.last_id,
    )
    if deleted:
        print(f"{user_id}: batch {label} deleted {deleted} rows", flush=True)
    else:
        print(f"{user_id}: batch {label} was already deleted by an earlier attempt", flush=True)
    return deleted


async def report_deletion(ctx: Context, user_id: str, rows: int) -> Report:
    providers = ctx.get_dependency(Providers)
    response = await providers.client.post(
        "/api/call",
        json={"event": "user-data-deleted", "user_id": user_id, "rows": rows},
        headers={"Idempotency-Key": ctx.info.id},
    )
    if response.status_code in TRANSIENT or response.is_server_error:
        # Raising retries the step, under the same Idempotency-Key: a report that landed
        # although its answer was lost (a timeout raises too) is answered from the
        # service's memory, not recorded twice.
        response.raise_for_status()
    if response.is_client_error:
        # The service refuses this report, and would refuse it again: the rows are deleted
        # all the same, so the execution ends with the refusal stated, not retried or failed.
        refusal = f"{response.status_code} {response.reason_phrase}: {response.text[:200]}"
        print(f"{user_id}: the deletion report was refused: {refusal}", flush=True)
        return Report(receipt=None, refused=refusal)
    try:
        receipt: str = response.json()["id"]
    except (ValueError, LookupError, TypeError) as exc:
        # A 2xx that is not the service's answer (a proxy's HTML page, a cut-off body) says
        # nothing about what it did: not a bug, but a report that may have landed. Raised as an
        # HTTP error, like a 5xx, it is retried under the same key.
        raise httpx.DecodingError(
            f"answered {response.status_code} without a readable 'id'", request=response.request
        ) from exc
    print(f"{user_id}: deletion reported, receipt {receipt}", flush=True)
    return Report(receipt=receipt)
