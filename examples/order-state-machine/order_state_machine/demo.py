"""`python -m order_state_machine.demo`: three orders through the gateway, told step by step.

Ada's order is shipped and delivered; Grace cancels hers before it ships (nothing was charged);
Alan cancels his after it shipped (the charge is refunded); Barbara's card is declined when her
order ships (the simulated payment provider is told to say 402), and the order ends declined,
without a retry. Then the gateway turns away a cancel
that comes too late and one for an order that does not exist. Like any HTTP client, the demo
reads an order's state with GET /orders/{id}, and waits for a transition by asking again.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from typing import Any

import httpx

FINAL = {"delivered", "cancelled", "refunded", "declined", "failed"}


def new_order(items: list[tuple[str, int, int]]) -> dict[str, Any]:
    # The order id (the execution id) and the order (its argument) are stored on the Resonate
    # server, so neither spells who the customer is: random references, which only the
    # providers resolve. The demo names the customers in what it prints, never in what it sends.
    return {
        "order_id": f"order-{secrets.token_hex(4)}",
        "customer_id": f"cus_{secrets.token_hex(6)}",
        "items": [
            {"sku": sku, "quantity": quantity, "unit_price_cents": price}
            for sku, quantity, price in items
        ],
        "currency": "EUR",
    }


def place(gateway: httpx.Client, who: str, order: dict[str, Any]) -> str:
    order_id: str = order["order_id"]
    total = sum(i["quantity"] * i["unit_price_cents"] for i in order["items"]) / 100
    items = ", ".join(f"{i['quantity']} × {i['sku']}" for i in order["items"])
    print(f"→ POST /orders {order_id} ({who}'s order): {items}, {total:.2f} {order['currency']}")
    accepted = gateway.post("/orders", json=order).raise_for_status()
    print(f"← {accepted.status_code} Accepted: the order now lives on the workers")
    wait_for(gateway, order_id, "confirmed")
    return order_id


def send(gateway: httpx.Client, order_id: str, event: str, body: dict[str, str] | None) -> None:
    detail = f" {json.dumps(body)}" if body else ""
    print(f"→ POST /orders/{order_id}/{event}{detail}")
    response = gateway.post(f"/orders/{order_id}/{event}", json=body)
    print(f"← {response.status_code} {response.reason_phrase}: {_detail(response)}")


def wait_for(gateway: httpx.Client, order_id: str, state: str, timeout: float = 60) -> None:
    """Ask for the order until it is `state` and waits for events (or is final), then say so."""
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = gateway.get(f"/orders/{order_id}").raise_for_status().json()
        settled = view["state"] in FINAL or (view["state"] == state and view["accepts"])
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    last = view["history"][-1]
    receipt = f" (receipt {last['receipt']})" if last.get("receipt") else ""
    receipt += f": {last['reason']}" if last.get("reason") else ""
    waits = f"; it waits for {' or '.join(view['accepts'])}" if view["accepts"] else ""
    print(f"· {order_id} is {view['state']}{receipt}{waits}")


def history(gateway: httpx.Client, order_id: str) -> None:
    view = gateway.get(f"/orders/{order_id}").raise_for_status().json()
    print(f"· GET /orders/{order_id}: the history, read back from the execution")
    for entry in view["history"]:
        receipt = entry.get("receipt") or ""
        line = f"    {entry['at'][11:23]}  {entry['state']:<9}  {receipt:<20}  {_cause(entry)}"
        print(line.rstrip())


def _cause(entry: dict[str, Any]) -> str:
    if not (event := entry.get("event")):
        return ""
    details = [str(v) for k, v in event.items() if k not in ("type", "event_id")]
    return f"on {event['type']}" + (f" ({', '.join(details)})" if details else "")


def _detail(response: httpx.Response) -> str:
    body = response.json()
    return str(body["detail"]) if "detail" in body else f"{body['event']} accepted"


def main() -> None:
    providers = os.environ["PROVIDER_API_URL"]
    with httpx.Client(base_url=os.environ["GATEWAY_URL"], timeout=30) as gateway:
        ada = place(gateway, "Ada", new_order([("BOOK-42", 2, 1250), ("PEN-7", 1, 940)]))
        send(gateway, ada, "ship", {"carrier": "DHL", "tracking_number": "JD014600006281"})
        wait_for(gateway, ada, "shipped")
        send(gateway, ada, "deliver", None)
        wait_for(gateway, ada, "delivered")
        history(gateway, ada)
        print()
        grace = place(gateway, "Grace", new_order([("COBOL-1", 1, 4200)]))
        send(gateway, grace, "cancel", {"reason": "changed my mind"})
        wait_for(gateway, grace, "cancelled")
        print()
        alan = place(gateway, "Alan", new_order([("ENIGMA-3", 1, 9900)]))
        send(gateway, alan, "ship", {"carrier": "UPS", "tracking_number": "1Z999AA10123456784"})
        wait_for(gateway, alan, "shipped")
        send(gateway, alan, "cancel", {"reason": "arrived damaged"})
        wait_for(gateway, alan, "refunded")
        print()
        barbara = place(gateway, "Barbara", new_order([("CLU-1", 1, 12000)]))
        print(
            "· make the simulated payment provider decline this order's card: it will answer"
            " 402 Payment Required to its charge"
        )
        httpx.post(
            f"{providers}/_admin/faults",
            json={
                "provider": "payment",
                "action": "charge",
                "mode": "fail_always",
                "status": 402,
                "key_prefix": f"{barbara}:",
            },
        ).raise_for_status()
        send(gateway, barbara, "ship", {"carrier": "DHL", "tracking_number": "JD014600006282"})
        wait_for(gateway, barbara, "declined")
        print()
        print("· events the orders can no longer take:")
        send(gateway, ada, "cancel", {"reason": "too late"})
        send(gateway, f"order-nobody-{secrets.token_hex(3)}", "cancel", {"reason": "who?"})


if __name__ == "__main__":
    main()
