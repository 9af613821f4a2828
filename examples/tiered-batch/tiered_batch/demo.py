"""`python -m tiered_batch.demo`: run a batch of jobs, show the providers' clock, try a bad batch.

Through the sandbox's admin API the demo gives every job 0.3 s of work and makes the provider fail
the first call twice, so the order of the tiers, the window of two and the retry show in the
provider's own records.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx
from resonate.resonate import Resonate

BATCH = [
    {"id": "weekly-digest", "priority": "low", "task": "send the weekly digest"},
    {"id": "refund-1042", "priority": "high", "task": "refund order 1042"},
    {"id": "rotate-key", "priority": "critical", "task": "rotate a leaked API key"},
    {"id": "resize-images", "priority": "normal", "task": "resize new product images"},
    {"id": "refund-1043", "priority": "high", "task": "refund order 1043"},
    {"id": "reindex", "priority": "normal", "task": "rebuild the search index"},
    {"id": "refund-1044", "priority": "high", "task": "refund order 1044"},
    {"id": "purge-logs", "priority": "low", "task": "purge old logs"},
]


async def main() -> None:
    # A client, not a worker: it joins its own group so it is never handed workflow work.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="tiered-batch-clients")
    sandbox = httpx.AsyncClient(base_url=os.environ["PROVIDER_API_URL"])
    execution_id = f"batch-{int(time.time())}"
    scope = execution_id + ":"  # the Idempotency-Keys of this execution's steps
    try:
        for fault in (
            {"mode": "latency", "latency_ms": 300},
            {"mode": "fail_times", "times": 2, "status": 503},
        ):
            response = await sandbox.post(
                "/_admin/faults", json={"provider": "api", "key_prefix": scope, **fault}
            )
            response.raise_for_status()
        print(f"→ process_batch({len(BATCH)} jobs, in this order) as execution {execution_id}")
        for job in BATCH:
            print(f"    {job['priority']:<8} {job['id']}")
        print("  (each job takes 0.3s at the provider, which fails the first call twice)")
        handle = resonate.options(target="tiered-batch").rpc(execution_id, "process_batch", BATCH)
        result = await handle.result()
        print(f"✓ {len(result['receipts'])} jobs done: {', '.join(result['receipts'])}")
        for job_id, refusal in result["refused"].items():
            print(f"✗ {job_id} refused by the provider: {refusal}")
        await print_timeline(sandbox, scope)

        bad = [*BATCH[:2], {"id": "refund-1042", "priority": "urgent", "task": "refund again"}]
        print(f"\n→ process_batch with a bad batch as execution {execution_id}-bad")
        try:
            await (
                resonate.options(target="tiered-batch")
                .rpc(f"{execution_id}-bad", "process_batch", bad)
                .result()
            )
        except ValueError as exc:
            print(f"✗ rejected before any job ran: {exc}")
    finally:
        await sandbox.aclose()
        await resonate.stop()


async def print_timeline(sandbox: httpx.AsyncClient, scope: str) -> None:
    """Every request the provider received for this execution, on its own clock."""
    response = await sandbox.get("/_admin/requests", params={"key_prefix": scope})
    calls: list[dict[str, Any]] = response.json()
    t0 = min(c["started_at"] for c in calls)
    print("  the provider's records (seconds since the first call):")
    for c in calls:
        job = c["body"]
        note = " (replayed from its Idempotency-Key)" if c["replayed"] else ""
        print(
            f"    {job['priority']:<8} {job['job']:<14}"
            f" {c['started_at'] - t0:5.2f} → {c['finished_at'] - t0:5.2f}  {c['status_code']}{note}"
        )
    print(f"  at most {max_in_flight(calls)} calls in flight at once")


def max_in_flight(calls: list[dict[str, Any]]) -> int:
    # +1 at each start, -1 at each finish; a finish sorts before a start at the same instant.
    events = sorted([(c["started_at"], 1) for c in calls] + [(c["finished_at"], -1) for c in calls])
    level = peak = 0
    for _, change in events:
        level += change
        peak = max(peak, level)
    return peak


if __name__ == "__main__":
    asyncio.run(main())
