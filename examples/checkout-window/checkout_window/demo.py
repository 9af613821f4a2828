"""`python -m checkout_window.demo`: three one-click purchases through the gateway, narrated.

The windows here are 5 seconds long so that the demo runs in real time (a shop would give 30
minutes, the gateway's default; the tests run those through time skipping). Ada buys and cancels
within her window: her stock is released and nothing is charged. Grace buys and lets the window
pass: she is charged once, and a cancel after the window is refused. Linus's card is declined
when the window ends: his stock is released. What each provider did is read from the provider
sandbox's own records.
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import datetime
from typing import Any

import httpx

WINDOW_SECONDS = 5
LAMP = {"sku": "LAMP-7", "quantity": 1, "unit_price_cents": 4900}


def purchase() -> dict[str, Any]:
    # The client chooses the purchase id, so a POST it repeats (after a timeout, a double click)
    # attaches to the purchase it started instead of buying again. The purchase id (the execution
    # id) and the purchase (its argument) are stored on the Resonate server, so neither spells who
    # the buyer is: random references, which only the providers resolve. The demo names the
    # buyers in what it prints, never in what it sends.
    return {
        "purchase_id": f"purchase-{secrets.token_hex(4)}",
        "customer_id": f"cus_{secrets.token_hex(6)}",
        "items": [LAMP],
        "currency": "EUR",
        "cancel_window_seconds": WINDOW_SECONDS,
    }


def buy(gateway: httpx.Client, who: str, body: dict[str, Any]) -> str:
    response = gateway.post("/purchases", json=body)
    print(f"→ POST /purchases {body['purchase_id']} ({who}, 1 x LAMP-7, 49.00 EUR)")
    accepted = response.raise_for_status().json()
    print(f"← {response.status_code}: {accepted['cancel_window_seconds']}s to cancel")
    return str(accepted["purchase_id"])


def cancel(gateway: httpx.Client, purchase_id: str) -> None:
    response = gateway.post(f"/purchases/{purchase_id}/cancel")
    answer = response.json()
    said = (
        answer.get("outcome", "") + ": " + answer["detail"]
        if response.is_success
        else answer["detail"]
    )
    print(f"→ POST /purchases/{purchase_id}/cancel ← {response.status_code} {said}")


def wait_for(gateway: httpx.Client, purchase_id: str, states: set[str]) -> dict[str, Any]:
    """Poll the purchase until it is in one of `states` (the demo is an ordinary HTTP client)."""
    give_up = time.monotonic() + 60
    while True:
        view: dict[str, Any] = gateway.get(f"/purchases/{purchase_id}").raise_for_status().json()
        if view["state"] in states or time.monotonic() > give_up:
            return view
        time.sleep(0.05)


def provider_records(providers: httpx.Client, purchase_id: str) -> str:
    """What the providers did for a purchase, from the sandbox's admin API (a demo-only view)."""
    effects = providers.get("/_admin/effects", params={"key_prefix": f"{purchase_id}:"}).json()
    return ", ".join(f"{e['provider']}.{e['action']}" for e in effects)


def clock(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")


def main() -> None:
    with (
        httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=30) as gateway,
        httpx.Client(base_url=os.environ["PROVIDER_API_URL"], timeout=10) as providers,
    ):
        print("Ada buys a lamp, clicks twice, and changes her mind within the window.")
        ada = purchase()
        ada_id = buy(gateway, "Ada", ada)
        buy(gateway, "Ada", ada)  # the same purchase id: attached, not bought twice
        view = wait_for(gateway, ada_id, {"window-open"})
        print(f"· {ada_id}: stock reserved; window open until {clock(view['window_closes_at'])}")
        cancel(gateway, ada_id)
        cancel(gateway, ada_id)
        ended = wait_for(gateway, ada_id, {"cancelled"})
        print(f"✓ {ada_id}: {ended['state']}, reservation {ended['reservation_id']} released")
        print(f"  the providers did: {provider_records(providers, ada_id)} (no payment)")

        print()
        print("Grace buys and lets the window pass; Linus's card will be declined.")
        grace_id = buy(gateway, "Grace", purchase())
        linus = purchase()
        # Demo only: the payment sandbox declines Linus's card (402) when it is charged.
        providers.post(
            "/_admin/faults",
            json={
                "provider": "payment",
                "action": "charge",
                "status": 402,
                "key_prefix": f"{linus['purchase_id']}:",
            },
        ).raise_for_status()
        linus_id = buy(gateway, "Linus", linus)
        view = wait_for(gateway, grace_id, {"window-open"})
        print(f"· the windows close at about {clock(view['window_closes_at'])}; nobody cancels")
        ended = wait_for(gateway, grace_id, {"confirmed", "declined", "failed"})
        print(f"✓ {grace_id}: {ended['state']}, charge {ended['charge_id']}")
        print(f"  the providers did: {provider_records(providers, grace_id)}")
        cancel(gateway, grace_id)
        ended = wait_for(gateway, linus_id, {"confirmed", "declined", "failed"})
        print(f"✓ {linus_id}: {ended['state']} ({ended['reason']}); stock released")
        print(f"  the providers did: {provider_records(providers, linus_id)}")

        print()
        bad = {**purchase(), "items": [{**LAMP, "quantity": 0}]}
        response = gateway.post("/purchases", json=bad)
        field = response.json()["detail"][0]
        where = ".".join(str(part) for part in field["loc"])
        print(f"→ POST /purchases with quantity 0 ← {response.status_code} {where}: {field['msg']}")


if __name__ == "__main__":
    main()
