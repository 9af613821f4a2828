"""The leaves of the workflow: plan the deletion, delete one batch, report that it is done.

Every step is safe to run again, which is what a crash between "did it" and "checkpointed it"
makes it do: the plan reads the same rows (nothing is deleted before the plan is checkpointed),
a batch deletes an id range fixed by the plan (rows already gone are simply not there), and the
report carries an Idempotency-Key derived from the step's durable id, so the receiving service
answers a repeat with its original response instead of recording the deletion twice.
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
    deleted = await asyncio.to_thread(
        store.delete_range, ctx.info.id, user_id, batch.first_id, batch.last_id
    )
    if deleted:
        print(f"{user_id}: batch {label} deleted {deleted} rows", flush=True)
    else:
        print(f"{user_id}: batch {label} was already deleted by an earlier attempt", flush=True)
    return deleted


async def report_deletion(ctx: Context, user_id: str, rows: int) -> str:
    providers = ctx.get_dependency(Providers)
    response = await providers.client.post(
        "/api/call",
        json={"event": "user-data-deleted", "user_id": user_id, "rows": rows},
        headers={"Idempotency-Key": ctx.info.id},
    )
    response.raise_for_status()  # a 5xx raises, and the SDK retries the step with backoff
    receipt: str = response.json()["id"]
    print(f"{user_id}: deletion reported, receipt {receipt}", flush=True)
    return receipt
