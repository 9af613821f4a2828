"""`python -m observability.demo`: place one order on the workers and narrate what to look for.

The worker prints the telemetry: a line per step span as it is exported, then the execution's
span tree and the step metrics. The email provider is made to fail once (a 503), so one step
shows a retry; run with `CRASH=sms` and the SMS step shows a recovery on a second worker.
"""

from __future__ import annotations

import asyncio
import os
import time

import httpx
from resonate.resonate import Resonate

from observability.telemetry import trace_id_of


async def main() -> None:
    # A client, not a worker: it joins its own group so it is never handed workflow work.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="observability-clients")
    execution_id = f"order-{int(time.time())}"
    order = {"order_id": execution_id, "customer_id": "customer-42", "amount_cents": 4200}
    async with httpx.AsyncClient(base_url=os.environ["PROVIDER_API_URL"]) as sandbox:
        fault = {"provider": "email", "mode": "fail_times", "times": 1, "status": 503}
        response = await sandbox.post(
            "/_admin/faults", json={**fault, "key_prefix": execution_id + ":"}
        )
        response.raise_for_status()
    print(f"→ place_order as execution {execution_id}; the email provider will answer 503 once")
    print(f"  its trace id is derived from the execution id: {trace_id_of(execution_id):032x}")
    result = (
        await resonate.options(target="observability")
        .rpc(execution_id, "place_order", order)
        .result()
    )
    for step, outcome in result.items():
        said = outcome["receipt"] or outcome["refusal"] or outcome["unconfirmed"]
        print(f"{'✓' if outcome['receipt'] else '✗'} {step:<9} {said}")
    print("  next, from the worker: the trace as it is exported (within 0.2 s): one span per step,")
    print("  the email step with its failed attempt and its [retry], then the step metrics")
    await resonate.stop()


if __name__ == "__main__":
    asyncio.run(main())
