"""`python -m paced_calls.demo`: sync four records to a partner API at one call per second.

It starts one `send_batch` workflow on the workers, waits for it, then asks the API's sandbox
when each call actually arrived, so the spacing can be seen (and checked) from the receiving side.
"""

from __future__ import annotations

import asyncio
import os
import time

import httpx
from resonate.resonate import Resonate

RECORDS = ["contact-1", "contact-2", "contact-3", "contact-4"]
INTERVAL_MS = 1000


async def main() -> None:
    # A client, not a worker: it joins its own group so it is never handed workflow work.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="paced-calls-clients")
    execution_id = f"paced-calls-{int(time.time())}"
    print(
        f"→ send_batch({len(RECORDS)} records, one call per {INTERVAL_MS} ms) "
        f"as execution {execution_id}"
    )
    handle = resonate.options(target="paced-calls").rpc(
        execution_id, "send_batch", RECORDS, INTERVAL_MS
    )
    # This client did not register `send_batch`, so each result arrives as plain JSON.
    results = await handle.result()
    await resonate.stop()
    print(f"✓ {sum(r['receipt'] is not None for r in results)} calls taken by the API")
    for result in results:
        if result["refusal"] is not None:
            print(f"✗ {result['record']} refused: {result['refusal']}")

    # The sandbox's admin API (a demo-only view): when did each call reach the provider?
    async with httpx.AsyncClient(base_url=os.environ["PROVIDER_API_URL"]) as sandbox:
        response = await sandbox.get("/_admin/effects", params={"key_prefix": execution_id + ":"})
        effects = response.json()
    print("  the API's own records, one effect per call:")
    for n, effect in enumerate(effects):
        gap = effect["started_at"] - effects[n - 1]["started_at"] if n else 0.0
        after = f"  {gap:.2f}s after call {n}" if n else ""
        print(f"  call {n + 1}  {effect['body']['record']}  {effect['resource_id']}{after}")


if __name__ == "__main__":
    asyncio.run(main())
