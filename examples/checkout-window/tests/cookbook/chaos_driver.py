"""How `cookbook chaos checkout-window` drives purchases: `POST /purchases`, perhaps a cancel.

Each purchase's plan is drawn from its seed: nobody cancels and a 2-second window ends (the card
is charged); the buyer cancels at once inside a 60-second window (the stock is released, nothing
charged); or the window ends and the card is declined (402 for that purchase's charge only,
scoped by its steps' idempotency keys). The run is in real time: the windows are seconds long.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cookbook.chaos import Driver, Entry, Execution

# The buyer goes by a reference the providers resolve: the server stores the purchase in plaintext.
PURCHASE = {
    "customer_id": "cus_7c41e9a2",
    "items": [{"sku": "LAMP-7", "quantity": 1, "unit_price_cents": 4900}],
    "currency": "EUR",
}
SHORT_WINDOW = 2
# Long enough that a cancel sent at once arrives through a few server restarts.
LONG_WINDOW = 60
PLANS = {
    "confirmed": ("confirmed", {"inventory.reserve": 1, "payment.charge": 1, "email.send": 1}),
    "cancelled": ("cancelled", {"inventory.reserve": 1, "inventory.cancel": 1, "email.send": 1}),
    "declined": ("declined", {"inventory.reserve": 1, "inventory.cancel": 1, "email.send": 1}),
}
FINAL = {"confirmed", "cancelled", "declined", "out-of-stock", "inventory-unavailable", "failed"}


class CheckoutDriver(Driver):
    def plan(self, i: int, rng: random.Random) -> Execution:
        kind = rng.choice(sorted(PLANS))
        outcome, effects = PLANS[kind]
        return Execution(f"purchase-{i:03d}", kind, outcome, effects)

    async def prepare(self, entry: Entry, plans: Sequence[Execution]) -> None:
        for plan in plans:
            if plan.kind == "declined":
                fault = {
                    "provider": "payment",
                    "action": "charge",
                    "status": 402,
                    "key_prefix": f"{plan.id}:",
                }
                sandbox = entry.stack.provider_url
                response = await entry.http.post(f"{sandbox}/_admin/faults", json=fault)
                response.raise_for_status()

    async def drive(self, entry: Entry, plan: Execution) -> None:
        window = LONG_WINDOW if plan.kind == "cancelled" else SHORT_WINDOW
        body = {"purchase_id": plan.id, "cancel_window_seconds": window, **PURCHASE}
        response = await entry.call("POST", "/purchases", json=body)
        if response.status_code != 202:
            raise AssertionError(
                f"POST /purchases answered {response.status_code}: {response.text}"
            )
        if plan.kind == "cancelled":
            # A 503 while the stock is still being reserved is sent again (by `call`); a cancel
            # whose answer was lost finds the purchase cancelled already (200 as well).
            cancelled = await entry.call("POST", f"/purchases/{plan.id}/cancel")
            if cancelled.status_code != 200:
                raise AssertionError(f"cancel answered {cancelled.status_code}: {cancelled.text}")

    async def outcome(self, entry: Entry, plan: Execution) -> str | None:
        response = await entry.http.get(f"/purchases/{plan.id}")
        if response.status_code != 200:
            return None
        state: str = response.json()["state"]
        return state if state in FINAL else None


DRIVER = CheckoutDriver()
