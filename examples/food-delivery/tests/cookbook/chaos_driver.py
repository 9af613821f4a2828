"""How `cookbook chaos food-delivery` drives orders: `POST /orders` through the gateway.

Each order's plan is drawn from its seed: delivered; delivered after the dispatch API failed
twice (503, retried in place); or cancelled because no driver can be had (the dispatch API says
409 for that order: refunded, the restaurant and the customer told). The faults are scoped to the
order by the idempotency keys its steps send (`<order id>:...`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cookbook.chaos import Driver, Entry, Execution

ORDER = {
    "customer_id": "cus_7c41e9a2",
    "restaurant_id": "rst_napoli42",
    "address_id": "adr_home7",
    "items": [{"name": "Margherita", "quantity": 2, "unit_price_cents": 950}],
    "currency": "EUR",
}
# The charge, the restaurant told on Slack, the dispatch API (driver, pick-up, drop-off), the
# customer's push notification; with no driver: the charge refunded, the restaurant told to stop,
# the customer told by SMS.
DELIVERED = {"payment.charge": 1, "slack.send": 1, "api.call": 3, "push.send": 1}
NO_DRIVER = {"payment.charge": 1, "slack.send": 2, "payment.refund": 1, "sms.send": 1}
FAULTS = {
    "transient": {"provider": "api", "action": "call", "mode": "fail_times", "times": 2},
    "no-driver": {"provider": "api", "action": "call", "mode": "fail_always", "status": 409},
}


class FoodDeliveryDriver(Driver):
    def plan(self, i: int, rng: random.Random) -> Execution:
        kind = rng.choice(["delivered", "delivered", "transient", "no-driver"])
        order_id = f"order-{i:03d}"
        if kind == "no-driver":
            return Execution(order_id, kind, "cancelled", NO_DRIVER)
        return Execution(order_id, kind, "delivered", DELIVERED)

    async def prepare(self, entry: Entry, plans: Sequence[Execution]) -> None:
        for plan in plans:
            if plan.kind in FAULTS:
                fault = {**FAULTS[plan.kind], "key_prefix": f"{plan.id}:"}
                sandbox = entry.stack.provider_url
                response = await entry.http.post(f"{sandbox}/_admin/faults", json=fault)
                response.raise_for_status()

    async def drive(self, entry: Entry, plan: Execution) -> None:
        response = await entry.call("POST", "/orders", json={"order_id": plan.id, **ORDER})
        if response.status_code != 202:
            raise AssertionError(f"POST /orders answered {response.status_code}: {response.text}")

    async def outcome(self, entry: Entry, plan: Execution) -> str | None:
        response = await entry.http.get(f"/orders/{plan.id}")
        if response.status_code != 200:
            return None
        status: str = response.json()["status"]
        return status if status in ("delivered", "cancelled", "failed") else None


DRIVER = FoodDeliveryDriver()
