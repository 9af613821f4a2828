"""`python -m infinite_monitor.demo`: start a monitor, follow its generations, then stop it.

The monitor probes three services (checkout, inventory, payments) every interval, in generations
of five iterations. The demo makes payments fail its probes in iterations 3 and 4 and inventory in
iteration 7 (the sandbox's fault injection, by the probes' Idempotency-Keys), so the alerts show
each state change once. After the third generation it asks the monitor to stop, with the stop
flag any client can set, and the monitor ends at its next iteration.

Interval: five minutes when the server skips time (`make run-infinite-monitor SKIP_TIME=1`),
else one second, in real time.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx
from resonate.resonate import Resonate
from resonate.types import Value

from infinite_monitor.steps import probe_key, stop_flag_id
from infinite_monitor.workflow import generation_deadline

SERVICES = ["checkout", "inventory", "payments"]
GENERATION_LENGTH = 5
STOP_AFTER_GENERATION = 3
FAILING_PROBES = [("payments", 3), ("payments", 4), ("inventory", 7)]
STOP_FLAG_LIFETIME_MS = 7 * 24 * 3600 * 1000


async def main() -> None:
    interval = 300 if os.environ.get("SKIP_TIME") else 1
    # A client, not a worker: it joins its own group so it is never handed monitor work.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="infinite-monitor-clients")
    monitor = f"shop-health-{int(time.time())}"
    async with httpx.AsyncClient(base_url=os.environ["PROVIDER_API_URL"]) as sandbox:
        for service, iteration in FAILING_PROBES:
            fault = {
                "provider": "api",
                "mode": "fail_always",
                "status": 503,
                "key_prefix": probe_key(monitor, service, iteration),
            }
            (await sandbox.post("/_admin/faults", json=fault)).raise_for_status()
        print(
            f"→ monitor {monitor}: probe {', '.join(SERVICES)} every {interval}s,"
            f" {GENERATION_LENGTH} iterations per execution"
        )
        print("  the sandbox will fail " + ", ".join(f"{s} at #{i}" for s, i in FAILING_PROBES))
        handle = resonate.options(
            target="infinite-monitor", timeout=generation_deadline(interval, GENERATION_LENGTH)
        ).rpc(monitor, "monitor", SERVICES, interval, GENERATION_LENGTH)
        execution_id = monitor
        while True:
            # This client did not register `monitor`, so each generation's end is plain JSON.
            end: dict[str, Any] = await handle.result()
            _narrate(execution_id, end)
            if end["reason"] != "continued":
                break
            if end["generation"] == STOP_AFTER_GENERATION:
                # Anyone can stop the monitor: the stop flag is a promise with an id it knows.
                await resonate.promises.create(
                    stop_flag_id(monitor),
                    int(time.time() * 1000) + STOP_FLAG_LIFETIME_MS,
                    Value(data="stop requested by the demo"),
                    {},
                )
                print(f"■ stop requested: created promise {stop_flag_id(monitor)}")
            execution_id = end["continued_as"]
            handle = await resonate.get(execution_id)
        effects = (await sandbox.get("/_admin/effects", params={"key_prefix": monitor})).json()
    await resonate.stop()
    alerts = [e for e in effects if e["provider"] == "slack"]
    print(f"  Slack's own records: {len(alerts)} alerts, one per state change")
    for alert in alerts:
        print(
            f"    {alert['resource_id']}  {alert['body']['text']}  (key {alert['idempotency_key']})"
        )


def _narrate(execution_id: str, end: dict[str, Any]) -> None:
    print(
        f"  generation {end['generation']} ({execution_id}) ended after iteration"
        f" {end['iterations']}: {end['reason']}"
    )
    for alert in end["alerts"]:
        print(f"    alert at #{alert['iteration']}: {alert['service']} {alert['became']}")
    if end["reason"] == "continued":
        print(f"    ↪ continued as {end['continued_as']}, from iteration {end['iterations'] + 1}")
    else:
        states = ", ".join(f"{s} {h}" for s, h in end["states"].items())
        print(f"✓ monitor ended ({end['reason']}); last known states: {states}")


if __name__ == "__main__":
    asyncio.run(main())
