"""`python -m event_sourcing.demo`: project one account's event stream, invalid events included.

It starts one `project_account` workflow on the workers, prints the projection it returns, and
checks it against the pure fold of the same events.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import asdict

import httpx
from resonate.resonate import Resonate

from event_sourcing.account import Event, fold

EVENTS: list[Event] = [
    {"type": "opened", "owner": "Ada"},
    {"type": "deposited", "amount": 120},
    {"type": "withdrew", "amount": 500},  # more than the balance
    {"type": "withdrew", "amount": 45},
    {"type": "deposited", "amount": -10},  # a negative amount
    {"type": "renamed", "owner": "Grace"},  # a type the account does not know
    {"type": "closed"},
    {"type": "deposited", "amount": 5},  # after the close
]


async def main() -> None:
    # A client, not a worker: it joins its own group so it is never handed workflow work.
    resonate = Resonate(url=os.environ["RESONATE_URL"], group="event-sourcing-clients")
    execution_id = f"event-sourcing-{int(time.time())}"
    print(f"→ project_account({len(EVENTS)} events) as execution {execution_id}")
    handle = resonate.options(target="event-sourcing").rpc(execution_id, "project_account", EVENTS)
    projection = await handle.result()
    await resonate.stop()
    # This client did not register the workflow, so the projection arrives as plain JSON.
    account = projection["account"]
    print(
        f"✓ account of {account['owner']}: {account['status']}, balance "
        f"{account['balance']}, {account['applied']} events applied"
    )
    for rejection in account["rejections"]:
        print(f"  event {rejection['sequence']} rejected: {rejection['reason']}")
    for refusal in projection["unrecorded"]:
        print(f"  event {refusal['sequence']} not recorded downstream: {refusal['reason']}")
    expected = json.loads(json.dumps(asdict(fold(EVENTS))))
    same = account == expected
    print(f"{'✓' if same else '✗'} equals the pure fold of the same events: {same}")

    # The sandbox's admin API (a demo-only view): what did the statement service record?
    async with httpx.AsyncClient(base_url=os.environ["PROVIDER_API_URL"]) as sandbox:
        response = await sandbox.get("/_admin/effects", params={"key_prefix": execution_id + ":"})
        recorded = [effect["body"]["sequence"] for effect in response.json()]
    once_each = recorded == list(range(1, len(EVENTS) + 1))
    print(f"{'✓' if once_each else '✗'} the statement service recorded events {recorded}")


if __name__ == "__main__":
    asyncio.run(main())
