"""How `cookbook chaos order-state-machine` drives orders: `POST /orders`, then their events.

Each order's plan is drawn from its seed: shipped then delivered; shipped then cancelled (the
charge is refunded); cancelled before shipping; or its card declined when it ships (the payment
provider answers 402 to that order's charge only: the fault is scoped by the idempotency keys
its steps send, `<order id>:...`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

from cookbook.chaos import Driver, Entry, Execution

ORDER = {
    "customer_id": "cus_7c41e9a2",
    "items": [{"sku": "BOOK-42", "quantity": 2, "unit_price_cents": 1250}],
    "currency": "EUR",
}
SHIP = ("ship", {"carrier": "DHL", "tracking_number": "JD014600006281"})
DELIVER = ("deliver", None)
CANCEL = ("cancel", {"reason": "changed my mind"})
# Per plan: the events sent in order, the state the order ends in, the effects it leaves.
PLANS: dict[str, tuple[list[tuple[str, Any]], str, dict[str, int]]] = {
    "delivered": (
        [SHIP, DELIVER],
        "delivered",
        {"email.send": 1, "payment.charge": 1, "push.send": 1},
    ),
    "refunded": (
        [SHIP, CANCEL],
        "refunded",
        {"email.send": 1, "payment.charge": 1, "payment.refund": 1},
    ),
    "cancelled": ([CANCEL], "cancelled", {"email.send": 2}),
    "declined": ([SHIP], "declined", {"email.send": 2}),
}
# The states an event leads to: an event whose answer was lost is found taken by these.
LEADS_TO = {
    "ship": {"shipped", "declined"},
    "deliver": {"delivered"},
    "cancel": {"cancelled", "refunded"},
}
FINAL = {"delivered", "cancelled", "refunded", "declined", "failed"}


class OrderDriver(Driver):
    def plan(self, i: int, rng: random.Random) -> Execution:
        kind = rng.choice(sorted(PLANS))
        _, state, effects = PLANS[kind]
        return Execution(f"order-{i:03d}", kind, state, effects)

    async def prepare(self, entry: Entry, plans: Sequence[Execution]) -> None:
        for plan in plans:
            if plan.kind == "declined":
                fault = {
                    "provider": "payment",
                    "action": "charge",
                    "mode": "fail_always",
                    "status": 402,
                    "key_prefix": f"{plan.id}:",
                }
                response = await entry.http.post(
                    f"{entry.stack.provider_url}/_admin/faults", json=fault
                )
                response.raise_for_status()

    async def drive(self, entry: Entry, plan: Execution) -> None:
        response = await entry.call("POST", "/orders", json={"order_id": plan.id, **ORDER})
        if response.status_code != 202:
            raise AssertionError(f"POST /orders answered {response.status_code}: {response.text}")
        for event, body in PLANS[plan.kind][0]:
            await self._send(entry, plan.id, event, body)

    async def _send(self, entry: Entry, order_id: str, event: str, body: Any) -> None:
        """Send the event until the order took it: a 409 is the order between states (or the
        event taken already, its answer lost in an outage): its history says which."""
        while True:
            response = await entry.call("POST", f"/orders/{order_id}/{event}", json=body)
            if response.status_code == 202:
                return
            if response.status_code != 409:
                raise AssertionError(
                    f"POST {event} answered {response.status_code}: {response.text}"
                )
            order = await entry.call("GET", f"/orders/{order_id}")
            reached = {entry["state"] for entry in order.json().get("history", [])}
            if reached & LEADS_TO[event]:
                return
            await asyncio.sleep(0.2)

    async def outcome(self, entry: Entry, plan: Execution) -> str | None:
        response = await entry.http.get(f"/orders/{plan.id}")
        if response.status_code != 200:
            return None
        state: str = response.json()["state"]
        return state if state in FINAL else None


DRIVER = OrderDriver()
