"""`python -m fan_out.demo`: notify someone on four channels twice, and show the providers' clock.

The first notification meets a flaky SMS provider (it fails twice, then works); the second meets
a push provider that refuses the message for good, and an SMS provider that stays down through
every retry. The demo sets them up through the sandbox's admin API, with a little latency per
channel so the overlap is visible in the providers' records.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

import httpx
from resonate.resonate import Resonate

LATENCY_MS = {"email": 400, "sms": 300, "slack": 600, "push": 500}


async def main() -> None:
    # A client, not a worker: it joins its own group so it is never handed workflow work.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="fan-out-clients")
    sandbox = httpx.AsyncClient(base_url=os.environ["PROVIDER_API_URL"])
    # The execution id and the recipient are stored on the Resonate server, so neither spells
    # who is notified: random references, which only the providers resolve. The demo names Ada
    # in what it prints, never in what it sends.
    ada = f"cus_{secrets.token_hex(6)}"
    run = f"notify-{secrets.token_hex(4)}"
    try:
        print("1. SMS is flaky: its provider answers 503 twice, then accepts the message")
        await notify(resonate, sandbox, run, ada, [{"provider": "sms", "times": 2}])
        print(
            "\n2. Push fails for good: its provider refuses the message (410);"
            " SMS stays down (503) through every retry"
        )
        refuse = {"provider": "push", "mode": "fail_always", "status": 410}
        down = {"provider": "sms", "mode": "fail_always"}
        await notify(resonate, sandbox, f"{run}-2", ada, [refuse, down])
    finally:
        await sandbox.aclose()
        await resonate.stop()


async def notify(
    resonate: Resonate,
    sandbox: httpx.AsyncClient,
    execution_id: str,
    to: str,
    faults: list[dict[str, Any]],
) -> None:
    scope = execution_id + ":"  # the Idempotency-Keys of this execution's steps
    for channel, latency_ms in LATENCY_MS.items():
        await add_fault(
            sandbox, provider=channel, mode="latency", latency_ms=latency_ms, key_prefix=scope
        )
    for fault in faults:
        await add_fault(
            sandbox, **{"mode": "fail_times", "status": 503, **fault, "key_prefix": scope}
        )
    print(f"→ notify({to!r}) (Ada, by reference) as execution {execution_id}")
    handle = resonate.options(target="fan-out").rpc(
        execution_id, "notify", to, "Your order has shipped."
    )
    notification = await handle.result()
    for channel, receipt in notification["receipts"].items():
        print(f"✓ {channel:<6} receipt {receipt}")
    for channel, reason in notification["failed"].items():
        print(f"✗ {channel:<6} {reason}")
    for channel, reason in notification["unconfirmed"].items():
        print(f"? {channel:<6} {reason}: may have been sent (unconfirmed, not failed)")
    await print_timeline(sandbox, scope)


async def add_fault(sandbox: httpx.AsyncClient, **spec: Any) -> None:
    response = await sandbox.post("/_admin/faults", json=spec)
    response.raise_for_status()


async def print_timeline(sandbox: httpx.AsyncClient, scope: str) -> None:
    """Every request the providers received for this execution, on their own clock."""
    response = await sandbox.get("/_admin/requests", params={"key_prefix": scope})
    order = list(LATENCY_MS)
    requests = sorted(response.json(), key=lambda r: (order.index(r["provider"]), r["started_at"]))
    t0 = min(r["started_at"] for r in requests)
    print("  the providers' records (seconds since the first call):")
    spans: dict[str, tuple[float, float]] = {}
    for r in requests:
        start, end = r["started_at"] - t0, r["finished_at"] - t0
        first, _ = spans.get(r["provider"], (start, end))
        spans[r["provider"]] = (first, end)
        note = " (replayed from its Idempotency-Key)" if r["replayed"] else ""
        print(f"    {r['provider']:<6} {start:5.2f} → {end:5.2f}  {r['status_code']}{note}")
    total = max(end for _, end in spans.values())
    durations = {channel: end - start for channel, (start, end) in spans.items()}
    slowest = max(durations, key=durations.__getitem__)
    print(
        f"  first call to last answer {total:.2f}s; the slowest channel ({slowest})"
        f" {durations[slowest]:.2f}s; the four channels added up {sum(durations.values()):.2f}s"
    )


if __name__ == "__main__":
    asyncio.run(main())
