"""`python -m food_delivery.demo`: place three orders through the gateway and follow each one.

The first order is delivered. For the second, the simulated dispatch API is told it has no
driver (409): the customer is refunded, the restaurant is told to stop and the customer is told
why, and the order ends cancelled: no driver. For the third, the dispatch API is down twice (503)
before it assigns a driver: the step retries in place, and the order is delivered. Like any HTTP
client, the demo gets 202 and a status URL for each order, and polls that URL, printing each step
the order reaches, until the order settles.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import httpx

FINISHED = ("delivered", "cancelled", "failed")
PIPELINE = ("charge", "prepare", "assign_driver", "pick_up", "deliver", "complete")


def order() -> dict[str, Any]:
    # Every id here reaches the Resonate server (the order is the execution's argument, its id
    # the execution id), so none spells who the customer is: random references, which only the
    # providers resolve. The demo names the customers in what it prints, never in what it sends.
    return {
        "order_id": f"order-{secrets.token_hex(4)}",
        "customer_id": f"cus_{secrets.token_hex(6)}",
        "restaurant_id": "rst_napoli42",
        "address_id": f"adr_{secrets.token_hex(6)}",
        "items": [
            {"name": "Margherita", "quantity": 2, "unit_price_cents": 950},
            {"name": "Tiramisu", "quantity": 1, "unit_price_cents": 600},
        ],
        "currency": "EUR",
    }


def place(gateway: httpx.Client, who: str, placed: dict[str, Any]) -> None:
    items = ", ".join(f"{i['quantity']}x {i['name']}" for i in placed["items"])
    print(
        f"→ POST /orders {placed['order_id']} ({who}'s order):"
        f" {items} from {placed['restaurant_id']}"
    )
    accepted = gateway.post("/orders", json=placed)
    accepted.raise_for_status()
    status_url = accepted.json()["status_url"]
    print(f"← {accepted.status_code} Accepted; the order runs on the workers: GET {status_url}")
    status = follow(gateway, status_url)
    match status["status"]:
        case "delivered":
            print(f"✓ delivered (charge {status['charge_id']})")
        case "cancelled":
            print(f"✗ cancelled: {status['reason']}")
            for undo in status["compensations"]:
                done = undo.get("receipt") or f"NOT done: {undo.get('problem')}"
                print(f"  ↩ {undo['stage']}: {done}")
        case _:
            print(f"! {status['status']}: {status.get('reason')}")


def follow(gateway: httpx.Client, status_url: str, timeout: float = 60) -> dict[str, Any]:
    """Poll the order's status, printing every step it reaches, until it settles."""
    deadline = time.monotonic() + timeout
    shown = 0
    while True:
        status: dict[str, Any] = gateway.get(status_url).raise_for_status().json()
        for step in status["steps"][shown:]:
            shown += 1
            if step in PIPELINE:
                print(f"  · step {PIPELINE.index(step) + 1} of 6: {step}")
            else:
                print(f"  · undoing: {step}")
        if status["status"] in FINISHED or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def make_dispatch_fail(providers: str, placed: dict[str, Any], **fault: Any) -> None:
    """Make the simulated dispatch API fail this order's calls, as `fault` says."""
    httpx.post(
        f"{providers}/_admin/faults",
        json={"provider": "api", "action": "call", "key_prefix": f"{placed['order_id']}:", **fault},
    ).raise_for_status()


def main() -> None:
    providers = os.environ["PROVIDER_API_URL"]
    with httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=10) as gateway:
        place(gateway, "Ada", order())
        print()
        grace = order()
        print("· make the simulated dispatch API answer 409 Conflict (no driver) for this order")
        make_dispatch_fail(providers, grace, mode="fail_always", status=409)
        place(gateway, "Grace", grace)
        print()
        alan = order()
        print(
            "· make the simulated dispatch API answer 503 twice for this order, then work:"
            " the driver step retries in place (see the worker's lines)"
        )
        make_dispatch_fail(providers, alan, mode="fail_times", times=2, status=503)
        place(gateway, "Alan", alan)


if __name__ == "__main__":
    main()
